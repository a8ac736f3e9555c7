"""Parameter publication under MPI: rank 0 publishes, every other rank subscribes; newest version wins."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.comm.channel import drain_and_close
from hpcrl.comm.params import ParamPublisher, ParamsError, ParamSubscriber
from hpcrl.comm.polling import WaitTimeout, wait_for
from hpcrl.comm.tags import Tag

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()
    yield dup
    dup.Barrier()
    dup.Free()


def params(version: int, big: bool = False) -> dict[str, np.ndarray]:
    n = (1 << 20) if big else 16  # 4 MiB of float32 forces the rendezvous protocol (sends complete on receipt)
    return {
        "encoder.0.weight": np.full((n,), version, np.float32),
        "encoder.0.bias": np.arange(3, dtype=np.float64) + version,
        "items": np.array([version], np.int64),  # names that are NamedArray methods must survive
        "_keys": np.ones((2, 2), np.uint8) * version,
    }


def check(got: dict[str, np.ndarray], version: int, big: bool = False) -> None:
    want = params(version, big)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_first_params_and_newest_wins(comm: Any) -> None:
    subscribers = list(range(1, comm.size))
    if comm.rank == 0:
        pub = ParamPublisher(comm, subscribers)
        assert pub.version is None and pub.publish(params(1), version=1) == len(subscribers)
        comm.Barrier()  # subscribers have v1
        for v in range(2, 6):
            pub.publish(params(v), version=v)  # small: eager sends complete at once, all queue up
        pub.flush(timeout=30)
        comm.Barrier()
        drain_and_close(comm, [pub], [], timeout=30)
    else:
        sub = ParamSubscriber(comm, source=0)
        version, got = sub.wait(timeout=30)
        assert version == 1 and sub.version == 1
        check(got, 1)
        assert not got["items"].flags.writeable  # views into the receive buffer are read-only
        comm.Barrier()
        comm.Barrier()  # all of v2..v5 are here
        version, got = wait_for(sub.poll, "v5", 0, timeout=30)
        assert version == 5 and sub.received == 5  # v2..v4 were drained and dropped
        check(got, 5)
        assert sub.poll() is None
        drain_and_close(comm, [], [sub], timeout=30)


def test_publish_never_blocks_on_a_lagging_subscriber(comm: Any) -> None:
    """Rank 1 does not receive for a while; publishing must go on (a blocking publish would deadlock here)."""
    subscribers = list(range(1, comm.size))
    if comm.rank == 0:
        pub = ParamPublisher(comm, subscribers)
        pub.publish(params(1, big=True), version=1)
        comm.Barrier()  # A: ranks >= 2 have v1, rank 1 has not received anything
        for v in (2, 3, 4):
            pub.publish(params(v, big=True), version=v)
            assert 1 in pub.lagging
        assert pub.skipped >= 3  # rank 1 was busy with v1 for v2, v3 and v4
        comm.Barrier()  # B
        pub.flush(timeout=60)  # keeps starting v4 for whoever becomes free
        assert pub.lagging == [] and pub.version == 4
        comm.Barrier()  # C
        drain_and_close(comm, [pub], [], timeout=30)
    else:
        sub = ParamSubscriber(comm, source=0)
        seen = []
        if comm.rank != 1:
            seen.append(sub.wait(timeout=30)[0])
        comm.Barrier()  # A
        comm.Barrier()  # B
        while sub.version != 4:
            version, got = sub.wait(timeout=60)
            seen.append(version)
        check(got, 4, big=True)
        assert seen[-1] == 4 and seen == sorted(set(seen))  # newer versions only, never repeated
        if comm.rank == 1:
            assert seen in ([1, 4], [4]), seen  # v1 was in flight; v2 and v3 were skipped
        comm.Barrier()  # C
        drain_and_close(comm, [], [sub], timeout=30)


def test_schema_change_and_torch_tensors(comm: Any) -> None:
    torch = pytest.importorskip("torch")
    subscribers = list(range(1, comm.size))
    if comm.rank == 0:
        pub = ParamPublisher(comm, subscribers, tag=Tag.TEST + 40)
        pub.publish({"w": np.zeros(3, np.float32)}, version=1)
        pub.flush(timeout=30)
        model = torch.nn.Linear(4, 2)
        with torch.no_grad():
            model.weight.fill_(2.0)
            model.bias.fill_(-1.0)
        pub.publish(model.state_dict(), version=2)  # other names and shapes: a new schema
        pub.publish({"weight": model.weight, "bias": model.bias}, version=3)  # requires_grad tensors
        pub.flush(timeout=30)
        drain_and_close(comm, [pub], [], timeout=30)
    else:
        sub = ParamSubscriber(comm, source=0, tag=Tag.TEST + 40)
        version, got = sub.wait(timeout=30)
        if version == 1:
            assert list(got) == ["w"]
            version, got = sub.wait(timeout=30)
        assert version in (2, 3) and list(got) == ["weight", "bias"]
        while version != 3:
            version, got = sub.wait(timeout=30)
        np.testing.assert_array_equal(got["weight"], np.full((2, 4), 2.0, np.float32))
        np.testing.assert_array_equal(got["bias"], np.full((2,), -1.0, np.float32))
        drain_and_close(comm, [], [sub], timeout=30)


def test_empty_state_dict_publishes_the_version(comm: Any) -> None:
    # a parameter-less policy (e.g. ``random``) under MPI: subscribers still learn each new version
    if comm.rank == 0:
        pub = ParamPublisher(comm, [1], tag=Tag.TEST + 42)
        pub.publish({}, version=5)
        pub.flush(timeout=30)
        drain_and_close(comm, [pub], [], timeout=30)
    elif comm.rank == 1:
        sub = ParamSubscriber(comm, source=0, tag=Tag.TEST + 42)
        version, got = sub.wait(timeout=30)
        assert version == 5 and got == {}
        drain_and_close(comm, [], [sub], timeout=30)
    else:
        drain_and_close(comm, [], [], timeout=30)


def test_bad_state_dicts_and_timeouts(comm: Any) -> None:
    if comm.rank == 0:
        pub = ParamPublisher(comm, [1], tag=Tag.TEST + 41)
        with pytest.raises(ParamsError, match="needs a mapping"):
            pub.publish([np.zeros(2)], version=1)  # type: ignore[arg-type]
        with pytest.raises(ParamsError, match="names must be strings"):
            pub.publish({3: np.zeros(2)}, version=1)  # type: ignore[dict-item]
        with pytest.raises(ParamsError, match="cannot go on the wire"):
            pub.publish({"x": np.array([object()])}, version=1)
        assert pub.progress() == 0 and pub.pending == 0
        pub.close()
        with pytest.raises(Exception, match="after close"):
            pub.publish({"x": np.zeros(1)}, version=1)
    elif comm.rank == 1:
        sub = ParamSubscriber(comm, source=0, tag=Tag.TEST + 41)
        assert sub.poll() is None
        with pytest.raises(WaitTimeout, match="parameters .* from rank 0"):
            sub.wait(timeout=0.02)
        sub.close()


def test_one_buffer_subscriber_keeps_what_it_handed_out_until_the_next_poll(comm: Any) -> None:
    """With ``nbuffers=1`` a poll takes one publication and posts no receive into its buffer: the arrays it
    handed out stay intact while the next publication is sent (it is received by the next poll)."""
    subscribers = list(range(1, comm.size))
    if comm.rank == 0:
        pub = ParamPublisher(comm, subscribers, tag=Tag.TEST + 41)
        pub.publish(params(1, big=True), version=1)
        pub.flush(timeout=30)
        comm.Barrier()  # A: every subscriber holds v1's arrays
        pub.publish(params(2, big=True), version=2)
        t = time.monotonic()
        while time.monotonic() - t < 0.5:  # give v2 every chance to land (in a wrongly posted receive)
            pub.progress()
        comm.Barrier()  # B
        pub.flush(timeout=30)
        drain_and_close(comm, [pub], [], timeout=30)
    else:
        sub = ParamSubscriber(comm, source=0, tag=Tag.TEST + 41, nbuffers=1)
        version, got = sub.wait(timeout=30)
        assert version == 1
        comm.Barrier()  # A
        t = time.monotonic()
        while time.monotonic() - t < 0.5:  # progress MPI without touching the subscriber
            comm.Iprobe(source=0, tag=Tag.TEST + 999)
        comm.Barrier()  # B
        check(got, 1, big=True)  # not overwritten by v2
        version, got = sub.wait(timeout=30)
        assert version == 2
        check(got, 2, big=True)
        drain_and_close(comm, [], [sub], timeout=30)
