"""Multi-policy runs in one process, end to end: routing, training, freezing, checkpoints, resume, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gymnasium import spaces

from hpcrl.acting import rings
from hpcrl.acting.policy_ring import PartSpec, PolicyRing
from hpcrl.api import config
from hpcrl.api.environment import StepResult
from hpcrl.api.environment import register as register_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.trainer import SampleBatch, TrainerStepResult
from hpcrl.api.trainer import register as register_trainer
from hpcrl.policies.random import RandomPolicy
from hpcrl.roles.local import run_local
from hpcrl.storage.checkpoint import CheckpointError, load_checkpoint
from hpcrl.storage.trace import read_trace
from hpcrl.trainers.ppo import PPOTrainer
from tests.integration.indexed_env import IndexedAgentsEnv, RecordingPPO, checkpoint_weights

REPO = Path(__file__).resolve().parents[2]


class TagEnv(IndexedAgentsEnv):
    """Agent 0 earns 1 for action 1, every other agent 1 for action 0."""

    def reward(self, agent: int, action: int) -> float:
        return float(action == (1 if agent == 0 else 0))


class FlakyTag(TagEnv):
    """The first instance built raises in its third step (once)."""

    built = 0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        FlakyTag.built += 1
        self.flaky = FlakyTag.built == 1

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        if self.flaky and self.t == 2:
            raise RuntimeError("flaky env")
        return super().step(actions)


class MixedTeam(TagEnv):
    """Agent 0 picks 1 of 2 actions (earns 1 for 1), agent 1 picks 1 of 4 (earns 1 for 3)."""

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(2), spaces.Discrete(4)]

    def reward(self, agent: int, action: int) -> float:
        return float(action == (1 if agent == 0 else 3))


register_env("mp-test-tag", TagEnv)
register_env("mp-test-mixed", MixedTeam)
register_env("mp-test-flaky", FlakyTag)
register_trainer("mp-test-recording-ppo", RecordingPPO)


class BrokenPPO(PPOTrainer):
    """PPO whose step fails the way a trainer that does not fit its policy's analyze() does."""

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        raise KeyError("value")


register_trainer("mp-test-broken-ppo", BrokenPPO)

AC = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}


def _data(run_dir: Path, total: int = 256, **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "experiment": {"name": "mp", "seed": 3, "total_frames": total},
        "environment": {"type_": "mp-test-tag", "args": {"n_agents": 2}},
        "policies": {"learner": dict(AC), "opponent": {"type_": "random", "args": {"action_dim": 2}}},
        "trainers": {"learner": {"type_": "mp-test-recording-ppo", "args": {"epochs": 1, "minibatches": 1}}},
        "agents": [{"match": 0, "policy": "learner"}, {"match": ".*", "policy": "opponent"}],
        "actor": {"envs_per_actor": 2, "fragment_length": 8},
        "run": {"dir": str(run_dir), "progress": "off", "checkpoint_writer": "inline", "checkpoint_every_seconds": 0},
    }
    data.update(over)
    return data


def _newest(run_dir: Path, policy: str) -> Path:
    files = sorted((run_dir / "checkpoints" / policy).glob("ckpt-*.h5"))
    assert files, f"no checkpoints of {policy} in {run_dir}"
    return files[-1]


class CountingPolicy(RandomPolicy):
    """A random policy with a state: the number of steps since the episode began."""

    def rollout(self, request: Any) -> Any:
        out = super().rollout(request)
        out.policy_state = NamedArray(n=np.asarray(request.policy_state.n) + 1)
        return out


