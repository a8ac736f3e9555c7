"""Parameter publication: the trainer leader sends flattened weights with a version; subscribers keep the newest.

Each :meth:`ParamPublisher.publish` packs the whole state dict into ONE contiguous buffer (64-byte
header + every tensor in turn) and starts an ``Isend`` of that same buffer to every subscriber whose
previous send has completed. A subscriber still busy with an older publication is skipped, never
waited for: it gets the newest publication as soon as it is free (on the next ``publish`` or
``progress`` call). The names, dtypes and shapes travel once as a JSON schema (again after they change).

The wire format is the channel protocol of :mod:`hpcrl.comm.channel` with zero batch dims and
increasing (gappy) sequence numbers, so subscribers get the same validation: a malformed or
oversized message raises an error naming the source rank and tag.

This module never imports torch: tensors are accepted by duck typing (``.detach().cpu().numpy()``).

Examples:
    Under ``mpiexec -n 2`` (rank 0 publishes, rank 1 subscribes)::

        if comm.rank == 0:
            pub = ParamPublisher(comm, subscribers=[1])
            pub.publish(model.state_dict(), version=1)      # never blocks
        else:
            sub = ParamSubscriber(comm, source=0)
            version, params = sub.wait(timeout=60)           # first parameters at start-up
            ...
            newer = sub.poll()                               # None, or the newest (version, params)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.channel import RecvChannel
from hpcrl.comm.mpi import load_mpi
from hpcrl.comm.polling import Backoff, OnIdle, WaitTimeout, cancel, wait_for
from hpcrl.comm.schema import Schema
from hpcrl.comm.tags import Tag, tag_name
from hpcrl.comm.wire import (
    DEFAULT_MAX_BYTES,
    HEADER_NBYTES,
    KIND_DATA,
    MAX_SCHEMA_BYTES,
    ChannelError,
    SchemaError,
    announcement,
    write_header,
)

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["ParamPublisher", "ParamSubscriber", "ParamsError", "to_numpy", "published_copy", "received_params"]

_log = logging.getLogger(__name__)
_PREFIX = "p:"  # field-name prefix on the wire: parameter names can never clash with NamedArray methods
_EMPTY = "e:"  # the one field published for an empty state dict (not a parameter: receivers skip it)


class ParamsError(ValueError):
    """A state dict cannot be published (not a mapping of arrays, unsupported dtype, empty)."""


def to_numpy(value: Any) -> np.ndarray:
    """A numpy array for a numpy array or a torch tensor (duck-typed, no torch import)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(value)


def _record(state_dict: Mapping[str, Any]) -> tuple[NamedArray, Schema]:
    """The wire record of a state dict and its schema (what :meth:`ParamPublisher.publish` packs)."""
    if not isinstance(state_dict, Mapping):
        raise ParamsError(f"publish needs a mapping of name -> array, got {type(state_dict).__name__}")
    # a policy without parameters (e.g. ``random``) still publishes its version: one placeholder byte
    arrays: dict[str, np.ndarray] = {} if state_dict else {_EMPTY: np.zeros(1, np.uint8)}
    for name, value in state_dict.items():
        if not isinstance(name, str):
            raise ParamsError(f"parameter names must be strings, got {name!r}")
        arrays[_PREFIX + name] = to_numpy(value)
    record = NamedArray(**arrays)
    try:
        schema = Schema.of(record, batch_ndim=0)
    except SchemaError as e:
        raise ParamsError(f"cannot publish parameters: {e}") from e
    return record, schema


def received_params(record: NamedArray) -> dict[str, np.ndarray]:
    """What a subscriber hands out for a received record: name -> read-only array, placeholder dropped."""
    params = {}
    for key, value in record.items():
        if not key.startswith(_PREFIX):  # the placeholder of an empty state dict
            continue
        value.flags.writeable = False
        params[key[len(_PREFIX) :]] = value
    return params


