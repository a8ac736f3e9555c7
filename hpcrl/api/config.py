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

import contextlib
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from hpcrl.api.errors import ConfigError
from hpcrl.api.selfplay_spec import SelfPlay, check_selfplay
from hpcrl.api.specs import AgentMatch, Environment, Policy, PolicyEntry, Trainer, trainer_counts
from hpcrl.api.yaml_input import MAX_YAML_VALUES, parse_yaml

__all__ = [
    "ConfigError",
    "Environment",
    "Policy",
    "Trainer",
    "PolicyEntry",
    "AgentMatch",
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
    "policy_of_agents",
    "parse_yaml",
    "MAX_YAML_VALUES",
    "building",
]


# ============================================================== numeric bounds
def _bounds(ge: float | None = None, gt: float | None = None, le: float | None = None) -> dict[str, float | None]:
    """Field metadata: the allowed range of a numeric field (``None`` values of optional fields are exempt)."""
    return {"ge": ge, "gt": gt, "le": le}


def _bound_text(meta: Any) -> str:
    """``>= 1``, ``> 0``, ``>= 1 and <= 1024``: the range declared by :func:`_bounds` (messages, reference)."""
    ge, gt, le = meta.get("ge"), meta.get("gt"), meta.get("le")
    parts = []
    if ge is not None:
        parts.append(f">= {ge:g}" if isinstance(ge, float) else f">= {ge}")
    if gt is not None:
        parts.append(f"> {gt:g}" if isinstance(gt, float) else f"> {gt}")
    if le is not None:
        parts.append(f"<= {le:g}" if isinstance(le, float) else f"<= {le}")
    return " and ".join(parts)


