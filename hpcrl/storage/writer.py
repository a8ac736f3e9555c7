"""The checkpoint writer process: writes checkpoints handed over in shared memory, off the trainer's GIL.

A background save on a thread still costs the trainer a lot: h5py holds the GIL while HDF5 encodes and
checksums, so the trainer thread runs at about half speed for the whole write (measured: see
``benchmarks/bench_checkpoint.py``). This module moves the write to a helper process:

* the trainer copies every array of the checkpoint tree into one shared-memory buffer (a ``memfd``
  that stays mapped, so after the first save the copy touches no new pages) and sends the tree's
  *layout* -- structure, dtypes, shapes, offsets and the small leaves -- as one JSON line over a pipe;
* the writer process (``python -m hpcrl.storage.writer``, numpy + h5py, never torch or MPI) maps the
  buffer, rebuilds the tree as read-only views and runs :func:`~hpcrl.storage.checkpoint.save_checkpoint`
  (the same atomic write as a blocking save), then answers one JSON line: done, or the error message.

Nothing on this path is pickled: the layout is JSON and the data are raw bytes. The writer dies with
its parent (``PR_SET_PDEATHSIG``) and exits when its pipe closes, so it never outlives the run.
Linux only (``os.memfd_create``); :func:`available` says whether it can be used.
"""

from __future__ import annotations

import base64
import json
import logging
import mmap
import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from hpcrl.storage.tree import CheckpointError, HostTensor, check_ndarray, encode_key, is_numeric, unsupported

__all__ = ["SharedMemoryError", "WriterProcess", "available", "pack", "unpack"]

log = logging.getLogger(__name__)

_ALIGN = 64  # every array starts on a cache line


def available() -> bool:
    """Whether the writer process can be used here (Linux: ``os.memfd_create``)."""
    return hasattr(os, "memfd_create") and sys.platform.startswith("linux")


class SharedMemoryError(OSError):
    """The shared buffer cannot be created or grown (memory limits, ``RLIMIT_FSIZE``); nothing was sent."""


# ============================================================== layout <-> tree
class _Packer:
    """Turns a checkpoint tree into a JSON layout plus a list of (array, offset) copies."""

    def __init__(self) -> None:
        self.size = 0
        self.copies: list[tuple[np.ndarray, int]] = []

    def _place(self, arr: np.ndarray) -> int:
        offset = -(-self.size // _ALIGN) * _ALIGN
        self.size = offset + arr.nbytes
        self.copies.append((arr, offset))
        return offset

    def node(self, value: Any, path: str) -> list[Any]:
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(value, torch.Tensor):
            from hpcrl.storage.tree import tensor_storage

            arr, dname = tensor_storage(value, path)
            return ["T", dname, arr.dtype.str, list(arr.shape), self._place(arr)]
        if isinstance(value, np.ndarray):
            check_ndarray(value, path)
            arr = np.ascontiguousarray(value)
            return ["a", arr.dtype.str, list(arr.shape), self._place(arr)]
        if isinstance(value, Mapping):
            items = []
            for k, v in value.items():
                try:
                    encode_key(k)  # only str and int keys; the error names the key
                except TypeError as e:
                    raise TypeError(f"{path or '/'}: {e}") from None
                items.append([k, self.node(v, f"{path}/{k}")])
            return ["d", items]
        if isinstance(value, (list, tuple)):
            return ["l", [self.node(v, f"{path}/{i}") for i, v in enumerate(value)]]
        if value is None:
            return ["n"]
        if isinstance(value, np.generic) and is_numeric(value.dtype):
            return ["g", value.dtype.str, base64.b64encode(value.tobytes()).decode("ascii")]
        if isinstance(value, bool):
            return ["b", value]
        if isinstance(value, int):
            return ["i", int(value)]
        if isinstance(value, float):
            return ["f", float(value)]
        if isinstance(value, str):
            return ["s", value]
        if isinstance(value, (bytes, bytearray, memoryview)):
            return ["y", base64.b64encode(bytes(value)).decode("ascii")]
        raise unsupported(value, path)


def pack(tree: Mapping[Any, Any], attrs: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[np.ndarray, int]], int]:
    """The JSON layout of ``tree`` and ``attrs``, the arrays to copy (with their offsets) and the buffer size.

    Raises:
        TypeError: a value or key the checkpoint format cannot store (the message names its path).
    """
    packer = _Packer()
    layout = {
        "tree": packer.node(tree, ""),
        "attrs": {str(k): packer.node(v, f"@{k}") for k, v in attrs.items()},
    }
    return layout, packer.copies, packer.size


def unpack(node: list[Any], buf: Any) -> Any:
    """Rebuild a value from its layout; arrays are read-only views of ``buf`` (no copy)."""
    tag = node[0]
    if tag == "d":
        return {k: unpack(v, buf) for k, v in node[1]}
    if tag == "l":
        return [unpack(v, buf) for v in node[1]]
    if tag in ("a", "T"):
        dtype_str, shape, offset = node[-3:]
        dtype = np.dtype(dtype_str)
        count = int(np.prod(shape, dtype=np.int64))
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
        return HostTensor(arr, node[1]) if tag == "T" else arr
    if tag == "n":
        return None
    if tag == "g":
        return np.frombuffer(base64.b64decode(node[2]), dtype=np.dtype(node[1]))[0]
    if tag == "y":
        return base64.b64decode(node[1])
    if tag in ("b", "i", "f", "s"):
        return node[1]
    raise ValueError(f"unknown layout tag {tag!r}")


