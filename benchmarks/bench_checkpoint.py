"""Checkpoint save speed: hpcrl.storage.checkpoint.save_checkpoint vs torch.save of the same state dicts.

A ~10M-parameter MLP policy plus its Adam state (after one step, so exp_avg/exp_avg_sq exist:
about 3 x 40 MB of float32). Both writers run in the same process on the same directory;
each repetition writes a fresh file. hpcrl's save includes its fsync + atomic rename; torch.save
does no fsync, so "torch.save + fsync" is also shown for a like-for-like durability comparison.

Run:
    python benchmarks/bench_checkpoint.py [--reps 5] [--dir /tmp] [--hidden 2048]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from hpcrl.storage.checkpoint import load_checkpoint, save_checkpoint


def build(hidden: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(512, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, hidden),
        torch.nn.Tanh(),
        torch.nn.Linear(hidden, 16),
    )
    opt = torch.optim.Adam(net.parameters(), lr=3e-4)
    net(torch.randn(8, 512)).pow(2).mean().backward()
    opt.step()
    return net, opt


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--hidden", type=int, default=2048, help="hidden width (2048 -> ~9.5M parameters)")
    ap.add_argument("--json", default=None, help="also write the medians (seconds) to this JSON file")
    args = ap.parse_args()

    net, opt = build(args.hidden)
    n_params = sum(p.numel() for p in net.parameters())
    state = {"policy": {"model": net.state_dict(), "version": 1}, "trainer": {"optimizer": opt.state_dict()}}
    nbytes = sum(t.numel() * t.element_size() for t in net.state_dict().values()) * 3
    attrs = {"version": 1, "frames": 12345, "config": "policy: {type_: mlp}\n"}
    print(f"MLP with {n_params / 1e6:.2f}M parameters + Adam state: ~{nbytes / 2**20:.0f} MiB of tensors")

    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        root = Path(d)
        t_h5, t_pt, t_ptsync, t_load_h5, t_load_pt = [], [], [], [], []
        for i in range(args.reps):
            # alternate the order so neither writer always meets a warmer page cache
            for which in ("h5", "pt") if i % 2 == 0 else ("pt", "h5"):
                if which == "h5":
                    p = root / f"ckpt-{i}.h5"
                    t0 = time.perf_counter()
                    save_checkpoint(p, state, attrs)
                    t_h5.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    load_checkpoint(p)
                    t_load_h5.append(time.perf_counter() - t0)
                    p.unlink()
                else:
                    p = root / f"ckpt-{i}.pt"
                    t0 = time.perf_counter()
                    torch.save(state, p)
                    t_pt.append(time.perf_counter() - t0)
                    fsync_file(p)
                    t_ptsync.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    torch.load(p, weights_only=True)
                    t_load_pt.append(time.perf_counter() - t0)
                    p.unlink()

    med = statistics.median
    h5, pt, ptsync = med(t_h5), med(t_pt), med(t_ptsync)
    print(f"median of {args.reps} repetitions (seconds):")
    print(f"  hpcrl save_checkpoint (fletcher32, fsync, atomic rename): {h5:.3f}")
    print(f"  torch.save                                              : {pt:.3f}")
    print(f"  torch.save + fsync                                      : {ptsync:.3f}")
    print(f"  hpcrl load_checkpoint (verifies checksums)              : {med(t_load_h5):.3f}")
    print(f"  torch.load(weights_only=True)                           : {med(t_load_pt):.3f}")
    print(f"ratio hpcrl/torch.save = {h5 / pt:.2f}x (target <= 2x); hpcrl/(torch.save+fsync) = {h5 / ptsync:.2f}x")
    if args.json:
        import json

        result = {
            "params": n_params,
            "mib": nbytes / 2**20,
            "reps": args.reps,
            "hpcrl_save": h5,
            "torch_save": pt,
            "torch_save_fsync": ptsync,
            "hpcrl_load": med(t_load_h5),
            "torch_load": med(t_load_pt),
        }
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
