"""Raw env stepping: hpcrl's env adapters vs the same gymnasium envs stepped directly.

    python -m benchmarks.bench_env_step [--quick]        # CartPole, Pong (if ale-py), MuJoCo (if mujoco), 8 envs
    python -m benchmarks.bench_env_step --steps 50000 --repeats 3

What is compared (single process, random actions drawn before the timed loop, reset on end):

1. CartPole-v1: ``gymnasium.make`` stepped directly (default wrapper stack, and the same stack as
   the adapter, i.e. without gymnasium's passive env checker) vs ``GymEnvironment`` (which builds
   hpcrl StepResults). Target: hpcrl >= 90% of direct.
2. ALE Pong (if ale-py + opencv are installed): ``ALE/Pong-v5`` direct vs ``GymEnvironment``, and
   the AtariPreprocessing + FrameStack stack direct vs ``AtariEnvironment``; MuJoCo HalfCheetah-v5
   (if mujoco is installed) direct vs ``GymEnvironment`` (which casts obs and clips actions).
3. 8 CartPole envs: a plain Python loop over 8 ``GymEnvironment`` adapters (what an actor rank
   does) vs ``gymnasium.vector.SyncVectorEnv`` vs EnvPool (if ``import envpool`` works).

Rates are env steps per second, best of ``--repeats`` interleaved runs. Sections 1 and 2 time
the loops in process CPU time (``--clock cpu``, the default), so other jobs on a busy machine do
not distort the ratio; ``--clock wall`` uses wall time. Section 3 always uses wall time, because
EnvPool steps its envs in worker threads. The ratio is hpcrl / direct; the CartPole row (the adapter's
cost on the cheapest env) has the target, the others are context.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np

from benchmarks.common import BenchResult, Context, Row, bench_main
from hpcrl.api.environment import Action
from hpcrl.envs.gym_env import GymEnvironment

__all__ = ["main", "run"]


def best_rate(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Run each benchmark ``repeats`` times, interleaved; keep each one's best rate."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(repeats):
        for name, fn in runs.items():
            best[name] = max(best[name], fn())
    return best


CLOCK: Callable[[], float] = time.process_time


def direct_loop(make: Callable[[], Any], actions: np.ndarray) -> Callable[[], float]:
    def run() -> float:
        env = make()
        env.reset(seed=0)
        step, reset = env.step, env.reset
        acts = [int(a) for a in actions] if actions.ndim == 1 else list(actions)
        t = CLOCK()
        for a in acts:
            _, _, term, trunc, _ = step(a)
            if term or trunc:
                reset()
        dt = CLOCK() - t
        env.close()
        return len(actions) / dt

    return run


def hpcrl_loop(make: Callable[[], Any], actions: np.ndarray) -> Callable[[], float]:
    records = [Action(x=np.asarray(a, np.int64 if actions.dtype.kind == "i" else np.float32)) for a in actions]

    def run() -> float:
        env = make()
        env.seed(0)
        env.reset()
        step, reset = env.step, env.reset
        t = CLOCK()
        for a in records:
            r = step([a])[0]
            if r.done[0] or r.truncated[0]:
                reset()
        dt = CLOCK() - t
        env.close()
        return len(records) / dt

    return run


def bench_cartpole(steps: int, repeats: int) -> dict[str, float]:
    """CartPole-v1 steps/s: gym.make defaults, without the passive checker, and hpcrl's adapter."""
    actions = np.random.default_rng(0).integers(0, 2, steps)
    rates = best_rate(
        {
            "gymnasium direct (gym.make defaults)": direct_loop(lambda: gymnasium.make("CartPole-v1"), actions),
            "gymnasium direct (no passive checker)": direct_loop(
                lambda: gymnasium.make("CartPole-v1", disable_env_checker=True), actions
            ),
            "hpcrl GymEnvironment": hpcrl_loop(lambda: GymEnvironment("CartPole-v1"), actions),
        },
        repeats,
    )
    return rates


