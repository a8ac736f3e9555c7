"""Fault-injection components for tests/faults: an env, a PPO trainer and policies that fail on purpose.

Loaded into every rank of a test job with ``experiment.imports=[faulty]`` (``tests/faults`` is on the
subprocess's ``PYTHONPATH``); they register themselves as ``fault-env``, ``fault-ppo``, ``fault-policy``,
``stale-policy`` (trains torch weights it never publishes), ``coin-policy`` (a numpy-only user policy
that implements nothing but the abstract methods) and ``sized-coin-policy`` / ``sized-coin-factory`` (the same,
with sizes it takes from the env's spaces through ``Policy.args_from_spaces``, and ``experiment.seed``).
Faults fire only on the ranks listed in ``ranks`` (``None``: every rank); a process finds its rank from the
launcher's environment (``PMI_RANK`` for MPICH/Hydra, ``OMPI_COMM_WORLD_RANK``, ``PMIX_RANK``, ``SLURM_PROCID``),
0 in a single-process run. Nothing here is imported by hpcrl itself.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from hpcrl.api.environment import Environment, StepResult
from hpcrl.api.environment import register as register_env
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import Policy
from hpcrl.api.policy import register as register_policy
from hpcrl.api.trainer import register as register_trainer

__all__ = [
    "ENV_FAULTS",
    "BAD_DATA",
    "GOOD_DATA",
    "CoinPolicy",
    "FaultyEnv",
    "SizedCoinPolicy",
    "launcher_rank",
    "make_fault_policy",
    "make_fault_ppo",
    "make_sized_coin",
    "make_stale_policy",
]


def _obs(x: Any) -> Any:
    return lambda r: setattr(r, "obs", NamedArray(obs=x))


#: Defects of agent 0's StepResult (fault ``data:<name>``), each with what the error must name.
BAD_DATA: dict[str, tuple[Any, str]] = {
    "obs_shape_1": (_obs(np.full(1, 7.0, np.float32)), "obs field 'obs': expected shape (4,), got (1,)"),
    "obs_0d": (_obs(np.array(7.0, np.float32)), "obs field 'obs': expected shape (4,), got ()"),
    "obs_scalar": (_obs(np.float32(7.0)), "obs field 'obs': expected a numpy float32 array of shape (4,), got numpy"),
    "obs_pyfloat": (_obs(7.0), "obs field 'obs': expected a numpy float32 array of shape (4,), got float 7.0"),
    "obs_extra_dim": (_obs(np.zeros((1, 4), np.float32)), "obs field 'obs': expected shape (4,), got (1, 4)"),
    "obs_long": (_obs(np.zeros(5, np.float32)), "obs field 'obs': expected shape (4,), got (5,)"),
    "obs_float64": (_obs(np.zeros(4, np.float64)), "obs field 'obs': expected dtype float32, got float64"),
    "obs_int64": (_obs(np.zeros(4, np.int64)), "obs field 'obs': expected dtype float32, got int64"),
    "obs_list": (_obs([0.0, 0.0, 0.0, 0.0]), "obs field 'obs': expected a numpy float32 array of shape (4,), got list"),
    "obs_dict": (lambda r: setattr(r, "obs", {"obs": np.zeros(4, np.float32)}), "obs: expected a NamedArray"),
    "obs_missing": (lambda r: setattr(r, "obs", NamedArray(other=np.zeros(4, np.float32))), "obs field"),
    "obs_extra": (
        lambda r: setattr(r, "obs", NamedArray(obs=np.zeros(4, np.float32), more=np.zeros(1, np.float32))),
        "obs fields: expected ['obs']",
    ),
    "obs_nan": (_obs(np.array([0, 0, np.nan, 0], np.float32)), "obs field 'obs': expected finite values"),
    "obs_inf": (_obs(np.array([0, -np.inf, 0, 0], np.float32)), "obs field 'obs': expected finite values"),
    "reward_shape_2": (lambda r: setattr(r, "reward", np.zeros(2, np.float32)), "reward: expected shape (1,)"),
    "reward_2d": (lambda r: setattr(r, "reward", np.zeros((1, 1), np.float32)), "reward: expected float32 array"),
    "reward_bool": (lambda r: setattr(r, "reward", np.array([True])), "reward: expected float32 array"),
    "reward_str": (lambda r: setattr(r, "reward", "1"), "reward: expected a float32 array of shape (1,)"),
    "reward_nan": (lambda r: setattr(r, "reward", np.array([np.nan], np.float32)), "reward: expected a finite value"),
    "reward_inf": (lambda r: setattr(r, "reward", float("inf")), "reward: expected a finite value"),
    "done_int": (lambda r: setattr(r, "done", np.array([2])), "done: expected 0 or 1 (or a bool), got 2 in a int64"),
    "done_float": (lambda r: setattr(r, "done", np.array([0.0])), "done: expected bool array of shape (1,)"),
    "done_pyint_neg": (lambda r: setattr(r, "done", -1), "done: expected 0 or 1 (or a bool), got int -1"),
    "done_shape_2": (lambda r: setattr(r, "done", np.zeros(2, np.bool_)), "done: expected bool array of shape (1,)"),
    "truncated_int": (lambda r: setattr(r, "truncated", np.array([3], np.uint8)), "truncated: expected 0 or 1"),
    "truncated_none": (lambda r: setattr(r, "truncated", None), "truncated: expected bool array of shape (1,)"),
}

#: Variations of agent 0's StepResult that the result contract accepts (fault ``data:<name>``).
GOOD_DATA: dict[str, Any] = {
    "reward_pyfloat": lambda r: setattr(r, "reward", 0.5),
    "reward_float64": lambda r: setattr(r, "reward", np.array([0.5])),
    "reward_0d": lambda r: setattr(r, "reward", np.array(0.5, np.float32)),
    "reward_int": lambda r: setattr(r, "reward", np.array([2])),
    "done_pybool": lambda r: setattr(r, "done", False),
    "done_0d": lambda r: setattr(r, "done", np.array(False)),
    "done_uint8": lambda r: setattr(r, "done", np.zeros(1, np.uint8)),  # SRL's convention
    "done_pyint": lambda r: setattr(r, "done", 0),
    "truncated_int64": lambda r: setattr(r, "truncated", np.array([0])),
}

ENV_FAULTS = (
    "none",
    "raise_step",  # every env instance raises in step() at its own step ``at_step`` (recreate recovers)
    "raise_reset_once",  # the first reset() after ``at_step`` process steps raises, once (recreate recovers)
    "raise_forever",  # from ``at_step`` process steps on: step() raises and every reset() raises
    "hang",  # step() at ``at_step`` sleeps ``hang_seconds`` (a hung simulator)
    "wrong_shape",  # obs 'obs' gets one element too many
    "wrong_dtype",  # obs 'obs' becomes float64
    "nan_obs",
    "inf_obs",
    "nan_reward",
    "inf_reward",
    "too_few",  # one StepResult fewer than agent_count
    "too_many",  # one StepResult more than agent_count
    *(f"data:{name}" for name in (*BAD_DATA, *GOOD_DATA)),  # agent 0's result at ``at_step``, see BAD_DATA
    "garbage_msg",  # send 256 random bytes to the trainer on the SAMPLE tag (a foreign sender)
    "forged_header",  # send a well-formed SAMPLE header claiming 2**40 rows and a matching payload size
)

_PROCESS_STEPS = 0  # steps of every FaultyEnv in this process
_BROKEN = False  # raise_forever / raise_reset_once: the fault has started


def launcher_rank() -> int:
    """This process's rank according to the MPI launcher's environment (0 when not launched by one)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


