"""The data plane: point-to-point channels carrying NamedArrays as one contiguous buffer per message.

Wire protocol (docs/architecture.md, *Wire format*; header layout in :mod:`hpcrl.comm.wire`). A channel is (source rank,
destination rank, data tag ``T``):

1. Before the first message, and whenever the structure of the sent NamedArrays changes, the sender
   announces a schema: a header of kind ``SCHEMA`` on ``T``, then the schema JSON
   (:meth:`Schema.to_json`) as a uint8 buffer on ``schema_tag(T)``. No pickle anywhere.
2. Every data message is ONE buffer on ``T``: the 64-byte header, then the payload (the leaves in schema
   order, :mod:`hpcrl.comm.schema`).

The receiver keeps an ``Irecv`` posted into buffers preallocated from the schema and ``max_rows``
(rows = product of the batch dims), so a message is never larger than what was allocated: a
bigger one fails in MPI (truncation) and is reported. Every header field of every message is checked
(:meth:`RecvChannel._complete`, the one place that validates and books a received message); errors
(:class:`ChannelError`) name the channel, the source rank and the tag.

Both ends do the work that depends only on the structure or the batch shape once and cache it: the
sender a generated structure check (``Schema.matcher``) and its buffer's leaf views per batch shape,
the receiver the leaf views of each batch shape it has validated on each buffer.

Examples:
    Under ``mpiexec -n 2`` (rank 0 sends, rank 1 receives)::

        if comm.rank == 0:
            out = SendChannel(comm, dest=1, tag=Tag.SAMPLE, name="samples")
            out.send(batch, version=3)          # returns at once (Isend, double-buffered)
            out.flush(timeout=10)
        else:
            inp = RecvChannel(comm, source=0, tag=Tag.SAMPLE, name="samples", max_rows=1024)
            msg = inp.recv(timeout=10)          # Message(data=NamedArray views, batch_shape, version, seq)
            inp.close()
"""

from __future__ import annotations

import logging
import math
import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.mpi import load_mpi
from hpcrl.comm.polling import Backoff, OnIdle, WaitTimeout, cancel, transfer_backoff, wait, wait_for
from hpcrl.comm.schema import Schema, WireLayout, host_array, structure_key, wire_layout
from hpcrl.comm.shutdown import drain_and_close
from hpcrl.comm.tags import schema_tag, tag_name
from hpcrl.comm.wire import (
    DEFAULT_MAX_BYTES,
    HEADER,
    HEADER_NBYTES,
    KIND_DATA,
    KIND_SCHEMA,
    MAGIC,
    MAX_BATCH_NDIM,
    MAX_SCHEMA_BYTES,
    ChannelError,
    Message,
    SchemaError,
    announcement,
    header_dims,
    pack_header,
    write_header,
)

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = [
    "ChannelError",
    "Message",
    "SendChannel",
    "RecvChannel",
    "drain_and_close",
    "write_header",
    "HEADER_NBYTES",
    "MAX_SCHEMA_BYTES",
    "MAX_BATCH_NDIM",
]

_log = logging.getLogger(__name__)
_is = operator.is_
_unpack_header = HEADER.unpack_from

#: Batch shapes per buffer whose leaf views are cached (send and receive); the cache is cleared when full.
_VIEW_CACHE = 64
#: Back-to-back tests :meth:`RecvChannel.recv` makes before it starts pacing (~10 us, within the first
#: phase of :class:`~hpcrl.comm.polling.Backoff`, which tests back to back for 50 us anyway).
_SPIN_TESTS = 128


class _SendSlot:
    __slots__ = ("buf", "req", "views")

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None
        self.req: MPI.Request | None = None
        self.views: dict[tuple[Any, ...], list[np.ndarray]] = {}  # (schema id, batch) -> leaf views into buf

    def free(self) -> bool:
        return self.req is None or bool(self.req.Test())


