"""Reward normalisation in the trainer: rewards divided by the running std of the discounted return.

As Stable-Baselines3's ``VecNormalize(norm_reward=True)``: a discounted return ``ret`` is accumulated
along each column of a batch and its running variance tracked; every reward of the batch is then
divided by ``sqrt(var + 1e-8)`` and clipped to ``[-clip, clip]`` before the targets (GAE or V-trace)
are computed, so value targets are in normalised reward units. The returns are not centred (only
their variance scales the rewards).

On hpcrl's rows (see :mod:`hpcrl.trainers.returns`), the transition from decision row ``t`` earns
``r_{t+1}``; per column, starting from 0 at the fragment's first row::

    ret = gamma * ret + r_{t+1}   on a decision row t
    ret = 0                       on a done or truncated row (the episode ended there)

Every decision row's ``ret`` joins the statistics, which are updated with the whole batch before it
is normalised (``VecNormalize`` updates them every env step, then normalises that step's reward).

Unlike ``VecNormalize``, whose per-env accumulator carries across rollouts, ``ret`` restarts at 0 at
the first row of each fragment: the trainer sees fragments from many actors in whatever order they
arrive (and after a resume or a layout change, from other actors), and keeps no per-env state. The
first rows of an episode that spans fragments therefore count with a shorter discounted sum; with
fragments much longer than ``1 / (1 - gamma)`` steps this barely changes the variance, and the scale
is the same order as ``VecNormalize``'s.

With several trainer ranks the batch moments are combined across ranks
(:func:`hpcrl.policies.running_stats.batch_moments`), so every rank divides by the same scale. The
stats are part of the trainer's checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hpcrl.policies.running_stats import RunningMoments, batch_moments, merge_moments

__all__ = ["REWARD_NORM_EPS", "RewardNormalizer", "discounted_returns"]

logger = logging.getLogger(__name__)

#: Added to the variance before its square root (as in ``VecNormalize``).
REWARD_NORM_EPS = 1e-8


def discounted_returns(reward: np.ndarray, decision: np.ndarray, gamma: float) -> np.ndarray:
    """The forward discounted return of every decision row (see the module docstring).

    Args:
        reward: ``(T + 1, B, D)`` (row ``t``: the reward on arriving at ``obs_t``).
        decision: bool ``(T, B)``: rows ``0..T-1`` that are neither done nor truncated.
        gamma: discount.

    Returns:
        float64 ``(T, B, D)``: ``ret`` at each decision row, 0 on the others.
    """
    r = np.asarray(reward, np.float64)
    t_len = r.shape[0] - 1
    out = np.zeros((t_len, *r.shape[1:]), np.float64)
    ret = np.zeros(r.shape[1:], np.float64)
    for t in range(t_len):
        keep = decision[t][:, None]
        ret = np.where(keep, gamma * ret + r[t + 1], 0.0)
        out[t] = ret
    return out


class RewardNormalizer:
    """Running variance of discounted returns, and the reward scaling that uses it.

    Args:
        gamma: the discount of the returns (the trainer's).
        clip: normalised rewards are clipped to ``[-clip, clip]``.

    Raises:
        ValueError: ``clip`` is not positive.
    """

    def __init__(self, gamma: float, clip: float = 10.0) -> None:
        if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
            raise ValueError(f"reward_clip must be a positive number, got {clip!r}")
        self.gamma = float(gamma)
        self.clip = float(clip)
        self.moments: RunningMoments | None = None
        self._pending: tuple[float, np.ndarray, np.ndarray] | None = None

    def normalize(
        self, reward: torch.Tensor, done: torch.Tensor, truncated: torch.Tensor, sync: Any = None
    ) -> torch.Tensor:
        """The batch's rewards scaled by the stats updated with this batch (staged until :meth:`commit`).

        With ``sync`` of several ranks this is a collective (every trainer rank calls it once per step).

        Args:
            reward: ``(T + 1, B, D)`` float.
            done: bool ``(T + 1, B)``.
            truncated: bool ``(T + 1, B)``.
            sync: the trainer ranks' :class:`~hpcrl.api.trainer.GradientSync`, or ``None``.

        Returns:
            ``clip(reward / sqrt(var + 1e-8), -clip, clip)``, same shape, dtype and device as ``reward``.
        """
        r = reward.detach().cpu().numpy()
        dn, tr = done.detach().cpu().numpy(), truncated.detach().cpu().numpy()
        decision = ~(dn[:-1] | tr[:-1])
        ret = discounted_returns(r, decision, self.gamma)
        if self.moments is None or self.moments.shape != r.shape[2:]:
            if self.moments is not None:
                raise ValueError(
                    f"reward normalisation: rewards of width {r.shape[2:]}, but the stats are for {self.moments.shape}"
                )
            self.moments = RunningMoments(r.shape[2:])
        n, (bmean,), (bvar,) = batch_moments([ret[decision]], sync)
        m = self.moments
        self._pending = merge_moments(m.count, m.mean, m.var, n, bmean, bvar)
        var = self._pending[2]
        std = torch.as_tensor(np.sqrt(np.maximum(var, 0.0) + REWARD_NORM_EPS), dtype=reward.dtype)
        return (reward / std.to(reward.device)).clamp(-self.clip, self.clip)

    def commit(self) -> None:
        """Keep the stats staged by the last :meth:`normalize` (call once the step's update was applied)."""
        if self._pending is not None and self.moments is not None:
            self.moments.count, self.moments.mean, self.moments.var = self._pending
        self._pending = None

    def std(self) -> float:
        """The mean over reward components of the current ``sqrt(var + 1e-8)`` (1.0 before any batch)."""
        if self.moments is None:
            return 1.0
        return float(np.mean(np.sqrt(np.maximum(self.moments.var, 0.0) + REWARD_NORM_EPS)))

    def state(self) -> dict[str, np.ndarray]:
        """The checkpoint of the stats: ``{"count", "mean", "var"}`` (empty before any batch)."""
        return {} if self.moments is None else self.moments.state()

    def load(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state`'s output (empty: no batch yet; ``None``: none stored, start afresh with a warning).

        Raises:
            ValueError: a field is missing or malformed (names the field).
        """
        self._pending = None
        if not state:
            if state is None:
                logger.warning("ppo trainer: the checkpoint has no reward normalisation stats; starting them afresh")
            self.moments = None
            return
        mean: Any = state.get("mean")
        shape = tuple(np.shape(mean.detach().cpu().numpy() if hasattr(mean, "detach") else mean))
        self.moments = RunningMoments(shape)
        self.moments.load(state, "reward normalisation stats")
