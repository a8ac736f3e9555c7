"""Learning benchmarks: does hpcrl's PPO (and PPG) learn what it should, and how fast?

    python -m benchmarks.bench_learning                  # every target, about 12 min on 2 quiet cores (ppg: 5)
    python -m benchmarks.bench_learning --quick          # smoke, < 2 min (verdicts not meaningful)
    python -m benchmarks.bench_learning --only cartpole --seeds 1,2,3,4,5

Targets (each prints a table and one PASS/FAIL line, and becomes one row):

1. ``cartpole``: CartPole-v1 (examples/cartpole/ppo.yaml, the README's main job, with a 200k-frame
   budget; the SB3-identical config benchmarks/configs/cartpole_ppo.yaml is raced against SB3 in
   ``python -m benchmarks.run --only solve``): the mean return over the last 100
   episodes reaches 475 within 200k frames, for every seed (3 by default). Reports frames-to-475 and
   wall-clock seconds-to-475 per seed, and the final last-100 mean. ``cartpole-mpi3``: the same run
   under ``mpiexec -n 3`` (one trainer, one inference and one actor rank; acting overlaps training)
   must solve it within the same budget (first seed).
2. ``memory``: the memory task (examples/memory/{gru,lstm,mlp}.yaml, delay 8, 4 symbols): the GRU and
   the LSTM policy's success rates (= mean return, reward 1 for the right answer) over the last 100
   episodes are >= 95%; the MLP policy stays at chance (25% +- 10 points).
3. ``pendulum``: Pendulum-v1 with a Gaussian policy (examples/pendulum/ppo.yaml, 200k frames): last-100
   mean return >= -250.
4. ``quickstart``: the quick-start multi-agent env (examples/quickstart/exp.yaml). Three arms: the
   centralized critic (critic reads the 623-dim ``state``), an obs-only critic (``state_dim: null``)
   and uniform random play. The centralized critic must learn the hidden team-bonus rule, which is
   visible only in the state: probed after training on fresh states with the bonus coin set to 1 vs 0,
   its value must rise by >= 0.5 (about 1.0 = the bonus x P(both agents right) is ideal; the obs-only
   critic cannot see the coin, so its difference is 0). Both trained policies must beat random play
   (~2 per episode) by far (>= 40 of the 48 reachable).
5. ``tictactoe``: tic-tac-toe (PettingZoo classic) against a uniformly random legal opponent, with action
   masks (examples/tictactoe/ppo.yaml, 150k learner moves; the learner's side is drawn per game). The
   trained policy, playing deterministically, must win >= 80% of 1,000 fresh games (a random player wins
   about 43% and loses about 44%); the env raises on an illegal move, so the run also shows that masks hold.
6. ``ppg``: the PPG trainer (docs/ppg.md). CartPole-v1 with examples/cartpole/ppg.yaml must reach a
   last-100 mean of 475 within 200k frames (seed ``--seed``); then Acrobot-v1 with PPO
   (benchmarks/configs/acrobot_ppg_arms.yaml) and with PPG (the same file and PPO arguments, plus
   ``trainer.type_=ppg``, the auxiliary head and :data:`PPG_ARM`), 200k frames each: frames to a
   last-100 mean of -100 and the final last-100 mean of both, side by side. The comparison is reported;
   the verdict asks PPG to reach both goals within the budget. LunarLander would be the harder task of
   choice, but it needs box2d, which is not a dependency.

All runs but ``cartpole-mpi3`` are single-process (``hpcrl.roles.local.run_local``), one torch thread, one after the
other. ``--quick`` shrinks every budget to a smoke run; its PASS/FAIL lines are marked ``[quick]`` and
are not meaningful. Run directories go to a temporary folder (``--keep-runs DIR`` keeps them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import ROOT, BenchResult, Context, Row, bench_main
from benchmarks.training import HpcrlRun, first_crossing, run_hpcrl, to_threshold
from hpcrl.api import config

__all__ = ["TARGETS", "main", "run"]

EXAMPLES = ROOT / "examples"
CARTPOLE_EXAMPLE = EXAMPLES / "cartpole" / "ppo.yaml"  # the README main job: the learning target
MEMORY_GRU_YAML = EXAMPLES / "memory" / "gru.yaml"
MEMORY_LSTM_YAML = EXAMPLES / "memory" / "lstm.yaml"
MEMORY_MLP_YAML = EXAMPLES / "memory" / "mlp.yaml"
PENDULUM_YAML = EXAMPLES / "pendulum" / "ppo.yaml"
QUICKSTART_YAML = EXAMPLES / "quickstart" / "exp.yaml"
TICTACTOE_YAML = EXAMPLES / "tictactoe" / "ppo.yaml"

CARTPOLE_PPG_YAML = EXAMPLES / "cartpole" / "ppg.yaml"
ACROBOT_PPO_YAML = ROOT / "benchmarks" / "configs" / "acrobot_ppg_arms.yaml"
#: what turns the Acrobot PPO arm into the PPG arm (every PPO argument stays as it is)
PPG_ARM = [
    "trainer.type_=ppg",
    "policy.args.auxiliary_head=true",
    "trainer.args.n_pi=8",
    "trainer.args.aux_epochs=6",
    "trainer.args.aux_minibatches=8",
]

TARGETS = ("cartpole", "cartpole-mpi3", "memory", "pendulum", "quickstart", "tictactoe", "ppg")


# ====================================================================== output helpers
def fmt(v: Any, nd: int = 1) -> str:
    """Compact cell text: ``-`` for None, thousands separators for ints, ``nd`` decimals for floats."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):,.{3 if abs(float(v)) < 10 else nd}f}"
    return str(v)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print an aligned text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths)))
    for r in cells:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(r, widths)))


