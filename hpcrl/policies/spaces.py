"""Policy arguments from an environment's gymnasium spaces, and the checks that a policy fits them.

Torch-free (actor ranks and the ``random`` policy use it). The actor-critic policies fill ``obs_dim``,
``state_dim``, ``action_dim`` and ``continuous_action`` from the first agent's spaces with
:func:`policy_args_from_spaces`, and check given arguments with :func:`check_policy_against_spaces`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hpcrl.api.environment import AVAILABLE_ACTION

__all__ = ["action_args_from_space", "check_policy_against_spaces", "input_shapes", "policy_args_from_spaces"]


def input_shapes(dims: int | Mapping[str, Any] | None, what: str = "obs_dim") -> dict[str, tuple[int, ...]]:
    """Normalise an ``obs_dim``/``state_dim`` argument to ``{name: shape}``.

    Args:
        dims: an int (one vector input named ``obs``), or a mapping name -> int (vector
            size) or sequence (shape, e.g. ``(4, 84, 84)`` for a CHW image), or ``None``.
        what: the argument's name, for messages.

    Returns:
        Input name -> per-row shape (``{}`` for ``None``).

    Raises:
        TypeError: a value is neither an int nor a sequence of ints (names the input).

    Examples:
        >>> input_shapes(4)
        {'obs': (4,)}
        >>> input_shapes({"obs": [4, 84, 84], "extra": 3})
        {'obs': (4, 84, 84), 'extra': (3,)}
    """
    if dims is None:
        return {}
    if isinstance(dims, (int, np.integer)) and not isinstance(dims, bool):
        dims = {"obs": int(dims)}
    if not isinstance(dims, Mapping):
        raise TypeError(f"{what} must be an int or a dict of input name -> size/shape, got {dims!r}")
    out: dict[str, tuple[int, ...]] = {}
    for name, v in dims.items():
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            shape: tuple[int, ...] = (int(v),)
        elif isinstance(v, Sequence) and not isinstance(v, str) and all(isinstance(s, (int, np.integer)) for s in v):
            shape = tuple(int(s) for s in v)
        else:
            raise TypeError(f"{what}[{name!r}] must be an int (vector size) or a list of ints (shape), got {v!r}")
        if any(s < 1 for s in shape):
            raise TypeError(f"{what}[{name!r}] has a non-positive dimension: {shape}")
        out[str(name)] = shape
    return out


def _space_shape(name: str, space: Any) -> tuple[int, ...]:
    from gymnasium import spaces

    if isinstance(space, (spaces.Box, spaces.MultiBinary)):
        return tuple(int(s) for s in space.shape)
    raise ValueError(
        f"observation input {name!r} has an unsupported space {space!r}: actor-critic policies read Box or "
        f"MultiBinary observations (encode Discrete observations as one-hot Box in the environment)"
    )


def _obs_space_items(observation_space: Any) -> dict[str, Any]:
    from gymnasium import spaces

    if isinstance(observation_space, spaces.Dict):
        return dict(observation_space.spaces)
    return {"obs": observation_space}


def policy_args_from_spaces(observation_space: Any, action_space: Any) -> dict[str, Any]:
    """Infer the actor-critic policy arguments from gymnasium spaces.

    Args:
        observation_space: a ``gymnasium.spaces.Dict`` keyed like the obs NamedArray (a
            bare Box is taken as ``{"obs": box}``). The key ``state`` becomes ``state_dim``
            (centralized critic input); every other key goes to ``obs_dim``.
        action_space: ``Discrete(n)`` -> ``action_dim=n``; ``MultiDiscrete(nvec)`` ->
            ``action_dim=list(nvec)``; ``MultiBinary(n)`` -> ``[2] * n``; a 1-D float ``Box``
            -> ``action_dim=dim, continuous_action=True``.

    Returns:
        ``{"obs_dim": {...}, "action_dim": ..., "continuous_action": bool}`` plus
        ``"state_dim"`` when the observation has a ``state`` entry. Vector inputs are ints,
        other shapes lists. The action mask ``available_action`` is no input (it masks the logits).

    Raises:
        ValueError: an unsupported action or observation space (the message names it).
    """
    obs_dim: dict[str, Any] = {}
    state_dim: dict[str, Any] = {}
    for name, space in _obs_space_items(observation_space).items():
        if name == AVAILABLE_ACTION:
            continue  # the action mask: applied to the logits, not read as an input
        shape = _space_shape(name, space)
        value: Any = shape[0] if len(shape) == 1 else list(shape)
        (state_dim if name == "state" else obs_dim)[name] = value
    if not obs_dim:
        raise ValueError(f"observation space {observation_space!r} has no actor input (only 'state')")
    args: dict[str, Any] = {"obs_dim": obs_dim, **action_args_from_space(action_space)}
    if state_dim:
        args["state_dim"] = state_dim
    return args


def action_args_from_space(action_space: Any) -> dict[str, Any]:
    """``{"action_dim", "continuous_action"}`` for an action space (see :func:`policy_args_from_spaces`).

    Raises:
        ValueError: an unsupported action space (names it).
    """
    from gymnasium import spaces

    sp = action_space
    if isinstance(sp, spaces.Discrete):
        return {"action_dim": int(sp.n), "continuous_action": False}
    if isinstance(sp, spaces.MultiDiscrete) and len(sp.nvec.shape) == 1:
        return {"action_dim": [int(n) for n in sp.nvec], "continuous_action": False}
    if isinstance(sp, spaces.MultiBinary) and len(sp.shape) == 1:
        return {"action_dim": [2] * int(sp.shape[0]), "continuous_action": False}
    if isinstance(sp, spaces.Box) and len(sp.shape) == 1 and np.issubdtype(sp.dtype, np.floating):
        return {"action_dim": int(sp.shape[0]), "continuous_action": True}
    raise ValueError(
        f"unsupported action space {sp!r} ({type(sp).__name__}): actor-critic policies support Discrete, "
        f"1-D MultiDiscrete, 1-D MultiBinary and 1-D float Box action spaces"
    )


def check_policy_against_spaces(policy_args: Mapping[str, Any], observation_space: Any, action_space: Any) -> None:
    """Check that a policy's declared inputs and actions fit an environment's spaces.

    Only what ``policy_args`` declares is checked (``obs_dim``, ``state_dim``,
    ``action_dim``, ``continuous_action``); extra observation entries are allowed.

    Args:
        policy_args: the policy's constructor arguments (e.g. ``config.Policy.args``).
        observation_space: the env's ``gymnasium.spaces.Dict`` for one agent.
        action_space: the env's action space for one agent.

    Raises:
        ValueError: an input missing from the observation space, a shape mismatch, or an
            action mismatch; the message names the input and both shapes.
    """
    obs_items = _obs_space_items(observation_space)
    for arg in ("obs_dim", "state_dim"):
        if arg not in policy_args or policy_args[arg] is None:
            continue
        for name, shape in input_shapes(policy_args[arg], arg).items():
            if name not in obs_items:
                raise ValueError(
                    f"policy input {name!r} ({arg}) is not in the environment's observation space, "
                    f"which has {sorted(obs_items)}"
                )
            actual = _space_shape(name, obs_items[name])
            if actual != shape:
                raise ValueError(
                    f"policy input {name!r}: {arg} declares shape {shape}, but the environment's observation "
                    f"space {name!r} has shape {actual}"
                )
    if AVAILABLE_ACTION in obs_items:
        _check_mask_space(obs_items[AVAILABLE_ACTION], action_space)
    if "action_dim" in policy_args:
        want = action_args_from_space(action_space)
        have_cont = bool(policy_args.get("continuous_action", False))
        have_dim = policy_args["action_dim"]
        have_dim = int(have_dim) if isinstance(have_dim, (int, np.integer)) else [int(n) for n in have_dim]
        if have_cont != want["continuous_action"] or have_dim != want["action_dim"]:
            raise ValueError(
                f"policy actions (action_dim={have_dim}, continuous_action={have_cont}) do not match the "
                f"environment's action space {action_space!r} (action_dim={want['action_dim']}, "
                f"continuous_action={want['continuous_action']})"
            )


def _check_mask_space(mask_space: Any, action_space: Any) -> None:
    """The ``available_action`` space must have one entry per logit of the action head."""
    want = action_args_from_space(action_space)
    if want["continuous_action"]:
        raise ValueError(
            f"the observation field {AVAILABLE_ACTION!r} masks discrete and multi-discrete actions, but the action "
            f"space is {action_space!r} (continuous)"
        )
    dim = want["action_dim"]
    n = dim if isinstance(dim, int) else sum(dim)
    shape = tuple(getattr(mask_space, "shape", None) or ())
    if shape != (n,):
        raise ValueError(
            f"the observation field {AVAILABLE_ACTION!r} has shape {shape}, expected ({n},): one 0/1 entry per "
            f"action of {action_space!r}"
        )
