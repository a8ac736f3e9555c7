"""Actor rank of a multi-policy MPI run: each policy's agents act, each policy's fragments go to its trainers.

The env ring (:class:`~hpcrl.acting.policy_ring.PolicyRing`) keeps one part per policy, as in one process.
Each step every policy answers the request of its own agents: inline, where this rank holds every policy
(:class:`~hpcrl.roles.policy_set.PolicySet`; each policy's weights come from its publisher on the policy's
own tag), or on this actor's inference rank, where the request of policy ``i`` goes on its own tag
(:class:`~hpcrl.roles.inference_multi.MultiInferenceRank`; then this rank never imports torch and, with
``actor.ring_halves``, one half of the envs steps while the other half's requests are answered). The
completed fragments of a trained policy go to this actor's trainer rank of that policy's group
(:meth:`~hpcrl.comm.topology.Topology.trainer_of`), those of a frozen policy are dropped.
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from typing import Any

from hpcrl.acting.multi_ring import evaluate_policies, fixed_opponent_acts, make_multi_ring
from hpcrl.api.policy import check_rollout_result
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.tags import Tag, policy_request_tag, policy_result_tag
from hpcrl.roles.policy_set import PolicySet, pool_policies
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext, stats_interval

__all__ = ["MultiActorRank"]

log = logging.getLogger(__name__)


class MultiActorRank:
    """The actor role of a multi-policy run on one MPI rank (inline or remote inference).

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
        self.names = names
        inference = topo.inference_of(ctx.rank)
        self.remote = inference is not None
        n = cfg.actor.envs_per_actor
        self.set: PolicySet | None = None
        self.pool_set: PolicySet | None = None  # remote self-play: the policies this rank plays the opponents with
        self.requests: list[SendChannel] = []
        self.results: list[RecvChannel] = []
        defaults: list[Any] | None
        if inference is not None:
            defaults = self._connect(inference, n * max(1, len(names)))
            if cfg.selfplay is not None:
                components.set_torch_threads(cfg.run.torch_threads)
                self.pool_set = PolicySet(ctx, "cpu", f"rank {ctx.rank}", only=pool_policies(cfg))
        else:
            components.set_torch_threads(cfg.run.torch_threads)
            self.set = PolicySet(ctx, "cpu", f"rank {ctx.rank}")
            defaults = None  # the ring asks the policies
        held = self.set or self.pool_set
        self.samples: dict[int, SendChannel] = {}
        for i, name in enumerate(self.order):
            if name in cfg.trainers:
                self.samples[i] = SendChannel(
                    ctx.comm,
                    topo.trainer_of(ctx.rank, name),
                    Tag.SAMPLE,
                    f"samples of policy {name} of actor {ctx.rank}",
                    batch_ndim=2,
                    synchronous=cfg.training.queue_batches > 0,  # back-pressure from a trainer that is behind
                )
        groups = 2 if self.remote and cfg.actor.ring_halves and n >= 2 else 1
        self.defaults = defaults
        self.pending: collections.deque[tuple[int, list[Any]]] = collections.deque()  # remote: groups asked
        self.evaluations = 0
        self.ring = make_multi_ring(
            cfg,
            names,
            held.policies if held is not None else None,
            f"actor rank {ctx.rank}",
            defaults=defaults,
            actor_index=self.index,
            num_groups=groups,
            device="cpu",
        )
        self.play: _ActorSelfPlay | None = None
        if cfg.selfplay is not None:
            assert held is not None
            self.play = _ActorSelfPlay(cfg, self.ring, held, topo)
        self._last_stats = 0.0
        self._stats_interval = stats_interval(topo.world_size)
        self.sent_fragments = 0
        self.send_wait_seconds = 0.0
        self.wait_seconds = 0.0

    def _connect(self, inference: int, rows: int) -> list[Any]:
        """(Remote inference) Open each policy's request and result channels; returns each default state.

        The inference rank's first message on every result channel is its policy's default state.
        """
        ctx = self.ctx
        run = ctx.cfg.run
        limit = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
        defaults: list[Any] = []
        for i, name in enumerate(self.order):
            self.requests.append(
                SendChannel(
                    ctx.comm, inference, policy_request_tag(i), f"requests of policy {name} of actor {ctx.rank}"
                )
            )
            results = RecvChannel(
                ctx.comm,
                inference,
                policy_result_tag(i),
                f"results of policy {name} for actor {ctx.rank}",
                max_rows=rows,
            )
            self.results.append(results)
            first = results.recv(timeout=limit, copy=True, on_idle=ctx.service, backoff=ctx.backoff)
            defaults.append(first.data["state"][0] if bool(first.data["has_state"][0, 0]) else None)
        return defaults

    # ------------------------------------------------------------------ acting
    def _act(self) -> None:
        """(Inline inference) One act step: every policy answers its agents' request, then the envs step."""
        assert self.set is not None
        t0 = time.perf_counter()
        results: list[Any] = []
        for p, request in enumerate(self.ring.request_parts(0)):
            if request is None:
                results.append(None)
                continue
            if p == len(self.order):  # the opponent agents of self-play: each env's episode snapshot
                results.append(self.ring.act_opponents(0, request))  # type: ignore[attr-defined]
                continue
            policy = self.set.policies[p]
            label = self.set.labels[p]
            results.append((check_rollout_result(policy.rollout(request), len(request), label), policy.version))
        t1 = time.perf_counter()
        self.ring.consume_parts(0, results)
        trace = self.ctx.trace
        if trace is not None:
            trace.add_time("inference", t1 - t0)
            trace.add_time("env_step", time.perf_counter() - t1)

    def _request(self, group: int) -> list[Any]:
        """(Remote inference) Send every policy's request of ``group``; per policy, None where it sent none.

        The opponent rows of self-play are answered here at once (each env's snapshot or fixed opponent).
        """
        answers: list[Any] = []
        for p, request in enumerate(self.ring.request_parts(group)):
            if request is None:
                answers.append(None)
            elif p == len(self.order):
                answers.append(self.ring.act_opponents(group, request))  # type: ignore[attr-defined]
            else:
                self.requests[p].send(request)
                answers.append(False)  # awaited
        return answers

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
        mine = len(self.order)  # a higher part index: the opponent agents of self-play (no policy's returns)
        msg: dict[str, Any] = {
            "frames": self.ring.frames,
            "episodes": [[e.ret, e.length, e.version, e.policy] for e in eps if e.policy < mine],
            "env_failures": self.ring.env_failures,
        }
        if self.play is not None:
            msg["games"] = self.play.pop_games()
            while self.play.games:  # a long interval's games: more messages (each within the control-plane cap)
                self.ctx.send_stats({"games": self.play.pop_games()})
        self.ctx.send_stats(msg)
        trace = self.ctx.trace
        if trace is not None:
            wall = time.time()
            for e in eps:
                trace.episode(e.ret, e.length, self.ring.frames, wall, e.version)
            trace.maybe_flush()

    # ------------------------------------------------------------------ evaluation during training
    def _stopping(self) -> bool:
        """Polled while waiting and by every evaluation step: keeps the control plane going meanwhile."""
        self.ctx.service()
        return self.ctx.stopping

    def _evaluate(self, resume: bool = True) -> None:
        """Run the evaluation the leader asked for (if it did) and report its result; the training envs wait.

        With remote inference the replies to the training requests in flight are taken first (their envs
        step as usual, unless this rank has stepped its share: ``resume`` False drops them) and, when
        ``resume``, the training requests are sent again afterwards.
        """

        def evaluate(frames: int, where: str) -> dict[str, Any] | None:
            if self.set is not None:
                policies, labels = self.set.policies, self.set.labels
                return evaluate_policies(self.ctx.cfg, self.names, policies, labels, where, frames, self._stopping)
            return self._evaluate_remote(frames, where, resume)

        if self.ctx.serve_eval_request(evaluate):
            self.evaluations += 1

    def _answers(self, answers: list[Any], wait: bool) -> bool:
        """(Remote inference) Take the replies that arrived for ``answers``; True once every one is in.

        With ``wait``, wait for them (False only when the run stops meanwhile).
        """
        while True:
            for p, answer in enumerate(answers):
                if answer is False:  # a result channel's message stays valid until its next receive call
                    msg = self.results[p].test()
                    if msg is not None:
                        answers[p] = (msg.data, msg.version)
            if all(a is not False for a in answers):
                self.ctx.backoff.reset()
                return True
            if not wait or self._stopping():
                return False
            self.ctx.backoff.idle()

    def _evaluate_remote(self, frames: int, where: str, resume: bool) -> dict[str, Any] | None:
        from hpcrl.acting.evaluation import eval_config, run_multi_evaluation, summarize_multi

        cfg = self.ctx.cfg
        while self.pending:  # the training requests in flight: take their replies, send no new ones yet
            g, answers = self.pending[0]
            if not self._answers(answers, wait=True):
                return None
            self.pending.popleft()
            if resume:
                self.ring.consume_parts(g, answers)
        if resume:
            self._ship()
        limit = cfg.actor.envs_per_actor  # the rows the channels hold
        ring = make_multi_ring(
            eval_config(cfg, limit), self.names, None, f"{where} (evaluation)", defaults=self.defaults, evaluation=True
        )

        class _Stopped(Exception):
            pass

        def act(p: int, request: Any) -> tuple[Any, int]:
            if p == len(self.order):  # self-play: the first fixed opponent, held here
                assert self.pool_set is not None and cfg.selfplay is not None
                fixed = self.order.index(cfg.selfplay.fixed_opponents[0])
                label = f"{self.pool_set.labels[fixed]} (fixed opponent)"
                return fixed_opponent_acts(self.pool_set.policies[fixed], label, request)
            self.requests[p].send(request)
            answers: list[Any] = [None] * len(self.order)
            answers[p] = False
            if not self._answers(answers, wait=True):
                raise _Stopped
            return answers[p]  # type: ignore[no-any-return]

        shown = self.order.index(next(n for n in self.order if n in cfg.trainers))
        try:
            done = run_multi_evaluation(ring, cfg.run.eval_episodes, act, shown, self._stopping)
        except _Stopped:
            return None
        finally:
            ring.close()
            for g in range(self.ring.num_groups if resume else 0):  # training resumes
                self.pending.append((g, self._request(g)))
        return None if done is None else summarize_multi(done, shown, self.order, frames)

    # ------------------------------------------------------------------ loop
    def _spent(self) -> None:
        """This rank stepped its share: ship what is complete, report at once, and idle until the stop.

        An evaluation the leader asks for meanwhile still runs.
        """
        ctx = self.ctx
        self._ship()
        self._report(force=True)  # the leader stops the run once every actor reported its share done
        while not ctx.stopping:
            ctx.service()
            if ctx.eval_request is not None:
                self._evaluate(resume=False)
            for held in (self.set, self.pool_set):
                if held is not None:
                    held.update()
            ctx.backoff.idle()

    def _run_inline(self, budget: int) -> None:
        ctx = self.ctx
        assert self.set is not None
        while not ctx.stopping:
            if self.ring.frames >= budget:
                self._spent()
                break
            ctx.service()
            self.set.update()
            self._act()
            if self.play is not None:
                self.play.after_act(self.ring.frames)
            self._ship()
            self._report()
            if ctx.eval_request is not None:
                self._evaluate()

    def _run_remote(self, budget: int) -> None:
        """Alternate the ring's groups: a group steps once every policy answered its request."""
        ctx = self.ctx
        trace = ctx.trace
        for g in range(self.ring.num_groups):
            self.pending.append((g, self._request(g)))
        t0 = time.perf_counter()
        while not ctx.stopping:
            if self.ring.frames >= budget:
                self._spent()  # the replies to requests still pending are discarded by the drain
                break
            g, answers = self.pending[0]
            if not self._answers(answers, wait=False):
                ctx.service()
                ctx.backoff.idle()
                continue
            self.pending.popleft()
            t1 = time.perf_counter()
            self.ring.consume_parts(g, answers)
            t2 = time.perf_counter()
            if self.play is not None:
                assert self.pool_set is not None
                self.pool_set.update()
                self.play.after_act(self.ring.frames)
            self.pending.append((g, self._request(g)))
            self.wait_seconds += t1 - t0
            if trace is not None:
                trace.add_time("env_step", t2 - t1)
                trace.add_time("wait_inference", t1 - t0)
            self._ship()
            self._report()
            ctx.service()
            if ctx.eval_request is not None:
                self._evaluate()
            t0 = time.perf_counter()

    def run(self) -> dict[str, Any]:
        """Act until the leader says stop; returns this rank's final stats."""
        ctx = self.ctx
        t_start = time.monotonic()
        for held in (self.set, self.pool_set):
            if held is not None:
                held.wait_first()
        if self.play is not None:
            self.play.start()
        budget = ctx.wait_frame_budget()
        if self.remote:
            self._run_remote(budget)
        else:
            self._run_inline(budget)
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
            "evaluations": self.evaluations,
            "torch_loaded": "torch" in sys.modules,
        }
        if self.remote:
            final.update(requests=sum(ch.messages for ch in self.requests), wait_seconds=round(self.wait_seconds, 3))
        if self.set is not None:
            final["policy_versions"] = self.set.versions()
        if self.play is not None:
            final["selfplay_pool_versions"] = self.play.ring.pool.versions
        ctx.send_stats(final)
        holders = [h for h in (self.set, self.pool_set) if h is not None]

        def discard() -> None:
            for h in holders:
                h.discard()

        ctx.drain(self.results, list(self.samples.values()) + self.requests, discard if holders else None)
        for h in holders:
            h.close()
        self.ring.close()
        return final


