"""Config errors are one message naming the key path (or the layout numbers), before any communication.

Case 12 of docs/reliability.md. "Before any communication" is checked by its effects: the job ends within
seconds with exit code 2, and no run directory (config.yaml, traces, checkpoints) was created.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import fault_env, log_lines, run_job

CASES = {
    "unknown_key": (["actor.envs_per_actr=2"], "actor.envs_per_actr: unknown key (did you mean 'envs_per_actor'?)"),
    "wrong_type": (["actor.envs_per_actor=many"], "actor.envs_per_actor: expected an integer, got 'many' (str)"),
    "bad_choice": (["training.nonfinite=ignore"], "training.nonfinite: expected one of 'skip' | 'stop', got 'ignore'"),
    "nested_unknown": (["run.checkpoint.every=3"], "run.checkpoint: unknown key"),
    "out_of_range": (["actor.envs_per_actor=0"], "actor.envs_per_actor: must be >= 1, got 0"),
}


@pytest.mark.parametrize("ranks", [0, 3], ids=["one-process", "mpiexec-3"])
@pytest.mark.parametrize("case", list(CASES))
def test_config_error_names_the_key_path(tmp_path: Path, clean_env: dict[str, str], case: str, ranks: int) -> None:
    overrides, expected = CASES[case]
    run_dir = tmp_path / "run"
    res = run_job(fault_env(clean_env), run_dir, *overrides, ranks=ranks, timeout=60)
    assert res.rc == 2, res.explain()
    lines = log_lines(res.err, "hpcrl: config error:")
    assert lines and expected in lines[0], res.explain()
    assert "Traceback" not in res.text
    assert not run_dir.exists()  # nothing was started


def test_layout_not_matching_the_world_size_names_the_numbers(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    res = run_job(fault_env(clean_env), run_dir, "layout.trainers=2", "layout.inference=2", ranks=3, timeout=60)
    assert res.rc == 2, res.explain()
    lines = log_lines(res.err, "hpcrl: layout error:")
    assert len(lines) == 1, res.explain()
    assert "trainers=2 inference=2 = 4 ranks plus at least 1 actor (actors=rest), but the world size is 3" in lines[0]
    assert "Traceback" not in res.text
    assert not run_dir.exists()


def test_layout_is_not_applied_to_a_one_process_run(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """One process runs every role inline, whatever ``layout`` says (the layout applies to MPI jobs only)."""
    res = run_job(fault_env(clean_env), tmp_path / "run", "layout.trainers=2", "experiment.total_frames=200")
    assert res.rc == 0, res.explain()


def test_config_error_is_printed_once_under_mpiexec(tmp_path: Path, clean_env: dict[str, str]) -> None:
    res = run_job(fault_env(clean_env), tmp_path / "run", "actor.envs_per_actr=2", ranks=3, timeout=60)
    assert res.rc == 2
    assert len(log_lines(res.err, "hpcrl: config error:")) == 1, res.explain()