class FaultyEnv(Environment):
    """A tiny single- or multi-agent task (4 floats in, 2 actions) that injects one configurable fault.

    Args:
        fault: one of :data:`ENV_FAULTS`.
        at_step: when the fault fires (per env instance for ``raise_step``/``hang``/data faults,
            per process for ``raise_reset_once``/``raise_forever``).
        ranks: the ranks on which the fault is active (``None``: all).
        agents: agents per env.
        episode_length: steps per episode.
        hang_seconds: how long ``hang`` sleeps.
        seed: initial seed of the observation generator.
    """

    def __init__(
        self,
        fault: str = "none",
        at_step: int = 10,
        ranks: list[int] | None = None,
        agents: int = 1,
        episode_length: int = 25,
        hang_seconds: float = 3600.0,
        seed: int = 0,
    ) -> None:
        if fault not in ENV_FAULTS:
            raise ValueError(f"fault-env: unknown fault {fault!r}; expected one of {ENV_FAULTS}")
        self.fault = fault
        self.at_step = int(at_step)
        self.active = ranks is None or launcher_rank() in ranks
        self.agents = int(agents)
        self.episode_length = int(episode_length)
        self.hang_seconds = float(hang_seconds)
        self.rng = np.random.default_rng(seed)
        self.t = 0
        self.steps = 0

    @property
    def agent_count(self) -> int:
        """``agents``."""
        return self.agents

    @property
    def observation_spaces(self) -> list[Any]:
        """``Dict(obs=Box(-1, 1, (4,), float32))`` per agent."""
        from gymnasium import spaces

        return [spaces.Dict(obs=spaces.Box(-1.0, 1.0, (4,), np.float32))] * self.agents

    @property
    def action_spaces(self) -> list[Any]:
        """``Discrete(2)`` per agent."""
        from gymnasium import spaces

        return [spaces.Discrete(2)] * self.agents

    def seed(self, seed: int) -> None:
        """Reseed the observation generator."""
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ results
    def _results(self, reward: float, done: bool) -> list[StepResult | None]:
        out: list[StepResult | None] = []
        for _ in range(self.agents):
            obs = self.rng.uniform(-1.0, 1.0, 4).astype(np.float32)
            out.append(
                StepResult(
                    NamedArray(obs=obs),
                    np.array([reward], np.float32),
                    np.array([done]),
                    np.array([False]),
                    {},
                )
            )
        return out

    def _corrupt(self, results: list[StepResult | None]) -> list[StepResult | None]:
        r = results[0]
        assert r is not None
        f = self.fault
        if f == "wrong_shape":
            r.obs = NamedArray(obs=np.zeros(5, np.float32))
        elif f == "wrong_dtype":
            r.obs = NamedArray(obs=np.zeros(4, np.float64))
        elif f in ("nan_obs", "inf_obs"):
            bad = np.zeros(4, np.float32)
            bad[2] = np.nan if f == "nan_obs" else np.inf
            r.obs = NamedArray(obs=bad)
        elif f in ("nan_reward", "inf_reward"):
            r.reward = np.array([np.nan if f == "nan_reward" else np.inf], np.float32)
        elif f == "too_few":
            return results[:-1]
        elif f == "too_many":
            return [*results, results[0]]
        elif f.startswith("data:"):
            name = f[len("data:") :]
            corrupt = BAD_DATA[name][0] if name in BAD_DATA else GOOD_DATA[name]
            corrupt(r)
        return results

    # ------------------------------------------------------------------ API
    def reset(self) -> list[StepResult | None]:
        """Start an episode (may raise, for the reset faults)."""
        global _BROKEN
        if self.active and self.fault == "raise_forever" and _BROKEN:
            raise RuntimeError("injected reset failure (raise_forever)")
        if self.active and self.fault == "raise_reset_once" and not _BROKEN and _PROCESS_STEPS >= self.at_step:
            _BROKEN = True
            raise RuntimeError("injected reset failure (raise_reset_once)")
        self.t = 0
        return self._results(0.0, False)

    def step(self, actions: list[NamedArray | None]) -> list[StepResult | None]:
        """Advance one step; fires the configured fault when due."""
        global _PROCESS_STEPS, _BROKEN
        self.t += 1
        self.steps += 1
        _PROCESS_STEPS += 1
        results = self._results(1.0, self.t >= self.episode_length)
        if not self.active or self.fault == "none":
            return results
        f = self.fault
        if f == "raise_step" and self.steps == self.at_step:
            raise RuntimeError(f"injected step failure at step {self.steps}")
        if f == "raise_forever" and (_BROKEN or _PROCESS_STEPS >= self.at_step):
            _BROKEN = True
            raise RuntimeError(f"injected step failure (raise_forever) after {_PROCESS_STEPS} steps")
        if f == "hang" and self.steps == self.at_step:
            time.sleep(self.hang_seconds)
        if f in ("garbage_msg", "forged_header") and _PROCESS_STEPS == self.at_step:
            _inject_sample_message(f)
        if self.steps == self.at_step:
            return self._corrupt(results)
        return results


