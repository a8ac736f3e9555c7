"""EnvRing / TrajectoryBuffer / Batcher: row semantics, overlap, multi-agent slots, failures."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api.environment import Action, Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutRequest, RolloutResult
from hpcrl.roles.batcher import Batcher
from hpcrl.roles.env_ring import EnvError, EnvRing


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
    from hpcrl.roles.trajectory import TrajectoryBuffer

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
