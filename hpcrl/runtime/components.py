"""Building a run's components from its config: user imports, the resolved policy spec, policy, trainer, device."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

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
    "policy_class",
    "build_policy",
    "build_role_policy",
    "build_trainer",
    "seed_everything",
    "set_torch_threads",
    "resolve_device",
    "check_publishes",
]

log = logging.getLogger(__name__)


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

    See :func:`fill_policy_args`. The resolved config is what the run saves and checkpoints. Cross-section
    checks that need no component (``trainer.args.chunk_len`` against ``actor.fragment_length``) come first.
    """
    from hpcrl.trainers.chunks import check_config as check_chunks

    check_chunks(cfg)
    label = env_label(cfg.environment)
    with config.building("environment", f"cannot build env {label} with args {cfg.environment.args}"):
        env = make_env(cfg.environment)
        agents = int(env.agent_count)
    try:
        with config.building("policy.args", f"policy {cfg.single_policy.type_!r} does not fit env {label}"):
            spec = fill_policy_args(cfg.single_policy, env)
    finally:
        env.close()
    return dataclasses.replace(cfg, policy=spec), agents


def resolve_policy_spec(cfg: config.ExperimentConfig) -> config.Policy:
    """The policy spec completed and checked by its class's :meth:`~hpcrl.api.policy.Policy.args_from_spaces`.

    The env is built (and closed) only when the policy class implements the hook.
    """
    cls = policy_class(cfg.single_policy.type_)
    if cls is None or not _has_args_hook(cls):
        return cfg.single_policy
    env = make_env(cfg.environment)
    try:
        return fill_policy_args(cfg.single_policy, env)
    finally:
        env.close()


def policy_class(name: str) -> type[Policy] | None:
    """The :class:`Policy` class the registered policy ``name`` builds, or None when that is not known.

    A registered class is its own; for a factory function it is the class its return annotation names
    (``def make_mine(**kw) -> MyPolicy``). An unknown name gives None (building the policy reports it).
    """
    import typing

    from hpcrl.api.policy import ALL_POLICIES
    from hpcrl.api.registry import RegistryError

    try:
        factory: Any = ALL_POLICIES.get(name)
    except RegistryError:
        return None
    if not isinstance(factory, type):
        try:
            factory = typing.get_type_hints(factory).get("return")
        except Exception:  # unresolvable annotations: no hook, the args are used as given
            return None
    return factory if isinstance(factory, type) and issubclass(factory, Policy) else None


def _has_args_hook(cls: type[Policy]) -> bool:
    return getattr(cls.args_from_spaces, "__func__", None) is not Policy.args_from_spaces.__func__  # type: ignore[attr-defined]


def fill_policy_args(spec: config.Policy, env: Environment, agents: Sequence[int] = (0,)) -> config.Policy:
    """``spec`` with its args completed and checked against the declared spaces of the agents it acts for.

    Calls the policy class's :meth:`~hpcrl.api.policy.Policy.args_from_spaces` with the spaces of each of
    ``agents`` (``None`` spaces when the env declares none); they must all give the same args (one policy acts
    for them all with one network). A policy without the hook keeps its args.

    Args:
        spec: the policy spec.
        env: a built env.
        agents: the agent indices the policy acts for (default: agent 0, as for a single-policy run).

    Raises:
        ValueError: the hook refused the args (its message), returned something other than a dict, or two of
            ``agents`` give different args (names both agents and the args).
    """
    cls = policy_class(spec.type_)
    if cls is None or not _has_args_hook(cls):
        return spec
    obs_spaces, act_spaces = env.observation_spaces, env.action_spaces
    first = agents[0] if agents else 0

    def space(spaces: list[Any] | None, agent: int) -> Any:
        return spaces[agent] if spaces and agent < len(spaces) else None

    args = cls.args_from_spaces(dict(spec.args), space(obs_spaces, first), space(act_spaces, first))
    if not isinstance(args, dict):
        raise ValueError(
            f"{cls.__name__}.args_from_spaces returned {type(args).__name__}; expected a dict of constructor arguments"
        )
    for a in agents[1:]:
        try:
            other = cls.args_from_spaces(dict(spec.args), space(obs_spaces, a), space(act_spaces, a))
        except ValueError as e:
            raise ValueError(f"agent {a} (acting with the same policy as agent {first}): {e}") from None
        if other != args:
            diff = sorted(k for k in set(args) | set(other) if args.get(k) != other.get(k))
            shown = ", ".join(f"{k}: {args.get(k)!r} vs {other.get(k)!r}" for k in diff)
            raise ValueError(
                f"agents {first} and {a} act with one policy but their spaces give it different args ({shown}); "
                f"map them to different policies"
            )
    _check_added_args(cls, spec, args)
    return spec if args == spec.args else dataclasses.replace(spec, args=args)


