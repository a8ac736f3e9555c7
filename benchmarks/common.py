"""Shared pieces of the benchmark suite (``python -m benchmarks.run``): result rows, subprocess launches, load.

Every suite benchmark module (``bench_mpi``, ``bench_scaling``, ``bench_startup``, ``bench_pong``,
``bench_memory`` and the wrappers in ``benchmarks/run.py``) returns a :class:`BenchResult`: a list of
:class:`Row` (hpcrl value, peer value, ratio, target, PASS/FAIL) plus free-form ``data`` for charts,
and the machine load when it ran. hpcrl jobs are launched as fresh subprocesses (one process or an
``mpiexec`` job) with :func:`run_hpcrl_job`; peers go through :mod:`benchmarks.peers`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CARTPOLE_YAML",
    "MPIEXEC",
    "PYTHON",
    "RESULTS",
    "ROOT",
    "BenchResult",
    "JobResult",
    "Row",
    "hpcrl_env",
    "load_avg",
    "run_hpcrl_job",
    "sb3_cartpole_params",
    "wait_for_quiet",
    "write_json",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "suite"
PYTHON = sys.executable
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
CARTPOLE_YAML = ROOT / "benchmarks" / "configs" / "cartpole_ppo.yaml"


@dataclass
class Row:
    """One line of the results table: hpcrl vs a peer (or vs a limit) on one measure.

    ``ratio`` is hpcrl / peer when higher is better, peer / hpcrl when lower is better (so > 1
    always means hpcrl is ahead); ``target`` is the ratio the issue asks for (None: context only).
    """

    bench: str
    measure: str
    hpcrl: float | None
    peer: str
    peer_value: float | None
    unit: str
    higher_is_better: bool = True
    target: float | None = None
    target_text: str = ""
    note: str = ""
    limit: float | None = None
    """The measured ceiling for hpcrl's value on this machine (same unit), when one applies."""
    ratio: float | None = None
    passed: bool | None = None
    load: str = ""

    def finish(self) -> Row:
        """Fill ``ratio`` and ``passed`` from the values; returns self."""
        if self.ratio is None and self.hpcrl and self.peer_value:
            self.ratio = self.hpcrl / self.peer_value if self.higher_is_better else self.peer_value / self.hpcrl
        if self.target is not None:
            self.passed = self.ratio is not None and self.ratio >= self.target
        return self

    @property
    def fraction_of_limit(self) -> float | None:
        """hpcrl's value as a fraction of the measured limit (higher-is-better rows only)."""
        if self.limit and self.hpcrl is not None and self.higher_is_better:
            return self.hpcrl / self.limit
        return None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        d = asdict(self)
        d["fraction_of_limit"] = self.fraction_of_limit
        return d


