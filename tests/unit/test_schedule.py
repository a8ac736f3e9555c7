"""Schedules are functions of training progress in env frames: the schedule functions, ``TrainingProgress``,
and how the learner hands progress to the trainer, records it and reports a layout change on resume.

End-to-end resume histories across rank layouts are in ``tests/integration/test_resume_schedules.py``.
"""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrl.acting import rings
from hpcrl.acting.env_ring import EnvRing
from hpcrl.api import config
from hpcrl.api.trainer import SampleBatch, Trainer, TrainerStepResult, TrainingProgress
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.learner import Learner
from hpcrl.runtime import components
from hpcrl.trainers.schedule import SCHEDULES, check_schedule, scheduled

fractions = st.floats(min_value=-1.0, max_value=2.0, allow_nan=False)
bases = st.floats(min_value=0.0, max_value=10.0, allow_nan=False, allow_subnormal=False)  # 5e-324 * 0.5 underflows to 0


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(base=bases, a=fractions, b=fractions)
def test_linear_schedule_anneals_to_zero_exactly_at_the_end_and_constant_keeps_the_base(
    base: float, a: float, b: float
) -> None:
    lo, hi = min(a, b), max(a, b)
    v_lo, v_hi = scheduled("linear", base, lo), scheduled("linear", base, hi)
    assert 0.0 <= v_hi <= v_lo <= base  # never negative, never above the start value, non-increasing
    assert scheduled("linear", base, lo) == v_lo  # a pure function of progress: no hidden state
    if base > 0:
        assert (v_hi == 0.0) == (hi >= 1.0)  # 0 only once the budget is spent
    assert scheduled("linear", base, 0.0) == base and scheduled("linear", base, 1.0) == 0.0
    assert scheduled("constant", base, hi) == base


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(frames=st.integers(min_value=0, max_value=10**12), total=st.integers(min_value=0, max_value=10**12))
def test_training_progress_fraction_is_clipped_to_the_run(frames: int, total: int) -> None:
    f = TrainingProgress(frames, total).fraction
    assert 0.0 <= f <= 1.0
    if total > 0 and frames < total:
        assert f == frames / total
    if total > 0 and frames >= total:
        assert f == 1.0
    if total == 0:
        assert f == 0.0  # no budget known (a trainer stepped by hand): schedules stay at their start


def test_unknown_schedules_are_named() -> None:
    for name in SCHEDULES:
        check_schedule("lr_schedule", name, "my trainer")
    with pytest.raises(ValueError, match=r"my trainer: bad lr_schedule='cosine'; expected one of 'constant', 'linear'"):
        check_schedule("lr_schedule", "cosine", "my trainer")
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        scheduled("step", 1.0, 0.5)


class RecordingTrainer(Trainer):
    """A user-style trainer: reads ``self.progress`` (no MPI) and bumps the version."""

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self.seen: list[TrainingProgress] = []

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        self.seen.append(self.progress)
        self.policy.inc_version()
        return TrainerStepResult(stats={"my_lr": scheduled("linear", 1.0, self.progress.fraction)}, step=len(self.seen))


def _cfg(tmp_path, total_frames: int = 1000) -> config.ExperimentConfig:
    return config.from_dict(
        {
            "environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
            "policy": {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 4}, "action_dim": 2}},
            "trainer": {"type_": "null"},
            "experiment": {"total_frames": total_frames},
            "run": {"dir": str(tmp_path / "run"), "checkpoint_writer": "inline"},
            "training": {"max_staleness": 1000},
        }
    )


def _fragments(cfg: config.ExperimentConfig, policy, n: int) -> list[SampleBatch]:
    ring = EnvRing(rings.env_factory(cfg.environment), 2, 1, 8, None, "cartpole", seeds=[1, 2])
    out: list[SampleBatch] = []
    while len(out) < n:
        ring.consume(0, policy.rollout(ring.request(0)), 0)
        out += ring.pop_fragments()
    return out[:n]


def test_learner_hands_its_frames_to_the_trainer_and_the_trace_before_every_step(tmp_path) -> None:
    from hpcrl.storage.trace import TraceWriter, read_trace

    cfg = _cfg(tmp_path, total_frames=1000)
    policy = components.build_policy(cfg.policy)
    trainer = RecordingTrainer(policy)
    with TraceWriter(tmp_path, rank=0, role="trainer") as trace:
        learner = Learner(cfg, policy, trainer, batch_size=2, trace=trace)
        for frames, frag in zip((100, 250, 250, 1200), _fragments(cfg, policy, 4)):
            learner.frames = frames
            learner.add(frag)
            assert learner.step() is not None
    assert trainer.seen == [TrainingProgress(f, 1000) for f in (100, 250, 250, 1200)]
    tr = read_trace(tmp_path / "traces" / "rank-0000.h5")["trainer"]
    assert tr["frames"].tolist() == [100, 250, 250, 1200]
    assert tr["stats"]["my_lr"].tolist() == pytest.approx([0.9, 0.75, 0.75, 0.0])
    assert tr["stats"]["policy_version"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_resume_with_another_layout_says_what_changes(tmp_path, caplog) -> None:
    cfg = _cfg(tmp_path)
    policy = components.build_policy(cfg.policy)
    first = Learner(cfg, policy, components.build_trainer(cfg.trainer, policy, cfg.training), batch_size=2)
    first_ckpt = Checkpointer(
        cfg,
        first,
        tmp_path / "run",
        extra_attrs={"world_size": 1, "layout": "local", "trainer_ranks": 1, "frames_per_step": 64},
    )
    first.frames = 300
    first.add(_fragments(cfg, policy, 1)[0])
    first.step()
    first_ckpt.save("test")
    first_ckpt.close()

    longer = config.from_dict({**config.to_dict(cfg), "experiment": {"total_frames": 2000}})
    policy2 = components.build_policy(cfg.policy)
    resumed = Learner(longer, policy2, components.build_trainer(cfg.trainer, policy2, cfg.training), batch_size=4)
    resumed_ckpt = Checkpointer(
        longer,
        resumed,
        tmp_path / "run",
        extra_attrs={"world_size": 5, "layout": "5 ranks: ...", "trainer_ranks": 2, "frames_per_step": 384},
    )
    with caplog.at_level(logging.INFO, logger="hpcrl"):
        resumed_ckpt.restore()
    resumed_ckpt.close()
    assert resumed.frames == 300 and resumed.steps == 1 and policy2.version == 1
    text = caplog.text
    assert (
        "was written by layout 'local' (world size 1, 1 trainer rank(s), 64 frames per trainer step); this run is "
        "layout '5 ranks: ...' (world size 5, 2 trainer rank(s), 384 frames per trainer step)" in text
    )
    assert "Schedules follow frames / experiment.total_frames, not trainer steps" in text
    assert "experiment.total_frames=1000; this run has 2000: schedules follow frames / 2000 from here on" in text
    assert "(at 300 frames: 15.0% of the run instead of 30.0%)" in text