def test_policy_ring_routes_each_agent_to_its_policy() -> None:
    """Agents 0 and 2 act for part 0, agent 1 for part 1: each part's fragments and versions are its own."""
    cfg = config.from_dict(
        _data(
            Path("unused"),
            environment={"type_": "mp-test-tag", "args": {"n_agents": 3}},
            agents=[{"match": "[02]", "policy": "learner"}, {"match": 1, "policy": "opponent"}],
        )
    )
    parts = [PartSpec("learner", None), PartSpec("opponent", NamedArray(n=np.zeros(1, np.float32)))]
    ring = rings.make_ring(cfg, None, "test", parts=parts, part_of_agent=lambda a: 1 if a == 1 else 0)
    assert isinstance(ring, PolicyRing) and ring.part_slots(0) == 4 and ring.part_slots(1) == 2
    policies = [RandomPolicy(action_dim=2, seed=1), CountingPolicy(action_dim=2, seed=2)]
    frags: list[list[SampleBatch]] = [[], []]
    episodes = []
    for _ in range(20):
        requests = ring.request_parts(0)
        assert [len(r) for r in requests if r is not None] == [4, 2]
        counted = requests[1]
        assert counted is not None and counted.policy_state is not None
        t = np.asarray(counted.obs.obs)[:, 1] * 8  # type: ignore[union-attr]
        assert np.array_equal(np.asarray(counted.policy_state.n)[:, 0], t)  # its own state, reset with its env
        ring.consume_parts(0, [(p.rollout(r), 7 * i + 5) for i, (p, r) in enumerate(zip(policies, requests))])  # type: ignore[arg-type]
        for p in range(2):
            frags[p] += ring.pop_part_fragments(p)
        episodes += ring.pop_episodes()
    assert len(frags[0]) == len(frags[1]) == 2
    for p, agents, version in ((0, {0.0, 2.0}, 5), (1, {1.0}, 12)):
        for f in frags[p]:
            obs = np.asarray(f.obs.obs)  # type: ignore[union-attr]
            assert obs.shape == (9, ring.part_slots(p), 2)
            assert set(np.unique(obs[..., 0])) == agents  # only its agents' rows, none unwritten (NaN)
            assert set(np.unique(f.policy_version)) == {version}
    assert sorted(e.policy for e in episodes) == [0] * 8 + [1] * 4  # 2 envs x 2 episodes of 8 steps
    ring.close()


