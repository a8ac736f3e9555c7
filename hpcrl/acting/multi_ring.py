"""The env ring of a multi-policy actor, and one evaluation of every policy of a multi-policy run.

Shared by the one-process loop (:mod:`hpcrl.roles.local_multi`), the MPI actors
(:mod:`hpcrl.roles.actor_multi`) and ``test_pipeline``: :func:`make_multi_ring` gives each policy one part of
a :class:`~hpcrl.acting.policy_ring.PolicyRing` (plus self-play's opponent part), and
:func:`evaluate_policies` plays every policy in a fresh evaluation ring.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.acting import rings
from hpcrl.acting.policy_ring import PartSpec, PolicyRing
from hpcrl.api import config
from hpcrl.api.policy import Policy, RolloutRequest, check_rollout_result
from hpcrl.api.selfplay_spec import agent_owners, pool_part_name
from hpcrl.runtime import components

__all__ = ["evaluate_policies", "fixed_opponent_acts", "make_multi_ring"]


def make_multi_ring(
    cfg: config.ExperimentConfig,
    names: list[str],
    policies: list[Policy] | None,
    where: str,
    *,
    defaults: list[Any] | None = None,
    actor_index: int = 0,
    num_groups: int = 1,
    device: str | None = None,
    evaluation: bool = False,
) -> PolicyRing:
    """The env ring of a multi-policy actor: one part per policy, plus self-play's opponent part.

    With ``selfplay`` the ring is a :class:`~hpcrl.acting.selfplay.SelfPlayRing` whose pool holds one snapshot
    of the self-play policy's current weights; its opponent part is the last one (index ``len(cfg.policies)``).
    An evaluation ring of a self-play run has that part too, without a pool: the caller acts for it.

    Args:
        cfg: the resolved multi-policy experiment (:func:`resolve_policies`).
        names: the policy name of every agent index of the env (:func:`resolve_policies`).
        policies: the policies, in ``policies`` order (:func:`build_policies`); None where they act on
            inference ranks (then ``defaults`` gives their default states). With inference ranks and
            ``selfplay``, the list holds the self-play policy and its fixed opponents (None for the others):
            the ring's pool is built from them.
        where: who runs the ring, for messages.
        defaults: each policy's default state in row layout (or None); default: from ``policies``.
        actor_index: this actor's index among the run's actors (its envs' seeds).
        num_groups: 1, or 2 to alternate halves with remote inference.
        device: where the self-play snapshots go (default: ``training.device``).
        evaluation: mark every request ``is_evaluation`` (an evaluation ring, built on
            :func:`~hpcrl.acting.evaluation.eval_config`).

    Raises:
        EnvError: an env cannot be built, seeded or reset.
    """
    order = list(cfg.policies)
    if defaults is None:
        assert policies is not None
        defaults = [rings.default_state_row(p) for p in policies]
    parts = [PartSpec(n, d) for n, d in zip(order, defaults)]
    extra: dict[str, Any] = {}
    if cfg.selfplay is not None and evaluation:  # the opponent agents are one more part, acted by the caller
        learner = order.index(cfg.selfplay.policy)
        order.append(pool_part_name(cfg.selfplay.policy))
        parts.append(PartSpec(order[-1], defaults[learner]))
    elif cfg.selfplay is not None:  # the opponent agents are one more part, acted by the pool's snapshots
        from hpcrl.acting.selfplay import SelfPlayRing, SnapshotPool

        assert policies is not None
        sp = cfg.selfplay
        learner = order.index(sp.policy)
        order.append(pool_part_name(sp.policy))
        parts.append(PartSpec(order[-1], defaults[learner]))
        spec = config.Policy(cfg.policies[sp.policy].type_, dict(cfg.policies[sp.policy].args))
        where_to = device or components.resolve_device(cfg.training.device)
        pool = SnapshotPool(
            lambda: components.build_policy(spec, where_to, cfg.experiment.seed),
            sp.pool_size,
            sp.snapshot_every_frames,
            sp.sample,
            cfg.experiment.seed + actor_index,
            fixed=[policies[order.index(n)] for n in sp.fixed_opponents],
            fixed_fraction=sp.fixed_fraction,
        )
        pool.take(policies[learner], 0)  # replaced by the restored weights' snapshot once the run has resumed
        extra = {"ring_class": SelfPlayRing, "ring_args": {"pool": pool, "learner_part": learner}}
        extra["ring_args"]["opponent_part"] = len(order) - 1
    index = {n: i for i, n in enumerate(order)}
    owners = agent_owners if cfg.selfplay is not None else config.policy_of_agents

    def part_of_agent(a: int) -> int:
        return index[names[a] if a < len(names) else owners(cfg, a + 1)[a]]

    ring = rings.make_ring(
        cfg,
        None,
        where,
        actor_index=actor_index,
        num_groups=num_groups,
        evaluation=evaluation,
        parts=parts,
        part_of_agent=part_of_agent,
        **extra,
    )
    assert isinstance(ring, PolicyRing)
    return ring


def fixed_opponent_acts(policy: Policy, label: str, request: Any) -> tuple[Any, int]:
    """A fixed self-play opponent's answer to the opponent rows of an evaluation ring, and its version.

    It plays as in training: the rows are not marked ``is_evaluation`` (a random opponent stays random).
    """
    n = len(request)
    unmarked = RolloutRequest(
        obs=request.obs,
        policy_state=request.policy_state,
        is_evaluation=np.zeros((n, 1), np.bool_),
        on_reset=request.on_reset,
    )
    return check_rollout_result(policy.rollout(unmarked), n, label), int(policy.version)


def evaluate_policies(
    cfg: config.ExperimentConfig,
    names: list[str],
    policies: list[Policy],
    labels: list[str],
    where: str,
    frames: int,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Any] | None:
    """One evaluation during training of a multi-policy run: every policy plays its agents, deterministically.

    A fresh evaluation ring (:func:`~hpcrl.acting.evaluation.eval_config`: its own seeds, every request
    ``is_evaluation``) steps until the first trained policy's agents finished ``run.eval_episodes`` episodes.
    In a self-play run the opponent agents play the first of ``selfplay.fixed_opponents``, as in training
    (their requests are not marked ``is_evaluation``: a random opponent stays random).

    Args:
        cfg: the resolved multi-policy experiment.
        names: the policy name of every agent index.
        policies: the policies, in ``policies`` order (not updated meanwhile).
        labels: name each policy in the errors of result checks.
        where: who runs it, for messages.
        frames: the run's frames, recorded with the result.
        stopping: polled every step: True abandons the evaluation (returns None).

    Returns:
        :func:`~hpcrl.acting.evaluation.summarize_multi`'s result, or None when abandoned.
    """
    from hpcrl.acting.evaluation import eval_config, run_multi_evaluation, summarize_multi

    order = list(cfg.policies)
    shown = order.index(next(n for n in order if n in cfg.trainers))
    acting = list(policies)
    labels = list(labels)
    if cfg.selfplay is not None:  # the opponent agents play the first fixed opponent (config rules ask for one)
        fixed = order.index(cfg.selfplay.fixed_opponents[0])
        acting.append(policies[fixed])
        labels.append(f"{labels[fixed]} (fixed opponent)")
    ring = make_multi_ring(eval_config(cfg), names, policies, f"{where} (evaluation)", evaluation=True)
    try:

        def act(p: int, request: Any) -> tuple[Any, int]:
            policy = acting[p]
            if p == len(order):  # the fixed opponent plays as in training (a random one stays random)
                return fixed_opponent_acts(policy, labels[p], request)
            return check_rollout_result(policy.rollout(request), len(request), labels[p]), int(policy.version)

        done = run_multi_evaluation(ring, cfg.run.eval_episodes, act, shown, stopping)
    finally:
        ring.close()
    return None if done is None else summarize_multi(done, shown, order, frames)
