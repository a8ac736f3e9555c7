"""Experiment configuration: frozen dataclasses, one per concern, loaded strictly from YAML.

A YAML file maps onto :class:`ExperimentConfig`; every section is optional except
``environment``, ``policy`` and ``trainer``. Unknown keys, wrong types and missing
required keys raise :class:`ConfigError` naming the key path, before any communication.

Examples:
    >>> cfg = from_dict({"environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
    ...                  "policy": {"type_": "actor-critic-separate"},
    ...                  "trainer": {"type_": "ppo"}})
    >>> cfg.actor.envs_per_actor
    8
    >>> from_dict({"environment": {"type_": "gym"}, "policy": {"type_": "p"}, "trainer": {"type_": "t"},
    ...            "actor": {"envs_per_actr": 2}})
    Traceback (most recent call last):
    ...
    hpcrl.api.config.ConfigError: actor.envs_per_actr: unknown key (did you mean 'envs_per_actor'?); ...
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ConfigError",
    "Environment",
    "Policy",
    "Trainer",
    "Experiment",
    "Actor",
    "Layout",
    "Training",
    "Run",
    "ExperimentConfig",
    "from_dict",
    "to_dict",
    "load",
    "dump",
    "apply_overrides",
]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type (message names the key path)."""


# ============================================================== component specs
@dataclass(frozen=True)
class Environment:
    """Which environment to build: a registered name plus keyword arguments."""

    type_: str
    """Registered environment name, e.g. ``gym`` or ``quickstart-multiagent``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the environment's constructor."""


@dataclass(frozen=True)
class Policy:
    """Which policy to build: a registered name plus keyword arguments."""

    type_: str
    """Registered policy name, e.g. ``actor-critic-separate``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the policy's constructor."""


@dataclass(frozen=True)
class Trainer:
    """Which trainer to build: a registered name plus keyword arguments (the policy is passed first)."""

    type_: str
    """Registered trainer name, e.g. ``ppo``."""
    args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the trainer's constructor."""


# ============================================================== system sections
@dataclass(frozen=True)
class Experiment:
    """What to run and for how long."""

    name: str = "hpcrl"
    """Experiment name; the default run directory is ``runs/<name>``."""
    seed: int = 1
    """Base random seed; each env, rank and role derives its own seed from it."""
    total_frames: int = 100_000
    """Stop after this many environment steps, summed over all actors."""
    imports: list[str] = field(default_factory=list)
    """Python modules every rank imports first, so user envs/policies/trainers register themselves
    (e.g. ``[examples.quickstart.env]``)."""


@dataclass(frozen=True)
class Actor:
    """How actor ranks step their environments."""

    envs_per_actor: int = 8
    """Environments each actor rank steps."""
    fragment_length: int = 128
    """Steps per trajectory fragment sent to the trainer (T)."""
    ring_halves: bool = True
    """With remote inference, split the envs in two halves: one steps while the other waits for actions."""
    check_env: Literal["first", "always", "off"] = "first"
    """Full checks of env results against the declared spaces: the first 100 steps of each env, every step,
    or never. Shapes and dtypes are checked on every step whatever this says; ``first`` and ``always`` also
    check float observations and rewards for NaN/Inf on every step."""
    env_failure: Literal["fail", "recreate"] = "fail"
    """When an env raises in reset/step: stop the run, or recreate the env and drop its partial episode."""
    max_env_failures: int = 3
    """With ``recreate``: give up after this many consecutive failures of one env."""


@dataclass(frozen=True)
class Layout:
    """How MPI ranks are split into roles (see :mod:`hpcrl.comm.topology`)."""

    trainers: int = 1
    """Trainer ranks (rank 0 is the trainer leader)."""
    inference: int = 0
    """Inference ranks; 0 means every actor runs the policy inline."""
    actors: int | None = None
    """Actor ranks; ``None`` takes every remaining rank."""


