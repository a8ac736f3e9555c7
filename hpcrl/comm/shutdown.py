"""Orderly end of a rank's communication: drain receivers while sends complete, then a non-blocking barrier.

Works with anything that has the small interfaces below (``SendChannel``, ``RecvChannel``, the parameter
publisher and subscriber); re-exported by :mod:`hpcrl.comm.channel`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from hpcrl.comm.polling import OnIdle, wait, wait_for

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["drain_and_close"]


class _Sender(Protocol):
    @property
    def pending(self) -> int: ...

    def close(self) -> None: ...


class _Receiver(Protocol):
    def drain(self) -> int: ...

    def close(self) -> None: ...


def drain_and_close(
    comm: MPI.Comm,
    senders: Iterable[_Sender] = (),
    receivers: Iterable[_Receiver] = (),
    timeout: float | None = 60.0,
    on_idle: OnIdle | None = None,
) -> None:
    """Orderly shutdown of one rank's channels; collective: every rank of ``comm`` must call it.

    Call it after this rank's last send. It (1) keeps draining ``receivers`` while this rank's sends
    (``senders``, e.g. :class:`SendChannel` and ``ParamPublisher``, and the control outbox) complete,
    (2) enters a non-blocking barrier and keeps draining until every rank got there, so no message is
    left in flight anywhere, then (3) drains once more and closes everything. Messages drained here are
    dropped. With MPICH a large message that is never received makes ``MPI_Finalize`` fail, so every
    rank should end its communication this way.

    Args:
        comm: the communicator all ranks call this on (normally ``COMM_WORLD``).
        senders: objects with ``pending`` and ``close()``.
        receivers: objects with ``drain()`` and ``close()`` (``RecvChannel``, ``ParamSubscriber``).
        timeout: seconds for each of the two waiting phases; ``None`` waits forever.
        on_idle: called while waiting (poll control messages here: large unreceived control messages
            would keep their senders waiting).

    Raises:
        WaitTimeout: sends did not complete, or some rank did not reach the barrier, within ``timeout``.
    """
    from hpcrl.comm.control import pending_obj

    senders, receivers = list(senders), list(receivers)

    def step() -> None:
        for r in receivers:
            r.drain()
        if on_idle is not None:
            on_idle()

    def sent() -> bool | None:
        return True if all(s.pending == 0 for s in senders) and pending_obj() == 0 else None

    rank = comm.Get_rank()
    wait_for(sent, f"rank {rank}'s sends to complete at shutdown", None, timeout, step)
    barrier = comm.Ibarrier()
    wait(barrier, f"every rank to finish sending at shutdown (rank {rank} waiting)", None, timeout, step)
    step()
    for s in senders:
        s.close()
    for r in receivers:
        r.close()
