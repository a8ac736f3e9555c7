"""Tracing overhead: single-process CartPole fps with per-rank HDF5 traces on vs off (target: <= 2 % cost).

The same run (``benchmarks/configs/cartpole_ppo.yaml``) alternates ``run.trace=true`` and
``run.trace=false`` in fresh processes, so slow drifts of the machine hit both sides alike; the row
compares the median fps of each side. Run it alone or through the suite::

    python -m benchmarks.bench_trace [--quick] [--frames 100000] [--repeats 5]
    python -m benchmarks.run --only trace
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import CARTPOLE_YAML, BenchResult, Context, Row, bench_main, run_hpcrl_job

__all__ = ["main", "run"]


def run(ctx: Context) -> BenchResult:
    """Alternate traced and untraced runs; one row: traced fps vs untraced fps (target ratio >= 0.98)."""
    frames = ctx.opt("frames", 20_000 if ctx.quick else 100_000)
    repeats = ctx.opt("repeats", 2 if ctx.quick else 5)
    res = BenchResult("trace")
    fps: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-trace-") as tmp:
        for i in range(repeats):
            for side in ("on", "off") if i % 2 == 0 else ("off", "on"):
                overrides = [f"experiment.total_frames={frames}", "experiment.seed=1", f"run.trace={side}"]
                job = run_hpcrl_job(CARTPOLE_YAML, overrides, Path(tmp) / f"{side}{i}", timeout=900)
                fps[side].append(job.fps)
                print(f"  trace {side}: {job.fps:,.0f} fps", flush=True)
    on, off = statistics.median(fps["on"]), statistics.median(fps["off"])
    res.rows.append(
        Row(
            "trace",
            "CartPole fps, one process, traces on",
            on,
            "same run, traces off",
            off,
            "fps",
            target=0.98,
            target_text="<= 2% fps cost",
            note=(
                f"median of {repeats} alternating runs of {frames:,} frames each; fps on "
                f"{[round(x) for x in fps['on']]}, off {[round(x) for x in fps['off']]}"
            ),
        ).finish()
    )
    res.data = {"frames": frames, "repeats": repeats, "fps": fps}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 100,000; quick 20,000)")
    p.add_argument("--repeats", type=int, default=None, help="runs per side (default 5; quick 2)")


main = bench_main("trace", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
