"""Runtime validation of environment results (and actions) against the declared spaces.

The actor runs :class:`EnvChecker` on the first steps of every env (config ``actor.check_env``:
``first`` (default, ~100 steps), ``always`` or ``off``), and :func:`hpcrl.testing.test_environment`
runs it on every step. Every :class:`EnvCheckError` names the env, where it happened (``reset``
or ``step N``), the agent index, the field, and what was expected vs what was found.

Whatever ``check_env`` says, the actor's env ring applies the structural rules of
:func:`leaf_problem`, :func:`reward_problem` and :func:`flag_problem` to every result of every step
(against the layout fixed by the first result), so a wrong shape or dtype is never broadcast or cast
into its buffers; with ``first`` and ``always`` it also checks float observations and rewards for
NaN/Inf on every step (see :mod:`hpcrl.acting.env_ring`).

What :meth:`EnvChecker.check` accepts is exactly what :func:`normalize_result` turns into the
canonical form, so the two may run in either order:

* ``obs``: a NamedArray whose fields are exactly the keys of the agent's declared
  ``gymnasium.spaces.Dict`` (nested Dicts map to nested NamedArrays / dotted paths). Every leaf
  is a ``numpy.ndarray`` with exactly the declared shape and dtype (no silent casts: ``float64``
  where ``float32`` is declared is an error, because the wire schema is fixed by the first
  message), and float leaves are finite. Without declared spaces, the first result of each agent
  fixes the fields, shapes and dtypes and later results must match it.
* ``reward``: a finite real scalar (python or numpy) or a float/int array of shape ``()`` or
  ``(k,)`` (``k`` fixed per agent, usually 1). Canonical: ``float32`` of shape ``(1,)``.
* ``done`` / ``truncated``: a bool (python or numpy), an int 0/1, or an array of shape ``()`` or
  ``(1,)`` of dtype bool or an integer dtype (SRL envs return ``uint8``) holding 0 or 1.
  Canonical: ``bool`` of shape ``(1,)``.
* after ``reset``: reward 0, done and truncated False, and at least one agent present.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from hpcrl.api.environment import AVAILABLE_ACTION, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.wire import WIRE_DTYPES
from hpcrl.envs.results import flag, reward_array

__all__ = [
    "EnvChecker",
    "EnvCheckError",
    "normalize_result",
    "normalize_results",
    "leaf_problem",
    "reward_problem",
    "flag_problem",
    "describe",
]

_F32 = np.dtype(np.float32)
_BOOL = np.dtype(np.bool_)


class EnvCheckError(ValueError):
    """An environment returned something that does not match its declared spaces or the result contract."""


def describe(x: Any) -> str:
    """Short description of a value: ``float64 array (3,)`` / ``int 5`` / ``list``."""
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array {tuple(x.shape)}"
    if isinstance(x, np.generic):
        return f"numpy {x.dtype} scalar"
    if isinstance(x, (bool, int, float)):
        return f"{type(x).__name__} {x!r}"
    return type(x).__name__


def _all_finite(a: np.ndarray) -> bool:
    """Whether every element of a float array is finite."""
    return bool(np.isfinite(a).all())


# ---------------------------------------------------------------------- layout rules
# The structural rules below (type, shape, dtype) are what the actor's env ring checks on every step
# whatever ``actor.check_env`` says; :class:`EnvChecker` applies the same rules plus the costlier ones.


def leaf_problem(x: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> str | None:
    """What is wrong with one observation leaf for a field of ``shape`` and ``dtype``; ``None`` if nothing.

    Examples:
        >>> leaf_problem(np.zeros(1, np.float32), (4,), np.dtype(np.float32))
        'expected shape (4,), got (1,)'
    """
    if not isinstance(x, np.ndarray):
        return f"expected a numpy {dtype} array of shape {shape}, got {describe(x)}"
    if x.shape != shape:
        return f"expected shape {shape}, got {x.shape}"
    if x.dtype != dtype:
        return f"expected dtype {dtype}, got {x.dtype} (convert it in the env, e.g. .astype(np.{dtype}))"
    return None


def reward_problem(reward: Any, width: int | None) -> str | None:
    """What is wrong with a reward for ``width`` components (``None``: not fixed yet); ``None`` if nothing.

    A reward is a real scalar (python or numpy, not bool), or an int/float array of shape ``()`` or
    ``(k,)``; a scalar or shape ``()`` counts as ``k = 1``.
    """
    if isinstance(reward, np.ndarray):
        if reward.dtype.kind not in "fiu" or reward.ndim > 1:
            return f"expected float32 array of shape (1,), got {describe(reward)}"
        shape = (1,) if reward.ndim == 0 else reward.shape
    elif isinstance(reward, (int, float, np.integer, np.floating)) and not isinstance(reward, (bool, np.bool_)):
        shape = (1,)
    else:
        return f"expected a float32 array of shape (1,) (or a real number), got {describe(reward)}"
    if width is not None and shape != (width,):
        return f"expected shape {(width,)} (as before), got {shape}"
    return None


def flag_problem(value: Any) -> str | None:
    """What is wrong with a ``done``/``truncated`` flag; ``None`` if nothing.

    A flag is a bool (python or numpy), an int 0 or 1 (python or numpy), or an array of shape ``(1,)``
    or ``()`` of dtype bool or of an integer dtype (SRL's ``uint8``) holding 0 or 1. Other values (2, -1)
    are refused rather than read as ``True``.

    Examples:
        >>> flag_problem(np.ones(1, np.uint8)) is None
        True
        >>> flag_problem(np.array([2], np.uint8))
        'expected 0 or 1 (or a bool), got 2 in a uint8 array (1,)'
    """
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        if value.shape not in ((1,), ()) or kind not in "biu":
            return f"expected bool array of shape (1,) (or integer 0/1), got {describe(value)}"
        if kind != "b":
            v = value.item()
            if v != 0 and v != 1:
                return f"expected 0 or 1 (or a bool), got {v} in a {describe(value)}"
        return None
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return None if value == 0 or value == 1 else f"expected 0 or 1 (or a bool), got {describe(value)}"
    hint = ""
    if isinstance(value, (dict, NamedArray)):
        hint = " (hpcrl's StepResult fields are obs, reward, done, truncated, info: pass info=... by keyword)"
    return f"expected bool array of shape (1,) (or integer 0/1), got {describe(value)}{hint}"


class _Leaf:
    """Expected layout of one observation leaf."""

    __slots__ = ("dtype", "is_float", "parts", "path", "shape")

    def __init__(self, path: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.path = path
        self.parts = tuple(path.split("."))
        self.shape = shape
        self.dtype = dtype
        self.is_float = dtype.kind == "f"


def _flatten_space(space: Any, prefix: str, out: list[_Leaf], what: str) -> None:
    from gymnasium import spaces

    for key, sub in space.spaces.items():
        path = f"{prefix}{key}"
        if isinstance(sub, spaces.Dict):
            _flatten_space(sub, path + ".", out, what)
            continue
        shape = getattr(sub, "shape", None)
        dtype = getattr(sub, "dtype", None)
        if shape is None or dtype is None:
            raise EnvCheckError(f"{what}: observation space field {path!r} is {sub}, which has no fixed shape/dtype")
        out.append(_Leaf(path, tuple(int(s) for s in shape), np.dtype(dtype)))


def _top_keys(leaves: list[_Leaf]) -> list[str]:
    keys: list[str] = []
    for leaf in leaves:
        if leaf.parts[0] not in keys:
            keys.append(leaf.parts[0])
    return keys


class EnvChecker:
    """Validates the result lists of ``reset()``/``step()`` of one environment.

    Args:
        env_name: names the env in messages, e.g. ``"gym:CartPole-v1"``.
        agent_count: the env's ``agent_count``.
        observation_spaces: one ``gymnasium.spaces.Dict`` per agent, or ``None`` (then each agent's
            first result fixes its layout).
        action_spaces: one gymnasium space per agent, or ``None`` (used by :meth:`check_actions`).

    Raises:
        EnvCheckError: the declared spaces themselves are malformed (wrong count, not a Dict, ...).

    Examples:
        >>> import numpy as np
        >>> from gymnasium import spaces
        >>> from hpcrl.api.environment import AVAILABLE_ACTION, StepResult
        >>> from hpcrl.api.namedarray import NamedArray
        >>> chk = EnvChecker("demo", 1, [spaces.Dict(obs=spaces.Box(-1, 1, (3,), np.float32))])
        >>> good = StepResult(NamedArray(obs=np.zeros(3, np.float32)), 0.0, False, False)
        >>> chk.check([good], "reset")
        >>> bad = StepResult(NamedArray(obs=np.zeros(4, np.float32)), 1.0, False, False)
        >>> chk.check([bad], "step 1")
        Traceback (most recent call last):
        ...
        hpcrl.envs.checks.EnvCheckError: env 'demo' step 1: agent 0: obs field 'obs': expected shape (3,), got (4,)
    """

    def __init__(
        self,
        env_name: str,
        agent_count: int,
        observation_spaces: Sequence[Any] | None = None,
        action_spaces: Sequence[Any] | None = None,
    ) -> None:
        self.env_name = env_name
        head = f"env {env_name!r}"
        if isinstance(agent_count, bool) or not isinstance(agent_count, (int, np.integer)) or agent_count < 1:
            raise EnvCheckError(f"{head}: agent_count must be a positive int, got {agent_count!r}")
        self.agent_count = int(agent_count)
        self._leaves: list[list[_Leaf] | None] = [None] * self.agent_count
        self._keys: list[list[str] | None] = [None] * self.agent_count
        if observation_spaces is not None:
            from gymnasium import spaces

            self._check_count(observation_spaces, "observation_spaces")
            for i, sp in enumerate(observation_spaces):
                if not isinstance(sp, spaces.Dict):
                    raise EnvCheckError(
                        f"{head}: observation_spaces[{i}] (agent {i}): expected a gymnasium.spaces.Dict keyed like "
                        f"StepResult.obs, got {sp}"
                    )
                leaves: list[_Leaf] = []
                _flatten_space(sp, "", leaves, f"{head} agent {i}")
                self._leaves[i] = leaves
                self._keys[i] = _top_keys(leaves)
        self.action_spaces = list(action_spaces) if action_spaces is not None else None
        if self.action_spaces is not None:
            self._check_count(self.action_spaces, "action_spaces")
        self._reward_shape: list[tuple[int, ...] | None] = [None] * self.agent_count

    def _check_count(self, seq: Any, name: str) -> None:
        if not isinstance(seq, (list, tuple)) or len(seq) != self.agent_count:
            n = len(seq) if isinstance(seq, (list, tuple)) else type(seq).__name__
            raise EnvCheckError(
                f"env {self.env_name!r}: {name} has {n} entries, expected a list of agent_count={self.agent_count}"
            )

    # ------------------------------------------------------------------ results
    def check(self, results: Any, where: str = "step") -> None:
        """Validate one ``reset()``/``step()`` return value.

        Args:
            results: what the env returned.
            where: ``"reset"`` or ``"step N"`` (used in messages; a ``reset`` also requires zero reward
                and no done/truncated flags).

        Raises:
            EnvCheckError: the first problem found, naming env, ``where``, agent, field, expected and actual.
        """
        head = f"env {self.env_name!r} {where}"
        if not isinstance(results, list):
            raise EnvCheckError(
                f"{head}: returned a {type(results).__name__}, expected a list of {self.agent_count} StepResult/None"
            )
        if len(results) != self.agent_count:
            raise EnvCheckError(f"{head} returned {len(results)} results, expected agent_count={self.agent_count}")
        is_reset = where.startswith("reset")
        present = 0
        for i, r in enumerate(results):
            if r is None:
                continue
            if not isinstance(r, StepResult):
                raise EnvCheckError(f"{head}: agent {i}: expected a StepResult or None, got {type(r).__name__}")
            present += 1
            self._check_obs(i, r.obs, head)
            if AVAILABLE_ACTION in r.obs:
                self._check_mask(i, r.obs[AVAILABLE_ACTION], head)
            self._check_reward(i, r.reward, head, is_reset)
            self._check_flag(i, "done", r.done, head, is_reset)
            self._check_flag(i, "truncated", r.truncated, head, is_reset)
            if not isinstance(r.info, (dict, NamedArray)):
                raise EnvCheckError(
                    f"{head}: agent {i}: info: expected a dict or NamedArray, got {type(r.info).__name__}"
                )
        if is_reset and present == 0:
            raise EnvCheckError(f"{head}: every agent's result is None; expected at least one agent to observe")

    def _check_obs(self, i: int, obs: Any, head: str) -> None:
        if not isinstance(obs, NamedArray):
            raise EnvCheckError(f"{head}: agent {i}: obs: expected a NamedArray of named inputs, got {describe(obs)}")
        leaves = self._leaves[i]
        if leaves is None:
            self._learn(i, obs, head)
            return
        keys = obs.keys()
        if keys != self._keys[i]:
            exp = self._keys[i] or []
            if set(keys) != set(exp):
                missing = [k for k in exp if k not in keys]
                extra = [k for k in keys if k not in exp]
                raise EnvCheckError(
                    f"{head}: agent {i}: obs fields: expected {exp}, got {keys} (missing {missing}, unexpected {extra})"
                )
        for leaf in leaves:
            x: Any = obs
            for part in leaf.parts:
                x = getattr(x, part, None) if isinstance(x, NamedArray) else None
            problem = leaf_problem(x, leaf.shape, leaf.dtype)
            if problem is not None:
                raise EnvCheckError(f"{head}: agent {i}: obs field {leaf.path!r}: {problem}")
            if leaf.is_float and not _all_finite(x):
                bad = int(np.size(x) - np.isfinite(x).sum())
                raise EnvCheckError(
                    f"{head}: agent {i}: obs field {leaf.path!r}: expected finite values, got {bad} NaN/Inf "
                    f"element(s) of {x.size}"
                )

    def _check_mask(self, i: int, mask: Any, head: str) -> None:
        """``available_action``: a 1-D array of 0/1 (or bool), one entry per logit of the agent's action space."""
        where = f"{head}: agent {i}: obs field {AVAILABLE_ACTION!r}"
        if not isinstance(mask, np.ndarray) or mask.ndim != 1 or mask.dtype.kind not in "biuf":
            raise EnvCheckError(f"{where}: expected a 1-D array of 0/1 (or bool) per action, got {describe(mask)}")
        if mask.dtype.kind != "b" and ((mask != 0) & (mask != 1)).any():
            bad = mask[(mask != 0) & (mask != 1)][:5].tolist()
            raise EnvCheckError(f"{where}: expected 0 or 1 per action, got {bad}")
        if self.action_spaces is None:
            return
        from gymnasium import spaces

        sp = self.action_spaces[i]
        if isinstance(sp, spaces.Discrete):
            n = int(sp.n)
        elif isinstance(sp, spaces.MultiDiscrete):
            n = int(sp.nvec.sum())
        elif isinstance(sp, spaces.MultiBinary):
            n = 2 * int(np.prod(sp.shape))
        else:
            raise EnvCheckError(f"{where}: masks discrete and multi-discrete actions, but the action space is {sp}")
        if mask.shape != (n,):
            raise EnvCheckError(f"{where}: expected shape ({n},) (one entry per action of {sp}), got {mask.shape}")

    def _learn(self, i: int, obs: NamedArray, head: str) -> None:
        """Fix agent ``i``'s layout from its first observation (no declared spaces)."""
        leaves: list[_Leaf] = []
        for path, x in obs.flat_items():
            if not isinstance(x, np.ndarray):
                raise EnvCheckError(f"{head}: agent {i}: obs field {path!r}: expected a numpy array, got {describe(x)}")
            if x.dtype.str not in WIRE_DTYPES:
                raise EnvCheckError(
                    f"{head}: agent {i}: obs field {path!r}: expected a numeric/bool dtype, got {x.dtype}"
                )
            if x.dtype.kind == "f" and not _all_finite(x):
                raise EnvCheckError(f"{head}: agent {i}: obs field {path!r}: expected finite values, got NaN/Inf")
            leaves.append(_Leaf(path, tuple(x.shape), x.dtype))
        if not leaves:
            raise EnvCheckError(f"{head}: agent {i}: obs: expected at least one array field, got none")
        self._leaves[i] = leaves
        self._keys[i] = obs.keys()

    def _check_reward(self, i: int, reward: Any, head: str, is_reset: bool) -> None:
        problem = reward_problem(reward, None)
        if problem is None and isinstance(reward, np.ndarray):
            shape = (1,) if reward.ndim == 0 else reward.shape
            known = self._reward_shape[i]
            if known is None:
                self._reward_shape[i] = shape
            elif shape != known:
                problem = f"expected shape {known} (as before), got {shape}"
        if problem is not None:
            raise EnvCheckError(f"{head}: agent {i}: reward: {problem}")
        if isinstance(reward, np.ndarray):
            if reward.size == 1:  # the common case: no numpy reductions
                v = reward.item()
                ok, zero = math.isfinite(v), v == 0
            else:
                ok = bool(np.isfinite(reward).all()) if reward.dtype.kind == "f" else True
                zero = not reward.any()
        else:
            ok = math.isfinite(reward)
            zero = reward == 0
        if not ok:
            raise EnvCheckError(f"{head}: agent {i}: reward: expected a finite value, got {reward!r}")
        if is_reset and not zero:
            raise EnvCheckError(f"{head}: agent {i}: reward: expected 0 after reset, got {reward!r}")

    def _check_flag(self, i: int, name: str, value: Any, head: str, is_reset: bool) -> None:
        problem = flag_problem(value)
        if problem is not None:
            raise EnvCheckError(f"{head}: agent {i}: {name}: {problem}")
        truth = value.item() if isinstance(value, np.ndarray) else bool(value)
        if is_reset and truth:
            raise EnvCheckError(f"{head}: agent {i}: {name}: expected False after reset, got True")

    # ------------------------------------------------------------------ actions
    def check_actions(self, actions: Any, where: str = "step") -> None:
        """Validate the actions about to be passed to ``step()`` against the declared action spaces.

        Raises:
            EnvCheckError: wrong count, a non-NamedArray entry, or a value outside the agent's action space.
        """
        from hpcrl.envs.spaces import action_value

        head = f"env {self.env_name!r} {where}"
        if not isinstance(actions, list) or len(actions) != self.agent_count:
            n = len(actions) if isinstance(actions, (list, tuple)) else type(actions).__name__
            raise EnvCheckError(f"{head}: got {n} actions, expected a list of agent_count={self.agent_count}")
        if self.action_spaces is None:
            return
        from gymnasium import spaces

        for i, (a, sp) in enumerate(zip(actions, self.action_spaces)):
            if a is None:
                continue
            if not isinstance(a, NamedArray):
                raise EnvCheckError(
                    f"{head}: agent {i}: action: expected a NamedArray (Action(x=...)), got {describe(a)}"
                )
            try:
                x = np.asarray(action_value(a))
            except ValueError as e:
                raise EnvCheckError(f"{head}: agent {i}: action: {e}") from None
            if isinstance(sp, (spaces.Discrete, spaces.MultiDiscrete)):
                exp_shape = () if isinstance(sp, spaces.Discrete) else tuple(sp.shape)
                lo = sp.start
                hi = sp.start + sp.n - 1 if isinstance(sp, spaces.Discrete) else sp.start + sp.nvec - 1
                if x.dtype.kind not in "iu" or x.shape != exp_shape or np.any(x < lo) or np.any(x > hi):
                    raise EnvCheckError(
                        f"{head}: agent {i}: action field 'x': expected integer {exp_shape} in {sp}, "
                        f"got {describe(x)} {x.tolist()!r}"
                    )
            elif isinstance(sp, spaces.Box) and (
                x.dtype.kind != "f" or x.shape != tuple(sp.shape) or not _all_finite(x)
            ):
                raise EnvCheckError(
                    f"{head}: agent {i}: action field 'x': expected finite float {tuple(sp.shape)} for {sp}, "
                    f"got {describe(x)}"
                )


# ---------------------------------------------------------------------- normalisation
def normalize_result(result: StepResult | None) -> StepResult | None:
    """Bring one result into canonical form, in place: ``(1,)`` float32 reward, ``(1,)`` bool flags.

    Converts python/numpy scalars and 0-d arrays; a ``dict`` obs becomes a NamedArray. Already
    canonical values are left untouched (a few type checks), so the runtime calls this on every
    result. It does not validate: values it cannot convert are left for :class:`EnvChecker`.

    Returns:
        The same object (or ``None``).
    """
    if result is None:
        return None
    r = result.reward
    if type(r) is not np.ndarray or r.ndim != 1 or r.dtype is not _F32:
        result.reward = _canon_reward(r)
    d = result.done
    if type(d) is not np.ndarray or d.shape != (1,) or d.dtype is not _BOOL:
        result.done = _canon_flag(d)
    t = result.truncated
    if type(t) is not np.ndarray or t.shape != (1,) or t.dtype is not _BOOL:
        result.truncated = _canon_flag(t)
    if isinstance(result.obs, dict):
        result.obs = NamedArray(**result.obs)
    return result


def normalize_results(results: list[StepResult | None]) -> list[StepResult | None]:
    """:func:`normalize_result` on every entry of a result list (in place); returns the list."""
    for r in results:
        if r is not None:
            normalize_result(r)
    return results


def _canon_reward(r: Any) -> Any:
    if isinstance(r, np.ndarray):
        if r.dtype.kind not in "fiub":
            return r
        return np.asarray(r, np.float32).reshape(-1) if r.ndim <= 1 else r
    if isinstance(r, (int, float, np.integer, np.floating)):
        return reward_array(r)
    return r


def _canon_flag(x: Any) -> Any:
    if isinstance(x, (bool, np.bool_)):
        return flag(x)
    if isinstance(x, np.ndarray) and x.size == 1 and x.dtype.kind in "biu":
        v = x.reshape(-1)[0]
        return flag(v) if x.dtype == _BOOL or v == 0 or v == 1 else x  # other values: left for the checker
    if isinstance(x, (int, np.integer)) and (x == 0 or x == 1):
        return flag(x)
    return x
