"""Start-up collectives, all buffer calls (no pickle): a text broadcast, the rank table, the trainers' first weights.

Every function here is collective over the communicator it is given: every rank of it must call it, in
the same order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["RANK_ENTRY_NBYTES", "Bcast_state_dict", "Bcast_text", "Gather_rank_table", "Split_trainers"]

#: bytes of one rank's JSON entry in the rank table (fixed size, so the gather needs no size exchange).
RANK_ENTRY_NBYTES = 256


def Split_trainers(comm: Any, trainers: tuple[int, ...] | list[int]) -> Any:
    """The communicator of the trainer ranks (``MPI_Comm_split``; collective over ``comm``).

    Args:
        comm: the world communicator.
        trainers: the trainer ranks of ``comm``.

    Returns:
        The trainer communicator on trainer ranks (rank order kept: the leader is its rank 0), ``None`` elsewhere.
    """
    from mpi4py import MPI

    rank = comm.Get_rank()
    is_trainer = rank in trainers
    sub = comm.Split(0 if is_trainer else MPI.UNDEFINED, rank)
    return sub if is_trainer else None


def Bcast_text(comm: Any, text: str, root: int = 0) -> str:
    """Broadcast a string from ``root`` as UTF-8 bytes: two ``Bcast`` calls (its length, then the bytes).

    Args:
        comm: the communicator.
        text: the string (read on ``root`` only).
        root: the sending rank.

    Returns:
        ``root``'s string, on every rank.
    """
    mine = comm.Get_rank() == root
    data = np.frombuffer(text.encode(), np.uint8) if mine else np.zeros(0, np.uint8)
    n = np.array([data.size], np.int64)
    comm.Bcast(n, root=root)
    buf = data.copy() if mine else np.empty(int(n[0]), np.uint8)
    comm.Bcast(buf, root=root)
    return buf.tobytes().decode()


def Gather_rank_table(comm: Any, entry: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Gather one small JSON entry per rank on rank 0 (one ``Gather`` of fixed-size byte buffers).

    Args:
        comm: the communicator.
        entry: this rank's entry (e.g. rank, role, host, pid); its JSON must fit :data:`RANK_ENTRY_NBYTES`.

    Returns:
        On rank 0, every rank's entry in rank order; None on the other ranks.

    Raises:
        ValueError: the entry's JSON is longer than :data:`RANK_ENTRY_NBYTES` bytes (raised on that rank
            before the gather; names the entry).
    """
    raw = json.dumps(dict(entry)).encode()
    if len(raw) > RANK_ENTRY_NBYTES:
        raise ValueError(f"rank table entry {raw[:80]!r}... is {len(raw)} bytes, at most {RANK_ENTRY_NBYTES} fit")
    send = np.frombuffer(raw.ljust(RANK_ENTRY_NBYTES, b" "), np.uint8).copy()
    size = int(comm.Get_size())
    recv = np.empty(RANK_ENTRY_NBYTES * size, np.uint8) if comm.Get_rank() == 0 else None
    comm.Gather(send, recv, root=0)
    if recv is None:
        return None
    n = RANK_ENTRY_NBYTES
    return [json.loads(recv[i * n : (i + 1) * n].tobytes().decode()) for i in range(size)]


def Bcast_state_dict(comm: Any, state_dict: Mapping[str, Any], root: int = 0) -> None:
    """Make every rank's ``state_dict`` values equal to ``root``'s, in place: one ``Bcast`` per value.

    Used once at start-up, so that every trainer rank starts from the leader's (possibly resumed) weights.
    Every rank must hold the same names, shapes and dtypes in the same order. torch tensors (any device)
    are copied into in place; numpy arrays are overwritten in place.

    Args:
        comm: the communicator (the trainer ranks).
        state_dict: name -> tensor or numpy array.
        root: the rank whose values everyone gets.
    """
    receiver = comm.Get_rank() != root
    for value in state_dict.values():
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        buf = np.ascontiguousarray(arr)
        comm.Bcast(buf, root=root)
        if not receiver:
            continue
        if hasattr(value, "copy_"):
            import torch

            value.copy_(torch.from_numpy(buf))
        elif isinstance(value, np.ndarray) and buf is not value:
            value[...] = buf
