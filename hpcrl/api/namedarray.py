"""NamedArray: nested, typed records of arrays batched on their leading dimensions.

A NamedArray is a small record whose fields are numpy arrays, torch tensors, nested
NamedArrays or ``None``. Every leaf shares the same leading *batch* dimensions, so
indexing and slicing a NamedArray applies the index to every leaf. A NamedArray describes
itself as a list of :class:`LeafSpec` (field path -> dtype, per-row shape; :func:`leaf_specs`);
the channels build their wire layout from that description and pack every leaf into one flat
byte buffer per message (:mod:`hpcrl.comm.schema`).

Examples:
    >>> import numpy as np
    >>> @namedarray
    ... class Obs:
    ...     obs: np.ndarray
    ...     state: np.ndarray | None = None
    >>> x = Obs(obs=np.zeros((4, 3), np.float32))
    >>> x[1:3].obs.shape
    (2, 3)
    >>> list(x.keys())
    ['obs', 'state']
    >>> y = stack([x, x])
    >>> y.obs.shape
    (2, 4, 3)
    >>> [(leaf.path, leaf.dtype, leaf.shape) for leaf in leaf_specs(x, batch_ndim=1)]
    [('obs', '<f4', (3,))]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "NamedArray",
    "namedarray",
    "stack",
    "concat",
    "LeafSpec",
    "leaf_specs",
]

T = TypeVar("T", bound="NamedArray")


def _is_torch(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch")


class NamedArray:
    """A nested record of arrays sharing leading batch dimensions.

    Subclasses declare fields with annotations (or use :func:`namedarray`). A bare
    ``NamedArray(a=..., b=...)`` is a dynamic record whose fields are the keyword
    arguments, in order. Fields without a class-level default are required; a
    field may hold ``None``. Subclasses declared with ``extra=True`` also keep
    unknown keyword fields (after the declared ones), so nothing is ever dropped.
    """

    _fields: tuple[str, ...] = ()
    _defaults: dict[str, Any] = {}
    _extra: bool = True  # the bare NamedArray is fully dynamic

    def __init_subclass__(cls, extra: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields: list[str] = []
        defaults: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            if issubclass(base, NamedArray) and base is not NamedArray:
                for f in base._fields:
                    if f not in fields:
                        fields.append(f)
                defaults.update(base._defaults)
        for name in cls.__dict__.get("__annotations__", {}):
            if name.startswith("_"):
                continue
            if name not in fields:
                fields.append(name)
            if name in cls.__dict__:
                default = cls.__dict__[name]
                if isinstance(default, (np.ndarray, list, dict, set)):
                    raise TypeError(f"{cls.__name__}.{name}: mutable default {type(default).__name__} not allowed")
                defaults[name] = default
                delattr(cls, name)  # the class attribute would shadow nothing, but keep the class clean
        cls._fields = tuple(fields)
        cls._defaults = defaults
        cls._extra = extra or any(getattr(b, "_extra", False) for b in cls.__mro__[1:-1] if b is not NamedArray)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        fields = cls._fields
        if len(args) > len(fields):
            raise TypeError(f"{cls.__name__} takes at most {len(fields)} positional fields, got {len(args)}")
        data: dict[str, Any] = {}
        for name, value in zip(fields, args):
            data[name] = value
        for name, value in kwargs.items():
            if name in data:
                raise TypeError(f"{cls.__name__}: field {name!r} given twice")
            if name not in fields and not cls._extra:
                raise TypeError(f"{cls.__name__} has no field {name!r}; its fields are {list(fields)}")
            data[name] = value
        for name in fields:
            if name not in data:
                if name in cls._defaults:
                    data[name] = cls._defaults[name]
                else:
                    raise TypeError(f"{cls.__name__}: missing required field {name!r}")
        keys = list(fields) + [k for k in data if k not in fields]
        object.__setattr__(self, "_keys", keys)
        for k in keys:
            object.__setattr__(self, k, data[k])

    # ---------------------------------------------------------------- construction
    @classmethod
    def _build(cls: type[T], keys: list[str], values: list[Any]) -> T:
        obj = cls.__new__(cls)
        object.__setattr__(obj, "_keys", list(keys))
        for k, v in zip(keys, values):
            object.__setattr__(obj, k, v)
        return obj

    # ---------------------------------------------------------------- mapping view
    def keys(self) -> list[str]:
        """Field names in declaration order (extra fields last)."""
        return list(self._keys)  # type: ignore[attr-defined]

    def values(self) -> list[Any]:
        """Field values in declaration order."""
        return [getattr(self, k) for k in self._keys]  # type: ignore[attr-defined]

    def items(self) -> list[tuple[str, Any]]:
        """(name, value) pairs in declaration order."""
        return [(k, getattr(self, k)) for k in self._keys]  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self._keys  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        keys: list[str] = self._keys  # type: ignore[attr-defined]
        if name not in keys:
            if not type(self)._extra:
                raise AttributeError(f"{type(self).__name__} has no field {name!r}; its fields are {keys}")
            keys.append(name)
        object.__setattr__(self, name, value)

    def __getitem__(self: T, index: Any) -> Any:
        if isinstance(index, str):
            if index not in self._keys:  # type: ignore[attr-defined]
                raise KeyError(f"{type(self).__name__} has no field {index!r}; its fields are {self.keys()}")
            return getattr(self, index)
        return self._build(self.keys(), [None if v is None else v[index] for v in self.values()])

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, str):
            setattr(self, index, value)
            return
        if not isinstance(value, NamedArray):
            raise TypeError(
                f"assigning into a {type(self).__name__} slice needs a NamedArray, got {type(value).__name__}"
            )
        for k, mine in self.items():
            other = getattr(value, k, None) if k in value else None
            if mine is None:
                if other is not None:
                    raise ValueError(f"{type(self).__name__}.{k} is None here but not in the assigned value")
                continue
            if other is None:
                raise ValueError(f"{type(self).__name__}.{k} is missing (None) in the assigned value")
            mine[index] = other

    def __len__(self) -> int:
        for k in self._keys:  # type: ignore[attr-defined]
            v = getattr(self, k)
            if v is None:
                continue
            if isinstance(v, NamedArray):
                if not v.leaves():
                    continue
                return len(v)
            return int(v.shape[0])
        return 0

    def __eq__(self, other: object) -> bool:
        """Structural equality: same keys and element-wise equal leaves."""
        if not isinstance(other, NamedArray) or self.keys() != other.keys():
            return False
        for (pa, a), (pb, b) in zip(self.flat_items(include_none=True), other.flat_items(include_none=True)):
            if pa != pb or (a is None) != (b is None):
                return False
            if a is not None and not (np.shape(a) == np.shape(b) and bool(np.all(_as_np(a) == _as_np(b)))):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = []
        for k, v in self.items():
            if v is None or isinstance(v, NamedArray):
                parts.append(f"{k}={v!r}")
            else:
                parts.append(f"{k}={type(v).__name__}(shape={tuple(v.shape)}, dtype={v.dtype})")
        return f"{type(self).__name__}({', '.join(parts)})"

    # ---------------------------------------------------------------- leaves
    def flat_items(self, include_none: bool = False, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """Yield ``(dotted.path, leaf)`` for every leaf, depth first, in field order."""
        for k, v in self.items():
            path = f"{prefix}{k}"
            if isinstance(v, NamedArray):
                yield from v.flat_items(include_none, prefix=path + ".")
            elif v is not None or include_none:
                yield path, v

    def leaves(self, out: list[Any] | None = None) -> list[Any]:
        """The non-None leaves, depth first in field order (the order of :meth:`flat_items`, without paths)."""
        if out is None:
            out = []
        for k in self._keys:  # type: ignore[attr-defined]
            v = getattr(self, k)
            if v is None:
                continue
            if isinstance(v, NamedArray):
                v.leaves(out)
            else:
                out.append(v)
        return out

    def apply(self: T, fn: Callable[[Any], Any]) -> T:
        """Return a new NamedArray with ``fn`` applied to every non-None leaf."""
        vals: list[Any] = []
        for v in self.values():
            if v is None:
                vals.append(None)
            elif isinstance(v, NamedArray):
                vals.append(v.apply(fn))
            else:
                vals.append(fn(v))
        return self._build(self.keys(), vals)

    def numpy(self: T) -> T:
        """Convert every torch leaf to numpy (CPU); numpy leaves are kept as they are."""
        return self.apply(lambda x: x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x))

    def to_torch(self: T, device: Any = "cpu") -> T:
        """Convert every leaf to a torch tensor on ``device`` (no copy for CPU numpy leaves)."""
        import torch

        def conv(x: Any) -> Any:
            if _is_torch(x):
                return x.to(device)
            return torch.from_numpy(np.ascontiguousarray(x)).to(device)

        return self.apply(conv)

    def to(self: T, device: Any) -> T:
        """Move torch leaves to ``device`` (numpy leaves become tensors)."""
        return self.to_torch(device)

    def copy(self: T) -> T:
        """Deep copy of every leaf."""
        return self.apply(lambda x: x.clone() if _is_torch(x) else np.array(x, copy=True))

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict of the fields (NamedArrays become dicts)."""
        return {k: v.to_dict() if isinstance(v, NamedArray) else v for k, v in self.items()}


