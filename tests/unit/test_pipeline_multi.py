"""test_pipeline of a multi-policy experiment: the one-process loop of every policy, round trips, misfits named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from hpcrl.api import config
from hpcrl.api.environment import register as register_env
from hpcrl.api.policy import register as register_policy
from hpcrl.api.trainer import SampleBatch, TrainerStepResult
from hpcrl.api.trainer import register as register_trainer
from hpcrl.policies.actor_critic import ActorCriticPolicy
from hpcrl.testing import PipelineError, test_pipeline
from hpcrl.trainers.null import NullTrainer
from tests.integration.indexed_env import IndexedAgentsEnv


class PairEnv(IndexedAgentsEnv):
    """Agent ``a`` earns 1 for action ``a % 2``; episodes of ``length`` steps."""

    def __init__(self, n_agents: int = 2, length: int = 6) -> None:
        super().__init__(n_agents, length)

    def reward(self, agent: int, action: int) -> float:
        return float(action == agent % 2)


class StuckTrainer(NullTrainer):
    """Steps without incrementing the policy version."""

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        return TrainerStepResult(stats={"loss": 0.0}, step=1)


class DriftingPolicy(ActorCriticPolicy):
    """An actor-critic whose rollout nudges its own weights (a frozen policy must not change)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(shared=False, **kwargs)

    def rollout(self, request: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            next(iter(self.parameters())).add_(0.01)
        return super().rollout(request, **kwargs)


register_env("pipe-multi-pair", PairEnv)
register_trainer("pipe-multi-stuck", StuckTrainer)
register_policy("pipe-multi-drifting", DriftingPolicy)

AC = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}
PPO = {"type_": "ppo", "args": {"epochs": 1, "minibatches": 1}}


def _data(run_dir: Path, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "experiment": {"name": "pipe-multi", "seed": 2},
        "environment": {"type_": "pipe-multi-pair", "args": {"n_agents": 2}},
        "policies": {"learner": dict(AC), "opponent": {"type_": "random", "args": {"action_dim": 2}}},
        "trainers": {"learner": dict(PPO)},
        "agents": [{"match": 0, "policy": "learner"}, {"match": ".*", "policy": "opponent"}],
        "actor": {"envs_per_actor": 2, "fragment_length": 8},
        "run": {"dir": str(run_dir), "progress": "bar"},
    }
    data.update(over)
    return data


def test_trained_and_frozen_policies_pass_without_a_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    out = test_pipeline(config.from_dict(_data(run_dir)), episodes=3, trainer_steps=2)
    assert out["trainer_steps"] == {"learner": 2}
    assert out["policy_versions"]["learner"] == 2 and out["policy_versions"]["opponent"] == 0
    assert out["episodes"]["learner"] >= 3 and out["episodes"]["opponent"] >= 3
    assert set(out["mean_return_by_policy"]) == {"learner", "opponent"}
    assert np.isfinite(out["last_stats"]["learner"]["policy_loss"]) and "opponent" not in out["last_stats"]
    assert out["frames"] > 0
    assert not run_dir.exists()  # nothing is written to the experiment's run dir
    assert capsys.readouterr() == ("", "")  # no progress line although run.progress asks for one


def test_two_trained_policies_pass_from_a_yaml_file(tmp_path: Path) -> None:
    data = _data(
        tmp_path / "run",
        environment={"type_": "pipe-multi-pair", "args": {"n_agents": 3}},
        policies={"even": dict(AC), "odd": {**AC, "args": {**AC["args"], "hidden_dim": 4}}},
        trainers={"even": dict(PPO), "odd": {"type_": "null"}},
        agents=[{"match": "[02]", "policy": "even"}, {"match": 1, "policy": "odd"}],
    )
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    out = test_pipeline(path, trainer_steps=3)
    assert out["trainer_steps"] == {"even": 3, "odd": 3}
    assert out["policy_versions"] == {"even": 3, "odd": 3}
    assert set(out["last_stats"]) == {"even", "odd"}


def test_selfplay_experiment_is_checked_with_its_pool(tmp_path: Path) -> None:
    sp = {"policy": "learner", "opponent_agents": [1], "pool_size": 2, "snapshot_every_frames": 16}
    data = _data(
        tmp_path / "run",
        policies={"learner": dict(AC)},
        agents=[{"match": 0, "policy": "learner"}],
        selfplay=sp,
    )
    out = test_pipeline(config.from_dict(data), episodes=2, trainer_steps=2)
    assert out["trainer_steps"] == {"learner": 2} and set(out["episodes"]) == {"learner"}
    assert out["selfplay_games"] >= 2

    # a frozen random fixed opponent acts for no agent: it is checked on the opponent agents' rows
    data["policies"]["rnd"] = {"type_": "random", "args": {"action_dim": 2}}
    data["selfplay"] = {**sp, "fixed_opponents": ["rnd"], "fixed_fraction": 0.5}
    out = test_pipeline(config.from_dict(data), episodes=2, trainer_steps=2)
    assert out["episodes"]["rnd"] == 0 and out["policy_versions"]["rnd"] == 0 and out["selfplay_games"] >= 2


