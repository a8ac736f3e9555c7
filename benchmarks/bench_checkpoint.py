"""Checkpoint save speed: hpcrl.storage.checkpoint.save_checkpoint vs torch.save of the same state dicts.

A ~10M-parameter MLP policy plus its Adam state (after one step, so exp_avg/exp_avg_sq exist:
about 3 x 40 MB of float32). Both writers run in the same process on the same directory;
each repetition writes a fresh file. hpcrl's save includes its fsync + atomic rename; torch.save
does no fsync, so "torch.save + fsync" is also shown for a like-for-like durability comparison.

A training run writes its periodic checkpoints in the background (``run.checkpoint_writer: process``, the
default; ``thread`` is the alternative): the trainer copies the state into a shared buffer and a writer
process does the rest. What that costs the trainer is measured directly, for both writers: a fixed
amount of trainer-like work (Adam steps on a small MLP, Python-heavy like PPO's minibatch loop, one
torch thread) is timed with and without a background save started at its beginning; the difference is
the trainer's loss (the copy, plus whatever the writer takes from it: the GIL, memory bandwidth),
compared with torch.save's time (which a trainer calling it blocks on).

    python -m benchmarks.bench_checkpoint [--quick] [--reps 5] [--dir DIR] [--hidden 2048]

Rows: the trainer time lost per periodic save with the default writer (target <= 2x torch.save), and the
blocking save (``run.checkpoint_writer: inline``, and the final and stop checkpoints) vs torch.save.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import BenchResult, Context, Row, bench_main
from hpcrl.storage.background import BackgroundSaver, ProcessSaver, ThreadSaver
from hpcrl.storage.checkpoint import CheckpointManager, load_checkpoint, prepare_run_dir, save_checkpoint

__all__ = ["main", "measure", "run"]


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


def trainer_work(steps: int) -> float:
    """Seconds for ``steps`` Adam steps on a 2x64 MLP (a stand-in for the PPO minibatch loop)."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(256, 4)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return time.perf_counter() - t0


def background_cost(root: Path, state: dict, attrs: dict, reps: int, work_steps: int) -> dict[str, dict[str, float]]:
    """Per writer (process, thread): medians of the submit pause, the write, and the trainer time lost.

    Each repetition times the same trainer work three times -- alone, with a save submitted at its start,
    alone again -- and charges the save with (submit + busy - mean of the two plain runs). The writers
    alternate within each repetition so that neither always meets a quieter machine.
    """
    savers: dict[str, BackgroundSaver] = {
        name: cls(CheckpointManager(prepare_run_dir(root / name), keep=1))
        for name, cls in (("process", ProcessSaver), ("thread", ThreadSaver))
    }
    for saver in savers.values():  # warm-up: starts the writer process and maps its buffer
        saver.submit(state, {**attrs, "version": 0}, reason="warm-up")
        saver.wait()
    samples: dict[str, dict[str, list[float]]] = {
        n: {"submit": [], "write": [], "lost": [], "work": [], "noise": []} for n in savers
    }
    names = list(savers)
    for i in range(reps):
        for name in names if i % 2 == 0 else names[::-1]:
            saver, out = savers[name], samples[name]
            before = trainer_work(work_steps)
            t0 = time.perf_counter()
            saver.submit(state, {**attrs, "version": i + 1}, reason="periodic")
            submit = time.perf_counter() - t0
            busy = trainer_work(work_steps)
            still_writing = saver.busy
            outcome = saver.wait()
            assert outcome is not None and outcome.error is None, outcome
            if still_writing:
                raise SystemExit(f"--work-steps {work_steps} ended before the save did ({outcome.write_seconds:.2f}s)")
            after = trainer_work(work_steps)
            out["submit"].append(submit)
            out["write"].append(outcome.write_seconds)
            out["lost"].append(submit + busy - (before + after) / 2)
            out["work"].append((before + after) / 2)
            out["noise"].append(abs(before - after))
    for saver in savers.values():
        saver.close()
    med = statistics.median
    return {name: {k: med(v) for k, v in out.items()} for name, out in samples.items()}


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def measure(reps: int, hidden: int, work_steps: int, where: str | None = None) -> dict[str, Any]:
    """Medians (seconds) of the blocking save/load on both sides and of the background writers' costs."""
    net, opt = build(hidden)
    n_params = sum(p.numel() for p in net.parameters())
    state = {"policy": {"model": net.state_dict(), "version": 1}, "trainer": {"optimizer": opt.state_dict()}}
    nbytes = sum(t.numel() * t.element_size() for t in net.state_dict().values()) * 3
    attrs = {"version": 1, "frames": 12345, "config": "policy: {type_: mlp}\n"}
    print(f"MLP with {n_params / 1e6:.2f}M parameters + Adam state: ~{nbytes / 2**20:.0f} MiB of tensors", flush=True)
    with tempfile.TemporaryDirectory(dir=where) as d:
        root = Path(d)
        t_h5, t_pt, t_ptsync, t_load_h5, t_load_pt = [], [], [], [], []
        for i in range(reps):
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
        bgs = background_cost(root, state, attrs, max(reps, 7), work_steps)
    med = statistics.median
    return {
        "params": n_params,
        "mib": nbytes / 2**20,
        "reps": reps,
        "hpcrl_save": med(t_h5),
        "torch_save": med(t_pt),
        "torch_save_fsync": med(t_ptsync),
        "hpcrl_load": med(t_load_h5),
        "torch_load": med(t_load_pt),
        **{f"{name}_{k}": v for name, bg in bgs.items() for k, v in bg.items()},
    }


