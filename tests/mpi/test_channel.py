"""Channels under MPI: round trips, schema handshakes, validation of malformed input, many-channel polling.

Run: ``mpiexec -n N python -m mpi4py -m pytest tests/mpi/test_channel.py`` for N >= 2. Peers are computed
from the size (a ring: rank r sends to r+1 and receives from r-1), so every rank does the same work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray, namedarray
from hpcrl.comm.channel import ChannelError, RecvChannel, SendChannel, drain_and_close
from hpcrl.comm.fanin import poll_any, recv_any
from hpcrl.comm.polling import WaitTimeout
from hpcrl.comm.tags import Tag
from hpcrl.comm.wire import HEADER_NBYTES, KIND_DATA, SchemaError, write_header

pytestmark = pytest.mark.mpi(min_size=2)

WIRE_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
WIRE_DTYPES += [np.float16, np.float32, np.float64]
T0 = Tag.TEST  # tests use Tag.TEST + k: each case has its own tag


@namedarray
class Obs:
    obs: np.ndarray
    state: np.ndarray | None = None


@namedarray
class Request:
    obs: Obs
    policy_state: NamedArray | None = None
    on_reset: np.ndarray | None = None


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()  # isolates each test's messages
    yield dup
    dup.Barrier()
    dup.Free()


def ring(comm: Any) -> tuple[int, int]:
    return (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size


def random_leaf(rng: np.random.Generator, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return rng.standard_normal(shape).astype(dt)


def all_dtypes_record(rng: np.random.Generator, rows: int) -> NamedArray:
    leaves = {}
    for i, dt in enumerate(WIRE_DTYPES):
        shape = [(rows,), (rows, 3), (rows, 2, 2)][i % 3]
        leaves[f"f_{np.dtype(dt).name}"] = random_leaf(rng, dt, shape)
    return NamedArray(**leaves)


def assert_same(a: NamedArray, b: NamedArray) -> None:
    fa, fb = list(a.flat_items(include_none=True)), list(b.flat_items(include_none=True))
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (path, x), (_, y) in zip(fa, fb):
        if x is None:
            assert y is None, path
            continue
        assert y.dtype == x.dtype and y.shape == x.shape, path
        np.testing.assert_array_equal(y, x, err_msg=path)


def test_roundtrip_every_wire_dtype(comm: Any) -> None:
    dest, source = ring(comm)
    rng = np.random.default_rng(comm.rank)
    expected_rng = np.random.default_rng(source)
    out = SendChannel(comm, dest, T0, "dtypes")
    inp = RecvChannel(comm, source, T0, "dtypes", max_rows=16)
    for i, rows in enumerate([5, 1, 16, 0]):
        out.send(all_dtypes_record(rng, rows), version=100 + i)
        msg = inp.recv(timeout=30)
        assert (msg.seq, msg.version, msg.batch_shape, msg.source) == (i, 100 + i, (rows,), source)
        assert_same(msg.data, all_dtypes_record(expected_rng, rows))
    assert out.messages == inp.messages == 4 and out.bytes == inp.bytes
    drain_and_close(comm, [out], [inp], timeout=30)


def test_nested_namedarrays_none_fields_and_classes(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 1, "requests")
    inp = RecvChannel(comm, source, T0 + 1, "requests", max_rows=8)
    for rows in (3, 8):
        req = Request(
            obs=Obs(obs=np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)),  # state=None
            policy_state=NamedArray(hx=np.full((rows, 2, 5), comm.rank, np.float32)),
            on_reset=np.ones((rows, 1), bool),
        )
        out.send(req, version=7)
        msg = inp.recv(timeout=30)
        assert type(msg.data) is Request and type(msg.data.obs) is Obs
        assert msg.data.obs.state is None and msg.data.keys() == ["obs", "policy_state", "on_reset"]
        assert np.all(msg.data.policy_state.hx == source)
        expect = req.copy()
        expect.policy_state.hx[...] = source
        assert_same(msg.data, expect)
    drain_and_close(comm, [out], [inp], timeout=30)


def test_time_batch_fragments(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 2, "samples", batch_ndim=2)
    inp = RecvChannel(comm, source, T0 + 2, "samples", max_rows=65 * 4)
    for t, b in [(65, 4), (9, 2), (1, 1), (65, 4)]:
        frag = NamedArray(
            obs=NamedArray(obs=np.arange(t * b * 3, dtype=np.float32).reshape(t, b, 3)),
            reward=np.full((t, b, 1), 0.5, np.float32),
            done=np.zeros((t, b, 1), bool),
            policy_version=np.full((t, b, 1), 3, np.int64),
        )
        out.send(frag, version=3)
        msg = inp.recv(timeout=30)
        assert msg.batch_shape == (t, b)
        assert_same(msg.data, frag)
    drain_and_close(comm, [out], [inp], timeout=30)


def test_schema_change_midstream_reallocates(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 3, "changing")
    inp = RecvChannel(comm, source, T0 + 3, "changing", max_rows=4)
    small = NamedArray(x=np.ones((4, 2), np.float32))
    large = NamedArray(x=np.ones((4, 2), np.float32), img=np.full((4, 64, 64), 7, np.uint8))
    retyped = NamedArray(x=np.ones((4, 2), np.float64))  # same fields, other dtype: a new schema too
    plan = [small, small, large, small, retyped, large]
    for i, rec in enumerate(plan):  # all sent before any is received: handshakes interleave with data
        out.send(rec, version=i)
    capacities = []
    for i, rec in enumerate(plan):
        msg = inp.recv(timeout=30)
        assert msg.version == i and msg.seq == i
        assert_same(msg.data, rec)
        capacities.append(inp.capacity)
    assert capacities[2] > capacities[0], "the larger schema must have grown the receive buffers"
    assert out._schema_id == 5  # small, large, small, retyped, large
    drain_and_close(comm, [out], [inp], timeout=30)


def test_copy_outlives_the_receive_buffer(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 4, "copies")
    inp = RecvChannel(comm, source, T0 + 4, "copies", max_rows=2)
    kept = []
    for i in range(5):
        out.send(NamedArray(x=np.full((2, 3), i, np.int32)), version=i)
        kept.append(inp.recv(timeout=30, copy=True).data)
    for i, data in enumerate(kept):
        assert np.all(data.x == i)
    drain_and_close(comm, [out], [inp], timeout=30)


def test_many_channels_with_poll_any(comm: Any) -> None:
    """All-to-all: each rank receives from every other rank through poll_any/recv_any."""
    me, n_msgs = comm.rank, 20
    peers = [r for r in range(comm.size) if r != me]
    outs = [SendChannel(comm, p, T0 + 5, f"to-{p}") for p in peers]
    inps = [RecvChannel(comm, p, T0 + 5, f"from-{p}", max_rows=4) for p in peers]
    got: dict[int, list[int]] = {p: [] for p in peers}
    sent = 0
    while sum(map(len, got.values())) < n_msgs * len(peers):
        if sent < n_msgs:
            for ch in outs:
                ch.send(NamedArray(v=np.full((1 + sent % 4, 2), me * 1000 + sent, np.int64)), version=sent)
            sent += 1
        batch = poll_any(inps) if sent < n_msgs else recv_any(inps, timeout=30)
        for ch, msg in batch:
            assert msg.source == ch.source
            assert np.all(msg.data.v == msg.source * 1000 + msg.seq)
            got[ch.source].append(msg.seq)
    assert all(seqs == list(range(n_msgs)) for seqs in got.values())
    assert poll_any([]) == []
    drain_and_close(comm, outs, inps, timeout=30)


def test_recv_timeout_names_the_peer(comm: Any) -> None:
    _, source = ring(comm)
    inp = RecvChannel(comm, source, T0 + 6, "silent", max_rows=1)
    with pytest.raises(WaitTimeout) as info:
        inp.recv(timeout=0.02)
    assert f"from rank {source}" in str(info.value) and "'silent'" in str(info.value)
    assert inp.test() is None
    inp.close()
    with pytest.raises(ChannelError, match="after close"):
        inp.test()


def test_bad_data_is_refused_by_the_sender(comm: Any) -> None:
    dest, _ = ring(comm)
    out = SendChannel(comm, dest, T0 + 7, "bad")
    with pytest.raises(SchemaError, match="'bad'.*cannot go on the wire"):
        out.send(NamedArray(x=np.array(["a", "b"], dtype=object)))
    with pytest.raises(SchemaError, match="batch shape"):
        out.send(NamedArray(x=np.zeros((3, 1)), y=np.zeros((4, 1))))
    with pytest.raises(ValueError, match="not a data-plane tag"):
        SendChannel(comm, dest, Tag.CONTROL, "control-tag")
    with pytest.raises(ValueError, match="batch_ndim"):
        SendChannel(comm, dest, T0, "x", batch_ndim=3)
    out.close()


def test_torch_leaves(comm: Any) -> None:
    torch = pytest.importorskip("torch")
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 8, "torch")
    inp = RecvChannel(comm, source, T0 + 8, "torch", max_rows=3)
    out.send(NamedArray(x=torch.arange(6, dtype=torch.float32).reshape(3, 2)), version=1)
    msg = inp.recv(timeout=30)
    np.testing.assert_array_equal(msg.data.x, np.arange(6, dtype=np.float32).reshape(3, 2))
    drain_and_close(comm, [out], [inp], timeout=30)


# ---------------------------------------------------------------------------------------- malformed input
def _primed(comm: Any, tag: int, max_rows: int = 4) -> tuple[SendChannel, RecvChannel]:
    """A channel pair after one good message (schema 1 known, next seq 1); rows are 8 bytes (2 float32)."""
    dest, source = ring(comm)
    out = SendChannel(comm, dest, tag, f"primed-{tag}")
    inp = RecvChannel(comm, source, tag, f"primed-{tag}", max_rows=max_rows)
    out.send(NamedArray(x=np.zeros((1, 2), np.float32)))
    inp.recv(timeout=30)
    return out, inp


def _expect_error(inp: RecvChannel, *needles: str) -> str:
    from hpcrl.comm.polling import wait_for
    from hpcrl.comm.tags import tag_name

    with pytest.raises(ChannelError) as info:
        wait_for(inp.test, "the malformed message", inp.source, timeout=30)
    text = str(info.value)
    assert f"rank {inp.source} ->" in text and tag_name(inp.tag) in text and repr(inp.name) in text, text
    for needle in needles:
        assert needle in text, text
    return text


def test_garbage_before_handshake_is_refused_without_allocating(comm: Any) -> None:
    from mpi4py import MPI

    dest, source = ring(comm)
    inp = RecvChannel(comm, source, T0 + 10, "garbage", max_rows=1_000_000)
    assert inp.test() is None  # posts the receive for the handshake
    garbage = np.random.default_rng(0).integers(0, 255, 4 << 20, dtype=np.uint8)
    req = comm.Isend([garbage, MPI.BYTE], dest, T0 + 10)
    _expect_error(inp, "first message must be a 64-byte schema announcement")
    assert inp.capacity == 0 and inp.schema is None  # nothing was allocated from the garbage
    req.Wait()
    comm.Send([np.full(64, 0xAB, np.uint8), MPI.BYTE], dest, T0 + 10)  # header-sized garbage
    _expect_error(inp, "bad magic number")
    assert inp.capacity == 0
    comm.Barrier()
    inp.close()


@pytest.mark.parametrize(
    "case,header,needles",
    [
        ("kind", {"kind": 99}, ["unknown message kind 99"]),
        ("schema", {"schema_id": 7}, ["unknown schema id 7"]),
        ("gap", {"seq": 6}, ["sequence gap: expected message 1, got 6"]),
        ("huge-rows", {"batch_shape": (10**15,), "nbytes": 8}, ["exceed max_rows=4"]),
        ("negative", {"batch_shape": (-3,)}, ["bad batch dims"]),
        ("size", {"batch_shape": (2,), "nbytes": 8}, ["header says 8 payload bytes, schema needs 16"]),
        ("count", {"batch_shape": (2,), "nbytes": 16, "payload": 8}, ["message holds 8 payload bytes, header says 16"]),
    ],
)
def test_malformed_header_names_rank_and_tag(comm: Any, case: str, header: dict[str, Any], needles: list[str]) -> None:
    tag = T0 + 20 + ["kind", "schema", "gap", "huge-rows", "negative", "size", "count"].index(case)
    out, inp = _primed(comm, tag)
    dest, _ = ring(comm)
    header = dict(header)
    payload = header.pop("payload", header.get("nbytes", 0))
    h = {"nbytes": 0, **header}
    buf = np.zeros(HEADER_NBYTES + payload, np.uint8)
    fields = {"kind": KIND_DATA, "schema_id": 1, "batch_shape": (0,), "version": 0, "seq": 1, **h}
    write_header(buf, **fields)
    from mpi4py import MPI

    comm.Send([buf, MPI.BYTE], dest, tag)
    capacity = inp.capacity
    _expect_error(inp, *needles)
    assert inp.capacity == capacity  # no allocation from the bad header
    comm.Barrier()
    out.close()
    inp.close()


def test_oversized_message_is_a_clear_error(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 30, "oversize")
    inp = RecvChannel(comm, source, T0 + 30, "oversize", max_rows=4)
    out.send(NamedArray(x=np.zeros((4, 256), np.float32)))
    assert inp.recv(timeout=30).batch_shape == (4,)
    out.send(NamedArray(x=np.zeros((5, 256), np.float32)))  # one row too many
    _expect_error(inp, "larger than the receive buffer", "max_rows=4", "raise max_rows")
    comm.Barrier()
    out.close()
    inp.close()


def test_drain_and_close_leaves_nothing_in_flight(comm: Any) -> None:
    """Unreceived large messages would crash MPICH's MPI_Finalize; drain_and_close must consume them."""
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 31, "unread")
    inp = RecvChannel(comm, source, T0 + 31, "unread", max_rows=1024)
    for _ in range(2):  # both send buffers busy: a third send would wait for the receiver
        out.send(NamedArray(x=np.ones((1024, 256), np.float32)))  # 1 MiB each, never received by the test
    assert out.messages == 2  # (the receiver may already be draining: do not assert the sends are pending)
    drain_and_close(comm, [out], [inp], timeout=30)
    assert out.pending == 0