def test_a_policy_that_does_not_fit_the_env_obs_is_named(tmp_path: Path) -> None:
    bad = {**AC, "args": {**AC["args"], "obs_dim": {"obs": 5}}}
    data = _data(tmp_path / "run", policies={"learner": dict(AC), "opponent": bad})
    with pytest.raises(PipelineError, match=r"^policies\.opponent\.args: .*obs") as e:
        test_pipeline(config.from_dict(data))
    assert "pipe-multi-pair" in str(e.value)


def test_an_agent_matched_by_nothing_is_named(tmp_path: Path) -> None:
    data = _data(
        tmp_path / "run",
        environment={"type_": "pipe-multi-pair", "args": {"n_agents": 3}},
        agents=[{"match": 0, "policy": "learner"}, {"match": 1, "policy": "opponent"}],
    )
    with pytest.raises(PipelineError, match=r"agent 2\b"):
        test_pipeline(config.from_dict(data))


def test_a_policy_no_agent_uses_is_named(tmp_path: Path) -> None:
    data = _data(tmp_path / "run", agents=[{"match": ".*", "policy": "learner"}])
    with pytest.raises(PipelineError, match=r"^policies\.opponent: policy 'opponent' acts for no agent"):
        test_pipeline(config.from_dict(data))


def test_a_trainer_that_never_increments_the_version_is_named_with_its_policy(tmp_path: Path) -> None:
    data = _data(
        tmp_path / "run",
        policies={"learner": dict(AC), "helper": dict(AC)},
        trainers={"learner": dict(PPO), "helper": {"type_": "pipe-multi-stuck"}},
        agents=[{"match": 0, "policy": "learner"}, {"match": 1, "policy": "helper"}],
    )
    with pytest.raises(
        PipelineError,
        match=r"policy 'helper': trainer StuckTrainer \(trainers\.helper\)\.step did not increment the policy version",
    ):
        test_pipeline(config.from_dict(data))


def test_a_frozen_policy_whose_weights_change_is_named(tmp_path: Path) -> None:
    drifting = {"type_": "pipe-multi-drifting", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}
    data = _data(tmp_path / "run", policies={"learner": dict(AC), "opponent": drifting})
    with pytest.raises(PipelineError, match=r"^frozen policy 'opponent': its weights changed"):
        test_pipeline(config.from_dict(data))


def test_a_round_trip_failure_names_the_policy(tmp_path: Path) -> None:
    class Forgetful(ActorCriticPolicy):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(shared=False, **kwargs)

        def load_checkpoint(self, checkpoint: Any) -> None:
            self.set_version(int(checkpoint["version"]))  # restores the version, not the weights

    register_policy("pipe-multi-forgetful", Forgetful)
    forgetful = {"type_": "pipe-multi-forgetful", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}
    data = _data(
        tmp_path / "run",
        policies={"learner": dict(AC), "other": forgetful},
        trainers={"learner": dict(PPO), "other": dict(PPO)},
        agents=[{"match": 0, "policy": "learner"}, {"match": 1, "policy": "other"}],
    )
    with pytest.raises(PipelineError, match=r"^policy 'other': policy Forgetful: .*restored with load_checkpoint"):
        test_pipeline(config.from_dict(data))


def test_the_forms_are_told_apart(tmp_path: Path) -> None:
    single = {k: v for k, v in _data(tmp_path / "run").items() if k not in ("policies", "trainers", "agents")}
    single.update(policy=dict(AC), trainer=dict(PPO))
    out = test_pipeline(config.from_dict(single))  # a single-policy experiment: the (env, policy, trainer) form
    assert out["trainer_steps"] >= 2 and out["policy_version"] >= 2
    with pytest.raises(PipelineError, match=r"'pipe-multi-pair'\): no such experiment file; .*pass a policy"):
        test_pipeline("pipe-multi-pair")
    with pytest.raises(PipelineError, match="got only one of policy and trainer"):
        test_pipeline("pipe-multi-pair", "random")
    with pytest.raises(PipelineError, match=r"^experiment\.imports\[0\]: cannot import module 'no_such_mod_pipe'"):
        test_pipeline(config.from_dict({**single, "experiment": {"name": "x", "imports": ["no_such_mod_pipe"]}}))
    with pytest.raises(PipelineError, match="pass it alone"):
        test_pipeline(config.from_dict(single), "random", "null")


@pytest.mark.parametrize("example", ["quickstart/multipolicy.yaml", "tictactoe/selfplay.yaml"])
def test_the_multi_policy_examples_pass(example: str) -> None:
    out = test_pipeline(Path(__file__).resolve().parents[2] / "examples" / example)
    fixed = {"random_player"} if "selfplay" in example else set()  # a fixed opponent acts for no agent
    assert all(n >= 2 for n in out["trainer_steps"].values())
    assert all(n >= 2 for name, n in out["episodes"].items() if name not in fixed)
    assert all(out["episodes"][name] == 0 for name in fixed)
