"""Property-based tests of the config input boundary (Hypothesis, small example budgets for CI).

1. Random ``key.path=value`` override lists over the real schema, applied to a real example config, give a
   config or a :class:`ConfigError` that names the offending key path; never another exception, never a hang.
2. A few of the valid ones, with values that change how a run is built, are run for real (one process, a
   subprocess with a hard timeout): the run completes, or fails with one line naming a key; never a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hpcrl.api import config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "cartpole" / "ppo.yaml"

# ----------------------------------------------------------------------------- the schema's key paths
SECTIONS = {
    f.name: typing.get_type_hints(config.ExperimentConfig)[f.name] for f in dataclasses.fields(config.ExperimentConfig)
}
SYSTEM_KEYS = [
    f"{name}.{f.name}"
    for name, cls in SECTIONS.items()
    if name not in ("environment", "policy", "trainer", "policies", "trainers", "agents", "selfplay")
    for f in dataclasses.fields(cls)
]
SPEC_KEYS = [f"{s}.{k}" for s in ("environment", "policy", "trainer") for k in ("type_", "args")]
ARG_KEYS = [
    "environment.args.id",
    "policy.args.hidden_dim",
    "policy.args.obs_dim",
    "trainer.args.lr",
    "trainer.args.epochs",
    "trainer.args.clip",
    "trainer.args.nonsense",
]
VALID_KEYS = SYSTEM_KEYS + SPEC_KEYS + ARG_KEYS


def _misspell(key: str, data: st.DataObject) -> str:
    parts = key.split(".")
    i = data.draw(st.integers(0, len(parts) - 1))
    word = parts[i]
    j = data.draw(st.integers(0, max(0, len(word) - 1)))
    parts[i] = word[:j] + word[j + 1 :] + data.draw(st.sampled_from(["", "x", "_"]))
    return ".".join(parts)


@st.composite
def key_paths(draw: st.DrawFn) -> str:
    """A valid key, a misspelled one, one nested too deep or not deep enough, or an empty/odd path."""
    key = draw(st.sampled_from(VALID_KEYS))
    kind = draw(st.sampled_from(["valid", "valid", "valid", "misspelled", "deeper", "section", "odd"]))
    if kind == "misspelled":
        return _misspell(key, draw(st.data()))
    if kind == "deeper":
        return f"{key}.{draw(st.sampled_from(['x', 'args', 'type_', '0']))}"
    if kind == "section":
        return key.split(".")[0]
    if kind == "odd":
        return draw(st.sampled_from([".", "..", "actor.", ".actor", "actor..envs_per_actor", "1", "run.dir.x.y"]))
    return key


_SCALARS = st.one_of(
    st.integers(-3, 3),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["auto", "cpu", "cuda", "off", "first", "recreate", "ppo", "gym", "CartPole-v1", "1e3", "0x10"]),
)
VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
RAW = st.sampled_from(
    [
        "",
        "[",
        "{a: ",
        "*x",
        "&a 1",
        "!!python/object/apply:os.system ['true']",
        "a: b: c",
        "- - -",
        ": :",
        "\x00",
        "'",
        "[1, *a]",
    ]
)


@st.composite
def overrides(draw: st.DrawFn) -> list[str]:
    items = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(key_paths())
        if draw(st.integers(0, 5)) == 0:
            raw = draw(RAW)
        else:
            value = draw(VALUES)
            raw = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
            if raw.endswith("\n..."):
                raw = raw[: -len("\n...")]
            raw = raw.removesuffix("...").strip()
        items.append(f"{key}={raw}")
    return items


def _names_a_key(message: str, items: list[str]) -> bool:
    """The message names one of the overrides: its text, or a prefix of its key path (section first)."""
    for item in items:
        if f"override {item!r}" in message:
            return True
        parts = item.partition("=")[0].split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            if prefix and re.search(rf"(^|[\s:]){re.escape(prefix)}(\.|:|\[| )", message):
                return True
    return False


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=overrides())
def test_random_overrides_give_a_config_or_a_config_error_naming_the_key(items: list[str]) -> None:
    try:
        cfg = config.load(EXAMPLE, items)
    except config.ConfigError as e:
        assert _names_a_key(str(e), items), f"{items}: {e}"
        assert "\n" not in str(e), f"{items}: not one line: {e}"
        return
    # what loads also dumps and loads back (the run saves it and every checkpoint stores it)
    again = config.from_dict(config.parse_yaml(config.dump(cfg), "dump"))
    assert config.dump(again) == config.dump(cfg) or _has_nan(config.to_dict(cfg))


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_nan(v) for v in value)
    return False


# ----------------------------------------------------------------------------- real runs
RUN_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "actor.envs_per_actor": st.integers(1, 3),
    "actor.fragment_length": st.integers(1, 24),
    "actor.check_env": st.sampled_from(["first", "always", "off"]),
    "actor.env_failure": st.sampled_from(["fail", "recreate"]),
    "training.batch_size": st.one_of(st.none(), st.integers(1, 4)),
    "training.max_staleness": st.integers(0, 2),
    "training.queue_batches": st.integers(0, 2),
    "training.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:7", "tpu", "gpu0"]),
    "training.nonfinite": st.sampled_from(["skip", "stop"]),
    "run.checkpoint_every_steps": st.integers(0, 3),
    "run.keep_checkpoints": st.integers(1, 3),
    "run.checkpoint_writer": st.sampled_from(["process", "thread", "inline"]),
    "run.trace": st.booleans(),
    "experiment.seed": st.integers(0, 2**32 - 1),
    "policy.type_": st.sampled_from(["actor-critic-separate", "actor-critic-shared", "random", "no-such-policy"]),
    "policy.args.hidden_dim": st.one_of(st.integers(-2, 16), st.sampled_from(["wide", None])),
    "trainer.args.lr": st.one_of(st.floats(-1.0, 0.01), st.sampled_from(["fast", None])),
    "trainer.args.epochs": st.one_of(st.integers(-1, 2), st.sampled_from(["x"])),
    "trainer.args.minibatches": st.integers(0, 3),
    "trainer.args.surprise": st.integers(0, 1),
    "environment.args.id": st.sampled_from(["CartPole-v1", "CartPole-v1", "NoSuchEnv-v0", ""]),
}


@st.composite
def run_overrides(draw: st.DrawFn) -> list[str]:
    keys = draw(st.lists(st.sampled_from(sorted(RUN_VALUES)), min_size=1, max_size=4, unique=True))
    items = []
    for key in keys:
        value = draw(RUN_VALUES[key])
        items.append(f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}")
    return items


@settings(
    max_examples=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(items=run_overrides())
def test_valid_configs_run_or_fail_with_one_line_naming_a_key(
    items: list[str], tmp_path_factory: pytest.TempPathFactory, clean_env: dict[str, str]
) -> None:
    base = ["experiment.total_frames=120", "run.progress=off", "trainer.args.minibatches=1", "actor.envs_per_actor=2"]
    try:
        config.load(EXAMPLE, base + items)
    except config.ConfigError:
        assume(False)  # the load property covers these
    run_dir = tmp_path_factory.mktemp("run")
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrl.run", str(EXAMPLE), f"run.dir={run_dir}", *base, *items],
        env=clean_env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=120,  # the hang guard
    )
    assert "Traceback" not in proc.stderr, f"{items}\n{proc.stderr[-4000:]}"
    if proc.returncode == 0:
        assert "hpcrl run summary" in proc.stdout, f"{items}\n{proc.stdout[-2000:]}"
        return
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hpcrl: ")]
    assert proc.returncode == 2 and len(errors) == 1, f"{items}: rc={proc.returncode}\n{proc.stderr[-4000:]}"
    assert _names_a_key(errors[0], items), f"{items}: {errors[0]}"
