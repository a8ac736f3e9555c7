"""Trajectory assembly: per-agent-slot columns of ``T + 1`` rows, emitted as SampleBatch fragments.

Each agent slot of an actor owns one column of a ``(T + 1, S)`` buffer and a cursor.
A step writes one row for every slot that acted. When a slot's column holds ``T + 1``
rows it is copied into the outgoing fragment and restarted with its last row (the
bootstrap row) as row 0, so consecutive fragments of a slot overlap by one row. A
fragment is emitted once it holds ``S`` complete columns; in the common case (every
agent acts every step) all columns complete together and a fragment is exactly the
buffer. Slots that act at different rates (turn-based multi-agent games) simply
complete at different times; nothing is dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.api.trainer import SampleBatch

__all__ = ["TrajectoryBuffer"]


def _sentinel_like(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Allocate ``shape + x.shape[1:]`` filled with a value that stands out if read unwritten."""
    full = shape + tuple(x.shape[1:])
    if np.issubdtype(x.dtype, np.floating):
        return np.full(full, np.nan, x.dtype)
    if x.dtype == np.bool_:
        return np.zeros(full, np.bool_)
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
        self._buf: SampleBatch | None = None
        self._out: SampleBatch | None = None
        self._out_cols = 0
        self._cursor = np.zeros(num_slots, np.int64)
        self._ready: list[SampleBatch] = []

    @property
    def allocated(self) -> bool:
        """Whether the first row has fixed the structure."""
        return self._buf is not None

    def _allocate(self, row: SampleBatch) -> None:
        self._buf = row.apply(lambda x: _sentinel_like(np.asarray(x), (self.rows, self.num_slots)))
        self._out = row.apply(lambda x: _sentinel_like(np.asarray(x), (self.rows, self.num_slots)))

    def add(self, slots: np.ndarray, row: SampleBatch) -> None:
        """Write one row for each of ``slots`` (``row`` leaves are ``(len(slots), ...)``).

        Raises:
            ValueError: the row's structure differs from earlier rows (names the field).
        """
        if self._buf is None:
            self._allocate(row)
        buf = self._buf
        assert buf is not None
        cur = self._cursor[slots]
        try:
            for (_, dst), (_, src) in zip(buf.flat_items(), row.flat_items()):
                dst[cur, slots] = src
        except (ValueError, IndexError) as e:
            raise ValueError(f"sample row does not match the trajectory layout ({e}); row: {row!r}") from e
        self._cursor[slots] += 1
        full = slots[self._cursor[slots] == self.rows]
        for s in full:
            self._complete(int(s))

    def _complete(self, slot: int) -> None:
        buf, out = self._buf, self._out
        assert buf is not None and out is not None
        col = self._out_cols
        for (_, o), (_, b) in zip(out.flat_items(), buf.flat_items()):
            o[:, col] = b[:, slot]
            b[0, slot] = b[-1, slot]
        self._cursor[slot] = 1
        self._out_cols += 1
        if self._out_cols == self.num_slots:
            self._ready.append(out)
            self._out = out.apply(lambda x: np.empty_like(x))
            self._out_cols = 0

    def mark_truncated(self, slots: np.ndarray) -> None:
        """Mark the newest row of ``slots`` as truncated (its env failed; that row is no decision)."""
        if self._buf is None:
            return
        buf = self._buf
        for s in slots:
            c = int(self._cursor[s])
            if c > 0 and buf.truncated is not None:
                buf.truncated[c - 1, s] = True
                buf.done[c - 1, s] = False  # type: ignore[index]

    def pop_ready(self) -> list[SampleBatch]:
        """Fragments completed since the last call (each ``(T + 1, num_slots)``)."""
        ready, self._ready = self._ready, []
        return ready

    def layout(self) -> Any:
        """The fragment structure (a SampleBatch of one row), once known."""
        return None if self._buf is None else self._buf[0:1, 0:1]


def row_batch(
    obs: NamedArray,
    policy_state: NamedArray | None,
    action: NamedArray,
    analyzed_result: NamedArray | None,
    reward: np.ndarray,
    done: np.ndarray,
    truncated: np.ndarray,
    policy_version: np.ndarray,
    on_reset: np.ndarray,
) -> SampleBatch:
    """Assemble one step's rows (leaves ``(n, ...)``) into a SampleBatch row."""
    return SampleBatch(
        obs=obs,
        policy_state=policy_state,
        action=action,
        analyzed_result=analyzed_result,
        reward=reward,
        done=done,
        truncated=truncated,
        policy_version=policy_version,
        on_reset=on_reset,
    )