def _inject_sample_message(kind: str) -> None:
    """Send a malformed message to trainer rank 0 on the SAMPLE tag, from this (actor) rank."""
    import gc

    from mpi4py import MPI

    from hpcrl.comm.channel import SendChannel
    from hpcrl.comm.tags import Tag
    from hpcrl.comm.wire import HEADER_NBYTES, KIND_DATA, write_header

    comm = MPI.COMM_WORLD
    if kind == "garbage_msg":
        buf = np.random.default_rng(7).integers(0, 256, 256, dtype=np.uint8)
    else:
        # Forge a header that is valid in every field but the batch size, so the receiver's size check is the
        # one that must refuse it: same schema id and next sequence number as the actor's real sample channel.
        chans = [o for o in gc.get_objects() if isinstance(o, SendChannel) and o.tag == Tag.SAMPLE]
        sid, seq, row = (chans[0]._schema_id, chans[0].seq, chans[0]._row_nbytes) if chans else (1, 0, 1)
        rows = 2**40
        buf = np.zeros(HEADER_NBYTES, np.uint8)
        write_header(buf, KIND_DATA, sid, (rows, 1), 0, seq, rows * max(1, row))
    comm.Send([buf, MPI.BYTE], 0, int(Tag.SAMPLE))


# ====================================================================== trainer
_FAULT_PPO: Any = None


