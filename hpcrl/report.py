"""``python -m hpcrl.report RUN_DIR [--out DIR] [--tensorboard]``: plots and a summary table from a run's traces.

Reads every ``RUN_DIR/traces/rank-*.h5`` (SWMR-safe: works while the run is still going) and
writes PNG plots (return vs frames, return vs wall time, evaluation return vs frames, fps over time,
trainer stats, a per-role time breakdown) and ``summary.md`` into ``--out`` (default ``RUN_DIR/report``).

Frames: each trace's episode ``frames`` column counts the frames stepped by that rank's process
(from zero: a restarted or resumed rank writes a new trace file, and its segments are chained);
the run's frame count at an instant is the sum over ranks of each rank's latest value. Trainer
rows carry the run's frames as the trainer leader counted them (resumed runs included), and the
newest checkpoint's ``frames`` attribute is the count of a finished run. Each is a lower bound of
the frames stepped (the episode sum misses steps after each rank's last finished episode); the
largest is reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hpcrl.storage.files import make_private_dir, write_file_atomic

__all__ = ["ReportError", "load_traces", "build_series", "build_summary", "format_summary", "write_report", "main"]

log = logging.getLogger(__name__)

_WINDOW = 100
_MAX_STAT_PLOTS = 16


class ReportError(ValueError):
    """The run directory has no readable traces (the message names what was looked for)."""


# ============================================================== data
def load_traces(run_dir: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Read every trace of a run.

    Args:
        run_dir: the run directory.

    Returns:
        ``(traces, skipped)``: :func:`hpcrl.storage.trace.read_trace` dicts sorted by rank and
        start time, and one ``"file: reason"`` line per trace that could not be read (logged).

    Raises:
        ReportError: the run directory does not exist, has no trace file, or none is readable.
    """
    from hpcrl.storage.trace import TraceError, read_trace

    if not Path(run_dir).is_dir():
        what = "not a directory" if Path(run_dir).exists() else "no such run directory"
        raise ReportError(f"{what}: {run_dir}")
    tdir = Path(run_dir) / "traces"
    files = sorted(tdir.glob("rank-*.h5"))
    if not files:
        raise ReportError(f"run dir {run_dir} has no traces (looked for {tdir}/rank-*.h5)")
    traces, skipped = [], []
    for p in files:
        try:
            traces.append(read_trace(p))
        except TraceError as e:
            log.warning("skipping trace %s", e)
            skipped.append(str(e))
    if not traces:
        raise ReportError(f"none of the {len(files)} traces in {tdir} is readable: " + "; ".join(skipped))
    traces.sort(key=lambda t: (int(t["attrs"].get("rank", -1)), float(t["attrs"].get("start_time", 0.0))))
    return traces, skipped


def _checkpoint_frames(run_dir: str | Path) -> int | None:
    """The ``frames`` attribute of the newest readable checkpoint of the run, or None if there is none."""
    from hpcrl.storage.checkpoint import CheckpointError, CheckpointManager, read_checkpoint_attrs

    for path in CheckpointManager(run_dir).list():
        try:
            return int(read_checkpoint_attrs(path)["frames"])
        except (CheckpointError, KeyError, TypeError, ValueError) as e:
            log.warning("skipping checkpoint %s: %s", path, e)
    return None


