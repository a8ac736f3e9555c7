"""Trainer collectives: gradient averaging over trainer ranks with one collective per step.

:func:`make_gradient_sync` returns an :class:`hpcrl.api.trainer.GradientSync` for the trainer
communicator:

* ``"mpi"``: every gradient is copied into one preallocated flat host buffer, reduced with one
  ``Allreduce(IN_PLACE)``, divided by the world size and copied back. On CPU this is faster than gloo,
  by the most for small gradients (``python -m benchmarks.bench_allreduce``; docs/performance.md).
* ``"gloo"`` / ``"nccl"``: the same flat buffer (on the gradients' device for nccl), reduced with one
  ``torch.distributed.all_reduce`` on a process group bootstrapped over MPI (no free-port race: rank 0
  binds port 0 and broadcasts the address as JSON in a fixed-size byte buffer; no pickle). The
  rendezvous store listens on one address only: loopback when all trainer ranks share a node.
* ``"auto"``: nccl when the device is CUDA, else mpi.

A one-rank communicator gets the no-op base class. torch is imported only inside functions.

Examples:
    On the trainer ranks (``trainer_comm``: the trainer ranks' sub-communicator of the world)::

        sync = make_gradient_sync(trainer_comm, backend="auto", device="cpu")
        trainer.sync = sync                         # Trainer.step calls sync.allreduce_gradients(params)
        ...
        sync.destroy()                              # at shutdown
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from hpcrl.api.trainer import GradientSync
from hpcrl.comm.mpi import load_mpi

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = [
    "Backend",
    "CollectiveError",
    "MPIGradientSync",
    "TorchGradientSync",
    "make_gradient_sync",
]

_log = logging.getLogger(__name__)

Backend = Literal["auto", "mpi", "gloo", "nccl"]
_ADDR_BYTES = 1024  # fixed size of the broadcast rendezvous JSON


class CollectiveError(RuntimeError):
    """Trainer ranks disagree (different parameter layouts) or a process group cannot be set up."""


# ====================================================================== flat-buffer bookkeeping
class _FlatGrads:
    """Layout of the gradients of a parameter list in one flat buffer per buffer dtype."""

    def __init__(self, params: list[Any], device: Any, comm: MPI.Comm) -> None:
        import torch

        self.signature = _signature(params)
        _check_same_layout(comm, self.signature, params)
        groups: dict[Any, list[int]] = {}
        for i, p in enumerate(params):
            buf_dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
            groups.setdefault(buf_dtype, []).append(i)
        # (parameter indices, flat tensor, element counts) per buffer dtype; the flat tensor lives on ``device``.
        self.groups: list[tuple[list[int], Any, list[int]]] = []
        for dtype, idx in groups.items():
            counts = [int(params[i].numel()) for i in idx]
            flat = torch.zeros(sum(counts), dtype=dtype, device=device)
            self.groups.append((idx, flat, counts))

    @staticmethod
    def gather(params: list[Any], flat: Any, counts: list[int]) -> None:
        """Copy every gradient into ``flat`` (zeros for a parameter whose ``.grad`` is ``None``)."""
        pos = 0
        for p, n in zip(params, counts):
            grad = p.grad
            if grad is None:
                flat[pos : pos + n].zero_()
            else:
                if grad.is_sparse:
                    raise CollectiveError(f"sparse gradient of shape {tuple(grad.shape)} is not supported")
                flat[pos : pos + n].copy_(grad.detach().reshape(-1))
            pos += n

    @staticmethod
    def scatter(params: list[Any], flat: Any, counts: list[int], scale: float) -> None:
        """Write ``scale`` x the reduced values back into every ``.grad`` (creating it where it was ``None``)."""
        import torch

        pos = 0
        for p, n in zip(params, counts):
            view = flat[pos : pos + n].view(p.shape)
            grad = p.grad
            if grad is None:
                p.grad = (view * scale).to(device=p.device, dtype=p.dtype)
            elif grad.device == flat.device and grad.dtype == flat.dtype and grad.is_contiguous():
                torch.mul(view, scale, out=grad)  # scale and copy in one pass
            else:
                grad.copy_(view).mul_(scale)
            pos += n


def _signature(params: list[Any]) -> tuple[tuple[tuple[int, ...], str], ...]:
    return tuple((tuple(int(s) for s in p.shape), str(p.dtype)) for p in params)


def _check_same_layout(comm: MPI.Comm, signature: tuple[Any, ...], params: list[Any]) -> None:
    """Collective: every trainer rank must reduce the same parameter shapes and dtypes, in the same order."""
    mpi: Any = load_mpi()
    total = sum(int(p.numel()) for p in params)
    crc = zlib.crc32(repr(signature).encode())
    mine = np.array([total, crc, len(params)], np.int64)
    lo, hi = np.empty_like(mine), np.empty_like(mine)
    comm.Allreduce(mine, lo, op=mpi.MIN)
    comm.Allreduce(mine, hi, op=mpi.MAX)
    if not np.array_equal(lo, hi):
        raise CollectiveError(
            f"trainer rank {comm.Get_rank()}: gradient layouts differ across trainer ranks "
            f"(this rank: {len(params)} parameters, {total} values; across ranks: {lo[2]}..{hi[2]} parameters, "
            f"{lo[0]}..{hi[0]} values): every trainer must build the same model"
        )


def _trainable(params: Iterable[Any]) -> list[Any]:
    return [p for p in params if getattr(p, "requires_grad", True)]


# ====================================================================== MPI backend
class MPIGradientSync(GradientSync):
    """Gradient averaging with one in-place MPI ``Allreduce`` of a flat host buffer per step.

    Args:
        comm: the trainer communicator (size >= 2).

    Attributes:
        world_size: number of trainer ranks.
        rank: this rank in the trainer communicator.
    """

    def __init__(self, comm: MPI.Comm) -> None:
        self.comm = comm
        self.world_size = int(comm.Get_size())
        self.rank = int(comm.Get_rank())
        self._flat: _FlatGrads | None = None
        self.calls = 0
        """Collective calls made by :meth:`allreduce_gradients` (one per step and buffer dtype)."""

    def allreduce_gradients(self, params: Iterable[Any]) -> None:
        """Average ``.grad`` of every trainable parameter across trainer ranks, in place.

        Parameters whose ``.grad`` is ``None`` contribute zeros and receive the average. The buffer
        is preallocated on the first call (and again if the parameter list changes; all trainer ranks
        check they agree).

        Raises:
            CollectiveError: trainer ranks pass different parameter shapes or dtypes.
        """
        mpi: Any = load_mpi()
        ps = _trainable(params)
        if self._flat is None or self._flat.signature != _signature(ps):
            self._flat = _FlatGrads(ps, "cpu", self.comm)
        scale = 1.0 / self.world_size
        for idx, flat, counts in self._flat.groups:
            group = [ps[i] for i in idx]
            _FlatGrads.gather(group, flat, counts)
            self.comm.Allreduce(mpi.IN_PLACE, flat.numpy())
            _FlatGrads.scatter(group, flat, counts, scale)
            self.calls += 1

    def allreduce_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of a small float array across trainer ranks (float64 ``Allreduce``)."""
        return _mpi_mean(self.comm, values)

    def destroy(self) -> None:
        """Release the flat buffer (the communicator belongs to the caller)."""
        self._flat = None