def _fault_ppo_class() -> Any:
    """Define the PPO subclass on first use (keeps torch out of ``import faulty``)."""
    global _FAULT_PPO
    if _FAULT_PPO is not None:
        return _FAULT_PPO
    import torch

    from hpcrl.trainers.ppo import PPOTrainer

    class FaultyPPO(PPOTrainer):
        """PPO that makes the loss or the gradients non-finite, raises, or bloats its checkpoints on cue."""

        def __init__(
            self,
            policy: Any,
            nan_steps: list[int] | None = None,
            nan_kind: str = "loss",
            raise_at: int = 0,
            ranks: list[int] | None = None,
            ballast_mib: float = 0.0,
            ballast_from: int = 0,
            ballast_until: int = 2**62,
            init_sleep: float = 0.0,
            step_sleep: float = 0.0,
            return_none_at: int = 0,
            **kwargs: Any,
        ) -> None:
            super().__init__(policy, **kwargs)
            if nan_kind not in ("loss", "grad"):
                raise ValueError(f"fault-ppo: nan_kind must be 'loss' or 'grad', got {nan_kind!r}")
            self.nan_steps = set(nan_steps or [])
            self.nan_kind = nan_kind
            self.raise_at = int(raise_at)
            self.active = ranks is None or launcher_rank() in ranks
            self.ballast_bytes = int(ballast_mib * (1 << 20))
            self.ballast_from = int(ballast_from)
            self.ballast_until = int(ballast_until)
            self.calls = 0
            self.step_sleep = float(step_sleep)
            self.return_none_at = int(return_none_at)
            self._poison = False
            if self.active and init_sleep > 0:  # a slow start: a big model, a large checkpoint to restore
                time.sleep(init_sleep)
            inner = policy.analyze

            def analyze(sample: Any, target: str = "ppo", **kw: Any) -> Any:
                res = inner(sample, target=target, **kw)
                if self._poison and self.nan_kind == "loss":
                    res.log_prob = res.log_prob * float("nan")
                return res

            def poison_grad(grad: torch.Tensor) -> torch.Tensor:
                return torch.full_like(grad, float("nan")) if self._poison and self.nan_kind == "grad" else grad

            policy.analyze = analyze
            next(iter(policy.parameters())).register_hook(poison_grad)  # finite loss, NaN gradient

        def step(self, samples: Any) -> Any:
            self.calls += 1
            if self.active and self.raise_at and self.calls == self.raise_at:
                raise RuntimeError(f"injected trainer failure at trainer step call {self.calls}")
            self._poison = self.active and self.calls in self.nan_steps
            if self.active and self.step_sleep > 0:  # a slow trainer (a big model on a slow device)
                time.sleep(self.step_sleep)
            try:
                result = super().step(samples)
            finally:
                self._poison = False
            if self.active and self.return_none_at and self.calls == self.return_none_at:
                return None  # a trainer that forgot its return statement
            return result

        def get_checkpoint(self) -> dict[str, Any]:
            ckpt = super().get_checkpoint()
            if self.ballast_bytes and self.ballast_from <= self.calls < self.ballast_until:
                # random bytes: incompressible, and fletcher32 has to read all of them
                ckpt["ballast"] = np.random.default_rng(self.calls).integers(
                    0, 255, self.ballast_bytes, dtype=np.uint8, endpoint=True
                )
            return ckpt

        def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            checkpoint = {k: v for k, v in checkpoint.items() if k != "ballast"}
            super().load_checkpoint(checkpoint)

    _FAULT_PPO = FaultyPPO
    return FaultyPPO


