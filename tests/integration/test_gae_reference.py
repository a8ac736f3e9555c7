"""PPO targets of a real one-process run against an independent reference built from the env's own log.

A scripted env logs every transition it makes (observation, reward, terminated, truncated, the
observation it moved to). The run goes through the real actor ring, batcher and PPO trainer
(``run_local``); a trainer subclass keeps each batch and the advantages and returns the PPO trainer
computes from it. The reference knows nothing of hpcrl's row layout: it walks the env's transitions
in the order they happened, as Stable-Baselines3's rollout buffer does (on a time-limit cut, the
reward gets ``gamma * V(last observation)``; the recursion stops at every episode end; the rollout's
last transition bootstraps from the value of the observation that follows it), with values looked up
by observation. Episodes end by termination and by truncation inside fragments, at fragment ends and
across fragment boundaries, in two envs out of phase.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from hpcrl.api import config
from hpcrl.api import environment as env_api
from hpcrl.api import trainer as trainer_api
from hpcrl.api.environment import Action, Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.roles.local import run_local
from hpcrl.trainers.ppo import PPOTrainer

GAMMA, LAM = 0.9, 0.8
#: (length, how it ends) of the episodes of each env, cycled
SCRIPT = {
    0: [(3, "term"), (5, "trunc"), (2, "term"), (7, "trunc"), (4, "term")],
    1: [(6, "trunc"), (1, "term"), (4, "term"), (3, "trunc")],
}
LOG: dict[int, list[dict[str, Any]]] = {}
BATCHES: list[dict[str, Any]] = []


class Scripted(Environment):
    """obs = (env index, episode, step, 1); reward = 0.5 + step / 4 - env; ends as :data:`SCRIPT` says."""

    def __init__(self) -> None:
        self.index = len(LOG)  # the ring builds env 0, then env 1
        self.episode = -1
        self.t = 0
        LOG[self.index] = []

    @property
    def agent_count(self) -> int:
        return 1

    @property
    def observation_spaces(self) -> list[Any]:
        from gymnasium import spaces

        return [spaces.Dict(obs=spaces.Box(-np.inf, np.inf, (4,), np.float32))]

    @property
    def action_spaces(self) -> list[Any]:
        from gymnasium import spaces

        return [spaces.Discrete(2)]

    def _obs(self) -> np.ndarray:
        return np.array([self.index, self.episode, self.t, 1.0], np.float32)

    def reset(self) -> list[StepResult | None]:
        self.episode += 1
        self.t = 0
        return [StepResult(NamedArray(obs=self._obs()), np.zeros(1, np.float32), np.zeros(1, bool), np.zeros(1, bool))]

    def step(self, actions: list[Action | None]) -> list[StepResult | None]:
        script = SCRIPT[self.index % 2]
        length, how = script[self.episode % len(script)]
        before = self._obs()
        self.t += 1
        reward = 0.5 + self.t / 4 - self.index
        end = self.t >= length
        after = self._obs()
        LOG[self.index].append(
            {
                "obs": tuple(before),
                "reward": reward,
                "term": end and how == "term",
                "trunc": end and how == "trunc",
                "next": tuple(after),
            }
        )
        return [
            StepResult(
                NamedArray(obs=after),
                np.array([reward], np.float32),
                np.array([end and how == "term"]),
                np.array([end and how == "trunc"]),
            )
        ]


class RecordingPPO(PPOTrainer):
    """The PPO trainer, keeping every batch with the targets it computed (and not changing the policy)."""

    def step(self, samples: Any) -> Any:
        d = self._prepare(samples)
        adv, ret, _ = self._targets(d)
        with torch.no_grad():  # the policy never changes here: a fresh evaluation must give the stored values
            fresh = self.policy.analyze(d["lean"], target="ppo").value[..., 0].numpy()
        BATCHES.append(
            {
                "obs": np.asarray(samples.obs.obs),
                "value": d["value"][..., 0].numpy(),
                "fresh_value": fresh,
                "adv": adv.numpy(),
                "ret": ret[..., 0].numpy(),
                "done": d["done"].numpy(),
                "truncated": d["truncated"].numpy(),
            }
        )
        self.policy.inc_version()
        return trainer_api.TrainerStepResult(stats={}, step=len(BATCHES))


def _reference(log: list[dict[str, Any]], window: list[tuple], last_obs: tuple, value: dict[tuple, float]) -> dict:
    """SB3-style GAE over the transitions that start at the observations in ``window`` (in order)."""
    by_obs = {t["obs"]: t for t in log}
    trans = [by_obs[o] for o in window]
    adv: dict[tuple, float] = {}
    last = 0.0
    for i in range(len(trans) - 1, -1, -1):
        t = trans[i]
        r = t["reward"] + (GAMMA * value[t["next"]] if t["trunc"] else 0.0)
        ended = t["term"] or t["trunc"]
        if i == len(trans) - 1 and not ended:
            assert t["next"] == last_obs, "the rollout's last transition leads to the bootstrap observation"
        next_v = 0.0 if ended else value[t["next"]]
        delta = r + GAMMA * next_v - value[t["obs"]]
        last = delta + GAMMA * LAM * (0.0 if ended else 1.0) * last
        adv[t["obs"]] = last
    return adv


def test_ppo_targets_equal_an_independent_reference_from_the_env_log(tmp_path) -> None:
    env_api.register("gae-reference-scripted", Scripted)
    trainer_api.register("gae-reference-recording", RecordingPPO)
    LOG.clear()
    BATCHES.clear()
    cfg = config.from_dict(
        {
            "experiment": {"name": "gae-ref", "seed": 3, "total_frames": 9 * 2 * 6},
            "environment": {"type_": "gae-reference-scripted"},
            "policy": {"type_": "actor-critic-separate", "args": {"hidden_dim": 8}},
            "trainer": {"type_": "gae-reference-recording", "args": {"gamma": GAMMA, "gae_lambda": LAM}},
            "actor": {"envs_per_actor": 2, "fragment_length": 9},
            "run": {"dir": str(tmp_path / "run"), "trace": False, "checkpoint_every_seconds": 0, "progress": "off"},
        }
    )
    run_local(cfg)
    assert len(BATCHES) >= 5
    checked = ended_term = ended_trunc = 0
    for b in BATCHES:
        t_len, n_cols = b["adv"].shape
        # each row's stored value is the value of that row's observation (not of a neighbour's)
        np.testing.assert_allclose(b["value"], b["fresh_value"], rtol=1e-5, atol=1e-6)
        value = {tuple(o): float(v) for o, v in zip(b["obs"].reshape(-1, 4), b["value"].reshape(-1))}
        for col in range(n_cols):
            obs = [tuple(o) for o in b["obs"][:, col]]
            env = int(obs[0][0])
            decisions = [obs[t] for t in range(t_len) if not (b["done"][t, col] or b["truncated"][t, col])]
            # the reference needs only the env's log: the rows' flags must say what the env said
            log = {t["next"]: t for t in LOG[env]}
            for t in range(t_len + 1):
                if obs[t] in log:
                    assert bool(b["done"][t, col]) == log[obs[t]]["term"]
                    assert bool(b["truncated"][t, col]) == log[obs[t]]["trunc"]
            ref = _reference(LOG[env], decisions, obs[t_len], value)
            for t in range(t_len):
                if b["done"][t, col] or b["truncated"][t, col]:
                    assert b["adv"][t, col] == 0.0
                    continue
                assert math.isclose(float(b["adv"][t, col]), ref[obs[t]], rel_tol=1e-5, abs_tol=1e-5), (t, col)
                assert math.isclose(float(b["ret"][t, col]), ref[obs[t]] + value[obs[t]], rel_tol=1e-5, abs_tol=1e-5)
                checked += 1
            ended_term += int(b["done"][:t_len, col].sum())
            ended_trunc += int(b["truncated"][:t_len, col].sum())
    assert checked > 60 and ended_term >= 3 and ended_trunc >= 3
