"""Components for tests/integration/test_eval_runs.py: an env that marks evaluation envs, a trainer that guards.

Imported into every rank with ``experiment.imports=[tests.integration.evalguard]`` (the repository root is on
the subprocess's ``PYTHONPATH``). ``eval-guard-env`` pays reward ``EVAL_REWARD`` per step when it was seeded
as one of the run's evaluation envs (:func:`hpcrl.acting.evaluation.eval_seed`), 1 otherwise;
``eval-guard-trainer`` (a :class:`~hpcrl.trainers.null.NullTrainer`) raises if a batch holds such a reward,
so an evaluation step that reaches a trainer stops the run with that error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from hpcrl.acting.evaluation import eval_seed
from hpcrl.acting.rings import env_seed
from hpcrl.api.data import SampleBatch
from hpcrl.api.environment import register as register_env
from hpcrl.api.trainer import TrainerStepResult
from hpcrl.api.trainer import register as register_trainer
from hpcrl.envs.toy import NullEnvironment
from hpcrl.trainers.null import NullTrainer

EVAL_REWARD = 1000.0


class EvalGuardEnv(NullEnvironment):
    """A :class:`NullEnvironment` whose reward says whether it is an evaluation env of a run seeded ``run_seed``."""

    def __init__(self, run_seed: int = 1, episode_length: int = 10, agents: int = 1) -> None:
        super().__init__(obs_dim=2, n_actions=2, episode_length=episode_length, agents=agents)
        self._eval_seeds = {env_seed(eval_seed(run_seed), i) for i in range(64)}
        self._reward = np.ones(1, np.float32)

    def seed(self, seed: int) -> None:
        """An evaluation env's seed makes every reward ``EVAL_REWARD``."""
        value = EVAL_REWARD if int(seed) in self._eval_seeds else 1.0
        self._reward = np.full(1, value, np.float32)

    def step(self, actions: list[Any]) -> list[Any]:
        """A step of :class:`NullEnvironment`, paying this env's reward."""
        return [dataclasses.replace(r, reward=self._reward) for r in super().step(actions)]


class EvalGuardTrainer(NullTrainer):
    """Refuses any batch that holds a reward of an evaluation env."""

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        reward = np.asarray(samples.reward)
        if (reward >= EVAL_REWARD).any():
            raise ValueError("eval-guard-trainer: a trainer batch holds evaluation steps (reward >= 1000)")
        result = super().step(samples)
        result.stats["max_reward"] = float(reward.max()) if reward.size else 0.0
        return result


register_env("eval-guard-env", EvalGuardEnv)
register_trainer("eval-guard-trainer", EvalGuardTrainer)
