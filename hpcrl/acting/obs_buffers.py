"""Per-slot observation buffers of an env ring group (see :class:`~hpcrl.acting.env_ring.EnvRing`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.schema import WIRE_DTYPES, Schema, from_flat
from hpcrl.envs.checks import describe, leaf_problem

__all__ = ["ObsBuffers", "Misfit"]

_F32 = np.dtype(np.float32)


class Misfit(ValueError):
    """One field of a step result does not fit the ring's buffers (the message starts with the field)."""


class ObsBuffers:
    """Per-slot observation buffers (one array per leaf, ``(S, *shape)``), written as results arrive.

    Built from the first observation, which fixes every field's shape and dtype; every later write
    checks its leaf against them (one shape and one dtype comparison each) and refuses a mismatch
    instead of letting numpy broadcast or cast it. A request is a view of the buffers (every slot
    acting) or one fancy-index copy, instead of stacking per-agent NamedArrays every step.

    Float leaves of one dtype share one allocation (with ``reward_width`` float32 columns for the group's
    rewards at the end of the float32 one), so the NaN/Inf check is one dot product per float dtype.

    Raises:
        Misfit: the first observation has a leaf that is not a numpy array of a wire dtype.
    """

    def __init__(self, obs: NamedArray, num_slots: int, reward_width: int) -> None:
        self.flat = all(not isinstance(v, NamedArray) for v in obs.values())
        self.cls = type(obs)
        self.keys: list[str] = list(obs.keys())
        if self.flat:
            self.paths = [k for k in self.keys if getattr(obs, k) is not None]
        else:
            schema = Schema.of(obs, batch_ndim=0)
            self.paths = [leaf.path for leaf in schema.leaves]
            self.nodes = schema.nodes
        flat = dict(obs.flat_items())
        for p in self.paths:
            x = flat[p]
            if not isinstance(x, np.ndarray) or x.dtype.str not in WIRE_DTYPES:
                raise Misfit(f"obs field {p!r}: expected a numpy array of a numeric/bool dtype, got {describe(x)}")
        shapes = {p: (num_slots, *flat[p].shape) for p in self.paths}
        blocks: dict[np.dtype[Any], list[str]] = {}  # float dtype -> the leaves that share its block
        for p in self.paths:
            if flat[p].dtype.kind == "f":
                blocks.setdefault(flat[p].dtype, []).append(p)
        by_path: dict[str, np.ndarray] = {}
        #: one (flat block, zeros) per float dtype: ``block.dot(zeros)`` is 0 unless the block holds NaN/Inf
        self.finite: list[tuple[np.ndarray, np.ndarray]] = []
        self.reward = np.zeros((num_slots, reward_width), np.float32)
        blocks.setdefault(_F32, [])
        for dtype, paths in blocks.items():
            sizes = [math.prod(shapes[p]) for p in paths]
            extra = self.reward.size if dtype == _F32 else 0
            block = np.zeros(sum(sizes) + extra, dtype)
            at = 0
            for p, n in zip(paths, sizes):
                by_path[p] = block[at : at + n].reshape(shapes[p])
                at += n
            if extra:
                self.reward = block[at:].reshape(num_slots, reward_width)
            self.finite.append((block, np.zeros(block.size, dtype)))
        self.bufs = [by_path[p] if p in by_path else np.zeros(shapes[p], flat[p].dtype) for p in self.paths]
        self.spec = [(p, b, b.shape[1:], b.dtype) for p, b in zip(self.paths, self.bufs)]
        every = dict(zip(self.paths, self.bufs))
        self.full_values = [every.get(k) for k in self.keys]  # (flat obs) field values of a full view

    def write(self, slot: int, obs: NamedArray) -> None:
        """Copy one agent's observation into row ``slot``.

        Raises:
            Misfit: a missing or extra field, or a leaf whose type, shape or dtype differs from the first one's.
        """
        if self.flat:
            if obs._keys != self.keys:  # type: ignore[attr-defined]
                self._keys_misfit(obs.keys())
            for k, b, shape, dtype in self.spec:
                x = getattr(obs, k)
                if x.shape != shape or x.dtype is not dtype:  # no shape/dtype: AttributeError, diagnosed
                    problem = leaf_problem(x, shape, dtype)
                    if problem is not None:
                        raise Misfit(f"obs field {k!r}: {problem}")
                b[slot] = x
            return
        flat = dict(obs.flat_items())
        if len(flat) != len(self.paths) or not all(p in flat for p in self.paths):
            self._keys_misfit(list(flat))
        for k, b, shape, dtype in self.spec:
            x = flat[k]
            problem = leaf_problem(x, shape, dtype)
            if problem is not None:
                raise Misfit(f"obs field {k!r}: {problem}")
            b[slot] = x

    def _keys_misfit(self, keys: list[str]) -> None:
        mine = self.keys if self.flat else self.paths
        if set(keys) == set(mine):
            return  # the same fields in another order: written by name
        missing = [k for k in mine if k not in keys]
        extra = [k for k in keys if k not in mine]
        raise Misfit(f"obs fields: expected {mine}, got {keys} (missing {missing}, unexpected {extra})")

    def view(self, idx: np.ndarray | None) -> NamedArray:
        """The observations of rows ``idx`` (a copy), or of every slot (``None``: the buffers themselves)."""
        if idx is None and self.flat:  # every slot acting: the buffers themselves, in field order
            return self.cls._build(self.keys, self.full_values)
        arrays = self.bufs if idx is None else [b[idx] for b in self.bufs]
        if self.flat:
            by_key = dict(zip(self.paths, arrays))
            return self.cls._build(self.keys, [by_key.get(k) for k in self.keys])
        return from_flat(dict(zip(self.paths, arrays)), self.nodes)
