"""Control plane under MPI: JSON obj messages posted without blocking and polled from any source."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.comm.control import (
    MAX_OBJ_BYTES,
    ControlError,
    flush_obj,
    pending_obj,
    poll_obj,
    post_obj,
)
from hpcrl.comm.polling import wait_for
from hpcrl.comm.tags import Tag

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()
    yield dup
    dup.Barrier()
    dup.Free()


def collect(comm: Any, n: int, tag: int = Tag.CONTROL, **kw: Any) -> list[tuple[int, dict[str, Any]]]:
    got: list[tuple[int, dict[str, Any]]] = []

    def poll() -> bool | None:
        got.extend(poll_obj(comm, tag, **kw))
        return True if len(got) >= n else None

    wait_for(poll, f"{n} control messages", timeout=30)
    return got


def test_ring_post_and_poll_in_order(comm: Any) -> None:
    dest, source = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    msgs = [
        {"type": "stop", "reason": "done"},
        {"type": "stats", "fps": 1234.5, "episodes": [1, 2, 3], "nested": {"a": None, "b": True}},
        {"type": "checkpoint-now", "unicode": "λ ✓"},
    ]
    for m in msgs:
        post_obj(comm, dest, m)
    got = collect(comm, len(msgs))
    assert got == [(source, m) for m in msgs]
    flush_obj(timeout=30)
    assert pending_obj() == 0
    assert poll_obj(comm) == []


def test_any_source_and_tags(comm: Any) -> None:
    if comm.rank != 0:
        post_obj(comm, 0, {"rank": comm.rank}, tag=Tag.STATS)
        post_obj(comm, 0, {"beat": comm.rank}, tag=Tag.HEARTBEAT)
    else:
        stats = collect(comm, comm.size - 1, Tag.STATS)
        beats = collect(comm, comm.size - 1, Tag.HEARTBEAT)
        assert sorted(stats) == [(r, {"rank": r}) for r in range(1, comm.size)]
        assert sorted(beats) == [(r, {"beat": r}) for r in range(1, comm.size)]
        assert poll_obj(comm, Tag.CONTROL) == []
    flush_obj(timeout=30)


def test_source_filter_and_limit(comm: Any) -> None:
    if comm.rank != 0:
        for i in range(3):
            post_obj(comm, 0, {"i": i})
    flush_obj(timeout=30)
    comm.Barrier()  # every message has left (eager sends complete at once)
    if comm.rank == 0:
        first = collect(comm, 1, source=1, limit=1)
        assert first == [(1, {"i": 0})]
        rest = collect(comm, 3 * (comm.size - 1) - 1)
        assert len(rest) == 3 * (comm.size - 1) - 1 and (1, {"i": 0}) not in rest


def test_sender_refuses_bad_messages(comm: Any) -> None:
    dest = (comm.rank + 1) % comm.size
    with pytest.raises(ControlError, match=f"rank {dest}.*expected a dict"):
        post_obj(comm, dest, ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ControlError, match="not JSON-serialisable"):
        post_obj(comm, dest, {"array": np.zeros(3)})
    with pytest.raises(ControlError, match=f"exceed the {MAX_OBJ_BYTES}-byte limit"):
        post_obj(comm, dest, {"blob": "x" * MAX_OBJ_BYTES})
    assert pending_obj() == 0


@pytest.mark.parametrize(
    "payload,needle",
    [
        (b"\xff\xfe\x00", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"[1, 2, 3]", "expected a JSON object, got list"),
        (b"x" * (MAX_OBJ_BYTES + 1), f"{MAX_OBJ_BYTES + 1} bytes exceed the {MAX_OBJ_BYTES}-byte limit"),
    ],
)
def test_receiver_refuses_bad_messages_naming_the_source(comm: Any, payload: bytes, needle: str) -> None:
    from mpi4py import MPI

    dest, source = (comm.rank + 1) % comm.size, (comm.rank - 1) % comm.size
    req = comm.Isend([np.frombuffer(payload, np.uint8), MPI.BYTE], dest, Tag.CONTROL)
    with pytest.raises(ControlError) as info:
        wait_for(lambda: poll_obj(comm) or None, "a bad control message", timeout=30)
    assert f"from rank {source} (tag CONTROL (1))" in str(info.value) and needle in str(info.value)
    req.Wait()  # the bad message was consumed (an oversized one through a bounded, truncated receive)
    assert poll_obj(comm) == []
