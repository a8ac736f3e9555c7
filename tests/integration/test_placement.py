"""Node-aware placement on simulated nodes: count the inference requests that cross nodes.

MPICH's Hydra with ``-launcher fork -hosts ...`` starts every rank on this machine but gives each host name
its own shared-memory domain, so hpcrl discovers several nodes. A short CartPole run with 4 inference ranks
on 4 such nodes reports ``cross_node_requests`` in its summary: the requests of actors whose inference rank
is on another node (from each actor's request counter and the topology in ``ranks.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers import TINY, explain

BLOCK = ["-hosts", "n1:3,n2:2,n3:2,n4:2"]  # n1: ranks 0-2, n2: 3-4, n3: 5-6, n4: 7-8
CYCLIC = ["-hosts", "n1,n2,n3,n4", "-ppn", "1"]  # rank r on n(r % 4 + 1)


def run_on_nodes(
    env: dict[str, str], run_dir: Path, hosts: list[str], *overrides: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    """A 9-rank CartPole run on simulated nodes; returns (process, summary)."""
    summary = run_dir.parent / f"{run_dir.name}-summary.json"
    launcher = str(Path(sys.executable).parent / "mpiexec")
    cmd = [launcher, "-launcher", "fork", *hosts, "-n", "9", sys.executable, "-m", "mpi4py", "-m", "hpcrl.run"]
    cmd += [str(REPO / "examples/cartpole/ppo.yaml"), f"run.dir={run_dir}", *TINY, "layout.inference=4"]
    cmd += [*overrides, "--summary-json", str(summary)]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    sys.stderr.write(f"{run_dir.name}: {time.monotonic() - t0:.1f} s\n")
    return proc, (json.loads(summary.read_text()) if summary.exists() else None)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "order,placement,extra",
    [
        ("block", "node", ()),
        ("block", "round_robin", ()),
        ("cyclic", "node", ("layout.inference=2", "layout.inference_per_node=1")),  # the SLURM templates' way
    ],
    ids=["block-node", "block-round_robin", "cyclic-node-per_node"],
)
def test_inference_requests_that_cross_nodes(tmp_path, clean_env, order, placement, extra):
    run_dir = tmp_path / f"{order}-{placement}"
    proc, summary = run_on_nodes(
        clean_env, run_dir, BLOCK if order == "block" else CYCLIC, f"layout.placement={placement}", *extra
    )
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert summary["frames"] >= 3000 and summary["trainer_steps"] >= 1
    assert "9 ranks on 4 nodes" in summary["layout"], summary["layout"]
    table = json.loads((run_dir / "ranks.json").read_text())
    node = {e["rank"]: e["node"] for e in table}
    assert sorted(set(node.values())) == [0, 1, 2, 3]
    assert {e["host"] for e in table} == {"n1", "n2", "n3", "n4"}
    inference = [e["rank"] for e in table if e["role"] == "inference"]
    requests, crossed = summary["inference_requests"], summary["cross_node_requests"]
    sys.stderr.write(f"{order} {placement}: {crossed} of {requests} inference requests crossed nodes\n")
    assert requests > 0
    warnings = [line for line in proc.stderr.splitlines() if "send their inference requests to another node" in line]
    if placement == "node":  # one inference rank per node: nothing crosses, and nothing to warn about
        assert sorted(node[i] for i in inference) == [0, 1, 2, 3], table
        assert crossed == 0 and not warnings, explain(proc)
        assert "all inference node-local" in summary["layout"]
        if extra:
            assert "layout.inference=2 is not used: layout.inference_per_node=1 on 4 node(s) gives 4" in proc.stderr
    else:  # inference ranks 1-4 sit on n1 and n2, every actor on n3 and n4
        assert inference == [1, 2, 3, 4] and crossed == requests, (crossed, requests)
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "4 of 4 actors" in warnings[0], warnings
