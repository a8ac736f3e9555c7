"""Multi-policy config keys: ``policies``, ``trainers``, ``agents`` (the rules and their messages)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from hpcrl.api import config

ENV = {"type_": "quickstart-multiagent"}
AC = {"type_": "actor-critic-separate", "args": {"hidden_dim": 8}}


def _multi(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "environment": ENV,
        "policies": {"learner": copy.deepcopy(AC), "opponent": {"type_": "random"}},
        "trainers": {"learner": {"type_": "ppo"}},
        "agents": [{"match": 0, "policy": "learner"}, {"match": ".*", "policy": "opponent"}],
    }
    data.update(changes)
    return data


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data)
    return str(info.value)


def test_single_policy_form_is_unchanged() -> None:
    cfg = config.from_dict({"environment": ENV, "policy": AC, "trainer": {"type_": "ppo"}})
    assert not cfg.multi_policy and cfg.single_policy.type_ == "actor-critic-separate"
    text = config.dump(cfg)
    assert list(config.parse_yaml(text, "dump"))[:3] == ["environment", "policy", "trainer"]  # same dump as before
    assert not {"policies", "trainers", "agents"} & set(config.parse_yaml(text, "dump"))
    assert config.from_dict(config.parse_yaml(text, "dump")) == cfg


def test_multi_policy_form_round_trips() -> None:
    cfg = config.from_dict(_multi())
    assert cfg.multi_policy and cfg.policy is None and cfg.trainer is None
    assert isinstance(cfg.policies["learner"], config.PolicyEntry) and cfg.policies["learner"].init_from is None
    assert isinstance(cfg.trainers["learner"], config.Trainer)
    assert cfg.agents[0] == config.AgentMatch(0, "learner") and cfg.agents[1].match == ".*"
    text = config.dump(cfg)
    assert not {"policy", "trainer"} & set(config.parse_yaml(text, "dump"))
    assert config.from_dict(config.parse_yaml(text, "dump")) == cfg


def test_both_forms_is_an_error() -> None:
    msg = _error(_multi(policy=AC))
    assert msg.startswith("policy: give either the single policy/trainer keys or policies/trainers/agents")


def test_neither_form_names_the_missing_key() -> None:
    assert _error({"environment": ENV, "trainer": {"type_": "ppo"}}).startswith("policy: missing required key")
    assert _error({"environment": ENV, "policy": AC}).startswith("trainer: missing required key")


@pytest.mark.parametrize("key", ["trainers", "agents"])
def test_multi_keys_without_policies(key: str) -> None:
    data = {"environment": ENV, "policy": AC, "trainer": {"type_": "ppo"}, key: _multi()[key]}
    assert _error(data).startswith(f"{key}: only with policies")


def test_trainer_for_a_missing_policy() -> None:
    msg = _error(_multi(trainers={"lerner": {"type_": "ppo"}}))
    assert msg == "trainers.lerner: no policy named 'lerner' in policies (expected one of: 'learner', 'opponent')"


def test_agents_unknown_policy() -> None:
    msg = _error(_multi(agents=[{"match": 0, "policy": "learner"}, {"match": 1, "policy": "oponent"}]))
    assert msg == "agents[1].policy: unknown policy 'oponent'; expected one of: 'learner', 'opponent'"


def test_agents_bad_regex_and_bad_index() -> None:
    assert _error(_multi(agents=[{"match": "(0", "policy": "learner"}])).startswith(
        "agents[0].match: bad regular expression '(0'"
    )
    assert _error(_multi(agents=[{"match": -1, "policy": "learner"}])) == (
        "agents[0].match: an agent index must be >= 0, got -1"
    )
    assert _error(_multi(agents=[{"match": True, "policy": "learner"}])).startswith("agents[0].match: expected")


def test_agents_required_and_strict() -> None:
    assert _error(_multi(agents=[])).startswith("agents: missing required key")
    assert _error(_multi(agents=[{"match": 0}])) == "agents[0].policy: missing required key"
    assert _error(_multi(agents=[{"match": 0, "policy": "learner", "team": 1}])).startswith(
        "agents[0].team: unknown key"
    )


def test_policy_entries_are_strict() -> None:
    data = _multi()
    data["policies"]["learner"]["typ_"] = "x"
    assert _error(data).startswith("policies.learner.typ_: unknown key")
    data = _multi()
    data["trainers"]["learner"] = {"type_": "ppo", "arg": {}}
    assert _error(data).startswith("trainers.learner.arg: unknown key (did you mean 'args'?)")
    data = _multi()
    data["policies"]["learner"]["init_from"] = 3
    assert _error(data).startswith("policies.learner.init_from: expected str | null")


def test_policy_names_must_be_directory_names() -> None:
    data = _multi()
    data["policies"]["a/b"] = {"type_": "random"}
    assert _error(data).startswith("policies.a/b: bad policy name 'a/b'")
    data = _multi()
    data["policies"][".."] = {"type_": "random"}
    assert _error(data).startswith("policies...: bad policy name '..'")


def test_first_match_wins_and_regex_matches_the_whole_index() -> None:
    cfg = config.from_dict(
        _multi(
            agents=[
                {"match": 1, "policy": "opponent"},
                {"match": "1.*", "policy": "learner"},  # 1 is taken by the entry above; 10, 11 match here
                {"match": "[0-9]", "policy": "learner"},
                {"match": ".*", "policy": "opponent"},
            ]
        )
    )
    got = config.policy_of_agents(cfg, 12)
    assert got[:3] == ["learner", "opponent", "learner"]
    assert got[10:] == ["learner", "learner"]
    assert (
        config.policy_of_agents(config.from_dict({"environment": ENV, "policy": AC, "trainer": {"type_": "ppo"}}), 3)
        == ["default"] * 3
    )


def test_an_agent_matched_by_nothing_is_named() -> None:
    cfg = config.from_dict(_multi(agents=[{"match": 0, "policy": "learner"}, {"match": "[2-9]", "policy": "opponent"}]))
    with pytest.raises(
        config.ConfigError, match=re.escape("agents: agent 1 of env X (agent_count 3) is matched by no")
    ):
        config.policy_of_agents(cfg, 3, "env X")


def test_single_policy_parts_refuse_a_multi_policy_config() -> None:
    cfg = config.from_dict(_multi())
    with pytest.raises(config.ConfigError, match="policy: this is a multi-policy config"):
        cfg.single_policy  # noqa: B018


def test_multi_policy_override_from_the_command_line(tmp_path: Any) -> None:
    import yaml

    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_multi()))
    cfg = config.load(path, ["policies.opponent.init_from=some/dir", "agents=[{match: 0, policy: learner}]"])
    assert cfg.policies["opponent"].init_from == "some/dir" and len(cfg.agents) == 1
