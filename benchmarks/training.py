"""Timed hpcrl training runs (in this process or a fresh child process) and the SB3 translation of a config.

Used by the benchmarks that train: ``single`` and ``solve`` run hpcrl in a fresh child process, like the
peers run in theirs, so neither side profits from imports or warm-up done by an earlier run::

    python -m benchmarks.training '{"overrides": [...], "run_dir": "...", "threshold": 475.0}'

prints one JSON line (frames, wall and CPU seconds of ``run_local``, frames/seconds to ``threshold``).
``learning`` trains in its own process with :func:`run_hpcrl`.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CARTPOLE_YAML, PYTHON, ROOT
from hpcrl.api import config

__all__ = [
    "HpcrlRun",
    "first_crossing",
    "run_hpcrl",
    "run_hpcrl_child",
    "sb3_params",
    "to_threshold",
]

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
    "normalize_rewards",
    "reward_clip",
}


@dataclass
class HpcrlRun:
    """One finished hpcrl run: its summary, timings and the per-episode trace."""

    summary: dict[str, Any]
    wall_seconds: float
    cpu_seconds: float
    returns: np.ndarray
    frames: np.ndarray
    seconds: np.ndarray
    """Episode end times, seconds since just before ``run_local`` was called."""
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    run_dir: str = ""

    def last_mean(self, n: int = 100) -> float:
        """Mean return of the last ``n`` episodes (NaN without episodes)."""
        return float(self.returns[-n:].mean()) if len(self.returns) else math.nan

    def stat_mean(self, key: str, last: int = 10) -> float | None:
        """Mean of a trainer stat over the last ``last`` trainer steps."""
        v = self.stats.get(key)
        return float(np.nanmean(v[-last:])) if v is not None and len(v) else None


def run_hpcrl(yaml_path: Path, overrides: list[str], run_dir: Path) -> HpcrlRun:
    """Train ``yaml_path`` (with ``key=value`` overrides) in this process and read back its trace.

    Args:
        yaml_path: experiment YAML.
        overrides: ``key.path=value`` overrides applied after the file.
        run_dir: fresh run directory (created by the run).

    Returns:
        The run's summary, wall and CPU seconds around ``run_local``, and the episode table.
    """
    from hpcrl.roles.local import run_local
    from hpcrl.storage.trace import read_trace

    cfg = config.load(yaml_path, [*overrides, f"run.dir={run_dir}", "run.fresh=true", "run.progress='off'"])
    t0, c0 = time.time(), time.process_time()
    summary = run_local(cfg)
    wall, cpu = time.time() - t0, time.process_time() - c0
    traces = sorted((run_dir / "traces").glob("rank-*.h5"))
    if not traces:
        raise RuntimeError(f"run {run_dir}: no trace file under traces/ (run.trace off?)")
    tr = read_trace(traces[-1])
    ep = tr["episodes"]
    return HpcrlRun(
        summary=dict(summary),
        wall_seconds=wall,
        cpu_seconds=cpu,
        returns=np.asarray(ep["return"], np.float64),
        frames=np.asarray(ep["frames"], np.int64),
        seconds=np.asarray(ep["wall_time"], np.float64) - t0,
        stats={k: np.asarray(v, np.float64) for k, v in tr["trainer"]["stats"].items()},
        run_dir=str(run_dir),
    )


def first_crossing(returns: np.ndarray, threshold: float, window: int = 100) -> int | None:
    """Index of the first episode at which the mean of the last ``window`` returns is >= ``threshold``.

    Only full windows count (``window`` episodes finished). ``None`` if never.

    Examples:
        >>> first_crossing(np.array([0.0, 1.0, 1.0, 1.0]), 1.0, window=2)
        2
        >>> first_crossing(np.array([0.0, 1.0]), 1.0, window=2) is None
        True
    """
    r = np.asarray(returns, np.float64)
    if len(r) < window:
        return None
    c = np.concatenate([[0.0], np.cumsum(r)])
    means = (c[window:] - c[:-window]) / window  # means[j] covers episodes j .. j+window-1
    hit = np.nonzero(means >= threshold - 1e-9)[0]
    return int(hit[0]) + window - 1 if len(hit) else None


def to_threshold(run: HpcrlRun, threshold: float, window: int = 100) -> tuple[int | None, float | None]:
    """``(frames, seconds)`` at which ``run``'s rolling mean return first reached ``threshold``."""
    i = first_crossing(run.returns, threshold, window)
    if i is None:
        return None, None
    return int(run.frames[i]), float(run.seconds[i])


def sb3_params(cfg: config.ExperimentConfig, seed: int, total_frames: int, threshold: float) -> dict[str, Any]:
    """Translate an hpcrl CartPole PPO experiment into the SB3 / CleanRL peer scripts' parameters.

    hpcrl's value loss is ``0.5 * mean((V - R)^2) * value_coef`` while SB3's is ``mean((V - R)^2) * vf_coef``,
    so SB3 gets ``vf_coef = value_coef / 2`` (identical loss).

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
        **({"log_std_init": float(pargs["init_log_std"])} if "init_log_std" in pargs else {}),
        "ortho_init": bool(pargs.get("ortho_init", True)),
        # rl-zoo's normalize: true = SB3's VecNormalize (docs/normalization.md): hpcrl's policy normalize_obs
        # and trainer normalize_rewards
        "normalize_obs": bool(pargs.get("normalize_obs", False)),
        "obs_clip": float(pargs.get("obs_clip", 10.0)),
        "normalize_reward": bool(targs.get("normalize_rewards", False)),
        "reward_clip": float(targs.get("reward_clip", 10.0)),
        "seed": int(seed),
        "total_frames": int(total_frames),
        "threshold": float(threshold),
    }


def run_hpcrl_child(
    overrides: list[str],
    run_dir: Path,
    threshold: float,
    timeout: float = 3600.0,
    yaml_path: Path | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """Train ``yaml_path`` (default benchmarks/configs/cartpole_ppo.yaml) in a fresh python process (like a peer).

    Returns the child's JSON result; with ``curve`` it holds every episode's end frame, return and
    seconds as ``curve`` (``{"frames", "returns", "seconds"}``).

    The child times ``run_local`` only (imports excluded, env/policy/trainer construction included), in wall
    and process CPU time, and reads frames/seconds to ``threshold`` from the run's trace.

    Raises:
        RuntimeError: the child failed or printed no JSON line (the message has its output's tail).
    """
    from benchmarks.common import hpcrl_env

    spec = json.dumps(
        {
            "overrides": overrides,
            "run_dir": str(run_dir),
            "threshold": threshold,
            "yaml": str(yaml_path or CARTPOLE_YAML),
            "curve": curve,
        }
    )
    cmd = [PYTHON, "-m", "benchmarks.training", spec]
    proc = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=hpcrl_env(), timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"hpcrl child run failed (exit {proc.returncode}): {proc.stdout[-2000:]}")
    return dict(json.loads(lines[-1]))


def main(argv: list[str] | None = None) -> int:
    """Child entry: one hpcrl run of a benchmark config (CartPole's by default), one JSON line on stdout."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print('usage: python -m benchmarks.training \'{"overrides": [...], "run_dir": DIR, "threshold": X}\'')
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    spec = json.loads(args[0])
    run = run_hpcrl(Path(spec.get("yaml", CARTPOLE_YAML)), list(spec["overrides"]), Path(spec["run_dir"]))
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
    if spec.get("curve"):
        out["curve"] = {
            "frames": run.frames.tolist(),
            "returns": run.returns.tolist(),
            "seconds": [round(float(x), 3) for x in run.seconds],
        }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