def verdict(name: str, ok: bool, detail: str, quick: bool) -> dict[str, Any]:
    """Print and return one target's PASS/FAIL line."""
    tag = "[quick] " if quick else ""
    print(f"{tag}{'PASS' if ok else 'FAIL'} {name}: {detail}")
    return {"target": name, "pass": bool(ok), "detail": detail, "quick": quick}


def curve(run: HpcrlRun, points: int = 20) -> list[list[float]]:
    """``[frames, mean of the last 100 returns]`` at ``points`` evenly spaced episodes (for plots)."""
    n = len(run.returns)
    if n == 0:
        return []
    out = []
    for i in np.unique(np.linspace(0, n - 1, min(points, n)).astype(int)):
        lo = max(0, i - 99)
        out.append([int(run.frames[i]), round(float(run.returns[lo : i + 1].mean()), 3)])
    return out


# ====================================================================== targets
def bench_cartpole(args: Any, work: Path) -> dict[str, Any]:
    """Target 1: CartPole-v1 last-100 mean >= 475 within the frame budget, for every seed."""
    budget = 30_000 if args.quick else 200_000
    seeds = args.seeds[:1] if args.quick else args.seeds
    rows, runs = [], []
    for seed in seeds:
        run = run_hpcrl(
            CARTPOLE_EXAMPLE,
            [f"experiment.seed={seed}", f"experiment.total_frames={budget}"],
            work / f"cartpole-{seed}",
        )
        f475, s475 = to_threshold(run, 475.0)
        rows.append([seed, f475, s475, run.last_mean(), run.summary["frames"], run.wall_seconds, run.summary["fps"]])
        runs.append(
            {
                "seed": seed,
                "frames_to_475": f475,
                "seconds_to_475": s475,
                "final_mean_last_100": run.last_mean(),
                "frames": run.summary["frames"],
                "wall_seconds": round(run.wall_seconds, 2),
                "cpu_seconds": round(run.cpu_seconds, 2),
                "fps": run.summary["fps"],
                "episodes": len(run.returns),
                "curve": curve(run),
            }
        )
        print(f"  cartpole seed {seed}: frames-to-475 {fmt(f475)}, final {run.last_mean():.1f}", flush=True)
    print_table(
        f"CartPole-v1, PPO ({CARTPOLE_EXAMPLE.relative_to(ROOT)}), budget {budget:,} frames",
        ["seed", "frames-to-475", "sec-to-475", "final last-100", "frames", "wall s", "fps"],
        rows,
    )
    hits = [r["frames_to_475"] for r in runs]
    ok = all(h is not None and h <= budget for h in hits)
    detail = f"frames-to-475 per seed {[fmt(h) for h in hits]} (budget {budget:,}, need every seed)"
    return {"budget_frames": budget, "runs": runs, "verdict": verdict("cartpole-475", ok, detail, args.quick)}


