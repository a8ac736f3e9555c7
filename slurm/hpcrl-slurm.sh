# shellcheck shell=bash disable=SC2034  # HPCRL_PY, HPCRL_ARGS, HPCRL_INFERENCE_ARGS, RUN_DIR, HPCRL_SLURM_DIR are outputs
# hpcrl-slurm.sh: shared logic of the slurm/*.sbatch templates (sourced, never run directly).
#
# Every cluster-specific value comes from the environment (sbatch passes the submitting shell's
# environment to the job by default):
#   HPCRL_RUN_ROOT      (required) directory on shared storage, visible from every node, holding run dirs
#   HPCRL_RUN_NAME      run dir name under HPCRL_RUN_ROOT (default: <job name>-<job id>, stable across
#                       requeues); reuse a name to continue that run from its newest checkpoint in a new job
#   HPCRL_VENV          virtual environment with hpcrl installed (python = $HPCRL_VENV/bin/python)
#   HPCRL_PYTHON        the interpreter, overriding HPCRL_VENV (default: python on PATH)
#   HPCRL_SRUN_MPI      srun --mpi plugin: pmix for Open MPI, pmi2 for MPICH-family MPIs (MPICH, the
#                       mpich wheel, Intel MPI, MVAPICH, Cray MPICH); default: detected from the MPI
#                       library mpi4py loads (Get_library_version, without initialising MPI)
#   HPCRL_SRUN_ARGS     extra srun arguments (split on spaces), e.g. "--cpu-bind=cores"
#   HPCRL_REQUEUE       1 (default): requeue the job after a clean stop on the time-limit warning signal
#   HPCRL_MAX_REQUEUES  give up requeueing after this many restarts (default 50)
#   HPCRL_SIF, HPCRL_APPTAINER_ARGS   image and extra `apptainer run` arguments (apptainer.sbatch)
#   HPCRL_INFERENCE_PER_NODE  multi-node templates: inference ranks per node (default 1; empty: leave
#                       the layout to the experiment and the overrides)
#
# Signals: the templates ask for `#SBATCH --signal=B:USR1@120`, i.e. SLURM sends SIGUSR1 to this
# batch shell 120 s before the time limit. The trap below forwards SIGUSR1 to srun, which passes it on
# to every task (measured); each hpcrl rank sets its stop flag, the ranks agree at the next step
# boundary, the leader writes RUN_DIR/checkpoints/ckpt-<version>.h5 and every rank exits 0. The batch
# shell then requeues the job (`#SBATCH --requeue`); the requeued job has the same job id, hence the
# same run dir, and hpcrl resumes from the newest valid checkpoint by itself.
# Never send SIGTERM to srun itself: srun answers it with "forcing job termination" and SIGKILLs the
# step (measured with slurm 22.05), so the ranks get no chance to checkpoint.

# the directory of this file (templates use it to find gpu-rank.sh)
HPCRL_SLURM_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

hpcrl_log() { echo "hpcrl-slurm $(date +%T): $*"; }
hpcrl_die() {
  echo "hpcrl-slurm: error: $*" >&2
  exit 2
}

