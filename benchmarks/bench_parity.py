"""Learning parity with Stable-Baselines3 at identical settings: many seeds per task, one result file per run.

    python -m benchmarks.bench_parity --only cartpole --seeds 1-30      # one task (CartPole: ~15 s a run and side)
    python -m benchmarks.bench_parity --only cartpole --systems hpcrl-mpi2,sb3 --seeds 1-5
    python -m benchmarks.bench_parity --skip-existing                    # every task; runs already on file are kept
    python -m benchmarks.bench_parity --report-only                      # rows and docs/learning.md from the files
    python -m benchmarks.bench_parity --quick                            # smoke: CartPole, 2 seeds, 20k frames

Every task gives hpcrl and SB3 the same hyperparameters and network shapes (the hpcrl YAML under
benchmarks/configs/ is translated for SB3 by :func:`benchmarks.training.sb3_params`). Seeds are
interleaved in one sitting: seed 1 runs hpcrl then SB3, seed 2 SB3 then hpcrl, and so on, each run in a
fresh process with one torch thread. Systems: ``hpcrl`` (one process, the embedded default),
``hpcrl-mpi2`` (``mpiexec -n 2``: one actor rank acting while one trainer rank trains), ``sb3`` and, where it
applies (discrete actions, no normalisation: CartPole), ``cleanrl``, the CleanRL-style single-file PPO of
``benchmarks/peer_scripts/cleanrl_ppo.py`` given the same settings (a third implementation: its success rate
says what these settings reach, whoever implements them).

Each run is written to ``benchmarks/results/parity/runs/TASK/SYSTEM-sNN.json`` (its settings, versions,
machine, final return = mean of the last 100 episodes, frames and seconds to the task's threshold, and the
learning curve on a grid of 50 points of the frame budget). The benchmark's rows are computed from every
run file of the task, not only this invocation's, so a study can be built up over several sittings; with
``--save`` (or in ``python -m benchmarks.run``) the rows also go to the suite's result file, and
docs/learning.md is rebuilt from the run files (:mod:`benchmarks.learning_report`).

Rows per task (hpcrl vs SB3): success rate (final return >= threshold; one-sided Fisher test that hpcrl
succeeds less often), IQM of the final return with a 95% stratified bootstrap interval (two-sided
Mann-Whitney test on final returns), and the median seconds to the threshold over the seeds that reached
it (target: <= 0.6x SB3 in one process, <= 0.4x with ``mpiexec -n 2``; the ratio column is SB3 / hpcrl).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peers
from benchmarks.common import (
    RESULTS,
    ROOT,
    BenchResult,
    Context,
    Row,
    bench_main,
    machine_info,
    run_hpcrl_job,
    write_json,
)
from benchmarks.parity_stats import bootstrap_ci, fisher_less, iqm, mann_whitney, median_or_none
from benchmarks.training import first_crossing, run_hpcrl_child, sb3_params

__all__ = ["RUNS", "SYSTEMS", "TASKS", "Task", "curve_grid", "load_runs", "main", "run", "summarize"]

CONFIGS = ROOT / "benchmarks" / "configs"
RUNS = RESULTS / "parity" / "runs"
"""Committed run files: ``TASK/SYSTEM-sNN.json``."""
GRID_POINTS = 50
SYSTEMS = ("hpcrl", "hpcrl-mpi2", "sb3", "cleanrl")
RUN_FORMAT = 1


@dataclass(frozen=True)
class Task:
    """One task of the study."""

    name: str
    yaml: Path
    """hpcrl's experiment config; SB3 gets its translation."""
    seeds: int
    """Seeds of the full study (1..seeds)."""
    frames: int
    """Frame budget per run."""
    threshold: float
    """Success: the final last-100 mean return is at least this; also the time-to-threshold level."""
    source: str
    """Where the settings come from."""
    systems: tuple[str, ...] = ("hpcrl", "sb3")
    notes: tuple[str, ...] = field(default_factory=tuple)
    peer: str = "SB3"
    """The peer's name on the page (the ``sb3`` system)."""
    recurrent: bool = False
    """The peer side is sb3-contrib's RecurrentPPO (peer venv ``sb3_contrib``) instead of SB3's PPO."""
    sb3_venv: str = "sb3"
    """The peer venv that runs SB3's PPO (``sb3_mujoco`` adds MuJoCo)."""