def _mpi_mean(comm: MPI.Comm, values: np.ndarray) -> np.ndarray:
    mpi: Any = load_mpi()
    arr = np.array(values, dtype=np.float64, copy=True, order="C")
    comm.Allreduce(mpi.IN_PLACE, arr, op=mpi.SUM)
    arr /= comm.Get_size()
    return arr


# ====================================================================== torch.distributed backends
_NAME_BYTES = 256  # fixed size of a gathered processor name


def _gather_names(comm: MPI.Comm) -> list[str] | None:
    """Every rank's MPI processor name, on rank 0 (``None`` elsewhere); collective."""
    mpi: Any = load_mpi()
    mine = np.zeros(_NAME_BYTES, np.uint8)
    raw = mpi.Get_processor_name().encode()[:_NAME_BYTES]
    mine[: len(raw)] = np.frombuffer(raw, np.uint8)
    out = np.zeros((comm.Get_size(), _NAME_BYTES), np.uint8) if comm.Get_rank() == 0 else None
    comm.Gather([mine, mpi.BYTE], [out, mpi.BYTE] if out is not None else None, root=0)
    if out is None:
        return None
    return [bytes(row).rstrip(b"\0").decode("utf-8", "replace") for row in out]


def _resolve(host: str) -> tuple[int, str]:
    """``(address family, IP address)`` of ``host`` (a name or an address literal)."""
    family, _, _, _, addr = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0]
    return int(family), str(addr[0])


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return addr.is_loopback or addr.is_unspecified


