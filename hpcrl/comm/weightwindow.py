"""One copy of the published weights per node: a double-buffered seqlock in an MPI-3 shared-memory window.

One process of the node (the *writer*, the node's weight receiver) copies each publication it receives
from the trainer leader into the window; every subscriber of the node (the writer included) reads it
from there. Readers never block the writer and never hand on a torn copy:

* **Two buffers.** The writer always fills the buffer that is *not* current, then makes it current
  (one word, ``INDEX``). A reader copying the current buffer is disturbed only if two publications
  land while it reads.
* **A sequence word per buffer (seqlock).** The writer makes the buffer's ``SEQ`` odd before touching
  it and even again after. A reader notes ``SEQ`` (even) before it reads, and afterwards checks that
  it has not changed; if it has, the copy may be torn and the read is retried.

A reader does not copy the buffer first: it hands read-only views of the window to a *consumer* (for
weights, ``policy.load_state_dict``, which copies them into the model anyway) and checks the sequence
word after the consumer returns; a torn read calls the consumer again with the newer buffer. So the
node holds one shared copy per buffer (two) however many subscribers it has, besides each process's
own model.

Memory ordering: the window is opened once with ``Win.Lock_all`` (a passive-target epoch, needed for
``Win.Sync``) and every step that must be ordered (sequence word, payload, index) is separated by
``Win.Sync`` (``MPI_Win_sync``: a full memory barrier in MPICH and Open MPI). On x86-64 the stores of
numpy are already seen in program order (TSO); the barriers make the protocol correct on weaker memory
models (aarch64, POWER) too. Every word is an aligned ``int64``, read and written whole.

:class:`DoubleBuffer` is the protocol on any byte buffer (no MPI: unit-testable, with :meth:`write_steps`
to interleave a writer with a reader); :class:`WeightWindow` allocates it in a shared window.

Examples:
    >>> import numpy as np
    >>> db = DoubleBuffer.initialize(np.zeros(DoubleBuffer.nbytes_for(128), np.uint8), 128)
    >>> db.write(7, 1, b'{}', np.arange(4, dtype=np.uint8))
    1
    >>> got = []
    >>> db.read(lambda version, sid, js, data: got.append((version, bytes(js), data.tolist())), after=0)
    (1, 7)
    >>> got
    [(7, b'{}', [0, 1, 2, 3])]
    >>> db.read(lambda *a: None, after=1) is None  # nothing newer than publication 1
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np

__all__ = ["DoubleBuffer", "WeightWindow", "WindowError", "padded"]

T = TypeVar("T")

MAGIC = 0x6870_6372_6C77_7731  # "hpcrlww1"
#: bytes of the control block and of each buffer's header (one cache line each).
BLOCK = 64
#: control block words.
C_MAGIC, C_INDEX, C_PUBLISHED, C_CAPACITY = 0, 1, 2, 3
#: buffer header words.
B_SEQ, B_PUB, B_VERSION, B_SCHEMA, B_JSON, B_DATA_OFF, B_DATA = 0, 1, 2, 3, 4, 5, 6
#: reads tried per :meth:`DoubleBuffer.read` call before giving up for now (a writer faster than a reader).
MAX_ATTEMPTS = 64

#: what a reader's consumer is called with: (version, schema id, schema JSON bytes, payload bytes).
Consumer = Callable[[int, int, np.ndarray, np.ndarray], T]


class WindowError(RuntimeError):
    """The shared weight window cannot hold a publication, or its contents are not a weight window."""


def padded(n: int) -> int:
    """``n`` rounded up to a multiple of :data:`BLOCK` (64) bytes."""
    return (int(n) + BLOCK - 1) // BLOCK * BLOCK


def _no_fence() -> None:
    return None


class DoubleBuffer:
    """The double-buffered seqlock over one byte buffer (see the module docstring).

    Layout: a 64-byte control block (magic, current index, publications, capacity), then two buffers,
    each a 64-byte header (sequence, publication number, version, schema id, JSON bytes, payload offset,
    payload bytes) followed by ``capacity`` bytes: the schema JSON, then (64-byte aligned) the payload.

    Args:
        mem: the bytes (writable on the writer; readers only read, but numpy views of a shared window
            are writable anyway).
        fence: a memory barrier (``Win.Sync`` of the window); a no-op within one process.

    Raises:
        WindowError: ``mem`` does not hold an initialised double buffer (wrong magic or size).
    """

    def __init__(self, mem: np.ndarray, fence: Callable[[], None] = _no_fence) -> None:
        mem = mem.view(np.uint8).reshape(-1)
        if mem.nbytes < BLOCK:
            raise WindowError(f"weight window of {mem.nbytes} bytes is smaller than its {BLOCK}-byte control block")
        self.ctrl = mem[:BLOCK].view(np.int64)
        if int(self.ctrl[C_MAGIC]) != MAGIC:
            raise WindowError("weight window: bad magic number (not initialised by its writer)")
        self.capacity = int(self.ctrl[C_CAPACITY])
        if mem.nbytes < self.nbytes_for(self.capacity):
            raise WindowError(f"weight window of {mem.nbytes} bytes cannot hold two buffers of {self.capacity}")
        self._fence = fence
        self._words = memoryview(self.ctrl)  # type: ignore[arg-type]  # a python int per index: 4x cheaper
        self.meta: list[np.ndarray] = []
        self.payload: list[np.ndarray] = []
        for i in range(2):
            start = BLOCK + i * (BLOCK + self.capacity)
            self.meta.append(mem[start : start + BLOCK].view(np.int64))
            self.payload.append(mem[start + BLOCK : start + BLOCK + self.capacity])
        self.torn = 0
        """Reads that found the buffer changed under them and were retried."""
        self.gave_up = 0
        """:meth:`read` calls that returned nothing after :data:`MAX_ATTEMPTS` torn reads in a row."""

    # ------------------------------------------------------------------ layout
    @staticmethod
    def nbytes_for(capacity: int) -> int:
        """Bytes of a double buffer whose buffers hold ``capacity`` bytes (JSON + payload) each."""
        return BLOCK + 2 * (BLOCK + int(capacity))

    @staticmethod
    def capacity_for(json_nbytes: int, data_nbytes: int) -> int:
        """The buffer capacity a publication with this schema JSON and payload needs."""
        return padded(json_nbytes) + int(data_nbytes)

    @classmethod
    def initialize(cls, mem: np.ndarray, capacity: int, fence: Callable[[], None] = _no_fence) -> DoubleBuffer:
        """(Writer) Lay out an empty double buffer in ``mem`` and return it.

        Raises:
            WindowError: ``mem`` is smaller than :meth:`nbytes_for` ``(capacity)``.
        """
        raw = mem.view(np.uint8).reshape(-1)
        need = cls.nbytes_for(capacity)
        if raw.nbytes < need:
            raise WindowError(f"weight window of {raw.nbytes} bytes, {need} needed for capacity {capacity}")
        ctrl = raw[:BLOCK].view(np.int64)
        ctrl[:] = 0
        for i in range(2):
            start = BLOCK + i * (BLOCK + int(capacity))
            raw[start : start + BLOCK].view(np.int64)[:] = 0
        ctrl[C_INDEX] = -1
        ctrl[C_CAPACITY] = int(capacity)
        fence()
        ctrl[C_MAGIC] = MAGIC
        fence()
        return cls(raw, fence)

    @property
    def published(self) -> int:
        """Publications written so far (the newest one's number)."""
        return int(self.ctrl[C_PUBLISHED])

    # ------------------------------------------------------------------ writer
    def write(
        self,
        version: int,
        schema_id: int,
        schema_json: bytes,
        payload: np.ndarray | Callable[[np.ndarray], object],
        nbytes: int | None = None,
    ) -> int:
        """(Writer) Publish one payload: fill the idle buffer, then make it current. Never waits for readers.

        Args:
            version: the policy version of the payload.
            schema_id: identifies ``schema_json`` (the same id must always mean the same JSON).
            schema_json: the payload's schema (copied only when the buffer held another schema id).
            payload: the payload bytes (any array, copied as raw bytes), or a function that fills the
                payload view it is given (e.g. ``lambda view: schema.pack(record, out=view)``).
            nbytes: the payload size when ``payload`` is a function.

        Returns:
            The publication number (1, 2, ...).

        Raises:
            WindowError: the JSON and payload do not fit the buffers (the message gives both sizes).
        """
        steps = list(self.write_steps(version, schema_id, schema_json, payload, nbytes))
        return steps[-1]

    def write_steps(
        self,
        version: int,
        schema_id: int,
        schema_json: bytes,
        payload: np.ndarray | Callable[[np.ndarray], object],
        nbytes: int | None = None,
    ) -> Iterator[int]:
        """:meth:`write` as a generator that pauses between its steps (for tests that interleave a reader).

        Yields 0 after each step, and the publication number last.
        """
        fill: Callable[[np.ndarray], object]
        if isinstance(payload, np.ndarray):
            raw = payload.view(np.uint8).reshape(-1)
            nbytes = raw.nbytes
            fill = lambda view: view.__setitem__(Ellipsis, raw)  # noqa: E731
        elif nbytes is None:
            raise TypeError("DoubleBuffer.write: nbytes is needed with a fill function")
        else:
            fill = payload
        offset = padded(len(schema_json))
        need = offset + int(nbytes)
        if need > self.capacity:
            raise WindowError(
                f"a publication of {nbytes} payload bytes + {len(schema_json)} bytes of schema does not fit the "
                f"node's shared weight window ({self.capacity} bytes per buffer, sized by the first publication): "
                f"the parameter names, shapes or dtypes changed mid-run and the parameters grew; use "
                f"layout.weights=flat for a policy whose parameters change size"
            )
        current = int(self.ctrl[C_INDEX])
        w = 0 if current < 0 else 1 - current
        meta, payload = self.meta[w], self.payload[w]
        meta[B_SEQ] += 1  # odd: buffer w is being written
        self._fence()
        yield 0
        if int(meta[B_SCHEMA]) != schema_id or int(meta[B_JSON]) != len(schema_json):
            payload[: len(schema_json)] = np.frombuffer(schema_json, np.uint8)
        fill(payload[offset:need])
        yield 0
        pub = int(self.ctrl[C_PUBLISHED]) + 1
        meta[B_PUB] = pub
        meta[B_VERSION] = int(version)
        meta[B_SCHEMA] = int(schema_id)
        meta[B_JSON] = len(schema_json)
        meta[B_DATA_OFF] = offset
        meta[B_DATA] = int(nbytes)
        self._fence()
        meta[B_SEQ] += 1  # even: buffer w is complete
        self._fence()
        yield 0
        self.ctrl[C_INDEX] = w
        self.ctrl[C_PUBLISHED] = pub
        self._fence()
        yield pub

    # ------------------------------------------------------------------ reader
    def newer_than(self, after: int) -> bool:
        """Whether a publication newer than number ``after`` has been made current (one word read, ~0.1 us).

        No barrier: a reader may see a new publication one call late, never a torn one (:meth:`read`
        orders its reads with barriers).
        """
        return self._words[C_PUBLISHED] > after  # type: ignore[no-any-return]

    def read(self, consume: Consumer[Any], after: int) -> tuple[int, int] | None:
        """Hand the current publication to ``consume`` if it is newer than publication number ``after``.

        ``consume(version, schema_id, schema_json, payload)`` gets read-only views of the window; it may
        be called again (with a newer buffer) when the writer overwrote the buffer meanwhile, so it must
        not keep the views, and only its last call counts (e.g. ``load_state_dict`` into a model). An
        exception from ``consume`` on a copy that turns out torn is taken as a torn read; on an intact
        copy it propagates.

        Returns:
            ``(publication number, version)`` of what ``consume`` last got; ``None`` when nothing newer
            was published, or the writer kept overwriting the buffer for :data:`MAX_ATTEMPTS` reads
            (counted in :attr:`gave_up`; the next call tries again).

        Raises:
            WindowError: a complete buffer whose header is inconsistent (not written by a writer of this
                module).
        """
        for _ in range(MAX_ATTEMPTS):
            self._fence()
            if int(self.ctrl[C_PUBLISHED]) <= after:
                return None
            i = int(self.ctrl[C_INDEX])
            meta, payload = self.meta[i], self.payload[i]
            seq = int(meta[B_SEQ])
            if seq & 1:  # the writer lapped this reader and is filling this buffer again
                self.torn += 1
                continue
            self._fence()
            pub, version, sid, jn, off, nb = (int(x) for x in meta[B_PUB : B_DATA + 1])
            self._fence()
            if int(meta[B_SEQ]) != seq:
                self.torn += 1
                continue
            if pub <= after:  # published but not yet current when we looked: nothing newer after all
                return None
            if not (0 <= jn <= off and off % BLOCK == 0 and nb >= 0 and off + nb <= self.capacity):
                raise WindowError(
                    f"weight window buffer {i} header is inconsistent (schema {jn} bytes, payload {nb} bytes at "
                    f"{off}, capacity {self.capacity})"
                )
            js = payload[:jn]
            data = payload[off : off + nb]
            js.flags.writeable = False
            data.flags.writeable = False
            try:
                consume(version, sid, js, data)
            except Exception:
                self._fence()
                if int(meta[B_SEQ]) != seq:  # it failed on a torn copy (e.g. half-written schema JSON)
                    self.torn += 1
                    continue
                raise
            self._fence()
            if int(meta[B_SEQ]) != seq:
                self.torn += 1
                continue
            return pub, version
        self.gave_up += 1
        return None


class WeightWindow:
    """A :class:`DoubleBuffer` in an MPI-3 shared-memory window over the subscribers of one node.

    Create it with :meth:`allocate` (collective over ``comm``); rank 0 of ``comm`` is the writer and
    owns the memory, every rank maps it. :meth:`close` is collective too.

    Attributes:
        buffer: the double buffer (its ``read``/``write``/counters).
        comm: the node's subscriber communicator.
        nbytes: bytes of the shared segment.
    """

    def __init__(self, win: Any, comm: Any, buffer: DoubleBuffer, nbytes: int) -> None:
        self._win = win
        self.comm = comm
        self.buffer = buffer
        self.nbytes = nbytes
        self._closed = False

    @classmethod
    def allocate(cls, comm: Any, capacity: int) -> WeightWindow:
        """Allocate and lay out the window (collective over ``comm``; ``capacity`` read on rank 0 only).

        ``MPI_Win_allocate_shared`` on ``comm`` (every rank on one node), the writer's segment being the
        whole window; then the writer writes the empty layout and a barrier makes it visible to all.

        Args:
            comm: the communicator of the node's subscribers (one shared-memory domain).
            capacity: bytes per buffer (:meth:`DoubleBuffer.capacity_for` of the first publication).
        """
        from mpi4py import MPI

        writer = comm.Get_rank() == 0
        nbytes = DoubleBuffer.nbytes_for(capacity) if writer else 0
        win = MPI.Win.Allocate_shared(nbytes, 1, comm=comm)
        try:
            buf, _unit = win.Shared_query(0)
            mem = np.frombuffer(buf, np.uint8)  # type: ignore[call-overload]
            win.Lock_all(MPI.MODE_NOCHECK)
            fence = win.Sync
            if writer:
                DoubleBuffer.initialize(mem, capacity, fence)
            fence()
            comm.Barrier()
            fence()
            return cls(win, comm, DoubleBuffer(mem, fence), mem.nbytes)
        except BaseException:
            win.Free()
            raise

    @property
    def writer(self) -> bool:
        """Whether this rank writes the window (rank 0 of its communicator)."""
        return bool(self.comm.Get_rank() == 0)

    def close(self) -> None:
        """End the access epoch and free the window (collective over the node's subscribers; idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.buffer = None  # type: ignore[assignment]  # its views point into the window
        self._win.Unlock_all()
        self._win.Free()