def _check_bounds(value: Any, f: dataclasses.Field[Any], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` if ``value`` is outside the range declared on field ``f``."""
    meta = f.metadata
    if "ge" not in meta or value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    ge, gt, le = meta["ge"], meta["gt"], meta["le"]
    ok = not (isinstance(value, float) and math.isnan(value))
    ok = ok and (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le)
    if not ok:
        raise ConfigError(f"{where}: must be {_bound_text(meta)}, got {value!r}")


class _Section:
    """Base of the config sections: checks every field's declared range when an instance is built."""

    _path: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            _check_bounds(getattr(self, f.name), f, f"{self._path}.{f.name}" if self._path else f.name)


# ============================================================== system sections
@dataclass(frozen=True)
class Experiment(_Section):
    """What to run and for how long."""

    _path: ClassVar[str] = "experiment"

    name: str = "hpcrl"
    """Experiment name; the default run directory is ``runs/<name>``."""
    seed: int = field(default=1, metadata=_bounds(ge=0, le=2**32 - 1))
    """Base random seed; each env, rank and role derives its own seed from it."""
    total_frames: int = field(default=100_000, metadata=_bounds(ge=1))
    """Stop after this many environment steps, summed over all actors (a resumed run counts those of its
    checkpoint). Under MPI the trainer leader splits the steps left over the actor ranks at start, and each
    actor stops at its share to within one step of its envs; a run steps at most ``envs_per_actor - 1`` frames
    per actor rank more than this (a one-process run at most ``envs_per_actor - 1``), and its final checkpoint
    counts every frame stepped. A stop for another reason (SIGTERM) saves the frames reported so far."""
    imports: list[str] = field(default_factory=list)
    """Python modules every rank imports first, so user envs/policies/trainers register themselves
    (e.g. ``[examples.quickstart.env]``)."""


@dataclass(frozen=True)
class Actor(_Section):
    """How actor ranks step their environments."""

    _path: ClassVar[str] = "actor"

    envs_per_actor: int = field(default=8, metadata=_bounds(ge=1))
    """Environments each actor rank steps."""
    fragment_length: int = field(default=128, metadata=_bounds(ge=1))
    """Steps per trajectory fragment sent to the trainer (T)."""
    ring_halves: bool = True
    """With remote inference, split the envs in two halves: one steps while the other waits for actions."""
    check_env: Literal["first", "always", "off"] = "first"
    """Full checks of env results against the declared spaces: the first 100 steps of each env, every step,
    or never. Shapes and dtypes are checked on every step whatever this says; ``first`` and ``always`` also
    check float observations and rewards for NaN/Inf on every step."""
    env_failure: Literal["fail", "recreate"] = "fail"
    """When an env raises in reset/step: stop the run, or recreate the env and drop its partial episode."""
    max_env_failures: int = field(default=3, metadata=_bounds(ge=0))
    """With ``recreate``: give up after this many consecutive failures of one env."""


@dataclass(frozen=True)
class Layout(_Section):
    """How MPI ranks are split into roles (see :mod:`hpcrl.comm.topology`)."""

    _path: ClassVar[str] = "layout"

    trainers: int | dict[str, int] = field(default=1, metadata=_bounds(ge=1))
    """Trainer ranks (rank 0 is the trainer leader). A multi-policy run: ranks per trained policy, as one count
    for each or a mapping policy -> count (an unnamed trained policy gets 1); frozen policies get none."""
    inference: int = field(default=0, metadata=_bounds(ge=0))
    """Inference ranks; 0 means every actor runs the policy inline."""
    weights: Literal["per_node", "flat"] = "per_node"
    """How published weights reach the ranks that run the policy (inference ranks, or actors with inline
    inference): ``per_node`` = the trainer leader sends each publication once per node, to the node's lowest
    such rank, which copies it into a shared-memory window that every such rank of the node reads (one copy
    per node); ``flat`` = the leader sends every publication to every such rank."""
    actors: int | None = field(default=None, metadata=_bounds(ge=1))
    """Actor ranks; ``None`` takes every remaining rank."""
    inference_per_node: int | None = field(default=None, metadata=_bounds(ge=0))
    """Inference ranks per node: when set, the run has this many on every node (this times the number of
    nodes in all) and ``inference`` is not used; the SLURM multi-node templates set 1. ``None`` = use
    ``inference``."""
    placement: Literal["node", "round_robin"] = "node"
    """Where inference ranks go: ``node`` = on every node that has room, each serving the actors of its own
    node (no inference request crosses nodes when every node has one); ``round_robin`` = the ranks after the
    trainers, each serving actors in turn wherever they run (for comparison)."""


@dataclass(frozen=True)
class Training(_Section):
    """How trainer ranks form batches and synchronise."""

    _path: ClassVar[str] = "training"

    batch_size: int | None = field(default=None, metadata=_bounds(ge=1))
    """Trajectories (env-agent sequences of ``fragment_length`` steps) per trainer step and trainer rank;
    ``None`` = one fragment from every env slot of the actors feeding that trainer."""
    max_staleness: int = field(default=1, metadata=_bounds(ge=0))
    """Drop (and count) fragments produced by a policy more than this many versions old."""
    queue_batches: int = field(default=2, metadata=_bounds(ge=0))
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


@dataclass(frozen=True)
class Run(_Section):
    """Run directory, checkpoints, traces and progress output."""

    _path: ClassVar[str] = "run"

    dir: str | None = None
    """Run directory (shared storage on clusters); default ``runs/<experiment.name>``."""
    fresh: bool = False
    """Ignore existing checkpoints in the run directory and start from scratch."""
    stop_at_frames: int = field(default=0, metadata=_bounds(ge=0))
    """Stop this invocation once the run (resumes included) has reached this many env frames, writing a
    checkpoint, so that the next start resumes from there; 0 = run to ``experiment.total_frames``. Unlike a
    smaller ``total_frames`` it does not change the run's length, so schedules (which follow
    ``frames / experiment.total_frames``) are the same as in one uninterrupted run. Use it to split a run
    into chunks (e.g. one per batch job)."""
    checkpoint_every_steps: int = field(default=0, metadata=_bounds(ge=0))
    """Write a checkpoint every N trainer steps (0 = off; one is always written at the end)."""
    checkpoint_every_seconds: float = field(default=600.0, metadata=_bounds(ge=0))
    """Write a checkpoint at least this often in wall time (0 = off)."""
    keep_checkpoints: int = field(default=3, metadata=_bounds(ge=1))
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
    trace_flush_seconds: float = field(default=5.0, metadata=_bounds(gt=0))
    """Flush traces at least this often: a crash loses at most this interval."""
    log_interval_seconds: float = field(default=5.0, metadata=_bounds(gt=0))
    """Seconds between progress log lines."""
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    """Progress output on rank 0: a live bar on terminals (auto), log lines, or nothing."""
    heartbeat_seconds: float = field(default=120.0, metadata=_bounds(ge=0))
    """A rank silent this long is declared hung and the job is aborted naming it (0 = off)."""
    startup_seconds: float = field(default=600.0, metadata=_bounds(gt=0))
    """A rank that has not reported at all this long after start (imports, model build, restore) is declared
    hung; silence is counted with ``heartbeat_seconds`` only from a rank's first report."""
    torch_threads: int = field(default=1, metadata=_bounds(ge=1, le=1024))
    """torch intra-op threads per rank."""
    eval_episodes: int = field(default=0, metadata=_bounds(ge=0))
    """Evaluation during training: finish this many deterministic episodes (``is_evaluation``) of the current
    policy every ``eval_every_frames`` frames, on envs of their own that produce no training samples
    (0 = off). They run on the first actor rank (or the one process), which pauses its training envs
    meanwhile; results go to the trace (``/eval``), the progress line, the run summary and the report."""
    eval_every_frames: int = field(default=100_000, metadata=_bounds(ge=1))
    """Frames (of the run, summed over actors) between evaluations, when ``eval_episodes`` > 0."""
    eval_envs: int | None = field(default=None, metadata=_bounds(ge=1))
    """Environments an evaluation steps side by side; ``None`` = ``eval_episodes`` (each env's first episode
    counts, so short episodes are not favoured). At most ``eval_episodes``, and with inference ranks at most
    ``actor.envs_per_actor``."""
    save_best: bool = False
    """With evaluation on: keep ``checkpoints/best.h5``, the policy with the best mean evaluation return so
    far (same format as the other checkpoints: ``hpcrl.load_policy`` and ``python -m hpcrl.evaluate`` read it;
    a resumed run keeps it and its best return)."""
    tensorboard: bool | str = False
    """Write TensorBoard scalars while the run goes (from rank 0, at the progress-line cadence): ``true`` =
    ``RUN_DIR/tensorboard``, a string = that directory, ``false`` = off. Needs the ``tensorboard`` extra
    (``pip install 'hpcrl[tensorboard]'``)."""


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment, as one YAML file."""

    environment: Environment
    """Environment spec."""
    policy: Policy | None = None
    """Policy spec of a single-policy run (the policy named ``default``); required unless ``policies`` is given."""
    trainer: Trainer | None = None
    """Trainer spec of a single-policy run; required with ``policy``."""
    policies: dict[str, PolicyEntry] = field(default_factory=dict)
    """Multi-policy run: policy name -> spec. Names are letters, digits, ``_``, ``-`` and ``.`` (they name the
    checkpoint directory ``RUN_DIR/checkpoints/<name>``). Give either ``policy``/``trainer`` or
    ``policies``/``trainers``/``agents``, not both (see docs/multipolicy.md)."""
    trainers: dict[str, Trainer] = field(default_factory=dict)
    """Multi-policy run: policy name -> its trainer spec. A policy without a trainer is frozen: it acts but is
    never trained and its version never changes."""
    agents: list[AgentMatch] = field(default_factory=list)
    """Multi-policy run: which policy acts for which agent, as a list of ``{match, policy}``; the first entry
    whose ``match`` fits an agent's index wins, and an agent that no entry matches is an error."""
    selfplay: SelfPlay | None = None
    """Multi-policy run: self-play, the opponent agents play snapshots of a trained policy (``None`` = off)."""
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

    def __post_init__(self) -> None:
        _check_policies(self)
        check_selfplay(self)
        trainer_counts(self)  # layout.trainers: a mapping names trained policies

    @property
    def single_policy(self) -> Policy:
        """The ``policy`` of a single-policy config (ConfigError naming ``policy`` for a multi-policy one)."""
        if self.policy is None:
            raise ConfigError(_MULTI_HERE.format("policy"))
        return self.policy

    @property
    def single_trainer(self) -> Trainer:
        """The ``trainer`` of a single-policy config (ConfigError naming ``trainer`` for a multi-policy one)."""
        if self.trainer is None:
            raise ConfigError(_MULTI_HERE.format("trainer"))
        return self.trainer

    @property
    def multi_policy(self) -> bool:
        """Whether this is a multi-policy run (``policies`` given)."""
        return bool(self.policies)

    @property
    def run_dir(self) -> Path:
        """The run directory this config writes to."""
        return Path(self.run.dir) if self.run.dir else Path("runs") / self.experiment.name


_MULTI_HERE = (
    "{}: this is a multi-policy config (policies: ...): its policies are under policies/trainers, not policy/trainer"
)


#: a policy name: it names a directory (``RUN_DIR/checkpoints/<name>``) and appears in stat keys.
_POLICY_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def _check_policies(cfg: ExperimentConfig) -> None:
    """The rules of the policy keys: one form or the other, every name known, every regex valid."""
    if not cfg.policies:
        for key in ("trainers", "agents", "selfplay"):
            if getattr(cfg, key):
                raise ConfigError(f"{key}: only with policies (a multi-policy run); this config has no policies")
        for key in ("policy", "trainer"):
            if getattr(cfg, key) is None:
                raise ConfigError(f"{key}: missing required key (or give policies/trainers/agents)")
        return
    for key in ("policy", "trainer"):
        if getattr(cfg, key) is not None:
            raise ConfigError(
                f"{key}: give either the single policy/trainer keys or policies/trainers/agents, not both"
            )
    names = list(cfg.policies)
    known = ", ".join(repr(n) for n in names)
    for name in names:
        if not _POLICY_NAME.fullmatch(name):
            raise ConfigError(
                f"policies.{name}: bad policy name {name!r}; expected 1-64 letters, digits, '_', '-' or '.', "
                f"not starting with '-' or '.'"
            )
    for name in cfg.trainers:
        if name not in cfg.policies:
            raise ConfigError(f"trainers.{name}: no policy named {name!r} in policies (expected one of: {known})")
    if not cfg.agents:
        raise ConfigError("agents: missing required key: a multi-policy run maps agents to policies")
    for i, entry in enumerate(cfg.agents):
        if entry.policy not in cfg.policies:
            raise ConfigError(f"agents[{i}].policy: unknown policy {entry.policy!r}; expected one of: {known}")
        if isinstance(entry.match, int):
            if entry.match < 0:
                raise ConfigError(f"agents[{i}].match: an agent index must be >= 0, got {entry.match}")
            continue
        try:
            re.compile(entry.match)
        except re.error as e:
            raise ConfigError(f"agents[{i}].match: bad regular expression {entry.match!r}: {e}") from None


def policy_of_agents(cfg: ExperimentConfig, agent_count: int, env: str = "the environment") -> list[str]:
    """The policy name of every agent ``0 .. agent_count - 1`` (first matching ``agents`` entry wins).

    A single-policy config gives ``default`` for every agent.

    Raises:
        ConfigError: an agent that no entry matches (names the agent, the env and ``agents``).
    """
    if not cfg.policies:
        return ["default"] * agent_count
    out = []
    for a in range(agent_count):
        for entry in cfg.agents:
            m = entry.match
            if (a == m) if isinstance(m, int) else re.fullmatch(m, str(a)) is not None:
                out.append(entry.policy)
                break
        else:
            raise ConfigError(
                f"agents: agent {a} of {env} (agent_count {agent_count}) is matched by no entry; add an entry "
                f"whose match is {a} or a regular expression matching {str(a)!r}"
            )
    return out


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
        others = [a for a in typing.get_args(tp) if a is not _NoneType]
        if value is not None and len(others) == 1 and dataclasses.is_dataclass(others[0]):
            return _convert(value, others[0], path)  # an optional section: its own message names the inner key
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
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is not Any:
            return {k: _convert(v, args[1], f"{path}.{k}") for k, v in value.items()}
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
    """Plain nested dict of a config dataclass (round-trips through :func:`from_dict`).

    Of an :class:`ExperimentConfig`, the keys of the form it does not use are left out (a single-policy
    config has no ``policies``/``trainers``/``agents``, a multi-policy one no ``policy``/``trainer``).
    """
    data = dataclasses.asdict(cfg)
    if isinstance(cfg, ExperimentConfig):
        unused = ("policy", "trainer") if cfg.policies else ("policies", "trainers", "agents", "selfplay")
        for key in unused:
            data.pop(key, None)
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML scalars/collections).

    Raises:
        ConfigError: an override without ``=``, with a value that is not YAML, or one that descends into a
            non-mapping.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise ConfigError(f"override {item!r}: expected key.path=value (dot-separated, no empty part)")
        value = parse_yaml(raw, f"override {item!r}") if raw != "" else ""
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
    """Load a YAML experiment file (see :func:`parse_yaml`) with optional overrides.

    Raises:
        ConfigError: the file is missing, is not UTF-8 YAML, or does not fit the schema.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file ({e.strerror or e})") from e
    data = parse_yaml(raw, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


@contextlib.contextmanager
def building(key: str, what: str) -> Iterator[None]:
    """Name the config key when building what it configures fails.

    Checks that only the component can make (an env id the simulator does not know, a policy or trainer
    argument it refuses, a device torch cannot use) happen when the run builds it; an exception from inside
    the block becomes one :class:`ConfigError` line naming ``key``, what failed and where it was raised
    (the original stays chained as ``__cause__``).

    Args:
        key: the config key path that configures it, e.g. ``policy`` or ``environment``.
        what: what failed, for the message, e.g. ``cannot build policy 'actor-critic-separate' with args {...}``.

    Raises:
        ConfigError: the block raised (a ConfigError from inside passes through unchanged).
    """
    try:
        yield
    except ConfigError:
        raise
    except Exception as e:
        import traceback

        frames = traceback.extract_tb(e.__traceback__)
        at = f" (raised at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        text = " ".join(str(e).split())
        raise ConfigError(f"{key}: {what}: {type(e).__name__}: {text}{at}") from e


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


def _section_class(tp: Any) -> type:
    """The dataclass of a top-level key: ``Policy | None`` -> Policy, ``dict[str, X]`` and ``list[X]`` -> X."""
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    for arg in typing.get_args(tp):
        if arg is not _NoneType and arg is not str:
            return _section_class(arg)
    raise TypeError(f"no config section class in {tp!r}")  # pragma: no cover


def reference_markdown() -> str:
    """Markdown reference of every config key (``docs/configuration.md`` is generated from this)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from `hpcrl/api/config.py` by `python -m hpcrl.api.config` (a test keeps it in sync).",
        "Every key can be set in the YAML file or overridden on the command line as `section.key=value`.",
        "Unknown keys, wrong types, out-of-range numbers and missing required keys are errors that name the key path.",
        f"The file must be UTF-8 YAML; anchors and aliases work, up to {MAX_YAML_VALUES:,} values once expanded.",
        "What only the run can check (an env id, a policy or trainer argument, a device) is reported the same way,",
        "naming `environment`, `policy`, `trainer` or `training.device`, when the run builds it.",
        "",
    ]
    hints = typing.get_type_hints(ExperimentConfig)
    top_docs = field_docs(ExperimentConfig)
    for top in dataclasses.fields(ExperimentConfig):
        cls, prefix = _section_class(hints[top.name]), top.name
        if typing.get_origin(hints[top.name]) is dict:
            prefix += ".NAME"
        elif typing.get_origin(hints[top.name]) is list:
            prefix += "[i]"
        lines += [f"## `{top.name}`", "", (cls.__doc__ or "").strip(), ""]
        if prefix != top.name or top.default is not dataclasses.MISSING:
            lines += [top_docs.get(top.name, ""), ""]
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
            tname = _type_name(sub_hints[f.name])
            if "ge" in f.metadata:
                tname += f" ({_bound_text(f.metadata)})"
            tname = tname.replace("|", "\\|")
            lines.append(f"| `{prefix}.{f.name}` | {tname} | `{default}` | {docs.get(f.name, '')} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(reference_markdown())