@dataclass(frozen=True)
class Training:
    """How trainer ranks form batches and synchronise."""

    batch_size: int | None = None
    """Trajectories (env-agent sequences of ``fragment_length`` steps) per trainer step and trainer rank;
    ``None`` = one fragment from every env slot of the actors feeding that trainer."""
    max_staleness: int = 1
    """Drop (and count) fragments produced by a policy more than this many versions old."""
    queue_batches: int = 2
    """Back-pressure: a trainer rank takes in fragments only while fewer than this many batches are queued,
    and actors send fragments in synchronous mode, so an actor whose fragment is not taken in waits instead
    of producing fragments that would go stale (its CPU goes to the trainer). 0 = always take in (no
    back-pressure: surplus fragments queue at the trainer and stale ones are dropped)."""
    grad_backend: Literal["auto", "mpi", "gloo", "nccl"] = "auto"
    """Gradient allreduce over trainer ranks: ``auto`` = nccl on GPU, MPI Allreduce of one flat buffer on CPU."""
    device: str = "auto"
    """Trainer device: ``auto`` (cuda if available), ``cpu`` or ``cuda[:N]``."""
    nonfinite: Literal["skip", "stop"] = "skip"
    """A NaN/Inf loss or gradient: skip the step and count it, or stop the run."""

    def __post_init__(self) -> None:
        for name in ("max_staleness", "queue_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"training.{name}: must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Run:
    """Run directory, checkpoints, traces and progress output."""

    dir: str | None = None
    """Run directory (shared storage on clusters); default ``runs/<experiment.name>``."""
    fresh: bool = False
    """Ignore existing checkpoints in the run directory and start from scratch."""
    stop_at_frames: int = 0
    """Stop this invocation once the run (resumes included) has reached this many env frames, writing a
    checkpoint, so that the next start resumes from there; 0 = run to ``experiment.total_frames``. Unlike a
    smaller ``total_frames`` it does not change the run's length, so schedules (which follow
    ``frames / experiment.total_frames``) are the same as in one uninterrupted run. Use it to split a run
    into chunks (e.g. one per batch job)."""
    checkpoint_every_steps: int = 0
    """Write a checkpoint every N trainer steps (0 = off; one is always written at the end)."""
    checkpoint_every_seconds: float = 600.0
    """Write a checkpoint at least this often in wall time (0 = off)."""
    keep_checkpoints: int = 3
    """Keep the newest K checkpoints."""
    on_save_error: Literal["stop", "continue"] = "stop"
    """A checkpoint that cannot be written: stop the run (after logging), or log and continue."""
    checkpoint_writer: Literal["process", "thread", "inline"] = "process"
    """Who writes periodic checkpoints. ``process``: the trainer copies the state into shared memory
    and a helper process writes it (the trainer pauses only for the copy; Linux, else ``thread``).
    ``thread``: a thread of the trainer process writes a copy (no extra process, but it competes with
    the trainer for the GIL). ``inline``: the trainer writes and waits. With a background writer a
    failed write is reported, and ``on_save_error`` applied, at the next trainer step; the final and
    stop checkpoints are always written before the run ends."""
    trace: bool = True
    """Write per-rank HDF5 traces (episodes, trainer stats, timings)."""
    trace_flush_seconds: float = 5.0
    """Flush traces at least this often: a crash loses at most this interval."""
    log_interval_seconds: float = 5.0
    """Seconds between progress log lines."""
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    """Progress output on rank 0: a live bar on terminals (auto), log lines, or nothing."""
    heartbeat_seconds: float = 120.0
    """A rank silent this long is declared hung and the job is aborted naming it (0 = off)."""
    startup_seconds: float = 600.0
    """A rank that has not reported at all this long after start (imports, model build, restore) is declared
    hung; silence is counted with ``heartbeat_seconds`` only from a rank's first report."""
    torch_threads: int = 1
    """torch intra-op threads per rank."""

    def __post_init__(self) -> None:
        if self.stop_at_frames < 0:
            raise ConfigError(f"run.stop_at_frames: must be >= 0 (0 = off), got {self.stop_at_frames}")


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment, as one YAML file."""

    environment: Environment
    """Environment spec."""
    policy: Policy
    """Policy spec."""
    trainer: Trainer
    """Trainer spec."""
    experiment: Experiment = field(default_factory=Experiment)
    """Name, seed and length of the run."""
    actor: Actor = field(default_factory=Actor)
    """Actor settings."""
    layout: Layout = field(default_factory=Layout)
    """Rank layout."""
    training: Training = field(default_factory=Training)
    """Trainer-role settings."""
    run: Run = field(default_factory=Run)
    """Storage and output settings."""

    @property
    def run_dir(self) -> Path:
        """The run directory this config writes to."""
        return Path(self.run.dir) if self.run.dir else Path("runs") / self.experiment.name


# ============================================================== strict conversion
_NoneType = type(None)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(tp))
    if tp is _NoneType:
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if isinstance(value, bool):  # YAML 1.1 reads off/no/on/yes as booleans
            spellings = ("off", "no", "false") if not value else ("on", "yes", "true")
            matches = [a for a in allowed if a in spellings]
            if len(matches) == 1:
                return matches[0]
        if value in allowed and not isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected one of {_type_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is _NoneType:
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, path)  # type: ignore[arg-type]
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({type(value).__name__})")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r} ({type(value).__name__})")
        for k in value:
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {k!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r} ({type(value).__name__})")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 1e6 in YAML is a float
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r} ({type(value).__name__})")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{path}: expected a number, got {value!r} ({type(value).__name__})")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{path}: expected a string, got {value!r} ({type(value).__name__})")
    raise ConfigError(f"{path}: unsupported config type {tp!r}")  # pragma: no cover


def _from_dict(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {data!r} ({type(data).__name__})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key{hint}; expected one of: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], where)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required key")
    return cls(**kwargs)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from plain data, strictly.

    Raises:
        ConfigError: unknown key, wrong type or missing key (the message names the key path).
    """
    return _from_dict(ExperimentConfig, data, "")  # type: ignore[no-any-return]


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (round-trips through :func:`from_dict`)."""
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/collections).

    Raises:
        ConfigError: an override without ``=`` or one that descends into a non-mapping.
    """
    import yaml

    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


def load(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a YAML experiment file (``yaml.safe_load``) with optional overrides.

    Raises:
        ConfigError: the file is missing, is not YAML, or does not fit the schema.
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror or e})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def dump(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML text (saved with the run and in every checkpoint)."""
    import yaml

    return str(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a config dataclass (read from its source)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def reference_markdown() -> str:
    """Markdown reference of every config key (``docs/configuration.md`` is generated from this)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `hpcrl/api/config.py` by `python -m hpcrl.api.config` (a test keeps it in sync).",
        "Every key can be set in the YAML file or overridden on the command line as `section.key=value`.",
        "Unknown keys, wrong types and missing required keys are errors that name the key path.",
        "",
    ]
    hints = typing.get_type_hints(ExperimentConfig)
    for top in dataclasses.fields(ExperimentConfig):
        cls = hints[top.name]
        lines += [f"## `{top.name}`", "", (cls.__doc__ or "").strip(), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        sub_hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = repr(f.default_factory())
            else:
                default = "required"
            tname = _type_name(sub_hints[f.name]).replace("|", "\\|")
            lines.append(f"| `{top.name}.{f.name}` | {tname} | `{default}` | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference_markdown())
