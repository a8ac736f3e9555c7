"""The user-facing API: environment, policy, trainer, the records between them, NamedArray and config.

Import the modules directly, e.g. ``from hpcrl.api import config`` or
``from hpcrl.api.environment import Environment, StepResult, register``. The records
(``RolloutRequest``, ``RolloutResult``, ``SampleBatch``, ``AnalyzedResult``) live in
:mod:`hpcrl.api.data`.
"""
