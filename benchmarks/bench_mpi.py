"""CartPole PPO throughput under ``mpiexec -n 2 / 4 / 8``: hpcrl vs SB3, Sample Factory 2 (async) and RLlib.

    python -m benchmarks.bench_mpi [--quick] [--ranks 2,4,8] [--frames 100000] [--repeats 2]

The same PPO config everywhere (benchmarks/configs/cartpole_ppo.yaml): 1024 rows per update (8 envs x
128 steps), 4 epochs x 4 minibatches of 256, separate 2 x 64 tanh actor and critic, one torch thread
per process.

* hpcrl: ``mpiexec -n N python -m mpi4py -m hpcrl.run`` with rank 0 training and N - 1 actor ranks
  running the policy inline (``layout.inference=0``), 8 envs each; ``training.batch_size=8`` keeps one
  update at 1024 rows whatever N is (``max_staleness`` 1: older fragments are dropped and counted).
* Stable-Baselines3: one process (``DummyVecEnv`` of 8 envs) -- the single-process baseline.
* Sample Factory 2: APPO without V-trace (async PPO), ``num_workers = N - 1`` rollout worker processes of
  8 envs each (the same env-stepping layout as hpcrl's actor ranks) plus its learner/inference process.
* RLlib: PPO with ``num_env_runners = N - 1`` of 8 envs, 1024 rows per update (``train_batch_size``).
  Skipped with ``--quick``.

fps: peers report env frames per second over their training loop (SB3: frames / ``learn`` seconds; SF:
its own main-loop fps; RLlib: frames over the ``train()`` loop). hpcrl's number is the steady trained
rate on rank 0: (PPO updates - 1) x 1024 rows between the first and the last update, so it counts only
frames that went into an update (the run summary's env fps also counts fragments dropped as stale; it is
shown in the note). Runs alternate hpcrl / peers and each side's best of ``--repeats`` counts.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import (
    CARTPOLE_YAML,
    BenchResult,
    Context,
    JobResult,
    Row,
    bench_main,
    best,
    first_error,
    load_avg,
    run_hpcrl_job,
    sb3_cartpole_params,
)

__all__ = ["hpcrl_mpi", "main", "peer_run", "run"]

TARGET_SB3 = 2.0
TARGET_SF = 5.0


def hpcrl_mpi(ranks: int, frames: int, run_dir: Path, extra: list[str] | None = None) -> JobResult:
    """One hpcrl CartPole job on ``ranks`` ranks (1 trainer + inline-inference actors of 8 envs)."""
    overrides = [
        f"experiment.total_frames={frames}",
        "layout.inference=0",
        "actor.envs_per_actor=8",
        "training.batch_size=8",
        "run.checkpoint_every_seconds=0",
        *(extra or []),
    ]
    return run_hpcrl_job(CARTPOLE_YAML, overrides, run_dir, ranks=ranks, timeout=900, rows_per_step=1024)


def peer_run(peer: str, frames: int, workers: int, work: Path, seed: int = 1) -> dict[str, Any]:
    """One peer run on CartPole: ``sb3`` / ``cleanrl`` (one process), ``sample_factory`` / ``rllib`` (workers).

    Returns:
        The peer script's JSON, or ``{"error": reason, "installable": bool}``.
    """
    params = sb3_cartpole_params(frames, seed)
    script = {"sb3": "sb3_ppo.py", "cleanrl": "cleanrl_ppo.py", "sample_factory": "sf_ppo.py", "rllib": "rllib_ppo.py"}
    if peer == "sb3":
        params["record_episodes"] = True
    elif peer == "sample_factory":
        params.update(num_workers=workers, envs_per_worker=params["n_envs"], train_dir=str(work / "sf"))
    elif peer == "rllib":
        params.update(num_env_runners=workers)
    try:
        peers.ensure_peer(peer)
    except peers.PeerError as e:
        return {"error": f"peer not installable: {e}", "installable": False}
    try:
        return peers.run_peer(peer, script[peer], ["--params", json.dumps(params)], timeout=1800, quiet=True)
    except peers.PeerError as e:
        return {"error": f"peer run failed: {str(e)[-600:]}", "installable": True}


def run(ctx: Context) -> BenchResult:
    """Run the rows for every rank count; returns the suite result."""
    quick = ctx.quick
    ranks = [int(x) for x in str(ctx.opt("ranks", "2" if quick else "2,4,8")).split(",") if x.strip()]
    frames = ctx.opt("frames", 20_000 if quick else 100_000)
    repeats = ctx.opt("repeats", 1 if quick else 2)
    limits = ctx.get_limits()
    res = BenchResult("mpi")
    data: dict[str, Any] = {"frames": frames, "repeats": repeats, "ranks": {}, "sb3": []}
    peer_names = ["sample_factory"] if quick else ["sample_factory", "rllib"]
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-mpi-") as tmp:
        work = Path(tmp)
        for rep in range(repeats):
            sb3 = peer_run("sb3", frames, 0, work)
            data["sb3"].append(sb3)
            print(f"  sb3 (1 process): {sb3.get('fps', sb3.get('error'))} fps", flush=True)
            for n in ranks:
                entry = data["ranks"].setdefault(str(n), {"hpcrl": [], **{p: [] for p in peer_names}})
                try:
                    job = hpcrl_mpi(n, frames, work / f"h{n}-{rep}")
                    h = {
                        "fps": job.fps,
                        "trained_fps": job.steady_trained_fps,
                        "summary": job.summary,
                        "load": load_avg(),
                    }
                except RuntimeError as e:
                    h = {"error": str(e)[-1500:]}
                entry["hpcrl"].append(h)
                print(f"  hpcrl -n {n}: {h.get('fps', h.get('error'))} fps, trained {h.get('trained_fps')}", flush=True)
                for peer in peer_names:
                    r = peer_run(peer, frames, n - 1, work)
                    entry[peer].append(r)
                    print(f"  {peer} ({n - 1} workers): {r.get('fps', r.get('error'))} fps", flush=True)
    sb3_best = best(data["sb3"], "fps")
    for n in ranks:
        entry = data["ranks"][str(n)]
        h_env, h_trained = best(entry["hpcrl"], "fps"), best(entry["hpcrl"], "trained_fps")
        lim = limits["fps_limit"].get(str(n))
        dropped = [r["summary"].get("dropped_fragments") for r in entry["hpcrl"] if "summary" in r]
        note = f"env fps {h_env:,.0f} (dropped fragments {dropped})" if h_env else first_error(entry["hpcrl"])
        res.rows.append(
            Row(
                "mpi",
                f"CartPole fps, mpiexec -n {n} (trained frames/s)",
                h_trained,
                "SB3 (1 process)",
                sb3_best,
                "fps",
                target=TARGET_SB3 if n == 2 else None,
                target_text=f">= {TARGET_SB3}x SB3" if n == 2 else "context",
                note=note,
                limit=lim,
                load=_load_text(entry["hpcrl"]),
            ).finish()
        )
        for peer in peer_names:
            p_best = best(entry[peer], "fps")
            label = {"sample_factory": "Sample Factory 2 async", "rllib": "RLlib PPO"}[peer]
            res.rows.append(
                Row(
                    "mpi",
                    f"CartPole fps, mpiexec -n {n} (trained frames/s)",
                    h_trained,
                    f"{label} ({n - 1} workers)",
                    p_best,
                    "fps",
                    target=TARGET_SF if (n == 2 and peer == "sample_factory") else None,
                    target_text=f">= {TARGET_SF}x SF" if (n == 2 and peer == "sample_factory") else "context",
                    note=first_error(entry[peer]) if p_best is None else "",
                    limit=lim,
                    load=_load_text(entry["hpcrl"]),
                ).finish()
            )
    data["sb3_best_fps"] = sb3_best
    res.data = data
    return res


def _load_text(runs: list[dict[str, Any]]) -> str:
    loads = [r["load"][0] for r in runs if "load" in r]
    return f"{min(loads):.2f}-{max(loads):.2f}" if loads else ""


def _arguments(p: Any) -> None:
    p.add_argument("--ranks", default=None, help="comma-separated rank counts (default 2,4,8; quick: 2)")
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 100,000; quick 20,000)")
    p.add_argument("--repeats", type=int, default=None, help="alternating hpcrl / peer rounds (default 2)")


main = bench_main("mpi", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
