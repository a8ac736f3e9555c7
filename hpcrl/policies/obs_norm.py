"""Observation normalisation inside a policy: running mean/variance buffers that travel with the weights.

:class:`ObsNormalizer` is a ``torch.nn.Module`` without parameters. Per normalised input it holds
three float64 buffers, ``count``, ``mean`` and ``var`` (per feature), so they are part of the model's
``state_dict()``: the trainer leader publishes them to inference ranks and inline-inference actors
with the weights, checkpoints hold them, and a resumed run, ``hpcrl.load_policy`` and
``hpcrl.evaluate`` use them. The policy applies :meth:`ObsNormalizer.normalize` to its inputs in
``rollout`` and ``analyze``::

    x_norm = clip((x - mean) / sqrt(var + 1e-8), -clip, clip)

(as Stable-Baselines3's ``VecNormalize``). The trainer calls :meth:`ObsNormalizer.update` once per
step with the batch's decision rows (see :meth:`hpcrl.policies.actor_critic.ActorCriticPolicy.update_normalizer`);
with several trainer ranks the batch moments are combined across ranks first
(:func:`hpcrl.policies.running_stats.batch_moments`), so every rank holds the same stats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hpcrl.policies.running_stats import batch_moments, merge_moments

__all__ = ["OBS_NORM_EPS", "ObsNormalizer", "check_obs_norm_keys"]

#: Added to the variance before its square root (Stable-Baselines3's ``VecNormalize`` uses the same).
OBS_NORM_EPS = 1e-8


def check_obs_norm_keys(keys: Sequence[str] | None, inputs: Mapping[str, tuple[int, ...]]) -> list[str]:
    """The inputs to normalise: ``keys`` checked against the policy's inputs (``None``: ``["obs"]``).

    Args:
        keys: the configured ``obs_norm_keys``, or ``None``.
        inputs: every input of the policy (actor and critic), name -> per-row shape.

    Returns:
        The names, in the order given.

    Raises:
        ValueError: a name is not an input, is repeated or contains ``.``, or the input is not a vector
            (1-D shape); the message names it and lists the policy's inputs.
    """
    if keys is None:
        keys = ["obs"]
    if isinstance(keys, str) or not isinstance(keys, Sequence):
        raise ValueError(f"obs_norm_keys must be a list of input names, got {keys!r}")
    out: list[str] = []
    for key in keys:
        if not isinstance(key, str) or key not in inputs:
            raise ValueError(
                f"obs_norm_keys names {key!r}, which is not an input of the policy (its inputs: {sorted(inputs)}); "
                f"name the vector inputs to normalise"
            )
        if key in out or "." in key:
            raise ValueError(f"obs_norm_keys: {key!r} is repeated or contains '.'")
        if len(inputs[key]) != 1:
            raise ValueError(
                f"obs_norm_keys names input {key!r} of shape {inputs[key]}: observation normalisation applies to "
                f"vector inputs (1-D shapes) only, not images"
            )
        out.append(key)
    return out


class _Stats(torch.nn.Module):
    """The buffers of one input: ``count`` (scalar), ``mean`` and ``var`` (per feature), float64."""

    count: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))


class ObsNormalizer(torch.nn.Module):
    """Running observation statistics of named vector inputs, and the normalisation that uses them.

    Args:
        inputs: name -> per-row shape of the inputs to normalise (vectors).
        clip: normalised values are clipped to ``[-clip, clip]``.

    Raises:
        ValueError: ``clip`` is not positive.
    """

    def __init__(self, inputs: Mapping[str, tuple[int, ...]], clip: float = 10.0) -> None:
        super().__init__()
        if not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0):
            raise ValueError(f"obs_clip must be a positive number, got {clip!r}")
        self.clip = float(clip)
        self.keys = list(inputs)
        self.stats = torch.nn.ModuleDict({k: _Stats(tuple(s)) for k, s in inputs.items()})
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor, tuple[int, int], torch.Tensor, torch.Tensor]] = {}

    def normalize(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``inputs`` with every normalised input replaced (float32 ``(..., dim)``); the others unchanged.

        Computed in float32 as ``clamp((x - mean) * (1 / sqrt(var + eps)), -clip, clip)`` from a float32 copy
        of ``mean`` and ``1 / sqrt(var + eps)`` (taken in float64), cached until the buffers change (an
        update, ``load_state_dict``, a move to another device).
        """
        out = dict(inputs)
        for key in self.keys:
            mean, inv_std = self._affine(key)
            x = inputs[key]
            if x.dtype != torch.float32:
                x = x.float()
            out[key] = torch.sub(x, mean).mul_(inv_std).clamp_(-self.clip, self.clip)
        return out

    def _affine(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 ``mean`` and ``1 / sqrt(var + eps)`` of input ``key``, recomputed when its buffers changed.

        In-place writes (``update``, ``load_state_dict``) bump the buffers' version counters; a move to another
        device or dtype (``_apply``) empties the cache.
        """
        cached = self._cache.get(key)
        if cached is not None:
            mean_buf, var_buf, versions, mean, inv_std = cached
            if (mean_buf._version, var_buf._version) == versions:
                return mean, inv_std
        s: Any = self.stats[key]
        with torch.no_grad():
            inv_std = torch.rsqrt(s.var.clamp(min=0.0) + OBS_NORM_EPS).float()
            mean = s.mean.float()
        self._cache[key] = (s.mean, s.var, (s.mean._version, s.var._version), mean, inv_std)
        return mean, inv_std

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``Module._apply`` (``to``, ``cuda``, ``double``, ...): the buffers are new tensors, the cache is stale."""
        self._cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def update(self, rows: Mapping[str, np.ndarray], sync: Any = None) -> float:
        """Merge a batch of rows into the running stats (collective with ``sync`` of several ranks).

        Args:
            rows: name -> ``(n, dim)`` rows for every normalised input (the same ``n`` for all).
            sync: the trainer ranks' :class:`~hpcrl.api.trainer.GradientSync` (or ``None``).

        Returns:
            The number of rows merged, over all ranks.

        Raises:
            KeyError: an input is missing from ``rows``.
            ValueError: rows of the wrong width (the message names the input).
        """
        arrays = []
        for key in self.keys:
            if key not in rows:
                raise KeyError(f"observation normalisation: the batch has no input {key!r} (it has {sorted(rows)})")
            x = np.asarray(rows[key])
            s: Any = self.stats[key]
            want = tuple(s.mean.shape)
            if x.shape[1:] != want:
                raise ValueError(
                    f"observation normalisation: input {key!r} rows have shape {x.shape[1:]}, expected {want}"
                )
            arrays.append(x)
        n, means, variances = batch_moments(arrays, sync)
        if n <= 0:
            return 0.0
        with torch.no_grad():
            for key, bm, bv in zip(self.keys, means, variances):
                s = self.stats[key]
                count, mean, var = merge_moments(float(s.count), s.mean.cpu().numpy(), s.var.cpu().numpy(), n, bm, bv)
                s.count.fill_(count)
                s.mean.copy_(torch.from_numpy(mean))
                s.var.copy_(torch.from_numpy(var))
        return n

    def state(self) -> dict[str, dict[str, np.ndarray]]:
        """Per input name: ``{"count", "mean", "var"}`` as float64 numpy copies (for tests and inspection)."""
        out = {}
        for key in self.keys:
            s: Any = self.stats[key]
            out[key] = {f: getattr(s, f).detach().cpu().numpy().copy() for f in ("count", "mean", "var")}
        return out
