"""An env ring whose agents act for several policies: per-policy requests, trajectories, states and versions.

A multi-policy run maps every agent index to a policy (``agents`` in the config). :class:`PolicyRing` groups
the agent slots of each ring group by policy ("parts"): :meth:`PolicyRing.request_parts` cuts the group's
request into one request per policy, :meth:`PolicyRing.consume_parts` records each policy's rows in that
policy's own trajectory buffer (with its own version and recurrent state) and then steps the envs with the
actions of all policies together, and :meth:`PolicyRing.pop_part_fragments` hands out the fragments of one
policy only. Episodes carry the index of the policy that played them (:attr:`Episode.policy`).

The checks of the single-policy ring apply to every part: each result must answer its request, and fit
the layout its policy's first result fixed (errors name the policy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hpcrl.acting.env_ring import _REQUEST_KEYS, EnvRing, Episode, PolicyResultError, _Group
from hpcrl.acting.trajectory import TrajectoryBuffer
from hpcrl.api.environment import Environment
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, RolloutResult
from hpcrl.api.trainer import SampleBatch

__all__ = ["PolicyRing", "PartSpec"]


def _rows_like(act: NamedArray, n: int) -> NamedArray:
    """A fresh NamedArray of ``n`` rows laid out like ``act`` (numpy leaves left unset: every row is written)."""
    if all(isinstance(x, np.ndarray) for x in act.leaves()):
        return act.apply(lambda x: np.empty((n, *x.shape[1:]), x.dtype))
    return stack([act[0]] * n)


class PartSpec:
    """One policy of a :class:`PolicyRing`.

    Args:
        name: names the policy in errors.
        default_state: one agent's default policy state in row layout, or None.
    """

    def __init__(self, name: str, default_state: NamedArray | None) -> None:
        self.name = name
        self.default_state = default_state


class _Part:
    """The slots of one group that one policy acts for, and what the ring keeps for them."""

    def __init__(self, spec: PartSpec, mask: np.ndarray, fragment_length: int) -> None:
        self.spec = spec
        self.mask = mask  # over the group's slots
        self.slots = np.flatnonzero(mask)
        self.local_of = np.full(mask.size, -1, np.int64)
        self.local_of[self.slots] = np.arange(self.slots.size)
        self.all_local = np.arange(self.slots.size)  # its slots' local indices when every slot of the group acts
        self.traj = TrajectoryBuffer(self.slots.size, fragment_length)
        self.state = None if spec.default_state is None else stack([spec.default_state] * max(1, self.slots.size))
        self.versions: dict[tuple[int, int], np.ndarray] = {}
        self.pending: tuple[np.ndarray, np.ndarray, RolloutRequest] | None = None


class PolicyRing(EnvRing):
    """An :class:`EnvRing` whose agents act for several policies (see the module docstring).

    Args:
        make_env: builds env number ``i``.
        num_envs: environments on this actor.
        num_groups: 1, or 2 to alternate halves.
        fragment_length: ``T`` decision rows per fragment.
        env_name: for messages.
        parts: the policies, in the order their index is used (:meth:`request_parts`, :attr:`Episode.policy`).
        part_of_agent: the index (into ``parts``) of the policy that acts for agent index ``a``.
        **kwargs: the other arguments of :class:`EnvRing` (``where``, ``seeds``, ``check``, ...).
    """

    def __init__(
        self,
        make_env: Callable[[int], Environment],
        num_envs: int,
        num_groups: int,
        fragment_length: int,
        env_name: str,
        parts: Sequence[PartSpec],
        part_of_agent: Callable[[int], int],
        **kwargs: Any,
    ) -> None:
        self.part_specs = list(parts)
        self._parts: list[list[_Part]] = []
        names = ", ".join(p.name for p in self.part_specs)
        super().__init__(make_env, num_envs, num_groups, fragment_length, None, env_name, policy_name=names, **kwargs)
        for g in self.groups:
            of = np.asarray([part_of_agent(a) for _, a in g.agent_of], np.int64)
            self._parts.append([_Part(spec, of == p, fragment_length) for p, spec in enumerate(self.part_specs)])

    # ------------------------------------------------------------------ env handling
    def _reset(self, g: _Group, j: int) -> None:
        super()._reset(g, j)
        parts = self._group_parts(g)
        if parts is None:  # building: every state is the default already
            return
        for part in parts:
            if part.state is None:
                continue
            local = part.local_of[g.slot_of[j]]
            local = local[local >= 0]
            default = part.spec.default_state
            if local.size and default is not None:
                part.state[local] = stack([default] * local.size)

    def _failed(self, g: _Group, j: int, what: str, exc: BaseException) -> None:
        parts = self._group_parts(g)
        if parts is not None and self.env_failure == "recreate":
            for part in parts:
                local = part.local_of[g.slot_of[j]]
                part.traj.mark_truncated(local[local >= 0])
        super()._failed(g, j, what, exc)

    def _group_parts(self, g: _Group) -> list[_Part] | None:
        for k, group in enumerate(self.groups):
            if group is g:
                return self._parts[k] if k < len(self._parts) else None
        return None

    # ------------------------------------------------------------------ the cycle
    def request_parts(self, group: int) -> list[RolloutRequest | None]:
        """Stage the acting agents of ``group``; one request per policy (None: none of its agents acts now).

        Raises:
            EnvError: no agent of the group can act.
        """
        req = self.request(group)
        g = self.groups[group]
        assert g.pending is not None
        acting = g.pending[0]
        out: list[RolloutRequest | None] = []
        every = acting.size == g.num_slots  # every slot acts (the common case): no masking, whole states
        for part in self._parts[group]:
            if every:
                rows, local = part.slots, part.all_local
            else:
                rows = np.flatnonzero(part.mask[acting])
                local = part.local_of[acting[rows]]
            if rows.size == 0:
                part.pending = None
                out.append(None)
                continue
            if part.state is None:
                state = None
            else:  # the whole state array is a view like the single-policy ring's request (valid until consume)
                state = part.state if every else part.state[local]
            assert req.on_reset is not None
            preq = RolloutRequest._build(
                _REQUEST_KEYS, [req.obs[rows], state, self._flags(rows.size), req.on_reset[rows]]
            )
            part.pending = (rows, local, preq)
            out.append(preq)
        return out

    def _flags(self, n: int) -> np.ndarray:
        """The read-only ``is_evaluation`` column of ``n`` rows (every row of a ring has the same flag)."""
        flags = self._eval_flags.get(n)
        if flags is None:
            flags = self._eval_flags[n] = np.full((n, 1), self.evaluation, np.bool_)
            flags.flags.writeable = False
        return flags

    def consume_parts(self, group: int, results: Sequence[tuple[RolloutResult, int] | None]) -> None:
        """Record every policy's rows of the pending requests of ``group``, then step or reset its envs.

        Args:
            group: the group whose :meth:`request_parts` is answered.
            results: per policy, ``(its result, its version)`` where its request was not None, else None.

        Raises:
            PolicyResultError: a result does not answer its request or the layout its policy's first result
                fixed (names the policy).
            EnvError: an env failed and ``env_failure`` is ``fail``.
        """
        g = self.groups[group]
        if g.pending is None:
            raise RuntimeError(f"{self.where}: consume_parts() without a pending request for group {group}")
        acting, _, reward, done, trunc = g.pending
        g.pending = None
        merged: NamedArray | None = None
        for p, (part, answer) in enumerate(zip(self._parts[group], results)):
            if part.pending is None:
                continue
            rows, local, preq = part.pending
            part.pending = None
            if answer is None:
                raise RuntimeError(f"{self.where}: no result for the request of policy {part.spec.name}")
            result, version = answer
            act = self._record(g, part, p, acting, rows, local, preq, result, version, reward, done, trunc)
            if merged is None:
                merged = _rows_like(act, acting.size)
            try:
                merged[rows] = act
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                raise PolicyResultError(
                    f"{self.where}: policy {part.spec.name}: its actions do not fit those of policy "
                    f"{self.part_specs[0].name if p else part.spec.name} acting in the same envs: {e}"
                ) from e
        assert merged is not None
        self._advance(g, acting, merged)

    def _record(
        self,
        g: _Group,
        part: _Part,
        p: int,
        acting: np.ndarray,
        rows: np.ndarray,
        local: np.ndarray,
        req: RolloutRequest,
        result: RolloutResult,
        version: int,
        reward: np.ndarray,
        done: np.ndarray,
        trunc: np.ndarray,
    ) -> NamedArray:
        """Write one policy's rows into its trajectory buffer and state; count rewards and finished episodes."""
        name = part.spec.name
        reward, done, trunc = reward[rows], done[rows], trunc[rows]
        assert req.on_reset is not None
        act = self._write_rows(part.traj, part.versions, local, req, result, version, reward, done, trunc, name)
        if part.state is not None:
            self._write_state(g, local, result.policy_state, into=part.state, policy_name=name)
        slots = acting[rows]
        g.ep_return[slots] += reward[:, 0] if reward.shape[1] == 1 else reward.sum(axis=1)
        g.ep_length[slots] += 1
        g.on_reset[slots] = False
        terminal = (done | trunc)[:, 0]
        for k in terminal.nonzero()[0]:
            s = slots[k]
            self.episodes.append(Episode(float(g.ep_return[s]), int(g.ep_length[s]) - 1, version, p))
            g.active[s] = False
        return act

    def pop_part_fragments(self, part: int) -> list[SampleBatch]:
        """Completed fragments of policy ``part`` (each ``(T + 1, its slots in a group)``), over all groups."""
        out: list[SampleBatch] = []
        for parts in self._parts:
            out.extend(parts[part].traj.pop_ready())
        return out

    def part_slots(self, part: int, group: int = 0) -> int:
        """Agent slots policy ``part`` acts for in ``group`` (the columns of its fragments)."""
        return int(self._parts[group][part].slots.size)
