"""Tracing overhead: single-process CartPole fps with per-rank HDF5 traces on vs off (target: <= 2 % cost).

The same run (``benchmarks/configs/cartpole_ppo.yaml``) alternates ``run.trace=true`` and
``run.trace=false`` in fresh processes, so slow drifts of the machine hit both sides alike; the row
compares the median fps of each side. Run it alone or through the suite::

    python -m benchmarks.bench_trace [--quick]
    python -m benchmarks.run --only trace
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import CARTPOLE_YAML, BenchResult, Row, load_avg, run_hpcrl_job  # noqa: E402

__all__ = ["run"]


def run(quick: bool) -> BenchResult:
    """Alternate traced and untraced runs; one row: traced fps vs untraced fps (target ratio >= 0.98)."""
    frames = 20_000 if quick else 100_000
    repeats = 2 if quick else 5
    res = BenchResult("trace", quick=quick, load_start=load_avg())
    t0 = time.time()
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
            note=f"median of {repeats} alternating runs of {frames:,} frames each; on {fps['on']}, off {fps['off']}",
            load=f"{res.load_start[0]:.2f}",
        ).finish()
    )
    res.data = {"frames": frames, "repeats": repeats, "fps": fps}
    res.load_end = load_avg()
    res.seconds = round(time.time() - t0, 1)
    return res


def main(argv: list[str] | None = None) -> int:
    """Command line: run and print the row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 x 20k frames per side instead of 5 x 100k")
    args = p.parse_args(argv)
    res = run(args.quick)
    for r in res.rows:
        print(f"{r.measure}: {r.hpcrl:,.0f} vs {r.peer_value:,.0f} fps -> ratio {r.ratio:.3f} (target {r.target_text})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
