"""Trajectory assembly: per-agent-slot columns of ``T + 1`` rows, emitted as SampleBatch fragments.

Each agent slot of an actor owns one column of a ``(T + 1, S)`` buffer and a cursor.
A step writes one row for every slot that acted. When a slot's column holds ``T + 1``
rows it is copied into the outgoing fragment and restarted with its last row (the
bootstrap row) as row 0, so consecutive fragments of a slot overlap by one row. A
fragment is emitted once it holds ``S`` complete columns.

In the common case every agent acts every step: all cursors stay equal ("synced"), a
row is one slice assignment per leaf, and a full buffer *is* the fragment (handed out
without copying; a fresh buffer takes its place). Slots that act at different rates
(turn-based multi-agent games) fall back to per-slot cursors and column copies;
nothing is dropped either way.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hpcrl.api.trainer import SampleBatch
from hpcrl.comm.channel import HEADER_NBYTES
from hpcrl.comm.schema import Schema

__all__ = ["TrajectoryBuffer"]


def _sentinel_like(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Allocate ``shape + x.shape[1:]`` filled with a value that stands out if read unwritten."""
    full = shape + tuple(x.shape[1:])
    if np.issubdtype(x.dtype, np.floating):
        return np.full(full, np.nan, x.dtype)
    if x.dtype == np.bool_:
        return np.zeros(full, np.bool_)
    if np.issubdtype(x.dtype, np.unsignedinteger):  # e.g. uint8 Atari frames: -1 does not fit
        return np.full(full, np.iinfo(x.dtype).max, x.dtype)
    return np.full(full, -1, x.dtype)


