"""Actor rank: steps its envs, gets actions (inline policy or an inference rank), ships fragments.

With remote inference this module never imports torch: the env ring, the channels and
the control plane are numpy + mpi4py only.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import Any

from hpcrl.acting import rings
from hpcrl.acting.evaluation import evaluate_inline, make_eval_ring, run_evaluation, summarize
from hpcrl.acting.inline import InlineLoop
from hpcrl.api.trainer import SampleBatch
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.tags import Tag
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext, WeightsFollower, stats_interval

__all__ = ["ActorRank"]

log = logging.getLogger(__name__)


class ActorRank:
    """The actor role on one MPI rank.

    Args:
        ctx: the rank context.
        agent_count: agents per env (from a probe of the env).
    """

    def __init__(self, ctx: RankContext, agent_count: int) -> None:
        self.ctx = ctx
        cfg = ctx.cfg
        topo = ctx.topo
        self.index = topo.actors.index(ctx.rank)
        self.inference_rank = topo.inference_of(ctx.rank)
        self.trainer_rank = topo.trainer_of(ctx.rank)
        n = cfg.actor.envs_per_actor
        remote = self.inference_rank is not None
        groups = 2 if remote and cfg.actor.ring_halves and n >= 2 else 1
        self.policy: Any = None
        self.weights: WeightsFollower | None = None
        self.requests: SendChannel | None = None
        self.results: RecvChannel | None = None
        if remote:
            assert self.inference_rank is not None
            self.requests = SendChannel(ctx.comm, self.inference_rank, Tag.REQUEST, f"requests of actor {ctx.rank}")
            self.results = RecvChannel(
                ctx.comm, self.inference_rank, Tag.RESULT, f"results for actor {ctx.rank}", max_rows=n * agent_count
            )
            # the inference rank's first message is the policy's default state (row layout, batch of 1)
            run = cfg.run
            limit = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
            first = self.results.recv(timeout=limit, copy=True, on_idle=ctx.service, backoff=ctx.backoff)
            default_state = first.data["state"][0] if bool(first.data["has_state"][0, 0]) else None
        else:
            self.policy, _ = components.build_role_policy(cfg, "actor")
            default_state = rings.default_state_row(self.policy)
            self.weights = WeightsFollower(ctx, self.policy)
        self.remote = remote
        self.ring = rings.make_ring(
            cfg, default_state, f"actor rank {ctx.rank}", actor_index=self.index, num_groups=groups
        )
        log.debug("actor index %d: env seeds %s", self.index, list(self.ring.seeds))
        self.loop: InlineLoop | None = None
        if self.policy is not None:
            me = f"rank {ctx.rank} ({ctx.role} on {ctx.host})"
            who = f"{cfg.single_policy.type_!r} ({type(self.policy).__name__}) on {me}"
            self.loop = InlineLoop(self.ring, self.policy, who, fragments=self._send, trace=ctx.trace)
        self.samples = SendChannel(
            ctx.comm,
            self.trainer_rank,
            Tag.SAMPLE,
            f"samples of actor {ctx.rank}",
            batch_ndim=2,
            synchronous=cfg.training.queue_batches > 0,  # back-pressure from a trainer that is behind
        )
        self._last_stats = 0.0
        self._stats_interval = stats_interval(ctx.topo.world_size)
        self._reported_frames = 0
        self.sent_fragments = 0
        self.wait_seconds = 0.0
        self.send_wait_seconds = 0.0
        self.evaluations = 0
        self._default_state = default_state

    # ------------------------------------------------------------------ evaluation during training
    def _stopping(self) -> bool:
        """Polled by every evaluation step: keeps the control plane (heartbeats, stop) going meanwhile."""
        self.ctx.service()
        return self.ctx.stopping

    def _evaluate(self, pending: collections.deque[int] | None = None, resume: bool = True) -> None:
        """Run the evaluation the leader asked for (if it did) and report its result; the training envs wait.

        With remote inference, the replies to the training requests in flight are taken first (their envs
        step as usual; once this rank has stepped its share, ``resume`` is False and they are dropped) and
        the training requests are sent again afterwards (``pending`` is refilled) when ``resume``.
        """

        def evaluate(frames: int, where: str) -> dict[str, Any] | None:
            if self.policy is not None:
                who = f"{self.ctx.cfg.single_policy.type_!r} ({type(self.policy).__name__})"
                return evaluate_inline(self.ctx.cfg, self.policy, who, where, frames, self._stopping)
            assert pending is not None
            return self._evaluate_remote(pending, frames, where, resume)

        if self.ctx.serve_eval_request(evaluate):
            self.evaluations += 1

    def _reply(self) -> Any:
        """(Remote inference) The next reply of the inference rank, or None once the run is stopping."""
        assert self.results is not None
        while True:
            msg = self.results.test()
            if msg is not None:
                self.ctx.backoff.reset()
                return msg
            if self._stopping():
                return None
            self.ctx.backoff.idle()

    def _evaluate_remote(
        self, pending: collections.deque[int], frames: int, where: str, resume: bool
    ) -> dict[str, Any] | None:
        assert self.requests is not None
        while pending:  # the training requests in flight: take their replies, send no new ones yet
            msg = self._reply()
            if msg is None:
                return None
            g = pending.popleft()
            if resume:
                self.ring.consume(g, msg.data, msg.version)
        if resume:
            self._ship()
        ring = make_eval_ring(self.ctx.cfg, self._default_state, where, limit=self.ctx.cfg.actor.envs_per_actor)

        class _Stopped(Exception):
            pass

        def act(request: Any) -> tuple[Any, int]:
            self.requests.send(request)  # type: ignore[union-attr]
            msg = self._reply()
            if msg is None:
                raise _Stopped
            return msg.data, int(msg.version)

        try:
            done = run_evaluation(ring, self.ctx.cfg.run.eval_episodes, act)
        except _Stopped:
            return None
        finally:
            ring.close()
            for g in range(self.ring.num_groups if resume else 0):  # training resumes
                self.requests.send(self.ring.request(g))
                pending.append(g)
        return summarize(done, frames) if done is not None else None

    # ------------------------------------------------------------------ helpers
    def _ship(self) -> None:
        for frag in self.ring.pop_fragments():
            self._send(frag)

    def _send(self, frag: SampleBatch) -> None:
        t0 = time.perf_counter()
        version = int(frag.policy_version.max()) if frag.policy_version is not None else 0
        if self.samples.synchronous:  # back-pressure: at most one fragment not yet taken in by the trainer
            self.samples.flush(on_idle=self.ctx.service)
        self.samples.send(frag, version=version)
        self.sent_fragments += 1
        dt = time.perf_counter() - t0
        self.send_wait_seconds += dt
        trace = self.ctx.trace
        if trace is not None:
            trace.add_time("send_samples", dt)

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stats < self._stats_interval:
            return
        self._last_stats = now
        eps = self.ring.pop_episodes()
        msg = {
            "frames": self.ring.frames,
            "episodes": [[e.ret, e.length, e.version] for e in eps],
            "env_failures": self.ring.env_failures,
        }
        self.ctx.send_stats(msg)
        trace = self.ctx.trace
        if trace is not None:
            wall = time.time()
            for e in eps:
                trace.episode(e.ret, e.length, self.ring.frames, wall, e.version)
            trace.maybe_flush()

    def _spent(self, pending: collections.deque[int] | None = None) -> None:
        """This rank stepped its share: ship what is complete, report at once, and idle until the stop.

        An evaluation the leader asks for meanwhile still runs (``pending``: the training requests in flight
        with remote inference, whose replies it then drops).
        """
        ctx = self.ctx
        self._ship()
        self._report(force=True)  # the leader stops the run once every actor reported its share done
        while not ctx.stopping:
            ctx.service()
            if ctx.eval_request is not None:
                self._evaluate(pending, resume=False)
            if self.weights is not None:
                self.weights.update()  # idle anyway: stay on the newest weights (and feed the node's window)
            ctx.backoff.idle()

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Act until the leader says stop; returns this rank's final stats."""
        ctx = self.ctx
        t_start = time.monotonic()
        if self.remote:
            self._run_remote(self.ctx.wait_frame_budget())
        else:
            assert self.weights is not None and self.loop is not None
            self.weights.wait_first()
            budget = self.ctx.wait_frame_budget()
            while not ctx.stopping:
                if self.ring.frames >= budget:
                    self._spent()
                    break
                ctx.service()
                self.weights.update()
                self.loop.step()  # completed fragments go out through _send
                self._report()
                if ctx.eval_request is not None:
                    self._evaluate()
        self._report(force=True)
        elapsed = time.monotonic() - t_start
        recv = [self.results] if self.results is not None else []
        send = [self.samples] + ([self.requests] if self.requests is not None else [])
        extra = self.weights.discard if self.weights is not None else None
        final = {
            "type": "final",
            "role": "actor",
            "frames": self.ring.frames,
            "fps": self.ring.frames / elapsed if elapsed > 0 else 0.0,
            "fragments": self.sent_fragments,
            "requests": self.requests.messages if self.requests is not None else 0,
            "wait_seconds": round(self.wait_seconds, 3),
            "send_wait_seconds": round(self.send_wait_seconds, 3),
            "env_failures": self.ring.env_failures,
            "evaluations": self.evaluations,
            "torch_loaded": "torch" in sys.modules,
        }
        if self.policy is not None:
            final["policy_version"] = int(self.policy.version)
        ctx.send_stats(final)
        ctx.drain(recv, send, extra)
        if self.weights is not None:
            self.weights.close()
        self.ring.close()
        return final

    def _run_remote(self, budget: int) -> None:
        ctx = self.ctx
        trace = ctx.trace
        assert self.requests is not None and self.results is not None
        pending: collections.deque[int] = collections.deque()
        for g in range(self.ring.num_groups):
            self.requests.send(self.ring.request(g))
            pending.append(g)
        backoff = ctx.backoff
        while not ctx.stopping:
            if self.ring.frames >= budget:
                self._spent(pending)  # the replies to requests still pending are discarded by the drain
                break
            t0 = time.perf_counter()
            msg = self.results.test()
            if msg is None:
                ctx.service()
                backoff.idle()
                self.wait_seconds += time.perf_counter() - t0
                continue
            backoff.reset()
            g = pending.popleft()
            t1 = time.perf_counter()
            self.ring.consume(g, msg.data, msg.version)  # type: ignore[arg-type]
            t2 = time.perf_counter()
            self.requests.send(self.ring.request(g))
            pending.append(g)
            if trace is not None:
                trace.add_time("env_step", t2 - t1)
                trace.add_time("wait_inference", t1 - t0)
            self._ship()
            self._report()
            ctx.service()
            if ctx.eval_request is not None:
                self._evaluate(pending)