def bench_pong(steps: int, repeats: int) -> dict[str, float] | str:
    """ALE Pong agent steps/s, raw and preprocessed, direct and through hpcrl; or why it was skipped."""
    try:
        import ale_py
        import cv2  # noqa: F401
    except ImportError as e:
        return f"ALE Pong skipped: {e} (pip install 'hpcrl[atari]')"
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    from hpcrl.envs.atari import AtariEnvironment

    gymnasium.register_envs(ale_py)
    actions = np.random.default_rng(0).integers(0, 6, steps)

    def preprocessed() -> Any:
        env = gymnasium.make("ALE/Pong-v5", frameskip=1, disable_env_checker=True)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
        return FrameStackObservation(env, 4)

    rates = best_rate(
        {
            "ALE/Pong-v5 direct": direct_loop(lambda: gymnasium.make("ALE/Pong-v5"), actions),
            "hpcrl GymEnvironment(ALE/Pong-v5)": hpcrl_loop(lambda: GymEnvironment("ALE/Pong-v5"), actions),
            "preprocessed stack direct": direct_loop(preprocessed, actions),
            "hpcrl AtariEnvironment": hpcrl_loop(
                lambda: AtariEnvironment("Pong", episodic_life=False, clip_rewards=True, fire_reset=False), actions
            ),
        },
        repeats,
    )
    return rates


def bench_mujoco(steps: int, repeats: int) -> dict[str, float] | str:
    """MuJoCo HalfCheetah-v5 steps/s, direct and through hpcrl; or why it was skipped."""
    try:
        import imageio  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as e:
        return f"MuJoCo HalfCheetah-v5 skipped: {e} (pip install 'hpcrl[mujoco]')"
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # MuJoCo writes MUJOCO_LOG.TXT into the cwd
        return _bench_mujoco(actions, repeats)


def _bench_mujoco(actions: np.ndarray, repeats: int) -> dict[str, float]:
    return best_rate(
        {
            "HalfCheetah-v5 direct (no passive checker)": direct_loop(
                lambda: gymnasium.make("HalfCheetah-v5", disable_env_checker=True), actions
            ),
            "hpcrl GymEnvironment (cast + clip)": hpcrl_loop(lambda: GymEnvironment("HalfCheetah-v5"), actions),
        },
        repeats,
    )


def bench_vector(steps: int, repeats: int, n: int = 8) -> tuple[dict[str, float], str]:
    """Env steps/s summed over ``n`` CartPole envs: hpcrl's loop, SyncVectorEnv, EnvPool (if installed)."""
    rounds = steps // n
    actions = np.random.default_rng(0).integers(0, 2, (rounds, n))
    records = [[Action(x=np.asarray(a, np.int64)) for a in row] for row in actions]

    def loop() -> float:
        envs = [GymEnvironment("CartPole-v1", seed=i) for i in range(n)]
        for e in envs:
            e.reset()
        t = time.perf_counter()
        for row in records:
            for e, a in zip(envs, row):
                r = e.step([a])[0]
                if r.done[0] or r.truncated[0]:
                    e.reset()
        dt = time.perf_counter() - t
        return rounds * n / dt

    def sync() -> float:
        venv = gymnasium.vector.SyncVectorEnv([lambda: gymnasium.make("CartPole-v1") for _ in range(n)])
        venv.reset(seed=0)
        t = time.perf_counter()
        for row in actions:
            venv.step(row)
        dt = time.perf_counter() - t
        venv.close()
        return rounds * n / dt

    runs: dict[str, Callable[[], float]] = {
        f"hpcrl: plain loop over {n} GymEnvironment": loop,
        f"gymnasium SyncVectorEnv({n})": sync,
    }
    try:
        import envpool

        def pool() -> float:
            venv = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=n)
            venv.reset()
            acts = actions.astype(np.int32)
            t = time.perf_counter()
            for row in acts:
                venv.step(row)
            dt = time.perf_counter() - t
            venv.close()
            return rounds * n / dt

        runs[f"EnvPool({n}), sync"] = pool
        skipped = ""
    except ImportError:
        skipped = "EnvPool not installed"
    return best_rate(runs, repeats), skipped


