"""Background checkpoint saves: the trainer hands the state over and goes on; a writer does the rest.

A save of a large policy is mostly HDF5 encoding, checksums and ``fsync``; none of it needs the
trainer. Two writers, same contract:

* :class:`ProcessSaver` (the default where available, Linux): the state is copied into shared memory
  and written by a helper process (:mod:`hpcrl.storage.writer`), so the trainer loses only the copy.
* :class:`ThreadSaver`: a :func:`snapshot` of the tree is written by a thread of the trainer process.
  No extra process, but h5py holds the GIL while it encodes, so the trainer runs slower during the write.

Both write with :func:`~hpcrl.storage.checkpoint.save_checkpoint` (the same atomic write as a blocking
save) and rotate with the :class:`~hpcrl.storage.checkpoint.CheckpointManager`. At most one save is in
flight: the caller collects each outcome (the file, or the
:class:`~hpcrl.storage.tree.CheckpointError`) with :meth:`BackgroundSaver.poll` /
:meth:`BackgroundSaver.wait` before submitting the next, so files land in version order and memory
holds at most one extra copy of the state.

Examples:
    >>> import tempfile, numpy as np
    >>> from hpcrl.storage.checkpoint import CheckpointManager, prepare_run_dir
    >>> saver = ThreadSaver(CheckpointManager(prepare_run_dir(tempfile.mkdtemp())))
    >>> w = np.zeros(3, np.float32)
    >>> saver.submit({"w": w}, {"version": 1}, reason="periodic")
    >>> w += 1  # training goes on; the checkpoint keeps the values at submit time
    >>> outcome = saver.wait()
    >>> outcome.path.name, outcome.error
    ('ckpt-000000001.h5', None)
    >>> saver.close()
"""

from __future__ import annotations

import abc
import logging
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcrl.storage.checkpoint import CheckpointManager
from hpcrl.storage.tree import CheckpointError

__all__ = ["BackgroundSaver", "ProcessSaver", "SaveOutcome", "ThreadSaver", "make_saver", "snapshot"]

log = logging.getLogger(__name__)


