"""The benchmark suite: runs the benchmarks, saves one result file each, prints the rows, rebuilds the page.

    python -m benchmarks.run                          # every benchmark (hours; wants a quiet machine)
    python -m benchmarks.run --quick                  # smoke sizes, results under benchmarks/results/quick/
    python -m benchmarks.run --only single mpi --max-load 1.5   # some benchmarks, each started on a quiet machine
    python -m benchmarks.run --list                   # the benchmarks, in suite order (no measurement)
    python -m benchmarks.run --report-only            # rebuild docs/performance.md from the committed results

Each benchmark is the module ``benchmarks/bench_NAME.py`` (also runnable alone: ``python -m
benchmarks.bench_NAME --help``). Every row runs hpcrl and its peer in the same run on the same machine and
reports the ratio (> 1 always means hpcrl is ahead; absolute numbers are context). Peers live in their own
virtual environments under benchmarks/.peers/, created on first use by :mod:`benchmarks.peers` (a peer that
cannot be installed turns its rows into "peer not installable" with the reason).

Each result is saved as ``benchmarks/results/NAME/DATE-KIND.json`` (:func:`benchmarks.common.save_result`;
with ``--quick`` under ``benchmarks/results/quick/``, which git ignores), and docs/performance.md is
rebuilt from the newest committed-layout result of every benchmark (:mod:`benchmarks.report`), so
benchmarks can be re-run one at a time. Commit the new result files together with the page.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from benchmarks.common import (
    QUICK_RESULTS,
    RESULTS,
    ROOT,
    BenchResult,
    Context,
    load_avg,
    print_rows,
    run_benchmark,
    save_result,
    wait_for_quiet,
)

__all__ = ["BENCHMARKS", "main", "run_benchmarks"]

#: name -> one-line description, in suite order; the code is ``benchmarks/bench_NAME.py``'s ``run``.
BENCHMARKS: dict[str, str] = {
    "limits": "raw env stepping, plain-torch inference and SGD cost of the CartPole model (the fps ceilings)",
    "single": "single-process CartPole fps vs SB3 / CleanRL-style / RLlib",
    "mpi": "mpiexec -n 2/4/8 CartPole fps vs SB3, Sample Factory 2 async, RLlib",
    "solve": "CartPole time to solve (475) vs SB3 and the CleanRL-style PPO",
    "pong": "Atari Pong fps (one process, -n 2) vs SB3, with plain-torch limits",
    "channel": "channel bandwidth 1-16 MiB and 1 KiB latency vs raw mpi4py Send/Recv (2 ranks)",
    "allreduce": "gradient allreduce: hpcrl's MPI path vs torch.distributed gloo (2 ranks)",
    "placement": "CartPole fps on 4 simulated nodes: node-aware vs round-robin inference placement",
    "scaling": "sleep-env (1 ms/step) throughput with 1 -> 16 -> 64 actor ranks",
    "memory": "peak RSS per role of a 64-rank CartPole job (16 ranks with --quick)",
    "checkpoint": "HDF5 checkpoint save (background writer and blocking) vs torch.save",
    "trace": "tracing overhead: CartPole fps with HDF5 traces on vs off",
    "eval": "evaluation during training and live TensorBoard: CartPole fps with each on vs both off",
    "startup": "launch to first trained batch: mpiexec -n 4 vs the peers",
    "startup_scale": "launch to first trained batch at 8/32/64 ranks on simulated nodes, rank 0's share",
    "env_step": "env adapters vs the same gymnasium envs stepped directly",
    "multipolicy": "one process: two policies (or one trained + one frozen) vs one at the same frames; pool memory",
    "policy": "policy rollout and PPO minibatch update vs the same model in plain torch",
    "learning": "learning targets: CartPole 475, memory task, Pendulum, quick-start centralized critic",
    "parity": "learning parity with SB3 at identical settings: many seeds per task, IQM, tests (docs/learning.md)",
    "soak": "a 4-rank job for 20 min (3 with --quick): memory flat, MPI requests bounded",
    "publish": "weight publication per node vs flat: leader bytes, time and PSS, 8-64 ranks on 1-8 simulated nodes",
}


def run_benchmarks(
    names: list[str],
    quick: bool,
    max_load: float | None = None,
    max_wait: float = 0.0,
    shared: bool = False,
    save: bool = True,
) -> list[BenchResult]:
    """Run ``names`` in suite order; save each result as it finishes.

    Args:
        names: benchmark names (keys of :data:`BENCHMARKS`).
        quick: smoke sizes (results go under ``benchmarks/results/quick/``).
        max_load: wait before each benchmark until the 1-minute load average is below this.
        max_wait: longest wait per benchmark, seconds.
        shared: record that other jobs ran on the machine meanwhile.
        save: write the result files.

    Returns:
        The results, in order. A benchmark that raises becomes a result with the error in its notes.
    """
    ctx = Context(quick=quick)
    out = []
    for name in BENCHMARKS:
        if name not in names:
            continue
        if max_load is not None and max_wait > 0:
            wait_for_quiet(max_load, max_wait)
        print(f"\n=== {name}: {BENCHMARKS[name]}  (load {load_avg()[0]:.2f})", flush=True)
        command = " ".join(
            ["python -m benchmarks.run --only", name, *(["--quick"] if quick else []), *(["--shared-machine"] * shared)]
        )
        module = importlib.import_module(f"benchmarks.bench_{name}")
        res = run_benchmark(name, module.run, ctx, command, shared=shared)
        print(f"  ({res.seconds:.0f} s, load {res.load_start[0]:.2f} -> {res.load_end[0]:.2f})", flush=True)
        for note in res.notes:
            if "raised" in note or "failed" in note:
                print(f"  {note}", flush=True)
        if save:
            path = save_result(res)
            print(f"  result: {path.relative_to(ROOT)}", flush=True)
        out.append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: run the selected benchmarks, print their rows, rebuild the page."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes; results and page under benchmarks/results/quick/")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help=f"subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--report-only", action="store_true", help="only rebuild the page from the saved results")
    p.add_argument("--no-page", action="store_true", help="do not rebuild the markdown page and charts")
    p.add_argument("--max-load", type=float, default=None, help="wait for a 1-min load average below this")
    p.add_argument("--max-wait", type=float, default=1800.0, help="longest wait per benchmark (s) with --max-load")
    p.add_argument(
        "--shared-machine",
        action="store_true",
        help="record in the results that other jobs ran on the machine meanwhile (the page marks those rows)",
    )
    args = p.parse_args(argv)
    names = args.only or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"--only: unknown benchmark(s) {unknown}; known: {list(BENCHMARKS)}")
    if args.list:
        for name, desc in BENCHMARKS.items():
            print(f"{name:<11} {desc}")
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    if not args.report_only:
        results = run_benchmarks(names, args.quick, args.max_load, args.max_wait, args.shared_machine)
        print_rows(results)
    if not args.no_page:
        from benchmarks.report import write_page

        page = write_page(QUICK_RESULTS if args.quick else RESULTS, quick=args.quick)
        print(f"\npage: {page.relative_to(ROOT)}")
    print(f"suite time: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
