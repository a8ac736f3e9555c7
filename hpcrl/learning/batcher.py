"""Trainer-side batching: queue fragments, drop stale ones, cut batches of ``batch_size`` columns."""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import numpy as np

from hpcrl.api.namedarray import concat
from hpcrl.api.trainer import SampleBatch

__all__ = ["Batcher"]

log = logging.getLogger(__name__)


def _oldest_version(fragment: SampleBatch) -> int:
    v = fragment.policy_version
    if v is None:
        return 0
    return int(np.min(v[:-1])) if v.shape[0] > 1 else int(np.min(v))


class Batcher:
    """Collects ``(T + 1, k)`` fragments into ``(T + 1, batch_size)`` training batches.

    A fragment whose oldest decision row was produced by a policy more than
    ``max_staleness`` versions behind the current one is dropped and counted, both
    when it arrives and when it would enter a batch. The first fragment fixes the layout
    (fields, dtypes, ``T + 1`` and the per-row shapes); a fragment that differs is refused
    with an error naming the field, so batches are never assembled from misfits.

    Args:
        batch_size: columns (trajectories) per batch.
        max_staleness: versions of lag tolerated.
    """

    def __init__(self, batch_size: int, max_staleness: int) -> None:
        if batch_size < 1:
            raise ValueError(f"training.batch_size must be >= 1, got {batch_size}")
        if max_staleness < 0:
            raise ValueError(f"training.max_staleness must be >= 0, got {max_staleness}")
        self.batch_size = batch_size
        self.max_staleness = max_staleness
        self._queue: deque[SampleBatch] = deque()
        self._columns = 0
        self.dropped = 0
        self.dropped_columns = 0
        self.received = 0
        self._layout: list[tuple[str, np.dtype[Any], int, tuple[int, ...]]] | None = None

    def _stale(self, fragment: SampleBatch, version: int) -> bool:
        return version - _oldest_version(fragment) > self.max_staleness

    def add(self, fragment: SampleBatch, version: int) -> bool:
        """Queue ``fragment`` unless it is already stale at policy ``version``; returns whether it was kept.

        Raises:
            ValueError: the fragment's layout differs from the first fragment's (names the field).
        """
        self._check_layout(fragment)
        self.received += 1
        if self._stale(fragment, version):
            self.dropped += 1
            self.dropped_columns += fragment.done.shape[1] if fragment.done is not None else 0
            return False
        self._queue.append(fragment)
        self._columns += self._width(fragment)
        return True

    def _check_layout(self, fragment: SampleBatch) -> None:
        layout = [(p, x.dtype, x.shape[0], x.shape[2:]) for p, x in fragment.flat_items() if np.ndim(x) >= 2]
        if self._layout is None:
            self._layout = layout
            return
        if layout == self._layout:
            return
        mine = {p: (d, t, s) for p, d, t, s in self._layout}
        theirs = {p: (d, t, s) for p, d, t, s in layout}
        if mine.keys() != theirs.keys():
            raise ValueError(
                f"fragment fields {sorted(theirs)} differ from the first fragment's {sorted(mine)} "
                f"(missing {sorted(set(mine) - set(theirs))}, unexpected {sorted(set(theirs) - set(mine))})"
            )
        for p, (d, t, shape) in mine.items():
            d2, t2, shape2 = theirs[p]
            if (d2, t2, shape2) != (d, t, shape):
                raise ValueError(
                    f"fragment field {p!r}: expected ({t}, columns, *{shape}) {d} like the first fragment, "
                    f"got ({t2}, columns, *{shape2}) {d2}"
                )

    @staticmethod
    def _width(fragment: SampleBatch) -> int:
        for _, leaf in fragment.flat_items():
            return int(leaf.shape[1])
        return 0

    def ready(self) -> bool:
        """Whether a full batch is queued."""
        return self._columns >= self.batch_size

    @property
    def queued_columns(self) -> int:
        """Columns waiting in the queue."""
        return self._columns

    def pop(self, version: int) -> SampleBatch | None:
        """Cut one batch, dropping fragments that went stale while queued; None if not enough remain."""
        while self._queue and self._stale(self._queue[0], version):
            frag = self._queue.popleft()
            w = self._width(frag)
            self._columns -= w
            self.dropped += 1
            self.dropped_columns += w
        if self._columns < self.batch_size:
            return None
        parts: list[SampleBatch] = []
        need = self.batch_size
        while need > 0:
            frag = self._queue.popleft()
            w = self._width(frag)
            if w <= need:
                parts.append(frag)
                need -= w
                self._columns -= w
            else:
                parts.append(frag[:, :need])
                self._queue.appendleft(frag[:, need:])
                self._columns -= need
                need = 0
        return parts[0] if len(parts) == 1 else concat(parts, axis=1)
