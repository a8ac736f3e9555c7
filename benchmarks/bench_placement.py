"""Inference placement: CartPole fps on 4 simulated nodes, node-aware (``layout.placement=node``) vs round-robin.

MPICH's Hydra with ``-launcher fork -hosts n1:P+1,n2:P,n3:P,n4:P`` starts every rank on this machine but
makes each host name its own node: messages between hosts go through the network module instead of shared
memory. One trainer and 4 inference ranks (``layout.inference=4``): node-aware placement puts one inference
rank on every node, serving the actors of its node (no inference request crosses nodes); round-robin takes
ranks 1-4, all on the first nodes, so the actors of the other nodes ask across nodes. Both placements
alternate in fresh jobs within one run; the row compares the median fps (ratio > 1: node-aware is faster).
Loopback between simulated nodes is not a cluster fabric: the ratio shows the cost of the cross-node path
of this MPI on this machine, not of a real network. Run it alone or through the suite::

    python -m benchmarks.bench_placement [--quick] [--per-node 4] [--frames 60000] [--repeats 3]
    python -m benchmarks.run --only placement
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import CARTPOLE_YAML, BenchResult, Context, Row, bench_main, run_hpcrl_job

__all__ = ["main", "run"]

NODES = 4
PLACEMENTS = ("node", "round_robin")


def run(ctx: Context) -> BenchResult:
    """Alternate node-aware and round-robin jobs; one row: node-aware fps vs round-robin fps."""
    per_node = ctx.opt("per_node", 2 if ctx.quick else 4)
    frames = ctx.opt("frames", 20_000 if ctx.quick else 60_000)
    repeats = ctx.opt("repeats", 1 if ctx.quick else 3)
    if per_node < 2:
        raise ValueError(f"--per-node {per_node}: each node needs room for an inference rank and an actor (>= 2)")
    hosts = ",".join(f"n{n + 1}:{per_node + (1 if n == 0 else 0)}" for n in range(NODES))  # n1 also holds the trainer
    ranks = NODES * per_node + 1
    launcher = ["-launcher", "fork", "-hosts", hosts]
    res = BenchResult("placement")
    fps: dict[str, list[float]] = {p: [] for p in PLACEMENTS}
    crossed: dict[str, list[tuple[int, int]]] = {p: [] for p in PLACEMENTS}
    layouts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-placement-") as tmp:
        for i in range(repeats):
            for placement in PLACEMENTS if i % 2 == 0 else PLACEMENTS[::-1]:
                overrides = [
                    f"experiment.total_frames={frames}",
                    "layout.inference=4",
                    f"layout.placement={placement}",
                    "run.trace=false",
                    "run.heartbeat_seconds=600",
                ]
                job = run_hpcrl_job(
                    CARTPOLE_YAML, overrides, Path(tmp) / f"{placement}{i}", ranks=ranks, launcher_args=launcher
                )
                s = job.summary
                fps[placement].append(job.fps)
                crossed[placement].append((int(s["cross_node_requests"]), int(s["inference_requests"])))
                layouts[placement] = str(s["layout"])
                print(
                    f"  {placement}: {job.fps:,.0f} fps, {s['cross_node_requests']:,} of "
                    f"{s['inference_requests']:,} inference requests crossed nodes",
                    flush=True,
                )
    node, rr = statistics.median(fps["node"]), statistics.median(fps["round_robin"])
    res.rows.append(
        Row(
            "placement",
            f"CartPole fps, {ranks} ranks on {NODES} simulated nodes, node-aware inference",
            node,
            "same run, round-robin placement",
            rr,
            "fps",
            note=(
                f"median of {repeats} alternating jobs of {frames:,} frames each (hosts {hosts}); fps node-aware "
                f"{[round(x) for x in fps['node']]}, round-robin {[round(x) for x in fps['round_robin']]}; "
                f"cross-node requests node-aware {crossed['node']}, round-robin {crossed['round_robin']}"
            ),
        ).finish()
    )
    res.data = {
        "hosts": hosts,
        "ranks": ranks,
        "frames": frames,
        "repeats": repeats,
        "fps": fps,
        "cross_node_requests": crossed,
        "layouts": layouts,
    }
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--per-node", type=int, default=None, help="ranks per simulated node (default 4; quick 2)")
    p.add_argument("--frames", type=int, default=None, help="frames per job (default 60,000; quick 20,000)")
    p.add_argument("--repeats", type=int, default=None, help="jobs per placement (default 3; quick 1)")


main = bench_main("placement", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
