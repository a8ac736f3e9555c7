"""The node weight window's protocol (double buffer + seqlock) in one process, with interleaved writer steps."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrl.comm.nodeparams import node_subscribers, weight_receivers
from hpcrl.comm.nodes import NodeMap
from hpcrl.comm.weightwindow import DoubleBuffer, WindowError

N = 256  # payload words


def payload(version: int) -> np.ndarray:
    """A payload whose every word depends on its version (a torn mix of two versions fails :func:`intact`)."""
    return (np.arange(N, dtype=np.int64) * 1_000_003 + version * 7919) % (1 << 40)


def intact(version: int, data: np.ndarray) -> bool:
    return bool(np.array_equal(data.view(np.int64), payload(version)))


def fresh(capacity: int = 64 + N * 8) -> DoubleBuffer:
    return DoubleBuffer.initialize(np.zeros(DoubleBuffer.nbytes_for(capacity), np.uint8), capacity)


class Reader:
    """Records what each ``consume`` call saw; ``during`` runs inside the consume (a writer racing the copy)."""

    def __init__(self, db: DoubleBuffer) -> None:
        self.db = db
        self.seen = 0
        self.calls: list[tuple[int, bool]] = []
        self.during: Iterator[object] | None = None
        self.steps_per_call = 0

    def consume(self, version: int, sid: int, js: np.ndarray, data: np.ndarray) -> None:
        first = data.view(np.int64)[: N // 2].copy()  # copy half, let the writer run, copy the rest
        if self.during is not None:
            for _ in range(self.steps_per_call):
                if next(self.during, None) is None:
                    self.during = None
                    break
        rest = data.view(np.int64)[N // 2 :].copy()
        self.calls.append((version, intact(version, np.concatenate([first, rest]))))

    def read(self) -> tuple[int, int] | None:
        got = self.db.read(self.consume, self.seen)
        if got is not None:
            self.seen = got[0]
        return got


def test_each_publication_is_read_once_and_intact() -> None:
    db = fresh()
    reader = Reader(db)
    assert reader.read() is None and not db.newer_than(0)  # nothing published yet
    for v in range(1, 6):
        assert db.write(v * 10, 1, b'{"s": 1}', payload(v * 10)) == v
        assert db.newer_than(reader.seen)
        assert reader.read() == (v, v * 10)
        assert reader.calls[-1] == (v * 10, True)
        assert reader.read() is None  # the same publication is not handed out twice
    assert len(reader.calls) == 5 and db.torn == 0


def test_a_reader_that_falls_behind_gets_only_the_newest() -> None:
    db = fresh()
    reader = Reader(db)
    for v in range(1, 5):
        db.write(v, 1, b"{}", payload(v))
    assert reader.read() == (4, 4) and reader.calls == [(4, True)]


def test_a_copy_torn_by_two_writes_is_retried_with_the_newer_buffer() -> None:
    """Two whole publications land while the reader copies: the buffer it reads is rewritten under it."""
    db = fresh()
    db.write(1, 1, b"{}", payload(1))
    reader = Reader(db)

    def two_writes() -> Iterator[object]:
        yield from db.write_steps(2, 1, b"{}", payload(2))
        yield from db.write_steps(3, 1, b"{}", payload(3))

    reader.during, reader.steps_per_call = two_writes(), 100
    assert reader.read() == (3, 3)
    assert reader.calls == [(1, False), (3, True)]  # the torn copy was seen by the check and redone
    assert db.torn == 1


def test_one_write_during_a_read_does_not_disturb_it() -> None:
    """The writer fills the other buffer: the reader's copy stays intact and is not retried."""
    db = fresh()
    db.write(1, 1, b"{}", payload(1))
    reader = Reader(db)
    reader.during, reader.steps_per_call = db.write_steps(2, 1, b"{}", payload(2)), 100
    assert reader.read() == (1, 1) and reader.calls == [(1, True)] and db.torn == 0
    assert reader.read() == (2, 2)


@settings(max_examples=60, deadline=None)
@given(
    plan=st.lists(st.tuples(st.integers(0, 12), st.integers(0, 9)), min_size=1, max_size=25),
)
def test_any_interleaving_never_hands_out_a_torn_copy(plan: list[tuple[int, int]]) -> None:
    """Writer steps run between reads and in the middle of copies, in any amounts: every read that returns
    had its last consume intact and of the version it reports, and versions only grow."""
    db = fresh()
    reader = Reader(db)
    versions = iter(range(1, 10_000))

    def writer() -> Iterator[object]:
        while True:
            v = next(versions)
            yield from db.write_steps(v, 1 + v // 5, b'{"v": %d}' % (v // 5), payload(v))

    w = writer()
    last = 0
    for between, inside in plan:
        for _ in range(between):
            next(w)
        reader.during, reader.steps_per_call = w, inside
        got = reader.read()
        if got is not None:
            assert reader.calls[-1] == (got[1], True)
            assert got[1] > last
            last = got[1]
        reader.during = None


def test_a_consumer_error_on_a_torn_copy_is_a_retry_and_on_an_intact_one_propagates() -> None:
    db = fresh()
    db.write(1, 1, b"{}", payload(1))
    racing = db.write_steps(2, 1, b"{}", payload(2))
    calls = []

    def consume(version: int, sid: int, js: np.ndarray, data: np.ndarray) -> None:
        calls.append(version)
        if len(calls) == 1:  # the buffer is rewritten twice, then the consumer fails on what it saw
            for _ in racing:
                pass
            db.write(3, 1, b"{}", payload(3))
            raise ValueError("half-written schema")

    assert db.read(consume, 0) == (3, 3) and calls == [1, 3]

    def broken(version: int, sid: int, js: np.ndarray, data: np.ndarray) -> None:
        raise ValueError("not the window's fault")

    db.write(4, 1, b"{}", payload(4))
    with pytest.raises(ValueError, match="not the window's fault"):
        db.read(broken, 3)


def test_views_are_read_only_and_the_schema_travels() -> None:
    db = fresh()
    db.write(5, 9, b'{"leaves": []}', payload(5))

    def consume(version: int, sid: int, js: np.ndarray, data: np.ndarray) -> None:
        assert (version, sid, js.tobytes()) == (5, 9, b'{"leaves": []}')
        assert not data.flags.writeable and not js.flags.writeable

    assert db.read(consume, 0) == (1, 5)


def test_a_publication_larger_than_the_window_is_refused_by_name() -> None:
    db = fresh(capacity=64 + 8 * 8)
    with pytest.raises(
        WindowError, match=r"does not fit the node's shared weight window \(128 bytes.*layout.weights=flat"
    ):
        db.write(1, 1, b"{}", payload(1))
    assert db.published == 0  # nothing was made current


def test_an_uninitialised_window_is_refused() -> None:
    with pytest.raises(WindowError, match="bad magic"):
        DoubleBuffer(np.zeros(DoubleBuffer.nbytes_for(64), np.uint8))


def test_one_receiver_per_node_whatever_the_rank_order() -> None:
    block = NodeMap.from_ids([0, 0, 0, 0, 4, 4, 4, 4])
    assert weight_receivers(range(1, 8), block) == (1, 4)
    cyclic = NodeMap.from_ids([0, 1, 0, 1, 0, 1, 0, 1])  # srun --distribution=cyclic
    assert weight_receivers(range(1, 8), cyclic) == (2, 1)  # node order: node 0 (ranks 0,2,..) first
    assert node_subscribers(range(1, 8), cyclic, 5) == (1, 3, 5, 7)
    assert weight_receivers((2, 3), block) == (2,)  # a node without subscribers gets nothing
