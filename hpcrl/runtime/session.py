"""Per-process run context: run directory, resolved config, trace file, stop flag and signals."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from pathlib import Path
from types import FrameType
from typing import Any

from hpcrl.api import config

__all__ = ["Session", "StopFlag", "active_run_dir", "install_signal_handlers", "write_text_atomic"]

log = logging.getLogger(__name__)

_active_run_dir: Path | None = None


def active_run_dir() -> Path | None:
    """The run dir of this process's run, once its leader has prepared and locked it; else None.

    Before that point (or when the leader could not take the run dir) nothing may be written there:
    it may be another run's.
    """
    return _active_run_dir


class StopFlag:
    """What signal handlers and control messages ask of this process, checked at step boundaries.

    A stop (SIGTERM, SIGUSR1, a stop request; the first reason wins) and a checkpoint now (SIGUSR2, a
    ``checkpoint`` control message): :attr:`checkpoint_request` holds the newest such request, which any
    checkpoint whose state is taken after it serves.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self.checkpoint_request: tuple[str, float] | None = None
        """The newest checkpoint request: (who asked, its ``time.time()``), or None."""

    def set(self, reason: str) -> None:
        """Ask the run to stop (the first reason wins)."""
        if self.reason is None:
            self.reason = reason

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self.reason is not None

    def request_checkpoint(self, reason: str, at: float | None = None) -> None:
        """Ask for a checkpoint at the next step boundary, without stopping.

        Args:
            reason: who asked, for the log (``SIGUSR2``, ``SIGUSR2 on rank 3 (actor on node7)``).
            at: when it was asked (``time.time()`` of the asking process; default now).
        """
        at = time.time() if at is None else float(at)
        current = self.checkpoint_request
        if current is None or at >= current[1]:
            self.checkpoint_request = (reason, at)


def install_signal_handlers(flag: StopFlag) -> None:
    """SIGTERM and SIGUSR1 (SLURM preemption) set ``flag``; SIGUSR2 asks for a checkpoint; a second SIGINT interrupts.

    Without a handler SIGUSR2 would end the process; with it, the run writes a checkpoint at the next step
    boundary (the trainer leader does; another rank forwards the request to it) and goes on.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGUSR2:
            flag.request_checkpoint(name)
            return
        if signum == signal.SIGINT and flag.is_set():
            raise KeyboardInterrupt
        flag.set(name)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread
            pass


def write_text_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same dir, fsync, rename, fsync dir).

    The temporary file is created with ``O_EXCL | O_NOFOLLOW`` and ``mode``; see
    :func:`hpcrl.storage.files.write_file_atomic`.
    """
    from hpcrl.storage.files import write_file_atomic

    write_file_atomic(path, text.encode("utf-8"), mode)


class _SafeTrace:
    """A trace writer whose write failures are logged (once) instead of stopping the run.

    Traces are diagnostics: losing one flush interval must not kill a days-long training run.
    """

    def __init__(self, writer: Any) -> None:
        self._w = writer
        self._warned = False
        self.add_time = writer.add_time
        self.episode = writer.episode
        self.trainer_step = writer.trainer_step
        self.evaluation = writer.evaluation
        self.selfplay_game = writer.selfplay_game

    def _guard(self, fn: Any) -> None:
        from hpcrl.storage.trace import TraceError

        try:
            fn()
        except (TraceError, OSError) as e:
            if not self._warned:
                log.warning("trace write failed (tracing continues, this interval is lost): %s", e)
                self._warned = True

    def maybe_flush(self) -> None:
        """Flush if the interval has passed; failures are logged."""
        self._guard(self._w.maybe_flush)

    def flush(self) -> None:
        """Flush now; failures are logged."""
        self._guard(self._w.flush)

    def close(self) -> None:
        """Flush and close; failures are logged."""
        self._guard(self._w.close)