TASKS: dict[str, Task] = {
    "cartpole": Task(
        "cartpole",
        CONFIGS / "cartpole_ppo.yaml",
        seeds=30,
        frames=200_000,
        threshold=475.0,
        source="rl-zoo3's CartPole-v1 PPO shape (gamma 0.98, GAE 0.8, linear lr 1e-3) with 8 envs x 128 steps, "
        "4 epochs x 4 minibatches of 256 and SB3's default networks (separate 2 x 64 tanh MLPs)",
        systems=("hpcrl", "hpcrl-mpi2", "sb3", "cleanrl"),
    ),
    "acrobot": Task(
        "acrobot",
        CONFIGS / "acrobot_ppo.yaml",
        seeds=10,
        frames=200_704,  # 49 batches of 16 x 256: what SB3 trains for a 200k budget (it finishes the last batch)
        threshold=-100.0,
        source="rl-zoo3 2.9.2's tuned PPO settings for Acrobot-v1 with normalize: true (observation and reward "
        "normalisation: SB3's VecNormalize, hpcrl's normalize_obs / normalize_rewards)",
        notes=(
            "rl-zoo trains 1M steps; the budget here is 200k frames (rounded up to whole batches of 4,096 rows, as "
            "SB3 runs it, so both systems make 49 updates), where both systems are near their final level. "
            "hpcrl's reward normalisation accumulates the discounted return within each fragment (trainer side) "
            "where VecNormalize carries it across rollouts per env (docs/normalization.md).",
        ),
    ),
    "memory": Task(
        "memory",
        CONFIGS / "memory_lstm.yaml",
        seeds=5,
        frames=100_000,
        threshold=0.95,
        source="the memory task (recall a symbol after 8 blank steps, 4 symbols) with separate actor and critic "
        "LSTMs of 64 units straight into the heads; 16 envs x 32 steps, 4 epochs x 4 minibatches, lr 1e-3 linear",
        notes=(
            "The peer is sb3-contrib's RecurrentPPO with the same shape (lstm_hidden_size 64, net_arch [], "
            "separate critic LSTM). RecurrentPPO has LSTM cells only, so hpcrl runs its LSTM policy here (the same "
            "cell on both sides; hpcrl's default GRU policy learns the task too: docs/recurrent.md). The "
            "initialisation of the LSTMs differs: hpcrl's are orthogonal with a forget-gate "
            "bias of 1, RecurrentPPO keeps PyTorch's default. Final return = success rate of the last 100 episodes.",
        ),
        peer="sb3-contrib RecurrentPPO",
        recurrent=True,
    ),
    "pendulum": Task(
        "pendulum",
        CONFIGS / "pendulum_ppo.yaml",
        seeds=30,
        frames=102_400,  # 25 batches of 4 x 1024: what SB3 trains for rl-zoo's 1e5 (it finishes the last batch)
        threshold=-200.0,
        source="rl-zoo3 2.9.2's tuned PPO settings for Pendulum-v1, without gSDE (hpcrl has no gSDE)",
        notes=(
            "rl-zoo uses gSDE (state-dependent exploration) for Pendulum; both systems run without it here.",
            "The budget is rl-zoo's 1e5 frames rounded up to whole batches of 4,096 rows, as SB3 runs it: both "
            "systems make 25 updates.",
        ),
    ),
    "hopper": Task(
        "hopper",
        CONFIGS / "hopper_ppo.yaml",
        seeds=3,
        frames=1_000_000,
        threshold=2000.0,
        source="rl-zoo3 2.9.2's tuned PPO settings for Hopper-v4 (normalize: true, ortho_init=False, ReLU 2 x 256, "
        "log_std_init -2), run on Hopper-v5",
        notes=(
            "rl-zoo's benchmark table reports PPO on Hopper-v3 at 2410 +/- 10 (1M steps); CleanRL's "
            "ppo_continuous_action.py, with CleanRL's own untuned defaults, 2383 +/- 272 on Hopper-v4 (1M steps). "
            "The threshold 2000 is a level both systems should reach with these settings, not a solved score.",
        ),
        sb3_venv="sb3_mujoco",
    ),
    "halfcheetah": Task(
        "halfcheetah",
        CONFIGS / "halfcheetah_ppo.yaml",
        seeds=3,
        frames=1_000_000,
        threshold=3000.0,
        source="rl-zoo3 2.9.2's tuned PPO settings for HalfCheetah-v4 (normalize: true, ortho_init=False, ReLU "
        "2 x 256, log_std_init -2), run on HalfCheetah-v5",
        notes=(
            "rl-zoo's benchmark table reports PPO on HalfCheetah-v3 at 5819 +/- 664 (1M steps); CleanRL's "
            "ppo_continuous_action.py, with CleanRL's own untuned defaults, 1443 +/- 46 on HalfCheetah-v4 (1M "
            "steps). The threshold 3000 is a level both systems should reach with these settings, not a solved "
            "score.",
        ),
        sb3_venv="sb3_mujoco",
    ),
}


