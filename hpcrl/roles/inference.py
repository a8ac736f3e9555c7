"""Inference rank: batches the pending requests of all its actors, runs the policy, replies.

Between batches it picks up newer parameters published by the trainer leader, without
blocking its loop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from hpcrl.acting import rings
from hpcrl.api.namedarray import NamedArray, concat
from hpcrl.api.policy import check_rollout_result
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.fanin import poll_any
from hpcrl.comm.tags import Tag
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext, WeightsFollower, stats_interval

__all__ = ["InferenceRank", "default_state_message", "join_requests"]

log = logging.getLogger(__name__)


def default_state_message(policy: Any) -> NamedArray:
    """The first message to every actor: the policy's default state in row layout (a batch of 1), if it has one."""
    row = rings.default_state_row(policy)
    if row is None:
        return NamedArray(has_state=np.zeros((1, 1), np.bool_), state=None)
    return NamedArray(has_state=np.ones((1, 1), np.bool_), state=row.apply(lambda x: np.asarray(x)[None]))


def join_requests(ctx: RankContext, got: list[Any]) -> tuple[Any, list[int]]:
    """One request from the messages of several actors (they must have the same layout), and their sizes.

    Raises:
        ValueError: the requests do not fit together (names the actor ranks).
    """
    parts = [m.data for _, m in got]
    sizes = [len(p) for p in parts]
    if len(parts) == 1:
        return parts[0], sizes
    try:
        return concat(parts), sizes
    except (ValueError, TypeError) as e:
        who = ", ".join(ctx.who(m.source) for _, m in got)
        raise ValueError(f"inference rank {ctx.rank}: the requests of {who} do not fit together: {e}") from e


class InferenceRank:
    """The inference role on one MPI rank.

    Args:
        ctx: the rank context.
        agent_count: agents per env (sizes the receive buffers).
    """

    def __init__(self, ctx: RankContext, agent_count: int) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        self.policy, _ = components.build_role_policy(cfg, "inference")
        self.actors = ctx.topo.actors_of_inference(ctx.rank)
        rows = cfg.actor.envs_per_actor * agent_count
        self.requests = [
            RecvChannel(ctx.comm, a, Tag.REQUEST, f"requests of actor {a}", max_rows=rows) for a in self.actors
        ]
        self.results = {a: SendChannel(ctx.comm, a, Tag.RESULT, f"results for actor {a}") for a in self.actors}
        self.weights = WeightsFollower(ctx, self.policy)
        self.batches = 0
        self.rows = 0
        self.busy_seconds = 0.0
        self._last_stats = 0.0
        self._stats_interval = stats_interval(ctx.topo.world_size)

    def _send_default_state(self) -> None:
        first = default_state_message(self.policy)
        for ch in self.results.values():
            ch.send(first, version=-1)

    def run(self) -> dict[str, Any]:
        """Serve requests until the leader says stop; returns this rank's final stats."""
        ctx = self.ctx
        trace = ctx.trace
        self.weights.wait_first()
        self._send_default_state()
        backoff = ctx.backoff
        t_start = time.monotonic()
        me = f"rank {ctx.rank} ({ctx.role} on {ctx.host})"
        who = f"{ctx.cfg.single_policy.type_!r} ({type(self.policy).__name__}) on {me}"
        while not ctx.stopping:
            ctx.service()
            self.weights.update()
            t0 = time.perf_counter()
            got = poll_any(self.requests)
            if not got:
                backoff.idle()
                if trace is not None:
                    trace.add_time("wait_requests", time.perf_counter() - t0)
                continue
            backoff.reset()
            t1 = time.perf_counter()
            request, sizes = join_requests(ctx, got)
            result = self.policy.rollout(request)  # type: ignore[arg-type]
            check_rollout_result(result, sum(sizes), who)  # before replying: a short reply would fail on an actor
            t2 = time.perf_counter()
            start = 0
            for (_, msg), n in zip(got, sizes):
                self.results[msg.source].send(result[start : start + n], version=self.policy.version)
                start += n
            t3 = time.perf_counter()
            self.batches += 1
            self.rows += start
            self.busy_seconds += t3 - t1
            if trace is not None:
                trace.add_time("rollout", t2 - t1)
                trace.add_time("send_results", t3 - t2)
            now = time.monotonic()
            if now - self._last_stats >= self._stats_interval:
                self._last_stats = now
                ctx.send_stats({"batches": self.batches, "rows": self.rows})
                if trace is not None:
                    trace.maybe_flush()
        elapsed = time.monotonic() - t_start
        final = {
            "type": "final",
            "role": "inference",
            "batches": self.batches,
            "rows": self.rows,
            "mean_batch": self.rows / self.batches if self.batches else 0.0,
            "busy_fraction": self.busy_seconds / elapsed if elapsed > 0 else 0.0,
            "policy_version": int(self.policy.version),
        }
        ctx.send_stats(final)
        ctx.drain(self.requests, list(self.results.values()), self.weights.discard)
        self.weights.close()
        return final
