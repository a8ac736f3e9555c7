"""Built-in toy environments: the quick-start multi-agent task, a memory task, and benchmark envs.

Registered lazily as ``quickstart-multiagent``, ``memory``, ``sleep`` and ``null``. They need
numpy only (gymnasium is imported when their spaces are asked for).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.results import FALSE, TRUE, ZERO_REWARD, readonly, record_builder, reward_array

__all__ = ["QuickstartEnvironment", "MemoryEnvironment", "SleepEnvironment", "NullEnvironment"]


def _action_int(action: NamedArray | None, agent: int, n: int, env: str) -> int:
    """Agent ``agent``'s discrete action in ``[0, n)``; a clear error otherwise."""
    try:
        a = int(action.x)  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError) as e:
        raise ValueError(
            f"env {env!r} step: agent {agent}: action: expected Action(x=int in [0, {n})), got {action!r}"
        ) from e
    if not 0 <= a < n:
        raise ValueError(f"env {env!r} step: agent {agent}: action field 'x': expected an int in [0, {n}), got {a}")
    return a


class QuickstartEnvironment(Environment):
    """Two cooperating agents, each choosing one of 16 actions per step (the quick-start task).

    Every step each agent ``i`` sees a 187-dim observation and the pair shares a 623-dim
    centralized ``state``. **The hidden rule**:

    * *Own reward*: agent ``i`` earns 1 when its action equals ``argmax(obs[0:16])``, the index of
      the largest of its 16 *cue* features (a one-hot spike plus noise).
    * *Team bonus*: a coin ``m`` in {0, 1} is flipped every step and shown **only in the state**
      (``state[374]``, one-hot in ``state[375:377]``). When both agents are right, each earns an
      extra ``m * team_bonus``. The policy cannot (and need not) see ``m``, but a critic that reads
      the state predicts returns better: this is where a centralized critic helps.

    Rewards for the action taken on an observation arrive with the next step. An episode lasts
    ``episode_length`` steps and ends with ``done``. A random policy earns about
    ``(1/16 + team_bonus/512)`` per agent-step (2.0 per episode of 32); the rule earns
    ``1 + team_bonus/2`` (48 per episode). Measured with a 2x64 tanh MLP actor, a state-reading
    critic and PPO (lr 3e-4, 8 envs, 64-step rollouts): the easy stage goes from 2 to ~45 in about
    100k env steps (200k agent-steps); the hard stage only reaches ~14 after 150k env steps.

    Observation layout (float32): ``[0:16]`` cue; ``[16:32]`` decoy block (a second spike that
    means nothing; zero in ``easy``); ``[32:34]`` agent id one-hot; ``[34]`` fraction of the episode
    elapsed; ``[35:187]`` distractors (zero in ``easy``, N(0, 1) in ``hard``). State layout:
    ``[0:187]`` agent 0's obs, ``[187:374]`` agent 1's obs, ``[374]`` the bonus coin ``m``,
    ``[375:377]`` one-hot of ``m``, the rest zero.

    Curriculum: ``set_curriculum_stage("easy" | "hard")`` takes effect at the next reset. ``hard``
    adds the decoy spike, Gaussian distractors and three times the cue noise.

    Args:
        episode_length: steps per episode.
        seed: RNG seed (``seed()`` reseeds).
        stage: initial curriculum stage, ``"easy"`` or ``"hard"``.
        team_bonus: size of the state-dependent team bonus.
    """

    OBS_DIM = 187
    STATE_DIM = 623
    N_ACTIONS = 16
    STAGES = ("easy", "hard")
    _CUE_NOISE: ClassVar[dict[str, float]] = {"easy": 0.1, "hard": 0.3}

    def __init__(
        self, episode_length: int = 32, seed: int | None = 0, stage: str = "easy", team_bonus: float = 1.0
    ) -> None:
        if episode_length < 1:
            raise ValueError(f"quickstart-multiagent: episode_length must be >= 1, got {episode_length}")
        self.name = "quickstart-multiagent"
        self.episode_length = int(episode_length)
        self.team_bonus = float(team_bonus)
        self._check_stage(stage)
        self.stage = stage
        self._next_stage = stage
        self._rng = np.random.default_rng(seed)
        self._build = record_builder(("obs", "state"))
        self._t = 0
        self._targets = np.zeros(2, np.int64)
        self._coin = 0
        self._id = np.eye(2, dtype=np.float32)

    def _check_stage(self, stage: str) -> None:
        if stage not in self.STAGES:
            raise ValueError(
                f"env {self.name!r}: unknown curriculum stage {stage!r}; expected one of {list(self.STAGES)}"
            )

    @property
    def agent_count(self) -> int:
        """Two agents."""
        return 2

    @property
    def observation_spaces(self) -> list[Any]:
        """``Dict(obs=Box(187,), state=Box(623,))`` for each agent (float32)."""
        from gymnasium import spaces

        sp = spaces.Dict(
            obs=spaces.Box(-np.inf, np.inf, (self.OBS_DIM,), np.float32),
            state=spaces.Box(-np.inf, np.inf, (self.STATE_DIM,), np.float32),
        )
        return [sp, sp]

    @property
    def action_spaces(self) -> list[Any]:
        """``Discrete(16)`` for each agent."""
        from gymnasium import spaces

        return [spaces.Discrete(self.N_ACTIONS), spaces.Discrete(self.N_ACTIONS)]

    def seed(self, seed: int) -> None:
        """Reseed the generator (cues, coins, noise)."""
        self._rng = np.random.default_rng(seed)

    def set_curriculum_stage(self, stage: str) -> None:
        """Switch to ``"easy"`` or ``"hard"`` from the next reset on.

        Raises:
            ValueError: unknown stage (lists the known ones).
        """
        self._check_stage(stage)
        self._next_stage = stage

    def _observe(self, reward: tuple[np.ndarray, np.ndarray], done: bool) -> list[StepResult | None]:
        rng = self._rng
        hard = self.stage == "hard"
        obs = np.zeros((2, self.OBS_DIM), np.float32)
        targets = rng.integers(0, self.N_ACTIONS, 2)
        obs[:, 0:16] = rng.normal(0.0, self._CUE_NOISE[self.stage], (2, 16))
        obs[[0, 1], targets] += 1.0
        if hard:
            obs[:, 16:32] = rng.normal(0.0, 0.3, (2, 16))
            obs[[0, 1], 16 + rng.integers(0, 16, 2)] += 1.0
            obs[:, 35:] = rng.normal(0.0, 1.0, (2, self.OBS_DIM - 35))
        obs[:, 32:34] = self._id
        obs[:, 34] = self._t / self.episode_length
        self._targets = obs[:, 0:16].argmax(axis=1)  # the rule: argmax of the cue block (noise included)
        self._coin = int(rng.integers(0, 2))
        state = np.zeros(self.STATE_DIM, np.float32)
        state[: 2 * self.OBS_DIM] = obs.reshape(-1)
        state[374] = self._coin
        state[375 + self._coin] = 1.0
        readonly(state)
        flag = TRUE if done else FALSE
        return [StepResult(self._build(obs[i], state), reward[i], flag, FALSE, {}) for i in range(2)]

    def reset(self) -> list[StepResult | None]:
        """Start an episode (applies a pending curriculum stage)."""
        self.stage = self._next_stage
        self._t = 0
        return self._observe((ZERO_REWARD, ZERO_REWARD), False)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Score both agents' actions against the rule; the next cue comes with the rewards."""
        if not isinstance(actions, list) or len(actions) != 2:
            raise ValueError(f"env {self.name!r} step: expected a list of 2 actions, got {actions!r}")
        a = [_action_int(actions[i], i, self.N_ACTIONS, self.name) for i in range(2)]
        right = [a[i] == int(self._targets[i]) for i in range(2)]
        bonus = self.team_bonus * self._coin if all(right) else 0.0
        rewards = (reward_array(float(right[0]) + bonus), reward_array(float(right[1]) + bonus))
        self._t += 1
        return self._observe(rewards, self._t >= self.episode_length)

    def oracle_actions(self) -> list[int]:
        """The rule's actions for the current observations (for tests and demos)."""
        return [int(t) for t in self._targets]


