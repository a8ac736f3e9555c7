"""Memory per role of a 64-rank CartPole job: resident set size of every rank, sampled from /proc.

    python -m benchmarks.bench_memory [--quick] [--ranks 64] [--frames 70000]

Layout: ``mpiexec -n 64``: rank 0 trains (PPO, torch), rank 1 runs inference (torch) for 62 actor ranks
of 8 CartPole envs each; actors get actions from the inference rank, so they never import torch
(numpy + gymnasium + mpi4py only). ``training.batch_size=8`` keeps one update at 1024 rows.

While the job runs, every process whose environment carries this run's marker variable is sampled every
0.5 s: ``VmRSS`` and ``VmHWM`` (peak RSS) from ``/proc/<pid>/status``, and every 2 s the proportional set
size (``Pss`` from ``/proc/<pid>/smaps_rollup``, shared library pages split between the processes that
map them). Its rank comes from ``PMI_RANK`` and its role from hpcrl's topology. Target: every actor
rank's peak RSS <= 150 MB; and the 64-rank job must finish (it fits a 2-core machine with 24 GiB).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

from benchmarks.common import CARTPOLE_YAML, BenchResult, Context, Row, bench_main, proc_status_kb, run_hpcrl_job

__all__ = ["RssSampler", "main", "run"]

TARGET_ACTOR_MB = 150.0
MARKER = "HPCRL_BENCH_MEMORY"


def _pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        k, _, v = item.partition(b"=")
        if k:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


class RssSampler(threading.Thread):
    """Samples VmRSS / VmHWM / Pss of every process carrying ``MARKER=token`` (an MPI rank: has ``PMI_RANK``).

    Args:
        token: the marker value of this job.
        interval: seconds between RSS samples (Pss every 4th sample).
    """

    def __init__(self, token: str, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.token = token
        self.interval = interval
        self.stop_event = threading.Event()
        self.ranks: dict[int, dict[str, Any]] = {}
        self.pids: dict[int, int] = {}
        self.peak_total_rss_kb = 0
        self.peak_total_pss_kb = 0

    def _discover(self) -> None:
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in self.pids.values():
                continue
            env = _environ(pid)
            if env.get(MARKER) == self.token and "PMI_RANK" in env:
                try:
                    exe = os.readlink(f"/proc/{pid}/exe")
                except OSError:
                    continue
                if "python" in Path(exe).name:
                    self.pids[int(env["PMI_RANK"])] = pid

    def run(self) -> None:
        """Sample until :meth:`stop`."""
        i = 0
        while not self.stop_event.is_set():
            if i % 4 == 0:
                self._discover()
            total_rss = total_pss = 0
            for rank, pid in list(self.pids.items()):
                st = proc_status_kb(pid, ("VmRSS", "VmHWM"))
                if not st:
                    continue
                rec = self.ranks.setdefault(rank, {"pid": pid, "rss_kb": 0, "hwm_kb": 0, "pss_kb": 0})
                rec["rss_kb"] = max(rec["rss_kb"], st.get("VmRSS", 0))
                rec["hwm_kb"] = max(rec["hwm_kb"], st.get("VmHWM", 0))
                total_rss += st.get("VmRSS", 0)
                if i % 4 == 0:
                    pss = _pss_kb(pid)
                    if pss is not None:
                        rec["pss_kb"] = max(rec["pss_kb"], pss)
                        total_pss += pss
            self.peak_total_rss_kb = max(self.peak_total_rss_kb, total_rss)
            self.peak_total_pss_kb = max(self.peak_total_pss_kb, total_pss)
            i += 1
            self.stop_event.wait(self.interval)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self.stop_event.set()
        self.join(timeout=10)


def run(ctx: Context) -> BenchResult:
    """Run the job, sample memory, build the rows (actor peak RSS vs 150 MB; the job completes)."""
    from hpcrl.api import config
    from hpcrl.comm.topology import Topology

    ranks = ctx.opt("ranks", 16 if ctx.quick else 64)
    frames = ctx.opt("frames", 20_000 if ctx.quick else 70_000)
    overrides = [
        f"experiment.total_frames={frames}",
        "layout.inference=1",
        "training.batch_size=8",
        "run.checkpoint_every_seconds=0",
        "run.heartbeat_seconds=600",
    ]
    cfg = config.load(CARTPOLE_YAML, overrides)
    topo = Topology.build(cfg.layout, ranks)
    res = BenchResult("memory")
    token = uuid.uuid4().hex
    sampler = RssSampler(token)
    sampler.start()
    error = None
    job = None
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-memory-") as tmp:
        try:
            job = run_hpcrl_job(
                CARTPOLE_YAML, overrides, Path(tmp) / "run", ranks=ranks, timeout=900, extra_env={MARKER: token}
            )
        except RuntimeError as e:
            error = str(e)[-2000:]
        finally:
            sampler.stop()
    per_role: dict[str, list[dict[str, Any]]] = {}
    for rank, rec in sorted(sampler.ranks.items()):
        role = topo.role_of(rank)
        per_role.setdefault(role, []).append({"rank": rank, **rec})
    summary: dict[str, Any] = {}
    for role, recs in per_role.items():
        hwm = [r["hwm_kb"] / 1024 for r in recs]
        pss = [r["pss_kb"] / 1024 for r in recs if r["pss_kb"]]
        summary[role] = {
            "ranks": len(recs),
            "peak_rss_mb_max": max(hwm),
            "peak_rss_mb_median": statistics.median(hwm),
            "pss_mb_max": max(pss) if pss else None,
            "pss_mb_median": statistics.median(pss) if pss else None,
        }
    res.data = {
        "ranks": ranks,
        "frames": frames,
        "layout": topo.describe(),
        "per_role": summary,
        "per_rank": {str(k): v for k, v in sorted(sampler.ranks.items())},
        "peak_total_rss_mb": sampler.peak_total_rss_kb / 1024,
        "peak_total_pss_mb": sampler.peak_total_pss_kb / 1024,
        "job_seconds": round(job.seconds, 1) if job else None,
        "startup_seconds": job.startup_seconds if job else None,
        "summary": job.summary if job else None,
        "error": error,
    }
    actor = summary.get("actor")
    res.rows.append(
        Row(
            "memory",
            f"actor rank peak RSS, max over {actor['ranks'] if actor else '?'} actors ({ranks} ranks)",
            actor["peak_rss_mb_max"] if actor else None,
            "target",
            TARGET_ACTOR_MB,
            "MB",
            higher_is_better=False,
            target=1.0,
            target_text=f"<= {TARGET_ACTOR_MB:.0f} MB",
            note=(
                f"median {actor['peak_rss_mb_median']:.0f} MB, PSS median {actor['pss_mb_median'] or 0:.0f} MB; "
                + ", ".join(f"{role} {s['peak_rss_mb_max']:.0f} MB" for role, s in summary.items() if role != "actor")
                if actor
                else (error or "no actor sampled").splitlines()[0][:300]
            ),
        ).finish()
    )
    done = job is not None and error is None
    res.rows.append(
        Row(
            "memory",
            f"mpiexec -n {ranks} CartPole run completes (seconds, launch to exit)",
            job.seconds if job else None,
            "",
            None,
            "s",
            higher_is_better=False,
            target_text="completes",
            passed=done,
            note=(
                f"{frames:,} frames; first trainer step {job.startup_seconds:.1f} s after launch; "
                f"total peak RSS {sampler.peak_total_rss_kb / 2**20:.1f} GiB, "
                f"PSS {sampler.peak_total_pss_kb / 2**20:.1f} GiB"
                if job and job.startup_seconds is not None
                else (error or "").splitlines()[0][:300]
                if error
                else ""
            ),
        )
    )
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--ranks", type=int, default=None, help="MPI ranks (default 64; quick 16)")
    p.add_argument("--frames", type=int, default=None, help="frames (default 70,000; quick 20,000)")


main = bench_main("memory", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