class SendChannel:
    """Sending end of a channel: NamedArrays to one rank on one tag, without blocking the caller.

    Each :meth:`send` packs into one of two buffers and starts an ``Isend``; it waits only when both
    buffers are still in flight (then for the older one), so the caller packs message ``k+1`` while
    message ``k`` travels. A NamedArray allocated in wire layout (``Schema.allocate_views`` with
    ``HEADER_NBYTES`` in front) goes out of its own buffer instead, without a copy.

    Args:
        comm: the communicator.
        dest: the receiving rank.
        tag: a data-plane tag (its handshake goes on ``schema_tag(tag)``).
        name: channel name for errors and logs (e.g. ``"samples"``).
        batch_ndim: leading batch dims of the NamedArrays sent (0, 1 or 2).
        send_timeout: seconds :meth:`send` may wait for a free buffer before raising ``WaitTimeout``
            (``None``: forever).
        synchronous: send data messages in synchronous mode (``Issend``): a send completes only once the
            receiver has matched it with a receive, so a receiver that stops receiving holds the sender
            to two messages in flight (back-pressure). Default: standard mode (``Isend``; small messages
            complete as soon as MPI has buffered them).
    """

    def __init__(
        self,
        comm: MPI.Comm,
        dest: int,
        tag: int,
        name: str,
        batch_ndim: int = 1,
        send_timeout: float | None = None,
        synchronous: bool = False,
    ) -> None:
        if not 0 <= batch_ndim <= MAX_BATCH_NDIM:
            raise ValueError(f"channel {name!r}: batch_ndim must be 0..{MAX_BATCH_NDIM}, got {batch_ndim}")
        self._mpi: Any = load_mpi()
        self.comm = comm
        self.dest = int(dest)
        self.tag = int(tag)
        self.schema_tag = schema_tag(tag)
        self.name = name
        self.batch_ndim = batch_ndim
        self.send_timeout = send_timeout
        self.synchronous = synchronous
        self._isend = comm.Issend if synchronous else comm.Isend
        self._byte = self._mpi.BYTE
        self._dims: dict[tuple[int, ...], tuple[int, int, int]] = {}  # batch -> (dim 0, dim 1, payload bytes)
        self._schema: Schema | None = None
        self._matcher: Any = None  # the schema's generated structure check (Schema.matcher)
        self._wire_schema: Schema | None = None  # a wire-layout schema found equal to _schema
        self._fingerprint: tuple[Any, ...] | None = None
        self._row_nbytes = 0
        self._schema_id = 0
        self._seq = 0
        self._slots = (_SendSlot(), _SendSlot())
        self._older = 0
        self._aux: list[tuple[MPI.Request, np.ndarray]] = []  # schema announcements in flight
        self._borrowed: list[tuple[MPI.Request, np.ndarray]] = []  # zero-copy sends in flight
        self._closed = False
        self.messages = 0
        """Data messages sent so far."""
        self.bytes = 0
        """Payload bytes sent so far."""

    @property
    def where(self) -> str:
        """``channel 'name' (rank a -> rank b, tag NAME (n))`` for messages."""
        return f"channel {self.name!r} (rank {self.comm.Get_rank()} -> rank {self.dest}, tag {tag_name(self.tag)})"

    @property
    def schema(self) -> Schema | None:
        """The schema of the last message sent (``None`` before the first)."""
        return self._schema

    @property
    def seq(self) -> int:
        """Sequence number the next data message will carry (0, 1, 2, ...; handshakes do not count)."""
        return self._seq

    @property
    def pending(self) -> int:
        """Sends still in flight (data buffers and schema handshakes)."""
        busy = sum(0 if s.free() else 1 for s in self._slots)
        return busy + sum(1 for r, _ in self._aux + self._borrowed if not r.Test())

    @property
    def ready(self) -> bool:
        """Whether :meth:`send` would start at once (a send buffer is free); never blocks."""
        return self._slots[0].free() or self._slots[1].free()

    def send(self, data: NamedArray, version: int = 0, on_idle: OnIdle | None = None) -> None:
        """Send ``data`` (non-blocking; returns once the message is packed and its ``Isend`` started).

        Only when both send buffers are still in flight does it wait, for the older one (check
        :attr:`ready` to avoid that, or pass ``on_idle`` to keep receiving meanwhile: two ranks that
        both wait on sends without receiving would wait for each other).

        A NamedArray whose structure (fields, None-ness, dtypes, per-row shapes, classes) differs from
        the previous message's triggers a new schema handshake first.

        Args:
            data: the NamedArray (numpy or CPU torch leaves) with ``batch_ndim`` leading batch dims.
            version: the policy version to attach (e.g. the version that produced the data).
            on_idle: called while waiting for a free buffer.

        Raises:
            SchemaError: ``data`` cannot go on the wire (dtype, inconsistent batch dims).
            ChannelError: the channel is closed, or the schema JSON exceeds ``MAX_SCHEMA_BYTES``.
            WaitTimeout: both buffers stayed busy longer than ``send_timeout``.
        """
        if self._closed:
            raise ChannelError(f"{self.where}: send after close()")
        matcher = self._matcher
        got = None if matcher is None else matcher(data)
        if got is None:  # first message, a new structure, or leaves the matcher does not vouch for (torch)
            got = self._adopt(data)
        batch, leaves = got
        dims = self._dims.get(batch)
        if dims is None:
            dims = self._batch_dims(batch)
        d0, d1, nbytes = dims
        layout = wire_layout(data)
        slot = None
        if layout is not None and self._sendable_in_place(layout, batch, leaves):
            buf = layout.raw  # zero copy, once the sends in flight that hold it up have completed
            if self._borrowed:
                self._reap_borrowed(buf, on_idle)
        else:
            slot = self._take_slot(on_idle)
            buf = self._pack(slot, batch, HEADER_NBYTES + nbytes, leaves)
        pack_header(buf, KIND_DATA, self._schema_id, d0, d1, int(version), self._seq, nbytes)
        req = self._isend([buf, HEADER_NBYTES + nbytes, self._byte], self.dest, self.tag)
        if slot is None:
            self._borrowed.append((req, buf))
        else:
            slot.req = req
        self._seq += 1
        self.messages += 1
        self.bytes += nbytes

    def _adopt(self, data: NamedArray) -> tuple[tuple[int, ...], list[np.ndarray]]:
        """The general path of :meth:`send`: describe ``data``, announce its schema if it changed.

        Returns:
            The batch shape and the leaves (numpy, in schema order) to send.
        """
        shapes: list[Any] = []
        fingerprint = structure_key(data, self.batch_ndim, shapes)
        if fingerprint != self._fingerprint:
            try:
                fresh = Schema.of(data, self.batch_ndim)
            except SchemaError as e:
                raise SchemaError(f"{self.where}: {e}") from e
            if fresh != self._schema:
                self._announce(fresh)
            self._fingerprint = fingerprint
        got = self._matcher(data)
        if got is not None:
            return got  # type: ignore[no-any-return]
        bnd = self.batch_ndim
        batch = tuple(int(n) for n in shapes[0][:bnd]) if shapes else (0,) * bnd
        for shape in shapes:
            if tuple(shape[:bnd]) != batch:
                raise SchemaError(f"{self.where}: leaves disagree on the batch shape: {tuple(shape[:bnd])} vs {batch}")
        return batch, [host_array(x) for x in data.leaves()]

    def _sendable_in_place(self, layout: WireLayout, batch: tuple[int, ...], leaves: list[Any]) -> bool:
        """Whether ``data`` (checked: ``batch``, ``leaves``) lies in its wire-layout buffer as the channel sends it."""
        if layout.schema is not self._wire_schema:
            if layout.schema != self._schema:
                return False
            self._wire_schema = layout.schema  # equal to the channel's schema: later checks are by identity
        return (
            layout.batch_shape == batch
            and layout.header_nbytes == HEADER_NBYTES
            and len(layout.leaves) == len(leaves)
            and all(map(_is, leaves, layout.leaves))  # a leaf replaced by another array is packed instead
        )

    def _pack(self, slot: _SendSlot, batch: tuple[int, ...], need: int, leaves: list[np.ndarray]) -> np.ndarray:
        """Copy ``leaves`` (checked against the schema) behind the header of ``slot``'s buffer; returns the buffer."""
        buf = slot.buf
        if buf is None or buf.nbytes < need:
            old = 0 if buf is None else buf.nbytes
            buf = slot.buf = np.empty(max(need, old + old // 2), np.uint8)
            slot.views.clear()
        key = (self._schema_id, batch)
        dsts = slot.views.get(key)
        if dsts is None:
            if len(slot.views) >= _VIEW_CACHE:
                slot.views.clear()
            assert self._schema is not None
            dsts = slot.views[key] = self._schema.views(buf[HEADER_NBYTES:], batch)
        for dst, src in zip(dsts, leaves):
            dst[...] = src  # same dtype and shape (the matcher or Schema.of checked them)
        return buf

    def _batch_dims(self, batch: tuple[int, ...]) -> tuple[int, int, int]:
        """Header dims and payload bytes of a batch shape (cached until the schema changes)."""
        if len(self._dims) >= _VIEW_CACHE:
            self._dims.clear()
        dims = self._dims[batch] = (*header_dims(batch), self._row_nbytes * math.prod(batch))
        return dims

    def _reap_borrowed(self, raw: np.ndarray, on_idle: OnIdle | None) -> None:
        """Before an in-place send of ``raw``: drop completed zero-copy sends, wait for those holding it up.

        A send of ``raw`` itself must complete (its header may change only once it has left), and at
        most one other stays in flight.
        """
        keep = []
        for r, b in self._borrowed:
            if r.Test():
                continue
            if b is raw:
                self._wait_sent(r, "the previous in-place send of this buffer", b.nbytes, on_idle)
                continue
            keep.append((r, b))
        if len(keep) >= 2:
            req, old = keep.pop(0)
            self._wait_sent(req, "an in-place send to complete", old.nbytes, on_idle)
        self._borrowed = keep

    def _take_slot(self, on_idle: OnIdle | None) -> _SendSlot:
        first, second = self._older, 1 - self._older
        for idx in (first, second):
            if self._slots[idx].free():
                self._older = 1 - idx
                return self._slots[idx]
        slot = self._slots[first]
        assert slot.req is not None and slot.buf is not None
        self._wait_sent(slot.req, "a send buffer to free up", slot.buf.nbytes, on_idle)
        self._older = second
        return slot

    def _wait_sent(
        self,
        reqs: MPI.Request | list[MPI.Request],
        what: str,
        nbytes: int,
        on_idle: OnIdle | None,
        timeout: float | None = -1.0,
    ) -> None:
        """Wait for sends of ``nbytes`` in flight, yielding while they copy (``timeout`` -1: ``send_timeout``)."""
        wait(
            reqs,
            lambda: f"{what} on {self.where}",
            self.dest,
            self.send_timeout if timeout == -1.0 else timeout,
            on_idle,
            transfer_backoff(nbytes),
        )

    def _announce(self, schema: Schema) -> None:
        text = schema.to_json().encode("utf-8")
        if len(text) > MAX_SCHEMA_BYTES:
            raise ChannelError(f"{self.where}: schema JSON of {len(text)} bytes exceeds {MAX_SCHEMA_BYTES}")
        if self._aux:
            self._aux = [(r, b) for r, b in self._aux if not r.Test()]
        self._schema_id += 1
        marker = announcement(self._schema_id, self._seq, len(text))
        payload = np.frombuffer(bytearray(text), np.uint8)
        mpi = self._mpi
        self._aux.append((self.comm.Isend([marker, mpi.BYTE], self.dest, self.tag), marker))
        self._aux.append((self.comm.Isend([payload, mpi.BYTE], self.dest, self.schema_tag), payload))
        self._schema = schema
        self._matcher = schema.matcher
        self._wire_schema = None
        self._row_nbytes = schema.row_nbytes
        self._dims.clear()
        _log.debug("%s: schema %d announced (%d leaves)", self.where, self._schema_id, len(schema.leaves))

    def _requests(self) -> list[MPI.Request]:
        reqs = [s.req for s in self._slots if s.req is not None]
        return reqs + [r for r, _ in self._aux] + [r for r, _ in self._borrowed]

    def flush(self, timeout: float | None = None, on_idle: OnIdle | None = None) -> None:
        """Wait until every message sent so far has left (its buffer may be reused).

        Args:
            timeout: seconds before ``WaitTimeout`` (``None``: forever).
            on_idle: called between tests (e.g. to poll control messages).

        Raises:
            WaitTimeout: the receiver did not take the messages within ``timeout``.
        """
        inflight = sum(s.buf.nbytes for s in self._slots if s.buf is not None and not s.free())
        inflight += sum(b.nbytes for _, b in self._borrowed)
        self._wait_sent(self._requests(), "outstanding sends", inflight, on_idle, timeout)
        self._aux.clear()
        self._borrowed.clear()

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush, then release the buffers; sends still pending after ``timeout`` are cancelled (logged).

        Args:
            timeout: seconds to wait for outstanding sends; ``None`` waits forever.
        """
        if self._closed:
            return
        try:
            self.flush(timeout)
        except WaitTimeout:
            _log.warning("%s: receiver did not take %d message(s) before close; cancelling", self.where, self.pending)
            cancel(self._requests(), f"sends on {self.where}")
        self._closed = True
        self._aux.clear()
        self._borrowed.clear()
        for slot in self._slots:
            slot.buf, slot.req = None, None


class RecvChannel:
    """Receiving end of a channel: NamedArrays from one rank on one tag, with an ``Irecv`` always posted.

    The receive buffers are allocated when the schema arrives: ``nbuffers`` x (64 + ``max_rows`` x
    row bytes). With two buffers the next receive is already posted while the caller reads the
    message just returned. Returned leaves are views into a buffer, valid until the next receive call
    on this channel (``test``/``recv``/``poll_any``); pass ``copy=True`` to keep them longer.

    To wait on many channels at once, test their :attr:`posted` receives together and hand each one
    that completed to :meth:`completed` (what :func:`~hpcrl.comm.fanin.poll_any` does).

    Args:
        comm: the communicator.
        source: the sending rank.
        tag: the data-plane tag (must match the sender's).
        name: channel name for errors and logs.
        max_rows: capacity in rows (product of the batch dims) of one message; a larger message is an error.
        nbuffers: 2 (double buffering, default) or 1 (half the memory; the next receive is posted only
            when the caller asks for the next message).
        allow_gaps: accept increasing sequence numbers with gaps (newest-wins streams such as
            parameters); by default every message must carry the next number.
        max_bytes: upper bound of one receive buffer; a schema needing more is refused before allocating.
    """

    def __init__(
        self,
        comm: MPI.Comm,
        source: int,
        tag: int,
        name: str,
        max_rows: int,
        nbuffers: int = 2,
        allow_gaps: bool = False,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"channel {name!r}: max_rows must be >= 1, got {max_rows}")
        if nbuffers not in (1, 2):
            raise ValueError(f"channel {name!r}: nbuffers must be 1 or 2, got {nbuffers}")
        self._mpi: Any = load_mpi()
        self.comm = comm
        self.source = int(source)
        self.tag = int(tag)
        self.schema_tag = schema_tag(tag)
        self.name = name
        self.max_rows = int(max_rows)
        self.nbuffers = nbuffers
        self.allow_gaps = bool(allow_gaps)
        self._byte = self._mpi.BYTE
        self.max_bytes = int(max_bytes)
        self._schema: Schema | None = None
        self._row_nbytes = 0
        self._schema_id = 0
        self._awaiting: tuple[int, int] | None = None  # (schema id, JSON bytes) announced, JSON not yet received
        self._first = np.empty(HEADER_NBYTES, np.uint8)  # receives the first announcement
        self._bufs: list[np.ndarray] = []
        self._preqs: list[MPI.Prequest] = []  # one persistent receive per buffer
        self._req: MPI.Request | None = None
        self._req_buf = -1  # index in _bufs of the posted receive (-1: _first)
        self._user_buf = -1  # index in _bufs of the last message handed out
        self._next_seq = 0
        self._status = self._mpi.Status()
        self._closed = False
        self.messages = 0
        """Data messages received so far."""
        self.bytes = 0
        """Payload bytes received so far."""
        self._last_nbytes = 0
        # (buffer index, dim 0, dim 1) -> (batch shape, payload bytes, leaf views): batch dims validated once
        self._shapes: dict[tuple[int, int, int], tuple[tuple[int, ...], int, list[np.ndarray]]] = {}
        self._builder: Any = None
        self._view_builder: Any = None

    # ------------------------------------------------------------------ info
    @property
    def where(self) -> str:
        """``channel 'name' (rank a -> rank b, tag NAME (n))`` for messages."""
        return f"channel {self.name!r} (rank {self.source} -> rank {self.comm.Get_rank()}, tag {tag_name(self.tag)})"

    @property
    def schema(self) -> Schema | None:
        """The current schema (``None`` until the first handshake arrived)."""
        return self._schema

    @property
    def capacity(self) -> int:
        """Bytes of one receive buffer (header included); 0 before the schema is known."""
        return self._bufs[0].nbytes if self._bufs else 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _error(self, problem: str) -> ChannelError:
        return ChannelError(f"{self.where}: {problem}")

    # ------------------------------------------------------------------ receiving
    def test(self, copy: bool = False) -> Message | None:
        """Non-blocking receive: the next message if one has arrived, else ``None``.

        Schema handshakes are handled on the way (they are never returned).

        Args:
            copy: return leaves that own their memory instead of views into the receive buffer.

        Raises:
            ChannelError: a malformed, out-of-order or oversized message, or the channel is closed.
        """
        return self._receive(1, copy)

    def recv(
        self,
        timeout: float | None = None,
        copy: bool = False,
        on_idle: OnIdle | None = None,
        backoff: Backoff | None = None,
    ) -> Message:
        """Wait (without busy-spinning) for the next message.

        Args:
            timeout: seconds before ``WaitTimeout`` (``None``: forever).
            copy: see :meth:`test`.
            on_idle: called between tests (e.g. to poll control messages).
            backoff: pacing of the wait; by default it yields (never sleeps) for as long as a message
                as large as the previous one takes to copy (:func:`~hpcrl.comm.polling.transfer_backoff`).

        Raises:
            WaitTimeout: nothing arrived within ``timeout`` (names the channel and the source rank).
            ChannelError: see :meth:`test`.
        """
        msg = self._receive(_SPIN_TESTS, copy)  # a reply is often here or microseconds away: test back to back
        if msg is not None:
            return msg
        if backoff is None:  # a message as large as the last one may be mid-copy: yield while it would take
            backoff = transfer_backoff(self._last_nbytes)
        return wait_for(
            lambda: self.test(copy), lambda: f"a message on {self.where}", self.source, timeout, on_idle, backoff
        )

    def _receive(self, spins: int, copy: bool) -> Message | None:
        """Test the posted receive up to ``spins`` times; the next message, or ``None`` if none arrived."""
        try:
            while True:
                req = self._req
                if req is None:  # (a posted receive implies: open, and no schema JSON awaited)
                    if self._closed:
                        raise self._error("receive after close()")
                    if self._awaiting is not None and not self._receive_schema():
                        return None
                    req = self._post()
                status = self._status
                for _ in range(spins):
                    if req.Test(status):
                        break
                else:
                    return None
                self._req = None
                msg = self._complete(status, copy)
                if msg is not None:
                    return msg
        except self._mpi.Exception as e:
            raise self._receive_failed(e) from e

    @property
    def posted(self) -> MPI.Request | None:
        """The receive this channel has posted, for a caller that tests many channels' receives at once.

        ``None`` when there is none (before the first :meth:`test`, while a schema handshake is in
        progress, or after :meth:`close`): call :meth:`test` instead. When the request completes in the
        caller's ``Testsome``/``Waitany``, hand its status to :meth:`completed` before anything else
        touches this channel.
        """
        return self._req

    def completed(self, status: MPI.Status, copy: bool = False, check_error: bool = False) -> Message | None:
        """Take the message whose :attr:`posted` receive completed (tested by the caller, with ``status``).

        It is checked, counted and the next receive posted exactly as :meth:`test` would.

        Args:
            status: the status the caller's test filled in for that request.
            copy: see :meth:`test`.
            check_error: the status may carry an error (``MPI_ERR_IN_STATUS`` from a multiple-completion
                call): raise it as a :class:`ChannelError`.

        Returns:
            The message, or ``None`` when it was a schema announcement (then call :meth:`test`).

        Raises:
            ChannelError: see :meth:`test`.
        """
        self._req = None
        return self._complete(status, copy, check_error)

    def _post(self) -> MPI.Request:
        if self._schema is None:
            req = self.comm.Irecv([self._first, self._byte], self.source, self.tag)
            self._req_buf = -1
        else:
            idx = 0 if self.nbuffers == 1 or self._user_buf != 0 else 1
            req = self._preqs[idx]  # persistent receive into buffer idx: half the cost of a fresh Irecv
            req.Start()
            self._req_buf = idx
        self._req = req
        return req

    def _free_persistent(self) -> None:
        for req in self._preqs:
            if req:
                req.Free()
        self._preqs = []

    def _receive_failed(self, e: Any) -> ChannelError:
        """The error for an MPI exception raised by a receive (the request is gone)."""
        self._req = None
        return self._mpi_failure(e.Get_error_class(), str(e))

    def _mpi_failure(self, error_class: int, text: str) -> ChannelError:
        if error_class == self._mpi.ERR_TRUNCATE:
            if self._req_buf < 0:
                return self._error(
                    "the first message must be a 64-byte schema announcement but a larger message arrived "
                    "(not an hpcrl channel sender, or a tag clash)"
                )
            row = self._schema.row_nbytes if self._schema is not None else 0
            return self._error(
                f"message larger than the receive buffer of {self.capacity} bytes "
                f"(max_rows={self.max_rows} rows of {row} bytes + {HEADER_NBYTES}-byte header): "
                f"the sender sent more than max_rows rows; raise max_rows"
            )
        return self._error(f"receive failed: {' '.join(text.split())}")

    def _complete(self, status: MPI.Status, copy: bool, check_error: bool = False) -> Message | None:
        """Check and book the message that just completed into the posted buffer (every message comes here).

        Returns:
            The data message, or ``None`` for a schema announcement (its JSON is received next).
        """
        if check_error:
            mpi = self._mpi
            err = status.Get_error()
            if err != mpi.SUCCESS:
                raise self._mpi_failure(mpi.Get_error_class(err), mpi.Get_error_string(err))
        count = status.Get_count(self._byte)
        if count < HEADER_NBYTES:
            raise self._error(f"message of {count} bytes is shorter than the {HEADER_NBYTES}-byte header")
        idx = self._req_buf
        buf = self._first if idx < 0 else self._bufs[idx]
        magic, kind, sid, d0, d1, version, seq, nbytes = _unpack_header(buf)  # type: ignore[arg-type]
        if magic != MAGIC:
            raise self._error(f"bad magic number {magic & 0xFFFFFFFFFFFFFFFF:#x} (not an hpcrl channel message)")
        if seq != self._next_seq and (seq < self._next_seq or not self.allow_gaps):
            if self.allow_gaps:
                raise self._error(f"sequence number {seq} went backwards (expected >= {self._next_seq})")
            raise self._error(f"sequence gap: expected message {self._next_seq}, got {seq}")
        if kind != KIND_DATA:
            self._announced(kind, sid, nbytes, count)
            return None
        if sid != self._schema_id or self._schema is None:
            raise self._error(f"unknown schema id {sid} (current schema id {self._schema_id})")
        shape = self._shapes.get((idx, d0, d1))
        if shape is None:
            shape = self._batch_shape(idx, d0, d1)
        batch, expect, views = shape
        if nbytes != expect:
            raise self._error(f"header says {nbytes} payload bytes, schema needs {expect} for batch shape {batch}")
        if count - HEADER_NBYTES != nbytes:
            raise self._error(f"message holds {count - HEADER_NBYTES} payload bytes, header says {nbytes}")
        # fresh array objects over the same memory: flags or shapes a caller changes stay its own
        data = self._builder([a.copy() for a in views]) if copy else self._view_builder(views)
        self._next_seq = seq + 1
        self._user_buf = idx
        self.messages += 1
        self.bytes += nbytes
        self._last_nbytes = nbytes
        if self.nbuffers > 1:  # double-buffered: the next message may arrive while the caller reads this one
            self._post()
        return Message(data, batch, version, seq, self.source)

    def _batch_shape(self, idx: int, d0: int, d1: int) -> tuple[tuple[int, ...], int, list[np.ndarray]]:
        """Validate header dims ``(d0, d1)`` once per receive buffer; their batch shape, bytes and leaf views."""
        assert self._schema is not None
        bnd = self._schema.batch_ndim
        if d0 < 0 or d1 < 0 or (bnd < 2 and d1 != 1) or (bnd < 1 and d0 != 1):
            raise self._error(f"bad batch dims {(d0, d1)} for {bnd} batch dim(s)")
        batch = (d0, d1)[:bnd]
        rows = d0 * d1
        if rows > self.max_rows:
            raise self._error(f"{rows} rows (batch shape {batch}) exceed max_rows={self.max_rows}")
        nbytes = rows * self._row_nbytes
        views = self._schema.views(self._bufs[idx][HEADER_NBYTES : HEADER_NBYTES + nbytes], batch)
        if len(self._shapes) >= _VIEW_CACHE:
            self._shapes.clear()
        shape = self._shapes[(idx, d0, d1)] = (batch, nbytes, views)
        return shape

    def _announced(self, kind: int, sid: int, nbytes: int, count: int) -> None:
        """Check a schema announcement (a header of kind ``SCHEMA``); its JSON is awaited next."""
        if kind != KIND_SCHEMA:
            raise self._error(f"unknown message kind {kind}")
        if count != HEADER_NBYTES:
            raise self._error(f"schema announcement of {count} bytes, expected {HEADER_NBYTES}")
        if sid <= self._schema_id:
            raise self._error(f"schema id {sid} announced after schema id {self._schema_id}")
        if not 0 < nbytes <= MAX_SCHEMA_BYTES:
            raise self._error(f"announced schema JSON of {nbytes} bytes (allowed: 1..{MAX_SCHEMA_BYTES})")
        self._awaiting = (sid, nbytes)

    def _receive_schema(self) -> bool:
        assert self._awaiting is not None
        sid, nbytes = self._awaiting
        mpi = self._mpi
        status = self._status
        handle = self.comm.Improbe(self.source, self.schema_tag, status)
        if handle is None:
            return False
        count = status.Get_count(mpi.BYTE)
        if count != nbytes:
            raise self._error(
                f"schema handshake on tag {tag_name(self.schema_tag)} has {count} bytes, the announcement said {nbytes}"
            )
        raw = np.empty(count, np.uint8)
        handle.Recv([raw, mpi.BYTE])
        try:
            schema = Schema.from_json(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, SchemaError) as e:
            raise self._error(f"bad schema handshake: {e}") from e
        if not 0 <= schema.batch_ndim <= MAX_BATCH_NDIM:
            raise self._error(f"schema has {schema.batch_ndim} batch dims; channels support 0..{MAX_BATCH_NDIM}")
        need = HEADER_NBYTES + schema.row_nbytes * self.max_rows
        if need > self.max_bytes:
            raise self._error(
                f"schema rows of {schema.row_nbytes} bytes x max_rows={self.max_rows} need {need} bytes, "
                f"more than max_bytes={self.max_bytes}"
            )
        if not self._bufs or self._bufs[0].nbytes < need:
            # Old buffers stay alive as long as the caller holds views into them; no receive is posted now.
            self._bufs = [np.empty(need, np.uint8) for _ in range(self.nbuffers)]
            self._user_buf = -1
            self._free_persistent()
            self._preqs = [self.comm.Recv_init([b, mpi.BYTE], self.source, self.tag) for b in self._bufs]
        self._schema, self._schema_id, self._awaiting = schema, sid, None
        self._row_nbytes = schema.row_nbytes
        self._builder = schema.builder
        self._view_builder = schema.view_builder
        self._shapes.clear()
        _log.debug("%s: schema %d received (%d leaves, %d bytes/row)", self.where, sid, len(schema.leaves), need)
        return True

    def drain(self) -> int:
        """Receive and drop every message that has arrived (at shutdown); returns how many were dropped."""
        n = 0
        while not self._closed and self.test() is not None:
            n += 1
        return n

    def close(self) -> None:
        """Cancel the posted receive and release the buffers (at shutdown; idempotent).

        Messages the sender still has in flight are not received: use :func:`drain_and_close` for an
        orderly shutdown (with MPICH, a large message that is never received makes ``MPI_Finalize`` fail).
        """
        if self._closed:
            return
        if self._req is not None:
            cancel([self._req], f"the posted receive on {self.where}")
            self._req = None
        self._closed = True
        self._free_persistent()
        self._bufs = []
        self._shapes.clear()
