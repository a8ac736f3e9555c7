"""What every benchmark shares: the result format, the command line, launching hpcrl and MPI jobs, load.

A benchmark is a module ``benchmarks/bench_<name>.py`` with a function ``run(ctx: Context) -> BenchResult``
and, for its own command line, ``main = bench_main(...)``. :class:`BenchResult` is the one result format:
the rows (hpcrl value, peer value, ratio, target, PASS/FAIL), free-form ``data`` for the details and
charts, and how it was measured (date, machine, command, load). :func:`save_result` writes it as
``benchmarks/results/<name>/<date>-<host kind>.json``; :func:`load_results` reads back the newest file
of every benchmark, which is what ``python -m benchmarks.report`` builds docs/performance.md from.

hpcrl jobs are launched as fresh subprocesses (one process or an ``mpiexec`` job) with
:func:`run_hpcrl_job`; MPI benchmark programs with :func:`run_mpi_module`; peers go through
:mod:`benchmarks.peers`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "CARTPOLE_YAML",
    "MPIEXEC",
    "PYTHON",
    "QUICK_RESULTS",
    "RESULTS",
    "ROOT",
    "BenchResult",
    "Context",
    "JobResult",
    "ResultError",
    "Row",
    "bench_main",
    "best",
    "first_error",
    "host_kind",
    "hpcrl_env",
    "load_avg",
    "load_results",
    "machine_info",
    "proc_status_kb",
    "run_benchmark",
    "run_hpcrl_job",
    "run_mpi_module",
    "save_result",
    "sb3_cartpole_params",
    "simulated_hosts",
    "wait_for_quiet",
    "write_json",
]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
"""Committed results: ``<name>/<date>-<host kind>.json``, the page's sources."""
QUICK_RESULTS = RESULTS / "quick"
"""Smoke results (``--quick``): same layout, gitignored, never on the page."""
PYTHON = sys.executable
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")
CARTPOLE_YAML = ROOT / "benchmarks" / "configs" / "cartpole_ppo.yaml"
RESULT_FORMAT = 1
_RUN_PATHS = ("checkpoint", "run_dir")
"""Summary keys that name files of a temporary run dir: never kept in a result file."""
_KIND_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ResultError(ValueError):
    """A result file that cannot be read as a benchmark result (the message names the file and the field)."""


@dataclass
class Row:
    """One line of the results table: hpcrl vs a peer (or vs a target) on one measure.

    ``ratio`` is hpcrl / peer when higher is better, peer / hpcrl when lower is better (so > 1
    always means hpcrl is ahead); ``target`` is the ratio hpcrl aims for (None: context only).
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
    """The 1-minute load average(s) while the row was measured, when it differs from the benchmark's."""

    def finish(self) -> Row:
        """Fill ``ratio`` and ``passed`` from the values; returns self."""
        if self.ratio is None and self.hpcrl and self.peer_value:
            self.ratio = self.hpcrl / self.peer_value if self.higher_is_better else self.peer_value / self.hpcrl
        if self.target is not None and self.passed is None:
            if self.hpcrl is None:
                self.passed = False  # hpcrl's side failed (the note says why)
            elif self.ratio is not None:
                self.passed = self.ratio >= self.target
            # else: no peer value (peer not installable): not judged
        return self

    @property
    def fraction_of_limit(self) -> float | None:
        """hpcrl's value as a fraction of the measured limit (higher-is-better rows only)."""
        if self.limit and self.hpcrl is not None and self.higher_is_better:
            return self.hpcrl / self.limit
        return None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


_ROW_FIELDS = {f.name for f in fields(Row)}


