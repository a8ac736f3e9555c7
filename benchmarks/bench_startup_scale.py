"""Start-up at 8 / 32 / 64 ranks on simulated nodes of 8 ranks: launch -> first trained batch, and rank 0's share.

    python -m benchmarks.bench_startup_scale [--quick] [--ranks 8 32 64]

Each job is a fresh ``mpiexec -launcher fork -hosts h1,...,hK -ppn 8 -n N python -m mpi4py -m hpcrl.run`` of
the CartPole config (1 trainer rank, one inference rank per simulated node, the rest actors, which never
import torch), timed from just before the launch to the end of the first trainer step (rank 0's trace).
Rank 0's share is the time rank 0 spends in the start-up steps whose work there grows with the ranks, as its
trace records them: gathering the rank table and writing ``ranks.json`` (``startup_rank_table``) and sending
the first weights to every subscriber (``startup_first_publish``), over the whole start-up.

The baseline is the launch floor on the same simulated nodes: ``N`` processes that import mpi4py and numpy
and meet in one ``Barrier`` (ratio = floor / hpcrl; no target, context for the scaling model). With
``--quick`` only the smallest size runs.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CARTPOLE_YAML,
    MPIEXEC,
    PYTHON,
    ROOT,
    BenchResult,
    Context,
    Row,
    bench_main,
    hpcrl_env,
    load_avg,
    run_hpcrl_job,
    simulated_hosts,
)

__all__ = ["launch_floor", "main", "run", "startup"]

PER_NODE = 8
SIZES = (8, 32, 64)
#: rank 0's start-up spans (trace timings) whose work grows with the number of ranks.
RANK0_SPANS = ("startup_rank_table", "startup_first_publish")


def startup(ranks: int, run_dir: Path) -> dict[str, Any]:
    """Seconds from launch to the first trainer step of a CartPole job on ``ranks / 8`` simulated nodes."""
    from hpcrl.storage.trace import read_trace

    nodes = max(1, ranks // PER_NODE)
    overrides = [
        # every actor must fill a few fragments, or no trainer step happens at all (the budget is split)
        f"experiment.total_frames={max(4096, ranks * 2 * 32 * 4)}",
        "actor.fragment_length=32",
        "run.checkpoint_every_seconds=0",
        "layout.trainers=1",
        f"layout.inference={nodes}",
        "actor.envs_per_actor=2",
        "training.batch_size=8",
        "run.startup_seconds=1200",
    ]
    try:
        job = run_hpcrl_job(
            CARTPOLE_YAML, overrides, run_dir, ranks=ranks, timeout=1200, launcher_args=simulated_hosts(nodes, PER_NODE)
        )
    except RuntimeError as e:
        return {"error": str(e)[-1500:]}
    timings = read_trace(run_dir / "traces" / "rank-0000.h5")["timings"]
    spans = {
        s: float(timings[s]["seconds"][-1]) if s in timings and len(timings[s]["seconds"]) else 0.0 for s in RANK0_SPANS
    }
    total = job.startup_seconds
    return {
        "seconds": total,
        "rank0_spans": spans,
        "rank0_share": sum(spans.values()) / total if total else None,
        "job_seconds": job.seconds,
        "load": load_avg(),
    }


def launch_floor(ranks: int) -> dict[str, Any]:
    """Seconds for ``ranks`` processes on the same simulated nodes to start, import mpi4py + numpy, and Barrier."""
    nodes = max(1, ranks // PER_NODE)
    code = "import numpy; from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"
    cmd = [MPIEXEC, *simulated_hosts(nodes, PER_NODE), "-n", str(ranks), PYTHON, "-m", "mpi4py", "-c", code]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=hpcrl_env(), capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out: {' '.join(cmd)}"}
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stdout[-500:]}{proc.stderr[-1000:]}"}
    return {"seconds": time.time() - t0}


def run(ctx: Context) -> BenchResult:
    """Every size once (``--quick``: the smallest only): hpcrl's start-up and the launch floor."""
    sizes = ctx.opt("ranks") or ([SIZES[0]] if ctx.quick else list(SIZES))
    res = BenchResult("startup_scale")
    runs: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-startup-scale-") as tmp:
        for n in sizes:
            floor = launch_floor(n)
            h = startup(n, Path(tmp) / f"n{n}")
            runs[n] = {"hpcrl": h, "floor": floor}
            print(
                f"  {n} ranks: {h.get('seconds', h.get('error'))} s; floor {floor.get('seconds', floor.get('error'))} s"
            )
            share = h.get("rank0_share")
            spans = h.get("rank0_spans") or {}
            note = (
                h.get("error")
                or floor.get("error")
                or (
                    f"rank 0's share (rank table + ranks.json {spans.get('startup_rank_table', 0.0) * 1e3:.1f} ms, "
                    f"first weights to every subscriber {spans.get('startup_first_publish', 0.0) * 1e3:.1f} ms): "
                    f"{100 * share:.2f} %"
                    if share is not None
                    else ""
                )
            )
            res.rows.append(
                Row(
                    "startup_scale",
                    f"start-up to first trained batch, {n} ranks on {max(1, n // PER_NODE)} simulated nodes",
                    h.get("seconds"),
                    "launch floor (mpi4py + numpy import, Barrier)",
                    floor.get("seconds"),
                    "s",
                    higher_is_better=False,
                    target_text="context",
                    note=str(note)[:300],
                ).finish()
            )
    res.data = {"runs": {str(k): v for k, v in runs.items()}, "per_node": PER_NODE}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="world sizes (default 8 32 64; quick 8)")


main = bench_main("startup_scale", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
