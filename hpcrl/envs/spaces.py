"""Convert gymnasium observation/action spaces to hpcrl's conventions (shared by the gym and PettingZoo adapters).

Observations become a NamedArray of named inputs without a batch dimension:

============================  ===============================================================
gymnasium observation space   hpcrl field(s)
============================  ===============================================================
``Box``                       kept as is (same shape and dtype); ``float64`` becomes ``float32``
                              unless ``cast_float64=False``
``Discrete(n)``               one-hot ``float32`` array of shape ``(n,)``
``MultiDiscrete(nvec)``       concatenated one-hots, ``float32`` of shape ``(sum(nvec),)``
``MultiBinary(shape)``        kept as is (``int8``)
``Dict``                      one field per key (each converted as above; no nesting)
anything else                 error naming the space (use a wrapper such as ``FlattenObservation``)
============================  ===============================================================

A non-``Dict`` space becomes the single field ``obs``. Actions arrive as ``Action(x=...)``
(a NamedArray): ``Discrete`` -> python ``int`` (``start`` offset added), ``MultiDiscrete`` ->
``int64`` array, ``MultiBinary`` -> ``int8`` array, ``Box`` -> array of the space's dtype,
clipped to its bounds unless ``clip_actions=False``. The declared hpcrl action space has
``start=0`` and ``float32`` boxes.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.results import record_builder

__all__ = ["ObsAdapter", "ActionAdapter", "action_value", "SpaceError", "convert_leaf"]

_SUPPORTED_OBS = "Box, Discrete, MultiDiscrete, MultiBinary, or a Dict of these"
_SUPPORTED_ACT = "Discrete, MultiDiscrete, MultiBinary, Box"


class SpaceError(ValueError):
    """A gymnasium space hpcrl cannot convert (the message names the space and the env)."""


def _one_hot(n: int, start: int) -> Callable[[Any], np.ndarray]:
    def conv(x: Any) -> np.ndarray:
        out = np.zeros(n, np.float32)
        out[int(x) - start] = 1.0
        return out

    return conv


def _multi_one_hot(nvec: np.ndarray, start: np.ndarray) -> Callable[[Any], np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum(nvec)[:-1]]).astype(np.int64)
    total = int(nvec.sum())

    def conv(x: Any) -> np.ndarray:
        out = np.zeros(total, np.float32)
        out[offsets + (np.asarray(x, np.int64) - start)] = 1.0
        return out

    return conv


def _to_float32(x: Any) -> np.ndarray:
    return x.astype(np.float32) if type(x) is np.ndarray else np.asarray(x, np.float32)


def convert_leaf(
    space: Any, cast_float64: bool = True, what: str = "env"
) -> tuple[Any, Callable[[Any], np.ndarray] | None]:
    """(hpcrl space, converter or ``None`` for identity) for one non-Dict observation space.

    Raises:
        SpaceError: an unsupported space (named in the message).
    """
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        if cast_float64 and space.dtype == np.float64:
            box = spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
            return box, _to_float32
        return space, None
    if isinstance(space, spaces.Discrete):
        n = int(space.n)
        return spaces.Box(0.0, 1.0, (n,), np.float32), _one_hot(n, int(space.start))
    if isinstance(space, spaces.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise SpaceError(
                f"{what}: MultiDiscrete observation with nvec shape {space.nvec.shape}; only 1-D is supported"
            )
        nvec = space.nvec.astype(np.int64)
        return spaces.Box(0.0, 1.0, (int(nvec.sum()),), np.float32), _multi_one_hot(nvec, space.start.astype(np.int64))
    if isinstance(space, spaces.MultiBinary):
        return spaces.Box(0, 1, tuple(space.shape), np.int8), None
    raise SpaceError(
        f"{what}: observation space {space} is not supported; expected {_SUPPORTED_OBS}. "
        f"Flatten it with a wrapper, e.g. wrappers: [FlattenObservation]"
    )


class ObsAdapter:
    """Converts raw observations of one gymnasium space into hpcrl observation NamedArrays.

    Args:
        space: the gymnasium observation space.
        cast_float64: turn ``float64`` boxes into ``float32``.
        what: names the env (and agent) in error messages.
        extra: more fields appended after the observation's own (name -> hpcrl space), e.g. a
            centralized ``state``; their values are passed to ``convert`` as they are.
        rename: field names for some keys of a ``Dict`` observation (raw key -> field), e.g.
            PettingZoo's ``action_mask`` -> ``available_action``.

    Attributes:
        space: the hpcrl observation space, a ``gymnasium.spaces.Dict`` keyed like the NamedArray.
        keys: the field names, in order.
        convert: ``convert(raw_obs, *extra_values) -> NamedArray``.
    """

    def __init__(
        self,
        space: Any,
        cast_float64: bool = True,
        what: str = "env",
        extra: dict[str, Any] | None = None,
        rename: dict[str, str] | None = None,
    ) -> None:
        from gymnasium import spaces

        if isinstance(space, spaces.Dict):
            raw_keys = list(space.spaces)
            leaves = []
            for k in raw_keys:
                sub = space.spaces[k]
                if isinstance(sub, spaces.Dict):
                    raise SpaceError(f"{what}: nested Dict observation under key {k!r} is not supported; flatten it")
                leaves.append(convert_leaf(sub, cast_float64, f"{what} (observation key {k!r})"))
        else:
            raw_keys = []
            leaves = [convert_leaf(space, cast_float64, what)]
        rename = rename or {}
        obs_keys = tuple(rename.get(k, k) for k in raw_keys) if raw_keys else ("obs",)
        if len(set(obs_keys)) != len(obs_keys):
            raise SpaceError(f"{what}: renaming observation keys {rename} gives duplicate fields {list(obs_keys)}")
        extra = dict(extra or {})
        clash = [k for k in extra if k in obs_keys]
        if clash:
            raise SpaceError(f"{what}: observation already has field(s) {clash}; cannot add them again")
        self.keys: tuple[str, ...] = obs_keys + tuple(extra)
        for k in self.keys:
            if not isinstance(k, str) or not k.isidentifier():
                raise SpaceError(f"{what}: observation key {k!r} is not a valid field name (a Python identifier)")
        # an OrderedDict keeps the NamedArray's field order (gymnasium sorts the keys of a plain dict)
        self.space = spaces.Dict(OrderedDict([*((k, s) for k, (s, _) in zip(obs_keys, leaves)), *extra.items()]))
        self.convert: Callable[..., NamedArray] = self._make_convert(raw_keys, [c for _, c in leaves], len(extra))

    def _make_convert(
        self, raw_keys: list[str], convs: list[Callable[[Any], np.ndarray] | None], n_extra: int
    ) -> Callable[..., Any]:
        """``convert(raw, *extra_values) -> NamedArray`` (extra values are stored as given)."""
        build = record_builder(self.keys)
        if not raw_keys:
            conv = convs[0]
            if conv is None:
                return build  # the raw observation is the first field: no extra call at all

            def convert_one(raw: Any, *extra: Any) -> NamedArray:
                return build(conv(raw), *extra)

            return convert_one
        pairs = [(k, c) for k, c in zip(raw_keys, convs)]

        def convert_dict(raw: Any, *extra: Any) -> NamedArray:
            return build(*[raw[k] if c is None else c(raw[k]) for k, c in pairs], *extra)

        return convert_dict


def action_value(action: Any) -> Any:
    """The action value inside an hpcrl action record: its ``x`` field, or its only field.

    Raises:
        ValueError: a record with several fields and no ``x`` (names the fields).
    """
    try:
        return action.x
    except AttributeError:
        pass
    if isinstance(action, NamedArray):
        keys = action.keys()
        if len(keys) == 1:
            return getattr(action, keys[0])
        raise ValueError(f"action record has fields {keys}; expected a field 'x' (hpcrl.api.environment.Action)")
    return action  # a bare array or number


class ActionAdapter:
    """Converts hpcrl action records into what a gymnasium action space expects.

    Args:
        space: the gymnasium action space.
        clip_actions: clip ``Box`` actions to the space's bounds.
        what: names the env (and agent) in error messages.

    Attributes:
        space: the declared hpcrl action space (``start=0``; ``float32`` boxes).
        convert: ``convert(action_record) -> gym action``.
    """

    def __init__(self, space: Any, clip_actions: bool = True, what: str = "env") -> None:
        from gymnasium import spaces

        self.convert: Callable[[Any], Any]
        self.space: Any
        if isinstance(space, spaces.Discrete):
            start = int(space.start)
            self.space = spaces.Discrete(int(space.n))
            if start == 0:
                self.convert = _discrete
            else:
                self.convert = lambda a: _discrete(a) + start
        elif isinstance(space, spaces.MultiDiscrete):
            start_arr = space.start.astype(np.int64)
            has_start = bool(np.any(start_arr))
            self.space = spaces.MultiDiscrete(space.nvec.astype(np.int64))

            def multi(a: Any) -> np.ndarray:
                x = np.asarray(action_value(a))
                if x.dtype.kind not in "iu":
                    raise TypeError(f"expected integer actions, got {x.dtype} (float actions would be truncated)")
                x = x.astype(np.int64, copy=False)
                return x + start_arr if has_start else x

            self.convert = multi
        elif isinstance(space, spaces.MultiBinary):
            self.space = space
            self.convert = _binary
        elif isinstance(space, spaces.Box):
            self.space = spaces.Box(space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)
            self.convert = _box_converter(space, clip_actions)
        else:
            raise SpaceError(f"{what}: action space {space} is not supported; expected one of {_SUPPORTED_ACT}")


def _discrete(a: Any) -> int:
    """The int of a Discrete action; a float (or float array) is refused, never truncated."""
    try:
        x = a.x
    except AttributeError:
        x = action_value(a)
    return operator.index(x)


def _binary(a: Any) -> np.ndarray:
    """The int8 array of a MultiBinary action; float values are refused, never truncated."""
    x = np.asarray(action_value(a))
    if x.dtype.kind not in "iub":
        raise TypeError(f"expected integer or bool actions, got {x.dtype} (float actions would be truncated)")
    return x.astype(np.int8, copy=False)


def _box_converter(space: Any, clip: bool) -> Callable[[Any], np.ndarray]:
    dtype = space.dtype
    shape = tuple(space.shape)
    low = space.low.astype(dtype)
    high = space.high.astype(dtype)
    clip = clip and bool(np.any(np.isfinite(low)) or np.any(np.isfinite(high)))
    maximum, minimum, asarray = np.maximum, np.minimum, np.asarray

    def conv(a: Any) -> np.ndarray:
        try:
            x = a.x
        except AttributeError:
            x = action_value(a)
        x = asarray(x, dtype)
        if x.shape != shape:
            x = x.reshape(shape)
        if clip:
            x = minimum(maximum(x, low), high)  # a new array (twice as fast as np.clip on small arrays)
        return x

    return conv
