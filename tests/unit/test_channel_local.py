"""Channels in one process over ``MPI.COMM_SELF`` (a rank sends to itself).

The per-message path: a wire-layout NamedArray goes out of its own buffer (the header is written into
it), anything else is packed; a batch shape is validated once per receive buffer; counters stay right;
the public fan-in pair ``RecvChannel.posted`` / ``RecvChannel.completed`` does exactly what ``test``
does; and nothing leaks over many messages.
"""

from __future__ import annotations

import dataclasses
import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.schema import Schema, WireLayout, wire_layout
from hpcrl.comm.tags import Tag
from hpcrl.comm.wire import HEADER, HEADER_NBYTES, KIND_DATA, MAGIC, Message

TAG = Tag.TEST + 50


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_SELF.Dup()
    yield dup
    dup.Free()


@pytest.fixture
def pair(comm: Any) -> Iterator[tuple[SendChannel, RecvChannel]]:
    tx = SendChannel(comm, 0, TAG, "local")
    rx = RecvChannel(comm, 0, TAG, "local", max_rows=64)
    yield tx, rx
    tx.close()
    rx.close()


def wire_payload(rows: int = 4, fill: float = 0.0) -> NamedArray:
    """A nested NamedArray allocated in wire layout, as the actor allocates its fragments."""
    plain = NamedArray(obs=NamedArray(x=np.zeros((rows, 8), np.float32)), done=np.zeros((rows,), np.bool_))
    wire = Schema.of(plain).allocate_views((rows,), HEADER_NBYTES)
    wire.obs.x[...] = fill
    return wire


def plain_payload(rows: int = 4, fill: float = 0.0) -> NamedArray:
    return NamedArray(obs=NamedArray(x=np.full((rows, 8), fill, np.float32)), done=np.zeros((rows,), np.bool_))


def header_of(data: NamedArray) -> tuple[int, ...]:
    layout = wire_layout(data)
    assert layout is not None
    return HEADER.unpack_from(layout.raw)  # type: ignore[arg-type,no-any-return]


