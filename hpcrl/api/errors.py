"""The configuration error of the api layer (re-exported by :mod:`hpcrl.api.config`).

A module of its own so that the config section modules (:mod:`hpcrl.api.selfplay_spec`) can raise it
without importing :mod:`hpcrl.api.config`, which imports them.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range (message names the key path)."""

    __module__ = "hpcrl.api.config"