def make_fault_ppo(policy: Any, **kwargs: Any) -> Any:
    """``fault-ppo``: :class:`hpcrl.trainers.ppo.PPOTrainer` plus the fault knobs of ``FaultyPPO``.

    Args:
        policy: the policy.
        **kwargs: ``nan_steps`` (1-based trainer step calls whose loss/gradients are made NaN),
            ``nan_kind`` (``loss`` or ``grad``), ``raise_at`` (call that raises RuntimeError), ``ranks``,
            ``ballast_mib``/``ballast_from``/``ballast_until`` (random bytes added to the checkpoints written
            while ``ballast_from <= calls < ballast_until``), and
            ``init_sleep`` (seconds the constructor sleeps: a slow start-up), ``step_sleep`` (seconds every
            step sleeps: a slow trainer), ``return_none_at`` (call whose ``step`` returns None instead of its
            TrainerStepResult), and every PPO argument.
    """
    return _fault_ppo_class()(policy, **kwargs)


# ====================================================================== policy
def make_fault_policy(raise_at: int = 0, short_at: int = 0, ranks: list[int] | None = None, **kwargs: Any) -> Any:
    """``fault-policy``: ``actor-critic-separate`` whose ``rollout`` misbehaves at one call on ``ranks``.

    ``raise_at``: that call raises. ``short_at``: that call returns one action row fewer than the request has.
    ``obs_dim`` and ``action_dim`` must be given (only the built-in names are inferred from the env).
    """
    from hpcrl.policies.actor_critic import make_separate

    policy = make_separate(**kwargs)
    if (raise_at or short_at) and (ranks is None or launcher_rank() in ranks):
        inner = policy.rollout
        calls = [0]

        def rollout(request: Any, **kw: Any) -> Any:
            calls[0] += 1
            if calls[0] == raise_at:
                raise RuntimeError(f"injected policy failure at rollout call {calls[0]}")
            result = inner(request, **kw)
            if calls[0] == short_at:
                result.action = result.action[:-1]
            return result

        policy.rollout = rollout  # type: ignore[method-assign]
    return policy


register_env("fault-env", FaultyEnv)
register_trainer("fault-ppo", make_fault_ppo)
register_policy("fault-policy", make_fault_policy)


