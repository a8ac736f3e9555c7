"""Cost of evaluation during training and of live TensorBoard scalars: single-process CartPole fps.

Three sides of the same run (``benchmarks/configs/cartpole_ppo.yaml``) alternate in fresh processes, so slow
drifts of the machine hit every side alike:

- ``off``: no evaluation, no TensorBoard;
- ``eval``: ``run.eval_episodes=10`` at the default cadence (``run.eval_every_frames``, 100,000 frames);
- ``tensorboard``: ``run.tensorboard=true`` (scalars written while the run goes).

Rows compare the median fps of each side with ``off`` (targets: evaluation costs <= 5 %, TensorBoard <= 2 %).
On a machine shared with other jobs the fps of separate runs drift by more than that, so one more row measures
the evaluation's cost inside each evaluation run, where drift hits both parts alike: the share of the run's wall
time spent in evaluations (the ``evaluation`` span of its trace), and likewise in the live TensorBoard writer's
calls (its ``tensorboard`` span); the fps ratio each implies is ``1 - share``.
The evaluation side must also have evaluated (its summary counts the evaluations)::

    python -m benchmarks.bench_eval [--quick] [--frames 200000] [--repeats 3]
    python -m benchmarks.run --only eval
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import CARTPOLE_YAML, BenchResult, Context, Row, bench_main, run_hpcrl_job

__all__ = ["main", "run"]

SIDES: dict[str, list[str]] = {
    "off": [],
    "eval": ["run.eval_episodes=10"],
    "tensorboard": ["run.tensorboard=true"],
}


def run(ctx: Context) -> BenchResult:
    """Alternate the three sides; one row each for evaluation and TensorBoard (fps ratio to ``off``)."""
    frames = ctx.opt("frames", 100_000 if ctx.quick else 200_000)
    repeats = ctx.opt("repeats", 2 if ctx.quick else 3)
    res = BenchResult("eval")
    fps: dict[str, list[float]] = {side: [] for side in SIDES}
    evaluations: list[int] = []
    shares: list[float] = []
    tb_shares: list[float] = []
    names = list(SIDES)
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-eval-") as tmp:
        for i in range(repeats):
            order = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
            for side in order:
                overrides = [f"experiment.total_frames={frames}", "experiment.seed=1", *SIDES[side]]
                job = run_hpcrl_job(CARTPOLE_YAML, overrides, Path(tmp) / f"{side}{i}", timeout=900)
                fps[side].append(job.fps)
                if side == "eval":
                    evaluations.append(int(job.summary.get("evaluations", 0)))
                    shares.append(_span_share(Path(tmp) / f"{side}{i}", "evaluation", job.summary))
                if side == "tensorboard":
                    tb_shares.append(_span_share(Path(tmp) / f"{side}{i}", "tensorboard", job.summary))
                print(f"  {side}: {job.fps:,.0f} fps", flush=True)
    off = statistics.median(fps["off"])
    for side, text, target, target_text in (
        ("eval", "evaluation on (10 episodes every 100k frames)", 0.95, "<= 5% fps cost"),
        ("tensorboard", "live TensorBoard scalars on", 0.98, "<= 2% fps cost"),
    ):
        res.rows.append(
            Row(
                f"eval:{side}",
                f"CartPole fps, one process, {text}",
                statistics.median(fps[side]),
                "same run, both off",
                off,
                "fps",
                target=target,
                target_text=target_text,
                note=(
                    f"median of {repeats} alternating runs of {frames:,} frames each; fps {side} "
                    f"{[round(x) for x in fps[side]]}, off {[round(x) for x in fps['off']]}"
                    + (f"; evaluations per run {evaluations}" if side == "eval" else "")
                ),
            ).finish()
        )
    share = statistics.median(shares)
    res.rows.append(
        Row(
            "eval:share",
            "fps ratio implied by the evaluation runs' own time split (1 - evaluation share)",
            1.0 - share,
            "no time in evaluations",
            1.0,
            "x",
            target=0.95,
            target_text="<= 5% fps cost",
            note=f"evaluation share of wall time per run {[round(x, 4) for x in shares]}",
        ).finish()
    )
    tb_share = statistics.median(tb_shares)
    res.rows.append(
        Row(
            "eval:tensorboard-share",
            "fps ratio implied by the TensorBoard runs' own time split (1 - time in the live writer)",
            1.0 - tb_share,
            "no time in the writer",
            1.0,
            "x",
            target=0.98,
            target_text="<= 2% fps cost",
            note=f"share of wall time in the live writer's calls per run {[round(x, 5) for x in tb_shares]}",
        ).finish()
    )
    if not evaluations or min(evaluations) < 1:
        raise RuntimeError(f"the evaluation side did not evaluate (evaluations per run: {evaluations})")
    res.data = {
        "frames": frames,
        "repeats": repeats,
        "fps": fps,
        "evaluations": evaluations,
        "shares": shares,
        "tensorboard_shares": tb_shares,
    }
    return res


def _span_share(run_dir: Path, name: str, summary: dict[str, Any]) -> float:
    """Share of a run's wall time spent in the span ``name`` of its rank-0 trace."""
    from hpcrl.storage.trace import read_trace

    wall = float(summary.get("wall_seconds") or 0.0)
    seconds = 0.0
    for path in sorted((run_dir / "traces").glob("rank-0000*.h5")):
        span = read_trace(path)["timings"].get(name)
        if span is not None and len(span["seconds"]):
            seconds += float(span["seconds"][-1])
    return seconds / wall if wall > 0 else 0.0


def _arguments(p: Any) -> None:
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 200,000; quick 100,000)")
    p.add_argument("--repeats", type=int, default=None, help="runs per side (default 3; quick 2)")


main = bench_main("eval", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
