"""With ``training.grad_backend=gloo`` and every trainer on one host, trainer rank 0's rendezvous store (a torch
``TCPStore``, no authentication) listens on 127.0.0.1 only, not on every interface.

A real ``mpiexec -n 4`` job (2 trainers, 2 actors) is started; once rank 0 logs the store's port, the kernel's
table of listening TCP sockets (``/proc/net/tcp`` and ``tcp6``) is read while the job runs.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

STORE_LINE = re.compile(r"trainer rendezvous store listening on (\S+) port (\d+)")


def listening_addresses(port: int) -> list[str]:
    """Local addresses of the sockets listening on TCP ``port`` (IPv4 and IPv6), like ``ss -ltn``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)  # each 32-bit word in host (little-endian) order
                found.append(str(ipaddress.ip_address(b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4)))))
    return found


def test_gloo_store_listens_on_loopback_only(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    err_path = tmp_path / "job.stderr"
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "4", sys.executable, "-m", "mpi4py", "-m", "hpcrl.run"]
    cmd += [str(REPO / "examples/cartpole/ppo.yaml"), f"run.dir={run_dir}", "layout.trainers=2"]
    cmd += ["training.grad_backend=gloo", "experiment.total_frames=100000000", "run.progress=off"]
    with open(err_path, "w") as err:
        job = subprocess.Popen(
            cmd, env=clean_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        match = None
        while match is None and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            match = STORE_LINE.search(err_path.read_text())
        assert match is not None, f"no store line (rc={job.poll()}):\n{err_path.read_text()[-4000:]}"
        host, port = match.group(1), int(match.group(2))
        addresses = listening_addresses(port)
        assert job.poll() is None, err_path.read_text()[-4000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        job.wait(timeout=30)
    assert host == "127.0.0.1", match.group(0)
    assert addresses == ["127.0.0.1"], f"port {port} listens on {addresses}"


def test_store_address_choice(monkeypatch) -> None:
    """Which address rank 0 binds: the environment's, loopback on one node, else never a loopback one."""
    import socket

    from hpcrl.comm import collectives

    monkeypatch.delenv("HPCRL_MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert collectives._store_address(None, one_node=True) == (
        (socket.AF_INET, "127.0.0.1"),
        "all trainer ranks on this node",
    )
    # several nodes: a peer reached over loopback gives no address; the fallback is never a loopback address
    address, why = collectives._store_address(["here", "localhost"], one_node=False)
    assert address is None or not collectives._is_loopback(address[1]), (address, why)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.3")
    assert collectives._store_address(None, one_node=True) == ((socket.AF_INET, "127.0.0.3"), "$MASTER_ADDR")
    monkeypatch.setenv("HPCRL_MASTER_ADDR", "127.0.0.2")
    assert collectives._store_address(None, one_node=False) == ((socket.AF_INET, "127.0.0.2"), "$HPCRL_MASTER_ADDR")
