"""A uniform random policy in numpy only (no torch), for tests and pipeline checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcrl.api.data import RolloutRequest, RolloutResult, SampleBatch
from hpcrl.api.environment import Action
from hpcrl.api.policy import Policy
from hpcrl.policies.actor_critic import RolloutAnalysis

__all__ = ["RandomPolicy"]

_RESULT_KEYS = ["action", "policy_state", "analyzed_result"]
_ACTION_KEYS = ["x"]
_ANALYSIS_KEYS = ["log_prob", "value"]
#: Random actions drawn per generator call (a call costs as much as drawing thousands of numbers).
_BLOCK = 1024


class RandomPolicy(Policy):
    """Uniformly random actions; ``is_evaluation`` rows get the all-zero action.

    Discrete actions are int64 ``(B,)`` in ``[0, n)``, multi-discrete int64 ``(B, k)``,
    continuous float32 ``(B, dim)`` uniform in ``[-1, 1]``. The analysed result carries the
    uniform log-probability and a zero value.

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

        The analysed result (uniform log-probability, zero value) is the same for every call with the
        same batch size: it is built once per size and returned read-only.
        """
        leaves = request.obs.leaves() if request.obs is not None else []
        if leaves:
            b = int(np.shape(leaves[0])[0])
        else:
            if request.is_evaluation is None:
                raise ValueError("RandomPolicy.rollout: cannot tell the batch size (no obs leaves)")
            b = int(np.shape(request.is_evaluation)[0])
        x = self._draw(b)
        if request.is_evaluation is not None:
            ev = np.asarray(request.is_evaluation, bool).reshape(b)
            if ev.any():
                x[ev] = 0
        analysis = self._analysis.get(b)
        if analysis is None:
            if len(self._analysis) >= 64:
                self._analysis.clear()
            log_prob, value = np.full((b, 1), self._log_prob, np.float32), np.zeros((b, 1), np.float32)
            log_prob.flags.writeable = value.flags.writeable = False
            analysis = self._analysis[b] = [log_prob, value]
        return RolloutResult._build(
            _RESULT_KEYS,
            [Action._build(_ACTION_KEYS, [x]), request.policy_state, RolloutAnalysis._build(_ANALYSIS_KEYS, analysis)],
        )

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
        """The uniform log-probability and zero value for every ``(T + 1, B)`` row (numpy ``(T + 1, B, 1)``)."""
        leaf = next((leaf for _, leaf in sample.flat_items()), None)
        if leaf is None or np.ndim(leaf) < 2:
            raise ValueError("RandomPolicy.analyze: the sample has no (T + 1, B, ...) leaves")
        shape = (*np.shape(leaf)[:2], 1)
        return RolloutAnalysis(log_prob=np.full(shape, self._log_prob, np.float32), value=np.zeros(shape, np.float32))

    def get_checkpoint(self) -> dict[str, Any]:
        """``{"version": int}``."""
        return {"version": self.version}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the version."""
        self.set_version(int(checkpoint["version"]))
