"""Config input boundaries: numeric ranges, non-UTF-8 files, YAML alias bombs (each error names the key or file)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from hpcrl.api import config

BASE = {
    "environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
    "policy": {"type_": "p"},
    "trainer": {"type_": "t"},
}

# (section, key, a value outside its range, the expected range text)
OUT_OF_RANGE = [
    ("experiment", "total_frames", 0, ">= 1"),
    ("experiment", "total_frames", -5, ">= 1"),
    ("experiment", "seed", -1, ">= 0 and <= 4294967295"),
    ("experiment", "seed", 2**32, ">= 0 and <= 4294967295"),
    ("actor", "envs_per_actor", 0, ">= 1"),
    ("actor", "fragment_length", -1, ">= 1"),
    ("actor", "max_env_failures", -1, ">= 0"),
    ("layout", "trainers", 0, ">= 1"),
    ("layout", "inference", -1, ">= 0"),
    ("layout", "actors", 0, ">= 1"),
    ("training", "batch_size", 0, ">= 1"),
    ("training", "max_staleness", -1, ">= 0"),
    ("training", "queue_batches", -2, ">= 0"),
    ("run", "checkpoint_every_steps", -1, ">= 0"),
    ("run", "checkpoint_every_seconds", -0.5, ">= 0"),
    ("run", "keep_checkpoints", 0, ">= 1"),
    ("run", "trace_flush_seconds", 0, "> 0"),
    ("run", "log_interval_seconds", float("nan"), "> 0"),
    ("run", "heartbeat_seconds", -1, ">= 0"),
    ("run", "startup_seconds", 0.0, "> 0"),
    ("run", "torch_threads", 0, ">= 1 and <= 1024"),
    ("run", "torch_threads", 100_000, ">= 1 and <= 1024"),
]


@pytest.mark.parametrize(("section", "key", "value", "expected"), OUT_OF_RANGE)
def test_out_of_range_number_names_the_key_path(section: str, key: str, value: float, expected: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(dict(BASE, **{section: {key: value}}))
    cls = {f.name: f.type for f in dataclasses.fields(config.ExperimentConfig)}[section]
    kind = {f.name: f.type for f in dataclasses.fields(getattr(config, str(cls)))}[key]
    shown = float(value) if kind == "float" else value  # a float field converts 0 to 0.0
    assert str(info.value) == f"{section}.{key}: must be {expected}, got {shown!r}"


def test_every_numeric_system_field_declares_a_range() -> None:
    for cls in (config.Experiment, config.Actor, config.Layout, config.Training, config.Run):
        for f in dataclasses.fields(cls):
            if f.type in ("int", "float", "int | None"):
                assert "ge" in f.metadata, f"{cls.__name__}.{f.name} has no declared range"


def test_range_applies_to_direct_construction_and_boundaries_are_accepted() -> None:
    with pytest.raises(config.ConfigError, match=r"^actor\.fragment_length: must be >= 1, got 0$"):
        config.Actor(fragment_length=0)
    cfg = config.from_dict(
        dict(
            BASE,
            experiment={"total_frames": 1, "seed": 0},
            actor={"envs_per_actor": 1, "fragment_length": 1, "max_env_failures": 0},
            training={"batch_size": None, "max_staleness": 0, "queue_batches": 0},
            run={"heartbeat_seconds": 0, "checkpoint_every_seconds": 0, "keep_checkpoints": 1, "torch_threads": 1},
        )
    )
    assert cfg.experiment.total_frames == 1 and cfg.run.heartbeat_seconds == 0


def test_load_prefixes_the_file_and_overrides_are_checked_too(tmp_path: Path) -> None:
    p = tmp_path / "exp.yaml"
    p.write_text("environment: {type_: gym}\npolicy: {type_: p}\ntrainer: {type_: t}\nactor: {envs_per_actor: 0}\n")
    with pytest.raises(config.ConfigError, match=r"exp\.yaml: actor\.envs_per_actor: must be >= 1, got 0$"):
        config.load(p)
    with pytest.raises(config.ConfigError, match=r"exp\.yaml: run\.keep_checkpoints: must be >= 1, got -3$"):
        config.load(p, ["actor.envs_per_actor=2", "run.keep_checkpoints=-3"])


def test_non_utf8_config_names_the_file_and_the_byte(tmp_path: Path) -> None:
    p = tmp_path / "latin1.yaml"
    p.write_bytes("environment: {type_: gym}\npolicy: {type_: p}\n# café\ntrainer: {type_: t}\n".encode("latin-1"))
    with pytest.raises(config.ConfigError) as info:
        config.load(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}: not UTF-8 text: byte 0xe9 at position 50 (line 3)"), msg


BOMB = "\n".join(
    ["environment:", "  type_: gym", "  args:", "    id: CartPole-v1", f"    l0: &l0 [{', '.join(['lol'] * 9)}]"]
    + [f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    + ["policy: {type_: actor-critic-separate}", "trainer: {type_: ppo}", ""]
)


def test_yaml_alias_bomb_is_refused_naming_the_line(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """A "billion laughs" document: 9**10 values once expanded. It must be refused, not hang the config dump.

    Run as ``python -m hpcrl.run --print-config`` in a subprocess: the hard timeout is the hang guard (without
    the bound, the config dump expands every alias and grows without end).
    """
    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrl.run", str(p), "--print-config"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    err = proc.stderr.strip()
    assert err.startswith(f"hpcrl: config error: {p}: line "), err
    assert f"expands through aliases to more than {config.MAX_YAML_VALUES:,} values" in err


def test_recursive_alias_and_alias_bomb_in_an_override_are_refused(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match=r"^src: line 1: alias \*a refers to a value that contains it"):
        config.parse_yaml("a: &a [1, *a]", "src")
    p = tmp_path / "exp.yaml"
    p.write_text("environment: {type_: gym}\npolicy: {type_: p}\ntrainer: {type_: t}\n")
    flow = "[&a [x,x,x,x,x,x,x,x,x,x], " + ", ".join(
        f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(6)
    )
    with pytest.raises(config.ConfigError, match=r"^override 'environment\.args\.big=\[.*: line 1: the document"):
        config.load(p, [f"environment.args.big={flow}]"])


def test_ordinary_yaml_with_and_without_aliases_loads_as_before(tmp_path: Path) -> None:
    import yaml
    from conftest import REPO

    for path in sorted((REPO / "examples").glob("*/*.yaml")):
        text = path.read_text()
        assert config.parse_yaml(text, str(path)) == yaml.safe_load(text), path
    doc = "base: &b {hidden_dim: 16, lr: 0.001}\nuse: {<<: *b, lr: 0.01}\nlist: [*b, *b]\n"
    assert config.parse_yaml(doc, "merge") == yaml.safe_load(doc)
    assert config.parse_yaml("", "empty") is None
    assert config.parse_yaml(b"a: caf\xc3\xa9", "bytes") == {"a": "café"}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("x: 2001-02-30", "not valid YAML: ValueError: day is out of range for month"),
        ("[" * 3000 + "]" * 3000, "not valid YAML: nested too deeply"),
        ("a: [1,\n", "not valid YAML"),
    ],
    ids=["bad-timestamp", "deep", "unclosed"],
)
def test_unbuildable_yaml_is_a_config_error(doc: str, expected: str) -> None:
    with pytest.raises(config.ConfigError, match="^src: " + expected.replace("[", r"\[")):
        config.parse_yaml(doc, "src")
