"""Multi-rank mode: set up the run on every rank and hand each rank its role."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from hpcrl.api import config
from hpcrl.comm.mpi import node_name
from hpcrl.comm.topology import Topology
from hpcrl.roles.rank import RankContext
from hpcrl.roles.session import Session, StopFlag, write_text_atomic

__all__ = ["run_rank"]

log = logging.getLogger(__name__)


def _rank_table(comm: Any, role: str) -> list[dict[str, Any]] | None:
    """Gather every rank's role, host and pid on rank 0 (fixed-size byte buffers, no pickle)."""
    size = 256
    me = json.dumps({"rank": int(comm.Get_rank()), "role": role, "host": node_name(), "pid": os.getpid()})
    raw = me.encode()[:size].ljust(size, b" ")
    send = np.frombuffer(raw, np.uint8).copy()
    recv = np.empty(size * comm.Get_size(), np.uint8) if comm.Get_rank() == 0 else None
    comm.Gather(send, recv, root=0)
    if recv is None:
        return None
    return [json.loads(recv[i * size : (i + 1) * size].tobytes().decode()) for i in range(comm.Get_size())]


def run_rank(cfg: config.ExperimentConfig, comm: Any, topo: Topology, stop: StopFlag) -> dict[str, Any] | None:
    """Run this rank's role; returns the run summary on the leader, None elsewhere.

    The leader prepares the run directory first (any error there aborts the job before
    training starts); every rank then opens its own trace file.
    """
    from hpcrl.roles.common import import_user_modules, resolve_experiment

    import_user_modules(cfg)
    cfg, agents = resolve_experiment(cfg)
    rank = int(comm.Get_rank())
    role = topo.role_of(rank)
    tcomm = comm.Split(0 if role == "trainer" else 1, rank)
    session = Session(cfg, rank, role, topo.world_size, leader=topo.is_leader(rank), open_trace=False)
    table = _rank_table(comm, role)  # also the barrier after the leader prepared the run dir
    session.open_trace()
    ctx = RankContext(cfg, comm, topo, stop, session)
    if table is not None:
        ctx.hosts.update({int(e["rank"]): str(e["host"]) for e in table})
        log.info("%s", topo.describe())
        for e in table:  # the launcher names dead processes by pid only: map pids to ranks and roles here
            log.info("rank %d: %s on %s, pid %d", e["rank"], e["role"], e["host"], e["pid"])
        write_text_atomic(session.run_dir / "ranks.json", json.dumps(table, indent=1))
    try:
        if role == "trainer":
            from hpcrl.roles.trainer import TrainerRank

            result = TrainerRank(ctx, tcomm, agents).run()
        elif role == "inference":
            from hpcrl.roles.inference import InferenceRank

            result = InferenceRank(ctx, agents).run()
        else:
            from hpcrl.roles.actor import ActorRank

            result = ActorRank(ctx, agents).run()
    finally:
        session.close()
    tcomm.Free()
    return result if topo.is_leader(rank) else None