# ============================================================== parent side
class WriterProcess:
    """The trainer's handle on its writer process and the shared buffer (started on first use).

    One job at a time: :meth:`start` hands a checkpoint over, :meth:`result` collects the answer.
    """

    def __init__(self) -> None:
        self._fd = -1
        self._size = 0
        self._map: mmap.mmap | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._job: str | None = None  # the file being written

    @property
    def pid(self) -> int | None:
        """The writer process's pid (``None`` before the first save or after it died)."""
        return self._proc.pid if self._proc is not None else None

    def _reserve(self, size: int) -> mmap.mmap | None:
        if size == 0:
            return self._map
        if self._fd < 0:
            self._fd = os.memfd_create("hpcrl-checkpoint", os.MFD_CLOEXEC)
        if size > self._size:
            page = mmap.PAGESIZE
            new = -(-max(size, self._size + self._size // 4) // page) * page
            os.ftruncate(self._fd, new)  # first: on failure the old mapping stays usable
            if self._map is not None:
                self._map.close()
                self._map = None
            self._map = mmap.mmap(self._fd, new)
            self._size = new
        return self._map

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])  # the directory holding the hpcrl package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpcrl.storage.writer", str(self._fd), str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            pass_fds=(self._fd,),
            env=env,
        )
        log.debug("checkpoint writer process started (pid %d)", proc.pid)
        return proc

    def start(self, path: Path, tree: Mapping[Any, Any], attrs: Mapping[str, Any]) -> None:
        """Copy ``tree`` into the shared buffer and ask the writer process to write it to ``path``.

        Returns once the copy is taken: the caller may change its tensors right away.

        Raises:
            CheckpointError: the tree holds a value a checkpoint cannot store, or the writer cannot be started.
            SharedMemoryError: the shared buffer cannot hold the tree (the caller may write another way).
        """
        assert self._job is None, "collect the previous result first"
        try:
            layout, copies, size = pack(tree, attrs)
        except TypeError as e:
            raise CheckpointError(f"cannot save checkpoint {path}: {e}") from e
        try:
            buf = self._reserve(size)
        except OSError as e:
            raise SharedMemoryError(e.errno, f"cannot make a {size / 2**20:.0f} MiB shared buffer: {e.strerror}") from e
        try:
            for arr, offset in copies:
                if arr.nbytes:
                    assert buf is not None
                    np.copyto(np.frombuffer(buf, arr.dtype, arr.size, offset).reshape(arr.shape), arr)
            line = json.dumps({"path": str(path), "size": size, **layout}).encode("utf-8") + b"\n"
            for attempt in (1, 2):  # a writer that died since the last save is replaced once
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._spawn()
                try:
                    assert self._proc.stdin is not None
                    self._proc.stdin.write(line)
                    self._proc.stdin.flush()
                    break
                except BrokenPipeError:
                    self._reap()
                    if attempt == 2:
                        raise
        except OSError as e:
            raise CheckpointError(f"cannot save checkpoint {path}: checkpoint writer process: {e}") from e
        self._job = str(path)

    def done(self) -> bool:
        """Whether the answer for the job in flight has arrived (``True`` when there is no job)."""
        if self._job is None or self._proc is None:
            return True
        assert self._proc.stdout is not None
        poller = select.poll()  # not select.select: a big MPI job can hold file descriptors above 1024
        poller.register(self._proc.stdout.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        return bool(poller.poll(0))

    def result(self) -> tuple[float, str | None]:
        """Block for the answer to the job in flight: (seconds the writer took, error message or ``None``)."""
        assert self._job is not None and self._proc is not None
        job, self._job = self._job, None
        out: IO[bytes] | None = self._proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            code = self._reap()
            return 0.0, (
                f"cannot save checkpoint {job}: the checkpoint writer process exited (code {code}) before finishing"
            )
        reply = json.loads(line)
        return float(reply.get("seconds", 0.0)), reply.get("error")

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def close(self) -> None:
        """Stop the writer process (after its job in flight, if any) and free the shared buffer."""
        self._reap()
        self._job = None
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._size = 0


# ============================================================== child side
def _die_with_parent() -> None:
    """Tie this process's life to the trainer's: killed when it dies, deaf to the signals it handles.

    SLURM and terminals signal every process of a job or process group (preemption's SIGTERM/SIGUSR1,
    Ctrl-C's SIGINT); the trainer handles them by finishing the save in flight and writing a stop
    checkpoint, so the writer must not die of them mid-save. It ends when its pipe closes, or with
    the trainer (``PR_SET_PDEATHSIG``), never on its own.
    """
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    """Writer-process loop: one JSON job per line on stdin, one JSON answer per line on stdout."""
    from hpcrl.storage.checkpoint import save_checkpoint

    argv = sys.argv[1:] if argv is None else argv
    fd, parent = int(argv[0]), int(argv[1])
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 1
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        t0 = time.perf_counter()
        reply: dict[str, Any]
        try:
            job = json.loads(line)
            buf: Any = mmap.mmap(fd, job["size"], prot=mmap.PROT_READ) if job["size"] else b""
            tree = unpack(job["tree"], buf)
            attrs = {k: unpack(v, buf) for k, v in job["attrs"].items()}
            save_checkpoint(job["path"], tree, attrs)
            del tree, attrs, buf  # the views go first, then the mapping
            reply = {"seconds": time.perf_counter() - t0}
        except CheckpointError as e:
            reply = {"error": str(e)}
        except Exception as e:  # report everything: the trainer must hear why its checkpoint is missing
            reply = {"error": f"checkpoint writer process: {type(e).__name__}: {e}"}
        out.write(json.dumps(reply).encode("utf-8") + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
