"""test_pipeline: the quick-start env, policy and trainer run together in one process; misfits are named."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api import config
from hpcrl.api.environment import Action
from hpcrl.api.policy import RolloutResult
from hpcrl.api.policy import make as make_policy
from hpcrl.api.trainer import make as make_trainer
from hpcrl.policies.random import RandomPolicy
from hpcrl.testing import PipelineError, test_environment, test_pipeline

QUICKSTART = dict(obs_dim={"obs": 187}, state_dim={"state": 623}, action_dim=16)


def test_quickstart_example_passes_environment_and_pipeline():
    import examples.quickstart.env  # noqa: F401  (registers "quickstart-example")

    report = test_environment("quickstart-example", steps=100)
    assert report["agent_count"] == 2
    policy = make_policy(config.Policy(type_="actor-critic-separate", args=QUICKSTART))
    trainer = make_trainer(config.Trainer(type_="ppo", args={"epochs": 1, "minibatches": 2}), policy)
    out = test_pipeline("quickstart-example", policy, trainer, episodes=2, trainer_steps=2)
    assert out["trainer_steps"] >= 2 and out["episodes"] >= 2 and out["policy_version"] >= 2
    assert np.isfinite(out["last_stats"]["policy_loss"])


def test_pipeline_with_names_and_gru():
    policy = make_policy(
        config.Policy(type_="actor-critic-shared", args=dict(obs_dim=4, action_dim=2, num_rnn_layers=1))
    )
    out = test_pipeline(config.Environment(type_="gym", args={"id": "CartPole-v1"}), policy, "vtrace", episodes=1)
    assert out["trainer_steps"] >= 2


def test_trainer_refuses_a_policy_without_parameters():
    with pytest.raises(TypeError, match="ppo trainer needs a policy with trainable torch parameters; RandomPolicy"):
        make_trainer("ppo", RandomPolicy(action_dim=2))


def test_pipeline_names_analyze_output_the_trainer_cannot_use():
    from hpcrl.policies.actor_critic import ActorCriticPolicy

    class NoAnalyze(ActorCriticPolicy):
        def analyze(self, sample, target="ppo", **kw):
            return {"nothing": 1}

    policy = NoAnalyze(shared=False, obs_dim=4, action_dim=2)
    trainer = make_trainer("ppo", policy)
    with pytest.raises(PipelineError, match=r"trainer 'PPOTrainer' failed on a batch from policy 'NoAnalyze'.*analyze"):
        test_pipeline(config.Environment(type_="gym", args={"id": "CartPole-v1"}), policy, trainer)


def test_pipeline_names_a_policy_returning_wrong_rows():
    class Broken(RandomPolicy):
        def rollout(self, request, **kw):
            res = super().rollout(request)
            return RolloutResult(action=Action(x=res.action.x[:1]), analyzed_result=res.analyzed_result[:1])

    with pytest.raises(PipelineError, match=r"policy Broken.*1 actions for \\d+ requests|1 actions"):
        test_pipeline(config.Environment(type_="gym", args={"id": "CartPole-v1"}), Broken(action_dim=2), "null")


def test_pipeline_names_an_env_without_episode_end():
    with pytest.raises(PipelineError, match="do episodes ever end"):
        test_pipeline(
            config.Environment(type_="null", args={"episode_length": 10**9}),
            RandomPolicy(action_dim=2),
            "null",
            max_frames=300,
        )
