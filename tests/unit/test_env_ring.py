"""EnvRing / TrajectoryBuffer / Batcher: row semantics, overlap, multi-agent slots, failures."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrl.acting.env_ring import EnvError, EnvRing, PolicyResultError
from hpcrl.api.environment import Action, Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutRequest, RolloutResult
from hpcrl.api.trainer import SampleBatch
from hpcrl.learning.batcher import Batcher


class Counter(Environment):
    """obs = step counter; episode of `length` steps; reward = 1 per step; agent 1 acts every other step."""

    def __init__(self, length: int = 5, agents: int = 1, fail_at: int | None = None, truncate: bool = False):
        self.length, self.agents, self.fail_at, self.truncate = length, agents, fail_at, truncate
        self.t = 0
        self.calls = 0

    @property
    def agent_count(self) -> int:
        return self.agents

    def _res(self, reward: float, end: bool) -> list[StepResult | None]:
        out: list[StepResult | None] = []
        for a in range(self.agents):
            if a == 1 and self.t % 2 == 1 and not end:
                out.append(None)
                continue
            out.append(
                StepResult(
                    obs=NamedArray(obs=np.array([self.t], np.float32)),
                    reward=np.array([reward], np.float32),
                    done=np.array([end and not self.truncate]),
                    truncated=np.array([end and self.truncate]),
                )
            )
        return out

    def reset(self):
        self.t = 0
        return self._res(0.0, False)

    def step(self, actions):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError("boom")
        assert actions[0] is not None
        self.t += 1
        return self._res(1.0, self.t >= self.length)


def act(req: RolloutRequest) -> RolloutResult:
    n = len(req.obs)
    return RolloutResult(
        action=Action(x=np.zeros(n, np.int64)),
        analyzed_result=NamedArray(value=req.obs.obs.copy()),
        policy_state=None if req.policy_state is None else NamedArray(hx=req.policy_state.hx + 1),
    )


def run(ring: EnvRing, steps: int):
    frags = []
    for _ in range(steps):
        req = ring.request(0)
        ring.consume(0, act(req), version=3)
        frags += ring.pop_fragments()
    return frags


def test_single_agent_rows_and_overlap():
    ring = EnvRing(lambda i: Counter(length=3), 2, 1, 4, None, "counter", check="off")
    frags = run(ring, 12)
    assert len(frags) >= 2
    f0, f1 = frags[0], frags[1]
    assert f0.obs.obs.shape == (5, 2, 1)
    # episode: obs 0 (reset), 1, 2, 3 (done), then reset 0 ...
    np.testing.assert_array_equal(f0.obs.obs[:, 0, 0], [0, 1, 2, 3, 0])
    np.testing.assert_array_equal(f0.done[:, 0, 0], [False, False, False, True, False])
    np.testing.assert_array_equal(f0.on_reset[:, 0, 0], [True, False, False, False, True])
    np.testing.assert_array_equal(f0.reward[:, 0, 0], [0, 1, 1, 1, 0])
    assert (f0.policy_version == 3).all()
    # consecutive fragments overlap by one row
    np.testing.assert_array_equal(f1.obs.obs[0], f0.obs.obs[-1])
    eps = ring.pop_episodes()
    assert eps and all(e.length == 3 and e.ret == 3.0 for e in eps)
    assert ring.frames == 2 * 9  # 12 requests, 3 of them reset instead of step, per env


class Frames(Counter):
    """Counter with uint8 image-like observations and int16 extras (unsigned/signed integer leaves)."""

    def _res(self, reward: float, end: bool) -> list[StepResult | None]:
        out = super()._res(reward, end)
        for r in out:
            if r is not None:
                t = int(r.obs.obs[0])
                r.obs = NamedArray(obs=np.full((2, 3), 250 + t, np.uint8), extra=np.array([-t], np.int16))
        return out


def test_unsigned_integer_observations_fill_fragments():
    # regression: unwritten-row sentinels were -1, which does not fit uint8 (Atari frames crashed)
    ring = EnvRing(lambda i: Frames(length=3), 2, 1, 4, None, "frames", check="off")
    frags = []
    for _ in range(12):
        req = ring.request(0)
        n = len(req.obs)
        res = RolloutResult(action=Action(x=np.zeros(n, np.int64)), analyzed_result=NamedArray(value=np.zeros(n)))
        ring.consume(0, res, version=1)
        frags += ring.pop_fragments()
    assert frags
    f = frags[0]
    assert f.obs.obs.dtype == np.uint8 and f.obs.obs.shape == (5, 2, 2, 3)
    assert set(np.unique(f.obs.obs)) <= {250, 251, 252, 253}
    assert f.obs.extra.dtype == np.int16 and set(np.unique(f.obs.extra)) <= {0, -1, -2, -3}


def test_policy_state_reset_on_episode_start():
    default = NamedArray(hx=np.zeros((1, 2), np.float32))
    ring = EnvRing(lambda i: Counter(length=2), 1, 1, 3, default, "counter", check="off")
    frags = run(ring, 8)
    hx = frags[0].policy_state.hx[:, 0, 0, 0]
    # state increments each step, back to 0 at the first obs of an episode
    np.testing.assert_array_equal(hx, [0, 1, 2, 0])
    np.testing.assert_array_equal(frags[0].on_reset[:, 0, 0], [True, False, False, True])


def test_multi_agent_slots_progress_independently():
    ring = EnvRing(lambda i: Counter(length=6, agents=2), 1, 1, 3, None, "counter", check="off")
    frags = run(ring, 30)
    assert frags
    for f in frags:
        assert f.obs.obs.shape == (4, 2, 1)
        assert not np.isnan(f.obs.obs).any()
    # columns are in completion order: agent 0's columns count 0,1,2,...; agent 1 acts only on even steps
    cols = [f.obs.obs[:, c, 0] for f in frags for c in range(2)]
    even_only = [c for c in cols if (c % 2 == 0).all()]
    with_odd = [c for c in cols if (c % 2 == 1).any()]
    assert even_only and with_odd
    for c in with_odd:  # agent 0: consecutive counts, restarting at 0
        assert all(b == a + 1 or b == 0 for a, b in zip(c[:-1], c[1:]))


def test_truncated_flag_kept():
    ring = EnvRing(lambda i: Counter(length=2, truncate=True), 1, 1, 3, None, "counter", check="off")
    f = run(ring, 4)[0]
    np.testing.assert_array_equal(f.truncated[:, 0, 0], [False, False, True, False])
    assert not f.done.any()


def test_env_failure_fail_and_recreate():
    ring = EnvRing(lambda i: Counter(length=50, fail_at=3), 1, 1, 4, None, "counter", where="actor rank 7", check="off")
    with pytest.raises(EnvError, match=r"actor rank 7: env counter #0 raised in step 2: RuntimeError: boom"):
        run(ring, 5)
    built = []

    def make(i):
        built.append(i)
        return Counter(length=50, fail_at=3 if len(built) == 1 else None)

    ring = EnvRing(make, 1, 1, 4, None, "counter", check="off", env_failure="recreate")
    frags = run(ring, 10)
    assert ring.env_failures == 1 and len(built) == 2
    f = frags[0]
    # the row before the failure is marked truncated, the next row starts a new episode
    k = int(np.argmax(f.truncated[:, 0, 0]))
    assert f.truncated[k, 0, 0] and f.on_reset[k + 1, 0, 0]


def test_wrong_result_count_named():
    class Bad(Counter):
        def step(self, actions):
            return []

    ring = EnvRing(lambda i: Bad(), 1, 1, 4, None, "bad-env", where="actor rank 2", check="off")
    with pytest.raises(
        EnvError, match=r"actor rank 2: env bad-env #0 step 1 returned 0 results, expected .*agent_count=1"
    ):
        run(ring, 2)


def test_batcher_staleness_and_split():
    ring = EnvRing(lambda i: Counter(length=3), 3, 1, 4, None, "counter", check="off")
    frags = run(ring, 5)
    b = Batcher(batch_size=2, max_staleness=1)
    assert b.add(frags[0], version=4)  # rows have version 3: lag 1
    assert not b.add(frags[0], version=5)  # lag 2: dropped
    assert b.dropped == 1
    batch = b.pop(version=4)
    assert batch is not None and batch.obs.obs.shape == (5, 2, 1)
    assert b.queued_columns == 1
    assert b.pop(version=10) is None and b.dropped == 2 and b.queued_columns == 0


def test_trajectory_buffer_full_and_partial_rows_interleaved():
    """Every slot's rows come out in order, each fragment column T + 1 consecutive rows of one slot
    (the first repeating the previous column's last), whether the slots write together (the fast path
    that tracks one shared row) or apart (per-slot cursors), and across switches between the two."""
    from hpcrl.acting.trajectory import TrajectoryBuffer

    slots, t = 3, 4
    buf = TrajectoryBuffer(slots, t)
    rng = np.random.default_rng(0)
    count = np.zeros(slots, np.int64)
    seen: dict[int, list[int]] = {s: [] for s in range(slots)}
    frags = []
    for step in range(400):
        if step % 50 < 25:  # phases of all-slot writes and of random subsets
            chosen = np.arange(slots)
        else:
            chosen = np.flatnonzero(rng.random(slots) < 0.6)
            if chosen.size == 0:
                continue
        row = NamedArray(value=count[chosen].astype(np.float32)[:, None], slot=chosen.astype(np.int64)[:, None])
        if not buf.allocated:
            buf.allocate(row)
        buf.add_leaves(chosen, [row.value, row.slot])
        count[chosen] += 1
        frags += buf.pop_ready()
    assert len(frags) > 20
    for f in frags:
        assert f.value.shape == (t + 1, slots, 1)
        for c in range(slots):
            col, who = f.value[:, c, 0], f.slot[:, c, 0]
            assert (who == who[0]).all(), "a column mixes slots"
            assert np.array_equal(col, col[0] + np.arange(t + 1)), col
            s = int(who[0])
            if seen[s]:
                assert seen[s][-1] == col[0], "a column must start at the previous column's last row"
            seen[s].append(int(col[-1]))


# ---------------------------------------------------------------------- nothing is broadcast
class Late(Counter):
    """Counter whose agent-0 result at call ``at`` is bent by ``bend`` (an in-place edit of the StepResult)."""

    def __init__(self, at: int, bend, **kw):
        super().__init__(length=1000, **kw)
        self.at, self.bend = at, bend

    def step(self, actions):
        out = super().step(actions)
        if self.calls == self.at:
            self.bend(out[0])
        return out


def _obs(x):
    def bend(r):
        r.obs = NamedArray(obs=x)

    return bend


@pytest.mark.parametrize("check", ["first", "off"])
@pytest.mark.parametrize(
    "bend, expected",
    [
        (_obs(np.float32(7.0)), "obs field 'obs': expected a numpy float32 array of shape (1,), got numpy float32"),
        (_obs(np.full(3, 7.0, np.float32)), "obs field 'obs': expected shape (1,), got (3,)"),
        (_obs(np.zeros((1, 1), np.float32)), "obs field 'obs': expected shape (1,), got (1, 1)"),
        (_obs(np.zeros(1, np.float64)), "obs field 'obs': expected dtype float32, got float64"),
        (lambda r: setattr(r, "reward", np.ones(3, np.float32)), "reward: expected shape (1,) (as before), got (3,)"),
        (lambda r: setattr(r, "done", np.array([2])), "done: expected 0 or 1 (or a bool), got 2 in a int64 array (1,)"),
        (
            lambda r: setattr(r, "truncated", 0.0),
            "truncated: expected bool array of shape (1,) (or integer 0/1), got float 0.0",
        ),
    ],
)
def test_a_misfit_after_the_checked_steps_is_refused_never_broadcast(bend, expected, check):
    """Step 150 is past ``check_env: first``'s validated steps: the layout is still checked on every step."""
    ring = EnvRing(lambda i: Late(150, bend), 2, 1, 4, None, "late", where="actor rank 3", check=check)
    with pytest.raises(EnvError) as info:
        run(ring, 200)
    assert f"actor rank 3: env #0: env 'late' step 150: agent 0: {expected}" in str(info.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered in dot:RuntimeWarning")  # Inf * 0 in the check
@pytest.mark.parametrize("check", ["first", "always"])
@pytest.mark.parametrize("field", ["obs", "reward"])
def test_nan_after_the_checked_steps_is_an_error_with_first_and_always(field, check):
    def bend(r):
        if field == "obs":
            r.obs = NamedArray(obs=np.array([np.nan], np.float32))
        else:
            r.reward = np.array([np.inf], np.float32)

    ring = EnvRing(lambda i: Late(150, bend), 2, 1, 4, None, "late", where="actor rank 3", check=check)
    with pytest.raises(EnvError) as info:
        run(ring, 200)
    what = (
        "obs field 'obs': expected finite values, got 1 NaN/Inf element(s) of 1"
        if field == "obs"
        else ("reward: expected a finite value, got array([inf], dtype=float32)")
    )
    assert f"actor rank 3: env #0: env 'late' step 150: agent 0: {what}" in str(info.value)


def test_check_env_off_leaves_nan_to_the_trainer():
    ring = EnvRing(lambda i: Late(5, _obs(np.array([np.nan], np.float32))), 1, 1, 4, None, "late", check="off")
    run(ring, 10)  # no error: the layout fits, and finiteness is not checked with "off"


def test_the_same_fields_in_another_order_are_accepted():
    def bend(r):
        r.obs = NamedArray(b=np.zeros(1, np.float32), obs=np.ones(1, np.float32))

    class Two(Counter):
        def _res(self, reward, end):
            out = super()._res(reward, end)
            for r in out:
                if r is not None:
                    r.obs = NamedArray(obs=np.ones(1, np.float32), b=np.zeros(1, np.float32))
            return out

    class LateTwo(Two):
        def step(self, actions):
            out = super().step(actions)
            if self.calls == 3:
                bend(out[0])
            return out

    ring = EnvRing(lambda i: LateTwo(length=100), 1, 1, 4, None, "two", check="off")
    frags = run(ring, 8)
    assert (frags[0].obs.obs == 1).all() and (frags[0].obs.b == 0).all()


class PolicyOf:
    """A policy stand-in whose result is bent from call ``at`` on."""

    def __init__(self, at: int, bend):
        self.at, self.bend, self.calls = at, bend, 0

    def __call__(self, req):
        self.calls += 1
        res = act(req)
        if self.calls >= self.at:
            self.bend(res, len(req.obs))
        return res


@pytest.mark.parametrize(
    "bend, expected",
    [
        (
            lambda res, n: setattr(res.analyzed_result, "value", np.zeros((1, 1), np.float32)),
            r"policy test-policy: rollout returned analyzed_result.value with 1 rows \(shape \(1, 1\)\) "
            r"for a request of 2 rows|"
            r"field 'analyzed_result.value': expected shape \(2, 1\), got \(1, 1\)",
        ),
        (
            lambda res, n: setattr(res.analyzed_result, "value", np.zeros(n, np.float32)),
            r"field 'analyzed_result.value': expected shape \(2, 1\), got \(2,\)",
        ),
        (
            lambda res, n: setattr(res.action, "x", np.zeros(n, np.float64)),
            r"field 'action.x': expected dtype int64, got float64",
        ),
    ],
)
def test_a_policy_result_that_stops_fitting_is_refused(bend, expected):
    ring = EnvRing(
        lambda i: Counter(length=50), 2, 1, 4, None, "counter", where="actor rank 1", policy_name="test-policy"
    )
    policy = PolicyOf(5, bend)
    with pytest.raises(PolicyResultError, match=rf"actor rank 1: policy test-policy.*({expected})"):
        for _ in range(10):
            req = ring.request(0)
            ring.consume(0, policy(req), version=0)


class Discrete2(Counter):
    @property
    def action_spaces(self):
        from gymnasium import spaces

        return [spaces.Discrete(2)] * self.agents


def test_float_actions_for_a_discrete_space_are_refused_naming_policy_env_and_dtype():
    ring = EnvRing(lambda i: Discrete2(), 2, 1, 4, None, "discrete", where="actor rank 1", policy_name="my-policy")
    req = ring.request(0)
    res = act(req)
    res.action.x = np.full(len(req.obs), 0.7, np.float32)
    with pytest.raises(
        PolicyResultError,
        match=r"actor rank 1: policy my-policy returned float32 actions for env discrete, whose action space is "
        r"Discrete\(2\): expected an integer dtype \(int64\); float actions would be truncated",
    ):
        ring.consume(0, res, version=0)


def test_the_gym_adapter_refuses_float_actions_for_discrete_spaces():
    from hpcrl.envs.gym_env import GymEnvironment

    env = GymEnvironment("CartPole-v1")
    env.reset()
    env.step([Action(x=np.int64(1))])
    with pytest.raises(
        ValueError,
        match=r"env 'gym:CartPole-v1' step: agent 0: action: expected Action\(x=...\) for "
        r"Discrete\(2\).*cannot be interpreted as an integer",
    ):
        env.step([Action(x=np.float32(1.0))])
    env.close()


def test_a_recurrent_state_of_the_wrong_shape_is_refused():
    state = NamedArray(hx=np.zeros((1, 3), np.float32))  # row layout: (layers, hidden)
    ring = EnvRing(lambda i: Counter(length=50), 2, 1, 4, state, "counter", where="actor rank 1", policy_name="gru")

    def bad(req):
        res = act(req)
        res.policy_state = NamedArray(hx=np.zeros((1, 1, 3), np.float32))  # one row for two agents
        return res

    req = ring.request(0)
    with pytest.raises(
        PolicyResultError,
        match=r"policy gru: rollout returned policy_state.hx with 1 rows \(shape \(1, 1, 3\)\) for a request of 2",
    ):
        ring.consume(0, bad(req), version=0)


def test_a_recurrent_policy_that_returns_no_state_is_refused():
    state = NamedArray(hx=np.zeros((1, 3), np.float32))
    ring = EnvRing(lambda i: Counter(length=50), 2, 1, 4, state, "counter", where="actor rank 1", policy_name="gru")
    req = ring.request(0)
    res = act(req)
    res.policy_state = None
    with pytest.raises(
        PolicyResultError,
        match=r"policy gru has a default_policy_state but returned policy_state "
        r"NoneType",
    ):
        ring.consume(0, res, version=0)


def test_trajectory_refuses_a_row_that_numpy_would_broadcast():
    from hpcrl.acting.trajectory import TrajectoryBuffer

    traj = TrajectoryBuffer(3, 4)
    row = SampleBatch(obs=NamedArray(obs=np.zeros((3, 4), np.float32)), reward=np.zeros((3, 1), np.float32))
    traj.add(np.arange(3), row)
    bad = SampleBatch(obs=NamedArray(obs=np.full((1, 4), 7.0, np.float32)), reward=np.zeros((3, 1), np.float32))
    with pytest.raises(ValueError, match=r"field 'obs.obs': expected shape \(3, 4\), got \(1, 4\)"):
        traj.add(np.arange(3), bad)
    with pytest.raises(ValueError, match=r"field 'obs.obs': expected shape \(2, 4\), got \(4,\)"):
        traj.add(np.arange(2), SampleBatch(obs=NamedArray(obs=np.zeros(4, np.float32)), reward=np.zeros((2, 1))))


def test_batcher_refuses_a_fragment_of_another_layout_naming_the_field():
    ring = EnvRing(lambda i: Counter(length=3), 2, 1, 4, None, "counter", check="off")
    b = Batcher(4, 10)
    frag = run(ring, 5)[0]
    b.add(frag, 3)
    other = frag.apply(np.array)
    other.obs = NamedArray(obs=np.zeros((5, 2, 3), np.float32))
    with pytest.raises(
        ValueError,
        match=r"fragment field 'obs.obs': expected \(5, columns, \*\(1,\)\) float32 like "
        r"the first fragment, got \(5, columns, \*\(3,\)\) float32",
    ):
        b.add(other, 0)
