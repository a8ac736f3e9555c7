"""Topology: (layout, world size) -> roles and peers, without MPI."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hpcrl.api.config import Layout
from hpcrl.comm.tags import DATA_TAGS, SCHEMA_OFFSET, Tag, schema_tag, tag_name
from hpcrl.comm.topology import Topology, TopologyError, format_ranks


def build(world: int, **kw: int | None) -> Topology:
    """The topology of ``Layout(**kw)``; counts a Layout refuses (e.g. ``actors=0``) go in unvalidated, since
    the topology checks them itself for any layout-like object."""
    try:
        layout = Layout(**kw)  # type: ignore[arg-type]
    except ValueError:  # config.ConfigError: out of the range the config declares
        layout = SimpleNamespace(**{"trainers": 1, "inference": 0, "actors": None, **kw})  # type: ignore[assignment]
    return Topology.build(layout, world)


def check_invariants(topo: Topology) -> None:
    """Every rank has exactly one role; the assignments are consistent both ways."""
    ranks = list(topo.trainers) + list(topo.inference) + list(topo.actors)
    if topo.local:
        assert topo.world_size == 1 and topo.trainers == topo.actors == (0,) and topo.inference == ()
        return
    assert sorted(ranks) == list(range(topo.world_size))
    assert topo.leader == 0 and topo.is_leader(0) and not any(topo.is_leader(r) for r in range(1, topo.world_size))
    for r in topo.trainers:
        assert topo.role_of(r) == "trainer"
    for r in topo.inference:
        assert topo.role_of(r) == "inference"
    for a in topo.actors:
        assert topo.role_of(a) == "actor"
        assert a in topo.actors_of_trainer(topo.trainer_of(a))
        inf = topo.inference_of(a)
        if topo.inference:
            assert inf is not None and a in topo.actors_of_inference(inf)
        else:
            assert inf is None
    assert sorted(a for t in topo.trainers for a in topo.actors_of_trainer(t)) == list(topo.actors)
    assert sorted(a for i in topo.inference for a in topo.actors_of_inference(i)) == (
        list(topo.actors) if topo.inference else []
    )
    # round robin: loads differ by at most one
    loads = [len(topo.actors_of_trainer(t)) for t in topo.trainers]
    assert max(loads) - min(loads) <= 1 and min(loads) >= 1
    if topo.inference:
        loads = [len(topo.actors_of_inference(i)) for i in topo.inference]
        assert max(loads) - min(loads) <= 1 and min(loads) >= 1


@pytest.mark.parametrize(
    "world,layout",
    [
        (2, {}),
        (3, {}),
        (8, {"inference": 1}),
        (8, {"trainers": 2, "inference": 2}),
        (8, {"trainers": 2, "inference": 2, "actors": 4}),
        (64, {"trainers": 4, "inference": 4}),
        (64, {"trainers": 3, "inference": 5}),
        (5, {"trainers": 1, "inference": 2, "actors": 2}),
        (4, {"trainers": 2, "actors": 2}),
        (17, {"trainers": 1, "inference": 0}),
    ],
)
def test_layouts_are_consistent(world: int, layout: dict[str, int]) -> None:
    topo = build(world, **layout)
    assert topo.world_size == world and not topo.local
    check_invariants(topo)


def test_default_layout_world_2_is_trainer_plus_inline_actor() -> None:
    topo = build(2)
    assert topo.trainers == (0,) and topo.inference == () and topo.actors == (1,)
    assert topo.inference_of(1) is None and topo.trainer_of(1) == 0
    assert topo.param_subscribers == (1,)
    assert topo.describe() == "2 ranks: 1 trainer [0], inline inference, 1 actor [1]"


def test_example_8_ranks() -> None:
    topo = build(8, inference=1)
    assert topo.describe() == "8 ranks: 1 trainer [0], 1 inference [1], 6 actors [2-7]"
    assert topo.param_subscribers == (1,)
    assert topo.actors_of_inference(1) == (2, 3, 4, 5, 6, 7)


def test_round_robin_assignment() -> None:
    topo = build(10, trainers=2, inference=3)
    assert topo.trainers == (0, 1) and topo.inference == (2, 3, 4) and topo.actors == (5, 6, 7, 8, 9)
    assert [topo.trainer_of(a) for a in topo.actors] == [0, 1, 0, 1, 0]
    assert [topo.inference_of(a) for a in topo.actors] == [2, 3, 4, 2, 3]
    assert topo.actors_of_trainer(1) == (6, 8)
    assert topo.actors_of_inference(4) == (7,)
    assert topo.describe() == "10 ranks: 2 trainers [0-1], 3 inference [2-4], 5 actors [5-9]"


def test_inline_inference_subscribers_are_all_actors() -> None:
    topo = build(6, trainers=2)
    assert topo.param_subscribers == (2, 3, 4, 5)


@pytest.mark.parametrize("layout", [{}, {"trainers": 1, "inference": 0, "actors": None}, {"actors": 0}])
def test_world_1_is_local(layout: dict[str, int | None]) -> None:
    topo = build(1, **layout)
    assert topo.local and topo.role_of(0) == "trainer" and topo.is_leader(0)
    assert topo.trainer_of(0) == 0 and topo.inference_of(0) is None and topo.param_subscribers == ()
    assert topo.actors_of_trainer(0) == (0,)
    assert "local" in topo.describe()


@pytest.mark.parametrize(
    "world,layout,needle",
    [
        (
            4,
            {"trainers": 1, "inference": 2, "actors": 5},
            "trainers=1 inference=2 actors=5 = 8 ranks but the world size is 4",
        ),
        (8, {"trainers": 1, "inference": 1, "actors": 2}, "= 4 ranks but the world size is 8"),
        (4, {"trainers": 1, "inference": 3}, "trainers=1 inference=3 = 4 ranks plus at least 1 actor"),
        (2, {"trainers": 2}, "world size is 2"),
        (4, {"trainers": 0}, "layout.trainers=0"),
        (4, {"trainers": -1}, "layout.trainers=-1"),
        (4, {"inference": -2}, "layout.inference=-2"),
        (4, {"actors": -1}, "layout.actors=-1"),
        (3, {"trainers": 1, "inference": 2, "actors": 0}, "zero actors at world size 3"),
        (4, {"trainers": 3, "actors": 1}, "every trainer rank needs at least one actor"),
        (5, {"trainers": 1, "inference": 3, "actors": 1}, "every inference rank needs at least one actor"),
        (1, {"trainers": 1, "inference": 1}, "= 2 ranks but the world size is 1"),
        (1, {"trainers": 1, "actors": 3}, "mpiexec -n 4"),
        (0, {}, "world size must be >= 1"),
    ],
)
def test_bad_layouts_name_the_numbers(world: int, layout: dict[str, int], needle: str) -> None:
    with pytest.raises(TopologyError) as info:
        build(world, **layout)
    assert needle in str(info.value)
    assert isinstance(info.value, ValueError)


def test_role_queries_reject_wrong_ranks() -> None:
    topo = build(4, inference=1)
    with pytest.raises(TopologyError, match="rank 4 is outside the world of 4"):
        topo.role_of(4)
    with pytest.raises(TopologyError, match="rank 1 is an inference rank, not an actor"):
        topo.trainer_of(1)
    with pytest.raises(TopologyError, match="not a trainer"):
        topo.actors_of_trainer(2)
    with pytest.raises(TopologyError, match="not an inference rank"):
        topo.actors_of_inference(0)


def test_topology_is_frozen_and_hashable() -> None:
    topo = build(4)
    assert hash(topo) == hash(build(4))
    with pytest.raises(AttributeError):
        topo.world_size = 5  # type: ignore[misc]


def test_format_ranks() -> None:
    assert format_ranks([]) == ""
    assert format_ranks([3]) == "3"
    assert format_ranks([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_tags_have_schema_companions() -> None:
    data = [t for t in Tag if t in DATA_TAGS]
    assert data, "expected data tags"
    for t in data:
        assert schema_tag(t) == Tag[f"{t.name}_SCHEMA"] == t + SCHEMA_OFFSET
    assert len({int(t) for t in Tag}) == len(list(Tag)), "tag numbers must be unique"
    assert all(0 < int(t) <= 32767 for t in Tag)
    assert schema_tag(950) == 1950 and tag_name(1950) == "1950"
    with pytest.raises(ValueError, match="not a data-plane tag"):
        schema_tag(Tag.CONTROL)
