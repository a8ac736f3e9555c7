"""``test_environment``: build an environment and check what it returns against its declared spaces."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hpcrl.api import config
from hpcrl.api.environment import AVAILABLE_ACTION, Action, Environment, StepResult
from hpcrl.api.environment import make as make_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.checks import EnvChecker, EnvCheckError, normalize_results

__all__ = ["test_environment"]

logger = logging.getLogger(__name__)

#: Consecutive steps in which no agent acts before test_environment declares the env stuck.
_MAX_IDLE_STEPS = 100


def _build_env(spec: Any, env_args: dict[str, Any]) -> tuple[Environment, str, bool]:
    """(env, name for messages, whether we built it and must close it)."""
    if isinstance(spec, Environment):
        if env_args:
            raise TypeError(f"test_environment: got env arguments {sorted(env_args)} for an already built environment")
        label = getattr(spec, "name", None)
        return spec, label if isinstance(label, str) else type(spec).__name__, False
    if isinstance(spec, (config.Environment, str)):
        env = make_env(spec, **env_args)
        label = getattr(env, "name", None)
        if not isinstance(label, str):
            label = spec if isinstance(spec, str) else spec.type_
        return env, label, True
    raise TypeError(
        "test_environment: expected a config.Environment, a registered name or an Environment, "
        f"got {type(spec).__name__}"
    )


def _action(x: np.ndarray) -> NamedArray:
    return Action(x=x)  # type: ignore[call-arg, return-value]  # mypy cannot see @namedarray fields


def _sampler(space: Any, agent: int, name: str) -> Any:
    """A function ``draw(mask)`` of one action record for ``space``, legal under ``available_action`` if given."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        start = int(space.start)
        n = int(space.n)

        def discrete(mask: np.ndarray | None) -> NamedArray:
            m = None if mask is None or mask.shape != (n,) else (mask != 0).astype(np.int8)
            return _action(np.asarray(int(space.sample(mask=m)) - start, np.int64))

        return discrete
    if isinstance(space, spaces.MultiDiscrete):
        cuts = np.cumsum(space.nvec)[:-1] if space.nvec.ndim == 1 else None

        def multi(mask: np.ndarray | None) -> NamedArray:
            m = None
            if cuts is not None and mask is not None and mask.shape == (int(space.nvec.sum()),):
                m = tuple((part != 0).astype(np.int8) for part in np.split(mask, cuts))
            return _action(np.asarray(space.sample(mask=m) - space.start, np.int64))

        return multi
    if isinstance(space, spaces.MultiBinary):
        return lambda mask: _action(np.asarray(space.sample(), np.int8))
    if isinstance(space, spaces.Box):
        return lambda mask: _action(np.asarray(space.sample(), np.float32))
    raise EnvCheckError(
        f"env {name!r}: action_spaces[{agent}] is {space}; test_environment samples Discrete, MultiDiscrete, "
        f"MultiBinary or Box actions"
    )


def _mask_of(r: StepResult) -> np.ndarray | None:
    """The agent's ``available_action`` (a numpy array), if its observation has one."""
    m = r.obs[AVAILABLE_ACTION] if isinstance(r.obs, NamedArray) and AVAILABLE_ACTION in r.obs else None
    return m if isinstance(m, np.ndarray) else None


