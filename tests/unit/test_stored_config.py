"""Which entries of a stored config would make loading import or call code the file chose."""

from __future__ import annotations

from hpcrl.api import config
from hpcrl.storage.stored_config import unregistered_entries


def _cfg(env_args, policy_args=None, imports=()):
    return config.from_dict(
        {
            "environment": {"type_": "gym", "args": env_args},
            "policy": {"type_": "random", "args": policy_args or {}},
            "trainer": {"type_": "made:Up"},  # never built when loading a policy
            "experiment": {"imports": list(imports)},
        }
    )


def test_module_attr_arguments_are_found_with_their_key_path():
    cfg = _cfg(
        {"id": "CartPole-v1", "wrappers": ["ClipAction", {"type": "evil.mod:Wrap", "args": {"x": "ok"}}]},
        {"device": "cuda:0", "note": "ALE/Pong-v5", "deep": [{"f": "os:system"}]},
    )
    assert unregistered_entries(cfg, environment=True) == [
        "policy.args.deep[0].f 'os:system'",
        "environment.args.wrappers[1].type 'evil.mod:Wrap'",
    ]
    assert unregistered_entries(cfg, environment=False) == ["policy.args.deep[0].f 'os:system'"]


def test_imports_count_only_for_the_environment_and_only_when_not_imported():
    cfg = _cfg({"id": "CartPole-v1"}, imports=["json", "hpcrl_surely_not_imported_module"])
    assert unregistered_entries(cfg, environment=True) == ["experiment.imports[1] 'hpcrl_surely_not_imported_module'"]
    assert unregistered_entries(cfg, environment=False) == []
    assert unregistered_entries(_cfg({"id": "CartPole-v1"}), environment=True) == []


def test_a_stored_config_that_expands_through_aliases_is_refused_not_expanded(tmp_path, caplog):
    """A checkpoint's config attribute is text anyone who can write the file chooses: an alias bomb there
    must be refused by loading and by the resume's spec comparison, never expanded."""
    import pytest

    from hpcrl.learning.checkpointing import spec_diff
    from hpcrl.storage.stored_config import read_stored_config
    from hpcrl.storage.tree import CheckpointError
    from tests.unit.test_config_input import BOMB

    file = tmp_path / "ckpt-000000001.h5"
    with pytest.raises(CheckpointError, match=r"stored config.*expands through aliases"):
        read_stored_config(file, {"config": BOMB})
    mine = config.dump(_cfg({"id": "CartPole-v1"}))
    with caplog.at_level("WARNING"):
        assert spec_diff(BOMB, mine, file.name) is None
    assert "cannot compare the stored config of ckpt-000000001.h5" in caplog.text
    assert "expands through aliases" in caplog.text
