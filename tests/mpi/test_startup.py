"""Start-up collectives and the trainers' step agreement under MPI (buffer calls only, every rank asserts the same)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.comm.agreement import Iallreduce_step
from hpcrl.comm.startup import RANK_ENTRY_NBYTES, Bcast_state_dict, Bcast_text, Gather_rank_table

pytestmark = pytest.mark.mpi(min_size=2)


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()
    yield dup
    dup.Barrier()
    dup.Free()


@pytest.mark.parametrize("text", ["", "run dir in use by host-a pid 12", "λ ✓ " * 300])
def test_bcast_text_gives_every_rank_the_roots_string(comm: Any, text: str) -> None:
    root = comm.size - 1
    got = Bcast_text(comm, text if comm.rank == root else "something else", root=root)
    assert got == text


def test_gather_rank_table_on_rank_zero_in_rank_order(comm: Any) -> None:
    entry = {"rank": comm.rank, "role": f"role-{comm.rank}", "host": "node-λ", "pid": os.getpid()}
    table = Gather_rank_table(comm, entry)
    if comm.rank == 0:
        assert table is not None and [e["rank"] for e in table] == list(range(comm.size))
        assert all(e["role"] == f"role-{e['rank']}" and e["host"] == "node-λ" for e in table)
    else:
        assert table is None


def test_rank_table_entry_too_long_is_refused_before_the_gather() -> None:
    from mpi4py import MPI

    with pytest.raises(ValueError, match=f"at most {RANK_ENTRY_NBYTES} fit"):
        Gather_rank_table(MPI.COMM_SELF, {"host": "x" * RANK_ENTRY_NBYTES})


def test_bcast_state_dict_copies_the_roots_values_in_place(comm: Any) -> None:
    import torch

    torch.manual_seed(comm.rank)
    state = {
        "w": torch.randn(3, 4),
        "b": torch.randn(4).double(),
        "steps": np.full((2,), comm.rank, np.int64),
        "strided": torch.randn(4, 6)[:, ::2],
    }
    keep = {k: v for k, v in state.items()}
    Bcast_state_dict(comm, state, root=0)
    torch.manual_seed(0)
    want = {"w": torch.randn(3, 4), "b": torch.randn(4).double(), "strided": torch.randn(4, 6)[:, ::2]}
    for k, v in want.items():
        assert torch.equal(state[k], v), k
        assert state[k] is keep[k]  # in place
    assert state["steps"].tolist() == [0, 0]


def test_bcast_state_dict_copies_0d_values(comm: Any) -> None:
    """0-d values (a running count, BatchNorm's ``num_batches_tracked``) keep their shape and get the root's value."""
    import torch

    state = {"count": torch.tensor(float(comm.rank + 1), dtype=torch.float64), "n": np.array(comm.rank + 5)}
    keep = dict(state)
    Bcast_state_dict(comm, state, root=0)
    assert state["count"] is keep["count"] and state["count"].shape == () and float(state["count"]) == 1.0
    assert state["n"].shape == () and int(state["n"]) == 5


@pytest.mark.parametrize("stopper", [None, 0, 1])
def test_step_agreement_stops_together_with_the_largest_frame_count(comm: Any, stopper: int | None) -> None:
    idles: list[int] = []
    stop, frames = Iallreduce_step(comm, comm.rank == stopper, 1000 - comm.rank, lambda: idles.append(1))
    assert stop is (stopper is not None)
    assert frames == 1000


def test_int_announcement_reaches_every_rank_after_the_root_decides(comm: Any) -> None:
    """Receivers post first and keep polling; the root announces later; every rank gets the value and the
    shares every actor computes from it add up to it exactly."""
    import time

    from hpcrl.comm.startup import IntAnnouncement
    from hpcrl.runtime.budget import actor_share

    root = comm.size - 1
    ann = IntAnnouncement(comm, root)
    assert ann.test() is None  # nothing yet, anywhere (the root has not announced)
    comm.Barrier()
    if comm.rank == root:
        time.sleep(0.2)  # the root decides late (e.g. after restoring a checkpoint)
        ann.announce(10_007)
    deadline = time.monotonic() + 30
    while ann.test() is None:
        assert time.monotonic() < deadline, "the announcement never arrived"
        time.sleep(0.001)
    assert ann.value == 10_007
    ann.close(timeout=30)
    assert ann.comm is None
    shares = [actor_share(10_007, comm.size, k) for k in range(comm.size)]
    assert sum(shares) == 10_007 and max(shares) - min(shares) <= 1


def test_int_announcement_closed_by_a_root_that_never_announced_gives_zero(comm: Any) -> None:
    """A root that leaves without announcing still completes the broadcast: nobody waits forever."""
    from hpcrl.comm.startup import IntAnnouncement

    ann = IntAnnouncement(comm, 0)
    ann.close(timeout=30)
    assert ann.value == 0
