"""An environment written the SRL way, used as it is: registered as ``srl-masked-choice``.

SRL envs return ``done`` as a ``uint8`` array, leave ``truncated`` out (SRL's ``StepResult`` defaults it to
``np.zeros(1, np.uint8)``) or pass it as ``uint8`` too, and put the legal actions in the observation
field ``available_action``. hpcrl takes all of that as it is (see docs/masks.md).

The task: each step a random subset of ``n_actions`` actions is legal; the observation shows a target
action (always legal); choosing it earns 1. An illegal action raises, so a run that finishes never
took one. The last observation of an episode has no legal action left (like a finished board game).

Check it (from the repository root)::

    python -c "import examples.srl_port.env; from hpcrl.testing import test_environment; \\
        print(test_environment('srl-masked-choice'))"
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import Environment, StepResult, register
from hpcrl.api.namedarray import NamedArray

__all__ = ["SrlMaskedChoice"]


class SrlMaskedChoice(Environment):
    """Pick the shown target among the legal actions.

    Args:
        n_actions: number of actions.
        episode_length: steps until ``done`` (a ``uint8`` 1).
        time_limit: steps until ``truncated`` (a ``uint8`` 1) when shorter than ``episode_length``.
        seed: seeds the legal subsets and targets.
    """

    def __init__(self, n_actions: int = 6, episode_length: int = 10, time_limit: int = 0, seed: int = 0):
        self.n = n_actions
        self.episode_length = episode_length
        self.time_limit = time_limit
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.legal = np.ones(self.n, np.uint8)
        self.target = 0

    @property
    def agent_count(self) -> int:
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        return [
            spaces.Dict(
                obs=spaces.Box(0.0, 1.0, (self.n,), np.float32),
                available_action=spaces.Box(0, 1, (self.n,), np.uint8),
            )
        ]

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(self.n)]

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def _observe(self, last: bool) -> NamedArray:
        if last:
            self.legal = np.zeros(self.n, np.uint8)  # nothing left to do
        else:
            self.legal = (self.rng.random(self.n) < 0.5).astype(np.uint8)
            self.target = int(self.rng.integers(self.n))
            self.legal[self.target] = 1
        obs = np.zeros(self.n, np.float32)
        if not last:
            obs[self.target] = 1.0
        return NamedArray(obs=obs, available_action=self.legal.copy())

    def reset(self) -> list[StepResult]:
        self.t = 0
        return [
            StepResult(
                obs=self._observe(False),
                reward=np.zeros(1, dtype=np.float32),
                done=np.zeros(1, dtype=np.uint8),
                info=dict(),
            )
        ]

    def step(self, actions: list[Any]) -> list[StepResult]:
        a = int(actions[0].x)
        if not self.legal[a]:
            raise ValueError(f"srl-masked-choice: illegal action {a}; legal: {np.flatnonzero(self.legal).tolist()}")
        reward = np.array([1.0 if a == self.target else 0.0], dtype=np.float32)
        self.t += 1
        done = self.t >= self.episode_length
        truncated = 0 < self.time_limit <= self.t and not done
        return [
            StepResult(
                obs=self._observe(done or truncated),
                reward=reward,
                done=np.array([done], dtype=np.uint8),
                info=dict(),
                truncated=np.array([truncated], dtype=np.uint8),
            )
        ]


register("srl-masked-choice", SrlMaskedChoice)