class _ActorSelfPlay:
    """Self-play on an actor rank: a pool of its own, from the weights it receives; the games it scores.

    Each actor keeps the newest ``selfplay.pool_size`` snapshots of the self-play policy's weights as they
    reach it, one every ``snapshot_every_frames`` frames of the run (this actor's frames times the number of
    actors: every actor steps an equal share). Its opponent rows are dropped, its games go to rank 0 with the
    stats (rank 0 keeps the score, the trace's ``/selfplay`` rows and the progress line).
    """

    #: at most this many game rows per stats message (the control plane caps a message at 64 KiB).
    GAMES_PER_MESSAGE = 400

    def __init__(self, cfg: Any, ring: Any, policies: PolicySet, topo: Any) -> None:
        assert cfg.selfplay is not None
        self.ring = ring
        self.learner = policies.policies[policies.names.index(cfg.selfplay.policy)]
        self.opponent_part = len(policies.names)
        self.actors = len(topo.actors)
        self.games: list[list[float]] = []

    def start(self) -> None:
        """Once the first weights arrived: the pool starts from them (a resumed run's restored weights)."""
        self.ring.restart_pool(self.learner, 0)

    def after_act(self, frames: int) -> None:
        """Drop the opponent rows, keep the games that ended, take a snapshot when one is due."""
        self.ring.pop_part_fragments(self.opponent_part)
        version = int(self.learner.version)
        for g in self.ring.pop_games():
            row = [g.outcome, g.learner_return, g.opponent_return, g.opponent_version, g.opponent_index, version]
            self.games.append(row)
        self.ring.pool.maybe_take(self.learner, frames * self.actors)

    def pop_games(self) -> list[list[float]]:
        """Up to :attr:`GAMES_PER_MESSAGE` games, oldest first.

        Each row: ``[outcome, learner return, opponent return, opponent version, opponent index, learner
        version]``.
        """
        out, self.games = self.games[: self.GAMES_PER_MESSAGE], self.games[self.GAMES_PER_MESSAGE :]
        return out
