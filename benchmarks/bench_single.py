"""Single-process CartPole throughput: hpcrl vs Stable-Baselines3 (target 1.3x), CleanRL-style PPO and RLlib.

    python -m benchmarks.bench_single [--quick] [--frames 100000] [--repeats 3]

The same PPO config on every side (benchmarks/configs/cartpole_ppo.yaml, translated field by field for the
peers by :func:`benchmarks.training.sb3_params`): 8 envs x 128 steps per update, 4 epochs x 4 minibatches
of 256, separate 2 x 64 tanh actor and critic, Adam eps 1e-5, linear learning-rate decay, one torch thread.
Every run is a fresh process (hpcrl through ``python -m benchmarks.training``, peers in their own venvs), and
runs alternate hpcrl / peers; each side's best of ``--repeats`` counts (the least disturbed run on a shared
machine). fps = frames over env and model construction plus training (imports excluded); RLlib: frames over
its ``train()`` loop (its construction is ``ray.init`` + actors, see the ``startup`` benchmark). The fps
ceiling of one process (``limits``) is the row's "of limit".
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import BenchResult, Context, Row, bench_main, best, first_error, sb3_cartpole_params
from benchmarks.training import run_hpcrl_child

__all__ = ["main", "run"]

TARGET_SB3 = 1.3
SCRIPTS = {"sb3": "sb3_ppo.py", "cleanrl": "cleanrl_ppo.py", "rllib": "rllib_ppo.py"}
LABELS = {"sb3": "SB3 (DummyVecEnv)", "cleanrl": "CleanRL-style PPO", "rllib": "RLlib PPO (0 env runners)"}


def run(ctx: Context) -> BenchResult:
    """Alternate hpcrl and the peers; one row per peer (hpcrl's best fps vs the peer's best)."""
    frames = ctx.opt("frames", 20_000 if ctx.quick else 100_000)
    repeats = ctx.opt("repeats", 1 if ctx.quick else 3)
    names = ["sb3", "cleanrl"] if ctx.quick else ["sb3", "cleanrl", "rllib"]
    res = BenchResult("single")
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl": [], **{n: [] for n in names}}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-single-") as tmp:
        for i in range(repeats):
            try:
                h = run_hpcrl_child(
                    ["experiment.seed=1", f"experiment.total_frames={frames}"], Path(tmp) / f"r{i}", float("inf")
                )
                runs["hpcrl"].append(
                    {"fps": h["frames"] / h["wall_seconds"], "cpu_fps": h["frames"] / h["cpu_seconds"]}
                )
            except RuntimeError as e:
                runs["hpcrl"].append({"error": str(e)[-1500:]})
            print(f"  hpcrl: {runs['hpcrl'][-1].get('fps', runs['hpcrl'][-1].get('error'))} fps", flush=True)
            for name in names:
                params = dict(sb3_cartpole_params(frames), record_episodes=False)
                try:
                    peers.ensure_peer(name)
                    out = peers.run_peer(
                        name, SCRIPTS[name], ["--params", json.dumps(params)], timeout=1800, quiet=True
                    )
                    span = out["learn_seconds"] if name == "rllib" else out["wall_seconds"]
                    runs[name].append({"fps": out["frames"] / span, "raw": out})
                except peers.PeerError as e:
                    runs[name].append({"error": str(e)[-1500:]})
                print(f"  {name}: {runs[name][-1].get('fps', runs[name][-1].get('error'))} fps", flush=True)
    h_best = best(runs["hpcrl"], "fps")
    limit = ctx.get_limits()["fps_limit"]["1"]
    for name in names:
        judged = name == "sb3"
        res.rows.append(
            Row(
                "single",
                "CartPole fps, one process",
                h_best,
                LABELS[name],
                best(runs[name], "fps"),
                "fps",
                target=TARGET_SB3 if judged else None,
                target_text=f">= {TARGET_SB3}x SB3" if judged else "context",
                note=first_error(runs["hpcrl"] + runs[name]),
                limit=limit,
            ).finish()
        )
    res.data = {"frames": frames, "repeats": repeats, "runs": runs}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 100,000; quick 20,000)")
    p.add_argument("--repeats", type=int, default=None, help="alternating hpcrl / peer runs (default 3)")


main = bench_main("single", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
