"""A multi-agent test env whose agents see their own index: the base of the multi-policy tests' envs.

Registers nothing (pytest's doctest collection imports test helper modules under a second name), so the
one-process, ``test_pipeline`` and MPI tests can all subclass it and register their own variants.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray

__all__ = ["IndexedAgentsEnv"]


class IndexedAgentsEnv(Environment):
    """``n_agents`` agents; agent ``a`` sees ``[a, t / episode_length]``; an episode lasts ``episode_length`` steps.

    Subclasses say what an action earns (:meth:`reward`). Shared by the multi-policy tests (one process,
    ``test_pipeline`` and MPI).
    """

    def __init__(self, n_agents: int = 2, episode_length: int = 8) -> None:
        self.n = n_agents
        self.length = episode_length
        self.t = 0

    @property
    def agent_count(self) -> int:
        return self.n

    @property
    def observation_spaces(self) -> list[Any]:
        return [spaces.Dict(obs=spaces.Box(-np.inf, np.inf, (2,), np.float32))] * self.n

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(2)] * self.n

    def seed(self, seed: int) -> None:
        pass

    def reward(self, agent: int, action: int) -> float:
        """What ``action`` earns ``agent`` (nothing here; subclasses say)."""
        return 0.0

    def _results(self, rewards: list[float]) -> list[StepResult | None]:
        done = self.t >= self.length
        return [
            StepResult(
                obs=NamedArray(obs=np.array([a, self.t / self.length], np.float32)),
                reward=np.array([rewards[a]], np.float32),
                done=np.array([done]),
                truncated=np.array([False]),
            )
            for a in range(self.n)
        ]

    def reset(self) -> list[StepResult | None]:
        self.t = 0
        return self._results([0.0] * self.n)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        self.t += 1
        return self._results([self.reward(a, int(x.x)) for a, x in enumerate(actions)])  # type: ignore[union-attr]
