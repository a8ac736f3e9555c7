"""Component specs of an experiment config: which environment, policy and trainer to build, and with what.

Plain frozen dataclasses (re-exported by :mod:`hpcrl.api.config`, which loads them strictly from YAML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Environment", "Policy", "PolicyEntry", "AgentMatch", "Trainer", "trainer_counts", "mpi_refusal"]


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


def trainer_counts(cfg: Any) -> dict[str, int]:
    """The trainer ranks of every trained policy of an MPI run, in ``policies`` order (``default`` for one policy).

    ``layout.trainers`` is a count (a multi-policy run: that many ranks for every trained policy) or, in a
    multi-policy config, a mapping policy name -> count (a trained policy it does not name gets 1). Frozen
    policies get none.

    Raises:
        ConfigError: a mapping in a single-policy config, a key that names no policy or a frozen one, a
            count below 1 (each names ``layout.trainers`` and the key).
    """
    from hpcrl.api.errors import ConfigError

    value = cfg.layout.trainers
    if not cfg.policies:
        if isinstance(value, dict):
            raise ConfigError(
                "layout.trainers: a mapping policy -> count is for multi-policy configs (policies: ...); "
                "a single-policy config gives a count"
            )
        return {"default": int(value)}
    trained = [n for n in cfg.policies if n in cfg.trainers]
    if not isinstance(value, dict):
        return {n: int(value) for n in trained}
    for name, count in value.items():
        if name not in cfg.policies:
            known = ", ".join(repr(n) for n in cfg.policies)
            raise ConfigError(
                f"layout.trainers.{name}: no policy named {name!r} in policies (expected one of: {known})"
            )
        if name not in cfg.trainers:
            raise ConfigError(
                f"layout.trainers.{name}: policy {name!r} is frozen (it has no entry in trainers), so it gets no "
                "trainer rank; name only trained policies"
            )
        if count < 1:
            raise ConfigError(f"layout.trainers.{name}: must be >= 1, got {count!r}")
    return {n: int(value.get(n, 1)) for n in trained}


def mpi_refusal(cfg: Any) -> str | None:
    """Why a multi-policy config cannot run on several MPI ranks yet (one line naming the key), or None.

    Under ``mpiexec`` a multi-policy run has trainer ranks per trained policy, and actors that run every
    policy inline or inference ranks that serve every policy (in self-play, the actors play the opponents
    themselves); a run without any trained policy runs in one process only.
    """
    if not cfg.policies:
        return None
    one = "runs in one process for now (python -m hpcrl.run without mpiexec)"
    if not cfg.trainers:
        return f"trainers: a multi-policy config without any trained policy {one}"
    if len(cfg.policies) > 100:
        return f"policies: a multi-policy config under mpiexec has at most 100 policies, this one {len(cfg.policies)}"
    return None
