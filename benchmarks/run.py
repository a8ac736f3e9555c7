"""The benchmark suite's entry point: runs every benchmark, prints one table, writes docs/performance.md.

    cd /work/main && python -m benchmarks.run                  # full suite (long; wants a quiet machine)
    python -m benchmarks.run --quick                           # smoke run, < 5 min
    python -m benchmarks.run --only single mpi --max-load 1.5  # some benchmarks, each started on a quiet machine
    python -m benchmarks.run --list                            # what would run (no measurement)
    python -m benchmarks.run --report-only                     # rebuild the page from the saved results

Each row runs hpcrl and its peer in the same run on the same machine and reports the ratio (> 1 always
means hpcrl is ahead; absolute numbers are context). Peers live in their own virtual environments under
benchmarks/.peers/, created on first use by :mod:`benchmarks.peers` (a peer that cannot be installed turns
its rows into "peer not installable" with the reason). Every benchmark's result is saved to
benchmarks/results/suite/<name>.json (``<name>-quick.json`` with ``--quick``) and the page is built from
the newest saved result of every benchmark, so benchmarks can be re-run one at a time. A full run writes
docs/performance.md and docs/img/perf-*.png; a ``--quick`` run writes its page under
benchmarks/results/suite/quick/ so smoke numbers never replace the published ones.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    MPIEXEC,
    PYTHON,
    RESULTS,
    BenchResult,
    Row,
    hpcrl_env,
    load_avg,
    wait_for_quiet,
    write_json,
)

__all__ = ["BENCHMARKS", "Context", "main", "print_table", "run_benchmarks"]

Ctx = dict[str, Any]


class Context:
    """What benchmarks share within one suite run: the mode and the measured limits."""

    def __init__(self, quick: bool, results_dir: Path) -> None:
        self.quick = quick
        self.results_dir = results_dir
        self.limits: dict[str, Any] | None = None

    def get_limits(self) -> dict[str, Any]:
        """The CartPole limits of this run (measured on first use, else the saved ones of this mode)."""
        if self.limits is None:
            saved = self.results_dir / f"limits{'-quick' if self.quick else ''}.json"
            if saved.exists():
                self.limits = json.loads(saved.read_text())["data"]
            else:
                self.limits = bench_limits(self).data
        return self.limits


# ====================================================================== benchmarks
def bench_limits(ctx: Context) -> BenchResult:
    """Raw env stepping, plain-torch inference and SGD for the CartPole model (the fps ceilings)."""
    from benchmarks.bench_limits import measure_limits

    res = BenchResult("limits", quick=ctx.quick, load_start=load_avg())
    t0 = time.time()
    lim = measure_limits(ctx.quick)
    res.data = lim
    ctx.limits = lim
    res.notes.append(
        f"CartPole-v1 plain gymnasium loop {lim['env_us']:.2f} us/step ({lim['env_only_fps']:,.0f} steps/s); "
        f"plain-torch inference for 8 envs {lim['infer_us_per_call_b8']:.0f} us; "
        f"plain-torch PPO update on 1024 rows {lim['sgd_us_per_update_1024'] / 1000:.1f} ms"
    )
    res.load_end = load_avg()
    res.seconds = round(time.time() - t0, 1)
    return res


def bench_single(ctx: Context) -> BenchResult:
    """Single-process CartPole throughput: hpcrl vs SB3 (target 1.3x), CleanRL-style and RLlib (context)."""
    from benchmarks import peers
    from benchmarks.bench_sb3 import run_hpcrl_child
    from benchmarks.common import sb3_cartpole_params

    frames = 20_000 if ctx.quick else 100_000
    repeats = 1 if ctx.quick else 3
    names = ["sb3", "cleanrl"] if ctx.quick else ["sb3", "cleanrl", "rllib"]
    res = BenchResult("single", quick=ctx.quick, load_start=load_avg())
    t0 = time.time()
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl": [], **{n: [] for n in names}}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-single-") as tmp:
        for i in range(repeats):
            try:
                h = run_hpcrl_child(
                    ["experiment.seed=1", f"experiment.total_frames={frames}"], Path(tmp) / f"r{i}", float("inf")
                )
                runs["hpcrl"].append(
                    {"fps": h["frames"] / h["wall_seconds"], "cpu_fps": h["frames"] / h["cpu_seconds"]}
                )
            except RuntimeError as e:
                runs["hpcrl"].append({"error": str(e)[-1500:]})
            print(f"  hpcrl: {runs['hpcrl'][-1].get('fps', runs['hpcrl'][-1].get('error'))} fps", flush=True)
            for name in names:
                params = sb3_cartpole_params(frames)
                params["record_episodes"] = False
                script = {"sb3": "sb3_ppo.py", "cleanrl": "cleanrl_ppo.py", "rllib": "rllib_ppo.py"}[name]
                try:
                    peers.ensure_peer(name)
                    out = peers.run_peer(name, script, ["--params", json.dumps(params)], timeout=1800, quiet=True)
                    # SB3 and CleanRL: env + model construction and training (imports excluded), like hpcrl's
                    # number; RLlib: its train() loop (its construction is ray.init + actors: see start-up)
                    span = out["learn_seconds"] if name == "rllib" else out["wall_seconds"]
                    runs[name].append({"fps": out["frames"] / span, "raw": out})
                except peers.PeerError as e:
                    runs[name].append({"error": str(e)[-1500:]})
                print(f"  {name}: {runs[name][-1].get('fps', runs[name][-1].get('error'))} fps", flush=True)
    h_best = _best(runs["hpcrl"], "fps")
    limit = ctx.get_limits()["fps_limit"]["1"]
    labels = {"sb3": "SB3 (DummyVecEnv)", "cleanrl": "CleanRL-style PPO", "rllib": "RLlib PPO (0 env runners)"}
    for name in names:
        judged = name == "sb3"
        res.rows.append(
            Row(
                "single",
                "CartPole fps, one process",
                h_best,
                labels[name],
                _best(runs[name], "fps"),
                "fps",
                target=1.3 if judged else None,
                target_text=">= 1.3x SB3" if judged else "context",
                note=_first_error(runs["hpcrl"] + runs[name]),
                limit=limit,
                load=f"{res.load_start[0]:.2f}",
            ).finish()
        )
    res.data = {"frames": frames, "repeats": repeats, "runs": runs}
    return _done(res, t0)


def bench_mpi(ctx: Context) -> BenchResult:
    """CartPole under mpiexec -n 2/4/8 vs SB3, Sample Factory and RLlib (benchmarks/bench_mpi.py)."""
    from benchmarks import bench_mpi as m

    return m.run(ctx.quick, ctx.get_limits())


def bench_solve(ctx: Context) -> BenchResult:
    """Time-to-solve CartPole (last-100 mean >= 475): hpcrl (one process) vs SB3 and the CleanRL-style PPO."""
    from benchmarks import peers
    from benchmarks.bench_sb3 import run_hpcrl_child
    from benchmarks.common import sb3_cartpole_params

    budget = 30_000 if ctx.quick else 200_000
    seeds = [1] if ctx.quick else [1, 2, 3]
    res = BenchResult("solve", quick=ctx.quick, load_start=load_avg())
    t0 = time.time()
    runs: dict[str, list[dict[str, Any]]] = {"hpcrl": [], "sb3": [], "cleanrl": []}
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-solve-") as tmp:
        for seed in seeds:
            overrides = [f"experiment.seed={seed}", f"experiment.total_frames={budget}"]
            try:
                h = run_hpcrl_child(overrides, Path(tmp) / f"s{seed}", 475.0)
                runs["hpcrl"].append(
                    {"seed": seed, "seconds": h["seconds_to_threshold"], "frames": h["frames_to_threshold"]}
                )
            except RuntimeError as e:
                runs["hpcrl"].append({"seed": seed, "error": str(e)[-1500:]})
            for name, script in (("sb3", "sb3_ppo.py"), ("cleanrl", "cleanrl_ppo.py")):
                params = sb3_cartpole_params(budget, seed, 475.0)
                params["record_episodes"] = True
                try:
                    peers.ensure_peer(name)
                    out = peers.run_peer(name, script, ["--params", json.dumps(params)], timeout=1800, quiet=True)
                    runs[name].append(
                        {"seed": seed, "seconds": out["seconds_to_threshold"], "frames": out["frames_to_threshold"]}
                    )
                except peers.PeerError as e:
                    runs[name].append({"seed": seed, "error": str(e)[-1500:]})
            print(f"  seed {seed}: " + ", ".join(f"{k} {v[-1].get('seconds')} s" for k, v in runs.items()), flush=True)

    def mean_solved(key: str) -> tuple[float | None, int]:
        vals = [r["seconds"] for r in runs[key] if r.get("seconds") is not None]
        return (sum(vals) / len(vals) if vals else None), len(vals)

    h, hn = mean_solved("hpcrl")
    for name, label in (("sb3", "SB3"), ("cleanrl", "CleanRL-style PPO")):
        p, pn = mean_solved(name)
        note = f"solved seeds: hpcrl {hn}/{len(seeds)}, {label} {pn}/{len(seeds)} (budget {budget:,} frames)"
        hf = [r.get("frames") for r in runs["hpcrl"]]
        pf = [r.get("frames") for r in runs[name]]
        note += f"; frames-to-475 hpcrl {hf}, {label} {pf}"
        res.rows.append(
            Row(
                "solve",
                "CartPole time-to-solve (s to last-100 mean >= 475), one process",
                h,
                label,
                p,
                "s",
                higher_is_better=False,
                target_text="context (mean over solved seeds)",
                note=note,
                load=f"{res.load_start[0]:.2f}",
            ).finish()
        )
    res.data = {"budget": budget, "seeds": seeds, "runs": runs}
    return _done(res, t0)


def bench_pong(ctx: Context) -> BenchResult:
    """Pong fps vs SB3 (benchmarks/bench_pong.py)."""
    from benchmarks import bench_pong as m

    return m.run(ctx.quick)


def bench_channel(ctx: Context) -> BenchResult:
    """hpcrl channel vs raw mpi4py Send/Recv (benchmarks/bench_channel.py under mpiexec -n 2)."""
    res = BenchResult("channel", quick=ctx.quick, load_start=load_avg())
    t0 = time.time()
    out_file = ROOT / "benchmarks" / "results" / "channel.json"
    before = out_file.stat().st_mtime if out_file.exists() else 0.0
    cmd = [MPIEXEC, "-n", "2", PYTHON, "-m", "mpi4py", str(ROOT / "benchmarks" / "bench_channel.py")]
    cmd += ["--quick"] if ctx.quick else []
    proc = subprocess.run(cmd, cwd=ROOT, env=hpcrl_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not out_file.exists() or out_file.stat().st_mtime <= before:
        res.notes.append(f"bench_channel.py failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}")
        return _done(res, t0)
    data = json.loads(out_file.read_text())
    res.data = {"channel": data, "stdout": proc.stdout[-4000:]}
    by_size = {int(r["bytes"]): r for r in data["rows"]}
    for mib in (1, 4, 16):
        r = by_size.get(mib << 20)
        if r is None:
            continue
        res.rows.append(
            Row(
                "channel",
                f"channel bandwidth, {mib} MiB messages",
                r["hpcrl_gbps"],
                "raw mpi4py Send/Recv (2 buffers per side)",
                r["raw_gbps"],
                "GB/s",
                target=0.9,
                target_text=">= 90% of raw",
                note=(
                    f"double-buffered channel vs raw alternating 2 buffers; single-buffered pair: hpcrl "
                    f"{r.get('hpcrl_1buf_gbps', float('nan')):.2f} vs raw {r.get('raw_1buf_gbps', float('nan')):.2f}"
                    f" GB/s; packed (non-wire-layout) NamedArray: {r['hpcrl_packed_gbps']:.2f} GB/s"
                ),
                limit=r["raw_gbps"],
                load=f"{res.load_start[0]:.2f}",
            ).finish()
        )
    small = by_size.get(1024)
    if small is not None:
        res.rows.append(
            Row(
                "channel",
                "channel latency, 1 KiB message (one-way)",
                small["hpcrl_latency_us"],
                "raw mpi4py Send/Recv",
                small["raw_latency_us"],
                "us",
                higher_is_better=False,
                target=0.5,
                target_text="<= 2x raw",
                note=f"4-leaf request-like NamedArray: {data.get('request_like_latency_us', float('nan')):.1f} us",
                load=f"{res.load_start[0]:.2f}",
            ).finish()
        )
    return _done(res, t0)


def bench_scaling(ctx: Context) -> BenchResult:
    """Sleep-env actor scaling 1 -> 16 -> 64 ranks (benchmarks/bench_scaling.py)."""
    from benchmarks import bench_scaling as m

    return m.run(ctx.quick)


def bench_memory(ctx: Context) -> BenchResult:
    """64-rank RSS per role (benchmarks/bench_memory.py)."""
    from benchmarks import bench_memory as m

    return m.run(ctx.quick)


def bench_checkpoint(ctx: Context) -> BenchResult:
    """Checkpoint save time vs torch.save (benchmarks/bench_checkpoint.py)."""
    res = BenchResult("checkpoint", quick=ctx.quick, load_start=load_avg())
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-ckpt-") as tmp:
        out = Path(tmp) / "ckpt.json"
        cmd = [PYTHON, str(ROOT / "benchmarks" / "bench_checkpoint.py"), "--json", str(out)]
        cmd += ["--reps", "1", "--hidden", "1024"] if ctx.quick else ["--reps", "5"]
        proc = subprocess.run(cmd, cwd=ROOT, env=hpcrl_env(), capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not out.exists():
            res.notes.append(
                f"bench_checkpoint.py failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}"
            )
            return _done(res, t0)
        d = json.loads(out.read_text())
    res.data = d
    size = f"{d['params'] / 1e6:.1f}M-param MLP + Adam ({d['mib']:.0f} MiB)"
    load = f"{res.load_start[0]:.2f}"
    res.rows.append(
        Row(
            "checkpoint",
            f"checkpoint save as the trainer sees it (default writer process: trainer time lost), {size}",
            max(d["process_lost"], d["process_submit"]),  # below the pause is noise
            "torch.save",
            d["torch_save"],
            "s",
            higher_is_better=False,
            target=0.5,
            target_text="<= 2x torch.save",
            note=(
                f"trainer pause {d['process_submit']:.3f} s (copy into shared memory), then "
                f"{d['process_work']:.2f} s of trainer work ran on while the writer process "
                f"took {d['process_write']:.3f} s (measured loss {d['process_lost']:+.3f} s, run-to-run noise "
                f"{d['process_noise']:.3f} s); writer thread instead: {d['thread_lost']:.3f} s lost "
                "(h5py holds the GIL)"
            ),
            load=load,
        ).finish()
    )
    res.rows.append(
        Row(
            "checkpoint",
            f"checkpoint save, blocking (run.checkpoint_writer=inline), {size}",
            d["hpcrl_save"],
            "torch.save",
            d["torch_save"],
            "s",
            higher_is_better=False,
            target_text="context",
            note=(
                f"hpcrl includes fletcher32 + fsync + atomic rename; torch.save + fsync {d['torch_save_fsync']:.3f} s; "
                f"load: hpcrl {d['hpcrl_load']:.3f} s (verifies checksums), torch.load {d['torch_load']:.3f} s"
            ),
            load=load,
        ).finish()
    )
    return _done(res, t0)


def bench_trace(ctx: Context) -> BenchResult:
    """Tracing overhead: CartPole fps with traces on vs off (benchmarks/bench_trace.py)."""
    from benchmarks import bench_trace as m

    return m.run(ctx.quick)


def bench_startup(ctx: Context) -> BenchResult:
    """Start-up time to the first trained batch (benchmarks/bench_startup.py)."""
    from benchmarks import bench_startup as m

    return m.run(ctx.quick)


#: name -> (runner, one-line description); the suite runs them in this order.
BENCHMARKS: dict[str, tuple[Callable[[Context], BenchResult], str]] = {
    "limits": (bench_limits, "raw env stepping, plain-torch inference and SGD cost of the CartPole model"),
    "single": (bench_single, "single-process CartPole fps vs SB3 / CleanRL-style / RLlib"),
    "mpi": (bench_mpi, "mpiexec -n 2/4/8 CartPole fps vs SB3, Sample Factory 2 async, RLlib"),
    "solve": (bench_solve, "CartPole time-to-solve (475) vs SB3 and the CleanRL-style PPO"),
    "pong": (bench_pong, "Atari Pong fps (one process, -n 2) vs SB3, with plain-torch limits"),
    "channel": (bench_channel, "channel bandwidth 1-16 MiB and small-message latency vs raw mpi4py"),
    "scaling": (bench_scaling, "sleep-env (1 ms/step) throughput with 1 -> 16 -> 64 actor ranks"),
    "memory": (bench_memory, "peak RSS per role of a 64-rank CartPole job (16 ranks with --quick)"),
    "checkpoint": (bench_checkpoint, "HDF5 checkpoint save vs torch.save"),
    "trace": (bench_trace, "tracing overhead: CartPole fps with HDF5 traces on vs off"),
    "startup": (bench_startup, "launch to first trained batch: mpiexec -n 4 vs the peers"),
}


# ====================================================================== driver
def _best(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in runs if r.get(key) is not None]
    return max(vals) if vals else None


def _first_error(runs: list[dict[str, Any]]) -> str:
    for r in runs:
        if "error" in r:
            text = str(r["error"]).strip()
            return text.splitlines()[0][:300] if text else "error"
    return ""


def _done(res: BenchResult, t0: float) -> BenchResult:
    res.load_end = load_avg()
    res.seconds = round(time.time() - t0, 1)
    return res


def run_benchmarks(
    names: list[str],
    quick: bool,
    results_dir: Path = RESULTS,
    max_load: float | None = None,
    max_wait: float = 0.0,
    save: bool = True,
) -> list[BenchResult]:
    """Run ``names`` in suite order; save each result as it finishes.

    Args:
        names: benchmark names (keys of :data:`BENCHMARKS`).
        quick: smoke sizes.
        results_dir: where ``<name>[-quick].json`` go.
        max_load: wait before each benchmark until the 1-minute load average is below this.
        max_wait: longest wait per benchmark, seconds.
        save: write the JSON results.

    Returns:
        The results, in order. A benchmark that raises becomes a result with the error in its notes.
    """
    ctx = Context(quick, results_dir)
    out = []
    for name in BENCHMARKS:
        if name not in names:
            continue
        if max_load is not None and max_wait > 0:
            wait_for_quiet(max_load, max_wait)
        print(f"\n=== {name}: {BENCHMARKS[name][1]}  (load {load_avg()[0]:.2f})", flush=True)
        t0 = time.time()
        try:
            res = BENCHMARKS[name][0](ctx)
        except Exception as e:  # one broken benchmark must not lose the others' results
            res = BenchResult(name, quick=quick, load_start=load_avg())
            res.notes.append(f"benchmark raised {type(e).__name__}: {e}")
            res = _done(res, t0)
        res.quick = quick
        print(f"  ({res.seconds:.0f} s, load {res.load_start[0]:.2f} -> {res.load_end[0]:.2f})", flush=True)
        if save:
            results_dir.mkdir(parents=True, exist_ok=True)
            suffix = "-quick" if quick else ""
            if results_dir == RESULTS:
                write_json(f"{name}{suffix}", res.as_dict())
            else:
                (results_dir / f"{name}{suffix}.json").write_text(json.dumps(res.as_dict(), indent=1, default=str))
        out.append(res)
    return out


def load_saved(quick: bool, results_dir: Path = RESULTS) -> list[BenchResult]:
    """The newest saved result of every benchmark of this mode, in suite order."""
    out = []
    for name in BENCHMARKS:
        path = results_dir / f"{name}{'-quick' if quick else ''}.json"
        if path.exists():
            res = BenchResult.from_dict(json.loads(path.read_text()))
            res.data.setdefault("_saved_at", time.strftime("%Y-%m-%d %H:%M", time.localtime(path.stat().st_mtime)))
            out.append(res)
    return out


def _cell(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit in ("fps", "MB") or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_table(results: list[BenchResult]) -> None:
    """Print every row: measure, hpcrl, peer, ratio, target, PASS/FAIL, % of limit, load."""
    header = ["benchmark", "measure", "hpcrl", "peer", "peer value", "unit", "ratio", "target", "result", "of limit"]
    lines = []
    for res in results:
        for r in res.rows:
            verdict = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
            frac = r.fraction_of_limit
            lines.append(
                [
                    r.bench,
                    r.measure[:58],
                    _cell(r.hpcrl, r.unit),
                    r.peer[:30],
                    _cell(r.peer_value, r.unit),
                    r.unit,
                    f"{r.ratio:.2f}x" if r.ratio else "-",
                    r.target_text[:26],
                    verdict,
                    f"{frac:.0%}" if frac else "-",
                ]
            )
        for note in res.notes:
            if "failed" in note or "raised" in note:
                lines.append([res.name, note[:100], "", "", "", "", "", "", "ERROR", ""])
    widths = [max(len(h), *(len(x[i]) for x in lines)) if lines else len(h) for i, h in enumerate(header)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for x in lines:
        print("  ".join(c.ljust(w) for c, w in zip(x, widths)))


def main(argv: list[str] | None = None) -> int:
    """Command line: run the selected benchmarks, print the table, write the page and charts."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes (< 5 min); the page goes to results/suite/quick")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--report-only", action="store_true", help="rebuild the page from saved results")
    p.add_argument("--no-page", action="store_true", help="do not write the markdown page and charts")
    p.add_argument("--max-load", type=float, default=None, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=1800.0, help="longest wait per benchmark (s) with --max-load")
    args = p.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    if args.list:
        for name, (_, desc) in BENCHMARKS.items():
            print(f"{name:<11} {desc}")
        return 0
    t0 = time.time()
    if not args.report_only:
        run_benchmarks(names, args.quick, max_load=args.max_load, max_wait=args.max_wait)
    results = load_saved(args.quick)
    shown = [r for r in results if r.name in names] if args.only else results
    print_table(shown)
    if not args.no_page:
        from benchmarks.report import write_page

        page = write_page(results, args.quick)
        print(f"\npage: {page.relative_to(ROOT)}")
    print(f"suite time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
