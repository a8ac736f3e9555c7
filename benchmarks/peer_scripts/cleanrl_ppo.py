"""A CleanRL-style single-file PPO (discrete actions, MLP), written for hpcrl's benchmarks; prints one JSON line.

    benchmarks/.peers/cleanrl/bin/python benchmarks/peer_scripts/cleanrl_ppo.py --params '{"env_id": ...}'

Runs inside benchmarks/.peers/cleanrl (torch + gymnasium only) and imports nothing from hpcrl. It follows
CleanRL's ``ppo.py`` recipe (one file, everything visible): a separate actor and critic MLP with orthogonal
init, fixed-size rollout storage of ``n_steps x n_envs`` tensors, GAE, ``n_epochs`` passes over shuffled
minibatches of ``batch_size`` rows, clipped surrogate + value loss - entropy bonus, global grad-norm clip,
Adam(eps) with optional linear learning-rate decay. The envs are stepped in a plain Python loop and reset
on the step that ends an episode (like SB3's ``DummyVecEnv``); a truncated episode is bootstrapped with the
critic's value of its final observation, as SB3 and hpcrl do.

``--params`` takes the same JSON keys as sb3_ppo.py (env_id, n_envs, n_steps, batch_size, n_epochs,
learning_rate, lr_schedule, gamma, gae_lambda, clip_range, ent_coef, vf_coef, max_grad_norm,
normalize_advantage, adam_eps, net_arch, activation, seed, total_frames, threshold, record_curve). ``vf_coef``
multiplies ``mean((V - R)^2)`` (SB3's convention). Settings this script does not implement (observation or
reward normalisation, ``ortho_init: false``, a log-std) are refused, naming the key, rather than ignored.
The learning rate follows CleanRL's schedule: ``lr * (1 - update / updates)`` before each rollout.

Output: {"frames", "wall_seconds", "learn_seconds", "cpu_seconds", "import_seconds", "fps", "episodes",
"mean_return_last_100", "frames_to_threshold", "seconds_to_threshold", "first_update_epoch", "versions"},
and with ``record_curve`` every episode's end frame, return and seconds as "curve"; ``first_update_epoch``
is ``time.time()`` when the first PPO update finished (start-up benchmark).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from typing import Any

T_START = time.time()

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def orthogonal(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain``, zero bias (CleanRL's ``layer_init``)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class Agent(nn.Module):
    """Separate actor and critic MLPs."""

    def __init__(self, obs_dim: int, n_actions: int, arch: list[int], act: type[nn.Module]) -> None:
        super().__init__()

        def torso() -> list[nn.Module]:
            layers: list[nn.Module] = []
            width = obs_dim
            for h in arch:
                layers += [orthogonal(nn.Linear(width, h), 2**0.5), act()]
                width = h
            return layers

        self.critic = nn.Sequential(*torso(), orthogonal(nn.Linear(arch[-1], 1), 1.0))
        self.actor = nn.Sequential(*torso(), orthogonal(nn.Linear(arch[-1], n_actions), 0.01))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """V(obs), shape (B,)."""
        return self.critic(obs).squeeze(-1)

    def act_and_value(
        self, obs: torch.Tensor, action: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or score) actions: (action, log-prob, entropy, value)."""
        dist = torch.distributions.Categorical(logits=self.actor(obs))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.value(obs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", required=True, help="JSON object of hyperparameters (see the module docstring)")
    p: dict[str, Any] = json.loads(ap.parse_args().params)
    implemented = {"normalize_obs": False, "normalize_reward": False, "ortho_init": True}
    for key, supported in implemented.items():
        if key in p and p[key] != supported:
            raise SystemExit(f"cleanrl_ppo.py: {key}={p[key]!r} is not implemented here (only {supported!r})")
    if "log_std_init" in p:
        raise SystemExit("cleanrl_ppo.py: log_std_init: this script has discrete actions only")
    torch.set_num_threads(1)
    t0, c0 = time.time(), time.process_time()

    n_envs, n_steps = int(p["n_envs"]), int(p["n_steps"])
    rows, mb = n_envs * n_steps, int(p["batch_size"])
    total = int(p["total_frames"])
    updates = max(1, -(-total // rows))
    gamma, lam = float(p["gamma"]), float(p["gae_lambda"])
    clip, ent_coef, vf_coef = float(p["clip_range"]), float(p["ent_coef"]), float(p["vf_coef"])
    lr0, linear = float(p["learning_rate"]), p.get("lr_schedule", "constant") == "linear"
    threshold = float(p.get("threshold", float("inf")))
    seed = int(p["seed"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    envs = [gym.make(p["env_id"], disable_env_checker=True) for _ in range(n_envs)]
    obs_dim = int(np.prod(envs[0].observation_space.shape))
    n_actions = int(envs[0].action_space.n)
    act = {"tanh": nn.Tanh, "relu": nn.ReLU}[p.get("activation", "tanh")]
    agent = Agent(obs_dim, n_actions, [int(h) for h in p["net_arch"]], act)
    opt = torch.optim.Adam(agent.parameters(), lr=lr0, eps=float(p.get("adam_eps", 1e-5)))

    obs_buf = torch.zeros((n_steps, n_envs, obs_dim))
    act_buf = torch.zeros((n_steps, n_envs), dtype=torch.long)
    logp_buf = torch.zeros((n_steps, n_envs))
    rew_buf = torch.zeros((n_steps, n_envs))
    done_buf = torch.zeros((n_steps, n_envs))
    val_buf = torch.zeros((n_steps, n_envs))

    obs_np = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    next_done = np.zeros(n_envs, np.float32)
    ep_ret, ep_len = np.zeros(n_envs), np.zeros(n_envs, np.int64)
    window: collections.deque[float] = collections.deque(maxlen=100)
    episodes, frames = 0, 0
    hit_frames: int | None = None
    hit_seconds: float | None = None
    first_update: float | None = None
    curve: dict[str, list[float]] = {"frames": [], "returns": [], "seconds": []}
    t_learn = time.time()

    for update in range(updates):
        if linear:
            opt.param_groups[0]["lr"] = lr0 * (1.0 - update / updates)
        # ---- rollout
        for t in range(n_steps):
            obs_t = torch.from_numpy(obs_np)
            obs_buf[t] = obs_t
            done_buf[t] = torch.from_numpy(next_done)
            with torch.no_grad():
                a, logp, _, v = agent.act_and_value(obs_t)
            act_buf[t], logp_buf[t], val_buf[t] = a, logp, v
            actions = a.numpy()
            rewards = np.zeros(n_envs, np.float32)
            for i, env in enumerate(envs):
                o, r, term, trunc, _ = env.step(int(actions[i]))
                rewards[i] = r
                ep_ret[i] += r
                ep_len[i] += 1
                if trunc and not term:  # bootstrap a time-limit cut with V(final obs)
                    with torch.no_grad():
                        rewards[i] += gamma * float(agent.value(torch.as_tensor(o, dtype=torch.float32)[None])[0])
                if term or trunc:
                    window.append(float(ep_ret[i]))
                    episodes += 1
                    if p.get("record_curve"):
                        curve["frames"].append(frames + (t + 1) * n_envs)
                        curve["returns"].append(float(ep_ret[i]))
                        curve["seconds"].append(round(time.time() - t0, 3))
                    ep_ret[i], ep_len[i] = 0.0, 0
                    o, _ = env.reset()
                    if hit_frames is None and len(window) == 100 and sum(window) / 100.0 >= threshold:
                        hit_frames, hit_seconds = frames + (t + 1) * n_envs, time.time() - t0
                obs_np[i] = o
                next_done[i] = float(term or trunc)
            rew_buf[t] = torch.from_numpy(rewards)
        frames += rows
        # ---- GAE
        with torch.no_grad():
            next_value = agent.value(torch.from_numpy(obs_np))
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(n_envs)
            for t in reversed(range(n_steps)):
                nonterminal = 1.0 - (torch.from_numpy(next_done) if t == n_steps - 1 else done_buf[t + 1])
                nv = next_value if t == n_steps - 1 else val_buf[t + 1]
                delta = rew_buf[t] + gamma * nv * nonterminal - val_buf[t]
                last = delta + gamma * lam * nonterminal * last
                adv[t] = last
            ret = adv + val_buf
        # ---- PPO update
        b_obs, b_act, b_logp = obs_buf.reshape(rows, obs_dim), act_buf.reshape(rows), logp_buf.reshape(rows)
        b_adv, b_ret = adv.reshape(rows), ret.reshape(rows)
        for _ in range(int(p["n_epochs"])):
            order = torch.from_numpy(rng.permutation(rows))
            for start in range(0, rows, mb):
                idx = order[start : start + mb]
                _, logp, entropy, v = agent.act_and_value(b_obs[idx], b_act[idx])
                ratio = (logp - b_logp[idx]).exp()
                a_mb = b_adv[idx]
                if p.get("normalize_advantage", True):
                    a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                pg_loss = torch.max(-a_mb * ratio, -a_mb * ratio.clamp(1 - clip, 1 + clip)).mean()
                v_loss = ((v - b_ret[idx]) ** 2).mean()
                loss = pg_loss + vf_coef * v_loss - ent_coef * entropy.mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), float(p["max_grad_norm"]))
                opt.step()
        if first_update is None:
            first_update = time.time()

    learn_s = time.time() - t_learn
    wall, cpu = time.time() - t0, time.process_time() - c0
    out = {
        "frames": frames,
        "wall_seconds": round(wall, 3),
        "learn_seconds": round(learn_s, 3),
        "cpu_seconds": round(cpu, 3),
        "import_seconds": round(t0 - T_START, 3),
        "fps": round(frames / learn_s, 1),
        "episodes": episodes,
        "mean_return_last_100": round(float(np.mean(window)), 3) if window else None,
        "frames_to_threshold": hit_frames,
        "seconds_to_threshold": round(hit_seconds, 3) if hit_seconds is not None else None,
        "first_update_epoch": first_update,
        "versions": {
            "torch": torch.__version__,
            "gymnasium": gym.__version__,
            "torch_threads": torch.get_num_threads(),
        },
    }
    if p.get("record_curve"):
        out["curve"] = curve
    for env in envs:
        env.close()
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
