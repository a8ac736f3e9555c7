"""Single-process mode: actor, inference and trainer inline in one process (world size 1).

This is the embedded default (``python -m hpcrl.run exp.yaml``). Its loop is
:class:`~hpcrl.acting.inline.InlineLoop` (as in an inline-inference actor, ``test_pipeline`` and
``evaluate``) with the same :class:`~hpcrl.learning.learner.Learner` and
:class:`~hpcrl.learning.checkpointing.Checkpointer` as the trainer ranks.
"""

from __future__ import annotations

import logging
import time

from hpcrl.acting import rings
from hpcrl.acting.env_ring import EnvRing, Episode
from hpcrl.acting.evaluation import EvalSchedule, evaluate_inline
from hpcrl.acting.inline import InlineLoop
from hpcrl.api import config
from hpcrl.api.policy import Policy
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.evaltrack import EvalTracker
from hpcrl.learning.learner import Learner
from hpcrl.progress import Progress, RunSummary
from hpcrl.runtime import budget, components
from hpcrl.runtime.session import Session, StopFlag

__all__ = ["run_local"]

log = logging.getLogger(__name__)


def run_local(cfg: config.ExperimentConfig, stop: StopFlag | None = None) -> RunSummary:
    """Train ``cfg`` with every role in this process; returns the run summary.

    Resumes automatically from the newest valid checkpoint in the run directory unless
    ``run.fresh`` is set. Stops at ``experiment.total_frames``, at ``run.stop_at_frames`` or when
    ``stop`` is set (SIGTERM/SIGUSR1), writing a final checkpoint either way; a checkpoint request on
    ``stop`` (SIGUSR2) writes one at the next step boundary and the run goes on. Every completed batch
    is trained on before a frame limit stops the run, so a run split at step boundaries takes the
    same steps, at the same frames, as an uninterrupted one. The run directory is locked from
    before anything in it is touched until this returns or raises.

    Raises:
        RunDirInUse: another run holds the run directory (names its host and pid); nothing was touched.
        StorageError: the run directory cannot be used, or checkpoints exist but none can be resumed.
    """
    from hpcrl.tensorboard import require

    require(cfg)  # before the run dir is touched
    components.import_user_modules(cfg)
    if cfg.multi_policy:
        from hpcrl.roles.local_multi import build_policies, resolve_policies, train_multi

        cfg, names = resolve_policies(cfg)
        policies = build_policies(cfg)  # init_from checkpoints are checked before the run dir is touched
        session = Session(cfg, rank=0, role="local", world_size=1, leader=True)
        try:
            return train_multi(cfg, session, stop or StopFlag(), names, policies)
        finally:
            session.close()
    cfg, _ = components.resolve_experiment(cfg)
    session = Session(cfg, rank=0, role="local", world_size=1, leader=True)
    try:  # the run dir stays locked until here: release it on every way out
        return _train(cfg, session, stop or StopFlag())
    finally:
        session.close()


def _train(cfg: config.ExperimentConfig, session: Session, stop: StopFlag) -> RunSummary:
    policy, _ = components.build_role_policy(cfg, "local", seed_globals=True)
    components.check_publishes(policy, None)
    ring = rings.make_ring(cfg, rings.default_state_row(policy), "local actor")
    try:
        return _loop(cfg, session, stop, policy, ring)
    finally:
        ring.close()


def _loop(cfg: config.ExperimentConfig, session: Session, stop: StopFlag, policy: Policy, ring: EnvRing) -> RunSummary:
    n_envs = cfg.actor.envs_per_actor
    batch_size = cfg.training.batch_size or ring.num_slots(0)
    agents = max(1, ring.num_slots(0) // n_envs)
    trainer = components.build_trainer(cfg.single_trainer, policy, cfg.training)
    trace = session.trace
    learner = Learner(cfg, policy, trainer, batch_size, trace=trace)
    checkpoints = Checkpointer(
        cfg,
        learner,
        session.run_dir,
        session.config_text,
        extra_attrs={
            "world_size": 1,
            "layout": "local",
            "trainer_ranks": 1,
            "frames_per_step": budget.frames_per_step(batch_size, cfg.actor.fragment_length, agents),
        },
        trace=trace,
    )
    try:
        if not cfg.run.fresh:
            checkpoints.restore()
        session.write_config()  # only now: a failed resume leaves the previous config.yaml as it was
    except BaseException:
        checkpoints.close()
        raise
    base_frames = learner.frames
    progress = Progress(cfg.experiment.total_frames, cfg.run.progress, cfg.run.log_interval_seconds, base_frames)
    progress.live = components.live_scalars(cfg, session.run_dir, trace)
    schedule = EvalSchedule(cfg, base_frames)
    tracker = (
        EvalTracker(cfg, session.run_dir, session.config_text, trace, progress, resume=not cfg.run.fresh)
        if schedule.enabled
        else None
    )
    who = f"{cfg.single_policy.type_!r} ({type(policy).__name__})"

    def evaluate() -> None:
        assert tracker is not None
        t0 = time.perf_counter()
        tracker.snapshot(policy, learner.frames)  # the policy evaluated: no trainer step happens meanwhile
        result = evaluate_inline(cfg, policy, who, "local actor", learner.frames, stop.is_set)
        if result is not None:
            tracker.record(result)
        if trace is not None:
            trace.add_time("evaluation", time.perf_counter() - t0)

    log.info(
        "local run %s: env %s x%d, policy %s, trainer %s, batch %d x %d, run dir %s",
        cfg.experiment.name,
        rings.env_label(cfg.environment),
        n_envs,
        cfg.single_policy.type_,
        cfg.single_trainer.type_,
        cfg.actor.fragment_length,
        batch_size,
        session.run_dir,
    )

    def episodes(done: list[Episode]) -> None:
        progress.add_episodes([e.ret for e in done], [e.length for e in done])
        if trace is not None:
            wall = time.time()
            for e in done:
                trace.episode(e.ret, e.length, ring.frames, wall, e.version)  # this process's frames, as actors

    loop = InlineLoop(
        ring,
        policy,
        who,
        learner=learner,
        base_frames=base_frames,
        episodes=episodes,
        after_train_step=lambda _: checkpoints.after_step(),
        trace=trace,
    )
    reason = "finished"
    try:
        while True:
            reached = budget.budget_reached(learner.frames, cfg)
            if reached is not None:
                reason = "finished" if reached == "total_frames reached" else reached
                break
            if stop.is_set():
                reason = f"stopped by {stop.reason}"
                break
            loop.step()
            if stop.checkpoint_request is not None:  # SIGUSR2: a checkpoint now, and the run goes on
                checkpoints.serve(stop.checkpoint_request)
            progress.update(learner.frames, learner.steps, learner.last_stats)
            if schedule.due(learner.frames):
                evaluate()
            if trace is not None:
                trace.maybe_flush()
        progress.update(learner.frames, learner.steps, learner.last_stats)  # also when no step was taken
        checkpoints.save("final" if reason == "finished" else "stop")
    finally:
        checkpoints.close()  # an exception left a background save in flight: finish it (nothing is lost)
        progress.close()
    return progress.summary(
        reason=reason,
        policy_version=policy.version,
        dropped_fragments=learner.batcher.dropped,
        env_failures=ring.env_failures,
        checkpoint=str(checkpoints.last_checkpoint) if checkpoints.last_checkpoint else None,
        run_dir=str(session.run_dir),
    )
