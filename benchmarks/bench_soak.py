"""Soak test: a 4-rank CartPole PPO job for a long time; is every rank's memory flat, are MPI requests bounded?

Run (defaults: 20 minutes, 4 ranks = trainer + inference + 2 actors, a sample every 5 s; ``--quick``: 3 minutes):

    python -m benchmarks.bench_soak [--quick] [--minutes 20] [--interval 5] [--warmup 2] [--ranks 4] [KEY=VALUE ...]

The driver launches ``mpiexec -n N python -m mpi4py -m hpcrl.run examples/cartpole/ppo.yaml`` with a frame
budget it never reaches, samples each rank's ``VmRSS`` from ``/proc/<pid>/status`` every ``--interval``
seconds, and after ``--minutes`` sends SIGTERM to mpiexec (a preemption: the job checkpoints and exits 0).

Requests: hpcrl cannot see MPICH's internal request queues (that needs the MPI_T tools interface, which
mpi4py does not wrap). What it can count are the requests hpcrl itself holds: every rank imports this module
(``experiment.imports=[benchmarks.bench_soak]``), which tracks the live ``SendChannel``/``RecvChannel``/
``ParamPublisher`` objects and, every interval, from the rank's own main loop (``RankContext.service``), records
the sends still in flight (``pending``), the posted receives, the control-plane outbox and the number of
Python objects the garbage collector tracks, one JSON line per sample in ``RUN_DIR/soak/rank-NNNN.jsonl``.

Verdict: after the warm-up, RSS is "flat" when every per-minute median stays within 5% of the first
post-warm-up minute's median (the slope of a least-squares line is printed too); request counts are "bounded"
when their maximum in the second half of the run exceeds the first half's by at most 2 (a leak keeps growing).
Rows: the worst rank's RSS drift (target <= 5 %), request counts bounded, and a clean exit on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

from benchmarks.common import MPIEXEC, PYTHON, ROOT, BenchResult, Context, Row, bench_main, hpcrl_env, proc_status_kb

__all__ = ["analyse_requests", "analyse_rss", "main", "run"]

PROBE_ENV = "HPCRL_SOAK_PROBE_SECONDS"


# ====================================================================== in-rank probe
def _install_probe() -> None:
    """Count hpcrl's outstanding requests from each rank's main loop (only when the driver asked for it)."""
    seconds = float(os.environ.get(PROBE_ENV, "0") or 0)
    if seconds <= 0:
        return
    import gc

    from hpcrl.comm import control
    from hpcrl.comm.channel import RecvChannel, SendChannel
    from hpcrl.comm.params import ParamPublisher
    from hpcrl.runtime.rank import RankContext

    sends: weakref.WeakSet[Any] = weakref.WeakSet()
    recvs: weakref.WeakSet[Any] = weakref.WeakSet()
    pubs: weakref.WeakSet[Any] = weakref.WeakSet()
    for cls, registry in ((SendChannel, sends), (RecvChannel, recvs), (ParamPublisher, pubs)):
        original = cls.__init__

        def init(self: Any, *args: Any, _original: Any = original, _registry: Any = registry, **kw: Any) -> None:
            _original(self, *args, **kw)
            _registry.add(self)

        cls.__init__ = init  # type: ignore[method-assign]

    service = RankContext.service
    state = {"next": 0.0, "file": None}

    def sample(ctx: Any) -> None:
        if state["file"] is None:
            d = Path(ctx.session.run_dir) / "soak"
            d.mkdir(exist_ok=True)
            state["file"] = open(d / f"rank-{ctx.rank:04d}.jsonl", "a")  # noqa: SIM115 - lives with the rank
        row = {
            "t": time.time(),
            "rank": ctx.rank,
            "role": ctx.role,
            "send_pending": sum(ch.pending for ch in list(sends) if not ch._closed),
            "recv_posted": sum(1 for ch in list(recvs) if ch._req is not None and not ch._closed),
            "param_pending": sum(p.pending for p in list(pubs)),
            "control_outbox": control.pending_obj(),
            "channels": len(sends) + len(recvs),
            "gc_objects": len(gc.get_objects()),
        }
        f = state["file"]
        f.write(json.dumps(row) + "\n")
        f.flush()

    def probed_service(self: Any) -> None:
        service(self)
        now = time.monotonic()
        if now >= state["next"]:
            state["next"] = now + seconds
            sample(self)

    RankContext.service = probed_service  # type: ignore[method-assign]


_install_probe()


# ====================================================================== driver
def rank_pids(run_dir: Path) -> dict[int, int]:
    """Rank -> pid of the job's Python ranks (their command line names the run dir; PMI_RANK in the environ)."""
    needle = f"run.dir={run_dir}".encode()
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        for var in env:
            if var.startswith(b"PMI_RANK="):
                out[int(var[9:])] = int(name)
    return out


