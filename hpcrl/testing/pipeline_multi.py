"""``test_pipeline`` of a multi-policy experiment: every policy with its trainer in the one-process loop.

:func:`hpcrl.testing.test_pipeline` hands a multi-policy config (``policies``/``trainers``/``agents``, see
``docs/multipolicy.md``) here. The env is probed and every agent mapped to its policy as a run does it
(:func:`~hpcrl.roles.local_multi.resolve_policies`); the env ring is the run's
(:func:`~hpcrl.acting.multi_ring.make_multi_ring`: one part per policy, self-play's opponent part acted by
the snapshot pool) and every trained policy has its own :class:`~hpcrl.learning.learner.Learner`, while
frozen policies act and never step. Nothing is written to a run directory. Afterwards every policy goes
through the publish and checkpoint round trips of :mod:`hpcrl.testing.roundtrip`, and every frozen policy
must have kept its weights and version. Every misfit is a :class:`~hpcrl.testing.pipeline.PipelineError`
naming the policy (and its key path or trainer).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hpcrl.api import config
from hpcrl.api.policy import Policy, RolloutContractError, RolloutRequest, RolloutResult, check_rollout_result
from hpcrl.learning.learner import Learner
from hpcrl.testing.pipeline import PipelineError

__all__ = ["test_multi_pipeline"]


class _Checked:
    """One policy under test: its learner (a frozen one's has a never-stepped ``null`` trainer) and tallies."""

    def __init__(self, name: str, policy: Policy, learner: Learner, trained: bool, twins: Any) -> None:
        self.name = name
        self.policy = policy
        self.learner = learner
        self.trained = trained
        self.twins = twins
        self.who = f"{name!r} ({type(policy).__name__})"
        self.start_version = int(policy.version)
        self.returns: list[float] = []
        self.probe: RolloutRequest | None = None  # its newest request, deterministic (is_evaluation)

    @property
    def trainer_label(self) -> str:
        return f"trainer {type(self.learner.trainer).__name__} (trainers.{self.name})"


def _resolve(cfg: config.ExperimentConfig, max_frames: int) -> tuple[config.ExperimentConfig, list[str]]:
    """The config as the check runs it (every env checked, ``max_frames`` as budget), resolved against the env."""
    from hpcrl.roles.local_multi import resolve_policies

    cfg = dataclasses.replace(
        cfg,
        actor=dataclasses.replace(cfg.actor, check_env="always"),
        experiment=dataclasses.replace(cfg.experiment, total_frames=max_frames),
    )
    try:
        cfg, names = resolve_policies(cfg)
    except config.ConfigError as e:
        raise PipelineError(str(e)) from e
    fixed = set(cfg.selfplay.fixed_opponents) if cfg.selfplay is not None else set()
    unused = [n for n in cfg.policies if n not in names and n not in fixed]
    if unused:
        raise PipelineError(
            f"policies.{unused[0]}: policy {unused[0]!r} acts for no agent of env "
            f"{config_env_label(cfg)} ({len(names)} agent(s), mapped to {sorted(set(names))}): test_pipeline "
            f"cannot check a policy that never acts; map an agent to it in agents, or remove it"
        )
    return cfg, names


def config_env_label(cfg: config.ExperimentConfig) -> str:
    """The env of ``cfg`` as messages name it."""
    from hpcrl.acting import rings

    return rings.env_label(cfg.environment)


def _build(cfg: config.ExperimentConfig) -> list[tuple[str, Policy, Any]]:
    """Every policy as a run builds it (on ``training.device``, ``init_from`` loaded), with its twin maker.

    Unlike a run, the process's torch threads and random seeds are left alone.
    """
    from hpcrl.acting import rings
    from hpcrl.api.policy import publish_problem
    from hpcrl.roles.local_multi import load_init_weights
    from hpcrl.runtime import components
    from hpcrl.testing import roundtrip

    try:
        device = components.resolve_device(cfg.training.device)
    except config.ConfigError as e:
        raise PipelineError(str(e)) from e
    out = []
    for i, (name, entry) in enumerate(cfg.policies.items()):
        spec = config.Policy(entry.type_, dict(entry.args))
        try:
            policy = components.build_policy(spec, device, cfg.experiment.seed + i)
            if entry.init_from is not None:
                load_init_weights(policy, name, entry)
        except config.ConfigError as e:
            raise PipelineError(f"policies.{name}: {e}") from e
        problem = publish_problem(policy)
        if problem is not None:
            raise PipelineError(f"policy {name!r}: {problem}")
        try:
            rings.default_state_row(policy)
        except ValueError as e:
            raise PipelineError(f"policy {name!r} ({type(policy).__name__}): {e}") from e
        out.append((name, policy, roundtrip.Twins(policy, spec)))
    return out


def _learners(cfg: config.ExperimentConfig, built: list[tuple[str, Policy, Any]], sizes: list[int]) -> list[_Checked]:
    """A learner per policy: trained ones get their trainer, frozen ones a ``null`` trainer that never steps."""
    from hpcrl.roles.local_multi import policy_view
    from hpcrl.runtime import components
    from hpcrl.trainers.null import NullTrainer

    checked = []
    for (name, policy, twins), size in zip(built, sizes):
        view = policy_view(cfg, name)
        trained = name in cfg.trainers
        if trained:
            try:
                trainer = components.build_trainer(view.single_trainer, policy, cfg.training)
            except config.ConfigError as e:
                raise PipelineError(f"trainers.{name}: {e}") from e
        else:
            trainer = NullTrainer(policy)
        checked.append(
            _Checked(name, policy, Learner(view, policy, trainer, batch_size=size, name=name), trained, twins)
        )
    return checked


def _answer(s: _Checked, request: RolloutRequest) -> tuple[RolloutResult, int]:
    from hpcrl.testing import roundtrip

    s.probe = roundtrip.evaluation_request(request)
    try:
        result = s.policy.rollout(request)
    except Exception as e:
        raise PipelineError(f"policy {s.who}: policy.rollout failed on {request!r}: {type(e).__name__}: {e}") from e
    try:
        return check_rollout_result(result, len(request), s.who), s.policy.version
    except RolloutContractError as e:
        raise PipelineError(str(e)) from e


def _train(s: _Checked) -> None:
    """Step ``s``'s learner on every batch it has; each real step must increment the policy's version."""
    while s.learner.ready():
        before = s.policy.version
        try:
            step = s.learner.step()
        except RuntimeError as e:  # the trainer failed on a batch, or returned no TrainerStepResult
            raise PipelineError(f"policy {s.name!r}: {e}") from e
        if step is not None and not step.skipped and s.policy.version == before:
            raise PipelineError(
                f"policy {s.name!r}: {s.trainer_label}.step did not increment the policy version (still {before}); "
                f"a trainer step must call policy.inc_version() so that actors and checkpoints see the new weights"
            )


def _missing(checked: list[_Checked], frames: int, episodes: int, trainer_steps: int, acting: set[str]) -> str | None:
    """What the run still lacks (per policy), or None when every policy is done.

    A policy not in ``acting`` (a self-play fixed opponent that acts for no agent) needs no episodes.
    """
    lacking = []
    for s in checked:
        what = []
        if len(s.returns) < episodes and s.name in acting:
            what.append(f"{len(s.returns)}/{episodes} episodes")
        if s.trained and s.learner.steps < trainer_steps:
            what.append(f"{s.learner.steps}/{trainer_steps} trainer steps")
        if what:
            lacking.append(f"policy {s.name!r}: {', '.join(what)}")
    if not lacking:
        return None
    return (
        f"after {frames} frames: {'; '.join(lacking)} (do episodes ever end? do a trained policy's agents act "
        f"often enough to fill its batches of training.batch_size fragments?)"
    )


def _after_checks(s: _Checked, frozen_state: dict[str, Any]) -> None:
    """The round trips of ``s`` (:mod:`hpcrl.testing.roundtrip`), and that a frozen policy stayed as it was."""
    from hpcrl.comm.params import published_copy
    from hpcrl.testing import roundtrip

    if s.trained and s.policy.version == s.start_version:
        raise PipelineError(
            f"policy {s.name!r}: its version is still {s.start_version} after {s.learner.steps} step(s) of its "
            f"{s.trainer_label} (every step was skipped); a trained policy's version must advance"
        )
    if not s.trained:
        if s.policy.version != s.start_version:
            raise PipelineError(
                f"frozen policy {s.name!r}: its version changed from {s.start_version} to {s.policy.version} "
                f"although it has no trainer; only a trainer step may change a policy's version"
            )
        diff = roundtrip._state_differs(frozen_state[s.name], published_copy(s.policy.state_dict()))
        if diff is not None:
            raise PipelineError(
                f"frozen policy {s.name!r}: its weights changed although it has no trainer ({diff}); "
                f"{type(s.policy).__name__}.rollout must not change the weights"
            )
    if s.probe is None:
        raise PipelineError(f"policy {s.name!r}: it never acted, so its round trips cannot be checked")
    trainer_spec = None
    if s.trained:
        trainer_spec = s.learner.cfg.single_trainer
    try:
        expected = roundtrip.reference_outputs(s.policy, s.probe)
        roundtrip.check_publish(s.policy, s.twins.make(), s.probe, expected)
        roundtrip.check_checkpoint(
            s.policy, s.learner.trainer, s.learner, s.twins.make(), trainer_spec, s.probe, expected
        )
    except PipelineError as e:
        raise PipelineError(f"policy {s.name!r}: {e}") from e


def test_multi_pipeline(
    cfg: config.ExperimentConfig, episodes: int = 2, trainer_steps: int = 2, max_frames: int = 20_000
) -> dict[str, Any]:
    """Run a multi-policy experiment's one-process loop without storage, then check every policy's round trips.

    See :func:`hpcrl.testing.test_pipeline` (the config form) for what is checked and returned.

    Raises:
        PipelineError: a part does not fit; the message names the policy (and key path or trainer).
    """
    from hpcrl.acting.env_ring import PolicyResultError
    from hpcrl.acting.multi_ring import make_multi_ring
    from hpcrl.comm.params import published_copy
    from hpcrl.testing import roundtrip

    if not cfg.multi_policy:
        raise PipelineError("test_multi_pipeline needs a multi-policy config (policies, trainers, agents)")
    cfg, names = _resolve(cfg, max_frames)
    built = _build(cfg)
    frozen_state = {n: published_copy(p.state_dict()) for n, p, _ in built if n not in cfg.trainers}
    policies = [p for _, p, _ in built]
    ring = make_multi_ring(cfg, names, policies, "test_pipeline")
    play = cfg.selfplay
    games = 0
    try:
        sizes = [cfg.training.batch_size or max(1, ring.part_slots(i)) for i in range(len(policies))]
        checked = _learners(cfg, built, sizes)
        learner_of_play = next((s for s in checked if play is not None and s.name == play.policy), None)
        fixed_checked = [s for s in checked if play is not None and s.name in play.fixed_opponents]
        n = len(checked)
        while True:
            missing = _missing(checked, ring.frames, episodes, trainer_steps, set(names))
            if missing is None:
                break
            if ring.frames >= max_frames:
                raise PipelineError(missing)
            requests = ring.request_parts(0)
            results: list[Any] = []
            for p, request in enumerate(requests):
                if request is None:
                    results.append(None)
                elif p == n:  # self-play's opponent agents: each env's snapshot of the self-play policy
                    for fixed in fixed_checked:  # a fixed opponent plays these agents: probe it with their rows
                        if fixed.probe is None:
                            fixed.probe = roundtrip.evaluation_request(request)
                    try:
                        results.append(ring.act_opponents(0, request))  # type: ignore[attr-defined]
                    except Exception as e:
                        raise PipelineError(
                            f"self-play opponent (a snapshot of policy {play.policy!r}): "  # type: ignore[union-attr]
                            f"{type(e).__name__}: {e}"
                        ) from e
                else:
                    results.append(_answer(checked[p], request))
            try:
                ring.consume_parts(0, results)
            except PolicyResultError as e:  # names the policy whose result does not fit
                raise PipelineError(f"its RolloutResult does not fit: {e}") from e
            for p, s in enumerate(checked):
                s.learner.frames = ring.frames
                fragments = ring.pop_part_fragments(p)
                if s.trained:
                    for fragment in fragments:
                        s.learner.add(fragment)
            if play is not None:
                ring.pop_part_fragments(n)  # opponent rows are never trained on
                games += len(ring.pop_games())  # type: ignore[attr-defined]
            for episode in ring.pop_episodes():
                if episode.policy < n:
                    checked[episode.policy].returns.append(episode.ret)
            for s in checked:
                if s.trained:
                    _train(s)
            if learner_of_play is not None:
                ring.pool.maybe_take(learner_of_play.policy, ring.frames)  # type: ignore[attr-defined]
        frames = ring.frames
    finally:
        ring.close()
    for s in checked:
        _after_checks(s, frozen_state)
    out: dict[str, Any] = {
        "frames": frames,
        "episodes": {s.name: len(s.returns) for s in checked},
        "trainer_steps": {s.name: s.learner.steps for s in checked if s.trained},
        "mean_return_by_policy": {
            s.name: sum(s.returns) / len(s.returns) if s.returns else float("nan") for s in checked
        },
        "policy_versions": {s.name: int(s.policy.version) for s in checked},
        "last_stats": {s.name: s.learner.last_stats for s in checked if s.trained},
    }
    if play is not None:
        out["selfplay_games"] = games
    return out


test_multi_pipeline.__test__ = False  # type: ignore[attr-defined]
