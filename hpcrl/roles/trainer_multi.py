"""The trainer ranks of a multi-policy MPI run: one trainer group per trained policy.

Every trained policy has its own block of trainer ranks (``layout.trainers``, see
:meth:`hpcrl.comm.topology.Topology.build`); each group runs an ordinary
:class:`~hpcrl.roles.trainer.TrainerRank` on the config of its policy (:func:`trainer_view`), with the
group's communicator for the gradient allreduce and the step agreement. The first rank of each group (its
*lead*) publishes the policy's weights on the policy's own tag and writes its checkpoints under
``RUN_DIR/checkpoints/<policy>``. Rank 0 (the lead of the first trained policy's group) stays the run's
leader: it counts frames, splits the budget, decides when to stop and when to checkpoint, and holds the
frozen policies (published once, checkpointed with every set).

What keeps the policies together:

- Resume: rank 0 picks the set of checkpoints to resume from as a one-process run does
  (:func:`~hpcrl.roles.local_multi.choose_resume_set`) and broadcasts it to every trainer rank.
- Checkpoints: whenever rank 0 saves, it asks the other leads to save at its frame count (a ``save`` control
  message), so every set shares one frame count; the final set is agreed by every trainer rank (one
  allreduce of the frame count) before the run ends.
- Frames: rank 0 forwards its frame count to the other groups (``frames`` control messages), which their
  trainers step with (schedules, trace).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api import config
from hpcrl.comm.agreement import Iallreduce_step
from hpcrl.comm.startup import Bcast_state_dict, Bcast_text
from hpcrl.comm.tags import policy_params_tag
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.learner import Learner
from hpcrl.progress import policy_returns_note
from hpcrl.roles.local_multi import choose_resume_set, load_init_weights, policy_view
from hpcrl.roles.policy_set import policy_subscribers
from hpcrl.runtime import components

if TYPE_CHECKING:
    from hpcrl.roles.trainer import TrainerRank
    from hpcrl.runtime.rank import RankContext

__all__ = ["Group", "trainer_view", "FRAMES_INTERVAL"]

log = logging.getLogger(__name__)

#: seconds between two frame counts that rank 0 forwards to the other trainer groups.
FRAMES_INTERVAL = 0.25


def trainer_view(cfg: config.ExperimentConfig, name: str, ranks: int) -> config.ExperimentConfig:
    """The single-policy config that the trainer ranks of policy ``name`` run on.

    It is the policy's checkpoint config (:func:`~hpcrl.roles.local_multi.policy_view`) with the group's
    rank count as ``layout.trainers`` and ``layout.weights: flat`` (each lead publishes to every actor).
    """
    view = policy_view(cfg, name)
    return dataclasses.replace(view, layout=dataclasses.replace(cfg.layout, trainers=ranks, weights="flat"))


class _Frozen:
    """(Rank 0) The frozen policies: built, restored, published once, checkpointed with every set."""

    def __init__(self, cfg: config.ExperimentConfig, ctx: RankContext, attrs: dict[str, Any]) -> None:
        from hpcrl.comm.params import ParamPublisher
        from hpcrl.trainers.null import NullTrainer

        self.cfg = cfg
        self.entries: list[tuple[str, Any, Checkpointer, Any]] = []
        for i, (name, entry) in enumerate(cfg.policies.items()):
            if name in cfg.trainers:
                continue
            view = policy_view(cfg, name)
            spec = config.Policy(entry.type_, dict(entry.args))
            try:
                policy = components.build_policy(spec, "cpu", cfg.experiment.seed + i)
            except config.ConfigError as e:
                raise config.ConfigError(f"policies.{name}: {e}") from None
            learner = Learner(view, policy, NullTrainer(policy), 1, name=name)
            checkpoints = Checkpointer(
                view,
                learner,
                ctx.session.run_dir,
                config.dump(view),
                extra_attrs={**attrs, "trainer_ranks": 0, "policy_name": name},
                policy=name,
            )
            publisher = ParamPublisher(ctx.comm, policy_subscribers(cfg, ctx.topo, name), tag=policy_params_tag(i))
            self.entries.append((name, policy, checkpoints, publisher))

    def restore(self, chosen: dict[str, str]) -> None:
        """Each frozen policy from its file of the set, else from its ``init_from`` checkpoint (if any)."""
        for name, policy, checkpoints, _ in self.entries:
            if chosen.get(name):
                checkpoints.restore(Path(chosen[name]))
            elif self.cfg.policies[name].init_from is not None:
                load_init_weights(policy, name, self.cfg.policies[name])

    def publish(self) -> None:
        for _, policy, _, publisher in self.entries:
            publisher.publish(policy.state_dict(), policy.version)

    def progress(self) -> None:
        for *_, publisher in self.entries:
            publisher.progress()

    def save(self, reason: str, frames: int) -> None:
        for _, _, checkpoints, _ in self.entries:
            checkpoints.learner.frames = frames
            checkpoints.save(reason)

    def finish(self, idle: Any) -> None:
        for *_, publisher in self.entries:
            publisher.flush(timeout=60.0, on_idle=idle)
            publisher.close()

    def close(self) -> None:
        for _, _, checkpoints, _ in self.entries:
            checkpoints.close()


class Group:
    """This trainer rank's part in a multi-policy run: its policy's group and, on rank 0, the run's duties.

    Args:
        cfg: the resolved multi-policy config.
        ctx: this rank's context (its ``cfg`` is :func:`trainer_view` of this rank's policy).
        names: the policy of every agent index.
        tall: the communicator of every trainer rank (rank 0 is its rank 0).
        pcomm: the communicator of this rank's group (its lead is its rank 0).
    """

    def __init__(self, cfg: config.ExperimentConfig, ctx: RankContext, names: list[str], tall: Any, pcomm: Any) -> None:
        self.cfg = cfg
        self.ctx = ctx
        topo = ctx.topo
        name = topo.group_of(ctx.rank)
        assert name is not None
        self.name = name
        self.order = list(cfg.policies)
        self.index = self.order.index(name)
        self.tag = policy_params_tag(self.index)
        self.agents = names.count(name)
        self.tall = tall
        self.pcomm = pcomm
        self.leads = pcomm.Get_rank() == 0
        self.leads_others = [ranks[0] for n, ranks in topo.groups if n != name]
        self.others = [r for n, ranks in topo.groups if n != name for r in ranks]  # rank 0's frame forwards
        self.frozen: _Frozen | None = None
        self._last_frames = 0.0
        self._set_frames = -1  # (rank 0) the frame count of the newest set: no two sets share one
        self.recent: dict[int, collections.deque[float]] = collections.defaultdict(
            lambda: collections.deque(maxlen=100)
        )
        self.board: Any = None  # (rank 0, self-play) the score of the games the actors report
        if cfg.selfplay is not None and ctx.is_leader:
            from hpcrl.acting.selfplay import Scoreboard

            self.board = Scoreboard()

    def subscribers(self) -> list[int]:
        """(Lead) The ranks this group's weights go to (:func:`~hpcrl.roles.policy_set.policy_subscribers`)."""
        return policy_subscribers(self.cfg, self.ctx.topo, self.name)

    def make_frozen(self, attrs: dict[str, Any]) -> None:
        """(Rank 0) Build the frozen policies (their checkpoints and publishers)."""
        if self.ctx.is_leader:
            self.frozen = _Frozen(self.cfg, self.ctx, attrs)

    # ------------------------------------------------------------------ start-up
    def restore(self, rank: TrainerRank) -> None:
        """Resume every policy from one set (picked by rank 0), or start afresh (``init_from`` weights).

        Raises:
            CheckpointError: (rank 0) checkpoint files exist but no set can be resumed; the job aborts.
        """
        ctx = self.ctx
        text = ""
        if ctx.is_leader:
            from hpcrl.storage.checkpoint import CheckpointManager

            chosen: dict[str, str] = {}
            frames: int | None = None
            if not self.cfg.run.fresh:
                run = self.cfg.run
                managers = {
                    n: CheckpointManager(ctx.session.run_dir, keep=run.keep_checkpoints, policy=n) for n in self.order
                }
                frames, paths = choose_resume_set(managers, set(self.cfg.trainers))
                if frames is None:
                    rank.checkpoints.refuse_other_layout()
                chosen = {n: str(p) for n, p in paths.items()}
            text = json.dumps({"frames": frames or 0, "chosen": chosen})
            ctx.session.write_config()  # only now: a failed resume leaves the previous config.yaml as it was
        state = json.loads(Bcast_text(self.tall, text))
        mine = state["chosen"].get(self.name, "")
        if mine:
            rank.checkpoints.restore(Path(mine))
        elif self.leads and self.cfg.policies[self.name].init_from is not None:
            load_init_weights(rank.policy, self.name, self.cfg.policies[self.name])
        rank.learner.frames = int(state["frames"])
        self._set_frames = int(state["frames"]) if state["chosen"] else -1
        if self.frozen is not None:
            self.frozen.restore(state["chosen"])
        if self.pcomm.Get_size() > 1:
            if not mine and self.cfg.policies[self.name].init_from is not None:  # the lead's version too
                version = Bcast_text(self.pcomm, str(rank.policy.version))
                rank.policy.set_version(int(version))
            Bcast_state_dict(self.pcomm, rank.policy.state_dict())
        if mine or state["chosen"]:
            log.info("policy %r resumes at %d frames (version %d)", self.name, rank.learner.frames, rank.policy.version)

    def publish_first(self) -> None:
        """(Rank 0) Publish the frozen policies, once."""
        if self.frozen is not None:
            self.frozen.publish()

    # ------------------------------------------------------------------ the loop
    def service(self, rank: TrainerRank) -> None:
        """Every loop turn: rank 0 forwards its frame count; other ranks take it; leads serve save requests."""
        ctx = self.ctx
        if ctx.is_leader:
            if self.frozen is not None:
                self.frozen.progress()
            now = time.monotonic()
            if self.others and now - self._last_frames >= FRAMES_INTERVAL:
                self._last_frames = now
                for r in self.others:
                    ctx.post(r, {"type": "frames", "frames": int(rank.learner.frames)})
            return
        rank.learner.frames = max(rank.learner.frames, ctx.leader_frames)
        self._serve_saves(rank)

    def _serve_saves(self, rank: TrainerRank) -> None:
        """(Leads of the other groups) Save as rank 0 asked, each at its set's frame count."""
        ctx = self.ctx
        if not self.leads:
            ctx.save_requests.clear()
            return
        rank.checkpoints.collect()
        while ctx.save_requests:
            msg = ctx.save_requests.pop(0)
            current, frames = rank.learner.frames, int(msg.get("frames", 0))
            rank.learner.frames = frames  # the set's frame count: rank 0's when it asked
            rank.checkpoints.save(str(msg.get("reason", "periodic")))
            rank.learner.frames = max(current, frames)

    def after_step(self, rank: TrainerRank) -> None:
        """(Rank 0) After a trainer step: a checkpoint set when the cadence says so.

        A set waits until the frame count has moved on from the newest set's (rank 0 counts the frames the
        actors report, twice a second), so that every set has a frame count of its own and a resume never
        mixes the files of two sets.
        """
        rank.checkpoints.collect()
        if rank.checkpoints.due() and rank.learner.frames > self._set_frames:
            self.save_all(rank, "periodic")

    def serve(self, rank: TrainerRank, request: tuple[str, float]) -> None:
        """(Rank 0) A checkpoint request (SIGUSR2): a set, unless one was taken after it was made.

        Like a periodic set, it waits until the frame count has moved on from the newest set's.
        """
        if request[1] > rank.checkpoints.state_time and rank.learner.frames > self._set_frames:
            log.info("checkpoint requested by %s", request[0])
            self.save_all(rank, "request")

    def save_all(self, rank: TrainerRank, reason: str) -> None:
        """(Rank 0) Save a set: every lead saves its policy at rank 0's frame count; the frozen ones here."""
        frames = self._set_frames = int(rank.learner.frames)
        for r in self.leads_others:
            self.ctx.post(r, {"type": "save", "frames": frames, "reason": reason})
        rank.checkpoints.save(reason)
        if self.frozen is not None:
            self.frozen.save(reason, frames)

    # ------------------------------------------------------------------ the end
    def final(self, rank: TrainerRank, finished: bool, idle: Any) -> None:
        """Every trainer rank: agree on the final frame count (rank 0's) and save the final set.

        Raises:
            WaitTimeout: never (no timeout); a dead rank is named by the heartbeats meanwhile.
        """
        if not self.ctx.is_leader:
            self._serve_saves(rank)  # a set rank 0 asked for before it said stop
        mine = int(rank.learner.frames) if self.ctx.is_leader else 0
        done, frames = Iallreduce_step(self.tall, finished and self.ctx.is_leader, mine, idle)
        if not self.ctx.is_leader:
            self._serve_saves(rank)  # one that arrived meanwhile (the final set supersedes it anyway)
        reason = "final" if done else "stop"
        if self.leads:
            rank.learner.frames = frames
            rank.checkpoints.save(reason)
        if self.frozen is not None:
            self.frozen.save(reason, frames)

    def finish(self, idle: Any) -> None:
        """(Rank 0) Flush the frozen policies' publications."""
        if self.frozen is not None:
            self.frozen.finish(idle)

    def close(self) -> None:
        """Finish the frozen policies' background saves."""
        if self.frozen is not None:
            self.frozen.close()

    # ------------------------------------------------------------------ rank 0's bookkeeping
    def episodes(self, eps: list[Any], progress: Any = None) -> list[Any]:
        """(Rank 0) Keep every policy's returns; give back the episodes of this group's policy (progress line).

        Outside self-play (whose note is the score), ``progress``'s note shows every policy's mean return.
        """
        mine = []
        for e in eps:
            p = int(e[3]) if len(e) > 3 else self.index
            self.recent[p].append(float(e[0]))
            if p == self.index:
                mine.append(e)
        if progress is not None and self.board is None and len(self.order) > 1:
            progress.note = policy_returns_note(self.order, [self.recent.get(i, ()) for i in range(len(self.order))])
        return mine

    def games(self, rows: list[Any], frames: int, progress: Any) -> None:
        """(Rank 0) Count the self-play games an actor reported; trace them and show the score.

        Args:
            rows: ``[outcome, learner return, opponent return, opponent version, opponent index, learner
                version]`` per game.
            frames: the run's frame count now.
            progress: the progress line (None when off).
        """
        if self.board is None:
            return
        from hpcrl.acting.selfplay import Game

        trace = self.ctx.trace
        for outcome, mine, theirs, version, index, learner in rows:
            self.board.add(Game(int(outcome), float(mine), float(theirs), int(version), int(index)))
            if trace is not None:
                trace.selfplay_game(
                    {
                        "frames": frames,
                        "learner_version": int(learner),
                        "opponent_version": int(version),
                        "opponent_index": int(index),
                        "outcome": int(outcome),
                        "learner_return": float(mine),
                        "opponent_return": float(theirs),
                    }
                )
        rates = self.board.rates()
        if progress is not None and rates is not None:
            progress.note = (
                f"vs pool: win {rates['win']:.2f} draw {rates['draw']:.2f} loss {rates['loss']:.2f} "
                f"(last {len(self.board.recent)} games)"
            )

    def _selfplay_summary(self, finals: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """(Rank 0) The run summary's self-play entries; the pool is the first actor's (each actor keeps its own)."""
        from hpcrl.acting.selfplay import selfplay_summary

        assert self.cfg.selfplay is not None
        first = finals.get(self.ctx.topo.actors[0], {})
        pool = [int(v) for v in first.get("selfplay_pool_versions", [])]
        return selfplay_summary(self.board, pool, list(self.cfg.selfplay.fixed_opponents))

    def summary(self, rank: TrainerRank, finals: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """(Rank 0) The run summary's per-policy entries: versions, mean returns, newest checkpoints."""
        versions: dict[str, int | None] = {n: None for n in self.order}
        checkpoints: dict[str, str | None] = {n: None for n in self.order}
        for f in finals.values():
            if f.get("role") == "trainer" and f.get("policy") in versions and f.get("lead"):
                versions[f["policy"]] = f.get("policy_version")
                checkpoints[f["policy"]] = f.get("checkpoint")
        versions[self.name] = int(rank.policy.version)
        last = rank.checkpoints.last_checkpoint
        checkpoints[self.name] = str(last) if last else None
        if self.frozen is not None:
            for name, policy, ck, _ in self.frozen.entries:
                versions[name] = int(policy.version)
                checkpoints[name] = str(ck.last_checkpoint) if ck.last_checkpoint else None
        returns = {
            n: round(float(np.mean(self.recent[i])), 4) if self.recent.get(i) else None
            for i, n in enumerate(self.order)
        }
        out = {"policy_versions": versions, "mean_return_by_policy": returns, "checkpoint": checkpoints}
        if self.board is not None:
            out.update(self._selfplay_summary(finals))
        return out

    def final_stats(self, rank: TrainerRank) -> dict[str, Any]:
        """This rank's entries in its ``final`` stats message (the leads' go into rank 0's summary)."""
        last = rank.checkpoints.last_checkpoint
        return {
            "policy": self.name,
            "lead": self.leads,
            "policy_version": int(rank.policy.version),
            "checkpoint": str(last) if last else None,
        }