def bench_cartpole_mpi3(args: Any, work: Path) -> dict[str, Any]:
    """Target 1b: the same CartPole run under ``mpiexec -n 3`` (trainer, inference, actor rank) also solves it."""
    from benchmarks.common import run_hpcrl_job
    from hpcrl.storage.trace import read_trace

    budget = 30_000 if args.quick else 200_000
    seed = args.seeds[0]
    run_dir = work / "cartpole-mpi3"
    job = run_hpcrl_job(
        CARTPOLE_EXAMPLE,
        [f"experiment.seed={seed}", f"experiment.total_frames={budget}"],
        run_dir,
        ranks=3,
        timeout=1800,
    )
    actor_trace = read_trace(run_dir / "traces" / "rank-0002.h5")  # the one actor rank records the episodes
    ep = actor_trace["episodes"]
    returns = np.asarray(ep["return"], np.float64)
    frames = np.asarray(ep["frames"], np.int64)
    i = first_crossing(returns, 475.0)
    f475 = int(frames[i]) if i is not None else None
    final = float(returns[-100:].mean()) if len(returns) else float("nan")
    s = job.summary
    print(
        f"  mpiexec -n 3, seed {seed}: frames-to-475 {fmt(f475)}, final last-100 {final:.1f}, "
        f"{s.get('frames')} frames in {job.seconds:.1f} s, dropped stale fragments {s.get('dropped_fragments', '-')}",
        flush=True,
    )
    ok = f475 is not None and f475 <= budget
    detail = f"mpiexec -n 3 seed {seed}: frames-to-475 {fmt(f475)} (budget {budget:,}), final last-100 {final:.1f}"
    return {
        "budget_frames": budget,
        "seed": seed,
        "frames_to_475": f475,
        "final_mean_last_100": final,
        "seconds": round(job.seconds, 1),
        "summary": s,
        "verdict": verdict("cartpole-mpi3-475", ok, detail, args.quick),
    }


def bench_memory(args: Any, work: Path) -> dict[str, Any]:
    """Target 2: GRU and LSTM >= 95% success on the memory task; MLP about chance."""
    budget = 15_000 if args.quick else 100_000
    out: dict[str, Any] = {"budget_frames": budget}
    rows = []
    env_args = config.load(MEMORY_GRU_YAML).environment.args
    chance = 1.0 / float(env_args.get("n_symbols", 4))
    for name, path in (("gru", MEMORY_GRU_YAML), ("lstm", MEMORY_LSTM_YAML), ("mlp", MEMORY_MLP_YAML)):
        run = run_hpcrl(
            path, [f"experiment.seed={args.seed}", f"experiment.total_frames={budget}"], work / f"mem-{name}"
        )
        f95, s95 = to_threshold(run, 0.95)
        success = run.last_mean()
        rows.append([name, success, f95, s95, len(run.returns), run.wall_seconds, run.summary["fps"]])
        out[name] = {
            "success_last_100": success,
            "frames_to_95": f95,
            "seconds_to_95": s95,
            "episodes": len(run.returns),
            "wall_seconds": round(run.wall_seconds, 2),
            "fps": run.summary["fps"],
            "curve": curve(run),
        }
        print(f"  memory {name}: success {success:.3f}", flush=True)
    print_table(
        f"Memory task {env_args} (chance {chance:.2f}), budget {budget:,} frames, seed {args.seed}",
        ["policy", "success last-100", "frames-to-95%", "sec-to-95%", "episodes", "wall s", "fps"],
        rows,
    )
    gru, lstm, mlp = (out[k]["success_last_100"] for k in ("gru", "lstm", "mlp"))
    out["gru_pass"] = gru >= 0.95 and abs(mlp - chance) <= 0.10  # the result rows' verdicts
    out["lstm_pass"] = lstm >= 0.95
    ok = out["gru_pass"] and out["lstm_pass"]
    detail = f"GRU success {gru:.3f}, LSTM {lstm:.3f} (need >= 0.95), MLP {mlp:.3f} (need {chance:.2f} +- 0.10)"
    out["chance"] = chance
    out["verdict"] = verdict("memory-gru-lstm-vs-mlp", ok, detail, args.quick)
    return out


