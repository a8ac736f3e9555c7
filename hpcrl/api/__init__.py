"""The user-facing API: environment, policy, trainer, NamedArray and config (what users read).

Import the modules directly, e.g. ``from hpcrl.api import config`` or
``from hpcrl.api.environment import Environment, StepResult, register``.
"""
