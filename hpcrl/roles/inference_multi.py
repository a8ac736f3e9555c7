"""Inference rank of a multi-policy MPI run: every policy served, each batched on its own.

The rank holds every policy of the run (:class:`~hpcrl.roles.policy_set.PolicySet`). Each actor it serves
sends the requests of policy ``i`` on tag :func:`~hpcrl.comm.tags.policy_request_tag` ``(i)`` and gets the
results on :func:`~hpcrl.comm.tags.policy_result_tag` ``(i)``; a batch joins the pending requests of one
policy from all actors, so policies never share a batch and a policy whose agents do not act this step
costs nothing. The first message on every result channel is the policy's default state (as on the
single-policy inference rank).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hpcrl.api.policy import check_rollout_result
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.fanin import poll_any
from hpcrl.comm.tags import policy_request_tag, policy_result_tag
from hpcrl.roles.inference import default_state_message, join_requests
from hpcrl.roles.policy_set import PolicySet
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext, stats_interval

__all__ = ["MultiInferenceRank"]

log = logging.getLogger(__name__)


class MultiInferenceRank:
    """The inference role of a multi-policy run on one MPI rank.

    Args:
        ctx: the rank context (``ctx.cfg`` is the resolved multi-policy config).
        names: the policy of every agent index (sizes each policy's receive buffers).
    """

    def __init__(self, ctx: RankContext, names: list[str]) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        components.set_torch_threads(cfg.run.torch_threads)
        wanted = cfg.training.device
        device = "cpu" if wanted == "auto" else components.resolve_device(wanted)
        self.set = PolicySet(ctx, device, f"rank {ctx.rank} ({ctx.role} on {ctx.host})")
        self.actors = ctx.topo.actors_of_inference(ctx.rank)
        self.requests: list[list[RecvChannel]] = []
        self.results: list[dict[int, SendChannel]] = []
        for i, name in enumerate(self.set.names):
            rows = cfg.actor.envs_per_actor * max(1, names.count(name))
            self.requests.append(
                [
                    RecvChannel(
                        ctx.comm, a, policy_request_tag(i), f"requests of policy {name} of actor {a}", max_rows=rows
                    )
                    for a in self.actors
                ]
            )
            self.results.append(
                {
                    a: SendChannel(ctx.comm, a, policy_result_tag(i), f"results of policy {name} for actor {a}")
                    for a in self.actors
                }
            )
        self.batches = [0] * len(self.set.names)
        self.rows = [0] * len(self.set.names)
        self.busy_seconds = 0.0
        self._last_stats = 0.0
        self._stats_interval = stats_interval(ctx.topo.world_size)

    def _serve(self, i: int) -> bool:
        """Answer the pending requests of policy ``i`` in one batch; False if none was pending."""
        got = poll_any(self.requests[i])
        if not got:
            return False
        t1 = time.perf_counter()
        policy = self.set.policies[i]
        request, sizes = join_requests(self.ctx, got)
        result = policy.rollout(request)
        check_rollout_result(result, sum(sizes), self.set.labels[i])  # before replying
        t2 = time.perf_counter()
        start = 0
        for (_, msg), n in zip(got, sizes):
            self.results[i][msg.source].send(result[start : start + n], version=policy.version)
            start += n
        t3 = time.perf_counter()
        self.batches[i] += 1
        self.rows[i] += start
        self.busy_seconds += t3 - t1
        trace = self.ctx.trace
        if trace is not None:
            trace.add_time("rollout", t2 - t1)
            trace.add_time("send_results", t3 - t2)
        return True

    def run(self) -> dict[str, Any]:
        """Serve requests until the leader says stop; returns this rank's final stats."""
        ctx = self.ctx
        trace = ctx.trace
        self.set.wait_first()
        for i, policy in enumerate(self.set.policies):
            first = default_state_message(policy)
            for ch in self.results[i].values():
                ch.send(first, version=-1)
        backoff = ctx.backoff
        t_start = time.monotonic()
        while not ctx.stopping:
            ctx.service()
            self.set.update()
            t0 = time.perf_counter()
            served = False
            for i in range(len(self.set.policies)):
                served = self._serve(i) or served
            if not served:
                backoff.idle()
                if trace is not None:
                    trace.add_time("wait_requests", time.perf_counter() - t0)
                continue
            backoff.reset()
            now = time.monotonic()
            if now - self._last_stats >= self._stats_interval:
                self._last_stats = now
                ctx.send_stats({"batches": sum(self.batches), "rows": sum(self.rows)})
                if trace is not None:
                    trace.maybe_flush()
        elapsed = time.monotonic() - t_start
        batches, rows = sum(self.batches), sum(self.rows)
        final = {
            "type": "final",
            "role": "inference",
            "batches": batches,
            "rows": rows,
            "mean_batch": rows / batches if batches else 0.0,
            "mean_batch_by_policy": {
                n: round(r / b, 2) if b else 0.0 for n, b, r in zip(self.set.names, self.batches, self.rows)
            },
            "busy_fraction": self.busy_seconds / elapsed if elapsed > 0 else 0.0,
            "policy_versions": self.set.versions(),
        }
        ctx.send_stats(final)
        ctx.drain(
            [ch for chans in self.requests for ch in chans],
            [ch for chans in self.results for ch in chans.values()],
            self.set.discard,
        )
        self.set.close()
        return final
