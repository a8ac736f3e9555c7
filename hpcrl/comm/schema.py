"""The layout of a NamedArray on the wire: :class:`Schema`, packing into one flat buffer and back.

A schema lists every leaf (dotted path, dtype, per-row shape; :class:`~hpcrl.api.namedarray.LeafSpec`)
and every node (path, class name, field list), so a receiver rebuilds the same nested structure,
``None`` fields included. It travels once per channel as JSON (the handshake); after that each message
is the leaves one after the other, each a C-contiguous ``[*batch, *shape]`` block.

Examples:
    >>> import numpy as np
    >>> from hpcrl.api.namedarray import NamedArray
    >>> x = NamedArray(obs=np.zeros((4, 3), np.float32), state=None)
    >>> schema = Schema.of(x, batch_ndim=1)
    >>> [(leaf.path, leaf.dtype, leaf.shape) for leaf in schema.leaves]
    [('obs', '<f4', (3,))]
    >>> buf = schema.pack(x)
    >>> y = schema.unpack(buf, (4,))
    >>> y.obs.shape, y.state
    ((4, 3), None)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcrl.api.namedarray import LeafSpec, NamedArray, leaf_specs
from hpcrl.comm.codegen import Builder, Matcher, class_name, make_builder, make_matcher, resolve_class
from hpcrl.comm.wire import WIRE_DTYPES, SchemaError

__all__ = [
    "Schema",
    "SchemaError",
    "LeafSpec",
    "WireLayout",
    "WIRE_DTYPES",
    "wire_layout",
    "host_array",
    "structure_key",
    "from_flat",
]

_WIRE_ATTR = "_wire"  # where allocate_views attaches the WireLayout (not a field: never in keys())


def host_array(x: Any) -> np.ndarray:
    """A numpy array for a numpy array or a (CPU or device) torch tensor (copied to the host)."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(x)


