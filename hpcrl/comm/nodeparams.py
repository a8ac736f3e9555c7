"""Weights once per node: the leader publishes to one receiver per node, the node shares one copy.

With ``layout.weights: per_node`` (the default) the trainer leader's :class:`~hpcrl.comm.params.ParamPublisher`
sends each publication to the node's *weight receiver* only (:func:`weight_receivers`: the lowest
subscriber rank of each node), so its bytes per publication are ``nodes x model`` however many
subscribers there are. The receiver copies each publication into the node's shared-memory window
(:class:`~hpcrl.comm.weightwindow.WeightWindow`), from which every subscriber of the node (receiver
included) loads its policy. A node with a single subscriber needs no window: that subscriber loads from
its receive buffer, exactly as with ``layout.weights: flat``.

Examples:
    >>> from hpcrl.comm.nodes import NodeMap
    >>> nodes = NodeMap.from_ids([0, 0, 0, 3, 3, 3])
    >>> weight_receivers((1, 2, 3, 4, 5), nodes)      # node 0: ranks 1-2, node 1: ranks 3-5
    (1, 3)
    >>> node_subscribers((1, 2, 3, 4, 5), nodes, 4)
    (3, 4, 5)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.nodes import NodeMap
from hpcrl.comm.params import ParamsError, ParamSubscriber, received_params
from hpcrl.comm.polling import OnIdle, wait_for
from hpcrl.comm.schema import Schema, SchemaError
from hpcrl.comm.tags import Tag
from hpcrl.comm.weightwindow import DoubleBuffer, WeightWindow, WindowError
from hpcrl.comm.wire import DEFAULT_MAX_BYTES

__all__ = ["Apply", "NodeParamSubscriber", "node_subscribers", "weight_receivers"]

_log = logging.getLogger(__name__)

#: what a subscriber does with a publication: ``apply(version, {name: read-only array})``.
Apply = Callable[[int, dict[str, np.ndarray]], None]


def weight_receivers(subscribers: Sequence[int], nodes: NodeMap) -> tuple[int, ...]:
    """The lowest subscriber rank of every node that has subscribers, in node order."""
    first: dict[int, int] = {}
    for r in sorted(int(s) for s in subscribers):
        first.setdefault(nodes.node_of[r], r)
    return tuple(first[n] for n in sorted(first))


def node_subscribers(subscribers: Sequence[int], nodes: NodeMap, rank: int) -> tuple[int, ...]:
    """The subscribers on ``rank``'s node, in rank order (the first is the node's weight receiver)."""
    node = nodes.node_of[rank]
    return tuple(sorted(int(s) for s in subscribers if nodes.node_of[int(s)] == node))


class NodeParamSubscriber:
    """A subscriber's end of per-node weights: the receiver writes the node's window, everyone reads it.

    Collective over the node's subscribers (``peers``): :meth:`wait` at start-up (it creates the window)
    and :meth:`close` at shutdown. No other rank of the node (trainers, actors served by an inference
    rank) takes part in anything.

    Args:
        comm: the world communicator (the publisher's).
        node_comm: this rank's node communicator (``ctx.node_comm``), in world-rank order.
        source: the publishing rank (the trainer leader).
        peers: the world ranks of this node's subscribers, ascending (:func:`node_subscribers`);
            ``peers[0]`` is the receiver and window writer; at least 2.
        tag: the parameter tag.
        max_bytes: refuse a parameter schema whose flat size exceeds this (on the receiver).
    """

    def __init__(
        self,
        comm: Any,
        node_comm: Any,
        source: int,
        peers: Sequence[int],
        tag: int = Tag.PARAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.rank = int(comm.Get_rank())
        self.peers = tuple(int(p) for p in peers)
        if len(self.peers) < 2 or self.rank not in self.peers or list(self.peers) != sorted(self.peers):
            raise ValueError(
                f"NodeParamSubscriber: rank {self.rank} with peers {self.peers} (need >= 2, sorted, incl.)"
            )
        self.comm = comm
        self.node_comm = node_comm
        self.source = int(source)
        self.receiver = self.peers[0]
        self.is_receiver = self.rank == self.receiver
        # one receive buffer: each publication is copied into the window as soon as it is taken
        self.subscriber = ParamSubscriber(comm, source, tag, max_bytes, nbuffers=1) if self.is_receiver else None
        self.window: WeightWindow | None = None
        self._wcomm: Any = None
        self.version: int | None = None
        """Version of the newest parameters applied so far (``None`` before the first)."""
        self.seen = 0
        """Number of the newest window publication applied (0 before the first)."""
        self.applied = 0
        """Publications handed to ``apply`` (a torn read that was retried counts once)."""
        self.written = 0
        """(Receiver) Publications written into the window."""
        self._written_schema: Schema | None = None
        self._schema_id = 0
        self._schemas: dict[int, Schema] = {}  # reader: schema id -> parsed schema (ids are never reused)
        self._parsed: tuple[int, Schema] | None = None  # parsed during a read not yet known to be intact
        self._schema_json = b""

    # ------------------------------------------------------------------ start-up
    def _peer_comm(self) -> Any:
        """The communicator of this node's subscribers (``MPI_Comm_create_group``: only they take part)."""
        from mpi4py import MPI

        world_group = self.comm.Get_group()
        node_group = self.node_comm.Get_group()
        try:
            ranks = MPI.Group.Translate_ranks(world_group, list(self.peers), node_group)
        finally:
            world_group.Free()
        if any(r == MPI.UNDEFINED for r in ranks):
            node_group.Free()
            raise ValueError(f"weight subscribers {self.peers} are not all on the node of rank {self.rank}")
        group = node_group.Incl(list(ranks))
        node_group.Free()
        try:
            return self.node_comm.Create_group(group, tag=int(Tag.PARAMS))
        finally:
            group.Free()

    def wait(self, apply: Apply, timeout: float | None = None, on_idle: OnIdle | None = None) -> int:
        """Start-up: create the node's window, wait for the first publication and apply it (collective over peers).

        The receiver waits for the first publication from the leader and broadcasts its size (a
        non-blocking ``Ibcast``: everyone keeps servicing ``on_idle``); then the window is allocated, the
        receiver writes the publication, and every peer applies it from the window.

        Returns:
            The version applied.

        Raises:
            WaitTimeout: the first publication (or the receiver's size broadcast) did not come within
                ``timeout`` (names the publisher, or the receiver rank).
        """
        self._wcomm = self._peer_comm()
        size = np.zeros(1, np.int64)
        first = None
        if self.subscriber is not None:
            first = self.subscriber.wait_record(timeout=timeout, on_idle=on_idle)
            _, schema, _ = first
            size[0] = DoubleBuffer.capacity_for(len(schema.to_json().encode()), schema.nbytes(()))
        req = self._wcomm.Ibcast(size, root=0)
        what = f"the size of the first parameters from the node's weight receiver (rank {self.receiver})"
        wait_for(lambda: True if req.Test() else None, what, self.receiver, timeout, on_idle)
        self.window = WeightWindow.allocate(self._wcomm, int(size[0]))
        if first is not None:
            self.write(first)
        version_got = wait_for(
            lambda: self.poll(apply),
            "the first parameters in the node's weight window",
            self.receiver,
            timeout,
            on_idle,
        )
        _log.debug(
            "weights: rank %d reads the node's shared window (%d bytes, %d subscribers, receiver rank %d)",
            self.rank,
            self.window.nbytes,
            len(self.peers),
            self.receiver,
        )
        return int(version_got)

    # ------------------------------------------------------------------ steady state
    def write(self, got: tuple[int, Schema, NamedArray]) -> None:
        """(Receiver) Write one publication ``(version, schema, record)`` into the window (what :meth:`forward` does).

        Raises:
            ParamsError: it does not fit the window (names this rank, the sizes and ``layout.weights=flat``).
        """
        version, schema, record = got
        assert self.window is not None
        if schema != self._written_schema:
            self._written_schema, self._schema_id = schema, self._schema_id + 1
            self._schema_json = schema.to_json().encode()
        try:
            self.window.buffer.write(
                version,
                self._schema_id,
                self._schema_json,
                lambda view: schema.pack(record, out=view),
                schema.nbytes(()),
            )
        except WindowError as e:
            raise ParamsError(
                f"parameters version {version} on rank {self.rank} (the node's weight receiver): {e}"
            ) from e
        self.written += 1

    def forward(self) -> None:
        """(Receiver) Copy the newest publication that arrived into the window (non-blocking; a no-op elsewhere).

        Cheap when nothing arrived; the receiver calls it from its loop and from its control-plane service,
        so the node gets new weights even while the receiver waits (e.g. on a synchronous sample send).
        """
        if self.subscriber is None or self.window is None:
            return
        got = self.subscriber.poll_record()
        if got is not None:
            self.write(got)

    def _consume(self, apply: Apply) -> Callable[[int, int, np.ndarray, np.ndarray], None]:
        def consume(version: int, sid: int, js: np.ndarray, data: np.ndarray) -> None:
            schema = self._schemas.get(sid)
            if schema is None:  # kept only once the read proved intact (see poll)
                try:
                    schema = Schema.from_json(js.tobytes().decode("utf-8"))
                except (SchemaError, UnicodeDecodeError) as e:
                    raise ParamsError(f"node weight window (receiver rank {self.receiver}): {e}") from e
                self._parsed = (sid, schema)
            apply(version, received_params(schema.unpack(data, ())))

        return consume

    def poll(self, apply: Apply) -> int | None:
        """Apply the node's newest publication if this rank has not applied it yet (non-blocking).

        ``apply(version, params)`` gets read-only views into the shared window; it may be called twice
        in a row when the receiver overwrote the buffer meanwhile (only the last call counts), so it must
        copy what it keeps (``policy.load_state_dict`` does).

        Returns:
            The version applied, or ``None``.
        """
        self.forward()
        window = self.window
        if window is None or not window.buffer.newer_than(self.seen):
            return None
        self._parsed = None
        got = window.buffer.read(self._consume(apply), self.seen)
        if got is None:
            return None
        if self._parsed is not None:
            self._schemas = {self._parsed[0]: self._parsed[1]}
            self._parsed = None
        self.seen, self.version = got[0], got[1]
        self.applied += 1
        return got[1]

    def drain(self) -> int:
        """Keep the node's window fed during shutdown (receiver); returns 0."""
        self.forward()
        return 0

    def close(self) -> None:
        """Cancel the receiver's posted receive and free the window (collective over peers; idempotent)."""
        if self.subscriber is not None:
            self.subscriber.close()
        if self.window is not None:
            self.window.close()
            self.window = None
        if self._wcomm is not None:
            self._wcomm.Free()
            self._wcomm = None
