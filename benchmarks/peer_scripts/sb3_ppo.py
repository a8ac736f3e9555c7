"""Stable-Baselines3 PPO on a gymnasium env; prints one JSON line (runs inside benchmarks/.peers/sb3).

    benchmarks/.peers/sb3/bin/python benchmarks/peer_scripts/sb3_ppo.py --params '{"env_id": "CartPole-v1", ...}'

Launched by the single, solve and mpi benchmarks through benchmarks.peers.run_peer; it imports nothing from hpcrl.
``--params`` is a JSON object:

    env_id, n_envs, n_steps, batch_size, n_epochs, learning_rate, lr_schedule ("constant"|"linear"),
    gamma, gae_lambda, clip_range, ent_coef, vf_coef, max_grad_norm, normalize_advantage, adam_eps,
    net_arch (list of ints, used for both pi and vf), activation ("tanh"|"relu"), ortho_init (bool, default
    true), log_std_init (Gaussian policies; optional), seed, total_frames,
    threshold (mean return over the last 100 episodes), record_episodes (bool),
    profile (bool: time the phases listed in PHASES in thread CPU time),
    record_curve (bool: add every episode's end frame, return and seconds as "curve"),
    log_dir (str: write SB3's per-update training statistics there as progress.csv),
    normalize_obs / normalize_reward (bool), obs_clip / reward_clip (float): wrap the envs in VecNormalize
    (rl-zoo's ``normalize: true``; episode returns stay the raw ones, recorded by the Monitor inside)

Output: {"frames", "wall_seconds", "learn_seconds", "cpu_seconds", "fps", "episodes", "mean_return_last_100",
"frames_to_threshold", "seconds_to_threshold", "versions"}. ``wall_seconds`` covers env and model
construction plus ``learn`` (``cpu_seconds``: the same span in process CPU time); ``fps`` is
frames / ``learn_seconds``. Episode bookkeeping is done by a
light callback (reading the Monitor's ``episode`` infos) only when ``record_episodes`` is true.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Any

T_START = time.time()

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import stable_baselines3  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

#: SB3 phases timed in thread CPU time with ``"profile": true``: (object path, method, label).
PHASES = [
    ("stable_baselines3.common.on_policy_algorithm:OnPolicyAlgorithm", "collect_rollouts", "1 collect_rollouts"),
    ("stable_baselines3.common.policies:ActorCriticPolicy", "forward", "1.1 policy.forward (inference)"),
    ("stable_baselines3.common.vec_env:DummyVecEnv", "step_wait", "1.2 DummyVecEnv.step_wait (8 envs)"),
    ("stable_baselines3.common.buffers:RolloutBuffer", "add", "1.3 RolloutBuffer.add"),
    ("stable_baselines3.common.buffers:RolloutBuffer", "compute_returns_and_advantage", "1.4 GAE"),
    ("stable_baselines3.ppo:PPO", "train", "2 PPO.train (update)"),
    ("stable_baselines3.common.policies:ActorCriticPolicy", "evaluate_actions", "2.1 evaluate_actions"),
    ("torch:Tensor", "backward", "2.2 loss.backward"),
    ("torch.optim:Adam", "step", "2.3 Adam.step"),
]


def instrument() -> tuple[dict[str, float], dict[str, int]]:
    """Wrap :data:`PHASES` with thread-CPU-time accumulators."""
    import functools
    import importlib

    seconds: dict[str, float] = {}
    calls: dict[str, int] = {}
    for path, meth, label in PHASES:
        mod, _, cls_name = path.partition(":")
        cls = getattr(importlib.import_module(mod), cls_name)
        fn = getattr(cls, meth)
        seconds[label], calls[label] = 0.0, 0

        def wrapped(*a: Any, __fn: Any = fn, __label: str = label, **k: Any) -> Any:
            t = time.thread_time()
            try:
                return __fn(*a, **k)
            finally:
                seconds[__label] += time.thread_time() - t
                calls[__label] += 1

        setattr(cls, meth, functools.wraps(fn)(wrapped))
    return seconds, calls


class EpisodeLog(BaseCallback):
    """Records (frames, wall time, return) of every finished episode; notes when the threshold is met."""

    def __init__(self, threshold: float, t0: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.t0 = t0
        self.window: collections.deque[float] = collections.deque(maxlen=100)
        self.episodes = 0
        self.hit_frames: int | None = None
        self.hit_seconds: float | None = None
        self.curve: dict[str, list[float]] = {"frames": [], "returns": [], "seconds": []}

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            ep = info.get("episode")
            if ep is None:
                continue
            self.window.append(float(ep["r"]))
            self.episodes += 1
            self.curve["frames"].append(int(self.num_timesteps))
            self.curve["returns"].append(float(ep["r"]))
            self.curve["seconds"].append(round(time.time() - self.t0, 3))
            if self.hit_frames is None and len(self.window) == 100 and sum(self.window) / 100.0 >= self.threshold:
                self.hit_frames = int(self.num_timesteps)
                self.hit_seconds = time.time() - self.t0
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True, help="JSON object of hyperparameters (see the module docstring)")
    p: dict[str, Any] = json.loads(ap.parse_args().params)

    torch.set_num_threads(1)
    timers = instrument() if p.get("profile") else None
    t0, c0 = time.time(), time.process_time()
    lr0 = float(p["learning_rate"])
    lr: Any = (lambda remaining: lr0 * remaining) if p.get("lr_schedule", "constant") == "linear" else lr0
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[p.get("activation", "tanh")]
    arch = [int(h) for h in p["net_arch"]]
    env = make_vec_env(
        p["env_id"],
        n_envs=int(p["n_envs"]),
        seed=int(p["seed"]),
        vec_env_cls=DummyVecEnv,
        env_kwargs={"disable_env_checker": True},
    )
    if p.get("normalize_obs") or p.get("normalize_reward"):
        from stable_baselines3.common.vec_env import VecNormalize

        env = VecNormalize(
            env,
            norm_obs=bool(p.get("normalize_obs")),
            norm_reward=bool(p.get("normalize_reward")),
            clip_obs=float(p.get("obs_clip", 10.0)),
            clip_reward=float(p.get("reward_clip", 10.0)),
            gamma=float(p["gamma"]),
        )
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=lr,
        n_steps=int(p["n_steps"]),
        batch_size=int(p["batch_size"]),
        n_epochs=int(p["n_epochs"]),
        gamma=float(p["gamma"]),
        gae_lambda=float(p["gae_lambda"]),
        clip_range=float(p["clip_range"]),
        normalize_advantage=bool(p.get("normalize_advantage", True)),
        ent_coef=float(p["ent_coef"]),
        vf_coef=float(p["vf_coef"]),
        max_grad_norm=float(p["max_grad_norm"]),
        policy_kwargs={
            "net_arch": {"pi": arch, "vf": arch},
            "activation_fn": act,
            "optimizer_kwargs": {"eps": float(p.get("adam_eps", 1e-5))},
            **({"log_std_init": float(p["log_std_init"])} if "log_std_init" in p else {}),
            "ortho_init": bool(p.get("ortho_init", True)),
        },
        seed=int(p["seed"]),
        device="cpu",
        verbose=0,
    )
    if p.get("log_dir"):
        from stable_baselines3.common.logger import configure

        model.set_logger(configure(str(p["log_dir"]), ["csv"]))
    callback = EpisodeLog(float(p.get("threshold", float("inf"))), t0) if p.get("record_episodes", True) else None
    t_learn = time.time()
    model.learn(total_timesteps=int(p["total_frames"]), callback=callback)
    learn_s = time.time() - t_learn
    wall, cpu = time.time() - t0, time.process_time() - c0
    frames = int(model.num_timesteps)
    returns = [float(e["r"]) for e in model.ep_info_buffer]
    out = {
        "frames": frames,
        "wall_seconds": round(wall, 3),
        "learn_seconds": round(learn_s, 3),
        "cpu_seconds": round(cpu, 3),
        "import_seconds": round(t0 - T_START, 3),
        "fps": round(frames / learn_s, 1),
        "episodes": callback.episodes if callback else None,
        "mean_return_last_100": round(float(np.mean(returns)), 3) if returns else None,
        "frames_to_threshold": callback.hit_frames if callback else None,
        "seconds_to_threshold": round(callback.hit_seconds, 3) if callback and callback.hit_seconds else None,
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    if p.get("record_curve") and callback is not None:
        out["curve"] = callback.curve
    if timers is not None:
        out["cpu_us_per_frame"] = 1e6 * cpu / frames
        out["phases_us_per_frame"] = {k: round(1e6 * v / frames, 2) for k, v in timers[0].items()}
        out["phase_calls"] = timers[1]
    env.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