def bench_pendulum(args: Any, work: Path) -> dict[str, Any]:
    """Target 3: Pendulum-v1 last-100 mean return >= -250."""
    budget = 15_000 if args.quick else int(config.load(PENDULUM_YAML).experiment.total_frames)
    run = run_hpcrl(
        PENDULUM_YAML, [f"experiment.seed={args.seed}", f"experiment.total_frames={budget}"], work / "pendulum"
    )
    f250, s250 = to_threshold(run, -250.0)
    final = run.last_mean()
    print_table(
        f"Pendulum-v1, PPO + Gaussian policy ({PENDULUM_YAML.relative_to(ROOT)}), seed {args.seed}",
        ["budget", "final last-100", "frames-to--250", "sec-to--250", "wall s", "fps"],
        [[budget, final, f250, s250, run.wall_seconds, run.summary["fps"]]],
    )
    ok = final >= -250.0
    detail = f"final last-100 mean {final:.1f} after {run.summary['frames']:,} frames (need >= -250)"
    return {
        "budget_frames": budget,
        "final_mean_last_100": final,
        "frames_to_minus_250": f250,
        "seconds_to_minus_250": s250,
        "wall_seconds": round(run.wall_seconds, 2),
        "fps": run.summary["fps"],
        "curve": curve(run),
        "verdict": verdict("pendulum-250", ok, detail, args.quick),
    }


def random_quickstart_return(episodes: int, seed: int) -> float:
    """Mean per-agent episode return of uniform random play on ``quickstart-multiagent``."""
    from hpcrl.api.environment import Action
    from hpcrl.envs.toy import QuickstartEnvironment

    env = QuickstartEnvironment(seed=seed)
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(episodes):
        env.reset()
        done = False
        while not done:
            res = env.step([Action(x=np.int64(a)) for a in rng.integers(0, env.N_ACTIONS, 2)])
            total += sum(float(r.reward[0]) for r in res if r is not None)
            done = bool(res[0].done[0])  # type: ignore[union-attr]
    return total / (2 * episodes)


def coin_probe(run_dir: str, samples: int, seed: int) -> dict[str, float]:
    """How a trained critic's value reacts to the hidden bonus coin (``state[374]``).

    Collects ``samples`` fresh observations of ``quickstart-multiagent`` (oracle play), sets the
    coin to 1 and to 0 in the centralized state (index 374 and its one-hot at 375:377), and
    compares the critic's values. A critic that learned the bonus rule predicts about
    ``team_bonus x P(both agents right)`` more when the coin is 1.
    """
    from hpcrl.api.environment import Action
    from hpcrl.api.namedarray import NamedArray
    from hpcrl.api.policy import RolloutRequest
    from hpcrl.envs.toy import QuickstartEnvironment
    from hpcrl.storage.checkpoint import load_policy

    policy = load_policy(run_dir)
    env = QuickstartEnvironment(seed=seed + 1000)
    obs: list[np.ndarray] = []
    state: list[np.ndarray] = []
    res = env.reset()
    while len(obs) < samples:
        for r in res:
            assert r is not None
            obs.append(np.array(r.obs["obs"]))
            state.append(np.array(r.obs["state"]))
        if bool(res[0].done[0]):  # type: ignore[union-attr]
            res = env.reset()
        else:
            res = env.step([Action(x=np.int64(a)) for a in env.oracle_actions()])
    o, s = np.stack(obs[:samples]), np.stack(state[:samples])
    values = {}
    for coin in (0, 1):
        sc = s.copy()
        sc[:, 374] = coin
        sc[:, 375:377] = 0.0
        sc[:, 375 + coin] = 1.0
        req = RolloutRequest(obs=NamedArray(obs=o, state=sc), is_evaluation=np.ones((samples, 1), bool))
        out = policy.rollout(req)
        values[coin] = np.asarray(out.analyzed_result.value, np.float64).reshape(samples, -1)[:, 0]
    diff = values[1] - values[0]
    return {"value_coin1_minus_coin0": float(diff.mean()), "std": float(diff.std()), "samples": samples}


