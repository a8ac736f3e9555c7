"""The trainer API: how a policy is optimised from sample batches.

Trainers never import mpi4py. The trainer role injects a :class:`GradientSync` as
``trainer.sync`` before the first step; on one rank it is a no-op. A trainer calls
``self.sync.allreduce_gradients(params)`` between ``backward()`` and the optimizer step
(one collective over one flat buffer), and ``self.sync.allreduce_mean(x)`` for any
decision that all trainer ranks must take together (e.g. KL early stopping).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.api.registry import Registry

if TYPE_CHECKING:
    from hpcrl.api import config
    from hpcrl.api.policy import Policy

__all__ = [
    "Trainer",
    "SampleBatch",
    "TrainerStepResult",
    "GradientSync",
    "NonFiniteError",
    "register",
    "make",
    "ALL_TRAINERS",
]


class SampleBatch(NamedArray, extra=True):
    """Trajectories for training: every leaf is ``(T + 1, B, ...)`` (time, batch).

    Row ``t`` of a column describes one decision point of one agent:

    * ``obs``: the observation at ``t``; ``on_reset`` (bool ``(.., 1)``): it is the first of an episode;
    * ``policy_state``: the policy state *before* acting on ``obs`` (already reset on ``on_reset``);
    * ``action``, ``analyzed_result`` (e.g. ``log_prob``, ``value``): what the policy did on ``obs``;
    * ``reward`` (float ``(.., 1)``): the reward received on arriving at ``obs``;
    * ``done`` / ``truncated`` (bool ``(.., 1)``): ``obs`` is terminal / the last of a cut episode.
      Such a row is not a decision (its action is never applied); its value bootstraps
      a truncated episode and is ignored for a terminated one.
    * ``policy_version`` (int64 ``(.., 1)``): the policy version that acted.

    The last row (``t = T``) is only there to bootstrap: consecutive fragments of the
    same agent overlap by that one row. Unknown extra fields are kept, never dropped.
    """

    obs: NamedArray
    policy_state: NamedArray | None = None
    action: NamedArray | None = None
    analyzed_result: NamedArray | None = None
    reward: np.ndarray | None = None
    done: np.ndarray | None = None
    truncated: np.ndarray | None = None
    policy_version: np.ndarray | None = None
    on_reset: np.ndarray | None = None


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
        nonfinite: ``"skip"`` (skip the update, count it) or ``"stop"`` (raise
            :class:`NonFiniteError`) when a loss or gradient is NaN/Inf.
    """

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.sync: GradientSync = GradientSync()
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
