"""Helpers for tests that launch hpcrl as a subprocess (one process or its own ``mpiexec`` job)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import REPO

TINY = [
    "experiment.total_frames=3000",
    "actor.envs_per_actor=2",
    "actor.fragment_length=32",
    "run.progress=log",
    "run.log_interval_seconds=1",
    "run.heartbeat_seconds=60",
    "trainer.args.epochs=2",
    "trainer.args.minibatches=2",
]


def run_hpcrl(
    env: dict[str, str],
    run_dir: Path,
    *overrides: str,
    ranks: int = 0,
    config: str = "examples/cartpole/ppo.yaml",
    timeout: float = 120,
    mpiexec: str | None = None,
    hosts: str = "",
    ppn: int = 0,
    log_level: str = "",
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None, float]:
    """Run ``python -m hpcrl.run`` (under ``mpiexec -n ranks`` when ranks > 0); returns (process, summary, seconds).

    ``hosts`` (with ``ppn`` ranks per host, or ``n1:1,n2:1`` for a cyclic order) simulates nodes on this
    machine: ``mpiexec -launcher fork -hosts HOSTS [-ppn PPN]``; each host name is its own MPI node.
    ``log_level`` is passed as ``--log-level``.
    """
    summary = run_dir.parent / f"{run_dir.name}-summary-{time.monotonic_ns()}.json"
    cmd = [sys.executable, "-m", "mpi4py", "-m", "hpcrl.run", str(REPO / config), f"run.dir={run_dir}"]
    cmd += [*TINY, *overrides, "--summary-json", str(summary)]
    if log_level:
        cmd += ["--log-level", log_level]
    if ranks:
        launcher = mpiexec or str(Path(sys.executable).parent / "mpiexec")
        nodes = ["-launcher", "fork", "-hosts", hosts] + (["-ppn", str(ppn)] if ppn else []) if hosts else []
        cmd = [launcher, *nodes, "-n", str(ranks), *cmd]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    dt = time.monotonic() - t0
    data = json.loads(summary.read_text()) if summary.exists() else None
    return proc, data, dt


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    """The tail of a subprocess's output, for assertion messages."""
    return f"rc={proc.returncode}\n--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-5000:]}"
