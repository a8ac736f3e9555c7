"""The channel wire format: the 64-byte message header, its fields and limits, and what a receive yields.

Every channel message is one buffer: this header (8 native-endian int64: magic, kind, schema id,
batch dim 0, batch dim 1, policy version, sequence number, payload bytes) followed by the payload.
Kind ``SCHEMA`` announces a new schema (its id and JSON length; the JSON follows on the companion
tag); kind ``DATA`` carries NamedArray rows. Shared by :mod:`hpcrl.comm.channel` (actors, inference,
trainers) and :mod:`hpcrl.comm.params` (parameter publication). Only leaves of :data:`WIRE_DTYPES`
travel (no object arrays: nothing executable ever crosses a channel).

Examples:
    >>> import numpy as np
    >>> buf = np.zeros(HEADER_NBYTES, np.uint8)
    >>> write_header(buf, KIND_DATA, schema_id=1, batch_shape=(4,), version=7, seq=0, nbytes=16)
    >>> HEADER.unpack_from(buf)[1:]
    (1, 1, 4, 1, 7, 0, 16)
"""

from __future__ import annotations

import dataclasses
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from hpcrl.api.namedarray import NamedArray

__all__ = [
    "ChannelError",
    "SchemaError",
    "Message",
    "write_header",
    "pack_header",
    "header_dims",
    "announcement",
    "HEADER",
    "HEADER_NBYTES",
    "MAX_SCHEMA_BYTES",
    "MAX_BATCH_NDIM",
    "DEFAULT_MAX_BYTES",
    "MAGIC",
    "KIND_DATA",
    "KIND_SCHEMA",
    "WIRE_DTYPES",
]

#: Bytes of the fixed message header (8 int64); the payload follows at this offset.
HEADER_NBYTES = 64
#: Largest schema JSON a receiver accepts.
MAX_SCHEMA_BYTES = 1 << 20
#: Channels carry NamedArrays with at most this many batch dims (``(B,)`` or ``(T, B)``).
MAX_BATCH_NDIM = 2
#: Default upper bound of one receive buffer (``max_rows`` x row size); raise it explicitly if needed.
DEFAULT_MAX_BYTES = 1 << 31

MAGIC = 0x4850_4352_4C00_0001  # "HPCRL", protocol 1
KIND_DATA = 1
KIND_SCHEMA = 2

#: magic, kind, schema id, dim0, dim1, version, seq, payload nbytes
HEADER = struct.Struct("=8q")
_pack_into = HEADER.pack_into

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


def header_dims(batch_shape: tuple[int, ...]) -> tuple[int, int]:
    """The two header dims of a batch shape: missing trailing dims are 1 (``()`` -> ``(1, 1)``)."""
    dims = tuple(batch_shape) + (1,) * (MAX_BATCH_NDIM - len(batch_shape))
    return int(dims[0]), int(dims[1])


def pack_header(buf: Any, kind: int, schema_id: int, d0: int, d1: int, version: int, seq: int, nbytes: int) -> None:
    """Write the 64-byte message header at the start of ``buf`` (dims as :func:`header_dims` gives them)."""
    _pack_into(buf, 0, MAGIC, kind, schema_id, d0, d1, version, seq, nbytes)


def write_header(
    buf: np.ndarray, kind: int, schema_id: int, batch_shape: tuple[int, ...], version: int, seq: int, nbytes: int
) -> None:
    """Write the 64-byte message header at the start of ``buf`` for a message of ``batch_shape``."""
    pack_header(buf, kind, schema_id, *header_dims(batch_shape), int(version), seq, nbytes)


def announcement(schema_id: int, seq: int, json_nbytes: int) -> np.ndarray:
    """A schema announcement: the header of kind ``SCHEMA`` that precedes data message ``seq``.

    The schema JSON (``json_nbytes`` bytes) follows on the data tag's companion tag.
    """
    marker = np.empty(HEADER_NBYTES, np.uint8)
    write_header(marker, KIND_SCHEMA, schema_id, (), 0, seq, json_nbytes)
    return marker


class ChannelError(RuntimeError):
    """A message on a channel is malformed, out of order or too large (the message names rank, tag, channel)."""


class SchemaError(ValueError):
    """A NamedArray does not match a schema, cannot go on the wire, or a schema is malformed."""


@dataclasses.dataclass(slots=True)
class Message:
    """One received message.

    Attributes:
        data: the NamedArray; its leaves are views into the channel's receive buffer, valid until the
            next receive on that channel (unless received with ``copy=True``).
        batch_shape: the batch dims, e.g. ``(B,)`` or ``(T, B)``.
        version: the policy version the sender attached.
        seq: the message's sequence number on its channel (0, 1, 2, ... in sending order).
        source: the sending rank.
    """

    data: NamedArray
    batch_shape: tuple[int, ...]
    version: int
    seq: int
    source: int
