"""Env rings as the config describes them: env names for messages, per-env seeds, the policy's row state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.api import config
from hpcrl.api.environment import Environment
from hpcrl.api.environment import make as make_env
from hpcrl.api.policy import Policy

__all__ = ["default_state_row", "env_factory", "env_label", "env_seed"]


def env_label(spec: config.Environment) -> str:
    """A short name for messages: ``gym:CartPole-v1``, ``quickstart-multiagent``, ..."""
    for key in ("id", "game", "env"):
        if key in spec.args:
            return f"{spec.type_}:{spec.args[key]}"
    return spec.type_


def env_seed(base_seed: int, global_env_index: int) -> int:
    """Seed of env number ``global_env_index`` (over all actors) for a run seeded with ``base_seed``."""
    return int(np.random.SeedSequence([base_seed, global_env_index]).generate_state(1)[0] & 0x7FFFFFFF)


def env_factory(spec: config.Environment) -> Callable[[int], Environment]:
    """A function building one env from ``spec`` (the index is for messages only)."""

    def build(index: int) -> Environment:
        return make_env(spec)

    return build


def default_state_row(policy: Policy) -> Any:
    """The policy's default state in row layout (size-1 slot removed), or None."""
    from hpcrl.api.policy import state_to_agent

    return state_to_agent(policy.default_policy_state)