def _route_to(peer: str) -> tuple[int, str] | None:
    """The local address this host uses to reach ``peer`` (a UDP ``connect`` sends nothing); None if unknown."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(peer, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            local = str(s.getsockname()[0])
    except OSError:
        return None
    return None if _is_loopback(local) else (int(family), local)


def _store_address(names: list[str] | None, one_node: bool) -> tuple[tuple[int, str] | None, str]:
    """Rank 0: the address the rendezvous store listens on (``None``: every interface) and why.

    ``$HPCRL_MASTER_ADDR`` / ``$MASTER_ADDR`` when set; 127.0.0.1 when every trainer rank is on this
    node; else the local address of the route to the first trainer rank on another node, else this
    host name's address if it is not a loopback one.

    Raises:
        OSError: the address given in the environment does not resolve.
    """
    for var in ("HPCRL_MASTER_ADDR", "MASTER_ADDR"):
        if os.environ.get(var):
            return _resolve(os.environ[var]), f"${var}"
    if one_node:
        return (socket.AF_INET, "127.0.0.1"), "all trainer ranks on this node"
    others = [n for n in (names or [])[1:] if names and n != names[0]]
    if others:
        found = _route_to(others[0])
        if found is not None:
            return found, f"the interface that reaches {others[0]}"
    try:
        family, ip = _resolve(socket.gethostname())
    except OSError:
        return None, "no address found"
    if _is_loopback(ip):
        return None, f"the host name resolves to the loopback address {ip}"
    return (family, ip), "the host name's address"


def _rendezvous(comm: MPI.Comm, timeout_s: float) -> tuple[Any, bool]:
    """A ``TCPStore`` for ``comm``'s ranks: rank 0 hosts it on a free port, the address goes by ``Bcast``.

    Rank 0 binds the listening socket itself, to one address (see :func:`_store_address`: loopback
    when all trainer ranks share a node), and hands it to the store (``master_listen_fd``): torch's
    store would otherwise listen on every interface whatever host it is given. Only when no address
    can be found does it listen on every interface (with a WARNING). The store has no authentication.

    Returns:
        ``(store, one_node)``: ``one_node`` is true when every rank of ``comm`` runs on the same host.
    """
    from datetime import timedelta

    import torch.distributed as dist

    mpi: Any = load_mpi()
    rank, size = comm.Get_rank(), comm.Get_size()
    timeout = timedelta(seconds=timeout_s)
    buf = np.zeros(_ADDR_BYTES, np.uint8)
    store = None
    # All ranks on one node (same host name everywhere): connect over loopback.
    node = np.array([zlib.crc32(mpi.Get_processor_name().encode())], np.int64)
    lo, hi = np.empty_like(node), np.empty_like(node)
    comm.Allreduce(node, lo, op=mpi.MIN)
    comm.Allreduce(node, hi, op=mpi.MAX)
    one_node = bool(lo[0] == hi[0])
    names = None if one_node else _gather_names(comm)
    if rank == 0:
        try:
            address, why = _store_address(names, one_node)
            if address is None:
                _log.warning(
                    "trainer rendezvous store: listening on every interface (%s); set HPCRL_MASTER_ADDR to the "
                    "address the trainer ranks should use",
                    why,
                )
                host = socket.gethostname()
                store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout, wait_for_workers=False)
            else:
                family, host = address
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.bind((host, 0))
                    sock.listen(max(128, size))
                    port = int(sock.getsockname()[1])
                except BaseException:
                    sock.close()
                    raise
                # the store takes the socket over (and closes it when it is destroyed)
                store = dist.TCPStore(
                    host,
                    port,
                    size,
                    is_master=True,
                    timeout=timeout,
                    wait_for_workers=False,
                    master_listen_fd=sock.detach(),
                )
            info: dict[str, Any] = {"host": host, "port": int(store.port)}
            _log.info("trainer rendezvous store listening on %s port %d (%s)", host, int(store.port), why)
        except Exception as e:  # every rank must learn about the failure, not hang
            info = {"error": f"{type(e).__name__}: {e}"}
        raw = json.dumps(info).encode()
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    comm.Bcast([buf, mpi.BYTE], root=0)
    info = json.loads(buf.tobytes().rstrip(b"\0").decode())
    if "error" in info:
        raise CollectiveError(f"trainer rank 0 could not open a rendezvous store: {info['error']}")
    if rank != 0:
        store = dist.TCPStore(info["host"], int(info["port"]), size, is_master=False, timeout=timeout)
    return store, one_node


def _loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux)."""
    for _, name in socket.if_nameindex():
        try:
            flags = int(Path(f"/sys/class/net/{name}/flags").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if flags & 0x8:  # IFF_LOOPBACK
            return name
    return "lo"


@contextlib.contextmanager
def _gloo_on_loopback(active: bool) -> Iterator[None]:
    """While creating a gloo group of ranks on one node: ``GLOO_SOCKET_IFNAME`` = loopback, unless the user set it.

    gloo reads the variable when the group is created; without it gloo listens on the address the
    host name resolves to, which other hosts can reach.
    """
    if not active or os.environ.get("GLOO_SOCKET_IFNAME"):
        yield
        return
    os.environ["GLOO_SOCKET_IFNAME"] = _loopback_interface()
    try:
        yield
    finally:
        os.environ.pop("GLOO_SOCKET_IFNAME", None)


class TorchGradientSync(GradientSync):
    """Gradient averaging with one ``torch.distributed.all_reduce`` of a flat buffer per step (gloo or nccl).

    The process group is the default one, created from MPI (see :func:`_rendezvous`); an already
    initialised default group of the same size is reused (and then not destroyed by :meth:`destroy`).

    Args:
        comm: the trainer communicator (size >= 2).
        backend: ``"gloo"`` or ``"nccl"``.
        device: where the flat buffer lives (``"cuda:N"`` for nccl).
        timeout: seconds for the rendezvous and for collectives.

    Raises:
        CollectiveError: the process group cannot be set up, or an existing one has another size.
    """

    def __init__(self, comm: MPI.Comm, backend: str, device: Any = "cpu", timeout: float = 120.0) -> None:
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.comm = comm
        self.world_size = int(comm.Get_size())
        self.rank = int(comm.Get_rank())
        self.backend = backend
        self.device = torch.device(device)
        self._owns_group = False
        if dist.is_initialized():
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
                raise CollectiveError(
                    f"a torch.distributed default group already exists with rank {dist.get_rank()} of "
                    f"{dist.get_world_size()}, but this trainer is rank {self.rank} of {self.world_size}"
                )
        else:
            store, one_node = _rendezvous(comm, timeout)
            try:
                with _gloo_on_loopback(backend == "gloo" and one_node):
                    dist.init_process_group(
                        backend,
                        store=store,
                        rank=self.rank,
                        world_size=self.world_size,
                        timeout=timedelta(seconds=timeout),
                    )
            except Exception as e:
                raise CollectiveError(f"trainer rank {self.rank}: init_process_group({backend!r}) failed: {e}") from e
            self._owns_group = True
        self._flat: _FlatGrads | None = None
        self.calls = 0
        """Collective calls made by :meth:`allreduce_gradients`."""

    def allreduce_gradients(self, params: Iterable[Any]) -> None:
        """Average ``.grad`` of every trainable parameter across trainer ranks, in place (see MPI variant)."""
        import torch.distributed as dist

        ps = _trainable(params)
        if self._flat is None or self._flat.signature != _signature(ps):
            self._flat = _FlatGrads(ps, self.device, self.comm)
        for idx, flat, counts in self._flat.groups:
            group = [ps[i] for i in idx]
            _FlatGrads.gather(group, flat, counts)
            dist.all_reduce(flat)
            _FlatGrads.scatter(group, flat, counts, 1.0 / self.world_size)
            self.calls += 1

    def allreduce_mean(self, values: np.ndarray) -> np.ndarray:
        """Mean of a small float array across trainer ranks (float64 MPI ``Allreduce``)."""
        return _mpi_mean(self.comm, values)

    def destroy(self) -> None:
        """Destroy the process group if this object created it (idempotent)."""
        import torch.distributed as dist

        self._flat = None
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False


# ====================================================================== factory
def make_gradient_sync(comm: MPI.Comm | None, backend: Backend = "auto", device: Any = "cpu") -> GradientSync:
    """The gradient synchronisation for a trainer communicator.

    Args:
        comm: the communicator of the trainer ranks; ``None`` or size 1 -> no-op.
        backend: ``"mpi"``, ``"gloo"``, ``"nccl"``, or ``"auto"`` (nccl if ``device`` is CUDA, else mpi).
        device: the device the gradients live on (``"cpu"``, ``"cuda:0"``, a ``torch.device``).

    Returns:
        :class:`MPIGradientSync`, :class:`TorchGradientSync`, or the no-op ``GradientSync()`` for one rank.

    Raises:
        ValueError: unknown backend, or nccl without a CUDA device.
        CollectiveError: a torch process group cannot be set up.
    """
    if backend not in ("auto", "mpi", "gloo", "nccl"):
        raise ValueError(f"gradient backend must be one of auto, mpi, gloo, nccl; got {backend!r}")
    if comm is None or comm.Get_size() == 1:
        return GradientSync()
    is_cuda = str(device).startswith("cuda")
    if backend == "auto":
        backend = "nccl" if is_cuda else "mpi"
    if backend == "nccl" and not is_cuda:
        raise ValueError(f"gradient backend 'nccl' needs a CUDA device, got device={device!r}")
    if backend == "mpi":
        return MPIGradientSync(comm)
    return TorchGradientSync(comm, backend, device)
