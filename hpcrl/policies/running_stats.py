"""Running mean and variance of a stream of batches, merged exactly and agreed across trainer ranks.

The moments are kept in float64 as ``(count, mean, var)`` (population variance). A batch is merged
with the parallel-variance formula of Chan, Golub and LeVeque (1979), so after any sequence of
batches the stats equal the mean and variance of all rows seen (to float64 rounding), whatever the
batch sizes. With several trainer ranks, :func:`batch_moments` first combines the ranks' batches
into one (two small allreduces: counts and sums, then squared deviations from the global mean), so
every rank merges the same moments and holds the same stats.

Importing this module does not import torch; ``sync`` is any object with ``allreduce_mean`` and
``world_size`` (:class:`hpcrl.api.trainer.GradientSync`).

Examples:
    >>> import numpy as np
    >>> stats = RunningMoments((2,))
    >>> x = np.arange(12.0).reshape(6, 2)
    >>> for part in (x[:2], x[2:]):
    ...     n, (mean,), (var,) = batch_moments([part])
    ...     stats.update(n, mean, var)
    >>> bool(np.allclose(stats.mean, x.mean(0)) and np.allclose(stats.var, x.var(0))), stats.count
    (True, 6.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["RunningMoments", "batch_moments", "merge_moments"]


def _allreduce_sum(sync: Any, values: np.ndarray) -> np.ndarray:
    """The sum over trainer ranks of ``values`` (float64), the same on every rank; ``values`` on one rank."""
    world = int(getattr(sync, "world_size", 1)) if sync is not None else 1
    if world <= 1:
        return values
    return np.asarray(sync.allreduce_mean(values), dtype=np.float64) * world


def batch_moments(rows: Sequence[np.ndarray], sync: Any = None) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """Count, means and variances of the rows of several arrays (one per stream), over all trainer ranks.

    Every array of ``rows`` holds the same number of rows (axis 0) of one stream; a stream's moments
    are per element of the remaining axes. With ``sync`` of more than one rank this is a collective:
    every trainer rank must call it with the same number of streams and the same per-row shapes (a
    rank with no rows passes arrays of length 0).

    Args:
        rows: one ``(n, *shape)`` array per stream (any real dtype; computed in float64).
        sync: the trainer ranks' :class:`~hpcrl.api.trainer.GradientSync`, or ``None`` for this process only.

    Returns:
        ``(n, means, variances)``: the total row count over all ranks and per stream the mean and
        population variance (float64, shape ``shape``); zeros when ``n`` is 0.

    Raises:
        ValueError: the arrays have different row counts.
    """
    xs = [np.asarray(r, dtype=np.float64) for r in rows]
    counts = {x.shape[0] for x in xs}
    if len(counts) > 1:
        raise ValueError(f"batch_moments: the streams have different row counts {sorted(counts)}")
    n_local = float(xs[0].shape[0]) if xs else 0.0
    head = _allreduce_sum(sync, np.concatenate([[n_local], *(x.sum(axis=0).ravel() for x in xs)]))
    n = float(head[0])
    means, offset = [], 1
    for x in xs:
        size = int(np.prod(x.shape[1:], dtype=np.int64))
        total = head[offset : offset + size].reshape(x.shape[1:])
        means.append(total / n if n > 0 else np.zeros(x.shape[1:]))
        offset += size
    dev = [((x - m) ** 2).sum(axis=0).ravel() for x, m in zip(xs, means)]
    m2 = _allreduce_sum(sync, np.concatenate(dev) if dev else np.zeros(0))
    variances, offset = [], 0
    for x in xs:
        size = int(np.prod(x.shape[1:], dtype=np.int64))
        part = m2[offset : offset + size].reshape(x.shape[1:])
        variances.append(part / n if n > 0 else np.zeros(x.shape[1:]))
        offset += size
    return n, means, variances


def merge_moments(
    count: float, mean: np.ndarray, var: np.ndarray, n: float, batch_mean: np.ndarray, batch_var: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    """Merge a batch's moments into running ones (Chan et al.'s parallel formula).

    Args:
        count: rows seen so far (0: the result is the batch's moments).
        mean: their mean.
        var: their population variance.
        n: the batch's row count (0: the running moments are returned unchanged).
        batch_mean: the batch's mean.
        batch_var: the batch's population variance.

    Returns:
        ``(count + n, mean, var)`` of all rows (float64).

    Examples:
        >>> c, m, v = merge_moments(2.0, np.array(1.0), np.array(1.0), 2.0, np.array(3.0), np.array(1.0))
        >>> c, float(m), float(v)  # rows 0, 2 then 2, 4
        (4.0, 2.0, 2.0)
    """
    mean = np.asarray(mean, np.float64)
    var = np.asarray(var, np.float64)
    if n <= 0:
        return float(count), mean, var
    batch_mean = np.asarray(batch_mean, np.float64)
    batch_var = np.asarray(batch_var, np.float64)
    if count <= 0:
        return float(n), batch_mean.copy(), batch_var.copy()
    total = count + n
    delta = batch_mean - mean
    new_mean = mean + delta * (n / total)
    m2 = var * count + batch_var * n + delta**2 * (count * n / total)
    return float(total), new_mean, m2 / total


class RunningMoments:
    """Running ``count``, ``mean`` and ``var`` (float64) of rows of a fixed shape.

    Before any row, ``count`` is 0, ``mean`` 0 and ``var`` 1 (normalising with them changes nothing).

    Args:
        shape: the shape of one row.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.count = 0.0
        self.mean = np.zeros(self.shape, np.float64)
        self.var = np.ones(self.shape, np.float64)

    def update(self, n: float, batch_mean: np.ndarray, batch_var: np.ndarray) -> None:
        """Merge a batch's moments (from :func:`batch_moments`)."""
        self.count, self.mean, self.var = merge_moments(self.count, self.mean, self.var, n, batch_mean, batch_var)

    def state(self) -> dict[str, np.ndarray]:
        """``{"count": (), "mean": shape, "var": shape}`` float64 arrays (copies), for checkpoints."""
        return {"count": np.array(self.count, np.float64), "mean": self.mean.copy(), "var": self.var.copy()}

    def load(self, state: dict[str, Any], what: str = "running moments") -> None:
        """Restore :meth:`state`'s output (numpy arrays or tensors).

        Raises:
            ValueError: a field is missing or has another shape (the message names ``what`` and the field).
        """
        loaded = {}
        for key, shape in (("count", ()), ("mean", self.shape), ("var", self.shape)):
            if key not in state:
                raise ValueError(f"{what}: the stored state has no {key!r} (fields: {sorted(state)})")
            value = state[key]
            arr = np.array(value.detach().cpu().numpy() if hasattr(value, "detach") else value, np.float64)
            if arr.shape != shape:
                raise ValueError(f"{what}: stored {key!r} has shape {arr.shape}, expected {shape}")
            loaded[key] = arr
        self.count, self.mean, self.var = float(loaded["count"]), loaded["mean"], loaded["var"]
