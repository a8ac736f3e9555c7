"""The actor's env ring: steps environments, keeps per-agent policy state, assembles trajectories.

No torch and no MPI here: an actor rank with remote inference imports only numpy and
the environment. The ring is split into groups (two halves with remote inference, so
one half steps while the other waits for actions). For each group the actor asks for
a :class:`RolloutRequest` (:meth:`EnvRing.request`), gets a :class:`RolloutResult` back
from whatever runs the policy, and hands it to :meth:`EnvRing.consume`, which records
the rows, steps (or resets) the envs and stages the next observations.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray, Schema, from_flat, stack
from hpcrl.api.policy import RolloutRequest, RolloutResult
from hpcrl.api.trainer import SampleBatch
from hpcrl.roles.trajectory import TrajectoryBuffer, leaves_of

__all__ = ["EnvRing", "EnvError", "Episode"]

log = logging.getLogger(__name__)

_REQUEST_KEYS = ["obs", "policy_state", "is_evaluation", "on_reset"]


def _what(step: int | None) -> str:
    """``reset`` or ``step N``, for messages (built only when a message is)."""
    return "reset" if step is None else f"step {step}"


#: with ``check_env: first``, results are validated for this many steps of each env.
CHECK_FIRST_STEPS = 100


class EnvError(RuntimeError):
    """An environment raised, or returned something the actor cannot use (names env and actor)."""


@dataclasses.dataclass
class Episode:
    """A finished episode of one agent."""

    ret: float
    length: int
    version: int


class _ObsBuffers:
    """Per-slot observation buffers (one array per leaf, ``(S, *shape)``), written as results arrive.

    Built from the first observation; a request is then a view of the buffers (every slot acting)
    or one fancy-index copy, instead of stacking per-agent NamedArrays every step.
    """

    def __init__(self, obs: NamedArray, num_slots: int) -> None:
        self.flat = all(not isinstance(v, NamedArray) for v in obs.values())
        self.cls = type(obs)
        self.keys: list[str] = list(obs.keys())
        if self.flat:
            self.paths = [k for k in self.keys if getattr(obs, k) is not None]
        else:
            schema = Schema.of(obs, batch_ndim=0)
            self.paths = [leaf.path for leaf in schema.leaves]
            self.nodes = schema.nodes
        flat = dict(obs.flat_items())
        self.bufs = [np.zeros((num_slots, *np.shape(flat[p])), np.asarray(flat[p]).dtype) for p in self.paths]
        by_path = dict(zip(self.paths, self.bufs))
        self.full_values = [by_path.get(k) for k in self.keys]  # (flat obs) field values of a full view

    def write(self, slot: int, obs: NamedArray) -> None:
        if self.flat:
            for k, b in zip(self.paths, self.bufs):
                b[slot] = getattr(obs, k)
        else:
            flat = dict(obs.flat_items())
            for k, b in zip(self.paths, self.bufs):
                b[slot] = flat[k]

    def view(self, idx: np.ndarray | None) -> NamedArray:
        if idx is None and self.flat:  # every slot acting: the buffers themselves, in field order
            return self.cls._build(self.keys, self.full_values)
        arrays = self.bufs if idx is None else [b[idx] for b in self.bufs]
        if self.flat:
            by_key = dict(zip(self.paths, arrays))
            return self.cls._build(self.keys, [by_key.get(k) for k in self.keys])
        return from_flat(dict(zip(self.paths, arrays)), self.nodes)


class _Group:
    """One group (half) of the ring: its envs, agent slots, staged results, states and trajectory buffer."""

    def __init__(self, env_ids: list[int], envs: list[Environment], fragment_length: int) -> None:
        self.env_ids = env_ids
        self.envs = envs
        self.slot_of: list[list[int]] = []
        n = 0
        for env in envs:
            k = int(env.agent_count)
            self.slot_of.append(list(range(n, n + k)))
            n += k
        self.num_slots = n
        self.active = np.zeros(n, np.bool_)  # slot has a staged result and will act
        self.on_reset = np.zeros(n, np.bool_)
        self.obs: _ObsBuffers | None = None
        self.reward: np.ndarray | None = None
        self.done = np.zeros((n, 1), np.bool_)
        self.trunc = np.zeros((n, 1), np.bool_)
        self.state: NamedArray | None = None
        self.traj = TrajectoryBuffer(n, fragment_length)
        self.ep_return = np.zeros(n, np.float64)
        self.ep_length = np.zeros(n, np.int64)
        self.row_of = np.full(n, -1, np.int64)
        self.pending: tuple[np.ndarray, RolloutRequest, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.steps = [0] * len(envs)
        self.failures = [0] * len(envs)
        self.versions: dict[tuple[int, int], np.ndarray] = {}


class EnvRing:
    """Steps ``num_envs`` environments in ``num_groups`` groups and assembles SampleBatch fragments.

    Args:
        make_env: builds env number ``i`` (``0 <= i < num_envs``).
        num_envs: environments on this actor.
        num_groups: 1, or 2 to alternate halves with remote inference.
        fragment_length: ``T`` decision rows per fragment.
        default_state: one agent's default policy state in row layout (size-1 slot removed), or None.
        env_name: for messages (e.g. ``gym:CartPole-v1``).
        where: who runs this ring, for messages (e.g. ``actor rank 3``).
        seeds: seed for each env (``env.seed`` is called before the first reset).
        check: ``"first"``, ``"always"`` or ``"off"``: validate results against declared spaces.
        env_failure: ``"fail"`` or ``"recreate"``.
        max_env_failures: consecutive failures of one env before giving up (with ``recreate``).
        evaluation: mark every request ``is_evaluation`` (deterministic actions).
    """

    def __init__(
        self,
        make_env: Callable[[int], Environment],
        num_envs: int,
        num_groups: int,
        fragment_length: int,
        default_state: NamedArray | None,
        env_name: str,
        where: str = "actor",
        seeds: list[int] | None = None,
        check: str = "first",
        env_failure: str = "fail",
        max_env_failures: int = 3,
        evaluation: bool = False,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"{where}: envs_per_actor must be >= 1, got {num_envs}")
        num_groups = max(1, min(num_groups, num_envs))
        self.make_env = make_env
        self.env_name = env_name
        self.where = where
        self.default_state = default_state
        self.check_mode = check
        self.env_failure = env_failure
        self.max_env_failures = max_env_failures
        self.seeds = seeds or list(range(num_envs))
        self.evaluation = evaluation
        self.frames = 0
        self.env_failures = 0
        self.episodes: list[Episode] = []
        self._checkers: dict[int, Any] = {}
        self._eval_flags: dict[int, np.ndarray] = {}
        ids = list(range(num_envs))
        split = [ids[g::num_groups] for g in range(num_groups)]
        self.groups: list[_Group] = []
        for env_ids in split:
            envs = [self._build(i) for i in env_ids]
            self.groups.append(_Group(env_ids, envs, fragment_length))
        for g in self.groups:
            if default_state is not None:
                g.state = stack([default_state] * g.num_slots)
            for j in range(len(g.envs)):
                self._reset(g, j)

    # ------------------------------------------------------------------ env handling
    def _build(self, i: int) -> Environment:
        try:
            env = self.make_env(i)
            env.seed(int(self.seeds[i]))
        except Exception as e:
            raise EnvError(f"{self.where}: building env {self.env_name} #{i} failed: {type(e).__name__}: {e}") from e
        return env

    def _checker(self, i: int, env: Environment) -> Any:
        chk = self._checkers.get(i)
        if chk is None:
            from hpcrl.envs.checks import EnvChecker

            chk = EnvChecker(self.env_name, env.agent_count, env.observation_spaces, env.action_spaces)
            self._checkers[i] = chk
        return chk

    def _accept(self, g: _Group, j: int, results: Any, step: int | None) -> None:
        """Validate what env ``j`` of group ``g`` returned and stage it in the group's buffers.

        ``step`` is the step number (``None``: the results of ``reset()``), for messages.
        """
        i = g.env_ids[j]
        slots = g.slot_of[j]
        if type(results) is not list or len(results) != len(slots):
            n = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise EnvError(
                f"{self.where}: env {self.env_name} #{i} {_what(step)} returned {n} results, "
                f"expected a list of agent_count={len(slots)} StepResult/None"
            )
        if self.check_mode == "always" or (self.check_mode == "first" and g.steps[j] < CHECK_FIRST_STEPS):
            try:
                self._checker(i, g.envs[j]).check(results, where=_what(step))
            except ValueError as e:
                raise EnvError(f"{self.where}: env #{i}: {e}") from e
        for a, (s, r) in enumerate(zip(slots, results)):
            if r is None:
                g.active[s] = False
                continue
            if g.obs is None:
                self._allocate(g, r)
            assert g.obs is not None and g.reward is not None
            field = "obs"
            try:
                g.obs.write(s, r.obs)
                field = "reward"
                g.reward[s] = r.reward
                field = "done"
                g.done[s] = r.done
                field = "truncated"
                g.trunc[s] = r.truncated
            except (ValueError, TypeError, AttributeError, KeyError) as e:
                raise EnvError(
                    f"{self.where}: env {self.env_name} #{i} {_what(step)}, agent {a}: {field} does not fit the layout "
                    f"fixed by the first result ({e})"
                ) from e
            g.active[s] = True

    @staticmethod
    def _allocate(g: _Group, r: StepResult) -> None:
        if not isinstance(r.obs, NamedArray):
            raise EnvError(f"StepResult.obs must be a NamedArray of named inputs, got {type(r.obs).__name__}")
        g.obs = _ObsBuffers(r.obs, g.num_slots)
        width = int(np.asarray(r.reward).size) or 1
        g.reward = np.zeros((g.num_slots, width), np.float32)

    def _reset(self, g: _Group, j: int) -> None:
        env = g.envs[j]
        try:
            results = env.reset()
        except Exception as e:
            self._failed(g, j, "reset", e)
            return
        self._accept(g, j, results, None)
        slots = np.asarray(g.slot_of[j])
        g.on_reset[slots] = True
        g.ep_return[slots] = 0.0
        g.ep_length[slots] = 0
        if g.state is not None and self.default_state is not None:
            g.state[slots] = stack([self.default_state] * len(slots))

    def _failed(self, g: _Group, j: int, what: str, exc: BaseException) -> None:
        i = g.env_ids[j]
        msg = f"{self.where}: env {self.env_name} #{i} raised in {what}: {type(exc).__name__}: {exc}"
        if self.env_failure != "recreate":
            raise EnvError(msg) from exc
        g.failures[j] += 1
        self.env_failures += 1
        if g.failures[j] > self.max_env_failures:
            raise EnvError(f"{msg} ({g.failures[j]} consecutive failures, max_env_failures={self.max_env_failures})")
        log.warning("%s; recreating it and dropping its partial episode (failure %d)", msg, g.failures[j])
        slots = np.asarray(g.slot_of[j])
        g.traj.mark_truncated(slots)
        g.active[slots] = False
        try:
            g.envs[j].close()
        except Exception:
            pass
        g.envs[j] = self._build(i)
        g.steps[j] = 0
        self._reset(g, j)

    # ------------------------------------------------------------------ the cycle
    @property
    def num_groups(self) -> int:
        """Number of groups in the ring."""
        return len(self.groups)

    def num_slots(self, group: int) -> int:
        """Agent slots in ``group`` (columns of its fragments)."""
        return self.groups[group].num_slots

    def request(self, group: int) -> RolloutRequest:
        """Stage the acting agents of ``group`` and return their :class:`RolloutRequest`.

        The request's arrays may be views of the group's buffers: valid until :meth:`consume`.

        Raises:
            EnvError: no agent of the group can act (every env returned only ``None``).
        """
        g = self.groups[group]
        acting = g.active.nonzero()[0]
        if acting.size == 0:
            raise EnvError(f"{self.where}: no agent can act in env group {group}: every StepResult is None")
        assert g.obs is not None and g.reward is not None
        if acting.size == g.num_slots:
            obs, reward, done, trunc = g.obs.view(None), g.reward, g.done, g.trunc
            state, on_reset = g.state, g.on_reset[:, None]
        else:
            obs, reward, done, trunc = g.obs.view(acting), g.reward[acting], g.done[acting], g.trunc[acting]
            state, on_reset = (None if g.state is None else g.state[acting]), g.on_reset[acting, None]
        flags = self._eval_flags.get(acting.size)
        if flags is None:  # read-only and shared: one per batch size
            flags = self._eval_flags[acting.size] = np.full((acting.size, 1), self.evaluation, np.bool_)
            flags.flags.writeable = False
        req = RolloutRequest._build(_REQUEST_KEYS, [obs, state, flags, on_reset])
        g.pending = (acting, req, reward, done, trunc)
        return req

    def consume(self, group: int, result: RolloutResult, version: int) -> None:
        """Record the rows of the pending request of ``group``, then step or reset its envs.

        Raises:
            EnvError: the result does not fit the request (row count), or an env failed and
                ``env_failure`` is ``fail``.
        """
        g = self.groups[group]
        if g.pending is None:
            raise RuntimeError(f"{self.where}: consume() without a pending request for group {group}")
        acting, req, reward, done, trunc = g.pending
        g.pending = None
        n = acting.size
        act = result.action
        if len(act) != n:
            raise EnvError(f"{self.where}: the policy returned {len(act)} actions for {n} requests")
        versions = g.versions.get((n, version))
        if versions is None:
            if len(g.versions) > 64:
                g.versions.clear()
            versions = g.versions[(n, version)] = np.full((n, 1), version, np.int64)
        if not g.traj.allocated:
            g.traj.allocate(
                SampleBatch(
                    obs=req.obs,
                    policy_state=req.policy_state,
                    action=act,
                    analyzed_result=result.analyzed_result,
                    reward=reward,
                    done=done,
                    truncated=trunc,
                    policy_version=versions,
                    on_reset=req.on_reset,
                )
            )
        leaves = leaves_of(req.obs, [])
        leaves_of(req.policy_state, leaves)
        leaves_of(act, leaves)
        leaves_of(result.analyzed_result, leaves)
        leaves += (reward, done, trunc, versions, req.on_reset)
        g.traj.add_leaves(acting, leaves)
        if g.state is not None and result.policy_state is not None:
            g.state[acting] = result.policy_state
        if n == g.num_slots:  # every slot acted (the common case): whole-array updates, no fancy indexing
            g.ep_return += reward[:, 0] if reward.shape[1] == 1 else reward.sum(axis=1)
            g.ep_length += 1
            g.on_reset[:] = False
        else:
            g.ep_return[acting] += reward.sum(axis=1)
            g.ep_length[acting] += 1
            g.on_reset[acting] = False
        terminal = (done | trunc)[:, 0]
        if terminal.any():
            for k in terminal.nonzero()[0]:
                s = acting[k]
                # the terminal row counts as a row, not as a step
                self.episodes.append(Episode(float(g.ep_return[s]), int(g.ep_length[s]) - 1, version))
                g.active[s] = False
        # actions, one NamedArray per acting agent
        cls, keys = type(act), act._keys  # type: ignore[attr-defined]
        flat = all(not isinstance(getattr(act, k), NamedArray) for k in keys)
        cols = [getattr(act, k) for k in keys] if flat else None
        g.row_of[acting] = np.arange(n)
        rows = g.row_of.tolist()
        active = g.active.tolist()
        for j, slots in enumerate(g.slot_of):
            if not any(active[s] for s in slots):
                self._reset(g, j)
                continue
            actions: list[NamedArray | None] = []
            for s in slots:
                if not active[s]:
                    actions.append(None)
                elif cols is not None:
                    r = rows[s]
                    actions.append(cls._build(keys, [None if c is None else c[r] for c in cols]))
                else:
                    actions.append(act[rows[s]])
            try:
                results = g.envs[j].step(actions)
            except Exception as e:
                self._failed(g, j, f"step {g.steps[j]}", e)
                continue
            g.steps[j] += 1
            g.failures[j] = 0
            self.frames += 1
            self._accept(g, j, results, g.steps[j])

    def pop_fragments(self, group: int | None = None) -> list[SampleBatch]:
        """Completed ``(T + 1, slots)`` fragments of one group (or all groups)."""
        groups = self.groups if group is None else [self.groups[group]]
        out: list[SampleBatch] = []
        for g in groups:
            out.extend(g.traj.pop_ready())
        return out

    def pop_episodes(self) -> list[Episode]:
        """Episodes finished since the last call."""
        eps, self.episodes = self.episodes, []
        return eps

    def close(self) -> None:
        """Close every env (errors are logged, not raised)."""
        for g in self.groups:
            for env in g.envs:
                try:
                    env.close()
                except Exception as e:
                    log.warning("%s: closing env %s failed: %s", self.where, self.env_name, e)
