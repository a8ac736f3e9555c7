"""Hyperparameter schedules as functions of training progress (the fraction of the run's env frames done).

A schedule never depends on a trainer step count: how many frames a step eats depends on the rank
layout (actors, envs, trainer ranks, batch size), which may change when a run resumes. Progress in
frames is stored in every checkpoint and is the same on every trainer rank at a step, so a scheduled
value is the same whatever the layout, and a resumed run continues exactly where it stopped.

Examples:
    >>> scheduled("linear", 2.0, 0.25)
    1.5
    >>> scheduled("constant", 0.003, 0.25)
    0.003
    >>> [scheduled("linear", 1.0, f) for f in (0.0, 0.5, 1.0, 1.5)]
    [1.0, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

__all__ = ["SCHEDULES", "scheduled", "check_schedule"]

#: schedule names: ``constant`` keeps the base value; ``linear`` anneals it to 0 at the end of the run.
SCHEDULES = ("constant", "linear")


def check_schedule(name: str, value: object, where: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the choices when ``value`` is not a known schedule.

    Args:
        name: the argument's name (e.g. ``lr_schedule``).
        value: the value given.
        where: who asks, for the message (e.g. ``ppo trainer``).
    """
    if value not in SCHEDULES:
        raise ValueError(f"{where}: bad {name}={value!r}; expected one of {', '.join(map(repr, SCHEDULES))}")


def scheduled(schedule: str, base: float, fraction: float) -> float:
    """The value of a scheduled hyperparameter at ``fraction`` of the run.

    Args:
        schedule: ``"constant"`` (``base``) or ``"linear"`` (``base * (1 - fraction)``).
        base: the value at the start of the run.
        fraction: ``frames / experiment.total_frames``; clipped to ``[0, 1]``.

    Returns:
        The scheduled value (a linear schedule reaches 0 only once the frame budget is spent).

    Raises:
        ValueError: an unknown schedule name.
    """
    if schedule == "constant":
        return float(base)
    if schedule == "linear":
        return float(base) * (1.0 - min(1.0, max(0.0, float(fraction))))
    raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(map(repr, SCHEDULES))}")