def bench_quickstart(args: Any, work: Path) -> dict[str, Any]:
    """Target 4: the centralized critic learns the hidden team-bonus rule; both critics beat random."""
    budget = 10_000 if args.quick else int(config.load(QUICKSTART_YAML).experiment.total_frames)
    arms = {
        "centralized": [],
        "obs-only": ["policy.args.state_dim=null"],
    }
    out: dict[str, Any] = {"budget_frames": budget}
    rows = []
    for name, extra in arms.items():
        run = run_hpcrl(
            QUICKSTART_YAML,
            [f"experiment.seed={args.seed}", f"experiment.total_frames={budget}", *extra],
            work / f"quickstart-{name}",
        )
        probe = coin_probe(run.run_dir, 256 if args.quick else 2048, args.seed)
        f40, _ = to_threshold(run, 40.0)
        vl, ev = run.stat_mean("value_loss"), run.stat_mean("explained_variance")
        dv = probe["value_coin1_minus_coin0"]
        rows.append([name, run.last_mean(), f40, dv, vl, ev, run.wall_seconds])
        out[name] = {
            "final_mean_last_100": run.last_mean(),
            "frames_to_40": f40,
            "coin_probe": probe,
            "value_loss_last_10": vl,
            "explained_variance_last_10": ev,
            "wall_seconds": round(run.wall_seconds, 2),
            "fps": run.summary["fps"],
            "curve": curve(run),
        }
        print(f"  quickstart {name}: return {run.last_mean():.2f}, V(coin=1)-V(coin=0) {dv:.3f}", flush=True)
    rand = random_quickstart_return(200 if args.quick else 2000, args.seed)
    out["random"] = {"mean_return": rand}
    rows.append(["random", rand, None, None, None, None, None])
    print_table(
        f"Quick-start multi-agent (2 agents, 16 actions; max ~48/episode), budget {budget:,} env steps, "
        f"seed {args.seed}",
        ["arm", "return last-100", "frames-to-40", "V(coin1)-V(coin0)", "value loss", "expl. var", "wall s"],
        rows,
    )
    c, o = out["centralized"], out["obs-only"]
    dv = c["coin_probe"]["value_coin1_minus_coin0"]
    ok = dv >= 0.5 and c["final_mean_last_100"] >= 40.0 and o["final_mean_last_100"] >= 40.0 and rand < 5.0
    detail = (
        f"centralized critic V(coin=1)-V(coin=0) = {dv:.2f} (need >= 0.5; obs-only critic: "
        f"{o['coin_probe']['value_coin1_minus_coin0']:.2f}, blind by construction); returns: centralized "
        f"{c['final_mean_last_100']:.1f}, obs-only {o['final_mean_last_100']:.1f}, random {rand:.2f} (need >= 40, "
        f">= 40, < 5)"
    )
    out["verdict"] = verdict("quickstart-centralized-critic", ok, detail, args.quick)
    return out


def bench_tictactoe(args: Any, work: Path) -> dict[str, Any]:
    """Target 5: tic-tac-toe against a random legal opponent: deterministic win rate >= 0.8 over 1,000 games."""
    from hpcrl.evaluate import evaluate

    budget = 10_000 if args.quick else int(config.load(TICTACTOE_YAML).experiment.total_frames)
    run_dir = work / "tictactoe"
    run = run_hpcrl(TICTACTOE_YAML, [f"experiment.seed={args.seed}", f"experiment.total_frames={budget}"], run_dir)
    games = 200 if args.quick else 1000
    ev = evaluate(run_dir, episodes=games, envs=16, seed=args.seed + 1000, config=TICTACTOE_YAML)
    ret = np.asarray(ev["returns"], np.float64)
    win, draw, loss = float((ret > 0.5).mean()), float((np.abs(ret) < 0.5).mean()), float((ret < -0.5).mean())
    last = run.returns[-1000:]
    train_win = float((last > 0.5).mean()) if last.size else float("nan")
    print_table(
        f"tic-tac-toe vs random legal opponent ({TICTACTOE_YAML.relative_to(ROOT)}), seed {args.seed}",
        ["budget", "eval games", "win", "draw", "loss", "train win (last 1000)", "wall s", "fps"],
        [[budget, games, win, draw, loss, train_win, run.wall_seconds, run.summary["fps"]]],
    )
    ok = win >= 0.8
    detail = (
        f"deterministic win rate {win:.3f} (draw {draw:.3f}, loss {loss:.3f}) after {budget:,} frames (need >= 0.8)"
    )
    return {
        "budget_frames": budget,
        "eval_games": games,
        "win_rate": win,
        "draw_rate": draw,
        "loss_rate": loss,
        "train_win_rate_last_1000": train_win,
        "wall_seconds": round(run.wall_seconds, 2),
        "fps": run.summary["fps"],
        "curve": curve(run),
        "verdict": verdict("tictactoe-vs-random", ok, detail, args.quick),
    }


