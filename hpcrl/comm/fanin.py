"""Receiving from many channels at once: one ``Testsome`` over all posted receives (inference and trainer ranks).

Examples:
    An inference rank serving its actors (one :class:`~hpcrl.comm.channel.RecvChannel` each)::

        for channel, msg in recv_any(requests, timeout=60):
            reply(channel.source, msg.data)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hpcrl.comm.polling import Backoff, OnIdle, wait_for
from hpcrl.comm.wire import Message

if TYPE_CHECKING:
    from hpcrl.comm.channel import RecvChannel

__all__ = ["poll_any", "recv_any"]


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
    mpi: Any = channels[0]._mpi
    posted: list[RecvChannel] = []
    out: dict[int, tuple[RecvChannel, Message]] = {}
    for pos, ch in enumerate(channels):
        if ch._req is not None and ch._awaiting is None and not ch._closed:
            posted.append(ch)
        else:
            msg = ch.test(copy)
            if msg is not None:
                out[pos] = (ch, msg)
    if posted:
        reqs = [ch._req for ch in posted]
        statuses = [ch._status for ch in posted]  # scratch: Testsome fills them in completion order
        try:
            indices = mpi.Request.Testsome(reqs, statuses)
        except mpi.Exception:
            # MPI_ERR_IN_STATUS: the completed requests were nulled (persistent ones: made inactive, for
            # which Get_status reports completion) in place; their statuses come first.
            done = [ch for ch in posted if not ch._req or ch._req.Get_status()]
            for k, ch in enumerate(done):
                ch._req = None
                ch._complete(statuses[k], copy, check_error=True)  # raises for the failed one
            raise
        positions = {id(ch): pos for pos, ch in enumerate(channels)}
        handshakes: list[RecvChannel] = []
        for k, i in enumerate(indices or ()):
            ch = posted[i]
            ch._req = None
            msg = ch._complete(statuses[k], copy)
            if msg is None:
                handshakes.append(ch)
            else:
                out[positions[id(ch)]] = (ch, msg)
        for ch in handshakes:  # after all statuses were read: test() reuses the scratch status objects
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
