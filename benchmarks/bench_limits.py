"""Machine limits for the CartPole PPO benchmark: raw env stepping, plain-torch inference and SGD, in one process.

    python -m benchmarks.bench_limits [--quick]

What an RL library cannot beat on this machine, whatever its design (all in process CPU time, best of
``repeats`` runs, one torch thread):

* ``env_us``: one ``CartPole-v1`` step in a plain gymnasium loop (no passive checker, reset on episode
  end, pre-drawn actions), no learning.
* ``infer_us``: one plain-torch rollout call for 8 envs (numpy obs in, numpy action/log-prob/value out;
  the 2 x 64 tanh actor and critic of the benchmark config), :class:`benchmarks.bench_policy.PlainActorCritic`.
* ``sgd_us``: one PPO update on 1024 rows (GAE, 4 epochs x 4 minibatches of 256, backward, clip, Adam),
  :func:`benchmarks.bench_policy.plain_update`.

From these, :func:`fps_limit` gives the frames-per-second ceiling of a layout: one process does all three
serially; with MPI, the single trainer rank can do at most one update per ``sgd_us`` and the machine's
cores bound the total work. The suite's ``single`` and ``mpi`` rows report hpcrl's rate as a fraction of
these ceilings ("of limit"). Raw MPI Send/Recv bandwidth and latency are measured by the ``channel``
benchmark and reported with its rows.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import BenchResult, Context, bench_main

__all__ = ["ROWS_PER_UPDATE", "fps_limit", "main", "measure_limits", "run"]

ROWS_PER_UPDATE = 1024  # 8 envs x 128 steps


def _env_us(steps: int) -> float:
    import gymnasium
    import numpy as np

    env = gymnasium.make("CartPole-v1", disable_env_checker=True)
    env.reset(seed=0)
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 2, steps)]
    step, reset = env.step, env.reset
    t = time.process_time()
    for a in actions:
        _, _, term, trunc, _ = step(a)
        if term or trunc:
            reset()
    dt = time.process_time() - t
    env.close()
    return 1e6 * dt / steps


def _torch_us(calls: int, updates: int) -> tuple[float, float]:
    import numpy as np
    import torch

    from benchmarks.bench_policy import OBS_DIM, B, PlainActorCritic, T, plain_update

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = PlainActorCritic()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-5)
    obs8 = rng.standard_normal((B, OBS_DIM)).astype(np.float32)
    model.act(obs8)
    t = time.process_time()
    for _ in range(calls):
        model.act(obs8)
    infer = 1e6 * (time.process_time() - t) / calls
    data = {
        "obs": rng.standard_normal((T + 1, B, OBS_DIM)).astype(np.float32),
        "action": rng.integers(0, 2, (T + 1, B)).astype(np.int64),
        "log_prob": np.full((T + 1, B), -0.69, np.float32),
        "value": rng.standard_normal((T + 1, B)).astype(np.float32),
        "reward": np.ones((T + 1, B), np.float32),
        "done": (rng.random((T + 1, B)) < 0.02).astype(np.float32),
    }
    plain_update(model, opt, data)
    t = time.process_time()
    for _ in range(updates):
        plain_update(model, opt, data)
    sgd = 1e6 * (time.process_time() - t) / updates
    return infer, sgd


def measure_limits(quick: bool = False, repeats: int = 3) -> dict[str, Any]:
    """Measure ``env_us`` (per step), ``infer_us`` (per 8-env call) and ``sgd_us`` (per 1024-row update).

    Returns:
        The three costs (best of ``repeats``), the per-frame costs and :func:`fps_limit` for 1, 2, 4, 8 ranks.
    """
    import torch

    torch.set_num_threads(1)
    reps = 1 if quick else repeats
    env = min(_env_us(20_000 if quick else 100_000) for _ in range(reps))
    pairs = [_torch_us(300 if quick else 2000, 3 if quick else 10) for _ in range(reps)]
    infer, sgd = min(p[0] for p in pairs), min(p[1] for p in pairs)
    per_frame = {"env": env, "infer": infer / 8.0, "sgd": sgd / ROWS_PER_UPDATE}
    cores = os.cpu_count() or 1
    return {
        "env_us": env,
        "infer_us_per_call_b8": infer,
        "sgd_us_per_update_1024": sgd,
        "per_frame_us": per_frame,
        "env_only_fps": 1e6 / env,
        "cores": cores,
        "fps_limit": {str(n): fps_limit(per_frame, n, cores) for n in (1, 2, 4, 8)},
    }


def fps_limit(per_frame_us: dict[str, float], ranks: int, cores: int) -> float:
    """Frames-per-second ceiling of an hpcrl layout with one trainer and ``ranks - 1`` inline-inference actors.

    One rank: env + inference + SGD, serially. More ranks: the trainer rank needs ``sgd`` per frame, each
    actor rank ``env + infer``; everything shares ``cores`` cores.

    Examples:
        >>> round(fps_limit({"env": 10.0, "infer": 5.0, "sgd": 25.0}, 1, 2))
        25000
        >>> round(fps_limit({"env": 10.0, "infer": 5.0, "sgd": 25.0}, 2, 2))
        40000
    """
    env, infer, sgd = per_frame_us["env"], per_frame_us["infer"], per_frame_us["sgd"]
    if ranks <= 1:
        return 1e6 / (env + infer + sgd)
    actors = ranks - 1
    return min(1e6 / sgd, actors * 1e6 / (env + infer), cores * 1e6 / (env + infer + sgd))


def run(ctx: Context) -> BenchResult:
    """Measure the limits (no rows: the data feeds the *Limits* section and other rows' "of limit")."""
    lim = measure_limits(ctx.quick)
    ctx.limits = lim
    res = BenchResult("limits", data=lim)
    res.notes.append(
        f"CartPole-v1 plain gymnasium loop {lim['env_us']:.2f} us/step ({lim['env_only_fps']:,.0f} steps/s); "
        f"plain-torch inference for 8 envs {lim['infer_us_per_call_b8']:.0f} us; "
        f"plain-torch PPO update on 1024 rows {lim['sgd_us_per_update_1024'] / 1000:.1f} ms"
    )
    return res


main = bench_main("limits", run, __doc__)

if __name__ == "__main__":
    raise SystemExit(main())
