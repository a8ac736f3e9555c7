"""Nested checkpoint trees <-> HDF5 groups: typed, checksummed, readable by plain h5py/h5dump, never pickled.

A *checkpoint tree* is a nested structure of:

==========================  ================================================================
Python value                HDF5 object (``@type`` attribute)
==========================  ================================================================
``dict`` (str/int keys)     group, ``@type="dict"``; int keys are stored as ``#<n>``
``list`` / ``tuple``        group, ``@type="list"``, ``@length``; children ``0..n-1`` (-> list)
``torch.Tensor``            dataset, ``@type="tensor"``, ``@dtype`` (torch name), ``@shape``
``np.ndarray``              dataset, ``@type="ndarray"``, ``@dtype`` (numpy ``dtype.str``), ``@shape``
numpy scalar                scalar dataset, ``@type="npscalar"``, ``@dtype``
``int`` (int64 range)       scalar int64 dataset, ``@type="int"``
``int`` (beyond int64)      decimal string, ``@type="bigint"`` (numpy's PCG64 state is 128-bit)
``float`` / ``bool``        scalar dataset, ``@type="float"`` / ``"bool"``
``str``                     fixed-length UTF-8 string, ``@type="str"``
``bytes``                   uint8 array, ``@type="bytes"`` (opaque: never unpickled)
``None``                    empty (null dataspace) dataset, ``@type="none"``
==========================  ================================================================

Non-empty arrays are chunked with a fletcher32 checksum per chunk; scalars, empty arrays
and short strings use the compact layout, which lives inside the object header and is
covered by the header checksum of the v2 object headers written with ``libver >= v110``.
``bfloat16`` and ``float8_*`` tensors are stored as their raw bits (uint16 / uint8) with
the torch dtype in ``@dtype``. Keys are escaped to valid, readable link names:
``actor.0.weight`` stays as is; ``%`` and ``/`` become ``%25`` and ``%2F``; a leading
``.`` or ``#`` is escaped (``%2E``, ``%23``); the empty string is ``%``.

Decoding checks every object against its tag (dtype kind, recorded shape and dtype,
fletcher32 present, chunks allocated, no external storage or links) and raises
:class:`CheckpointError` naming the file and the dataset; it never unpickles or evaluates.

Examples:
    >>> import h5py, numpy as np, io
    >>> buf = io.BytesIO()
    >>> with h5py.File(buf, "w", libver=("v110", "v110"), track_order=True) as f:
    ...     write_tree(f, {"actor.0.weight": np.ones((2, 3), np.float32), 7: [1, "a", None]})
    ...     sorted(f)
    ['#7', 'actor.0.weight']
    >>> with h5py.File(buf, "r") as f:
    ...     tree = read_tree(f)
    >>> tree[7], tree["actor.0.weight"].shape
    ([1, 'a', None], (2, 3))
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

__all__ = [
    "StorageError",
    "CheckpointError",
    "HostTensor",
    "TYPE_ATTR",
    "encode_key",
    "decode_key",
    "write_tree",
    "read_tree",
    "text_value",
    "tensor_storage",
    "is_numeric",
    "check_ndarray",
    "unsupported",
    "tree_digest",
]

TYPE_ATTR = "@type"
SHAPE_ATTR = "@shape"
DTYPE_ATTR = "@dtype"
LENGTH_ATTR = "@length"

#: target bytes per chunk of a checksummed array (fletcher32 is computed per chunk).
CHUNK_BYTES = 4 << 20
#: strings up to this many UTF-8 bytes are stored inline (compact layout, header checksum).
INLINE_TEXT_BYTES = 32 << 10
#: deepest nesting accepted when reading (guards against crafted link cycles).
MAX_DEPTH = 64

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NUMERIC_KINDS = "biufc"
_BIGINT_RE = re.compile(r"-?[0-9]{1,4000}")
_ESCAPE_RE = re.compile(r"%([0-9A-F]{2})")

# torch dtype name -> numpy storage dtype name. View dtypes have no numpy twin: their bits are stored.
_TORCH_NATIVE = {
    "bool": "bool",
    "uint8": "uint8",
    "int8": "int8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "complex64": "complex64",
    "complex128": "complex128",
}
_TORCH_VIEW = {
    "bfloat16": "uint16",
    "float8_e4m3fn": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8",
    "float8_e8m0fnu": "uint8",
}
# torch dtype of the same width used to reinterpret view dtypes' bits.
_TORCH_BITS = {"uint16": "int16", "uint8": "uint8"}


class StorageError(RuntimeError):
    """Base class of hpcrl storage errors (the message names the file and, where known, the object)."""


class CheckpointError(StorageError):
    """A checkpoint cannot be written or is missing, corrupt or not a valid hpcrl checkpoint."""


# ============================================================== key escaping
def encode_key(key: str | int) -> str:
    """The HDF5 link name for a tree key (readable, injective, canonical).

    Args:
        key: a ``str`` or ``int`` dict key.

    Returns:
        ``str(key)`` for plain names, ``#<n>`` for int keys, percent-escapes for ``%``, ``/``,
        a leading ``.``/``#``, and ``%`` for the empty string.

    Raises:
        TypeError: the key is neither ``str`` nor ``int`` (``bool`` is refused too).
    """
    if isinstance(key, bool) or not isinstance(key, (str, int)):
        raise TypeError(f"checkpoint tree keys must be str or int, got {key!r} ({type(key).__name__})")
    if isinstance(key, int):
        return f"#{int(key)}"
    if key == "":
        return "%"
    name = key.replace("%", "%25").replace("/", "%2F")
    if name[0] in ".#":
        name = f"%{ord(name[0]):02X}{name[1:]}"
    return name


def decode_key(name: str) -> str | int:
    """Inverse of :func:`encode_key`.

    Raises:
        ValueError: ``name`` is not a canonical encoding of any key.
    """
    key: str | int
    if name.startswith("#"):
        body = name[1:]
        if not re.fullmatch(r"-?[0-9]+", body):
            raise ValueError(f"link name {name!r}: '#' must be followed by a decimal integer")
        key = int(body)
    elif name == "%":
        key = ""
    else:
        key = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), name)
    if encode_key(key) != name:
        raise ValueError(f"link name {name!r} is not a canonical key encoding (expected {encode_key(key)!r})")
    return key


# ============================================================== writing
def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of at most ~CHUNK_BYTES, split along the leading axes first."""
    chunk = list(shape)
    for axis in range(len(shape)):
        rest = itemsize * int(np.prod(shape[axis + 1 :], dtype=np.int64))
        if rest * shape[axis] <= CHUNK_BYTES:
            break
        if rest <= CHUNK_BYTES:
            chunk[axis] = max(1, CHUNK_BYTES // rest)
            break
        chunk[axis] = 1
    return tuple(chunk)


def _compact(group: Any, name: str, data: Any) -> Any:
    """A dataset whose data lives in its (checksummed) object header.

    Built with the low-level API: h5py's ``create_dataset`` silently replaces the layout of
    scalar datasets with a contiguous one, whose data no checksum covers.
    """
    arr = np.asarray(data)
    h5s, h5p = h5py.h5s, h5py.h5p
    space = h5s.create(h5s.SCALAR) if arr.ndim == 0 else h5s.create_simple(arr.shape)
    dcpl = h5p.create(h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.COMPACT)
    dcpl.set_obj_track_times(False)
    lcpl = h5p.create(h5p.LINK_CREATE)
    lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
    tid = h5py.h5t.py_create(arr.dtype, logical=True)
    dsid = h5py.h5d.create(group.id, name.encode("utf-8"), tid, space, dcpl=dcpl, lcpl=lcpl)
    if arr.size:
        dsid.write(h5s.ALL, h5s.ALL, np.ascontiguousarray(arr), mtype=tid)
    return h5py.Dataset(dsid)


def text_value(text: str) -> np.ndarray:
    """``text`` as a fixed-length UTF-8 HDF5 string (for attributes and scalar datasets).

    Fixed-length strings live in the object header, which is checksummed; variable-length ones
    live in a global heap, which is not (and a damaged heap can stall the HDF5 library).
    """
    raw = text.encode("utf-8")
    return np.array(raw, dtype=h5py.string_dtype("utf-8", max(1, len(raw))))


def _tag(obj: Any, tag: str) -> None:
    obj.attrs[TYPE_ATTR] = np.bytes_(tag)


def _write_array(group: Any, name: str, arr: np.ndarray, tag: str, dtype_name: str) -> None:
    if arr.ndim == 0 or arr.size == 0:
        ds = _compact(group, name, arr)
    else:
        ds = group.create_dataset(
            name,
            data=np.ascontiguousarray(arr),
            chunks=_chunk_shape(arr.shape, arr.dtype.itemsize),
            fletcher32=True,
            track_times=False,
        )
    _tag(ds, tag)
    ds.attrs[SHAPE_ATTR] = np.asarray(arr.shape, dtype=np.int64)
    ds.attrs[DTYPE_ATTR] = np.bytes_(dtype_name)


def _write_text(group: Any, name: str, text: str, tag: str) -> None:
    raw = text.encode("utf-8")
    if 0 < len(raw) <= INLINE_TEXT_BYTES:
        ds = _compact(group, name, text_value(text))
        _tag(ds, tag)
    else:
        _write_array(group, name, np.frombuffer(raw, dtype=np.uint8), tag, "uint8")


def is_numeric(dtype: np.dtype[Any]) -> bool:
    """Whether a numpy dtype can be stored (bool, integers, floats, complex; no structured dtypes)."""
    return dtype.kind in _NUMERIC_KINDS and dtype.fields is None


def check_ndarray(value: np.ndarray, path: str) -> None:
    """Raise ``TypeError`` naming ``path`` if a numpy array's dtype cannot be stored."""
    if not is_numeric(value.dtype):
        raise TypeError(f"{path}: numpy arrays of dtype {value.dtype} cannot be stored; expected bool/int/float")


def unsupported(value: Any, path: str) -> TypeError:
    """The error for a value a checkpoint tree cannot hold (names its path and type)."""
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    return TypeError(
        f"{path}: cannot store a {kind} in a checkpoint; expected dict, list, tuple, torch.Tensor, "
        "np.ndarray, numpy scalar, int, float, bool, str, bytes or None"
    )


@dataclass(frozen=True)
class HostTensor:
    """A tensor's data already on the host, written as a tensor without importing torch.

    Used by the checkpoint writer process, which gets the parent's tensors as bytes in shared memory.
    """

    data: np.ndarray
    """The values in the tensor's numpy storage dtype (see :func:`tensor_storage`)."""
    dtype: str
    """The torch dtype name (``float32``, ``bfloat16``, ...)."""


def tensor_storage(value: Any, path: str = "tensor") -> tuple[np.ndarray, str]:
    """The host array holding a tensor's values and the torch dtype name.

    A view (no copy) for a contiguous CPU tensor; ``bfloat16`` and ``float8_*`` come back as their
    raw bits (uint16 / uint8).

    Raises:
        TypeError: a sparse or otherwise non-strided tensor, or a dtype a checkpoint cannot store.
    """
    import torch

    dname = str(value.dtype).removeprefix("torch.")
    if value.layout != torch.strided:
        raise TypeError(f"{path}: cannot store a {value.layout} tensor; convert it to a dense (strided) tensor first")
    t = value.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.resolve_conj().resolve_neg().contiguous()
    if dname in _TORCH_NATIVE:
        return t.numpy(), dname
    if dname in _TORCH_VIEW:
        storage = _TORCH_VIEW[dname]
        return t.view(getattr(torch, _TORCH_BITS[storage])).numpy().view(storage), dname
    raise TypeError(f"{path}: tensors of dtype {value.dtype} cannot be stored in a checkpoint")


def _write_value(group: Any, name: str, value: Any, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise TypeError(f"{path}: checkpoint tree nested deeper than {MAX_DEPTH} levels (a reference cycle?)")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        arr, dname = tensor_storage(value, path)
        _write_array(group, name, arr, "tensor", dname)
    elif isinstance(value, HostTensor):
        _write_array(group, name, value.data, "tensor", value.dtype)
    elif isinstance(value, np.ndarray):
        check_ndarray(value, path)
        arr = np.asarray(value)
        _write_array(group, name, arr, "ndarray", arr.dtype.str)
    elif isinstance(value, Mapping):
        sub = group.create_group(name, track_order=True)
        _write_mapping(sub, value, path, depth + 1)
    elif isinstance(value, (list, tuple)):
        sub = group.create_group(name, track_order=True)
        _tag(sub, "list")
        sub.attrs[LENGTH_ATTR] = np.int64(len(value))
        for i, item in enumerate(value):
            _write_value(sub, str(i), item, f"{path}/{i}", depth + 1)
    elif value is None:
        _tag(group.create_dataset(name, data=h5py.Empty("u1"), track_times=False), "none")
    elif isinstance(value, np.generic) and value.dtype.kind in _NUMERIC_KINDS:
        ds = _compact(group, name, value)
        _tag(ds, "npscalar")
        ds.attrs[DTYPE_ATTR] = np.bytes_(value.dtype.str)
    elif isinstance(value, bool):
        _tag(_compact(group, name, np.bool_(value)), "bool")
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            _tag(_compact(group, name, np.int64(value)), "int")
        else:
            _write_text(group, name, str(int(value)), "bigint")
    elif isinstance(value, float):
        _tag(_compact(group, name, np.float64(value)), "float")
    elif isinstance(value, str):
        _write_text(group, name, str(value), "str")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _write_array(group, name, np.frombuffer(bytes(value), dtype=np.uint8), "bytes", "uint8")
    else:
        raise unsupported(value, path)


def _write_mapping(group: Any, tree: Mapping[Any, Any], path: str, depth: int) -> None:
    _tag(group, "dict")
    for key, value in tree.items():
        try:
            name = encode_key(key)
        except TypeError as e:
            raise TypeError(f"{path or '/'}: {e}") from None
        _write_value(group, name, value, f"{path}/{key}", depth)


def write_tree(group: Any, tree: Mapping[Any, Any]) -> None:
    """Encode ``tree`` into the (empty) h5py group ``group``.

    Create the file with ``libver=("v110", "v110")`` (checksummed object headers) and
    ``track_order=True`` (keys come back in insertion order).

    Args:
        group: an h5py ``File`` or ``Group``.
        tree: a mapping of str/int keys to supported values (see the module docstring).

    Raises:
        TypeError: an unsupported value or key; the message names its path in the tree.
    """
    if not isinstance(tree, Mapping):
        raise TypeError(f"a checkpoint tree must be a dict, got {type(tree).__name__}")
    _write_mapping(group, tree, "", 0)


# ============================================================== reading
def _fail(obj: Any, problem: str) -> CheckpointError:
    return CheckpointError(f"{obj.file.filename}: {obj.name}: {problem}")


def _text_attr(obj: Any, attr: str) -> str | None:
    raw = obj.attrs.get(attr)
    if raw is None:
        return None
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(obj, f"attribute {attr} is not valid UTF-8") from None
    if isinstance(raw, str):
        return raw
    raise _fail(obj, f"attribute {attr} should be a string, found {type(raw).__name__}")


def _check_shape(ds: Any) -> None:
    rec = ds.attrs.get(SHAPE_ATTR)
    if rec is None:
        raise _fail(ds, f"missing {SHAPE_ATTR} attribute")
    rec = np.asarray(rec)
    if rec.ndim != 1 or rec.dtype.kind not in "iu":
        raise _fail(ds, f"{SHAPE_ATTR} should be a 1-D integer array, found {rec!r}")
    recorded = tuple(int(x) for x in rec)
    if ds.shape != recorded:
        raise _fail(ds, f"shape {ds.shape} does not match the recorded {SHAPE_ATTR} {recorded}")


def _read_array(ds: Any, expected: np.dtype[Any]) -> np.ndarray:
    """Read a numeric array after checking dtype, storage and checksum presence."""
    if ds.shape is None:
        raise _fail(ds, "expected an array, found an empty (null) dataspace")
    if h5py.check_vlen_dtype(ds.dtype) is not None or h5py.check_string_dtype(ds.dtype) is not None:
        raise _fail(ds, f"expected a numeric array of {expected}, found a string/variable-length dtype {ds.dtype}")
    if ds.dtype.kind not in _NUMERIC_KINDS or ds.dtype.fields is not None:
        raise _fail(ds, f"expected a numeric array of {expected}, found dtype {ds.dtype}")
    if ds.dtype != expected:
        raise _fail(ds, f"dtype {ds.dtype} does not match the recorded {expected}")
    if ds.external is not None or ds.is_virtual:
        raise _fail(ds, "external or virtual storage is not allowed in a checkpoint")
    out = np.empty(ds.shape, dtype=expected)
    if out.size and out.ndim:
        if ds.chunks is None or not ds.fletcher32:
            raise _fail(ds, "non-empty arrays must be chunked with a fletcher32 checksum; this one has none")
        if ds.id.get_storage_size() < out.nbytes:
            raise _fail(ds, f"only {ds.id.get_storage_size()} of {out.nbytes} bytes are stored (missing chunks)")
    if out.size:
        ds.read_direct(out)  # verifies each chunk's fletcher32 checksum
    return out


def _read_text(ds: Any) -> str:
    if ds.shape == () and ds.dtype.kind == "S":
        raw = bytes(ds[()])
    elif ds.shape is not None and len(ds.shape) == 1:
        _check_shape(ds)
        raw = _read_array(ds, np.dtype(np.uint8)).tobytes()
    else:
        raise _fail(ds, f"expected a fixed-length string or a uint8 array, found dtype {ds.dtype} shape {ds.shape}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(ds, "string is not valid UTF-8") from None


def _numpy_dtype(ds: Any, text: str | None) -> np.dtype[Any]:
    if text is None:
        raise _fail(ds, f"missing {DTYPE_ATTR} attribute")
    try:
        dt = np.dtype(text)
    except (TypeError, ValueError):
        raise _fail(ds, f"unknown {DTYPE_ATTR} {text!r}") from None
    if dt.kind not in _NUMERIC_KINDS or dt.fields is not None:
        raise _fail(ds, f"{DTYPE_ATTR} {text!r} is not a numeric dtype")
    return dt


def _read_scalar(ds: Any, kinds: str, what: str) -> Any:
    if ds.shape != () or ds.dtype.kind not in kinds or ds.dtype.fields is not None:
        raise _fail(ds, f"expected a scalar {what}, found dtype {ds.dtype} shape {ds.shape}")
    return _read_array(ds, ds.dtype)[()]


def _read_dataset(ds: Any, tag: str) -> Any:
    if tag == "tensor":
        import torch

        dname = _text_attr(ds, DTYPE_ATTR)
        storage = _TORCH_NATIVE.get(dname or "") or _TORCH_VIEW.get(dname or "")
        if dname is None or storage is None or not hasattr(torch, dname):
            raise _fail(ds, f"unknown tensor {DTYPE_ATTR} {dname!r}")
        _check_shape(ds)
        t = torch.from_numpy(_read_array(ds, np.dtype(storage)))
        if dname in _TORCH_VIEW:
            t = t.view(getattr(torch, dname))
        return t
    if tag == "ndarray":
        dt = _numpy_dtype(ds, _text_attr(ds, DTYPE_ATTR))
        _check_shape(ds)
        return _read_array(ds, dt)
    if tag == "npscalar":
        dt = _numpy_dtype(ds, _text_attr(ds, DTYPE_ATTR))
        if ds.shape != ():
            raise _fail(ds, f"expected a scalar, found shape {ds.shape}")
        return _read_array(ds, dt)[()]
    if tag == "int":
        return int(_read_scalar(ds, "iu", "integer"))
    if tag == "float":
        return float(_read_scalar(ds, "f", "float"))
    if tag == "bool":
        return bool(_read_scalar(ds, "b", "bool"))
    if tag == "none":
        if ds.shape is not None:
            raise _fail(ds, f"expected an empty (null) dataspace for None, found shape {ds.shape}")
        return None
    if tag == "str":
        return _read_text(ds)
    if tag == "bigint":
        text = _read_text(ds)
        if not _BIGINT_RE.fullmatch(text):
            raise _fail(ds, f"expected a decimal integer, found {text[:40]!r}")
        return int(text)
    if tag == "bytes":
        _check_shape(ds)
        if ds.shape is None or len(ds.shape) != 1:
            raise _fail(ds, f"expected a 1-D uint8 array, found shape {ds.shape}")
        return _read_array(ds, np.dtype(np.uint8)).tobytes()
    raise _fail(ds, f"unknown {TYPE_ATTR} tag {tag!r} for a dataset")


def _read_object(obj: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _fail(obj, f"nested deeper than {MAX_DEPTH} levels")
    tag = _text_attr(obj, TYPE_ATTR)
    if tag is None:
        raise _fail(obj, f"missing {TYPE_ATTR} attribute (not written by hpcrl?)")
    if isinstance(obj, h5py.Group):
        if tag == "dict":
            out: dict[str | int, Any] = {}
            for name in obj:
                try:
                    key = decode_key(name)
                except ValueError as e:
                    raise _fail(obj, str(e)) from None
                out[key] = _read_object(_child(obj, name), depth + 1)
            return out
        if tag == "list":
            n = obj.attrs.get(LENGTH_ATTR)
            if n is None or np.ndim(n) != 0 or np.asarray(n).dtype.kind not in "iu":
                raise _fail(obj, f"list group without an integer {LENGTH_ATTR} attribute")
            names = set(obj)
            if names != {str(i) for i in range(int(n))}:
                raise _fail(obj, f"list of {LENGTH_ATTR} {int(n)} has children {sorted(names)[:10]}")
            return [_read_object(_child(obj, str(i)), depth + 1) for i in range(int(n))]
        raise _fail(obj, f"unknown {TYPE_ATTR} tag {tag!r} for a group")
    if isinstance(obj, h5py.Dataset):
        try:
            return _read_dataset(obj, tag)
        except CheckpointError:
            raise
        except Exception as e:  # h5py raises OSError for checksum errors, others for damaged metadata
            if isinstance(e, OSError) and "filter" in str(e) and obj.fletcher32:
                raise _fail(obj, f"corrupt data: fletcher32 checksum verification failed ({e})") from e
            raise _fail(obj, f"cannot read ({type(e).__name__}: {e})") from e
    raise _fail(obj, f"unexpected HDF5 object {type(obj).__name__}")


def _child(group: Any, name: str) -> Any:
    link = group.get(name, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise CheckpointError(
            f"{group.file.filename}: {group.name.rstrip('/')}/{name}: {type(link).__name__} links are not allowed"
        )
    return group[name]


def read_tree(group: Any) -> dict[Any, Any]:
    """Decode a group written by :func:`write_tree` (validating every object; see the module docstring).

    Args:
        group: an h5py ``File`` or ``Group`` tagged ``@type="dict"``.

    Returns:
        The tree: dicts (str/int keys), lists, ``torch.Tensor`` (torch imported only if present),
        ``np.ndarray``, numpy scalars, int, float, bool, str, bytes and None.

    Raises:
        CheckpointError: an unknown tag, a wrong dtype/shape, a checksum error, a link or
            external storage, or undecodable content (names the file and the object path).
    """
    try:
        out = _read_object(group, 0)
    except CheckpointError:
        raise
    except Exception as e:  # damaged metadata surfaces as OSError/KeyError/RuntimeError from h5py
        raise CheckpointError(f"{group.file.filename}: {group.name}: cannot read ({type(e).__name__}: {e})") from e
    if not isinstance(out, dict):
        raise _fail(group, "the top level is not a dict")
    return out


def tree_digest(tree: Any) -> str:
    """A SHA-256 hex digest of a checkpoint tree's values, equal for a tree and its stored-and-read copy.

    Keys, list order, array dtypes (torch tensors by their storage dtype), shapes and bytes, and scalar
    values count; a torch tensor and the array it reads back as agree, and so do a numpy scalar and the
    Python number. Used to check that a resumed run holds exactly the state a checkpoint stored.

    Examples:
        >>> a = {"w": np.arange(3, dtype=np.float32), "n": 5, "opt": [{"step": np.int64(2)}]}
        >>> b = {"opt": [{"step": 2}], "n": 5, "w": np.arange(3, dtype=np.float32)}
        >>> tree_digest(a) == tree_digest(b), tree_digest(a) == tree_digest({**a, "n": 6})
        (True, False)
    """
    import hashlib

    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, Mapping):
            h.update(b"{")
            for k in sorted(value, key=lambda k: (isinstance(k, str), str(k))):
                h.update(repr(k).encode() + b":")
                feed(value[k])
            h.update(b"}")
        elif isinstance(value, (list, tuple)):
            h.update(b"[")
            for v in value:
                feed(v)
                h.update(b",")
            h.update(b"]")
        elif isinstance(value, (np.ndarray, HostTensor)) or hasattr(value, "detach"):
            if isinstance(value, HostTensor):
                arr = value.data
            elif isinstance(value, np.ndarray):
                arr = value
            else:
                arr = tensor_storage(value)[0]
            arr = np.ascontiguousarray(arr)
            h.update(f"a{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.tobytes())
        elif isinstance(value, np.generic):
            feed(value.item())
        elif isinstance(value, bytes):
            h.update(b"b" + len(value).to_bytes(8, "little") + value)
        else:
            h.update(f"s{type(value).__name__}:{value!r};".encode())

    feed(tree)
    return h.hexdigest()