def bench_ppg(args: Any, work: Path) -> dict[str, Any]:
    """Target 6: PPG solves CartPole within 200k frames; PPG against PPO on Acrobot-v1 (same PPO arguments)."""
    budget = 20_000 if args.quick else 200_000
    seed = args.seed
    common = [f"experiment.seed={seed}", f"experiment.total_frames={budget}"]
    cart = run_hpcrl(CARTPOLE_PPG_YAML, common, work / "ppg-cartpole")
    f475, s475 = to_threshold(cart, 475.0)
    print(f"  ppg cartpole: frames-to-475 {fmt(f475)}, final {cart.last_mean():.1f}", flush=True)
    out: dict[str, Any] = {
        "budget_frames": budget,
        "seed": seed,
        "cartpole": {
            "frames_to_475": f475,
            "seconds_to_475": s475,
            "final_mean_last_100": cart.last_mean(),
            "wall_seconds": round(cart.wall_seconds, 2),
            "aux_phases": int(np.nanmax(cart.stats.get("ppg_phase", [0.0]))),
            "curve": curve(cart),
        },
    }
    rows = [["cartpole", "ppg", f475, s475, cart.last_mean(), None, cart.wall_seconds]]
    for arm, extra in (("ppo", []), ("ppg", PPG_ARM)):
        run = run_hpcrl(ACROBOT_PPO_YAML, [*common, *extra], work / f"acrobot-{arm}")
        f100, s100 = to_threshold(run, -100.0)
        mean_all = float(run.returns.mean()) if len(run.returns) else math.nan
        out[f"acrobot_{arm}"] = {
            "frames_to_minus_100": f100,
            "seconds_to_minus_100": s100,
            "final_mean_last_100": run.last_mean(),
            "mean_return_all_episodes": mean_all,
            "episodes": len(run.returns),
            "wall_seconds": round(run.wall_seconds, 2),
            "curve": curve(run),
        }
        rows.append(["acrobot", arm, f100, s100, run.last_mean(), mean_all, run.wall_seconds])
        print(f"  acrobot {arm}: frames-to--100 {fmt(f100)}, final {run.last_mean():.1f}", flush=True)
    print_table(
        f"PPG: CartPole-v1 ({CARTPOLE_PPG_YAML.relative_to(ROOT)}) and Acrobot-v1 PPO vs PPG "
        f"({ACROBOT_PPO_YAML.relative_to(ROOT)}), budget {budget:,} frames, seed {seed}",
        ["task", "trainer", "frames-to-goal", "sec-to-goal", "final last-100", "mean all episodes", "wall s"],
        rows,
    )
    ppo, ppg = out["acrobot_ppo"], out["acrobot_ppg"]
    f100 = ppg["frames_to_minus_100"]
    ok = f475 is not None and f475 <= budget and f100 is not None and f100 <= budget
    detail = (
        f"PPG CartPole frames-to-475 {fmt(f475)} (budget {budget:,}); Acrobot frames-to--100 PPG {fmt(f100)} "
        f"(need one within the budget) vs PPO {fmt(ppo['frames_to_minus_100'])}, final last-100 PPG "
        f"{ppg['final_mean_last_100']:.1f} vs PPO {ppo['final_mean_last_100']:.1f}"
    )
    out["verdict"] = verdict("ppg", ok, detail, args.quick)
    return out


BENCHES = {
    "cartpole": bench_cartpole,
    "cartpole-mpi3": bench_cartpole_mpi3,
    "memory": bench_memory,
    "pendulum": bench_pendulum,
    "quickstart": bench_quickstart,
    "tictactoe": bench_tictactoe,
    "ppg": bench_ppg,
}


