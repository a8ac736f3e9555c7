"""Entry point: ``python -m hpcrl.run exp.yaml [key.path=value ...]``.

One process runs every role inline (the embedded default). Under an MPI launcher,
``mpiexec -n N python -m mpi4py -m hpcrl.run exp.yaml``, each rank takes the role the
topology gives it. Any uncaught exception on any rank aborts the whole job with one
line naming the rank, its role and host.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
import time
import traceback
from types import TracebackType
from typing import Any

from hpcrl.api import config

__all__ = ["main", "launched_under_mpi", "world_size_mismatch"]

log = logging.getLogger("hpcrl.run")

#: environment variables that MPI launchers (Hydra, PRRTE/ORTE, PMIx, SLURM) set in every rank.
_LAUNCHER_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS", "PALS_RANKID")


def _launcher_rank() -> int:
    """This process's rank as the launcher announced it (0 when not launched under MPI)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        raw = os.environ.get(var, "").strip()
        if raw.isdigit():
            return int(raw)
    return 0


def launched_under_mpi() -> bool:
    """Whether an MPI launcher started this process (so MPI must be initialised)."""
    if any(v in os.environ for v in _LAUNCHER_VARS):
        return True
    ntasks = os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS")
    return "SLURM_PROCID" in os.environ and ntasks is not None and ntasks.isdigit() and int(ntasks) > 1


def world_size_mismatch(world_size: int) -> str | None:
    """Why a 1-rank MPI world contradicts the launcher's environment, or None when it does not.

    ``srun --mpi=none``, ``python`` run in a batch script without ``srun``, or a launcher whose MPI is
    not the one mpi4py loaded, all start N independent 1-rank worlds that would each train alone on
    the same run dir.
    """
    if world_size != 1:
        return None
    from hpcrl.comm.mpi import SIZE_VARS

    for var in SIZE_VARS:
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 1:
            return (
                f"the launcher announced {var}={raw} ranks but MPI_COMM_WORLD has 1 rank, so every process would "
                "train alone on the same run dir. Causes: srun without this MPI's PMI plugin (--mpi=pmi2 for "
                "MPICH-family MPIs incl. the mpich wheel, --mpi=pmix for Open MPI), python started in a batch "
                "script without srun, or mpi4py loading another MPI than the launcher's (see MPI4PY_LIBMPI)"
            )
    return None


def _setup_logging(rank: int, role: str, level: str) -> None:
    fmt = f"%(asctime)s [rank {rank} {role}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, datefmt="%H:%M:%S", force=True)


