"""Rank topology: a pure function of (layout, world size) giving every rank's role and peers (no MPI).

Ranks are laid out in order: rank 0 is the trainer leader (it writes checkpoints and publishes
parameters), then the other trainers, then the inference ranks, then the actors. Actor number ``k``
(counting actors from 0) sends samples to trainer ``trainers[k % len(trainers)]`` and, with remote
inference, requests to ``inference[k % len(inference)]``. Bad layouts raise :class:`TopologyError`
naming the numbers, before any communication.

Examples:
    >>> from hpcrl.api.config import Layout
    >>> topo = Topology.build(Layout(trainers=1, inference=1), world_size=8)
    >>> topo.describe()
    '8 ranks: 1 trainer [0], 1 inference [1], 6 actors [2-7]'
    >>> topo.role_of(3), topo.trainer_of(3), topo.inference_of(3)
    ('actor', 0, 1)
    >>> Topology.build(Layout(), world_size=2).describe()
    '2 ranks: 1 trainer [0], inline inference, 1 actor [1]'
    >>> Topology.build(Layout(), world_size=1).local
    True
    >>> Topology.build(Layout(trainers=1, inference=2, actors=5), world_size=4)
    Traceback (most recent call last):
    ...
    hpcrl.comm.topology.TopologyError: layout asks for trainers=1 inference=2 actors=5 = 8 ranks but the world size is 4
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hpcrl.api.config import Layout

__all__ = ["Role", "Topology", "TopologyError", "format_ranks"]

Role = Literal["trainer", "inference", "actor"]


class TopologyError(ValueError):
    """A layout does not fit the world size, or a rank is asked for a role it does not have."""


def format_ranks(ranks: tuple[int, ...] | list[int]) -> str:
    """Compact rank list: ``(0, 1, 2, 5, 7, 8)`` -> ``'0-2,5,7-8'``; empty -> ``''``."""
    parts: list[str] = []
    i = 0
    ranks = list(ranks)
    while i < len(ranks):
        j = i
        while j + 1 < len(ranks) and ranks[j + 1] == ranks[j] + 1:
            j += 1
        parts.append(str(ranks[i]) if i == j else f"{ranks[i]}-{ranks[j]}")
        i = j + 1
    return ",".join(parts)


def _a(role: str) -> str:
    return f"an {role}" if role[0] in "aeiou" else f"a {role}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word == "inference" else f"{n} {word}s"


@dataclasses.dataclass(frozen=True)
class Topology:
    """Which rank plays which role, and who talks to whom.

    Build it with :meth:`build`; every rank computes the same topology from the same config.

    Attributes:
        world_size: number of ranks.
        trainers: trainer ranks (``trainers[0] == 0`` is the leader).
        inference: inference ranks; empty when actors run the policy inline.
        actors: actor ranks.
        local: single-process mode (world size 1): rank 0 is trainer, inline inference and actor at once;
            then ``trainers == actors == (0,)`` and ``inference == ()``.
    """

    world_size: int
    trainers: tuple[int, ...]
    inference: tuple[int, ...]
    actors: tuple[int, ...]
    local: bool = False
    _actor_trainer: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    _actor_inference: tuple[int, ...] = dataclasses.field(default=(), repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, layout: Layout, world_size: int) -> Topology:
        """Lay out ``world_size`` ranks as ``layout`` asks.

        Args:
            layout: trainer, inference and actor counts (``actors=None`` takes every remaining rank).
            world_size: the communicator size.

        Returns:
            The topology. World size 1 always gives the local (single-process) topology.

        Raises:
            TopologyError: negative or zero trainer counts, counts that do not add up to ``world_size``,
                no actors at world size > 1, more trainers or inference ranks than actors, or a layout that
                explicitly asks for more than one rank at world size 1.
        """
        trainers, inference, actors = int(layout.trainers), int(layout.inference), layout.actors
        if world_size < 1:
            raise TopologyError(f"world size must be >= 1, got {world_size}")
        for name, value in (("trainers", trainers), ("inference", inference), ("actors", actors)):
            if value is not None and value < 0:
                raise TopologyError(f"layout.{name}={value}: counts must be >= 0")
        if trainers == 0:
            raise TopologyError(f"layout.trainers=0: at least one trainer rank is needed (world size {world_size})")
        asked = f"trainers={trainers} inference={inference} actors={actors}"
        if world_size == 1:
            explicit = trainers + inference + (actors or 0)
            if explicit > 1:
                raise TopologyError(
                    f"layout asks for {asked} = {explicit} ranks but the world size is 1: launch with "
                    f"mpiexec -n {explicit}, or use the default layout for a single-process run"
                )
            return cls(1, (0,), (), (0,), local=True, _actor_trainer=(0,), _actor_inference=())
        if actors is None:
            actors = world_size - trainers - inference
            if actors < 1:
                raise TopologyError(
                    f"layout asks for trainers={trainers} inference={inference} = {trainers + inference} ranks "
                    f"plus at least 1 actor (actors=rest), but the world size is {world_size}"
                )
        elif trainers + inference + actors != world_size:
            raise TopologyError(
                f"layout asks for {asked} = {trainers + inference + actors} ranks but the world size is {world_size}"
            )
        if actors == 0:
            raise TopologyError(f"layout asks for {asked}: zero actors at world size {world_size}; nothing would act")
        if trainers > actors:
            raise TopologyError(f"layout asks for {asked}: every trainer rank needs at least one actor")
        if inference > actors:
            raise TopologyError(f"layout asks for {asked}: every inference rank needs at least one actor")
        t_ranks = tuple(range(trainers))
        i_ranks = tuple(range(trainers, trainers + inference))
        a_ranks = tuple(range(trainers + inference, world_size))
        a_trainer = tuple(t_ranks[k % trainers] for k in range(actors))
        a_inference = tuple(i_ranks[k % inference] for k in range(actors)) if inference else ()
        return cls(world_size, t_ranks, i_ranks, a_ranks, False, a_trainer, a_inference)

    # ------------------------------------------------------------------ queries
    @property
    def leader(self) -> int:
        """The trainer leader's rank (always 0)."""
        return self.trainers[0]

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise TopologyError(f"rank {rank} is outside the world of {self.world_size} rank(s)")

    def role_of(self, rank: int) -> Role:
        """The role of ``rank`` (``'trainer'`` for rank 0 of a local topology).

        Raises:
            TopologyError: ``rank`` is not in ``[0, world_size)``.
        """
        self._check_rank(rank)
        if rank < len(self.trainers):
            return "trainer"
        if rank < len(self.trainers) + len(self.inference):
            return "inference"
        return "actor"

    def is_leader(self, rank: int) -> bool:
        """Whether ``rank`` is the trainer leader (checkpoints, parameter publication)."""
        return rank == self.leader

    def _actor_index(self, rank: int) -> int:
        self._check_rank(rank)
        if rank not in self.actors:
            raise TopologyError(f"rank {rank} is {_a(self.role_of(rank))} rank, not an actor ({self.describe()})")
        return rank - self.actors[0]

    def trainer_of(self, actor: int) -> int:
        """The trainer rank that receives ``actor``'s samples.

        Raises:
            TopologyError: ``actor`` is not an actor rank.
        """
        return self._actor_trainer[self._actor_index(actor)]

    def inference_of(self, actor: int) -> int | None:
        """The inference rank serving ``actor``, or ``None`` for inline inference.

        Raises:
            TopologyError: ``actor`` is not an actor rank.
        """
        k = self._actor_index(actor)
        return self._actor_inference[k] if self._actor_inference else None

    def actors_of_trainer(self, trainer: int) -> tuple[int, ...]:
        """Actor ranks sending samples to ``trainer``.

        Raises:
            TopologyError: ``trainer`` is not a trainer rank.
        """
        self._check_rank(trainer)
        if trainer not in self.trainers:
            raise TopologyError(
                f"rank {trainer} is {_a(self.role_of(trainer))} rank, not a trainer ({self.describe()})"
            )
        return tuple(a for a, t in zip(self.actors, self._actor_trainer) if t == trainer)

    def actors_of_inference(self, inference: int) -> tuple[int, ...]:
        """Actor ranks served by inference rank ``inference``.

        Raises:
            TopologyError: ``inference`` is not an inference rank.
        """
        self._check_rank(inference)
        if inference not in self.inference:
            raise TopologyError(
                f"rank {inference} is {_a(self.role_of(inference))} rank, not an inference rank ({self.describe()})"
            )
        return tuple(a for a, i in zip(self.actors, self._actor_inference) if i == inference)

    @property
    def param_subscribers(self) -> tuple[int, ...]:
        """Ranks the leader publishes parameters to: the inference ranks, or every actor with inline inference.

        Empty for a local topology (the policy object is shared in-process).
        """
        if self.local:
            return ()
        return self.inference if self.inference else self.actors

    def describe(self) -> str:
        """One line, e.g. ``'8 ranks: 1 trainer [0], 1 inference [1], 6 actors [2-7]'``."""
        if self.local:
            return "1 rank (local): trainer, inline inference and actor in one process"
        parts = [f"{_plural(len(self.trainers), 'trainer')} [{format_ranks(self.trainers)}]"]
        if self.inference:
            parts.append(f"{_plural(len(self.inference), 'inference')} [{format_ranks(self.inference)}]")
        else:
            parts.append("inline inference")
        parts.append(f"{_plural(len(self.actors), 'actor')} [{format_ranks(self.actors)}]")
        return f"{self.world_size} ranks: " + ", ".join(parts)