class ObsPolicy(CountingPolicy):
    """Deterministic: the action, value and state are functions of each row's observation and state only."""

    def rollout(self, request: Any) -> Any:
        out = super().rollout(request)
        obs = np.asarray(request.obs.obs)
        n = np.asarray(request.policy_state.n)[:, 0]
        out.action = NamedArray(x=((obs[:, 0] + obs[:, 1] * 8 + n).astype(np.int64) // 3) % 2)
        out.analyzed_result.value = (obs[:, :1] * 0.5 + n[:, None]).astype(out.analyzed_result.value.dtype)
        return out


@pytest.mark.parametrize("agents", [2, 3])
def test_policy_ring_rows_equal_the_single_policy_rings(agents: int) -> None:
    """Two parts running the same deterministic policy give exactly the single-policy ring's rows and episodes.

    Each part's fragments are the single-policy ring's fragments restricted to that part's agent slots, leaf
    by leaf and bit for bit (observations, actions, analysed results, states, rewards, flags, versions); the
    env sees the same actions, so the episodes (returns, lengths) are the same.
    """
    state = NamedArray(n=np.zeros(1, np.float32))
    over = {"environment": {"type_": "mp-test-tag", "args": {"n_agents": agents, "episode_length": 5}}}
    single = _data(Path("unused"), **over)
    for key in ("policies", "trainers", "agents"):
        single.pop(key)
    single["policy"] = {"type_": "random", "args": {"action_dim": 2}}
    single["trainer"] = {"type_": "null"}
    ring1 = rings.make_ring(config.from_dict(single), state, "test")
    parts = [PartSpec("a", state), PartSpec("b", state)]
    ring2 = rings.make_ring(
        config.from_dict(_data(Path("unused"), **over)), None, "test", parts=parts, part_of_agent=lambda a: a % 2
    )
    assert isinstance(ring2, PolicyRing)
    policy = ObsPolicy(action_dim=2, seed=1)
    frags1: list[SampleBatch] = []
    frags2: list[list[SampleBatch]] = [[], []]
    eps1, eps2 = [], []
    for _ in range(40):
        req = ring1.request(0)
        ring1.consume(0, policy.rollout(req), 4)
        frags1 += ring1.pop_fragments()
        eps1 += ring1.pop_episodes()
        requests = ring2.request_parts(0)
        ring2.consume_parts(0, [None if r is None else (policy.rollout(r), 4) for r in requests])
        for p in range(2):
            frags2[p] += ring2.pop_part_fragments(p)
        eps2 += ring2.pop_episodes()
    ring1.close()
    ring2.close()
    slots = [[s for s in range(2 * agents) if (s % agents) % 2 == p] for p in range(2)]  # env-major slots
    assert len(frags1) == 4 and all(len(f) == 4 for f in frags2)
    for p in range(2):
        for whole, mine in zip(frags1, frags2[p]):
            a, b = list(whole.flat_items()), list(mine.flat_items())
            assert [k for k, _ in a] == [k for k, _ in b] and len(a) == 10
            for (key, x), (_, y) in zip(a, b):
                x, y = np.asarray(x)[:, slots[p]], np.asarray(y)
                assert x.dtype == y.dtype and np.array_equal(x, y), f"part {p}: {key} differs"
    assert len(eps1) == 12 * agents  # 2 envs x 6 episodes (5 steps and a reset)
    # the same episodes; within one step the multi-policy ring lists them policy by policy
    assert sorted((e.ret, e.length, e.version) for e in eps1) == sorted((e.ret, e.length, e.version) for e in eps2)
    assert sorted({e.policy for e in eps2}) == [0, 1]


def test_a_recreated_env_truncates_the_rows_of_every_policy() -> None:
    FlakyTag.built = 0
    data = _data(Path("unused"), environment={"type_": "mp-test-flaky", "args": {"n_agents": 2}})
    data["actor"]["env_failure"] = "recreate"
    cfg = config.from_dict(data)
    parts = [PartSpec("learner", None), PartSpec("opponent", None)]
    ring = rings.make_ring(cfg, None, "test", parts=parts, part_of_agent=lambda a: a)
    assert isinstance(ring, PolicyRing)
    policy = RandomPolicy(action_dim=2, seed=1)
    frags: list[list[SampleBatch]] = [[], []]
    for _ in range(20):
        requests = ring.request_parts(0)
        ring.consume_parts(0, [None if r is None else (policy.rollout(r), 0) for r in requests])
        for p in range(2):
            frags[p] += ring.pop_part_fragments(p)
    assert ring.env_failures == 1
    for p in range(2):
        truncated = np.asarray(frags[p][0].truncated)[:, 0, 0]  # env 0's column of this policy
        assert truncated[2] and not truncated[:2].any()  # the last row before the failure is no decision
    ring.close()


def test_learner_against_frozen_opponent_trains_only_the_learner(tmp_path: Path) -> None:
    RecordingPPO.seen.clear()
    run1 = tmp_path / "run1"
    summary = run_local(config.from_dict(_data(run1)))
    assert summary["reason"] == "finished" and summary["policy_versions"]["opponent"] == 0
    assert summary["policy_versions"]["learner"] == len(RecordingPPO.seen) > 0
    assert all(set(seen.tolist()) == {0.0} for seen in RecordingPPO.seen)  # agent 0's rows only
    by_policy = summary["mean_return_by_policy"]  # last 100 episodes of each policy's agents
    assert set(by_policy) == {"learner", "opponent"} and summary["mean_return_last_100"] == pytest.approx(
        by_policy["learner"], abs=1e-3
    )
    ckpts = run1 / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["learner", "opponent"]  # nothing else at the top
    assert _newest(run1, "learner").name == f"ckpt-{summary['policy_versions']['learner']:09d}.h5"
    assert _newest(run1, "opponent").name == "ckpt-000000000.h5"
    stats = read_trace(run1 / "traces" / "rank-0000.h5")["trainer"]["stats"]
    assert "learner/loss" in stats or any(k.startswith("learner/") for k in stats)
    assert not any(k.startswith("opponent/") for k in stats)

    # both start from run 1's learner; only the learner moves; a stop and a resume restore both
    source = _newest(run1, "learner")
    start = checkpoint_weights(source)
    version0 = int(load_checkpoint(source)[1]["version"])
    policies = {
        "learner": dict(AC, init_from=str(run1 / "checkpoints" / "learner")),
        "opponent": dict(AC, init_from=str(source)),
    }
    run2 = tmp_path / "run2"
    data = _data(run2, total=512, policies=policies)
    data["run"]["stop_at_frames"] = 256
    first = run_local(config.from_dict(data))
    assert first["frames"] < 512 and first["policy_versions"]["opponent"] == version0
    stopped = int(load_checkpoint(_newest(run2, "learner"))[1]["trainer_steps"])
    assert first["policy_versions"]["learner"] == version0 + stopped
    data["run"]["stop_at_frames"] = 0
    second = run_local(config.from_dict(data))
    assert second["reason"] == "finished" and second["frames"] >= 512
    assert second["frames_this_run"] == second["frames"] - first["frames"]  # resumed, not restarted
    final = load_checkpoint(_newest(run2, "learner"))[1]
    assert int(final["trainer_steps"]) > stopped and second["policy_versions"]["learner"] == version0 + int(
        final["trainer_steps"]
    )
    opponent = checkpoint_weights(_newest(run2, "opponent"))
    learner = checkpoint_weights(_newest(run2, "learner"))
    assert opponent.keys() == start.keys() and all(np.array_equal(opponent[k], start[k]) for k in start)
    assert any(not np.array_equal(learner[k], start[k]) for k in start)

    # a stop between the files of one save: the newest learner file is gone, the previous set is resumed
    _newest(run2, "learner").unlink()
    resumed_at = int(load_checkpoint(_newest(run2, "learner"))[1]["frames"])
    assert resumed_at == first["frames"]
    third = run_local(config.from_dict(data))
    assert third["frames"] - third["frames_this_run"] == resumed_at


def test_a_policy_without_any_checkpoint_is_not_resumed_silently(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_local(config.from_dict(_data(run, total=64)))
    for f in (run / "checkpoints" / "learner").glob("ckpt-*.h5"):
        f.unlink()
    with pytest.raises(CheckpointError, match=r"no valid checkpoint of learner in a set"):
        run_local(config.from_dict(_data(run, total=128)))
    for f in (run / "checkpoints").glob("*/ckpt-*.h5"):  # only corrupt files left: still no fresh start
        f.write_bytes(b"not hdf5")
    (run / "checkpoints" / "learner" / "ckpt-000000001.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint of learner, opponent in a set"):
        run_local(config.from_dict(_data(run, total=128)))


def test_a_failing_trainer_is_named_with_its_policy(tmp_path: Path) -> None:
    """In a multi-policy run, a trainer's failure names the policy it trains, not only the types."""
    data = _data(tmp_path / "run", trainers={"learner": {"type_": "mp-test-broken-ppo", "args": {}}})
    with pytest.raises(RuntimeError) as info:
        run_local(config.from_dict(data))
    assert str(info.value).startswith(
        "trainer 'mp-test-broken-ppo' of policy 'learner' failed on a batch from policy 'actor-critic-separate' "
        "(policies.learner): KeyError: 'value'"
    ), info.value


def test_an_agent_matched_by_nothing_stops_the_run_before_its_dir(tmp_path: Path) -> None:
    data = _data(tmp_path / "run", agents=[{"match": 0, "policy": "learner"}])
    with pytest.raises(config.ConfigError, match=r"^agents: agent 1 of env mp-test-tag \(agent_count 2\)"):
        run_local(config.from_dict(data))
    assert not (tmp_path / "run").exists()


def test_init_from_that_does_not_fit_is_refused_before_the_run_dir(tmp_path: Path) -> None:
    run1 = tmp_path / "run1"
    run_local(config.from_dict(_data(run1, total=64)))
    small = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 4}}
    policies = {"learner": dict(AC), "opponent": dict(small, init_from=str(run1 / "checkpoints" / "learner"))}
    with pytest.raises(
        config.ConfigError, match=r"^policies\.opponent\.init_from: .*ckpt-0+\d+\.h5: its policy does not fit"
    ):
        run_local(config.from_dict(_data(tmp_path / "run2", policies=policies)))
    policies["opponent"] = dict(AC, init_from=str(tmp_path / "nowhere"))
    with pytest.raises(config.ConfigError, match=r"^policies\.opponent\.init_from: .*nowhere"):
        run_local(config.from_dict(_data(tmp_path / "run2", policies=policies)))
    assert not (tmp_path / "run2").exists()


def test_policies_with_different_recurrent_states_share_envs(tmp_path: Path) -> None:
    """An LSTM learner (agents 0 and 2) and a frozen GRU (agent 1): each part keeps its own state layout."""
    RecordingPPO.seen.clear()

    def rnn(kind: str) -> dict[str, Any]:
        args = {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8, "num_rnn_layers": 1, "rnn_type": kind}
        return {"type_": "actor-critic-separate", "args": args}

    data = _data(
        tmp_path / "run",
        total=320,
        environment={"type_": "mp-test-tag", "args": {"n_agents": 3}},
        policies={"learner": rnn("lstm"), "opponent": rnn("gru")},
        agents=[{"match": "0|2", "policy": "learner"}, {"match": 1, "policy": "opponent"}],
    )
    summary = run_local(config.from_dict(data))
    assert summary["reason"] == "finished" and summary["policy_versions"]["opponent"] == 0
    assert summary["policy_versions"]["learner"] == len(RecordingPPO.seen) > 0
    assert all(set(seen.tolist()) == {0.0, 2.0} for seen in RecordingPPO.seen)
    tree, _ = load_checkpoint(_newest(tmp_path / "run", "learner"))
    assert int(tree["system"]["frames"]) == summary["frames"]


def test_a_run_dir_of_the_other_kind_is_not_restarted_beside_its_checkpoints(tmp_path: Path) -> None:
    multi = tmp_path / "multi"
    run_local(config.from_dict(_data(multi, total=64)))
    single = {
        "experiment": {"name": "single", "seed": 3, "total_frames": 64},
        "environment": {"type_": "mp-test-tag", "args": {"n_agents": 2}},
        "policy": AC,
        "trainer": {"type_": "ppo", "args": {"epochs": 1, "minibatches": 1}},
        "actor": {"envs_per_actor": 2, "fragment_length": 8},
        "run": {"dir": str(multi), "progress": "off", "checkpoint_writer": "inline"},
    }
    with pytest.raises(CheckpointError, match=r"holds the checkpoints of a multi-policy run \(policies learner, opp"):
        run_local(config.from_dict(single))
    single["run"]["dir"] = str(tmp_path / "single")  # type: ignore[index]
    run_local(config.from_dict(single))
    with pytest.raises(CheckpointError, match=r"holds the checkpoints of a single-policy run \(1 checkpoint file"):
        run_local(config.from_dict(_data(tmp_path / "single", total=128)))
    assert not (tmp_path / "single" / "checkpoints" / "learner").exists()


def test_the_example_config_runs(tmp_path: Path) -> None:
    path = REPO / "examples" / "quickstart" / "multipolicy.yaml"
    overrides = ["experiment.total_frames=1024", f"run.dir={tmp_path / 'run'}", "run.progress=off"]
    summary = run_local(config.load(path, overrides))
    assert summary["reason"] == "finished" and summary["policy_versions"] == {"learner": 2, "teammate": 0}


def test_a_random_policy_must_fit_the_env_actions(tmp_path: Path) -> None:
    """A random policy whose actions do not fit the env is refused before the run (never out-of-range actions)."""
    policies = {"learner": dict(AC), "opponent": {"type_": "random", "args": {"action_dim": 3}}}
    with pytest.raises(
        config.ConfigError, match=r"^policies\.opponent\.args: .*action_dim=3.*Discrete\(2\).*action_dim=2"
    ):
        run_local(config.from_dict(_data(tmp_path / "run", policies=policies)))
    assert not (tmp_path / "run").exists()
    single = {k: v for k, v in _data(tmp_path / "one").items() if k not in ("policies", "trainers", "agents")}
    single.update(policy={"type_": "random", "args": {"continuous_action": True, "action_dim": 2}})
    single.update(trainer={"type_": "null", "args": {}})
    with pytest.raises(config.ConfigError, match=r"^policy\.args: .*continuous_action=True.*Discrete\(2\)"):
        run_local(config.from_dict(single))
    # without action_dim, the env's action space gives it (not the default of 2 when the env has 3)
    from hpcrl.policies.random import RandomPolicy

    assert RandomPolicy.args_from_spaces({}, None, None) == {}
    import gymnasium as gym

    box = gym.spaces.Dict(obs=gym.spaces.Box(-1, 1, (2,)))
    filled = RandomPolicy.args_from_spaces({"seed": 4}, box, gym.spaces.Discrete(3))
    assert filled == {"seed": 4, "action_dim": 3, "continuous_action": False}
    assert RandomPolicy.args_from_spaces({}, box, gym.spaces.MultiDiscrete([2, 5]))["action_dim"] == [2, 5]


class _NarrowRandom(RandomPolicy):
    """Inherits RandomPolicy.args_from_spaces (which adds continuous_action) but does not take that argument."""

    def __init__(self, action_dim: int = 2, seed: int = 0) -> None:
        super().__init__(action_dim=action_dim, seed=seed)


def _narrow_factory(action_dim: int = 2) -> _NarrowRandom:
    return _NarrowRandom(action_dim=action_dim)


def _open_factory(**kw: Any) -> _NarrowRandom:
    return _NarrowRandom(**{k: v for k, v in kw.items() if k != "continuous_action"})


def test_args_a_policy_cannot_take_are_refused_naming_the_inherited_hook(tmp_path: Path) -> None:
    """A subclass with a narrower constructor gets a message that names the inherited hook and the fixes."""
    from hpcrl.api.policy import register as register_policy

    register_policy("test-narrow-random", _NarrowRandom)
    register_policy("test-narrow-random-factory", _narrow_factory)
    register_policy("test-open-random-factory", _open_factory)
    single = {k: v for k, v in _data(tmp_path / "x").items() if k not in ("policies", "trainers", "agents")}
    single.update(trainer={"type_": "null", "args": {}})
    for name, takes in (("test-narrow-random", "_NarrowRandom"), ("test-narrow-random-factory", "_narrow_factory")):
        data = dict(single, policy={"type_": name, "args": {}}, run={"dir": str(tmp_path / name), "progress": "off"})
        with pytest.raises(config.ConfigError) as e:
            run_local(config.from_dict(data))
        msg = str(e.value)
        assert msg.startswith("policy.args: ") and "inherited from RandomPolicy" in msg, msg
        assert f"added continuous_action from the env's spaces, but {takes}() takes no such argument" in msg, msg
        assert not (tmp_path / name).exists()
    # a factory taking **kwargs is left to decide; a given argument is the user's own (the constructor says)
    data = dict(single, policy={"type_": "test-open-random-factory", "args": {}})
    data["run"] = {"dir": str(tmp_path / "open"), "progress": "off"}
    data["experiment"] = dict(data["experiment"], total_frames=64)
    assert run_local(config.from_dict(data))["reason"] == "finished"


def test_each_policy_takes_the_spaces_of_its_own_agents(tmp_path: Path) -> None:
    """Heterogeneous teams: every policy's args come from the agents it acts for, not from agent 0."""
    bare = {"type_": "actor-critic-separate", "args": {"hidden_dim": 8}}
    data = _data(
        tmp_path / "run",
        total=128,
        environment={"type_": "mp-test-mixed", "args": {"n_agents": 2}},
        policies={"learner": dict(bare), "opponent": {"type_": "random", "args": {}}},
    )
    summary = run_local(config.from_dict(data))
    assert summary["reason"] == "finished"
    stored = config.load(tmp_path / "run" / "config.yaml")
    assert stored.policies["learner"].args["action_dim"] == 2
    assert stored.policies["opponent"].args["action_dim"] == 4  # agent 1's Discrete(4), not agent 0's
    # one policy for both agents: their spaces give it different args, named before the run dir is made
    data = dict(data, agents=[{"match": ".*", "policy": "learner"}], run=dict(data["run"], dir=str(tmp_path / "b")))
    data["policies"] = {"learner": dict(bare)}
    with pytest.raises(config.ConfigError, match=r"^policies\.learner\.args: .*agents 0 and 1 act with one policy"):
        run_local(config.from_dict(data))
    data["policies"] = {"learner": {"type_": "actor-critic-separate", "args": {"hidden_dim": 8, "action_dim": 2}}}
    with pytest.raises(config.ConfigError, match=r"^policies\.learner\.args: .*agent 1 \(acting with the same policy"):
        run_local(config.from_dict(data))
    assert not (tmp_path / "b").exists()


def test_the_progress_line_shows_every_policys_return(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = _data(tmp_path / "run", total=512)
    data["run"].update(progress="log", log_interval_seconds=0.001)
    with caplog.at_level("INFO", logger="hpcrl.progress"):
        summary = run_local(config.from_dict(data))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("frames ")]
    assert lines and "by policy: learner " in lines[-1] and ", opponent " in lines[-1], lines[-1:]
    by_policy = summary["mean_return_by_policy"]
    assert f"opponent {by_policy['opponent']:.2f}" in lines[-1]
