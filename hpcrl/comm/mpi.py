"""Loading MPI lazily with a clear error, world-size hints from the launcher, and a one-line abort."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from mpi4py import MPI as _MPI

__all__ = [
    "SIZE_VARS",
    "MPINotAvailableError",
    "load_mpi",
    "get_world",
    "world_size_from_env",
    "node_name",
    "abort",
]

_HINT = (
    "hpcrl needs an MPI library: pip install 'hpcrl[mpich]' (laptops/CI) or load your site MPI "
    "(module load openmpi) before starting Python; MPI4PY_LIBMPI=/path/to/libmpi.so forces a library"
)

#: Environment variables launchers set to the world size, in the order they are trusted.
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS_WORLD", "SLURM_NTASKS", "SLURM_NPROCS")


class MPINotAvailableError(RuntimeError):
    """mpi4py is missing or cannot load an MPI library (the message says how to install one)."""


def load_mpi() -> Any:
    """Import and return the ``mpi4py.MPI`` module (initialising MPI on first use).

    Returns:
        The ``mpi4py.MPI`` module.

    Raises:
        MPINotAvailableError: mpi4py is not installed or finds no MPI library; the message says how to fix it.
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise MPINotAvailableError(f"{_HINT} (import failed: {e})") from e
    except RuntimeError as e:  # mpi4py 4: "cannot load MPI library"
        raise MPINotAvailableError(f"{_HINT} ({e})") from e
    return MPI


def get_world() -> _MPI.Intracomm:
    """``MPI.COMM_WORLD``, loading mpi4py lazily.

    Returns:
        The world communicator (size 1 when Python was not started by an MPI launcher).

    Raises:
        MPINotAvailableError: no usable MPI (see :func:`load_mpi`).
    """
    return load_mpi().COMM_WORLD  # type: ignore[no-any-return]


def world_size_from_env() -> int | None:
    """The world size the launcher announced in the environment, without initialising MPI.

    Reads ``PMI_SIZE`` (MPICH Hydra), ``OMPI_COMM_WORLD_SIZE`` (Open MPI), ``PMIX_SIZE``,
    ``MPI_LOCALNRANKS_WORLD`` and ``SLURM_NTASKS``/``SLURM_NPROCS`` (``srun``), in that order. This is a hint
    only (e.g. to validate a layout early or to decide whether to import MPI at all): the communicator's
    size is the truth.

    Returns:
        The first positive integer found, or ``None`` when no launcher variable is set.
    """
    for var in SIZE_VARS:
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return None


def node_name() -> str:
    """This process's host as the launcher names it, else its host name.

    MPICH's Hydra sets ``PMI_HOSTNAME`` to the node name it launched on (from ``-hosts``, a host file or the
    batch system), which is the name its own error banner prints (``PID n RUNNING AT <node>``); hpcrl's
    messages use the same name so the two can be matched.
    """
    import socket

    return os.environ.get("PMI_HOSTNAME", "").strip() or socket.gethostname()


def abort(comm: Any, message: str, code: int = 1) -> NoReturn:
    """Write one line to stderr and abort every rank of ``comm`` (``MPI_Abort``).

    Use it for unrecoverable errors on one rank: the other ranks would otherwise wait forever in a
    receive or collective. The line is prefixed with the rank, e.g. ``hpcrl: rank 3/8: aborting: ...``.

    Args:
        comm: the communicator to abort (normally ``COMM_WORLD``).
        message: the reason; newlines are folded into one line.
        code: the exit code the launcher reports.
    """
    text = " ".join(str(message).split())
    try:
        where = f"rank {comm.Get_rank()}/{comm.Get_size()}"
    except Exception:  # a broken communicator must not stop the abort
        where = "rank ?"
    try:
        sys.stderr.write(f"hpcrl: {where}: aborting: {text}\n")
        sys.stderr.flush()
    finally:
        comm.Abort(code)
    raise SystemExit(code)  # pragma: no cover - Abort does not return
