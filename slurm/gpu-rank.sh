#!/bin/bash
# gpu-rank.sh COMMAND...: per-task wrapper (srun runs it once per rank) for gpu-multi-node.sbatch.
# Trainer ranks (SLURM_PROCID < HPCRL_TRAINERS) see exactly one GPU: the SLURM_LOCALID-th of the GPUs
# SLURM gave this node (CUDA_VISIBLE_DEVICES), so torch's "cuda" is that GPU. Every other rank sees
# none (CUDA_VISIBLE_DEVICES=""), so actors and inference ranks never create a CUDA context.
set -euo pipefail
die() {
  echo "hpcrl gpu-rank.sh: error: $*" >&2
  exit 2
}
trainers=${HPCRL_TRAINERS:?HPCRL_TRAINERS (number of trainer ranks) is not set}
rank=${SLURM_PROCID:?SLURM_PROCID is not set: run this under srun}
local_id=${SLURM_LOCALID:?SLURM_LOCALID is not set: run this under srun}
if ((rank < trainers)); then
  if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    IFS=, read -r -a gpus <<<"$CUDA_VISIBLE_DEVICES"
  elif command -v nvidia-smi >/dev/null; then
    mapfile -t gpus < <(nvidia-smi --query-gpu=index --format=csv,noheader)
  else
    gpus=()
  fi
  ((local_id < ${#gpus[@]})) ||
    die "trainer rank $rank is task $local_id on $(hostname) but that node has ${#gpus[@]} GPU(s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-unset}): ask for more GPUs per node, or spread the trainers with --distribution=cyclic"
  export CUDA_VISIBLE_DEVICES=${gpus[$local_id]}
else
  export CUDA_VISIBLE_DEVICES=""
fi
exec "$@"