def published_copy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """What a :class:`ParamSubscriber` would pass on for ``state_dict``, without MPI (packed and unpacked).

    Lets one process check the publish path end to end (``hpcrl.testing.test_pipeline``): the values
    arrive as read-only numpy arrays in the wire dtypes, whatever ``state_dict`` held (tensors, arrays).

    Raises:
        ParamsError: ``state_dict`` cannot be published (not a mapping of str -> array, unsupported dtype).
    """
    record, schema = _record(state_dict)
    buf = schema.pack(record)
    return received_params(schema.unpack(buf, (), copy=True))


class _Subscriber:
    __slots__ = ("buf", "rank", "req", "schema_id", "seq")

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.req: MPI.Request | None = None
        self.buf: _Buffer | None = None  # publication buffer referenced by the send in flight
        self.schema_id = 0  # schema this subscriber has been sent
        self.seq = -1  # publication this subscriber has been sent

    def busy(self) -> bool:
        if self.req is None:
            return False
        if self.req.Test():
            self.req = None
            if self.buf is not None:
                self.buf.refs -= 1
                self.buf = None
            return False
        return True


class _Buffer:
    __slots__ = ("data", "refs")

    def __init__(self, nbytes: int) -> None:
        self.data = np.empty(nbytes, np.uint8)
        self.refs = 0


