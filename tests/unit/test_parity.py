"""The learning-parity study's statistics, run files and generated page (benchmarks/bench_parity.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import bench_parity, learning_report
from benchmarks.parity_stats import bootstrap_ci, fisher_less, iqm, mann_whitney, median_or_none


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert iqm([5.0]) == 5.0
    with pytest.raises(ValueError):
        iqm([])


def test_bootstrap_interval_is_reproducible_and_stratified() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(100, 10, 30)
    low, high = bootstrap_ci([a])
    assert low < iqm(a) < high and high - low < 15
    assert bootstrap_ci([a]) == (low, high)
    # two strata keep their sizes: a constant stratum cannot widen the interval of the pooled IQM beyond the data
    lo2, hi2 = bootstrap_ci([a, np.full(30, 100.0)])
    assert a.min() <= lo2 <= hi2 <= a.max()
    assert bootstrap_ci([[3.0, 3.0, 3.0]]) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([a, []])


def test_tests_between_systems() -> None:
    # the numbers: 16/20 vs 20/20, one-sided Fisher p = 0.053
    assert fisher_less(16, 20, 20, 20) == pytest.approx(0.0530, abs=5e-4)
    assert fisher_less(20, 20, 16, 20) == pytest.approx(1.0)
    assert mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(0.0079, abs=1e-3)
    assert mann_whitney([500.0] * 5, [500.0] * 5) == 1.0
    assert median_or_none([None, 3.0, float("nan"), 1.0]) == 2.0 and median_or_none([None]) is None


def test_curve_grid_takes_the_last_100_episodes_ended_by_each_point() -> None:
    frames = np.arange(1, 301) * 10  # an episode ends every 10 frames
    returns = np.arange(300, dtype=float)
    c = bench_parity.curve_grid(frames, returns, budget=3000, points=3)
    assert c["frames"] == [1000, 2000, 3000]
    assert c["mean_return_last_100"] == [
        pytest.approx(np.mean(returns[0:100])),
        pytest.approx(np.mean(returns[100:200])),
        pytest.approx(np.mean(returns[200:300])),
    ]
    assert bench_parity.curve_grid(np.array([50]), np.array([1.0]), 100, 4)["mean_return_last_100"] == [
        None,
        1.0,
        1.0,
        1.0,
    ]


def test_run_files_are_checked_and_summarised(tmp_path) -> None:
    task = bench_parity.TASKS["cartpole"]
    three = (("cleanrl", [500.0, 200.0, 490.0]), ("hpcrl", [500.0, 480.0, 300.0]), ("sb3", [500.0, 500.0, 490.0]))
    for system, finals in three:
        for seed, final in enumerate(finals, 1):
            frames, returns = np.arange(1, 201) * 1000, np.full(200, final)
            d = bench_parity._result(task, system, seed, frames.tolist(), returns.tolist(), (frames / 1e4).tolist())
            path = bench_parity.run_file("cartpole", system, seed, tmp_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**d, "machine": {"cpu_model": "x", "cpus": 2}, "date": "2026-12-05"}))
    runs = bench_parity.load_runs("cartpole", tmp_path)
    assert list(runs) == ["hpcrl", "sb3", "cleanrl"]  # the systems' order, not the files' names
    s = bench_parity.summarize(task, runs)
    assert s["hpcrl"]["successes"] == 2 and s["sb3"]["successes"] == 3
    assert s["hpcrl"]["median_frames_to_threshold"] == 100_000  # the 100th episode ends at 100k frames
    assert 0 < s["hpcrl"]["p_fisher_less"] <= 1
    page = learning_report.render(tmp_path)
    assert "| hpcrl (one process) | 3 | 2/3 |" in page and "| SB3 | 3 | 3/3 |" in page
    assert "| CleanRL-style PPO | 3 | 2/3 |" in page
    assert "| seed | hpcrl (one process) | SB3 | CleanRL-style PPO |" in page
    success = next(r for r in bench_parity._rows(task, s) if "success rate" in r.measure)
    assert "CleanRL-style PPO 2/3" in success.note
    (tmp_path / "cartpole" / "bad.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ValueError, match="bad.json"):
        bench_parity.load_runs("cartpole", tmp_path)


def test_committed_learning_page_is_what_the_run_files_give() -> None:
    if not learning_report.PAGE.exists():
        pytest.fail("docs/learning.md is missing: python -m benchmarks.learning_report")
    assert learning_report.PAGE.read_text() == learning_report.expected_page(), (
        "regenerate: python -m benchmarks.learning_report"
    )


@pytest.mark.parametrize("name", sorted(bench_parity.TASKS))
def test_both_systems_train_the_same_batches(name: str) -> None:
    """SB3 finishes the batch in which the budget runs out, hpcrl trains whole batches within it.

    A budget that is not a whole number of batches gives SB3 one more update than hpcrl. It must be a whole
    number, or the extra update must not matter: at the end of a linear learning-rate schedule (its rate is
    then about 0), or 0.1% or less of the run's updates.
    """
    from hpcrl.api import config

    task = bench_parity.TASKS[name]
    cfg = config.load(task.yaml)
    batch = cfg.actor.envs_per_actor * cfg.actor.fragment_length
    hpcrl_updates = task.frames // batch
    sb3_updates = -(-task.frames // batch)
    assert hpcrl_updates >= 1
    if sb3_updates == hpcrl_updates:
        return
    linear = (cfg.trainer.args or {}).get("lr_schedule", "constant") == "linear"
    sb3_last_rate = max(0.0, 1.0 - sb3_updates * batch / task.frames)  # SB3 anneals by the frames after the rollout
    assert (linear and sb3_last_rate < 0.01) or 1 / sb3_updates <= 0.001, (
        f"{name}: a budget of {task.frames} frames is {task.frames / batch:.2f} batches of {batch}: SB3 makes "
        f"{sb3_updates} updates, hpcrl {hpcrl_updates}; round the budget to whole batches"
    )
