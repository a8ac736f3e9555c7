"""A learner's checkpoint files: when to save (cadence), the background writer's lifecycle, and resuming."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcrl.api import config
from hpcrl.learning.learner import Learner

if TYPE_CHECKING:
    from hpcrl.storage.background import BackgroundSaver
    from hpcrl.storage.checkpoint import CheckpointManager

__all__ = ["Checkpointer", "checkpoint_contents", "spec_diff"]

log = logging.getLogger(__name__)

#: config sections whose change is reported when a run resumes.
_SPEC_SECTIONS = ("environment", "policy")
#: save reasons written by the background writer (if any); the run goes on after them.
_BACKGROUND = ("periodic", "request")


def checkpoint_contents(
    learner: Learner, reason: str, config_text: str = "", extra_attrs: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checkpoint tree and root attributes of ``learner``'s current state.

    Args:
        learner: whose state is saved.
        reason: why it is saved (``periodic``, ``request``, ``final``, ``stop``, ...), stored as an attribute.
        config_text: the resolved config YAML.
        extra_attrs: the layout that writes it (``world_size``, ``layout``, ``trainer_ranks``, ``frames_per_step``).
    """
    from hpcrl._version import __version__

    attrs = {
        "version": int(learner.policy.version),
        "frames": int(learner.frames),
        "trainer_steps": int(learner.steps),
        "total_frames": int(learner.cfg.experiment.total_frames),
        "time": time.time(),
        "hpcrl_version": __version__,
        "config": config_text,
        "reason": reason,
        **(extra_attrs or {}),
    }
    return learner.checkpoint_tree(), attrs


