"""Which node each rank runs on: discovered once at start-up, then a pure value (:class:`NodeMap`).

A *node* is a shared-memory domain as MPI sees it (``MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)``): one
machine on a cluster, one simulated host under MPICH's ``mpiexec -launcher fork -hosts a,b ...``.
Nodes are numbered 0, 1, ... in the order of their lowest rank, so rank 0 is always on node 0, whatever
the launcher's rank order (block or cyclic).

Examples:
    >>> nodes = NodeMap.from_ids([0, 0, 4, 4, 0, 4], names=["a", "a", "b", "b", "a", "b"])
    >>> nodes.node_of, nodes.count
    ((0, 0, 1, 1, 0, 1), 2)
    >>> nodes.ranks_on(1), nodes.names
    ((2, 3, 5), ('a', 'b'))
    >>> NodeMap.single(3).describe()
    '1 node'
    >>> nodes.describe()
    '2 nodes: a [0-1,4], b [2-3,5]'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcrl.comm.topology import format_ranks

__all__ = ["NODE_NAME_NBYTES", "NodeMap", "Discover_nodes"]

#: bytes of one node name in the start-up gather (longer names are cut).
NODE_NAME_NBYTES = 64


@dataclasses.dataclass(frozen=True)
class NodeMap:
    """The node of every rank.

    Attributes:
        node_of: node index of each rank (``node_of[rank]``); nodes are numbered by their lowest rank.
        names: a name per node (the launcher's host name of its lowest rank), for messages.
    """

    node_of: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def single(cls, world_size: int, name: str = "") -> NodeMap:
        """Every rank on one node."""
        return cls((0,) * world_size, (name,))

    @classmethod
    def from_ids(cls, ids: Sequence[int], names: Sequence[str] | None = None) -> NodeMap:
        """A node map from any per-rank node key (e.g. the world rank of each node's lowest rank).

        Args:
            ids: one key per rank; ranks with equal keys share a node.
            names: one host name per rank (the name of each node's lowest rank is kept); default ``node<i>``.

        Raises:
            ValueError: ``names`` has another length than ``ids``.
        """
        if names is not None and len(names) != len(ids):
            raise ValueError(f"NodeMap: {len(names)} names for {len(ids)} ranks")
        index: dict[int, int] = {}
        node_names: list[str] = []
        node_of = []
        for rank, key in enumerate(ids):
            if int(key) not in index:
                index[int(key)] = len(index)
                node_names.append(names[rank] if names is not None else f"node{len(node_names)}")
            node_of.append(index[int(key)])
        return cls(tuple(node_of), tuple(node_names))

    @property
    def count(self) -> int:
        """Number of nodes."""
        return len(self.names)

    @property
    def world_size(self) -> int:
        """Number of ranks."""
        return len(self.node_of)

    def ranks_on(self, node: int) -> tuple[int, ...]:
        """The ranks on ``node``, in rank order."""
        return tuple(r for r, n in enumerate(self.node_of) if n == node)

    def describe(self) -> str:
        """``'1 node'``, or ``'2 nodes: a [0-1,4], b [2-3,5]'`` (names and ranks of each node)."""
        if self.count == 1:
            return "1 node"
        parts = [f"{self.names[n] or f'node{n}'} [{format_ranks(self.ranks_on(n))}]" for n in range(self.count)]
        return f"{self.count} nodes: " + ", ".join(parts)


def Discover_nodes(comm: Any, name: str) -> tuple[NodeMap, Any]:
    """Find every rank's node: ``Split_type(COMM_TYPE_SHARED)`` plus one ``Allgather`` (collective over ``comm``).

    Each rank contributes the ``comm`` rank of its node's lowest rank and its host name (fixed-size
    buffers: no pickle, no size exchange).

    Args:
        comm: the world communicator.
        name: this rank's host name as the launcher names it (:func:`hpcrl.comm.mpi.node_name`).

    Returns:
        ``(node map, node communicator)``: the node communicator holds this rank's node, in ``comm`` rank order.
    """
    from mpi4py import MPI

    rank = comm.Get_rank()
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    first = np.array([rank], np.int64)
    node_comm.Bcast(first, root=0)
    raw = name.encode()[:NODE_NAME_NBYTES].ljust(NODE_NAME_NBYTES, b"\0")
    mine = np.empty(8 + NODE_NAME_NBYTES, np.uint8)
    mine[:8] = first.view(np.uint8)
    mine[8:] = np.frombuffer(raw, np.uint8)
    size = comm.Get_size()
    table = np.empty((size, 8 + NODE_NAME_NBYTES), np.uint8)
    comm.Allgather(mine, table)
    ids = table[:, :8].copy().view(np.int64).ravel().tolist()
    names = [bytes(row[8:]).rstrip(b"\0").decode(errors="replace") for row in table]
    return NodeMap.from_ids(ids, names), node_comm
