"""NamedArray: nested, typed records of arrays batched on their leading dimensions.

A NamedArray is a small record whose fields are numpy arrays, torch tensors, nested
NamedArrays or ``None``. Every leaf shares the same leading *batch* dimensions, so
indexing and slicing a NamedArray applies the index to every leaf. NamedArrays know
how to describe themselves as a :class:`Schema` (field path -> dtype, shape) and how to
pack into / unpack from one flat byte buffer, which is what travels over MPI.

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
    >>> schema = Schema.of(x, batch_ndim=1)
    >>> [(leaf.path, leaf.dtype, leaf.shape) for leaf in schema.leaves]
    [('obs', '<f4', (3,))]
    >>> buf = schema.pack(x)
    >>> schema.unpack(buf, (4,)).obs.shape
    (4, 3)
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "NamedArray",
    "namedarray",
    "stack",
    "concat",
    "Schema",
    "LeafSpec",
    "SchemaError",
    "from_flat",
]

T = TypeVar("T", bound="NamedArray")

#: dtypes allowed on the wire (no object arrays: nothing executable ever travels).
WIRE_DTYPES = frozenset(
    np.dtype(t).str
    for t in (
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
    )
)

_CLASSES: dict[str, type[NamedArray]] = {}


class SchemaError(ValueError):
    """A NamedArray does not match a schema, or a schema is malformed."""


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
        _CLASSES[f"{cls.__module__}:{cls.__qualname__}"] = cls

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


# ====================================================================== wire schema
@dataclasses.dataclass(frozen=True)
class LeafSpec:
    """One leaf of a schema: dotted path, numpy dtype string, per-row shape."""

    path: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def row_nbytes(self) -> int:
        """Bytes one batch row of this leaf occupies."""
        return int(np.dtype(self.dtype).itemsize * math.prod(self.shape))


@dataclasses.dataclass(frozen=True)
class Schema:
    """Layout of a NamedArray on the wire: leaves (path, dtype, shape) plus node classes.

    The flat buffer holds each leaf in turn as a C-contiguous ``[*batch, *shape]``
    block, in the schema's leaf order. ``nodes`` maps every NamedArray node path
    ("" = root) to its class name and field list, so the receiver rebuilds the same
    structure, including ``None`` fields.
    """

    leaves: tuple[LeafSpec, ...]
    nodes: tuple[tuple[str, str, tuple[str, ...]], ...]
    batch_ndim: int = 1
    version: int = 1

    # -------------------------------------------------------------- build
    @classmethod
    def of(cls, na: NamedArray, batch_ndim: int = 1) -> Schema:
        """Describe ``na`` (whose leaves share ``batch_ndim`` leading dims)."""
        leaves: list[LeafSpec] = []
        nodes: list[tuple[str, str, tuple[str, ...]]] = []

        def walk(node: NamedArray, prefix: str) -> None:
            t = type(node)
            nodes.append((prefix, f"{t.__module__}:{t.__qualname__}", tuple(node.keys())))
            for k, v in node.items():
                path = f"{prefix}.{k}" if prefix else k
                if isinstance(v, NamedArray):
                    walk(v, path)
                elif v is not None:
                    arr = _as_np(v)
                    dt = arr.dtype.str
                    if dt not in WIRE_DTYPES:
                        raise SchemaError(f"field {path!r}: dtype {arr.dtype} cannot go on the wire")
                    if arr.ndim < batch_ndim:
                        raise SchemaError(
                            f"field {path!r}: shape {arr.shape} has fewer than {batch_ndim} batch dimension(s)"
                        )
                    leaves.append(LeafSpec(path, dt, tuple(int(s) for s in arr.shape[batch_ndim:])))

        walk(na, "")
        return cls(tuple(leaves), tuple(nodes), batch_ndim)

    @functools.cached_property
    def row_nbytes(self) -> int:
        """Bytes one batch row (all leaves) occupies."""
        return sum(leaf.row_nbytes for leaf in self.leaves)

    @functools.cached_property
    def _plan(self) -> list[tuple[np.dtype[Any], tuple[int, ...], int]]:
        """Per leaf: numpy dtype, per-row shape, bytes per row (computed once)."""
        return [(np.dtype(leaf.dtype), leaf.shape, leaf.row_nbytes) for leaf in self.leaves]

    @functools.cached_property
    def _builder(self) -> Callable[[list[Any]], NamedArray]:
        """A function rebuilding the nested NamedArray from the leaves in schema order."""
        return self._generate_builder("")

    @functools.cached_property
    def _view_builder(self) -> Callable[[list[Any]], NamedArray]:
        """Like :attr:`_builder`, with a fresh view of each leaf (``a.view()``): a channel's receive path."""
        return self._generate_builder(".view()")

    def _generate_builder(self, leaf_suffix: str) -> Callable[[list[Any]], NamedArray]:
        """Straight-line code filling each node's ``__dict__`` as :meth:`NamedArray._build` does.

        Field names enter the generated code only as ``repr`` literals; classes and key lists are
        bound in its namespace. A node class that overrides ``__new__`` gets it called, like ``_build``.
        """
        table = {p: (c, list(f)) for p, c, f in self.nodes}
        index = {leaf.path: i for i, leaf in enumerate(self.leaves)}
        if "" not in table:
            raise SchemaError("schema has no root node")
        env: dict[str, Any] = {}
        lines: list[str] = []

        def node(prefix: str) -> str:
            cname, fields = table[prefix]
            cls = _resolve_class(cname)
            if cls is not NamedArray and not cls._extra and any(f not in cls._fields for f in fields):
                cls = NamedArray
            values = []
            for f in fields:
                path = f"{prefix}.{f}" if prefix else f
                if path in table:
                    values.append(node(path))
                elif path in index:
                    values.append(f"L[{index[path]}]{leaf_suffix}")
                else:
                    values.append("None")
            k = len(env) // 2
            env[f"C{k}"], env[f"N{k}"] = cls, cls.__new__
            lines.append(f"    o{k} = N{k}(C{k})")
            lines.append(f"    d{k} = o{k}.__dict__")
            lines.append(f"    d{k}['_keys'] = {list(fields)!r}")
            lines.extend(f"    d{k}[{f!r}] = {v}" for f, v in zip(fields, values))
            return f"o{k}"

        root = node("")
        exec("\n".join(["def build(L):", *lines, f"    return {root}"]), env)  # a few hundred ns per message
        return env["build"]  # type: ignore[no-any-return]

    @functools.cached_property
    def _matcher(self) -> Callable[[NamedArray], tuple[tuple[int, ...], list[np.ndarray]] | None]:
        """A function ``na -> (batch shape, leaves in schema order)`` or ``None`` (the channels' hot path).

        It returns a result only when ``na`` has exactly this schema's structure with plain numpy
        leaves: the same node classes and field lists, ``None`` where the schema has no leaf, and
        every leaf an ``np.ndarray`` of the schema's dtype and per-row shape whose batch dims equal
        the first leaf's. ``None`` means "not proven equal": the caller then takes the general path
        (:meth:`of`, :meth:`check`), which also produces the error messages. The function is
        straight-line Python generated from the schema (field names enter it only as ``repr``
        literals), so checking a request of a few leaves costs about a microsecond.
        """
        table = {p: (c, list(f)) for p, c, f in self.nodes}
        index = {leaf.path: i for i, leaf in enumerate(self.leaves)}
        if "" not in table:
            raise SchemaError("schema has no root node")
        env: dict[str, Any] = {"ndarray": np.ndarray, "BND": self.batch_ndim}
        lines = ["def match(n0):"]
        counter = [0]

        def node(prefix: str, var: str) -> None:
            cname, fields = table[prefix]
            cls = _resolve_class(cname)
            k = counter[0]
            env[f"C{k}"], env[f"K{k}"] = cls, fields
            lines.append(f"    if type({var}) is not C{k} or {var}._keys != K{k}: return None")
            lines.append(f"    d{k} = {var}.__dict__")
            d = f"d{k}"
            for f in fields:
                counter[0] += 1
                path = f"{prefix}.{f}" if prefix else f
                if path in table:
                    child = f"n{counter[0]}"
                    lines.append(f"    {child} = {d}[{f!r}]")
                    node(path, child)
                elif path in index:
                    i = index[path]
                    env[f"D{i}"] = np.dtype(self.leaves[i].dtype)
                    env[f"S{i}"] = self.leaves[i].shape
                    lines.append(f"    a{i} = {d}[{f!r}]")
                    lines.append(f"    if type(a{i}) is not ndarray or a{i}.dtype != D{i}: return None")
                    if i == 0:
                        lines.append("    b = a0.shape[:BND]")
                        lines.append("    if len(b) != BND: return None")
                    lines.append(f"    if a{i}.shape != b + S{i}: return None")
                else:
                    lines.append(f"    if {d}[{f!r}] is not None: return None")

        if not self.leaves:  # no leaf gives the batch shape: always the general path
            return lambda na: None
        node("", "n0")
        lines.append(f"    return b, [{', '.join(f'a{i}' for i in range(len(self.leaves)))}]")
        body = ["def match(n0):", "  try:", *("  " + line for line in lines[1:])]
        body += ["  except (AttributeError, KeyError):", "      return None"]  # not a NamedArray, or a field deleted
        exec("\n".join(body), env)  # generated from the schema; field names enter only as repr literals
        return env["match"]  # type: ignore[no-any-return]

    def nbytes(self, batch_shape: tuple[int, ...]) -> int:
        """Bytes a message with ``batch_shape`` occupies."""
        return self.row_nbytes * math.prod(batch_shape)

    # -------------------------------------------------------------- json
    def to_json(self) -> str:
        """Serialise to JSON (the one-time channel handshake)."""
        return json.dumps(
            {
                "version": self.version,
                "batch_ndim": self.batch_ndim,
                "leaves": [[leaf.path, leaf.dtype, list(leaf.shape)] for leaf in self.leaves],
                "nodes": [[p, c, list(f)] for p, c, f in self.nodes],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Schema:
        """Parse and validate a schema from JSON; raise :class:`SchemaError` if malformed."""
        try:
            d = json.loads(text)
            leaves = tuple(LeafSpec(str(p), str(dt), tuple(int(s) for s in shape)) for p, dt, shape in d["leaves"])
            nodes = tuple((str(p), str(c), tuple(str(x) for x in f)) for p, c, f in d["nodes"])
            schema = cls(leaves, nodes, int(d["batch_ndim"]), int(d["version"]))
        except (KeyError, TypeError, ValueError) as e:
            raise SchemaError(f"malformed schema: {e}") from e
        for leaf in schema.leaves:
            if leaf.dtype not in WIRE_DTYPES:
                raise SchemaError(f"schema leaf {leaf.path!r}: dtype {leaf.dtype!r} not allowed on the wire")
            if any(s < 0 for s in leaf.shape):
                raise SchemaError(f"schema leaf {leaf.path!r}: negative dimension in {leaf.shape}")
        return schema

    # -------------------------------------------------------------- pack / unpack
    def check(self, na: NamedArray) -> tuple[int, ...]:
        """Check ``na`` against the schema; return its batch shape."""
        flat = dict(na.flat_items())
        if set(flat) != {leaf.path for leaf in self.leaves}:
            raise SchemaError(
                f"fields differ from the schema: got {sorted(flat)}, expected {[leaf.path for leaf in self.leaves]}"
            )
        batch: tuple[int, ...] | None = None
        for leaf in self.leaves:
            arr = flat[leaf.path]
            shp = tuple(arr.shape)
            b, rest = shp[: self.batch_ndim], shp[self.batch_ndim :]
            if rest != leaf.shape:
                raise SchemaError(f"field {leaf.path!r}: shape {rest} per row, expected {leaf.shape}")
            if batch is None:
                batch = b
            elif b != batch:
                raise SchemaError(f"field {leaf.path!r}: batch shape {b} differs from {batch}")
        return batch if batch is not None else (0,) * self.batch_ndim

    def pack(
        self, na: NamedArray, out: np.ndarray | None = None, offset: int = 0, batch: tuple[int, ...] | None = None
    ) -> np.ndarray:
        """Copy every leaf of ``na`` into one flat uint8 buffer (``out`` if given, at ``offset``).

        Args:
            na: the NamedArray.
            out: destination buffer (allocated when None).
            offset: byte offset in ``out``.
            batch: the batch shape, when the caller has already checked ``na`` against this schema
                (skips :meth:`check`: the fast path of channels whose structure is unchanged).

        Returns:
            The filled part of the buffer (a view of ``out`` when given).
        """
        if batch is not None:
            n = self.nbytes(batch)
            if out is None:
                out = np.empty(offset + n, np.uint8)
            rows = math.prod(batch)
            pos = offset
            for (dt, shape, rnb), src in zip(self._plan, na.leaves()):
                nb = rnb * rows
                dst = out[pos : pos + nb].view(dt).reshape(batch + shape)
                np.copyto(dst, _as_np(src), casting="same_kind")
                pos += nb
            return out[offset:pos]
        batch = self.check(na)
        n = self.nbytes(batch)
        if out is None:
            out = np.empty(offset + n, np.uint8)
        elif out.nbytes < offset + n:
            raise SchemaError(f"buffer of {out.nbytes} bytes too small for {offset + n}")
        flat = dict(na.flat_items())
        pos = offset
        for leaf in self.leaves:
            arr = _as_np(flat[leaf.path])
            nb = arr.size * arr.itemsize
            dst = out[pos : pos + nb].view(leaf.dtype).reshape(arr.shape)
            np.copyto(dst, arr, casting="same_kind" if arr.dtype.str != leaf.dtype else "no")
            pos += nb
        return out[offset:pos]

    def unpack(self, buf: np.ndarray, batch_shape: tuple[int, ...], copy: bool = False) -> NamedArray:
        """Rebuild a NamedArray from a flat buffer; leaves are views into ``buf`` unless ``copy``."""
        if len(batch_shape) != self.batch_ndim:
            raise SchemaError(f"batch shape {batch_shape} has {len(batch_shape)} dims, schema says {self.batch_ndim}")
        need = self.nbytes(batch_shape)
        if buf.nbytes < need:
            raise SchemaError(f"buffer holds {buf.nbytes} bytes, batch shape {batch_shape} needs {need}")
        raw = buf.view(np.uint8).reshape(-1)
        pos = 0
        rows = math.prod(batch_shape)
        arrays: list[Any] = []
        for dt, shape, rnb in self._plan:
            nb = rnb * rows
            arr = raw[pos : pos + nb].view(dt).reshape(batch_shape + shape)
            arrays.append(arr.copy() if copy else arr)
            pos += nb
        return self._builder(arrays)

    def allocate_views(self, batch_shape: tuple[int, ...], header_nbytes: int = 0) -> NamedArray:
        """A NamedArray whose leaves are views into one fresh buffer laid out exactly as on the wire.

        The buffer has ``header_nbytes`` free bytes in front; it is attached to the result as
        ``result._wire = (buffer, schema, batch_shape, header_nbytes, leaves)``, so a channel can send
        it without packing (zero copy) as long as its leaves are still these views (a leaf replaced by
        another array is packed instead). Derived NamedArrays (slices, ``apply``) do not carry it.
        """
        raw = np.empty(header_nbytes + self.nbytes(batch_shape), np.uint8)
        na = self.unpack(raw[header_nbytes:], batch_shape)
        object.__setattr__(na, "_wire", (raw, self, batch_shape, header_nbytes, tuple(na.leaves())))
        return na

    def allocate(self, batch_shape: tuple[int, ...]) -> np.ndarray:
        """A zeroed buffer large enough for ``batch_shape``."""
        return np.zeros(self.nbytes(batch_shape), np.uint8)


_CLASSES[f"{NamedArray.__module__}:{NamedArray.__qualname__}"] = NamedArray


def structure_key(node: NamedArray, batch_ndim: int, shapes: list[Any]) -> tuple[Any, ...]:
    """Cheap structural key: equal keys imply equal :meth:`Schema.of` (classes, fields, dtypes, shapes).

    Also appends the shape of every array leaf to ``shapes`` (the first one gives the batch shape).
    """
    parts: list[Any] = [type(node)]
    for key, value in node.items():
        if value is None:
            parts.append((key, None))
        elif isinstance(value, NamedArray):
            parts.append((key, structure_key(value, batch_ndim, shapes)))
        elif hasattr(value, "dtype") and hasattr(value, "shape"):
            shape = value.shape
            shapes.append(shape)
            parts.append((key, value.dtype, tuple(shape[batch_ndim:])))
        else:  # not an array (e.g. a list): never trust a cached schema for it
            parts.append((key, object()))
    return tuple(parts)


def _resolve_class(name: str) -> type[NamedArray]:
    cls = _CLASSES.get(name)
    if cls is not None:
        return cls
    # Classes are only looked up among NamedArray classes this process has defined;
    # a module is imported only if it is an hpcrl module (never an arbitrary name).
    module = name.split(":", 1)[0]
    if module.startswith("hpcrl."):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
        cls = _CLASSES.get(name)
        if cls is not None:
            return cls
    return NamedArray


def from_flat(leaves: dict[str, Any], nodes: Sequence[tuple[str, str, Sequence[str]]]) -> NamedArray:
    """Rebuild a nested NamedArray from ``{path: leaf}`` and a node table (see :class:`Schema`)."""
    table = {p: (c, list(f)) for p, c, f in nodes}

    def build(prefix: str) -> NamedArray:
        cname, fields = table[prefix]
        cls = _resolve_class(cname)
        vals: list[Any] = []
        for f in fields:
            path = f"{prefix}.{f}" if prefix else f
            if path in table:
                vals.append(build(path))
            else:
                vals.append(leaves.get(path))
        if cls is not NamedArray and any(f not in cls._fields for f in fields) and not cls._extra:
            cls = NamedArray
        return cls._build(fields, vals)

    if "" not in table:
        raise SchemaError("schema has no root node")
    return build("")
