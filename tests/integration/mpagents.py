"""A two-agent test task and a recording trainer for multi-policy MPI runs.

Imported into every rank of a test job with ``experiment.imports=[tests.integration.mpagents]`` (the
repository root is on ``sys.path`` of the job).
"""

from __future__ import annotations

import numpy as np

from hpcrl.api.environment import register as register_env
from hpcrl.api.trainer import SampleBatch, TrainerStepResult
from hpcrl.api.trainer import register as register_trainer
from hpcrl.trainers.ppo import PPOTrainer
from tests.integration.indexed_env import IndexedAgentsEnv


class AgentTagEnv(IndexedAgentsEnv):
    """Agent ``a`` earns ``a + 1`` for action 1.

    Every agent's reward is its own index plus one when it is earned, so the rewards a trainer sees tell
    which agents' rows it trained on.
    """

    def reward(self, agent: int, action: int) -> float:
        return float(agent + 1) * float(action == 1)


class AgentStatsPPO(PPOTrainer):
    """PPO whose stats also give the smallest and largest agent index (obs column 0) of every batch.

    And ``acted_version``: the newest policy version that acted a row of the batch (a batch acted by
    another policy than the trained one shows that policy's versions).
    """

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        agents = np.asarray(samples.obs.obs)[..., 0]  # type: ignore[union-attr]
        acted = float(np.max(samples.policy_version)) if samples.policy_version is not None else -1.0
        result = super().step(samples)
        stats = dict(result.stats, agent_min=float(agents.min()), agent_max=float(agents.max()), acted_version=acted)
        return TrainerStepResult(stats, result.step, result.skipped)


register_env("mp-agent-tag", AgentTagEnv)
register_trainer("mp-agent-stats-ppo", AgentStatsPPO)


class FailingPPO(AgentStatsPPO):
    """:class:`AgentStatsPPO` that raises in its third step."""

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        self.failing_steps = getattr(self, "failing_steps", 0) + 1
        if self.failing_steps == 3:
            raise RuntimeError("injected failure in the third trainer step")
        return super().step(samples)


register_trainer("mp-agent-failing-ppo", FailingPPO)
