"""The actor's env ring: steps environments, keeps per-agent policy state, assembles trajectories.

No torch and no MPI here: an actor rank with remote inference imports only numpy and
the environment. The ring is split into groups (two halves with remote inference, so
one half steps while the other waits for actions). For each group the actor asks for
a :class:`RolloutRequest` (:meth:`EnvRing.request`), gets a :class:`RolloutResult` back
from whatever runs the policy, and hands it to :meth:`EnvRing.consume`, which records
the rows, steps (or resets) the envs and stages the next observations.

Nothing reaches a buffer that does not fit it: every env result is checked against the
layout its group's first result fixed, on every step, and every policy result against the
request and the trajectory layout (see :class:`EnvRing`). numpy never broadcasts or casts a
misfit; the error names the actor, env, step, agent and field.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.acting.obs_buffers import Misfit, ObsBuffers
from hpcrl.acting.trajectory import TrajectoryBuffer
from hpcrl.api.environment import AVAILABLE_ACTION, Environment, StepResult
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, RolloutResult, result_rows_problem
from hpcrl.api.trainer import SampleBatch
from hpcrl.envs.checks import describe, flag_problem, leaf_problem, reward_problem
from hpcrl.envs.results import FALSE, TRUE

__all__ = ["EnvRing", "EnvError", "PolicyResultError", "Episode"]

log = logging.getLogger(__name__)

_REQUEST_KEYS = ["obs", "policy_state", "is_evaluation", "on_reset"]


def _what(step: int | None) -> str:
    """``reset`` or ``step N``, for messages (built only when a message is)."""
    return "reset" if step is None else f"step {step}"


#: with ``check_env: first``, results are validated for this many steps of each env.
CHECK_FIRST_STEPS = 100


# The NaN/Inf check multiplies each float buffer by zeros (Inf * 0 = NaN): numpy's "invalid value" warning for
# it would only precede the EnvError that names the field, so it is silenced for this module's dot products.
warnings.filterwarnings("ignore", "invalid value encountered in dot", RuntimeWarning, __name__)

_F32 = np.dtype(np.float32)
_BOOL = np.dtype(np.bool_)
_ONE = (1,)


class EnvError(RuntimeError):
    """An environment raised, or returned something the actor cannot use (names env and actor)."""


class PolicyResultError(EnvError):
    """The policy's RolloutResult does not fit the request or the layout fixed by its first result (names it)."""


@dataclasses.dataclass
class Episode:
    """A finished episode of one agent."""

    ret: float
    length: int
    version: int
    policy: int = 0
    """Which of the ring's policies acted for the agent (0 in a ring of one policy)."""


