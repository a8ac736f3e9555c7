"""Policy and PPO-update micro-benchmark: hpcrl vs the same model written in plain torch (what SB3/CleanRL do).

    python -m benchmarks.bench_policy                   # about 1 min on 2 cores
    python -m benchmarks.bench_policy --quick           # smoke, about 15 s
    python -m benchmarks.bench_policy --compare benchmarks/results/policy/DATE-KIND.json   # vs an earlier result

The model is the CartPole benchmark's (benchmarks/configs/cartpole_ppo.yaml): separate actor and
critic MLPs of 2 x 64 tanh, 4 observations, 2 actions, one torch thread. Measured, in process CPU
microseconds (median over ``--repeats`` interleaved runs, so other load on a shared machine
distorts the numbers less):

1. ``rollout B=8`` / ``rollout B=256``: one ``policy.rollout`` call on a numpy request (obs,
   is_evaluation, on_reset) returning numpy action, log-prob and value. Plain torch: ``torch.as_tensor``,
   the two ``nn.Sequential`` MLPs and heads under ``no_grad``, ``Categorical(logits).sample()``,
   ``log_prob``, ``.numpy()`` (SB3's ``ActorCriticPolicy.forward`` / CleanRL's ``get_action_and_value``).
2. ``minibatch 256``: one PPO minibatch update: forward of 256 rows, clipped surrogate + value loss
   + entropy, ``backward``, grad-norm clip, Adam step, loss statistics. hpcrl: one
   ``PPOTrainer.step`` on a ``(129, 8)`` SampleBatch (4 epochs x 4 minibatches of 256 rows, GAE
   included) divided by 16. Plain torch: CleanRL's update loop (numpy GAE, 16 minibatches, per-minibatch
   ``.item()`` statistics like SB3), divided by 16.

The ratio is plain / hpcrl (> 1: hpcrl is faster); context rows (no target). ``--compare FILE`` prints
hpcrl's numbers next to those of an earlier result file of this benchmark (e.g. one saved before a change).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import BenchResult, Context, Row, bench_main
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, make
from hpcrl.api.trainer import SampleBatch
from hpcrl.trainers.ppo import PPOTrainer

__all__ = ["B", "OBS_DIM", "T", "PlainActorCritic", "main", "plain_update", "run"]

OBS_DIM, N_ACTIONS, HIDDEN = 4, 2, 64
T, B, EPOCHS, MINIBATCHES = 128, 8, 4, 4
CLOCK: Callable[[], float] = time.process_time


# ====================================================================== plain torch (SB3 / CleanRL style)
class PlainActorCritic(nn.Module):
    """SB3's MlpPolicy layout: ``mlp_pi`` + ``action_net``, ``mlp_vf`` + ``value_net`` (orthogonal init)."""

    def __init__(self) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(nn.Linear(OBS_DIM, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh())

        self.mlp_pi, self.mlp_vf = mlp(), mlp()
        self.action_net = nn.Linear(HIDDEN, N_ACTIONS)
        self.value_net = nn.Linear(HIDDEN, 1)
        gains = {id(self.action_net): 0.01, id(self.value_net): 1.0}
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight, gains.get(id(m), 2**0.5))
                nn.init.zeros_(m.bias)

    def act(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sample actions; numpy in, numpy out (SB3's ``collect_rollouts`` inner step)."""
        with torch.no_grad():
            x = torch.as_tensor(obs)
            dist = torch.distributions.Categorical(logits=self.action_net(self.mlp_pi(x)))
            value = self.value_net(self.mlp_vf(x))
            action = dist.sample()
            log_prob = dist.log_prob(action)
        return action.numpy(), log_prob.numpy(), value.numpy()

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-prob, entropy and value of a minibatch (SB3's ``evaluate_actions``)."""
        dist = torch.distributions.Categorical(logits=self.action_net(self.mlp_pi(obs)))
        return dist.log_prob(action), dist.entropy(), self.value_net(self.mlp_vf(obs)).squeeze(-1)


def plain_update(model: PlainActorCritic, opt: torch.optim.Optimizer, data: dict[str, np.ndarray]) -> None:
    """CleanRL's PPO update on ``(T, B)`` rollout data: numpy GAE, 4 epochs x 4 minibatches."""
    gamma, lam, clip = 0.98, 0.8, 0.2
    rewards, values, dones = data["reward"], data["value"], data["done"]
    adv = np.zeros((T, B), np.float32)
    last = np.zeros(B, np.float32)
    for t in reversed(range(T)):
        nonterminal = 1.0 - dones[t + 1]
        delta = rewards[t + 1] + gamma * values[t + 1] * nonterminal - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    ret = adv + values[:T]
    obs = torch.from_numpy(data["obs"][:T].reshape(T * B, OBS_DIM))
    act = torch.from_numpy(data["action"][:T].reshape(T * B))
    old_lp = torch.from_numpy(data["log_prob"][:T].reshape(T * B))
    b_adv, b_ret = torch.from_numpy(adv.reshape(-1)), torch.from_numpy(ret.reshape(-1))
    gen = torch.Generator().manual_seed(0)
    stats: list[float] = []
    for _ in range(EPOCHS):
        for idx in torch.randperm(T * B, generator=gen).tensor_split(MINIBATCHES):
            new_lp, entropy, new_v = model.evaluate(obs[idx], act[idx])
            logratio = new_lp - old_lp[idx]
            ratio = logratio.exp()
            a = b_adv[idx]
            a = (a - a.mean()) / (a.std() + 1e-8)
            pg_loss = torch.max(-a * ratio, -a * ratio.clamp(1 - clip, 1 + clip)).mean()
            v_loss = 0.5 * ((new_v - b_ret[idx]) ** 2).mean()
            ent = entropy.mean()
            loss = pg_loss + 0.5 * v_loss
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            opt.step()
            with torch.no_grad():
                stats += [pg_loss.item(), v_loss.item(), ent.item()]
                stats.append(((ratio - 1) - logratio).mean().item())
                stats.append(((ratio - 1).abs() > clip).float().mean().item())


# ====================================================================== data
def rollout_request(b: int, rng: np.random.Generator) -> RolloutRequest:
    """A request like the env ring's: float32 obs, is_evaluation and on_reset columns."""
    return RolloutRequest(
        obs=NamedArray(obs=rng.standard_normal((b, OBS_DIM)).astype(np.float32)),
        is_evaluation=np.zeros((b, 1), bool),
        on_reset=np.zeros((b, 1), bool),
    )


def sample_batch(policy: Any, rng: np.random.Generator) -> SampleBatch:
    """A ``(T + 1, B)`` SampleBatch rolled by ``policy`` on random obs, with a few episode ends."""
    rows = []
    for step in range(T + 1):
        req = rollout_request(B, rng)
        res = policy.rollout(req)
        done = (rng.random((B, 1)) < 0.02) & (step > 0)
        rows.append(
            SampleBatch(
                obs=req.obs,
                action=res.action,
                analyzed_result=res.analyzed_result,
                reward=np.ones((B, 1), np.float32),
                done=done,
                truncated=np.zeros((B, 1), bool),
                policy_version=np.zeros((B, 1), np.int64),
                on_reset=np.zeros((B, 1), bool),
            )
        )
    return stack(rows)


def plain_data(batch: Any) -> dict[str, np.ndarray]:
    """The same rollout as flat numpy arrays (CleanRL's storage)."""
    return {
        "obs": np.ascontiguousarray(batch.obs.obs),
        "action": np.ascontiguousarray(batch.action.x),
        "log_prob": np.ascontiguousarray(batch.analyzed_result.log_prob[..., 0]),
        "value": np.ascontiguousarray(batch.analyzed_result.value[..., 0]),
        "reward": np.ascontiguousarray(batch.reward[..., 0]),
        "done": batch.done[..., 0].astype(np.float32),
    }


# ====================================================================== timing
def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    """CPU microseconds per call of ``fn`` over ``calls`` calls (after one warm-up call)."""
    fn()
    t = CLOCK()
    for _ in range(calls):
        fn()
    return 1e6 * (CLOCK() - t) / calls


def measure(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of ``repeats`` interleaved runs of each case."""
    runs: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            runs[name].append(fn())
    return {k: statistics.median(v) for k, v in runs.items()}


def _rollout_pair(
    policy: Any, plain: PlainActorCritic, req: RolloutRequest, obs: np.ndarray, calls: int
) -> tuple[Callable[[], float], Callable[[], float]]:
    def run_hpcrl() -> float:
        return per_call_us(lambda: policy.rollout(req), calls)

    def run_plain() -> float:
        return per_call_us(lambda: plain.act(obs), calls)

    return run_hpcrl, run_plain


def build_cases(quick: bool) -> dict[str, tuple[Callable[[], float], Callable[[], float]]]:
    """Each benchmark: ``(hpcrl runner, plain-torch runner)``, each returning CPU us per unit."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    policy = make("actor-critic-separate", obs_dim=OBS_DIM, action_dim=N_ACTIONS, hidden_dim=HIDDEN, seed=1)
    plain = PlainActorCritic()
    n_calls = 200 if quick else 1000
    cases: dict[str, tuple[Callable[[], float], Callable[[], float]]] = {}
    for b in (8, 256):
        req = rollout_request(b, rng)
        obs = np.ascontiguousarray(req.obs["obs"])
        calls = n_calls if b == 8 else n_calls // 4
        cases[f"rollout B={b} (us/call)"] = _rollout_pair(policy, plain, req, obs, calls)
    batch = sample_batch(policy, rng)
    data = plain_data(batch)
    trainer = PPOTrainer(policy, lr=1e-4, gamma=0.98, gae_lambda=0.8, epochs=EPOCHS, minibatches=MINIBATCHES)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-4, eps=1e-5)
    steps = 3 if quick else 10
    per_mb = EPOCHS * MINIBATCHES
    cases[f"minibatch {T * B // MINIBATCHES} (us/update)"] = (
        lambda: per_call_us(lambda: trainer.step(batch), steps) / per_mb,
        lambda: per_call_us(lambda: plain_update(plain, opt, data), steps) / per_mb,
    )
    return cases


def run(ctx: Context) -> BenchResult:
    """One row per case: hpcrl's CPU microseconds vs the plain-torch version's (median of interleaved runs)."""
    torch.set_num_threads(1)
    repeats = ctx.opt("repeats", 3 if ctx.quick else 7)
    cases = build_cases(ctx.quick)
    hp = measure({k: v[0] for k, v in cases.items()}, repeats)
    pl = measure({k: v[1] for k, v in cases.items()}, repeats)
    res = BenchResult("policy")
    for k in cases:
        what, unit = k.split(" (")
        res.rows.append(
            Row(
                "policy",
                f"{what}: CPU {unit.rstrip(')')}, 2 x 64 tanh actor + critic",
                hp[k],
                "the same model and update in plain torch (SB3 / CleanRL style)",
                pl[k],
                "us",
                higher_is_better=False,
                target_text="context",
                note=f"median of {repeats} interleaved runs, process CPU time, one torch thread",
            ).finish()
        )
    res.data = {"repeats": repeats, "cases": {k: {"hpcrl_us": hp[k], "plain_us": pl[k]} for k in cases}}
    before = ctx.opt("compare")
    if before:
        prev = json.loads(Path(before).read_text())["data"]["cases"]
        for k in cases:
            if k in prev:
                print(
                    f"  {k}: hpcrl {hp[k]:.1f} us, before {prev[k]['hpcrl_us']:.1f} us "
                    f"({prev[k]['hpcrl_us'] / hp[k]:.2f}x)"
                )
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs per case, median reported (default 7)")
    p.add_argument("--compare", default=None, help="an earlier result file of this benchmark: print hpcrl before/after")


main = bench_main("policy", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
