"""Stable-Baselines3 start-up: time from process start to the end of the first PPO update; prints one JSON line.

    benchmarks/.peers/sb3/bin/python benchmarks/peer_scripts/sb3_startup.py --params '{"env_id": "CartPole-v1", ...}'

Runs inside benchmarks/.peers/sb3 and imports nothing from hpcrl. ``--params`` takes sb3_ppo.py's keys; the
run is two rollouts long (``2 x n_envs x n_steps`` frames) and the callback notes ``time.time()`` when the
second rollout starts, i.e. right after the first ``PPO.train()`` returned. The caller subtracts its own
launch time. Output: {"first_update_epoch", "import_seconds", "process_start_epoch"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

T_START = time.time()

import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402


class FirstUpdate(BaseCallback):
    """Notes the time the second rollout starts (the first update has just finished)."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts = 0
        self.first_update: float | None = None

    def _on_rollout_start(self) -> None:
        self.rollouts += 1
        if self.rollouts == 2 and self.first_update is None:
            self.first_update = time.time()

    def _on_step(self) -> bool:
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True)
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    torch.set_num_threads(1)
    t0 = time.time()
    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[p.get("activation", "tanh")]
    arch = [int(h) for h in p["net_arch"]]
    env = make_vec_env(
        p["env_id"],
        n_envs=int(p["n_envs"]),
        seed=int(p["seed"]),
        vec_env_cls=DummyVecEnv,
        env_kwargs={"disable_env_checker": True},
    )
    model = PPO(
        "MlpPolicy",
        env,
        learning_rate=float(p["learning_rate"]),
        n_steps=int(p["n_steps"]),
        batch_size=int(p["batch_size"]),
        n_epochs=int(p["n_epochs"]),
        gamma=float(p["gamma"]),
        gae_lambda=float(p["gae_lambda"]),
        clip_range=float(p["clip_range"]),
        ent_coef=float(p["ent_coef"]),
        vf_coef=float(p["vf_coef"]),
        max_grad_norm=float(p["max_grad_norm"]),
        policy_kwargs={"net_arch": {"pi": arch, "vf": arch}, "activation_fn": act},
        seed=int(p["seed"]),
        device="cpu",
        verbose=0,
    )
    cb = FirstUpdate()
    model.learn(total_timesteps=2 * int(p["n_envs"]) * int(p["n_steps"]), callback=cb)
    env.close()
    out = {
        "first_update_epoch": cb.first_update,
        "import_seconds": round(t0 - T_START, 3),
        "process_start_epoch": T_START,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
