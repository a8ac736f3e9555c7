"""Evaluation during training and TensorBoard scalars: the parts that need no run (trace rows, best.h5, report)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrl.acting.env_ring import Episode
from hpcrl.acting.evaluation import EvalSchedule, eval_seed, make_eval_ring, run_evaluation, summarize
from hpcrl.acting.rings import env_seed
from hpcrl.api import config
from hpcrl.storage.trace import TraceWriter, read_trace


def _cfg(**run: object) -> config.ExperimentConfig:
    return config.from_dict(
        {
            "environment": {"type_": "null", "args": {"episode_length": 5}},
            "policy": {"type_": "random", "args": {"action_dim": 2}},
            "trainer": {"type_": "null"},
            "actor": {"envs_per_actor": 4, "fragment_length": 4},
            "run": {"eval_episodes": 6, **run},
        }
    )


def test_trace_eval_rows_round_trip_and_old_traces_read_empty(tmp_path: Path) -> None:
    with TraceWriter(tmp_path, rank=0, role="trainer") as tw:
        tw.evaluation({"frames": 100, "policy_version": 3, "episodes": 5, "mean_return": 2.5})
        tw.flush()
        tw.evaluation(summarize([Episode(1.0, 4, 7), Episode(3.0, 6, 8)], frames=200))
    path = tmp_path / "traces" / "rank-0000.h5"
    ev = read_trace(path)["eval"]
    assert ev["frames"].tolist() == [100, 200]
    assert ev["mean_return"].tolist() == [2.5, 2.0]
    assert ev["policy_version"].tolist() == [3, 8] and ev["policy_version_min"].tolist() == [-1, 7]
    assert math.isnan(ev["std_return"][0]) and ev["std_return"][1] == pytest.approx(1.0)
    with h5py.File(path, "a") as f:  # a trace written before the /eval group existed
        del f["eval"]
    assert read_trace(path)["eval"]["frames"].shape == (0,)


def test_schedule_fires_once_per_crossing_and_resumes_at_the_next_multiple() -> None:
    s = EvalSchedule(_cfg(eval_every_frames=100), start_frames=250)
    fired = [f for f in range(250, 700, 7) if s.due(f)]
    assert [f // 100 for f in fired] == [3, 4, 5, 6]
    assert not EvalSchedule(_cfg(eval_episodes=0), 0).due(10**9)


def test_evaluation_ring_is_deterministic_seeded_apart_and_drops_its_fragments() -> None:
    from hpcrl.policies.random import RandomPolicy

    cfg = _cfg(eval_envs=3)
    policy = RandomPolicy(action_dim=2)
    ring = make_eval_ring(cfg, None, "test")
    seen: list[bool] = []
    try:
        assert ring.num_slots(0) == 3
        train_seeds = {env_seed(cfg.experiment.seed, i) for i in range(64)}
        assert not set(ring.seeds) & train_seeds
        assert list(ring.seeds) == [env_seed(eval_seed(cfg.experiment.seed), i) for i in range(3)]

        def act(request):  # type: ignore[no-untyped-def]
            seen.extend(bool(x) for x in np.ravel(request.is_evaluation))
            return policy.rollout(request), 5

        done = run_evaluation(ring, 6, act)
        assert done is not None and len(done) == 6 and all(e.length == 5 and e.version == 5 for e in done)
        assert seen and all(seen)
        assert ring.pop_fragments() == []  # nothing left for anyone to ship
    finally:
        ring.close()
    ring = make_eval_ring(cfg, None, "test")
    try:
        assert run_evaluation(ring, 6, act, stopping=lambda: True) is None
    finally:
        ring.close()


def _policy():  # type: ignore[no-untyped-def]
    from hpcrl.api.policy import make

    return make(config.Policy("actor-critic-separate", {"obs_dim": {"obs": 3}, "action_dim": 2, "hidden_dim": 8}))


def test_best_checkpoint_is_written_only_when_better_and_loads(tmp_path: Path) -> None:
    import hpcrl
    from hpcrl.learning.evaltrack import EvalTracker, previous_best
    from hpcrl.storage.checkpoint import CheckpointManager, read_checkpoint_attrs

    cfg = config.from_dict(
        {
            "environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
            "policy": {
                "type_": "actor-critic-separate",
                "args": {"obs_dim": {"obs": 3}, "action_dim": 2, "hidden_dim": 8},
            },
            "trainer": {"type_": "ppo"},
            "run": {"eval_episodes": 2, "save_best": True},
        }
    )
    text = config.dump(cfg)
    policy = _policy()
    tracker = EvalTracker(cfg, tmp_path, text)
    best = tmp_path / "checkpoints" / "best.h5"
    tracker.snapshot(policy, 100)
    assert tracker.record({"frames": 100, "mean_return": 5.0, "episodes": 2})
    assert read_checkpoint_attrs(best)["eval_return"] == 5.0
    policy.inc_version()
    tracker.snapshot(policy, 200)
    assert not tracker.record({"frames": 200, "mean_return": 4.0, "episodes": 2})
    assert not tracker.record({"frames": 200, "mean_return": math.nan, "episodes": 2})
    attrs = read_checkpoint_attrs(best)
    assert (attrs["eval_return"], attrs["version"], attrs["reason"]) == (5.0, 0, "best")
    loaded = hpcrl.load_policy(str(best))
    for a, b in zip(loaded.parameters(), policy.parameters()):
        assert a.shape == b.shape
    assert CheckpointManager(tmp_path).list() == []  # never a checkpoint a run resumes from
    assert previous_best(tmp_path) == 5.0
    assert EvalTracker(cfg, tmp_path, text, resume=True).best == 5.0
    assert EvalTracker(cfg, tmp_path, text, resume=False).best == -math.inf


def test_progress_line_and_summary_show_evaluations() -> None:
    from hpcrl.progress import Progress

    p = Progress(1000, mode="off")
    assert "eval" not in p.line() and "best_eval_return" not in p.summary()
    p.add_eval({"frames": 10, "mean_return": 7.5})
    p.add_eval({"frames": 20, "mean_return": 6.0})
    assert "eval 6.00" in p.line()
    s = p.summary()
    assert (s["evaluations"], s["last_eval_return"], s["best_eval_return"]) == (2, 6.0, 7.5)


def test_report_plots_and_summarises_evaluations(tmp_path: Path) -> None:
    from hpcrl.report import build_summary, format_summary, write_report

    with TraceWriter(tmp_path, rank=0, role="local") as tw:
        for i in range(5):
            tw.episode(float(i), 10, 100 * (i + 1))
            tw.trainer_step(i + 1, 100 * (i + 1), {"policy_loss": 0.1 * i})
        tw.evaluation({"frames": 200, "mean_return": 3.0, "std_return": 1.0, "episodes": 2})
        tw.evaluation({"frames": 400, "mean_return": 9.0, "std_return": 0.5, "episodes": 2})
    summary = build_summary(tmp_path)
    assert (summary["evaluations"], summary["last_eval_return"], summary["best_eval_return"]) == (2, 9.0, 9.0)
    assert "| best evaluation mean return | 9 |" in format_summary(summary)
    names = {p.name for p in write_report(tmp_path)}
    assert "eval_return.png" in names


def test_report_tensorboard_export_has_the_live_tags(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hpcrl.report import write_tensorboard

    with TraceWriter(tmp_path, rank=0, role="local") as tw:
        for i in range(3):
            tw.episode(float(i), 10, 100 * (i + 1), wall_time=1000.0 + i)
            tw.trainer_step(i + 1, 100 * (i + 1), {"policy_loss": 0.5, "approx_kl": 0.01}, wall_time=1000.0 + i)
        tw.evaluation({"frames": 300, "mean_return": 4.0, "episodes": 2})
    out = write_tensorboard(tmp_path, tmp_path / "tb")
    acc = EventAccumulator(str(out))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"episode/return", "trainer/policy_loss", "trainer/approx_kl", "eval/mean_return"} <= tags
    assert [e.value for e in acc.Scalars("eval/mean_return")] == [4.0]


def test_tensorboard_option_without_the_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcrl.tensorboard import log_dir_of, require

    cfg = _cfg(tensorboard=True)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(config.ConfigError, match=r"run\.tensorboard: .*not installed.*pip install"):
        require(cfg)
    require(_cfg(tensorboard=False))  # off: nothing to check
    assert log_dir_of(cfg, Path("r")) == Path("r/tensorboard")
    assert log_dir_of(_cfg(tensorboard="tb/x"), Path("r")) == Path("tb/x")
    assert log_dir_of(_cfg(), Path("r")) is None
