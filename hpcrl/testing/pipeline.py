"""``test_pipeline``: actor, inference and trainer in one process, then the round trips an MPI run adds.

It runs the loop of a one-process run (:class:`~hpcrl.acting.inline.InlineLoop`, an env ring built by
:func:`~hpcrl.acting.rings.make_ring`, a :class:`~hpcrl.learning.learner.Learner`) without storage, every
misfit raised as a :class:`PipelineError` naming the part, and then replays the publish and checkpoint
paths on a second policy instance (see :mod:`hpcrl.testing.roundtrip`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hpcrl.acting import rings
from hpcrl.acting.env_ring import EnvError, PolicyResultError
from hpcrl.acting.inline import InlineLoop
from hpcrl.api import config
from hpcrl.api.environment import Environment
from hpcrl.api.environment import make as make_env
from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult
from hpcrl.api.policy import make as make_policy
from hpcrl.api.trainer import Trainer, TrainerStepResult
from hpcrl.api.trainer import make as make_trainer
from hpcrl.learning.learner import Learner
from hpcrl.runtime import components

__all__ = ["PipelineError", "test_pipeline"]


class PipelineError(RuntimeError):
    """The environment, policy and trainer do not fit together (the message says where)."""


def _as_env_factory(env: Any) -> tuple[Callable[[int], Environment], config.Environment, int]:
    """(builds env ``i``, the env's spec for names and messages, how many envs to step)."""
    if isinstance(env, Environment):
        return (lambda i: env), config.Environment(type_=type(env).__name__), 1
    spec = config.Environment(type_=env) if isinstance(env, str) else env
    return (lambda i: make_env(spec)), spec, 2


def _as_experiment(experiment: Any) -> config.ExperimentConfig:
    """An ``ExperimentConfig`` as given, or loaded from the YAML file at ``experiment``.

    Raises:
        PipelineError: not a config or a path, or the file cannot be loaded (the message names it).
    """
    from pathlib import Path

    if isinstance(experiment, config.ExperimentConfig):
        return experiment
    if not isinstance(experiment, (str, Path)):
        raise PipelineError(
            f"test_pipeline({type(experiment).__name__}) without policy and trainer needs an experiment: an "
            f"ExperimentConfig or the path of its YAML file"
        )
    if not Path(experiment).is_file():
        raise PipelineError(
            f"test_pipeline({str(experiment)!r}): no such experiment file; to check an env by its registered "
            f"name, pass a policy and a trainer too"
        )
    try:
        return config.load(experiment)
    except config.ConfigError as e:
        raise PipelineError(str(e)) from e


def test_pipeline(
    env: Any,
    policy: Any = None,
    trainer: Any = None,
    episodes: int = 2,
    trainer_steps: int = 2,
    fragment_length: int = 16,
    max_frames: int = 20_000,
) -> dict[str, Any]:
    """Run actor, inference and trainer in this process, then check that the trained policy deploys.

    Two forms: ``test_pipeline(env, policy, trainer)`` checks one env, policy and trainer;
    ``test_pipeline(experiment)`` checks an experiment given as an ``ExperimentConfig`` or the path of its
    YAML file (importing its ``experiment.imports`` as a run does). A multi-policy experiment (``policies``,
    see ``docs/multipolicy.md``) runs as a one-process run would (see :mod:`hpcrl.testing.pipeline_multi`
    and the config form below); a single-policy one checks its ``environment``, ``policy`` and ``trainer``
    as the first form does.

    Steps until ``episodes`` and ``trainer_steps`` are done, then replays what ``mpirun`` adds to a
    one-process run on a second policy instance (see :mod:`hpcrl.testing.roundtrip`): the publish path
    (``state_dict()`` -> wire -> ``load_state_dict()`` -> ``set_version()``) and the checkpoint path
    (``get_checkpoint()`` of policy and trainer -> the HDF5 writer -> ``load_checkpoint()``). Each must
    give a policy that acts like the trained one on deterministic (``is_evaluation``) rows and reports
    its version. Passing this means the same env/policy/trainer will run under ``mpirun``.

    The config form of a multi-policy experiment first maps every agent to its policy and fits every
    policy to the env (errors name the key path: ``agents``, ``policies.NAME.args``, ``trainers.NAME``). It
    then steps the experiment's env ring (``actor.envs_per_actor`` envs, fragments of
    ``actor.fragment_length``) with one learner per trained policy (``training.batch_size``); frozen
    policies act and never step, and self-play's opponent agents are acted by the snapshot pool. Nothing is
    written to ``run.dir``. It stops once every policy's agents finished ``episodes`` episodes and every
    trained policy made ``trainer_steps`` steps, each of which must increment that policy's version. Every
    policy then goes through the publish and checkpoint round trips above (on a request of its own agents),
    and every frozen policy must have kept its weights and version.

    Args:
        env: an Environment, a ``config.Environment`` or a registered name; or, with ``policy`` and
            ``trainer`` left out, an ``ExperimentConfig`` or the path of an experiment YAML file.
        policy: a Policy, a ``config.Policy`` or a registered name. The second instance is built from the
            spec, or deep-copied from the given instance before training.
        trainer: a Trainer, a ``config.Trainer`` or a registered name (built for ``policy``).
        episodes: finished episodes required (in the multi-policy form: of every policy's agents).
        trainer_steps: trainer steps required (in the multi-policy form: of every trained policy).
        fragment_length: ``T`` of the fragments (the config form uses ``actor.fragment_length``).
        max_frames: give up (with an error) after this many env steps.

    Returns:
        ``{"frames", "episodes", "trainer_steps", "mean_return", "policy_version", "last_stats"}``; for a
        multi-policy experiment ``{"frames", "episodes", "trainer_steps", "mean_return_by_policy",
        "policy_versions", "last_stats"}`` whose values but ``frames`` map policy names to that policy's
        value (``trainer_steps`` and ``last_stats`` of the trained policies only), plus ``selfplay_games``
        with self-play.

    Raises:
        PipelineError: the parts do not fit; the message names the part (policy, trainer, env), the method at
            fault and what went wrong.
    """
    if policy is None or trainer is None:
        if policy is not None or trainer is not None:
            raise PipelineError(
                "test_pipeline takes an env, a policy and a trainer, or one experiment (an ExperimentConfig or "
                "the path of its YAML file) alone; got only one of policy and trainer"
            )
        cfg = _as_experiment(env)
        try:
            components.import_user_modules(cfg)  # as a run does: they register the experiment's components
        except config.ConfigError as e:
            raise PipelineError(str(e)) from e
        if cfg.multi_policy:
            from hpcrl.testing.pipeline_multi import test_multi_pipeline

            return test_multi_pipeline(cfg, episodes, trainer_steps, max_frames)
        return test_pipeline(
            cfg.environment,
            cfg.single_policy,
            cfg.single_trainer,
            episodes=episodes,
            trainer_steps=trainer_steps,
            fragment_length=cfg.actor.fragment_length,
            max_frames=max_frames,
        )
    if isinstance(env, config.ExperimentConfig):
        raise PipelineError("test_pipeline(experiment) takes the policy and trainer from the experiment: pass it alone")
    from hpcrl.api.policy import publish_problem
    from hpcrl.testing import roundtrip

    make, env_spec, n_envs = _as_env_factory(env)
    label = rings.env_label(env_spec)
    policy_spec: config.Policy | None = None
    if not isinstance(policy, Policy):
        spec = policy if not isinstance(policy, str) else config.Policy(type_=policy)
        probe = make(0)
        try:
            with config.building("policy.args", f"policy {spec.type_!r} does not fit env {label}"):
                spec = components.fill_policy_args(spec, probe)
        finally:
            if not isinstance(env, Environment):
                probe.close()
        policy = make_policy(spec)
        policy_spec = spec
    trainer_spec: config.Trainer | None = None
    if not isinstance(trainer, Trainer):
        trainer_spec = trainer if not isinstance(trainer, str) else config.Trainer(type_=trainer)
        trainer = make_trainer(trainer_spec, policy)
    if trainer.policy is not policy:
        raise PipelineError("the trainer was built for a different policy object than the one given")
    problem = publish_problem(policy)
    if problem is not None:
        raise PipelineError(problem)
    try:
        row_state = rings.default_state_row(policy)
    except ValueError as e:
        raise PipelineError(f"policy {type(policy).__name__}: {e}") from e
    twins = roundtrip.Twins(policy, policy_spec)
    name = type(policy).__name__
    cfg = config.ExperimentConfig(
        environment=env_spec,
        policy=config.Policy(type_=name),
        trainer=config.Trainer(type_=type(trainer).__name__),
        experiment=config.Experiment(total_frames=max_frames),  # trainer.progress counts toward max_frames
        actor=config.Actor(envs_per_actor=n_envs, fragment_length=fragment_length, check_env="always"),
    )
    ring = rings.make_ring(cfg, row_state, "test_pipeline", build_env=make)
    learner = Learner(cfg, policy, trainer, batch_size=ring.num_slots(0))
    done_eps: list[float] = []
    who = f"policy {name}"

    def rollout(request: RolloutRequest) -> RolloutResult:
        try:
            result = policy.rollout(request)
        except Exception as e:
            raise PipelineError(f"{who}: policy.rollout failed on {request!r}: {type(e).__name__}: {e}") from e
        if not isinstance(result, RolloutResult):
            raise PipelineError(f"{who}: policy.rollout returned {type(result).__name__}, expected RolloutResult")
        return result  # its rows are checked by the ring (the same rule, result_rows_problem)

    version = [policy.version]

    def trained(step: TrainerStepResult | None) -> None:
        if step is not None and not step.skipped and policy.version == version[0]:
            raise PipelineError(f"trainer {type(trainer).__name__}.step did not increment the policy version")
        version[0] = policy.version

    loop = InlineLoop(
        ring,
        policy,
        who,
        learner=learner,
        episodes=lambda eps: done_eps.extend(e.ret for e in eps),
        after_train_step=trained,
        rollout=rollout,
    )
    try:
        while len(done_eps) < episodes or learner.steps < trainer_steps:
            if ring.frames >= max_frames:
                raise PipelineError(
                    f"after {ring.frames} frames: {len(done_eps)}/{episodes} episodes and "
                    f"{learner.steps}/{trainer_steps} trainer steps (do episodes ever end?)"
                )
            try:
                loop.step()
            except PipelineError:
                raise
            except PolicyResultError as e:  # the result does not fit the request or the trajectory layout
                raise PipelineError(f"{who}: its RolloutResult does not fit: {e}") from e
            except EnvError:
                raise
            except RuntimeError as e:  # the trainer failed on a batch, or returned no TrainerStepResult
                raise PipelineError(str(e)) from e
        probe_request = roundtrip.evaluation_request(ring.request(0))
    finally:
        ring.close()
    expected = roundtrip.reference_outputs(policy, probe_request)
    roundtrip.check_publish(policy, twins.make(), probe_request, expected)
    roundtrip.check_checkpoint(policy, trainer, learner, twins.make(), trainer_spec, probe_request, expected)
    return {
        "frames": ring.frames,
        "episodes": len(done_eps),
        "trainer_steps": learner.steps,
        "mean_return": sum(done_eps) / len(done_eps) if done_eps else float("nan"),
        "policy_version": policy.version,
        "last_stats": learner.last_stats,
    }


test_pipeline.__test__ = False  # type: ignore[attr-defined]
