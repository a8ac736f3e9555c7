"""Any ``gymnasium.make`` environment as a single-agent hpcrl Environment (registered as ``gym``).

Example YAML::

    environment:
      type_: gym
      args: {id: CartPole-v1, max_episode_steps: 500, wrappers: [FlattenObservation]}

Observations follow :mod:`hpcrl.envs.spaces` (``Box`` kept, ``float64`` -> ``float32``,
``Discrete`` -> one-hot ``float32``, ``Dict`` -> one field per key, otherwise one field ``obs``).
``terminated`` maps to ``done`` and ``truncated`` to ``truncated``. The env does not reset
itself: the actor calls :meth:`GymEnvironment.reset` after ``done`` or ``truncated``.

Seeding: the actor calls :meth:`GymEnvironment.seed` with a per-env seed (derived from the
experiment seed, the actor rank and the env index) before the first reset; that seed goes to
the first ``reset(seed=...)`` and to the action space, so each env is reproducible.

Performance: ``step`` is one action conversion, the gymnasium call and a few constant-time
wraps; flags and repeated rewards are shared read-only arrays (see :mod:`hpcrl.envs.results`).
gymnasium's ``PassiveEnvChecker`` wrapper is left out by default (``disable_env_checker=True``)
because hpcrl validates every env's results itself (:mod:`hpcrl.envs.checks`).
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.results import FALSE, TRUE, ZERO_REWARD, cached_reward, reward_array
from hpcrl.envs.spaces import ActionAdapter, ObsAdapter

__all__ = ["GymEnvironment", "make_gym", "build_wrapper"]

logger = logging.getLogger(__name__)

WrapperSpec = str | Mapping[str, Any]


def _ensure_namespace(env_id: str) -> None:
    """Import the package that registers a well-known namespace (``ALE/...`` needs ``ale_py``)."""
    if env_id.startswith("ALE/"):
        try:
            import ale_py
        except ImportError as e:
            raise ImportError(f"gym env {env_id!r} needs ale-py: install hpcrl[atari] (pip install ale-py)") from e
        import gymnasium

        gymnasium.register_envs(ale_py)


def make_gym(env_id: str, max_episode_steps: int | None = None, disable_env_checker: bool = True, **kwargs: Any) -> Any:
    """``gymnasium.make`` with a helpful error for unknown ids.

    Args:
        env_id: a registered id (``CartPole-v1``, ``ALE/Pong-v5``) or ``"module:EnvId"`` (imports the
            module that registers it first).
        max_episode_steps: overrides the id's time limit.
        disable_env_checker: leave out gymnasium's ``PassiveEnvChecker`` wrapper.
        **kwargs: passed to ``gymnasium.make``.

    Raises:
        ValueError: unknown id; the message lists the closest registered ids.
    """
    import gymnasium

    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"gym env id must be a non-empty string, got {env_id!r}")
    _ensure_namespace(env_id)
    if ":" not in env_id and env_id not in gymnasium.registry:
        known = list(gymnasium.registry)
        close = difflib.get_close_matches(env_id, known, n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown gymnasium env id {env_id!r}{hint} ({len(known)} ids are registered; for an env from another "
            f"package use 'package.module:EnvId' so the module that registers it is imported first)"
        )
    return gymnasium.make(
        env_id, max_episode_steps=max_episode_steps, disable_env_checker=disable_env_checker, **kwargs
    )


def build_wrapper(env: Any, spec: WrapperSpec, what: str = "gym env") -> Any:
    """Wrap ``env`` with one wrapper spec.

    Args:
        env: the gymnasium env.
        spec: ``"module:Class"``, a bare gymnasium wrapper name (``"FlattenObservation"``), or a mapping
            ``{"type": <one of those>, "args": {...}}``.
        what: names the env in error messages.

    Raises:
        ValueError: malformed spec or a class that cannot be found (the message names the spec).
    """
    args: Mapping[str, Any] = {}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"type", "type_", "args"}
        if unknown or not ({"type", "type_"} & set(spec)):
            raise ValueError(
                f"{what}: wrapper spec {dict(spec)!r}: expected keys 'type' (and optional 'args'), got {sorted(spec)}"
            )
        target = spec.get("type", spec.get("type_"))
        args = spec.get("args") or {}
        if not isinstance(args, Mapping):
            raise ValueError(f"{what}: wrapper {target!r}: 'args' must be a mapping, got {type(args).__name__}")
    else:
        target = spec
    if not isinstance(target, str) or not target:
        raise ValueError(f"{what}: wrapper must be 'module:Class' or a gymnasium wrapper name, got {target!r}")
    module_name, _, attr = target.rpartition(":") if ":" in target else ("gymnasium.wrappers", "", target)
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot load wrapper {target!r} ({module_name}.{attr}): {e}") from e
    try:
        return cls(env, **args)
    except TypeError as e:
        raise ValueError(f"{what}: wrapper {target!r} rejected its args {dict(args)!r}: {e}") from e


class GymEnvironment(Environment):
    """A gymnasium environment as a one-agent hpcrl Environment.

    Args:
        id: gymnasium id (``CartPole-v1``, ``Pendulum-v1``, ``HalfCheetah-v5``, ``ALE/Pong-v5``) or
            ``"module:EnvId"``.
        seed: seed of the first reset and of the action space (``seed()`` overrides it).
        wrappers: gymnasium wrappers applied in order after ``gymnasium.make``: ``"module:Class"``,
            a bare name from ``gymnasium.wrappers``, or ``{"type": ..., "args": {...}}``.
        max_episode_steps: time limit (episodes end with ``truncated``); ``None`` keeps the id's own.
        cast_float64: deliver ``float64`` observation boxes as ``float32``.
        clip_actions: clip continuous actions to the action space bounds.
        disable_env_checker: leave out gymnasium's passive checker (hpcrl checks results itself).
        **kwargs: passed to ``gymnasium.make`` (e.g. ``render_mode``, env-specific options).

    Raises:
        ValueError: unknown id (with close matches), a bad wrapper spec.
        SpaceError: an observation or action space hpcrl cannot convert (names it).
    """

    def __init__(
        self,
        id: str,
        seed: int | None = None,
        wrappers: Sequence[WrapperSpec] | None = None,
        max_episode_steps: int | None = None,
        cast_float64: bool = True,
        clip_actions: bool = True,
        disable_env_checker: bool = True,
        **kwargs: Any,
    ) -> None:
        self.name = f"gym:{id}"
        env = make_gym(id, max_episode_steps=max_episode_steps, disable_env_checker=disable_env_checker, **kwargs)
        try:
            for w in wrappers or ():
                env = build_wrapper(env, w, what=self.name)
            self._env = env
            self._obs = ObsAdapter(env.observation_space, cast_float64=cast_float64, what=self.name)
            self._act = ActionAdapter(env.action_space, clip_actions=clip_actions, what=self.name)
        except Exception:
            env.close()
            raise
        self._convert_obs = self._obs.convert
        self._convert_act = self._act.convert
        self._env_step = env.step
        self._pending_seed: int | None = None
        if seed is not None:
            self.seed(seed)

    @property
    def agent_count(self) -> int:
        """Always 1."""
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        """``[Dict(...)]`` keyed like the observation NamedArray."""
        return [self._obs.space]

    @property
    def action_spaces(self) -> list[Any]:
        """``[space]``: ``Discrete``/``MultiDiscrete``/``MultiBinary``/``Box`` (``start=0``, ``float32`` boxes)."""
        return [self._act.space]

    @property
    def gym_env(self) -> Any:
        """The wrapped gymnasium env."""
        return self._env

    def seed(self, seed: int) -> None:
        """Seed the next reset (and the action space); later resets continue the env's own RNG."""
        self._pending_seed = int(seed)
        self._env.action_space.seed(int(seed))

    def reset(self) -> list[StepResult | None]:
        """Reset the gymnasium env (with the pending seed, if any); reward 0, no flags."""
        if self._pending_seed is not None:
            obs, info = self._env.reset(seed=self._pending_seed)
            self._pending_seed = None
        else:
            obs, info = self._env.reset()
        return [StepResult(self._convert_obs(obs), ZERO_REWARD, FALSE, FALSE, info)]

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Apply agent 0's action; ``done`` = terminated, ``truncated`` = truncated."""
        try:
            action = self._convert_act(actions[0])
        except Exception as e:
            raise self._bad_action(actions, e) from e
        obs, r, term, trunc, info = self._env_step(action)
        try:
            rew = cached_reward(r)
        except TypeError:  # an array reward
            rew = None
        if rew is None:
            rew = reward_array(r)
        return [StepResult(self._convert_obs(obs), rew, TRUE if term else FALSE, TRUE if trunc else FALSE, info)]

    def _bad_action(self, actions: Any, e: Exception) -> ValueError:
        got = actions[0] if isinstance(actions, list) and actions else actions
        return ValueError(
            f"env {self.name!r} step: agent 0: action: expected Action(x=...) for {self._act.space}, "
            f"got {got!r} ({type(e).__name__}: {e})"
        )

    def set_curriculum_stage(self, stage: str) -> None:
        """No curriculum for plain gymnasium envs (the call is logged at debug level)."""
        logger.debug("%s: set_curriculum_stage(%r) ignored", self.name, stage)

    def close(self) -> None:
        """Close the gymnasium env."""
        self._env.close()
