"""Multi-rank mode: set up the run on every rank and hand each rank its role."""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from hpcrl.api import config
from hpcrl.comm.mpi import node_name
from hpcrl.comm.nodes import Discover_nodes, NodeMap
from hpcrl.comm.startup import Bcast_text, Gather_rank_table, Split_trainers
from hpcrl.comm.topology import Topology
from hpcrl.runtime.rank import RankContext
from hpcrl.runtime.session import Session, StopFlag, write_text_atomic

__all__ = ["RunDirUnavailable", "run_rank"]

log = logging.getLogger(__name__)


class RunDirUnavailable(RuntimeError):
    """Raised on every rank together when the leader could not take the run dir (in use, not writable, ...).

    The message is the leader's error; ``hpcrl.run`` prints it once (from rank 0) and every rank exits 2.
    """


def _prepare_together(comm: Any, topo: Topology, session: Session) -> None:
    """The leader locks and prepares the run dir; every rank learns the outcome before touching it.

    Non-leaders wait in the broadcast, so nothing of theirs (trace files, ``errors.log``) can create the
    run dir, or anything in it, before the leader made it (0700) and holds its lock.

    Raises:
        RunDirUnavailable: on every rank, when the leader could not (its message).
    """
    from hpcrl.storage.tree import StorageError

    error = ""
    if session.leader:
        try:
            session.prepare()
        except StorageError as e:
            error = str(e) or type(e).__name__
    error = Bcast_text(comm, error, topo.leader)
    if error:
        raise RunDirUnavailable(error)
    session.attach()


def _rank_table(comm: Any, role: str, nodes: NodeMap) -> list[dict[str, Any]] | None:
    """Every rank's role, host, node index and pid, on rank 0 (None elsewhere)."""
    rank = int(comm.Get_rank())
    me = {"rank": rank, "role": role, "host": node_name(), "node": nodes.node_of[rank], "pid": os.getpid()}
    return Gather_rank_table(comm, me)


def run_rank(
    cfg: config.ExperimentConfig,
    comm: Any,
    topo: Topology,
    stop: StopFlag,
    nodes: NodeMap | None = None,
    node_comm: Any = None,
) -> dict[str, Any] | None:
    """Run this rank's role; returns the run summary on the leader, None elsewhere.

    ``nodes`` and ``node_comm`` come from :func:`hpcrl.comm.nodes.Discover_nodes` (discovered here, a
    collective over ``comm``, when not given).

    The leader locks and prepares the run directory first while the other ranks wait; if it cannot
    (another run holds it, not writable, another user's), every rank raises :class:`RunDirUnavailable`
    before touching it. Then every rank opens its own trace file. The leader holds the run dir lock
    until this returns or raises.
    """
    from hpcrl.runtime.components import import_user_modules, resolve_experiment

    if nodes is None or node_comm is None:
        nodes, node_comm = Discover_nodes(comm, node_name())
    import_user_modules(cfg)
    names: list[str] = []
    if cfg.multi_policy:
        from hpcrl.roles.local_multi import resolve_policies

        cfg, names = resolve_policies(cfg)
        agents = len(names)
    else:
        cfg, agents = resolve_experiment(cfg)
    rank = int(comm.Get_rank())
    role = topo.role_of(rank)
    session = Session(cfg, rank, role, topo.world_size, leader=topo.is_leader(rank), open_trace=False, prepare=False)
    try:
        _prepare_together(comm, topo, session)
        result = _run_role(cfg, comm, topo, stop, session, agents, nodes, node_comm, names)
    except BaseException:
        session.close(release=False)  # the abort hook appends to RUN_DIR/errors.log, then releases the lock
        raise
    session.close()
    return result


def _run_role(
    cfg: config.ExperimentConfig,
    comm: Any,
    topo: Topology,
    stop: StopFlag,
    session: Session,
    agents: int,
    nodes: NodeMap,
    node_comm: Any,
    names: list[str],
) -> dict[str, Any] | None:
    rank = int(comm.Get_rank())
    role = topo.role_of(rank)
    tcomm = Split_trainers(comm, topo.trainers)
    pcomm = None
    policy = topo.group_of(rank)
    if cfg.multi_policy and tcomm is not None:  # the communicator of this rank's trainer group (collective)
        assert policy is not None
        pcomm = tcomm.Split([n for n, _ in topo.groups].index(policy), rank)
    t0 = time.perf_counter()
    table = _rank_table(comm, role, nodes)
    session.open_trace()
    ctx_cfg = cfg
    if policy is not None:
        from hpcrl.roles.trainer_multi import trainer_view

        ctx_cfg = trainer_view(cfg, policy, len(topo.group_ranks(policy)))
    ctx = RankContext(ctx_cfg, comm, topo, stop, session, nodes, node_comm)
    if table is not None:
        ctx.hosts.update({int(e["rank"]): str(e["host"]) for e in table})
        # the launcher names dead processes by pid and host only: ranks.json maps them to ranks and roles
        path = session.run_dir / "ranks.json"
        write_text_atomic(path, json.dumps(table, indent=1))
        log.info("%s on %s; every rank's role, host and pid: %s", topo.describe(), nodes.describe(), path)
        if topo.node_count > 1:
            for line in topo.describe_nodes():
                log.info("%s", line)
        per_node = cfg.layout.inference_per_node
        if per_node is not None and cfg.layout.inference not in (0, len(topo.inference)):
            log.warning(
                "layout.inference=%d is not used: layout.inference_per_node=%d on %d node(s) gives %d inference ranks",
                cfg.layout.inference,
                per_node,
                topo.node_count,
                len(topo.inference),
            )
        warning = topo.placement_warning()
        if warning:
            log.warning("%s", warning)
        if ctx.trace is not None:  # the one start-up step whose work at rank 0 grows with the ranks
            ctx.trace.add_time("startup_rank_table", time.perf_counter() - t0)
    if tcomm is not None and pcomm is not None:
        from hpcrl.roles.trainer import TrainerRank
        from hpcrl.roles.trainer_multi import Group

        group = Group(cfg, ctx, names, tcomm, pcomm)
        result = TrainerRank(ctx, pcomm, agents, group).run()
        pcomm.Free()
        tcomm.Free()
    elif tcomm is not None:
        from hpcrl.roles.trainer import TrainerRank

        result = TrainerRank(ctx, tcomm, agents).run()
        tcomm.Free()
    elif role == "inference" and cfg.multi_policy:
        from hpcrl.roles.inference_multi import MultiInferenceRank

        result = MultiInferenceRank(ctx, names).run()
    elif role == "inference":
        from hpcrl.roles.inference import InferenceRank

        result = InferenceRank(ctx, agents).run()
    elif cfg.multi_policy:
        from hpcrl.roles.actor_multi import MultiActorRank

        result = MultiActorRank(ctx, names).run()
    else:
        from hpcrl.roles.actor import ActorRank

        result = ActorRank(ctx, agents).run()
    return result if topo.is_leader(rank) else None
