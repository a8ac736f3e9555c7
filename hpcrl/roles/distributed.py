"""Multi-rank mode: set up the run on every rank and hand each rank its role."""

from __future__ import annotations

import logging
from typing import Any

from hpcrl.api import config
from hpcrl.comm.topology import Topology
from hpcrl.roles.rank import RankContext
from hpcrl.roles.session import Session, StopFlag

__all__ = ["run_rank"]

log = logging.getLogger(__name__)


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
    comm.Barrier()
    session.open_trace()
    ctx = RankContext(cfg, comm, topo, stop, session)
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