# ====================================================================== one run
def curve_grid(frames: np.ndarray, returns: np.ndarray, budget: int, points: int = GRID_POINTS) -> dict[str, list]:
    """The mean return of the last (up to) 100 episodes ended by each grid frame (``None`` before any episode)."""
    grid = np.linspace(budget / points, budget, points).round().astype(np.int64)
    order = np.argsort(frames, kind="stable")
    f, r = np.asarray(frames)[order], np.asarray(returns, np.float64)[order]
    means: list[float | None] = []
    for g in grid:
        n = int(np.searchsorted(f, g, side="right"))
        means.append(round(float(r[max(0, n - 100) : n].mean()), 3) if n else None)
    return {"frames": grid.tolist(), "mean_return_last_100": means}


def _result(task: Task, system: str, seed: int, frames: list, returns: list, seconds: list, **extra: Any) -> dict:
    f, r, s = np.asarray(frames, np.int64), np.asarray(returns, np.float64), np.asarray(seconds, np.float64)
    hit = first_crossing(r, task.threshold) if len(r) else None
    final = float(r[-100:].mean()) if len(r) else math.nan
    return {
        "format": RUN_FORMAT,
        "task": task.name,
        "system": system,
        "seed": seed,
        "budget": task.frames,
        "episodes": len(r),
        "final_return": round(final, 3),
        "success": bool(final >= task.threshold),
        "threshold": task.threshold,
        "frames_to_threshold": None if hit is None else int(f[hit]),
        "seconds_to_threshold": None if hit is None else round(float(s[hit]), 3),
        "curve": curve_grid(f, r, task.frames),
        **extra,
    }


def _run_hpcrl(task: Task, seed: int, tmp: Path) -> dict[str, Any]:
    overrides = [f"experiment.seed={seed}", f"experiment.total_frames={task.frames}"]
    out = run_hpcrl_child(
        overrides, tmp / f"hpcrl-{task.name}-s{seed}", task.threshold, yaml_path=task.yaml, curve=True
    )
    c = out["curve"]
    return _result(
        task,
        "hpcrl",
        seed,
        c["frames"],
        c["returns"],
        c["seconds"],
        wall_seconds=out["wall_seconds"],
        fps=round(out["frames"] / out["wall_seconds"], 1) if out["wall_seconds"] else None,
        mode="one process (python -m hpcrl.run), seconds from just before run_local",
    )


def _run_hpcrl_mpi2(task: Task, seed: int, tmp: Path) -> dict[str, Any]:
    from hpcrl.storage.trace import read_trace

    run_dir = tmp / f"mpi2-{task.name}-s{seed}"
    overrides = [f"experiment.seed={seed}", f"experiment.total_frames={task.frames}", "run.checkpoint_every_seconds=0"]
    job = run_hpcrl_job(task.yaml, overrides, run_dir, ranks=2, timeout=3600)
    frames: list[int] = []
    returns: list[float] = []
    walls: list[float] = []
    for path in sorted((run_dir / "traces").glob("rank-*.h5")):
        ep = read_trace(path)["episodes"]
        frames += [int(x) for x in ep["frames"]]
        returns += [float(x) for x in ep["return"]]
        walls += [float(x) for x in ep["wall_time"]]
    order = np.argsort(walls, kind="stable")
    seconds = (np.asarray(walls)[order] - job.launch_epoch).tolist()
    return _result(
        task,
        "hpcrl-mpi2",
        seed,
        np.asarray(frames)[order].tolist(),
        np.asarray(returns)[order].tolist(),
        seconds,
        wall_seconds=round(job.seconds, 3),
        fps=job.fps,
        mode="mpiexec -n 2 (one actor rank, one trainer rank), seconds from the launch of mpiexec",
    )


