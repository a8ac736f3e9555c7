"""Sample Factory 2 (APPO without V-trace = async PPO) on a gymnasium env; prints one JSON line.

    benchmarks/.peers/sample_factory/bin/python benchmarks/peer_scripts/sf_ppo.py --params '{...}'

Runs inside benchmarks/.peers/sample_factory (numpy<2, gymnasium 0.29) and imports nothing from hpcrl.
``--params`` takes sb3_ppo.py's keys (env_id, n_steps, batch_size, n_epochs, learning_rate, gamma,
gae_lambda, clip_range, ent_coef, vf_coef, max_grad_norm, adam_eps, net_arch, activation, seed,
total_frames) plus ``num_workers`` (rollout worker processes), ``envs_per_worker``, ``async_rl``
(default true), ``serial_mode`` (default false) and ``train_dir``. ``n_envs`` is ignored: the env count
is ``num_workers x envs_per_worker``. One PPO update = ``batch_size x n_minibatches`` rows, where
``n_minibatches = n_envs * n_steps / batch_size`` is passed as ``minibatches`` (default 4).

Mapped onto SF's options: ``rollout=n_steps``, ``batch_size``, ``num_batches_per_epoch=minibatches``,
``num_epochs=n_epochs``, ``with_vtrace=False``, MLP encoder ``net_arch`` with ``nonlinearity=activation``,
separate actor/critic weights, no input/return normalisation, no value clipping (SB3/hpcrl have none),
``value_bootstrap`` on time-limit truncation (as SB3/hpcrl), ``value_loss_coeff=vf_coef`` (SF's value loss
is ``mean((V - R)^2)``, SB3's convention). SF has no linear learning-rate decay: the rate stays constant.

Output: {"frames", "fps", "wall_seconds", "learn_seconds", "import_seconds", "train_steps",
"trained_fps", "mean_return_last_100", "first_update_epoch", "versions"}; ``fps`` is SF's own number
(env frames over its main loop), ``first_update_epoch`` the ``time.time()`` of the first finished
training iteration.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib.metadata import version
from typing import Any

T_START = time.time()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sample_factory.algo.runners.runner import AlgoObserver, Runner  # noqa: E402
from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args  # noqa: E402
from sample_factory.envs.env_utils import register_env  # noqa: E402
from sample_factory.train import make_runner  # noqa: E402


class StepClock(AlgoObserver):
    """Counts training iterations and notes when the first one finished."""

    def __init__(self) -> None:
        self.steps = 0
        self.first: float | None = None

    def on_training_step(self, runner: Runner, training_iteration_since_resume: int) -> None:
        """Called by the runner after every learner iteration."""
        self.steps += 1
        if self.first is None:
            self.first = time.time()


def make_env(full_env_name: str, cfg: Any = None, env_config: Any = None, render_mode: str | None = None) -> Any:
    """SF env factory: the plain gymnasium env, without the passive checker."""
    return gym.make(full_env_name, render_mode=render_mode, disable_env_checker=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True, help="JSON object (see the module docstring)")
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    torch.set_num_threads(1)
    t0 = time.time()
    workers, per_worker = int(p["num_workers"]), int(p["envs_per_worker"])
    minibatches = int(p.get("minibatches", 4))
    register_env(p["env_id"], make_env)
    argv = [
        f"--env={p['env_id']}",
        "--algo=APPO",
        f"--experiment=bench-{int(time.time() * 1000)}",
        f"--train_dir={p['train_dir']}",
        "--device=cpu",
        f"--seed={int(p['seed'])}",
        f"--async_rl={bool(p.get('async_rl', True))}",
        f"--serial_mode={bool(p.get('serial_mode', False))}",
        f"--num_workers={workers}",
        f"--num_envs_per_worker={per_worker}",
        f"--worker_num_splits={2 if per_worker % 2 == 0 else 1}",
        "--policy_workers_per_policy=1",
        f"--rollout={int(p['n_steps'])}",
        "--recurrence=1",
        "--use_rnn=False",
        f"--batch_size={int(p['batch_size'])}",
        f"--num_batches_per_epoch={minibatches}",
        f"--num_epochs={int(p['n_epochs'])}",
        "--with_vtrace=False",
        f"--gamma={float(p['gamma'])}",
        f"--gae_lambda={float(p['gae_lambda'])}",
        f"--ppo_clip_ratio={float(p['clip_range'])}",
        "--ppo_clip_value=1000000.0",
        f"--value_loss_coeff={float(p['vf_coef'])}",
        f"--exploration_loss_coeff={float(p['ent_coef'])}",
        f"--max_grad_norm={float(p['max_grad_norm'])}",
        f"--learning_rate={float(p['learning_rate'])}",
        f"--adam_eps={float(p.get('adam_eps', 1e-5))}",
        "--lr_schedule=constant",
        "--normalize_input=False",
        "--normalize_returns=False",
        "--reward_scale=1.0",
        "--value_bootstrap=True",
        f"--encoder_mlp_layers={' '.join(str(int(h)) for h in p['net_arch'])}",
        f"--nonlinearity={p.get('activation', 'tanh')}",
        "--actor_critic_share_weights=False",
        "--decorrelate_experience_max_seconds=0",
        f"--train_for_env_steps={int(p['total_frames'])}",
        "--save_every_sec=100000",
        "--save_best_every_sec=100000",
        "--experiment_summaries_interval=100000",
        "--stats_avg=100",
        "--with_wandb=False",
    ]
    argv = _expand_lists(argv)  # encoder_mlp_layers takes a list
    parser, _ = parse_sf_args(argv=argv)
    cfg = parse_full_cfg(parser, argv)
    cfg, runner = make_runner(cfg)
    clock = StepClock()
    runner.register_observer(clock)
    status = runner.init()
    t_learn = time.time()
    if status == 0:
        status = runner.run()
    learn_s = time.time() - t_learn
    wall = time.time() - t0
    if status != 0:
        print(json.dumps({"error": f"sample factory exited with status {status}"}), flush=True)
        return 1
    frames = int(sum(runner.env_steps.values()))
    rewards = runner.policy_avg_stats.get("reward", [[]])[0]
    main_loop = float(runner.timing.get("main_loop", learn_s) or learn_s)
    rows = int(p["batch_size"]) * minibatches
    out = {
        "frames": frames,
        "fps": round(int(runner.total_env_steps_since_resume or 0) / main_loop, 1),
        "wall_seconds": round(wall, 3),
        "learn_seconds": round(learn_s, 3),
        "import_seconds": round(t0 - T_START, 3),
        "train_steps": clock.steps,
        "trained_fps": round(clock.steps * rows / learn_s, 1),
        "mean_return_last_100": round(float(np.mean(list(rewards)[-100:])), 3) if len(rewards) else None,
        "first_update_epoch": clock.first,
        "versions": {"sample_factory": version("sample-factory"), "torch": torch.__version__, "gym": gym.__version__},
    }
    print(json.dumps(out), flush=True)
    return 0


def _expand_lists(argv: list[str]) -> list[str]:
    """``--encoder_mlp_layers=64 64`` -> ``--encoder_mlp_layers 64 64`` (argparse nargs='*')."""
    out: list[str] = []
    for arg in argv:
        key, _, value = arg.partition("=")
        if " " in value:
            out += [key, *value.split()]
        else:
            out.append(arg)
    return out


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