class ParamPublisher:
    """Publishes parameters from one rank (the trainer leader) to subscriber ranks; never blocks.

    Args:
        comm: the communicator.
        subscribers: ranks to publish to (``Topology.param_subscribers``).
        tag: the data tag (default ``Tag.PARAMS``; the schema goes on its ``*_SCHEMA`` tag).
    """

    def __init__(self, comm: MPI.Comm, subscribers: Sequence[int], tag: int = Tag.PARAMS) -> None:
        from hpcrl.comm.tags import schema_tag

        self._mpi: Any = load_mpi()
        self.comm = comm
        self.tag = int(tag)
        self.schema_tag = schema_tag(tag)
        self._subs = [_Subscriber(int(r)) for r in subscribers]
        self._schema: Schema | None = None
        self._schema_id = 0
        self._schema_json: np.ndarray | None = None
        self._buffers: list[_Buffer] = []
        self._current: tuple[_Buffer, int, int, int] | None = None  # buffer, nbytes, version, seq
        self._seq = 0
        self._aux: list[tuple[MPI.Request, np.ndarray]] = []  # schema announcements in flight
        self._closed = False
        self.skipped = 0
        """Times a subscriber was busy when a publication was made (it got a later one instead)."""
        self.sends = 0
        """Data sends started (one per subscriber that was sent a publication; schema handshakes not counted)."""
        self.bytes_sent = 0
        """Bytes of the data sends started (headers included; schema handshakes not counted)."""

    @property
    def subscribers(self) -> list[int]:
        """The subscriber ranks."""
        return [s.rank for s in self._subs]

    @property
    def version(self) -> int | None:
        """Version of the newest publication (``None`` before the first)."""
        return None if self._current is None else self._current[2]

    @property
    def lagging(self) -> list[int]:
        """Subscribers that have not yet been sent the newest publication."""
        cur = -1 if self._current is None else self._current[3]
        return [s.rank for s in self._subs if s.seq != cur]

    @property
    def pending(self) -> int:
        """Sends still in flight (data and schema handshakes)."""
        self._aux = [(r, b) for r, b in self._aux if not r.Test()]
        return sum(1 for s in self._subs if s.busy()) + len(self._aux)

    def publish(self, state_dict: Mapping[str, Any], version: int) -> int:
        """Publish ``state_dict`` as ``version`` to every subscriber that is free (non-blocking).

        Args:
            state_dict: parameter name -> numpy array or torch tensor (any device; copied to host).
            version: the policy version of these parameters.

        Returns:
            How many subscribers the publication was started to now (the others get it, or a newer one,
            when they are free: see :meth:`progress`).

        Raises:
            ParamsError: ``state_dict`` is not a mapping or holds an unsupported dtype (an empty mapping
                publishes just the version).
        """
        if self._closed:
            raise ChannelError("ParamPublisher: publish after close()")
        record, schema = _record(state_dict)
        if schema != self._schema:
            text = schema.to_json().encode("utf-8")
            if len(text) > MAX_SCHEMA_BYTES:
                raise ParamsError(f"parameter schema JSON of {len(text)} bytes exceeds {MAX_SCHEMA_BYTES}")
            self._schema, self._schema_id = schema, self._schema_id + 1
            self._schema_json = np.frombuffer(bytearray(text), np.uint8)
        nbytes = schema.nbytes(())
        buf = self._free_buffer(HEADER_NBYTES + nbytes)
        schema.pack(record, out=buf.data, offset=HEADER_NBYTES)
        write_header(buf.data, KIND_DATA, self._schema_id, (), version, self._seq, nbytes)
        self._current = (buf, nbytes, int(version), self._seq)
        self._seq += 1
        before = sum(1 for s in self._subs if s.busy())
        started = self.progress()
        self.skipped += before
        return started

    def _free_buffer(self, need: int) -> _Buffer:
        for s in self._subs:
            s.busy()  # reap completed sends (drops buffer references)
        for b in self._buffers:
            if b.refs == 0 and b.data.nbytes >= need:
                return b
        self._buffers = [b for b in self._buffers if b.refs > 0]  # unreferenced but too small: drop
        fresh = _Buffer(need)
        self._buffers.append(fresh)
        return fresh

    def progress(self) -> int:
        """Send the newest publication to every free subscriber that has not had it (non-blocking).

        Call it now and then (e.g. once per trainer step) so a subscriber that was busy during
        :meth:`publish` is not left waiting for the next publication.

        Returns:
            How many sends were started.
        """
        if self._current is None or self._closed:
            return 0
        buf, nbytes, _version, seq = self._current
        mpi = self._mpi
        started = 0
        for sub in self._subs:
            if sub.seq == seq or sub.busy():
                continue
            if sub.schema_id != self._schema_id:
                assert self._schema_json is not None
                marker = announcement(self._schema_id, seq, self._schema_json.nbytes)
                self._aux.append((self.comm.Isend([marker, mpi.BYTE], sub.rank, self.tag), marker))
                json_req = self.comm.Isend([self._schema_json, mpi.BYTE], sub.rank, self.schema_tag)
                self._aux.append((json_req, self._schema_json))
                sub.schema_id = self._schema_id
            sub.req = self.comm.Isend([buf.data, HEADER_NBYTES + nbytes, mpi.BYTE], sub.rank, self.tag)
            sub.buf = buf
            buf.refs += 1
            sub.seq = seq
            started += 1
        self.sends += started
        self.bytes_sent += started * (HEADER_NBYTES + nbytes)
        return started

    def flush(self, timeout: float | None = None, on_idle: OnIdle | None = None) -> None:
        """Wait until every subscriber has received the newest publication (subscribers must be polling).

        Raises:
            WaitTimeout: some subscriber did not take it within ``timeout`` (the message names them).
        """

        def done() -> bool | None:
            self.progress()
            return True if not self.lagging and self.pending == 0 else None

        busy = ", ".join(str(r) for r in self.subscribers)
        wait_for(done, f"parameter sends to subscriber rank(s) {busy}", None, timeout, on_idle)

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop publishing; wait up to ``timeout`` for sends in flight, then cancel what is left (logged).

        Subscribers must keep receiving (or :meth:`ParamSubscriber.close`) meanwhile: with MPICH, a large
        message that is never received can make ``MPI_Finalize`` fail.
        """
        if self._closed:
            return
        try:
            wait_for(lambda: True if self.pending == 0 else None, "parameter sends to finish", None, timeout)
        except WaitTimeout:
            reqs = [s.req for s in self._subs if s.req is not None] + [r for r, _ in self._aux]
            _log.warning("ParamPublisher: %d send(s) still in flight at close; cancelling", len(reqs))
            cancel(reqs, "parameter sends")
        self._closed = True
        self._current = None
        self._buffers.clear()
        self._aux.clear()


class ParamSubscriber:
    """Receives parameters published by one rank, keeping only the newest version.

    Args:
        comm: the communicator.
        source: the publishing rank (the trainer leader).
        tag: the data tag (default ``Tag.PARAMS``).
        max_bytes: refuse a parameter schema whose flat size exceeds this (checked before allocating).
        nbuffers: receive buffers: 2 (the next publication can arrive while the caller loads this one) or 1
            (half the memory: a poll takes at most one publication and the next receive is posted by the
            next poll; the publisher has at most one send in flight per subscriber, so nothing is missed).
    """

    def __init__(
        self,
        comm: MPI.Comm,
        source: int,
        tag: int = Tag.PARAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        nbuffers: int = 2,
    ) -> None:
        self._channel = RecvChannel(
            comm, source, tag, "params", max_rows=1, nbuffers=nbuffers, allow_gaps=True, max_bytes=max_bytes
        )
        self._single = nbuffers == 1  # another test() would post the receive into the buffer handed out
        self.source = int(source)
        self.version: int | None = None
        """Version of the newest parameters returned so far (``None`` before the first)."""
        self.received = 0
        """Publications received (including superseded ones that were dropped)."""

    def poll(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """Drain every publication that has arrived and return the newest (non-blocking).

        Returns:
            ``(version, {name: array})`` when at least one publication arrived since the last call, else
            ``None``. The arrays are read-only views into a receive buffer, valid until the next
            :meth:`poll`/:meth:`wait` (copy them into the model, e.g. ``load_state_dict``).

        Raises:
            ChannelError: a malformed message from the publisher (names the source rank and tag).
        """
        newest = self._newest()
        if newest is None:
            return None
        self.version = newest.version
        return newest.version, received_params(newest.data)

    def _newest(self) -> Any:
        """Receive what has arrived (one message with ``nbuffers=1``) and return the newest, or ``None``."""
        newest = None
        while True:
            msg = self._channel.test()
            if msg is None:
                return newest
            newest = msg
            self.received += 1
            if self._single:
                return newest

    def poll_record(self) -> tuple[int, Schema, NamedArray] | None:
        """:meth:`poll` as the wire record: ``(version, schema, record)`` of the newest publication, or ``None``.

        For a rank that passes publications on as they are (the weight receiver of a node): ``schema``
        packs ``record`` back into its wire payload, and :func:`received_params` gives what :meth:`poll`
        returns. The record's leaves are views into the receive buffer, valid until the next poll.
        """
        newest = self._newest()
        if newest is None:
            return None
        schema = self._channel.schema
        assert schema is not None  # a data message implies a schema
        self.version = newest.version
        return newest.version, schema, newest.data

    def wait_record(
        self, timeout: float | None = None, on_idle: OnIdle | None = None, backoff: Backoff | None = None
    ) -> tuple[int, Schema, NamedArray]:
        """:meth:`wait` as the wire record (see :meth:`poll_record`).

        Raises:
            WaitTimeout: nothing arrived within ``timeout`` (names the publisher rank and tag).
        """
        what = f"parameters (tag {tag_name(self._channel.tag)})"
        return wait_for(self.poll_record, what, self.source, timeout, on_idle, backoff)

    def wait(
        self, timeout: float | None = None, on_idle: OnIdle | None = None, backoff: Backoff | None = None
    ) -> tuple[int, dict[str, np.ndarray]]:
        """Wait (without busy-spinning) for parameters, e.g. the first ones at start-up; see :meth:`poll`.

        Raises:
            WaitTimeout: nothing arrived within ``timeout`` (names the publisher rank and tag).
        """
        what = f"parameters (tag {tag_name(self._channel.tag)})"
        return wait_for(self.poll, what, self.source, timeout, on_idle, backoff)

    def drain(self) -> int:
        """Receive and drop whatever has arrived (at shutdown); returns how many publications were dropped."""
        return self._channel.drain()

    def close(self) -> None:
        """Drain what has arrived and cancel the posted receive (at shutdown; idempotent)."""
        if not self._channel.closed:
            self.drain()
        self._channel.close()
