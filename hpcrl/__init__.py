"""hpcrl: MPI-native reinforcement learning (actor, inference and trainer ranks).

``import hpcrl`` is light: torch and gymnasium are imported only when a component that
needs them is built.
"""

from __future__ import annotations

import logging
from typing import Any

from hpcrl._version import __version__
from hpcrl.api.data import AnalyzedResult, RolloutRequest, RolloutResult, SampleBatch
from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray, namedarray
from hpcrl.api.policy import Policy
from hpcrl.api.trainer import Trainer, TrainerStepResult, TrainingProgress

__all__ = [
    "Environment",
    "StepResult",
    "NamedArray",
    "namedarray",
    "Policy",
    "RolloutRequest",
    "RolloutResult",
    "SampleBatch",
    "AnalyzedResult",
    "Trainer",
    "TrainerStepResult",
    "TrainingProgress",
    "load_policy",
    "__version__",
]

logging.getLogger("hpcrl").addHandler(logging.NullHandler())


def load_policy(path: str, device: str = "cpu", *, config: Any = None, trust_config: bool = False) -> Any:
    """Load a trained policy from a checkpoint file or a run directory (newest valid checkpoint).

    The policy named by the config stored in the checkpoint is built only if it is registered in
    this process (a built-in, or one your code registered before this call); nothing the file names
    is imported otherwise. See :func:`hpcrl.storage.checkpoint.load_policy`.

    Args:
        path: an ``.h5`` checkpoint or a run directory.
        device: where to put the model.
        config: build the policy from your own config instead (an ``ExperimentConfig`` or a YAML file).
        trust_config: build what the stored config names, importing its ``experiment.imports``.

    Returns:
        The policy with its weights and version.

    Raises:
        hpcrl.storage.stored_config.UntrustedConfigError: the stored config names unregistered code.
    """
    from hpcrl.storage.checkpoint import load_policy as _load

    return _load(path, device=device, config=config, trust_config=trust_config)
