"""Multi-policy runs in one process: agents mapped to named policies, each trained by its own learner.

:func:`hpcrl.roles.local.run_local` hands a config with ``policies`` here. Every agent index is mapped to
a policy (``agents``); the env ring (:class:`~hpcrl.acting.policy_ring.PolicyRing`) asks each policy for
the actions of its own agents and keeps one trajectory buffer per policy, so the fragments of a policy
hold only its agents' rows. A policy with a trainer (``trainers``) has its own
:class:`~hpcrl.learning.learner.Learner` (batches, version, staleness accounting) and
:class:`~hpcrl.learning.checkpointing.Checkpointer` (``RUN_DIR/checkpoints/<policy>/ckpt-*.h5``); a frozen
policy is never trained and its version never changes, but it is checkpointed with the others so that a
resume restores every policy. The checkpoints of all policies are written together; a resume takes the
newest set whose trained policies' checkpoints were taken at the same frame count.

Each policy's checkpoint is a single-policy checkpoint whose stored config is the run's config with that
policy as ``policy`` (its trainer, or ``null`` for a frozen one, as ``trainer``): ``hpcrl.load_policy``
and ``python -m hpcrl.evaluate`` read it like any other.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.acting import rings
from hpcrl.acting.multi_ring import evaluate_policies, make_multi_ring
from hpcrl.acting.policy_ring import PolicyRing
from hpcrl.api import config
from hpcrl.api.environment import make as make_env
from hpcrl.api.policy import Policy, check_rollout_result
from hpcrl.api.selfplay_spec import agent_owners, pool_part_name
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.learner import Learner
from hpcrl.progress import Progress, RunSummary, policy_returns_note
from hpcrl.runtime import budget, components
from hpcrl.runtime.session import Session, StopFlag

if TYPE_CHECKING:
    from hpcrl.storage.checkpoint import CheckpointManager

__all__ = [
    "resolve_policies",
    "build_policies",
    "policy_view",
    "train_multi",
    "load_init_weights",
    "choose_resume_set",
    "PolicyTrace",
    "FROZEN_TRAINER",
]

log = logging.getLogger(__name__)

#: the trainer type stored in the checkpoint config of a frozen policy (it never steps).
FROZEN_TRAINER = "null"


def policy_view(cfg: config.ExperimentConfig, name: str) -> config.ExperimentConfig:
    """The single-policy config of policy ``name`` of a multi-policy config (what its checkpoints store).

    Its ``policy`` is the named policy's spec, its ``trainer`` the policy's trainer (``null`` when frozen);
    every other section is the run's (``layout.trainers`` given as a mapping becomes the policy's count).
    """
    entry = cfg.policies[name]
    trainer = cfg.trainers.get(name) or config.Trainer(FROZEN_TRAINER)
    layout = cfg.layout
    if isinstance(layout.trainers, dict):
        layout = dataclasses.replace(layout, trainers=int(layout.trainers.get(name, 1)))
    return dataclasses.replace(
        cfg,
        layout=layout,
        policy=config.Policy(entry.type_, dict(entry.args)),
        trainer=trainer,
        policies={},
        trainers={},
        agents=[],
        selfplay=None,
    )


def resolve_policies(cfg: config.ExperimentConfig) -> tuple[config.ExperimentConfig, list[str]]:
    """Probe the env once: the config with every policy's args resolved, and the policy name of every agent.

    Raises:
        ConfigError: the env cannot be built, an agent is matched by no ``agents`` entry (names it), a
            policy does not fit the env (names ``policies.NAME.args``).
    """
    from hpcrl.trainers.chunks import check_config as check_chunks

    for name in cfg.trainers:
        try:
            check_chunks(policy_view(cfg, name))
        except config.ConfigError as e:
            raise config.ConfigError(f"trainers.{name}: {e}") from None
    label = rings.env_label(cfg.environment)
    with config.building("environment", f"cannot build env {label} with args {cfg.environment.args}"):
        env = make_env(cfg.environment)
        agents = int(env.agent_count)
    try:
        if cfg.selfplay is not None:
            names = agent_owners(cfg, agents, f"env {label}")
        else:
            names = config.policy_of_agents(cfg, agents, f"env {label}")
        resolved = {}
        fixed = set(cfg.selfplay.fixed_opponents) if cfg.selfplay is not None else set()
        for name, entry in cfg.policies.items():
            # the agents it acts for: snapshots of the self-play policy and its fixed opponents play the opponents
            owners = {name}
            if cfg.selfplay is not None and name in (fixed | {cfg.selfplay.policy}):
                owners = {pool_part_name(cfg.selfplay.policy)} | ({name} - fixed)
            acting = [a for a, n in enumerate(names) if n in owners] or [0]
            with config.building(f"policies.{name}.args", f"policy {entry.type_!r} does not fit env {label}"):
                spec = components.fill_policy_args(config.Policy(entry.type_, dict(entry.args)), env, acting)
            resolved[name] = dataclasses.replace(entry, args=spec.args)
    finally:
        env.close()
    for name in cfg.policies:
        if name not in names and name not in fixed:
            log.warning("policy %r acts for no agent of env %s (agent_count %d): it is never used", name, label, agents)
    return dataclasses.replace(cfg, policies=resolved), names


def load_init_weights(policy: Policy, name: str, entry: config.PolicyEntry) -> None:
    """Load ``entry.init_from`` (a checkpoint file or directory) into ``policy``.

    Raises:
        ConfigError: no valid checkpoint there, or its policy does not fit this one (names
            ``policies.NAME.init_from`` and the file).
    """
    from hpcrl.storage.checkpoint import CheckpointError, find_checkpoint

    key = f"policies.{name}.init_from"
    assert entry.init_from is not None
    try:
        file, tree, _ = find_checkpoint(entry.init_from)
    except CheckpointError as e:
        raise config.ConfigError(f"{key}: {e}") from None
    stored = tree.get("policy")
    if not isinstance(stored, dict):
        raise config.ConfigError(f"{key}: {file}: no /policy group in the checkpoint")
    try:
        policy.load_checkpoint(stored)
    except Exception as e:
        why = " ".join(str(e).split())
        why = why if len(why) <= 400 else why[:397] + "..."
        raise config.ConfigError(
            f"{key}: {file}: its policy does not fit policy {name!r} ({entry.type_!r} with args {entry.args}): "
            f"{type(e).__name__}: {why}"
        ) from e
    log.info("policy %r starts from %s (version %d)", name, file, policy.version)


class _Slot:
    """One policy of the run: its policy object, learner (a frozen one's is never stepped) and checkpointer."""

    def __init__(self, name: str, policy: Policy, learner: Learner, checkpoints: Checkpointer, trained: bool):
        self.name = name
        self.policy = policy
        self.learner = learner
        self.checkpoints = checkpoints
        self.trained = trained
        self.who = f"{name!r} ({type(policy).__name__})"


class PolicyTrace:
    """The run's trace writer as one policy's learner sees it: stat keys and spans prefixed ``<policy>/``."""

    def __init__(self, trace: Any, name: str) -> None:
        self.trace = trace
        self.prefix = f"{name}/"

    def trainer_step(self, step: int, frames: int, stats: dict[str, float], wall_time: float | None = None) -> None:
        """Record a trainer step's stats as ``<policy>/<stat>``."""
        self.trace.trainer_step(step, frames, {self.prefix + k: v for k, v in stats.items()}, wall_time)

    def add_time(self, span: str, seconds: float) -> None:
        """Add time to the span ``<policy>/<span>``."""
        self.trace.add_time(self.prefix + span, seconds)


def build_policies(cfg: config.ExperimentConfig) -> list[Policy]:
    """Build every policy (seeded, in ``policies`` order) on ``training.device``, loading ``init_from`` weights.

    Raises:
        ConfigError: a policy cannot be built or its ``init_from`` checkpoint does not fit (names the key).
    """
    components.set_torch_threads(cfg.run.torch_threads)
    components.seed_everything(cfg.experiment.seed)
    device = components.resolve_device(cfg.training.device)
    policies = []
    for i, (name, entry) in enumerate(cfg.policies.items()):
        spec = config.Policy(entry.type_, dict(entry.args))
        try:
            policy = components.build_policy(spec, device, cfg.experiment.seed + i)
        except config.ConfigError as e:
            raise config.ConfigError(f"policies.{name}: {e}") from None
        if entry.init_from is not None:
            load_init_weights(policy, name, entry)
        policies.append(policy)
    return policies


def _build_slots(
    cfg: config.ExperimentConfig, session: Session, policies: list[Policy], batch_sizes: list[int], frames_per_step: int
) -> list[_Slot]:
    """Every policy's trainer (a frozen one's is a never-stepped ``null``), learner and checkpointer."""
    from hpcrl.trainers.null import NullTrainer

    slots = []
    for name, policy, size in zip(cfg.policies, policies, batch_sizes):
        view = policy_view(cfg, name)
        trained = name in cfg.trainers
        trace = None if session.trace is None else PolicyTrace(session.trace, name)
        if trained:
            try:
                trainer = components.build_trainer(view.single_trainer, policy, cfg.training)
            except config.ConfigError as e:
                raise config.ConfigError(f"trainers.{name}: {e}") from None
        else:
            trainer = NullTrainer(policy)
        learner = Learner(view, policy, trainer, size, trace=trace, name=name)
        attrs = {
            "world_size": 1,
            "layout": "local",
            "trainer_ranks": 1,
            "frames_per_step": frames_per_step,
            "policy_name": name,
        }
        checkpoints = Checkpointer(
            view, learner, session.run_dir, config.dump(view), extra_attrs=attrs, trace=trace, policy=name
        )
        slots.append(_Slot(name, policy, learner, checkpoints, trained))
    return slots


def choose_resume_set(managers: dict[str, CheckpointManager], trained: set[str]) -> tuple[int | None, dict[str, Path]]:
    """The checkpoint of every policy to resume from: the newest set taken at the same frames.

    Frozen policies take their newest valid checkpoint (their weights never change); trained ones the newest
    valid checkpoints that share one frame count (a stop between the files of one save leaves the newer
    files of some policies: the previous set is used; a corrupt file is skipped with a WARNING).

    Args:
        managers: the checkpoint files of every policy, in ``policies`` order.
        trained: the names of the trained policies.

    Returns:
        ``(frames, {policy: file})`` of the set, or ``(None, {})`` when there are no checkpoint files at all.

    Raises:
        CheckpointError: checkpoint files exist but no set can be resumed (never a silent fresh start; names
            the directory and the frames found per policy).
    """
    from hpcrl.storage.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_attrs

    found: dict[str, dict[int, Path]] = {}
    listed = 0
    for name, manager in managers.items():
        manager.sweep_tmp()
        files: dict[int, Path] = {}
        for path in manager.list():
            listed += 1
            try:
                at = int(read_checkpoint_attrs(path).get("frames", -1))
            except CheckpointError as e:
                log.warning("checkpoint %s is corrupt, skipped: %s", path, e)
                continue
            files.setdefault(at, path)  # newest first: the highest version of each frame count
        found[name] = files
    if listed == 0:
        return None, {}
    verified: dict[Path, bool] = {}

    def valid(path: Path) -> bool:
        if path not in verified:
            try:
                load_checkpoint(path)
                verified[path] = True
            except CheckpointError as e:
                log.warning("checkpoint %s is corrupt, skipped: %s", path, e)
                verified[path] = False
        return verified[path]

    learners = [n for n in managers if n in trained]
    common = set.intersection(*(set(found[n]) for n in learners)) if learners else set()
    frames = next((f for f in sorted(common, reverse=True) if all(valid(found[n][f]) for n in learners)), None)
    chosen: dict[str, Path] = {n: found[n][frames] for n in learners} if frames is not None else {}
    for n in managers:
        if n not in trained:
            newest = next((p for _, p in sorted(found[n].items(), reverse=True) if valid(p)), None)
            if newest is not None:
                chosen[n] = newest
    missing = [n for n in managers if n not in chosen]
    if missing:
        have = "; ".join(f"{n}: {sorted(f)}" for n, f in found.items())
        where = next(iter(managers.values())).dir.parent
        raise CheckpointError(
            f"no set of checkpoints to resume all policies from in {where}: no valid checkpoint of "
            f"{', '.join(missing)} in a set; frames of the readable checkpoints of each policy: {have} (trained "
            "policies must share one frame count; move the checkpoints aside or set run.fresh to start from scratch)"
        )
    if frames is None:  # only frozen policies
        frames = max(int(read_checkpoint_attrs(p).get("frames", 0)) for p in chosen.values())
    return frames, chosen


def _restore(slots: list[_Slot]) -> int | None:
    """Resume every policy from the newest set of checkpoints (:func:`choose_resume_set`); the frames, or None.

    Frozen policies are restored first so that the RNG state is the trained set's.

    Raises:
        CheckpointError: checkpoint files exist but no set can be resumed.
    """
    managers = {s.name: s.checkpoints.manager for s in slots}
    assert all(m is not None for m in managers.values())
    frames, chosen = choose_resume_set(managers, {s.name for s in slots if s.trained})  # type: ignore[arg-type]
    if frames is None:
        slots[0].checkpoints.refuse_other_layout()
        return None
    for s in sorted(slots, key=lambda s: s.trained):
        s.checkpoints.restore(chosen[s.name])
    for s in slots:
        s.learner.frames = frames
    return frames


class _Checkpoints:
    """The checkpointers of all policies, saving together."""

    def __init__(self, slots: list[_Slot]) -> None:
        self.all = [s.checkpoints for s in slots]
        self.trained = [s.checkpoints for s in slots if s.trained]

    def after_step(self) -> None:
        for c in self.all:
            c.collect()
        if any(c.due() for c in self.trained):
            self.save("periodic")

    def save(self, reason: str) -> None:
        for c in self.all:
            c.save(reason)

    def serve(self, request: tuple[str, float] | None) -> None:
        if request is not None and request[1] > self.all[0].state_time:
            log.info("checkpoint requested by %s", request[0])
            self.save("request")

    def close(self) -> None:
        for c in self.all:
            c.close()

    @property
    def last(self) -> dict[str, str | None]:
        return {
            c.manager.dir.name: (str(c.last_checkpoint) if c.last_checkpoint else None) for c in self.all if c.manager
        }


def train_multi(
    cfg: config.ExperimentConfig, session: Session, stop: StopFlag, names: list[str], policies: list[Policy]
) -> RunSummary:
    """The one-process loop of a multi-policy run (``cfg`` resolved by :func:`resolve_policies`).

    Args:
        cfg: the resolved multi-policy experiment.
        session: the run's session (run dir locked).
        stop: the stop flag (signals).
        names: the policy name of every agent index of the env (:func:`resolve_policies`).
        policies: the policies, in ``policies`` order (:func:`build_policies`).
    """
    ring = make_multi_ring(cfg, names, policies, "local actor")
    try:
        n_envs = cfg.actor.envs_per_actor
        sizes = [cfg.training.batch_size or max(1, ring.part_slots(i)) for i in range(len(policies))]
        agents = max(1, ring.num_slots(0) // n_envs)
        frames_per_step = budget.frames_per_step(sizes[0], cfg.actor.fragment_length, agents)
        slots = _build_slots(cfg, session, policies, sizes, frames_per_step)
        return _loop(cfg, session, stop, ring, slots, names)
    finally:
        ring.close()


def _loop(
    cfg: config.ExperimentConfig,
    session: Session,
    stop: StopFlag,
    ring: PolicyRing,
    slots: list[_Slot],
    names: list[str],
) -> RunSummary:
    checkpoints = _Checkpoints(slots)
    try:
        base_frames = (_restore(slots) if not cfg.run.fresh else None) or 0
        session.write_config()
    except BaseException:
        checkpoints.close()
        raise
    trace = session.trace
    trained = [s for s in slots if s.trained]
    shown = trained[0] if trained else slots[0]  # whose agents' returns the progress line shows
    progress = Progress(cfg.experiment.total_frames, cfg.run.progress, cfg.run.log_interval_seconds, base_frames)
    progress.live = components.live_scalars(cfg, session.run_dir, trace)
    log.info(
        "local multi-policy run %s: env %s x%d, policies %s, run dir %s",
        cfg.experiment.name,
        rings.env_label(cfg.environment),
        cfg.actor.envs_per_actor,
        ", ".join(f"{s.name} ({s.policy.version if s.trained else 'frozen'})" for s in slots),
        session.run_dir,
    )
    sinks: list[Callable[[Any], Any] | None] = [s.learner.add if s.trained else None for s in slots]
    play = _SelfPlay(cfg, ring, slots, base_frames, trace, progress) if cfg.selfplay is not None else None
    evaluation = _Evaluation(cfg, session, names, slots, shown, base_frames, progress) if trained else None
    recent: list[collections.deque[float]] = [collections.deque(maxlen=100) for _ in slots]  # returns per policy

    shown_stats: list[Any] = [-1, {}]  # the trainer steps they were built at, the progress line's stats

    def stats() -> dict[str, float]:
        n = steps()
        if n != shown_stats[0]:  # they change only when a trainer steps
            out: dict[str, float] = {}
            for s in trained:
                out.update({f"{s.name}/{k}": v for k, v in s.learner.last_stats.items()})
            shown_stats[:] = [n, out]
        return shown_stats[1]  # type: ignore[no-any-return]

    def steps() -> int:
        return sum(s.learner.steps for s in trained)

    reason = "finished"
    try:
        while True:
            frames = base_frames + ring.frames
            reached = budget.budget_reached(frames, cfg)
            if reached is not None:
                reason = "finished" if reached == "total_frames reached" else reached
                break
            if stop.is_set():
                reason = f"stopped by {stop.reason}"
                break
            _act(ring, slots, trace)
            frames = base_frames + ring.frames
            for p, s in enumerate(slots):
                s.learner.frames = frames
                fragments = ring.pop_part_fragments(p)
                sink = sinks[p]
                if sink is not None:
                    for fragment in fragments:
                        sink(fragment)
            if play is not None:
                play.after_act(frames)
            if ring.episodes:
                done = ring.pop_episodes()
                for e in done:
                    if e.policy < len(slots):  # not an opponent agent of self-play
                        recent[e.policy].append(e.ret)
                mine = [e for e in done if e.policy < len(slots) and slots[e.policy] is shown]
                progress.add_episodes([e.ret for e in mine], [e.length for e in mine])
                if play is None and len(slots) > 1:  # self-play's note is the score
                    progress.note = policy_returns_note([s.name for s in slots], recent)
                if trace is not None:
                    wall = time.time()
                    for e in done:
                        trace.episode(e.ret, e.length, ring.frames, wall, e.version)
            for s in trained:
                while s.learner.ready():
                    s.learner.step()
                    checkpoints.after_step()
            if play is not None:
                play.pool.maybe_take(play.learner.policy, frames)
            if evaluation is not None:
                evaluation.maybe(frames, stop.is_set)
            if stop.checkpoint_request is not None:
                checkpoints.serve(stop.checkpoint_request)
            progress.update(frames, steps(), stats())
            if trace is not None:
                trace.maybe_flush()
        progress.update(base_frames + ring.frames, steps(), stats())
        checkpoints.save("final" if reason == "finished" else "stop")
    finally:
        checkpoints.close()
        progress.close()
    return progress.summary(
        reason=reason,
        policy_version=shown.policy.version,
        policy_versions={s.name: s.policy.version for s in slots},
        mean_return_by_policy={s.name: round(float(np.mean(r)), 4) if r else None for s, r in zip(slots, recent)},
        dropped_fragments=sum(s.learner.batcher.dropped for s in trained),
        env_failures=ring.env_failures,
        checkpoint=checkpoints.last,
        run_dir=str(session.run_dir),
        **(play.summary() if play is not None else {}),
    )


def _act(ring: PolicyRing, slots: list[_Slot], trace: Any) -> None:
    """One act step: every policy answers its agents' request, then the envs step."""
    t0 = time.perf_counter()
    requests = ring.request_parts(0)
    results: list[Any] = []
    for p, request in enumerate(requests):
        if request is None:
            results.append(None)
        elif p == len(slots):  # the opponent agents of self-play: each env's episode snapshot
            results.append(ring.act_opponents(0, request))  # type: ignore[attr-defined]
        else:
            s = slots[p]
            result = check_rollout_result(s.policy.rollout(request), len(request), s.who)
            results.append((result, s.policy.version))
    t1 = time.perf_counter()
    ring.consume_parts(0, results)
    if trace is not None:
        trace.add_time("inference", t1 - t0)
        trace.add_time("env_step", time.perf_counter() - t1)


class _SelfPlay:
    """The self-play side of the loop: the pool's restart after a resume, snapshots, the games' score."""

    def __init__(
        self, cfg: config.ExperimentConfig, ring: Any, slots: list[_Slot], frames: int, trace: Any, progress: Progress
    ) -> None:
        from hpcrl.acting.selfplay import Scoreboard

        assert cfg.selfplay is not None
        self.ring = ring
        self.pool = ring.pool
        self.learner = next(s for s in slots if s.name == cfg.selfplay.policy)
        self.opponent_part = len(slots)
        self.fixed = list(cfg.selfplay.fixed_opponents)
        self.trace = trace
        self.progress = progress
        self.board = Scoreboard()
        ring.restart_pool(self.learner.policy, frames)  # a resumed run's pool starts from its restored weights

    def after_act(self, frames: int) -> None:
        """Drop the opponent rows (never trained on); count, trace and show the games that ended."""
        self.ring.pop_part_fragments(self.opponent_part)
        games = self.ring.pop_games()
        if not games:
            return
        version = self.learner.policy.version
        for game in games:
            self.board.add(game)
            if self.trace is not None:
                self.trace.selfplay_game(
                    {
                        "frames": frames,
                        "learner_version": version,
                        "opponent_version": game.opponent_version,
                        "opponent_index": game.opponent_index,
                        "outcome": game.outcome,
                        "learner_return": game.learner_return,
                        "opponent_return": game.opponent_return,
                    }
                )
        rates = self.board.rates()
        assert rates is not None
        self.progress.note = (
            f"vs pool: win {rates['win']:.2f} draw {rates['draw']:.2f} loss {rates['loss']:.2f} "
            f"(last {len(self.board.recent)} games, pool {len(self.pool.entries)} of v{self.pool.versions[0]}.."
            f"v{self.pool.versions[-1]})"
        )

    def summary(self) -> dict[str, Any]:
        """The run summary's self-play entries."""
        from hpcrl.acting.selfplay import selfplay_summary

        return selfplay_summary(self.board, self.pool.versions, self.fixed)


class _Evaluation:
    """Evaluation during training of a one-process multi-policy run (``run.eval_episodes`` > 0).

    The ``/eval`` row, the progress line, ``best_eval_return`` and ``best.h5`` follow the first trained policy
    (the one the progress line shows); its ``best.h5`` goes to ``RUN_DIR/checkpoints/<policy>/best.h5``.
    """

    def __init__(
        self,
        cfg: config.ExperimentConfig,
        session: Session,
        names: list[str],
        slots: list[_Slot],
        shown: _Slot,
        frames: int,
        progress: Progress,
    ) -> None:
        from hpcrl.acting.evaluation import EvalSchedule
        from hpcrl.learning.evaltrack import BEST_NAME, EvalTracker

        self.cfg = cfg
        self.names = names
        self.slots = slots
        self.shown = shown
        self.trace = session.trace
        self.schedule = EvalSchedule(cfg, frames)
        self.tracker = None
        if self.schedule.enabled:
            best = session.run_dir / "checkpoints" / shown.name / BEST_NAME
            resume = not cfg.run.fresh
            text = config.dump(policy_view(cfg, shown.name))  # best.h5 loads like the policy's checkpoints
            self.tracker = EvalTracker(cfg, session.run_dir, text, self.trace, progress, resume, best)

    def maybe(self, frames: int, stopping: Callable[[], bool]) -> None:
        """Evaluate every policy when the run is due (no trainer steps meanwhile); record the result."""
        if self.tracker is None or not self.schedule.due(frames):
            return
        t0 = time.perf_counter()
        self.tracker.snapshot(self.shown.policy, frames)
        policies = [s.policy for s in self.slots]
        labels = [s.who for s in self.slots]
        result = evaluate_policies(self.cfg, self.names, policies, labels, "local actor", frames, stopping)
        if result is not None:
            self.tracker.record(result)
        if self.trace is not None:
            self.trace.add_time("evaluation", time.perf_counter() - t0)
