"""Atari games (ale-py) with the standard DQN/PPO preprocessing, registered as ``atari``.

Needs ``pip install 'hpcrl[atari]'`` (ale-py, which ships the ROMs, and opencv-python-headless,
which gymnasium's ``AtariPreprocessing`` uses to resize frames). The pipeline is
``gymnasium.make("ALE/<Game>-v5", frameskip=1)`` -> ``AtariPreprocessing`` (no-op starts, frame
skip with max-pooling, grayscale, resize) -> ``FrameStackObservation`` -> this adapter, which adds
episodic life, FIRE on reset and reward clipping. The observation is the single field ``obs``:
``uint8`` of shape ``(frame_stack, screen, screen)`` (``(frame_stack, screen, screen, 3)`` in color).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.results import FALSE, TRUE, ZERO_REWARD, record_builder, reward_array

__all__ = ["AtariEnvironment", "atari_id"]

logger = logging.getLogger(__name__)

_INSTALL = "install hpcrl[atari] (pip install ale-py opencv-python-headless)"


def atari_id(game: str) -> str:
    """The gymnasium id for ``game``: ``"Pong"`` -> ``"ALE/Pong-v5"``; full ids pass through."""
    if "/" in game or "-v" in game:
        return game
    return f"ALE/{game}-v5"


class AtariEnvironment(Environment):
    """One Atari game as a one-agent hpcrl Environment.

    Episodic life (``episodic_life=True``): losing a life ends the hpcrl episode with ``done``
    (so values are not bootstrapped across a lost life), but the next :meth:`reset` continues the
    same game with a no-op step instead of restarting it; only game over (or the frame limit)
    resets the emulator. Per-life returns are therefore what the runtime sees as episode
    returns; the unclipped score of the whole game is reported in ``info["game_return"]`` on the
    step where the game ends (``info["game_over"]`` is True there).

    Args:
        game: a game name (``"Pong"``, ``"Breakout"``) or a full id (``"ALE/Pong-v5"``).
        frame_skip: emulator frames per agent step (max-pooled over the last two).
        noop_max: up to this many no-op actions after a full reset.
        frame_stack: observations stacked on the first axis (1 = no stacking).
        screen: side of the square resized frame.
        grayscale: grayscale frames (otherwise RGB, channels last).
        episodic_life: end the hpcrl episode on life loss (see above).
        clip_rewards: reward = sign(score change).
        full_action_space: use all 18 actions instead of the game's minimal set.
        repeat_action_probability: sticky actions (ALE v5 default 0.25; 0 for the classic v4 setting).
        fire_reset: press FIRE after a reset in games that need it to start.
        seed: seed of the first reset (``seed()`` overrides it).
        **kwargs: passed to ``gymnasium.make`` (e.g. ``max_num_frames_per_episode``, ``mode``).

    Raises:
        ImportError: ale-py or opencv is missing (says what to install).
        ValueError: unknown game (lists close matches).
    """

    def __init__(
        self,
        game: str = "Pong",
        frame_skip: int = 4,
        noop_max: int = 30,
        frame_stack: int = 4,
        screen: int = 84,
        grayscale: bool = True,
        episodic_life: bool = True,
        clip_rewards: bool = True,
        full_action_space: bool = False,
        repeat_action_probability: float = 0.25,
        fire_reset: bool = True,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        env_id = atari_id(game)
        self.name = f"atari:{env_id}"
        try:
            import ale_py  # noqa: F401 - registers the ALE/ namespace (done in make_gym)
            import cv2  # noqa: F401 - needed by AtariPreprocessing
        except ImportError as e:
            raise ImportError(f"env {self.name!r} needs ale-py and opencv: {_INSTALL} ({e})") from e
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        from hpcrl.envs.gym_env import make_gym

        env = make_gym(
            env_id,
            frameskip=1,
            repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space,
            **kwargs,
        )
        try:
            env = AtariPreprocessing(
                env,
                noop_max=noop_max,
                frame_skip=frame_skip,
                screen_size=screen,
                terminal_on_life_loss=False,
                grayscale_obs=grayscale,
                scale_obs=False,
            )
            if frame_stack > 1:
                env = FrameStackObservation(env, frame_stack)
        except Exception:
            env.close()
            raise
        self._env = env
        self._env_step = env.step
        self.episodic_life = episodic_life
        self.clip_rewards = clip_rewards
        meanings = env.unwrapped.get_action_meanings()
        self._fire = fire_reset and len(meanings) >= 3 and meanings[1] == "FIRE"
        self._n_actions = int(env.action_space.n)
        self._build = record_builder(("obs",))
        self._pending_seed: int | None = None
        self._lives = 0
        self._game_over = True
        self._game_return = 0.0
        if seed is not None:
            self.seed(seed)

    @property
    def agent_count(self) -> int:
        """One agent."""
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        """``[Dict(obs=Box(0, 255, (frame_stack, screen, screen), uint8))]``."""
        from gymnasium import spaces

        return [spaces.Dict(obs=self._env.observation_space)]

    @property
    def action_spaces(self) -> list[Any]:
        """``[Discrete(n)]``: the game's minimal action set (18 with ``full_action_space``)."""
        from gymnasium import spaces

        return [spaces.Discrete(self._n_actions)]

    @property
    def gym_env(self) -> Any:
        """The wrapped gymnasium env."""
        return self._env

    def seed(self, seed: int) -> None:
        """Seed the next full reset (emulator, no-op starts, sticky actions)."""
        self._pending_seed = int(seed)
        self._env.action_space.seed(int(seed))

    def _full_reset(self) -> tuple[Any, dict[str, Any]]:
        if self._pending_seed is not None:
            obs, info = self._env.reset(seed=self._pending_seed)
            self._pending_seed = None
        else:
            obs, info = self._env.reset()
        self._game_return = 0.0
        return obs, info

    def reset(self) -> list[StepResult | None]:
        """Start a game, or (episodic life, after a lost life) continue the current one."""
        if self._game_over or not self.episodic_life:
            obs, info = self._full_reset()
        else:
            obs, r, term, trunc, info = self._env_step(0)
            self._game_return += float(r)
            if term or trunc:
                obs, info = self._full_reset()
        if self._fire:
            obs, r, term, trunc, info = self._env_step(1)
            self._game_return += float(r)
            if term or trunc:
                obs, info = self._full_reset()
        self._lives = int(info.get("lives", 0))
        self._game_over = False
        return [StepResult(self._build(obs), ZERO_REWARD, FALSE, FALSE, info)]

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """One agent step (``frame_skip`` emulator frames)."""
        try:
            a = int(actions[0].x)  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError, IndexError) as e:
            raise ValueError(
                f"env {self.name!r} step: agent 0: action: expected Action(x=int in [0, {self._n_actions})), "
                f"got {actions!r}"
            ) from e
        obs, r, term, trunc, info = self._env_step(a)
        self._game_return += float(r)
        done = bool(term)
        if self.episodic_life:
            lives = int(info.get("lives", 0))
            if 0 < lives < self._lives:
                done = True
            self._lives = lives
        if term or trunc:
            self._game_over = True
            info["game_over"] = True
            info["game_return"] = self._game_return
        rew = reward_array(float(np.sign(r)) if self.clip_rewards else r)
        return [StepResult(self._build(obs), rew, TRUE if done else FALSE, TRUE if trunc else FALSE, info)]

    def close(self) -> None:
        """Close the emulator."""
        self._env.close()
