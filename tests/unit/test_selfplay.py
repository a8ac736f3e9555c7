"""Self-play in one process: config rules, the snapshot pool, opponents per episode, scoring, a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from gymnasium import spaces

from hpcrl.acting import rings
from hpcrl.acting.policy_ring import PartSpec
from hpcrl.acting.selfplay import Game, Scoreboard, SelfPlayRing, SnapshotPool, draw_probabilities, score
from hpcrl.api import config
from hpcrl.api.data import RolloutResult
from hpcrl.api.environment import Action, Environment, StepResult
from hpcrl.api.environment import register as register_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy
from hpcrl.api.policy import register as register_policy
from hpcrl.api.selfplay_spec import agent_owners
from hpcrl.api.trainer import register as register_trainer
from hpcrl.policies.random import RandomPolicy
from hpcrl.roles.local import run_local
from hpcrl.storage.trace import read_trace
from tests.integration.indexed_env import RecordingPPO

REPO = Path(__file__).resolve().parents[2]

#: (agent 0's return, agent 1's return) of the episodes of each env, in turn: win, draw, loss, win, loss
SCRIPT = [(1.0, -1.0), (0.5, 0.5), (-1.0, 1.0), (2.0, 0.0), (0.0, 0.25)]


class Duel(Environment):
    """Two agents; each sees ``[its index, t / length]``; episode k pays the returns ``SCRIPT[k % 5]`` at its end.

    Every instance logs the actions of agent 1 in each episode (``log``: one list per finished episode).
    """

    instances: list[Duel] = []

    def __init__(self, length: int = 4) -> None:
        self.length = length
        self.t = 0
        self.episode = -1
        self.log: list[list[int]] = []
        self.current: list[int] = []
        Duel.instances.append(self)

    @property
    def agent_count(self) -> int:
        return 2

    @property
    def observation_spaces(self) -> list[Any]:
        return [spaces.Dict(obs=spaces.Box(-np.inf, np.inf, (2,), np.float32))] * 2

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(2)] * 2

    def seed(self, seed: int) -> None:
        pass

    def _results(self, rewards: tuple[float, float]) -> list[StepResult | None]:
        done = self.t >= self.length
        obs = [NamedArray(obs=np.array([a, self.t / self.length], np.float32)) for a in range(2)]
        flags = np.array([done]), np.array([False])
        return [StepResult(obs[a], np.array([rewards[a]], np.float32), *flags) for a in (0, 1)]

    def reset(self) -> list[StepResult | None]:
        if self.episode >= 0:
            self.log.append(self.current)
        self.current = []
        self.episode += 1
        self.t = 0
        return self._results((0.0, 0.0))

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        self.current.append(int(actions[1].x))  # type: ignore[union-attr]
        self.t += 1
        return self._results(SCRIPT[self.episode % len(SCRIPT)] if self.t == self.length else (0.0, 0.0))


class VersionPolicy(Policy):
    """Acts with its version as the action of every row (so a row shows which snapshot answered it)."""

    def __init__(self) -> None:
        self.weights: dict[str, Any] = {}

    def rollout(self, request: Any, **kwargs: Any) -> RolloutResult:
        n = len(request.obs)
        return RolloutResult(action=Action(x=np.full(n, self.version, np.int64)))

    def analyze(self, sample: Any, target: str = "ppo", **kwargs: Any) -> Any:
        raise NotImplementedError

    def get_checkpoint(self) -> dict[str, Any]:
        return {}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return dict(self.weights)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights = {k: np.array(v) for k, v in state_dict.items()}


class FlakyDuel(Duel):
    """The first instance built raises in the third step of its second episode (once)."""

    built = 0

    def __init__(self, length: int = 4) -> None:
        super().__init__(length)
        FlakyDuel.built += 1
        self.flaky = FlakyDuel.built == 1

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        if self.flaky and self.episode == 1 and self.t == 2:
            raise RuntimeError("flaky duel")
        return super().step(actions)


register_env("sp-test-duel", Duel)
register_env("sp-test-flaky-duel", FlakyDuel)
register_trainer("sp-test-recording-ppo", RecordingPPO)

AC = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}


def _data(run_dir: Path | str = "unused", total: int = 512, **selfplay: Any) -> dict[str, Any]:
    sp = {"policy": "learner", "opponent_agents": [1], "pool_size": 3, "snapshot_every_frames": 64}
    sp.update(selfplay)
    return {
        "experiment": {"name": "sp", "seed": 3, "total_frames": total},
        "environment": {"type_": "sp-test-duel"},
        "policies": {"learner": dict(AC)},
        "trainers": {"learner": {"type_": "sp-test-recording-ppo", "args": {"epochs": 1, "minibatches": 1}}},
        "agents": [{"match": 0, "policy": "learner"}],
        "selfplay": sp,
        "actor": {"envs_per_actor": 2, "fragment_length": 8},
        "run": {"dir": str(run_dir), "progress": "off", "checkpoint_writer": "inline", "checkpoint_every_seconds": 0},
    }


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as e:
        config.from_dict(data)
    return str(e.value)


# ---------------------------------------------------------------- config
def test_selfplay_config_rules_name_the_key_path() -> None:
    cfg = config.from_dict(_data())
    assert cfg.selfplay is not None and cfg.selfplay.sample == "uniform" and cfg.selfplay.pool_size == 3
    assert config.from_dict(yaml.safe_load(config.dump(cfg))) == cfg  # round-trips through the stored config
    assert _error(_data(policy="lerner")).startswith("selfplay.policy: unknown policy 'lerner'")
    frozen = _data()
    frozen["trainers"] = {}
    assert _error(frozen).startswith("selfplay.policy: policy 'learner' has no trainer (trainers.learner)")
    assert _error(_data(opponent_agents=[])).startswith("selfplay.opponent_agents: empty")
    assert _error(_data(opponent_agents=[1, "(1"])).startswith("selfplay.opponent_agents[1]: bad regular expression")
    assert _error(_data(opponent_agents=[-1])).startswith("selfplay.opponent_agents[0]: an agent index must be >= 0")
    assert _error(_data(pool_size=0)) == "selfplay.pool_size: must be >= 1, got 0"
    assert _error(_data(snapshot_every_frames=0)) == "selfplay.snapshot_every_frames: must be > 0, got 0"
    assert _error(_data(sample="newest")).startswith("selfplay.sample: expected one of 'uniform' | 'latest_weighted'")
    assert _error(_data(poolsize=2)).startswith("selfplay.poolsize: unknown key (did you mean 'pool_size'?)")
    single = {k: v for k, v in _data().items() if k not in ("policies", "trainers", "agents")}
    single.update(policy=AC, trainer={"type_": "ppo"})
    assert _error(single).startswith("selfplay: only with policies")
    for key, value in (("eval_episodes", 4), ("save_best", True)):  # evaluation needs a fixed opponent
        evaluated = _data()
        evaluated["run"][key] = value
        message = _error(evaluated)
        assert message.startswith(f"run.{key}: a self-play run evaluates against its first fixed opponent")
        assert "selfplay.fixed_opponents" in message


def test_opponent_agents_and_the_agents_mapping() -> None:
    """Opponent agents may be mapped to the self-play policy or to nothing, never to another policy."""
    both = _data()
    both["agents"] = [{"match": ".*", "policy": "learner"}]
    assert agent_owners(config.from_dict(both), 2) == ["learner", "learner@pool"]
    assert agent_owners(config.from_dict(_data()), 2) == ["learner", "learner@pool"]
    other = _data()
    other["policies"]["frozen"] = {"type_": "random", "args": {"action_dim": 2}}
    other["agents"] = [{"match": 0, "policy": "learner"}, {"match": 1, "policy": "frozen"}]
    given = r"^selfplay\.opponent_agents: agent 1 .* agents\[1\] gives it to policy 'frozen'"
    with pytest.raises(config.ConfigError, match=given):
        agent_owners(config.from_dict(other), 2)
    with pytest.raises(config.ConfigError, match=r"^selfplay\.opponent_agents: matches no agent"):
        agent_owners(config.from_dict({**_data(opponent_agents=[5]), "agents": both["agents"]}), 2)
    with pytest.raises(config.ConfigError, match=r"^selfplay\.policy: policy 'learner' acts for no agent"):
        agent_owners(config.from_dict(_data(opponent_agents=["[01]"])), 2)
    with pytest.raises(config.ConfigError, match=r"^agents: agent 1 .* matched by no entry"):
        agent_owners(config.from_dict(_data(opponent_agents=[2])), 3)


# ---------------------------------------------------------------- the pool
def _policy(version: int) -> VersionPolicy:
    p = VersionPolicy()
    p.weights = {"w": np.full(3, float(version))}
    p.set_version(version)
    return p


def test_pool_cadence_cap_and_same_version_skip() -> None:
    pool = SnapshotPool(VersionPolicy, size=3, every_frames=100, sample="uniform", seed=0)
    assert pool.maybe_take(_policy(0), 0) is not None  # an empty pool takes one at once
    assert pool.maybe_take(_policy(1), 99) is None  # before the next multiple of F
    assert pool.maybe_take(_policy(1), 100) is not None
    assert pool.maybe_take(_policy(2), 150) is None
    assert pool.maybe_take(_policy(2), 230) is not None  # late: the next one is due at 300, not 330
    assert pool.maybe_take(_policy(3), 299) is None
    assert pool.maybe_take(_policy(2), 300) is None  # the same version as the newest snapshot: skipped
    assert pool.maybe_take(_policy(3), 350) is None  # ... and the cadence goes on from 400
    assert pool.maybe_take(_policy(3), 400) is not None
    assert pool.versions == [1, 2, 3]  # K = 3: the oldest went
    assert [e.index for e in pool.entries] == [1, 2, 3]
    assert [float(e.policy.weights["w"][0]) for e in pool.entries] == [1.0, 2.0, 3.0]


def test_snapshots_are_copies_and_a_held_one_survives_eviction() -> None:
    learner = _policy(0)
    pool = SnapshotPool(VersionPolicy, size=2, every_frames=10, sample="uniform", seed=0)
    first = pool.take(learner, 0)
    learner.weights["w"][:] = 7.0  # the learner trains on: the snapshot keeps what it copied
    assert float(first.policy.weights["w"][0]) == 0.0
    held = pool.draw()
    assert held is first and held.holders == 1
    for v in (1, 2, 3):
        pool.take(_policy(v), 10 * v)
    assert first not in pool.entries and float(first.policy.weights["w"][0]) == 0.0  # not reused while held
    assert all(e.policy is not first.policy for e in pool.entries)
    pool.release(held)
    assert pool.take(_policy(4), 40).policy is first.policy  # its memory is reused once nobody holds it


@pytest.mark.parametrize("sample", ["uniform", "latest_weighted"])
def test_draws_follow_the_documented_rule(sample: str) -> None:
    pool = SnapshotPool(VersionPolicy, size=4, every_frames=1, sample=sample, seed=5)
    for v in range(4):
        pool.take(_policy(v), v)
    n = 20_000
    counts = np.zeros(4)
    for _ in range(n):
        snap = pool.draw()
        counts[snap.version] += 1
        pool.release(snap)
    expected = [0.25] * 4 if sample == "uniform" else [0.1, 0.2, 0.3, 0.4]
    assert np.allclose(draw_probabilities(4, sample), expected)
    assert np.abs(counts / n - expected).max() < 0.015  # 4 standard errors at most, for a fixed seed


def test_fixed_opponents_are_drawn_in_their_share_and_never_recycled() -> None:
    """fixed_fraction of the draws go to the fixed opponents (uniformly); their policies are never overwritten."""
    fixed = [_policy(100), _policy(200)]
    pool = SnapshotPool(VersionPolicy, size=2, every_frames=1, sample="uniform", seed=3, fixed=fixed,
                        fixed_fraction=0.3)  # fmt: skip
    pool.take(_policy(0), 0)
    n = 20_000
    versions = []
    for i in range(n):
        snap = pool.draw()
        versions.append(snap.version)
        pool.release(snap)
        if i % 1000 == 0:
            pool.take(_policy(i // 1000 + 1), i)  # evictions meanwhile: spare memory is reused
    v = np.asarray(versions)
    assert abs(np.mean(v == -1) - 0.15) < 0.01 and abs(np.mean(v == -2) - 0.15) < 0.01  # 4 standard errors
    assert [float(p.weights["w"][0]) for p in fixed] == [100.0, 200.0]  # never a snapshot's target
    assert all(e.policy not in fixed for e in pool.entries) and all(p not in fixed for p in pool._spare)
    assert [(f.index, f.version) for f in pool.fixed] == [(-1, -1), (-2, -2)]


def test_fixed_opponent_config_rules() -> None:
    def with_fixed(**sp: Any) -> dict[str, Any]:
        data = _data(**sp)
        data["policies"]["rnd"] = {"type_": "random", "args": {"action_dim": 2}}
        return data

    cfg = config.from_dict(with_fixed(fixed_opponents=["rnd"], fixed_fraction=0.25))
    assert cfg.selfplay is not None and cfg.selfplay.fixed_opponents == ["rnd"]
    assert config.from_dict(yaml.safe_load(config.dump(cfg))) == cfg
    assert _error(with_fixed(fixed_opponents=["nope"], fixed_fraction=0.2)).startswith(
        "selfplay.fixed_opponents[0]: unknown policy 'nope'"
    )
    assert _error(with_fixed(fixed_opponents=["learner"], fixed_fraction=0.2)).startswith(
        "selfplay.fixed_opponents[0]: policy 'learner' has a trainer (trainers.learner)"
    )
    assert _error(with_fixed(fixed_opponents=["rnd", "rnd"], fixed_fraction=0.2)).startswith(
        "selfplay.fixed_opponents: a policy is listed twice"
    )
    assert _error(with_fixed(fixed_fraction=0.2)).startswith("selfplay.fixed_fraction: 0.2 needs fixed_opponents")
    assert _error(with_fixed(fixed_opponents=["rnd"])).startswith("selfplay.fixed_fraction: 0 with fixed_opponents")
    for bad in (1.5, -0.1, float("nan")):
        message = _error(with_fixed(fixed_opponents=["rnd"], fixed_fraction=bad))
        assert message.startswith("selfplay.fixed_fraction: must be >= 0 and <= 1"), message


# ---------------------------------------------------------------- the ring
def _ring(pool: SnapshotPool, envs: int = 2, groups: int = 1, **data: Any) -> SelfPlayRing:
    parts = [PartSpec("learner", None), PartSpec("learner@pool", None)]
    extra = {"pool": pool, "learner_part": 0, "opponent_part": 1}
    cfg = config.from_dict({**_data(), "actor": {"envs_per_actor": envs, "fragment_length": 8}, **data})
    ring = rings.make_ring(
        cfg, None, "test", num_groups=groups, parts=parts, part_of_agent=lambda a: a, ring_class=SelfPlayRing,
        ring_args=extra,
    )  # fmt: skip
    assert isinstance(ring, SelfPlayRing)
    return ring


def test_each_episode_keeps_one_opponent_snapshot_and_is_scored() -> None:
    Duel.instances.clear()
    pool = SnapshotPool(VersionPolicy, size=3, every_frames=5, sample="uniform", seed=1)
    learner = _policy(0)
    pool.take(learner, 0)
    ring = _ring(pool, envs=3)
    games: list[Game] = []
    for step in range(200):
        for group in range(ring.num_groups):
            requests = ring.request_parts(group)
            assert requests[0] is not None and requests[1] is not None
            answers = [(learner.rollout(requests[0]), learner.version), ring.act_opponents(group, requests[1])]
            ring.consume_parts(group, answers)  # type: ignore[arg-type]
        ring.pop_part_fragments(1)  # the opponent part's rows: dropped, as a run does
        games += ring.pop_games()
        learner.set_version(step // 7 + 1)
        pool.maybe_take(learner, ring.frames)
    ring.close()
    logs = [ep for env in Duel.instances for ep in env.log]
    assert len(logs) >= 100
    used = set()
    for actions in logs:
        assert len(set(actions)) == 1, actions  # one snapshot (its version is its action) for the whole episode
        used.add(actions[0])
    assert len(used) >= 10  # and episodes drew many different snapshots over the run
    # every finished episode was scored from its script: (1, -1) win, (.5, .5) draw, (-1, 1) loss, ...
    assert len(games) == len(logs)
    per_env = [env.log for env in Duel.instances]
    outcomes = sorted(g.outcome for g in games)
    expected = sorted(score(*SCRIPT[k % 5]) for log in per_env for k in range(len(log)))
    assert outcomes == expected
    assert {(g.learner_return, g.opponent_return) for g in games} <= set(SCRIPT)
    assert sorted(g.opponent_version for g in games) == sorted(ep[0] for ep in logs)


def test_an_episode_dropped_by_a_recreated_env_is_no_game() -> None:
    Duel.instances.clear()
    FlakyDuel.built = 0
    pool = SnapshotPool(VersionPolicy, size=2, every_frames=3, sample="uniform", seed=2)
    learner = _policy(0)
    pool.take(learner, 0)
    actor = {"envs_per_actor": 2, "fragment_length": 8, "env_failure": "recreate"}
    ring = _ring(pool, environment={"type_": "sp-test-flaky-duel"}, actor=actor)
    games: list[Game] = []
    for step in range(40):
        requests = ring.request_parts(0)
        ring.consume_parts(0, [(learner.rollout(requests[0]), 0), ring.act_opponents(0, requests[1])])  # type: ignore[arg-type]
        games += ring.pop_games()
        learner.set_version(step + 1)
        pool.maybe_take(learner, ring.frames)
    assert ring.env_failures == 1
    finished = [k for env in Duel.instances for k in range(len(env.log))]  # the dropped episode was never logged
    assert len(games) == len(finished) and len(Duel.instances) == 3
    assert sorted(g.outcome for g in games) == sorted(score(*SCRIPT[k % 5]) for k in finished)
    distinct = {id(snap): snap for snap in ring.held.values()}
    assert sum(snap.holders for snap in distinct.values()) == 2  # one per env: the dropped episode's was let go
    ring.close()


def test_scoreboard_against_a_hand_made_log() -> None:
    board = Scoreboard(window=4)
    log = [(1.0, -1.0, 3), (0.0, 0.0, 3), (-1.0, 1.0, 5), (1.0, 0.0, 5), (0.5, 0.0, 5), (-2.0, -2.0, 7)]
    for lr, orr, v in log:
        board.add(Game(score(lr, orr), lr, orr, v, 0))
    assert board.games == 6
    assert board.table() == {
        3: {"games": 2, "win": 0.5, "draw": 0.5, "loss": 0.0},
        5: {"games": 3, "win": 0.6667, "draw": 0.0, "loss": 0.3333},
        7: {"games": 1, "win": 0.0, "draw": 1.0, "loss": 0.0},
    }
    assert board.rates() == {"win": 0.5, "draw": 0.25, "loss": 0.25}  # the last 4 games: L W W D


# ---------------------------------------------------------------- runs
def test_a_selfplay_run_never_trains_on_opponent_rows(tmp_path: Path) -> None:
    RecordingPPO.seen.clear()
    summary = run_local(config.from_dict(_data(tmp_path / "run", total=640)))
    assert RecordingPPO.seen, "the learner never trained"
    assert all(set(s.tolist()) == {0.0} for s in RecordingPPO.seen)  # only agent 0's rows reach the trainer
    # every 4-step episode is a game; the last one of each of the 2 envs is scored after the budget ran out
    assert summary["selfplay_games"] == 640 // 4 - 2
    assert 1 <= len(summary["selfplay_pool_versions"]) <= 3
    assert summary["mean_return_by_policy"]["learner"] is not None
    trace = read_trace(next((tmp_path / "run" / "traces").glob("rank-*.h5")))
    sp = trace["selfplay"]
    assert len(sp["outcome"]) == summary["selfplay_games"]
    assert set(sp["outcome"].tolist()) == {1, 0, -1}
    assert np.array_equal(sp["outcome"], [score(a, b) for a, b in zip(sp["learner_return"], sp["opponent_return"])])
    assert (sp["opponent_version"] <= sp["learner_version"]).all()
    # the episodes table holds the learner's and the opponents' episodes
    assert len(trace["episodes"]["return"]) == 2 * summary["selfplay_games"]


def test_a_fixed_opponent_plays_its_share_of_the_games(tmp_path: Path) -> None:
    """A frozen random policy as a fixed opponent: it acts for no agent otherwise, plays about half the games."""
    data = _data(tmp_path / "run", total=1280, fixed_opponents=["rnd"], fixed_fraction=0.5)
    data["policies"]["rnd"] = {"type_": "random", "args": {"action_dim": 2}}
    summary = run_local(config.from_dict(data))
    assert summary["selfplay_games"] == 1280 // 4 - 2
    fixed = summary["selfplay_vs_fixed"]["rnd"]
    assert 0.35 < fixed["games"] / summary["selfplay_games"] < 0.65
    games = read_trace(next((tmp_path / "run" / "traces").glob("rank-*.h5")))["selfplay"]
    assert int((games["opponent_version"] == -1).sum()) == fixed["games"]
    assert set(games["opponent_index"][games["opponent_version"] == -1].tolist()) == {-1}
    assert summary["policy_versions"]["rnd"] == 0 and summary["mean_return_by_policy"]["rnd"] is None


class FirstActionPolicy(RandomPolicy):
    """Acts 1 in every row, except 0 in rows marked ``is_evaluation`` (results laid out like the learner's)."""

    def rollout(self, request: Any, **kwargs: Any) -> RolloutResult:
        out = super().rollout(request, **kwargs)
        out.action.x[:] = np.where(np.asarray(request.is_evaluation, bool).reshape(-1), 0, 1)  # type: ignore[union-attr]
        return out


register_policy("sp-test-first-action", FirstActionPolicy)


def test_evaluation_plays_the_first_fixed_opponent_unmarked(tmp_path: Path) -> None:
    """Evaluation in a self-play run: the learner's deterministic episodes against fixed opponent 0, which acts
    as in training (its rows are not marked is_evaluation); nothing of it reaches the trainer."""
    Duel.instances.clear()
    RecordingPPO.seen.clear()
    data = _data(tmp_path / "run", total=640, fixed_opponents=["fixed"], fixed_fraction=0.01)
    data["policies"]["fixed"] = {"type_": "sp-test-first-action", "args": {"action_dim": 2}}
    data["run"].update(eval_episodes=5, eval_envs=1, eval_every_frames=200, save_best=True)
    summary = run_local(config.from_dict(data))
    assert summary["evaluations"] == 3 and summary["last_eval_return_by_policy"]["learner"] is not None
    # one eval env, fresh each time: the scripted Duel pays the learner 1, .5, -1, 2, 0 in episodes 0-4 -> 0.5
    assert summary["last_eval_return"] == pytest.approx(0.5)
    evals = [env for env in Duel.instances if len(env.log) in (5, 6)]  # the training envs play far more
    assert len(evals) == 3 and all(a == 1 for env in evals for ep in env.log for a in ep)  # unmarked: action 1
    assert (tmp_path / "run" / "checkpoints" / "learner" / "best.h5").is_file()
    assert all(set(s.tolist()) == {0.0} for s in RecordingPPO.seen)


def test_resume_restarts_the_pool_from_the_restored_weights(tmp_path: Path) -> None:
    data = _data(tmp_path / "run", total=640)
    data["run"]["stop_at_frames"] = 320
    first = run_local(config.from_dict(data))
    assert first["reason"] != "finished"
    data["run"]["stop_at_frames"] = 0
    second = run_local(config.from_dict(data))
    assert second["reason"] == "finished"
    traces = sorted((tmp_path / "run" / "traces").glob("rank-*.h5"))
    assert len(traces) == 2
    resumed = read_trace(traces[-1])["selfplay"]  # the second invocation's trace (rank-0000.r1.h5)
    assert len(resumed["opponent_version"]) > 0
    # the pool began with the resumed weights: no game of the second invocation was against an older snapshot
    assert resumed["opponent_version"].min() == first["policy_version"]


def test_the_tictactoe_example_runs(tmp_path: Path) -> None:
    pytest.importorskip("pettingzoo")
    import examples.tictactoe.env  # noqa: F401  (registers two-player)

    cfg = config.load(
        REPO / "examples" / "tictactoe" / "selfplay.yaml",
        [f"run.dir={tmp_path / 'run'}", "experiment.total_frames=3000", "run.progress=off",
         "selfplay.snapshot_every_frames=500", "run.checkpoint_writer=inline"],
    )  # fmt: skip
    summary = run_local(cfg)
    assert summary["reason"] == "finished" and summary["selfplay_games"] > 100
    assert summary["selfplay_win_rate_last_100"] is not None and len(summary["selfplay_pool_versions"]) >= 2


def test_a_recurrent_learner_plays_its_recurrent_snapshots(tmp_path: Path) -> None:
    """The opponent part keeps its own recurrent state, answered by snapshots of an LSTM policy."""
    data = _data(tmp_path / "run", total=320, snapshot_every_frames=32)
    args = {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8, "num_rnn_layers": 1, "rnn_type": "lstm"}
    data["policies"]["learner"] = {"type_": "actor-critic-separate", "args": args}
    summary = run_local(config.from_dict(data))
    assert summary["reason"] == "finished" and summary["selfplay_games"] == 320 // 4 - 2
    assert len(summary["selfplay_pool_versions"]) >= 2
