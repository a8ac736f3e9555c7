"""hpcrl.testing.test_environment: builds envs every way, steps them, and reports precise errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from hpcrl.api import config
from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.registry import RegistryError
from hpcrl.envs.checks import EnvCheckError
from hpcrl.envs.toy import NullEnvironment
from hpcrl.testing import test_environment

REPO = Path(__file__).resolve().parents[2]


class BuggyEnv(Environment):
    """Two agents; agent 1 switches its obs to float64 at step ``bad_step`` (None = never)."""

    name = "buggy"

    def __init__(self, bad_step: int | None = 3, declare_actions: bool = True, results: int = 2) -> None:
        self.bad_step = bad_step
        self.declare_actions = declare_actions
        self.n_results = results
        self.t = 0

    @property
    def agent_count(self) -> int:
        return 2

    @property
    def observation_spaces(self) -> list[Any]:
        return [spaces.Dict(obs=spaces.Box(-1, 1, (2,), np.float32))] * 2

    @property
    def action_spaces(self) -> list[Any] | None:
        return [spaces.Discrete(3)] * 2 if self.declare_actions else None

    def _results(self, reward: float) -> list[StepResult | None]:
        out: list[StepResult | None] = []
        for i in range(self.n_results):
            dtype = np.float64 if (i == 1 and self.t == self.bad_step) else np.float32
            out.append(StepResult(NamedArray(obs=np.zeros(2, dtype)), reward, self.t % 5 == 4, False))
        return out

    def reset(self) -> list[StepResult | None]:
        self.t = 0
        return self._results(0.0)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        for a in actions:
            assert a is not None and a.x.dtype == np.int64 and a.x.shape == () and 0 <= int(a.x) < 3
        self.t += 1
        return self._results(1.0)


def test_not_collected_by_pytest() -> None:
    assert test_environment.__test__ is False  # type: ignore[attr-defined]


def test_by_name_spec_and_instance() -> None:
    r1 = test_environment("null", steps=35, episode_length=10)
    r2 = test_environment(config.Environment(type_="null", args={"episode_length": 10}), steps=35)
    r3 = test_environment(NullEnvironment(episode_length=10), steps=35)
    for r in (r1, r2, r3):
        assert r["steps"] == 35 and r["episodes"] == 3 and r["agent_count"] == 1
        assert r["mean_reward"] == 0.0 and r["mean_episode_return"] == 0.0
        assert r["observation_fields"] == {0: {"obs": ((4,), "float32")}}


def test_report_counts_rewards() -> None:
    r = test_environment(BuggyEnv(bad_step=None), steps=10)
    assert r["env"] == "buggy" and r["agent_count"] == 2
    assert r["episodes"] == 2  # episodes end at t = 4 and t = 9 (t % 5 == 4, reset sets t = 0)
    assert r["mean_reward"] == 1.0 and r["mean_episode_return"] == 4.0


def test_reset_only() -> None:
    r = test_environment(BuggyEnv(bad_step=None, declare_actions=False), test_stepping=False)
    assert r["steps"] == 0 and np.isnan(r["mean_reward"])


def test_error_names_env_step_agent_field_expected_actual() -> None:
    with pytest.raises(EnvCheckError) as ei:
        test_environment(BuggyEnv(bad_step=3))
    msg = str(ei.value)
    for part in ("'buggy'", "step 3", "agent 1", "'obs'", "expected dtype float32", "got float64"):
        assert part in msg, msg


def test_too_few_results() -> None:
    with pytest.raises(EnvCheckError, match=r"env 'buggy' reset returned 1 results, expected agent_count=2"):
        test_environment(BuggyEnv(results=1))


def test_stepping_needs_action_spaces() -> None:
    with pytest.raises(EnvCheckError, match=r"env 'buggy': declares no action_spaces.*test_stepping=False"):
        test_environment(BuggyEnv(bad_step=None, declare_actions=False))


def test_bad_inputs() -> None:
    with pytest.raises(TypeError, match="env arguments"):
        test_environment(NullEnvironment(), episode_length=3)
    with pytest.raises(TypeError, match=r"expected a config\.Environment"):
        test_environment(42)  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="unknown environment 'nul'"):
        test_environment("nul")


def test_bad_agent_count() -> None:
    class NoAgents(NullEnvironment):
        @property
        def agent_count(self) -> int:
            return 0

    with pytest.raises(EnvCheckError, match="agent_count must be a positive int, got 0"):
        test_environment(NoAgents())


def test_stuck_env_is_reported() -> None:
    class Idle(NullEnvironment):
        def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
            return [None]

    with pytest.raises(EnvCheckError, match="no agent has had a result for 100 steps"):
        test_environment(Idle(), steps=500)


def test_curriculum_stage_is_kept_by_instances() -> None:
    from hpcrl.envs.toy import QuickstartEnvironment

    env = QuickstartEnvironment()
    env.set_curriculum_stage("hard")
    test_environment(env, steps=40)
    assert env.stage == "hard"


def _load_example() -> Any:
    return importlib.import_module("examples.quickstart.env")


def test_quickstart_example_env_passes_and_follows_the_rule() -> None:
    example = _load_example()
    report = test_environment("quickstart-example", steps=100)
    assert report["agent_count"] == 2 and report["episodes"] == 3
    assert report["observation_fields"][0] == {"obs": ((187,), "float32"), "state": ((623,), "float32")}
    env = example.QuickstartExample(seed=0)
    env.reset()
    total = 0.0
    for _ in range(32):
        results = env.step([NamedArray(x=np.int64(t)) for t in env.targets])
        total += float(results[0].reward[0])
    assert total > 40.0
