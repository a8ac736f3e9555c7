"""Stable-Baselines3 PPO on an Atari game with the standard Atari settings; prints one JSON line.

    benchmarks/.peers/sb3_atari/bin/python benchmarks/peer_scripts/sb3_atari_ppo.py --params '{"game": "Pong", ...}'

Runs inside benchmarks/.peers/sb3_atari (stable-baselines3, ale-py, opencv) and imports nothing from hpcrl.
The env is ``ALE/<game>-v5`` with ``frameskip=1`` wrapped by SB3's ``AtariWrapper`` (no-op starts,
max-and-skip 4 frames, episodic life, fire on reset, 84 x 84 grayscale, reward clipping) in a ``DummyVecEnv``,
then ``VecFrameStack(4)``: the rl-zoo Atari setup. ``--params`` keys: game, n_envs, n_steps, batch_size,
n_epochs, learning_rate, clip_range, ent_coef, vf_coef, max_grad_norm, gamma, gae_lambda,
repeat_action_probability, noop_max, seed, total_frames (agent steps). Policy: ``CnnPolicy`` (Nature CNN,
512 features, shared by the actor and critic heads).

Output: {"frames", "wall_seconds", "learn_seconds", "cpu_seconds", "import_seconds", "fps",
"first_update_epoch", "versions"}; fps = frames / learn_seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

T_START = time.time()

import ale_py  # noqa: E402
import gymnasium  # noqa: E402
import stable_baselines3  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_atari_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack  # noqa: E402


class FirstUpdate(BaseCallback):
    """Notes the time the second rollout starts, i.e. right after the first PPO update finished."""

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
    ap.add_argument("--params", required=True, help="JSON object (see the module docstring)")
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    torch.set_num_threads(1)
    gymnasium.register_envs(ale_py)
    t0, c0 = time.time(), time.process_time()
    env = make_atari_env(
        f"ALE/{p['game']}-v5",
        n_envs=int(p["n_envs"]),
        seed=int(p["seed"]),
        vec_env_cls=DummyVecEnv,
        env_kwargs={
            "frameskip": 1,
            "repeat_action_probability": float(p.get("repeat_action_probability", 0.25)),
            "disable_env_checker": True,
        },
        wrapper_kwargs={"noop_max": int(p.get("noop_max", 30)), "frame_skip": 4, "screen_size": 84},
    )
    env = VecFrameStack(env, n_stack=4)
    model = PPO(
        "CnnPolicy",
        env,
        learning_rate=float(p["learning_rate"]),
        n_steps=int(p["n_steps"]),
        batch_size=int(p["batch_size"]),
        n_epochs=int(p["n_epochs"]),
        gamma=float(p.get("gamma", 0.99)),
        gae_lambda=float(p.get("gae_lambda", 0.95)),
        clip_range=float(p["clip_range"]),
        ent_coef=float(p["ent_coef"]),
        vf_coef=float(p["vf_coef"]),
        max_grad_norm=float(p["max_grad_norm"]),
        seed=int(p["seed"]),
        device="cpu",
        verbose=0,
    )
    cb = FirstUpdate()
    t_learn = time.time()
    model.learn(total_timesteps=int(p["total_frames"]), callback=cb)
    learn_s = time.time() - t_learn
    wall, cpu = time.time() - t0, time.process_time() - c0
    frames = int(model.num_timesteps)
    out = {
        "frames": frames,
        "wall_seconds": round(wall, 3),
        "learn_seconds": round(learn_s, 3),
        "cpu_seconds": round(cpu, 3),
        "import_seconds": round(t0 - T_START, 3),
        "fps": round(frames / learn_s, 2),
        "first_update_epoch": cb.first_update,
        "versions": {
            "stable_baselines3": stable_baselines3.__version__,
            "ale_py": ale_py.__version__,
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    env.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