def recurrent_params(task: Task, seed: int) -> dict[str, Any]:
    """The memory-task config as sb3-contrib RecurrentPPO parameters (``sb3_recurrent_ppo.py``).

    Raises:
        ValueError: a setting this translation does not carry over (the message names it).
    """
    from hpcrl.api import config

    cfg = config.load(task.yaml)
    pargs, targs = cfg.policy.args, cfg.trainer.args
    if cfg.environment.type_ != "memory" or pargs.get("rnn_type") != "lstm" or pargs.get("num_dense_layers") != 0:
        raise ValueError(f"{task.yaml}: the RecurrentPPO translation needs the memory env and an LSTM-only policy")
    rows = cfg.actor.envs_per_actor * cfg.actor.fragment_length
    return {
        **{k: int(v) for k, v in cfg.environment.args.items()},
        "n_envs": cfg.actor.envs_per_actor,
        "n_steps": cfg.actor.fragment_length,
        "batch_size": rows // int(targs["minibatches"]),
        "n_epochs": int(targs["epochs"]),
        "learning_rate": float(targs["lr"]),
        "lr_schedule": str(targs.get("lr_schedule", "constant")),
        "gamma": float(targs["gamma"]),
        "gae_lambda": float(targs["gae_lambda"]),
        "clip_range": float(targs["clip"]),
        "ent_coef": float(targs.get("entropy_coef", 0.0)),
        "vf_coef": 0.5 * float(targs.get("value_coef", 0.5)),
        "max_grad_norm": float(targs.get("max_grad_norm", 0.5)),
        "adam_eps": float(targs.get("adam_eps", 1e-5)),
        "lstm_hidden_size": int(pargs.get("rnn_hidden_dim", pargs.get("hidden_dim", 64))),
        "seed": seed,
        "total_frames": task.frames,
        "threshold": task.threshold,
    }


def _run_peer(task: Task, system: str, seed: int, venv: str, script: str, params: dict, mode: str, peer: str) -> dict:
    """One peer run in its own venv, stored like hpcrl's (the script prints its episodes as ``curve``)."""
    out = peers.run_peer(venv, script, ["--params", json.dumps(params)], timeout=7200, quiet=True)
    c = out["curve"]
    return _result(
        task,
        system,
        seed,
        c["frames"],
        c["returns"],
        c["seconds"],
        wall_seconds=out["wall_seconds"],
        fps=out["fps"],
        versions=out.get("versions"),
        mode=mode,
        peer=peer,
    )


def _run_sb3(task: Task, seed: int, tmp: Path) -> dict[str, Any]:
    from hpcrl.api import config

    if task.recurrent:
        params = recurrent_params(task, seed)
        venv, script = "sb3_contrib", "sb3_recurrent_ppo.py"
    else:
        params = dict(sb3_params(config.load(task.yaml), seed, task.frames, task.threshold), record_curve=True)
        venv, script = task.sb3_venv, "sb3_ppo.py"
    mode = "one process (DummyVecEnv), seconds from just before the env and model are built"
    return _run_peer(task, "sb3", seed, venv, script, params, mode, task.peer)


def _run_cleanrl(task: Task, seed: int, tmp: Path) -> dict[str, Any]:
    from hpcrl.api import config

    if task.recurrent:
        raise ValueError(f"{task.name}: the CleanRL-style peer has no recurrent policy")
    params = dict(sb3_params(config.load(task.yaml), seed, task.frames, task.threshold), record_curve=True)
    mode = "one process (a plain loop over gymnasium envs), seconds from just before the envs and model are built"
    return _run_peer(task, "cleanrl", seed, "cleanrl", "cleanrl_ppo.py", params, mode, "CleanRL-style PPO")


