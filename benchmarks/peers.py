"""Peer libraries for the comparison benchmarks: one private venv each, run as a subprocess.

    python -m benchmarks.peers sb3            # create benchmarks/.peers/sb3 if missing, print its python

A peer (e.g. Stable-Baselines3) is never installed into the hpcrl venv. :func:`ensure_peer`
creates ``benchmarks/.peers/<name>`` (gitignored) with ``python -m venv`` and installs the peer's
packages with one pip command that always pins ``torch==2.13.0`` (so pip takes the local CPU
build). A ``.ready`` marker holding the package list is written only after pip succeeded, so a
half-finished install is redone. :func:`run_peer` runs a script from ``benchmarks/peer_scripts/``
with that venv's python; the script prints one JSON line on stdout, which is parsed and returned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PEERS", "PEER_DIR", "SCRIPT_DIR", "PeerError", "ensure_peer", "peer_env", "run_peer"]

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / ".peers"
SCRIPT_DIR = HERE / "peer_scripts"
TORCH_PIN = "torch==2.13.0"

#: peer name -> pip requirements (torch is pinned to the hpcrl venv's version in the same command).
PEERS: dict[str, list[str]] = {
    "sb3": [TORCH_PIN, "stable-baselines3", "gymnasium"],
}


class PeerError(RuntimeError):
    """A peer venv could not be created, or a peer script failed or printed no JSON line."""


def peer_env(threads: int = 1) -> dict[str, str]:
    """Environment for a peer subprocess: one BLAS/OMP thread, unbuffered, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDRA_", "MPI_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def ensure_peer(name: str, base_python: str | None = None, quiet: bool = True) -> Path:
    """Create (if missing) the venv of peer ``name`` and return its python executable.

    Args:
        name: a key of :data:`PEERS`.
        base_python: interpreter that creates the venv (default: ``python3`` on PATH, else this one).
        quiet: pass ``-q`` to pip.

    Returns:
        ``benchmarks/.peers/<name>/bin/python``.

    Raises:
        PeerError: unknown peer, or ``venv``/``pip`` failed (the message has pip's last lines).
    """
    if name not in PEERS:
        raise PeerError(f"unknown peer {name!r}; known peers: {sorted(PEERS)}")
    root = PEER_DIR / name
    python = root / "bin" / "python"
    marker = root / ".ready"
    wanted = "\n".join(PEERS[name])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    base = base_python or _which("python3") or sys.executable
    t0 = time.monotonic()
    print(f"[peers] creating {root} with {base} and installing {' '.join(PEERS[name])} ...", file=sys.stderr)
    root.parent.mkdir(parents=True, exist_ok=True)
    _check_call([base, "-m", "venv", str(root)], f"peer {name!r}: python -m venv {root}")
    pip = [str(python), "-m", "pip", "install", *(["-q"] if quiet else []), *PEERS[name]]
    _check_call(pip, f"peer {name!r}: pip install")
    marker.write_text(wanted)
    print(f"[peers] {name} ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return python


def _which(exe: str) -> str | None:
    import shutil

    return shutil.which(exe)


def _check_call(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=peer_env())
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def run_peer(name: str, script: str, args: list[str], timeout: float = 3600.0, threads: int = 1) -> dict[str, Any]:
    """Run ``benchmarks/peer_scripts/<script>`` in peer ``name``'s venv and return its JSON result.

    The script's stderr passes through (progress), stdout is captured; the last stdout line
    that parses as a JSON object is the result.

    Args:
        name: a key of :data:`PEERS` (created with :func:`ensure_peer` when missing).
        script: file name inside ``benchmarks/peer_scripts/``.
        args: command-line arguments for the script.
        timeout: seconds before the subprocess is killed.
        threads: ``OMP_NUM_THREADS`` for the subprocess.

    Returns:
        The parsed JSON object.

    Raises:
        PeerError: the script is missing, exits non-zero, times out, or prints no JSON object.
    """
    path = SCRIPT_DIR / script
    if not path.is_file():
        raise PeerError(f"peer script {path} does not exist")
    python = ensure_peer(name)
    cmd = [str(python), str(path), *args]
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=peer_env(threads), timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise PeerError(f"peer {name!r} script {script} timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        raise PeerError(f"peer {name!r} script {script} exited {proc.returncode}; stdout tail: {proc.stdout[-2000:]}")
    for line in reversed(proc.stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                out = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(out, dict):
                return out
    raise PeerError(f"peer {name!r} script {script} printed no JSON object; stdout tail: {proc.stdout[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    """Create the named peer venvs (all by default) and print their python paths."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=sorted(PEERS), help=f"peers to create (known: {sorted(PEERS)})")
    args = p.parse_args(argv)
    for name in args.names:
        print(ensure_peer(name, quiet=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
