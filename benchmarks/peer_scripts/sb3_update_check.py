"""hpcrl's PPO update against Stable-Baselines3's on the same weights and the same rollout; prints one JSON line.

    python -m benchmarks.peers sb3     # once: the SB3 peer venv
    PYTHONPATH=. benchmarks/.peers/sb3/bin/python benchmarks/peer_scripts/sb3_update_check.py \
        [--task cartpole|pendulum] [--seeds 1,2,3]

Runs inside the SB3 peer venv with hpcrl imported from the checkout (PYTHONPATH; only torch and numpy
parts of hpcrl are used). Per seed: SB3 builds its PPO with the task's parity settings
(``cartpole``: benchmarks/configs/cartpole_ppo.yaml, discrete actions; ``pendulum``:
benchmarks/configs/pendulum_ppo.yaml, a Gaussian policy with a state-independent log-std) and collects
one rollout; hpcrl's actor-critic-separate policy gets SB3's initial weights; then

1. ``one_update``: one update on the whole rollout as a single minibatch (SB3 ``train()`` with one epoch
   and one batch; hpcrl's PPO minibatch update on SB3's advantages and returns): the largest difference
   of any weight afterwards;
2. ``full_train``: SB3's whole ``train()`` of the task (all epochs and minibatches) against hpcrl's
   minibatch updates on the same rows in the same order (SB3's shuffles are replayed from its numpy seed):
   the largest difference of any weight afterwards. Besides float32 rounding, the one difference is the
   advantage normalisation: hpcrl divides by the population standard deviation, SB3 by the sample one
   (a factor sqrt((n - 1) / n): 0.998 at 256 rows, 0.992 at 64);
3. ``kl``: SB3's logged ``train/approx_kl`` of that ``train()`` and hpcrl's all-update mean and last-epoch
   mean (SB3 resets its KL list every epoch, so it logs the last epoch's mean).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure

from hpcrl.api.data import SampleBatch
from hpcrl.api.environment import Action
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import make
from hpcrl.trainers.ppo import PPOTrainer

NETS = [
    f"mlp_extractor.{net}.{i}.{w}" for net in ("policy_net", "value_net") for i in (0, 2) for w in ("weight", "bias")
]


@dataclass(frozen=True)
class Task:
    """One task's parity settings, as SB3 arguments and the matching hpcrl ones."""

    env_id: str
    n_envs: int
    n_steps: int
    batch_size: int
    epochs: int
    gamma: float
    gae_lambda: float
    vf_coef: float
    """SB3's vf_coef; hpcrl's value_coef is twice it (hpcrl's value loss carries a factor 0.5)."""
    continuous: bool

    @property
    def rows(self) -> int:
        return self.n_envs * self.n_steps


TASKS = {
    "cartpole": Task("CartPole-v1", 8, 128, 256, 4, 0.98, 0.8, 0.25, continuous=False),
    "pendulum": Task("Pendulum-v1", 4, 1024, 64, 10, 0.9, 0.95, 0.5, continuous=True),
}


def _pair(task: Task, seed: int, batch_size: int, epochs: int) -> tuple[PPO, Any, list[tuple[Any, str]]]:
    env = make_vec_env(task.env_id, n_envs=task.n_envs, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=task.n_steps,
        batch_size=batch_size,
        n_epochs=epochs,
        learning_rate=1e-3,
        gamma=task.gamma,
        gae_lambda=task.gae_lambda,
        ent_coef=0.0,
        vf_coef=task.vf_coef,
        max_grad_norm=0.5,
        policy_kwargs={
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.Tanh,
            "optimizer_kwargs": {"eps": 1e-5},
        },
        seed=seed,
        device="cpu",
    )
    obs_dim = int(np.prod(env.observation_space.shape))
    if task.continuous:
        policy = make(
            "actor-critic-separate",
            obs_dim=obs_dim,
            action_dim=int(env.action_space.shape[0]),
            continuous_action=True,
            init_log_std=0.0,
            hidden_dim=64,
            num_dense_layers=2,
            activation="tanh",
        )
        heads = ["log_std", "action_net.weight", "action_net.bias"]
    else:
        policy = make(
            "actor-critic-separate",
            obs_dim=obs_dim,
            action_dim=int(env.action_space.n),
            hidden_dim=64,
            num_dense_layers=2,
            activation="tanh",
        )
        heads = ["action_net.weight", "action_net.bias"]
    # hpcrl's parameter order: actor MLP, critic MLP, action head (log-std first), value head
    order = NETS + heads + ["value_net.weight", "value_net.bias"]
    params = list(policy.parameters())
    if len(params) != len(order):
        raise RuntimeError(f"hpcrl policy has {len(params)} parameters, SB3's mapping {len(order)}")
    sb = dict(model.policy.named_parameters())
    with torch.no_grad():
        for p, name in zip(params, order):
            if tuple(p.shape) != tuple(sb[name].shape):
                raise RuntimeError(f"shape of {name}: SB3 {tuple(sb[name].shape)}, hpcrl {tuple(p.shape)}")
            p.copy_(sb[name])
    _, callback = model._setup_learn(task.rows, callback=None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=task.n_steps)
    return model, policy, list(zip(params, order))