RUNNERS = {"hpcrl": _run_hpcrl, "hpcrl-mpi2": _run_hpcrl_mpi2, "sb3": _run_sb3, "cleanrl": _run_cleanrl}


def run_file(task: str, system: str, seed: int, root: Path = RUNS) -> Path:
    """Where the run of ``system`` on ``task`` with ``seed`` is stored."""
    return root / task / f"{system}-s{seed:02d}.json"


def load_runs(task: str, root: Path = RUNS) -> dict[str, list[dict[str, Any]]]:
    """Every stored run of ``task``: system -> runs (sorted by seed), systems in the order of ``SYSTEMS``.

    Raises:
        ValueError: a file that is not a run of this format (the message names it).
    """
    out: dict[str, list[dict[str, Any]]] = {}
    folder = root / task
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        d = json.loads(path.read_text())
        if d.get("format") != RUN_FORMAT or d.get("task") != task or d.get("system") not in SYSTEMS:
            raise ValueError(f"{path}: not a parity run of task {task!r} (format {RUN_FORMAT})")
        out.setdefault(d["system"], []).append(d)
    for runs in out.values():
        runs.sort(key=lambda d: d["seed"])
    return {system: out[system] for system in SYSTEMS if system in out}


# ====================================================================== summary
def summarize(task: Task, runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per system: runs, successes, IQM of final return with its 95% CI, medians to threshold, wall time."""
    out: dict[str, dict[str, Any]] = {}
    for system, rs in runs.items():
        finals = [r["final_return"] for r in rs]
        low, high = bootstrap_ci([finals]) if finals else (math.nan, math.nan)
        out[system] = {
            "runs": len(rs),
            "seeds": [r["seed"] for r in rs],
            "successes": sum(bool(r["success"]) for r in rs),
            "iqm": iqm(finals) if finals else math.nan,
            "ci": (low, high),
            "mean": float(np.mean(finals)) if finals else math.nan,
            "median_frames_to_threshold": median_or_none([r["frames_to_threshold"] for r in rs]),
            "median_seconds_to_threshold": median_or_none([r["seconds_to_threshold"] for r in rs]),
            "reached": sum(r["seconds_to_threshold"] is not None for r in rs),
            "median_wall_seconds": median_or_none([r.get("wall_seconds") for r in rs]),
            "finals": finals,
        }
    ref = out.get("sb3")
    for system, s in out.items():
        if system == "sb3" or ref is None:
            continue
        s["p_mann_whitney"] = mann_whitney(s["finals"], ref["finals"])
        s["p_fisher_less"] = fisher_less(s["successes"], s["runs"], ref["successes"], ref["runs"])
    return out


def _rows(task: Task, summary: dict[str, dict[str, Any]]) -> list[Row]:
    rows: list[Row] = []
    ref = summary.get("sb3")
    if ref is None:
        return rows
    other = summary.get("cleanrl")
    third = "" if other is None else f"; CleanRL-style PPO {other['successes']}/{other['runs']}"
    for system in ("hpcrl", "hpcrl-mpi2"):
        s = summary.get(system)
        if s is None:
            continue
        label = f"{task.name}: {system}"
        rows.append(
            Row(
                "parity",
                f"{label} success rate (final >= {task.threshold:g})",
                s["successes"] / s["runs"],
                task.peer,
                ref["successes"] / ref["runs"],
                "",
                target=None,
                target_text=f">= {task.peer}'s rate",
                note=f"{s['successes']}/{s['runs']} vs {ref['successes']}/{ref['runs']} seeds; one-sided Fisher "
                f"p = {s['p_fisher_less']:.3f} (hpcrl succeeds less often)" + third,
                # at least the peer's success rate (the systems may have different seed counts)
                passed=s["successes"] * ref["runs"] >= ref["successes"] * s["runs"] and s["p_fisher_less"] >= 0.05,
            ).finish()
        )
        rows.append(
            Row(
                "parity",
                f"{label} IQM final return",
                s["iqm"],
                task.peer,
                ref["iqm"],
                "",
                target_text=f"not significantly below {task.peer}",
                note=f"95% CI hpcrl [{s['ci'][0]:.1f}, {s['ci'][1]:.1f}], "
                f"SB3 [{ref['ci'][0]:.1f}, {ref['ci'][1]:.1f}]; "
                f"Mann-Whitney p = {s['p_mann_whitney']:.3f}",
                passed=not (s["p_mann_whitney"] < 0.05 and s["iqm"] < ref["iqm"]),
            ).finish()
        )
        target = 1 / 0.4 if system == "hpcrl-mpi2" else 1 / 0.6
        hs, ps = s["median_seconds_to_threshold"], ref["median_seconds_to_threshold"]
        rows.append(
            Row(
                "parity",
                f"{label} median seconds to {task.threshold:g}",
                hs,
                task.peer,
                ps,
                "s",
                higher_is_better=False,
                target=target if hs is not None and ps is not None else None,
                target_text=f"<= {1 / target:.1f}x {task.peer}",
                note=f"over the seeds that reached it: hpcrl {s['reached']}/{s['runs']}, SB3 "
                f"{ref['reached']}/{ref['runs']}; median frames {s['median_frames_to_threshold']} vs "
                f"{ref['median_frames_to_threshold']}",
            ).finish()
        )
    return rows


# ====================================================================== the benchmark
def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-")
            out += list(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def run(ctx: Context) -> BenchResult:
    """Run the missing (or all) seeds of the chosen tasks, store each run, and summarise every stored run."""
    names = [n.strip() for n in str(ctx.opt("only", "cartpole" if ctx.quick else ",".join(TASKS))).split(",")]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; tasks: {sorted(TASKS)}")
    root = RESULTS / "quick" / "parity" / "runs" if ctx.quick else RUNS
    res = BenchResult("parity")
    machine = machine_info()
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-parity-") as tmp_name:
        tmp = Path(tmp_name)
        for name in names if not ctx.opt("report_only", False) else []:
            task = TASKS[name]
            if ctx.quick:
                task = Task(**{**task.__dict__, "frames": 20_000, "seeds": 2})
            seeds = _seeds(str(ctx.opt("seeds", f"1-{task.seeds}")))
            systems = [s.strip() for s in str(ctx.opt("systems", ",".join(task.systems))).split(",")]
            for i, seed in enumerate(seeds):
                for system in systems if i % 2 == 0 else systems[::-1]:
                    path = run_file(name, system, seed, root)
                    if ctx.opt("skip_existing", False) and path.exists():
                        continue
                    t0 = time.time()
                    try:
                        d = RUNNERS[system](task, seed, tmp)
                    except (RuntimeError, peers.PeerError) as e:
                        res.notes.append(f"{name} {system} seed {seed} failed: {str(e).strip()[-300:]}")
                        continue
                    d.update(
                        date=time.strftime("%Y-%m-%d"),
                        machine=machine,
                        load_1min=round(os.getloadavg()[0], 2),
                        settings=str(task.yaml.relative_to(ROOT)),
                    )
                    write_json(path, d)
                    print(
                        f"  {name} seed {seed} {system}: final {d['final_return']:.1f}, "
                        f"to {task.threshold:g} at {d['frames_to_threshold']} frames / "
                        f"{d['seconds_to_threshold']} s ({time.time() - t0:.0f} s)",
                        flush=True,
                    )
    for name in names:
        task = TASKS[name]
        summary = summarize(task, load_runs(name, root))
        res.data[name] = {k: {kk: vv for kk, vv in v.items() if kk != "finals"} for k, v in summary.items()}
        res.rows += _rows(task, summary)
    if not ctx.quick:
        from benchmarks.learning_report import write_page

        write_page()
    return res


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=None, help=f"comma-separated tasks (default: all of {', '.join(TASKS)})")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 1-30 or 1,2,5 (default: the task's full study)")
    p.add_argument("--systems", default=None, help=f"comma-separated of {', '.join(SYSTEMS)} (default: the task's)")
    p.add_argument("--skip-existing", action="store_true", help="keep runs that already have a result file")
    p.add_argument("--report-only", action="store_true", help="run nothing: summarise the stored runs")


main = bench_main("parity", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
