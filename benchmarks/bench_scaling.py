"""Actor scaling with a slow env: 1 -> 16 -> 64 actor ranks, each stepping an env whose step sleeps 1 ms.

    python -m benchmarks.bench_scaling [--quick] [--actors 1,16,64] [--seconds 12]

Layout: ``mpiexec -n A+1``: rank 0 runs the ``null`` trainer (counts frames, bumps the version), A actor
ranks step one ``sleep`` env each (``SleepEnvironment(step_seconds=0.001)``) with a random policy inline
(:class:`BenchRandomPolicy`, numpy only: no torch on any rank), 128-step fragments, staleness unlimited.
The trainer and the policy cost nothing, so the measured rate is the actors' env stepping plus hpcrl's
per-step and per-fragment overhead (env ring, trajectory buffers, channel sends, control plane).

Rate = steady-state env frames per second, from rank 0's trace: frames and wall time between the trainer
step at 25% of the run and the last one (start-up and drain excluded). Efficiency with A actors =
rate(A) / (A x rate(1)). Target: >= 85% at 16 actor ranks. On a 2-core machine 17 ranks share 2 cores:
each actor needs ~1000 x (its per-step CPU time) of a core, so the 64-rank point measures how much CPU
hpcrl's actor loop needs more than how it scales (it is reported, not judged).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BenchResult, Context, Row, bench_main, first_error, load_avg, run_hpcrl_job
from hpcrl.api.policy import register as register_policy
from hpcrl.policies.random import RandomPolicy

__all__ = ["SLEEP_YAML", "BenchRandomPolicy", "main", "run", "steady_fps"]

TARGET = 0.85
STEP_SECONDS = 0.001

SLEEP_YAML = """\
# written by benchmarks/bench_scaling.py
experiment: {name: bench-scaling, seed: 1, total_frames: 10000, imports: [benchmarks.bench_scaling]}
environment: {type_: sleep, args: {step_seconds: %(step)s, obs_dim: 4, n_actions: 2, episode_length: 100}}
policy: {type_: bench-random, args: {action_dim: 2}}
trainer: {type_: 'null', args: {}}
actor: {envs_per_actor: 1, fragment_length: 128, check_env: 'off'}
layout: {trainers: 1, inference: 0}
training: {max_staleness: 1000000000}
run: {checkpoint_every_seconds: 0, trace_flush_seconds: 1.0, heartbeat_seconds: 300}
"""


class BenchRandomPolicy(RandomPolicy):
    """The numpy ``random`` policy plus one dummy parameter array, so the trainer has something to publish.

    The dummy array makes each publication carry a payload like a real policy's (the plain ``random``
    policy, with an empty state dict, publishes only its version; both work under MPI).
    """

    def __init__(self, action_dim: int = 2, continuous_action: bool = False, seed: int = 0) -> None:
        super().__init__(action_dim=action_dim, continuous_action=continuous_action, seed=seed)
        self._w = np.zeros(1, np.float32)

    def state_dict(self) -> dict[str, Any]:
        """``{"w": float32 (1,)}``."""
        return {"w": self._w}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the published array."""
        self._w = np.asarray(state_dict["w"], np.float32)


register_policy("bench-random", BenchRandomPolicy)


def steady_fps(run_dir: Path, skip: float = 0.25) -> tuple[float | None, int]:
    """Env frames per second on rank 0 between the trainer step at ``skip`` of the run and the last one.

    Returns:
        ``(fps, trainer steps)``; fps is None with fewer than 3 trainer steps.
    """
    from hpcrl.storage.trace import read_trace

    traces = sorted((run_dir / "traces").glob("rank-0000*.h5"))
    if not traces:
        return None, 0
    tr = read_trace(traces[0])["trainer"]
    frames, wall = tr["frames"], tr["wall_time"]
    n = len(frames)
    if n < 3:
        return None, n
    i = min(int(n * skip), n - 2)
    dt = float(wall[-1] - wall[i])
    return (float(frames[-1] - frames[i]) / dt if dt > 0 else None), n


def one(actors: int, seconds: float, work: Path) -> dict[str, Any]:
    """One job with ``actors`` actor ranks; frames budget = ideal rate x ``seconds``."""
    cfg = work / "sleep.yaml"
    cfg.write_text(SLEEP_YAML % {"step": STEP_SECONDS})
    frames = int(actors * seconds / STEP_SECONDS)
    run_dir = work / f"a{actors}"
    t0 = time.time()
    job = run_hpcrl_job(
        cfg, [f"experiment.total_frames={frames}"], run_dir, ranks=actors + 1, timeout=600, rows_per_step=128
    )
    fps, steps = steady_fps(run_dir)
    return {
        "actors": actors,
        "frames": frames,
        "steady_fps": fps,
        "summary_fps": job.fps,
        "trainer_steps": steps,
        "job_seconds": round(time.time() - t0, 2),
        "load": load_avg(),
    }


def run(ctx: Context) -> BenchResult:
    """Measure every actor count; one row per count > 1 (efficiency vs the 1-actor rate)."""
    actors = [int(x) for x in str(ctx.opt("actors", "1,16" if ctx.quick else "1,16,64")).split(",") if x.strip()]
    seconds = ctx.opt("seconds", 4.0 if ctx.quick else 12.0)
    res = BenchResult("scaling")
    points: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-scaling-") as tmp:
        for a in actors:
            try:
                p = one(a, seconds, Path(tmp))
            except RuntimeError as e:
                p = {"actors": a, "error": str(e)[-1500:], "load": load_avg()}
            points.append(p)
            print(f"  {a} actor ranks: steady {p.get('steady_fps')} fps, summary {p.get('summary_fps')}", flush=True)
    base = next((p.get("steady_fps") for p in points if p["actors"] == 1), None)
    for p in points:
        a = p["actors"]
        p["efficiency"] = p["steady_fps"] / (a * base) if base and p.get("steady_fps") else None
        if a == 1:
            continue
        judged = a == 16
        res.rows.append(
            Row(
                "scaling",
                f"sleep-env (1 ms/step) fps, {a} actor ranks",
                p.get("steady_fps"),
                f"{a} x one actor rank",
                a * base if base else None,
                "fps",
                target=TARGET if judged else None,
                target_text=f">= {TARGET:.0%} of linear" if judged else "context (oversubscribed)",
                note=first_error([p]) if "error" in p else f"1 actor rank: {base:,.0f} fps",
                limit=a / STEP_SECONDS,
                load=f"{p['load'][0]:.2f}",
            ).finish()
        )
    res.data = {"points": points, "step_seconds": STEP_SECONDS, "seconds": seconds}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--actors", default=None, help="comma-separated actor rank counts (default 1,16,64; quick 1,16)")
    p.add_argument("--seconds", type=float, default=None, help="ideal run length per point (default 12)")


main = bench_main("scaling", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
