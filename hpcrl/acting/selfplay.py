"""Self-play in one process: a pool of snapshots of a trained policy, the opponents they play, and the score.

:class:`SnapshotPool` copies the trained policy's weights (its ``state_dict``, in memory) every
``snapshot_every_frames`` frames into a policy object of its own and keeps the newest ``pool_size``.
:class:`SelfPlayRing` is the multi-policy env ring of a self-play run: its opponent agents form one more part
(``NAME@pool``); when an env starts an episode it draws one snapshot for it, and that snapshot acts for the
env's opponent agents until the episode ends (:meth:`SelfPlayRing.act_opponents`). When the episode ends the
ring scores it (:class:`Game`): the mean return of the env's agents of the trained policy against the mean
return of its opponent agents; greater is a win, equal a draw, smaller a loss. :class:`Scoreboard` keeps the
counts per opponent version. The opponent part's rows are never handed to a trainer.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from hpcrl.acting.env_ring import _Group
from hpcrl.acting.policy_ring import PolicyRing, _rows_like
from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult, check_rollout_result

__all__ = ["Snapshot", "SnapshotPool", "Game", "Scoreboard", "SelfPlayRing", "draw_probabilities", "selfplay_summary"]

log = logging.getLogger(__name__)

WIN, DRAW, LOSS = 1, 0, -1


@dataclasses.dataclass
class Snapshot:
    """One entry of the pool: a frozen copy of the trained policy's weights (or a fixed opponent)."""

    index: int
    """Snapshots taken before this one in the run (0 = the weights the run started from); a fixed opponent
    ``k`` has -1 - k."""
    version: int
    """The trained policy's version when it was taken (the opponent version of its games); a fixed opponent
    ``k`` has -1 - k (:func:`~hpcrl.api.selfplay_spec.fixed_opponent_version`)."""
    frames: int
    """The run's frames when it was taken."""
    policy: Policy
    """A policy of the trained policy's type holding the copied weights."""
    holders: int = 0
    """Envs whose current episode it plays."""


def draw_probabilities(n: int, sample: str) -> np.ndarray:
    """The probability of each of ``n`` snapshots (oldest first) being drawn.

    ``uniform``: 1/n each. ``latest_weighted``: the i-th oldest (i = 1 .. n) i / (n (n + 1) / 2).
    """
    if sample == "uniform":
        return np.full(n, 1.0 / n)
    if sample == "latest_weighted":
        rank = np.arange(1, n + 1, dtype=np.float64)
        return rank / rank.sum()
    raise ValueError(f"selfplay.sample: expected 'uniform' or 'latest_weighted', got {sample!r}")


