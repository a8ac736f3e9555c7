"""Actor rank of a multi-policy MPI run: every policy acts inline, each policy's fragments go to its trainers.

The env ring (:class:`~hpcrl.acting.policy_ring.PolicyRing`) keeps one part per policy, as in one process.
Each step every policy answers the request of its own agents; the completed fragments of a trained policy
go to this actor's trainer rank of that policy's group (:meth:`~hpcrl.comm.topology.Topology.trainer_of`),
those of a frozen policy are dropped. Each policy's weights come from its publisher (the lead of its
trainer group; rank 0 for the frozen ones) on the policy's own tag.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from hpcrl.acting import rings
from hpcrl.acting.policy_ring import PartSpec, PolicyRing
from hpcrl.api import config
from hpcrl.api.policy import check_rollout_result
from hpcrl.comm.channel import SendChannel
from hpcrl.comm.params import ParamSubscriber
from hpcrl.comm.tags import Tag, policy_params_tag
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext, stats_interval

__all__ = ["MultiActorRank"]

log = logging.getLogger(__name__)


class MultiActorRank:
    """The actor role of a multi-policy run on one MPI rank (inline inference).

    Args:
        ctx: the rank context (``ctx.cfg`` is the resolved multi-policy config).
        names: the policy of every agent index.
    """

    def __init__(self, ctx: RankContext, names: list[str]) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        topo = ctx.topo
        self.index = topo.actors.index(ctx.rank)
        self.order = list(cfg.policies)
        components.set_torch_threads(cfg.run.torch_threads)
        self.policies: list[Any] = []
        self.subscribers: list[ParamSubscriber] = []
        self.samples: dict[int, SendChannel] = {}
        for i, (name, entry) in enumerate(cfg.policies.items()):
            spec = config.Policy(entry.type_, dict(entry.args))
            try:
                self.policies.append(components.build_policy(spec, "cpu", cfg.experiment.seed + i))
            except config.ConfigError as e:
                raise config.ConfigError(f"policies.{name}: {e}") from None
            trained = name in cfg.trainers
            source = topo.group_ranks(name)[0] if trained else topo.leader
            self.subscribers.append(ParamSubscriber(ctx.comm, source, tag=policy_params_tag(i)))
            if trained:
                self.samples[i] = SendChannel(
                    ctx.comm,
                    topo.trainer_of(ctx.rank, name),
                    Tag.SAMPLE,
                    f"samples of policy {name} of actor {ctx.rank}",
                    batch_ndim=2,
                    synchronous=cfg.training.queue_batches > 0,  # back-pressure from a trainer that is behind
                )
        self.who = [f"{n!r} ({type(p).__name__}) on rank {ctx.rank}" for n, p in zip(self.order, self.policies)]
        parts = [PartSpec(n, rings.default_state_row(p)) for n, p in zip(self.order, self.policies)]
        index = {n: i for i, n in enumerate(self.order)}

        def part_of_agent(a: int) -> int:
            return index[names[a] if a < len(names) else config.policy_of_agents(cfg, a + 1)[a]]

        ring = rings.make_ring(
            cfg, None, f"actor rank {ctx.rank}", actor_index=self.index, parts=parts, part_of_agent=part_of_agent
        )
        assert isinstance(ring, PolicyRing)
        self.ring = ring
        self._last_stats = 0.0
        self._stats_interval = stats_interval(topo.world_size)
        self.sent_fragments = 0
        self.send_wait_seconds = 0.0

    # ------------------------------------------------------------------ weights
    def _apply(self, i: int, got: tuple[int, dict[str, Any]] | None) -> None:
        if got is not None:
            self.policies[i].load_state_dict(got[1])
            self.policies[i].set_version(got[0])

    def _wait_first(self) -> None:
        run = self.ctx.cfg.run
        timeout = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
        for i, sub in enumerate(self.subscribers):
            self._apply(i, sub.wait(timeout=timeout, on_idle=self.ctx.service))

    def _update(self) -> None:
        for i, sub in enumerate(self.subscribers):
            self._apply(i, sub.poll())

    def _discard(self) -> None:
        for sub in self.subscribers:
            sub.poll()

    # ------------------------------------------------------------------ acting
    def _act(self) -> None:
        """One act step: every policy answers its agents' request, then the envs step."""
        t0 = time.perf_counter()
        results: list[Any] = []
        for p, request in enumerate(self.ring.request_parts(0)):
            if request is None:
                results.append(None)
                continue
            policy = self.policies[p]
            results.append((check_rollout_result(policy.rollout(request), len(request), self.who[p]), policy.version))
        t1 = time.perf_counter()
        self.ring.consume_parts(0, results)
        trace = self.ctx.trace
        if trace is not None:
            trace.add_time("inference", t1 - t0)
            trace.add_time("env_step", time.perf_counter() - t1)

    def _ship(self) -> None:
        """Send every completed fragment of a trained policy to its trainer rank; drop a frozen one's."""
        for p in range(len(self.order)):
            channel = self.samples.get(p)
            for frag in self.ring.pop_part_fragments(p):
                if channel is None:
                    continue
                t0 = time.perf_counter()
                version = int(frag.policy_version.max()) if frag.policy_version is not None else 0
                if channel.synchronous:  # back-pressure: at most one fragment not yet taken in by the trainer
                    channel.flush(on_idle=self.ctx.service)
                channel.send(frag, version=version)
                self.sent_fragments += 1
                dt = time.perf_counter() - t0
                self.send_wait_seconds += dt
                if self.ctx.trace is not None:
                    self.ctx.trace.add_time("send_samples", dt)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stats < self._stats_interval:
            return
        self._last_stats = now
        eps = self.ring.pop_episodes()
        self.ctx.send_stats(
            {
                "frames": self.ring.frames,
                "episodes": [[e.ret, e.length, e.version, e.policy] for e in eps],
                "env_failures": self.ring.env_failures,
            }
        )
        trace = self.ctx.trace
        if trace is not None:
            wall = time.time()
            for e in eps:
                trace.episode(e.ret, e.length, self.ring.frames, wall, e.version)
            trace.maybe_flush()

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Act until the leader says stop; returns this rank's final stats."""
        ctx = self.ctx
        t_start = time.monotonic()
        self._wait_first()
        budget = self.ctx.wait_frame_budget()
        while not ctx.stopping:
            if self.ring.frames >= budget:  # this rank's share is stepped: report it, then idle until the stop
                self._ship()
                self._report(force=True)
                while not ctx.stopping:
                    ctx.service()
                    self._update()
                    ctx.backoff.idle()
                break
            ctx.service()
            self._update()
            self._act()
            self._ship()
            self._report()
        self._report(force=True)
        elapsed = time.monotonic() - t_start
        final = {
            "type": "final",
            "role": "actor",
            "frames": self.ring.frames,
            "fps": self.ring.frames / elapsed if elapsed > 0 else 0.0,
            "fragments": self.sent_fragments,
            "send_wait_seconds": round(self.send_wait_seconds, 3),
            "env_failures": self.ring.env_failures,
            "policy_versions": {n: int(p.version) for n, p in zip(self.order, self.policies)},
            "torch_loaded": "torch" in sys.modules,
        }
        ctx.send_stats(final)
        ctx.drain([], list(self.samples.values()), self._discard)
        for sub in self.subscribers:
            sub.close()
        self.ring.close()
        return final