def test_wait_helpers(comm: Any) -> None:
    from mpi4py import MPI

    from hpcrl.comm.polling import cancel, wait, wait_any

    dest, source = ring(comm)
    bufs = [np.zeros(4, np.int64) for _ in range(2)]
    reqs = [comm.Irecv([b, MPI.INT64_T], source, T0 + 40 + k) for k, b in enumerate(bufs)]
    with pytest.raises(WaitTimeout, match=f"waiting for nothing yet from rank {source}"):
        wait_any(reqs, "nothing yet", source, timeout=0.01)
    comm.Barrier()  # nobody sends before every rank saw its timeout
    comm.Send([np.arange(4, dtype=np.int64), MPI.INT64_T], dest, T0 + 41)
    idle_calls = []
    index, status = wait_any(reqs, "tag 41", source, timeout=30, on_idle=lambda: idle_calls.append(1))
    assert index == 1 and status.Get_source() == source and list(bufs[1]) == [0, 1, 2, 3]
    with pytest.raises(WaitTimeout):
        wait(reqs, "tag 40", source, timeout=0.01)
    assert cancel(reqs, "the tag-40 receive") == 0 and not any(reqs)
    with pytest.raises(ValueError, match="no active request"):
        wait_any(reqs, "nothing")


# ---------------------------------------------------------------------------------------- fast paths
def test_wire_layout_sends_in_place_unless_a_leaf_was_replaced(comm: Any) -> None:
    from hpcrl.comm.schema import Schema

    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 50, "wire")
    inp = RecvChannel(comm, source, T0 + 50, "wire", max_rows=4)
    template = NamedArray(x=np.zeros((4, 3), np.float32), y=np.zeros((4, 1), np.int64))
    frag = Schema.of(template).allocate_views((4,), HEADER_NBYTES)
    frag.x[...], frag.y[...] = 1.0, 10
    out.send(frag)
    assert len(out._borrowed) == 1  # zero copy: its own buffer went on the wire
    msg = inp.recv(timeout=30)
    assert np.all(msg.data.x == 1.0) and np.all(msg.data.y == 10)
    out.flush(timeout=30)
    frag.x = np.full((4, 3), 2.0, np.float32)  # replaced, not written into the wire buffer
    out.send(frag)
    msg = inp.recv(timeout=30)
    assert np.all(msg.data.x == 2.0) and np.all(msg.data.y == 10), "a replaced leaf must be sent, not the stale buffer"
    drain_and_close(comm, [out], [inp], timeout=30)