def _check_added_args(cls: type[Policy], spec: config.Policy, args: dict[str, Any]) -> None:
    """Refuse args the hook added that the registered constructor does not take, naming the hook and the fixes.

    The case: a subclass with a narrower ``__init__`` (or a factory function with fewer parameters) whose
    class inherits its parent's ``args_from_spaces``.
    """
    import inspect

    from hpcrl.api.policy import ALL_POLICIES

    added = [k for k in args if k not in spec.args]
    if not added:
        return
    factory: Any = ALL_POLICIES.get(spec.type_)
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a C type): leave it to the constructor
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    unknown = [k for k in added if k not in {p.name for p in params if p.kind in named}]
    if unknown:
        owner = next(c for c in cls.__mro__ if "args_from_spaces" in vars(c))
        via = "" if owner is cls else f" (inherited from {owner.__name__})"
        takes = getattr(factory, "__name__", spec.type_)
        raise ValueError(
            f"policy {spec.type_!r}: {cls.__name__}.args_from_spaces{via} added {', '.join(unknown)} from the "
            f"env's spaces, but {takes}() takes no such argument; accept it there or override args_from_spaces"
        )


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
    """Build the policy and move it to ``device`` (if it supports ``to``).

    Args:
        spec: the (resolved) policy spec.
        device: where the policy's model goes.
        seed: ``experiment.seed``, passed as ``seed`` to a policy whose class takes one
            (:attr:`~hpcrl.api.policy.Policy.takes_seed`) unless ``spec.args`` gives it.
    """
    args = dict(spec.args)
    if seed is not None and "seed" not in args:
        cls = policy_class(spec.type_)
        if cls is not None and cls.takes_seed:
            args["seed"] = seed
    with config.building("policy", f"cannot build policy {spec.type_!r} with args {spec.args}"):
        policy = make_policy(dataclasses.replace(spec, args=args))
    to = getattr(policy, "to", None)
    if callable(to) and device != "cpu":
        with config.building("training.device", f"cannot move policy {spec.type_!r} to device {device!r}"):
            to(device)
    return policy


def build_role_policy(cfg: config.ExperimentConfig, role: str, seed_globals: bool = False) -> tuple[Policy, str]:
    """The policy a process of ``role`` runs, and its device: torch threads limited, built seeded on the device.

    The trainer (and a one-process run) train on ``training.device``; an inference rank serves on it too,
    except that ``auto`` means cpu there; an actor with inline inference acts on cpu.

    Args:
        cfg: the resolved experiment (``policy``, ``training.device``, ``run.torch_threads``, ``experiment.seed``).
        role: ``local``, ``trainer``, ``inference`` or ``actor``.
        seed_globals: also seed python's, numpy's and torch's global RNGs with ``experiment.seed`` (after
            torch is imported with its thread limit, before the policy is built).

    Raises:
        ConfigError: the policy cannot be built or moved, or the device does not exist (names the key).
    """
    set_torch_threads(cfg.run.torch_threads)
    if seed_globals:
        seed_everything(cfg.experiment.seed)
    wanted = cfg.training.device
    if role == "actor" or (role == "inference" and wanted == "auto"):
        device = "cpu"
    else:
        device = resolve_device(wanted)
    return build_policy(cfg.single_policy, device, seed=cfg.experiment.seed), device


def build_trainer(spec: config.Trainer, policy: Policy, training: config.Training) -> Trainer:
    """Build the trainer for ``policy`` and apply the system's non-finite policy.

    Nothing about the run's length or layout is passed to the trainer: schedules read
    ``trainer.progress`` (env frames), which the learner sets before every step.

    Args:
        spec: the trainer spec.
        policy: the policy to optimise.
        training: the trainer-role settings.

    Raises:
        ConfigError: the trainer cannot be built (names ``trainer``, its type and args).
    """
    with config.building("trainer", f"cannot build trainer {spec.type_!r} with args {spec.args}"):
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


def live_scalars(cfg: config.ExperimentConfig, run_dir: Any, trace: Any = None) -> Any:
    """The live TensorBoard writer ``run.tensorboard`` asks for (a :class:`hpcrl.tensorboard.LiveScalars`), or None.

    Raises:
        ConfigError: the option is on and tensorboard is not installed (says how to install it).
    """
    from pathlib import Path

    from hpcrl import tensorboard

    log_dir = tensorboard.log_dir_of(cfg, Path(run_dir))
    if log_dir is None:
        return None
    tensorboard.require(cfg)
    log.info("tensorboard: writing scalars to %s (tensorboard --logdir %s)", log_dir, log_dir)
    return tensorboard.LiveScalars(log_dir, trace)
