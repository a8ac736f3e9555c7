"""A uniform random policy in numpy only (no torch), for tests and pipeline checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcrl.api.data import RolloutRequest, RolloutResult, SampleBatch
from hpcrl.api.environment import AVAILABLE_ACTION, Action
from hpcrl.api.policy import Policy
from hpcrl.policies.actor_critic import RolloutAnalysis

__all__ = ["RandomPolicy"]

_RESULT_KEYS = ["action", "policy_state", "analyzed_result"]
_ACTION_KEYS = ["x"]
_ANALYSIS_KEYS = ["log_prob", "value"]
#: Random actions drawn per generator call (a call costs as much as drawing thousands of numbers).
_BLOCK = 1024


class RandomPolicy(Policy):
    """Uniformly random actions; ``is_evaluation`` rows get the all-zero action (the first legal one, masked).

    Discrete actions are int64 ``(B,)`` in ``[0, n)``, multi-discrete int64 ``(B, k)``,
    continuous float32 ``(B, dim)`` uniform in ``[-1, 1]``. The analysed result carries the
    uniform log-probability and a zero value.

    With an observation field ``available_action`` (one 0/1 or bool entry per action; for multi-discrete
    actions the choices of component 0 first, then component 1, ...), each (component's) action is drawn
    uniformly among the legal ones and the log-probability is that of this masked draw. A row (or
    component) with no legal action draws among all.

    Args:
        action_dim: number of actions, a list of choices per component, or the number of
            continuous dimensions.
        continuous_action: continuous actions.
        seed: seed of the numpy generator.

    Examples:
        >>> from hpcrl.api.namedarray import NamedArray
        >>> p = RandomPolicy(action_dim=4)
        >>> out = p.rollout(RolloutRequest(obs=NamedArray(obs=np.zeros((3, 2), np.float32))))
        >>> out.action.x.shape, out.action.x.dtype, out.analyzed_result.log_prob.shape
        ((3,), dtype('int64'), (3, 1))
    """

    @classmethod
    def args_from_spaces(cls, args: dict[str, Any], observation_space: Any, action_space: Any) -> dict[str, Any]:
        """``action_dim``/``continuous_action`` from the env's action space where ``args`` omits them.

        Given arguments are kept and checked against the space (a random policy whose actions do not fit the
        env would send out-of-range actions into it); an ``available_action`` mask must have one entry per
        action. Without declared spaces the args are used as given.

        Raises:
            ValueError: an unsupported action space, or ``action_dim``/``continuous_action`` that do not fit it
                (names both).
        """
        if action_space is None:
            return args
        from hpcrl.policies.spaces import action_args_from_space, check_policy_against_spaces

        filled = dict(args)
        for key, value in action_args_from_space(action_space).items():
            filled.setdefault(key, value)
        actions = {k: filled[k] for k in ("action_dim", "continuous_action")}
        check_policy_against_spaces(actions, observation_space, action_space)
        return filled

    def __init__(self, action_dim: int | Sequence[int] = 2, continuous_action: bool = False, seed: int = 0) -> None:
        self.continuous_action = bool(continuous_action)
        if isinstance(action_dim, (int, np.integer)) and not isinstance(action_dim, bool):
            self._nvec: list[int] | None = None
            self._n = int(action_dim)
            if self._n < 1:
                raise ValueError(f"RandomPolicy: action_dim must be >= 1, got {action_dim}")
        else:
            if self.continuous_action:
                raise ValueError(f"RandomPolicy: continuous_action needs an int action_dim, got {action_dim!r}")
            self._nvec = [int(n) for n in action_dim] if isinstance(action_dim, Sequence) else []
            self._n = len(self._nvec)
            if not self._nvec or min(self._nvec) < 1:
                raise ValueError(f"RandomPolicy: bad multi-discrete action_dim {action_dim!r}")
        if self.continuous_action:
            self._log_prob = -self._n * math.log(2.0)
        elif self._nvec is not None:
            self._log_prob = -sum(math.log(n) for n in self._nvec)
        else:
            self._log_prob = -math.log(self._n)
        self._rng = np.random.default_rng(seed)
        self._analysis: dict[int, list[np.ndarray]] = {}  # batch size -> read-only (log_prob, value)
        self._block: np.ndarray = np.empty(0)  # random actions drawn ahead (see _draw)
        self._pos = 0

    def rollout(self, request: RolloutRequest, **kwargs: Any) -> RolloutResult:
        """Random actions for every row of ``request``.

        Without a mask, the analysed result (uniform log-probability, zero value) is the same for every
        call with the same batch size: it is built once per size and returned read-only.
        """
        leaves = request.obs.leaves() if request.obs is not None else []
        if leaves:
            b = int(np.shape(leaves[0])[0])
        else:
            if request.is_evaluation is None:
                raise ValueError("RandomPolicy.rollout: cannot tell the batch size (no obs leaves)")
            b = int(np.shape(request.is_evaluation)[0])
        ev = np.asarray(request.is_evaluation, bool).reshape(b) if request.is_evaluation is not None else None
        obs = request.obs
        if obs is not None and not self.continuous_action and AVAILABLE_ACTION in obs:
            x, log_prob = self._masked(np.asarray(obs[AVAILABLE_ACTION]), b, ev)
            analysis = [log_prob, np.zeros((b, 1), np.float32)]
        else:
            x = self._draw(b)
            if ev is not None and ev.any():
                x[ev] = 0
            analysis = self._uniform_analysis(b)
        return RolloutResult._build(
            _RESULT_KEYS,
            [Action._build(_ACTION_KEYS, [x]), request.policy_state, RolloutAnalysis._build(_ANALYSIS_KEYS, analysis)],
        )

    def _uniform_analysis(self, b: int) -> list[np.ndarray]:
        """The read-only (uniform log-probability, zero value) of ``b`` rows, built once per batch size."""
        analysis = self._analysis.get(b)
        if analysis is None:
            if len(self._analysis) >= 64:
                self._analysis.clear()
            log_prob, value = np.full((b, 1), self._log_prob, np.float32), np.zeros((b, 1), np.float32)
            log_prob.flags.writeable = value.flags.writeable = False
            analysis = self._analysis[b] = [log_prob, value]
        return analysis

    def _segments(self) -> list[int]:
        return self._nvec if self._nvec is not None else [self._n]

    def _masked(self, mask: np.ndarray, b: int, ev: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Actions drawn uniformly among the legal ones of ``mask`` ``(b, logits)``, and their log-probability.

        Raises:
            ValueError: the mask's shape is not ``(b, logits)``.
        """
        sizes = self._segments()
        if mask.shape != (b, sum(sizes)):
            raise ValueError(
                f"RandomPolicy: observation field {AVAILABLE_ACTION!r} has shape {mask.shape}, expected "
                f"{(b, sum(sizes))} (one 0/1 entry per action, action_dim={self._nvec or self._n})"
            )
        legal = mask.astype(bool)
        cols: list[np.ndarray] = []
        log_prob = np.zeros(b, np.float64)
        start = 0
        for n in sizes:
            seg = legal[:, start : start + n]
            seg = np.where(seg.any(axis=1, keepdims=True), seg, True)  # no legal choice: draw among all
            count = seg.sum(axis=1)
            pick = np.minimum((self._rng.random(b) * count).astype(np.int64), count - 1)  # k-th legal choice
            choice = (np.cumsum(seg, axis=1) <= pick[:, None]).sum(axis=1)
            if ev is not None and ev.any():
                choice[ev] = seg[ev].argmax(axis=1)  # the first legal choice
            cols.append(choice.astype(np.int64))
            log_prob -= np.log(count)
            start += n
        x = cols[0] if self._nvec is None else np.stack(cols, axis=1)
        return x, log_prob.astype(np.float32)[:, None]

    def _draw(self, b: int) -> np.ndarray:
        """``b`` fresh random actions, taken from a block drawn ahead (one generator call per block)."""
        pos = self._pos
        if pos + b > len(self._block):
            n = max(_BLOCK, b)
            if self.continuous_action:
                self._block = self._rng.uniform(-1.0, 1.0, (n, self._n)).astype(np.float32)
            elif self._nvec is not None:
                self._block = self._rng.integers(0, self._nvec, size=(n, self._n), dtype=np.int64)
            else:
                self._block = self._rng.integers(0, self._n, size=n, dtype=np.int64)
            pos = 0
        self._pos = pos + b
        return self._block[pos : pos + b].copy()

    def analyze(self, sample: SampleBatch, target: str = "ppo", **kwargs: Any) -> RolloutAnalysis:
        """The log-probability of a (masked) uniform draw and zero value per ``(T + 1, B)`` row (``(T + 1, B, 1)``)."""
        leaf = next((leaf for _, leaf in sample.flat_items()), None)
        if leaf is None or np.ndim(leaf) < 2:
            raise ValueError("RandomPolicy.analyze: the sample has no (T + 1, B, ...) leaves")
        shape = (*np.shape(leaf)[:2], 1)
        obs = sample.obs
        if obs is not None and not self.continuous_action and AVAILABLE_ACTION in obs:
            legal = np.asarray(obs[AVAILABLE_ACTION]).astype(bool)
            log_prob = np.zeros(shape[:2], np.float64)
            start = 0
            for n in self._segments():
                count = legal[..., start : start + n].sum(axis=-1)
                log_prob -= np.log(np.where(count > 0, count, n))  # no legal choice: drawn among all
                start += n
            return RolloutAnalysis(log_prob=log_prob.astype(np.float32)[..., None], value=np.zeros(shape, np.float32))
        return RolloutAnalysis(log_prob=np.full(shape, self._log_prob, np.float32), value=np.zeros(shape, np.float32))

    def get_checkpoint(self) -> dict[str, Any]:
        """``{"version": int}``."""
        return {"version": self.version}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the version."""
        self.set_version(int(checkpoint["version"]))