# ====================================================================== user policies
class CoinPolicy(Policy):
    """A numpy-only user policy that implements only the abstract methods (no torch, no version counter).

    Random actions from ``Discrete(action_dim)``; ``is_evaluation`` rows take action 0. With the ``null``
    trainer it exercises the whole publish path of a parameterless policy (empty ``state_dict``, the base
    class's version counter).

    Args:
        action_dim: number of actions.
        seed: seed of the action generator.
    """

    def __init__(self, action_dim: int = 2, seed: int = 0) -> None:
        self.n = int(action_dim)
        self.rng = np.random.default_rng(seed)

    def rollout(self, request: Any, **kwargs: Any) -> Any:
        from hpcrl.api.environment import Action
        from hpcrl.api.policy import RolloutResult

        b = len(request.obs)
        x = self.rng.integers(0, self.n, b).astype(np.int64)
        if request.is_evaluation is not None:
            x[np.asarray(request.is_evaluation, bool).reshape(b)] = 0
        log_prob = np.full((b, 1), -np.log(self.n), np.float32)
        analysis = NamedArray(log_prob=log_prob, value=np.zeros((b, 1), np.float32))
        return RolloutResult(action=Action(x=x), policy_state=request.policy_state, analyzed_result=analysis)

    def analyze(self, sample: Any, target: str = "ppo", **kwargs: Any) -> Any:
        shape = (*sample.reward.shape[:2], 1)
        return NamedArray(log_prob=np.full(shape, -np.log(self.n), np.float32), value=np.zeros(shape, np.float32))

    def get_checkpoint(self) -> dict[str, Any]:
        return {"version": self.version}

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.set_version(int(checkpoint["version"]))


def make_stale_policy(**kwargs: Any) -> Any:
    """``stale-policy``: ``actor-critic-separate`` whose ``state_dict``/``load_state_dict`` are the base class's.

    Its trainer trains real torch weights, but nothing is published: under MPI every actor would act with
    the initial weights for the whole run (``obs_dim`` and ``action_dim`` must be given).
    """
    from hpcrl.api.policy import Policy as Base
    from hpcrl.policies.actor_critic import ActorCriticPolicy

    class StalePolicy(ActorCriticPolicy):
        state_dict = Base.state_dict  # type: ignore[assignment]
        load_state_dict = Base.load_state_dict  # type: ignore[assignment]

    return StalePolicy(shared=False, **kwargs)


register_policy("coin-policy", CoinPolicy)
register_policy("stale-policy", make_stale_policy)


class SizedCoinPolicy(CoinPolicy):
    """``coin-policy`` that needs its sizes (``obs_dim``, ``action_dim``) and takes them from the env's spaces.

    Its ``args_from_spaces`` fills ``obs_dim`` (a 1-D ``Box`` under ``obs``) and ``action_dim`` (``Discrete``)
    where ``policy.args`` omits them and refuses given ones that differ; ``takes_seed`` asks for
    ``experiment.seed``. ``rollout`` refuses observations of another size, so the dims are really used.

    Args:
        obs_dim: features of ``obs``.
        action_dim: number of actions.
        seed: seed of the action generator.
    """

    takes_seed = True

    @classmethod
    def args_from_spaces(cls, args: dict[str, Any], observation_space: Any, action_space: Any) -> dict[str, Any]:
        if observation_space is None or action_space is None:
            return args
        sizes = {"obs_dim": int(observation_space["obs"].shape[0]), "action_dim": int(action_space.n)}
        for key, value in sizes.items():
            if args.setdefault(key, value) != value:
                raise ValueError(f"{key}={args[key]} does not fit the env's spaces ({key}={value})")
        return args

    def __init__(self, obs_dim: int, action_dim: int, seed: int = 0) -> None:
        super().__init__(action_dim, seed)
        self.obs_dim = int(obs_dim)
        self.seed = seed

    def rollout(self, request: Any, **kwargs: Any) -> Any:
        got = request.obs.obs.shape[1:]
        if got != (self.obs_dim,):
            raise ValueError(f"obs of shape {got}, expected ({self.obs_dim},)")
        return super().rollout(request, **kwargs)


def make_sized_coin(**kwargs: Any) -> SizedCoinPolicy:
    """``sized-coin-factory``: a factory function; its return annotation gives hpcrl the class's hooks."""
    return SizedCoinPolicy(**kwargs)


register_policy("sized-coin-policy", SizedCoinPolicy)
register_policy("sized-coin-factory", make_sized_coin)