# hpcrl_setup: check the environment, pick the run dir, set the per-rank thread counts.
# Sets RUN_DIR and HPCRL_PY (an array: the interpreter, possibly with arguments).
hpcrl_setup() {
  [ -n "${SLURM_JOB_ID:-}" ] || hpcrl_die "SLURM_JOB_ID is not set: submit this template with sbatch"
  [ -n "${HPCRL_RUN_ROOT:-}" ] ||
    hpcrl_die "HPCRL_RUN_ROOT is not set: export it to a directory on shared storage that every node sees, e.g. export HPCRL_RUN_ROOT=\$SCRATCH/hpcrl-runs"
  case "$HPCRL_RUN_ROOT" in
  /*) ;;
  *) hpcrl_die "HPCRL_RUN_ROOT=$HPCRL_RUN_ROOT is not an absolute path" ;;
  esac
  local name=${HPCRL_RUN_NAME:-${SLURM_JOB_NAME:-hpcrl}-${SLURM_JOB_ID}}
  case "$name" in
  */* | . | .. | "") hpcrl_die "HPCRL_RUN_NAME=$name must be a plain directory name (no '/')" ;;
  esac
  RUN_DIR=$HPCRL_RUN_ROOT/$name
  mkdir -p "$RUN_DIR" 2>/dev/null || hpcrl_die "run dir $RUN_DIR cannot be created (HPCRL_RUN_ROOT=$HPCRL_RUN_ROOT)"
  local probe
  probe=$(mktemp "$RUN_DIR/.write-test.XXXXXX" 2>/dev/null) ||
    hpcrl_die "run dir $RUN_DIR is not writable (HPCRL_RUN_ROOT=$HPCRL_RUN_ROOT)"
  rm -f "$probe"
  if [ -n "${HPCRL_PYTHON:-}" ]; then
    read -r -a HPCRL_PY <<<"$HPCRL_PYTHON"
  elif [ -n "${HPCRL_VENV:-}" ]; then
    [ -x "$HPCRL_VENV/bin/python" ] || hpcrl_die "HPCRL_VENV=$HPCRL_VENV has no bin/python"
    HPCRL_PY=("$HPCRL_VENV/bin/python")
  else
    HPCRL_PY=(python)
  fi
  # one thread per rank: ranks share the node's cores (hpcrl's run.torch_threads defaults to 1 as well)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONUNBUFFERED=1
  # MPICH family under srun: with 2 trainer ranks allreducing over MPI, rank 0 left MPI_Finalize without
  # joining the PMI barrier that ranks 1..N-1 then waited in forever (measured: mpich 5.0.2 wheel, slurm
  # 22.05, --mpi=pmi2; fine under Hydra). hpcrl drains all traffic and passes its own shutdown barrier
  # before exiting, so MPI_Finalize has nothing left to synchronise. Other MPIs ignore the variable.
  export MPIR_CVAR_NO_COLLECTIVE_FINALIZE=${MPIR_CVAR_NO_COLLECTIVE_FINALIZE:-1}
  hpcrl_log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${SLURM_JOB_NUM_NODES:-?} node(s), ${SLURM_NTASKS:-?} tasks; run dir $RUN_DIR"
}

# hpcrl_srun_mpi <python command...>: print the srun --mpi plugin for the MPI that mpi4py loads there.
hpcrl_srun_mpi() {
  if [ -n "${HPCRL_SRUN_MPI:-}" ]; then
    echo "$HPCRL_SRUN_MPI"
    return 0
  fi
  local lib
  lib=$("$@" -c 'import mpi4py; mpi4py.rc.initialize = False; from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])' 2>&1) ||
    hpcrl_die "cannot load MPI through mpi4py with '$*' ($lib); load your MPI module or set HPCRL_SRUN_MPI"
  case "$lib" in
  *"Open MPI"*) echo pmix ;;
  *MPICH* | *"Intel(R) MPI"* | *MVAPICH* | *CRAY*) echo pmi2 ;;
  *) hpcrl_die "cannot tell which srun --mpi plugin fits '$lib': set HPCRL_SRUN_MPI=pmix (Open MPI family) or pmi2 (MPICH family)" ;;
  esac
}

_hpcrl_on_signal() {
  _HPCRL_SIGNAL=$1
  hpcrl_log "batch shell got SIG$1 at $(date +%T): asking every rank to stop at the next step boundary and checkpoint"
  # USR1, not TERM: srun forwards USR1 to the tasks but turns TERM into SIGKILL of the whole step
  [ -n "${_HPCRL_SRUN_PID:-}" ] && kill -USR1 "$_HPCRL_SRUN_PID" 2>/dev/null
  return 0
}

