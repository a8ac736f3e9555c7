"""Trainer rank: receives fragments, steps the trainer in lockstep with the other trainer ranks.

The leader (rank 0) additionally counts frames from the actors' reports, decides when
to stop, publishes parameters with their version after every step, writes checkpoints
and shows progress. With several trainer ranks, the per-step agreement (one non-blocking
allreduce) also carries the leader's frame count, so every trainer rank steps with the same
``trainer.progress`` (schedules) and records the same frames in its trace.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from hpcrl.acting.evaluation import EvalSchedule
from hpcrl.api import config
from hpcrl.comm.agreement import Iallreduce_step
from hpcrl.comm.channel import RecvChannel
from hpcrl.comm.fanin import poll_any
from hpcrl.comm.startup import Bcast_state_dict, Bcast_text
from hpcrl.comm.tags import Tag
from hpcrl.comm.topology import format_ranks
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.evaltrack import EvalTracker
from hpcrl.learning.learner import Learner
from hpcrl.progress import Progress
from hpcrl.runtime import budget, components
from hpcrl.runtime.rank import RankContext

if TYPE_CHECKING:
    from hpcrl.roles.trainer_multi import Group

__all__ = ["TrainerRank"]

log = logging.getLogger(__name__)


def publish_targets(ctx: RankContext) -> list[int]:
    """(Leader) The ranks each publication is sent to: one weight receiver per node, or every subscriber (flat).

    Must agree with :meth:`hpcrl.runtime.rank.WeightsFollower.peers` on the subscribers (the same pure functions of
    the topology and the node map).
    """
    subscribers = list(ctx.topo.param_subscribers)
    if ctx.cfg.layout.weights != "per_node" or ctx.node_comm is None or not subscribers:
        return subscribers
    from hpcrl.comm.nodeparams import weight_receivers

    receivers = list(weight_receivers(subscribers, ctx.nodes))
    log.info(
        "weights: per node, %d publication(s) per step to the weight receiver(s) [%s] of %d subscriber(s)",
        len(receivers),
        format_ranks(receivers),
        len(subscribers),
    )
    return receivers


class TrainerRank:
    """The trainer role on one MPI rank.

    Args:
        ctx: the rank context.
        tcomm: the trainer-only communicator (in a multi-policy run: the communicator of this rank's group).
        agent_count: agents per env (sizes buffers and the default batch).
        group: in a multi-policy run, this rank's trainer group (``ctx.cfg`` is then its policy's config).
    """

    def __init__(self, ctx: RankContext, tcomm: Any, agent_count: int, group: Group | None = None) -> None:
        from hpcrl.comm.collectives import make_gradient_sync

        self.ctx = ctx
        self.tcomm = tcomm
        self.group = group
        self.leads = ctx.is_leader if group is None else group.leads
        """This rank publishes the weights and writes the checkpoints (of its group's policy)."""
        cfg = ctx.cfg
        topo = ctx.topo
        self.policy, device = components.build_role_policy(cfg, "trainer")
        if self.leads and topo.param_subscribers:
            components.check_publishes(self.policy, topo.describe())
        self.actors = topo.actors_of_trainer(ctx.rank)
        per_actor = cfg.actor.envs_per_actor * (agent_count if group is None else group.agents)
        columns = cfg.training.batch_size or per_actor * len(self.actors)
        self.trainer = components.build_trainer(cfg.single_trainer, self.policy, cfg.training)
        self.trainer.sync = make_gradient_sync(tcomm, cfg.training.grad_backend, device)
        rows = (cfg.actor.fragment_length + 1) * per_actor
        self.samples = [
            # with back-pressure, one buffer: a receive is posted only when the trainer asks for more
            RecvChannel(
                ctx.comm,
                a,
                Tag.SAMPLE,
                f"samples of actor {a}",
                max_rows=rows,
                nbuffers=1 if cfg.training.queue_batches > 0 else 2,
            )
            for a in self.actors
        ]
        batch_size = columns
        trace = ctx.trace
        if group is not None and trace is not None:
            from hpcrl.roles.local_multi import PolicyTrace

            trace = PolicyTrace(trace, group.name)  # stats and spans as <policy>/<name>
        self.learner = Learner(
            cfg, self.policy, self.trainer, batch_size, trace=trace, name=None if group is None else group.name
        )
        n_trainers = int(tcomm.Get_size())
        attrs: dict[str, Any] = {
            "world_size": topo.world_size,
            "layout": topo.describe(),
            "trainer_ranks": n_trainers,
            "frames_per_step": budget.frames_per_step(
                cfg.training.batch_size * n_trainers if cfg.training.batch_size else per_actor * len(topo.actors),
                cfg.actor.fragment_length,
                agent_count if group is None else group.agents,
            ),
        }
        self.checkpoints = Checkpointer(
            cfg,
            self.learner,
            ctx.session.run_dir if self.leads else None,
            ctx.session.config_text if group is None else config.dump(cfg),
            extra_attrs=attrs if group is None else {**attrs, "policy_name": group.name},
            trace=trace,
            policy=None if group is None else group.name,
        )
        if group is not None:
            group.make_frozen(attrs)
        self.publisher: Any = None
        if self.leads:
            from hpcrl.comm.params import ParamPublisher

            tag = Tag.PARAMS if group is None else group.tag
            targets = publish_targets(ctx) if group is None else group.subscribers()
            self.publisher = ParamPublisher(ctx.comm, targets, tag=tag)
        # leader-side bookkeeping of the actors' reports
        self.actor_frames: dict[int, int] = {}
        self._actor_frames_sum = 0
        self.budgets: dict[int, int] = {}
        self._unspent: set[int] = set()  # actors that have not yet reported stepping their share
        self._base_frames = 0
        self._told_trainers = False
        self.finals: dict[int, dict[str, Any]] = {}
        self.progress: Progress | None = None
        self.eval_schedule: EvalSchedule | None = None
        self.eval_tracker: EvalTracker | None = None
        self._eval_pending = False
        ctx.on_stats = self._on_stats

    # ------------------------------------------------------------------ leader bookkeeping
    def _on_stats(self, src: int, msg: dict[str, Any]) -> None:
        if msg.get("type") == "final":
            self.finals[src] = msg
        if "frames" in msg and self.ctx.topo.role_of(src) == "actor":
            frames = int(msg["frames"])
            self._actor_frames_sum += frames - self.actor_frames.get(src, 0)  # O(1) per report, not O(actors)
            self.actor_frames[src] = frames
            if src in self._unspent and frames >= self.budgets[src]:
                self._unspent.discard(src)
            if msg.get("type") != "final":  # finals come after the last checkpoint: its count stays the run's
                self.learner.frames = self._base_frames + self._actor_frames_sum
                self._check_budget()  # also while waiting in the step agreement
        eps = msg.get("episodes")
        if eps and self.group is not None:
            eps = self.group.episodes(eps, self.progress)
        games = msg.get("games")
        if games and self.group is not None:
            self.group.games(games, self.learner.frames, self.progress)
        if eps and self.progress is not None:
            self.progress.add_episodes([float(e[0]) for e in eps], [int(e[1]) for e in eps])
        result = msg.get("eval")
        if result is not None and self.eval_tracker is not None:
            self._eval_pending = False
            if isinstance(result, dict):
                self.eval_tracker.record(result)

    def _maybe_evaluate(self) -> None:
        """(Leader) Every ``run.eval_every_frames``: ask the first actor for an evaluation (one at a time)."""
        schedule = self.eval_schedule
        if schedule is None or self._eval_pending or not schedule.due(self.learner.frames):
            return
        assert self.eval_tracker is not None
        self._eval_pending = True
        self.eval_tracker.snapshot(self.policy, self.learner.frames)  # best.h5 if this one is the best
        msg = {"type": "evaluate", "frames": int(self.learner.frames), "version": int(self.policy.version)}
        self.ctx.post(self.ctx.topo.actors[0], msg)

    def _add(self, msg: Any) -> None:
        """Queue a received fragment; a fragment that does not fit names its sender."""
        try:
            self.learner.add(msg.data)
        except ValueError as e:
            raise ValueError(f"samples of {self.ctx.who(msg.source)}: {e}") from e

    # ------------------------------------------------------------------ start-up
    def _restore(self) -> None:
        """Leader picks the checkpoint; every trainer loads the same file; weights are then broadcast."""
        ctx = self.ctx
        if self.group is not None:
            self.group.restore(self)
            return
        path = None
        if not ctx.cfg.run.fresh and ctx.is_leader:
            used = self.checkpoints.restore()
            path = str(used) if used is not None else ""
        if ctx.is_leader:
            ctx.session.write_config()  # only now: a failed resume leaves the previous config.yaml as it was
        if self.tcomm.Get_size() > 1:
            path = Bcast_text(self.tcomm, path or "")
            if not ctx.is_leader and path:
                from pathlib import Path

                self.checkpoints.restore(Path(path))
            Bcast_state_dict(self.tcomm, self.policy.state_dict())

    def _send_budgets(self, base_frames: int) -> None:
        """(Leader) Split the frames left to run over the actor ranks: one broadcast, each actor takes its share.

        An actor stops stepping at its share (to within one step of its env group), so the run steps
        ``experiment.total_frames`` (or an earlier ``run.stop_at_frames``) plus at most ``envs_per_actor - 1``
        frames per actor rank, however late
        the actors' frame reports arrive; the leader stops once every actor has reported its share done.
        """
        actors = self.ctx.topo.actors
        left = max(0, budget.frame_limit(self.ctx.cfg)[0] - base_frames)
        self.ctx.announce_frames_left(left)  # one broadcast; each actor computes its own share
        self.budgets = {a: budget.actor_share(left, len(actors), k) for k, a in enumerate(actors)}
        self._unspent = {a for a, n in self.budgets.items() if n > 0}

    def _check_budget(self) -> None:
        """(Leader) Once every actor has reported stepping its share of the frames, stop the run."""
        if not self.budgets or self.ctx.stop.is_set():
            return
        if not self._unspent:
            self.ctx.stop.set(budget.frame_limit(self.ctx.cfg)[1])
            self._tell_trainers()

    def _tell_trainers(self) -> None:
        """(Leader) Ask the other trainer ranks to join a stop agreement, batch or not (once).

        Actors past their share send no more fragments, so a trainer rank may never complete another batch;
        the leader may even be waiting for it in a step agreement already.
        """
        if self._told_trainers:
            return
        self._told_trainers = True
        for r in self.ctx.topo.trainers[1:]:
            self.ctx.post(r, {"type": "stop", "reason": str(self.ctx.stop.reason)})

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Any]:
        """Train until the frame budget is spent or a stop is agreed; returns this rank's final stats."""
        try:
            return self._train()
        finally:
            self.checkpoints.close()  # an exception left a background save in flight: finish it (nothing is lost)
            if self.group is not None:
                self.group.close()

    def _train(self) -> dict[str, Any]:
        ctx = self.ctx
        cfg = ctx.cfg
        trace = ctx.trace
        self._restore()
        base_frames = self._base_frames = self.learner.frames
        if ctx.is_leader:
            self.progress = Progress(
                cfg.experiment.total_frames, cfg.run.progress, cfg.run.log_interval_seconds, base_frames
            )
            self.progress.live = components.live_scalars(cfg, ctx.session.run_dir, trace)
            schedule = EvalSchedule(cfg, base_frames)
            if schedule.enabled and ctx.topo.actors:
                self.eval_schedule = schedule
                best = None
                if self.group is not None:  # the first trained policy's best, beside its checkpoints
                    from hpcrl.learning.evaltrack import BEST_NAME

                    best = ctx.session.run_dir / "checkpoints" / self.group.name / BEST_NAME
                self.eval_tracker = EvalTracker(
                    cfg,
                    ctx.session.run_dir,
                    ctx.session.config_text if self.group is None else config.dump(cfg),
                    trace,
                    self.progress,
                    resume=not cfg.run.fresh,
                    best_path=best,
                )
            log.info("run dir %s", ctx.session.run_dir)
            self._send_budgets(base_frames)  # before the first parameters, which actors wait for
        if self.leads:
            t0 = time.perf_counter()
            self.publisher.publish(self.policy.state_dict(), self.policy.version)
            if self.group is not None:
                self.group.publish_first()
            if trace is not None and ctx.is_leader:  # start-up at rank 0: the first weights go to every subscriber
                trace.add_time("startup_first_publish", time.perf_counter() - t0)
        multi = self.tcomm.Get_size() > 1
        backoff = ctx.backoff
        queue_cols = cfg.training.queue_batches * self.learner.batcher.batch_size
        reason = "finished"
        last_progress = 0.0
        while True:
            ctx.service()
            if self.group is not None:
                self.group.service(self)
            if ctx.stop.checkpoint_request is not None and ctx.is_leader:  # SIGUSR2 on any rank: a checkpoint
                if self.group is not None:
                    self.group.serve(self, ctx.stop.checkpoint_request)
                else:
                    self.checkpoints.serve(ctx.stop.checkpoint_request)  # at this step boundary; the run goes on
            if self.publisher is not None and time.monotonic() - last_progress > 0.005:
                last_progress = time.monotonic()
                self.publisher.progress()  # a subscriber that was busy gets the newest version
            t0 = time.perf_counter()
            # back-pressure: with enough batches queued, leave fragments unreceived (actors wait on their sends)
            full = queue_cols > 0 and self.learner.batcher.queued_columns >= queue_cols
            got = [] if full else poll_any(self.samples, copy=True)
            for _, msg in got:
                self._add(msg)
            if ctx.is_leader:
                self._check_budget()
                if ctx.stop.is_set():
                    self._tell_trainers()
            # a trainer the leader told to stop joins the agreement without a batch (see _tell_trainers)
            want_stop = ctx.stop.is_set() if ctx.is_leader else ctx.stopping
            if not (want_stop or (self.learner.ready() and self.learner.prepare())):
                if not got:
                    backoff.idle()
                    if trace is not None:
                        trace.add_time("wait_samples", time.perf_counter() - t0)
                else:
                    backoff.reset()
                if self.progress is not None:
                    self.progress.update(self.learner.frames, self.learner.steps, self.learner.last_stats)
                    self._maybe_evaluate()
                continue
            backoff.reset()
            if multi and self._agree(want_stop):
                break
            if not multi and want_stop:
                break
            self.learner.step()
            if self.leads:
                t1 = time.perf_counter()
                self.publisher.publish(self.policy.state_dict(), self.policy.version)
                if trace is not None:
                    trace.add_time("publish_params", time.perf_counter() - t1)
            if ctx.is_leader:
                if self.group is not None:
                    self.group.after_step(self)
                else:
                    self.checkpoints.after_step()
                assert self.progress is not None
                self.progress.update(self.learner.frames, self.learner.steps, self.learner.last_stats)
                self._maybe_evaluate()
            if trace is not None:
                trace.maybe_flush()
        if ctx.is_leader:
            reason = str(ctx.stop.reason)
            # the newest count (a step may have used an older, agreed one): the checkpoint counts every frame
            self.learner.frames = max(self.learner.frames, self._base_frames + self._actor_frames_sum)
        if self.group is not None:  # every trainer rank: the final set, at rank 0's frame count
            self.group.final(self, reason == "total_frames reached", self._idle)
        elif ctx.is_leader:
            self.checkpoints.save("final" if reason == "total_frames reached" else "stop")
        if ctx.is_leader:
            ctx.broadcast_stop(reason)
        return self._shutdown(reason)

    def _agree(self, want_stop: bool) -> bool:
        """All trainer ranks agree at a step boundary: step together, or stop together; True means stop.

        The same allreduce (MAX of ``[stop flag, frames]``) gives every rank the leader's frame count
        (frames only grow, and no other rank's count is ahead of the leader's), which becomes this step's
        ``learner.frames`` everywhere: schedules see the same progress on every trainer rank.
        """
        stop, frames = Iallreduce_step(self.tcomm, want_stop, self.learner.frames, self._idle)
        if not stop:  # the step's progress, the same on every rank (the leader's count may have grown meanwhile)
            self.learner.frames = frames
        return stop

    def _idle(self) -> None:
        """While waiting in an agreement: service control messages, keep receiving samples."""
        self.ctx.service()
        for _, msg in poll_any(self.samples, copy=True):
            self._add(msg)

    def _shutdown(self, reason: str) -> dict[str, Any]:
        ctx = self.ctx
        final = {
            "type": "final",
            "role": "trainer",
            "trainer_steps": self.learner.steps,
            "dropped_fragments": self.learner.batcher.dropped,
            "skipped_steps": self.learner.skipped_steps,
        }
        if self.group is not None:
            final.update(self.group.final_stats(self))
        ctx.send_stats(final)

        def finish(idle: Any) -> None:
            if self.publisher is not None:
                self.publisher.flush(timeout=60.0, on_idle=idle)
                self.publisher.close()
            if self.group is not None:
                self.group.finish(idle)

        ctx.drain(self.samples, [], None, finish)
        self.trainer.sync.destroy()
        if not ctx.is_leader:
            return final
        assert self.progress is not None
        self.progress.update(self.learner.frames, self.learner.steps, self.learner.last_stats)
        self.progress.close()
        _log_roles(self.finals, ctx)
        extra = self.group.summary(self, self.finals) if self.group is not None else {}
        return self.progress.summary(
            reason=reason,
            policy_version=self.policy.version,
            dropped_fragments=self.learner.batcher.dropped,
            checkpoint=extra.pop("checkpoint", None)
            or (str(self.checkpoints.last_checkpoint) if self.checkpoints.last_checkpoint else None),
            run_dir=str(ctx.session.run_dir),
            world_size=ctx.topo.world_size,
            layout=ctx.topo.describe(),
            **_request_counts(self.finals, ctx),
            **extra,
        )


def _request_counts(finals: dict[int, dict[str, Any]], ctx: RankContext) -> dict[str, Any]:
    """With remote inference: the inference requests the actors sent, and how many of them crossed nodes.

    An actor's requests all go to its one inference rank, so the requests that crossed nodes are those of
    the actors :meth:`~hpcrl.comm.topology.Topology.cross_node_actors` names.
    """
    topo = ctx.topo
    if not topo.inference:
        return {}
    sent = {a: int(finals.get(a, {}).get("requests", 0)) for a in topo.actors}
    return {
        "inference_requests": sum(sent.values()),
        "cross_node_requests": sum(sent[a] for a in topo.cross_node_actors()),
    }


def _log_roles(finals: dict[int, dict[str, Any]], ctx: RankContext) -> None:
    """Per-role stats table on rank 0 (frames, fps, waits, dropped samples)."""
    for rank in sorted(finals):
        f = dict(finals[rank])
        f.pop("type", None)
        f.pop("host", None)
        role = f.pop("role", "?")
        fields = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in f.items())
        log.info("rank %d %s: %s", rank, role, fields)