def snapshot(tree: Any) -> Any:
    """A copy of a checkpoint tree that shares no mutable buffer with ``tree``.

    Tensors are copied to new CPU tensors (same dtype, contiguous), numpy arrays and byte buffers are
    copied; mappings, lists and tuples are rebuilt; immutable leaves (numbers, strings, bytes, None)
    are shared. Values the checkpoint format does not support are passed through unchanged, so the
    writer reports them with their path as a blocking save would.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tree, torch.Tensor):
        t = tree.detach()
        if t.device.type == "cpu":
            return t.clone(memory_format=torch.contiguous_format)
        return t.to("cpu")  # a device -> host copy is already a new tensor
    if isinstance(tree, np.ndarray):
        return np.array(tree, copy=True)
    if isinstance(tree, Mapping):
        return {k: snapshot(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [snapshot(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(snapshot(v) for v in tree)
    if isinstance(tree, (bytearray, memoryview)):
        return bytes(tree)
    return tree


@dataclass(frozen=True)
class SaveOutcome:
    """How one background save ended."""

    reason: str
    """What asked for the save (``"periodic"``, ...)."""
    version: int
    """The policy version in the checkpoint."""
    path: Path | None
    """The written file, or ``None`` when the save failed."""
    error: CheckpointError | None
    """Why the save failed (names the file and the cause), or ``None``."""
    write_seconds: float
    """Time the writer thread spent (encode, checksums, fsync, rename, rotation)."""


class BackgroundSaver(abc.ABC):
    """One checkpoint at a time, written off the caller's thread (see :class:`ThreadSaver`, :class:`ProcessSaver`).

    Args:
        manager: the run's checkpoint manager (file names, rotation).
    """

    def __init__(self, manager: CheckpointManager) -> None:
        self.manager = manager
        self._pending: tuple[str, int, Path | None] | None = None  # reason, version, file

    @property
    def busy(self) -> bool:
        """Whether a save is being written now (its outcome not yet available)."""
        return self._pending is not None and not self._finished()

    def submit(self, tree: Mapping[Any, Any], attrs: Mapping[str, Any], reason: str) -> None:
        """Take a copy of ``tree`` and start writing it; returns once the copy is taken.

        Call :meth:`wait` (or :meth:`poll` until it returns the outcome) before submitting again:
        an outcome not yet collected is never dropped.

        Raises:
            RuntimeError: the previous save's outcome has not been collected.
            CheckpointError: the save cannot start (bad ``version``, unstorable value, no writer);
                nothing is in flight then.
        """
        if self._pending is not None:
            raise RuntimeError(f"{type(self).__name__}.submit: collect the previous save with wait() or poll() first")
        version = int(attrs.get("version", -1))
        path = self._start(tree, dict(attrs))
        self._pending = (reason, version, path)

    def poll(self) -> SaveOutcome | None:
        """The outcome of the save in flight if it has finished (returned once), else ``None``."""
        if self._pending is None or not self._finished():
            return None
        return self.wait()

    def wait(self) -> SaveOutcome | None:
        """Block until the save in flight (if any) has finished; its outcome, or ``None`` if none was pending."""
        if self._pending is None:
            return None
        reason, version, path = self._pending
        self._pending = None  # collected even if the writer's answer raises
        written, error, seconds = self._finish(path)
        return SaveOutcome(reason, version, written if error is None else None, error, seconds)

    def close(self) -> None:
        """Finish the save in flight (its outcome is dropped: collect it first) and release the writer."""
        self.wait()

    # what a writer provides
    @abc.abstractmethod
    def _start(self, tree: Mapping[Any, Any], attrs: dict[str, Any]) -> Path | None:
        """Copy ``tree`` and start writing it; the file if known now (the writer process), else ``None``."""

    @abc.abstractmethod
    def _finished(self) -> bool:
        """Whether the save in flight has ended (its outcome can be had without blocking)."""

    @abc.abstractmethod
    def _finish(self, path: Path | None) -> tuple[Path | None, CheckpointError | None, float]:
        """Wait for the writer: (written file, error, writer seconds); ``path`` is what :meth:`_start` returned."""


class ThreadSaver(BackgroundSaver):
    """Writes a :func:`snapshot` of the tree with :meth:`CheckpointManager.save` on a (non-daemon) thread.

    A process that ends normally finishes the save in flight first.
    """

    def __init__(self, manager: CheckpointManager) -> None:
        super().__init__(manager)
        self._thread: threading.Thread | None = None
        self._result: tuple[Path | None, CheckpointError | None, float] = (None, None, 0.0)

    def _start(self, tree: Mapping[Any, Any], attrs: dict[str, Any]) -> Path | None:
        copied = snapshot(tree)
        version = attrs.get("version", -1)

        def write() -> None:
            t0 = time.perf_counter()
            path: Path | None = None
            error: CheckpointError | None = None
            try:
                path = self.manager.save(copied, attrs)
            except CheckpointError as e:
                error = e
            except Exception as e:  # anything else must still reach the caller, never die with the thread
                error = CheckpointError(f"checkpoint version {version}: {type(e).__name__}: {e}")
                error.__cause__ = e
            self._result = (path, error, time.perf_counter() - t0)

        self._thread = threading.Thread(target=write, name=f"hpcrl-checkpoint-{version}", daemon=False)
        self._thread.start()
        return None

    def _finished(self) -> bool:
        return self._thread is None or not self._thread.is_alive()

    def _finish(self, path: Path | None) -> tuple[Path | None, CheckpointError | None, float]:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        result, self._result = self._result, (None, None, 0.0)
        return result


class ProcessSaver(BackgroundSaver):
    """Copies the tree into shared memory; a writer process writes it (:mod:`hpcrl.storage.writer`).

    The trainer's cost is the copy; encoding, checksums and ``fsync`` run in the other process, off
    the trainer's GIL. The writer process is started on the first save and stopped by :meth:`close`.
    A save whose shared buffer cannot be made (memory or file-size limits) is written on a thread
    instead (:class:`ThreadSaver`, with a WARNING), so the limit is met by the checkpoint file itself.
    """

    def __init__(self, manager: CheckpointManager) -> None:
        super().__init__(manager)
        from hpcrl.storage.writer import WriterProcess

        self.writer = WriterProcess()
        self._thread_saver: ThreadSaver | None = None
        self._on_thread = False

    def _start(self, tree: Mapping[Any, Any], attrs: dict[str, Any]) -> Path | None:
        from hpcrl.storage.writer import SharedMemoryError

        path = self.manager.begin(attrs)
        self._on_thread = False
        try:
            self.writer.start(path, tree, attrs)
        except SharedMemoryError as e:
            log.warning("checkpoint writer process: %s; writing %s on a thread instead", e.strerror, path.name)
            if self._thread_saver is None:
                self._thread_saver = ThreadSaver(self.manager)
            self._on_thread = True
            return self._thread_saver._start(tree, attrs)
        return path

    def _finished(self) -> bool:
        if self._on_thread:
            assert self._thread_saver is not None
            return self._thread_saver._finished()
        return self.writer.done()

    def _finish(self, path: Path | None) -> tuple[Path | None, CheckpointError | None, float]:
        if self._on_thread:
            assert self._thread_saver is not None
            self._on_thread = False
            return self._thread_saver._finish(path)
        assert path is not None
        seconds, message = self.writer.result()
        if message is not None:
            return None, CheckpointError(message), seconds
        self.manager.prune(path)
        return path, None, seconds

    def close(self) -> None:
        """Finish the save in flight, then stop the writer process and free the shared buffer."""
        super().close()
        self.writer.close()


def make_saver(manager: CheckpointManager, writer: str) -> BackgroundSaver | None:
    """The background saver for ``run.checkpoint_writer``: ``process``, ``thread`` or ``inline`` (``None``).

    ``process`` falls back to ``thread`` where the writer process cannot run (not Linux), with an INFO line.
    """
    if writer == "inline":
        return None
    if writer == "process":
        from hpcrl.storage.writer import available

        if available():
            return ProcessSaver(manager)
        log.info("run.checkpoint_writer=process needs Linux (os.memfd_create); writing checkpoints on a thread")
    return ThreadSaver(manager)