#: target -> (measure, unit, higher is better)
_ROWS: dict[str, tuple[str, str, bool]] = {
    "cartpole": (
        "CartPole-v1 (examples/cartpole/ppo.yaml), frames to last-100 mean >= 475, worst seed",
        "frames",
        False,
    ),
    "cartpole-mpi3": ("the same under mpiexec -n 3 (trainer, inference, actor rank), frames to 475", "frames", False),
    "memory": ("memory task (examples/memory/gru.yaml), GRU success rate over the last 100 episodes", "", True),
    "memory-lstm": ("memory task (examples/memory/lstm.yaml), LSTM success rate over the last 100 episodes", "", True),
    "pendulum": ("Pendulum-v1 (examples/pendulum/ppo.yaml), last-100 mean return", "", True),
    "quickstart": ("quick-start multi-agent: centralized critic's V(coin=1) - V(coin=0)", "", True),
    "tictactoe": (
        "tic-tac-toe vs random legal opponent (examples/tictactoe/ppo.yaml), deterministic win rate",
        "",
        True,
    ),
    "ppg": ("PPG (examples/cartpole/ppg.yaml), CartPole-v1 frames to last-100 mean >= 475", "frames", False),
}


def _row(name: str, out: dict[str, Any]) -> Row:
    """The target's row: hpcrl's value against the target value, PASS/FAIL from the target's own verdict."""
    measure, unit, higher = _ROWS[name]
    v = out["verdict"]
    passed = bool(v["pass"])
    if name == "cartpole":
        hits = [r["frames_to_475"] for r in out["runs"]]
        value = None if None in hits else float(max(hits))
        goal, text = float(out["budget_frames"]), f"every seed within {out['budget_frames']:,} frames"
    elif name == "cartpole-mpi3":
        value = None if out["frames_to_475"] is None else float(out["frames_to_475"])
        goal, text = float(out["budget_frames"]), f"within {out['budget_frames']:,} frames"
    elif name == "memory":
        value, goal, text = out["gru"]["success_last_100"], 0.95, ">= 0.95 (MLP at chance)"
        passed = bool(out.get("gru_pass", passed))
    elif name == "memory-lstm":  # a second row of the memory target
        value, goal, text = out["lstm"]["success_last_100"], 0.95, ">= 0.95 (like the GRU)"
        passed = bool(out["lstm_pass"])
    elif name == "pendulum":
        value, goal, text = out["final_mean_last_100"], -250.0, ">= -250"
    elif name == "tictactoe":
        value, goal, text = out["win_rate"], 0.8, ">= 0.8 of 1,000 games"
    elif name == "ppg":
        f475 = out["cartpole"]["frames_to_475"]
        value = None if f475 is None else float(f475)
        goal, text = float(out["budget_frames"]), f"within {out['budget_frames']:,} frames (Acrobot: PPG vs PPO)"
    else:
        value, goal, text = out["centralized"]["coin_probe"]["value_coin1_minus_coin0"], 0.5, ">= 0.5"
    return Row(
        "learning",
        measure,
        value,
        "target",
        goal,
        unit,
        higher_is_better=higher,
        target_text=text,
        note=v["detail"],
        passed=passed,
    )


def run(ctx: Context) -> BenchResult:
    """Run the selected targets one after the other; one row per target."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(1)
    only = [t.strip() for t in str(ctx.opt("only", ",".join(TARGETS))).split(",") if t.strip()]
    unknown = [t for t in only if t not in BENCHES]
    if unknown:
        raise ValueError(f"--only: unknown target(s) {unknown}; expected some of {list(BENCHES)}")
    args = SimpleNamespace(
        quick=ctx.quick,
        seeds=[int(s) for s in str(ctx.opt("seeds", "1,2,3")).split(",") if s.strip()],
        seed=int(ctx.opt("seed", 1)),
    )
    res = BenchResult("learning")
    keep = ctx.opt("keep_runs")
    with contextlib.ExitStack() as stack:
        if keep:
            work = Path(keep).resolve()
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hpcrl-bench-learning-")))
        for name in only:
            print(f"\n=== {name}", flush=True)
            t = time.time()
            out = BENCHES[name](args, work)  # type: ignore[operator]
            out["bench_seconds"] = round(time.time() - t, 1)
            res.data[name] = out
            res.rows.append(_row(name, out))
            if name == "memory":
                res.rows.append(_row("memory-lstm", out))
    return res


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(TARGETS)}")
    p.add_argument("--seeds", default=None, help="CartPole seeds (default 1,2,3)")
    p.add_argument("--seed", type=int, default=None, help="seed for the other targets (default 1)")
    p.add_argument("--keep-runs", default=None, help="keep run directories under this folder")


main = bench_main("learning", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
