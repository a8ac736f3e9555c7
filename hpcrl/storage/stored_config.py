"""The experiment config stored in a checkpoint, and what loading may build from it.

A checkpoint's ``config`` attribute is text anyone who can write the file chooses (attributes
carry no checksum). :func:`loading_config` therefore builds nothing it names unless this process
already knows it: the policy and environment ``type_`` must be registered here (built-ins, or
what the caller's own code registered), no component argument may name a ``"module:attribute"``
to import, and (for the environment) every ``experiment.imports`` module must already be imported.
Anything else is refused with :class:`UntrustedConfigError`, before any of it is imported or
called. The two ways out are explicit: the caller's own config (``config=``), or
``trust_config=True`` (build what the stored config names, importing its ``experiment.imports``).

Examples:
    >>> from hpcrl.api import config
    >>> cfg = config.from_dict({"environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
    ...                         "policy": {"type_": "subprocess:Popen", "args": {"args": "touch x"}},
    ...                         "trainer": {"type_": "ppo"}})
    >>> unregistered_entries(cfg, environment=True)
    ["policy.type_ 'subprocess:Popen'"]
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcrl.storage.tree import CheckpointError

if TYPE_CHECKING:
    from hpcrl.api.config import ExperimentConfig

__all__ = ["UntrustedConfigError", "read_stored_config", "unregistered_entries", "loading_config"]

log = logging.getLogger(__name__)

#: a string naming ``package.module:attribute`` (what gymnasium ids, wrapper specs and PettingZoo env specs
#: import); ``cuda:0``, ``ALE/Pong-v5`` and URLs do not match.
_MODULE_ATTR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_].*", re.DOTALL)
_MAX_LISTED = 8


class UntrustedConfigError(CheckpointError):
    """The config stored in a checkpoint names code this process has not registered; nothing was imported or called.

    Attributes:
        file: the checkpoint file.
        entries: the offending entries, each ``"key.path 'value'"``.
    """

    def __init__(self, file: Path, entries: list[str]) -> None:
        self.file = file
        self.entries = list(entries)
        super().__init__(
            self.describe("pass your own config (config=EXPERIMENT_YAML_OR_CONFIG)", "trust_config=True", own_code=True)
        )

    def describe(self, own_config: str, trust: str, own_code: bool = False) -> str:
        """The message, with the ways to proceed spelled as the caller offers them.

        Args:
            own_config: how to pass one's own config (``"--config EXP.yaml"`` on a command line).
            trust: how to trust the stored config (``"--trust-checkpoint-config"``).
            own_code: the caller can run its own code first (an API call, not a command line).
        """
        shown = ", ".join(self.entries[:_MAX_LISTED])
        if len(self.entries) > _MAX_LISTED:
            shown += f" (and {len(self.entries) - _MAX_LISTED} more)"
        register = (
            "register those names (or import those modules) in your own code before loading, " if own_code else ""
        )
        return (
            f"{self.file}: the config stored in this checkpoint names code that is not registered in this process: "
            f"{shown}. Nothing a checkpoint names is imported or called unless you say so. To proceed, {register}"
            f"{own_config}, or, if you trust whoever wrote this file, {trust} (builds what the stored config names "
            "and imports its experiment.imports)"
        )


def read_stored_config(file: Path, attrs: Mapping[str, Any]) -> ExperimentConfig:
    """Parse the ``config`` attribute of a checkpoint (:func:`hpcrl.api.yaml_input.parse_yaml`, strict config schema).

    Raises:
        CheckpointError: the attribute is missing or not a valid config (names the file); a document that
            expands through aliases beyond the config parser's bound is refused the same way.
    """
    from hpcrl.api import config as config_mod

    text = attrs.get("config")
    if not isinstance(text, str):
        raise CheckpointError(f"{file}: no 'config' attribute (a checkpoint not written by the hpcrl runtime?)")
    try:
        return config_mod.from_dict(config_mod.parse_yaml(text, f"{file}: stored config"))
    except (config_mod.ConfigError, TypeError) as e:
        raise CheckpointError(f"{file}: the stored config is not valid: {e}") from e


def _module_attr_strings(value: Any, path: str, out: list[str]) -> None:
    if isinstance(value, str):
        if _MODULE_ATTR.fullmatch(value):
            out.append(f"{path} {value!r}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            _module_attr_strings(v, f"{path}.{k}", out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _module_attr_strings(v, f"{path}[{i}]", out)


def unregistered_entries(cfg: ExperimentConfig, *, environment: bool) -> list[str]:
    """The entries of ``cfg`` that building its policy (and env) would have to import, as ``"key.path 'value'"``.

    Checked: ``policy.type_`` (and ``environment.type_``) must resolve with ``allow_import=False``;
    no string in their ``args`` may look like ``"module:attribute"``; with ``environment``, every
    ``experiment.imports`` module must already be imported. Nothing is imported besides the
    built-in entries' own hpcrl modules.
    """
    from hpcrl.api.environment import ALL_ENVIRONMENTS
    from hpcrl.api.policy import ALL_POLICIES
    from hpcrl.api.registry import RegistryError

    out: list[str] = []
    if environment:
        out += [
            f"experiment.imports[{i}] {name!r}"
            for i, name in enumerate(cfg.experiment.imports)
            if name not in sys.modules
        ]
    parts: list[tuple[str, Any, Any]] = [("policy", cfg.policy, ALL_POLICIES)]
    if environment:
        parts.append(("environment", cfg.environment, ALL_ENVIRONMENTS))
    for key, spec, registry in parts:
        try:
            registry.get(spec.type_, allow_import=False)
        except RegistryError:
            out.append(f"{key}.type_ {spec.type_!r}")
        _module_attr_strings(spec.args, f"{key}.args", out)
    return out


def loading_config(
    file: Path,
    attrs: Mapping[str, Any],
    *,
    config: ExperimentConfig | str | Path | None = None,
    trust_config: bool = False,
    environment: bool = False,
) -> ExperimentConfig:
    """The config to build a checkpoint's policy (and, with ``environment``, its env) from.

    Args:
        file: the checkpoint file (for messages).
        attrs: its root attributes.
        config: the caller's own config (an ``ExperimentConfig`` or a YAML file): used instead of the
            stored one, and its ``experiment.imports`` are imported (the caller chose them).
        trust_config: use the stored config as is and import its ``experiment.imports``.
        environment: the environment will be built too (checks ``environment`` and ``experiment.imports``).

    Returns:
        The config; with ``config=``, its policy spec has ``obs_dim``/``action_dim`` filled from the env's
        spaces as a run does.

    Raises:
        UntrustedConfigError: the stored config names unregistered code (neither ``config`` nor ``trust_config``).
        CheckpointError: no or an invalid stored config.
        ConfigError: ``config`` is a YAML file that does not load.
        ImportError: an ``experiment.imports`` module of a chosen config cannot be imported.
    """
    import dataclasses

    from hpcrl.api import config as config_mod
    from hpcrl.runtime import components

    if config is not None:
        cfg = config if isinstance(config, config_mod.ExperimentConfig) else config_mod.load(config)
        components.import_user_modules(cfg)
        return dataclasses.replace(cfg, policy=components.resolve_policy_spec(cfg))
    stored = read_stored_config(file, attrs)
    if trust_config:
        log.info("%s: using the stored config as trusted (imports: %s)", file, stored.experiment.imports or "none")
        components.import_user_modules(stored)
        return stored
    entries = unregistered_entries(stored, environment=environment)
    if entries:
        raise UntrustedConfigError(file, entries)
    return stored