class Checkpointer:
    """Saves a learner's state as checkpoints in a run dir, when the cadence says so, and resumes from them.

    The trainer leader writes (with ``run_dir``); other trainer ranks make one without a run dir, which
    only :meth:`restore` from the file the leader picked. A periodic save with a background
    ``run.checkpoint_writer`` only copies the state here and is written by the writer; its outcome is
    collected by :meth:`collect` (at the next :meth:`after_step`, save or :meth:`close`).

    Args:
        cfg: the experiment (``run.checkpoint_every_*``, ``keep_checkpoints``, ``checkpoint_writer``,
            ``on_save_error``).
        learner: whose state is saved and restored.
        run_dir: the prepared run directory, or None (this process writes no checkpoints).
        config_text: the resolved config YAML stored in checkpoints.
        extra_attrs: more root attributes for checkpoints (``world_size``, ``layout``, ``trainer_ranks``,
            ``frames_per_step``), compared with a checkpoint's on resume.
        trace: this rank's trace writer, or None.
        policy: in a multi-policy run, the policy whose checkpoints these are (``RUN_DIR/checkpoints/<policy>``).
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        learner: Learner,
        run_dir: Path | None,
        config_text: str = "",
        extra_attrs: dict[str, Any] | None = None,
        trace: Any = None,
        policy: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.learner = learner
        self.config_text = config_text
        self.extra_attrs = dict(extra_attrs or {})
        self.trace = trace
        self.policy = policy
        self.last_checkpoint: Path | None = None
        self.saves_failed = 0
        self.state_time = 0.0
        """``time.time()`` when the newest checkpoint's state was taken (0: none yet in this process)."""
        self._last_time = time.monotonic()
        self._last_step = 0
        self._manager: CheckpointManager | None = None
        self._saver: BackgroundSaver | None = None
        if run_dir is not None:
            from hpcrl.storage.background import make_saver
            from hpcrl.storage.checkpoint import CheckpointManager

            self._manager = CheckpointManager(run_dir, keep=cfg.run.keep_checkpoints, policy=policy)
            self._saver = make_saver(self._manager, cfg.run.checkpoint_writer)

    @property
    def manager(self) -> CheckpointManager | None:
        """The checkpoint files this checkpointer writes and resumes from (None: it writes none)."""
        return self._manager

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints (it has a run dir)."""
        return self._manager is not None

    # ------------------------------------------------------------------ cadence
    def due(self) -> bool:
        """Whether the step/second cadence asks for a checkpoint now."""
        if self._manager is None:
            return False
        run = self.cfg.run
        if run.checkpoint_every_steps and self.learner.steps - self._last_step >= run.checkpoint_every_steps:
            return True
        return bool(run.checkpoint_every_seconds and time.monotonic() - self._last_time >= run.checkpoint_every_seconds)

    def after_step(self) -> None:
        """Call after every trainer step: collect a finished background save, then save if the cadence says so.

        Raises:
            CheckpointError: a save failed and ``run.on_save_error`` is ``stop``.
        """
        if self._manager is None:
            return
        self.collect()
        if self.due():
            self.save("periodic")

    # ------------------------------------------------------------------ saving
    def save(self, reason: str = "periodic") -> Path | None:
        """Write a checkpoint. A failed save is logged; with ``on_save_error: stop`` it raises.

        With a background ``run.checkpoint_writer`` a periodic or requested save only copies the state here
        and is written by the writer (returns ``None``; :attr:`last_checkpoint` is set once it is on disk, and
        a failure is handled at the next :meth:`collect`). Every other save (``final``, ``stop``) waits for a
        background save in flight, then writes in place and returns the file.

        Raises:
            CheckpointError: the save failed and ``run.on_save_error`` is ``stop``.
        """
        if self._manager is None:
            return None
        from hpcrl.storage.checkpoint import CheckpointError

        saver = self._saver if reason in _BACKGROUND else None
        t0 = time.perf_counter()
        if self._saver is not None:
            self.collect(wait=True)  # files land in version order; at most one extra copy in memory
        self.state_time = time.time()
        tree, attrs = checkpoint_contents(self.learner, reason, self.config_text, self.extra_attrs)
        try:
            if saver is not None:
                saver.submit(tree, attrs, reason)
                path = None
            else:
                path = self._manager.save(tree, attrs)
        except CheckpointError as e:
            self._save_failed(reason, e)
            return None
        finally:
            self._last_time = time.monotonic()
            self._last_step = self.learner.steps
        dt = time.perf_counter() - t0
        if self.trace is not None:
            self.trace.add_time("checkpoint", dt)
        version = self.learner.policy.version
        if path is None:
            log.debug("checkpoint version %d handed to the background writer (trainer paused %.3fs)", version, dt)
            return None
        self.last_checkpoint = path
        log.info("checkpoint %s (version %d, %d frames, %.2fs)", path.name, version, self.learner.frames, dt)
        return path

    def serve(self, request: tuple[str, float] | None) -> bool:
        """Save now if ``request`` (who asked, when) came after the newest checkpoint's state was taken.

        A checkpoint request (SIGUSR2, a ``checkpoint`` control message) is served by any checkpoint whose
        state is taken after it was made, so the copies of one request that several ranks forward, or a
        request that a periodic save overtook, cost one checkpoint. The run goes on.

        Returns:
            Whether a checkpoint was started (written now, or handed to the background writer).

        Raises:
            CheckpointError: the save failed and ``run.on_save_error`` is ``stop``.
        """
        if request is None or self._manager is None or request[1] <= self.state_time:
            return False
        log.info("checkpoint requested by %s", request[0])
        self.save("request")
        return True

    def collect(self, wait: bool = False) -> None:
        """Handle a finished background save: log it, or apply ``on_save_error`` to its failure.

        Args:
            wait: block until the save in flight (if any) has finished.

        Raises:
            CheckpointError: it failed and ``on_save_error`` is ``stop``.
        """
        if self._saver is None:
            return
        outcome = self._saver.wait() if wait else self._saver.poll()
        if outcome is None:
            return
        if outcome.error is not None:
            self._save_failed(outcome.reason, outcome.error)
            return
        assert outcome.path is not None
        self.last_checkpoint = outcome.path
        log.info(
            "checkpoint %s (version %d, written in %.2fs in the background)",
            outcome.path.name,
            outcome.version,
            outcome.write_seconds,
        )

    def close(self) -> None:
        """Finish a background save still in flight (its failure is logged, not raised); stop the writer."""
        if self._saver is None:
            return
        from hpcrl.storage.checkpoint import CheckpointError

        if self._saver.busy:
            log.info("waiting for the checkpoint being written in the background")
        try:
            self.collect(wait=True)
        except CheckpointError:
            pass  # already logged by _save_failed
        finally:
            self._saver.close()

    def _save_failed(self, reason: str, error: Exception) -> None:
        self.saves_failed += 1
        log.error("checkpoint save failed (%s): %s", reason, error)
        if self.cfg.run.on_save_error == "stop":
            raise error

    # ------------------------------------------------------------------ resuming
    def restore(self, path: Path | None = None) -> Path | None:
        """Resume the learner from ``path`` or, with a run dir, the newest valid checkpoint; returns the file used.

        Raises:
            CheckpointError: checkpoints exist but none is valid (never a silent fresh start), or the stored
                policy or trainer state does not fit the configured ones.
        """
        from hpcrl.storage.checkpoint import CheckpointError, load_checkpoint

        if path is None:
            if self._manager is None:
                return None
            self._manager.sweep_tmp()
            found = self._manager.latest_valid()
            if found is None:
                self.refuse_other_layout()
                return None
            path, tree, attrs = found
        else:
            tree, attrs = load_checkpoint(path)
        if self.writes:  # every trainer rank loads the same file: one message is enough
            self.check_compatible(path, attrs)
        try:
            self.learner.load_checkpoint_tree(tree, path)
        except CheckpointError as e:
            raise CheckpointError(f"{e}{_spec_pair(attrs.get('config'), self.config_text)}") from e
        self._last_step = self.learner.steps
        if log.isEnabledFor(logging.DEBUG):  # what this rank now holds (checked against the file in tests)
            from hpcrl.storage.tree import tree_digest

            log.debug("restored state of %s: digest %s", path.name, tree_digest(self.learner.checkpoint_tree()))
        return path

    def refuse_other_layout(self) -> None:
        """Refuse to start afresh beside the checkpoints of a run with the other checkpoint layout.

        A single-policy run keeps ``RUN_DIR/checkpoints/ckpt-*.h5``, a multi-policy run
        ``RUN_DIR/checkpoints/<policy>/ckpt-*.h5``; a config of one kind finding only the other's checkpoints
        would otherwise start from scratch beside them.

        Raises:
            CheckpointError: the other layout's checkpoints are there (names the directory and the way out).
        """
        from hpcrl.storage.checkpoint import CheckpointError, CheckpointManager

        assert self._manager is not None
        mine = self._manager.dir
        top = mine.parent if self.policy is not None else mine
        if not top.is_dir():
            return
        if self.policy is None:
            others = sorted(d.name for d in top.iterdir() if d.is_dir() and CheckpointManager(d, directory=d).list())
            kind, theirs = "a multi-policy run", f"policies {', '.join(others)}"
        else:
            others = [p.name for p in CheckpointManager(top.parent).list()]
            kind, theirs = "a single-policy run", f"{len(others)} checkpoint file(s)"
        if others:
            raise CheckpointError(
                f"{top} holds the checkpoints of {kind} ({theirs}), which this config cannot resume; "
                f"use another run.dir, or set run.fresh to move them aside and start from scratch"
            )

    def check_compatible(self, path: Path, attrs: dict[str, Any]) -> None:
        """Log how the checkpoint's run differs from this one: rank layout, frames per step, frame budget, specs.

        Weights, optimizer state, policy version and frames are the same on every trainer rank, so a
        different world size, trainer count or batch size resumes exactly; only the batch composition
        (frames per trainer step) changes. Schedules follow ``frames / experiment.total_frames``, so they
        continue where they were; a changed ``total_frames`` rescales them from here on (logged). A
        different ``environment`` or ``policy`` section (even one whose spaces match, such as another env
        id) is logged as one WARNING with a unified diff of the two sections: the run resumes with the new spec.
        """
        keys = ("world_size", "layout", "trainer_ranks", "frames_per_step")
        ours = self.extra_attrs
        if any(ours.get(k) is not None and attrs.get(k) is not None and str(ours[k]) != str(attrs[k]) for k in keys):
            log.warning(
                "resuming with a different layout: %s was written by %s; this run is %s. Weights, optimizer state, "
                "policy version and frames (%d) carry over; only the batch composition changes. Schedules follow "
                "frames / experiment.total_frames, not trainer steps, so they continue where they were",
                path,
                _describe_layout(attrs),
                _describe_layout(self.extra_attrs),
                int(attrs.get("frames", 0)),
            )
        theirs = attrs.get("total_frames")
        mine = int(self.cfg.experiment.total_frames)
        if theirs is not None and int(theirs) != mine:
            frames = int(attrs.get("frames", 0))
            log.warning(
                "%s was written by a run with experiment.total_frames=%d; this run has %d: schedules follow "
                "frames / %d from here on (at %d frames: %.1f%% of the run instead of %.1f%%)",
                path,
                int(theirs),
                mine,
                mine,
                frames,
                100.0 * min(1.0, frames / mine) if mine else 100.0,
                100.0 * min(1.0, frames / int(theirs)) if int(theirs) else 100.0,
            )
        if self.config_text:
            diff = spec_diff(attrs.get("config"), self.config_text, f"{path.name} (checkpoint)")
            if diff:
                log.warning(
                    "%s was written with another environment/policy spec; this run resumes it with the new spec:\n%s",
                    path,
                    diff,
                )


def spec_diff(stored: Any, current: str, stored_name: str = "checkpoint") -> str | None:
    """A unified diff of the ``environment`` and ``policy`` sections of two config YAML texts.

    ``stored`` comes from a checkpoint's ``config`` attribute: it is parsed with
    :func:`hpcrl.api.yaml_input.parse_yaml` (plain data, bounded alias expansion) and only compared, never used
    to build anything.

    Returns:
        The diff (``---``/``+++`` headers, ``stored_name`` vs ``this run``), or None when the sections are
        equal or ``stored`` is not a config (missing, not YAML, not a mapping; logged at DEBUG).
    """
    import difflib

    import yaml

    if not isinstance(stored, str):
        return None
    try:
        old, new = config.parse_yaml(stored, stored_name), config.parse_yaml(current, "this run's config")
    except config.ConfigError as e:
        log.warning("cannot compare the stored config of %s with this run's: %s", stored_name, e)
        return None
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    a = {k: old.get(k) for k in _SPEC_SECTIONS}
    b = {k: new.get(k) for k in _SPEC_SECTIONS}
    if a == b:
        return None
    lines = difflib.unified_diff(
        yaml.safe_dump(a, sort_keys=True).splitlines(),
        yaml.safe_dump(b, sort_keys=True).splitlines(),
        fromfile=stored_name,
        tofile="this run",
        lineterm="",
    )
    return "\n".join(lines)


def _describe_layout(attrs: dict[str, Any]) -> str:
    """``layout '...' (world size N, T trainer ranks, F frames per trainer step)`` from checkpoint attributes."""
    parts = [f"world size {attrs['world_size']}"] if attrs.get("world_size") is not None else []
    if attrs.get("trainer_ranks") is not None:
        parts.append(f"{attrs['trainer_ranks']} trainer rank(s)")
    if attrs.get("frames_per_step") is not None:
        parts.append(f"{attrs['frames_per_step']} frames per trainer step")
    layout = f"layout {str(attrs.get('layout', '?'))!r}"
    return f"{layout} ({', '.join(parts)})" if parts else layout


def _spec_pair(stored: Any, current: str) -> str:
    """``; the checkpoint's policy: {...}; this run's policy: {...}`` (one line each, flow YAML), or ``""``.

    Added to a resume error so that the message names both configs; ``""`` when either config cannot be
    read or the two ``policy`` sections are equal.
    """
    import yaml

    if not isinstance(stored, str) or not current:
        return ""
    try:
        old, new = config.parse_yaml(stored, "checkpoint"), config.parse_yaml(current, "this run's config")
    except config.ConfigError:
        return ""
    if not isinstance(old, dict) or not isinstance(new, dict) or old.get("policy") == new.get("policy"):
        return ""

    def flow(section: Any) -> str:
        return " ".join(yaml.safe_dump(section, default_flow_style=True, sort_keys=True, width=10**6).split())

    return f"; the checkpoint's policy: {flow(old.get('policy'))}; this run's policy: {flow(new.get('policy'))}"