@dataclass
class BenchResult:
    """What one suite benchmark returns."""

    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    quick: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return {
            "name": self.name,
            "rows": [r.as_dict() for r in self.rows],
            "data": self.data,
            "notes": self.notes,
            "load_start": list(self.load_start),
            "load_end": list(self.load_end),
            "seconds": self.seconds,
            "quick": self.quick,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        """Inverse of :meth:`as_dict`."""
        rows = []
        for r in d.get("rows", []):
            r = {k: v for k, v in r.items() if k != "fraction_of_limit"}
            rows.append(Row(**r))
        return cls(
            name=d["name"],
            rows=rows,
            data=d.get("data", {}),
            notes=list(d.get("notes", [])),
            load_start=tuple(d.get("load_start", (0, 0, 0))),  # type: ignore[arg-type]
            load_end=tuple(d.get("load_end", (0, 0, 0))),  # type: ignore[arg-type]
            seconds=float(d.get("seconds", 0.0)),
            quick=bool(d.get("quick", False)),
        )


def load_avg() -> tuple[float, float, float]:
    """The 1/5/15-minute load averages."""
    a, b, c = os.getloadavg()
    return round(a, 2), round(b, 2), round(c, 2)


def wait_for_quiet(max_load: float, max_wait: float, poll: float = 15.0) -> tuple[float, float, float]:
    """Wait until the 1-minute load average is below ``max_load`` (at most ``max_wait`` seconds).

    Returns:
        The load averages when the wait ended (quiet or not).
    """
    t_end = time.monotonic() + max_wait
    while True:
        load = load_avg()
        if load[0] < max_load or time.monotonic() >= t_end:
            return load
        print(f"  [load {load[0]:.2f} >= {max_load}: waiting]", flush=True)
        time.sleep(min(poll, max(0.0, t_end - time.monotonic())))


def hpcrl_env(threads: int = 1) -> dict[str, str]:
    """Environment for an hpcrl subprocess or mpiexec job: one thread, no inherited launcher variables."""
    from benchmarks.peers import peer_env

    env = peer_env(threads)
    env["PYTHONPATH"] = str(ROOT)
    env["MPIR_CVAR_NO_COLLECTIVE_FINALIZE"] = "1"
    return env


@dataclass
class JobResult:
    """One finished hpcrl job launched by :func:`run_hpcrl_job`."""

    summary: dict[str, Any]
    launch_epoch: float
    """``time.time()`` just before the subprocess was started."""
    seconds: float
    """Wall seconds from launch to exit."""
    step_walls: list[float]
    """``time.time()`` of every trainer step on rank 0 (from its trace; empty without a trace)."""
    rows_per_step: int
    stdout_tail: str = ""

    @property
    def first_step_epoch(self) -> float | None:
        """``time.time()`` of the first trainer step, or None."""
        return self.step_walls[0] if self.step_walls else None

    @property
    def steady_trained_fps(self) -> float:
        """Rows trained per second between the first and the last trainer step (start-up and drain excluded).

        Falls back to :attr:`trained_fps` with fewer than 3 trainer steps.
        """
        w = self.step_walls
        if len(w) < 3 or w[-1] <= w[0]:
            return self.trained_fps
        return (len(w) - 1) * self.rows_per_step / (w[-1] - w[0])

    @property
    def fps(self) -> float:
        """The run's own frames per second (env frames over the training span, as the summary prints)."""
        return float(self.summary.get("fps") or 0.0)

    @property
    def trained_fps(self) -> float:
        """Frames that went into PPO updates per second (dropped stale fragments excluded)."""
        wall = float(self.summary.get("wall_seconds") or 0.0)
        return int(self.summary.get("trainer_steps") or 0) * self.rows_per_step / wall if wall > 0 else 0.0

    @property
    def startup_seconds(self) -> float | None:
        """Seconds from launch to the end of the first trainer step."""
        return self.first_step_epoch - self.launch_epoch if self.first_step_epoch is not None else None


def run_hpcrl_job(
    config: Path | str,
    overrides: list[str],
    run_dir: Path,
    ranks: int = 0,
    timeout: float = 600.0,
    rows_per_step: int = 1024,
    extra_env: dict[str, str] | None = None,
) -> JobResult:
    """Run ``python -m hpcrl.run`` (under ``mpiexec -n ranks`` when ``ranks > 0``) in a fresh subprocess.

    The job runs in its own session and is killed as a group on timeout.

    Args:
        config: experiment YAML.
        overrides: ``key.path=value`` overrides.
        run_dir: a fresh run directory.
        ranks: MPI ranks (0: one process, no launcher).
        timeout: seconds before the job is killed.
        rows_per_step: rows per PPO update (for :attr:`JobResult.trained_fps`).
        extra_env: more environment variables.

    Returns:
        The job's summary and timings.

    Raises:
        RuntimeError: the job failed, timed out or wrote no summary (the message has its output tail).
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir.parent / f"{run_dir.name}-summary.json"
    summary_path.unlink(missing_ok=True)
    cmd = [PYTHON, "-m", "mpi4py", "-m", "hpcrl.run", str(config), f"run.dir={run_dir}", "run.fresh=true"]
    cmd += ["run.progress=off", *overrides, "--summary-json", str(summary_path), "--log-level", "WARNING"]
    if ranks > 0:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    env = hpcrl_env()
    env.update(extra_env or {})
    t0 = time.time()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise RuntimeError(f"hpcrl job timed out after {timeout:.0f} s: {' '.join(cmd)}\n{out[-3000:]}") from None
    seconds = time.time() - t0
    if proc.returncode != 0 or not summary_path.exists():
        raise RuntimeError(f"hpcrl job failed (exit {proc.returncode}): {' '.join(cmd)}\n{out[-3000:]}")
    summary = json.loads(summary_path.read_text())
    return JobResult(summary, t0, seconds, _step_walls(run_dir), rows_per_step, out[-2000:])


def _step_walls(run_dir: Path) -> list[float]:
    traces = sorted((run_dir / "traces").glob("rank-0000*.h5"))
    if not traces:
        return []
    from hpcrl.storage.trace import read_trace

    return [float(x) for x in read_trace(traces[0])["trainer"]["wall_time"]]


def sb3_cartpole_params(total_frames: int, seed: int = 1, threshold: float = float("inf")) -> dict[str, Any]:
    """The CartPole PPO config (benchmarks/configs/cartpole_ppo.yaml) as the peer scripts' parameters."""
    from benchmarks.bench_sb3 import sb3_params
    from hpcrl.api import config

    return sb3_params(config.load(CARTPOLE_YAML), seed, total_frames, threshold)


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/suite/<name>.json`` atomically; returns the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
