"""The channels' per-message fast paths, in C when it was built, else in Python (the same behaviour).

:class:`~hpcrl.comm.channel.SendChannel` and :class:`~hpcrl.comm.channel.RecvChannel` derive from
:data:`SendBase` and :data:`RecvBase`. With the C extension ``hpcrl.comm._fastpath`` (compiled at
install time when a C compiler is present; it needs no MPI headers, as it calls MPI through mpi4py
objects) these are C types whose members hold the channels' hot state; otherwise they are the Python
classes below. Either way the fast path takes only the common case and hands everything else, every
error included, to the channel's Python code.

* ``_send_fast(data, version)``: a NamedArray in wire layout (``Schema.allocate_views``) that matches
  the channel's schema and whose buffer is free is sent zero-copy (header written, ``Isend`` started)
  and ``True`` is returned; otherwise the schema matcher's result (``None`` if it did not run or did
  not vouch for ``data``) for the general path.
* ``_recv_fast(spins, copy)``: tests the posted data receive up to ``spins`` times; a data message of
  an already validated batch shape is checked against the header and returned as a
  :class:`~hpcrl.comm.wire.Message`; any other completed message goes to ``self._complete``.

* ``copy_leaves(dsts, srcs)``: ``dst[...] = src`` for each pair (the packing of a NamedArray that is not
  in wire layout into a send buffer's cached leaf views); a ``memcpy`` each in C.

Set ``HPCRL_PURE_PYTHON=1`` to use the Python fast paths even where the C module exists (the tests run
the channel suite both ways). :data:`ACCELERATED` says which one is in use.
"""

from __future__ import annotations

import logging
import operator
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.comm.wire import HEADER, HEADER_NBYTES, KIND_DATA, MAGIC, Message

__all__ = ["SendBase", "RecvBase", "copy_leaves", "ACCELERATED", "PySendBase", "PyRecvBase", "py_copy_leaves"]

_log = logging.getLogger(__name__)
_is = operator.is_


class PySendBase:
    """Python fast path of :class:`~hpcrl.comm.channel.SendChannel` (see the module docstring)."""

    _closed: bool
    _matcher: Any
    _dims: dict[tuple[int, ...], tuple[int, int, int]]
    _wire_schema: Any
    _borrowed: list[tuple[Any, Any]]
    _isend: Any
    _byte: Any
    _schema_id: int
    _seq: int
    messages: int
    bytes: int
    dest: int
    tag: int

    def _send_fast(self, data: Any, version: int) -> Any:
        if self._closed or self._matcher is None:
            return None
        got = self._matcher(data)
        if got is None:
            return None
        batch, leaves = got
        wire = data.__dict__.get("_wire")
        if wire is None or wire[1] is not self._wire_schema or wire[2] != batch or wire[3] != HEADER_NBYTES:
            return got
        if len(leaves) != len(wire[4]) or not all(map(_is, leaves, wire[4])):  # a leaf was replaced
            return got
        dims = self._dims.get(batch)
        if dims is None:
            return got
        borrowed = self._borrowed
        if borrowed:  # the buffer must be free: the one zero-copy send in flight has completed
            if len(borrowed) > 1 or not borrowed[0][0].Test():
                return got
            borrowed.clear()
        d0, d1, nbytes = dims
        raw = wire[0]
        HEADER.pack_into(raw, 0, MAGIC, KIND_DATA, self._schema_id, d0, d1, int(version), self._seq, nbytes)
        borrowed.append((self._isend([raw, HEADER_NBYTES + nbytes, self._byte], self.dest, self.tag), raw))
        self._seq += 1
        self.messages += 1
        self.bytes += nbytes
        return True


class PyRecvBase:
    """Python fast path of :class:`~hpcrl.comm.channel.RecvChannel` (see the module docstring)."""

    _req: Any
    _req_buf: int
    _status: Any
    _complete: Callable[[Any, bool], Message | None]  # RecvChannel._complete: validates any completed message

    def _recv_fast(self, spins: int, copy: bool) -> Message | None:
        req = self._req
        if req is None or self._req_buf < 0:
            return None
        status = self._status
        for _ in range(spins):
            if req.Test(status):
                break
        else:
            return None
        self._req = None
        return self._complete(status, copy)  # its own fast path checks a known batch shape in a few comparisons


def py_copy_leaves(dsts: list[np.ndarray], srcs: list[np.ndarray]) -> None:
    """``dst[...] = src`` for each pair (Python fast path of ``copy_leaves``)."""
    if len(dsts) != len(srcs):
        raise TypeError(f"copy_leaves: {len(dsts)} destinations for {len(srcs)} sources")
    for dst, src in zip(dsts, srcs):
        np.copyto(dst, src)


def _load() -> tuple[type, type, Callable[[list[np.ndarray], list[np.ndarray]], None], bool]:
    if os.environ.get("HPCRL_PURE_PYTHON", "").strip() not in ("", "0"):
        return PySendBase, PyRecvBase, py_copy_leaves, False
    try:
        from hpcrl.comm import _fastpath  # type: ignore[attr-defined]
    except ImportError as e:  # not built (no compiler at install time): same behaviour, slower
        _log.debug("hpcrl.comm._fastpath not available (%s): channels use the Python fast path", e)
        return PySendBase, PyRecvBase, py_copy_leaves, False
    _fastpath.configure(Message, HEADER_NBYTES, MAGIC, KIND_DATA, np.copyto)
    return _fastpath.SendBase, _fastpath.RecvBase, _fastpath.copy_leaves, True


SendBase, RecvBase, copy_leaves, ACCELERATED = _load()
"""Base classes of the channels, the leaf copy, and whether they are the C ones."""
