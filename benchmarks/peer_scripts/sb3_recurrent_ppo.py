"""sb3-contrib's RecurrentPPO (LSTM) on the memory task; prints one JSON line (in benchmarks/.peers/sb3_contrib).

    benchmarks/.peers/sb3_contrib/bin/python benchmarks/peer_scripts/sb3_recurrent_ppo.py --params '{...}'

The memory task is written here again with gymnasium (this script imports nothing from hpcrl), with the
rules of ``hpcrl.envs.toy.MemoryEnvironment``: the first observation is a one-hot symbol (``n_symbols + 1``
floats), then ``delay`` all-zero observations, then the query (last element 1); the action taken on the query
is graded (reward 1 if it names the symbol, else 0) and ends the episode. Episodes are ``delay + 2`` steps.

``--params`` is a JSON object: delay, n_symbols, n_envs, n_steps, batch_size, n_epochs, learning_rate,
lr_schedule, gamma, gae_lambda, clip_range, ent_coef, vf_coef, max_grad_norm, adam_eps, lstm_hidden_size,
seed, total_frames, threshold. The policy is an LSTM on the observation for the actor and another for the
critic, straight into the action and value layers (``net_arch=[]``), the shape of hpcrl's
actor-critic-separate policy with ``num_dense_layers: 0`` and an LSTM.

Output: frames, wall_seconds, learn_seconds, fps, mean_return_last_100, frames_to_threshold,
seconds_to_threshold, versions, and ``curve`` (every episode's end frame, return and seconds).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv


class Memory(gymnasium.Env):
    """Recall a symbol after ``delay`` blank steps (see the module docstring)."""

    def __init__(self, delay: int = 8, n_symbols: int = 4) -> None:
        self.delay, self.n = int(delay), int(n_symbols)
        self.observation_space = spaces.Box(0.0, 1.0, (self.n + 1,), np.float32)
        self.action_space = spaces.Discrete(self.n)
        self.symbol = 0
        self.t = 0

    def _obs(self, kind: str) -> np.ndarray:
        o = np.zeros(self.n + 1, np.float32)
        if kind == "cue":
            o[self.symbol] = 1.0
        elif kind == "query":
            o[-1] = 1.0
        return o

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.symbol = int(self.np_random.integers(0, self.n))
        self.t = 0
        return self._obs("cue"), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.t == self.delay + 1:
            self.t += 1
            return self._obs("blank"), float(int(action) == self.symbol), True, False, {}
        self.t += 1
        return self._obs("query" if self.t == self.delay + 1 else "blank"), 0.0, False, False, {}


class EpisodeLog(BaseCallback):
    """Every finished episode's (frames, return, seconds); notes when the last-100 mean reaches the threshold."""

    def __init__(self, threshold: float, t0: float) -> None:
        super().__init__()
        self.threshold, self.t0 = threshold, t0
        self.window: collections.deque[float] = collections.deque(maxlen=100)
        self.curve: dict[str, list[float]] = {"frames": [], "returns": [], "seconds": []}
        self.hit_frames: int | None = None
        self.hit_seconds: float | None = None

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            ep = info.get("episode")
            if ep is None:
                continue
            self.window.append(float(ep["r"]))
            self.curve["frames"].append(int(self.num_timesteps))
            self.curve["returns"].append(float(ep["r"]))
            self.curve["seconds"].append(round(time.time() - self.t0, 3))
            if self.hit_frames is None and len(self.window) == 100 and np.mean(self.window) >= self.threshold:
                self.hit_frames, self.hit_seconds = int(self.num_timesteps), time.time() - self.t0
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True)
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    torch.set_num_threads(1)
    t0 = time.time()
    lr0 = float(p["learning_rate"])
    lr: Any = (lambda remaining: lr0 * remaining) if p.get("lr_schedule", "constant") == "linear" else lr0
    env = make_vec_env(
        Memory,
        n_envs=int(p["n_envs"]),
        seed=int(p["seed"]),
        vec_env_cls=DummyVecEnv,
        env_kwargs={"delay": int(p["delay"]), "n_symbols": int(p["n_symbols"])},
    )
    model = RecurrentPPO(
        "MlpLstmPolicy",
        env,
        learning_rate=lr,
        n_steps=int(p["n_steps"]),
        batch_size=int(p["batch_size"]),
        n_epochs=int(p["n_epochs"]),
        gamma=float(p["gamma"]),
        gae_lambda=float(p["gae_lambda"]),
        clip_range=float(p["clip_range"]),
        ent_coef=float(p["ent_coef"]),
        vf_coef=float(p["vf_coef"]),
        max_grad_norm=float(p["max_grad_norm"]),
        policy_kwargs={
            "lstm_hidden_size": int(p["lstm_hidden_size"]),
            "n_lstm_layers": 1,
            "shared_lstm": False,
            "enable_critic_lstm": True,
            "net_arch": [],
            "optimizer_kwargs": {"eps": float(p.get("adam_eps", 1e-5))},
        },
        seed=int(p["seed"]),
        device="cpu",
        verbose=0,
    )
    log = EpisodeLog(float(p.get("threshold", float("inf"))), t0)
    t_learn = time.time()
    model.learn(total_timesteps=int(p["total_frames"]), callback=log)
    learn_s = time.time() - t_learn
    frames = int(model.num_timesteps)
    returns = [float(e["r"]) for e in model.ep_info_buffer]
    import sb3_contrib
    import stable_baselines3

    out = {
        "frames": frames,
        "wall_seconds": round(time.time() - t0, 3),
        "learn_seconds": round(learn_s, 3),
        "fps": round(frames / learn_s, 1),
        "mean_return_last_100": round(float(np.mean(returns)), 3) if returns else None,
        "frames_to_threshold": log.hit_frames,
        "seconds_to_threshold": round(log.hit_seconds, 3) if log.hit_seconds else None,
        "curve": log.curve,
        "versions": {
            "sb3_contrib": sb3_contrib.__version__,
            "stable_baselines3": stable_baselines3.__version__,
            "torch": torch.__version__,
            "gymnasium": gymnasium.__version__,
        },
    }
    env.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