class Session:
    """What one process of a run needs besides its role: the run dir, its lock, config text, and its trace.

    Args:
        cfg: the experiment.
        rank: this process's rank.
        role: ``local``, ``trainer``, ``inference`` or ``actor``.
        world_size: ranks in the job.
        leader: locks and prepares the run dir and writes ``config.yaml``; others only open their trace
            (call :meth:`attach`, then :meth:`open_trace`, after the leader is done).
        open_trace: open this rank's trace file now.
        prepare: (leader) lock and prepare the run dir now; otherwise call :meth:`prepare` later.

    Raises:
        RunDirError: (leader, ``prepare``) see :meth:`prepare`.
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        rank: int,
        role: str,
        world_size: int,
        leader: bool,
        open_trace: bool = True,
        prepare: bool = True,
    ) -> None:
        self.cfg = cfg
        self.rank = rank
        self.role = role
        self.world_size = world_size
        self.leader = leader
        self.config_text = config.dump(cfg)
        self.run_dir = Path(cfg.run_dir)
        self.trace: Any = None
        self.lock: Any = None
        """The run dir's :class:`~hpcrl.storage.rundir.RunDirLock` (leader, after :meth:`prepare`)."""
        if leader and prepare:
            self.prepare()
        if open_trace:
            try:
                self.open_trace()
            except BaseException:
                self.close()
                raise

    def prepare(self) -> None:
        """Lock the run dir, create it (0700), and move old checkpoints/traces aside for a fresh run.

        The lock (``RUN_DIR/.lock``) is taken before anything in the run dir is touched and held until
        :meth:`close`. ``config.yaml`` is written later, by :meth:`write_config`, once a resume has
        succeeded.

        Raises:
            RunDirInUse: another run holds the run dir (names its host and pid); nothing was touched.
            RunDirError: the run dir cannot be created or written, or belongs to another user (names the path).
        """
        from hpcrl.storage.rundir import RunDirError, RunDirLock, make_run_dir, prepare_run_dir

        self.run_dir = make_run_dir(self.run_dir)
        self.lock = RunDirLock.acquire(self.run_dir)
        try:
            prepare_run_dir(self.run_dir)
            if self.cfg.run.fresh:
                stamp = time.strftime("%Y%m%d-%H%M%S")
                for sub in ("checkpoints", "traces"):
                    p = self.run_dir / sub
                    if p.exists() and any(p.iterdir()):
                        dest = self.run_dir / f"{sub}.old-{stamp}"
                        try:
                            os.replace(p, dest)
                        except OSError as e:
                            raise RunDirError(f"run.fresh: cannot move {p} aside to {dest}: {e}") from e
                        log.warning("run.fresh: moved the existing %s to %s (nothing deleted)", p, dest)
                prepare_run_dir(self.run_dir)
        except BaseException:
            self.close()
            raise
        self.attach()

    def attach(self) -> None:
        """Mark the run dir as this process's to write (after its leader prepared and locked it)."""
        global _active_run_dir
        _active_run_dir = self.run_dir

    def write_config(self) -> None:
        """(Leader) save the resolved config as ``RUN_DIR/config.yaml`` (atomically, 0600).

        Called once the run has resumed (or starts fresh), so a failed resume leaves the old file as it was.
        """
        if self.leader and self.lock is not None:
            write_text_atomic(self.run_dir / "config.yaml", self.config_text)

    def open_trace(self) -> None:
        """Open this rank's trace file (if tracing is on)."""
        if not self.cfg.run.trace or self.trace is not None:
            return
        from hpcrl.storage.trace import TraceWriter

        path = self.run_dir / "traces" / f"rank-{self.rank:04d}.h5"
        self.trace = _SafeTrace(TraceWriter(path, self.rank, self.role, flush_seconds=self.cfg.run.trace_flush_seconds))

    @property
    def host(self) -> str:
        """This process's host name."""
        return socket.gethostname()

    def close(self, release: bool = True) -> None:
        """Flush and close the trace, then release the run dir lock (leader). Idempotent.

        Args:
            release: release the lock now. ``False`` keeps it until the process ends or
                :func:`hpcrl.storage.rundir.release_all` (the MPI abort hook releases it after the
                job's last words are written to the run dir).
        """
        if self.trace is not None:
            try:
                self.trace.close()
            except Exception as e:
                log.warning("closing trace of rank %d failed: %s", self.rank, e)
            self.trace = None
        if release:
            lock, self.lock = self.lock, None
            if lock is not None:
                lock.release()
