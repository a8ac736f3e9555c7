"""Evaluation during training: deterministic episodes of the current policy on envs that produce no samples.

An evaluation (``run.eval_episodes`` > 0) runs on the one process of a local run, or on the first actor rank
under MPI, when the run has stepped ``run.eval_every_frames`` more frames. It builds a fresh ring of
evaluation envs (:func:`make_eval_ring`: seeded apart from every training env, every request marked
``is_evaluation``), steps it until ``run.eval_episodes`` episodes have finished, and closes it. Its fragments
are dropped and its frames are not the run's frames: nothing it steps reaches a trainer. Its training envs
wait meanwhile, so no policy update happens in the middle of an evaluation that runs its policy itself.

No torch and no MPI here (an actor rank with remote inference passes the functions that talk to its
inference rank).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.acting import rings
from hpcrl.acting.env_ring import EnvRing, Episode
from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy, RolloutRequest, check_rollout_result

__all__ = [
    "EVAL_SEED_KEY",
    "eval_seed",
    "make_eval_ring",
    "eval_config",
    "run_evaluation",
    "run_multi_evaluation",
    "summarize_multi",
    "evaluate_inline",
    "summarize",
    "EvalSchedule",
]

#: mixed into the run's seed to seed the evaluation envs (apart from every training env's seed).
EVAL_SEED_KEY = 0x5EED_E7A1


def eval_seed(base_seed: int) -> int:
    """The base seed of a run's evaluation envs: env ``i`` of an evaluation gets ``env_seed(eval_seed(s), i)``."""
    return int(np.random.SeedSequence([base_seed, EVAL_SEED_KEY]).generate_state(1)[0] & 0x7FFFFFFF)


def eval_env_count(cfg: config.ExperimentConfig, limit: int | None = None) -> int:
    """Envs an evaluation steps: ``run.eval_envs`` (default ``run.eval_episodes``), at most that and ``limit``."""
    n = min(cfg.run.eval_envs or cfg.run.eval_episodes, cfg.run.eval_episodes)
    return max(1, n if limit is None else min(n, limit))


def eval_config(cfg: config.ExperimentConfig, limit: int | None = None) -> config.ExperimentConfig:
    """``cfg`` as an evaluation ring sees it: :func:`eval_env_count` envs, seeded by :func:`eval_seed`.

    Args:
        cfg: the experiment.
        limit: at most this many envs (an actor with remote inference: the rows its channels hold).
    """
    actor = dataclasses.replace(cfg.actor, envs_per_actor=eval_env_count(cfg, limit), fragment_length=16)
    experiment = dataclasses.replace(cfg.experiment, seed=eval_seed(cfg.experiment.seed))
    return dataclasses.replace(cfg, actor=actor, experiment=experiment)


def make_eval_ring(
    cfg: config.ExperimentConfig, default_state: NamedArray | None, where: str, limit: int | None = None
) -> EnvRing:
    """A fresh ring of evaluation envs (one group, every request ``is_evaluation``), seeded by :func:`eval_seed`.

    Args:
        cfg: the experiment.
        default_state: one agent's default policy state in row layout, or None.
        where: who runs it, for messages.
        limit: at most this many envs (an actor with remote inference: the rows its channels hold).

    Raises:
        EnvError: an env cannot be built, seeded or reset (names it and ``where``).
    """
    return rings.make_ring(eval_config(cfg, limit), default_state, f"{where} (evaluation)", evaluation=True)


def summarize(episodes: list[Episode], frames: int) -> dict[str, Any]:
    """One evaluation's result: the ``/eval`` row of the trace.

    Its keys: ``frames``, ``policy_version`` (the newest that acted), ``policy_version_min``, ``episodes``,
    ``mean_return``, ``std_return``, ``mean_length``, ``wall_time``.
    """
    rets = [e.ret for e in episodes]
    return {
        "frames": int(frames),
        "policy_version": max((e.version for e in episodes), default=-1),
        "policy_version_min": min((e.version for e in episodes), default=-1),
        "episodes": len(episodes),
        "mean_return": float(np.mean(rets)) if rets else math.nan,
        "std_return": float(np.std(rets)) if rets else math.nan,
        "mean_length": float(np.mean([e.length for e in episodes])) if episodes else math.nan,
        "wall_time": time.time(),
    }


def run_evaluation(
    ring: EnvRing,
    episodes: int,
    act: Callable[[RolloutRequest], tuple[Any, int]],
    stopping: Callable[[], bool] = lambda: False,
) -> list[Episode] | None:
    """Step ``ring`` until ``episodes`` episodes have finished (the first to finish count).

    Args:
        ring: a ring from :func:`make_eval_ring` (closed by the caller).
        episodes: episodes to finish.
        act: runs the policy on a request and returns ``(result, policy version)`` (inline, or a round trip
            to an inference rank).
        stopping: polled every step: True abandons the evaluation.

    Returns:
        The episodes, or None when ``stopping`` said so first.

    Raises:
        EnvError: an env failed (names it).
    """
    done: list[Episode] = []
    while len(done) < episodes:
        if stopping():
            return None
        result, version = act(ring.request(0))
        ring.consume(0, result, version)
        ring.pop_fragments()  # evaluation data is never trained on
        if ring.episodes:
            done.extend(ring.pop_episodes())
    return done[:episodes]


