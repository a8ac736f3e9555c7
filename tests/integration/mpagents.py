"""A two-agent test task and a recording trainer for multi-policy MPI runs.

Imported into every rank of a test job with ``experiment.imports=[tests.integration.mpagents]`` (the
repository root is on ``sys.path`` of the job).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.environment import register as register_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.trainer import SampleBatch, TrainerStepResult
from hpcrl.api.trainer import register as register_trainer
from hpcrl.trainers.ppo import PPOTrainer


class IndexedAgentsEnv(Environment):
    """``n_agents`` agents; agent ``a`` sees ``[a, t / episode_length]``; an episode lasts ``episode_length`` steps.

    Subclasses say what an action earns (:meth:`reward`). Shared by the multi-policy tests (one process,
    ``test_pipeline`` and MPI).
    """

    def __init__(self, n_agents: int = 2, episode_length: int = 8) -> None:
        self.n = n_agents
        self.length = episode_length
        self.t = 0

    @property
    def agent_count(self) -> int:
        return self.n

    @property
    def observation_spaces(self) -> list[Any]:
        return [spaces.Dict(obs=spaces.Box(-np.inf, np.inf, (2,), np.float32))] * self.n

    @property
    def action_spaces(self) -> list[Any]:
        return [spaces.Discrete(2)] * self.n

    def seed(self, seed: int) -> None:
        pass

    def reward(self, agent: int, action: int) -> float:
        """What ``action`` earns ``agent`` (nothing here; subclasses say)."""
        return 0.0

    def _results(self, rewards: list[float]) -> list[StepResult | None]:
        done = self.t >= self.length
        return [
            StepResult(
                obs=NamedArray(obs=np.array([a, self.t / self.length], np.float32)),
                reward=np.array([rewards[a]], np.float32),
                done=np.array([done]),
                truncated=np.array([False]),
            )
            for a in range(self.n)
        ]

    def reset(self) -> list[StepResult | None]:
        self.t = 0
        return self._results([0.0] * self.n)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        self.t += 1
        return self._results([self.reward(a, int(x.x)) for a, x in enumerate(actions)])  # type: ignore[union-attr]


class AgentTagEnv(IndexedAgentsEnv):
    """Agent ``a`` earns ``a + 1`` for action 1.

    Every agent's reward is its own index plus one when it is earned, so the rewards a trainer sees tell
    which agents' rows it trained on.
    """

    def reward(self, agent: int, action: int) -> float:
        return float(agent + 1) * float(action == 1)


class AgentStatsPPO(PPOTrainer):
    """PPO whose stats also give the smallest and largest agent index (obs column 0) of every batch."""

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        agents = np.asarray(samples.obs.obs)[..., 0]  # type: ignore[union-attr]
        result = super().step(samples)
        stats = dict(result.stats, agent_min=float(agents.min()), agent_max=float(agents.max()))
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
