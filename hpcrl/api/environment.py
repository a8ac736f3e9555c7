"""The environment API: what users implement to plug a task into hpcrl.

An :class:`Environment` hosts ``agent_count`` agents. ``reset()`` and ``step()`` return
one :class:`StepResult` per agent (``None`` for an agent that does not act this step).
Actions arrive as a list with one NamedArray (or ``None``) per agent.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.api.registry import Registry

if TYPE_CHECKING:
    from hpcrl.api import config

__all__ = ["Environment", "StepResult", "Action", "AVAILABLE_ACTION", "register", "make", "ALL_ENVIRONMENTS"]

#: The observation field holding an agent's action mask: one 0/1 (or bool) entry per action of a discrete
#: head (``(n,)``), or per choice of every component of a multi-discrete head (``(sum(nvec),)``). The
#: actor-critic policies never sample, nor choose deterministically, an action whose entry is 0.
AVAILABLE_ACTION = "available_action"


#: the default ``StepResult.truncated``: a shared read-only ``(1,)`` bool ``False`` (hpcrl.envs.results.FALSE).
_NOT_TRUNCATED: np.ndarray = np.zeros(1, np.bool_)
_NOT_TRUNCATED.setflags(write=False)


@dataclasses.dataclass
class StepResult:
    """What one agent sees after a reset or a step.

    Attributes:
        obs: the observation, a NamedArray of named inputs (e.g. ``obs``, plus ``state``
            for a centralized critic); leaves have no batch dimension.
        reward: float array of shape ``(1,)`` (or ``(reward_dim,)``): reward received on
            arriving at ``obs``. Zero after a reset.
        done: bool array of shape ``(1,)``: ``obs`` is terminal (the episode ended; the
            value of ``obs`` is not bootstrapped). A python/numpy bool, or an integer array
            holding 0 or 1 (SRL envs return ``uint8``), is accepted too and converted once
            where the result enters the actor's buffers; other values are an error.
        truncated: like ``done``: the episode was cut (time limit); ``obs`` is the last
            observation and its value is bootstrapped. Defaults to a shared read-only
            ``False`` array (SRL envs leave it out).
        info: extra per-step information (not sent to the trainer).
    """

    obs: NamedArray
    reward: np.ndarray
    done: np.ndarray
    truncated: np.ndarray = dataclasses.field(default_factory=lambda: _NOT_TRUNCATED)
    info: NamedArray | dict[str, Any] = dataclasses.field(default_factory=dict)


class Action(NamedArray):
    """The action record produced by the built-in policies: ``x`` is the (int or float) action."""

    x: np.ndarray


class Environment(abc.ABC):
    """A (possibly multi-agent) environment.

    Implement :attr:`agent_count`, :meth:`reset` and :meth:`step`. Optionally declare
    ``observation_spaces`` / ``action_spaces`` (one gymnasium space per agent; the
    observation space is a ``gymnasium.spaces.Dict`` keyed like ``StepResult.obs``),
    which :func:`hpcrl.testing.test_environment` and the actors check results against.

    The actor steps each env in its own loop; when every acting agent reports ``done``
    or ``truncated`` the actor calls :meth:`reset` (the env does not reset itself).
    """

    @property
    @abc.abstractmethod
    def agent_count(self) -> int:
        """Number of agents (the length of every list ``reset``/``step`` return)."""

    @property
    def observation_spaces(self) -> list[Any] | None:
        """One gymnasium ``Dict`` space per agent, or ``None`` if undeclared."""
        return None

    @property
    def action_spaces(self) -> list[Any] | None:
        """One gymnasium space per agent (``Discrete``, ``MultiDiscrete``, ``Box``), or ``None``."""
        return None

    @abc.abstractmethod
    def reset(self) -> list[StepResult | None]:
        """Start a new episode; one result per agent."""

    @abc.abstractmethod
    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Apply one action per agent (``None`` for agents that do not act); one result per agent."""

    def seed(self, seed: int) -> None:  # noqa: B027 - optional hook
        """Seed the environment's random generators (called before the first reset)."""

    def set_curriculum_stage(self, stage: str) -> None:  # noqa: B027 - optional hook
        """Switch to a named curriculum stage (no-op unless overridden)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""


ALL_ENVIRONMENTS: Registry[Environment] = Registry("environment")

# Built-ins register lazily: nothing heavy is imported until they are made.
for _name, _target in {
    "gym": "hpcrl.envs.gym_env:GymEnvironment",
    "atari": "hpcrl.envs.atari:AtariEnvironment",
    "pettingzoo": "hpcrl.envs.pettingzoo_env:PettingZooEnvironment",
    "quickstart-multiagent": "hpcrl.envs.toy:QuickstartEnvironment",
    "memory": "hpcrl.envs.toy:MemoryEnvironment",
    "sleep": "hpcrl.envs.toy:SleepEnvironment",
    "null": "hpcrl.envs.toy:NullEnvironment",
}.items():
    ALL_ENVIRONMENTS.register(_name, _target)


def register(name: str, env_class: Any) -> None:
    """Register an environment class (or factory, or ``"module:attr"`` string) under ``name``.

    Raises:
        RegistryError: ``name`` is taken by a different class.
    """
    ALL_ENVIRONMENTS.register(name, env_class)


def make(spec: config.Environment | str, **kwargs: Any) -> Environment:
    """Build an environment from a ``config.Environment`` spec or a registered name.

    Raises:
        RegistryError: unknown name (the message lists the registered ones).
        TypeError: the environment is not an :class:`Environment`.
    """
    if isinstance(spec, str):
        name, args = spec, dict(kwargs)
    else:
        name, args = spec.type_, {**spec.args, **kwargs}
    env = ALL_ENVIRONMENTS.make(name, **args)
    if not isinstance(env, Environment):
        raise TypeError(f"environment {name!r} built a {type(env).__name__}, which is not an hpcrl Environment")
    return env
