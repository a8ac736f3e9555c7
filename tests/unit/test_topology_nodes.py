"""Node-aware placement: (layout, world size, node map) -> roles and peers, without MPI."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrl.api.config import ConfigError, Layout, from_dict
from hpcrl.comm.nodes import NodeMap
from hpcrl.comm.topology import Topology, TopologyError


def block(*sizes: int) -> NodeMap:
    """Nodes of ``sizes`` ranks each, in block order (``srun --distribution=block``)."""
    ids = [n for n, size in enumerate(sizes) for _ in range(size)]
    return NodeMap.from_ids(ids, names=[f"n{i + 1}" for i in ids])


def cyclic(nodes: int, world: int) -> NodeMap:
    """``world`` ranks dealt over ``nodes`` nodes in turn (``srun --distribution=cyclic``)."""
    ids = [r % nodes for r in range(world)]
    return NodeMap.from_ids(ids, names=[f"n{i + 1}" for i in ids])


def loads_by_node(topo: Topology) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for i in topo.inference:
        out.setdefault(topo.node(i), []).append(len(topo.actors_of_inference(i)))
    return out


def test_block_one_inference_per_node_keeps_every_request_on_its_node() -> None:
    nodes = block(4, 4, 4, 4)
    topo = Topology.build(Layout(inference=4), 16, nodes)
    assert topo.trainers == (0,) and topo.inference == (1, 4, 8, 12)
    assert topo.cross_node_actors() == () and topo.placement_warning() is None
    for a in topo.actors:
        assert topo.node(topo.inference_of(a)) == topo.node(a)  # type: ignore[arg-type]
    assert loads_by_node(topo) == {0: [2], 1: [3], 2: [3], 3: [3]}
    assert topo.describe() == (
        "16 ranks on 4 nodes: 1 trainer [0], 4 inference [1,4,8,12], 11 actors [2-3,5-7,9-11,13-15], "
        "all inference node-local"
    )


def test_cyclic_order_places_the_same_way() -> None:
    nodes = cyclic(4, 16)  # n1: 0,4,8,12  n2: 1,5,9,13 ...
    topo = Topology.build(Layout(trainers=2, inference=4), 16, nodes)
    assert topo.trainers == (0, 1)
    assert sorted(topo.node(i) for i in topo.inference) == [0, 1, 2, 3]
    assert topo.inference == (2, 3, 4, 5) and topo.cross_node_actors() == ()
    assert [topo.trainer_of(a) for a in topo.actors] == [0, 1] * 5
    assert topo.describe_nodes() == [
        "node n1: trainers [0], inference [4], actors [8,12]",
        "node n2: trainers [1], inference [5], actors [9,13]",
        "node n3: inference [2], actors [6,10,14]",
        "node n4: inference [3], actors [7,11,15]",
    ]


def test_round_robin_crosses_nodes_where_node_placement_does_not() -> None:
    nodes = block(3, 2, 2, 2)  # the simulated-node layout of the MPI test
    node = Topology.build(Layout(inference=4), 9, nodes)
    rr = Topology.build(Layout(inference=4, placement="round_robin"), 9, nodes)
    assert node.inference == (1, 3, 5, 7) and node.cross_node_actors() == ()
    assert rr.inference == (1, 2, 3, 4) and rr.cross_node_actors() == (5, 6, 7, 8)
    assert rr.placement_warning() == (
        "4 of 4 actors send their inference requests to another node: layout.placement=round_robin ignores "
        "nodes (layout.placement=node keeps them local)"
    )


def test_more_inference_ranks_than_nodes_go_where_the_actors_are() -> None:
    nodes = block(8, 8, 4)
    topo = Topology.build(Layout(inference=6), 20, nodes)
    per_node = Counter(topo.node(i) for i in topo.inference)
    assert per_node == {0: 2, 1: 3, 2: 1}  # node 0 has 7 candidates (the trainer is there), node 2 only 4
    assert topo.cross_node_actors() == ()
    for loads in loads_by_node(topo).values():
        assert max(loads) - min(loads) <= 1


def test_uneven_nodes_and_fewer_inference_ranks_than_nodes_warn_with_a_fix() -> None:
    nodes = block(2, 5, 1, 3)  # n3 holds one rank: no room for an inference rank and an actor
    topo = Topology.build(Layout(inference=2), 11, nodes)
    assert sorted(topo.node(i) for i in topo.inference) == [1, 3]  # the biggest nodes first
    assert topo.nodes_without_inference() == (0, 2)
    assert topo.cross_node_actors() == (1, 7)
    warning = topo.placement_warning()
    assert warning == (
        "2 of 8 actors send their inference requests to another node: nodes n1 [0-1], n3 [7] have no inference "
        "rank (layout.inference_per_node=1 puts one on every node)"
    )
    # the actors without a local inference rank go to the least-loaded ones anywhere
    loads = sorted(len(topo.actors_of_inference(i)) for i in topo.inference)
    assert loads == [4, 4]
    assert "2 actors ask another node" in topo.describe()


def test_a_node_too_small_for_its_own_inference_rank_still_serves_actors() -> None:
    nodes = block(2, 1, 1, 1)  # every node has one candidate: nothing can be node-local
    topo = Topology.build(Layout(inference=2), 5, nodes)
    assert len(topo.inference) == 2 and len(topo.actors) == 2
    assert all(len(topo.actors_of_inference(i)) == 1 for i in topo.inference)
    assert len(topo.cross_node_actors()) == 2
    assert topo.placement_warning() is not None


def test_inference_per_node_scales_with_the_node_count() -> None:
    topo = Topology.build(Layout(inference_per_node=2), 24, block(8, 8, 8))
    assert len(topo.inference) == 6 and Counter(topo.node(i) for i in topo.inference) == {0: 2, 1: 2, 2: 2}
    assert topo.cross_node_actors() == ()
    assert Topology.build(Layout(inference_per_node=1), 4).inference == (1,)  # no node map: one node
    assert Topology.build(Layout(inference_per_node=0, inference=3), 8).inference == ()  # it wins over inference
    with pytest.raises(TopologyError, match=r"inference=8 \(inference_per_node=2 on 4 nodes\)"):
        Topology.build(Layout(inference_per_node=2), 8, block(2, 2, 2, 2))


def test_one_node_is_exactly_the_rank_order_layout() -> None:
    for world, layout in [(10, {"trainers": 2, "inference": 3}), (8, {"inference": 1}), (6, {"trainers": 2})]:
        plain = Topology.build(Layout(**layout), world)  # type: ignore[arg-type]
        single = Topology.build(Layout(**layout), world, NodeMap.single(world))  # type: ignore[arg-type]
        rr = Topology.build(Layout(placement="round_robin", **layout), world)  # type: ignore[arg-type]
        for t in (single, rr):
            assert (t.trainers, t.inference, t.actors) == (plain.trainers, plain.inference, plain.actors)
            assert [t.inference_of(a) for a in t.actors] == [plain.inference_of(a) for a in plain.actors]
            assert [t.trainer_of(a) for a in t.actors] == [plain.trainer_of(a) for a in plain.actors]
        assert "node" not in plain.describe()


def test_world_size_1_is_local_with_a_node_map() -> None:
    topo = Topology.build(Layout(), 1, NodeMap.single(1, "h"))
    assert topo.local and topo.cross_node_actors() == () and topo.placement_warning() is None
    assert topo.node(0) == 0 and topo.inference_of(0) is None


def test_bad_placement_and_node_maps_are_named() -> None:
    with pytest.raises(ConfigError, match="layout.placement"):
        from_dict({"environment": {"type_": "g"}, "policy": {"type_": "p"}, "trainer": {"type_": "t"},
                   "layout": {"placement": "nearest"}})  # fmt: skip
    with pytest.raises(ConfigError, match="layout.inference_per_node"):
        Layout(inference_per_node=-1)
    with pytest.raises(TopologyError, match="the node map covers 4 ranks but the world size is 8"):
        Topology.build(Layout(), 8, block(2, 2))


# ------------------------------------------------------------------ property
@st.composite
def placements(draw: st.DrawFn) -> tuple[int, NodeMap, Layout]:
    world = draw(st.integers(2, 24))
    nodes = draw(st.integers(1, 6))
    order = draw(st.sampled_from(["block", "cyclic", "random"]))
    if order == "cyclic":
        ids = [r % nodes for r in range(world)]
    elif order == "block":
        ids = sorted(draw(st.lists(st.integers(0, nodes - 1), min_size=world, max_size=world)))
    else:
        ids = draw(st.lists(st.integers(0, nodes - 1), min_size=world, max_size=world))
    trainers = draw(st.integers(1, 3))
    if draw(st.booleans()):
        layout = Layout(trainers=trainers, inference=draw(st.integers(0, world)))
    else:
        layout = Layout(trainers=trainers, inference_per_node=draw(st.integers(0, 3)))
    return world, NodeMap.from_ids(ids), layout


@settings(max_examples=300, deadline=None)
@given(placements())
def test_node_placement_properties(case: tuple[int, NodeMap, Layout]) -> None:
    world, nodes, layout = case
    inference = (
        (layout.inference_per_node or 0) * nodes.count if layout.inference_per_node is not None else (layout.inference)
    )
    actors = world - layout.trainers - inference
    try:
        topo = Topology.build(layout, world, nodes)
    except TopologyError:
        assert actors < 1 or layout.trainers > actors or inference > actors
        return
    assert actors >= max(1, layout.trainers, inference)
    roles = list(topo.trainers) + list(topo.inference) + list(topo.actors)
    assert sorted(roles) == list(range(world))  # every rank exactly one role
    assert topo.leader == 0 and topo.role_of(0) == "trainer"
    assert (len(topo.trainers), len(topo.inference), len(topo.actors)) == (layout.trainers, inference, actors)
    t_loads = [len(topo.actors_of_trainer(t)) for t in topo.trainers]
    assert max(t_loads) - min(t_loads) <= 1 and min(t_loads) >= 1
    if inference:
        assert all(topo.inference_of(a) in topo.inference for a in topo.actors)
        for i in topo.inference:
            assert topo.actors_of_inference(i)  # every inference rank serves someone
        for loads in loads_by_node(topo).values():  # balanced within one on each node
            assert max(loads) - min(loads) <= 1
        candidates = Counter(nodes.node_of[r] for r in range(layout.trainers, world))
        room = sum(c // 2 for c in candidates.values())  # inference ranks that can each have a local actor
        if inference >= nodes.count and all(candidates[n] >= 2 for n in range(nodes.count)) and inference <= room:
            assert topo.cross_node_actors() == ()  # one per node fits: no request crosses nodes
            assert topo.placement_warning() is None
        if topo.cross_node_actors():
            assert topo.placement_warning() is not None
    else:
        assert all(topo.inference_of(a) is None for a in topo.actors) and topo.cross_node_actors() == ()
