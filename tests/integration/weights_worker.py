"""MPI job for the per-node weight tests (run under ``mpiexec -launcher fork -hosts ... python -m mpi4py``).

    python -m mpi4py tests/integration/weights_worker.py MODE OUT.json [VERSIONS]

Rank 0 is the publisher (the trainer leader); every other rank subscribes. Modes:

``race``: the node's receiver writes the window as fast as it can (no leader in between) while the other
    ranks of its node poll it; every read must be intact and versions must only grow.
``ack``: the same, but the writer waits until every reader of its node has read each version (a barrier
    per version): every reader must see every version exactly once.
``leader``: rank 0 publishes through a real :class:`ParamPublisher` to the nodes' receivers (one per node),
    flushing each publication; every subscriber must end on the last version, and rank 0 reports its sends.
``flat``: as ``leader`` with every subscriber sent every publication (the flat path).
``grow``: as ``leader``, but the last publication has one more leaf: it does not fit the windows (the
    receivers raise, the job aborts).

A subscriber alone on its node reads its own receive buffer, as in a run.

Every payload leaf is derived from its version, so a reader checks the whole copy against it. Rank 0
writes the gathered per-rank results as JSON to OUT.json; any failed check raises (the job aborts).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

WORDS = 1 << 17  # 1 MiB of int64 per publication: a copy takes long enough for writer and readers to race


def params(version: int) -> dict[str, np.ndarray]:
    base = np.arange(WORDS, dtype=np.int64) * 1_000_003
    return {"w": (base + version * 7919) % (1 << 40), "v": np.array([version], np.int64)}


def intact(version: int, state: dict[str, np.ndarray]) -> bool:
    want = params(version)
    return state.keys() == want.keys() and all(np.array_equal(state[k], want[k]) for k in want)


class Checker:
    """The ``apply`` of a subscriber: checks every copy it is handed; the last call must be intact."""

    def __init__(self) -> None:
        self.calls = 0
        self.last: tuple[int, bool] = (0, False)
        self.versions: list[int] = []

    def __call__(self, version: int, state: dict[str, np.ndarray]) -> None:
        self.calls += 1
        self.last = (version, intact(version, state))

    def got(self, version: int | None) -> None:
        if version is None:
            return
        if self.last != (version, True):
            raise AssertionError(f"a read returned version {version} but its copy was {self.last}")
        if self.versions and version <= self.versions[-1]:
            raise AssertionError(f"version {version} after {self.versions[-1]}: versions must grow")
        self.versions.append(version)


def main(mode: str, out: str, versions: int) -> None:
    from mpi4py import MPI

    from hpcrl.comm.mpi import node_name
    from hpcrl.comm.nodeparams import NodeParamSubscriber, node_subscribers, weight_receivers
    from hpcrl.comm.nodes import Discover_nodes
    from hpcrl.comm.params import ParamPublisher, ParamSubscriber

    comm = MPI.COMM_WORLD
    rank = comm.rank
    nodes, node_comm = Discover_nodes(comm, node_name())
    subscribers = tuple(range(1, comm.size))
    result: dict[str, Any] = {"rank": rank, "node": nodes.node_of[rank]}
    if rank == 0:
        targets = list(subscribers) if mode == "flat" else list(weight_receivers(subscribers, nodes))
        pub = ParamPublisher(comm, targets)
        # the window modes: only the first version comes from here (it sizes the windows)
        last = versions if mode in ("leader", "flat", "grow") else 1
        for v in range(1, last + 1):
            state = params(v)
            if mode == "grow" and v == last:
                state["extra"] = np.zeros(1000, np.float32)  # the parameters grow mid-run
            pub.publish(state, version=v)
            pub.flush(timeout=60)
        result.update(sends=pub.sends, bytes=pub.bytes_sent, targets=targets, publications=last)
        comm.Barrier()  # every subscriber is done
        pub.close()
    elif mode == "flat" or len(node_subscribers(subscribers, nodes, rank)) == 1:  # alone on its node: no window
        sub = ParamSubscriber(comm, 0)
        check = Checker()
        while not check.versions or check.versions[-1] < versions:
            version, state = sub.wait(timeout=60)
            check(version, {k: np.array(x) for k, x in state.items()})
            check.got(version)
        result.update(versions=check.versions, calls=check.calls)
        comm.Barrier()
        sub.close()
    else:
        peers = node_subscribers(subscribers, nodes, rank)
        node = NodeParamSubscriber(comm, node_comm, 0, peers)
        check = Checker()
        check.got(node.wait(check, timeout=60))
        assert node.window is not None
        wcomm = node.window.comm
        if mode in ("leader", "grow"):
            while check.versions[-1] < versions:
                check.got(node.poll(check))
        elif mode == "ack":
            wcomm.Barrier()  # every reader has version 1
            for v in range(2, versions + 1):
                if node.is_receiver:
                    node.write((v, *_record(v)))
                while (got := node.poll(check)) is None:
                    pass
                check.got(got)
                if got != v:
                    raise AssertionError(f"rank {rank} read version {got} where {v} was next: a version was missed")
                wcomm.Barrier()  # every reader has read v: the writer may go on
        else:  # race
            if node.is_receiver:
                for v in range(2, versions + 1):
                    node.write((v, *_record(v)))
                    if v % 16 == 0:
                        check.got(node.poll(check))  # the writer reads its own window now and then
                check.got(node.poll(check))
                wcomm.Ibarrier().Wait()
            else:
                done = wcomm.Ibarrier()
                while not done.Test():
                    check.got(node.poll(check))
                check.got(node.poll(check))
        comm.Barrier()
        window = node.window
        result.update(
            versions=check.versions,
            calls=check.calls,
            torn=window.buffer.torn,
            gave_up=window.buffer.gave_up,
            receiver=node.is_receiver,
            peers=list(peers),
        )
        node.close()
    table = comm.gather(result, root=0)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(table, f)


def _record(version: int) -> tuple[Any, Any]:
    """(schema, record) of ``params(version)`` as the leader would send them."""
    from hpcrl.comm.params import _record as record_of

    record, schema = record_of(params(version))
    return schema, record


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)
