"""PettingZoo environments (Parallel or AEC API) as multi-agent hpcrl Environments, registered as ``pettingzoo``.

Example YAML (MPE's cooperative navigation, ``pip install mpe2``)::

    environment:
      type_: pettingzoo
      args: {env: "mpe2:simple_spread_v3", max_cycles: 25, continuous_actions: false}

Agents are numbered in the order of ``possible_agents``; ``agent_count = len(possible_agents)``.
An agent that is absent (not spawned yet, or gone after its final result) gets ``None``.
Observations are converted like gymnasium's (:mod:`hpcrl.envs.spaces`); if the env has a global
``state()`` and ``state_space``, it is added to every agent's observation as the field ``state``
(for a centralized critic).

Action masks: PettingZoo envs give a legal-action mask as the observation key ``action_mask`` (classic
games) or as ``info["action_mask"]``. With ``action_mask: auto`` (the default) an observation key
``action_mask`` becomes the field ``available_action``, which the actor-critic policies apply to their
logits; ``action_mask: info`` builds ``available_action`` from each result's info instead (``int8``, one
entry per action); ``action_mask: off`` keeps the observation as it is.

* **Parallel envs** step all live agents at once. An agent that leaves without a termination or
  truncation flag gets a final ``truncated`` result with its last observation, so every
  trajectory the runtime sees ends properly.
* **AEC envs** marked ``is_parallelizable`` are converted with
  ``pettingzoo.utils.conversions.aec_to_parallel``. Other (turn-based) AEC envs are stepped
  natively: each hpcrl step only the agent whose turn it is gets a result (with the reward it
  accumulated since its last turn); when agents are done, all of them get their final results
  in the same step.
"""

from __future__ import annotations

import importlib
import logging
import types
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.api.environment import AVAILABLE_ACTION, Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.results import FALSE, TRUE, ZERO_REWARD, reward_array
from hpcrl.envs.spaces import ActionAdapter, ObsAdapter, convert_leaf

__all__ = ["PettingZooEnvironment", "load_pettingzoo"]

logger = logging.getLogger(__name__)


def load_pettingzoo(env: Any, kwargs: dict[str, Any]) -> Any:
    """Build a PettingZoo env from ``"module:attr"``, a module, a factory or an env instance.

    A module (``"mpe2:simple_spread_v3"``, ``"pettingzoo.classic:rps_v2"``) is built with its
    ``parallel_env`` when the env is parallelizable, else with its ``env`` (AEC).

    Raises:
        ImportError: pettingzoo or the named module is missing.
        ValueError: a malformed spec or an object that is no PettingZoo env (named in the message).
    """
    try:
        from pettingzoo.utils.env import AECEnv, ParallelEnv
    except ImportError as e:
        raise ImportError("the pettingzoo env needs PettingZoo: pip install pettingzoo") from e
    obj = env
    if isinstance(env, str):
        module, sep, attr = env.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"pettingzoo env {env!r}: expected 'module:factory', e.g. 'mpe2:simple_spread_v3'")
        try:
            obj = importlib.import_module(module)
            for part in attr.split("."):
                if isinstance(obj, types.ModuleType) and not hasattr(obj, part):
                    obj = importlib.import_module(f"{obj.__name__}.{part}")  # a submodule not imported yet
                else:
                    obj = getattr(obj, part)
        except (ImportError, AttributeError) as e:
            raise ImportError(f"pettingzoo env {env!r}: cannot load {attr!r} from {module!r}: {e}") from e
    if isinstance(obj, types.ModuleType):
        par, aec = getattr(obj, "parallel_env", None), getattr(obj, "env", None)
        raw = getattr(obj, "raw_env", None)
        parallelizable = bool(getattr(raw, "metadata", {}).get("is_parallelizable", False))
        factory = par if par is not None and (parallelizable or aec is None) else aec
        if factory is None:
            raise ValueError(f"pettingzoo env {env!r}: module {obj.__name__} has neither parallel_env nor env")
        obj = factory(**kwargs)
    elif not isinstance(obj, (AECEnv, ParallelEnv)) and callable(obj):
        obj = obj(**kwargs)
    elif kwargs:
        raise ValueError(f"pettingzoo env {env!r}: got arguments {sorted(kwargs)} for an already built env")
    if not isinstance(obj, (AECEnv, ParallelEnv)):
        raise ValueError(f"pettingzoo env {env!r} built a {type(obj).__name__}, not a PettingZoo AECEnv/ParallelEnv")
    return obj


