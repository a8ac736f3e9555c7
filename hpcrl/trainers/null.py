"""A trainer that does not train: it only bumps the policy version (for tests and pipeline checks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hpcrl.api.data import SampleBatch
from hpcrl.api.trainer import Trainer, TrainerStepResult

if TYPE_CHECKING:
    from hpcrl.api.policy import Policy

__all__ = ["NullTrainer"]


class NullTrainer(Trainer):
    """Increments the policy version on every step and reports the frames it saw.

    Args:
        policy: any policy (no parameters needed).

    Examples:
        >>> import numpy as np
        >>> from hpcrl.api.namedarray import NamedArray
        >>> from hpcrl.policies.random import RandomPolicy
        >>> trainer = NullTrainer(RandomPolicy())
        >>> batch = SampleBatch(obs=NamedArray(obs=np.zeros((5, 3, 2))), reward=np.zeros((5, 3, 1)))
        >>> result = trainer.step(batch)
        >>> result.stats, result.step, trainer.policy.version
        ({'frames': 12.0}, 1, 1)
    """

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self._step = 0

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        """Count the ``T * B`` frames of ``samples`` (``T + 1`` rows), bump the version, return ``{"frames": ...}``."""
        frames = 0
        for _, leaf in samples.flat_items():
            shape = np.shape(leaf)
            if len(shape) >= 2:
                frames = max(int(shape[0]) - 1, 0) * int(shape[1])
                break
        self.policy.inc_version()
        self._step += 1
        return TrainerStepResult(stats={"frames": float(frames)}, step=self._step)

    def get_checkpoint(self) -> dict[str, int]:
        """``{"step": int}``."""
        return {"step": self._step}

    def load_checkpoint(self, checkpoint: dict[str, object]) -> None:
        """Restore the step counter."""
        self._step = int(checkpoint.get("step", 0))  # type: ignore[call-overload]
