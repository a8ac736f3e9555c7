"""Env rings as the config describes them (one factory for every ring), env names, per-env seeds, row states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.acting.env_ring import EnvRing
from hpcrl.api import config
from hpcrl.api.environment import Environment
from hpcrl.api.environment import make as make_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy

__all__ = ["default_state_row", "env_factory", "env_label", "env_seed", "make_ring"]


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


def make_ring(
    cfg: config.ExperimentConfig,
    default_state: NamedArray | None,
    where: str,
    *,
    actor_index: int = 0,
    num_groups: int = 1,
    evaluation: bool = False,
    build_env: Callable[[int], Environment] | None = None,
    parts: Any = None,
    part_of_agent: Callable[[int], int] | None = None,
    ring_class: Any = None,
    ring_args: dict[str, Any] | None = None,
) -> EnvRing:
    """The env ring of one actor as ``cfg`` describes it; every ring of a run, test or evaluation is built here.

    The ring steps ``actor.envs_per_actor`` envs of ``environment`` into fragments of ``actor.fragment_length``
    rows, checks them as ``actor.check_env`` says and handles failures as ``actor.env_failure`` and
    ``actor.max_env_failures`` say. Env ``i`` of actor ``k`` is seeded with
    ``env_seed(experiment.seed, k * envs_per_actor + i)``, so no two envs of a run share a seed. Errors name
    the env (:func:`env_label`), ``where`` and the policy (``policy.type_``).

    Args:
        cfg: the experiment.
        default_state: one agent's default policy state in row layout (:func:`default_state_row`), or None.
        where: who runs the ring, for messages (``actor rank 3``, ``local actor``, ``evaluate``).
        actor_index: this actor's index among the run's actors (its envs' seeds).
        num_groups: 1, or 2 to alternate halves with remote inference.
        evaluation: mark every request ``is_evaluation`` (deterministic actions).
        build_env: builds env ``i`` instead of ``cfg.environment`` (``test_pipeline`` given an env instance).
        parts: a multi-policy ring: the :class:`~hpcrl.acting.policy_ring.PartSpec` of every policy (then
            ``default_state`` is not used and a :class:`~hpcrl.acting.policy_ring.PolicyRing` is returned).
        part_of_agent: with ``parts``: the index of the policy that acts for agent index ``a``.
        ring_class: with ``parts``: a subclass of ``PolicyRing`` to build instead (a self-play run's
            :class:`~hpcrl.acting.selfplay.SelfPlayRing`), given ``ring_args`` as extra keyword arguments.
        ring_args: see ``ring_class``.

    Raises:
        EnvError: an env cannot be built, seeded or reset (names it and ``where``).
    """
    actor = cfg.actor
    n = actor.envs_per_actor
    seeds = [env_seed(cfg.experiment.seed, actor_index * n + i) for i in range(n)]
    if parts is not None:
        from hpcrl.acting.policy_ring import PolicyRing

        assert part_of_agent is not None
        return (ring_class or PolicyRing)(  # type: ignore[no-any-return]
            build_env or env_factory(cfg.environment),
            n,
            num_groups,
            actor.fragment_length,
            env_label(cfg.environment),
            parts,
            part_of_agent,
            where=where,
            seeds=seeds,
            check=actor.check_env,
            env_failure=actor.env_failure,
            max_env_failures=actor.max_env_failures,
            evaluation=evaluation,
            **(ring_args or {}),
        )
    return EnvRing(
        build_env or env_factory(cfg.environment),
        n,
        num_groups,
        actor.fragment_length,
        default_state,
        env_label(cfg.environment),
        where=where,
        seeds=seeds,
        check=actor.check_env,
        env_failure=actor.env_failure,
        max_env_failures=actor.max_env_failures,
        evaluation=evaluation,
        policy_name=cfg.single_policy.type_,
    )