def run(ctx: Context) -> BenchResult:
    """Measure; two rows: the trainer's loss with the default writer process, and the blocking save."""
    reps = ctx.opt("reps", 1 if ctx.quick else 5)
    hidden = ctx.opt("hidden", 1024 if ctx.quick else 2048)
    d = measure(reps, hidden, ctx.opt("work_steps", 1500), ctx.opt("dir"))
    res = BenchResult("checkpoint", data=d)
    size = f"{d['params'] / 1e6:.1f}M-param MLP + Adam ({d['mib']:.0f} MiB)"
    res.rows.append(
        Row(
            "checkpoint",
            f"checkpoint save as the trainer sees it (default writer process: trainer time lost), {size}",
            max(d["process_lost"], d["process_submit"]),  # below the pause is noise
            "torch.save",
            d["torch_save"],
            "s",
            higher_is_better=False,
            target=0.5,
            target_text="<= 2x torch.save",
            note=(
                f"trainer pause {d['process_submit']:.3f} s (copy into shared memory), then "
                f"{d['process_work']:.2f} s of trainer work ran on while the writer process "
                f"took {d['process_write']:.3f} s (measured loss {d['process_lost']:+.3f} s, run-to-run noise "
                f"{d['process_noise']:.3f} s); writer thread instead: {d['thread_lost']:.3f} s lost "
                "(h5py holds the GIL)"
            ),
        ).finish()
    )
    res.rows.append(
        Row(
            "checkpoint",
            f"checkpoint save, blocking (run.checkpoint_writer=inline), {size}",
            d["hpcrl_save"],
            "torch.save",
            d["torch_save"],
            "s",
            higher_is_better=False,
            target_text="context",
            note=(
                f"hpcrl includes fletcher32 + fsync + atomic rename; torch.save + fsync {d['torch_save_fsync']:.3f} s; "
                f"load: hpcrl {d['hpcrl_load']:.3f} s (verifies checksums), torch.load {d['torch_load']:.3f} s"
            ),
        ).finish()
    )
    return res


def _arguments(p: Any) -> None:
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 1)")
    p.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    p.add_argument("--hidden", type=int, default=None, help="hidden width (default 2048: ~9.5M parameters)")
    p.add_argument("--work-steps", type=int, default=None, help="trainer work per background save (must outlast it)")


main = bench_main("checkpoint", run, __doc__, _arguments)

if __name__ == "__main__":
    raise SystemExit(main())
