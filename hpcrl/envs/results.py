"""Cheap builders for StepResult leaves shared by the built-in environments (hot path helpers).

The built-in adapters step millions of times, so building a :class:`~hpcrl.api.environment.StepResult`
must cost far less than the environment itself. Two tricks keep it cheap:

* ``done``/``truncated`` flags and rewards that repeat (CartPole's ``1.0``, clipped Atari rewards)
  are **shared read-only arrays** (``flags.writeable`` is False). Consumers may read and copy
  them; writing into them raises ``ValueError: assignment destination is read-only``.
* observation records are built without going through ``NamedArray.__init__``'s keyword
  handling (:func:`record_builder`); the fast path is verified once at import against the
  regular constructor and falls back to ``NamedArray._build`` if the internals ever differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hpcrl.api.environment import _NOT_TRUNCATED
from hpcrl.api.namedarray import NamedArray

__all__ = ["TRUE", "FALSE", "ZERO_REWARD", "flag", "reward_array", "cached_reward", "record_builder", "readonly"]


def readonly(a: np.ndarray) -> np.ndarray:
    """Mark ``a`` read-only and return it."""
    a.setflags(write=False)
    return a


#: Shared read-only ``(1,)`` bool arrays for ``done``/``truncated``.
TRUE: np.ndarray = readonly(np.ones(1, np.bool_))
FALSE: np.ndarray = _NOT_TRUNCATED  # the default StepResult.truncated: one shared object
#: Shared read-only ``(1,)`` float32 zero reward (every reset result).
ZERO_REWARD: np.ndarray = readonly(np.zeros(1, np.float32))

_REWARD_CACHE: dict[Any, np.ndarray] = {0.0: ZERO_REWARD}
_REWARD_CACHE_MAX = 4096


def flag(x: Any) -> np.ndarray:
    """The shared read-only ``(1,)`` bool array for the truth value of ``x``."""
    return TRUE if x else FALSE


def reward_array(r: Any) -> np.ndarray:
    """A ``(1,)`` float32 array holding the scalar reward ``r`` (python or numpy scalar, or a 1-element array).

    Rewards seen before are served from a bounded cache of read-only arrays (a dict lookup),
    so environments with few distinct reward values never allocate. Once the cache is full,
    new values get a fresh (writable) array.
    """
    try:
        a = _REWARD_CACHE.get(r)
    except TypeError:  # unhashable: an array (some wrappers return 0-d or (1,) reward arrays)
        return np.array(r, np.float32).reshape(-1)
    if a is not None:
        return a
    a = np.array((r,), np.float32)
    if len(_REWARD_CACHE) < _REWARD_CACHE_MAX and r == r:  # never cache NaN (it never hits)
        a.setflags(write=False)
        _REWARD_CACHE[r] = a
    return a


#: ``cached_reward(r)``: the cached read-only array for reward ``r``, or ``None`` (call
#: :func:`reward_array` then). Inlining this lookup saves a function call per step; it raises
#: ``TypeError`` for an unhashable (array) reward.
cached_reward: Callable[[Any], np.ndarray | None] = _REWARD_CACHE.get


def _slow_builder(keys: tuple[str, ...]) -> Callable[..., NamedArray]:
    key_list = list(keys)

    def build(*values: Any) -> NamedArray:
        return NamedArray._build(key_list, list(values))

    return build


def _fast_builder(keys: tuple[str, ...]) -> Callable[..., NamedArray]:
    new = object.__new__
    cls = NamedArray
    if len(keys) == 1:
        (k0,) = keys

        def build1(v0: Any) -> NamedArray:
            o = new(cls)
            d = o.__dict__
            d["_keys"] = [k0]
            d[k0] = v0
            return o

        return build1
    if len(keys) == 2:
        k0, k1 = keys

        def build2(v0: Any, v1: Any) -> NamedArray:
            o = new(cls)
            d = o.__dict__
            d["_keys"] = [k0, k1]
            d[k0] = v0
            d[k1] = v1
            return o

        return build2

    def build(*values: Any) -> NamedArray:
        o = new(cls)
        d = o.__dict__
        d.update(zip(keys, values))
        d["_keys"] = list(keys)
        return o

    return build


def _fast_path_works() -> bool:
    """Check once that the fast builder makes records indistinguishable from ``NamedArray(**kw)``."""
    try:
        for keys in (("a",), ("a", "b"), ("a", "b", "c")):
            vals = [np.arange(3, dtype=np.float32) + i for i in range(len(keys))]
            fast = _fast_builder(keys)(*vals)
            ref = NamedArray(**dict(zip(keys, vals)))
            if type(fast) is not type(ref) or fast.keys() != ref.keys() or fast != ref:
                return False
            if [p for p, _ in fast.flat_items()] != [p for p, _ in ref.flat_items()]:
                return False
            fast["extra"] = vals[0]  # the dynamic record must still accept new fields
            if fast.keys() != [*keys, "extra"]:
                return False
    except Exception:  # any difference in NamedArray internals means: use the slow path
        return False
    return True


_FAST = _fast_path_works()


def record_builder(keys: Sequence[str]) -> Callable[..., NamedArray]:
    """A function building a plain ``NamedArray`` with fields ``keys`` from positional values.

    ``record_builder(("obs", "state"))(o, s)`` equals ``NamedArray(obs=o, state=s)`` but costs a
    third as much; values are stored as given (no copy, no conversion).
    """
    keys = tuple(keys)
    return _fast_builder(keys) if _FAST else _slow_builder(keys)
