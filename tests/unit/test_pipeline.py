"""test_pipeline: the quick-start env, policy and trainer run together in one process; misfits are named."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api import config
from hpcrl.api.environment import Action
from hpcrl.api.environment import make as make_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy, RolloutResult
from hpcrl.api.policy import make as make_policy
from hpcrl.api.policy import register as register_policy
from hpcrl.api.trainer import Trainer, TrainerStepResult
from hpcrl.api.trainer import make as make_trainer
from hpcrl.policies.random import RandomPolicy
from hpcrl.testing import PipelineError, test_environment, test_pipeline
from hpcrl.trainers.null import NullTrainer

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


# ---------------------------------------------------------------------- deployment round trips
CARTPOLE = config.Environment(type_="gym", args={"id": "CartPole-v1"})


class Coin(Policy):
    """A numpy-only user policy with nothing but the abstract methods (the base class keeps the version)."""

    def __init__(self, action_dim: int = 2) -> None:
        self.n = action_dim
        self.rng = np.random.default_rng(0)

    def rollout(self, request, **kwargs):
        b = len(request.obs)
        x = self.rng.integers(0, self.n, b).astype(np.int64)
        if request.is_evaluation is not None:
            x[np.asarray(request.is_evaluation, bool).reshape(b)] = 0
        analysis = NamedArray(log_prob=np.full((b, 1), -np.log(self.n), np.float32), value=np.zeros((b, 1), np.float32))
        return RolloutResult(action=Action(x=x), policy_state=request.policy_state, analyzed_result=analysis)

    def analyze(self, sample, target="ppo", **kwargs):
        shape = (*sample.reward.shape[:2], 1)
        return NamedArray(log_prob=np.zeros(shape, np.float32), value=np.zeros(shape, np.float32))

    def get_checkpoint(self):
        return {"version": self.version}

    def load_checkpoint(self, checkpoint):
        self.set_version(int(checkpoint["version"]))


class Linear(Coin):
    """A numpy policy with trained weights ``w`` (per obs feature: its sign picks the action)."""

    def __init__(self) -> None:
        super().__init__(2)
        self.w = np.zeros(4, np.float32)

    def rollout(self, request, **kwargs):
        res = super().rollout(request)
        b = len(request.obs)
        ev = (
            np.asarray(request.is_evaluation, bool).reshape(b)
            if request.is_evaluation is not None
            else np.zeros(b, bool)
        )
        res.action.x[ev] = (request.obs.obs[ev] @ self.w > 0).astype(np.int64)
        res.analyzed_result.value = (request.obs.obs @ self.w)[:, None].astype(np.float32)
        return res

    def state_dict(self):
        return {"w": self.w}

    def load_state_dict(self, state_dict):
        self.w[...] = state_dict["w"]

    def get_checkpoint(self):
        return {"version": self.version, "w": self.w.copy()}

    def load_checkpoint(self, checkpoint):
        super().load_checkpoint(checkpoint)
        self.w[...] = checkpoint["w"]


class LinearTrainer(Trainer):
    """Moves ``w`` by a fixed step (so the deterministic actions change) and bumps the version."""

    def step(self, samples):
        self.policy.w += np.array([0.0, 0.0, 1.0, 1.0], np.float32)  # the pole's angle and velocity
        self.policy.inc_version()
        return TrainerStepResult(stats={}, step=self.policy.version)


def test_policy_base_class_owns_the_version_counter():
    p = Coin()
    assert p.version == 0
    p.inc_version()
    p.inc_version()
    assert p.version == 2
    p.set_version(7)
    assert p.version == 7
    q = Coin()  # the counter is per instance
    assert q.version == 0
    q.version = 4  # SRL-style policies assign it
    q.version += 1
    assert q.version == 5 and p.version == 7


@pytest.mark.parametrize("as_spec", [True, False])
@pytest.mark.parametrize(
    "policy_spec, trainer",
    [
        (config.Policy(type_="actor-critic-separate", args={"hidden_dim": 16}), "ppo"),
        (config.Policy(type_="actor-critic-shared", args={"hidden_dim": 16, "num_rnn_layers": 1}), "vtrace"),
        (config.Policy(type_="actor-critic-separate", args={"obs_dim": 4, "action_dim": 2}), "null"),
        (config.Policy(type_="random", args={"action_dim": 2}), "null"),
    ],
)
def test_builtin_policies_pass_the_publish_and_checkpoint_round_trips(policy_spec, trainer, as_spec):
    if not as_spec:
        from hpcrl.runtime import components

        env = make_env(CARTPOLE)
        try:
            policy_spec = components.fill_policy_args(policy_spec, env)
        finally:
            env.close()
    policy = policy_spec if as_spec else make_policy(policy_spec)
    out = test_pipeline(CARTPOLE, policy, trainer, episodes=1, trainer_steps=2)
    assert out["policy_version"] >= 2


@pytest.mark.parametrize("as_spec", [True, False])
def test_numpy_policy_with_only_the_abstract_methods_passes(as_spec):
    register_policy("test-coin", Coin)
    out = test_pipeline(CARTPOLE, "test-coin" if as_spec else Coin(), "null", episodes=1, trainer_steps=2)
    assert out["policy_version"] >= 2


def test_numpy_policy_that_trains_and_publishes_passes():
    policy = Linear()
    out = test_pipeline(CARTPOLE, policy, LinearTrainer(policy), episodes=1, trainer_steps=2)
    assert out["policy_version"] >= 2 and policy.w[2] >= 2


def _actor_critic(cls):
    return cls(shared=False, obs_dim=4, action_dim=2, hidden_dim=16)


def test_torch_policy_that_publishes_nothing_is_refused_naming_the_methods():
    from hpcrl.policies.actor_critic import ActorCriticPolicy

    class Stale(ActorCriticPolicy):
        state_dict = Policy.state_dict
        load_state_dict = Policy.load_state_dict

    policy = _actor_critic(Stale)
    with pytest.raises(
        PipelineError,
        match=r"policy Stale has trainable parameters but state_dict\(\) returns nothing "
        r"and load_state_dict\(\) is not overridden.*Implement Stale.state_dict\(\)",
    ):
        test_pipeline(CARTPOLE, policy, make_trainer("ppo", policy))


def test_a_no_op_load_state_dict_is_found():
    from hpcrl.policies.actor_critic import ActorCriticPolicy

    class Forgetful(ActorCriticPolicy):
        def load_state_dict(self, state_dict):
            pass

    policy = _actor_critic(Forgetful)
    with pytest.raises(
        PipelineError,
        match=r"policy Forgetful.load_state_dict\(\) did not load the published weights: after loading them into a "
        r"second instance, state_dict\(\)\['actor.mlp.0.weight'\] differs from the published value",
    ):
        test_pipeline(CARTPOLE, policy, make_trainer("ppo", policy), trainer_steps=1)


def test_a_numpy_policy_that_trains_but_publishes_nothing_is_found():
    class Unpublished(Linear):
        def state_dict(self):
            return {}

        def load_state_dict(self, state_dict):
            pass

    policy = Unpublished()
    with pytest.raises(
        PipelineError,
        match=r"policy Unpublished: a second instance that loaded the published weights "
        r"acts differently .*state_dict\(\) is empty",
    ):
        test_pipeline(CARTPOLE, policy, LinearTrainer(policy), episodes=1, trainer_steps=2)


def test_a_version_counter_of_its_own_without_set_version_is_found():
    class OwnCounter(Coin):
        def __init__(self):
            super().__init__()
            self.steps = 0

        @property
        def version(self):
            return self.steps

        def inc_version(self):
            self.steps += 1

    with pytest.raises(
        PipelineError,
        match=r"policy OwnCounter: after set_version\(\d+\) its version is 0; version, "
        r"inc_version and set_version must use one counter",
    ):
        test_pipeline(CARTPOLE, OwnCounter(), "null", episodes=1)


def test_a_policy_checkpoint_a_checkpoint_cannot_hold_names_the_entry():
    class Lambda(Coin):
        def get_checkpoint(self):
            return {"version": self.version, "schedule": lambda t: t}

    with pytest.raises(
        PipelineError,
        match=r"policy Lambda.get_checkpoint\(\) returns a value a checkpoint cannot "
        r"hold: /policy/schedule: cannot store a builtins.function",
    ):
        test_pipeline(CARTPOLE, Lambda(), "null", episodes=1)


def test_a_no_op_load_checkpoint_is_found():
    class NoRestore(Linear):
        def load_checkpoint(self, checkpoint):
            pass

    policy = NoRestore()
    with pytest.raises(
        PipelineError,
        match=r"policy NoRestore: after load_checkpoint\(\) its version is 0, the "
        r"checkpointed policy's 2",
    ):
        test_pipeline(CARTPOLE, policy, LinearTrainer(policy), episodes=1, trainer_steps=2)


@pytest.mark.parametrize("value", [lambda t: t, object()], ids=["lambda", "object"])
def test_a_trainer_state_a_checkpoint_cannot_hold_names_the_trainer_and_the_entry(value):
    class Opaque(NullTrainer):
        def get_checkpoint(self):
            return {"step": 1, "opt": {"schedule": value}}

    policy = Coin()
    with pytest.raises(
        PipelineError,
        match=r"trainer Opaque.get_checkpoint\(\) returns a value a checkpoint cannot "
        r"hold: /trainer/opt/schedule: cannot store a builtins",
    ):
        test_pipeline(CARTPOLE, policy, Opaque(policy), episodes=1)


def test_a_trainer_that_cannot_load_its_own_checkpoint_is_found():
    class OneWay(NullTrainer):
        def load_checkpoint(self, checkpoint):
            raise KeyError("optimizer")

    policy = Coin()
    with pytest.raises(
        PipelineError,
        match=r"trainer OneWay.load_checkpoint\(\) failed on its own checkpoint read back "
        r"from HDF5: KeyError",
    ):
        test_pipeline(CARTPOLE, policy, OneWay(policy), episodes=1)


def test_random_actions_on_evaluation_rows_are_named():
    class Gambler(Coin):
        calls = 0

        def rollout(self, request, **kwargs):
            res = super().rollout(request)
            self.calls += 1
            res.action.x[:] = self.calls % 2  # never the same twice in a row
            return res

    with pytest.raises(PipelineError, match=r"policy Gambler.rollout is not deterministic on is_evaluation rows"):
        test_pipeline(CARTPOLE, Gambler(), "null", episodes=1)
