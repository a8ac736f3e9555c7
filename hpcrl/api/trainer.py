"""The trainer API: how a policy is optimised from sample batches.

Trainers never import mpi4py. The trainer role injects a :class:`GradientSync` as
``trainer.sync`` before the first step; on one rank it is a no-op. A trainer calls
``self.sync.allreduce_gradients(params)`` between ``backward()`` and the optimizer step
(one collective over one flat buffer), and ``self.sync.allreduce_mean(x)`` for any
decision that all trainer ranks must take together (e.g. KL early stopping).

Before every step the role also sets ``trainer.progress`` (a :class:`TrainingProgress`: the
run's env frames so far, its ``experiment.total_frames`` and their ratio). Schedules (learning
rate, entropy bonus, clip range, ...) should be functions of ``progress.fraction``: it is the
same on every trainer rank at a step, is restored from checkpoints, and does not depend on the
rank layout, whereas the number of trainer steps a run takes does.

:class:`SampleBatch` is defined in :mod:`hpcrl.api.data` (with the other records) and is importable
from here too.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.data import SampleBatch
from hpcrl.api.registry import Registry

if TYPE_CHECKING:
    from hpcrl.api import config
    from hpcrl.api.policy import Policy

__all__ = [
    "Trainer",
    "SampleBatch",
    "TrainerStepResult",
    "TrainingProgress",
    "GradientSync",
    "NonFiniteError",
    "register",
    "make",
    "ALL_TRAINERS",
]


@dataclasses.dataclass
class TrainerStepResult:
    """What one trainer step reports.

    Attributes:
        stats: scalar statistics (losses, entropy, approx_kl, grad_norm, ...).
        step: the trainer step count after this step.
        skipped: the update was skipped (e.g. a non-finite loss); weights are unchanged.
    """

    stats: dict[str, float]
    step: int
    skipped: bool = False


@dataclasses.dataclass(frozen=True)
class TrainingProgress:
    """How far the run is, in env frames; what schedules should depend on.

    Attributes:
        frames: env frames (summed over all actors, resumes included) when the step starts. In one
            process it is the env ring's count; under MPI the trainer leader's count from the actors'
            reports, sent to every trainer rank with the per-step agreement.
        total_frames: the run's budget, ``experiment.total_frames`` (0: unknown, e.g. a trainer stepped
            by hand).

    Examples:
        >>> TrainingProgress(frames=25_000, total_frames=100_000).fraction
        0.25
        >>> TrainingProgress(frames=120, total_frames=100).fraction, TrainingProgress(0, 0).fraction
        (1.0, 0.0)
    """

    frames: int = 0
    total_frames: int = 0

    @property
    def fraction(self) -> float:
        """``frames / total_frames`` clipped to ``[0, 1]`` (0.0 when ``total_frames`` is 0)."""
        if self.total_frames <= 0:
            return 0.0
        return min(1.0, max(0.0, self.frames / self.total_frames))


class NonFiniteError(FloatingPointError):
    """A loss or gradient was NaN/Inf and the run is configured to stop."""


class GradientSync:
    """Gradient and scalar synchronisation across trainer ranks; this base class is the 1-rank no-op."""

    world_size: int = 1
    rank: int = 0

    def allreduce_gradients(self, params: Iterable[Any]) -> None:
        """Average ``.grad`` of every parameter across trainer ranks, in place (one collective)."""

    def allreduce_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of a small float array across trainer ranks."""
        return np.asarray(values, dtype=np.float64)

    def destroy(self) -> None:
        """Release communication resources (process groups); the 1-rank version has none."""


class Trainer(abc.ABC):
    """Optimises a policy from sample batches.

    Args:
        policy: the policy to optimise (shared with inline inference in one process).

    Attributes:
        sync: injected by the system before the first step (no-op on one rank).
        progress: set by the system before every :meth:`step`: the run's env frames so far and its
            frame budget (:class:`TrainingProgress`). Compute schedules from ``progress.fraction``,
            never from a count of steps: a step's size in frames depends on the rank layout, which may
            change when a run resumes. Before the first step (or when a trainer is stepped by hand)
            it is ``TrainingProgress(0, 0)``, whose ``fraction`` is 0.
        nonfinite: ``"skip"`` (skip the update, count it) or ``"stop"`` (raise
            :class:`NonFiniteError`) when a loss or gradient is NaN/Inf.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.sync: GradientSync = GradientSync()
        self.progress: TrainingProgress = TrainingProgress()
        self.nonfinite: str = "skip"

    @property
    def policy(self) -> Policy:
        """The policy being optimised."""
        return self._policy

    @abc.abstractmethod
    def step(self, samples: SampleBatch) -> TrainerStepResult:
        """One optimisation step on ``samples``; increments the policy version."""

    def get_checkpoint(self) -> dict[str, Any]:
        """Trainer state (optimizer, counters): tensors, arrays and plain types only."""
        return {}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore from :meth:`get_checkpoint`'s output."""


ALL_TRAINERS: Registry[Trainer] = Registry("trainer")

for _name, _target in {
    "ppo": "hpcrl.trainers.ppo:PPOTrainer",
    "vtrace": "hpcrl.trainers.ppo:make_vtrace",
    "ppg": "hpcrl.trainers.ppg:PPGTrainer",
    "null": "hpcrl.trainers.null:NullTrainer",
}.items():
    ALL_TRAINERS.register(_name, _target)


def register(name: str, trainer_class: Any) -> None:
    """Register a trainer class (or factory, or ``"module:attr"`` string) under ``name``."""
    ALL_TRAINERS.register(name, trainer_class)


def make(spec: config.Trainer | str, policy: Policy, **kwargs: Any) -> Trainer:
    """Build a trainer for ``policy`` from a ``config.Trainer`` spec or a registered name.

    Raises:
        RegistryError: unknown name (the message lists the registered ones).
        TypeError: the result is not a :class:`Trainer`.
    """
    if isinstance(spec, str):
        name, args = spec, dict(kwargs)
    else:
        name, args = spec.type_, {**spec.args, **kwargs}
    trainer = ALL_TRAINERS.make(name, policy, **args)
    if not isinstance(trainer, Trainer):
        raise TypeError(f"trainer {name!r} built a {type(trainer).__name__}, which is not an hpcrl Trainer")
    return trainer
