"""Shared pieces of the multi-policy tests: an env whose agents see their own index, a recording PPO, weights.

Registers nothing (pytest's doctest collection imports test helper modules under a second name), so the
one-process, self-play, ``test_pipeline`` and MPI tests can all subclass or register these themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.trainer import SampleBatch, TrainerStepResult
from hpcrl.storage.checkpoint import load_checkpoint
from hpcrl.trainers.ppo import PPOTrainer

__all__ = ["IndexedAgentsEnv", "RecordingPPO", "checkpoint_weights"]


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


class RecordingPPO(PPOTrainer):
    """PPO that records the agent indices (obs column 0) of every batch it trains on."""

    seen: list[np.ndarray] = []

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        RecordingPPO.seen.append(np.unique(np.asarray(samples.obs.obs)[..., 0]))  # type: ignore[union-attr]
        return super().step(samples)


def checkpoint_weights(path: Path) -> dict[str, np.ndarray]:
    """Every float array of the policy part of checkpoint ``path``, by its path in the tree."""
    tree, _ = load_checkpoint(path)
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        elif np.asarray(node).dtype.kind == "f":
            out[prefix] = np.asarray(node)

    walk(tree["policy"], "")
    return out