class MemoryEnvironment(Environment):
    """Recall a symbol after a delay: solvable by a recurrent policy, at chance for a feed-forward one.

    Observation ``obs`` (float32, ``n_symbols + 1``): on the first observation a one-hot symbol;
    then ``delay`` blank (all-zero) observations; then the *query* (last element 1). The action
    taken on the query observation is graded: reward 1 if it equals the symbol, else 0, and the
    episode ends (``done``). Actions on other observations are ignored. An episode is
    ``delay + 2`` steps. Random (or memoryless) policies score ``1 / n_symbols`` per episode.

    Args:
        delay: blank steps between the symbol and the query.
        n_symbols: number of symbols (= actions).
        seed: RNG seed (``seed()`` reseeds).
    """

    def __init__(self, delay: int = 4, n_symbols: int = 4, seed: int | None = 0) -> None:
        if delay < 0 or n_symbols < 2:
            raise ValueError(f"memory: need delay >= 0 and n_symbols >= 2, got delay={delay}, n_symbols={n_symbols}")
        self.name = "memory"
        self.delay = int(delay)
        self.n_symbols = int(n_symbols)
        self._rng = np.random.default_rng(seed)
        self._build = record_builder(("obs",))
        dim = self.n_symbols + 1
        self._blank = readonly(np.zeros(dim, np.float32))
        query = np.zeros(dim, np.float32)
        query[-1] = 1.0
        self._query = readonly(query)
        self._cues = [readonly(np.eye(dim, dtype=np.float32)[s]) for s in range(self.n_symbols)]
        self._symbol = 0
        self._t = 0

    @property
    def agent_count(self) -> int:
        """One agent."""
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        """``Dict(obs=Box(0, 1, (n_symbols + 1,)))``."""
        from gymnasium import spaces

        return [spaces.Dict(obs=spaces.Box(0.0, 1.0, (self.n_symbols + 1,), np.float32))]

    @property
    def action_spaces(self) -> list[Any]:
        """``Discrete(n_symbols)``."""
        from gymnasium import spaces

        return [spaces.Discrete(self.n_symbols)]

    def seed(self, seed: int) -> None:
        """Reseed the symbol generator."""
        self._rng = np.random.default_rng(seed)

    def reset(self) -> list[StepResult | None]:
        """Draw a symbol and show it."""
        self._symbol = int(self._rng.integers(0, self.n_symbols))
        self._t = 0
        return [StepResult(self._build(self._cues[self._symbol]), ZERO_REWARD, FALSE, FALSE, {})]

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Advance one step; grade the action taken on the query observation."""
        a = _action_int(actions[0], 0, self.n_symbols, self.name)
        if self._t == self.delay + 1:  # the action answers the query
            self._t += 1
            reward = reward_array(1.0 if a == self._symbol else 0.0)
            return [StepResult(self._build(self._blank), reward, TRUE, FALSE, {})]
        self._t += 1
        obs = self._query if self._t == self.delay + 1 else self._blank
        return [StepResult(self._build(obs), ZERO_REWARD, FALSE, FALSE, {})]

    def oracle_action(self) -> int:
        """The correct answer (for tests)."""
        return self._symbol


class NullEnvironment(Environment):
    """Zero observations, zero rewards, no work at all: measures the runtime's own overhead.

    Every agent observes the same read-only zero ``obs`` array; episodes end with ``done`` after
    ``episode_length`` steps. Actions are not inspected.

    Args:
        obs_dim: length of the ``obs`` vector.
        n_actions: size of the ``Discrete`` action space.
        episode_length: steps per episode.
        agents: number of agents.
        seed: ignored (accepted for a uniform signature).
    """

    def __init__(
        self, obs_dim: int = 4, n_actions: int = 2, episode_length: int = 100, agents: int = 1, seed: int | None = None
    ) -> None:
        if obs_dim < 1 or n_actions < 1 or episode_length < 1 or agents < 1:
            raise ValueError(
                f"{type(self).__name__}: obs_dim, n_actions, episode_length and agents must be >= 1, got "
                f"{obs_dim}, {n_actions}, {episode_length}, {agents}"
            )
        self.obs_dim = int(obs_dim)
        self.n_actions = int(n_actions)
        self.episode_length = int(episode_length)
        self._agents = int(agents)
        self._zero = readonly(np.zeros(self.obs_dim, np.float32))
        self._build = record_builder(("obs",))
        self._t = 0

    @property
    def agent_count(self) -> int:
        """``agents``."""
        return self._agents

    @property
    def observation_spaces(self) -> list[Any]:
        """``Dict(obs=Box(obs_dim,))`` per agent."""
        from gymnasium import spaces

        return [spaces.Dict(obs=spaces.Box(-1.0, 1.0, (self.obs_dim,), np.float32))] * self._agents

    @property
    def action_spaces(self) -> list[Any]:
        """``Discrete(n_actions)`` per agent."""
        from gymnasium import spaces

        return [spaces.Discrete(self.n_actions)] * self._agents

    def _results(self, done: bool) -> list[StepResult | None]:
        flag = TRUE if done else FALSE
        return [StepResult(self._build(self._zero), ZERO_REWARD, flag, FALSE, {}) for _ in range(self._agents)]

    def reset(self) -> list[StepResult | None]:
        """Start an episode."""
        self._t = 0
        return self._results(False)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Count the step; ``done`` after ``episode_length`` steps."""
        self._t += 1
        return self._results(self._t >= self.episode_length)


class SleepEnvironment(NullEnvironment):
    """Like :class:`NullEnvironment`, but every step sleeps ``step_seconds`` (a stand-in for a slow simulator).

    Used to measure how throughput scales with actor ranks when env time dominates.

    Args:
        step_seconds: ``time.sleep`` per step (and per reset).
        obs_dim: length of the ``obs`` vector.
        n_actions: size of the ``Discrete`` action space.
        episode_length: steps per episode.
        agents: number of agents.
        seed: ignored.
    """

    def __init__(
        self,
        step_seconds: float = 0.001,
        obs_dim: int = 4,
        n_actions: int = 2,
        episode_length: int = 100,
        agents: int = 1,
        seed: int | None = None,
    ) -> None:
        if step_seconds < 0:
            raise ValueError(f"SleepEnvironment: step_seconds must be >= 0, got {step_seconds}")
        super().__init__(obs_dim, n_actions, episode_length, agents, seed)
        self.step_seconds = float(step_seconds)

    def reset(self) -> list[StepResult | None]:
        """Sleep, then start an episode."""
        time.sleep(self.step_seconds)
        return super().reset()

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Sleep ``step_seconds``, then count the step."""
        time.sleep(self.step_seconds)
        return super().step(actions)
