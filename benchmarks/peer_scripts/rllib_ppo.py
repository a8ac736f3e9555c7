"""RLlib (Ray) PPO on a gymnasium env, new API stack; prints one JSON line (runs inside benchmarks/.peers/rllib).

    benchmarks/.peers/rllib/bin/python benchmarks/peer_scripts/rllib_ppo.py --params '{...}'

Imports nothing from hpcrl. ``--params`` takes sb3_ppo.py's keys (env_id, n_envs, n_steps, batch_size,
n_epochs, learning_rate, gamma, gae_lambda, clip_range, ent_coef, vf_coef, max_grad_norm, net_arch,
activation, seed, total_frames) plus ``num_env_runners`` (0: sample in the driver process, default) and
``num_cpus`` for ``ray.init`` (default: the machine's cores, at least one per env runner plus one). One PPO
update = ``n_envs x n_steps`` rows (``train_batch_size_per_learner``; with several runners each one samples
an ``auto`` fragment length), ``n_epochs`` passes over minibatches of ``batch_size``; separate
actor/critic MLPs (``vf_share_layers=False``), no KL term, no value clipping, grad-norm clip
``max_grad_norm``, ``vf_loss_coeff=vf_coef`` (RLlib's value loss is ``mean((V - R)^2)``, SB3's convention).
RLlib has no linear learning-rate decay here: the rate stays constant.

Output: {"frames", "fps", "wall_seconds", "learn_seconds", "import_seconds", "init_seconds", "train_steps",
"mean_return_last_100", "first_update_epoch", "versions"}; ``fps`` is frames over the ``train()`` loop,
``init_seconds`` covers ``ray.init`` and building the algorithm, ``first_update_epoch`` is the
``time.time()`` when the first ``train()`` call returned.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

T_START = time.time()

import ray  # noqa: E402
import torch  # noqa: E402
from ray.rllib.algorithms.ppo import PPOConfig  # noqa: E402
from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True, help="JSON object (see the module docstring)")
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    torch.set_num_threads(1)
    t0 = time.time()
    runners = int(p.get("num_env_runners", 0))
    n_envs, n_steps = int(p["n_envs"]), int(p["n_steps"])
    ray.init(
        # logical CPUs: one per env runner plus the driver/learner, oversubscribed like the MPI runs
        num_cpus=int(p.get("num_cpus", max(os.cpu_count() or 1, runners + 1))),
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
        configure_logging=True,
    )
    config = (
        PPOConfig()
        .environment(p["env_id"], disable_env_checking=True)
        .framework("torch")
        .env_runners(
            num_env_runners=runners,
            num_envs_per_env_runner=n_envs,
            rollout_fragment_length=n_steps if runners <= 1 else "auto",
            num_cpus_per_env_runner=1,
        )
        .learners(num_learners=0)
        .training(
            train_batch_size_per_learner=n_envs * n_steps,
            minibatch_size=int(p["batch_size"]),
            num_epochs=int(p["n_epochs"]),
            lr=float(p["learning_rate"]),
            gamma=float(p["gamma"]),
            lambda_=float(p["gae_lambda"]),
            clip_param=float(p["clip_range"]),
            vf_clip_param=1e6,
            vf_loss_coeff=float(p["vf_coef"]),
            entropy_coeff=float(p["ent_coef"]),
            grad_clip=float(p["max_grad_norm"]),
            grad_clip_by="global_norm",
            use_kl_loss=False,
        )
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=[int(h) for h in p["net_arch"]],
                fcnet_activation=p.get("activation", "tanh"),
                vf_share_layers=False,
            )
        )
        .debugging(seed=int(p["seed"]), log_level="WARN")
        .reporting(metrics_num_episodes_for_smoothing=100)
    )
    algo = config.build_algo()
    init_s = time.time() - t0
    total = int(p["total_frames"])
    frames, steps = 0, 0
    first: float | None = None
    ret: float | None = None
    t_learn = time.time()
    while frames < total:
        result = algo.train()
        steps += 1
        if first is None:
            first = time.time()
        frames = int(_get(result, "env_runners", "num_env_steps_sampled_lifetime") or frames + n_envs * n_steps)
        r = _get(result, "env_runners", "episode_return_mean")
        ret = float(r) if r is not None else ret
    learn_s = time.time() - t_learn
    wall = time.time() - t0
    out = {
        "frames": frames,
        "fps": round(frames / learn_s, 1),
        "wall_seconds": round(wall, 3),
        "learn_seconds": round(learn_s, 3),
        "import_seconds": round(t0 - T_START, 3),
        "init_seconds": round(init_s, 3),
        "train_steps": steps,
        "mean_return_last_100": round(ret, 3) if ret is not None else None,
        "first_update_epoch": first,
        "versions": {"ray": ray.__version__, "torch": torch.__version__},
    }
    algo.stop()
    ray.shutdown()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
