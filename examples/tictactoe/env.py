"""A PettingZoo classic two-player game against a uniformly random legal opponent, registered as ``vs-random``.

The learner is one of the two players (which one is drawn per episode); the other player's moves are
drawn uniformly among its legal moves inside this wrapper, so the run trains one policy. ``two-player``
gives both players to the run as agents 0 and 1, for self-play (``selfplay.yaml``). The PettingZoo
adapter maps the game's ``action_mask`` onto the observation field ``available_action``, which the
actor-critic policy applies to its logits: the learner never plays an illegal move.

Check it before training (from the repository root)::

    python -c "import examples.tictactoe.env; from hpcrl.testing import test_environment; \\
        print(test_environment('vs-random'))"
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from hpcrl.api.environment import AVAILABLE_ACTION, Action, Environment, StepResult, register
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.pettingzoo_env import PettingZooEnvironment

__all__ = ["VsRandom", "TwoPlayer"]


class VsRandom(Environment):
    """One learner against a random legal opponent in a turn-based PettingZoo game.

    Observations: ``obs`` (the game's board planes, flattened to ``float32``, seen from the player to
    move) and ``available_action`` (the game's ``action_mask``). Rewards are the game's: +1 win,
    -1 loss, 0 draw, at the end of the game.

    Args:
        game: the PettingZoo game, ``"module:env_module"`` (two players, turn-based, with ``action_mask``).
        seed: seeds the side draw, the opponent's moves and the game.
        learner_side: ``random`` (drawn per episode), ``first`` or ``second``.
    """

    def __init__(self, game: str = "pettingzoo.classic:tictactoe_v3", seed: int = 0, learner_side: str = "random"):
        if learner_side not in ("random", "first", "second"):
            raise ValueError(f"vs-random: learner_side must be 'random', 'first' or 'second', got {learner_side!r}")
        self.game = PettingZooEnvironment(game)
        if self.game.agent_count != 2:
            raise ValueError(f"vs-random: {game!r} has {self.game.agent_count} players, expected 2")
        space = self.game.observation_spaces[0]
        if AVAILABLE_ACTION not in space.spaces:
            raise ValueError(f"vs-random: {game!r} has no action_mask in its observation")
        board = space.spaces["observation"]
        self.board_size = int(np.prod(board.shape))
        self.n_actions = int(space.spaces[AVAILABLE_ACTION].shape[0])
        self.learner_side = learner_side
        self.rng = np.random.default_rng(seed)
        self.side = 0
        self.legal = np.zeros(self.n_actions, np.int8)  # the learner's legal moves now

    @property
    def agent_count(self) -> int:
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        return [
            spaces.Dict(
                obs=spaces.Box(0.0, 1.0, (self.board_size,), np.float32),
                available_action=spaces.Box(0, 1, (self.n_actions,), np.int8),
            )
        ]

    @property
    def action_spaces(self) -> list[Any]:
        return [self.game.action_spaces[0]]

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.game.seed(seed)

    def reset(self) -> list[StepResult | None]:
        if self.learner_side == "random":
            self.side = int(self.rng.integers(2))
        else:
            self.side = 0 if self.learner_side == "first" else 1
        return self._learners_turn(self.game.reset())

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        a = actions[0]
        move = int(a.x) if a is not None else -1
        if not 0 <= move < self.n_actions or not self.legal[move]:
            # the game itself would end with a loss; here an illegal move is a bug worth stopping for
            raise ValueError(f"vs-random: illegal move {move}; legal moves were {np.flatnonzero(self.legal).tolist()}")
        moves: list[NamedArray | None] = [None, None]
        moves[self.side] = actions[0]
        return self._learners_turn(self.game.step(moves))

    def _learners_turn(self, results: list[StepResult | None]) -> list[StepResult | None]:
        """Play the opponent's moves until the learner is to move or the game is over; the learner's result."""
        while True:
            mine, theirs = results[self.side], results[1 - self.side]
            if mine is not None and (theirs is None or bool(mine.done[0]) or bool(mine.truncated[0])):
                return [self._view(mine)]
            assert theirs is not None, "a turn-based game gives a result to the player to move"
            legal = np.flatnonzero(theirs.obs[AVAILABLE_ACTION])
            moves: list[NamedArray | None] = [None, None]
            moves[1 - self.side] = Action(x=np.int64(self.rng.choice(legal)))
            results = self.game.step(moves)

    def _view(self, r: StepResult) -> StepResult:
        self.legal = r.obs[AVAILABLE_ACTION]
        board = np.asarray(r.obs["observation"], np.float32).reshape(-1)
        obs = NamedArray(obs=board, available_action=r.obs[AVAILABLE_ACTION])
        return StepResult(obs, r.reward, r.done, r.truncated, r.info)

    def close(self) -> None:
        self.game.close()


class TwoPlayer(Environment):
    """Both players of a turn-based two-player PettingZoo game as agents 0 and 1 (for self-play).

    Agent 0 plays the first seat in even-numbered episodes and the second seat in odd ones (or a drawn seat
    with ``sides: random``); agent 1 plays the other seat. Only the agent to move gets a result; when the
    game ends both get their final results. Observations and rewards are those of ``vs-random``, so a
    policy trained here plays ``vs-random`` as it is.

    Args:
        game: the PettingZoo game, ``"module:env_module"`` (two players, turn-based, with ``action_mask``).
        seed: seeds the seat draw (``sides: random``) and the game.
        sides: ``alternate`` (agent 0 moves first every other episode), ``random`` or ``fixed`` (always first).
    """

    def __init__(self, game: str = "pettingzoo.classic:tictactoe_v3", seed: int = 0, sides: str = "alternate"):
        if sides not in ("alternate", "random", "fixed"):
            raise ValueError(f"two-player: sides must be 'alternate', 'random' or 'fixed', got {sides!r}")
        self.view = VsRandom(game, seed)  # the observation layout and checks of vs-random
        self.game = self.view.game
        self.sides = sides
        self.rng = np.random.default_rng(seed)
        self.episode = 0
        self.seat = [0, 1]  # seat[agent] = the game's player index

    @property
    def agent_count(self) -> int:
        return 2

    @property
    def observation_spaces(self) -> list[Any]:
        return self.view.observation_spaces * 2

    @property
    def action_spaces(self) -> list[Any]:
        return [self.game.action_spaces[0]] * 2

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.game.seed(seed)

    def reset(self) -> list[StepResult | None]:
        first = self.episode % 2 == 0 if self.sides == "alternate" else self.sides == "fixed" or self.rng.integers(2)
        self.episode += 1
        self.seat = [0, 1] if first else [1, 0]
        return self._agents(self.game.reset())

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        moves: list[NamedArray | None] = [None, None]
        for agent, a in enumerate(actions):
            moves[self.seat[agent]] = a
        return self._agents(self.game.step(moves))

    def _agents(self, results: list[StepResult | None]) -> list[StepResult | None]:
        return [None if results[s] is None else self.view._view(results[s]) for s in self.seat]  # type: ignore[arg-type]

    def close(self) -> None:
        self.game.close()


register("vs-random", VsRandom)
register("two-player", TwoPlayer)