class PettingZooEnvironment(Environment):
    """A PettingZoo environment with a fixed agent order (``possible_agents``).

    Args:
        env: ``"module:factory"`` (or ``"module:env_module"``), a factory, or a built env.
        seed: seed of the first reset (``seed()`` overrides it).
        include_state: add the env's global ``state()`` as field ``state``: ``None`` = when the env
            has a ``state_space``, ``True`` = required, ``False`` = never.
        cast_float64: deliver ``float64`` observation boxes as ``float32``.
        clip_actions: clip continuous actions to the action space bounds.
        action_mask: ``auto`` (an observation key ``action_mask`` becomes the field ``available_action``),
            ``info`` (``available_action`` is read from ``info["action_mask"]``) or ``off`` (no mapping).
        **kwargs: passed to the factory (e.g. ``max_cycles``, ``continuous_actions``).

    Raises:
        ImportError: pettingzoo or the env's package is missing.
        ValueError: bad spec, ``include_state=True`` without a state, unsupported spaces.
    """

    def __init__(
        self,
        env: Any,
        seed: int | None = None,
        include_state: bool | None = None,
        cast_float64: bool = True,
        clip_actions: bool = True,
        action_mask: str = "auto",
        **kwargs: Any,
    ) -> None:
        from pettingzoo.utils.env import AECEnv

        self.name = f"pettingzoo:{env}" if isinstance(env, str) else f"pettingzoo:{type(env).__name__}"
        pz = load_pettingzoo(env, kwargs)
        self._turn_based = False
        if isinstance(pz, AECEnv):
            if pz.metadata.get("is_parallelizable", False):
                from pettingzoo.utils.conversions import aec_to_parallel

                pz = aec_to_parallel(pz)
            else:
                self._turn_based = True
        self._env = pz
        self._agents: list[str] = list(pz.possible_agents)
        if not self._agents:
            raise ValueError(f"env {self.name!r}: possible_agents is empty")
        self._index = {a: i for i, a in enumerate(self._agents)}
        state_space = getattr(pz, "state_space", None) if include_state is not False else None
        if include_state and state_space is None:
            raise ValueError(f"env {self.name!r}: include_state=True but the env has no state_space/state()")
        extra: dict[str, Any] = {}
        self._state_conv: Callable[[Any], np.ndarray] | None = None
        if state_space is not None:
            sp, conv = convert_leaf(state_space, cast_float64, f"env {self.name!r} state")
            extra["state"] = sp
            self._state_conv = conv if conv is not None else np.asarray
        if action_mask not in ("auto", "info", "off"):
            raise ValueError(f"env {self.name!r}: action_mask must be 'auto', 'info' or 'off', got {action_mask!r}")
        self._act = [
            ActionAdapter(pz.action_space(a), clip_actions, f"env {self.name!r} agent {i} ({a!r})")
            for i, a in enumerate(self._agents)
        ]
        self._mask_size: list[int] | None = None  # per agent, when masks come from info
        if action_mask == "info":
            self._mask_size = [_mask_size(act.space, f"env {self.name!r} agent {i}") for i, act in enumerate(self._act)]
        self._obs = []
        for i, a in enumerate(self._agents):
            space = pz.observation_space(a)
            what = f"env {self.name!r} agent {i} ({a!r})"
            rename = {}
            if action_mask == "auto" and "action_mask" in getattr(space, "spaces", {}):
                rename["action_mask"] = AVAILABLE_ACTION
            mine = dict(extra)
            if self._mask_size is not None:
                from gymnasium import spaces

                mine[AVAILABLE_ACTION] = spaces.Box(0, 1, (self._mask_size[i],), np.int8)
            self._obs.append(ObsAdapter(space, cast_float64, what, extra=mine, rename=rename))
        self._pending_seed: int | None = None
        self._acting: list[str] = []  # agents expected to act next, in agent order
        self._last: dict[str, NamedArray] = {}
        if seed is not None:
            self.seed(seed)

    # ------------------------------------------------------------------ API
    @property
    def agent_count(self) -> int:
        """``len(possible_agents)``."""
        return len(self._agents)

    @property
    def agent_names(self) -> list[str]:
        """PettingZoo agent names, in hpcrl agent order."""
        return list(self._agents)

    @property
    def observation_spaces(self) -> list[Any]:
        """One ``Dict`` per agent (its observation fields, plus ``state`` when included)."""
        return [o.space for o in self._obs]

    @property
    def action_spaces(self) -> list[Any]:
        """One space per agent (``start=0``, ``float32`` boxes)."""
        return [a.space for a in self._act]

    @property
    def pettingzoo_env(self) -> Any:
        """The underlying PettingZoo env (parallel, converted, or AEC)."""
        return self._env

    def seed(self, seed: int) -> None:
        """Seed the next reset and the agents' action spaces."""
        self._pending_seed = int(seed)
        for i, a in enumerate(self._agents):
            self._env.action_space(a).seed(int(seed) + i)

    def _state(self) -> tuple[Any, ...]:
        if self._state_conv is None:
            return ()
        return (self._state_conv(self._env.state()),)

    def _obs_of(
        self, agent: str, raw: Any, state: tuple[Any, ...], info: Any = None, terminal: bool = False
    ) -> NamedArray:
        i = self._index[agent]
        if self._mask_size is not None:
            state = (*state, self._info_mask(i, agent, info, terminal))
        o = self._obs[i].convert(raw, *state)
        self._last[agent] = o
        return o

    def _info_mask(self, i: int, agent: str, info: Any, terminal: bool) -> np.ndarray:
        """``info["action_mask"]`` as an int8 ``available_action`` (zeros for a terminal result without one)."""
        assert self._mask_size is not None
        n = self._mask_size[i]
        m = info.get("action_mask") if isinstance(info, dict) else None
        if m is None:
            if terminal:
                return np.zeros(n, np.int8)
            raise ValueError(
                f"env {self.name!r}: agent {i} ({agent!r}): info has no 'action_mask' (action_mask='info' reads the "
                f"legal actions from it); info keys: {sorted(info) if isinstance(info, dict) else type(info).__name__}"
            )
        arr = np.asarray(m)
        if arr.shape != (n,):
            raise ValueError(
                f"env {self.name!r}: agent {i} ({agent!r}): info['action_mask'] has shape {arr.shape}, expected ({n},)"
            )
        return arr.astype(np.int8)

    def reset(self) -> list[StepResult | None]:
        """Reset the env; agents present at the start get a result, the others ``None``."""
        seed, self._pending_seed = self._pending_seed, None
        self._last.clear()
        if self._turn_based:
            self._env.reset(seed=seed)
            return self._collect_turn([None] * len(self._agents), first=True)
        obs, infos = self._env.reset(seed=seed)
        state = self._state()
        results: list[StepResult | None] = [None] * len(self._agents)
        for agent, raw in obs.items():
            i = self._index.get(agent)
            if i is None:
                raise ValueError(f"env {self.name!r} reset: agent {agent!r} is not in possible_agents {self._agents}")
            info = infos.get(agent, {})
            results[i] = StepResult(self._obs_of(agent, raw, state, info), ZERO_REWARD, FALSE, FALSE, info)
        self._acting = [a for a in self._agents if a in obs]
        return results

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Step the agents that act (see the module docstring for absent and finished agents)."""
        if not isinstance(actions, list) or len(actions) != len(self._agents):
            n = len(actions) if isinstance(actions, (list, tuple)) else type(actions).__name__
            raise ValueError(f"env {self.name!r} step: got {n} actions, expected a list of {len(self._agents)}")
        if self._turn_based:
            return self._step_turn(actions)
        act: dict[str, Any] = {}
        for agent in self._acting:
            i = self._index[agent]
            a = actions[i]
            if a is None:
                raise ValueError(f"env {self.name!r} step: agent {i} ({agent!r}) is live but its action is None")
            act[agent] = self._convert(i, a)
        obs, rewards, terms, truncs, infos = self._env.step(act)
        state = self._state()
        results: list[StepResult | None] = [None] * len(self._agents)
        acting: list[str] = []
        for agent, raw in obs.items():
            j = self._index.get(agent)
            if j is None:
                raise ValueError(f"env {self.name!r} step: agent {agent!r} is not in possible_agents {self._agents}")
            i = j
            term, trunc = bool(terms.get(agent, False)), bool(truncs.get(agent, False))
            info = infos.get(agent, {})
            results[i] = StepResult(
                self._obs_of(agent, raw, state, info, term or trunc),
                reward_array(rewards.get(agent, 0.0)),
                TRUE if term else FALSE,
                TRUE if trunc else FALSE,
                info,
            )
            if not (term or trunc):
                acting.append(agent)
        for agent in self._acting:
            if agent in obs:
                continue
            # acted, then vanished without an observation: close its trajectory
            i = self._index[agent]
            term = bool(terms.get(agent, False))
            trunc = bool(truncs.get(agent, False)) or not term
            last = self._last.get(agent)
            if last is None:
                continue
            results[i] = StepResult(
                last, reward_array(rewards.get(agent, 0.0)), TRUE if term else FALSE, TRUE if trunc else FALSE, {}
            )
        self._acting = sorted(acting, key=self._index.__getitem__)
        return results

    def _convert(self, i: int, a: NamedArray) -> Any:
        try:
            return self._act[i].convert(a)
        except Exception as e:
            raise ValueError(
                f"env {self.name!r} step: agent {i} ({self._agents[i]!r}): action: expected Action(x=...) for "
                f"{self._act[i].space}, got {a!r} ({type(e).__name__}: {e})"
            ) from e

    # ------------------------------------------------------------------ turn-based AEC
    def _step_turn(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        env = self._env
        if not env.agents:
            raise ValueError(f"env {self.name!r} step: the episode is over; call reset()")
        agent = env.agent_selection
        i = self._index[agent]
        a = actions[i]
        if a is None:
            raise ValueError(f"env {self.name!r} step: it is agent {i}'s ({agent!r}) turn but its action is None")
        env.step(self._convert(i, a))
        return self._collect_turn([None] * len(self._agents), first=False)

    def _collect_turn(self, results: list[StepResult | None], first: bool) -> list[StepResult | None]:
        """Fill in the finished agents' final results and the result of the agent whose turn it is."""
        env = self._env
        state = self._state()
        while env.agents:
            agent = env.agent_selection
            i = self._index.get(agent)
            if i is None:
                raise ValueError(f"env {self.name!r}: agent {agent!r} is not in possible_agents {self._agents}")
            raw, reward, term, trunc, info = env.last()
            if results[i] is not None:  # already reported this step: it is this agent's turn again
                break
            if term or trunc:
                results[i] = StepResult(
                    self._obs_of(agent, raw, state, info, True), reward_array(reward), TRUE if term else FALSE,
                    TRUE if trunc else FALSE, info,
                )  # fmt: skip
                env.step(None)  # the dead step that removes the agent
                continue
            rew = ZERO_REWARD if first else reward_array(reward)
            results[i] = StepResult(self._obs_of(agent, raw, state, info), rew, FALSE, FALSE, info)
            break
        return results

    def close(self) -> None:
        """Close the env."""
        self._env.close()


def _mask_size(space: Any, what: str) -> int:
    """Entries of an action mask for ``space``: ``n``, ``sum(nvec)`` (MultiDiscrete) or ``2 n`` (MultiBinary)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(space.nvec.sum())
    if isinstance(space, spaces.MultiBinary):
        return 2 * int(np.prod(space.shape))
    raise ValueError(f"{what}: action_mask='info' needs a discrete action space, got {space}")
