"""Gradient allreduce on CPU: hpcrl's MPI path vs torch.distributed gloo, 10k / 1M / 10M float32 gradients.

    python -m benchmarks.bench_allreduce [--quick] [--ranks 2]      # starts the MPI job below, prints the rows
    mpiexec -n 2 python -m mpi4py -m benchmarks.bench_allreduce --mpi-worker OUT.json [--quick]   # the job itself

Two comparisons in the same job, on every rank:

* the full trainer path (the rows): ``MPIGradientSync.allreduce_gradients(params)`` (the CPU default,
  ``training.grad_backend: auto`` or ``mpi``) vs ``TorchGradientSync`` on a gloo group bootstrapped from
  MPI, on the same 10 parameters of equal size: copy the gradients into one flat buffer, reduce, scale,
  copy back;
* the bare collective (in the notes): ``comm.Allreduce(MPI.IN_PLACE, buf)`` on a float32 numpy buffer vs
  ``dist.all_reduce(tensor)`` on the gloo group.

Each number is the slowest rank's median over the iterations (a barrier before each call), in
milliseconds; the ratio is gloo / MPI (> 1: hpcrl's MPI path is faster). Context rows (no target): they
back the choice of MPI as the CPU default.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.common import BenchResult, Context, Row, bench_main, run_mpi_module, write_json

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["main", "run"]

SIZES = ((10_240, 1000), (1 << 20, 100), (10 << 20, 20))
"""(floats, iterations) per size."""


def median_ms(comm: MPI.Comm, fn: Callable[[], Any], iters: int) -> float:
    """The slowest rank's median milliseconds per call of ``fn`` (one warm-up call, a barrier before each)."""
    from mpi4py import MPI

    fn()
    times = []
    for _ in range(iters):
        comm.Barrier()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    local = np.array([np.median(times) * 1e3])
    worst = np.empty_like(local)
    comm.Allreduce(local, worst, op=MPI.MAX)
    return float(worst[0])


def worker(out_path: Path, quick: bool) -> None:
    """The MPI program (2 or more ranks); rank 0 writes the medians to ``out_path``."""
    import torch
    import torch.distributed as dist
    from mpi4py import MPI

    from hpcrl.comm.collectives import MPIGradientSync, TorchGradientSync

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    if comm.size < 2:
        raise SystemExit("bench_allreduce needs 2 or more ranks")
    t0 = time.perf_counter()
    gloo = TorchGradientSync(comm, "gloo")
    init_s = time.perf_counter() - t0
    mpi_sync = MPIGradientSync(comm)
    rows = []
    for n, iters in SIZES:
        iters = max(5, iters // (5 if quick else 1))
        buf = np.ones(n, np.float32)
        ten = torch.ones(n, dtype=torch.float32)
        raw_mpi = median_ms(comm, lambda: comm.Allreduce(MPI.IN_PLACE, buf), iters)  # noqa: B023
        raw_gloo = median_ms(comm, lambda: dist.all_reduce(ten), iters)  # noqa: B023
        params = [torch.nn.Parameter(torch.zeros(n // 10)) for _ in range(10)]
        for p in params:
            p.grad = torch.ones_like(p)
        path_mpi = median_ms(comm, lambda: mpi_sync.allreduce_gradients(params), iters)  # noqa: B023
        path_gloo = median_ms(comm, lambda: gloo.allreduce_gradients(params), iters)  # noqa: B023
        rows.append(
            {"floats": n, "raw_mpi_ms": raw_mpi, "raw_gloo_ms": raw_gloo, "mpi_ms": path_mpi, "gloo_ms": path_gloo}
        )
    gloo.destroy()
    if comm.rank == 0:
        lib = MPI.Get_library_version().splitlines()[0].strip()
        write_json(out_path, {"ranks": comm.size, "rows": rows, "gloo_init_seconds": init_s, "mpi_library": lib})


def _floats(n: int) -> str:
    return f"{n / 2**20:g}M" if n >= 1 << 20 else f"{n / 1024:g}k"


def run(ctx: Context) -> BenchResult:
    """Start the job; one row per size: hpcrl's MPI gradient sync vs gloo (milliseconds per call)."""
    ranks = int(ctx.opt("ranks", 2))
    data = run_mpi_module("benchmarks.bench_allreduce", ranks, ["--quick"] if ctx.quick else [])
    res = BenchResult("allreduce", data=data)
    for r in data["rows"]:
        res.rows.append(
            Row(
                "allreduce",
                f"gradient allreduce, {_floats(r['floats'])} float32 in 10 tensors, {data['ranks']} ranks",
                r["mpi_ms"],
                "torch.distributed gloo (TorchGradientSync)",
                r["gloo_ms"],
                "ms",
                higher_is_better=False,
                target_text="context",
                note=(
                    f"bare collective: MPI Allreduce {r['raw_mpi_ms']:.3f} ms, "
                    f"gloo all_reduce {r['raw_gloo_ms']:.3f} ms"
                ),
            ).finish()
        )
    res.notes.append(f"gloo group set-up {data['gloo_init_seconds']:.2f} s; {data['mpi_library']}")
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--ranks", type=int, default=None, help="MPI ranks (default 2)")


main = bench_main(
    "allreduce", run, __doc__, _arguments, worker=lambda a: worker(Path(a.mpi_worker), a.quick)
)  # ``--mpi-worker OUT`` (under mpiexec): the MPI program


if __name__ == "__main__":
    raise SystemExit(main())
