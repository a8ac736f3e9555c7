"""Helpers for the fault tests: launch ``hpcrl.run`` jobs, find their ranks in /proc, inject faults, read results.

Every job runs ``tests/faults/fault.yaml`` (tiny task, tiny PPO) unless told otherwise, with
``tests/faults`` on ``PYTHONPATH`` so ``experiment.imports=[faulty]`` loads the fault components on
every rank. Jobs are identified in /proc by their ``run.dir=...`` argument, which is unique per test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FAULT_YAML = HERE / "fault.yaml"
PYTHON = sys.executable
MPIEXEC = str(Path(sys.executable).parent / "mpiexec")

__all__ = [
    "FAULT_YAML",
    "Job",
    "Result",
    "fault_env",
    "shutdown_killed",
    "scrubbed_env",
    "hpcrl_cmd",
    "run_job",
    "start_job",
    "rank_pids",
    "job_processes",
    "wait_until",
    "checkpoints",
    "trainer_stats",
    "corrupt_flip",
]


_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPI_", "OMPI_", "PRTE_", "MPIR_", "I_MPI_", "SLURM_")


def scrubbed_env() -> dict[str, str]:
    """This process's environment without MPI launcher variables (like the ``clean_env`` fixture, for any scope)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}


def fault_env(clean_env: dict[str, str]) -> dict[str, str]:
    """``clean_env`` plus ``tests/faults`` and the repo on ``PYTHONPATH`` (so ``import faulty`` works)."""
    env = dict(clean_env)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def hpcrl_cmd(run_dir: Path, *overrides: str, ranks: int = 0, config: Path = FAULT_YAML) -> list[str]:
    """The command line of one job: ``[mpiexec -n N] python -m mpi4py -m hpcrl.run CONFIG run.dir=... ...``."""
    cmd = [PYTHON, "-m", "mpi4py", "-m", "hpcrl.run", str(config), f"run.dir={run_dir}", *overrides]
    if ranks:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    return cmd


@dataclasses.dataclass
class Result:
    """A finished job: exit code, output, wall time."""

    rc: int
    out: str
    err: str
    seconds: float
    summary: dict[str, Any] | None = None
    """The run summary (``--summary-json``) when the job got that far."""

    @property
    def text(self) -> str:
        """stdout and stderr together."""
        return self.out + "\n" + self.err

    @property
    def finished(self) -> bool:
        """The run ended normally: exit 0, or the known shutdown flake (see :func:`shutdown_killed`)."""
        return self.rc == 0 or shutdown_killed(self)

    def explain(self) -> str:
        """The tail of the output, for assertion messages."""
        head = f"rc={self.rc} after {self.seconds:.1f}s"
        return f"{head}\n--- stdout ---\n{self.out[-3000:]}\n--- stderr ---\n{self.err[-6000:]}"


def shutdown_killed(res: Result) -> bool:
    """Exit 9 from mpiexec *after* the leader wrote its summary: Hydra SIGKILLed ranks still in MPI_Finalize.

    Cause: SAMPLE fragments still queued on rank 0 at exit sometimes make its
    MPI_Finalize fail ("being freed has 1 unmatched message(s)"); mpi4py ignores that, the rank exits without PMI
    finalize and Hydra kills the others. The run itself had finished; tolerated only where a test checks
    something else.
    """
    if res.rc != 9 or res.summary is None or "BAD TERMINATION" not in res.out:
        return False
    import warnings

    warnings.warn("mpiexec exited 9 after a finished run (ranks SIGKILLed in MPI_Finalize)", stacklevel=2)
    return True


def run_job(
    env: dict[str, str],
    run_dir: Path,
    *overrides: str,
    ranks: int = 0,
    timeout: float = 90,
    config: Path = FAULT_YAML,
    preexec_fn: Callable[[], None] | None = None,
    expect_fatal: bool = False,
) -> Result:
    """Run a job to completion (``subprocess.run`` with a hard timeout) and return its :class:`Result`.

    Args:
        env: the subprocess environment (see :func:`fault_env`).
        run_dir: the run directory (``run.dir``).
        *overrides: ``key.path=value`` overrides.
        ranks: 0 for one process, else ``mpiexec -n ranks``.
        timeout: hard limit in seconds (``subprocess.TimeoutExpired`` after it).
        config: the experiment YAML.
        preexec_fn: run in the child before exec (e.g. to set a resource limit).
        expect_fatal: the job is expected to abort with a ``FATAL:`` line; under mpiexec, a run whose output
            lacks it is run once more (Hydra can drop the aborting rank's last output, see
            docs/reliability.md "Other observations"), with a warning.
    """
    summary = run_dir.parent / f"{run_dir.name}-summary-{time.monotonic_ns()}.json"
    cmd = [*hpcrl_cmd(run_dir, *overrides, ranks=ranks, config=config), "--summary-json", str(summary)]
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
    )
    data = json.loads(summary.read_text()) if summary.exists() else None
    res = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - t0, data)
    if expect_fatal and ranks and res.rc != 0 and "FATAL:" not in res.text:
        import warnings

        warnings.warn(f"mpiexec dropped the aborting rank's output (rc={res.rc}); running the job again", stacklevel=2)
        return run_job(env, run_dir, *overrides, ranks=ranks, timeout=timeout, config=config, preexec_fn=preexec_fn)
    return res