def test_receive_fast_path_many_batch_shapes_and_copies(comm: Any) -> None:
    dest, source = ring(comm)
    out = SendChannel(comm, dest, T0 + 51, "shapes")
    inp = RecvChannel(comm, source, T0 + 51, "shapes", max_rows=8)
    kept = []
    for i in range(60):  # every shape is seen on both buffers, then served from the cache
        rows = i % 9
        out.send(Request(obs=Obs(obs=np.full((rows, 4), i, np.float32)), on_reset=np.ones((rows, 1), bool)), version=i)
        msg = inp.recv(timeout=30, copy=(i % 2 == 0))
        assert (msg.batch_shape, msg.version, msg.seq) == ((rows,), i, i)
        assert type(msg.data) is Request and msg.data.policy_state is None and np.all(msg.data.obs.obs == i)
        if i % 2 == 0:
            kept.append((i, msg.data))
    for i, data in kept:  # copies are not overwritten by later messages
        assert np.all(data.obs.obs == i)
    for k in range(4):  # views: each message gets its own array objects (a flag set on one stays there)
        out.send(Request(obs=Obs(obs=np.full((3, 4), k, np.float32))), version=k)
        leaf = inp.recv(timeout=30).data.obs.obs
        assert leaf.flags.writeable, "a caller's flag change leaked into a later message"
        leaf.flags.writeable = False
        leaf.shape = (12,)
    drain_and_close(comm, [out], [inp], timeout=30)


