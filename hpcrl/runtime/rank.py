"""What every MPI rank does besides its role: control messages, stop agreement, heartbeats, drain."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from hpcrl.api import config
from hpcrl.comm import control
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.fanin import poll_any
from hpcrl.comm.mpi import node_name
from hpcrl.comm.nodes import NodeMap
from hpcrl.comm.polling import Backoff, wait_for
from hpcrl.comm.startup import IntAnnouncement
from hpcrl.comm.tags import Tag
from hpcrl.comm.topology import Topology
from hpcrl.runtime import budget
from hpcrl.runtime.session import Session, StopFlag

__all__ = ["RankContext", "RankFailure", "WeightsFollower", "stats_interval"]

log = logging.getLogger(__name__)

#: seconds between statistics reports to the leader (the shortest; see :func:`stats_interval`).
STATS_INTERVAL = 0.5
#: statistics reports per second the leader is asked to take in at most, whatever the rank count.
STATS_PER_SECOND = 4000


def stats_interval(world_size: int) -> float:
    """Seconds between two statistics reports of one rank: 0.5 s, longer past 2,000 ranks.

    The leader handles every report (about 15 us of CPU each), so the interval grows with the rank count
    to keep that work at most :data:`STATS_PER_SECOND` reports per second (~6 % of the leader's time)
    instead of growing with the ranks: 4 s at 16,384 ranks.

    >>> stats_interval(64), stats_interval(16384)
    (0.5, 4.096)
    """
    return max(STATS_INTERVAL, world_size / STATS_PER_SECOND)


#: Seconds between two control-plane polls of :meth:`RankContext.service` (more frequent calls return at once).
SERVICE_INTERVAL = 10e-3
#: seconds the drain at shutdown may take before the rank gives up (and aborts).
DRAIN_TIMEOUT = 120.0


class WeightsFollower:
    """Keeps a policy on the newest parameters the trainer leader published (inference ranks, inline actors).

    With ``layout.weights: per_node`` and more than one subscriber on this rank's node, the parameters
    come from the node's shared window (:class:`~hpcrl.comm.nodeparams.NodeParamSubscriber`), and the
    node's receiver also feeds the window from its control-plane service; otherwise from this rank's own
    :class:`~hpcrl.comm.params.ParamSubscriber`.
    """

    def __init__(self, ctx: RankContext, policy: Any) -> None:
        from hpcrl.comm.params import ParamSubscriber

        self.policy = policy
        self.ctx = ctx
        self.subscriber: Any = None
        self.node: Any = None
        peers = self.peers(ctx)
        if len(peers) > 1:
            from hpcrl.comm.nodeparams import NodeParamSubscriber

            self.node = NodeParamSubscriber(ctx.comm, ctx.node_comm, ctx.topo.leader, peers)
        else:
            self.subscriber = ParamSubscriber(ctx.comm, ctx.topo.leader)

    @staticmethod
    def peers(ctx: RankContext) -> tuple[int, ...]:
        """This rank's node's weight subscribers under ``layout.weights: per_node`` (just this rank otherwise).

        Only a rank that subscribes to parameters asks; without a node communicator (built without MPI) or
        with ``flat`` weights, every subscriber is on its own.
        """
        if ctx.cfg.layout.weights != "per_node" or ctx.node_comm is None:
            return (ctx.rank,)
        from hpcrl.comm.nodeparams import node_subscribers

        return node_subscribers(ctx.topo.param_subscribers, ctx.nodes, ctx.rank)

    def _apply(self, version: int, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state)
        self.policy.set_version(version)

    def wait_first(self) -> None:
        """Block (servicing control messages) until the first publication, and load it.

        Per node, this is where the node's subscribers create their shared window together.
        """
        run = self.ctx.cfg.run
        timeout = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
        if self.node is not None:
            self.node.wait(self._apply, timeout=timeout, on_idle=self.ctx.service)
            if self.node.is_receiver:  # feed the node also while this rank waits elsewhere
                self.ctx.service_hooks.append(self.node.forward)
            return
        self._apply(*self.subscriber.wait(timeout=timeout, on_idle=self.ctx.service))

    def update(self) -> None:
        """Load the newest publication, if one arrived (non-blocking)."""
        if self.node is not None:
            self.node.poll(self._apply)
            return
        got = self.subscriber.poll()
        if got is not None:
            self._apply(*got)

    def discard(self) -> None:
        """Receive and drop publications (during shutdown; a node's receiver still feeds its window)."""
        if self.node is not None:
            self.node.drain()
        else:
            self.subscriber.poll()

    def close(self) -> None:
        """Cancel the posted receive (and free the node's window: collective over the node's subscribers)."""
        if self.node is not None:
            if self.node.forward in self.ctx.service_hooks:
                self.ctx.service_hooks.remove(self.node.forward)
            self.node.close()
        else:
            self.subscriber.close()


class RankFailure(RuntimeError):
    """Another rank is dead or silent (the message names its rank, role and host)."""


class RankContext:
    """Per-rank plumbing shared by the actor, inference and trainer roles.

    Args:
        cfg: the experiment.
        comm: the world communicator.
        topo: the topology.
        stop: set by signal handlers (SIGTERM/SIGUSR1) on this rank.
        session: run dir, trace file.
        nodes: the node of every rank (default: all on one node).
        node_comm: this rank's node communicator.
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        comm: Any,
        topo: Topology,
        stop: StopFlag,
        session: Session,
        nodes: NodeMap | None = None,
        node_comm: Any = None,
    ) -> None:
        self.cfg = cfg
        self.comm = comm
        self.topo = topo
        self.nodes = nodes if nodes is not None else NodeMap.single(topo.world_size)
        """The node of every rank."""
        self.node_comm = node_comm
        """This rank's node communicator (``None`` when built without one, e.g. in unit tests)."""
        self.rank = int(comm.Get_rank())
        self.role = topo.role_of(self.rank)
        self.leader = topo.leader
        self.is_leader = topo.is_leader(self.rank)
        self.stop = stop
        self.session = session
        self.trace = session.trace
        self.host = node_name()
        self.stopping = False
        """The leader said stop (non-leaders) / the trainers agreed to stop (leader)."""
        self.stop_reason = ""
        self.frame_budget: int | None = None
        """(Actors) env steps this rank may take in this run: its share of the frames left, which the leader
        broadcasts once (:meth:`announce_frames_left`)."""
        self._actor_index = topo.actors.index(self.rank) if self.role == "actor" else -1
        self._frames_left = IntAnnouncement(comm, topo.leader)  # collective: every rank builds it here
        self._stop_forwarded = False
        self._checkpoint_forwarded = 0.0  # time of the newest checkpoint request sent to the leader
        self._hb_interval = cfg.run.heartbeat_seconds / 4 if cfg.run.heartbeat_seconds > 0 else 0.0
        self._last_hb_sent = 0.0
        self._next_silence_check = 0.0
        self._next_service = 0.0
        now = time.monotonic()
        self.started = now
        self.last_seen: dict[int, float | None] = {r: None for r in range(topo.world_size) if r != self.rank}
        self.hosts: dict[int, str] = {}
        self.on_stats: Callable[[int, dict[str, Any]], None] | None = None
        self.backoff = Backoff()
        self.service_hooks: list[Callable[[], None]] = []
        self.eval_request: dict[str, Any] | None = None
        """(The evaluating actor) the leader's newest request for an evaluation during training, until taken."""
        """Called by every :meth:`service` poll (e.g. a node's weight receiver feeding its window)."""
        self.leader_frames = 0
        """(Multi-policy trainer ranks outside the leader's group) the newest frame count the leader forwarded."""
        self.save_requests: list[dict[str, Any]] = []
        """(Multi-policy group leaders) the leader's requests for a checkpoint at one frame count, until taken."""

    def announce_frames_left(self, frames: int) -> None:
        """(Leader) Broadcast the frames left to run; each actor takes its share (:func:`budget.actor_share`)."""
        self._frames_left.announce(frames)

    # ------------------------------------------------------------------ naming
    def wait_frame_budget(self) -> int:
        """Wait (servicing control messages) for this actor's share of the frames, sent by the leader at start.

        Returns 0 when the run stops first.

        Raises:
            WaitTimeout: no budget within ``run.startup_seconds + run.heartbeat_seconds`` (names the leader).
        """
        run = self.cfg.run
        limit = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
        wait_for(
            lambda: True if self.frame_budget is not None or self.stopping else None,
            "the frame budget from the trainer leader",
            self.leader,
            limit,
            self.service,
        )
        return self.frame_budget if self.frame_budget is not None else 0

    def who(self, rank: int) -> str:
        """``rank 3 (actor on host)`` for messages."""
        host = self.hosts.get(rank)
        return f"rank {rank} ({self.topo.role_of(rank)}{' on ' + host if host else ''})"

    # ------------------------------------------------------------------ control plane
    def post(self, dest: int, msg: dict[str, Any], tag: int = Tag.CONTROL) -> None:
        """Send a small JSON control message (non-blocking)."""
        control.post_obj(self.comm, dest, msg, tag)

    def service(self) -> None:
        """Poll control messages, forward stop and checkpoint requests, send/check heartbeats. Cheap; call often.

        Calls within :data:`SERVICE_INTERVAL` of the last poll return at once (a loop may call it every
        iteration: an actor stepping a fast env would otherwise spend more time probing for control
        messages, which arrive a few times per second, than stepping).
        """
        now = time.monotonic()
        if now < self._next_service:
            return
        self._next_service = now + SERVICE_INTERVAL
        if self.frame_budget is None and self._frames_left.test() is not None and self._actor_index >= 0:
            left = int(self._frames_left.value or 0)
            self.frame_budget = budget.actor_share(left, len(self.topo.actors), self._actor_index)
        for hook in self.service_hooks:
            hook()
        for src, msg in self._poll_all():
            self.last_seen[src] = now
            kind = msg.get("type")
            if "host" in msg:
                self.hosts[src] = str(msg["host"])
            if kind == "stop" and not self.is_leader:
                if not self.stopping:
                    self.stopping = True
                    self.stop_reason = str(msg.get("reason", "leader"))
            elif kind == "stop_request" and self.is_leader:
                self.stop.set(f"{msg.get('reason', 'request')} on {self.who(src)}")
            elif kind == "checkpoint":
                self._checkpoint_requested(src, msg)
            elif kind == "evaluate":
                self.eval_request = msg
            elif kind == "frames":
                self.leader_frames = max(self.leader_frames, int(msg.get("frames", 0)))
            elif kind == "save":
                self.save_requests.append(msg)
            elif kind in ("stats", "final") and self.on_stats is not None:
                self.on_stats(src, msg)
        if self.stop.is_set() and not self.is_leader and not self._stop_forwarded:
            self._stop_forwarded = True
            self.post(self.leader, {"type": "stop_request", "reason": self.stop.reason})
        request = self.stop.checkpoint_request
        if request is not None and not self.is_leader and request[1] > self._checkpoint_forwarded:
            self._checkpoint_forwarded = request[1]
            self.post(self.leader, {"type": "checkpoint", "reason": request[0], "time": request[1]})
        self._beat(now)

    def _beat(self, now: float) -> None:
        """Send this rank's heartbeat when it is due, and check the peers it watches for silence."""
        if self._hb_interval:
            if now - self._last_hb_sent >= self._hb_interval:
                self._last_hb_sent = now
                peers = range(self.topo.world_size) if self.is_leader else [self.leader]
                for r in peers:
                    if r != self.rank:
                        self.post(r, {"type": "hb", "host": self.host}, Tag.HEARTBEAT)
            if now >= self._next_silence_check:  # the leader's check walks every rank: not on every poll
                self._next_silence_check = now + min(1.0, self._hb_interval / 4)
                self._check_silence(now)

    def _checkpoint_requested(self, src: int, msg: dict[str, Any]) -> None:
        """A ``checkpoint`` control message: the leader takes the request; another rank passes it on."""
        try:
            at = float(msg.get("time", time.time()))
        except (TypeError, ValueError):
            at = time.time()
        reason = str(msg.get("reason", "request"))
        if " on rank " not in reason:  # name the rank that asked, once
            reason = f"{reason} on {self.who(src)}"
        self.stop.request_checkpoint(reason, at)

    def _poll_all(self) -> list[tuple[int, dict[str, Any]]]:
        out = control.poll_obj(self.comm, Tag.CONTROL)
        out += control.poll_obj(self.comm, Tag.HEARTBEAT)
        if self.is_leader:
            out += control.poll_obj(self.comm, Tag.STATS)
        return out

    def _check_silence(self, now: float) -> None:
        limit = self.cfg.run.heartbeat_seconds
        watch = self.last_seen.keys() if self.is_leader else [self.leader]
        silent: dict[int, float] = {}
        for r in watch:
            seen = self.last_seen[r]
            if seen is None:  # not heard from yet: still starting (imports, model build, restore)
                limit0 = self.cfg.run.startup_seconds
                if now - self.started > limit0:
                    raise RankFailure(
                        f"{self.who(r)} has not reported within {limit0:g} s of start (run.startup_seconds): "
                        f"it is hung or dead; aborting the job"
                    )
                continue
            silent[r] = now - seen
        if silent and max(silent.values()) > limit:
            raise RankFailure(self._silence_message(silent, limit))

    def _silence_message(self, silent: dict[int, float], limit: float) -> str:
        """Name every rank that has gone silent, not only the first past the limit.

        A lost node silences all its ranks at once; they cross the limit within one heartbeat interval
        (``limit / 4``) of each other, while a live rank is never silent for more than about one interval.
        So every rank silent for more than half the limit is named, with its node, and a node whose every
        rank is among them is called out.
        """
        lost = sorted(r for r, s in silent.items() if s > limit / 2)
        longest = max(silent[r] for r in lost)
        if len(lost) == 1:
            return (
                f"{self.who(lost[0])} has been silent for {longest:.0f} s (run.heartbeat_seconds={limit:g}): "
                f"it is hung or dead; aborting the job"
            )
        shortest = min(silent[r] for r in lost)
        span = f"{longest:.0f}" if round(shortest) == round(longest) else f"{shortest:.0f}-{longest:.0f}"
        names = ", ".join(self.who(r) for r in lost)
        hint = ""
        if self.hosts:
            nodes = sorted({self.hosts[r] for r in lost if r in self.hosts})
            whole = [h for h in nodes if all(r in lost for r, rh in self.hosts.items() if rh == h and r != self.rank)]
            if whole:
                hint = f"; every rank on {', '.join(whole)} is silent: is the node down or hung?"
        return (
            f"{len(lost)} ranks have been silent for {span} s (run.heartbeat_seconds={limit:g}): "
            f"{names}; they are hung or dead{hint}; aborting the job"
        )

    # ------------------------------------------------------------------ evaluation during training
    def serve_eval_request(self, evaluate: Callable[[int, str], dict[str, Any] | None]) -> bool:
        """(Actor) Run the evaluation the leader asked for, if it did, and report its result to the leader.

        Args:
            evaluate: runs the evaluation, given the run's frames and who runs it (``actor rank 3``);
                returns the result, or None when the run stopped meanwhile.

        Returns:
            Whether a result was reported.
        """
        request = self.eval_request
        if request is None:
            return False
        self.eval_request = None
        t0 = time.perf_counter()
        result = evaluate(int(request.get("frames", 0)), f"actor rank {self.rank}")
        if result is None:
            return False  # the run is stopping
        self.send_stats({"type": "stats", "eval": result})
        if self.trace is not None:
            self.trace.add_time("evaluation", time.perf_counter() - t0)
        return True

    # ------------------------------------------------------------------ stats
    def send_stats(self, msg: dict[str, Any]) -> None:
        """Report statistics to the leader (JSON)."""
        msg.setdefault("type", "stats")
        msg["host"] = self.host
        if self.is_leader and self.on_stats is not None:
            self.on_stats(self.rank, msg)
        else:
            self.post(self.leader, msg, Tag.STATS)

    # ------------------------------------------------------------------ shutdown
    def broadcast_stop(self, reason: str) -> None:
        """(Leader) tell every non-trainer rank to stop."""
        for r in range(self.topo.world_size):
            if r not in self.topo.trainers:
                self.post(r, {"type": "stop", "reason": reason})

    def drain(
        self,
        recv: Sequence[RecvChannel],
        send: Sequence[SendChannel],
        extra: Callable[[], None] | None = None,
        finish_sends: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Finish this rank's communication so every rank can exit together.

        Keeps receiving (and discarding) data while its own sends complete, then waits in a
        non-blocking barrier that every rank reaches only after its sends are done, then
        cancels its posted receives. Heartbeats go on until the barrier completes, so a rank that died
        meanwhile (a node lost while the job stops, when the launcher leaves the survivors running) is
        named after ``run.heartbeat_seconds`` instead of holding every rank until the drain times out.

        Args:
            recv: channels to keep servicing (messages are discarded).
            send: channels whose outstanding sends must complete.
            extra: more polling to do while waiting (e.g. a parameter subscriber).
            finish_sends: waits for other outstanding sends (e.g. parameter publication), given the idle callback.
        """
        watching = [True]  # until the shutdown barrier completes; then peers may leave at any moment

        def idle() -> None:
            poll_any(recv)
            if extra is not None:
                extra()
            now = time.monotonic()
            for src, msg in self._poll_all():
                self.last_seen[src] = now
                if msg.get("type") == "final" and self.on_stats is not None:
                    self.on_stats(src, msg)
            if watching[0]:
                self._beat(now)

        deadline = time.monotonic() + DRAIN_TIMEOUT
        for ch in send:
            ch.flush(timeout=max(1.0, deadline - time.monotonic()), on_idle=idle)
        if finish_sends is not None:
            finish_sends(idle)
        control.flush_obj(timeout=max(1.0, deadline - time.monotonic()), on_idle=idle)
        self._frames_left.close(max(1.0, deadline - time.monotonic()), idle)
        req = self.comm.Ibarrier()
        wait_for(
            lambda: True if req.Test() else None,
            "every rank to finish its sends (shutdown barrier)",
            None,
            max(1.0, deadline - time.monotonic()),
            idle,
        )
        watching[0] = False
        # Messages sent eagerly complete before they are received: take everything still queued
        # (MPICH fails MPI_Finalize on unmatched messages) until the channels stay quiet for a moment.
        quiet = 0
        for _ in range(100_000):
            got = poll_any(recv)
            idle()
            if got:
                quiet = 0
                continue
            quiet += 1
            if quiet >= 4:
                break
            time.sleep(0.005)
        for rch in recv:
            rch.close()
        control.cancel_obj()
