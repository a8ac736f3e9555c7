"""Atari Pong PPO throughput: hpcrl (one process, mpiexec -n 2) vs Stable-Baselines3, plus the machine's limits.

    python -m benchmarks.bench_pong [--quick] [--frames 6144] [--repeats 1]

Standard Atari PPO settings on both sides (examples/pong/pong.yaml; rl-zoo's Atari PPO): ``ALE/Pong-v5``
with sticky actions 0.25, 4-frame skip with max-pooling, no-op starts, episodic life, reward clipping,
84 x 84 grayscale, 4 stacked frames; 8 envs x 128 steps per update, 4 epochs x 4 minibatches of 256,
Nature CNN (3 conv layers + 512 features) shared by the policy and value heads, lr 2.5e-4, clip 0.1,
entropy 0.01, one torch thread per process. SB3 runs ``DummyVecEnv`` + ``VecFrameStack`` in one process.
hpcrl runs (a) in one process, (b) under ``mpiexec -n 2`` (trainer + one actor rank with the policy
inline, so env stepping and inference overlap the SGD). fps = agent steps per second (x4 emulator frames):
for SB3 frames / ``learn`` seconds (N rollouts + N updates); for hpcrl the steady trained rate between
its first and last PPO update on rank 0 ((updates - 1) x 1024 rows over that span), which excludes
start-up like SB3's number does and ignores the last fragment that hpcrl collects but never trains.

Limits measured in the same run: one env step of the preprocessed stack (plain gymnasium loop), one
plain-torch Nature CNN inference for 8 envs, one plain-torch PPO update on 1024 rows. Target: hpcrl >=
1.5x SB3 (the best hpcrl layout on this machine counts; both are shown).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import peers
from benchmarks.common import ROOT, BenchResult, Context, Row, bench_main, best, first_error, load_avg, run_hpcrl_job

__all__ = ["PONG_YAML", "main", "measure_pong_limits", "run"]

PONG_YAML = ROOT / "examples" / "pong" / "pong.yaml"
TARGET = 1.5


def sb3_pong_params(frames: int) -> dict[str, Any]:
    """SB3 parameters equal to examples/pong/pong.yaml (SB3's value loss has no 0.5: vf_coef = 0.5 x 0.5)."""
    from hpcrl.api import config

    cfg = config.load(PONG_YAML)
    t, e = cfg.trainer.args, cfg.environment.args
    rows = cfg.actor.envs_per_actor * cfg.actor.fragment_length
    return {
        "game": e.get("game", "Pong"),
        "n_envs": cfg.actor.envs_per_actor,
        "n_steps": cfg.actor.fragment_length,
        "batch_size": rows // int(t.get("minibatches", 4)),
        "n_epochs": int(t.get("epochs", 4)),
        "learning_rate": float(t.get("lr", 2.5e-4)),
        "clip_range": float(t.get("clip", 0.1)),
        "ent_coef": float(t.get("entropy_coef", 0.01)),
        "vf_coef": 0.5 * float(t.get("value_coef", 0.5)),
        "max_grad_norm": float(t.get("max_grad_norm", 0.5)),
        "gamma": float(t.get("gamma", 0.99)),
        "gae_lambda": float(t.get("gae_lambda", 0.95)),
        "repeat_action_probability": float(e.get("repeat_action_probability", 0.25)),
        "noop_max": int(e.get("noop_max", 30)),
        "seed": 1,
        "total_frames": int(frames),
    }


# ====================================================================== limits
def _nature_cnn() -> Any:
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.torso = nn.Sequential(
                nn.Conv2d(4, 32, 8, stride=4),
                nn.ReLU(),
                nn.Conv2d(32, 64, 4, stride=2),
                nn.ReLU(),
                nn.Conv2d(64, 64, 3, stride=1),
                nn.ReLU(),
                nn.Flatten(),
                nn.Linear(64 * 7 * 7, 512),
                nn.ReLU(),
            )
            self.pi = nn.Linear(512, 6)
            self.v = nn.Linear(512, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.torso(x.float() / 255.0)
            return self.pi(h), self.v(h).squeeze(-1)

    return Net()


def measure_pong_limits(quick: bool) -> dict[str, Any]:
    """Plain costs: env step (us), Nature-CNN inference for 8 envs (us), PPO update on 1024 rows (us)."""
    import gymnasium
    import numpy as np
    import torch

    torch.set_num_threads(1)
    out: dict[str, Any] = {}
    try:
        import ale_py
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        gymnasium.register_envs(ale_py)
        env = gymnasium.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.25, disable_env_checker=True)
        env = FrameStackObservation(AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84), 4)
        env.reset(seed=0)
        steps = 500 if quick else 3000
        acts = [int(a) for a in np.random.default_rng(0).integers(0, 6, steps)]
        t = time.process_time()
        for a in acts:
            _, _, term, trunc, _ = env.step(a)
            if term or trunc:
                env.reset()
        out["env_us"] = 1e6 * (time.process_time() - t) / steps
        env.close()
    except ImportError as e:
        out["env_error"] = str(e)
    torch.manual_seed(0)
    net = _nature_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=2.5e-4, eps=1e-5)
    rng = np.random.default_rng(0)
    obs8 = torch.from_numpy(rng.integers(0, 255, (8, 4, 84, 84), dtype=np.uint8))
    calls = 20 if quick else 100
    with torch.no_grad():
        net(obs8)
        t = time.process_time()
        for _ in range(calls):
            logits, _ = net(obs8)
            torch.distributions.Categorical(logits=logits).sample().numpy()
    out["infer_us_per_call_b8"] = 1e6 * (time.process_time() - t) / calls
    obs = torch.from_numpy(rng.integers(0, 255, (1024, 4, 84, 84), dtype=np.uint8))
    act = torch.from_numpy(rng.integers(0, 6, 1024))
    adv, ret, old = torch.randn(1024), torch.randn(1024), torch.full((1024,), -1.79)

    def update(minibatches: int) -> None:
        for idx in torch.randperm(1024).tensor_split(4)[:minibatches]:
            logits, v = net(obs[idx])
            dist = torch.distributions.Categorical(logits=logits)
            ratio = (dist.log_prob(act[idx]) - old[idx]).exp()
            a = (adv[idx] - adv[idx].mean()) / (adv[idx].std() + 1e-8)
            pg = torch.max(-a * ratio, -a * ratio.clamp(0.9, 1.1)).mean()
            loss = pg + 0.25 * ((v - ret[idx]) ** 2).mean() - 0.01 * dist.entropy().mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
            opt.step()

    update(1)
    mbs = 2 if quick else 8
    t = time.process_time()
    update(min(mbs, 4))
    if mbs > 4:
        update(mbs - 4)
    out["sgd_us_per_update_1024"] = 1e6 * (time.process_time() - t) / mbs * 16  # 4 epochs x 4 minibatches
    per_frame = {
        "env": out.get("env_us", 0.0),
        "infer": out["infer_us_per_call_b8"] / 8,
        "sgd": out["sgd_us_per_update_1024"] / 1024,
    }
    out["per_frame_us"] = per_frame
    cores = os.cpu_count() or 1
    w = sum(per_frame.values())
    out["fps_limit_1"] = 1e6 / w
    out["fps_limit_2"] = min(1e6 / per_frame["sgd"], 1e6 / (per_frame["env"] + per_frame["infer"]), cores * 1e6 / w)
    return out


