"""Weight publication: leader bytes and time per publication, per node (one copy per node) vs flat (every rank).

    python -m benchmarks.bench_publish [--quick] [--ranks 8 16 32 64] [--nodes 1 2 4 8]
    mpiexec -launcher fork -hosts n1,..,nN -ppn K -n R python -m mpi4py -m benchmarks.bench_publish \\
        --mpi-worker OUT.json --mode per_node --model cnn      # one job (what the command above starts)

Nodes are simulated with MPICH's Hydra (``-launcher fork -hosts n1,n2,...``: each host name is its own
shared-memory domain, messages between them go through the network module). Rank 0 is the trainer leader,
every other rank a subscriber, as with inline inference. Each publication is timed from ``publish`` until
every subscriber has loaded it (an ``Ibarrier`` every subscriber joins once it has that version; the
leader keeps its sends going meanwhile). ``flat`` is the leader sending to every subscriber
(``layout.weights: flat``), ``per_node`` the leader sending to one receiver per node, whose node reads its
shared window (``layout.weights: per_node``, the runtime's classes). A subscriber's load is a copy into its
own preallocated arrays (what ``load_state_dict`` does).

Models: state dicts of plain float32 numpy arrays with the shapes of a Nature CNN for Atari (84x84x4
input, 6 actions: 1.69M parameters) and of an MLP 512-2048-2048-2048-18 (9.48M parameters); the
publication path depends only on names, shapes and bytes, so no torch model is built.

Rows: leader bytes per publication (per node vs flat: the ratio is the saving), time per publication,
and the PSS of the subscribers, summed per node (``/proc/self/smaps_rollup``: shared window pages count
once per node), for every ranks/nodes pair with at least 2 ranks per node. Simulated nodes share one
machine's cores and memory bus: the times are not a fabric's; the bytes and PSS are exact.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import MPIEXEC, PYTHON, ROOT, BenchResult, Context, Row, bench_main, hpcrl_env

__all__ = ["main", "model", "run"]

MODELS = ("cnn", "mlp")
MB = 1e6


def model(name: str) -> dict[str, np.ndarray]:
    """The state dict of ``cnn`` (Nature CNN, 1.69M parameters) or ``mlp`` (9.48M parameters), float32 zeros."""
    if name == "cnn":
        shapes = {
            "conv1.weight": (32, 4, 8, 8),
            "conv1.bias": (32,),
            "conv2.weight": (64, 32, 4, 4),
            "conv2.bias": (64,),
            "conv3.weight": (64, 64, 3, 3),
            "conv3.bias": (64,),
            "fc.weight": (512, 3136),
            "fc.bias": (512,),
            "pi.weight": (6, 512),
            "pi.bias": (6,),
            "v.weight": (1, 512),
            "v.bias": (1,),
        }
    elif name == "mlp":
        widths = (512, 2048, 2048, 2048, 18)
        shapes = {}
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            shapes[f"l{i}.weight"] = (b, a)
            shapes[f"l{i}.bias"] = (b,)
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {MODELS}")
    return {k: np.zeros(s, np.float32) for k, s in shapes.items()}


def _pss_kb() -> int:
    try:
        for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker(out: Path, mode: str, name: str, publications: int) -> None:
    """The MPI job: rank 0 publishes ``publications`` times; every other rank loads each version."""
    from mpi4py import MPI

    from hpcrl.comm.mpi import node_name
    from hpcrl.comm.nodeparams import NodeParamSubscriber, node_subscribers, weight_receivers
    from hpcrl.comm.nodes import Discover_nodes
    from hpcrl.comm.params import ParamPublisher, ParamSubscriber

    comm = MPI.COMM_WORLD
    rank = comm.rank
    nodes, node_comm = Discover_nodes(comm, node_name())
    subscribers = tuple(range(1, comm.size))
    state = model(name)
    times: list[float] = []
    row: dict[str, Any] = {"rank": rank, "node": nodes.node_of[rank]}
    if rank == 0:
        targets = list(subscribers) if mode == "flat" else list(weight_receivers(subscribers, nodes))
        pub = ParamPublisher(comm, targets)
        for v in range(1, publications + 1):
            state["fc.bias" if name == "cnn" else "l0.bias"][0] = v
            t0 = time.perf_counter()
            pub.publish(state, version=v)
            req = comm.Ibarrier()
            while not req.Test():
                pub.progress()
            times.append(time.perf_counter() - t0)
        row.update(sends=pub.sends, bytes=pub.bytes_sent, targets=len(targets))
        pub.close()
    else:
        mine = {k: np.empty_like(a) for k, a in state.items()}

        def load(version: int, params: dict[str, np.ndarray]) -> None:
            for k, a in params.items():
                np.copyto(mine[k], a)

        peers = node_subscribers(subscribers, nodes, rank) if mode == "per_node" else (rank,)
        node = NodeParamSubscriber(comm, node_comm, 0, peers) if len(peers) > 1 else None
        sub = ParamSubscriber(comm, 0) if node is None else None
        have = 0
        for v in range(1, publications + 1):
            if v == 1 and node is not None:
                have = node.wait(load, timeout=120)
            while have < v:
                if node is not None:
                    have = node.poll(load) or have
                else:
                    assert sub is not None
                    got = sub.poll()
                    if got is not None:
                        load(*got)
                        have = got[0]
            comm.Ibarrier().Wait()  # matches the leader's Ibarrier (blocking and non-blocking never match)
        row["pss_kb"] = _pss_kb()
        comm.Barrier()  # PSS read while every window is still mapped
        if node is not None:
            node.close()
        if sub is not None:
            sub.close()
    if rank == 0:
        comm.Barrier()
    table = comm.gather(row, root=0)
    if rank == 0:
        assert table is not None
        lead = table[0]
        per_node: dict[int, int] = {}
        for r in table[1:]:
            per_node[r["node"]] = per_node.get(r["node"], 0) + r["pss_kb"]
        steady = sorted(times[1:]) or times
        result = {
            "mode": mode,
            "model": name,
            "ranks": comm.size,
            "nodes": nodes.count,
            "params": int(sum(a.size for a in state.values())),
            "model_bytes": int(sum(a.nbytes for a in state.values())),
            "bytes_per_publication": lead["bytes"] / publications,
            "sends_per_publication": lead["sends"] / publications,
            "seconds_per_publication": steady[len(steady) // 2],
            "subscriber_pss_mb_per_node": {str(n): kb / 1024 for n, kb in per_node.items()},
        }
        out.write_text(json.dumps(result))


def _job(ranks: int, nodes: int, mode: str, name: str, publications: int, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hpcrl-bench-publish-") as tmp:
        out = Path(tmp) / "out.json"
        names = ",".join(f"n{i + 1}" for i in range(nodes))
        cmd = [MPIEXEC, "-launcher", "fork", "-hosts", names, "-ppn", str(ranks // nodes), "-n", str(ranks)]
        cmd += [PYTHON, "-m", "mpi4py", "-m", "benchmarks.bench_publish", "--mpi-worker", str(out)]
        cmd += ["--mode", mode, "--model", name, "--publications", str(publications)]
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=hpcrl_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        try:
            text, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise RuntimeError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"failed (exit {proc.returncode}): {' '.join(cmd)}\n{text[-2000:]}")
        return dict(json.loads(out.read_text()))


def run(ctx: Context) -> BenchResult:
    """Every (ranks, nodes, model) with >= 2 ranks per node: flat and per-node jobs, rows per node vs flat."""
    ranks_list = ctx.opt("ranks") or ([8] if ctx.quick else [8, 16, 32, 64])
    nodes_list = ctx.opt("nodes") or ([1, 2, 4] if ctx.quick else [1, 2, 4, 8])
    publications = ctx.opt("publications") or (5 if ctx.quick else 20)
    res = BenchResult("publish")
    jobs: list[dict[str, Any]] = []
    for ranks in ranks_list:
        for nodes in nodes_list:
            if ranks % nodes or ranks // nodes < 2:
                continue
            for name in MODELS:
                pair = {}
                for mode in ("flat", "per_node"):
                    try:
                        pair[mode] = _job(ranks, nodes, mode, name, publications, timeout=120 + ranks * 10)
                    except RuntimeError as e:
                        res.notes.append(f"{ranks} ranks / {nodes} nodes / {name} / {mode}: {e}")
                if len(pair) < 2:
                    continue
                jobs += list(pair.values())
                _rows(res, ranks, nodes, name, pair["flat"], pair["per_node"])
    res.data = {"jobs": jobs, "publications": publications}
    return res


def _rows(res: BenchResult, ranks: int, nodes: int, name: str, flat: dict[str, Any], node: dict[str, Any]) -> None:
    where = f"{name} ({flat['params'] / 1e6:.2f}M params), {ranks} ranks / {nodes} node{'s' if nodes > 1 else ''}"
    peer = "flat (one send per subscriber)"
    res.rows.append(
        Row(
            "publish",
            f"leader bytes per publication, {where}",
            node["bytes_per_publication"] / MB,
            peer,
            flat["bytes_per_publication"] / MB,
            "MB",
            higher_is_better=False,
            note=f"sends per publication: per node {node['sends_per_publication']:g}, flat "
            f"{flat['sends_per_publication']:g}",
        ).finish()
    )
    res.rows.append(
        Row(
            "publish",
            f"time per publication until every subscriber loaded it, {where}",
            node["seconds_per_publication"] * 1e3,
            peer,
            flat["seconds_per_publication"] * 1e3,
            "ms",
            higher_is_better=False,
            note="simulated nodes on one machine: not a fabric's times (median of the publications after the first)",
        ).finish()
    )
    pss_node = max(node["subscriber_pss_mb_per_node"].values())
    pss_flat = max(flat["subscriber_pss_mb_per_node"].values())
    res.rows.append(
        Row(
            "publish",
            f"subscribers' PSS on the fullest node, {where}",
            pss_node,
            peer,
            pss_flat,
            "MiB",
            higher_is_better=False,
            note=f"model {flat['model_bytes'] / 2**20:.1f} MiB; each subscriber also holds its own copy of the model",
        ).finish()
    )


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ranks", type=int, nargs="+", help="world sizes (default 8 16 32 64; 8 with --quick)")
    p.add_argument("--nodes", type=int, nargs="+", help="simulated node counts (default 1 2 4 8; 1 2 4 with --quick)")
    p.add_argument("--publications", type=int, help="publications per job (default 20; 5 with --quick)")


def _worker_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("flat", "per_node"), required=True)
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--publications", type=int, default=20)


main = bench_main(
    "publish",
    run,
    __doc__,
    _add_arguments,
    worker=lambda a: worker(Path(a.mpi_worker), a.mode, a.model, a.publications),
    worker_arguments=_worker_arguments,
)  # ``--mpi-worker OUT`` (under mpiexec): one job


if __name__ == "__main__":
    raise SystemExit(main())