def test_environment(
    env_spec_or_name: config.Environment | str | Environment,
    test_stepping: bool = True,
    steps: int = 200,
    seed: int = 0,
    **env_args: Any,
) -> dict[str, Any]:
    """Build an environment and validate what it returns, agent by agent, against its declared spaces.

    Resets it, checks the results with :class:`~hpcrl.envs.checks.EnvChecker` (list length ==
    ``agent_count``, obs fields/shapes/dtypes/finiteness per the declared ``observation_spaces``,
    reward/done/truncated types and shapes), then optionally steps it ``steps`` times with random
    actions from the declared ``action_spaces`` (legal ones when the observation has an
    ``available_action`` mask), resetting when every acting agent is done or truncated, exactly
    as the actor would.

    Args:
        env_spec_or_name: a ``config.Environment``, a registered env name, or an ``Environment``.
        test_stepping: also step the env (needs declared ``action_spaces``).
        steps: number of ``step()`` calls.
        seed: passed to ``env.seed()`` and used for the action samplers.
        **env_args: constructor arguments (with a name or spec; merged into ``spec.args``).

    Returns:
        ``{"env", "agent_count", "steps", "episodes", "mean_reward", "mean_episode_return",
        "observation_fields"}``: ``episodes`` counts completed episodes, ``mean_reward`` is per
        agent-step, ``mean_episode_return`` is averaged over agents and completed episodes (NaN if
        none completed), ``observation_fields`` maps agent index -> field -> (shape, dtype).

    Raises:
        EnvCheckError: a result does not match (names env, reset/step N, agent, field, expected vs actual),
            or stepping was requested without declared action spaces.
        TypeError: a bad spec.
    """
    env, name, owned = _build_env(env_spec_or_name, dict(env_args))
    try:
        return _run(env, name, test_stepping, int(steps), int(seed))
    finally:
        if owned:
            env.close()


test_environment.__test__ = False  # type: ignore[attr-defined]


def _run(env: Environment, name: str, test_stepping: bool, steps: int, seed: int) -> dict[str, Any]:
    n = env.agent_count
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise EnvCheckError(f"env {name!r}: agent_count must be a positive int, got {n!r}")
    obs_spaces, act_spaces = env.observation_spaces, env.action_spaces
    checker = EnvChecker(name, int(n), obs_spaces, act_spaces)
    if obs_spaces is None:
        logger.warning("env %r declares no observation_spaces: checking results against the first ones only", name)
    env.seed(seed)
    results = _checked(env.reset(), checker, "reset")
    fields = {
        i: {p: (tuple(x.shape), str(x.dtype)) for p, x in r.obs.flat_items()}
        for i, r in enumerate(results)
        if r is not None
    }
    report: dict[str, Any] = {
        "env": name,
        "agent_count": int(n),
        "steps": 0,
        "episodes": 0,
        "mean_reward": float("nan"),
        "mean_episode_return": float("nan"),
        "observation_fields": fields,
    }
    if not test_stepping or steps <= 0:
        return report
    if act_spaces is None:
        raise EnvCheckError(
            f"env {name!r}: declares no action_spaces, which test_environment needs to sample actions; declare "
            f"action_spaces (one gymnasium space per agent) or call test_environment(..., test_stepping=False)"
        )
    samplers = [_sampler(sp, i, name) for i, sp in enumerate(act_spaces)]
    for i, sp in enumerate(act_spaces):
        sp.seed(seed + i)
    total_reward, agent_steps = 0.0, 0
    ep_return = np.zeros(n)
    returns: list[float] = []
    idle = 0
    for t in range(1, steps + 1):
        actions = [
            samplers[i](_mask_of(r)) if r is not None and not _finished(r) else None for i, r in enumerate(results)
        ]
        checker.check_actions(actions, f"step {t}")
        results = _checked(env.step(actions), checker, f"step {t}")
        present = [r for r in results if r is not None]
        for i, r in enumerate(results):
            if r is not None:
                rew = float(np.sum(r.reward))
                total_reward += rew
                ep_return[i] += rew
                agent_steps += 1
        idle = 0 if present else idle + 1
        if idle >= _MAX_IDLE_STEPS:
            raise EnvCheckError(
                f"env {name!r} step {t}: no agent has had a result for {idle} steps and no episode ended; "
                f"expected some agent to act or finish"
            )
        if present and all(_finished(r) for r in present):
            report["episodes"] += 1
            returns.append(float(ep_return.mean()))
            ep_return[:] = 0.0
            results = _checked(env.reset(), checker, f"reset after step {t}")
        report["steps"] = t
    report["mean_reward"] = total_reward / agent_steps if agent_steps else float("nan")
    report["mean_episode_return"] = float(np.mean(returns)) if returns else float("nan")
    return report


def _finished(r: StepResult) -> bool:
    return bool(np.any(r.done)) or bool(np.any(r.truncated))


def _checked(results: Any, checker: EnvChecker, where: str) -> list[StepResult | None]:
    checker.check(results, where)
    return normalize_results(results)
