"""Results of evaluations during training where the run's stats meet: trace, progress, best return, ``best.h5``.

Lives on the process that shows progress (the one process, or the trainer leader). It records each
result from :mod:`hpcrl.acting.evaluation` in this rank's trace (``/eval``) and the progress line, keeps
``best_eval_return`` and, with ``run.save_best``, writes ``checkpoints/best.h5`` (a checkpoint of the
policy whose evaluation was the best so far) atomically.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

from hpcrl.api import config

__all__ = ["EvalTracker", "BEST_NAME", "previous_best"]

log = logging.getLogger(__name__)

#: file name of the best policy in ``RUN_DIR/checkpoints``.
BEST_NAME = "best.h5"


def _clone(tree: Any) -> Any:
    """A copy of a checkpoint tree that later training does not change (tensors cloned, arrays copied)."""
    if isinstance(tree, dict):
        return {k: _clone(v) for k, v in tree.items()}
    if hasattr(tree, "detach") and hasattr(tree, "clone"):
        return tree.detach().cpu().clone()
    return copy.deepcopy(tree)


def previous_best(run_dir: Path, path: Path | None = None) -> float:
    """The best mean evaluation return a run dir has recorded (``-inf`` if none).

    The larger of ``best.h5``'s ``eval_return`` attribute and the best ``/eval`` row of the trainer leader's
    traces (``rank-0000*.h5``).

    Args:
        run_dir: the run directory.
        path: where its ``best.h5`` is (default ``RUN_DIR/checkpoints/best.h5``).
    """
    from hpcrl.storage.checkpoint import CheckpointError, read_checkpoint_attrs
    from hpcrl.storage.trace import TraceError, read_trace

    best = -math.inf
    path = path or run_dir / "checkpoints" / BEST_NAME
    if path.is_file():
        try:
            best = float(read_checkpoint_attrs(path).get("eval_return", best))
        except (CheckpointError, TypeError, ValueError) as e:
            log.warning("cannot read the best evaluation return from %s: %s", path, e)
    for trace in sorted((run_dir / "traces").glob("rank-0000*.h5")):
        try:
            rets = read_trace(trace)["eval"]["mean_return"]
        except TraceError as e:
            log.debug("skipping %s: %s", trace, e)
            continue
        finite = rets[~(rets != rets)]  # no NaN
        if len(finite):
            best = max(best, float(finite.max()))
    return best


class EvalTracker:
    """Keeps the run's evaluation results (on the process that shows progress).

    Args:
        cfg: the experiment (``run.save_best``).
        run_dir: the run directory (``best.h5`` and the best return of earlier segments), or None.
        config_text: the resolved config YAML, stored in ``best.h5`` like in every checkpoint.
        trace: this rank's trace writer, or None.
        progress: the :class:`~hpcrl.progress.Progress` that shows the results, or None.
        resume: take ``best_eval_return`` from the run dir (a resumed run).
        best_path: where ``best.h5`` goes (default ``RUN_DIR/checkpoints/best.h5``; a multi-policy run:
            ``RUN_DIR/checkpoints/<policy>/best.h5``).
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        run_dir: Path | None,
        config_text: str = "",
        trace: Any = None,
        progress: Any = None,
        resume: bool = False,
        best_path: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.best_path = best_path or (run_dir / "checkpoints" / BEST_NAME if run_dir is not None else None)
        self.run_dir = run_dir
        self.config_text = config_text
        self.trace = trace
        self.progress = progress
        self.save_best = bool(cfg.run.save_best) and run_dir is not None
        self.best = previous_best(run_dir, self.best_path) if (resume and run_dir is not None) else -math.inf
        if self.best > -math.inf:
            log.info("evaluation: best mean return so far %.4g (from the run dir)", self.best)
        if self.progress is not None and self.best > -math.inf:
            self.progress.best_eval = self.best
        self._snapshot: tuple[Any, dict[str, Any]] | None = None

    def snapshot(self, policy: Any, frames: int) -> None:
        """Keep a copy of ``policy``'s checkpoint, to write as ``best.h5`` if the coming evaluation is the best."""
        if self.save_best:
            self._snapshot = (_clone(policy.get_checkpoint()), {"version": int(policy.version), "frames": int(frames)})

    def record(self, result: dict[str, Any]) -> bool:
        """Record one evaluation's result; returns True when it is the best so far (``best.h5`` written then)."""
        if self.trace is not None:
            self.trace.evaluation(result)
        if self.progress is not None:
            self.progress.add_eval(result)
        ret = float(result.get("mean_return", math.nan))
        by_policy = result.get("mean_return_by_policy")
        log.info(
            "evaluation at %s frames: mean return %.4g over %d episodes (policy version %s)%s",
            f"{int(result.get('frames', 0)):,}",
            ret,
            int(result.get("episodes", 0)),
            result.get("policy_version"),
            f"; by policy {by_policy}" if by_policy else "",
        )
        if not ret > self.best:  # NaN never is
            return False
        self.best = ret
        if self.save_best and self._snapshot is not None:
            self._write_best(ret, result)
        return True

    def _write_best(self, ret: float, result: dict[str, Any]) -> None:
        from hpcrl._version import __version__
        from hpcrl.storage.checkpoint import CheckpointError, save_checkpoint

        assert self.best_path is not None and self._snapshot is not None
        tree, meta = self._snapshot
        attrs = {
            **meta,
            "total_frames": int(self.cfg.experiment.total_frames),
            "time": time.time(),
            "hpcrl_version": __version__,
            "config": self.config_text,
            "reason": "best",
            "eval_return": ret,
            "eval_episodes": int(result.get("episodes", 0)),
            "eval_frames": int(result.get("frames", 0)),
        }
        path = self.best_path
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            save_checkpoint(path, {"policy": tree}, attrs)
        except (CheckpointError, OSError) as e:  # the run goes on: best.h5 is a convenience, not the run's state
            log.error("evaluation: cannot write %s: %s", path, e)
            return
        log.info("evaluation: new best mean return %.4g: wrote %s (policy version %d)", ret, path, meta["version"])
