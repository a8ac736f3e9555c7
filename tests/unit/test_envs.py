"""Built-in environments: gymnasium adapter, toy tasks, Atari and PettingZoo adapters."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from hpcrl.api import config
from hpcrl.api.environment import Action, make
from hpcrl.envs.gym_env import GymEnvironment
from hpcrl.envs.spaces import ActionAdapter, SpaceError
from hpcrl.envs.toy import MemoryEnvironment, NullEnvironment, QuickstartEnvironment
from hpcrl.testing import test_environment


# ---------------------------------------------------------------- tiny gymnasium envs for edge cases
class DictObsEnv(gymnasium.Env):
    """Dict observation (float64 box + discrete), MultiDiscrete actions with a start offset."""

    observation_space = spaces.Dict(pos=spaces.Box(-1.0, 1.0, (2,), np.float64), mode=spaces.Discrete(3))
    action_space = spaces.MultiDiscrete([3, 4], start=[1, 0])

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.t = 0
        return {"pos": self.np_random.uniform(-1, 1, 2), "mode": 2}, {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        self.last_action = np.asarray(action)
        self.t += 1
        return {"pos": np.zeros(2), "mode": self.t % 3}, float(action.sum()), self.t >= 3, False, {}


class TupleActionEnv(gymnasium.Env):
    observation_space = spaces.Box(0.0, 1.0, (2,), np.float32)
    action_space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(2)))

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[Any, dict]:
        return np.zeros(2, np.float32), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        return np.zeros(2, np.float32), 0.0, False, False, {}


for _id, _cls in (("hpcrl-test/DictObs-v0", DictObsEnv), ("hpcrl-test/TupleAction-v0", TupleActionEnv)):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_cls)


def act(x: Any, dtype: Any = np.int64) -> Action:
    return Action(x=np.asarray(x, dtype))


# ---------------------------------------------------------------- every built-in passes test_environment
@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("null", {}),
        ("null", {"agents": 3, "episode_length": 7}),
        ("sleep", {"step_seconds": 0.0001, "episode_length": 20}),
        ("memory", {}),
        ("memory", {"delay": 0, "n_symbols": 2}),
        ("quickstart-multiagent", {}),
        ("quickstart-multiagent", {"stage": "hard", "episode_length": 8}),
        ("gym", {"id": "CartPole-v1"}),
        ("gym", {"id": "Pendulum-v1"}),
        ("gym", {"id": "FrozenLake-v1"}),
        ("gym", {"id": "hpcrl-test/DictObs-v0"}),
        ("gym", {"id": "Blackjack-v1", "wrappers": ["FlattenObservation"]}),
        ("gym", {"id": "CartPole-v1", "wrappers": ["NormalizeReward", "NormalizeObservation"]}),
    ],
)
def test_builtin_envs_pass_test_environment(name: str, args: dict[str, Any]) -> None:
    report = test_environment(config.Environment(type_=name, args=args), steps=120)
    assert report["steps"] == 120
    assert report["agent_count"] >= 1


# ---------------------------------------------------------------- gymnasium adapter
def test_cartpole_layout_and_spaces() -> None:
    env = GymEnvironment("CartPole-v1", seed=1)
    assert env.agent_count == 1
    (r,) = env.reset()
    assert r is not None and r.obs.keys() == ["obs"]
    assert r.obs.obs.shape == (4,) and r.obs.obs.dtype == np.float32
    assert r.reward.tolist() == [0.0] and r.done.tolist() == [False] and r.truncated.tolist() == [False]
    assert env.observation_spaces[0]["obs"].shape == (4,)
    assert env.action_spaces[0] == spaces.Discrete(2)
    (r,) = env.step([act(1)])
    assert r is not None and r.reward.dtype == np.float32 and r.reward.shape == (1,) and r.reward[0] == 1.0
    env.close()


def test_pendulum_continuous_actions_are_clipped() -> None:
    env = GymEnvironment("Pendulum-v1", seed=0)
    sp = env.action_spaces[0]
    assert isinstance(sp, spaces.Box) and sp.dtype == np.float32 and sp.shape == (1,)
    adapter = ActionAdapter(env.gym_env.action_space)
    assert adapter.convert(act([5.0], np.float32)).tolist() == [2.0]
    assert ActionAdapter(env.gym_env.action_space, clip_actions=False).convert(act([5.0], np.float32)).tolist() == [5.0]
    env.reset()
    (r,) = env.step([act([0.5], np.float32)])
    assert r is not None and r.obs.obs.shape == (3,) and r.obs.obs.dtype == np.float32


def test_dict_observation_discrete_one_hot_and_multidiscrete_start() -> None:
    env = GymEnvironment("hpcrl-test/DictObs-v0", seed=0)
    osp = env.observation_spaces[0]
    assert list(osp.spaces) == ["pos", "mode"]  # the env's own key order
    assert osp["pos"].dtype == np.float32  # float64 delivered as float32
    assert osp["mode"].shape == (3,)  # Discrete(3) -> one-hot
    (r,) = env.reset()
    assert r is not None and r.obs.keys() == ["pos", "mode"]
    assert r.obs.pos.dtype == np.float32 and r.obs.mode.tolist() == [0.0, 0.0, 1.0]
    assert env.action_spaces[0] == spaces.MultiDiscrete([3, 4])
    env.step([act([0, 3])])
    assert env.gym_env.unwrapped.last_action.tolist() == [1, 3]  # start offset added back


def test_float64_kept_when_asked() -> None:
    env = GymEnvironment("hpcrl-test/DictObs-v0", cast_float64=False)
    (r,) = env.reset()
    assert r is not None and r.obs.pos.dtype == np.float64


def test_done_vs_truncated() -> None:
    env = GymEnvironment("CartPole-v1", seed=0, max_episode_steps=5)
    env.reset()
    flags = []
    for i in range(5):
        (r,) = env.step([act(i % 2)])
        assert r is not None
        flags.append((bool(r.done[0]), bool(r.truncated[0])))
    assert flags[:4] == [(False, False)] * 4
    assert flags[4] == (False, True)  # time limit: truncated, not terminal
    env = GymEnvironment("CartPole-v1", seed=0)
    env.reset()
    for _ in range(500):
        (r,) = env.step([act(1)])  # always push right: the pole falls
        assert r is not None
        if r.done[0] or r.truncated[0]:
            break
    assert bool(r.done[0]) and not bool(r.truncated[0])


def test_unknown_id_lists_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown gymnasium env id 'CartPol-v1'; did you mean 'CartPole-v1'"):
        GymEnvironment("CartPol-v1")
    with pytest.raises(ValueError, match=r"'CartPole-v1'"):
        make("gym", id="CartPole-v9")


def test_unsupported_spaces_are_named() -> None:
    with pytest.raises(SpaceError, match=r"action space Tuple\(Discrete\(2\), Discrete\(2\)\) is not supported"):
        GymEnvironment("hpcrl-test/TupleAction-v0")
    with pytest.raises(SpaceError, match=r"gym:Blackjack-v1: observation space Tuple\(.*FlattenObservation"):
        GymEnvironment("Blackjack-v1")


def test_wrappers_by_name_path_and_mapping() -> None:
    env = GymEnvironment(
        "CartPole-v1",
        wrappers=[{"type": "gymnasium.wrappers:TimeAwareObservation", "args": {"normalize_time": True}}],
    )
    (r,) = env.reset()
    assert r is not None and r.obs.obs.shape == (5,)
    with pytest.raises(ValueError, match=r"cannot load wrapper 'NoSuchWrapper'"):
        GymEnvironment("CartPole-v1", wrappers=["NoSuchWrapper"])
    with pytest.raises(ValueError, match=r"expected keys 'type'"):
        GymEnvironment("CartPole-v1", wrappers=[{"args": {}}])
    with pytest.raises(ValueError, match=r"wrapper 'TimeAwareObservation' rejected its args"):
        GymEnvironment("CartPole-v1", wrappers=[{"type": "TimeAwareObservation", "args": {"bogus": 1}}])


def test_bad_action_names_env_and_agent() -> None:
    env = GymEnvironment("CartPole-v1")
    env.reset()
    with pytest.raises(ValueError, match=r"env 'gym:CartPole-v1' step: agent 0: action: expected Action"):
        env.step([None])


def test_seeded_reproducibility() -> None:
    def first(seed: int, via_method: bool = False) -> np.ndarray:
        env = GymEnvironment("CartPole-v1") if via_method else GymEnvironment("CartPole-v1", seed=seed)
        if via_method:
            env.seed(seed)
        (r,) = env.reset()
        assert r is not None
        return r.obs.obs.copy()

    assert np.array_equal(first(3), first(3))
    assert np.array_equal(first(3), first(3, via_method=True))
    assert not np.array_equal(first(3), first(4))
    q1, q2, q3 = QuickstartEnvironment(seed=5), QuickstartEnvironment(seed=5), QuickstartEnvironment(seed=6)
    a, b, c = q1.reset()[0], q2.reset()[0], q3.reset()[0]
    assert a is not None and b is not None and c is not None
    assert a.obs == b.obs and not a.obs == c.obs


def test_set_curriculum_stage_gym_is_noop(caplog: pytest.LogCaptureFixture) -> None:
    def rollout(stage_calls: bool) -> list[tuple[Any, ...]]:
        """Two seeded CartPole episodes with fixed actions; optionally switching stages all along."""
        env = GymEnvironment("CartPole-v1", seed=7)
        if stage_calls:
            env.set_curriculum_stage("hard")  # before the first reset
        rows = []
        for episode in range(2):
            (r,) = env.reset()
            t = 0
            while r is not None and not (r.done[0] or r.truncated[0]):
                rows.append((episode, t, r.obs.obs.copy(), float(r.reward[0])))
                if stage_calls and t % 5 == 2:
                    env.set_curriculum_stage("easy" if t % 2 else "hard")  # mid-episode
                (r,) = env.step([act(t % 3 % 2)])
                t += 1
            assert r is not None
            rows.append((episode, t, r.obs.obs.copy(), float(r.reward[0]), bool(r.done[0]), bool(r.truncated[0])))
        env.close()
        return rows

    plain = rollout(stage_calls=False)
    with caplog.at_level("DEBUG", logger="hpcrl.envs.gym_env"):
        staged = rollout(stage_calls=True)
    assert len(plain) == len(staged) > 20
    for a, b in zip(plain, staged):
        assert a[:2] == b[:2] and np.array_equal(a[2], b[2]) and a[3:] == b[3:], f"differs at episode/step {a[:2]}"
    assert "gym:CartPole-v1: set_curriculum_stage('hard') ignored" in caplog.messages


# ---------------------------------------------------------------- quick-start task
def play_quickstart(env: QuickstartEnvironment, oracle: bool, episodes: int, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(episodes):
        results = env.reset()
        while True:
            picks = env.oracle_actions() if oracle else rng.integers(0, 16, 2).tolist()
            results = env.step([act(picks[0]), act(picks[1])])
            total += sum(float(r.reward[0]) for r in results if r is not None)
            if results[0] is not None and results[0].done[0]:
                break
    return total / (2 * episodes)


def test_quickstart_layout() -> None:
    env = QuickstartEnvironment()
    results = env.reset()
    assert len(results) == 2
    for i, r in enumerate(results):
        assert r is not None and r.obs.keys() == ["obs", "state"]
        assert r.obs.obs.shape == (187,) and r.obs.state.shape == (623,)
        assert r.obs.obs[32 + i] == 1.0
        assert int(np.argmax(r.obs.obs[0:16])) == env.oracle_actions()[i]
    assert results[0].obs.state is results[1].obs.state  # type: ignore[union-attr]
    assert env.action_spaces == [spaces.Discrete(16), spaces.Discrete(16)]


def test_quickstart_rule_oracle_beats_random() -> None:
    env = QuickstartEnvironment(seed=1)
    oracle, random = play_quickstart(env, True, 20), play_quickstart(env, False, 20)
    assert 40.0 < oracle <= 64.0  # 32 steps of 1 + a coin-flip team bonus
    assert random < 6.0
    assert oracle > 8 * random


def test_quickstart_team_bonus_only_visible_in_state() -> None:
    env = QuickstartEnvironment(seed=2)
    results = env.reset()
    seen = set()
    for _ in range(30):
        coin = float(results[0].obs.state[374])  # type: ignore[union-attr]
        picks = env.oracle_actions()
        results = env.step([act(picks[0]), act(picks[1])])
        assert results[0] is not None and float(results[0].reward[0]) == 1.0 + coin
        seen.add(coin)
    assert seen == {0.0, 1.0}


def test_quickstart_curriculum_stage_changes_observations() -> None:
    env = QuickstartEnvironment(seed=0)
    (r, _) = env.reset()
    assert r is not None and not np.any(r.obs.obs[35:]) and not np.any(r.obs.obs[16:32])
    env.set_curriculum_stage("hard")
    (r, _) = env.step([act(0), act(0)])
    assert r is not None and not np.any(r.obs.obs[35:])  # takes effect at the next reset
    (r, _) = env.reset()
    assert r is not None and np.all(r.obs.obs[35:] != 0) and np.max(r.obs.obs[16:32]) > 0.5
    assert play_quickstart(env, True, 3) > 40.0  # the rule still holds in the hard stage
    with pytest.raises(ValueError, match=r"unknown curriculum stage 'medium'; expected one of \['easy', 'hard'\]"):
        env.set_curriculum_stage("medium")


def test_quickstart_rejects_bad_actions() -> None:
    env = QuickstartEnvironment()
    env.reset()
    with pytest.raises(ValueError, match=r"agent 1: action field 'x': expected an int in \[0, 16\), got 16"):
        env.step([act(0), act(16)])
    with pytest.raises(ValueError, match=r"agent 0: action: expected Action"):
        env.step([None, act(0)])


# ---------------------------------------------------------------- memory task
def play_memory(env: MemoryEnvironment, oracle: bool, episodes: int) -> float:
    rng = np.random.default_rng(0)
    total, steps = 0.0, 0
    for _ in range(episodes):
        env.reset()
        while True:
            a = env.oracle_action() if oracle else int(rng.integers(env.n_symbols))
            (r,) = env.step([act(a)])
            assert r is not None
            total += float(r.reward[0])
            steps += 1
            if r.done[0]:
                break
    assert steps == episodes * (env.delay + 2)
    return total / episodes


def test_memory_oracle_vs_random() -> None:
    env = MemoryEnvironment(delay=3, n_symbols=4, seed=0)
    assert play_memory(env, True, 50) == 1.0
    assert 0.1 < play_memory(env, False, 400) < 0.4


def test_memory_query_observation_carries_no_symbol() -> None:
    env = MemoryEnvironment(delay=2, n_symbols=3, seed=0)
    queries, cues = [], set()
    for _ in range(20):
        (r,) = env.reset()
        assert r is not None
        cues.add(int(np.argmax(r.obs.obs)))
        for _ in range(3):
            (r,) = env.step([act(0)])
        assert r is not None
        queries.append(r.obs.obs.copy())
    assert len(cues) == 3  # different symbols were shown ...
    assert all(np.array_equal(q, queries[0]) for q in queries)  # ... but the query looks the same
    assert queries[0].tolist() == [0.0, 0.0, 0.0, 1.0]


def test_null_env_multi_agent_and_arg_errors() -> None:
    env = NullEnvironment(agents=3, episode_length=2)
    assert len(env.reset()) == 3
    env.step([None, None, None])
    results = env.step([None, None, None])
    assert all(r is not None and r.done[0] for r in results)
    with pytest.raises(ValueError, match="must be >= 1"):
        NullEnvironment(obs_dim=0)


# ---------------------------------------------------------------- Atari (needs ale-py + opencv)
def test_atari_pong() -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    from hpcrl.envs.atari import AtariEnvironment

    env = AtariEnvironment("Pong", seed=0)
    osp = env.observation_spaces[0]["obs"]
    assert osp.shape == (4, 84, 84) and osp.dtype == np.uint8
    assert env.action_spaces[0] == spaces.Discrete(6)
    (r,) = env.reset()
    assert r is not None and r.obs.obs.shape == (4, 84, 84) and r.obs.obs.dtype == np.uint8
    report = test_environment(env, steps=60)
    assert report["steps"] == 60
    first = AtariEnvironment("Pong", seed=3).reset()[0]
    again = AtariEnvironment("Pong", seed=3).reset()[0]
    assert first is not None and again is not None and np.array_equal(first.obs.obs, again.obs.obs)
    with pytest.raises(ValueError, match=r"unknown gymnasium env id 'ALE/Pongg-v5'; did you mean 'ALE/Pong-v5'"):
        AtariEnvironment("Pongg")


def test_atari_episodic_life_continues_the_game() -> None:
    pytest.importorskip("ale_py")
    pytest.importorskip("cv2")
    from hpcrl.envs.atari import AtariEnvironment

    env = AtariEnvironment("Breakout", seed=0, frame_stack=1, noop_max=0)
    (r,) = env.reset()
    assert r is not None and r.info["lives"] == 5
    rng = np.random.default_rng(0)
    for _ in range(3000):
        (r,) = env.step([act(int(rng.integers(4)))])
        assert r is not None
        if r.done[0]:
            break
    assert r is not None and r.done[0] and not r.info.get("game_over", False)
    (r,) = env.reset()
    assert r is not None and r.info["lives"] == 4  # same game, one life fewer


# ---------------------------------------------------------------- PettingZoo
def test_pettingzoo_simple_spread_parallel_with_state() -> None:
    pytest.importorskip("pettingzoo")
    pytest.importorskip("mpe2")
    env = make("pettingzoo", env="mpe2:simple_spread_v3", max_cycles=10, seed=0)
    assert env.agent_count == 3
    osp = env.observation_spaces[0]
    assert list(osp.spaces) == ["obs", "state"] and osp["state"].shape == (54,)
    report = test_environment(env, steps=40)
    assert report["episodes"] == 4
    results = env.reset()
    assert all(r is not None and r.obs.state.shape == (54,) for r in results)


@pytest.mark.filterwarnings("ignore:The old environment creation API:DeprecationWarning")
def test_pettingzoo_turn_based_aec() -> None:
    pytest.importorskip("pettingzoo")
    pytest.importorskip("pygame")
    env = make("pettingzoo", env="pettingzoo.classic:tictactoe_v3", seed=0)
    assert env.agent_count == 2
    results = env.reset()
    assert results[0] is not None and results[1] is None  # player_1 moves first
    assert results[0].obs.keys() == ["available_action", "observation"]  # the action_mask, renamed
    # a short legal game: player_1 takes the left column and wins
    moves = [0, 3, 1, 4, 2]
    for k, cell in enumerate(moves):
        acting = k % 2
        actions: list[Any] = [None, None]
        actions[acting] = act(cell)
        results = env.step(actions)
        if k < len(moves) - 1:
            assert results[1 - acting] is not None and results[acting] is None
    assert all(r is not None and r.done[0] for r in results)
    assert [float(r.reward[0]) for r in results] == [1.0, -1.0]  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="the episode is over"):
        env.step([act(5), act(6)])


class ChangingAgents:
    """A ParallelEnv whose agents change mid-episode: 'b' vanishes silently, 'c' joins late."""

    metadata: ClassVar[dict[str, Any]] = {"name": "changing"}

    def __init__(self) -> None:
        self.possible_agents = ["a", "b", "c"]

    def observation_space(self, agent: str) -> Any:
        return spaces.Box(-1.0, 1.0, (2,), np.float32)

    def action_space(self, agent: str) -> Any:
        return spaces.Discrete(2)

    def _obs(self) -> dict[str, np.ndarray]:
        return {a: np.full(2, self.t / 10, np.float32) for a in self.agents}

    def reset(self, seed: int | None = None, options: Any = None) -> tuple[dict, dict]:
        self.t = 0
        self.agents = ["a", "b"]
        return self._obs(), {a: {} for a in self.agents}

    def step(self, actions: dict[str, Any]) -> tuple[dict, ...]:
        assert set(actions) == set(self.agents), (actions, self.agents)
        self.t += 1
        if self.t == 2:
            self.agents = ["a"]  # 'b' disappears without a termination flag
        if self.t == 3:
            self.agents = ["a", "c"]  # 'c' joins
        done = self.t >= 6
        obs = self._obs()
        return (
            obs,
            {a: 1.0 for a in obs},
            {a: done for a in obs},
            {a: False for a in obs},
            {a: {} for a in obs},
        )

    def close(self) -> None:
        pass


def test_pettingzoo_agents_changing_mid_episode() -> None:
    pz = pytest.importorskip("pettingzoo")

    class Env(ChangingAgents, pz.ParallelEnv):  # type: ignore[misc, name-defined]
        pass

    env = make("pettingzoo", env=Env)
    results = env.reset()
    assert [r is not None for r in results] == [True, True, False]
    results = env.step([act(0), act(1), None])
    assert [r is not None for r in results] == [True, True, False]
    results = env.step([act(0), act(1), None])  # 'b' vanished: its trajectory is closed as truncated
    assert results[1] is not None and results[1].truncated[0] and not results[1].done[0]
    assert results[2] is None
    results = env.step([act(0), None, None])  # 'c' appears
    assert results[1] is None and results[2] is not None
    report = test_environment(env, steps=30)
    assert report["episodes"] == 5


def test_pettingzoo_bad_specs() -> None:
    pytest.importorskip("pettingzoo")
    with pytest.raises(ValueError, match="expected 'module:factory'"):
        make("pettingzoo", env="mpe2.simple_spread_v3")
    with pytest.raises(ImportError, match=r"cannot load 'nope_v0' from 'pettingzoo\.classic'"):
        make("pettingzoo", env="pettingzoo.classic:nope_v0")
    with pytest.raises(ValueError, match="not a PettingZoo AECEnv/ParallelEnv"):
        make("pettingzoo", env="builtins:dict")


# ---------------------------------------------------------------- MuJoCo (needs mujoco + imageio)
def test_mujoco_through_gym_adapter(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio")
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory
    env = GymEnvironment("Hopper-v5", seed=0)
    assert env.observation_spaces[0]["obs"].dtype == np.float32  # float64 in gymnasium
    assert env.action_spaces[0].shape == (3,)
    report = test_environment(env, steps=50)
    assert report["episodes"] >= 1  # random Hopper falls within 50 steps


# ---------------------------------------------------------------- example YAMLs fit their envs
@pytest.mark.parametrize(
    ("path", "needs"),
    [
        ("examples/pong/pong.yaml", ("ale_py", "cv2")),
        ("examples/pettingzoo/simple_spread.yaml", ("pettingzoo", "mpe2")),
        ("examples/mujoco/halfcheetah.yaml", ("mujoco", "imageio")),
    ],
)
def test_example_configs_fit_their_envs(path: str, needs: tuple[str, ...], tmp_path: Any, monkeypatch: Any) -> None:
    for module in needs:
        pytest.importorskip(module)
    from pathlib import Path

    from hpcrl.policies.actor_critic import check_policy_against_spaces

    cfg = config.load(Path(__file__).resolve().parents[2] / path)
    monkeypatch.chdir(tmp_path)
    env = make(cfg.environment)
    try:
        for obs_space, act_space in zip(env.observation_spaces, env.action_spaces):  # type: ignore[arg-type]
            check_policy_against_spaces(cfg.policy.args, obs_space, act_space)
        test_environment(env, steps=20)
    finally:
        env.close()
