"""Rank-0 progress display: a live bar on terminals, periodic log lines otherwise, and a final summary."""

from __future__ import annotations

import collections
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["Progress", "RunSummary", "policy_returns_note"]

log = logging.getLogger("hpcrl.progress")


class RunSummary(dict):  # type: ignore[type-arg]
    """The numbers a run ends with (frames, fps, mean return, ...); a dict for easy logging/JSON."""


class Progress:
    """Tracks frames, episode returns and trainer stats on rank 0 and shows them.

    Args:
        total_frames: the run's goal.
        mode: ``auto`` (bar on a terminal, log lines otherwise), ``bar``, ``log`` or ``off``.
        log_interval: seconds between log lines.
        start_frames: frames already done (resumed runs).
        window: episodes in the moving average of returns.
    """

    def __init__(
        self, total_frames: int, mode: str = "auto", log_interval: float = 5.0, start_frames: int = 0, window: int = 100
    ) -> None:
        self.total = int(total_frames)
        self.frames = int(start_frames)
        self.start_frames = int(start_frames)
        self.returns: collections.deque[float] = collections.deque(maxlen=window)
        self.lengths: collections.deque[int] = collections.deque(maxlen=window)
        self.episodes = 0
        self.best_mean = -math.inf
        self.trainer_steps = 0
        self.stats: dict[str, float] = {}
        self.extra: dict[str, Any] = {}
        self.evaluations = 0
        self.last_eval: dict[str, Any] | None = None
        self.best_eval = -math.inf
        """Best mean return of the evaluations during training (a resumed run starts from its run dir's)."""
        self.note = ""
        """Text shown at the end of the progress line (a self-play run's win rate against its pool)."""
        self.live: Any = None
        """A :class:`~hpcrl.tensorboard.LiveScalars` fed from here (``run.tensorboard``), or None."""
        self.t0 = time.monotonic()
        self.log_interval = log_interval
        self._last_log = self.t0
        self._last_live = self.t0
        self._last_frames = self.frames
        self._last_t = self.t0
        self._fps = 0.0
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        self.mode = mode
        self._bar: Any = None
        self._task: Any = None
        if mode == "bar":
            from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]hpcrl"),
                BarColumn(),
                TextColumn("{task.completed:,.0f}/{task.total:,.0f} frames"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                transient=False,
                refresh_per_second=4,
            )
            self._bar.start()
            self._task = self._bar.add_task("train", total=self.total, completed=self.frames, info="")

    @property
    def mean_return(self) -> float:
        """Mean return of the last ``window`` episodes (NaN before the first)."""
        return float(sum(self.returns) / len(self.returns)) if self.returns else math.nan

    @property
    def fps(self) -> float:
        """Frames per second since the start of this process."""
        dt = time.monotonic() - self.t0
        return (self.frames - self.start_frames) / dt if dt > 0 else 0.0

    def add_episodes(self, returns: list[float], lengths: list[int]) -> None:
        """Record finished episodes."""
        if self.live is not None:
            self.live.episodes(returns, self.frames)
        self.returns.extend(returns)
        self.lengths.extend(lengths)
        self.episodes += len(returns)
        if len(self.returns) >= min(10, self.returns.maxlen or 10):
            self.best_mean = max(self.best_mean, self.mean_return)

    def add_eval(self, result: dict[str, Any]) -> None:
        """Record one evaluation during training (see :mod:`hpcrl.acting.evaluation`)."""
        self.evaluations += 1
        self.last_eval = result
        ret = float(result.get("mean_return", math.nan))
        if ret > self.best_eval:
            self.best_eval = ret
        if self.live is not None:
            self.live.evaluation(result)

    def update(self, frames: int, trainer_steps: int | None = None, stats: dict[str, float] | None = None) -> None:
        """New totals; refreshes the bar and emits a log line when the interval has passed."""
        self.frames = int(frames)
        if trainer_steps is not None:
            self.trainer_steps = trainer_steps
        if stats:
            self.stats = stats
        now = time.monotonic()
        if now - self._last_t >= 1.0:
            self._fps = (self.frames - self._last_frames) / (now - self._last_t)
            self._last_frames, self._last_t = self.frames, now
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.frames, self.total), info=self._info())
        if self.mode != "off" and now - self._last_log >= self.log_interval:
            self._last_log = now
            if self.mode == "log":
                log.info("%s", self.line())
        if self.live is not None and now - self._last_live >= self.log_interval:
            self._last_live = now
            self.live.periodic(self.frames, self._fps or self.fps, self.trainer_steps, self.stats)

    def _info(self) -> str:
        ret = self.mean_return
        rtxt = f"{ret:8.2f}" if not math.isnan(ret) else "     n/a"
        fps = self._fps or self.fps
        text = f"fps {fps:8,.0f}  return {rtxt}  episodes {self.episodes:,}  steps {self.trainer_steps:,}"
        if self.last_eval is not None:
            text += f"  eval {float(self.last_eval.get('mean_return', math.nan)):.2f}"
        return f"{text}  {self.note}" if self.note else text

    def line(self) -> str:
        """One progress line."""
        pct = 100.0 * self.frames / self.total if self.total else 100.0
        extra = ""
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "lr"):
            if key in self.stats:
                extra += f"  {key} {self.stats[key]:.4g}"
        return f"frames {self.frames:,}/{self.total:,} ({pct:5.1f}%)  {self._info()}{extra}"

    def summary(self, **extra: Any) -> RunSummary:
        """The final numbers."""
        return RunSummary(
            frames=self.frames,
            frames_this_run=self.frames - self.start_frames,
            wall_seconds=round(time.monotonic() - self.t0, 2),
            fps=round(self.fps, 1),
            episodes=self.episodes,
            mean_return_last_100=round(self.mean_return, 3) if not math.isnan(self.mean_return) else None,
            best_mean_return=round(self.best_mean, 3) if self.best_mean > -math.inf else None,
            trainer_steps=self.trainer_steps,
            **self._eval_summary(),
            **extra,
        )

    def _eval_summary(self) -> dict[str, Any]:
        if not self.evaluations and self.best_eval == -math.inf:
            return {}
        last = self.last_eval
        out = {
            "evaluations": self.evaluations,
            "last_eval_return": round(float(last["mean_return"]), 3) if last is not None else None,
            "best_eval_return": round(self.best_eval, 3) if self.best_eval > -math.inf else None,
        }
        if last is not None and "mean_return_by_policy" in last:  # a multi-policy run: every policy's agents
            out["last_eval_return_by_policy"] = last["mean_return_by_policy"]
        return out

    def close(self) -> None:
        """Stop the live bar and close the live scalars."""
        if self.live is not None:
            self.live.periodic(self.frames, self.fps, self.trainer_steps, self.stats)
            self.live.close()
            self.live = None
        if self._bar is not None:
            self._bar.update(self._task, completed=min(self.frames, self.total), info=self._info())
            self._bar.stop()
            self._bar = None


def policy_returns_note(names: Sequence[str], recent: Sequence[Sequence[float]]) -> str:
    """The progress line's note in a multi-policy run: each policy's mean return over its last episodes.

    Examples:
        >>> policy_returns_note(["learner", "opponent"], [[1.0, 2.0], []])
        'by policy: learner 1.50, opponent n/a'
    """
    parts = [f"{n} {sum(r) / len(r):.2f}" if len(r) else f"{n} n/a" for n, r in zip(names, recent)]
    return "by policy: " + ", ".join(parts)


def format_summary(summary: dict[str, Any]) -> str:
    """A small aligned text table of a summary dict."""
    width = max(len(k) for k in summary) if summary else 0
    lines = []
    for k, v in summary.items():
        if isinstance(v, float):
            v = f"{v:,.3f}".rstrip("0").rstrip(".")
        elif isinstance(v, int):
            v = f"{v:,}"
        lines.append(f"  {k.ljust(width)}  {v}")
    return "\n".join(lines)
