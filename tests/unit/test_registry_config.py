from __future__ import annotations

from collections import Counter, OrderedDict, deque
from pathlib import Path

import pytest

from hpcrl.api import config
from hpcrl.api.environment import make as make_env
from hpcrl.api.registry import Registry, RegistryError


def test_registry_duplicate_and_unknown():
    r: Registry[object] = Registry("widget")
    r.register("a", dict)
    r.register("a", dict)  # same factory twice is fine
    with pytest.raises(RegistryError, match="already registered"):
        r.register("a", list)
    with pytest.raises(RegistryError, match=r"unknown widget 'aa'.*Did you mean 'a'.*Registered widgets: a"):
        r.get("aa")


def test_registry_lazy_entry():
    r: Registry[object] = Registry("thing")
    r.register("od", "collections:OrderedDict")
    assert r.make("od", x=1) == {"x": 1}


def test_unknown_env_lists_known():
    with pytest.raises(RegistryError, match="Registered environments: .*gym"):
        make_env(config.Environment(type_="gymm"))


BASE = {
    "environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
    "policy": {"type_": "p"},
    "trainer": {"type_": "t"},
}


def test_config_defaults_and_types():
    cfg = config.from_dict(dict(BASE, experiment={"total_frames": 1e5}))
    assert cfg.experiment.total_frames == 100000 and isinstance(cfg.experiment.total_frames, int)
    assert cfg.layout.actors is None and cfg.run_dir == Path("runs/hpcrl")
    with pytest.raises(config.ConfigError, match=r"^experiment\.seed: expected an integer, got 'x'"):
        config.from_dict(dict(BASE, experiment={"seed": "x"}))
    with pytest.raises(config.ConfigError, match=r"^policy\.type_: missing required key"):
        config.from_dict(dict(BASE, policy={}))
    with pytest.raises(config.ConfigError, match=r"run\.progress: expected one of"):
        config.from_dict(dict(BASE, run={"progress": "fancy"}))
    with pytest.raises(config.ConfigError, match=r"^bogus: unknown key"):
        config.from_dict(dict(BASE, bogus=1))
    with pytest.raises(config.ConfigError, match=r"actor\.envs_per_actor: expected an integer, got True"):
        config.from_dict(dict(BASE, actor={"envs_per_actor": True}))


def test_stop_at_frames_stops_an_invocation_not_the_run():
    from hpcrl.runtime.budget import budget_reached

    cfg = config.from_dict(dict(BASE, experiment={"total_frames": 1000}, run={"stop_at_frames": 300}))
    assert [budget_reached(f, cfg) for f in (299, 300, 999, 1000)] == [
        None,
        "run.stop_at_frames reached",
        "run.stop_at_frames reached",
        "total_frames reached",
    ]
    off = config.from_dict(dict(BASE, experiment={"total_frames": 1000}))
    assert off.run.stop_at_frames == 0 and budget_reached(999, off) is None
    with pytest.raises(config.ConfigError, match=r"run\.stop_at_frames: must be >= 0, got -1"):
        config.from_dict(dict(BASE, run={"stop_at_frames": -1}))


def test_config_roundtrip_and_overrides(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("environment: {type_: gym, args: {id: CartPole-v1}}\npolicy: {type_: p}\ntrainer: {type_: t}\n")
    cfg = config.load(p, ["experiment.total_frames=5000", "policy.args.hidden_dim=32", "layout.actors=null"])
    assert cfg.experiment.total_frames == 5000 and cfg.policy.args == {"hidden_dim": 32}
    again = config.from_dict(__import__("yaml").safe_load(config.dump(cfg)))
    assert again == cfg
    with pytest.raises(
        config.ConfigError, match=r"exp\.yaml: experiment\.totl_frames: unknown key \(did you mean 'total_frames'"
    ):
        config.load(p, ["experiment.totl_frames=1"])
    with pytest.raises(config.ConfigError, match="expected key.path=value"):
        config.load(p, ["nonsense"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


def test_yaml_is_safe_loaded(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("environment: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(p)


def test_registry_module_attr_names_and_bad_ones():
    r: Registry[object] = Registry("thing")
    assert r.make("collections:OrderedDict", a=1) == {"a": 1}
    with pytest.raises(RegistryError, match="cannot load 'nope.module:X'"):
        r.get("nope.module:X")
    assert "nope.module:X" not in r


def test_registry_strict_get_resolves_only_registered_names(tmp_path, monkeypatch):
    """``allow_import=False`` (used for names read from a checkpoint) never imports a module the name chooses."""
    name = "hpcrl_registry_strict_probe"
    marker = tmp_path / "imported"
    (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass C: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    r: Registry[object] = Registry("thing")
    with pytest.raises(RegistryError, match=rf"thing not registered in this process: '{name}:C'"):
        r.get(f"{name}:C", allow_import=False)
    with pytest.raises(RegistryError, match="not registered in this process: 'subprocess:Popen'"):
        r.get("subprocess:Popen", allow_import=False)  # an already imported module is no exception
    assert not marker.exists() and f"{name}:C" not in r and "subprocess:Popen" not in r
    # registered names resolve, lazy ones too; a "module:attr" name equal to a registered target resolves
    r.register("od", "collections:OrderedDict")
    r.register("counter", Counter)
    assert r.get("od", allow_import=False) is OrderedDict
    assert r.get("collections:OrderedDict", allow_import=False) is OrderedDict
    assert r.get("collections:Counter", allow_import=False) is Counter
    with pytest.raises(RegistryError, match="not registered in this process: 'collections:deque'"):
        r.get("collections:deque", allow_import=False)
    assert r.get("collections:deque") is deque  # the default still imports (a config the user runs)


def test_config_imports_list(tmp_path):
    cfg = config.from_dict(dict(BASE, experiment={"imports": ["examples.quickstart.env"]}))
    assert cfg.experiment.imports == ["examples.quickstart.env"]
    with pytest.raises(config.ConfigError, match=r"experiment\.imports\[1\]: expected a string"):
        config.from_dict(dict(BASE, experiment={"imports": ["a", 3]}))


def test_yaml_off_is_the_literal_off(tmp_path):
    p = tmp_path / "exp.yaml"
    p.write_text("environment: {type_: gym}\npolicy: {type_: p}\ntrainer: {type_: t}\nrun: {progress: off}\n")
    assert config.load(p).run.progress == "off"
    assert config.load(p, ["run.progress=off", "actor.check_env=off"]).actor.check_env == "off"


def test_configuration_doc_is_in_sync():
    from conftest import REPO

    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == config.reference_markdown(), "regenerate: python -m hpcrl.api.config > docs/configuration.md"
    for cls in (config.Experiment, config.Actor, config.Layout, config.Training, config.Run):
        import dataclasses

        missing = [f.name for f in dataclasses.fields(cls) if f.name not in config.field_docs(cls)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
