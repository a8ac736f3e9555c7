"""The ``selfplay`` section of a multi-policy config: a trained policy against snapshots of itself.

:class:`SelfPlay` is loaded strictly like every config section; :func:`check_selfplay` holds the rules that
the config alone decides (run when the config is built), :func:`agent_owners` the ones that need the env's
``agent_count`` (run when the run has built the env once). See ``docs/selfplay.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcrl.api.errors import ConfigError

__all__ = ["SelfPlay", "check_selfplay", "agent_owners", "pool_part_name", "is_opponent", "fixed_opponent_version"]


@dataclass(frozen=True)
class SelfPlay:
    """Self-play: the opponent agents play snapshots of a trained policy, drawn from a pool of its past weights."""

    policy: str
    """The trained policy (a key of ``policies`` that has a trainer) whose snapshots fill the pool."""
    opponent_agents: list[int | str]
    """The agents that play a snapshot from the pool: agent indices (``1``) or regular expressions that must
    match the whole index written as a string (``"[13579]"``), as in ``agents``. They are never trained on.
    ``agents`` may map them to the self-play policy or to nothing; mapping them to another policy is an error."""
    pool_size: int = field(default=8, metadata={"ge": 1, "gt": None, "le": None})
    """K: the pool keeps the newest K snapshots (each a full copy of the policy's weights in memory)."""
    snapshot_every_frames: int = field(default=10_000, metadata={"ge": None, "gt": 0, "le": None})
    """F: take a snapshot of the trained policy's current weights every F frames of the run (skipped when its
    version has not changed since the newest snapshot). The pool starts with one snapshot of the weights the
    run starts from."""
    sample: Literal["uniform", "latest_weighted"] = "uniform"
    """How an episode's opponent snapshot is drawn from the pool of n snapshots: ``uniform`` = each with
    probability 1/n; ``latest_weighted`` = the i-th oldest (i = 1 .. n) with probability i / (n (n + 1) / 2),
    so the newest is n times as likely as the oldest."""
    fixed_opponents: list[str] = field(default_factory=list)
    """Frozen policies (keys of ``policies`` without a trainer, e.g. a ``random`` one) that also play the
    opponent agents, in a ``fixed_fraction`` of the episodes; they need not act for any agent otherwise. Their
    results must have the self-play policy's layout (its action, state and analysed-result fields)."""
    fixed_fraction: float = field(default=0.0, metadata={"ge": 0.0, "gt": None, "le": 1.0})
    """The probability that an episode's opponents are a fixed opponent (drawn uniformly among
    ``fixed_opponents``) instead of a snapshot from the pool; 0 with no fixed opponents."""


def fixed_opponent_version(k: int) -> int:
    """The opponent version that names fixed opponent ``k`` in the score, the trace and the summary: -1 - k.

    >>> fixed_opponent_version(0), fixed_opponent_version(2)
    (-1, -3)
    """
    return -1 - k


def pool_part_name(policy: str) -> str:
    """The name the opponent agents of self-play go by in the env ring and in messages: ``NAME@pool``."""
    return f"{policy}@pool"


def _matches(m: int | str, agent: int) -> bool:
    return agent == m if isinstance(m, int) else re.fullmatch(m, str(agent)) is not None


def is_opponent(sp: SelfPlay, agent: int) -> bool:
    """Whether agent index ``agent`` is an opponent agent of ``sp`` (one of ``opponent_agents`` matches it)."""
    return any(_matches(m, agent) for m in sp.opponent_agents)


def check_selfplay(cfg: Any) -> None:
    """The rules of ``selfplay`` that the config alone decides (ConfigError naming the key path).

    Only with ``policies``; ``selfplay.policy`` names a policy that has a trainer; ``opponent_agents`` is a
    non-empty list of agent indices >= 0 and valid regular expressions; ``pool_size >= 1``;
    ``snapshot_every_frames > 0``; ``fixed_opponents`` are distinct frozen policies and come with a
    ``fixed_fraction`` > 0 (and the other way round); evaluation during training (``run.eval_episodes``,
    ``run.save_best``) only with a fixed opponent to play.
    """
    sp = cfg.selfplay
    if sp is None:
        return
    if not cfg.policies:
        raise ConfigError("selfplay: only with policies (a multi-policy run); this config has no policies")
    if sp.policy not in cfg.policies:
        known = ", ".join(repr(n) for n in cfg.policies)
        raise ConfigError(f"selfplay.policy: unknown policy {sp.policy!r}; expected one of: {known}")
    if sp.policy not in cfg.trainers:
        raise ConfigError(
            f"selfplay.policy: policy {sp.policy!r} has no trainer (trainers.{sp.policy}); self-play needs a "
            "trained policy, whose snapshots fill the pool"
        )
    if sp.pool_size < 1:
        raise ConfigError(f"selfplay.pool_size: must be >= 1, got {sp.pool_size}")
    if sp.snapshot_every_frames <= 0:
        raise ConfigError(f"selfplay.snapshot_every_frames: must be > 0, got {sp.snapshot_every_frames}")
    if not 0.0 <= sp.fixed_fraction <= 1.0:  # NaN fails too
        raise ConfigError(f"selfplay.fixed_fraction: must be >= 0 and <= 1, got {sp.fixed_fraction!r}")
    for i, name in enumerate(sp.fixed_opponents):
        if name not in cfg.policies:
            known = ", ".join(repr(n) for n in cfg.policies)
            raise ConfigError(f"selfplay.fixed_opponents[{i}]: unknown policy {name!r}; expected one of: {known}")
        if name in cfg.trainers:
            raise ConfigError(
                f"selfplay.fixed_opponents[{i}]: policy {name!r} has a trainer (trainers.{name}); a fixed opponent "
                "is a frozen policy"
            )
    if len(set(sp.fixed_opponents)) != len(sp.fixed_opponents):
        raise ConfigError(f"selfplay.fixed_opponents: a policy is listed twice in {sp.fixed_opponents}")
    if sp.fixed_fraction > 0 and not sp.fixed_opponents:
        raise ConfigError(
            f"selfplay.fixed_fraction: {sp.fixed_fraction} needs fixed_opponents (frozen policies that play the "
            "opponent agents in that share of the episodes)"
        )
    if sp.fixed_opponents and sp.fixed_fraction == 0:
        raise ConfigError(
            "selfplay.fixed_fraction: 0 with fixed_opponents, which would never play; give the share of the "
            "episodes they play (0 < fixed_fraction <= 1)"
        )
    if (cfg.run.eval_episodes or cfg.run.save_best) and not sp.fixed_opponents:
        key = "run.eval_episodes" if cfg.run.eval_episodes else "run.save_best"
        raise ConfigError(
            f"{key}: a self-play run evaluates against its first fixed opponent, and this one has none; give "
            "selfplay.fixed_opponents (e.g. a frozen random policy), or evaluate a checkpoint against a fixed "
            "opponent with python -m hpcrl.evaluate"
        )
    if not sp.opponent_agents:
        raise ConfigError("selfplay.opponent_agents: empty; list the agents that play the pool's snapshots")
    for i, m in enumerate(sp.opponent_agents):
        if isinstance(m, int):
            if m < 0:
                raise ConfigError(f"selfplay.opponent_agents[{i}]: an agent index must be >= 0, got {m}")
            continue
        try:
            re.compile(m)
        except re.error as e:
            raise ConfigError(f"selfplay.opponent_agents[{i}]: bad regular expression {m!r}: {e}") from None


def agent_owners(cfg: Any, agent_count: int, env: str = "the environment") -> list[str]:
    """Who acts for every agent: a policy name, or :func:`pool_part_name` for the opponent agents of self-play.

    An opponent agent (``selfplay.opponent_agents`` matches it) plays the pool; ``agents`` may map it to the
    self-play policy or to nothing. Every other agent is mapped by ``agents`` as usual.

    Raises:
        ConfigError: an opponent agent that ``agents`` gives to another policy, an agent that nothing
            matches, no opponent agent or no agent of the self-play policy in the env (names the key path).
    """
    sp = cfg.selfplay
    assert sp is not None
    pool = pool_part_name(sp.policy)
    out: list[str] = []
    for a in range(agent_count):
        given = next(((j, e.policy) for j, e in enumerate(cfg.agents) if _matches(e.match, a)), None)
        if is_opponent(sp, a):
            if given is not None and given[1] != sp.policy:
                raise ConfigError(
                    f"selfplay.opponent_agents: agent {a} of {env} is an opponent agent, but agents[{given[0]}] gives "
                    f"it to policy {given[1]!r}; an opponent agent may only be mapped to the self-play policy "
                    f"{sp.policy!r} or to no policy"
                )
            out.append(pool)
        elif given is None:
            raise ConfigError(
                f"agents: agent {a} of {env} (agent_count {agent_count}) is matched by no entry (and by no "
                f"selfplay.opponent_agents); add an entry whose match is {a} or a regular expression matching "
                f"{str(a)!r}"
            )
        else:
            out.append(given[1])
    if pool not in out:
        raise ConfigError(f"selfplay.opponent_agents: matches no agent of {env} (agent_count {agent_count})")
    if sp.policy not in out:
        raise ConfigError(
            f"selfplay.policy: policy {sp.policy!r} acts for no agent of {env} (agent_count {agent_count}) that is "
            "not an opponent agent; map at least one other agent to it in agents"
        )
    return out
