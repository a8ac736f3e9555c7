"""``layout.trainers`` of a multi-policy config and the trainer groups it gives (pure: no MPI)."""

from __future__ import annotations

from typing import Any

import pytest

from hpcrl.api import config
from hpcrl.api.specs import mpi_refusal, trainer_counts
from hpcrl.comm.topology import Topology, TopologyError

AC = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2}}


def _cfg(trainers: Any = 1, trained: tuple[str, ...] = ("a", "b"), **over: Any) -> config.ExperimentConfig:
    data: dict[str, Any] = {
        "environment": {"type_": "quickstart-multiagent"},
        "policies": {"a": AC, "b": AC, "c": AC},
        "trainers": {n: {"type_": "ppo"} for n in trained},
        "agents": [{"match": ".*", "policy": "a"}],
        "layout": {"trainers": trainers},
    }
    data.update(over)
    return config.from_dict(data)


def test_a_count_means_that_many_ranks_for_every_trained_policy() -> None:
    assert trainer_counts(_cfg()) == {"a": 1, "b": 1}
    assert trainer_counts(_cfg(2)) == {"a": 2, "b": 2}
    assert trainer_counts(_cfg({"b": 3})) == {"a": 1, "b": 3}  # an unnamed trained policy gets 1


def test_a_single_policy_config_keeps_its_count() -> None:
    cfg = config.from_dict(
        {
            "environment": {"type_": "gym"},
            "policy": {"type_": "p"},
            "trainer": {"type_": "t"},
            "layout": {"trainers": 3},
        }
    )
    assert trainer_counts(cfg) == {"default": 3}
    with pytest.raises(config.ConfigError, match=r"^layout\.trainers: a mapping policy -> count is for multi-policy"):
        config.from_dict(
            {
                "environment": {"type_": "gym"},
                "policy": {"type_": "p"},
                "trainer": {"type_": "t"},
                "layout": {"trainers": {"default": 2}},
            }
        )


@pytest.mark.parametrize(
    ("trainers", "message"),
    [
        ({"c": 1}, r"^layout\.trainers\.c: policy 'c' is frozen \(it has no entry in trainers\)"),
        ({"x": 1}, r"^layout\.trainers\.x: no policy named 'x' in policies \(expected one of: 'a', 'b', 'c'\)"),
        ({"a": 0}, r"^layout\.trainers\.a: must be >= 1, got 0"),
        ({"a": "two"}, r"^layout\.trainers: expected int \| dict, got"),
        (0, r"^layout\.trainers: must be >= 1, got 0"),
    ],
)
def test_a_bad_mapping_names_the_key(trainers: Any, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        _cfg(trainers)


def test_trainer_groups_are_blocks_in_policy_order_and_every_actor_feeds_each() -> None:
    topo = Topology.build(config.Layout(), 7, groups=trainer_counts(_cfg({"a": 2, "b": 1})))
    assert topo.trainers == (0, 1, 2) and topo.actors == (3, 4, 5, 6)
    assert topo.group_ranks("a") == (0, 1) and topo.group_ranks("b") == (2,)
    assert [topo.trainer_of(r, "a") for r in topo.actors] == [0, 1, 0, 1]
    assert [topo.trainer_of(r, "b") for r in topo.actors] == [2, 2, 2, 2]
    assert topo.actors_of_trainer(1) == (4, 6) and topo.actors_of_trainer(2) == topo.actors
    assert topo.group_of(2) == "b" and topo.group_of(3) is None
    with pytest.raises(TopologyError, match=r"no trainer ranks for policy 'c' \(trainer groups: a, b\)"):
        topo.group_ranks("c")
    with pytest.raises(TopologyError, match="every trainer rank needs at least one actor"):
        Topology.build(config.Layout(), 4, groups={"a": 2, "b": 1})  # 3 trainers, 1 actor


def test_what_mpi_does_not_run_yet_is_named() -> None:
    assert mpi_refusal(_cfg()) is None
    assert mpi_refusal(_cfg(layout={"inference": 2})) is None  # inference ranks serve every policy
    assert str(mpi_refusal(_cfg(trained=()))).startswith("trainers: a multi-policy config without any trained")
    assert mpi_refusal(_cfg(run={"save_best": True, "eval_episodes": 2})) is None  # evaluation runs on actor 0
