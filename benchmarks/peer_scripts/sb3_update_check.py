"""hpcrl's PPO update against Stable-Baselines3's on the same weights and the same rollout; prints one JSON line.

    python -m benchmarks.peers sb3     # once: the SB3 peer venv
    PYTHONPATH=. benchmarks/.peers/sb3/bin/python benchmarks/peer_scripts/sb3_update_check.py [--seeds 1,2,3]

Runs inside the SB3 peer venv with hpcrl imported from the checkout (PYTHONPATH; only torch and numpy
parts of hpcrl are used). Per seed: SB3 builds its PPO on CartPole-v1 (the settings of
benchmarks/configs/cartpole_ppo.yaml) and collects one rollout of 8 envs x 128 steps; hpcrl's
actor-critic-separate policy gets SB3's initial weights; then

1. ``one_update``: one update on the whole rollout as a single minibatch (SB3 ``train()`` with one epoch,
   batch 1024; hpcrl's PPO minibatch update on SB3's advantages and returns): the largest difference of
   any weight afterwards (float32 rounding only: hpcrl normalises advantages by the population standard
   deviation, SB3 by the sample one, a factor of 0.9995 at 1024 rows);
2. ``kl``: 4 epochs x 4 minibatches of 256 on both sides (each with its own shuffling): SB3's logged
   ``train/approx_kl`` and hpcrl's all-update mean and last-epoch mean (SB3 resets its KL list every
   epoch, so it logs the last epoch's mean).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile

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

SB3_ORDER = [
    f"mlp_extractor.{net}.{i}.{w}" for net in ("policy_net", "value_net") for i in (0, 2) for w in ("weight", "bias")
] + ["action_net.weight", "action_net.bias", "value_net.weight", "value_net.bias"]


def _pair(seed: int, batch_size: int, epochs: int) -> tuple[PPO, object, list[torch.Tensor]]:
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=128,
        batch_size=batch_size,
        n_epochs=epochs,
        learning_rate=1e-3,
        gamma=0.98,
        gae_lambda=0.8,
        vf_coef=0.25,
        max_grad_norm=0.5,
        policy_kwargs={
            "net_arch": {"pi": [64, 64], "vf": [64, 64]},
            "activation_fn": torch.nn.Tanh,
            "optimizer_kwargs": {"eps": 1e-5},
        },
        seed=seed,
        device="cpu",
    )
    policy = make(
        "actor-critic-separate", obs_dim=4, action_dim=2, hidden_dim=64, num_dense_layers=2, activation="tanh"
    )
    params = list(policy.parameters())
    sb = dict(model.policy.named_parameters())
    with torch.no_grad():
        for p, name in zip(params, SB3_ORDER):
            p.copy_(sb[name])
    _, callback = model._setup_learn(1024, callback=None)
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=128)
    return model, policy, params


def _rows(model: PPO, idx: torch.Tensor | None = None) -> tuple[SampleBatch, dict[str, torch.Tensor | None]]:
    rb = model.rollout_buffer
    cols = {
        "obs": torch.as_tensor(rb.observations.reshape(-1, 4)),
        "act": torch.as_tensor(rb.actions.reshape(-1)).long(),
        "adv": torch.as_tensor(rb.advantages.reshape(-1)),
        "ret": torch.as_tensor(rb.returns.reshape(-1)),
        "val": torch.as_tensor(rb.values.reshape(-1)),
        "lp": torch.as_tensor(rb.log_probs.reshape(-1)),
    }
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


def check(seed: int) -> dict[str, float]:
    """Both checks for one seed."""
    model, policy, params = _pair(seed, batch_size=1024, epochs=1)
    trainer = PPOTrainer(policy, lr=1e-3, clip=0.2, value_coef=0.5, adam_eps=1e-5, max_grad_norm=0.5)
    trainer._update(*_rows(model), 1, 0.2, 0.0)
    model.train()
    sb = dict(model.policy.named_parameters())
    one = max(float((p - sb[n]).abs().max()) for p, n in zip(params, SB3_ORDER))

    model, policy, params = _pair(seed, batch_size=256, epochs=4)
    trainer = PPOTrainer(policy, lr=1e-3, clip=0.2, value_coef=0.5, adam_eps=1e-5, max_grad_norm=0.5)
    gen = torch.Generator()
    gen.manual_seed(seed)
    kls = []
    for _ in range(4):
        for idx in torch.randperm(1024, generator=gen).tensor_split(4):
            out = trainer._update(*_rows(model, idx), 1, 0.2, 0.0)
            assert out is not None
            names, values = out
            kls.append(float(values[names.index("approx_kl")]))
    log_dir = tempfile.mkdtemp(prefix="sb3-update-check-")
    model.set_logger(configure(log_dir, ["csv"]))
    model.train()
    model.logger.dump(0)
    with open(f"{log_dir}/progress.csv") as f:
        row = list(csv.DictReader(f))[-1]
    return {
        "seed": seed,
        "one_update_max_weight_difference": one,
        "sb3_approx_kl": float(row["train/approx_kl"]),
        "hpcrl_approx_kl": float(np.mean(kls)),
        "hpcrl_approx_kl_last_epoch": float(np.mean(kls[-4:])),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3")
    seeds = [int(s) for s in ap.parse_args().seeds.split(",")]
    torch.set_num_threads(1)
    print(json.dumps({"checks": [check(s) for s in seeds]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