class Job:
    """A running job (``Popen``); output goes to files so a chatty job never blocks on a full pipe."""

    def __init__(
        self, env: dict[str, str], run_dir: Path, *overrides: str, ranks: int = 0, config: Path = FAULT_YAML
    ) -> None:
        self.run_dir = run_dir
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(run_dir.parent / f"{run_dir.name}.stdout", "w+")
        self._err = open(run_dir.parent / f"{run_dir.name}.stderr", "w+")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            hpcrl_cmd(run_dir, *overrides, ranks=ranks, config=config),
            env=env,
            cwd=REPO,
            stdout=self._out,
            stderr=self._err,
            text=True,
            start_new_session=True,  # so a cleanup can kill the whole group
        )

    def output(self) -> str:
        """Everything written so far (stdout + stderr)."""
        self._out.flush()
        self._err.flush()
        return Path(self._out.name).read_text() + "\n" + Path(self._err.name).read_text()

    def finish(self, timeout: float) -> Result:
        """Wait for the job to end (kill its process group after ``timeout``) and return its :class:`Result`."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(self.proc.pid)
            rc = self.proc.wait(timeout=30)
        seconds = time.monotonic() - self.t0
        self._out.close()
        self._err.close()
        return Result(rc, Path(self._out.name).read_text(), Path(self._err.name).read_text(), seconds)

    def kill(self) -> None:
        """Kill the whole job (cleanup after a failed test)."""
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=30)
        if not self._out.closed:
            self._out.close()
            self._err.close()


def start_job(env: dict[str, str], run_dir: Path, *overrides: str, ranks: int = 0) -> Job:
    """Start a job in the background."""
    return Job(env, run_dir, *overrides, ranks=ranks)


def kill_group(pgid: int) -> None:
    """SIGKILL a process group we started (ignore it if gone)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------- /proc
def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def job_processes(run_dir: Path) -> dict[int, list[bytes]]:
    """Live processes whose command line names this job's run dir (mpiexec and every rank): pid -> argv."""
    needle = f"run.dir={run_dir}".encode()
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        argv = _read(f"/proc/{name}/cmdline").split(b"\0")
        if needle in argv:
            stat = _read(f"/proc/{name}/stat")
            state = stat.rsplit(b")", 1)[-1].split()[:1]
            if state != [b"Z"]:  # a zombie is already dead; only its parent has not reaped it yet
                found[int(name)] = argv
    return found


def rank_pids(run_dir: Path) -> dict[int, int]:
    """Rank -> pid of this job's Python ranks (from ``PMI_RANK`` in each process's environment)."""
    out = {}
    for pid in job_processes(run_dir):
        for var in _read(f"/proc/{pid}/environ").split(b"\0"):
            if var.startswith(b"PMI_RANK="):
                out[int(var[len(b"PMI_RANK=") :])] = pid
    return out


def wait_until(pred: Callable[[], Any], timeout: float, what: str, poll: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


# ---------------------------------------------------------------------- run dir
_CKPT = re.compile(r"ckpt-([0-9]+)\.h5")


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint files of a run, oldest first."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.iterdir() if _CKPT.fullmatch(p.name)), key=lambda p: int(p.name[5:-3]))


def trainer_stats(run_dir: Path, rank: int = 0) -> dict[str, Any]:
    """The ``trainer`` section of a rank's trace (``{step, frames, wall_time, stats: {key: array}}``)."""
    from hpcrl.storage.trace import read_trace

    return read_trace(run_dir / "traces" / f"rank-{rank:04d}.h5")["trainer"]  # type: ignore[no-any-return]


def corrupt_flip(path: Path, dataset: str, byte: int = 100) -> None:
    """Flip one bit inside the stored data of ``dataset`` (its first chunk) in an HDF5 file."""
    import h5py

    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + byte)
        b = fh.read(1)
        fh.seek(offset + byte)
        fh.write(bytes([b[0] ^ 0x04]))


def log_lines(text: str, needle: str) -> list[str]:
    """The lines of ``text`` that contain ``needle``."""
    return [line for line in text.splitlines() if needle in line]
