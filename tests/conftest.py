"""Test configuration: one pytest run works serially and under ``mpiexec -n N python -m mpi4py -m pytest``.

Under a launcher (world size > 1): pytest-mpi's ``--with-mpi`` is implied, only rank 0
reports, and the first failing test on any rank calls ``MPI_Abort`` so no rank is left
waiting in a collective (a hang would otherwise last until the timeout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture
def serial_only() -> None:
    """Skip the test when running under a multi-rank launcher (subprocess tests run once, on 1 rank)."""
    if mpi_size() > 1:
        pytest.skip("runs only in the serial pytest run")


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
