"""Raw env stepping: hpcrl's env adapters vs the same gymnasium envs stepped directly.

    python benchmarks/bench_env_step.py                 # CartPole, Pong (if ale-py), 8-env loops
    python benchmarks/bench_env_step.py --steps 50000 --repeats 3

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
EnvPool steps its envs in worker threads. The ratio is hpcrl / direct.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np

from hpcrl.api.environment import Action
from hpcrl.envs.gym_env import GymEnvironment


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


def report(title: str, rates: dict[str, float], pairs: list[tuple[str, str]]) -> None:
    print(f"\n== {title}")
    for name, rate in rates.items():
        print(f"  {name:<44s} {rate:12,.0f} steps/s")
    for ours, theirs in pairs:
        print(f"  ratio {ours} / {theirs}: {rates[ours] / rates[theirs]:.3f}")


def bench_cartpole(steps: int, repeats: int) -> None:
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
    report(
        "CartPole-v1, one env",
        rates,
        [
            ("hpcrl GymEnvironment", "gymnasium direct (gym.make defaults)"),
            ("hpcrl GymEnvironment", "gymnasium direct (no passive checker)"),
        ],
    )


def bench_pong(steps: int, repeats: int) -> None:
    try:
        import ale_py
        import cv2  # noqa: F401
    except ImportError as e:
        print(f"\n== ALE Pong: skipped ({e}; pip install 'hpcrl[atari]')")
        return
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
    report(
        "ALE Pong, one env (agent steps; 4 emulator frames each)",
        rates,
        [
            ("hpcrl GymEnvironment(ALE/Pong-v5)", "ALE/Pong-v5 direct"),
            ("hpcrl AtariEnvironment", "preprocessed stack direct"),
        ],
    )


def bench_mujoco(steps: int, repeats: int) -> None:
    try:
        import imageio  # noqa: F401
        import mujoco  # noqa: F401
    except ImportError as e:
        print(f"\n== MuJoCo HalfCheetah-v5: skipped ({e}; pip install mujoco imageio)")
        return
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, (steps, 6)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp, contextlib.chdir(tmp):  # MuJoCo writes MUJOCO_LOG.TXT into the cwd
        rates = _bench_mujoco(actions, repeats)
    report(
        "MuJoCo HalfCheetah-v5, one env (float64 obs cast to float32, actions clipped)",
        rates,
        [("hpcrl GymEnvironment (cast + clip)", "HalfCheetah-v5 direct (no passive checker)")],
    )


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


def bench_vector(steps: int, repeats: int, n: int = 8) -> None:
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
    except ImportError:
        print("\n(EnvPool not installed: its column is skipped)")
    rates = best_rate(runs, repeats)
    report(f"CartPole-v1, {n} envs (env steps/s summed over envs)", rates, [])
    base = rates[f"gymnasium SyncVectorEnv({n})"]
    for name, rate in rates.items():
        print(f"  {name:<44s} {rate / base:6.2f}x SyncVectorEnv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000, help="CartPole steps per run")
    parser.add_argument("--pong-steps", type=int, default=2_000, help="Pong agent steps per run")
    parser.add_argument("--mujoco-steps", type=int, default=5_000, help="HalfCheetah steps per run")
    parser.add_argument("--vec-steps", type=int, default=80_000, help="env steps per run, 8-env comparison")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs; the best is reported")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="timer of sections 1 and 2")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"numpy {np.__version__}, gymnasium {gymnasium.__version__}, clock: {args.clock} (sections 1-2), wall (3)")
    bench_cartpole(args.steps, args.repeats)
    bench_pong(args.pong_steps, max(1, args.repeats // 2))
    bench_mujoco(args.mujoco_steps, args.repeats)
    bench_vector(args.vec_steps, args.repeats)


if __name__ == "__main__":
    main()