def _install_abort_hook(comm: Any, rank: int, role: str) -> None:
    """On an uncaught exception: print one rank-prefixed traceback, then MPI_Abort the job.

    The FATAL line and the traceback are also appended to ``RUN_DIR/errors.log`` once this run holds its
    run dir (never into a run dir that another run holds; created 0600, never written through a symlink;
    when it cannot be written, stderr says so and the abort goes on), and the run dir lock is released
    before the abort.

    Nothing in the hook may stop it from reaching ``MPI_Abort``: a rank whose launcher proxy died (its node's
    proxy was lost) writes into a closed pipe, and its ``MPI_Abort`` fails; a hook that raised there left the
    rank to finish Python and spin forever in ``MPI_Finalize`` with its peers gone. If ``MPI_Abort`` returns,
    the rank exits at once with status 1.
    """
    from hpcrl.comm.mpi import node_name
    from hpcrl.runtime.session import active_run_dir
    from hpcrl.storage.files import append_private
    from hpcrl.storage.rundir import release_all

    host = node_name()

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        try:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            prefix = f"[rank {rank} {role} {host}]"
            said = str(exc)
            ending = "" if said.endswith("aborting the job") else " -- aborting the job"  # RankFailure says it
            line = f"{prefix} FATAL: {exc_type.__name__}: {said}{ending}\n"
            note = ""
            run_dir = active_run_dir()
            if run_dir is not None:  # the launcher may drop the last output of a rank it kills: keep a copy
                path = os.path.join(run_dir, "errors.log")
                try:
                    append_private(path, f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}{text}\n")
                except OSError as e:
                    why = "it is a symbolic link, not followed" if e.errno == errno.ELOOP else (e.strerror or str(e))
                    note = f"{prefix} could not write {path} ({why}); aborting anyway\n"
            try:
                sys.stderr.write("".join(f"{prefix} {t}\n" for t in text.rstrip().splitlines()))
                sys.stderr.write(line + note)
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr is a closed pipe (the launcher's proxy is gone)
                pass
            release_all()
            time.sleep(0.2)  # let stderr reach the launcher before MPI_Abort kills the job
        finally:
            try:
                comm.Abort(1)
            finally:  # MPI_Abort fails when the launcher's proxy is gone: never fall through to MPI_Finalize
                os._exit(1)

    sys.excepthook = hook


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m hpcrl.run",
        description="Train an hpcrl experiment (one process, or every rank of an MPI job).",
    )
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. experiment.total_frames=50000")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--log-level", default=os.environ.get("HPCRL_LOG_LEVEL", "INFO"))
    p.add_argument("--summary-json", default=None, help="also write the final summary to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the experiment; returns the process exit code."""
    args = _parse(argv)
    from hpcrl.runtime.session import StopFlag, install_signal_handlers

    try:
        cfg = config.load(args.config, args.overrides)
        from hpcrl.tensorboard import require

        require(cfg)  # on every rank (they all stop here together), before any communication
    except config.ConfigError as e:
        if _launcher_rank() == 0:  # every rank parses the config; one message is enough
            sys.stderr.write(f"hpcrl: config error: {e}\n")
        return 2
    if args.print_config:
        sys.stdout.write(config.dump(cfg))
        return 0
    stop = StopFlag()
    install_signal_handlers(stop)
    if not launched_under_mpi():
        _setup_logging(0, "local", args.log_level)
        return _run_local(cfg, stop, args.summary_json)
    # MPICH (the mpich wheel) under srun --mpi=pmi2 can hang in a collective MPI_Finalize after a clean
    # shutdown (measured); hpcrl has drained all traffic and passed its own barrier by then.
    os.environ.setdefault("MPIR_CVAR_NO_COLLECTIVE_FINALIZE", "1")
    from hpcrl.comm.mpi import MPINotAvailableError, get_world

    try:
        comm = get_world()
    except MPINotAvailableError as e:
        sys.stderr.write(f"hpcrl: {e}\n")
        return 2
    problem = world_size_mismatch(comm.size)
    if problem is not None:
        sys.stderr.write(f"hpcrl: launch error: {problem}\n")
        return 2
    if comm.size == 1:
        _setup_logging(0, "local", args.log_level)
        return _run_local(cfg, stop, args.summary_json)
    from hpcrl.api.specs import mpi_refusal, trainer_counts

    refused = mpi_refusal(cfg)  # every rank parsed the same config: all stop here together, before any communication
    if refused is not None:
        if comm.rank == 0:
            sys.stderr.write(f"hpcrl: config error: {refused}; this job has {comm.size} MPI ranks\n")
            sys.stderr.flush()
        from mpi4py import MPI

        MPI.Finalize()  # a clean end on every rank: without it, mpi4py turns exit status 2 into an MPI_Abort
        return 2
    from hpcrl.comm.mpi import node_name
    from hpcrl.comm.nodes import Discover_nodes
    from hpcrl.comm.topology import Topology, TopologyError

    nodes, node_comm = Discover_nodes(comm, node_name())  # collective: before anything can fail on one rank
    try:
        topo = Topology.build(cfg.layout, comm.size, nodes, trainer_counts(cfg) if cfg.multi_policy else None)
    except TopologyError as e:
        if comm.rank == 0:
            sys.stderr.write(f"hpcrl: layout error: {e}\n")
        return 2
    role = topo.role_of(comm.rank)
    _setup_logging(comm.rank, role, args.log_level)
    _install_abort_hook(comm, comm.rank, role)
    from hpcrl.runtime.distributed import RunDirUnavailable, run_rank

    try:
        summary = run_rank(cfg, comm, topo, stop, nodes, node_comm)
    except RunDirUnavailable as e:  # raised on every rank together: no rank is left waiting
        if comm.rank == 0:
            sys.stderr.write(f"hpcrl: {e}\n")
            sys.stderr.flush()
        from mpi4py import MPI

        MPI.Finalize()  # a clean end on every rank: without it, mpi4py turns exit status 2 into an MPI_Abort
        return 2
    if summary is not None:
        _report(summary, args.summary_json)
    return 0


def _run_local(cfg: config.ExperimentConfig, stop: Any, summary_json: str | None) -> int:
    from hpcrl.roles.local import run_local
    from hpcrl.storage.tree import StorageError

    try:
        summary = run_local(cfg, stop)
    except config.ConfigError as e:  # what only building the env, policy, trainer or device can check
        sys.stderr.write(f"hpcrl: config error: {e}\n")
        return 2
    except StorageError as e:  # run dir in use or not writable, no valid checkpoint among existing ones, ...
        sys.stderr.write(f"hpcrl: {e}\n")
        return 2
    _report(summary, summary_json)
    return 0


def _report(summary: dict[str, Any], summary_json: str | None) -> None:
    from hpcrl.progress import format_summary

    sys.stdout.write("\nhpcrl run summary\n" + format_summary(summary) + "\n")
    sys.stdout.flush()
    if summary_json:  # 0600, atomic, never through a symlink (the path may be in a shared directory)
        from hpcrl.storage.files import write_file_atomic

        write_file_atomic(summary_json, json.dumps(summary, indent=2, default=str).encode())


if __name__ == "__main__":
    sys.exit(main())
