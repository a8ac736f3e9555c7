"""Gradient synchronisation under MPI: one collective per step, correct averages, MPI and gloo backends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from hpcrl.api.config import Layout
from hpcrl.api.trainer import GradientSync
from hpcrl.comm.collectives import (
    CollectiveError,
    MPIGradientSync,
    TorchGradientSync,
    make_gradient_sync,
)
from hpcrl.comm.topology import Topology

pytestmark = pytest.mark.mpi(min_size=2)
torch = pytest.importorskip("torch")


@pytest.fixture
def comm() -> Iterator[Any]:
    from mpi4py import MPI

    dup = MPI.COMM_WORLD.Dup()
    yield dup
    dup.Barrier()
    dup.Free()


def make_params(rank: int) -> list[Any]:
    """Parameters with rank-dependent gradients: grad = (rank + 1) * base; one has no grad on odd ranks."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(3, 4))
    b = torch.nn.Parameter(torch.randn(5))
    c = torch.nn.Parameter(torch.randn(2, 2, dtype=torch.float64))  # its own flat buffer (float64)
    frozen = torch.nn.Parameter(torch.randn(2), requires_grad=False)
    d = torch.nn.Parameter(torch.randn(7))
    for i, p in enumerate((a, b, c, d)):
        p.grad = torch.arange(p.numel(), dtype=p.dtype).reshape(p.shape) * (rank + 1) + i
    if rank % 2 == 1:
        d.grad = None  # contributes zeros
    return [a, b, c, frozen, d]


def expected_grads(size: int) -> list[Any]:
    per_rank = [make_params(r) for r in range(size)]
    out = []
    for i in range(5):
        grads = [ps[i].grad if ps[i].grad is not None else torch.zeros_like(ps[i]) for ps in per_rank]
        out.append(None if i == 3 else sum(grads) / size)
    return out


def check_sync(sync: Any, comm: Any) -> None:
    params = make_params(comm.rank)
    sync.allreduce_gradients(params)
    for p, want in zip(params, expected_grads(comm.size)):
        if want is None:
            assert p.grad is None  # frozen parameters are not touched
        else:
            assert p.grad is not None and p.grad.dtype == p.dtype
            torch.testing.assert_close(p.grad, want)


def test_mpi_backend_averages_with_one_collective_per_dtype(comm: Any) -> None:
    sync = make_gradient_sync(comm, backend="mpi")
    assert isinstance(sync, MPIGradientSync) and (sync.world_size, sync.rank) == (comm.size, comm.rank)
    check_sync(sync, comm)
    assert sync.calls == 2  # one Allreduce for the float32 buffer, one for the float64 one
    check_sync(sync, comm)  # the buffers are reused
    assert sync.calls == 4
    sync.destroy()


def test_auto_is_mpi_on_cpu_and_bad_choices_fail(comm: Any) -> None:
    assert isinstance(make_gradient_sync(comm, backend="auto", device="cpu"), MPIGradientSync)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_gradient_sync(comm, backend="nccl", device="cpu")
    with pytest.raises(ValueError, match="must be one of"):
        make_gradient_sync(comm, backend="horovod")  # type: ignore[arg-type]
    from mpi4py import MPI

    one = make_gradient_sync(MPI.COMM_SELF, backend="mpi")
    assert type(one) is GradientSync and one.world_size == 1
    assert type(make_gradient_sync(None)) is GradientSync
    one.destroy()  # no-op


def test_allreduce_mean(comm: Any) -> None:
    sync = make_gradient_sync(comm, backend="mpi")
    got = sync.allreduce_mean(np.array([comm.rank, 1.0, -2.0 * comm.rank], np.float32))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [(comm.size - 1) / 2, 1.0, -(comm.size - 1)])


def test_layout_mismatch_fails_on_every_rank(comm: Any) -> None:
    sync = make_gradient_sync(comm, backend="mpi")
    params = make_params(comm.rank)
    if comm.rank == 0:
        params.append(torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(CollectiveError, match="gradient layouts differ across trainer ranks"):
        sync.allreduce_gradients(params)


def test_gradient_sync_over_the_trainer_ranks_split(comm: Any) -> None:
    """The trainer ranks' communicator, split from the world as the runtime does (trainers keep their order)."""
    layout = Layout(trainers=2) if comm.size >= 4 else Layout(trainers=1)
    topo = Topology.build(layout, comm.size)
    from hpcrl.comm.startup import Split_trainers

    role = topo.role_of(comm.rank)
    sub = Split_trainers(comm, topo.trainers)
    assert (sub is not None) == (role == "trainer")
    if sub is not None:
        assert sub.Get_size() == len(topo.trainers) and sub.Get_rank() == comm.rank
        sync = make_gradient_sync(sub, backend="mpi")
        if sub.Get_size() == 1:
            assert type(sync) is GradientSync
        else:
            check_sync(sync, sub)
        sync.destroy()
        sub.Free()


def test_gloo_backend_matches_mpi(comm: Any) -> None:
    """gloo over a group bootstrapped from MPI; skipped on every rank if it cannot initialise."""
    from mpi4py import MPI

    sync: Any = None
    error = ""
    try:
        sync = make_gradient_sync(comm, backend="gloo")
    except CollectiveError as e:
        error = str(e)
    ok = np.array([1 if sync is not None else 0], np.int32)
    comm.Allreduce(MPI.IN_PLACE, ok, op=MPI.MIN)
    if not ok[0]:
        if sync is not None:
            sync.destroy()
        pytest.skip(f"gloo could not initialise on some rank: {error or 'see the other ranks'}")
    assert isinstance(sync, TorchGradientSync)
    try:
        check_sync(sync, comm)
        assert sync.calls == 2
        np.testing.assert_allclose(sync.allreduce_mean(np.array([comm.rank])), [(comm.size - 1) / 2])
    finally:
        sync.destroy()
    import torch.distributed as dist

    assert not dist.is_initialized()