def slope_per_hour(ts: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``ys`` over ``ts`` (seconds), per hour."""
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600.0


def analyse_rss(samples: list[tuple[float, int]], warmup_s: float, tolerance: float = 0.05) -> dict[str, Any]:
    """Flatness of one rank's RSS series ``[(seconds since start, KiB)]`` after ``warmup_s``."""
    post = [(t, kib / 1024.0) for t, kib in samples if t >= warmup_s]
    if len(post) < 2:
        return {"samples": len(post), "flat": None}
    minutes: dict[int, list[float]] = {}
    for t, mib in post:
        minutes.setdefault(int((t - warmup_s) // 60), []).append(mib)
    medians = [statistics.median(v) for _, v in sorted(minutes.items())]
    base = medians[0]
    worst = max(abs(m - base) / base for m in medians)
    return {
        "samples": len(post),
        "baseline_mib": round(base, 1),
        "end_mib": round(medians[-1], 1),
        "max_mib": round(max(m for _, m in post), 1),
        "worst_minute_drift_pct": round(100 * worst, 2),
        "slope_mib_per_hour": round(slope_per_hour([t for t, _ in post], [m for _, m in post]), 2),
        "flat": worst <= tolerance,
    }


def analyse_requests(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Max/last of each request count, and whether the second half's max exceeds the first half's."""
    keys = ("send_pending", "recv_posted", "param_pending", "control_outbox", "channels")
    if not rows:
        return {"samples": 0}
    half = len(rows) // 2
    out: dict[str, Any] = {"samples": len(rows)}
    bounded = True
    for k in keys:
        vals = [int(r[k]) for r in rows]
        out[k] = {"max": max(vals), "last": vals[-1]}
        if half and max(vals[half:]) > max(vals[:half]) + 2:  # a leak grows without bound; noise is +-1
            bounded = False
    gco = [int(r["gc_objects"]) for r in rows]
    out["gc_objects"] = {"first": gco[0], "last": gco[-1], "max": max(gco)}
    out["bounded"] = bounded
    return out


def soak(minutes: float, interval: float, warmup_min: float | None, ranks: int, overrides: list[str]) -> dict[str, Any]:
    """Run the job for ``minutes``, sampling every ``interval`` s; returns the verdict per rank (also printed)."""
    warmup_s = 60.0 * (warmup_min if warmup_min is not None else min(2.0, 0.2 * minutes))
    run_dir = Path(tempfile.mkdtemp(prefix="hpcrl-soak-")) / "run"
    env = hpcrl_env()
    env[PROBE_ENV] = str(interval)
    cmd = [
        MPIEXEC,
        "-n",
        str(ranks),
        PYTHON,
        "-m",
        "mpi4py",
        "-m",
        "hpcrl.run",
        str(ROOT / "examples/cartpole/ppo.yaml"),
        f"run.dir={run_dir}",
        "layout.inference=1",
        "experiment.total_frames=1000000000000",
        "experiment.imports=[benchmarks.bench_soak]",
        "run.progress=log",
        "run.log_interval_seconds=60",
        "run.checkpoint_every_seconds=60",
        "run.fresh=true",
        "--summary-json",
        str(run_dir.parent / f"{run_dir.name}-summary.json"),
        *overrides,
    ]
    log = open(run_dir.parent / f"{run_dir.name}.log", "w")  # noqa: SIM115
    print(
        f"soak: {ranks} ranks for {minutes:g} min, sample every {interval:g} s, "
        f"warm-up {warmup_s / 60:g} min; run dir {run_dir}; log {log.name}",
        flush=True,
    )
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    rss: dict[int, list[tuple[float, int]]] = {}
    pids: dict[int, int] = {}
    end = t0 + 60.0 * minutes
    next_report = t0 + 60.0
    try:
        while time.monotonic() < end and proc.poll() is None:
            if len(pids) < ranks:
                pids = rank_pids(run_dir)
            now = time.monotonic() - t0
            for rank, pid in pids.items():
                kib = proc_status_kb(pid, ("VmRSS",)).get("VmRSS")
                if kib is not None:
                    rss.setdefault(rank, []).append((now, kib))
            if time.monotonic() >= next_report:
                next_report += 60.0
                cur = "  ".join(f"r{r}={s[-1][1] / 1024:.0f}MiB" for r, s in sorted(rss.items()) if s)
                print(f"  {now / 60:5.1f} min  RSS {cur}", flush=True)
            time.sleep(interval)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # preemption: checkpoint, exit 0
            rc = proc.wait(timeout=120)
        else:
            rc = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    requests: dict[int, list[dict[str, Any]]] = {}
    for path in sorted((run_dir / "soak").glob("rank-*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            requests[int(rows[0]["rank"])] = [r for r in rows if r["t"] - rows[0]["t"] >= warmup_s]
    roles = {r: rows[0]["role"] for r, rows in requests.items() if rows}
    summary_path = run_dir.parent / f"{run_dir.name}-summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    verdict: dict[str, Any] = {"exit_code": rc, "minutes": round((time.monotonic() - t0) / 60, 2), "ranks": {}}
    for rank in sorted(rss):
        verdict["ranks"][rank] = {
            "role": roles.get(rank, "?"),
            "rss": analyse_rss(rss[rank], warmup_s),
            "requests": analyse_requests(requests.get(rank, [])),
        }
    for key in ("frames", "fps", "trainer_steps", "reason", "dropped_fragments"):
        if key in summary:
            verdict[key] = summary[key]
    print(
        f"\nsoak result: exit code {rc}, {verdict['minutes']} min, frames {summary.get('frames')}, "
        f"fps {summary.get('fps')}, trainer steps {summary.get('trainer_steps')}, reason {summary.get('reason')}"
    )
    print(
        f"{'rank':>4} {'role':>9} {'base MiB':>9} {'end MiB':>8} {'max MiB':>8} {'drift %':>8} {'MiB/h':>7} "
        f"{'flat':>5} | {'send':>4} {'recv':>4} {'param':>5} {'ctrl':>4} {'bounded':>7} {'gc objects':>17}"
    )
    for rank, v in verdict["ranks"].items():
        r, q = v["rss"], v["requests"]
        reqs = (
            f"{q['send_pending']['max']:>4} {q['recv_posted']['max']:>4} {q['param_pending']['max']:>5} "
            f"{q['control_outbox']['max']:>4} {q['bounded']!s:>7} "
            f"{q['gc_objects']['first']:>8}->{q['gc_objects']['last']:<8}"
            if q.get("samples")
            else "(no probe samples)"
        )
        print(
            f"{rank:>4} {v['role']:>9} {r.get('baseline_mib', 0):>9} {r.get('end_mib', 0):>8} {r.get('max_mib', 0):>8} "
            f"{r.get('worst_minute_drift_pct', 0):>8} {r.get('slope_mib_per_hour', 0):>7} {r.get('flat')!s:>5} | {reqs}"
        )
    print(
        "(requests: the max over the post-warm-up samples of sends in flight, posted receives, parameter "
        "sends in flight and control-outbox sends, as held by hpcrl; MPICH's internal queues are not visible)"
    )
    verdict["flat"] = all(v["rss"].get("flat") for v in verdict["ranks"].values())
    verdict["bounded"] = all(v["requests"].get("bounded", False) for v in verdict["ranks"].values())
    print(
        f"RSS flat within 5% after warm-up on every rank: {verdict['flat']}; "
        f"request counts bounded: {verdict['bounded']}"
    )
    return {"verdict": verdict, "rss": {str(k): v for k, v in rss.items()}}


def run(ctx: Context) -> BenchResult:
    """Soak; rows: the worst rank's RSS drift vs 5 %, hpcrl's request counts bounded, exit 0 on SIGTERM."""
    minutes = ctx.opt("minutes", 3.0 if ctx.quick else 20.0)
    out = soak(minutes, ctx.opt("interval", 5.0), ctx.opt("warmup"), ctx.opt("ranks", 4), ctx.opt("overrides", []))
    v = out["verdict"]
    drifts = {r: x["rss"].get("worst_minute_drift_pct") for r, x in v["ranks"].items()}
    worst = max((d for d in drifts.values() if d is not None), default=None)
    roles = ", ".join(
        f"rank {r} ({x['role']}) {x['rss'].get('worst_minute_drift_pct')} %" for r, x in v["ranks"].items()
    )
    res = BenchResult("soak", data=out)
    label = f"{len(v['ranks'])} ranks, {v['minutes']:g} min"
    res.rows.append(
        Row(
            "soak",
            f"RSS drift after warm-up, worst rank ({label})",
            worst,
            "target",
            5.0,
            "%",
            higher_is_better=False,
            target_text="<= 5% (flat)",
            passed=bool(v["flat"]),
            note=roles,
        )
    )
    res.rows.append(
        Row(
            "soak",
            f"MPI requests held by hpcrl bounded ({label})",
            None,
            "",
            None,
            "",
            target_text="bounded",
            passed=bool(v["bounded"]),
            note="sends in flight, posted receives, parameter sends and control-outbox sends per rank: "
            "second half's maximum at most 2 above the first half's",
        )
    )
    res.rows.append(
        Row(
            "soak",
            f"job stopped by SIGTERM exits 0 ({label})",
            None,
            "",
            None,
            "",
            target_text="exit 0",
            passed=v["exit_code"] == 0,
            note=f"exit code {v['exit_code']}; {v.get('frames')} frames, {v.get('fps')} fps",
        )
    )
    return res


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=None, help="how long the job runs (default 20; quick 3)")
    p.add_argument("--interval", type=float, default=None, help="seconds between samples (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up minutes excluded (default min(2, 20%%))")
    p.add_argument("--ranks", type=int, default=None, help="MPI ranks (default 4: trainer, inference, 2 actors)")
    p.add_argument("overrides", nargs="*", help="extra key.path=value overrides for the job")


main = bench_main("soak", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
