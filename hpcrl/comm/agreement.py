"""The trainer ranks' per-step agreement: step together or stop together, with the leader's frame count.

One non-blocking ``Iallreduce`` (MAX) of ``[stop flag, frames]`` per trainer step; a buffer call, no pickle.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrl.comm.polling import OnIdle, wait_for

__all__ = ["Iallreduce_step"]


def Iallreduce_step(comm: Any, want_stop: bool, frames: int, on_idle: OnIdle | None = None) -> tuple[bool, int]:
    """Agree at a step boundary over ``comm`` (collective: every rank of it must call it).

    Args:
        comm: the trainer communicator.
        want_stop: this rank wants to stop.
        frames: this rank's frame count (frames only grow, and no trainer rank's count is ahead of the
            leader's, so the MAX is the leader's).
        on_idle: called while the reduction is in flight (keep receiving samples, service control messages).

    Returns:
        ``(stop, frames)``: whether any rank wants to stop, and the largest frame count (the leader's).
    """
    from mpi4py import MPI

    send = np.array([1.0 if want_stop else 0.0, float(frames)])
    recv = np.zeros(2)
    req = comm.Iallreduce(send, recv, op=MPI.MAX)
    wait_for(
        lambda: True if req.Test() else None, "the other trainer ranks to reach a step boundary", None, None, on_idle
    )
    return bool(recv[0] > 0), int(recv[1])