def test_wire_layout_is_a_frozen_record_that_fields_cannot_fake() -> None:
    data = wire_payload(rows=3)
    layout = wire_layout(data)
    assert isinstance(layout, WireLayout)
    assert layout.batch_shape == (3,) and layout.header_nbytes == HEADER_NBYTES
    assert layout.schema == Schema.of(plain_payload(3))
    assert all(a is b for a, b in zip(layout.leaves, data.leaves()))
    assert layout.raw.nbytes == HEADER_NBYTES + layout.schema.nbytes((3,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        layout.batch_shape = (4,)  # type: ignore[misc]
    assert not hasattr(layout, "__dict__")  # slots
    assert "_wire" not in data.keys()  # not a field
    assert wire_layout(data[1:]) is None and wire_layout(data.copy()) is None  # derived: not in wire layout
    assert wire_layout(NamedArray(_wire=np.zeros(2))) is None  # a field of that name is just a field


def test_wire_layout_goes_out_of_its_own_buffer(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    data = wire_payload(fill=1.0)
    for i in range(5):
        data.obs.x[...] = float(i)
        tx.send(data, version=7 + i)
        assert header_of(data) == (MAGIC, KIND_DATA, 1, 4, 1, 7 + i, i, 4 * (8 * 4 + 1))  # written in place
        msg = rx.recv(timeout=5)
        assert (msg.version, msg.seq, msg.source, msg.batch_shape) == (7 + i, i, 0, (4,))
        assert type(msg.data) is type(data) and type(msg.data.obs) is type(data.obs)
        assert np.all(msg.data.obs.x == float(i)) and msg.data.done.dtype == np.bool_
        assert msg.data.keys() == data.keys() and msg.data.obs.keys() == data.obs.keys()
    assert tx.messages == rx.messages == 5 and tx.seq == 5
    assert tx.bytes == rx.bytes == 5 * 4 * (8 * 4 + 1)


def test_anything_else_is_packed(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    tx.send(wire_payload(fill=1.0))
    rx.recv(timeout=5)

    tx.send(plain_payload(fill=2.0))  # same structure, not in wire layout
    assert np.all(rx.recv(timeout=5).data.obs.x == 2.0)

    replaced = wire_payload()
    before = header_of(replaced)
    replaced.obs.x = np.full((4, 8), 5.0, np.float32)  # a leaf no longer in the wire buffer
    tx.send(replaced)
    assert header_of(replaced) == before, "a NamedArray whose leaf was replaced must be packed, not sent in place"
    assert np.all(rx.recv(timeout=5).data.obs.x == 5.0)

    other = NamedArray(obs=NamedArray(x=np.zeros((4, 9), np.float32)), done=np.zeros((4,), np.bool_))
    tx.send(other)  # another structure: a new schema
    assert rx.recv(timeout=5).data.obs.x.shape == (4, 9)
    assert rx.schema is not None and rx.schema == tx.schema == Schema.of(other)

    for rows in (3, 5, 3, 5):  # new batch shapes: validated once per receive buffer, then from the cache
        tx.send(wire_payload(rows, fill=rows))
        msg = rx.recv(timeout=5)
        assert msg.batch_shape == (rows,) and np.all(msg.data.obs.x == rows)
    assert tx.messages == rx.messages == 8
    assert tx.seq == 8


def test_strided_and_torch_leaves_are_packed_correctly(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    base = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    cases = [plain_payload(), NamedArray(obs=NamedArray(x=base[::2, ::2]), done=np.ones((4,), np.bool_))]
    cases.append(NamedArray(obs=NamedArray(x=np.asfortranarray(base[:4, :8])), done=np.ones((4,), np.bool_)))
    torch = pytest.importorskip("torch")
    cases.append(NamedArray(obs=NamedArray(x=torch.from_numpy(base[4:, 8:].copy())), done=torch.ones(4, dtype=bool)))
    for data in cases:
        tx.send(data)
        got = rx.recv(timeout=5).data
        np.testing.assert_array_equal(got.obs.x, np.asarray(data.obs.x))
        np.testing.assert_array_equal(got.done, np.asarray(data.done))


def test_copy_receives_own_their_memory(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    data = wire_payload(fill=1.0)
    tx.send(data)
    rx.recv(timeout=5)
    tx.send(data)
    msg = rx.recv(timeout=5, copy=True)
    assert msg.data.obs.x.base is None or msg.data.obs.x.base.nbytes == msg.data.obs.x.nbytes
    data.obs.x[...] = 9.0
    tx.send(data)
    rx.recv(timeout=5)
    assert np.all(msg.data.obs.x == 1.0)  # the copied message is not overwritten by the next one


def test_posted_and_completed_are_what_test_does(comm: Any) -> None:
    """The public fan-in pair: test the posted receive yourself, then hand its status to completed()."""
    from mpi4py import MPI

    tx = SendChannel(comm, 0, TAG + 1, "fan-in")
    rx = RecvChannel(comm, 0, TAG + 1, "fan-in", max_rows=4)
    assert rx.posted is None  # nothing posted before the first test
    assert rx.test() is None
    first = rx.posted
    assert first is not None  # the receive for the schema announcement
    tx.send(NamedArray(v=np.arange(4, dtype=np.int64).reshape(2, 2)), version=3)
    status = MPI.Status()
    MPI.Request.Wait(first, status)
    assert rx.completed(status) is None  # a schema announcement: test() takes the JSON and the message
    msg = rx.test()
    assert msg is not None and msg.seq == 0 and np.all(msg.data.v == [[0, 1], [2, 3]])
    for k in range(1, 4):
        tx.send(NamedArray(v=np.full((k % 2 + 1, 2), k, np.int64)), version=3 + k)
        req = rx.posted
        assert req is not None
        index = MPI.Request.Waitany([req], status)
        assert index == 0
        got = rx.completed(status, copy=(k == 2))
        assert isinstance(got, Message)
        assert (got.seq, got.version, got.batch_shape) == (k, 3 + k, (k % 2 + 1,)) and np.all(got.data.v == k)
        assert rx.posted is not None and rx.posted is not req  # the other buffer's receive, reposted
    assert rx.messages == 4 and rx.bytes == tx.bytes
    tx.close()
    rx.close()
    assert rx.posted is None and rx.closed


def _roundtrips(tx: SendChannel, rx: RecvChannel, data: NamedArray, n: int) -> None:
    for _ in range(n):
        tx.send(data, version=1)
        rx.recv(timeout=5)


@pytest.mark.parametrize("layout", ["wire", "packed"])
def test_nothing_grows_over_many_messages(pair: tuple[SendChannel, RecvChannel], layout: str) -> None:
    tx, rx = pair
    data = wire_payload() if layout == "wire" else plain_payload()
    _roundtrips(tx, rx, data, 200)  # warm up: schema, caches, buffers
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _roundtrips(tx, rx, data, 5_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 5,000 {layout} messages"
    assert tx.messages == rx.messages == 5_200
    assert tx.pending <= 2
