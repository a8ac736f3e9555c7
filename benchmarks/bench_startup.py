"""Start-up time to the first trained batch: hpcrl under ``mpiexec -n 4`` vs the peers' start-up (CartPole PPO).

    python -m benchmarks.bench_startup [--quick] [--repeats 3]

Each measurement starts a fresh process tree and is the wall time from just before the launch (as seen by
this driver) to the end of the first PPO update (1024 rows, 4 epochs x 4 minibatches):

* hpcrl: ``mpiexec -n 4 python -m mpi4py -m hpcrl.run`` (1 trainer + 3 actor ranks, policy inline; all
  4 ranks import torch); the first trainer step's time comes from rank 0's trace. Also shown for context:
  hpcrl in one process.
* SB3 (one process; ``sb3_startup.py``: second rollout start), the CleanRL-style script (one process),
  Sample Factory 2 (3 rollout workers + learner, async) and RLlib (3 env runners): each script reports
  ``time.time()`` when its first update finished.

The best (smallest) of ``--repeats`` runs counts (the first run of each may pay for a cold file cache).
Lower is better; the ratio column is peer / hpcrl. No target: context for the other rows.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import (
    CARTPOLE_YAML,
    BenchResult,
    Context,
    Row,
    bench_main,
    best,
    first_error,
    load_avg,
    run_hpcrl_job,
    sb3_cartpole_params,
)

__all__ = ["hpcrl_startup", "main", "peer_startup", "run"]

RANKS = 4


def hpcrl_startup(ranks: int, run_dir: Path) -> dict[str, Any]:
    """Seconds from launch to the first trainer step of an hpcrl CartPole job (0 ranks: one process)."""
    overrides = ["experiment.total_frames=4096", "run.checkpoint_every_seconds=0"]
    if ranks:
        overrides += ["layout.inference=0", "training.batch_size=8"]
    try:
        job = run_hpcrl_job(CARTPOLE_YAML, overrides, run_dir, ranks=ranks, timeout=600)
    except RuntimeError as e:
        return {"error": str(e)[-1500:]}
    return {"seconds": job.startup_seconds, "job_seconds": job.seconds, "load": load_avg()}


def peer_startup(peer: str, work: Path) -> dict[str, Any]:
    """Seconds from launch to the end of the first update of ``peer`` (sb3, cleanrl, sample_factory, rllib)."""
    params = sb3_cartpole_params(1024)
    script = {
        "sb3": "sb3_startup.py",
        "cleanrl": "cleanrl_ppo.py",
        "sample_factory": "sf_ppo.py",
        "rllib": "rllib_ppo.py",
    }[peer]
    if peer == "sample_factory":
        params.update(num_workers=RANKS - 1, envs_per_worker=params["n_envs"], train_dir=str(work / "sf"))
        params["total_frames"] = 2048
    elif peer == "rllib":
        params.update(num_env_runners=RANKS - 1)
    try:
        peers.ensure_peer(peer)
    except peers.PeerError as e:
        return {"error": f"peer not installable: {e}"}
    t0 = time.time()
    try:
        out = peers.run_peer(peer, script, ["--params", json.dumps(params)], timeout=900, quiet=True)
    except peers.PeerError as e:
        return {"error": f"peer run failed: {str(e)[-600:]}"}
    first = out.get("first_update_epoch")
    return {"seconds": first - t0 if first else None, "job_seconds": time.time() - t0, "load": load_avg()}


def run(ctx: Context) -> BenchResult:
    """hpcrl -n 4 (and one process) vs every peer, alternating; best of ``repeats``."""
    quick = ctx.quick
    repeats = ctx.opt("repeats", 1 if quick else 3)
    names = ["sb3"] if quick else ["sb3", "cleanrl", "sample_factory", "rllib"]
    res = BenchResult("startup")
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl-n4": [], "hpcrl-1": [], **{n: [] for n in names}}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-startup-") as tmp:
        work = Path(tmp)
        for rep in range(repeats):
            r = hpcrl_startup(RANKS, work / f"h4-{rep}")
            runs["hpcrl-n4"].append(r)
            print(f"  hpcrl -n {RANKS}: {r.get('seconds', r.get('error'))} s to the first update", flush=True)
            if not quick:
                r = hpcrl_startup(0, work / f"h1-{rep}")
                runs["hpcrl-1"].append(r)
                print(f"  hpcrl 1 process: {r.get('seconds', r.get('error'))} s", flush=True)
            for name in names:
                r = peer_startup(name, work)
                runs[name].append(r)
                print(f"  {name}: {r.get('seconds', r.get('error'))} s", flush=True)

    h = best(runs["hpcrl-n4"], "seconds", lowest=True)
    h1 = best(runs["hpcrl-1"], "seconds", lowest=True)
    labels = {
        "sb3": "SB3 (1 process)",
        "cleanrl": "CleanRL-style (1 process)",
        "sample_factory": "Sample Factory 2 (3 workers)",
        "rllib": "RLlib (3 env runners)",
    }
    for name in names:
        note = first_error(runs["hpcrl-n4"]) or first_error(runs[name])
        if not note and h1 is not None:
            note = f"hpcrl in one process: {h1:.2f} s"
        res.rows.append(
            Row(
                "startup",
                f"start-up to first trained batch, mpiexec -n {RANKS}",
                h,
                labels[name],
                best(runs[name], "seconds", lowest=True),
                "s",
                higher_is_better=False,
                target_text="context",
                note=note,
            ).finish()
        )
    res.data = {"runs": runs, "ranks": RANKS}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--repeats", type=int, default=None, help="alternating rounds (default 3; quick 1)")


main = bench_main("startup", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
