"""Multi-policy runs in one process: two policies vs one at the same frames (target >= 0.9x), and self-play pool memory.

    python -m benchmarks.bench_multipolicy [--quick] [--frames 40000] [--repeats 4] [--envs 8 32 128] [--pool 1 4 16 64]

Throughput. The two-agent quick-start task (``quickstart-multiagent``, examples/quickstart/exp.yaml: PPO,
``actor-critic-separate`` with hidden 64, 4 epochs x 4 minibatches, ``fragment_length`` 64) is trained for
the same frames (seed 1) in four ways:

- ``one``: the single ``policy`` / ``trainer`` keys, one policy acting for both agents (the reference);
- ``two``: two policies, one per agent, each with its own PPO trainer with the same args;
- ``frozen``: the same two policies, only agent 0's trained (agent 1's frozen, same architecture);
- ``two_mb2``: as ``two``, with 2 minibatches per trainer instead of 4, so each optimizer step sees as many
  rows as one step of ``one`` (context: how much of the gap is the doubled count of optimizer steps).

Each run is a fresh process (:func:`benchmarks.training.run_hpcrl_child`) that times ``run_local`` (imports
excluded; env, policy and trainer construction and the training loop, PPO updates included) in wall-clock and
process CPU seconds. fps is frames over those seconds. The run is one process with one torch thread, so on an
idle core both agree; on a shared machine the wall-clock numbers swing with the other jobs, so the rows are
judged on frames per CPU second (wall-clock medians in each row's note). The variants run interleaved (the
order rotates every repeat) and each variant's median over ``--repeats`` counts; the rows are ``two`` /
``one`` and ``frozen`` / ``one`` against 0.9, once per ``--envs`` (envs per process: the rows each policy call
gets).

Memory. For each K of ``--pool``, a fresh process builds an ``actor-critic-separate`` policy with hidden 256 on
the same task's spaces (the largest model a CPU self-play run is likely to use here) and fills a
:class:`hpcrl.acting.selfplay.SnapshotPool` with K snapshots; it reports the policy's state-dict bytes, its
resident set size (``VmRSS``) before and after the pool is filled, and its peak (``VmHWM``). The per-snapshot
cost is the RSS growth over K.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import PYTHON, ROOT, BenchResult, Context, Row, bench_main, hpcrl_env
from benchmarks.training import run_hpcrl_child

__all__ = ["VARIANTS", "main", "pool_memory", "run", "variant_configs"]

TARGET = 0.9
BASE_YAML = ROOT / "examples" / "quickstart" / "exp.yaml"
#: variant -> what it is, in run order.
VARIANTS: dict[str, str] = {
    "one": "one policy for both agents (single policy/trainer keys)",
    "two": "two policies, each trained by its own PPO (same args)",
    "frozen": "two policies, agent 0's trained, agent 1's frozen",
    "two_mb2": "two trained policies, 2 minibatches each (same rows per optimizer step as one)",
}
POOL_HIDDEN = 256


def variant_configs(out_dir: Path) -> dict[str, Path]:
    """Write the experiment YAML of every variant (from examples/quickstart/exp.yaml) into ``out_dir``."""
    base = yaml.safe_load(BASE_YAML.read_text())
    policy, trainer = base.pop("policy"), base.pop("trainer")
    multi = dict(
        base, policies={"p0": policy, "p1": policy}, agents=[{"match": 0, "policy": "p0"}, {"match": 1, "policy": "p1"}]
    )
    small = dict(trainer, args=dict(trainer["args"], minibatches=2))
    docs = {
        "one": dict(base, policy=policy, trainer=trainer),
        "two": dict(multi, trainers={"p0": trainer, "p1": trainer}),
        "frozen": dict(multi, trainers={"p0": trainer}),
        "two_mb2": dict(multi, trainers={"p0": small, "p1": small}),
    }
    out = {}
    for name, doc in docs.items():
        path = out_dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        out[name] = path
    return out


def _throughput(frames: int, repeats: int, envs: int, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    """Every variant ``repeats`` times, interleaved (the order rotates each repeat), each in a fresh process."""
    configs = variant_configs(tmp)
    names = list(VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    overrides = [f"experiment.total_frames={frames}", f"actor.envs_per_actor={envs}", "experiment.seed=1"]
    for i in range(repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            try:
                out = run_hpcrl_child(overrides, tmp / f"{name}-{envs}-{i}", float("inf"), 900, configs[name])
                runs[name].append(
                    {
                        "fps": out["frames"] / out["wall_seconds"],
                        "cpu_fps": out["frames"] / out["cpu_seconds"],
                        "loop_fps": out["loop_fps"],
                        "wall_seconds": out["wall_seconds"],
                        "cpu_seconds": out["cpu_seconds"],
                    }
                )
            except RuntimeError as e:
                runs[name].append({"error": str(e)[-1500:]})
            r = runs[name][-1]
            shown = f"{r['fps']:.0f} fps, {r['cpu_fps']:.0f} per CPU second" if "fps" in r else "error"
            print(f"  envs {envs} repeat {i + 1}/{repeats} {name}: {shown}", flush=True)
    return runs


def _median(runs: list[dict[str, Any]], key: str = "cpu_fps") -> float | None:
    vals = [float(r[key]) for r in runs if "error" not in r and r.get(key)]
    return statistics.median(vals) if vals else None


def _error(runs: list[dict[str, Any]]) -> str:
    for r in runs:
        if "error" in r:
            lines = [ln for ln in str(r["error"]).splitlines() if ln.strip()]
            return (lines[-1] if lines else "error")[:300]
    return ""


_POOL_CHILD = """
import json, sys
from benchmarks.bench_multipolicy import pool_memory
print(json.dumps(pool_memory(int(sys.argv[1]), int(sys.argv[2]))))
"""


def _rss_kb() -> dict[str, int]:
    import os

    from benchmarks.common import proc_status_kb

    return proc_status_kb(os.getpid(), ("VmRSS", "VmHWM"))


def pool_memory(k: int, hidden: int = POOL_HIDDEN) -> dict[str, Any]:
    """Fill a snapshot pool of size ``k`` in this process; its memory (call it in a fresh process).

    Returns:
        ``k``, ``hidden``, ``state_dict_bytes`` (the policy's tensors), ``rss_before_kb`` / ``rss_after_kb``
        (``VmRSS`` before and after K snapshots), ``peak_rss_kb`` (``VmHWM``), ``per_snapshot_kb`` and the mean
        seconds per snapshot.
    """
    import gc
    import time

    from hpcrl.acting.selfplay import SnapshotPool
    from hpcrl.api import config
    from hpcrl.runtime import components

    components.set_torch_threads(1)
    args = {"obs_dim": {"obs": 187}, "state_dim": {"state": 623}, "action_dim": 16, "hidden_dim": hidden}
    spec = config.Policy("actor-critic-separate", args)
    policy = components.build_policy(spec, "cpu", 1)
    state_bytes = sum(
        int(t.numel()) * int(t.element_size()) for t in policy.state_dict().values() if hasattr(t, "numel")
    )
    pool = SnapshotPool(lambda: components.build_policy(spec, "cpu", 1), k, 1, "uniform", 1)
    gc.collect()
    before = _rss_kb()
    t0 = time.perf_counter()
    for i in range(k):
        policy.set_version(i + 1)
        pool.take(policy, i)
    seconds = (time.perf_counter() - t0) / k
    gc.collect()
    after = _rss_kb()
    assert len(pool.entries) == k
    return {
        "k": k,
        "hidden": hidden,
        "state_dict_bytes": state_bytes,
        "rss_before_kb": before.get("VmRSS"),
        "rss_after_kb": after.get("VmRSS"),
        "peak_rss_kb": after.get("VmHWM"),
        "per_snapshot_kb": (after.get("VmRSS", 0) - before.get("VmRSS", 0)) / k,
        "seconds_per_snapshot": seconds,
    }


def _pool_child(k: int, hidden: int) -> dict[str, Any]:
    proc = subprocess.run(
        [PYTHON, "-c", _POOL_CHILD, str(k), str(hidden)],
        cwd=ROOT,
        env=hpcrl_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return {"k": k, "error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(ctx: Context) -> BenchResult:
    """Throughput rows (two / one, frozen / one, per envs count) and the pool memory rows."""
    frames = ctx.opt("frames", 10_000 if ctx.quick else 40_000)
    repeats = ctx.opt("repeats", 1 if ctx.quick else 4)
    envs_list = ctx.opt("envs", [8] if ctx.quick else [8, 32, 128])
    pool_ks = ctx.opt("pool", [1, 4] if ctx.quick else [1, 4, 16, 64])
    res = BenchResult("multipolicy")
    data: dict[str, Any] = {"frames": frames, "repeats": repeats, "variants": VARIANTS, "throughput": {}}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-multipolicy-") as tmp:
        for envs in envs_list:
            runs = _throughput(frames, repeats, envs, Path(tmp))
            med = {n: _median(r) for n, r in runs.items()}
            wall = {n: _median(r, "fps") for n, r in runs.items()}
            data["throughput"][str(envs)] = {"median_fps": med, "median_wall_fps": wall, "runs": runs}
            one = med["one"]
            for name in ("two", "frozen", "two_mb2"):
                judged = name != "two_mb2"
                mine, wall_mine, wall_one = med[name], wall[name], wall["one"]
                ratio = mine / one if mine and one else None
                wall_ratio = wall_mine / wall_one if wall_mine and wall_one else None
                print(
                    f"  envs {envs}: {name} / one = {ratio:.3f} per CPU second, {wall_ratio:.3f} wall"
                    if ratio and wall_ratio
                    else f"  envs {envs}: {name}: no ratio"
                )
                res.rows.append(
                    Row(
                        "multipolicy",
                        f"{VARIANTS[name]}, {envs} envs, frames per CPU second",
                        med[name],
                        "one policy, same frames",
                        one,
                        "fps",
                        target=TARGET if judged else None,
                        target_text=f">= {TARGET}x one policy" if judged else "context",
                        note=_error(runs[name] + runs["one"])
                        or (
                            f"median of {repeats} runs of {frames:,} frames; wall-clock fps {wall[name]:,.0f} vs "
                            f"{wall['one']:,.0f} ({wall_ratio:.2f}x)"
                            if wall_ratio
                            else ""
                        ),
                    ).finish()
                )
    pool = [_pool_child(k, POOL_HIDDEN) for k in pool_ks]
    data["pool_memory"] = pool
    for p in pool:
        if "error" in p:
            print(f"  pool K={p['k']}: error {p['error'][-300:]}")
            continue
        print(
            f"  pool K={p['k']:>3}: state dict {p['state_dict_bytes'] / 2**20:.2f} MiB, RSS "
            f"{p['rss_before_kb'] / 1024:.1f} -> {p['rss_after_kb'] / 1024:.1f} MiB "
            f"(peak {p['peak_rss_kb'] / 1024:.1f}),"
            f" {p['per_snapshot_kb'] / 1024:.2f} MiB per snapshot, {p['seconds_per_snapshot'] * 1e3:.2f} ms each"
        )
    good = [p for p in pool if "error" not in p]
    if good:
        last = good[-1]
        res.rows.append(
            Row(
                "multipolicy",
                f"self-play pool, K={last['k']}, hidden {POOL_HIDDEN}: RSS per snapshot",
                last["per_snapshot_kb"] / 1024,
                "state dict",
                last["state_dict_bytes"] / 2**20,
                "MiB",
                higher_is_better=False,
                target_text="context",
                note=", ".join(f"K={p['k']}: peak {p['peak_rss_kb'] / 1024:.0f} MiB" for p in good),
            ).finish()
        )
    res.data = data
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--frames", type=int, default=None, help="frames per run (default 40,000; quick 10,000)")
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats of every variant (default 4; quick 1)"
    )
    p.add_argument("--envs", type=int, nargs="+", default=None, help="envs per process (default 8 32; quick 8)")
    p.add_argument("--pool", type=int, nargs="+", default=None, help="pool sizes K (default 1 4 16 64; quick 1 4)")


main = bench_main("multipolicy", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
