"""PPG end to end (examples/cartpole/ppg.yaml): a 5-rank job (2 trainer ranks, remote inference, 2 actors) and a
one-process run that resumes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from helpers import explain, run_hpcrl

from hpcrl.storage.trace import read_trace

PPG = "examples/cartpole/ppg.yaml"
SHORT = ["trainer.args.n_pi=2", "trainer.args.aux_epochs=2", "trainer.args.aux_minibatches=3"]


def _phases(trace: Path) -> dict[str, np.ndarray]:
    """The trainer stats of ``trace`` at its steps that ended with an auxiliary phase."""
    stats = read_trace(trace)["trainer"]["stats"]
    phase = np.asarray(stats.get("ppg_phase", []), np.float64)
    at = np.flatnonzero(np.isfinite(phase))
    return {k: np.asarray(v, np.float64)[at] for k, v in stats.items()}


def test_two_trainer_ranks_with_remote_inference_hold_the_same_weights_after_aux_phases(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    run_dir = tmp_path / "ppg4"
    proc, summary, _ = run_hpcrl(
        clean_env, run_dir, *SHORT, "layout.trainers=2", "layout.inference=1", ranks=5, config=PPG, timeout=240
    )
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert "2 trainers [0-1]" in summary["layout"] and "1 inference" in summary["layout"]
    ranks = [_phases(run_dir / "traces" / f"rank-{r:04d}.h5") for r in (0, 1)]
    n = len(ranks[0]["ppg_phase"])
    assert n >= 1, explain(proc)
    assert list(ranks[1]["ppg_phase"]) == list(ranks[0]["ppg_phase"]) == [float(i) for i in range(1, n + 1)]
    # the same weights on both trainer ranks after every auxiliary phase (bitwise: the same float64 sum)
    np.testing.assert_array_equal(ranks[0]["ppg_param_sum"], ranks[1]["ppg_param_sum"])
    for r in ranks:
        assert np.all(r["ppg_updates"] == 6.0) and np.all(np.isfinite(r["ppg_aux_value_loss"]))
    # the phase's extra version reaches the summary: two versions per phase step, one per other step
    assert summary["policy_version"] == summary["trainer_steps"] + n, summary


def _new_traces(run_dir: Path, before: set[Path]) -> list[Path]:
    return sorted(set((run_dir / "traces").glob("*.h5")) - before)


def test_resumed_run_starts_a_new_phase(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "ppg1"
    proc, first, _ = run_hpcrl(clean_env, run_dir, *SHORT, "trainer.args.n_pi=3", config=PPG)
    assert proc.returncode == 0 and first is not None, explain(proc)
    before = set((run_dir / "traces").glob("*.h5"))
    proc, again, _ = run_hpcrl(
        clean_env, run_dir, *SHORT, "trainer.args.n_pi=3", "experiment.total_frames=6000", config=PPG
    )
    assert proc.returncode == 0 and again is not None, explain(proc)
    assert "resumed from" in proc.stderr
    assert again["frames"] >= 6000 and again["policy_version"] > first["policy_version"]
    (trace,) = _new_traces(run_dir, before)
    stats: dict[str, Any] = read_trace(trace)["trainer"]["stats"]
    kept = [int(k) for k in stats["ppg_kept_batches"]]
    # nothing kept from before the resume: the first aux phase comes after the resumed run's third step
    assert kept[:4] == [1, 2, 0, 1], kept
    phases = np.asarray(stats["ppg_phase"], np.float64)
    first_phase = int(np.flatnonzero(np.isfinite(phases))[0])
    assert first_phase == 2 and phases[first_phase] > 1  # the phase count continues from the checkpoint


def test_memory_cap_stops_the_mpi_job_with_the_sizes(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """A cap too small for n_pi batches stops the 5-rank job at the first step (no rank left waiting)."""
    proc, _, _ = run_hpcrl(
        clean_env,
        tmp_path / "cap",
        *SHORT,
        "trainer.args.aux_buffer_mb=0.001",
        "layout.trainers=2",
        "layout.inference=1",
        ranks=5,
        config=PPG,
        timeout=120,
    )
    assert proc.returncode != 0, explain(proc)
    assert "FATAL: ValueError: ppg trainer: the batches kept for the auxiliary phase would take" in proc.stderr
    assert "(2 batches of n_pi=2, this one" in proc.stderr and "trainer.args.aux_buffer_mb=0.001" in proc.stderr
