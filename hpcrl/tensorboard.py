"""TensorBoard scalars of a run: exported from its traces (``hpcrl.report --tensorboard``) or live.

The live writer is ``run.tensorboard``.

Both write the same tags through :class:`ScalarWriter`:

- ``episode/return`` (step = the run's frames): every finished training episode's return (live: at most
  :data:`EPISODES_PER_WRITE` per progress interval);
- ``system/fps`` (step = frames): frames per second;
- ``trainer/<stat>`` (step = trainer step): every trainer stat (``policy_loss``, ``value_loss``,
  ``entropy``, ``approx_kl``, ``lr``, ...);
- ``eval/mean_return``, ``eval/std_return``, ``eval/mean_length``, ``eval/policy_version`` (step = frames):
  each evaluation during training (``run.eval_episodes``).

TensorBoard is an optional extra (``pip install 'hpcrl[tensorboard]'``); it is imported only here, lazily.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from typing import Any

from hpcrl.api import config

__all__ = ["INSTALL_HINT", "ScalarWriter", "LiveScalars", "require", "log_dir_of"]

#: how to install what :class:`ScalarWriter` needs.
INSTALL_HINT = "pip install 'hpcrl[tensorboard]' (or: pip install tensorboard)"

#: live writing: at most this many ``episode/return`` events per progress interval.
EPISODES_PER_WRITE = 32

#: the ``/eval`` columns written as ``eval/<name>`` scalars.
EVAL_TAGS = ("mean_return", "std_return", "mean_length", "policy_version")


def log_dir_of(cfg: config.ExperimentConfig, run_dir: Path) -> Path | None:
    """Where ``run.tensorboard`` writes: ``RUN_DIR/tensorboard`` for ``true``, the given directory, or None (off)."""
    tb = cfg.run.tensorboard
    if tb is False or tb == "":
        return None
    if tb is True:
        return run_dir / "tensorboard"
    return Path(str(tb))


def require(cfg: config.ExperimentConfig) -> None:
    """Check at start-up that ``run.tensorboard`` can be served.

    Raises:
        ConfigError: the option is on and the ``tensorboard`` package is not installed (says how to install it).
    """
    if cfg.run.tensorboard is False or cfg.run.tensorboard == "":
        return
    try:
        importlib.import_module("tensorboard")
    except ImportError:
        raise config.ConfigError(
            f"run.tensorboard: is {cfg.run.tensorboard!r}, but the 'tensorboard' package is not installed; "
            f"install it with: {INSTALL_HINT}, or set run.tensorboard=false"
        ) from None


class ScalarWriter:
    """The run's scalars as TensorBoard event files in ``log_dir`` (created 0700 when missing).

    A thin layer over ``torch.utils.tensorboard.SummaryWriter`` (which writes from a background thread):
    it fixes the tag names the export and the live writer share.

    Raises:
        ImportError: tensorboard is not installed.
    """

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from hpcrl.storage.files import make_private_dir

        make_private_dir(log_dir)
        self.log_dir = Path(log_dir)
        self._w = SummaryWriter(log_dir=str(log_dir))

    def episode(self, ret: float, frames: int, wall: float | None = None) -> None:
        """One finished training episode."""
        self._w.add_scalar("episode/return", float(ret), int(frames), walltime=wall)

    def fps(self, fps: float, frames: int | None = None, wall: float | None = None) -> None:
        """Frames per second (at ``frames``)."""
        self._w.add_scalar("system/fps", float(fps), None if frames is None else int(frames), walltime=wall)

    def trainer(self, stats: dict[str, float], step: int, wall: float | None = None) -> None:
        """Trainer stats of one step (non-finite values are skipped)."""
        for key, value in stats.items():
            v = float(value)
            if math.isfinite(v):
                self._w.add_scalar(f"trainer/{key}", v, int(step), walltime=wall)

    def evaluation(self, result: dict[str, Any]) -> None:
        """One evaluation during training (an ``/eval`` row)."""
        frames = int(result.get("frames", 0))
        wall = result.get("wall_time")
        for name in EVAL_TAGS:
            v = float(result.get(name, math.nan))
            if math.isfinite(v):
                self._w.add_scalar(f"eval/{name}", v, frames, walltime=None if wall is None else float(wall))

    def flush(self) -> None:
        """Hand what was written to the background writer's file."""
        self._w.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._w.close()


class LiveScalars:
    """Writes a running run's scalars from its periodic stats path (never per env step).

    The progress display (:class:`~hpcrl.progress.Progress`) feeds it: episodes as they are reported (kept
    in a list), evaluations as they come, and at every progress-line interval the fps, the newest trainer
    stats and the episodes of the interval: at most :data:`EPISODES_PER_WRITE` of them, evenly chosen (each
    event costs tens of microseconds of the writer's time, and TensorBoard shows at most 1,000 points per
    tag anyway; the export from the traces has every episode).

    Args:
        log_dir: the event file directory.
        trace: this process's trace writer: the time spent here goes to its ``tensorboard`` span.
    """

    def __init__(self, log_dir: str | Path, trace: Any = None) -> None:
        self.writer = ScalarWriter(log_dir)
        self.trace = trace
        self._last_step = -1
        self._returns: list[float] = []
        self._frames: list[int] = []

    def _spent(self, t0: float) -> None:
        if self.trace is not None:
            self.trace.add_time("tensorboard", time.perf_counter() - t0)

    def episodes(self, returns: list[float], frames: int) -> None:
        """Training episodes reported at ``frames`` (written at the next :meth:`periodic`)."""
        self._returns.extend(returns)
        self._frames.extend([frames] * len(returns))

    def periodic(self, frames: int, fps: float, step: int, stats: dict[str, float]) -> None:
        """At each progress interval: fps, and the trainer stats when a new trainer step has been taken."""
        t0 = time.perf_counter()
        n = len(self._returns)
        if n:
            k = min(n, EPISODES_PER_WRITE)
            for i in sorted({(j * (n - 1)) // max(k - 1, 1) for j in range(k)}):
                self.writer.episode(self._returns[i], self._frames[i])
            self._returns.clear()
            self._frames.clear()
        self.writer.fps(fps, frames)
        if stats and step != self._last_step:
            self._last_step = step
            self.writer.trainer(stats, step)
        self.writer.flush()
        self._spent(t0)

    def evaluation(self, result: dict[str, Any]) -> None:
        """One evaluation's result."""
        t0 = time.perf_counter()
        self.writer.evaluation(result)
        self._spent(t0)

    def close(self) -> None:
        """Close the event file."""
        self.writer.close()