# ====================================================================== runs
def hpcrl_pong(frames: int, run_dir: Path, ranks: int) -> dict[str, Any]:
    """One hpcrl Pong job (0 ranks: one process; 2: trainer + inline actor)."""
    overrides = [f"experiment.total_frames={frames}", "run.checkpoint_every_seconds=0", "training.batch_size=8"]
    if ranks:
        overrides.append("layout.inference=0")
    try:
        job = run_hpcrl_job(PONG_YAML, overrides, run_dir, ranks=ranks, timeout=1800, rows_per_step=1024)
    except RuntimeError as e:
        return {"error": str(e)[-1500:]}
    return {
        "fps": job.fps,
        "trained_fps": job.steady_trained_fps,
        "trainer_steps": len(job.step_walls),
        "summary": job.summary,
        "load": load_avg(),
    }


def sb3_pong(frames: int) -> dict[str, Any]:
    """One SB3 Pong run (peer venv ``sb3_atari``)."""
    try:
        peers.ensure_peer("sb3_atari")
        params = json.dumps(sb3_pong_params(frames))
        return peers.run_peer("sb3_atari", "sb3_atari_ppo.py", ["--params", params], timeout=1800, quiet=True)
    except peers.PeerError as e:
        return {"error": str(e)[-1500:]}


def run(ctx: Context) -> BenchResult:
    """Limits, then alternating hpcrl (1 process, -n 2) / SB3 runs; best of ``repeats`` each."""
    quick = ctx.quick
    frames = ctx.opt("frames", 3072 if quick else 6144)
    repeats = ctx.opt("repeats", 1)
    res = BenchResult("pong")
    limits = measure_pong_limits(quick)
    print(f"  pong limits: {json.dumps({k: v for k, v in limits.items() if k != 'per_frame_us'})}", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl-1": [], "hpcrl-2": [], "sb3": []}
    layouts = [1] if quick else [1, 2]
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-pong-") as tmp:
        for rep in range(repeats):
            for n in layouts:
                r = hpcrl_pong(frames, Path(tmp) / f"p{n}-{rep}", 0 if n == 1 else n)
                runs[f"hpcrl-{n}"].append(r)
                print(f"  hpcrl pong ({n} rank): {r.get('fps', r.get('error'))} fps", flush=True)
            s = sb3_pong(frames)
            runs["sb3"].append(s)
            print(f"  sb3 pong: {s.get('fps', s.get('error'))} fps", flush=True)

    sb3 = best(runs["sb3"], "fps")
    best_layout = max(layouts, key=lambda n: best(runs[f"hpcrl-{n}"], "trained_fps") or 0.0)
    for n in layouts:
        h = best(runs[f"hpcrl-{n}"], "trained_fps")
        judged = n == best_layout
        res.rows.append(
            Row(
                "pong",
                f"Pong fps, {'one process' if n == 1 else f'mpiexec -n {n}'} (trained agent steps/s)",
                h,
                "SB3 (1 process)",
                sb3,
                "fps",
                target=TARGET if judged else None,
                target_text=f">= {TARGET}x SB3" + ("" if judged else " (judged on the best layout)"),
                note=first_error(runs[f"hpcrl-{n}"]) or first_error(runs["sb3"]),
                limit=limits.get(f"fps_limit_{n}"),
            ).finish()
        )
    res.data = {"frames": frames, "limits": limits, "runs": runs}
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--frames", type=int, default=None, help="agent steps per run (default 6144; quick 3072)")
    p.add_argument("--repeats", type=int, default=None, help="alternating hpcrl / SB3 rounds (default 1)")


main = bench_main("pong", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
