"""hpcrl vs Stable-Baselines3 PPO on CartPole-v1, same hyperparameters, same run, one after the other.

    cd /work/main && OMP_NUM_THREADS=1 python -m benchmarks.bench_sb3              # full, ~4 min (+1 with --profile)
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sb3 --quick                        # smoke, < 2 min
    OMP_NUM_THREADS=1 python -m benchmarks.bench_sb3 --only throughput --repeats 5 --profile

The first run creates SB3's private venv (benchmarks/.peers/sb3, ~1 min; see benchmarks/peers.py).

Config: benchmarks/configs/cartpole_ppo.yaml, translated field by field for SB3 (:func:`sb3_params`):
8 envs x 128 steps (SB3 ``DummyVecEnv``, ``n_steps=128``), 4 epochs x 4 minibatches of 256
(``batch_size=256``), separate actor and critic MLPs of 2 x 64 tanh, Adam eps 1e-5, linear lr decay,
one torch thread per process. hpcrl's value loss is ``0.5 * mean((V - R)^2) * value_coef`` while SB3's
is ``mean((V - R)^2) * vf_coef``, so SB3 gets ``vf_coef = value_coef / 2`` (identical loss). Both
libraries build their envs without gymnasium's passive env checker.

Every run is a fresh python process on each side (hpcrl through this script's ``--child-hpcrl`` mode,
SB3 through benchmarks.peers), so neither side profits from imports or warm-up done by an earlier run.
Sections (each hpcrl run is followed by the SB3 run with the same seed):

1. ``learning``: frames-to-475 (the first frame at which the mean return of the last 100 episodes
   is >= 475) and the wall-clock seconds to get there, per seed, budget 200k frames.
2. ``throughput``: end-to-end frames per second of single-process training (env and model
   construction plus training, imports excluded) over ``--frames`` frames, ``--repeats`` alternating
   pairs; the best of each side counts (the machine is shared, so the best run is the least
   disturbed). Also shown: frames per CPU-second (less sensitive to other load) and each library's
   own training-loop fps. Target: hpcrl fps >= 1.3x SB3.

``--profile`` adds where the time goes: both libraries' phases (env stepping, policy inference,
PPO update and their parts) timed in thread CPU time, in microseconds per env step, side by side,
then hpcrl's top functions by own time under cProfile (full listing: results/sb3-profile.txt).
Results: benchmarks/results/sb3[-quick].json.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import math
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import peers  # noqa: E402
from benchmarks.bench_learning import (  # noqa: E402
    CARTPOLE_YAML,
    fmt,
    machine_info,
    print_table,
    run_hpcrl,
    to_threshold,
    verdict,
    write_result,
)
from hpcrl.api import config  # noqa: E402

TARGET_RATIO = 1.3
RESULTS_DIR = ROOT / "benchmarks" / "results"

#: hpcrl PPO trainer arguments the SB3 translation knows; anything else must be left at its default.
_KNOWN_TRAINER_ARGS = {
    "lr",
    "lr_schedule",
    "gamma",
    "gae_lambda",
    "clip",
    "value_coef",
    "entropy_coef",
    "max_grad_norm",
    "normalize_advantages",
    "adam_eps",
    "epochs",
    "minibatches",
}


def sb3_params(cfg: config.ExperimentConfig, seed: int, total_frames: int, threshold: float) -> dict[str, Any]:
    """Translate an hpcrl CartPole PPO experiment into the SB3 peer script's parameters.

    Raises:
        ValueError: a setting SB3 cannot reproduce (an unknown trainer argument, a non-gym env,
            a recurrent or shared policy, or a batch that does not split into equal minibatches).
    """
    if cfg.environment.type_ != "gym" or set(cfg.environment.args) - {"id"}:
        raise ValueError(f"environment {cfg.environment}: the SB3 translation handles a plain gym id only")
    if cfg.policy.type_ != "actor-critic-separate":
        raise ValueError(f"policy {cfg.policy.type_!r}: SB3's MlpPolicy matches actor-critic-separate only")
    pargs = cfg.policy.args
    if int(pargs.get("num_rnn_layers", 0)) != 0:
        raise ValueError("a recurrent policy has no SB3 PPO counterpart")
    if cfg.trainer.type_ != "ppo":
        raise ValueError(f"trainer {cfg.trainer.type_!r}: only ppo translates to SB3 PPO")
    targs = cfg.trainer.args
    unknown = set(targs) - _KNOWN_TRAINER_ARGS
    if unknown:
        raise ValueError(f"trainer.args {sorted(unknown)} have no SB3 translation here")
    n_envs, n_steps = cfg.actor.envs_per_actor, cfg.actor.fragment_length
    rows = n_envs * n_steps
    minibatches = int(targs.get("minibatches", 4))
    if rows % minibatches:
        raise ValueError(f"{rows} rows per update do not split into {minibatches} equal minibatches")
    if targs.get("max_grad_norm", 0.5) is None:
        raise ValueError("SB3 PPO always clips gradients: trainer.args.max_grad_norm must be a number")
    hidden, layers = int(pargs.get("hidden_dim", 64)), int(pargs.get("num_dense_layers", 2))
    return {
        "env_id": cfg.environment.args["id"],
        "n_envs": n_envs,
        "n_steps": n_steps,
        "batch_size": rows // minibatches,
        "n_epochs": int(targs.get("epochs", 4)),
        "learning_rate": float(targs.get("lr", 3e-4)),
        "lr_schedule": str(targs.get("lr_schedule", "constant")),
        "gamma": float(targs.get("gamma", 0.99)),
        "gae_lambda": float(targs.get("gae_lambda", 0.95)),
        "clip_range": float(targs.get("clip", 0.2)),
        "ent_coef": float(targs.get("entropy_coef", 0.0)),
        "vf_coef": 0.5 * float(targs.get("value_coef", 0.5)),
        "max_grad_norm": float(targs.get("max_grad_norm", 0.5)),
        "normalize_advantage": bool(targs.get("normalize_advantages", True)),
        "adam_eps": float(targs.get("adam_eps", 1e-5)),
        "net_arch": [hidden] * layers,
        "activation": str(pargs.get("activation", "tanh")),
        "seed": int(seed),
        "total_frames": int(total_frames),
        "threshold": float(threshold),
    }


def run_sb3(params: dict[str, Any], record_episodes: bool) -> dict[str, Any]:
    """Run the SB3 peer script with ``params``; returns its JSON result."""
    import json

    p = dict(params, record_episodes=record_episodes)
    return peers.run_peer("sb3", "sb3_ppo.py", ["--params", json.dumps(p)], timeout=3600)


def run_hpcrl_child(overrides: list[str], run_dir: Path, threshold: float, profile: bool = False) -> dict[str, Any]:
    """Run one hpcrl training in a fresh python process (like the SB3 peer); returns its JSON result.

    The child (``--child-hpcrl``) times ``run_local`` only (imports excluded, env/policy/trainer
    construction included), in wall and process CPU time, and reads frames/seconds to
    ``threshold`` from the run's trace.
    """
    import json
    import subprocess

    spec = json.dumps({"overrides": overrides, "run_dir": str(run_dir), "threshold": threshold, "profile": profile})
    cmd = [sys.executable, "-m", "benchmarks.bench_sb3", "--child-hpcrl", spec]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=peers.peer_env(1), timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"hpcrl child run failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return dict(json.loads(lines[-1]))


def child_main(spec_text: str) -> int:
    """``--child-hpcrl``: one hpcrl run, one JSON line on stdout."""
    import json
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    spec = json.loads(spec_text)
    timers = instrument_hpcrl() if spec.get("profile") else None
    run = run_hpcrl(CARTPOLE_YAML, list(spec["overrides"]), Path(spec["run_dir"]))
    f, sec = to_threshold(run, float(spec["threshold"]))
    out: dict[str, Any] = {
        "frames": int(run.summary["frames"]),
        "wall_seconds": round(run.wall_seconds, 3),
        "cpu_seconds": round(run.cpu_seconds, 3),
        "loop_fps": float(run.summary["fps"]),
        "episodes": len(run.returns),
        "mean_return_last_100": run.last_mean(),
        "frames_to_threshold": f,
        "seconds_to_threshold": round(sec, 3) if sec is not None else None,
    }
    if timers is not None:
        n = int(run.summary["frames"])
        out["cpu_us_per_frame"] = 1e6 * run.cpu_seconds / n
        out["phases_us_per_frame"] = {k: round(1e6 * v / n, 2) for k, v in timers[0].items()}
        out["phase_calls"] = timers[1]
    print(json.dumps(out), flush=True)
    return 0


# ====================================================================== sections
def bench_learning_race(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Section 1: frames-to-475 and seconds-to-475 per seed, hpcrl then SB3."""
    budget = 60_000 if args.quick else 200_000
    seeds = args.seeds[:1] if args.quick else args.seeds
    cfg = config.load(CARTPOLE_YAML)
    rows, runs = [], []
    for seed in seeds:
        h = run_hpcrl_child([f"experiment.seed={seed}", f"experiment.total_frames={budget}"], work / f"l{seed}", 475.0)
        hf, hs = h["frames_to_threshold"], h["seconds_to_threshold"]
        s = run_sb3(sb3_params(cfg, seed, budget, 475.0), record_episodes=True)
        sf, ss = s["frames_to_threshold"], s["seconds_to_threshold"]
        rows.append(["hpcrl", seed, hf, hs, h["wall_seconds"], h["mean_return_last_100"]])
        rows.append(["sb3", seed, sf, ss, s["wall_seconds"], s["mean_return_last_100"]])
        runs.append(
            {
                "seed": seed,
                "hpcrl": {
                    "frames_to_475": hf,
                    "seconds_to_475": hs,
                    "wall_seconds": h["wall_seconds"],
                    "final_mean_last_100": h["mean_return_last_100"],
                },
                "sb3": {
                    "frames_to_475": sf,
                    "seconds_to_475": ss,
                    "wall_seconds": s["wall_seconds"],
                    "final_mean_last_100": s["mean_return_last_100"],
                },
            }
        )
        print(f"  seed {seed}: hpcrl {fmt(hf)} frames / {fmt(hs)} s, sb3 {fmt(sf)} frames / {fmt(ss)} s", flush=True)
    print_table(
        f"CartPole-v1 learning race, budget {budget:,} frames (frames/seconds to last-100 mean >= 475)",
        ["library", "seed", "frames-to-475", "sec-to-475", "wall s (total)", "final last-100"],
        rows,
    )

    def mean_of(lib: str, key: str) -> float | None:
        vals = [r[lib][key] for r in runs]
        return statistics.fmean(vals) if vals and all(v is not None for v in vals) else None

    summary = {k: {lib: mean_of(lib, k) for lib in ("hpcrl", "sb3")} for k in ("frames_to_475", "seconds_to_475")}
    ht, st = summary["seconds_to_475"]["hpcrl"], summary["seconds_to_475"]["sb3"]
    hf_, sf_ = summary["frames_to_475"]["hpcrl"], summary["frames_to_475"]["sb3"]
    speedup = st / ht if ht and st else None
    print(
        f"  mean frames-to-475: hpcrl {fmt(hf_)}, sb3 {fmt(sf_)}; mean seconds-to-475: hpcrl {fmt(ht)}, "
        f"sb3 {fmt(st)} -> wall-clock ratio sb3/hpcrl {fmt(speedup, 2)}"
    )
    ok = all(r["hpcrl"]["frames_to_475"] is not None for r in runs)
    detail = (
        f"hpcrl reached 475 on {sum(r['hpcrl']['frames_to_475'] is not None for r in runs)}/{len(runs)} seeds "
        f"(sb3 {sum(r['sb3']['frames_to_475'] is not None for r in runs)}/{len(runs)}); mean seconds-to-475 "
        f"hpcrl {fmt(ht)} vs sb3 {fmt(st)} (sb3/hpcrl = {fmt(speedup, 2)})"
    )
    return {
        "budget_frames": budget,
        "runs": runs,
        "mean": summary,
        "wall_clock_ratio_sb3_over_hpcrl": speedup,
        "verdict": verdict("sb3-learning-race", ok, detail, args.quick),
    }


