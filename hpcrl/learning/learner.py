"""Trainer-role logic shared by the local runner and trainer ranks: batches, steps, checkpoints."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api import config
from hpcrl.api.policy import Policy
from hpcrl.api.trainer import NonFiniteError, SampleBatch, Trainer, TrainerStepResult, TrainingProgress
from hpcrl.learning.batcher import Batcher

if TYPE_CHECKING:
    from hpcrl.storage.background import BackgroundSaver

__all__ = ["Learner", "rng_state", "set_rng_state", "spec_diff"]

log = logging.getLogger(__name__)

#: config sections whose change is reported when a run resumes.
_SPEC_SECTIONS = ("environment", "policy")


def rng_state() -> dict[str, Any]:
    """Global RNG states (python, numpy, torch) as a checkpoint tree (arrays and plain types)."""
    import torch

    py = random.getstate()
    npst: Any = np.random.get_state(legacy=True)
    return {
        "python": {"version": py[0], "state": np.asarray(py[1], np.int64), "gauss": py[2]},
        "numpy": {
            "kind": str(npst[0]),
            "key": np.asarray(npst[1]),
            "pos": int(npst[2]),
            "has_gauss": int(npst[3]),
            "cached_gaussian": float(npst[4]),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output."""
    import torch

    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in np.asarray(py["state"])), py["gauss"]))
    n = state["numpy"]
    np.random.set_state(
        (
            str(n["kind"]),
            np.asarray(n["key"], np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    torch.set_rng_state(torch.as_tensor(np.asarray(state["torch"]), dtype=torch.uint8))


class Learner:
    """Owns the trainer side of a run: the batcher, trainer steps, counters and (on the leader) checkpoints.

    Args:
        cfg: the experiment.
        policy: the trained policy.
        trainer: the trainer (its ``sync`` already injected).
        batch_size: columns per trainer step.
        leader: this rank writes checkpoints.
        run_dir: the prepared run directory (None: no checkpoints, e.g. ``test_pipeline``).
        config_text: the resolved config YAML stored in checkpoints.
        trace: this rank's trace writer, or None.
        extra_attrs: more root attributes for checkpoints (``world_size``, ``layout``, ``trainer_ranks``,
            ``frames_per_step``), compared with a checkpoint's on resume.

    Attributes:
        frames: the run's env frames (resumes included). The caller keeps it current before every
            :meth:`step`; the step hands it to the trainer as ``trainer.progress`` and records it in the trace.
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        policy: Policy,
        trainer: Trainer,
        batch_size: int,
        leader: bool = True,
        run_dir: Path | None = None,
        config_text: str = "",
        trace: Any = None,
        extra_attrs: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.policy = policy
        self.trainer = trainer
        self.batcher = Batcher(batch_size, cfg.training.max_staleness)
        self._next: SampleBatch | None = None
        self.leader = leader
        self.trace = trace
        self.config_text = config_text
        self.extra_attrs = dict(extra_attrs or {})
        self.steps = 0
        self.skipped_steps = 0
        self.frames = 0
        self.last_stats: dict[str, float] = {}
        self.last_checkpoint: Path | None = None
        self._last_ckpt_time = time.monotonic()
        self._last_ckpt_step = 0
        self._ckpt = None
        self._saver: BackgroundSaver | None = None
        self.saves_failed = 0
        if run_dir is not None and leader:
            from hpcrl.storage.checkpoint import CheckpointManager

            self._ckpt = CheckpointManager(run_dir, keep=cfg.run.keep_checkpoints)
            from hpcrl.storage.background import make_saver

            self._saver = make_saver(self._ckpt, cfg.run.checkpoint_writer)

    # ------------------------------------------------------------------ data
    def add(self, fragment: SampleBatch) -> bool:
        """Queue a fragment (dropped and counted if stale)."""
        return self.batcher.add(fragment, self.policy.version)

    def ready(self) -> bool:
        """Whether a full batch is queued (it may still turn out stale: see :meth:`prepare`)."""
        return self._next is not None or self.batcher.ready()

    def prepare(self) -> bool:
        """Cut the next batch now (dropping stale fragments); returns whether one is ready to step on.

        Trainer ranks call this *before* agreeing to step together, so that every rank that
        agreed really has a batch (a stale-drop after the agreement would leave one rank out of
        the gradient collectives and hang the others).
        """
        if self._next is None:
            self._next = self.batcher.pop(self.policy.version)
        return self._next is not None

    def step(self) -> TrainerStepResult | None:
        """Run one trainer step on the prepared batch (or a freshly cut one); None if no batch is ready.

        Raises:
            NonFiniteError: a NaN/Inf loss with ``training.nonfinite: stop``.
            RuntimeError: the trainer failed on the batch, or returned something other than a
                :class:`TrainerStepResult` (message names the trainer and what it returned).
        """
        batch = self._next if self._next is not None else self.batcher.pop(self.policy.version)
        self._next = None
        if self._saver is not None:
            self.collect_save()
        if batch is None:
            return None
        self.trainer.progress = TrainingProgress(int(self.frames), int(self.cfg.experiment.total_frames))
        t0 = time.perf_counter()
        try:
            result = self.trainer.step(batch)
        except NonFiniteError:
            raise
        except (AttributeError, KeyError, TypeError) as e:
            raise RuntimeError(
                f"trainer {self.cfg.trainer.type_!r} failed on a batch from policy {self.cfg.policy.type_!r}: "
                f"{type(e).__name__}: {e} (does the policy's analyze() return what the trainer needs?)"
            ) from e
        if not isinstance(result, TrainerStepResult):
            shown = repr(result) if len(repr(result)) <= 80 else repr(result)[:77] + "..."
            raise RuntimeError(
                f"trainer {self.cfg.trainer.type_!r} ({type(self.trainer).__name__}).step returned {shown} "
                f"({type(result).__name__}); expected a TrainerStepResult"
            )
        dt = time.perf_counter() - t0
        self.steps += 1
        if result.skipped:
            self.skipped_steps += 1
        stats = dict(result.stats)
        stats["dropped_fragments"] = float(self.batcher.dropped)
        stats["skipped_steps"] = float(self.skipped_steps)
        stats["policy_version"] = float(self.policy.version)
        stats["step_seconds"] = dt
        self.last_stats = stats
        if self.trace is not None:
            self.trace.add_time("trainer_step", dt)
            self.trace.trainer_step(self.steps, self.frames, stats)
        return result

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_due(self) -> bool:
        """Whether the step/second cadence asks for a checkpoint now."""
        if self._ckpt is None:
            return False
        run = self.cfg.run
        if run.checkpoint_every_steps and self.steps - self._last_ckpt_step >= run.checkpoint_every_steps:
            return True
        return bool(
            run.checkpoint_every_seconds and time.monotonic() - self._last_ckpt_time >= run.checkpoint_every_seconds
        )

    def save(self, reason: str = "periodic") -> Path | None:
        """Write a checkpoint (leader only). A failed save is logged; with ``on_save_error: stop`` it raises.

        With a background ``run.checkpoint_writer`` a periodic save only copies the state here and is
        written by the writer (returns ``None``; :attr:`last_checkpoint` is set once it is on disk, and a
        failure is handled at the next :meth:`step` or save). Every other save waits for a background
        save in flight, then writes in place and returns the file.
        """
        if self._ckpt is None:
            return None
        from hpcrl.storage.checkpoint import CheckpointError

        saver = self._saver if reason == "periodic" else None
        t0 = time.perf_counter()
        if self._saver is not None:
            self.collect_save(wait=True)  # files land in version order; at most one extra copy in memory
        tree, attrs = self._checkpoint_state(reason)
        try:
            if saver is not None:
                saver.submit(tree, attrs, reason)
                path = None
            else:
                path = self._ckpt.save(tree, attrs)
        except CheckpointError as e:
            self._save_failed(reason, e)
            return None
        finally:
            self._last_ckpt_time = time.monotonic()
            self._last_ckpt_step = self.steps
        dt = time.perf_counter() - t0
        if self.trace is not None:
            self.trace.add_time("checkpoint", dt)
        if path is None:
            log.debug(
                "checkpoint version %d handed to the background writer (trainer paused %.3fs)", self.policy.version, dt
            )
            return None
        self.last_checkpoint = path
        log.info("checkpoint %s (version %d, %d frames, %.2fs)", path.name, self.policy.version, self.frames, dt)
        return path

    def collect_save(self, wait: bool = False) -> None:
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
            self.collect_save(wait=True)
        except CheckpointError:
            pass  # already logged by _save_failed
        finally:
            self._saver.close()

    def _save_failed(self, reason: str, error: Exception) -> None:
        self.saves_failed += 1
        log.error("checkpoint save failed (%s): %s", reason, error)
        if self.cfg.run.on_save_error == "stop":
            raise error

    def _checkpoint_state(self, reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint tree and root attributes of the current state."""
        from hpcrl import __version__

        tree = {
            "policy": self.policy.get_checkpoint(),
            "trainer": self.trainer.get_checkpoint(),
            "system": {
                "frames": int(self.frames),
                "trainer_steps": int(self.steps),
                "skipped_steps": int(self.skipped_steps),
                "dropped_fragments": int(self.batcher.dropped),
                "rng": rng_state(),
            },
        }
        attrs = {
            "version": int(self.policy.version),
            "frames": int(self.frames),
            "trainer_steps": int(self.steps),
            "total_frames": int(self.cfg.experiment.total_frames),
            "time": time.time(),
            "hpcrl_version": __version__,
            "config": self.config_text,
            "reason": reason,
            **self.extra_attrs,
        }
        return tree, attrs

    def restore(self, path: Path | None = None) -> Path | None:
        """Resume from ``path`` or, on the leader, the newest valid checkpoint; returns the file used.

        Raises:
            CheckpointError: checkpoints exist but none is valid (never a silent fresh start).
        """
        from hpcrl.storage.checkpoint import load_checkpoint

        if path is None:
            if self._ckpt is None:
                return None
            self._ckpt.sweep_tmp()
            found = self._ckpt.latest_valid()
            if found is None:
                return None
            path, tree, attrs = found
        else:
            tree, attrs = load_checkpoint(path)
        self.check_compatible(path, attrs)
        from hpcrl.storage.checkpoint import CheckpointError

        try:
            self.policy.load_checkpoint(tree["policy"])
        except Exception as e:
            raise CheckpointError(
                f"{path}: its policy does not fit policy {self.cfg.policy.type_!r} as configured: "
                f"{type(e).__name__}: {' '.join(str(e).split())}"
            ) from e
        try:
            self.trainer.load_checkpoint(tree.get("trainer", {}))
        except Exception as e:
            raise CheckpointError(
                f"{path}: its trainer state does not fit trainer {self.cfg.trainer.type_!r}: "
                f"{type(e).__name__}: {' '.join(str(e).split())}"
            ) from e
        system = tree.get("system", {})
        self.frames = int(system.get("frames", 0))
        self.steps = int(system.get("trainer_steps", 0))
        self.skipped_steps = int(system.get("skipped_steps", 0))
        self.batcher.dropped = int(system.get("dropped_fragments", 0))
        if "rng" in system:
            set_rng_state(system["rng"])
        self._last_ckpt_step = self.steps
        log.info(
            "resumed from %s: version %d, %d frames, %d trainer steps",
            path,
            self.policy.version,
            self.frames,
            self.steps,
        )
        return path

    def check_compatible(self, path: Path, attrs: dict[str, Any]) -> None:
        """Log how the checkpoint's run differs from this one: rank layout, frames per step, frame budget, specs.

        Weights, optimizer state, policy version and frames are the same on every trainer rank, so a
        different world size, trainer count or batch size resumes exactly; only the batch composition
        (frames per trainer step) changes. Schedules follow ``frames / experiment.total_frames``, so they
        continue where they were; a changed ``total_frames`` rescales them from here on (logged). A
        different ``environment`` or ``policy`` section (even one whose spaces match, such as another env
        id) is logged as one WARNING with a unified diff of the two sections: the run resumes with the new spec.
        """
        if not self.leader:  # every trainer rank loads the same file: one message is enough
            return
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
    :func:`hpcrl.api.config.parse_yaml` (plain data, bounded alias expansion) and only compared, never used
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
