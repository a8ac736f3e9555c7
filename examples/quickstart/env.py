"""A user-written two-agent environment, registered as ``quickstart-example``.

This is how you plug your own task into hpcrl: subclass ``Environment``, return one
``StepResult`` per agent from ``reset()``/``step()``, declare the spaces, and ``register`` the
class under a name your YAML can use. It is a plain re-implementation of the built-in
``quickstart-multiagent`` task (same rule, same sizes), written only against the public API.

Check it before training::

    python -c "import env; from hpcrl.testing import test_environment; print(test_environment('quickstart-example'))"
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import Environment, StepResult, register
from hpcrl.api.namedarray import NamedArray

OBS_DIM = 187  # what each agent sees
STATE_DIM = 623  # what a centralized critic sees
N_ACTIONS = 16


class QuickstartExample(Environment):
    """Two agents; each is rewarded for picking the index of the largest of its 16 "cue" inputs.

    * Agent ``i`` earns 1 when its action equals ``argmax(obs[0:16])``.
    * A team coin ``m`` (0 or 1) is visible only in ``state[374]``; when both agents are right,
      each earns an extra ``m``. The actors cannot see it, but a critic reading ``state`` can.

    Random play earns about 2 per 32-step episode; following the rule earns about 48.
    """

    def __init__(self, episode_length: int = 32, seed: int = 0) -> None:
        self.episode_length = episode_length
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.targets = [0, 0]
        self.coin = 0

    # --- what the runtime (and test_environment) reads -------------------------------
    @property
    def agent_count(self) -> int:
        return 2

    @property
    def observation_spaces(self) -> list[Any]:
        one = spaces.Dict(
            obs=spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
            state=spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
        )
        return [one, one]

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(N_ACTIONS), spaces.Discrete(N_ACTIONS)]

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    # --- the task ------------------------------------------------------------------------
    def _observe(self, rewards: list[float], done: bool) -> list[StepResult | None]:
        obs = np.zeros((2, OBS_DIM), np.float32)
        for i in range(2):
            cue = self.rng.normal(0.0, 0.1, 16) + np.eye(16)[self.rng.integers(16)]
            obs[i, 0:16] = cue
            obs[i, 32 + i] = 1.0  # agent id
            obs[i, 34] = self.t / self.episode_length  # progress
            self.targets[i] = int(np.argmax(obs[i, 0:16]))
        self.coin = int(self.rng.integers(2))
        state = np.zeros(STATE_DIM, np.float32)
        state[:374] = obs.reshape(-1)
        state[374] = self.coin
        state[375 + self.coin] = 1.0
        return [
            StepResult(
                obs=NamedArray(obs=obs[i], state=state.copy()),
                reward=np.array([rewards[i]], np.float32),
                done=np.array([done]),
                truncated=np.array([False]),
            )
            for i in range(2)
        ]

    def reset(self) -> list[StepResult | None]:
        self.t = 0
        return self._observe([0.0, 0.0], done=False)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        chosen = [int(a.x) for a in actions]  # the built-in policies send Action(x=...)
        right = [chosen[i] == self.targets[i] for i in range(2)]
        bonus = float(self.coin) if all(right) else 0.0
        rewards = [float(right[i]) + bonus for i in range(2)]
        self.t += 1
        return self._observe(rewards, done=self.t >= self.episode_length)


register("quickstart-example", QuickstartExample)