@dataclasses.dataclass(frozen=True)
class Schema:
    """Layout of a NamedArray on the wire: leaves (path, dtype, shape) plus node classes.

    The flat buffer holds each leaf in turn as a C-contiguous ``[*batch, *shape]`` block, in the
    schema's leaf order. ``nodes`` maps every NamedArray node path (``""`` = root) to its class name
    (``module:qualname``) and field list, so the receiver rebuilds the same structure, including
    ``None`` fields.
    """

    leaves: tuple[LeafSpec, ...]
    nodes: tuple[tuple[str, str, tuple[str, ...]], ...]
    batch_ndim: int = 1
    version: int = 1

    # -------------------------------------------------------------- build
    @classmethod
    def of(cls, na: NamedArray, batch_ndim: int = 1) -> Schema:
        """Describe ``na`` (whose leaves share ``batch_ndim`` leading dims).

        Raises:
            SchemaError: a leaf has a dtype that cannot go on the wire, or fewer than ``batch_ndim`` dims.
        """
        try:
            leaves = leaf_specs(na, batch_ndim)
        except ValueError as e:
            raise SchemaError(str(e)) from e
        for leaf in leaves:
            if leaf.dtype not in WIRE_DTYPES:
                raise SchemaError(f"field {leaf.path!r}: dtype {np.dtype(leaf.dtype)} cannot go on the wire")
        nodes: list[tuple[str, str, tuple[str, ...]]] = []

        def walk(node: NamedArray, prefix: str) -> None:
            nodes.append((prefix, class_name(type(node)), tuple(node.keys())))
            for k, v in node.items():
                if isinstance(v, NamedArray):
                    walk(v, f"{prefix}.{k}" if prefix else k)

        walk(na, "")
        return cls(leaves, tuple(nodes), batch_ndim)

    @functools.cached_property
    def row_nbytes(self) -> int:
        """Bytes one batch row (all leaves) occupies."""
        return sum(leaf.row_nbytes for leaf in self.leaves)

    @functools.cached_property
    def _plan(self) -> list[tuple[np.dtype[Any], tuple[int, ...], int]]:
        """Per leaf: numpy dtype, per-row shape, bytes per row (computed once)."""
        return [(np.dtype(leaf.dtype), leaf.shape, leaf.row_nbytes) for leaf in self.leaves]

    @functools.cached_property
    def builder(self) -> Builder:
        """Leaves in schema order -> the NamedArray (generated once; :func:`~hpcrl.comm.codegen.make_builder`)."""
        return make_builder(self)

    @functools.cached_property
    def view_builder(self) -> Builder:
        """Like :attr:`builder`, with a fresh view of each leaf (a channel's receive path)."""
        return make_builder(self, fresh_views=True)

    @functools.cached_property
    def matcher(self) -> Matcher:
        """``na -> (batch shape, leaves)`` or ``None``: the channels' check that ``na`` has this structure.

        See :func:`~hpcrl.comm.codegen.make_matcher`; ``None`` means "not proven equal" (describe
        ``na`` afresh with :meth:`of`, which also produces the error messages).
        """
        return make_matcher(self)

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
        """Check ``na`` against the schema; return its batch shape.

        Raises:
            SchemaError: other fields, a leaf of another per-row shape, or leaves disagreeing on the batch shape.
        """
        flat = dict(na.flat_items())
        if set(flat) != {leaf.path for leaf in self.leaves}:
            raise SchemaError(
                f"fields differ from the schema: got {sorted(flat)}, expected {[leaf.path for leaf in self.leaves]}"
            )
        batch: tuple[int, ...] | None = None
        for leaf in self.leaves:
            shp = tuple(flat[leaf.path].shape)
            b, rest = shp[: self.batch_ndim], shp[self.batch_ndim :]
            if rest != leaf.shape:
                raise SchemaError(f"field {leaf.path!r}: shape {rest} per row, expected {leaf.shape}")
            if batch is None:
                batch = b
            elif b != batch:
                raise SchemaError(f"field {leaf.path!r}: batch shape {b} differs from {batch}")
        return batch if batch is not None else (0,) * self.batch_ndim

    def pack(self, na: NamedArray, out: np.ndarray | None = None, offset: int = 0) -> np.ndarray:
        """Copy every leaf of ``na`` into one flat uint8 buffer (``out`` if given, at ``offset``).

        Args:
            na: the NamedArray (numpy or torch leaves); checked with :meth:`check` first.
            out: destination buffer (allocated when None).
            offset: byte offset in ``out``.

        Returns:
            The filled part of the buffer (a view of ``out`` when given).

        Raises:
            SchemaError: ``na`` does not fit the schema, or ``out`` is too small.
        """
        batch = self.check(na)
        n = self.nbytes(batch)
        if out is None:
            out = np.empty(offset + n, np.uint8)
        elif out.nbytes < offset + n:
            raise SchemaError(f"buffer of {out.nbytes} bytes too small for {offset + n}")
        flat = dict(na.flat_items())
        pos = offset
        for leaf in self.leaves:
            arr = host_array(flat[leaf.path])
            nb = arr.size * arr.itemsize
            dst = out[pos : pos + nb].view(leaf.dtype).reshape(arr.shape)
            np.copyto(dst, arr, casting="same_kind" if arr.dtype.str != leaf.dtype else "no")
            pos += nb
        return out[offset:pos]

    def views(self, buf: np.ndarray, batch_shape: tuple[int, ...]) -> list[np.ndarray]:
        """The leaves of a message of ``batch_shape`` laid out in ``buf``, as views, in schema order.

        Raises:
            SchemaError: ``batch_shape`` has the wrong number of dims, or ``buf`` is too small.
        """
        if len(batch_shape) != self.batch_ndim:
            raise SchemaError(f"batch shape {batch_shape} has {len(batch_shape)} dims, schema says {self.batch_ndim}")
        need = self.nbytes(batch_shape)
        if buf.nbytes < need:
            raise SchemaError(f"buffer holds {buf.nbytes} bytes, batch shape {batch_shape} needs {need}")
        raw = buf.view(np.uint8).reshape(-1)
        rows = math.prod(batch_shape)
        arrays: list[np.ndarray] = []
        pos = 0
        for dt, shape, rnb in self._plan:
            nb = rnb * rows
            arrays.append(raw[pos : pos + nb].view(dt).reshape(batch_shape + shape))
            pos += nb
        return arrays

    def unpack(self, buf: np.ndarray, batch_shape: tuple[int, ...], copy: bool = False) -> NamedArray:
        """Rebuild a NamedArray from a flat buffer; leaves are views into ``buf`` unless ``copy``."""
        arrays = self.views(buf, batch_shape)
        return self.builder([a.copy() for a in arrays] if copy else arrays)

    def allocate_views(self, batch_shape: tuple[int, ...], header_nbytes: int = 0) -> NamedArray:
        """A NamedArray whose leaves are views into one fresh buffer laid out exactly as on the wire.

        The buffer has ``header_nbytes`` free bytes in front and is described by a :class:`WireLayout`
        attached to the result (:func:`wire_layout`), so a channel can send it without packing (zero
        copy) as long as its leaves are still these views (a leaf replaced by another array is packed
        instead). Derived NamedArrays (slices, ``apply``) do not carry it.
        """
        raw = np.empty(header_nbytes + self.nbytes(batch_shape), np.uint8)
        na = self.unpack(raw[header_nbytes:], batch_shape)
        layout = WireLayout(raw, self, tuple(batch_shape), header_nbytes, tuple(na.leaves()))
        object.__setattr__(na, _WIRE_ATTR, layout)
        return na

    def allocate(self, batch_shape: tuple[int, ...]) -> np.ndarray:
        """A zeroed buffer large enough for ``batch_shape``."""
        return np.zeros(self.nbytes(batch_shape), np.uint8)


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class WireLayout:
    """How a NamedArray made by :meth:`Schema.allocate_views` lies in its one buffer.

    Attributes:
        raw: the whole buffer (``header_nbytes`` free bytes, then the payload).
        schema: the schema the leaves follow.
        batch_shape: the batch dims the buffer was laid out for.
        header_nbytes: free bytes in front of the payload.
        leaves: the leaf views into ``raw``, in schema order (a NamedArray whose leaves are no longer
            exactly these arrays is not in wire layout any more).
    """

    raw: np.ndarray
    schema: Schema
    batch_shape: tuple[int, ...]
    header_nbytes: int
    leaves: tuple[np.ndarray, ...]


def wire_layout(na: NamedArray) -> WireLayout | None:
    """The :class:`WireLayout` of a NamedArray made by :meth:`Schema.allocate_views`, else ``None``."""
    layout = na.__dict__.get(_WIRE_ATTR)
    return layout if isinstance(layout, WireLayout) else None


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


def from_flat(leaves: dict[str, Any], nodes: Sequence[tuple[str, str, Sequence[str]]]) -> NamedArray:
    """Rebuild a nested NamedArray from ``{path: leaf}`` and a node table (see :class:`Schema`)."""
    table = {p: (c, list(f)) for p, c, f in nodes}

    def build(prefix: str) -> NamedArray:
        cname, fields = table[prefix]
        cls = resolve_class(cname)
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
