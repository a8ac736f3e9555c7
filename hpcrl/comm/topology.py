"""Rank topology: a pure function of (layout, world size, node map) giving every rank's role and peers (no MPI).

Rank 0 is the trainer leader (it writes checkpoints and publishes parameters); the trainers are ranks
``0 .. layout.trainers-1`` wherever the launcher put them (``slurm/gpu-rank.sh`` gives exactly these ranks a
GPU). Actor number ``k`` (counting actors in rank order from 0) sends samples to trainer
``trainers[k % len(trainers)]``. Where the inference ranks go depends on ``layout.placement``:

``node`` (the default): inference ranks serve the actors of their own node.
    1. The non-trainer ranks of each node are its *candidates*. The inference ranks are dealt out one at a
       time, each to the node whose actors have the fewest inference ranks per actor (a node without one
       first, larger nodes first), never so many on a node that one of them would have no actor there.
    2. On each node the lowest candidates become inference ranks and the rest actors.
    3. A node's actors are dealt round-robin among that node's inference ranks. Actors on a node without an
       inference rank go, one by one, to the least-loaded inference rank anywhere (these actors talk across
       nodes: :meth:`Topology.cross_node_actors`, :meth:`Topology.placement_warning`).
    With at least one inference rank per node (``layout.inference_per_node=1``), no inference request
    crosses nodes. On one node (no node map) this gives the same roles as ``round_robin``.
``round_robin``: rank order only, blind to nodes: the trainers, then the next ``layout.inference`` ranks
    are inference ranks, then the actors; actor ``k`` asks inference rank ``inference[k % len(inference)]``.

Bad layouts raise :class:`TopologyError` naming the numbers, before any communication.

Examples:
    >>> from hpcrl.api.config import Layout
    >>> from hpcrl.comm.nodes import NodeMap
    >>> topo = Topology.build(Layout(trainers=1, inference=1), world_size=8)
    >>> topo.describe()
    '8 ranks: 1 trainer [0], 1 inference [1], 6 actors [2-7]'
    >>> topo.role_of(3), topo.trainer_of(3), topo.inference_of(3)
    ('actor', 0, 1)

    Two nodes, block order (``srun --distribution=block``: ranks 0-3 on a, 4-7 on b), one inference rank
    per node: every actor asks the inference rank of its own node.

    >>> block = NodeMap.from_ids([0, 0, 0, 0, 4, 4, 4, 4], names=["a"] * 4 + ["b"] * 4)
    >>> topo = Topology.build(Layout(inference_per_node=1), world_size=8, nodes=block)
    >>> topo.describe()
    '8 ranks on 2 nodes: 1 trainer [0], 2 inference [1,4], 5 actors [2-3,5-7], all inference node-local'
    >>> [topo.inference_of(a) for a in topo.actors], topo.cross_node_actors()
    ([1, 1, 4, 4, 4], ())

    The same on cyclic order (``--distribution=cyclic``: even ranks on a, odd ranks on b):

    >>> cyclic = NodeMap.from_ids([0, 1] * 4, names=["a", "b"] * 4)
    >>> topo = Topology.build(Layout(inference=2), world_size=8, nodes=cyclic)
    >>> topo.inference, [(a, topo.inference_of(a)) for a in topo.actors]
    ((1, 2), [(3, 1), (4, 2), (5, 1), (6, 2), (7, 1)])

    The rank-order placement sends some actors across nodes:

    >>> rr = Topology.build(Layout(inference=2, placement="round_robin"), world_size=8, nodes=block)
    >>> rr.inference, rr.cross_node_actors()
    ((1, 2), (4, 5, 6, 7))
    >>> Topology.build(Layout(inference=2), world_size=8, nodes=block).cross_node_actors()
    ()

    Fewer inference ranks than nodes: the run works, and :meth:`Topology.placement_warning` says so.

    >>> topo = Topology.build(Layout(inference=1), world_size=8, nodes=block)
    >>> topo.inference, topo.cross_node_actors()
    ((4,), (1, 2, 3))
    >>> import textwrap
    >>> print(textwrap.fill(topo.placement_warning(), 100))
    3 of 6 actors send their inference requests to another node: node a [0-3] has no inference rank
    (layout.inference_per_node=1 puts one on every node)

    A multi-policy run: a block of trainer ranks per trained policy; every actor feeds every group.

    >>> topo = Topology.build(Layout(), world_size=6, groups={"red": 2, "blue": 1})
    >>> topo.describe()
    '6 ranks: 3 trainers [0-2] (red [0-1], blue [2]), inline inference, 3 actors [3-5]'
    >>> [(a, topo.trainer_of(a, "red"), topo.trainer_of(a, "blue")) for a in topo.actors]
    [(3, 0, 2), (4, 1, 2), (5, 0, 2)]

    Single process and bad layouts:

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
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from hpcrl.api.config import Layout
    from hpcrl.comm.nodes import NodeMap

__all__ = ["PLACEMENTS", "Role", "Topology", "TopologyError", "format_ranks"]

Role = Literal["trainer", "inference", "actor"]

#: the values of ``layout.placement``.
PLACEMENTS = ("node", "round_robin")


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


def _node_counts(candidates: list[list[int]], count: int) -> list[int]:
    """How many inference ranks each node gets (``node`` placement, step 1 of the module docstring)."""
    k = [0] * len(candidates)
    for _ in range(count):
        best: tuple[Any, ...] | None = None
        pick = -1
        for n, cand in enumerate(candidates):
            size = len(cand)
            if 2 * (k[n] + 1) > size:  # the new inference rank would have no actor of its own node
                continue
            key = (k[n] == 0, Fraction(size - k[n], max(k[n], 1)), -n)
            if best is None or key > best:
                best, pick = key, n
        if pick < 0:  # no room left without idle inference ranks: where the most spare candidates are
            pick = max(
                (n for n in range(len(candidates)) if k[n] < len(candidates[n])),
                key=lambda n: (len(candidates[n]) - 2 * k[n], -n),
            )
        k[pick] += 1
    return k


def _place_by_node(
    node_of: tuple[int, ...], n_nodes: int, trainers: int, inference: int
) -> tuple[tuple[int, ...], tuple[int, ...], dict[int, int]]:
    """``(inference ranks, actor ranks, actor -> inference rank)`` for ``node`` placement."""
    candidates: list[list[int]] = [[] for _ in range(n_nodes)]
    for r in range(trainers, len(node_of)):
        candidates[node_of[r]].append(r)
    per_node = _node_counts(candidates, inference)
    load: dict[int, int] = {}
    serves: dict[int, int] = {}
    homeless: list[int] = []
    for cand, k in zip(candidates, per_node):
        mine, actors = cand[:k], cand[k:]
        for i in mine:
            load[i] = 0
        for j, a in enumerate(actors):
            if mine:
                serves[a] = mine[j % k]
                load[serves[a]] += 1
            else:
                homeless.append(a)
    for a in sorted(homeless):  # no inference rank on the actor's node: the least-loaded one anywhere
        i = min(load, key=lambda r: (load[r], r))
        serves[a] = i
        load[i] += 1
    while load and min(load.values()) == 0:  # only when nodes are too small: every inference rank needs an actor
        idle = min(r for r in load if load[r] == 0)
        busy = max(load, key=lambda r: (load[r], -r))
        moved = max(a for a, i in serves.items() if i == busy)
        serves[moved] = idle
        load[busy] -= 1
        load[idle] += 1
    i_ranks = tuple(sorted(load))
    a_ranks = tuple(sorted(serves))
    return i_ranks, a_ranks, serves


@dataclasses.dataclass(frozen=True)
class Topology:
    """Which rank plays which role, which node it is on, and who talks to whom.

    Build it with :meth:`build`; every rank computes the same topology from the same config and node map.

    Attributes:
        world_size: number of ranks.
        trainers: trainer ranks (``trainers[0] == 0`` is the leader).
        inference: inference ranks, in rank order; empty when actors run the policy inline.
        actors: actor ranks, in rank order.
        local: single-process mode (world size 1): rank 0 is trainer, inline inference and actor at once;
            then ``trainers == actors == (0,)`` and ``inference == ()``.
        node_of: node index of every rank (all 0 without a node map).
        node_names: a name per node (for messages; ``''`` when unknown).
        placement: ``'node'`` or ``'round_robin'`` (``layout.placement``).
        groups: a multi-policy run: ``(policy, its trainer ranks)`` for every trained policy (empty otherwise).
    """

    world_size: int
    trainers: tuple[int, ...]
    inference: tuple[int, ...]
    actors: tuple[int, ...]
    local: bool = False
    _actor_trainer: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    _actor_inference: tuple[int, ...] = dataclasses.field(default=(), repr=False)
    node_of: tuple[int, ...] = dataclasses.field(default=(0,), repr=False)
    node_names: tuple[str, ...] = dataclasses.field(default=("",), repr=False)
    placement: str = "node"
    groups: tuple[tuple[str, tuple[int, ...]], ...] = ()

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, layout: Layout, world_size: int, nodes: NodeMap | None = None, groups: dict[str, int] | None = None
    ) -> Topology:
        """Lay out ``world_size`` ranks as ``layout`` asks, on the nodes of ``nodes``.

        Args:
            layout: trainer, inference and actor counts (``actors=None`` takes every remaining rank),
                ``inference_per_node`` and ``placement`` (layout-like objects without these two fields
                mean ``inference_per_node=None``, ``placement='node'``).
            world_size: the communicator size.
            nodes: the node of every rank (:class:`hpcrl.comm.nodes.NodeMap`); ``None`` = all on one node.
            groups: a multi-policy run: trained policy name -> its trainer rank count, in order (their sum
                replaces ``layout.trainers``). Each group is a block of consecutive trainer ranks (the first
                group starts at rank 0), and every actor sends each policy's samples to a rank of its group.

        Returns:
            The topology. World size 1 always gives the local (single-process) topology.

        Raises:
            TopologyError: negative or zero trainer counts, counts that do not add up to ``world_size``,
                no actors at world size > 1, more trainers or inference ranks than actors, a layout that
                explicitly asks for more than one rank at world size 1, an unknown placement, or a node map
                of another size than ``world_size``.
        """
        if groups:
            for name, count in groups.items():
                if count < 1:
                    raise TopologyError(f"layout.trainers.{name}={count}: counts must be >= 1")
            trainers = sum(groups.values())
        else:
            trainers = int(layout.trainers)  # type: ignore[arg-type]
        actors = layout.actors
        per_node = getattr(layout, "inference_per_node", None)
        placement = str(getattr(layout, "placement", "node"))
        if world_size < 1:
            raise TopologyError(f"world size must be >= 1, got {world_size}")
        if placement not in PLACEMENTS:
            raise TopologyError(f"layout.placement={placement!r}: expected one of {', '.join(PLACEMENTS)}")
        if nodes is not None and nodes.world_size != world_size:
            raise TopologyError(f"the node map covers {nodes.world_size} ranks but the world size is {world_size}")
        node_of = nodes.node_of if nodes is not None else (0,) * world_size
        names = nodes.names if nodes is not None else ("",)
        if per_node is not None and int(per_node) < 0:
            raise TopologyError(f"layout.inference_per_node={per_node}: counts must be >= 0")
        inference = int(per_node) * len(names) if per_node is not None else int(layout.inference)
        for name, value in (("trainers", trainers), ("inference", inference), ("actors", actors)):
            if value is not None and value < 0:
                raise TopologyError(f"layout.{name}={value}: counts must be >= 0")
        if trainers == 0:
            raise TopologyError(f"layout.trainers=0: at least one trainer rank is needed (world size {world_size})")
        counts = f"trainers={trainers} inference={inference}"
        if per_node is not None:
            counts += f" (inference_per_node={per_node} on {len(names)} node{'s' if len(names) != 1 else ''})"
        asked = f"{counts} actors={actors}"
        if world_size == 1:
            explicit = trainers + inference + (actors or 0)
            if explicit > 1:
                raise TopologyError(
                    f"layout asks for {asked} = {explicit} ranks but the world size is 1: launch with "
                    f"mpiexec -n {explicit}, or use the default layout for a single-process run"
                )
            return cls(1, (0,), (), (0,), True, (0,), (), node_of, names, placement)
        if actors is None:
            actors = world_size - trainers - inference
            if actors < 1:
                raise TopologyError(
                    f"layout asks for {counts} = {trainers + inference} ranks "
                    f"plus at least 1 actor (actors=rest), but the world size is {world_size}"
                )
        elif trainers + inference + actors != world_size:
            raise TopologyError(
                f"layout asks for {asked} = {trainers + inference + actors} ranks but the world size is {world_size}"
            )
        if actors == 0:
            raise TopologyError(f"layout asks for {asked}: zero actors at world size {world_size}; nothing would act")
        biggest = max(groups.values()) if groups else trainers
        if biggest > actors:
            raise TopologyError(f"layout asks for {asked}: every trainer rank needs at least one actor")
        if inference > actors:
            raise TopologyError(f"layout asks for {asked}: every inference rank needs at least one actor")
        t_ranks = tuple(range(trainers))
        if placement == "node" and inference:
            i_ranks, a_ranks, serves = _place_by_node(node_of, len(names), trainers, inference)
            a_inference = tuple(serves[a] for a in a_ranks)
        else:
            i_ranks = tuple(range(trainers, trainers + inference))
            a_ranks = tuple(range(trainers + inference, world_size))
            a_inference = tuple(i_ranks[k % inference] for k in range(actors)) if inference else ()
        a_trainer = tuple(t_ranks[k % trainers] for k in range(actors))
        blocks: list[tuple[str, tuple[int, ...]]] = []
        for name, count in (groups or {}).items():
            start = sum(len(b) for _, b in blocks)
            blocks.append((name, t_ranks[start : start + count]))
        if blocks:
            a_trainer = tuple(blocks[0][1][k % len(blocks[0][1])] for k in range(actors))
        return cls(
            world_size,
            t_ranks,
            i_ranks,
            a_ranks,
            False,
            a_trainer,
            a_inference,
            node_of,
            names,
            placement,
            tuple(blocks),
        )

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
        if rank in self.inference:
            return "inference"
        return "actor"

    def is_leader(self, rank: int) -> bool:
        """Whether ``rank`` is the trainer leader (checkpoints, parameter publication)."""
        return rank == self.leader

    def actor_index(self, actor: int) -> int:
        """``k`` for the ``k``-th actor rank (from 0, in rank order): seeds and frame shares follow it.

        Raises:
            TopologyError: ``actor`` is not an actor rank.
        """
        self._check_rank(actor)
        if self.local:
            return 0
        if self.role_of(actor) != "actor":
            raise TopologyError(f"rank {actor} is {_a(self.role_of(actor))} rank, not an actor ({self.describe()})")
        return self.actors.index(actor)

    def trainer_of(self, actor: int, policy: str | None = None) -> int:
        """The trainer rank that receives ``actor``'s samples (of trained ``policy`` in a multi-policy run).

        Actor ``k`` sends to rank ``k % n`` of the ``n`` trainer ranks (of the policy's group).

        Raises:
            TopologyError: ``actor`` is not an actor rank, or ``policy`` has no trainer group.
        """
        if policy is None or not self.groups:
            return self._actor_trainer[self.actor_index(actor)]
        ranks = self.group_ranks(policy)
        return ranks[self.actor_index(actor) % len(ranks)]

    def group_ranks(self, policy: str) -> tuple[int, ...]:
        """The trainer ranks of trained ``policy`` of a multi-policy run.

        Raises:
            TopologyError: the run has no trainer group for ``policy``.
        """
        for name, ranks in self.groups:
            if name == policy:
                return ranks
        known = ", ".join(name for name, _ in self.groups) or "none"
        raise TopologyError(f"no trainer ranks for policy {policy!r} (trainer groups: {known})")

    def group_of(self, trainer: int) -> str | None:
        """The policy whose trainer group ``trainer`` is in (None: not a trainer of a multi-policy run)."""
        return next((name for name, ranks in self.groups if trainer in ranks), None)

    def inference_of(self, actor: int) -> int | None:
        """The inference rank serving ``actor``, or ``None`` for inline inference.

        Raises:
            TopologyError: ``actor`` is not an actor rank.
        """
        k = self.actor_index(actor)
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
        policy = self.group_of(trainer)
        if policy is not None:
            return tuple(a for a in self.actors if self.trainer_of(a, policy) == trainer)
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

    # ------------------------------------------------------------------ nodes
    @property
    def node_count(self) -> int:
        """Number of nodes (1 without a node map)."""
        return len(self.node_names)

    def node(self, rank: int) -> int:
        """The node index of ``rank``.

        Raises:
            TopologyError: ``rank`` is not in ``[0, world_size)``.
        """
        self._check_rank(rank)
        return self.node_of[rank] if len(self.node_of) == self.world_size else 0

    def node_name(self, node: int) -> str:
        """``node``'s name, or ``node<i>`` when the launcher gave none."""
        return self.node_names[node] or f"node{node}"

    def ranks_on(self, node: int) -> tuple[int, ...]:
        """The ranks on ``node``, in rank order."""
        return tuple(r for r in range(self.world_size) if self.node(r) == node)

    def cross_node_actors(self) -> tuple[int, ...]:
        """Actor ranks whose inference rank is on another node (empty with inline inference)."""
        if not self._actor_inference:
            return ()
        return tuple(a for a, i in zip(self.actors, self._actor_inference) if self.node(a) != self.node(i))

    def nodes_without_inference(self) -> tuple[int, ...]:
        """Nodes that hold actors but no inference rank (empty with inline inference)."""
        if not self.inference:
            return ()
        served = {self.node(i) for i in self.inference}
        return tuple(sorted({self.node(a) for a in self.actors} - served))

    def placement_warning(self) -> str | None:
        """The one-line warning for a run whose actors send inference requests across nodes; ``None`` if none do."""
        cross = self.cross_node_actors()
        if not cross:
            return None
        head = f"{len(cross)} of {len(self.actors)} actors send their inference requests to another node"
        if self.placement == "round_robin":
            return f"{head}: layout.placement=round_robin ignores nodes (layout.placement=node keeps them local)"
        lacking = self.nodes_without_inference()
        if lacking:
            shown = ", ".join(f"{self.node_name(n)} [{format_ranks(self.ranks_on(n))}]" for n in lacking[:4])
            more = f" and {len(lacking) - 4} more" if len(lacking) > 4 else ""
            verb = "has" if len(lacking) == 1 else "have"
            fix = "layout.inference_per_node=1 puts one on every node"
            return f"{head}: node{'s' if len(lacking) > 1 else ''} {shown}{more} {verb} no inference rank ({fix})"
        return f"{head}: some nodes have too few ranks to hold an inference rank and an actor of their own"

    def describe(self) -> str:
        """One line, e.g. ``'8 ranks: 1 trainer [0], 1 inference [1], 6 actors [2-7]'``.

        On several nodes it also names the node count and whether every actor's inference is node-local.
        """
        if self.local:
            return "1 rank (local): trainer, inline inference and actor in one process"
        parts = [f"{_plural(len(self.trainers), 'trainer')} [{format_ranks(self.trainers)}]"]
        if self.groups:
            parts[0] += " (" + ", ".join(f"{n} [{format_ranks(r)}]" for n, r in self.groups) + ")"
        if self.inference:
            parts.append(f"{_plural(len(self.inference), 'inference')} [{format_ranks(self.inference)}]")
        else:
            parts.append("inline inference")
        parts.append(f"{_plural(len(self.actors), 'actor')} [{format_ranks(self.actors)}]")
        if self.node_count == 1:
            return f"{self.world_size} ranks: " + ", ".join(parts)
        if self.inference:
            cross = len(self.cross_node_actors())
            parts.append(f"{cross} actors ask another node" if cross else "all inference node-local")
        return f"{self.world_size} ranks on {self.node_count} nodes: " + ", ".join(parts)

    def describe_nodes(self) -> list[str]:
        """One line per node: its name and the ranks of each role on it (for the leader's start-up log)."""
        lines = []
        for n in range(self.node_count):
            ranks = self.ranks_on(n)
            roles = []
            for role, members in (("trainers", self.trainers), ("inference", self.inference), ("actors", self.actors)):
                mine = tuple(r for r in ranks if r in members)
                if mine:
                    roles.append(f"{role} [{format_ranks(mine)}]")
            lines.append(f"node {self.node_name(n)}: " + ", ".join(roles))
        return lines
