#!/bin/bash
# mimic-build.sh [WORKDIR]: run the %files, %post and %test steps of apptainer/hpcrl.def in a fresh
# virtual environment on this machine, for hosts without Apptainer (like the project's dev machines).
#
# What it exercises: the files listed in %files exist and are enough to install hpcrl; the %post pip
# commands resolve and install hpcrl with its MPI extra; `pip check` passes; the %test commands
# (imports, a one-process run, an `mpiexec -n 3` run with the MPI from the image's extra) pass.
# What it cannot: the base image (python:3.11-slim-bookworm), Apptainer itself, --nv, binding a host
# MPI, srun inside the container. apptainer/README.md says what is tested where.
#
# Build arguments come from the environment under their %arguments names (TORCH_SPEC, TORCH_INDEX,
# MPI_EXTRA), defaulting to the recipe's values. On a machine that must not download a CUDA torch,
# pin it: TORCH_SPEC=torch==2.13.0 apptainer/mimic-build.sh
# PYTHON picks the interpreter for the venv (default python3). Exits non-zero on the first failure.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
def=$repo/apptainer/hpcrl.def
work=${1:-$(mktemp -d "${TMPDIR:-/tmp}/hpcrl-mimic.XXXXXX")}
root=$work/root # stands in for the image's /
venv=$work/venv # stands in for the image's python
mkdir -p "$root"

section() { # the body of %NAME in the recipe
  awk -v want="$1" '/^%/ { cur = substr($1, 2); next } cur == want' "$def"
}

# build arguments: recipe defaults, overridden by the environment
declare -A args=()
while IFS='=' read -r key value; do
  key=$(echo "$key" | tr -d '[:space:]')
  [ -n "$key" ] || continue
  args[$key]=${!key:-$value}
done < <(section arguments)

render() { # replace {{ NAME }} by its value and /opt/hpcrl by the staged tree
  local text
  text=$(cat)
  for key in "${!args[@]}"; do
    text=$(printf '%s\n' "$text" | sed -E "s#\{\{ *$key *\}\}#${args[$key]//#/\\#}#g")
  done
  if grep -q '{{' <<<"$text"; then
    echo "mimic-build: undeclared build argument in: $(grep '{{' <<<"$text")" >&2
    exit 2
  fi
  printf '%s\n' "$text" | sed "s#/opt/hpcrl#$root/opt/hpcrl#g"
}

echo "== build arguments: $(for k in "${!args[@]}"; do printf '%s=%s ' "$k" "${args[$k]}"; done)"
echo "== %files -> $root"
while read -r src dest; do
  [ -n "${src:-}" ] || continue
  [ -e "$repo/$src" ] || {
    echo "mimic-build: %files names $src, which is not in $repo" >&2
    exit 2
  }
  mkdir -p "$(dirname "$root$dest")"
  cp -a "$repo/$src" "$root$dest"
done < <(section files)
find "$root" -name __pycache__ -prune -exec rm -rf {} +

echo "== fresh venv ${PYTHON:-python3} -> $venv"
"${PYTHON:-python3}" -m venv "$venv"
export PATH="$venv/bin:$PATH"
unset PYTHONPATH # nothing from the developer's checkout may leak in

t0=$SECONDS
echo "== %post"
section post | render | bash -e
echo "== %post took $((SECONDS - t0)) s"

t0=$SECONDS
echo "== %environment + %test"
{
  section environment | render
  section test | render
} | (cd "$work" && bash -e)
echo "== %test took $((SECONDS - t0)) s"
echo "mimic-build: OK ($work)"