@dataclass
class BenchResult:
    """What one benchmark run returns and what a result file holds."""

    name: str
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    quick: bool = False
    date: str = ""
    """``YYYY-MM-DD`` when it was measured."""
    time: str = ""
    """ISO 8601 time (with the UTC offset) when the measurement started."""
    command: str = ""
    """The command line that measured it."""
    machine: dict[str, Any] = field(default_factory=dict)
    """:func:`machine_info` at the start."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON), the result file's content."""
        return {
            "format": RESULT_FORMAT,
            "name": self.name,
            "date": self.date,
            "time": self.time,
            "command": self.command,
            "quick": self.quick,
            "machine": self.machine,
            "load_start": list(self.load_start),
            "load_end": list(self.load_end),
            "seconds": self.seconds,
            "rows": [r.as_dict() for r in self.rows],
            "notes": self.notes,
            "data": self.data,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "result") -> BenchResult:
        """Inverse of :meth:`as_dict`.

        Raises:
            ResultError: not a result of this format, or a row with unknown or missing fields
                (the message names ``source`` and the field).
        """
        if not isinstance(d, dict) or d.get("format") != RESULT_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ResultError(f"{source}: not a benchmark result of format {RESULT_FORMAT} (format: {got!r})")
        for key in ("name", "date", "command", "machine", "rows"):
            if key not in d:
                raise ResultError(f"{source}: missing field {key!r}")
        rows = []
        for i, r in enumerate(d["rows"]):
            unknown = set(r) - _ROW_FIELDS
            if unknown:
                raise ResultError(f"{source}: rows[{i}] has unknown field(s) {sorted(unknown)}")
            try:
                rows.append(Row(**r))
            except TypeError as e:
                raise ResultError(f"{source}: rows[{i}]: {e}") from None
        return cls(
            name=str(d["name"]),
            rows=rows,
            data=dict(d.get("data", {})),
            notes=list(d.get("notes", [])),
            load_start=tuple(d.get("load_start", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            load_end=tuple(d.get("load_end", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
            seconds=float(d.get("seconds", 0.0)),
            quick=bool(d.get("quick", False)),
            date=str(d["date"]),
            time=str(d.get("time", "")),
            command=str(d["command"]),
            machine=dict(d["machine"]),
        )

    @property
    def shared(self) -> bool:
        """Whether other jobs ran on the machine while this was measured (``--shared-machine``)."""
        return bool(self.machine.get("shared"))


@dataclass
class Context:
    """What a benchmark run gets: the mode, its command-line options and the limits measured in this run."""

    quick: bool = False
    args: argparse.Namespace | None = None
    """The benchmark's own command-line options (None inside the suite: every option at its default)."""
    limits: dict[str, Any] | None = None

    def opt(self, name: str, default: Any = None) -> Any:
        """The command-line option ``name`` if given, else ``default``."""
        value = getattr(self.args, name, None) if self.args is not None else None
        return default if value is None else value

    def get_limits(self) -> dict[str, Any]:
        """The CartPole limits (:func:`benchmarks.bench_limits.measure_limits`), measured on first use."""
        if self.limits is None:
            from benchmarks.bench_limits import measure_limits

            self.limits = measure_limits(self.quick)
        return self.limits


# ====================================================================== machine and load
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


def _mem_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 0.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def host_kind() -> str:
    """A short name for this kind of machine, used in result file names: ``<cores>cpu`` (``HPCRL_BENCH_HOST_KIND``)."""
    kind = os.environ.get("HPCRL_BENCH_HOST_KIND") or f"{os.cpu_count() or 1}cpu"
    if not _KIND_RE.match(kind):
        raise ValueError(f"HPCRL_BENCH_HOST_KIND={kind!r}: expected letters, digits, '.', '_' or '-'")
    return kind


def machine_info(shared: bool = False) -> dict[str, Any]:
    """What the numbers are measured on: host kind, cores, memory, CPU model, versions; no host name."""
    import numpy

    info: dict[str, Any] = {
        "host_kind": host_kind(),
        "cpus": os.cpu_count(),
        "mem_gib": _mem_gib(),
        "cpu_model": _cpu_model(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "shared": bool(shared),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        info["mpi4py"] = version("mpi4py")
    except Exception:
        pass
    return info


def proc_status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """The ``keys`` (e.g. ``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status`` in KiB; empty if the process is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


# ====================================================================== result files
def write_json(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (temp file, fsync, rename); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _json_default(x: Any) -> Any:
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def save_result(res: BenchResult, results_dir: Path | None = None) -> Path:
    """Write ``res`` to ``<results_dir>/<name>/<date>-<host kind>.json`` (quick results go under ``results/quick``).

    One file per benchmark, day and kind of machine: a second run on the same day replaces the first.
    """
    root = results_dir or (QUICK_RESULTS if res.quick else RESULTS)
    kind = res.machine.get("host_kind") or host_kind()
    return write_json(root / res.name / f"{res.date}-{kind}.json", res.as_dict())


def load_results(names: list[str], results_dir: Path = RESULTS) -> list[BenchResult]:
    """The newest result file of each benchmark in ``names`` (in that order; benchmarks without one are left out).

    Newest = the latest ``time`` field, then the file name. Every file of a benchmark is read and checked.

    Raises:
        ResultError: a file that is not valid JSON or not a result of this format, or whose ``name`` is not its
            folder's (the message names the file).
    """
    out = []
    for name in names:
        folder = results_dir / name
        found: list[tuple[str, str, BenchResult]] = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            try:
                d = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ResultError(f"{rel}: not readable as JSON: {e}") from None
            res = BenchResult.from_dict(d, str(rel))
            if res.name != name:
                raise ResultError(f"{rel}: holds benchmark {res.name!r}, expected {name!r} (its folder)")
            res.data["_source"] = str(rel)
            found.append((res.time, path.name, res))
        if found:
            out.append(max(found, key=lambda x: (x[0], x[1]))[2])
    return out


# ====================================================================== running a benchmark
def run_benchmark(
    name: str, fn: Callable[[Context], BenchResult], ctx: Context, command: str, shared: bool = False
) -> BenchResult:
    """Run one benchmark and stamp its result (date, machine, command, load, seconds).

    A benchmark that raises becomes a result without rows and with the error in its notes, so one broken
    benchmark never loses the others' results.
    """
    t0 = time.time()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load0 = load_avg()
    machine = machine_info(shared)
    try:
        res = fn(ctx)
    except Exception as e:
        res = BenchResult(name)
        res.notes.append(f"benchmark raised {type(e).__name__}: {e}")
    res.name = name
    res.quick = ctx.quick
    res.date = started[:10]
    res.time = started
    res.command = command
    res.machine = machine
    res.load_start = load0
    res.load_end = load_avg()
    res.seconds = round(time.time() - t0, 1)
    return res


def _cell(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    if unit in ("fps", "MB") or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def print_rows(results: list[BenchResult]) -> None:
    """Print every row as a text table: measure, hpcrl, peer, ratio, target, PASS/FAIL, % of limit."""
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


def bench_main(
    name: str,
    fn: Callable[[Context], BenchResult],
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    worker: Callable[[argparse.Namespace], None] | None = None,
    worker_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> Callable[[list[str] | None], int]:
    """The command line of one benchmark: ``python -m benchmarks.bench_NAME [--quick] [--save] ...``.

    Args:
        name: the benchmark's name (its module is ``benchmarks.bench_NAME``).
        fn: the benchmark's ``run``.
        doc: the module docstring (its first line is the help text).
        add_arguments: adds the benchmark's own options (read in ``run`` with ``ctx.opt``).
        worker: the benchmark's MPI program: with ``--mpi-worker OUT`` (what :func:`run_mpi_module` passes)
            ``main`` calls it with the parsed ``mpi_worker`` path, ``quick`` and ``worker_arguments``' options.
        worker_arguments: adds the MPI program's own options.

    Returns:
        ``main(argv) -> exit code``: runs the benchmark, prints its rows, and with ``--save`` writes the result
        file (``benchmarks/results/NAME/...``, or ``benchmarks/results/quick/NAME/...`` with ``--quick``).
        The exit code is 1 when the benchmark raised or a row missed its target, else 0.
    """
    module = f"benchmarks.bench_{name}"

    def main(argv: list[str] | None = None) -> int:
        argv = list(sys.argv[1:] if argv is None else argv)
        if worker is not None and "--mpi-worker" in argv:
            w = argparse.ArgumentParser(prog=f"python -m mpi4py -m {module}")
            w.add_argument("--mpi-worker", required=True, metavar="OUT", help="JSON file rank 0 writes")
            w.add_argument("--quick", action="store_true")
            if worker_arguments is not None:
                worker_arguments(w)
            worker(w.parse_args(argv))
            return 0
        p = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or name).strip().splitlines()[0])
        p.add_argument("--quick", action="store_true", help="smoke sizes (numbers not meaningful)")
        p.add_argument("--save", action="store_true", help="write the result file under benchmarks/results/")
        p.add_argument(
            "--shared-machine", action="store_true", help="record that other jobs ran on the machine meanwhile"
        )
        if add_arguments is not None:
            add_arguments(p)
        args = p.parse_args(argv)
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        command = " ".join(["python", "-m", module, *argv])
        res = run_benchmark(name, fn, Context(quick=args.quick, args=args), command, shared=args.shared_machine)
        print_rows([res])
        for note in res.notes:
            print(f"note: {note}")
        if args.save:
            path = save_result(res)
            print(f"result: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        broken = not res.rows and any("raised" in n or "failed" in n for n in res.notes)
        return 1 if broken or any(r.passed is False for r in res.rows) else 0

    return main


def best(runs: list[dict[str, Any]], key: str, lowest: bool = False) -> float | None:
    """The best value of ``key`` over the runs that have it (highest, or lowest with ``lowest``)."""
    vals = [float(r[key]) for r in runs if r.get(key) is not None and "error" not in r]
    if not vals:
        return None
    return min(vals) if lowest else max(vals)


def first_error(runs: list[dict[str, Any]]) -> str:
    """The first line (at most 300 characters) of the first run's ``error``, or ``""``."""
    for r in runs:
        if "error" in r:
            lines = [ln.strip() for ln in str(r["error"]).strip().splitlines() if ln.strip()]
            picked = next((ln for ln in lines if "rror" in ln), lines[0] if lines else "error")
            return picked[:300]
    return ""


# ====================================================================== launching hpcrl and MPI programs
def hpcrl_env(threads: int = 1) -> dict[str, str]:
    """Environment for an hpcrl subprocess or mpiexec job: one thread, no inherited launcher variables."""
    from benchmarks.peers import peer_env

    env = peer_env(threads)
    env["PYTHONPATH"] = str(ROOT)
    env["MPIR_CVAR_NO_COLLECTIVE_FINALIZE"] = "1"
    return env


def run_mpi_module(
    module: str, ranks: int, args: list[str], timeout: float = 900.0, launcher_args: list[str] | None = None
) -> dict[str, Any]:
    """Run ``mpiexec -n ranks python -m mpi4py -m <module> --mpi-worker OUT args``; returns the JSON rank 0 wrote.

    ``launcher_args`` go to ``mpiexec`` before ``-n`` (e.g. ``simulated_hosts(2, 1)``).

    Raises:
        RuntimeError: the job failed, timed out or wrote no result (the message has the output's tail).
    """
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-mpi-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [MPIEXEC, *(launcher_args or []), "-n", str(ranks), PYTHON, "-m", "mpi4py", "-m", module]
        cmd += ["--mpi-worker", str(out), *args]
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=hpcrl_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            text, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            text, _ = proc.communicate()
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}\n{text[-2000:]}") from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
        result = json.loads(out.read_text())
    result["stdout"] = text[-4000:]
    return dict(result)


def simulated_hosts(nodes: int, per_node: int) -> list[str]:
    """``mpiexec`` (MPICH Hydra) arguments that start every rank here but on ``nodes`` simulated hosts.

    Each host name is its own MPI node: shared memory within a host, the network module between hosts.
    """
    return ["-launcher", "fork", "-hosts", ",".join(f"h{i + 1}" for i in range(nodes)), "-ppn", str(per_node)]


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
    launcher_args: list[str] | None = None,
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
        launcher_args: more ``mpiexec`` arguments, before ``-n`` (e.g. :func:`simulated_hosts`).

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
        cmd = [MPIEXEC, *(launcher_args or []), "-n", str(ranks), *cmd]
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
    summary = {k: v for k, v in json.loads(summary_path.read_text()).items() if k not in _RUN_PATHS}
    return JobResult(summary, t0, seconds, _step_walls(run_dir), rows_per_step, out[-2000:])


def _step_walls(run_dir: Path) -> list[float]:
    traces = sorted((run_dir / "traces").glob("rank-0000*.h5"))
    if not traces:
        return []
    from hpcrl.storage.trace import read_trace

    return [float(x) for x in read_trace(traces[0])["trainer"]["wall_time"]]


def sb3_cartpole_params(total_frames: int, seed: int = 1, threshold: float = float("inf")) -> dict[str, Any]:
    """The CartPole PPO config (benchmarks/configs/cartpole_ppo.yaml) as the peer scripts' parameters."""
    from benchmarks.training import sb3_params
    from hpcrl.api import config

    return sb3_params(config.load(CARTPOLE_YAML), seed, total_frames, threshold)
