"""Time to solve CartPole (last-100 mean return >= 475), one process: hpcrl vs SB3 and the CleanRL-style PPO.

    python -m benchmarks.bench_solve [--quick] [--seeds 1,2,3] [--budget 200000]

The config of ``single`` (benchmarks/configs/cartpole_ppo.yaml, the same for every library), one fresh
process per run, seeds alternating hpcrl / peers. Each side's number is the mean wall-clock seconds to the
first frame at which the mean return of the last 100 episodes is >= 475, over the seeds it solved within
the frame budget; the note lists the solved seeds and the frames to 475 per seed. Context (no target):
learning speed per frame is the same algorithm on every side, so this row mostly shows throughput.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import BenchResult, Context, Row, bench_main, sb3_cartpole_params
from benchmarks.training import run_hpcrl_child

__all__ = ["main", "run"]

THRESHOLD = 475.0
PEERS = {"sb3": ("SB3", "sb3_ppo.py"), "cleanrl": ("CleanRL-style PPO", "cleanrl_ppo.py")}


def run(ctx: Context) -> BenchResult:
    """Every seed: hpcrl, then each peer; one row per peer (mean seconds to 475 over the solved seeds)."""
    budget = ctx.opt("budget", 30_000 if ctx.quick else 200_000)
    seeds = [int(s) for s in str(ctx.opt("seeds", "1" if ctx.quick else "1,2,3")).split(",") if s.strip()]
    res = BenchResult("solve")
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl": [], **{n: [] for n in PEERS}}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-solve-") as tmp:
        for seed in seeds:
            overrides = [f"experiment.seed={seed}", f"experiment.total_frames={budget}"]
            try:
                h = run_hpcrl_child(overrides, Path(tmp) / f"s{seed}", THRESHOLD)
                runs["hpcrl"].append(
                    {"seed": seed, "seconds": h["seconds_to_threshold"], "frames": h["frames_to_threshold"]}
                )
            except RuntimeError as e:
                runs["hpcrl"].append({"seed": seed, "error": str(e)[-1500:]})
            for name, (_, script) in PEERS.items():
                params = dict(sb3_cartpole_params(budget, seed, THRESHOLD), record_episodes=True)
                try:
                    peers.ensure_peer(name)
                    out = peers.run_peer(name, script, ["--params", json.dumps(params)], timeout=1800, quiet=True)
                    runs[name].append(
                        {"seed": seed, "seconds": out["seconds_to_threshold"], "frames": out["frames_to_threshold"]}
                    )
                except peers.PeerError as e:
                    runs[name].append({"seed": seed, "error": str(e)[-1500:]})
            print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1].get('seconds')} s" for k, v in runs.items()), flush=True)

    def mean_solved(key: str) -> tuple[float | None, int]:
        vals = [r["seconds"] for r in runs[key] if r.get("seconds") is not None]
        return (sum(vals) / len(vals) if vals else None), len(vals)

    h, hn = mean_solved("hpcrl")
    for name, (label, _) in PEERS.items():
        p, pn = mean_solved(name)
        errors = [r["error"].strip().splitlines()[0][:200] for r in runs["hpcrl"] + runs[name] if "error" in r]
        note = f"solved seeds: hpcrl {hn}/{len(seeds)}, {label} {pn}/{len(seeds)} (budget {budget:,} frames)"
        note += f"; frames to 475: hpcrl {[r.get('frames') for r in runs['hpcrl']]}, {label} "
        note += f"{[r.get('frames') for r in runs[name]]}" + (f"; {errors[0]}" if errors else "")
        res.rows.append(
            Row(
                "solve",
                "CartPole time to solve (s to last-100 mean >= 475), one process",
                h,
                label,
                p,
                "s",
                higher_is_better=False,
                target_text="context (mean over solved seeds)",
                note=note,
            ).finish()
        )
    res.data = {"budget": budget, "seeds": seeds, "runs": runs}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default 1,2,3; quick 1)")
    p.add_argument("--budget", type=int, default=None, help="frame budget per run (default 200,000)")


main = bench_main("solve", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