def bench_throughput(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Section 2: best-of-``repeats`` end-to-end fps, hpcrl vs SB3, alternating."""
    frames = 20_000 if args.quick else args.frames
    repeats = 1 if args.quick else args.repeats
    cfg = config.load(CARTPOLE_YAML)
    params = sb3_params(cfg, 1, frames, float("inf"))
    h_runs: list[dict[str, float]] = []
    s_runs: list[dict[str, float]] = []
    for i in range(repeats):
        h = run_hpcrl_child(["experiment.seed=1", f"experiment.total_frames={frames}"], work / f"t{i}", math.inf)
        n = int(h["frames"])
        h_runs.append(
            {
                "frames": n,
                "fps": n / h["wall_seconds"],
                "cpu_fps": n / h["cpu_seconds"],
                "loop_fps": h["loop_fps"],
                "wall_seconds": h["wall_seconds"],
            }
        )
        s = run_sb3(params, record_episodes=False)
        s_runs.append(
            {
                "frames": s["frames"],
                "fps": s["frames"] / s["wall_seconds"],
                "cpu_fps": s["frames"] / s["cpu_seconds"],
                "loop_fps": s["fps"],
                "wall_seconds": s["wall_seconds"],
            }
        )
        print(f"  repeat {i + 1}/{repeats}: hpcrl {h_runs[-1]['fps']:,.0f} fps, sb3 {s_runs[-1]['fps']:,.0f} fps")
        shutil.rmtree(work / f"t{i}", ignore_errors=True)

    def best(runs: list[dict[str, float]], key: str) -> float:
        return max(r[key] for r in runs)

    def med(runs: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    rows = []
    out: dict[str, Any] = {"frames": frames, "repeats": repeats, "hpcrl_runs": h_runs, "sb3_runs": s_runs}
    for key, label in (
        ("fps", "end-to-end fps"),
        ("cpu_fps", "frames / CPU-second"),
        ("loop_fps", "training-loop fps"),
    ):
        hb, sb = best(h_runs, key), best(s_runs, key)
        hm, sm = med(h_runs, key), med(s_runs, key)
        rows.append([label, hb, sb, hb / sb, hm, sm, hm / sm])
        out[key] = {"hpcrl_best": hb, "sb3_best": sb, "ratio_best": hb / sb, "hpcrl_median": hm, "sb3_median": sm}
    print_table(
        f"Single-process training throughput, CartPole-v1, 8 envs x 128, 4x4 minibatches, 2x64 tanh, 1 thread, "
        f"{frames:,} frames, {repeats} alternating repeats",
        ["measure", "hpcrl best", "sb3 best", "ratio", "hpcrl median", "sb3 median", "ratio"],
        rows,
    )
    ratio = out["fps"]["ratio_best"]
    detail = (
        f"hpcrl {out['fps']['hpcrl_best']:,.0f} fps vs SB3 {out['fps']['sb3_best']:,.0f} fps = {ratio:.2f}x "
        f"(need >= {TARGET_RATIO}x; per CPU-second {out['cpu_fps']['ratio_best']:.2f}x)"
    )
    out["verdict"] = verdict("sb3-throughput-1.3x", ratio >= TARGET_RATIO, detail, args.quick)
    return out


# ====================================================================== profile
#: hpcrl phases timed in thread CPU time by --profile: (module, class, method, label). Nested labels
#: (with a dot) are parts of their parent; the rollout/analyze network and log_prob rows cover both uses.
_HPCRL_PHASES = [
    ("hpcrl.acting.env_ring", "EnvRing", "request", "1 EnvRing.request (stack obs into a RolloutRequest)"),
    ("hpcrl.policies.actor_critic", "ActorCriticPolicy", "rollout", "2 policy.rollout"),
    ("hpcrl.policies.networks", "ActorCriticNet", "forward", "2.1 ActorCriticNet.forward (rollout+analyze)"),
    ("hpcrl.policies.networks", "Torso", "forward", "2.1.1 Torso.forward x2 (rollout+analyze)"),
    ("hpcrl.policies.distributions", "CategoricalDistribution", "sample", "2.2 CategoricalDistribution.sample"),
    ("hpcrl.policies.distributions", "CategoricalDistribution", "log_prob", "2.3 .log_prob (rollout+analyze)"),
    ("hpcrl.acting.env_ring", "EnvRing", "consume", "3 EnvRing.consume (record row, step envs)"),
    ("hpcrl.envs.gym_env", "GymEnvironment", "step", "3.1 GymEnvironment.step x8"),
    ("hpcrl.acting.trajectory", "TrajectoryBuffer", "add", "3.2 TrajectoryBuffer.add"),
    ("hpcrl.acting.env_ring", "EnvRing", "_accept", "3.3 EnvRing._accept x8"),
    ("hpcrl.learning.learner", "Learner", "step", "4 Learner.step (PPO update)"),
    ("hpcrl.trainers.ppo", "PPOTrainer", "_targets", "4.1 PPOTrainer._targets (GAE)"),
    ("hpcrl.trainers.ppo", "PPOTrainer", "_update", "4.2 PPOTrainer._update x16"),
    ("hpcrl.policies.actor_critic", "ActorCriticPolicy", "analyze", "4.2.1 policy.analyze"),
    ("torch", "Tensor", "backward", "4.2.2 loss.backward"),
    ("torch.optim", "Adam", "step", "4.2.3 Adam.step"),
]


def instrument_hpcrl() -> tuple[dict[str, float], dict[str, int]]:
    """Wrap the phases of :data:`_HPCRL_PHASES` with thread-CPU-time accumulators (benchmark process only)."""
    import functools
    import importlib

    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    clock = time.thread_time
    for mod_name, cls_name, meth, label in _HPCRL_PHASES:
        cls = getattr(importlib.import_module(mod_name), cls_name)
        fn = getattr(cls, meth)
        seconds[label], calls[label] = 0.0, 0

        def wrapped(*a: Any, __fn: Any = fn, __label: str = label, **k: Any) -> Any:
            t = clock()
            try:
                return __fn(*a, **k)
            finally:
                seconds[__label] += clock() - t
                calls[__label] += 1

        setattr(cls, meth, functools.wraps(fn)(wrapped))
    return seconds, calls


def bench_profile(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Where the time goes: phase CPU time per env step, hpcrl vs SB3, plus hpcrl's top functions (cProfile)."""
    frames = 20_000 if args.quick else args.frames
    cfg = config.load(CARTPOLE_YAML)
    h = run_hpcrl_child(["experiment.seed=1", f"experiment.total_frames={frames}"], work / "phases", math.inf, True)
    s = run_sb3(dict(sb3_params(cfg, 1, frames, math.inf), profile=True), record_episodes=False)
    hrows = [[k, v, h["phase_calls"][k]] for k, v in h["phases_us_per_frame"].items()]
    print_table(
        f"hpcrl phases, CPU us per env step ({h['frames']:,} frames; total {h['cpu_us_per_frame']:.1f} us/frame "
        f"with the timers on)",
        ["phase", "us / env step", "calls"],
        hrows,
    )
    srows = [[k, v, s["phase_calls"][k]] for k, v in s["phases_us_per_frame"].items()]
    print_table(
        f"SB3 phases, CPU us per env step ({s['frames']:,} frames; total {s['cpu_us_per_frame']:.1f} us/frame "
        f"with the timers on)",
        ["phase", "us / env step", "calls"],
        srows,
    )
    prof = cProfile.Profile()
    prof.enable()
    run = run_hpcrl(CARTPOLE_YAML, ["experiment.seed=1", f"experiment.total_frames={min(frames, 30_000)}"], work / "cp")
    prof.disable()
    n = int(run.summary["frames"])
    raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[: args.profile_top]
    frows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in top:
        where = f"{Path(file).name}:{line}({func})" if line else func
        frows.append([where[:70], nc, 1e6 * tt / n, 1e6 * ct / n])
    print_table(
        f"hpcrl top functions by own time, cProfile ({n:,} frames; cProfile inflates Python-heavy code)",
        ["function", "calls", "own us/step", "cum us/step"],
        frows,
    )
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
    out = RESULTS_DIR / "sb3-profile.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(buf.getvalue())
    print(f"  full cProfile listing: {out.relative_to(ROOT)}")
    return {
        "frames": frames,
        "hpcrl": h,
        "sb3": s,
        "hpcrl_top_functions": [
            {"function": r[0], "calls": r[1], "own_us_per_step": r[2], "cum_us_per_step": r[3]} for r in frows
        ],
    }


SECTIONS = {"learning": bench_learning_race, "throughput": bench_throughput}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description="hpcrl vs Stable-Baselines3 PPO on CartPole-v1")
    p.add_argument("--quick", action="store_true", help="smoke run (< 2 min); verdicts not meaningful")
    p.add_argument("--only", default="learning,throughput", help="comma-separated subset of learning,throughput")
    p.add_argument("--seeds", default="1,2,3", help="seeds of the learning race")
    p.add_argument("--frames", type=int, default=100_000, help="frames per throughput run")
    p.add_argument("--repeats", type=int, default=3, help="alternating hpcrl/SB3 throughput pairs")
    p.add_argument("--profile", action="store_true", help="also cProfile one hpcrl run")
    p.add_argument("--profile-top", type=int, default=25, help="functions listed by the profile")
    p.add_argument("--child-hpcrl", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SECTIONS]
    if bad:
        p.error(f"--only: unknown section(s) {bad}; expected some of {list(SECTIONS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the sections (hpcrl then SB3 each time), print tables and verdicts, write the JSON result."""
    import logging

    import torch

    args = parse_args(argv)
    if args.child_hpcrl is not None:
        return child_main(args.child_hpcrl)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    t0 = time.time()
    peers.ensure_peer("sb3")
    results: dict[str, Any] = {
        "quick": args.quick,
        "config": str(CARTPOLE_YAML.relative_to(ROOT)),
        "sb3_params": sb3_params(config.load(CARTPOLE_YAML), 1, 0, 475.0),
        "machine_start": machine_info(),
        "sections": {},
    }
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-sb3-") as tmp:
        work = Path(tmp)
        for name in args.only:
            print(f"\n=== {name}", flush=True)
            results["sections"][name] = SECTIONS[name](args, work)
        if args.profile:
            print("\n=== profile", flush=True)
            results["profile"] = bench_profile(args, work)
    results["total_seconds"] = round(time.time() - t0, 1)
    results["machine_end"] = machine_info()
    print("\nSummary")
    for name, res in results["sections"].items():
        v = res["verdict"]
        print(f"  {'PASS' if v['pass'] else 'FAIL'}  {name:<10} {v['detail']}")
    path = write_result("sb3-quick" if args.quick else "sb3", results)
    print(f"\nresults: {path.relative_to(ROOT)}  ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
