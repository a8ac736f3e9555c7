"""Control plane: small JSON "obj" messages (stop, checkpoint requests, stats, heartbeat); never pickle.

The ``_obj`` suffix marks the cost: these calls encode a dict as UTF-8 JSON (a few microseconds),
unlike the buffer-only data plane. Messages are capped at :data:`MAX_OBJ_BYTES` on both ends; the
receiver checks the size (``Get_count``) before allocating.

``post_obj`` never blocks on the receiver: it starts an ``Isend`` and keeps the request and the
buffer alive in an outbox (at most :data:`MAX_OUTSTANDING` in flight; beyond that it waits for the
oldest). ``poll_obj`` drains whatever has arrived, from any source.

Examples:
    Under ``mpiexec -n 2``::

        if comm.rank == 1:
            post_obj(comm, 0, {"type": "stats", "fps": 1234.5})
            flush_obj(timeout=10)
        else:
            for source, msg in poll_obj(comm):       # [] when nothing has arrived yet
                ...
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.comm.mpi import load_mpi
from hpcrl.comm.polling import OnIdle, cancel, wait
from hpcrl.comm.tags import Tag, tag_name

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = [
    "ControlError",
    "MAX_OBJ_BYTES",
    "MAX_OUTSTANDING",
    "post_obj",
    "poll_obj",
    "flush_obj",
    "pending_obj",
    "cancel_obj",
]

_log = logging.getLogger(__name__)

#: Largest control message, in bytes of UTF-8 JSON.
MAX_OBJ_BYTES = 64 * 1024
#: Most control sends in flight per process before ``post_obj`` waits for the oldest.
MAX_OUTSTANDING = 256


class ControlError(ValueError):
    """A control message is too large, not JSON, or not a JSON object (names the peer rank and tag)."""


# (request, buffer kept alive until the send completes, destination, tag)
_outbox: deque[tuple[MPI.Request, np.ndarray, int, int]] = deque()


def _reap() -> None:
    while _outbox and _outbox[0][0].Test():
        _outbox.popleft()


def post_obj(
    comm: MPI.Comm, dest: int, msg: dict[str, Any], tag: int = Tag.CONTROL, timeout: float | None = 60.0
) -> None:
    """Send a JSON-able dict to ``dest`` without waiting for the receiver.

    Args:
        comm: the communicator.
        dest: the receiving rank.
        msg: a dict of JSON types (str keys; str, int, float, bool, None, lists, dicts).
        tag: a control-plane tag (``Tag.CONTROL``, ``Tag.STATS``, ``Tag.HEARTBEAT``, ...).
        timeout: seconds to wait when :data:`MAX_OUTSTANDING` sends are already in flight.

    Raises:
        ControlError: ``msg`` is not a dict, is not JSON-serialisable, or exceeds :data:`MAX_OBJ_BYTES`.
        WaitTimeout: the outbox stayed full for ``timeout`` seconds (receivers stopped receiving).
    """
    where = f"control message to rank {dest} (tag {tag_name(tag)})"
    if not isinstance(msg, dict):
        raise ControlError(f"{where}: expected a dict, got {type(msg).__name__}")
    try:
        raw = json.dumps(msg, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise ControlError(f"{where}: not JSON-serialisable: {e}") from e
    if len(raw) > MAX_OBJ_BYTES:
        raise ControlError(f"{where}: {len(raw)} bytes of JSON exceed the {MAX_OBJ_BYTES}-byte limit")
    _reap()
    if len(_outbox) >= MAX_OUTSTANDING:
        oldest = _outbox[0]
        wait(oldest[0], f"a control send to free up (outbox of {MAX_OUTSTANDING} full)", oldest[2], timeout)
        _reap()
    mpi: Any = load_mpi()
    buf = np.frombuffer(bytearray(raw), np.uint8)
    _outbox.append((comm.Isend([buf, mpi.BYTE], dest, tag), buf, dest, tag))


def poll_obj(
    comm: MPI.Comm, tag: int = Tag.CONTROL, source: int | None = None, limit: int | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """Receive every control message that has already arrived (non-blocking).

    Args:
        comm: the communicator.
        tag: the control-plane tag to drain.
        source: only this rank (``None``: any source).
        limit: at most this many messages per call (``None``: all that have arrived).

    Returns:
        ``(source rank, dict)`` pairs in arrival order; ``[]`` when nothing is pending.

    Raises:
        ControlError: a message larger than :data:`MAX_OBJ_BYTES`, not UTF-8 JSON, or not a JSON object;
            the message names the source rank and tag (the bad message is consumed, never allocated for).
    """
    mpi: Any = load_mpi()
    src = mpi.ANY_SOURCE if source is None else source
    status = mpi.Status()
    out: list[tuple[int, dict[str, Any]]] = []
    while limit is None or len(out) < limit:
        handle = comm.Improbe(src, tag, status)
        if handle is None:
            break
        peer = status.Get_source()
        count = status.Get_count(mpi.BYTE)
        where = f"control message from rank {peer} (tag {tag_name(tag)})"
        if count > MAX_OBJ_BYTES:
            # Consume it into a bounded buffer (MPI reports the truncation), so it is not left in flight.
            with contextlib.suppress(mpi.Exception):
                handle.Recv([np.empty(MAX_OBJ_BYTES, np.uint8), mpi.BYTE])
            raise ControlError(f"{where}: {count} bytes exceed the {MAX_OBJ_BYTES}-byte limit (message dropped)")
        buf = np.empty(count, np.uint8)
        handle.Recv([buf, mpi.BYTE])
        try:
            obj = json.loads(buf.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ControlError(f"{where}: not UTF-8 JSON: {e}") from e
        if not isinstance(obj, dict):
            raise ControlError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out.append((peer, obj))
    return out


def pending_obj() -> int:
    """Control sends of this process still in flight."""
    _reap()
    return sum(1 for req, *_ in _outbox if not req.Test())


def flush_obj(timeout: float | None = None, on_idle: OnIdle | None = None) -> None:
    """Wait until every control message posted by this process has been sent.

    Args:
        timeout: seconds before ``WaitTimeout`` (``None``: forever).
        on_idle: called between tests.

    Raises:
        WaitTimeout: some receiver did not take its message in time (the message names one).
    """
    if not _outbox:
        return
    dests = sorted({d for _, _, d, _ in _outbox})
    wait([r for r, *_ in _outbox], f"{len(_outbox)} control send(s) to rank(s) {dests}", None, timeout, on_idle)
    _outbox.clear()


def cancel_obj(grace: float = 1.0) -> int:
    """Give up on control sends still in flight (at shutdown, after a failed :func:`flush_obj`).

    Returns:
        How many could not be cancelled (normally 0).
    """
    left = cancel([r for r, *_ in _outbox], "control sends", grace)
    _outbox.clear()
    return left
