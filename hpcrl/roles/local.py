"""Single-process mode: actor, inference and trainer inline in one process (world size 1).

This is the embedded default (``python -m hpcrl.run exp.yaml``) and the engine of
:func:`hpcrl.testing.test_pipeline`. It uses the same :class:`EnvRing`, :class:`Learner`
and checkpoint code as the MPI roles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hpcrl.api import config
from hpcrl.api.environment import Environment
from hpcrl.api.environment import make as make_env
from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult, check_rollout_result
from hpcrl.api.policy import make as make_policy
from hpcrl.api.trainer import Trainer
from hpcrl.api.trainer import make as make_trainer
from hpcrl.progress import Progress, RunSummary
from hpcrl.roles import common
from hpcrl.roles.env_ring import EnvRing, PolicyResultError
from hpcrl.roles.learner import Learner
from hpcrl.roles.session import Session, StopFlag

__all__ = ["run_local", "test_pipeline", "PipelineError"]

log = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """The environment, policy and trainer do not fit together (the message says where)."""


def _rollout(policy: Policy, request: RolloutRequest, who: str) -> RolloutResult:
    try:
        result = policy.rollout(request)
    except Exception as e:
        raise PipelineError(f"{who}: policy.rollout failed on {request!r}: {type(e).__name__}: {e}") from e
    if not isinstance(result, RolloutResult):
        raise PipelineError(f"{who}: policy.rollout returned {type(result).__name__}, expected RolloutResult")
    return result


def run_local(cfg: config.ExperimentConfig, stop: StopFlag | None = None) -> RunSummary:
    """Train ``cfg`` with every role in this process; returns the run summary.

    Resumes automatically from the newest valid checkpoint in the run directory unless
    ``run.fresh`` is set. Stops at ``experiment.total_frames``, at ``run.stop_at_frames`` or when
    ``stop`` is set (SIGTERM/SIGUSR1), writing a final checkpoint either way. Every completed batch
    is trained on before a frame limit stops the run, so a run split at step boundaries takes the
    same steps, at the same frames, as an uninterrupted one. The run directory is locked from
    before anything in it is touched until this returns or raises.

    Raises:
        RunDirInUse: another run holds the run directory (names its host and pid); nothing was touched.
        StorageError: the run directory cannot be used, or checkpoints exist but none can be resumed.
    """
    common.import_user_modules(cfg)
    cfg, _ = common.resolve_experiment(cfg)
    session = Session(cfg, rank=0, role="local", world_size=1, leader=True)
    try:  # the run dir stays locked until here: release it on every way out
        return _train(cfg, session, stop or StopFlag())
    finally:
        session.close()


def _train(cfg: config.ExperimentConfig, session: Session, stop: StopFlag) -> RunSummary:
    common.set_torch_threads(cfg.run.torch_threads)
    common.seed_everything(cfg.experiment.seed)
    spec = cfg.policy
    device = common.resolve_device(cfg.training.device)
    policy = common.build_policy(spec, device, seed=cfg.experiment.seed)
    common.check_publishes(policy, None)
    n_envs = cfg.actor.envs_per_actor
    ring = EnvRing(
        common.env_factory(cfg.environment),
        n_envs,
        1,
        cfg.actor.fragment_length,
        common.default_state_row(policy),
        common.env_label(cfg.environment),
        where="local actor",
        seeds=[common.env_seed(cfg.experiment.seed, i) for i in range(n_envs)],
        check=cfg.actor.check_env,
        env_failure=cfg.actor.env_failure,
        max_env_failures=cfg.actor.max_env_failures,
        policy_name=cfg.policy.type_,
    )
    try:
        return _loop(cfg, session, stop, policy, ring)
    finally:
        ring.close()


def _loop(cfg: config.ExperimentConfig, session: Session, stop: StopFlag, policy: Policy, ring: EnvRing) -> RunSummary:
    n_envs = cfg.actor.envs_per_actor
    batch_size = cfg.training.batch_size or ring.num_slots(0)
    agents = max(1, ring.num_slots(0) // n_envs)
    with config.building("trainer", f"cannot build trainer {cfg.trainer.type_!r} with args {cfg.trainer.args}"):
        trainer = common.build_trainer(cfg.trainer, policy, cfg.training)
    trace = session.trace
    learner = Learner(
        cfg,
        policy,
        trainer,
        batch_size,
        leader=True,
        run_dir=session.run_dir,
        config_text=session.config_text,
        trace=trace,
        extra_attrs={
            "world_size": 1,
            "layout": "local",
            "trainer_ranks": 1,
            "frames_per_step": common.frames_per_step(batch_size, cfg.actor.fragment_length, agents),
        },
    )
    try:
        if not cfg.run.fresh:
            learner.restore()
        session.write_config()  # only now: a failed resume leaves the previous config.yaml as it was
    except BaseException:
        learner.close()
        raise
    base_frames = learner.frames
    progress = Progress(cfg.experiment.total_frames, cfg.run.progress, cfg.run.log_interval_seconds, base_frames)
    log.info(
        "local run %s: env %s x%d, policy %s, trainer %s, batch %d x %d, run dir %s",
        cfg.experiment.name,
        common.env_label(cfg.environment),
        n_envs,
        cfg.policy.type_,
        cfg.trainer.type_,
        cfg.actor.fragment_length,
        batch_size,
        session.run_dir,
    )
    reason = "finished"
    who = f"{cfg.policy.type_!r} ({type(policy).__name__})"
    try:
        while True:
            budget = common.budget_reached(learner.frames, cfg)
            if budget is not None:
                reason = "finished" if budget == "total_frames reached" else budget
                break
            if stop.is_set():
                reason = f"stopped by {stop.reason}"
                break
            t0 = time.perf_counter()
            request = ring.request(0)
            result = check_rollout_result(policy.rollout(request), len(request), who)
            t1 = time.perf_counter()
            ring.consume(0, result, policy.version)
            t2 = time.perf_counter()
            learner.frames = base_frames + ring.frames  # the progress the next trainer steps see
            for fragment in ring.pop_fragments():
                learner.add(fragment)
            episodes = ring.pop_episodes()
            if episodes:
                progress.add_episodes([e.ret for e in episodes], [e.length for e in episodes])
            if trace is not None:
                trace.add_time("inference", t1 - t0)
                trace.add_time("env_step", t2 - t1)
                wall = time.time()
                for e in episodes:
                    trace.episode(e.ret, e.length, ring.frames, wall, e.version)  # this process's frames, as actors
            while learner.ready():
                learner.step()
                if learner.checkpoint_due():
                    learner.save("periodic")
            progress.update(learner.frames, learner.steps, learner.last_stats)
            if trace is not None:
                trace.maybe_flush()
        progress.update(learner.frames, learner.steps, learner.last_stats)  # also when no step was taken
        learner.save("final" if reason == "finished" else "stop")
    finally:
        learner.close()  # an exception left a background save in flight: finish it (nothing is lost)
        progress.close()
    return progress.summary(
        reason=reason,
        policy_version=policy.version,
        dropped_fragments=learner.batcher.dropped,
        env_failures=ring.env_failures,
        checkpoint=str(learner.last_checkpoint) if learner.last_checkpoint else None,
        run_dir=str(session.run_dir),
    )


def _as_env_factory(env: Any) -> tuple[Callable[[int], Environment], str, int]:
    if isinstance(env, Environment):
        return (lambda i: env), type(env).__name__, 1
    spec = config.Environment(type_=env) if isinstance(env, str) else env
    return (lambda i: make_env(spec)), common.env_label(spec), 2


def test_pipeline(
    env: Any,
    policy: Any,
    trainer: Any,
    episodes: int = 2,
    trainer_steps: int = 2,
    fragment_length: int = 16,
    max_frames: int = 20_000,
) -> dict[str, Any]:
    """Run actor, inference and trainer in this process, then check that the trained policy deploys.

    Steps until ``episodes`` and ``trainer_steps`` are done, then replays what ``mpirun`` adds to a
    one-process run on a second policy instance (see :mod:`hpcrl.roles.roundtrip`): the publish path
    (``state_dict()`` -> wire -> ``load_state_dict()`` -> ``set_version()``) and the checkpoint path
    (``get_checkpoint()`` of policy and trainer -> the HDF5 writer -> ``load_checkpoint()``). Each must
    give a policy that acts like the trained one on deterministic (``is_evaluation``) rows and reports
    its version. Passing this means the same env/policy/trainer will run under ``mpirun``.

    Args:
        env: an Environment, a ``config.Environment`` or a registered name.
        policy: a Policy, a ``config.Policy`` or a registered name. The second instance is built from the
            spec, or deep-copied from the given instance before training.
        trainer: a Trainer, a ``config.Trainer`` or a registered name (built for ``policy``).
        episodes: finished episodes required.
        trainer_steps: trainer steps required.
        fragment_length: ``T`` of the fragments.
        max_frames: give up (with an error) after this many env steps.

    Returns:
        ``{"frames", "episodes", "trainer_steps", "mean_return", "policy_version", "last_stats"}``.

    Raises:
        PipelineError: the parts do not fit; the message names the part (policy, trainer, env), the method at
            fault and what went wrong.
    """
    from hpcrl.api.policy import publish_problem
    from hpcrl.roles import roundtrip

    make, label, n_envs = _as_env_factory(env)
    policy_spec: config.Policy | None = None
    if not isinstance(policy, Policy):
        spec = policy if not isinstance(policy, str) else config.Policy(type_=policy)
        probe = make(0)
        try:
            spec = common.fill_policy_args(spec, probe, label)
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
        row_state = common.default_state_row(policy)
    except ValueError as e:
        raise PipelineError(f"policy {type(policy).__name__}: {e}") from e
    twins = roundtrip.Twins(policy, policy_spec)
    ring = EnvRing(
        make,
        n_envs,
        1,
        fragment_length,
        row_state,
        label,
        where="test_pipeline",
        check="always",
        policy_name=type(policy).__name__,
    )
    cfg = config.ExperimentConfig(
        environment=config.Environment(type_="test"),
        policy=config.Policy(type_=type(policy).__name__),
        trainer=config.Trainer(type_=type(trainer).__name__),
        experiment=config.Experiment(total_frames=max_frames),  # trainer.progress counts toward max_frames
    )
    learner = Learner(cfg, policy, trainer, batch_size=ring.num_slots(0), leader=False)
    done_eps: list[float] = []
    try:
        while len(done_eps) < episodes or learner.steps < trainer_steps:
            if ring.frames >= max_frames:
                raise PipelineError(
                    f"after {ring.frames} frames: {len(done_eps)}/{episodes} episodes and "
                    f"{learner.steps}/{trainer_steps} trainer steps (do episodes ever end?)"
                )
            request = ring.request(0)
            result = _rollout(policy, request, f"policy {type(policy).__name__}")
            try:
                ring.consume(0, result, policy.version)
            except PolicyResultError as e:
                raise PipelineError(f"policy {type(policy).__name__}: its RolloutResult does not fit: {e}") from e
            except ValueError as e:
                raise PipelineError(f"policy {type(policy).__name__}: its RolloutResult does not fit: {e}") from e
            done_eps.extend(e.ret for e in ring.pop_episodes())
            learner.frames = ring.frames
            for fragment in ring.pop_fragments():
                learner.add(fragment)
            while learner.ready():
                version = policy.version
                try:
                    step = learner.step()
                except RuntimeError as e:
                    raise PipelineError(str(e)) from e
                if step is not None and not step.skipped and policy.version == version:
                    raise PipelineError(f"trainer {type(trainer).__name__}.step did not increment the policy version")
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
