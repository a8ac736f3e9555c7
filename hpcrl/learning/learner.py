"""The trainer side of a run, shared by the one-process loop and trainer ranks: batches, steps, counters, state."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from hpcrl.api import config
from hpcrl.api.policy import Policy
from hpcrl.api.trainer import NonFiniteError, SampleBatch, Trainer, TrainerStepResult, TrainingProgress
from hpcrl.learning.batcher import Batcher

__all__ = ["Learner", "rng_state", "set_rng_state"]

log = logging.getLogger(__name__)


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
    """Owns the trainer side of a run: the batcher, trainer steps, their counters, and the state they make.

    Checkpoint files (cadence, writer, resume) are :class:`~hpcrl.learning.checkpointing.Checkpointer`'s: it
    saves :meth:`checkpoint_tree` and restores with :meth:`load_checkpoint_tree`.

    Args:
        cfg: the experiment.
        policy: the trained policy.
        trainer: the trainer (its ``sync`` already injected).
        batch_size: columns per trainer step.
        trace: this rank's trace writer, or None.
        name: the policy's name in a multi-policy run (``cfg`` is then the policy's own view): errors name it
            besides the types.

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
        trace: Any = None,
        name: str | None = None,
    ) -> None:
        self.cfg = cfg
        self._trainer_label = f"trainer {cfg.single_trainer.type_!r}" + ("" if name is None else f" of policy {name!r}")
        self._policy_label = f"policy {cfg.single_policy.type_!r}" + ("" if name is None else f" (policies.{name})")
        self.policy = policy
        self.trainer = trainer
        self.batcher = Batcher(batch_size, cfg.training.max_staleness)
        self._next: SampleBatch | None = None
        self.trace = trace
        self.steps = 0
        self.skipped_steps = 0
        self.frames = 0
        self.last_stats: dict[str, float] = {}

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
                f"{self._trainer_label} failed on a batch from {self._policy_label}: "
                f"{type(e).__name__}: {e} (does the policy's analyze() return what the trainer needs?)"
            ) from e
        if not isinstance(result, TrainerStepResult):
            shown = repr(result) if len(repr(result)) <= 80 else repr(result)[:77] + "..."
            raise RuntimeError(
                f"{self._trainer_label} ({type(self.trainer).__name__}).step returned {shown} "
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

    # ------------------------------------------------------------------ state
    def checkpoint_tree(self) -> dict[str, Any]:
        """The state a checkpoint holds: the policy's and trainer's checkpoints, counters and RNG states."""
        return {
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

    def load_checkpoint_tree(self, tree: dict[str, Any], path: Path) -> None:
        """Restore :meth:`checkpoint_tree`'s output, read from ``path`` (named in errors and the log).

        Raises:
            CheckpointError: the stored policy or trainer state does not fit the configured ones.
        """
        from hpcrl.storage.checkpoint import CheckpointError

        try:
            self.policy.load_checkpoint(tree["policy"])
        except Exception as e:
            raise CheckpointError(
                f"{path}: its policy does not fit {self._policy_label} as configured: "
                f"{type(e).__name__}: {' '.join(str(e).split())}"
            ) from e
        try:
            self.trainer.load_checkpoint(tree.get("trainer", {}))
        except Exception as e:
            raise CheckpointError(
                f"{path}: its trainer state does not fit {self._trainer_label}: "
                f"{type(e).__name__}: {' '.join(str(e).split())}"
            ) from e
        system = tree.get("system", {})
        self.frames = int(system.get("frames", 0))
        self.steps = int(system.get("trainer_steps", 0))
        self.skipped_steps = int(system.get("skipped_steps", 0))
        self.batcher.dropped = int(system.get("dropped_fragments", 0))
        if "rng" in system:
            set_rng_state(system["rng"])
        log.info(
            "resumed from %s: version %d, %d frames, %d trainer steps",
            path,
            self.policy.version,
            self.frames,
            self.steps,
        )
