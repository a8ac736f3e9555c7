"""Gradient allreduce: MPI Allreduce of one flat float32 buffer vs torch.distributed gloo, ~10k / 1M / 10M floats.

Launch (2 and 4 ranks):

    mpiexec -n 2 python -m mpi4py benchmarks/bench_allreduce.py [--quick]
    mpiexec -n 4 python -m mpi4py benchmarks/bench_allreduce.py [--quick]

Two comparisons, both in the same run:

* the raw collective: ``comm.Allreduce(MPI.IN_PLACE, buf)`` on a float32 numpy buffer vs
  ``dist.all_reduce(tensor)`` on a gloo group bootstrapped from MPI (same size);
* the full hpcrl path: ``MPIGradientSync.allreduce_gradients(params)`` vs ``TorchGradientSync`` (gloo) on
  the same parameters (10 tensors of equal size): copy grads into the flat buffer, reduce, scale, copy back.

Each number is the median over iterations (a barrier before each call). Prints ms per call and the ratio
gloo / MPI (> 1: MPI is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import torch
import torch.distributed as dist
from mpi4py import MPI

from hpcrl.comm.collectives import MPIGradientSync, TorchGradientSync


def median_ms(comm: MPI.Comm, fn, iters: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm up
    times = []
    for _ in range(iters):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    local = np.array([np.median(times) * 1e3])
    worst = np.empty_like(local)
    comm.Allreduce(local, worst, op=MPI.MAX)  # the slowest rank's median
    return float(worst[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        print("run with 2 or more ranks: mpiexec -n 2 python -m mpi4py benchmarks/bench_allreduce.py")
        return
    t0 = time.perf_counter()
    gloo = TorchGradientSync(comm, "gloo")
    init_s = time.perf_counter() - t0
    mpi_sync = MPIGradientSync(comm)
    rows = []
    for n, iters in ((10_240, 1000), (1 << 20, 100), (10 << 20, 20)):
        iters = max(5, iters // (5 if args.quick else 1))
        buf = np.ones(n, np.float32)
        ten = torch.ones(n, dtype=torch.float32)
        raw_mpi = median_ms(comm, lambda: comm.Allreduce(MPI.IN_PLACE, buf), iters)  # noqa: B023
        raw_gloo = median_ms(comm, lambda: dist.all_reduce(ten), iters)  # noqa: B023
        params = [torch.nn.Parameter(torch.zeros(n // 10)) for _ in range(10)]
        for p in params:
            p.grad = torch.ones_like(p)
        path_mpi = median_ms(comm, lambda: mpi_sync.allreduce_gradients(params), iters)  # noqa: B023
        path_gloo = median_ms(comm, lambda: gloo.allreduce_gradients(params), iters)  # noqa: B023
        rows.append((n, raw_mpi, raw_gloo, path_mpi, path_gloo))
    gloo.destroy()
    if comm.rank != 0:
        return
    lib = MPI.Get_library_version().splitlines()[0].strip()
    print(f"gradient allreduce, {comm.size} ranks, {lib}, torch {torch.__version__}; gloo init {init_s:.2f} s")
    head = f"{'floats':>10} | {'MPI ms':>8} {'gloo ms':>8} {'gloo/MPI':>8} | {'sync MPI':>8} {'sync gloo':>9}"
    print(f"{head} {'gloo/MPI':>8}")
    for n, rm, rg, pm, pg in rows:
        print(f"{n:>10} | {rm:8.3f} {rg:8.3f} {rg / rm:8.2f} | {pm:8.3f} {pg:9.3f} {pg / pm:8.2f}")
    print("sync = hpcrl GradientSync.allreduce_gradients over 10 parameters (copy in, reduce, scale, copy out)")


if __name__ == "__main__":
    main()