@pytest.mark.parametrize(
    "case,header,needles",
    [
        ("gap", {"seq": 9}, ["sequence gap: expected message 2, got 9"]),
        ("size", {"nbytes": 8}, ["header says 8 payload bytes, schema needs 16"]),
        ("count", {"payload": 8}, ["message holds 8 payload bytes, header says 16"]),
        ("schema", {"schema_id": 3}, ["unknown schema id 3"]),
        ("kind", {"kind": 7}, ["unknown message kind 7"]),
    ],
)
def test_malformed_header_after_the_shape_is_cached(
    comm: Any, case: str, header: dict[str, Any], needles: list[str]
) -> None:
    """The receive fast path (a batch shape already seen on that buffer) still refuses every bad header."""
    from mpi4py import MPI

    tag = T0 + 52 + ["gap", "size", "count", "schema", "kind"].index(case)
    dest, source = ring(comm)
    out = SendChannel(comm, dest, tag, f"cached-{tag}")
    inp = RecvChannel(comm, source, tag, f"cached-{tag}", max_rows=4)
    for _ in range(2):  # batch (2,) on both receive buffers
        out.send(NamedArray(x=np.zeros((2, 2), np.float32)))
        inp.recv(timeout=30)
    header = dict(header)
    payload = header.pop("payload", 16)
    fields = {"kind": KIND_DATA, "schema_id": 1, "batch_shape": (2,), "version": 0, "seq": 2, "nbytes": 16, **header}
    buf = np.zeros(HEADER_NBYTES + payload, np.uint8)
    write_header(buf, **fields)
    comm.Send([buf, MPI.BYTE], dest, tag)
    _expect_error(inp, *needles)
    comm.Barrier()
    out.close()
    inp.close()
