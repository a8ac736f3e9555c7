"""Weights once per node, on nodes simulated with MPICH's Hydra (``mpiexec -launcher fork -hosts ...``).

The window tests run ``weights_worker.py`` (see its docstring); the training runs are real CartPole jobs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers import TINY, explain

WORKER = Path(__file__).with_name("weights_worker.py")


def hosts(nodes: int, per_node: int) -> list[str]:
    """``-launcher fork -hosts n1,..,nN -ppn K -n N*K``: N simulated nodes of K ranks (block order)."""
    names = ",".join(f"n{i + 1}" for i in range(nodes))
    return ["-launcher", "fork", "-hosts", names, "-ppn", str(per_node), "-n", str(nodes * per_node)]


def worker(
    mpiexec: str, env: dict[str, str], tmp_path: Path, mode: str, nodes: int, per_node: int, versions: int
) -> list[dict[str, Any]]:
    out = tmp_path / f"{mode}.json"
    cmd = [mpiexec, *hosts(nodes, per_node), sys.executable, "-m", "mpi4py", str(WORKER), mode, str(out)]
    proc = subprocess.run([*cmd, str(versions)], env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and out.exists(), explain(proc)
    table: list[dict[str, Any]] = json.loads(out.read_text())
    return table


def test_readers_racing_a_writer_never_get_a_torn_copy(mpiexec: str, clean_env: dict[str, str], tmp_path: Path) -> None:
    """The receiver rewrites 1 MiB as fast as it can; the node's other ranks poll the window meanwhile and check
    every word of each copy they are handed (the worker raises on a torn or older copy). Every reader ends on
    the last version."""
    versions = 300
    table = worker(mpiexec, clean_env, tmp_path, "race", 2, 3, versions)
    readers = [r for r in table if r["rank"] != 0]
    assert [r["peers"] for r in readers] == [[1, 2], [1, 2], [3, 4, 5], [3, 4, 5], [3, 4, 5]]
    for r in readers:
        v = r["versions"]
        assert v[-1] == versions, r  # (the first one read may be past 1: the writer does not wait for anyone)
        assert all(a < b for a, b in zip(v, v[1:])), r["rank"]


def test_a_reader_acknowledging_each_version_sees_every_version_exactly_once(
    mpiexec: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    versions = 100
    table = worker(mpiexec, clean_env, tmp_path, "ack", 2, 3, versions)
    for r in table[1:]:
        assert r["versions"] == list(range(1, versions + 1)), r["rank"]
        assert r["calls"] == versions and r["torn"] == 0, r  # the writer waits: no read is ever disturbed


@pytest.mark.parametrize("nodes", [2, 4])
def test_the_leader_sends_each_publication_once_per_node(
    mpiexec: str, clean_env: dict[str, str], tmp_path: Path, nodes: int
) -> None:
    """Per node: exactly one send per node per publication (to the node's lowest subscriber), and every
    subscriber ends on the last version, intact. Flat (same job shape): one send per subscriber."""
    versions = 20
    per_node = 2
    table = worker(mpiexec, clean_env, tmp_path, "leader", nodes, per_node, versions)
    leader = table[0]
    assert leader["targets"] == [1] + [n * per_node for n in range(1, nodes)]
    assert leader["sends"] == nodes * versions
    payload = leader["bytes"] // leader["sends"]
    assert payload > 1 << 20  # 1 MiB of weights + the 64-byte header per send
    for r in table[1:]:
        assert r["versions"][-1] == versions, r["rank"]
    flat = worker(mpiexec, clean_env, tmp_path, "flat", nodes, per_node, versions)
    assert flat[0]["sends"] == (nodes * per_node - 1) * versions
    assert flat[0]["bytes"] == flat[0]["sends"] * payload
    for r in flat[1:]:
        assert r["versions"][-1] == versions, r["rank"]


def test_parameters_that_grow_mid_run_stop_the_job_naming_the_window_and_the_way_out(
    mpiexec: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    cmd = [mpiexec, *hosts(2, 3), sys.executable, "-m", "mpi4py", str(WORKER), "grow", str(tmp_path / "o.json"), "3"]
    proc = subprocess.run(cmd, env=clean_env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0, explain(proc)
    out = proc.stdout + proc.stderr
    assert "parameters version 3 on rank" in out and "(the node's weight receiver)" in out, explain(proc)
    assert "does not fit the node's shared weight window" in out and "use layout.weights=flat" in out, explain(proc)


FINAL = re.compile(r"rank (\d+) (actor|inference): .*policy_version=(\d+)")


def ranks_of(layout: str, role: str) -> list[int]:
    """The ranks of ``role`` in a topology description (``'2 inference [1,3]'``, ``'3 actors [2,4-5]'``)."""
    m = re.search(rf"\d+ {role}s? \[([\d,-]+)\]", layout)
    if m is None:
        return []
    out: list[int] = []
    for part in m[1].split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


@pytest.mark.parametrize(
    ("weights", "extra", "per_node"),
    [("per_node", [], 3), ("flat", [], 3), ("per_node", ["layout.inference=4"], 5)],
    ids=["per-node-inline", "flat-inline", "per-node-inference"],
)
def test_cartpole_on_two_nodes_trains_and_every_policy_ends_on_the_final_version(
    mpiexec: str, clean_env: dict[str, str], tmp_path: Path, weights: str, extra: list[str], per_node: int
) -> None:
    """2 simulated nodes. Inline (3 ranks each): the actors subscribe, one receiver per node. With 4 inference
    ranks (5 ranks per node) the inference ranks subscribe; which ranks they are is the topology's business,
    so the expected receivers (lowest subscriber of each node) are read from the run's layout line."""
    run_dir = tmp_path / "run"
    summary = tmp_path / "summary.json"
    cmd = [mpiexec, *hosts(2, per_node), sys.executable, "-m", "mpi4py", "-m", "hpcrl.run"]
    cmd += [str(REPO / "examples/cartpole/ppo.yaml"), f"run.dir={run_dir}", *TINY, "experiment.total_frames=6000"]
    cmd += [f"layout.weights={weights}", *extra, "--summary-json", str(summary)]
    proc = subprocess.run(cmd, env=clean_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and summary.exists(), explain(proc)
    data = json.loads(summary.read_text())
    assert data["frames"] >= 6000 and data["trainer_steps"] > 0, data
    followers = ranks_of(data["layout"], "inference") or ranks_of(data["layout"], "actor")
    on_node: dict[int, list[int]] = {}
    for r in followers:
        on_node.setdefault(r // per_node, []).append(r)  # -ppn: block order
    assert max(len(v) for v in on_node.values()) >= 2, f"no node shares a window: {data['layout']}"
    log = proc.stdout + proc.stderr
    if weights == "per_node":
        receivers = ",".join(str(min(v)) for _, v in sorted(on_node.items()))
        line = f"weights: per node, {len(on_node)} publication(s) per step to the weight receiver(s) [{receivers}]"
        assert line in log, explain(proc)
    else:
        assert "weights: per node" not in log
    finals = {int(m[1]): int(m[3]) for m in FINAL.finditer(log)}
    assert sorted(finals) == followers, explain(proc)
    final = int(data["policy_version"])
    for rank, version in finals.items():  # idle actors keep loading; the last step can land after the stop
        assert final - 1 <= version <= final, (rank, version, final, explain(proc))
