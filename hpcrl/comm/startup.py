"""Start-up collectives, all buffer calls (no pickle): a text broadcast, the rank table, the trainers' first weights.

Every function here is collective over the communicator it is given: every rank of it must call it, in
the same order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "RANK_ENTRY_NBYTES",
    "Bcast_state_dict",
    "Bcast_text",
    "Gather_rank_table",
    "IntAnnouncement",
    "Split_trainers",
]

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

            value.copy_(torch.from_numpy(buf).reshape(value.shape))  # ascontiguousarray makes 0-d values 1-d
        elif isinstance(value, np.ndarray) and buf is not value:
            value[...] = buf.reshape(value.shape)


class IntAnnouncement:
    """One int64 that ``root`` announces to every rank whenever it is ready: a non-blocking ``Ibcast``.

    Built collectively (``comm.Dup()``, so this broadcast never interleaves with other collectives on
    ``comm``). Every other rank posts its receive at once and polls :meth:`test` while it does other work;
    ``root`` calls :meth:`announce` when it knows the value. The broadcast runs as MPI's tree: the root sends
    O(log ranks) messages, not one per rank. Every rank calls :meth:`close` before it leaves (it waits for
    the broadcast to complete, so ``root`` must have announced by then).

    Args:
        comm: the communicator (collective: every rank of it builds one, at the same point).
        root: the announcing rank.
    """

    def __init__(self, comm: Any, root: int = 0) -> None:
        self.comm = comm.Dup()
        self.root = root
        self.buf = np.zeros(1, np.int64)
        self.value: int | None = None
        """The announced value, once :meth:`test` saw it arrive (on ``root``: once announced)."""
        self._req: Any = None if self.comm.Get_rank() == root else self.comm.Ibcast(self.buf, root=root)

    def announce(self, value: int) -> None:
        """(Root) Send ``value`` to every rank (non-blocking; progressed by :meth:`test` and :meth:`close`)."""
        self.buf[0] = value
        self.value = int(value)
        self._req = self.comm.Ibcast(self.buf, root=self.root)

    def _progress(self) -> bool:
        """Progress the broadcast; True once it has completed on this rank."""
        if self._req is not None and self._req.Test():
            self._req = None
            if self.value is None:
                self.value = int(self.buf[0])
        return self._req is None

    def test(self) -> int | None:
        """Progress the broadcast; the value once it has arrived here (on ``root``: once announced), else None."""
        self._progress()
        return self.value

    def close(self, timeout: float, on_idle: Any = None) -> None:
        """Complete the broadcast (polling ``on_idle`` meanwhile) and free the duplicate communicator.

        A root that never announced announces 0 here, so that no rank waits for it forever.

        Raises:
            WaitTimeout: it did not complete within ``timeout`` seconds.
        """
        from hpcrl.comm.polling import wait_for

        if self.comm is None:
            return
        if self.comm.Get_rank() == self.root and self.value is None:
            self.announce(0)
        wait_for(
            lambda: True if self._progress() else None,
            "every rank to take the start-up broadcast of the frame budget",
            None,
            timeout,
            on_idle,
        )
        self.comm.Free()
        self.comm = None