# hpcrl_launch <task command...>: srun the command on every task with the right PMI plugin, forward
# the time-limit signal, wait, and requeue the job after a clean stop. Returns srun's exit status.
hpcrl_launch() {
  local mpi=$1
  shift
  local -a extra=()
  [ -n "${HPCRL_SRUN_ARGS:-}" ] && read -r -a extra <<<"$HPCRL_SRUN_ARGS"
  _HPCRL_SIGNAL=""
  trap '_hpcrl_on_signal USR1' USR1
  trap '_hpcrl_on_signal TERM' TERM
  hpcrl_log "srun --mpi=$mpi --kill-on-bad-exit=1 ${extra[*]} $*"
  srun --mpi="$mpi" --kill-on-bad-exit=1 "${extra[@]}" "$@" &
  _HPCRL_SRUN_PID=$!
  # `wait` returns early whenever a trapped signal arrives; bash remembers the exit status afterwards
  while kill -0 "$_HPCRL_SRUN_PID" 2>/dev/null; do wait "$_HPCRL_SRUN_PID"; done
  local rc=0
  wait "$_HPCRL_SRUN_PID" || rc=$?
  trap - USR1 TERM
  hpcrl_log "srun exited with status $rc"
  if [ "$_HPCRL_SIGNAL" = USR1 ] && [ "$rc" -eq 0 ] && [ "${HPCRL_REQUEUE:-1}" = 1 ]; then
    _hpcrl_requeue
  fi
  return "$rc"
}

_hpcrl_requeue() {
  local restarts=${SLURM_RESTART_COUNT:-0} max=${HPCRL_MAX_REQUEUES:-50}
  if grep -Eqs '"reason": "(finished|total_frames reached)"' "$RUN_DIR/summary-$SLURM_JOB_ID.json"; then
    hpcrl_log "the run reached experiment.total_frames: not requeueing"
  elif [ "$restarts" -ge "$max" ]; then
    hpcrl_log "not requeueing: the job was restarted $restarts times (HPCRL_MAX_REQUEUES=$max)"
  else
    hpcrl_log "requeueing job $SLURM_JOB_ID (restart $((restarts + 1))); it resumes from the newest checkpoint in $RUN_DIR"
    scontrol requeue "$SLURM_JOB_ID" || hpcrl_log "scontrol requeue failed: resubmit with HPCRL_RUN_NAME=$(basename "$RUN_DIR")"
  fi
}

# hpcrl_inference_args [overrides...]: sets HPCRL_INFERENCE_ARGS to layout.inference_per_node=N
# (N = HPCRL_INFERENCE_PER_NODE, default 1: one inference rank on every node, serving that node's actors),
# or to nothing when the overrides choose layout.inference or layout.inference_per_node themselves, or
# when HPCRL_INFERENCE_PER_NODE is set but empty.
hpcrl_inference_args() {
  HPCRL_INFERENCE_ARGS=()
  local n=${HPCRL_INFERENCE_PER_NODE-1} arg
  [ -n "$n" ] || return 0
  [[ $n =~ ^[0-9]+$ ]] || hpcrl_die "HPCRL_INFERENCE_PER_NODE=$n is not a whole number >= 0 (or empty to leave the layout alone)"
  for arg in "$@"; do
    case $arg in layout.inference=* | layout.inference_per_node=*) return 0 ;; esac
  done
  HPCRL_INFERENCE_ARGS=("layout.inference_per_node=$n")
}

# hpcrl_run_args <config> [overrides...]: the hpcrl.run arguments; the template owns run.dir.
hpcrl_run_args() {
  [ $# -ge 1 ] || hpcrl_die "usage: sbatch <template> EXPERIMENT.yaml [key.path=value ...]"
  [ -f "$1" ] || hpcrl_die "experiment file $1 not found (relative to $(pwd))"
  HPCRL_ARGS=("$@" "run.dir=$RUN_DIR" --summary-json "$RUN_DIR/summary-$SLURM_JOB_ID.json")
}