def _rolling_mean(x: np.ndarray, window: int = _WINDOW) -> np.ndarray:
    if len(x) == 0:
        return x.astype(np.float64)
    c = np.cumsum(np.insert(x.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    return np.asarray((c[idx] - c[lo]) / (idx - lo))


def _episode_series(traces: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """All episodes merged by wall time, with the run's frame count at each episode end."""
    by_rank: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for t in traces:
        by_rank[int(t["attrs"].get("rank", -1))].append(t)
    parts = []
    for rank_id, segs in by_rank.items():
        offset = 0
        for seg in sorted(segs, key=lambda s: float(s["attrs"].get("start_time", 0.0))):
            ep = seg["episodes"]
            frames = ep["frames"].astype(np.int64) + offset  # each segment is a process counting from zero
            if len(frames):
                offset = int(frames.max())
            parts.append((np.full(len(frames), rank_id), ep["wall_time"], ep["return"], ep["length"], frames))
    if not parts:
        empty = np.zeros(0)
        return {"wall_time": empty, "return": empty, "length": empty, "frames": empty}
    rank = np.concatenate([p[0] for p in parts])
    wall = np.concatenate([p[1] for p in parts]).astype(np.float64)
    ret = np.concatenate([p[2] for p in parts]).astype(np.float64)
    length = np.concatenate([p[3] for p in parts]).astype(np.int64)
    own = np.concatenate([p[4] for p in parts]).astype(np.int64)
    order = np.argsort(wall, kind="stable")
    latest: dict[int, int] = {}
    total = 0
    frames = np.zeros(len(order), np.int64)
    for j, i in enumerate(order):
        r = int(rank[i])
        total += int(own[i]) - latest.get(r, 0)
        latest[r] = int(own[i])
        frames[j] = total
    return {"wall_time": wall[order], "return": ret[order], "length": length[order], "frames": frames}


def _trainer_series(traces: list[dict[str, Any]]) -> dict[str, Any]:
    """The trainer rows of the lowest rank that has any (the leader), segments chained by time."""
    with_rows = [t for t in traces if len(t["trainer"]["step"])]
    if not with_rows:
        return {"step": np.zeros(0), "frames": np.zeros(0), "wall_time": np.zeros(0), "stats": {}}
    leader = min(int(t["attrs"].get("rank", -1)) for t in with_rows)
    segs = sorted(
        (t for t in with_rows if int(t["attrs"].get("rank", -1)) == leader),
        key=lambda t: float(t["attrs"].get("start_time", 0.0)),
    )
    keys: dict[str, None] = {}
    for s in segs:
        keys.update(dict.fromkeys(s["trainer"]["stats"]))
    out: dict[str, Any] = {
        name: np.concatenate([s["trainer"][name] for s in segs]) for name in ("step", "frames", "wall_time")
    }
    out["stats"] = {
        k: np.concatenate([s["trainer"]["stats"].get(k, np.full(len(s["trainer"]["step"]), np.nan)) for s in segs])
        for k in keys
    }
    return out


def _eval_series(traces: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The evaluations during training (``/eval`` rows of every trace), in wall-time order."""
    from hpcrl.storage.trace import EVAL_FIELDS

    parts = [t["eval"] for t in traces if "eval" in t and len(t["eval"]["frames"])]
    if not parts:
        return {name: np.zeros(0, dt) for name, dt in EVAL_FIELDS.items()}
    out = {name: np.concatenate([p[name] for p in parts]) for name in EVAL_FIELDS}
    order = np.argsort(out["wall_time"], kind="stable")
    return {name: col[order] for name, col in out.items()}


def _fps_series(wall: np.ndarray, frames: np.ndarray, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Frames per second in up to ``bins`` equal wall-time bins (x = bin end)."""
    if len(wall) < 2 or wall[-1] <= wall[0]:
        return np.zeros(0), np.zeros(0)
    edges = np.linspace(wall[0], wall[-1], min(bins, len(wall) - 1) + 1)
    f_at = np.interp(edges, wall, frames.astype(np.float64))
    fps = np.diff(f_at) / np.diff(edges)
    return edges[1:], fps


def build_series(run_dir: str | Path) -> dict[str, Any]:
    """Everything the plots and the summary need, as numpy arrays (no I/O besides reading traces).

    Returns:
        ``{"t0", "traces", "skipped", "episodes", "trainer", "eval", "fps": (time, fps), "time_split",
        "checkpoint_frames"}``; times are seconds since the earliest trace start.

    Raises:
        ReportError: no readable traces.
    """
    traces, skipped = load_traces(run_dir)
    t0 = min(float(t["attrs"].get("start_time", math.inf)) for t in traces)
    episodes = _episode_series(traces)
    trainer = _trainer_series(traces)
    if len(trainer["step"]) >= 2:
        fps_t, fps = _fps_series(trainer["wall_time"], trainer["frames"])
    else:
        fps_t, fps = _fps_series(episodes["wall_time"], episodes["frames"])
    split: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    ranks: dict[str, set[int]] = defaultdict(set)
    end = t0
    for t in traces:
        role = str(t["attrs"].get("role", "?"))
        ranks[role].add(int(t["attrs"].get("rank", -1)))
        for span, rows in t["timings"].items():
            if len(rows["seconds"]):
                split[role][span] += float(rows["seconds"][-1])
                end = max(end, float(rows["wall_time"][-1]))
    for arr in (episodes["wall_time"], trainer["wall_time"]):
        if len(arr):
            end = max(end, float(np.max(arr)))
    return {
        "run_dir": str(run_dir),
        "checkpoint_frames": _checkpoint_frames(run_dir),
        "t0": t0,
        "end": end,
        "traces": traces,
        "skipped": skipped,
        "episodes": episodes,
        "trainer": trainer,
        "eval": _eval_series(traces),
        "fps": (fps_t - t0, fps),
        "time_split": {role: dict(spans) for role, spans in split.items()},
        "ranks": {role: sorted(r) for role, r in ranks.items()},
    }


def _last_finite(x: np.ndarray) -> float | None:
    ok = np.isfinite(x)
    return float(x[ok][-1]) if ok.any() else None


def _summary_from(series: dict[str, Any]) -> dict[str, Any]:
    ep, tr = series["episodes"], series["trainer"]
    wall = max(series["end"] - series["t0"], 0.0)
    ep_frames = int(ep["frames"][-1]) if len(ep["frames"]) else 0
    tr_frames = int(np.max(tr["frames"])) if len(tr["frames"]) else 0
    frames = max(ep_frames, tr_frames, series["checkpoint_frames"] or 0)
    rets = ep["return"]
    ev_ret = series["eval"]["mean_return"]
    last_stats = {k: v for k, v in ((k, _last_finite(a)) for k, a in tr["stats"].items()) if v is not None}
    versions = [int(np.max(t["episodes"]["policy_version"])) for t in series["traces"] if len(t["episodes"]["return"])]
    return {
        "run_dir": series["run_dir"],
        "traces": len(series["traces"]),
        "skipped_traces": list(series["skipped"]),
        "ranks": {role: len(r) for role, r in series["ranks"].items()},
        "frames": frames,
        "wall_time_seconds": wall,
        "fps": frames / wall if wall > 0 else 0.0,
        "episodes": len(rets),
        "final_mean_return": float(np.mean(rets[-_WINDOW:])) if len(rets) else None,
        "best_return": float(np.max(rets)) if len(rets) else None,
        "best_mean_return_100": float(np.max(_rolling_mean(rets))) if len(rets) else None,
        "trainer_steps": int(np.max(tr["step"])) if len(tr["step"]) else 0,
        "policy_version": max(versions) if versions else None,
        "evaluations": len(series["eval"]["frames"]),
        "last_eval_return": _last_finite(series["eval"]["mean_return"]),
        "best_eval_return": float(np.nanmax(ev_ret)) if np.isfinite(ev_ret).any() else None,
        "last_stats": last_stats,
        "fragments": {k: v for k, v in last_stats.items() if "dropped" in k or "stale" in k},
        "time_split": series["time_split"],
    }


def build_summary(run_dir: str | Path) -> dict[str, Any]:
    """Headline numbers of a run (frames, wall time, fps, returns, trainer steps, time split per role).

    Returns:
        A dict of plain values: ``frames``, ``wall_time_seconds``, ``fps``, ``episodes``,
        ``final_mean_return`` (last 100 episodes), ``best_return``, ``best_mean_return_100``,
        ``trainer_steps``, ``policy_version``, ``evaluations``, ``last_eval_return``, ``best_eval_return``
        (evaluations during training), ``last_stats``, ``fragments`` (dropped/stale counters
        from the trainer stats), ``time_split`` (role -> span -> seconds summed over its ranks),
        ``ranks`` (role -> count), ``traces``, ``skipped_traces``.

    Raises:
        ReportError: no readable traces.
    """
    return _summary_from(build_series(run_dir))


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _fmt_time(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h {s % 3600 // 60:02d}m {s % 60:02d}s" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as markdown (what ``summary.md`` holds and the CLI prints)."""
    rows = [
        ("frames", _fmt(summary["frames"])),
        ("wall time", _fmt_time(summary["wall_time_seconds"])),
        ("fps", _fmt(summary["fps"])),
        ("episodes", _fmt(summary["episodes"])),
        ("final mean return (last 100 episodes)", _fmt(summary["final_mean_return"])),
        ("best episode return", _fmt(summary["best_return"])),
        ("best mean return (100-episode window)", _fmt(summary["best_mean_return_100"])),
        ("trainer steps", _fmt(summary["trainer_steps"])),
        ("policy version", _fmt(summary["policy_version"])),
    ]
    if summary.get("evaluations"):
        rows += [
            ("evaluations", _fmt(summary["evaluations"])),
            ("last evaluation mean return", _fmt(summary["last_eval_return"])),
            ("best evaluation mean return", _fmt(summary["best_eval_return"])),
        ]
    rows += [(f"{k} (last)", _fmt(v)) for k, v in summary["fragments"].items()]
    ranks = ", ".join(f"{n} {role}" for role, n in sorted(summary["ranks"].items()))
    rows.append(("ranks traced", f"{ranks} ({summary['traces']} trace files)"))
    lines = [f"# hpcrl run report: {summary['run_dir']}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if summary["time_split"]:
        lines += ["", "## Time per role (summed over the role's ranks)", "", "| role | span | seconds | share |"]
        lines.append("|---|---|---:|---:|")
        for role, spans in sorted(summary["time_split"].items()):
            total = sum(spans.values()) or 1.0
            for span, sec in sorted(spans.items(), key=lambda kv: -kv[1]):
                lines.append(f"| {role} | {span} | {sec:,.1f} | {100 * sec / total:.1f}% |")
    if summary["last_stats"]:
        lines += ["", "## Last trainer stats", "", "| stat | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in summary["last_stats"].items()]
    if summary["skipped_traces"]:
        lines += ["", "## Skipped traces", ""] + [f"- {s}" for s in summary["skipped_traces"]]
    return "\n".join(lines) + "\n"


# ============================================================== plots
def _stat_order(keys: list[str]) -> list[str]:
    def rank(k: str) -> tuple[int, str]:
        low = k.lower()
        for i, word in enumerate(("loss", "entropy", "kl")):
            if word in low:
                return i, k
        return 3, k

    return sorted(keys, key=rank)[:_MAX_STAT_PLOTS]


def _save_png(plt: Any, fig: Any, path: Path) -> Path:
    """Render ``fig`` and write it to ``path`` atomically (0600, never through a symlink); close the figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    write_file_atomic(path, buf.getvalue())
    return path


def _plot_returns(plt: Any, x: np.ndarray, ret: np.ndarray, xlabel: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.scatter(x, ret, s=4, alpha=0.25, label="episode")
    ax.plot(x, _rolling_mean(ret), color="C1", label=f"mean of last {_WINDOW}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return _save_png(plt, fig, path)


def _private_out_dir(run_dir: str | Path, out_dir: str | Path | None) -> Path:
    """The report directory, created 0700 when missing.

    The default ``RUN_DIR/report`` is also made 0700 when it exists and belongs to this user; a directory
    given with ``--out`` keeps its mode.
    """
    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    existed = out.is_dir()
    make_private_dir(out)
    if out_dir is None and existed and not out.is_symlink():
        st = out.stat()
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(out, 0o700)
    return out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the PNG plots and ``summary.md`` for a run.

    Args:
        run_dir: the run directory.
        out_dir: where to write (created with mode 0700 if missing); default ``RUN_DIR/report``.
            Every file is written atomically with mode 0600.

    Returns:
        The files written (plots with no data to show are skipped).

    Raises:
        ReportError: no readable traces.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = build_series(run_dir)
    out = _private_out_dir(run_dir, out_dir)
    written: list[Path] = []
    ep, tr, t0 = series["episodes"], series["trainer"], series["t0"]
    if len(ep["return"]):
        written.append(_plot_returns(plt, ep["frames"], ep["return"], "frames", out / "return_vs_frames.png"))
        written.append(
            _plot_returns(plt, ep["wall_time"] - t0, ep["return"], "wall time (s)", out / "return_vs_time.png")
        )
    ev = series["eval"]
    if len(ev["frames"]):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.errorbar(ev["frames"], ev["mean_return"], yerr=ev["std_return"], marker="o", capsize=3)
        ax.set_xlabel("frames")
        ax.set_ylabel("evaluation mean return (deterministic)")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save_png(plt, fig, out / "eval_return.png"))
    fps_t, fps = series["fps"]
    if len(fps):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        ax.plot(fps_t, fps)
        ax.set_xlabel("wall time (s)")
        ax.set_ylabel("frames per second")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(_save_png(plt, fig, out / "fps.png"))
    keys = _stat_order(list(tr["stats"]))
    if keys and len(tr["step"]):
        cols = min(4, len(keys))
        nrows = math.ceil(len(keys) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            ax.plot(tr["step"], tr["stats"][key], lw=1)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("trainer step", fontsize=8)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(keys) :]:
            ax.set_visible(False)
        fig.tight_layout()
        written.append(_save_png(plt, fig, out / "trainer_stats.png"))
    split = series["time_split"]
    if split:
        roles = sorted(split)
        spans = sorted({s for r in roles for s in split[r]})
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(roles) + 3), 4.5))
        bottom = np.zeros(len(roles))
        for span in spans:
            totals = np.array([sum(split[r].values()) or 1.0 for r in roles])
            share = np.array([split[r].get(span, 0.0) for r in roles]) / totals * 100
            ax.bar(roles, share, bottom=bottom, label=span)
            bottom += share
        ax.set_ylabel("% of traced time (per role)")
        ax.set_title("time breakdown per role")
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
        fig.tight_layout()
        written.append(_save_png(plt, fig, out / "time_breakdown.png"))
    summary_path = out / "summary.md"
    write_file_atomic(summary_path, format_summary(_summary_from(series)).encode("utf-8"))
    written.append(summary_path)
    return written


def write_tensorboard(run_dir: str | Path, log_dir: str | Path) -> Path:
    """Export episode returns, fps, trainer stats and evaluations as TensorBoard scalars (needs ``tensorboard``).

    The tags are those of a live ``run.tensorboard`` (see :mod:`hpcrl.tensorboard`).

    ``log_dir`` is created with mode 0700 when missing (TensorBoard writes its files with the umask's
    mode, so the directory keeps them private).

    Raises:
        ImportError: tensorboard is not installed.
        ReportError: no readable traces.
    """
    from hpcrl.tensorboard import ScalarWriter

    series = build_series(run_dir)
    ep, tr, ev = series["episodes"], series["trainer"], series["eval"]
    writer = ScalarWriter(log_dir)
    try:
        for f, r, w in zip(ep["frames"], ep["return"], ep["wall_time"]):
            writer.episode(float(r), int(f), float(w))
        for t, v in zip(*series["fps"]):
            writer.fps(float(v), wall=float(t + series["t0"]))
        for i, (s, w) in enumerate(zip(tr["step"], tr["wall_time"])):
            writer.trainer({key: values[i] for key, values in tr["stats"].items()}, int(s), float(w))
        for i in range(len(ev["frames"])):
            writer.evaluation({name: col[i].item() for name, col in ev.items()})
    finally:
        writer.close()
    return Path(log_dir)


# ============================================================== CLI
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m hpcrl.report", description="Plots and a summary of an hpcrl run.")
    ap.add_argument("run_dir", help="the run directory (holds traces/)")
    ap.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report)")
    ap.add_argument("--tensorboard", action="store_true", help="also export TensorBoard scalars to OUT/tensorboard")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        files = write_report(args.run_dir, args.out)
    except ReportError as e:
        print(f"hpcrl.report: error: {e}", file=sys.stderr)
        return 2
    summary = next(p for p in files if p.name == "summary.md")
    print(summary.read_text())
    out = summary.parent
    if args.tensorboard:
        if importlib.util.find_spec("tensorboard") is None:
            print("--tensorboard: tensorboard is not installed (pip install tensorboard); skipped")
        else:
            files.append(write_tensorboard(args.run_dir, out / "tensorboard"))
    print("wrote: " + ", ".join(str(p) for p in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
