"""Building a run's components from its config: user imports, the resolved policy spec, policy, trainer, device."""

from __future__ import annotations

import dataclasses
import logging
import os
import random

import numpy as np

from hpcrl.acting.rings import env_label
from hpcrl.api import config
from hpcrl.api.environment import Environment
from hpcrl.api.environment import make as make_env
from hpcrl.api.policy import Policy
from hpcrl.api.policy import make as make_policy
from hpcrl.api.trainer import Trainer
from hpcrl.api.trainer import make as make_trainer

__all__ = [
    "import_user_modules",
    "resolve_experiment",
    "resolve_policy_spec",
    "fill_policy_args",
    "build_policy",
    "build_trainer",
    "seed_everything",
    "set_torch_threads",
    "resolve_device",
    "check_publishes",
]

log = logging.getLogger(__name__)

#: built-in policies whose obs_dim/action_dim can be inferred from the env's spaces.
_INFERABLE = {"actor-critic-separate", "actor-critic-shared"}


def import_user_modules(cfg: config.ExperimentConfig) -> None:
    """Import ``experiment.imports`` (user modules that register envs, policies, trainers).

    Raises:
        ConfigError: a module cannot be imported, or raises while importing (names it and the config key).
    """
    import importlib

    for i, name in enumerate(cfg.experiment.imports):
        with config.building(f"experiment.imports[{i}]", f"cannot import module {name!r}"):
            importlib.import_module(name)


def resolve_experiment(cfg: config.ExperimentConfig) -> tuple[config.ExperimentConfig, int]:
    """Probe the env once: the config with its policy spec resolved, and the env's ``agent_count``.

    See :func:`resolve_policy_spec`. The resolved config is what the run saves and checkpoints.
    """
    label = env_label(cfg.environment)
    with config.building("environment", f"cannot build env {label} with args {cfg.environment.args}"):
        env = make_env(cfg.environment)
        agents = int(env.agent_count)
    try:
        with config.building("policy.args", f"policy {cfg.policy.type_!r} does not fit env {label}"):
            spec = fill_policy_args(cfg.policy, env, label)
    finally:
        env.close()
    return dataclasses.replace(cfg, policy=spec), agents


def resolve_policy_spec(cfg: config.ExperimentConfig) -> config.Policy:
    """The policy spec with ``obs_dim``/``action_dim`` filled from the env's spaces when omitted.

    For the built-in actor-critic policies the env's declared spaces also check the
    given dims: a mismatch raises ``ValueError`` naming the input and both shapes.
    """
    if cfg.policy.type_ not in _INFERABLE:
        return cfg.policy
    env = make_env(cfg.environment)
    try:
        return fill_policy_args(cfg.policy, env, env_label(cfg.environment))
    finally:
        env.close()


def fill_policy_args(spec: config.Policy, env: Environment, label: str) -> config.Policy:
    """Fill and check a built-in actor-critic spec's input/action dims from ``env``'s declared spaces."""
    if spec.type_ not in _INFERABLE:
        return spec
    obs_spaces, act_spaces = env.observation_spaces, env.action_spaces
    if not obs_spaces or not act_spaces:
        if "obs_dim" not in spec.args or "action_dim" not in spec.args:
            raise ValueError(
                f"policy {spec.type_!r}: env {label} declares no observation/action spaces, "
                f"so policy.args.obs_dim and policy.args.action_dim must be given"
            )
        return spec
    from hpcrl.policies.actor_critic import check_policy_against_spaces, policy_args_from_spaces

    inferred = policy_args_from_spaces(obs_spaces[0], act_spaces[0])
    args = dict(spec.args)
    for key, value in inferred.items():
        args.setdefault(key, value)
    check_policy_against_spaces(args, obs_spaces[0], act_spaces[0])
    return dataclasses.replace(spec, args=args)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; any other device must exist here.

    Raises:
        ConfigError: not a torch device, or a GPU torch does not see (names ``training.device``).
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError) as e:
        raise config.ConfigError(
            f"training.device: {device!r} is not a torch device ({' '.join(str(e).split())}); "
            f"expected auto, cpu or cuda[:N]"
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise config.ConfigError(f"training.device: {device!r}, but torch sees {count} GPU(s) on this host")
    return device


def build_policy(spec: config.Policy, device: str = "cpu", seed: int | None = None) -> Policy:
    """Build the policy and move it to ``device`` (if it supports ``to``)."""
    args = dict(spec.args)
    if seed is not None and "seed" not in args and spec.type_ in _INFERABLE:
        args["seed"] = seed
    with config.building("policy", f"cannot build policy {spec.type_!r} with args {spec.args}"):
        policy = make_policy(dataclasses.replace(spec, args=args))
    to = getattr(policy, "to", None)
    if callable(to) and device != "cpu":
        with config.building("training.device", f"cannot move policy {spec.type_!r} to device {device!r}"):
            to(device)
    return policy


def build_trainer(spec: config.Trainer, policy: Policy, training: config.Training) -> Trainer:
    """Build the trainer for ``policy`` and apply the system's non-finite policy.

    Nothing about the run's length or layout is passed to the trainer: schedules read
    ``trainer.progress`` (env frames), which the learner sets before every step.

    Args:
        spec: the trainer spec.
        policy: the policy to optimise.
        training: the trainer-role settings.
    """
    trainer = make_trainer(spec, policy)
    trainer.nonfinite = training.nonfinite
    return trainer


def seed_everything(seed: int) -> None:
    """Seed python, numpy and (if already imported) torch."""
    random.seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def set_torch_threads(n: int) -> None:
    """Limit torch intra-op (and, if still possible, inter-op) threads to ``n`` on this rank.

    Only roles that run torch call this (it imports torch). Without it, tiny policy
    forward passes on oversubscribed cores run 10x slower (measured).
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(n))
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # already set, or parallel work has started
        pass


def check_publishes(policy: Policy, layout: str | None) -> None:
    """Refuse (MPI) or warn about (one process) a policy whose trained weights would never reach the acting ranks.

    Args:
        policy: the policy as built for the run.
        layout: the MPI layout (a run with inference ranks or inline-inference actors), or ``None`` for a
            one-process run, where only a warning is logged.

    Raises:
        PolicyContractError: ``layout`` is given and the policy has trainable parameters it does not publish.
    """
    from hpcrl.api.policy import PolicyContractError, publish_problem

    problem = publish_problem(policy)
    if problem is None:
        return
    if layout is not None:
        raise PolicyContractError(f"{problem} (layout: {layout})")
    log.warning(
        "%s. This one-process run shares the policy object between trainer and actor, so it trains, but the same "
        "policy fails at start-up under mpiexec",
        problem,
    )
