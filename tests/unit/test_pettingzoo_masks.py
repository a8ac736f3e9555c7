"""The PettingZoo adapter maps ``action_mask`` (observation key or info) onto ``available_action``."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from gymnasium import spaces

from hpcrl.api.environment import Action, make
from hpcrl.policies.actor_critic import policy_args_from_spaces
from hpcrl.testing import test_environment

pz = pytest.importorskip("pettingzoo")
pytestmark = pytest.mark.filterwarnings("ignore:The old environment creation API:DeprecationWarning")

TICTACTOE = "pettingzoo.classic:tictactoe_v3"


def act(x: int) -> Any:
    return Action(x=np.int64(x))


def test_observation_action_mask_becomes_available_action() -> None:
    pytest.importorskip("pygame")
    env = make("pettingzoo", env=TICTACTOE, seed=0)
    space = env.observation_spaces[0]
    assert list(space.spaces) == ["available_action", "observation"]
    assert policy_args_from_spaces(space, env.action_spaces[0])["obs_dim"] == {"observation": [3, 3, 2]}
    results = env.reset()
    assert results[0].obs.available_action.tolist() == [1] * 9
    results = env.step([act(4), None])
    assert results[1].obs.available_action.tolist() == [1, 1, 1, 1, 0, 1, 1, 1, 1]
    # random legal play never ends a game on an illegal move (which would give a -1 without a win)
    report = test_environment(env, steps=300)
    assert report["episodes"] > 20


def test_action_mask_off_keeps_the_observation_as_it_is() -> None:
    pytest.importorskip("pygame")
    env = make("pettingzoo", env=TICTACTOE, action_mask="off")
    assert list(env.observation_spaces[0].spaces) == ["action_mask", "observation"]
    with pytest.raises(ValueError, match="action_mask must be 'auto', 'info' or 'off', got 'yes'"):
        make("pettingzoo", env=TICTACTOE, action_mask="yes")


class InfoMasked:
    """A ParallelEnv with two agents and Discrete(4) actions whose legal actions come in ``info["action_mask"]``."""

    metadata: ClassVar[dict[str, Any]] = {"name": "info-masked"}

    def __init__(self, drop_mask_at: int = -1) -> None:
        self.possible_agents = ["a", "b"]
        self.drop_mask_at = drop_mask_at

    def observation_space(self, agent: str) -> Any:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent: str) -> Any:
        return spaces.Discrete(4)

    def _info(self, done: bool) -> dict[str, dict[str, Any]]:
        if done or self.t == self.drop_mask_at:
            return {a: {} for a in self.agents}
        legal = np.zeros(4, np.int8)
        legal[self.t % 4] = 1
        legal[(self.t + 1) % 4] = 1
        return {a: {"action_mask": legal} for a in self.agents}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        self.t = 0
        self.agents = list(self.possible_agents)
        return {a: np.zeros(2, np.float32) for a in self.agents}, self._info(False)

    def step(self, actions: dict[str, Any]) -> tuple[dict, ...]:
        for a, x in actions.items():
            assert x in (self.t % 4, (self.t + 1) % 4), f"agent {a}: illegal action {x} at t={self.t}"
        self.t += 1
        done = self.t >= 5
        obs = {a: np.zeros(2, np.float32) for a in self.agents}
        return obs, {a: 1.0 for a in obs}, {a: done for a in obs}, {a: False for a in obs}, self._info(done)

    def close(self) -> None:
        pass


def _info_env(**kw: Any) -> Any:
    class Env(InfoMasked, pz.ParallelEnv):  # type: ignore[misc, name-defined]
        pass

    return make("pettingzoo", env=Env(**kw), action_mask="info")


def test_info_action_mask_becomes_available_action() -> None:
    env = _info_env()
    assert list(env.observation_spaces[0].spaces) == ["obs", "available_action"]
    results = env.reset()
    assert results[0].obs.available_action.tolist() == [1, 1, 0, 0]
    assert results[0].obs.available_action.dtype == np.int8
    report = test_environment(env, steps=50)  # the env asserts every action is legal
    assert report["episodes"] == 10
    # the final results carry no mask in info: all zeros (allowed on terminal rows)
    env.reset()
    for t in range(5):
        results = env.step([act(t % 4), act((t + 1) % 4)])
    assert results[0].done[0] and results[0].obs.available_action.tolist() == [0, 0, 0, 0]


def test_a_missing_info_mask_on_a_live_agent_is_named() -> None:
    env = _info_env(drop_mask_at=2)
    env.reset()
    env.step([act(0), act(0)])
    with pytest.raises(ValueError, match=r"agent 0 \('a'\): info has no 'action_mask'"):
        env.step([act(1), act(1)])
