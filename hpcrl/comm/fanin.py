"""Receiving from many channels at once: one ``Testsome`` over all posted receives (inference and trainer ranks).

Examples:
    An inference rank serving its actors (one :class:`~hpcrl.comm.channel.RecvChannel` each)::

        for channel, msg in recv_any(requests, timeout=60):
            reply(channel.source, msg.data)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpcrl.comm.mpi import load_mpi
from hpcrl.comm.polling import Backoff, OnIdle, wait_for
from hpcrl.comm.wire import Message

if TYPE_CHECKING:
    from mpi4py import MPI

    from hpcrl.comm.channel import RecvChannel

__all__ = ["poll_any", "recv_any"]

# Status objects Testsome fills in (reused: one per channel of the largest poll so far; a rank polls
# from one thread). A channel's completed() reads its status before anything else tests.
_statuses: list[Any] = []


def poll_any(channels: Sequence[RecvChannel], copy: bool = False) -> list[tuple[RecvChannel, Message]]:
    """Non-blocking receive on many channels at once (one ``Testsome`` over all posted receives).

    Returns at most one message per channel per call; a channel with more queued messages returns the
    next one on the next call. Each message is valid until the next receive on its channel.

    Args:
        channels: the channels to poll (e.g. one per actor of an inference rank).
        copy: see :meth:`RecvChannel.test`.

    Returns:
        ``(channel, message)`` for every channel that had a message, in the order of ``channels``.

    Raises:
        ChannelError: a malformed message on any of the channels (naming that channel).
    """
    if not channels:
        return []
    posted: list[RecvChannel] = []
    reqs: list[MPI.Request] = []
    out: dict[int, tuple[RecvChannel, Message]] = {}
    for pos, ch in enumerate(channels):
        req = ch.posted
        if req is not None:
            posted.append(ch)
            reqs.append(req)
        else:  # nothing posted yet, or a schema handshake under way: the channel's own test
            msg = ch.test(copy)
            if msg is not None:
                out[pos] = (ch, msg)
    if posted:
        while len(_statuses) < len(reqs):
            _statuses.append(load_mpi().Status())
        statuses = _statuses[: len(reqs)]  # filled in completion order
        try:
            indices = reqs[0].Testsome(reqs, statuses)  # (a class method of MPI.Request)
        except load_mpi().Exception:
            # MPI_ERR_IN_STATUS: the completed requests were nulled (persistent ones: made inactive, for
            # which Get_status reports completion) in place; their statuses come first.
            done = [ch for ch, r in zip(posted, reqs) if not r or r.Get_status()]
            for k, ch in enumerate(done):
                ch.completed(statuses[k], copy, check_error=True)  # raises for the failed one
            raise
        positions = {id(ch): pos for pos, ch in enumerate(channels)}
        for k, i in enumerate(indices or ()):
            ch = posted[i]
            msg = ch.completed(statuses[k], copy)
            if msg is None:  # a schema announcement: its JSON and maybe the next message are there too
                msg = ch.test(copy)
            if msg is not None:
                out[positions[id(ch)]] = (ch, msg)
    return [out[p] for p in sorted(out)]


def recv_any(
    channels: Sequence[RecvChannel],
    timeout: float | None = None,
    copy: bool = False,
    on_idle: OnIdle | None = None,
    backoff: Backoff | None = None,
) -> list[tuple[RecvChannel, Message]]:
    """Wait (without busy-spinning) until at least one of ``channels`` has a message; see :func:`poll_any`.

    Raises:
        WaitTimeout: nothing arrived within ``timeout``.
        ChannelError: a malformed message on any of the channels.
    """
    sources = sorted({ch.source for ch in channels})
    what = f"a message on any of {len(channels)} channel(s) from rank(s) {sources}"
    return wait_for(lambda: poll_any(channels, copy) or None, what, None, timeout, on_idle, backoff)
