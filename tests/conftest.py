"""Test configuration: one pytest run works serially and under ``mpiexec -n N python -m mpi4py -m pytest``.

Under a launcher (world size > 1): pytest-mpi's ``--with-mpi`` is implied, only rank 0
reports, and the first failing test on any rank calls ``MPI_Abort`` so no rank is left
waiting in a collective (a hang would otherwise last until the timeout). MPI tests
(``@pytest.mark.mpi``) run first, on every rank; the serial tests then run once, on
rank 0, while the other ranks wait in a sleeping (not spinning) barrier. Tests that
launch their own ``mpiexec`` subprocess use the ``clean_env`` fixture so the child job
does not inherit this job's launcher variables.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # examples/ and benchmarks/ are importable in tests
    sys.path.insert(0, str(REPO))


def _world() -> Any:
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError):
        return None
    if MPI.Is_finalized():
        return None
    return MPI.COMM_WORLD


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    comm = _world()
    if comm is None or comm.size == 1:
        return
    config.option.with_mpi = True
    if comm.rank != 0:
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None:
            config.pluginmanager.unregister(reporter)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    comm = _world()
    if comm is None or comm.size == 1:
        return
    items.sort(key=lambda it: 0 if it.get_closest_marker("mpi") is not None else 1)
    if comm.rank != 0:
        skip = pytest.mark.skip(reason="serial test: runs on rank 0 only under MPI")
        for it in items:
            if it.get_closest_marker("mpi") is None:
                it.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    comm = _world()
    if comm is None or comm.size == 1:
        return
    req = comm.Ibarrier()  # wait for rank 0's serial tests without burning a core
    while not req.Test():
        time.sleep(0.02)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        comm = _world()
        if comm is not None and comm.size > 1:
            sys.stderr.write(
                f"\n[rank {comm.rank}/{comm.size}] {report.nodeid} FAILED ({report.when}):\n{report.longreprtext}\n"
            )
            sys.stderr.flush()
            comm.Abort(1)


def mpi_size() -> int:
    """World size of this pytest run (1 when not launched under MPI)."""
    comm = _world()
    return 1 if comm is None else int(comm.size)


_LAUNCHER_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "MPI_", "OMPI_", "PRTE_", "MPIR_", "I_MPI_", "SLURM_")


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for a subprocess (possibly its own ``mpiexec`` job), without this job's launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    # Open MPI (if ever swapped in) refuses root and oversubscription without these
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["PRTE_MCA_rmaps_default_mapping_policy"] = ":oversubscribe"
    return env


@pytest.fixture(scope="session")
def python_exe() -> str:
    """The Python interpreter of this test run (the venv's)."""
    return sys.executable


@pytest.fixture(scope="session")
def mpiexec() -> str:
    """The mpiexec that belongs to this venv's MPI (never a system one that may not match)."""
    cand = Path(sys.executable).parent / "mpiexec"
    if cand.exists():
        return str(cand)
    import shutil

    found = shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec found")
    return found