def namedarray(cls: type | None = None, *, extra: bool = False) -> Any:
    """Class decorator turning an annotated class into a :class:`NamedArray` subclass.

    Args:
        cls: the class; fields are its annotations, in order. Defaults must be immutable.
        extra: keep unknown keyword fields instead of raising.

    Returns:
        A new class deriving from ``NamedArray`` (and ``cls``'s own bases) with the same name.

    Examples:
        >>> import numpy as np
        >>> @namedarray
        ... class PolicyState:
        ...     hx: np.ndarray
        >>> PolicyState(hx=np.zeros((1, 2, 8))).hx.shape
        (1, 2, 8)
    """

    def wrap(c: type) -> type:
        if issubclass(c, NamedArray):
            return c
        ns = {k: v for k, v in c.__dict__.items() if k not in ("__dict__", "__weakref__")}
        bases = tuple(b for b in c.__bases__ if b is not object) + (NamedArray,)
        return type(c.__name__, bases, ns, extra=extra)

    return wrap if cls is None else wrap(cls)


def _as_np(x: Any) -> np.ndarray:
    if _is_torch(x):
        return x.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(x)


def _combine(items: Sequence[NamedArray], fn_np: Callable[..., Any], fn_torch: str, axis: int) -> Any:
    if not items:
        raise ValueError("cannot combine an empty list of NamedArrays")
    first = items[0]
    keys = first.keys()
    for it in items[1:]:
        if it.keys() != keys:
            raise ValueError(f"cannot combine NamedArrays with different fields: {keys} vs {it.keys()}")
    vals: list[Any] = []
    for k in keys:
        col = [getattr(it, k) for it in items]
        if all(v is None for v in col):
            vals.append(None)
        elif any(v is None for v in col):
            raise ValueError(f"field {k!r} is None in some NamedArrays but not in others")
        elif isinstance(col[0], NamedArray):
            vals.append(_combine(col, fn_np, fn_torch, axis))
        elif _is_torch(col[0]):
            import torch

            vals.append(getattr(torch, fn_torch)(col, dim=axis))
        else:
            vals.append(fn_np(col, axis=axis))
    return first._build(keys, vals)


