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

__all__ = [
    "INSTALL_TIMEOUT",
    "PEERS",
    "PEER_DIR",
    "SCRIPT_DIR",
    "PeerError",
    "ensure_peer",
    "install_failure",
    "peer_env",
    "run_peer",
]

HERE = Path(__file__).resolve().parent
PEER_DIR = HERE / ".peers"
SCRIPT_DIR = HERE / "peer_scripts"
TORCH_PIN = "torch==2.13.0"

#: peer name -> pip requirements (torch is pinned to the hpcrl venv's version in the same command).
PEERS: dict[str, list[str]] = {
    "sb3": [TORCH_PIN, "stable-baselines3", "gymnasium"],
    # SB3 with the Atari extras (ale-py ships the ROMs; opencv for AtariWrapper's resize).
    "sb3_atari": [TORCH_PIN, "stable-baselines3", "gymnasium", "ale-py", "opencv-python-headless"],
    # SB3 with MuJoCo for the HalfCheetah / Hopper tasks of the parity study.
    "sb3_mujoco": [TORCH_PIN, "stable-baselines3", "gymnasium[mujoco]"],
    # sb3-contrib's RecurrentPPO (LSTM policies) for the memory task of the parity study.
    "sb3_contrib": [TORCH_PIN, "sb3-contrib", "gymnasium"],
    # benchmarks/peer_scripts/cleanrl_ppo.py: a CleanRL-style single-file PPO (torch + gymnasium only).
    "cleanrl": [TORCH_PIN, "gymnasium", "numpy"],
    # Sample Factory 2 requires numpy<2 and gymnasium<1 (pip picks gymnasium 0.29.x).
    "sample_factory": [TORCH_PIN, "sample-factory==2.1.1", "numpy<2"],
    "rllib": [TORCH_PIN, "ray[rllib]"],
}

#: seconds a peer's pip install may take before it is killed and recorded as not installable.
INSTALL_TIMEOUT: dict[str, float] = {"rllib": 600.0, "sample_factory": 900.0}


class PeerError(RuntimeError):
    """A peer venv could not be created, or a peer script failed or printed no JSON line."""


def peer_env(threads: int = 1) -> dict[str, str]:
    """Environment for a peer subprocess: one BLAS/OMP thread, unbuffered, no launcher variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_", "HYDRA_", "MPI_"))}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    return env


def install_failure(name: str) -> str | None:
    """Why the last install of peer ``name`` (with the current package list) failed, or None.

    A failed install leaves ``benchmarks/.peers/<name>.failed`` holding the package list and the
    reason, so a suite run does not retry a 10-minute install every time (delete the file to retry).
    """
    path = PEER_DIR / f"{name}.failed"
    if name not in PEERS or not path.is_file():
        return None
    wanted, _, reason = path.read_text().partition("\n---\n")
    return reason.strip() if wanted == "\n".join(PEERS[name]) else None


def ensure_peer(name: str, base_python: str | None = None, quiet: bool = True, retry: bool = False) -> Path:
    """Create (if missing) the venv of peer ``name`` and return its python executable.

    Args:
        name: a key of :data:`PEERS`.
        base_python: interpreter that creates the venv (default: ``python3`` on PATH, else this one).
        quiet: pass ``-q`` to pip.
        retry: try again even if an earlier install of the same package list failed.

    Returns:
        ``benchmarks/.peers/<name>/bin/python``.

    Raises:
        PeerError: unknown peer, ``venv``/``pip`` failed or timed out (the message has pip's last
            lines), or an earlier install failed (unless ``retry``).
    """
    if name not in PEERS:
        raise PeerError(f"unknown peer {name!r}; known peers: {sorted(PEERS)}")
    root = PEER_DIR / name
    python = root / "bin" / "python"
    marker = root / ".ready"
    wanted = "\n".join(PEERS[name])
    if python.exists() and marker.exists() and marker.read_text() == wanted:
        return python
    failed = install_failure(name)
    if failed is not None and not retry:
        raise PeerError(f"peer {name!r} not installable (earlier attempt): {failed}")
    base = base_python or _which("python3") or sys.executable
    t0 = time.monotonic()
    print(f"[peers] creating {root} with {base} and installing {' '.join(PEERS[name])} ...", file=sys.stderr)
    root.parent.mkdir(parents=True, exist_ok=True)
    timeout = INSTALL_TIMEOUT.get(name, 1800.0)
    try:
        _check_call([base, "-m", "venv", str(root)], f"peer {name!r}: python -m venv {root}", 300.0)
        pip = [str(python), "-m", "pip", "install", *(["-q"] if quiet else []), *PEERS[name]]
        _check_call(pip, f"peer {name!r}: pip install", timeout)
    except PeerError as e:
        (PEER_DIR / f"{name}.failed").write_text(f"{wanted}\n---\n{e}")
        raise
    (PEER_DIR / f"{name}.failed").unlink(missing_ok=True)
    (root / ".install_seconds").write_text(f"{time.monotonic() - t0:.1f}")
    marker.write_text(wanted)
    print(f"[peers] {name} ready in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return python


def _which(exe: str) -> str | None:
    import shutil

    return shutil.which(exe)


def _check_call(cmd: list[str], what: str, timeout: float) -> None:
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=peer_env(), timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise PeerError(f"{what} took longer than {timeout:.0f} s (killed after {time.monotonic() - t0:.0f} s)") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise PeerError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def run_peer(
    name: str, script: str, args: list[str], timeout: float = 3600.0, threads: int = 1, quiet: bool = False
) -> dict[str, Any]:
    """Run ``benchmarks/peer_scripts/<script>`` in peer ``name``'s venv and return its JSON result.

    The script's stderr passes through (progress), stdout is captured; the last stdout line
    that parses as a JSON object is the result.

    Args:
        name: a key of :data:`PEERS` (created with :func:`ensure_peer` when missing).
        script: file name inside ``benchmarks/peer_scripts/``.
        args: command-line arguments for the script.
        timeout: seconds before the subprocess is killed.
        threads: ``OMP_NUM_THREADS`` for the subprocess.
        quiet: capture the script's stderr instead of passing it through (its tail goes into errors).

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
    err = subprocess.PIPE if quiet else None
    try:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=peer_env(threads), timeout=timeout
        )
    except subprocess.TimeoutExpired as e:
        raise PeerError(f"peer {name!r} script {script} timed out after {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = f"; stderr tail: {proc.stderr[-2000:]}" if quiet else ""
        raise PeerError(
            f"peer {name!r} script {script} exited {proc.returncode}; stdout tail: {proc.stdout[-2000:]}{tail}"
        )
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
    p.add_argument("--retry", action="store_true", help="retry peers whose earlier install failed")
    args = p.parse_args(argv)
    rc = 0
    for name in args.names:
        try:
            print(ensure_peer(name, quiet=False, retry=args.retry))
        except PeerError as e:
            print(f"{name}: {e}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