def run(ctx: Context) -> BenchResult:
    """Rows: CartPole (target: hpcrl >= 90 % of direct), Pong and MuJoCo when installed, 8 envs (context)."""
    global CLOCK
    CLOCK = time.process_time if ctx.opt("clock", "cpu") == "cpu" else time.perf_counter
    quick = ctx.quick
    steps = ctx.opt("steps", 20_000 if quick else 100_000)
    repeats = ctx.opt("repeats", 2 if quick else 5)
    clock = f"{ctx.opt('clock', 'cpu')} time"
    res = BenchResult("env_step")
    cart = bench_cartpole(steps, repeats)
    direct = "gymnasium direct (no passive checker)"
    res.rows.append(
        Row(
            "env_step",
            "CartPole-v1 steps/s, one env, hpcrl GymEnvironment",
            cart["hpcrl GymEnvironment"],
            "gymnasium.make(disable_env_checker=True) stepped directly",
            cart[direct],
            "steps/s",
            target=0.9,
            target_text=">= 90% of direct",
            note=(
                f"gymnasium.make defaults (passive checker on): "
                f"{cart['gymnasium direct (gym.make defaults)']:,.0f} steps/s; {clock}"
            ),
        ).finish()
    )
    pong = bench_pong(ctx.opt("pong_steps", 500 if quick else 2_000), max(1, repeats // 2))
    if isinstance(pong, str):
        res.notes.append(pong)
    else:
        for ours, theirs, what in (
            ("hpcrl AtariEnvironment", "preprocessed stack direct", "AtariPreprocessing + 4-frame stack"),
            ("hpcrl GymEnvironment(ALE/Pong-v5)", "ALE/Pong-v5 direct", "raw ALE/Pong-v5"),
        ):
            res.rows.append(
                Row(
                    "env_step",
                    f"Pong agent steps/s, one env, {ours}",
                    pong[ours],
                    f"{what} stepped directly",
                    pong[theirs],
                    "steps/s",
                    target_text="context",
                    note=clock,
                ).finish()
            )
    mujoco = bench_mujoco(ctx.opt("mujoco_steps", 1_000 if quick else 5_000), repeats)
    if isinstance(mujoco, str):
        res.notes.append(mujoco)
    else:
        res.rows.append(
            Row(
                "env_step",
                "HalfCheetah-v5 steps/s, one env, hpcrl GymEnvironment (cast + clip)",
                mujoco["hpcrl GymEnvironment (cast + clip)"],
                "HalfCheetah-v5 stepped directly",
                mujoco["HalfCheetah-v5 direct (no passive checker)"],
                "steps/s",
                target_text="context",
                note=clock,
            ).finish()
        )
    vec, skipped = bench_vector(ctx.opt("vec_steps", 16_000 if quick else 80_000), repeats)
    ours = "hpcrl: plain loop over 8 GymEnvironment"
    for name, rate in vec.items():
        if name == ours:
            continue
        res.rows.append(
            Row(
                "env_step",
                "CartPole-v1 steps/s summed over 8 envs, hpcrl's loop over 8 adapters (an actor rank)",
                vec[ours],
                name,
                rate,
                "steps/s",
                target_text="context",
                note="wall time",
            ).finish()
        )
    if skipped:
        res.notes.append(skipped)
    res.data = {
        "steps": steps,
        "repeats": repeats,
        "clock": clock,
        "cartpole": cart,
        "pong": pong,
        "mujoco": mujoco,
        "vector": vec,
    }
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--steps", type=int, default=None, help="CartPole steps per run (default 100,000)")
    p.add_argument("--pong-steps", type=int, default=None, help="Pong agent steps per run (default 2,000)")
    p.add_argument("--mujoco-steps", type=int, default=None, help="HalfCheetah steps per run (default 5,000)")
    p.add_argument("--vec-steps", type=int, default=None, help="env steps per run, 8-env comparison (default 80,000)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs; the best is reported (default 5)")
    p.add_argument("--clock", choices=["cpu", "wall"], default=None, help="timer of the one-env rows (default cpu)")


main = bench_main("env_step", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