class TrajectoryBuffer:
    """Collects rows for ``num_slots`` agent slots and emits ``(T + 1, num_slots)`` SampleBatch fragments.

    Args:
        num_slots: agent slots in this group (columns of a fragment).
        fragment_length: ``T``: decision rows per fragment (each fragment has ``T + 1`` rows).
    """

    def __init__(self, num_slots: int, fragment_length: int) -> None:
        if fragment_length < 1:
            raise ValueError(f"fragment_length must be >= 1, got {fragment_length}")
        self.num_slots = num_slots
        self.rows = fragment_length + 1
        self._schema: Schema | None = None
        self._buf: SampleBatch | None = None
        self._bufs: list[np.ndarray] = []
        self._paths: list[str] = []  # leaf paths, for messages
        self._row_shapes: list[tuple[int, ...]] = []  # one full row of each leaf: (num_slots, ...)
        self._dtypes: list[np.dtype[Any]] = []
        self._every = range(0)
        self._out: SampleBatch | None = None
        self._outs: list[np.ndarray] = []
        self._out_cols = 0
        self._cursor = np.zeros(num_slots, np.int64)
        # While every slot is at the same row, that row as a plain int (then _cursor is not kept up to date:
        # the per-step fast path touches no array); None once the slots diverged (_cursor is authoritative).
        self._synced_row: int | None = 0
        self._ready: list[SampleBatch] = []
        self._all = np.arange(num_slots)

    @property
    def allocated(self) -> bool:
        """Whether the first row has fixed the structure."""
        return self._buf is not None

    def allocate(self, row: SampleBatch) -> None:
        """Fix the layout from one row (leaves ``(n, ...)``); sentinel-filled so unwritten reads stand out.

        Fragments are allocated in wire layout (``Schema.allocate_views`` with room for a channel
        header), so an actor sends a finished fragment without packing it (zero copy).
        """
        row = row.numpy()
        self._schema = dataclasses.replace(Schema.of(row, batch_ndim=1), batch_ndim=2)
        self._buf = self._fresh()
        for leaf, src in zip(self._buf.leaves(), row.leaves()):
            leaf[...] = _sentinel_like(np.asarray(src), (self.rows, self.num_slots))
        self._bufs = self._buf.leaves()
        self._paths = [leaf.path for leaf in self._schema.leaves]
        self._row_shapes = [b.shape[1:] for b in self._bufs]
        self._dtypes = [b.dtype for b in self._bufs]
        self._every = range(len(self._bufs))
        self._out = self._fresh()
        self._outs = self._out.leaves()

    def _fresh(self) -> SampleBatch:
        assert self._schema is not None
        return self._schema.allocate_views((self.rows, self.num_slots), HEADER_NBYTES)  # type: ignore[return-value]

    def add(self, slots: np.ndarray, row: SampleBatch) -> None:
        """Write one row for each of ``slots`` (``row`` leaves are ``(len(slots), ...)``).

        Raises:
            ValueError: the row's structure differs from earlier rows.
        """
        if self._buf is None:
            self.allocate(row)
        leaves = row.leaves()
        if len(leaves) != len(self._bufs):
            raise ValueError(f"sample row has {len(leaves)} leaves, the trajectory layout {len(self._bufs)}: {row!r}")
        self.add_leaves(slots, leaves)

    def add_leaves(self, slots: np.ndarray, leaves: list[Any], checked: range | None = None) -> None:
        """Write one row for ``slots`` from leaves in the layout's ``flat_items`` order (the fast path).

        Every checked leaf must have exactly the shape of its part of the row, ``(len(slots), ...)``, and a
        dtype that converts within its kind (a shape mismatch is refused, never broadcast).

        Args:
            slots: the slots that acted.
            leaves: one array per leaf of the layout.
            checked: the indices of the leaves to check (default: all). The env ring passes the leaves of
                the policy's result only: the others are views of its own buffers, built to the layout.

        Raises:
            ValueError: a leaf does not fit its trajectory column (names the field, expected and actual).
        """
        bufs = self._bufs
        if len(leaves) != len(bufs):
            raise ValueError(f"sample row has {len(leaves)} leaves, the trajectory layout {len(bufs)}")
        c = self._synced_row
        if c is not None and len(slots) == self.num_slots:
            shapes, dtypes = self._row_shapes, self._dtypes
            for k in self._every if checked is None else checked:
                src = leaves[k]
                if type(src) is not np.ndarray or src.shape != shapes[k] or src.dtype is not dtypes[k]:
                    leaves[k] = self._fit(k, src, shapes[k])
            for dst, src in zip(bufs, leaves):
                dst[c] = src
            self._synced_row = c + 1
            if c + 1 == self.rows:
                self._complete_all()
            return
        if c is not None:  # the slots diverge from here on: the array takes over
            self._cursor[:] = c
            self._synced_row = None
        cur = self._cursor[slots]
        n = len(slots)
        for k, (dst, src, shape) in enumerate(zip(bufs, leaves, self._row_shapes)):
            dst[cur, slots] = self._fit(k, src, (n, *shape[1:]))
        self._cursor[slots] += 1
        full = slots[self._cursor[slots] == self.rows]
        for s in full:
            self._complete(int(s))
        if bool((self._cursor == self._cursor[0]).all()):
            self._synced_row = int(self._cursor[0])

    def _fit(self, k: int, src: Any, shape: tuple[int, ...]) -> np.ndarray:
        """Leaf ``k`` as an array of exactly ``shape`` in a dtype castable to its column's (else ValueError)."""
        if isinstance(src, np.ndarray):
            arr = src
        elif hasattr(src, "detach"):  # a torch tensor
            arr = src.detach().cpu().numpy()
        else:
            arr = np.asarray(src)
        if arr.shape != shape:
            raise ValueError(f"field {self._paths[k]!r}: expected shape {shape}, got {arr.shape}")
        dtype = self._dtypes[k]
        if arr.dtype != dtype and not np.can_cast(arr.dtype, dtype, "same_kind"):
            raise ValueError(f"field {self._paths[k]!r}: expected dtype {dtype}, got {arr.dtype}")
        return arr

    def _complete_all(self) -> None:
        if self._out_cols:  # columns from earlier, unsynchronised completions are waiting: keep order
            for s in range(self.num_slots):
                self._complete(s)
            self._synced_row = 1
            return
        old = self._buf
        assert old is not None
        self._ready.append(old)
        self._buf = self._fresh()
        self._bufs = self._buf.leaves()
        for dst, src in zip(self._bufs, old.leaves()):
            dst[0] = src[-1]
        self._cursor[:] = 1
        self._synced_row = 1

    def _complete(self, slot: int) -> None:
        col = self._out_cols
        for o, b in zip(self._outs, self._bufs):
            o[:, col] = b[:, slot]
            b[0, slot] = b[-1, slot]
        self._cursor[slot] = 1
        self._out_cols += 1
        if self._out_cols == self.num_slots:
            out = self._out
            assert out is not None
            self._ready.append(out)
            self._out = self._fresh()
            self._outs = self._out.leaves()
            self._out_cols = 0

    def mark_truncated(self, slots: np.ndarray) -> None:
        """Mark the newest row of ``slots`` as truncated (its env failed; that row is no decision)."""
        buf = self._buf
        if buf is None or buf.truncated is None or buf.done is None:
            return
        for s in slots:
            c = self._synced_row if self._synced_row is not None else int(self._cursor[s])
            if c > 0:
                buf.truncated[c - 1, s] = True
                buf.done[c - 1, s] = False

    def pop_ready(self) -> list[SampleBatch]:
        """Fragments completed since the last call (each ``(T + 1, num_slots)``)."""
        ready, self._ready = self._ready, []
        return ready