class _Group:
    """One group (half) of the ring: its envs, agent slots, staged results, states and trajectory buffer."""

    def __init__(self, env_ids: list[int], envs: list[Environment], fragment_length: int) -> None:
        self.env_ids = env_ids
        self.envs = envs
        self.slot_of: list[list[int]] = []
        self.agent_of: list[tuple[int, int]] = []  # slot -> (env position j in the group, agent index)
        n = 0
        for j, env in enumerate(envs):
            k = int(env.agent_count)
            self.slot_of.append(list(range(n, n + k)))
            self.agent_of.extend((j, a) for a in range(k))
            n += k
        self.num_slots = n
        self.active = np.zeros(n, np.bool_)  # slot has a staged result and will act
        self.on_reset = np.zeros(n, np.bool_)
        self.obs: ObsBuffers | None = None
        self.reward: np.ndarray | None = None
        self.reward_shape: tuple[int] = (1,)  # one agent's reward row, fixed by the first result
        self.fit_reward: Any = None  # the last reward object found to fit (cached reward arrays repeat)
        self.done = np.zeros((n, 1), np.bool_)
        self.trunc = np.zeros((n, 1), np.bool_)
        self.state: NamedArray | None = None
        self.finite: list[tuple[np.ndarray, np.ndarray]] = []  # (float block, zeros): see ObsBuffers
        self.mask: np.ndarray | None = None  # the ``available_action`` buffer (S, logits), if the obs has one
        self.mask_starts: np.ndarray | None = None  # first logit of each multi-discrete component
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
        check: ``"first"``, ``"always"`` or ``"off"``: validate results against the declared spaces
            (:class:`~hpcrl.envs.checks.EnvChecker`) on the first steps of each env, on every step, or never.
            Whatever it says, the layout of every result (count, every obs field's type, shape and dtype,
            reward, done and truncated) is checked on every step; with ``first`` and ``always``, float
            observations and rewards are also checked for NaN/Inf on every step (one dot product per float
            dtype per ring step).
        env_failure: ``"fail"`` or ``"recreate"``.
        max_env_failures: consecutive failures of one env before giving up (with ``recreate``).
        evaluation: mark every request ``is_evaluation`` (deterministic actions).
        policy_name: names the policy in errors about its results.
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
        policy_name: str = "the policy",
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"{where}: envs_per_actor must be >= 1, got {num_envs}")
        num_groups = max(1, min(num_groups, num_envs))
        self.make_env = make_env
        self.env_name = env_name
        self.where = where
        self.default_state = default_state
        self.check_mode = check
        self._check_all = check == "always"
        self._check_some = check == "first"
        self._check_finite = check != "off"
        self.policy_name = policy_name
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

        ``step`` is the step number (``None``: the results of ``reset()``), for messages. The layout
        checks here run on every step; the :class:`~hpcrl.envs.checks.EnvChecker` runs as ``check`` says.
        """
        slots = g.slot_of[j]
        if type(results) is not list or len(results) != len(slots):
            n = len(results) if isinstance(results, (list, tuple)) else type(results).__name__
            raise EnvError(
                f"{self.where}: env {self.env_name} #{g.env_ids[j]} {_what(step)} returned {n} results, "
                f"expected a list of agent_count={len(slots)} StepResult/None"
            )
        if self._check_all or (self._check_some and g.steps[j] < CHECK_FIRST_STEPS):
            i = g.env_ids[j]
            try:
                self._checker(i, g.envs[j]).check(results, where=_what(step))
            except ValueError as e:
                raise EnvError(f"{self.where}: env #{i}: {e}") from e
        for a, (s, r) in enumerate(zip(slots, results)):
            if r is None:
                g.active[s] = False
                continue
            obs = g.obs
            if obs is None:
                self._allocate(g, j, a, r, step)
                obs = g.obs
                assert obs is not None
            try:
                obs.write(s, r.obs)
                rw = r.reward
                if rw is not g.fit_reward:  # an env's cached reward arrays repeat: checked once each
                    if (type(rw) is not np.ndarray or rw.shape != g.reward_shape or rw.dtype is not _F32) and (
                        type(rw) is not float or g.reward_shape != _ONE  # a python float is a (1,) reward
                    ):
                        problem = reward_problem(rw, g.reward_shape[0])
                        if problem is not None:
                            raise Misfit(f"reward: {problem}")
                    g.fit_reward = rw
                g.reward[s] = rw  # type: ignore[index]
                d = r.done
                if (d is not FALSE and d is not TRUE) and (
                    type(d) is not np.ndarray or d.dtype is not _BOOL or d.shape != _ONE
                ):
                    problem = flag_problem(d)
                    if problem is not None:
                        raise Misfit(f"done: {problem}")
                g.done[s] = d
                d = r.truncated
                if (d is not FALSE and d is not TRUE) and (
                    type(d) is not np.ndarray or d.dtype is not _BOOL or d.shape != _ONE
                ):
                    problem = flag_problem(d)
                    if problem is not None:
                        raise Misfit(f"truncated: {problem}")
                g.trunc[s] = d
            except Misfit as e:
                raise self._misfit(g, j, a, step, str(e)) from None
            except (AttributeError, TypeError, ValueError) as e:
                raise self._misfit(g, j, a, step, self._diagnose(g, r, e)) from e
            g.active[s] = True

    def _diagnose(self, g: _Group, r: Any, error: Exception) -> str:
        """What is wrong with a result whose write failed (the first field at fault, named)."""
        if not isinstance(r, StepResult):
            return f"expected a StepResult or None, got {describe(r)}"
        if not isinstance(r.obs, NamedArray):
            return f"obs: expected a NamedArray of named inputs, got {describe(r.obs)}"
        assert g.obs is not None
        flat = dict(r.obs.flat_items())
        for path, _, shape, dtype in g.obs.spec:
            problem = leaf_problem(flat.get(path), shape, dtype)
            if problem is not None:
                return f"obs field {path!r}: {problem}"
        for name, problem in (
            ("reward", reward_problem(r.reward, g.reward_shape[0])),
            ("done", flag_problem(r.done)),
            ("truncated", flag_problem(r.truncated)),
        ):
            if problem is not None:
                return f"{name}: {problem}"
        return f"does not fit the layout fixed by the first result ({type(error).__name__}: {error})"

    def _misfit(self, g: _Group, j: int, agent: int, step: int | None, problem: str) -> EnvError:
        """The error for a result that does not fit: names actor, env, step, agent and the field's problem."""
        head = f"{self.where}: env #{g.env_ids[j]}: env {self.env_name!r} {_what(step)}: agent {agent}"
        return EnvError(f"{head}: {problem}")

    def _allocate(self, g: _Group, j: int, agent: int, r: Any, step: int | None) -> None:
        """Allocate the group's obs and reward buffers from its first result."""
        if not isinstance(r, StepResult) or not isinstance(r.obs, NamedArray):
            got = describe(r.obs) if isinstance(r, StepResult) else describe(r)
            raise self._misfit(g, j, agent, step, f"obs: expected a StepResult whose obs is a NamedArray, got {got}")
        problem = reward_problem(r.reward, None)
        if problem is not None:
            raise self._misfit(g, j, agent, step, f"reward: {problem}")
        width = 1 if np.ndim(r.reward) == 0 else int(np.shape(r.reward)[0])
        try:
            g.obs = ObsBuffers(r.obs, g.num_slots, width)
        except Misfit as e:
            raise self._misfit(g, j, agent, step, str(e)) from None
        g.reward_shape = (width,)
        g.reward = g.obs.reward
        g.finite = g.obs.finite
        if AVAILABLE_ACTION in g.obs.paths:
            buf = g.obs.bufs[g.obs.paths.index(AVAILABLE_ACTION)]
            if buf.ndim == 2:
                g.mask = buf
                g.mask_starts = self._mask_starts(g, buf.shape[1])

    @staticmethod
    def _mask_starts(g: _Group, width: int) -> np.ndarray | None:
        """Where each component's choices start in the mask, for a declared multi-discrete (or binary) action space."""
        declared = getattr(g.envs[0], "action_spaces", None)
        if not declared:
            return None
        from gymnasium import spaces

        sp = declared[0]
        if isinstance(sp, spaces.MultiDiscrete) and sp.nvec.ndim == 1:
            nvec = [int(n) for n in sp.nvec]
        elif isinstance(sp, spaces.MultiBinary) and len(sp.shape) == 1:
            nvec = [2] * int(sp.shape[0])
        else:
            return None
        if sum(nvec) != width:
            return None  # a mask that does not fit the head: the policy names it
        return np.cumsum([0, *nvec[:-1]])

    def _no_legal_action(self, g: _Group, acting: np.ndarray, done: np.ndarray, trunc: np.ndarray) -> None:
        """Refuse an acting row whose ``available_action`` allows nothing, unless its result ends the episode.

        A terminal row's action is never executed (a finished board game has no legal move left), so
        the policy samples it unmasked; anywhere else, no legal action is the env's error, named here
        with env, agent and step (the policy, on an inference rank, sees only batch rows).
        """
        assert g.mask is not None
        m = g.mask if acting.size == g.num_slots else g.mask[acting]
        if g.mask_starts is None:
            legal = m.any(axis=1)
        else:
            legal = np.logical_or.reduceat(m != 0, g.mask_starts, axis=1).all(axis=1)
        if legal.all():
            return
        bad = np.flatnonzero(~legal & ~done[:, 0] & ~trunc[:, 0])
        if bad.size == 0:
            return
        s = int(acting[bad[0]])
        j, a = g.agent_of[s]
        what = "every entry is 0" if g.mask_starts is None else "a component has no legal choice"
        raise self._misfit(
            g,
            j,
            a,
            None if g.on_reset[s] else g.steps[j],
            f"obs field {AVAILABLE_ACTION!r}: no legal action ({what}: {m[bad[0]].tolist()}) in a result that is "
            f"neither done nor truncated; an agent that acts needs at least one legal action",
        )

    def _nonfinite(self, g: _Group) -> EnvError:
        """The error for NaN/Inf in the group's float buffers: names env, step, agent and field."""
        assert g.obs is not None and g.reward is not None
        fields: list[tuple[str, np.ndarray]] = [(p, b) for p, b, _, _ in g.obs.spec]
        first: tuple[int, str, np.ndarray] | None = None  # the lowest slot with NaN/Inf, and where
        for path, buf in [*fields, ("reward", g.reward)]:
            if buf.dtype.kind != "f":
                continue
            rows = buf.reshape(g.num_slots, -1)
            bad_rows = np.flatnonzero(~np.isfinite(rows).all(axis=1))
            if bad_rows.size and (first is None or bad_rows[0] < first[0]):
                first = (int(bad_rows[0]), path, rows[bad_rows[0]])
        if first is not None:
            s, path, row = first
            j, a = g.agent_of[s]
            if path == "reward":
                problem = f"reward: expected a finite value, got {row!r}"
            else:
                bad = int(row.size - np.isfinite(row).sum())
                problem = f"obs field {path!r}: expected finite values, got {bad} NaN/Inf element(s) of {row.size}"
            return self._misfit(g, j, a, None if g.on_reset[s] else g.steps[j], problem)
        return EnvError(f"{self.where}: NaN/Inf in the staged results of env {self.env_name}")

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
        if self._check_finite:
            for block, zeros in g.finite:
                if not block.dot(zeros) == 0:  # NaN * 0 and Inf * 0 are NaN: one BLAS call per float buffer
                    raise self._nonfinite(g)
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
        if g.mask is not None:
            self._no_legal_action(g, acting, done, trunc)
        req = RolloutRequest._build(_REQUEST_KEYS, [obs, state, flags, on_reset])
        g.pending = (acting, req, reward, done, trunc)
        return req

    def consume(self, group: int, result: RolloutResult, version: int) -> None:
        """Record the rows of the pending request of ``group``, then step or reset its envs.

        Raises:
            PolicyResultError: the result does not fit the request (rows) or the layout fixed by the first
                result (shapes, dtypes), or it holds float actions for an integer action space.
            EnvError: an env failed and ``env_failure`` is ``fail``.
        """
        g = self.groups[group]
        if g.pending is None:
            raise RuntimeError(f"{self.where}: consume() without a pending request for group {group}")
        acting, req, reward, done, trunc = g.pending
        g.pending = None
        n = acting.size
        act = self._write_rows(g.traj, g.versions, acting, req, result, version, reward, done, trunc)
        if g.state is not None:
            self._write_state(g, acting, result.policy_state)
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
        self._advance(g, acting, act)

    def _advance(self, g: _Group, acting: np.ndarray, act: NamedArray) -> None:
        """Step (or reset) every env of ``g`` with the actions ``act`` (row ``k`` is slot ``acting[k]``'s)."""
        n = acting.size
        # actions, one NamedArray per acting agent
        cls, keys = type(act), act._keys  # type: ignore[attr-defined]
        flat = all(not isinstance(getattr(act, k), NamedArray) for k in keys)
        cols = [getattr(act, k) for k in keys] if flat else None
        col = cols[0] if cols is not None and len(cols) == 1 else None  # one action field (``x``): no inner loop
        g.row_of[acting] = np.arange(n)
        rows = g.row_of.tolist()
        active = g.active.tolist()
        for j, slots in enumerate(g.slot_of):
            actions: list[NamedArray | None]
            if len(slots) == 1:  # one agent per env (the common case)
                s = slots[0]
                if not active[s]:
                    self._reset(g, j)
                    continue
                if col is not None:
                    actions = [cls._build(keys, [col[rows[s]]])]
                elif cols is not None:
                    actions = [cls._build(keys, [None if c is None else c[rows[s]] for c in cols])]
                else:
                    actions = [act[rows[s]]]
            else:
                if not any(active[s] for s in slots):
                    self._reset(g, j)
                    continue
                actions = []
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

    # ------------------------------------------------------------------ policy results
    def _write_rows(
        self,
        traj: TrajectoryBuffer,
        cache: dict[tuple[int, int], np.ndarray],
        slots: np.ndarray,
        req: RolloutRequest,
        result: RolloutResult,
        version: int,
        reward: np.ndarray,
        done: np.ndarray,
        trunc: np.ndarray,
        name: str | None = None,
    ) -> NamedArray:
        """Write one row per slot of ``slots`` into ``traj``: the request, the policy's result and the step flags.

        The first result fixes the trajectory layout (checked first); later ones must fit it. ``cache`` keeps the
        ``policy_version`` column per (rows, version). Returns the result's actions.

        Raises:
            PolicyResultError: the result has another row count, or does not fit the layout (names the policy).
        """
        name = self.policy_name if name is None else name
        n = slots.size
        act = result.action
        if not isinstance(act, NamedArray) or len(act) != n:
            got = f"{len(act)} actions" if isinstance(act, NamedArray) else f"action {describe(act)}"
            raise PolicyResultError(f"{self.where}: policy {name} returned {got} for {n} requests")
        versions = cache.get((n, version))
        if versions is None:
            if len(cache) > 64:
                cache.clear()
            versions = cache[(n, version)] = np.full((n, 1), version, np.int64)
        if not traj.allocated:
            self._check_first_result(result, n, name)
            traj.allocate(
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
        leaves = req.obs.leaves()
        if req.policy_state is not None:
            req.policy_state.leaves(leaves)
        first = len(leaves)  # the policy's leaves: the others are the ring's own buffers, built to the layout
        act.leaves(leaves)
        if result.analyzed_result is not None:
            result.analyzed_result.leaves(leaves)
        policy_leaves = range(first, len(leaves))
        leaves += (reward, done, trunc, versions, req.on_reset)
        try:
            traj.add_leaves(slots, leaves, policy_leaves)
        except ValueError as e:
            raise PolicyResultError(
                f"{self.where}: policy {name}: its RolloutResult does not fit the layout fixed by its first result: {e}"
            ) from e
        return act

    def _check_first_result(self, result: RolloutResult, n: int, name: str | None = None) -> None:
        """Before the first result fixes the trajectory layout: one row per request, integer actions where due."""
        name = self.policy_name if name is None else name
        problem = result_rows_problem(result, n)
        if problem is not None:
            raise PolicyResultError(f"{self.where}: policy {name}: {problem}")
        found = self._integer_action_space()
        if found is None:
            return
        space, kinds = found
        from hpcrl.envs.spaces import action_value

        try:
            x = action_value(result.action)
        except ValueError:
            return
        dtype = getattr(x, "dtype", None)
        if dtype is not None and getattr(dtype, "kind", "i") not in kinds:
            raise PolicyResultError(
                f"{self.where}: policy {name} returned {dtype} actions for env {self.env_name}, whose "
                f"action space is {space}: expected an integer dtype (int64); float actions would be truncated"
            )

    def _integer_action_space(self) -> tuple[Any, str] | None:
        """(a space, the dtype kinds its actions may have) if every agent of every env declares an integer space.

        Integer spaces are Discrete and MultiDiscrete (int kinds) and MultiBinary (int or bool).
        """
        found, kinds = None, "iub"
        for g in self.groups:
            for env in g.envs:
                declared = env.action_spaces
                if not declared:
                    return None
                from gymnasium import spaces

                for sp in declared:
                    if isinstance(sp, (spaces.Discrete, spaces.MultiDiscrete)):
                        kinds = "iu"
                    elif not isinstance(sp, spaces.MultiBinary):
                        return None
                    found = found or sp
        return None if found is None else (found, kinds)

    def _write_state(
        self,
        g: _Group,
        acting: np.ndarray,
        state: NamedArray | None,
        into: NamedArray | None = None,
        policy_name: str | None = None,
    ) -> None:
        """Store the policy's next state for the acting slots; refuses a missing field or a wrong shape.

        ``into`` is the state buffer (default: the group's) and ``acting`` indexes its rows; ``policy_name``
        names the policy in errors (default: the ring's).
        """
        target = g.state if into is None else into
        assert target is not None
        name = self.policy_name if policy_name is None else policy_name
        if not isinstance(state, NamedArray):
            raise PolicyResultError(
                f"{self.where}: policy {name} has a default_policy_state but returned policy_state "
                f"{describe(state)}; expected the next state, rows like RolloutRequest.policy_state"
            )
        mine = list(target.flat_items())
        theirs = dict(state.flat_items())
        n = acting.size
        for path, dst in mine:
            src = theirs.get(path)
            want = (n, *dst.shape[1:])
            if src is None or tuple(getattr(src, "shape", ())) != want:
                got = "nothing" if src is None else describe(np.asarray(src))
                raise PolicyResultError(
                    f"{self.where}: policy {name} returned policy_state.{path} {got}; expected shape "
                    f"{want} ({n} rows of default_policy_state)"
                )
            if n == len(target):
                dst[...] = src
            else:
                dst[acting] = src
        if len(theirs) != len(mine):
            extra = sorted(set(theirs) - {p for p, _ in mine})
            raise PolicyResultError(
                f"{self.where}: policy {name} returned policy_state fields {extra} that "
                f"default_policy_state does not have"
            )

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