def run_multi_evaluation(
    ring: Any,
    episodes: int,
    act: Callable[[int, RolloutRequest], tuple[Any, int]],
    shown: int,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[int, list[Episode]] | None:
    """Step a multi-policy evaluation ring until policy ``shown``'s agents have finished ``episodes`` episodes.

    Args:
        ring: a :class:`~hpcrl.acting.policy_ring.PolicyRing` built on :func:`eval_config` with
            ``evaluation=True`` (closed by the caller).
        episodes: episodes of policy ``shown``'s agents to finish.
        act: runs policy ``p`` on its request and returns ``(result, version)``.
        shown: the index of the policy whose episodes count (the run's first trained policy).
        stopping: polled every step: True abandons the evaluation.

    Returns:
        Every policy's finished episodes (by policy index; policy ``shown``'s first ``episodes``), or None
        when ``stopping`` said so first.

    Raises:
        EnvError: an env failed (names it).
    """
    done: dict[int, list[Episode]] = {}
    while len(done.get(shown, ())) < episodes:
        if stopping():
            return None
        requests = ring.request_parts(0)
        ring.consume_parts(0, [None if r is None else act(p, r) for p, r in enumerate(requests)])
        for p in range(len(requests)):
            ring.pop_part_fragments(p)  # evaluation data is never trained on
        for e in ring.pop_episodes():
            done.setdefault(e.policy, []).append(e)
    done[shown] = done[shown][:episodes]
    return done


def summarize_multi(done: dict[int, list[Episode]], shown: int, names: list[str], frames: int) -> dict[str, Any]:
    """A multi-policy evaluation's result: :func:`summarize` of policy ``shown``'s episodes, and more.

    The :func:`summarize` keys (the ``/eval`` row of the trace) describe policy ``shown``'s agents;
    ``mean_return_by_policy`` gives every policy's agents' mean return over the episodes they finished.
    """
    out = summarize(done.get(shown, []), frames)
    out["mean_return_by_policy"] = {
        name: round(float(np.mean([e.ret for e in done[p]])), 4) if done.get(p) else None
        for p, name in enumerate(names)
    }
    return out


def evaluate_inline(
    cfg: config.ExperimentConfig,
    policy: Policy,
    who: str,
    where: str,
    frames: int,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, Any] | None:
    """One evaluation of ``policy``, run in this process on a fresh evaluation ring (closed afterwards).

    Args:
        cfg: the experiment (``run.eval_episodes``, ``run.eval_envs``, the env and actor settings).
        policy: the policy (not updated meanwhile: one version acts in every episode).
        who: names the policy in errors.
        where: who runs it, for messages (``local actor``, ``actor rank 3``).
        frames: the run's frames, recorded with the result.
        stopping: polled every step: True abandons the evaluation (returns None).

    Returns:
        :func:`summarize`'s result, or None when abandoned.
    """
    ring = make_eval_ring(cfg, rings.default_state_row(policy), where)
    try:

        def act(request: RolloutRequest) -> tuple[Any, int]:
            return check_rollout_result(policy.rollout(request), len(request), who), int(policy.version)

        done = run_evaluation(ring, cfg.run.eval_episodes, act, stopping)
    finally:
        ring.close()
    return None if done is None else summarize(done, frames)


class EvalSchedule:
    """When the run is due for its next evaluation: every ``run.eval_every_frames`` frames of the run.

    Args:
        cfg: the experiment (``run.eval_episodes``, ``run.eval_every_frames``).
        start_frames: frames already done (a resumed run evaluates at the next multiple).

    Examples:
        >>> from hpcrl.api.config import from_dict
        >>> cfg = from_dict({"environment": {"type_": "gym"}, "policy": {"type_": "p"}, "trainer": {"type_": "t"},
        ...                  "run": {"eval_episodes": 5, "eval_every_frames": 1000}})
        >>> s = EvalSchedule(cfg, start_frames=2500)
        >>> s.due(2999), s.due(3000), s.due(3500), s.due(4100)
        (False, True, False, True)
    """

    def __init__(self, cfg: config.ExperimentConfig, start_frames: int = 0) -> None:
        self.enabled = cfg.run.eval_episodes > 0
        self.every = cfg.run.eval_every_frames
        self.next = (start_frames // self.every + 1) * self.every

    def due(self, frames: int) -> bool:
        """True once per crossing of a multiple of ``every`` (a crossing of several at once counts once)."""
        if not self.enabled or frames < self.next:
            return False
        self.next = (frames // self.every + 1) * self.every
        return True