class SnapshotPool:
    """The newest ``size`` snapshots of a trained policy, taken every ``every_frames`` frames.

    Args:
        build: builds an empty policy of the trained policy's type (its weights are overwritten).
        size: K, the snapshots kept.
        every_frames: F, frames between snapshots.
        sample: ``uniform`` or ``latest_weighted`` (:func:`draw_probabilities`).
        seed: seeds the draws.
        fixed: fixed opponents (frozen policies), drawn instead of a snapshot in a ``fixed_fraction`` of the
            episodes, uniformly among them.
        fixed_fraction: see ``fixed``.
    """

    def __init__(
        self,
        build: Callable[[], Policy],
        size: int,
        every_frames: int,
        sample: str,
        seed: int,
        fixed: list[Policy] | None = None,
        fixed_fraction: float = 0.0,
    ) -> None:
        self.build = build
        self.fixed = [Snapshot(-1 - k, -1 - k, 0, p) for k, p in enumerate(fixed or [])]
        self.fixed_fraction = float(fixed_fraction)
        self.size = int(size)
        self.every = int(every_frames)
        self.sample = sample
        self.rng = np.random.default_rng(seed)
        self.entries: list[Snapshot] = []  # oldest first
        self.taken = 0
        self.next_at = 0
        self._spare: list[Policy] = []  # policies of evicted snapshots that no env holds any more

    def maybe_take(self, policy: Policy, frames: int) -> Snapshot | None:
        """Take a snapshot of ``policy`` if ``frames`` reached the next multiple of F (or the pool is empty).

        A snapshot whose version equals the newest one's is skipped (the same weights twice add nothing).
        """
        if self.entries and frames < self.next_at:
            return None
        self.next_at = (frames // self.every + 1) * self.every
        if self.entries and self.entries[-1].version == policy.version:
            return None
        return self.take(policy, frames)

    def take(self, policy: Policy, frames: int) -> Snapshot:
        """Copy ``policy``'s weights into the pool now (evicting the oldest beyond K)."""
        target = self._spare.pop() if self._spare else self._new()
        target.load_state_dict(policy.state_dict())  # copies every tensor: later updates do not reach it
        target.set_version(policy.version)
        snap = Snapshot(self.taken, int(policy.version), int(frames), target)
        self.taken += 1
        self.entries.append(snap)
        while len(self.entries) > self.size:
            old = self.entries.pop(0)
            if old.holders == 0:
                self._spare.append(old.policy)
        return snap

    def _new(self) -> Policy:
        import torch

        with torch.random.fork_rng(devices=[]):  # building one must not change the run's random stream
            return self.build()

    def draw(self) -> Snapshot:
        """One opponent for a new episode; the caller holds it until :meth:`release`.

        A fixed opponent (uniformly among them) with probability ``fixed_fraction``, else a snapshot drawn as
        ``sample`` says.
        """
        if self.fixed and self.rng.random() < self.fixed_fraction:
            snap = self.fixed[int(self.rng.integers(len(self.fixed)))]
            snap.holders += 1
            return snap
        n = len(self.entries)
        k = int(self.rng.choice(n, p=draw_probabilities(n, self.sample))) if n > 1 else 0
        snap = self.entries[k]
        snap.holders += 1
        return snap

    def release(self, snap: Snapshot) -> None:
        """An episode that played ``snap`` ended; an evicted snapshot's memory is reused once nobody holds it."""
        snap.holders -= 1
        if snap.holders == 0 and snap.index >= 0 and all(e is not snap for e in self.entries):
            self._spare.append(snap.policy)

    @property
    def versions(self) -> list[int]:
        """The versions of the snapshots in the pool, oldest first."""
        return [e.version for e in self.entries]


@dataclasses.dataclass
class Game:
    """One finished episode of self-play, scored from the trained policy's side."""

    outcome: int
    """1 = win, 0 = draw, -1 = loss."""
    learner_return: float
    """Mean return of the env's agents of the trained policy."""
    opponent_return: float
    """Mean return of the env's opponent agents."""
    opponent_version: int
    """The version of the snapshot the opponents played."""
    opponent_index: int
    """The index of that snapshot (:attr:`Snapshot.index`)."""


def score(learner_return: float, opponent_return: float) -> int:
    """Win (1) if the learner's mean return is greater, draw (0) if equal, loss (-1) if smaller."""
    return WIN if learner_return > opponent_return else LOSS if learner_return < opponent_return else DRAW


class Scoreboard:
    """Win/draw/loss counts per opponent version, and the learner's win rate over the last ``window`` games."""

    def __init__(self, window: int = 100) -> None:
        self.by_version: dict[int, list[int]] = {}  # version -> [wins, draws, losses]
        self.recent: collections.deque[int] = collections.deque(maxlen=window)
        self.games = 0

    def add(self, game: Game) -> None:
        """Count one game."""
        row = self.by_version.setdefault(game.opponent_version, [0, 0, 0])
        row[0 if game.outcome == WIN else 1 if game.outcome == DRAW else 2] += 1
        self.recent.append(game.outcome)
        self.games += 1

    def rates(self) -> dict[str, float] | None:
        """``win``, ``draw``, ``loss`` rates over the last ``window`` games (None before the first)."""
        if not self.recent:
            return None
        out = np.asarray(self.recent)
        return {k: float(np.mean(out == v)) for k, v in (("win", WIN), ("draw", DRAW), ("loss", LOSS))}

    def table(self) -> dict[int, dict[str, float]]:
        """Per opponent version: ``games``, ``win``, ``draw``, ``loss`` (rates over all its games)."""
        out = {}
        for v, (w, d, lo) in sorted(self.by_version.items()):
            n = w + d + lo
            out[v] = {"games": n, "win": round(w / n, 4), "draw": round(d / n, 4), "loss": round(lo / n, 4)}
        return out


class SelfPlayRing(PolicyRing):
    """The :class:`PolicyRing` of a self-play run (see the module docstring).

    Args:
        *args: those of :class:`PolicyRing` (its ``parts`` include the opponent part).
        pool: the snapshot pool; it must hold a snapshot before the ring is built.
        learner_part: the index of the trained policy's part.
        opponent_part: the index of the opponent part (the agents of ``selfplay.opponent_agents``).
        **kwargs: those of :class:`PolicyRing`.
    """

    def __init__(self, *args: Any, pool: SnapshotPool, learner_part: int, opponent_part: int, **kwargs: Any) -> None:
        self.pool = pool
        self.learner_part = learner_part
        self.opponent_part = opponent_part
        self.held: dict[tuple[int, int], Snapshot] = {}  # (group, env position) -> its episode's snapshot
        self.games: list[Game] = []
        super().__init__(*args, **kwargs)

    def _index(self, g: _Group) -> int:
        return next(k for k, group in enumerate(self.groups) if group is g)

    def _reset(self, g: _Group, j: int) -> None:
        key = (self._index(g), j)
        snap = self.held.pop(key, None)
        if snap is not None:  # the env's episode ended: score it, then let go of its snapshot
            self._score(g, key[0], j, snap)
            self.pool.release(snap)
        self.held[key] = self.pool.draw()
        super()._reset(g, j)

    def _failed(self, g: _Group, j: int, what: str, exc: BaseException) -> None:
        snap = self.held.pop((self._index(g), j), None)  # a dropped episode is no game
        if snap is not None:
            self.pool.release(snap)
        super()._failed(g, j, what, exc)

    def _score(self, g: _Group, k: int, j: int, snap: Snapshot) -> None:
        if k >= len(self._parts):
            return
        slots = np.asarray(g.slot_of[j])
        parts = self._parts[k]
        mine, theirs = parts[self.learner_part].mask[slots], parts[self.opponent_part].mask[slots]
        if not mine.any() or not theirs.any():
            return
        lr, orr = float(g.ep_return[slots[mine]].mean()), float(g.ep_return[slots[theirs]].mean())
        self.games.append(Game(score(lr, orr), lr, orr, snap.version, snap.index))

    def restart_pool(self, policy: Policy, frames: int) -> None:
        """Empty the pool and refill it with one snapshot of ``policy`` now, played by every env's episode.

        Called before the first step, once a resumed run has restored its weights: its pool starts from them.
        """
        self.pool.entries.clear()
        self.pool.taken = 0
        snap = self.pool.take(policy, frames)
        self.pool.next_at = (frames // self.pool.every + 1) * self.pool.every
        for key in self.held:
            self.held[key] = snap
        snap.holders = len(self.held)
        for fixed in self.pool.fixed:
            fixed.holders = 0

    def pop_games(self) -> list[Game]:
        """Self-play games finished since the last call."""
        games, self.games = self.games, []
        return games

    def act_opponents(self, group: int, request: RolloutRequest) -> tuple[RolloutResult, int]:
        """Answer the opponent part's pending request of ``group``: each row by its env's snapshot.

        Returns:
            The result (rows in request order) and -1 as its version (the rows mix snapshot versions).
        """
        g = self.groups[group]
        part = self._parts[group][self.opponent_part]
        assert g.pending is not None and part.pending is not None
        rows = part.pending[0]
        slots = g.pending[0][rows]
        snaps = [self.held[(group, g.agent_of[s][0])] for s in slots]
        n = len(snaps)
        order: dict[int, list[int]] = {}
        for i, s in enumerate(snaps):
            order.setdefault(id(s), []).append(i)
        if len(order) == 1:
            who = f"self-play opponent (snapshot of version {snaps[0].version})"
            return check_rollout_result(snaps[0].policy.rollout(request), n, who), -1
        merged: Any = None
        for idx in order.values():
            snap = snaps[idx[0]]
            at = np.asarray(idx)
            who = f"self-play opponent (snapshot of version {snap.version})"
            res = check_rollout_result(snap.policy.rollout(request[at]), at.size, who)
            if merged is None:
                merged = _rows_like(res, n)
            merged[at] = res
        return merged, -1


def selfplay_summary(board: Scoreboard, pool: list[int], fixed: list[str]) -> dict[str, Any]:
    """The run summary's self-play entries, from the score and the pool's versions.

    Args:
        board: the :class:`Scoreboard`.
        pool: the versions in the pool (oldest first).
        fixed: the names of ``selfplay.fixed_opponents`` (fixed opponent ``k`` scores as version -1 - k).
    """
    rates = board.rates() or {}
    table = board.table()
    out: dict[str, Any] = {
        "selfplay_games": board.games,
        "selfplay_win_rate_last_100": rates.get("win"),
        "selfplay_draw_rate_last_100": rates.get("draw"),
        "selfplay_loss_rate_last_100": rates.get("loss"),
        "selfplay_pool_versions": pool,
        "selfplay_vs_pool": {v: table[v] for v in pool if v in table},
    }
    if fixed:
        out["selfplay_vs_fixed"] = {n: table.get(-1 - k) for k, n in enumerate(fixed)}
    return out
