"""The channels' per-message fast paths (hpcrl.comm.fastpath: C when built, else Python).

In one process over ``MPI.COMM_SELF`` (a rank sends to itself): the fast paths take the common case,
hand everything else to the general path with the same results, keep the counters right and leak
neither memory nor references. The last test runs this file and the MPI channel suite again with
``HPCRL_PURE_PYTHON=1`` in a 2-rank ``mpiexec`` job, so both implementations are tested on every run.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import sysconfig
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray, Schema
from hpcrl.comm import fastpath
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.tags import Tag
from hpcrl.comm.wire import HEADER_NBYTES, Message

REPO = Path(__file__).resolve().parents[2]
TAG = Tag.TEST + 50


@pytest.fixture
def pair() -> Iterator[tuple[SendChannel, RecvChannel]]:
    from mpi4py import MPI

    comm = MPI.COMM_SELF.Dup()
    tx = SendChannel(comm, 0, TAG, "fast")
    rx = RecvChannel(comm, 0, TAG, "fast", max_rows=64)
    yield tx, rx
    tx.close()
    rx.close()
    comm.Free()


def wire_payload(rows: int = 4, fill: float = 0.0) -> NamedArray:
    """A nested NamedArray allocated in wire layout, as the actor allocates its fragments."""
    plain = NamedArray(obs=NamedArray(x=np.zeros((rows, 8), np.float32)), done=np.zeros((rows,), np.bool_))
    wire = Schema.of(plain).allocate_views((rows,), HEADER_NBYTES)
    wire.obs.x[...] = fill
    return wire


def plain_payload(rows: int = 4, fill: float = 0.0) -> NamedArray:
    return NamedArray(obs=NamedArray(x=np.full((rows, 8), fill, np.float32)), done=np.zeros((rows,), np.bool_))


def test_the_c_fast_path_is_built_where_a_compiler_is() -> None:
    if os.environ.get("HPCRL_PURE_PYTHON", "").strip() not in ("", "0"):
        assert not fastpath.ACCELERATED and fastpath.SendBase is fastpath.PySendBase
        return
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which("cc") is None or not include.exists():
        pytest.skip("no C compiler or Python headers: the Python fast path is the expected one")
    assert fastpath.ACCELERATED, (
        "a C compiler and Python headers exist but hpcrl.comm._fastpath is not built: "
        "reinstall with `pip install -e .` (setup.py builds it)"
    )
    assert SendChannel.__mro__[1] is fastpath.SendBase and RecvChannel.__mro__[1] is fastpath.RecvBase


def test_common_case_takes_the_fast_paths(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    data = wire_payload(fill=1.0)
    tx.send(data, version=3)  # first message: schema handshake on the general path
    first = rx.recv(timeout=5)
    assert first.version == 3 and first.seq == 0 and np.all(first.data.obs.x == 1.0)

    for i in range(1, 5):
        data.obs.x[...] = float(i)
        tx._reap_borrowed(data.__dict__["_wire"][0], None)  # the previous zero-copy send has finished
        assert tx._send_fast(data, 7 + i) is True  # zero copy, straight from the fast path
        msg = None
        for _ in range(1000):
            msg = rx._recv_fast(16, False)
            if msg is not None:
                break
        assert isinstance(msg, Message)
        assert (msg.version, msg.seq, msg.source, msg.batch_shape) == (7 + i, i, 0, (4,))
        assert type(msg.data) is type(data) and type(msg.data.obs) is type(data.obs)
        assert np.all(msg.data.obs.x == float(i)) and msg.data.done.dtype == np.bool_
        assert msg.data.keys() == data.keys() and msg.data.obs.keys() == data.obs.keys()
    assert tx.messages == rx.messages == 5 and tx.seq == 5
    assert tx.bytes == rx.bytes == 5 * 4 * (8 * 4 + 1)


def test_everything_else_falls_through_to_the_general_path(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    assert tx._send_fast(wire_payload(), 0) is None  # no schema yet: the matcher has not been set
    tx.send(wire_payload(fill=1.0))
    rx.recv(timeout=5)

    plain = plain_payload(fill=2.0)  # same structure, not in wire layout: the matcher's result, to be packed
    got = tx._send_fast(plain, 0)
    assert isinstance(got, tuple) and got[0] == (4,) and len(got[1]) == 2
    tx.send(plain)
    assert np.all(rx.recv(timeout=5).data.obs.x == 2.0)

    replaced = wire_payload()
    replaced.obs.x = np.full((4, 8), 5.0, np.float32)  # a leaf no longer in the wire buffer
    assert isinstance(tx._send_fast(replaced, 0), tuple)
    tx.send(replaced)
    assert np.all(rx.recv(timeout=5).data.obs.x == 5.0)

    other = NamedArray(obs=NamedArray(x=np.zeros((4, 9), np.float32)), done=np.zeros((4,), np.bool_))
    assert tx._send_fast(other, 0) is None  # another structure: a new schema on the general path
    tx.send(other)
    assert rx.recv(timeout=5).data.obs.x.shape == (4, 9)

    for rows in (3, 5):  # a new batch shape is checked by the general path once, then taken fast
        tx.send(wire_payload(rows, fill=rows))
        msg = rx.recv(timeout=5)
        assert msg.batch_shape == (rows,) and np.all(msg.data.obs.x == rows)
    assert tx.messages == rx.messages == 6
    assert [tx.seq, rx._next_seq] == [6, 6]


def test_copy_leaves_copies_contiguous_and_strided_leaves() -> None:
    rng = np.random.default_rng(0)
    srcs = [rng.random((3, 4)).astype(np.float32), rng.random((6, 4))[::2], np.arange(5, dtype=np.int16)]
    srcs.append(np.asfortranarray(rng.random((3, 2))))
    dsts = [np.zeros_like(s, order="C") for s in srcs]
    fastpath.copy_leaves(dsts, srcs)
    for d, s in zip(dsts, srcs):
        np.testing.assert_array_equal(d, s)
    with pytest.raises(TypeError):
        fastpath.copy_leaves(dsts, srcs[:1])
    with pytest.raises(ValueError):  # not writeable: numpy's own error, not a silent skip
        ro = np.zeros(5, np.int16)
        ro.flags.writeable = False
        fastpath.copy_leaves([ro], [srcs[2]])


def test_strided_leaves_are_packed_correctly(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    base = np.arange(8 * 16, dtype=np.float32).reshape(8, 16)
    for data in (plain_payload(), NamedArray(obs=NamedArray(x=base[::2, ::2]), done=np.ones((4,), np.bool_))):
        tx.send(data)
        got = rx.recv(timeout=5).data
        np.testing.assert_array_equal(got.obs.x, data.obs.x)
        np.testing.assert_array_equal(got.done, data.done)


def test_copy_receives_own_their_memory(pair: tuple[SendChannel, RecvChannel]) -> None:
    tx, rx = pair
    data = wire_payload(fill=1.0)
    tx.send(data)
    rx.recv(timeout=5)
    tx.flush(timeout=5)
    tx.send(data)
    msg = rx.recv(timeout=5, copy=True)
    assert msg.data.obs.x.base is None or msg.data.obs.x.base.nbytes == msg.data.obs.x.nbytes
    tx.flush(timeout=5)
    data.obs.x[...] = 9.0
    tx.send(data)
    rx.recv(timeout=5)
    assert np.all(msg.data.obs.x == 1.0)  # the copied message is not overwritten by the next one


def _roundtrips(tx: SendChannel, rx: RecvChannel, data: NamedArray, n: int) -> None:
    raw = data.__dict__.get("_wire", (None,))[0]
    for _ in range(n):
        if raw is not None:
            tx._reap_borrowed(raw, None)
        tx.send(data, version=1)
        rx.recv(timeout=5)


@pytest.mark.parametrize("layout", ["wire", "packed"])
def test_fast_paths_leak_neither_memory_nor_references(pair: tuple[SendChannel, RecvChannel], layout: str) -> None:
    tx, rx = pair
    data = wire_payload() if layout == "wire" else plain_payload()
    _roundtrips(tx, rx, data, 200)  # warm up: schema, caches, buffers
    gc.collect()
    watched = [data, tx, rx, rx._bufs[0], rx._bufs[1], tx._matcher, rx._view_builder, tx._dims, rx._views]
    if layout == "wire":
        watched += [data.__dict__["_wire"][0], tx._wire_schema]
    refs = [sys.getrefcount(o) for o in watched]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _roundtrips(tx, rx, data, 20_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes more after 20,000 {layout} messages"
    assert [sys.getrefcount(o) for o in watched] == refs
    assert tx.messages == rx.messages == 20_200


def test_pure_python_fast_paths_pass_the_same_tests(mpiexec: str, python_exe: str, clean_env: dict[str, Any]) -> None:
    if os.environ.get("HPCRL_PURE_PYTHON", "").strip() not in ("", "0"):
        pytest.skip("this run already uses the Python fast paths")
    env = dict(clean_env, HPCRL_PURE_PYTHON="1")
    cmd = [mpiexec, "-n", "2", python_exe, "-m", "mpi4py", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["tests/mpi/test_channel.py", "tests/unit/test_fastpath.py"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
