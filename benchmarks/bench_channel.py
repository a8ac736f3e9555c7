"""hpcrl channel vs raw mpi4py Send/Recv: small-message latency and bandwidth, 1 KiB .. 16 MiB.

Launch (exactly 2 ranks):

    mpiexec -n 2 python -m mpi4py benchmarks/bench_channel.py [--quick]

Latency: ping-pong, one-way time = round trip / 2 (rank 1 echoes). Raw: ``Send``/``Recv`` of a uint8
buffer. hpcrl: ``SendChannel.send`` / ``RecvChannel.recv`` of a NamedArray with one float32 leaf of the
same payload size (rows of 1 KiB), plus a 4-leaf request-like NamedArray for the small case.
Bandwidth: rank 0 streams a window of messages, rank 1 acknowledges the window with a raw 1-byte Send.
Raw and hpcrl rounds alternate and each number is the best round (robust to a busy machine). Prints
both and the ratio hpcrl/raw.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
from mpi4py import MPI

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.channel import RecvChannel, SendChannel
from hpcrl.comm.tags import Tag

KIB = 1024
ROW = 1 * KIB  # one row = 256 float32
PING, PONG, ACK, RAW = Tag.TEST, Tag.TEST + 1, Tag.TEST + 2, Tag.TEST + 3


def payload(nbytes: int) -> NamedArray:
    rows = max(1, nbytes // ROW)
    return NamedArray(x=np.random.default_rng(0).random((rows, ROW // 4), dtype=np.float32))


def request_like(nbytes: int) -> NamedArray:
    rows = max(1, nbytes // ROW)
    per = ROW // 4 // 4 - 1  # 4 float32 leaves + bool/int fields fill ~1 KiB per row
    return NamedArray(
        obs=NamedArray(obs=np.zeros((rows, per * 2), np.float32), state=np.zeros((rows, per), np.float32)),
        policy_state=NamedArray(hx=np.zeros((rows, per), np.float32)),
        on_reset=np.zeros((rows, 1), bool),
    )


def raw_latency(comm: MPI.Comm, nbytes: int, iters: int) -> float:
    buf = np.zeros(nbytes, np.uint8)
    peer = 1 - comm.rank
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        if comm.rank == 0:
            comm.Send([buf, MPI.BYTE], peer, RAW)
            comm.Recv([buf, MPI.BYTE], peer, RAW)
        else:
            comm.Recv([buf, MPI.BYTE], peer, RAW)
            comm.Send([buf, MPI.BYTE], peer, RAW)
    return (time.perf_counter() - t) / iters / 2


def channel_latency(comm: MPI.Comm, data: NamedArray, iters: int, out: SendChannel, inp: RecvChannel) -> float:
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        if comm.rank == 0:
            out.send(data)
            inp.recv()
        else:
            msg = inp.recv()
            out.send(msg.data)
    return (time.perf_counter() - t) / iters / 2


def raw_bandwidth(comm: MPI.Comm, nbytes: int, window: int, iters: int) -> float:
    buf = np.zeros(nbytes, np.uint8)
    ack = np.zeros(1, np.uint8)
    peer = 1 - comm.rank
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        if comm.rank == 0:
            for _ in range(window):
                comm.Send([buf, MPI.BYTE], peer, RAW)
            comm.Recv([ack, MPI.BYTE], peer, ACK)
        else:
            for _ in range(window):
                comm.Recv([buf, MPI.BYTE], peer, RAW)
            comm.Send([ack, MPI.BYTE], peer, ACK)
    return nbytes * window * iters / (time.perf_counter() - t)


def channel_bandwidth(
    comm: MPI.Comm, data: NamedArray, window: int, iters: int, out: SendChannel, inp: RecvChannel
) -> float:
    ack = np.zeros(1, np.uint8)
    peer = 1 - comm.rank
    nbytes = sum(leaf.nbytes for _, leaf in data.flat_items())
    comm.Barrier()
    t = time.perf_counter()
    for _ in range(iters):
        if comm.rank == 0:
            for _ in range(window):
                out.send(data)
            comm.Recv([ack, MPI.BYTE], peer, ACK)
        else:
            for _ in range(window):
                inp.recv()
            comm.Send([ack, MPI.BYTE], peer, ACK)
    return nbytes * window * iters / (time.perf_counter() - t)


def cpu_cost(nbytes: int, iters: int) -> tuple[float, float]:
    """CPU seconds per message on one rank (COMM_SELF): channel send+receive vs raw Isend+Irecv+Test.

    Independent of what other processes do to the wall clock: the floor that latency cannot beat.
    """
    comm = MPI.COMM_SELF
    out = SendChannel(comm, 0, PING, "cpu-out")
    inp = RecvChannel(comm, 0, PING, "cpu-in", max_rows=max(1, nbytes // ROW))
    data = payload(nbytes)
    src, dst = np.zeros(nbytes, np.uint8), np.zeros(nbytes, np.uint8)

    def channel(n: int) -> None:
        for _ in range(n):
            out.send(data)
            inp.recv()

    def raw(n: int) -> None:
        for _ in range(n):
            r = comm.Irecv([dst, MPI.BYTE], 0, RAW)
            s = comm.Isend([src, MPI.BYTE], 0, RAW)
            MPI.Request.Waitall([r, s])

    best = {}
    for _ in range(5):
        for name, fn in (("channel", channel), ("raw", raw)):
            fn(10)
            t = time.process_time()
            fn(iters)
            best[name] = min(best.get(name, 1e9), (time.process_time() - t) / iters)
    out.close()
    inp.close()
    return best["raw"], best["channel"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (smoke test)")
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    if comm.size != 2:
        if comm.rank == 0:
            print("run with exactly 2 ranks: mpiexec -n 2 python -m mpi4py benchmarks/bench_channel.py")
        return
    reps = 2 if args.quick else 9
    sizes = [KIB << (2 * i) for i in range(8)]  # 1 KiB .. 16 MiB, x4
    max_rows = sizes[-1] // ROW
    peer = 1 - comm.rank
    out = SendChannel(comm, peer, PING if comm.rank == 0 else PONG, "bench-out")
    inp = RecvChannel(comm, peer, PONG if comm.rank == 0 else PING, "bench-in", max_rows=max_rows)
    rows = []
    for nbytes in sizes:
        iters = max(10, min(4000, (16 << 20) // nbytes)) // (4 if args.quick else 1)
        window = 16
        bw_iters = max(2, min(500, (64 << 20) // (nbytes * window))) // (2 if args.quick else 1)
        data = payload(nbytes)
        channel_latency(comm, data, max(10, iters // 10), out, inp)  # warm up (handshake, page faults)
        lat_raw = lat_ch = float("inf")
        bw_raw = bw_ch = 0.0
        for _ in range(reps):  # interleaved short rounds, best of each: robust to a busy machine
            lat_raw = min(lat_raw, raw_latency(comm, nbytes, iters))
            lat_ch = min(lat_ch, channel_latency(comm, data, iters, out, inp))
            bw_raw = max(bw_raw, raw_bandwidth(comm, nbytes, window, bw_iters))
            bw_ch = max(bw_ch, channel_bandwidth(comm, data, window, bw_iters, out, inp))
        rows.append((nbytes, lat_raw, lat_ch, bw_raw, bw_ch))
    small = request_like(KIB)
    channel_latency(comm, small, 200, out, inp)
    lat_req = min(channel_latency(comm, small, 4000 // (4 if args.quick else 1), out, inp) for _ in range(reps))
    out.flush(timeout=30)
    comm.Barrier()
    out.close()
    inp.close()
    if comm.rank != 0:
        return
    cpu = [(n, *cpu_cost(n, 2000 if n < (1 << 20) else 50)) for n in (KIB, 64 * KIB, 1 << 20)]
    print(f"hpcrl channel vs raw mpi4py Send/Recv, 2 ranks, {MPI.Get_library_version().splitlines()[0].strip()}")
    print(
        f"{'size':>8} | {'raw lat':>9} {'hpcrl lat':>10} {'ratio':>6} | {'raw GB/s':>9} {'hpcrl GB/s':>10} {'ratio':>6}"
    )
    for nbytes, lr, lc, br, bc in rows:
        size = f"{nbytes // KIB} KiB" if nbytes < (1 << 20) else f"{nbytes >> 20} MiB"
        print(
            f"{size:>8} | {lr * 1e6:8.2f}us {lc * 1e6:9.2f}us {lc / lr:6.2f} | "
            f"{br / 1e9:9.2f} {bc / 1e9:10.2f} {bc / br:6.2f}"
        )
    print(f"1 KiB request-like NamedArray (4 leaves, nested): hpcrl one-way {lat_req * 1e6:.2f}us")
    print("latency ratio = hpcrl/raw (lower is better, target <= 2); bandwidth ratio = hpcrl/raw (target >= 0.9)")
    print("CPU time per message, one process (send + receive to itself; unaffected by other load):")
    for nbytes, raw_s, ch_s in cpu:
        size = f"{nbytes // KIB} KiB" if nbytes < (1 << 20) else f"{nbytes >> 20} MiB"
        print(f"{size:>8} | raw {raw_s * 1e6:8.2f}us  hpcrl {ch_s * 1e6:8.2f}us  ratio {ch_s / raw_s:6.2f}")


if __name__ == "__main__":
    main()
