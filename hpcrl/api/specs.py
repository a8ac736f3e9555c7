"""Component specs of an experiment config: which environment, policy and trainer to build, and with what.

Plain frozen dataclasses (re-exported by :mod:`hpcrl.api.config`, which loads them strictly from YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Environment", "Policy", "PolicyEntry", "AgentMatch", "Trainer"]


@dataclass(frozen=True)
class Environment:
    """Which environment to build: a registered name plus keyword arguments."""

    type_: str
    """Registered environment name, e.g. ``gym`` or ``quickstart-multiagent``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment's constructor."""


@dataclass(frozen=True)
class Policy:
    """Which policy to build: a registered name plus keyword arguments."""

    type_: str
    """Registered policy name, e.g. ``actor-critic-separate``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the policy's constructor."""


@dataclass(frozen=True)
class PolicyEntry:
    """One named policy of a multi-policy run (an entry of ``policies``)."""

    type_: str
    """Registered policy name, e.g. ``actor-critic-separate``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the policy's constructor."""
    init_from: str | None = None
    """A checkpoint file or run directory (its newest valid checkpoint; for a multi-policy run,
    ``RUN_DIR/checkpoints/<policy>``) whose policy weights this policy starts from; a checkpoint whose policy
    does not fit this one is an error. ``None`` = fresh weights. A resumed run takes the weights of its own
    checkpoint instead."""


@dataclass(frozen=True)
class AgentMatch:
    """Which policy acts for which agents (an entry of ``agents``; the first entry that matches wins)."""

    match: int | str
    """An agent index (``0``), or a regular expression that must match the whole agent index written as a
    string (``"[0-9]*[02468]"``: the even agents; ``".*"``: every agent)."""
    policy: str
    """The name of the policy (a key of ``policies``) that acts for the matched agents."""


@dataclass(frozen=True)
class Trainer:
    """Which trainer to build: a registered name plus keyword arguments (the policy is passed first)."""

    type_: str
    """Registered trainer name, e.g. ``ppo``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the trainer's constructor."""