def stack(items: Sequence[T], axis: int = 0) -> T:
    """Stack NamedArrays of equal structure along a new axis (numpy or torch leaves)."""
    return _combine(items, np.stack, "stack", axis)  # type: ignore[no-any-return]


def concat(items: Sequence[T], axis: int = 0) -> T:
    """Concatenate NamedArrays of equal structure along an existing axis."""
    return _combine(items, np.concatenate, "cat", axis)  # type: ignore[no-any-return]


# ====================================================================== spec description
@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One leaf of a NamedArray: dotted path, numpy dtype string, per-row shape (the batch dims left out)."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def row_nbytes(self) -> int:
        """Bytes one batch row of this leaf occupies."""
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


def leaf_specs(na: NamedArray, batch_ndim: int = 1) -> tuple[LeafSpec, ...]:
    """Describe every non-None leaf of ``na``, depth first in field order (the order of :meth:`NamedArray.leaves`).

    Args:
        na: the NamedArray (numpy or torch leaves).
        batch_ndim: leading batch dims shared by the leaves; the rest of each shape is its per-row shape.

    Raises:
        ValueError: a leaf has fewer than ``batch_ndim`` dims.
    """
    specs = []
    for path, leaf in na.flat_items():
        arr = _as_np(leaf)
        if arr.ndim < batch_ndim:
            raise ValueError(f"field {path!r}: shape {arr.shape} has fewer than {batch_ndim} batch dimension(s)")
        specs.append(LeafSpec(path, arr.dtype.str, tuple(int(s) for s in arr.shape[batch_ndim:])))
    return tuple(specs)
