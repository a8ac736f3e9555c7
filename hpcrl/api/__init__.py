"""The user-facing API: environment, policy, trainer, NamedArray and config (what users read)."""

from hpcrl.api import config

__all__ = ["config"]
