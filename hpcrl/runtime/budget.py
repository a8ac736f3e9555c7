"""The run's frame budget: where an invocation stops stepping, and how many frames a trainer step eats."""

from __future__ import annotations

from hpcrl.api import config

__all__ = ["actor_share", "budget_reached", "frame_limit", "frames_per_step"]


def frames_per_step(columns: int, fragment_length: int, agents: int) -> int:
    """Env frames one trainer step consumes (for messages and checkpoint attributes, never for schedules).

    Args:
        columns: trajectories in one step's batches, summed over all trainer ranks.
        fragment_length: T; each trajectory holds T decision rows.
        agents: agents per env (one env step gives one row per agent).
    """
    return max(1, columns * fragment_length // max(1, agents))


def frame_limit(cfg: config.ExperimentConfig) -> tuple[int, str]:
    """Where this invocation stops stepping and why: ``experiment.total_frames`` or an earlier ``stop_at_frames``."""
    total = cfg.experiment.total_frames
    if cfg.run.stop_at_frames and cfg.run.stop_at_frames < total:
        return cfg.run.stop_at_frames, "run.stop_at_frames reached"
    return total, "total_frames reached"


def budget_reached(frames: int, cfg: config.ExperimentConfig) -> str | None:
    """Why a run at ``frames`` env frames must stop now, or None: its ``total_frames`` or its ``run.stop_at_frames``."""
    if frames >= cfg.experiment.total_frames:
        return "total_frames reached"
    limit, reason = frame_limit(cfg)
    return reason if frames >= limit else None


def actor_share(frames_left: int, actors: int, index: int) -> int:
    """Frames actor number ``index`` (of ``actors``) may step: an even split of ``frames_left``.

    The first ``frames_left % actors`` actors step one more. Every actor computes its own share from the
    one broadcast ``frames_left``.

    Examples:
        >>> [actor_share(10, 4, k) for k in range(4)], sum(actor_share(7, 3, k) for k in range(3))
        ([3, 3, 2, 2], 7)
    """
    return frames_left // actors + (1 if index < frames_left % actors else 0)