def _columns(task: Task, model: PPO) -> dict[str, torch.Tensor]:
    """The rollout's rows in the order SB3's ``RolloutBuffer.get`` indexes them (env-major)."""
    rb = model.rollout_buffer
    flat = {
        k: torch.as_tensor(rb.swap_and_flatten(getattr(rb, k).copy()))
        for k in ("observations", "actions", "advantages", "returns", "values", "log_probs")
    }
    act = flat["actions"].float() if task.continuous else flat["actions"].reshape(-1).long()
    return {
        "obs": flat["observations"].reshape(task.rows, -1).float(),
        "act": act,
        "adv": flat["advantages"].reshape(-1),
        "ret": flat["returns"].reshape(-1),
        "val": flat["values"].reshape(-1),
        "lp": flat["log_probs"].reshape(-1),
    }


def _rows(cols: dict[str, torch.Tensor], idx: Any = None) -> tuple[SampleBatch, dict[str, torch.Tensor | None]]:
    if idx is not None:
        cols = {k: v[idx] for k, v in cols.items()}
    sub = SampleBatch(obs=NamedArray(obs=cols["obs"][None]), action=Action(x=cols["act"][None]))
    mb = {
        "adv": cols["adv"][None],
        "old_lp": cols["lp"][None],
        "ret": cols["ret"][None, :, None],
        "v_old": cols["val"][None, :, None],
        "mask": None,
    }
    return sub, mb


def _trainer(task: Task, policy: Any) -> PPOTrainer:
    return PPOTrainer(policy, lr=1e-3, clip=0.2, value_coef=2 * task.vf_coef, adam_eps=1e-5, max_grad_norm=0.5)


def _max_diff(model: PPO, pairs: list[tuple[Any, str]]) -> float:
    sb = dict(model.policy.named_parameters())
    return max(float((p.detach() - sb[n].detach()).abs().max()) for p, n in pairs)


def check(task: Task, seed: int) -> dict[str, float]:
    """The three checks for one seed."""
    model, policy, pairs = _pair(task, seed, batch_size=task.rows, epochs=1)
    out = _trainer(task, policy)._update(*_rows(_columns(task, model)), 1, 0.2, 0.0)
    assert out is not None
    model.train()
    one = _max_diff(model, pairs)

    model, policy, pairs = _pair(task, seed, batch_size=task.batch_size, epochs=task.epochs)
    trainer = _trainer(task, policy)
    cols = _columns(task, model)
    rng_seed = 1000 + seed
    np.random.seed(rng_seed)  # RolloutBuffer.get draws one np.random.permutation per epoch
    perms = [np.random.permutation(task.rows) for _ in range(task.epochs)]
    kls = []
    for perm in perms:
        for start in range(0, task.rows, task.batch_size):
            idx = torch.as_tensor(perm[start : start + task.batch_size])
            out = trainer._update(*_rows(cols, idx), 1, 0.2, 0.0)
            assert out is not None
            names, values = out
            kls.append(float(values[names.index("approx_kl")]))
    log_dir = tempfile.mkdtemp(prefix="sb3-update-check-")
    model.set_logger(configure(log_dir, ["csv"]))
    np.random.seed(rng_seed)
    model.train()
    model.logger.dump(0)
    with open(f"{log_dir}/progress.csv") as f:
        row = list(csv.DictReader(f))[-1]
    per_epoch = task.rows // task.batch_size
    return {
        "seed": seed,
        "one_update_max_weight_difference": one,
        "full_train_max_weight_difference": _max_diff(model, pairs),
        "sb3_approx_kl": float(row["train/approx_kl"]),
        "hpcrl_approx_kl": float(np.mean(kls)),
        "hpcrl_approx_kl_last_epoch": float(np.mean(kls[-per_epoch:])),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="cartpole", choices=sorted(TASKS))
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    task = TASKS[args.task]
    print(json.dumps({"task": args.task, "checks": [check(task, s) for s in seeds]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
