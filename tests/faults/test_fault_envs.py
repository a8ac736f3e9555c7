"""Environment faults end to end through ``hpcrl.run``: envs that raise, and envs that return bad results.

Cases 7 and 8 of docs/reliability.md. Runs that must name the actor rank use ``mpiexec -n 2`` (trainer
rank 0, actor rank 1 with the policy inline); the result checks also run in one process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from faultkit import fault_env, log_lines, run_job

LONG = "experiment.total_frames=100000000"


def _env(fault: str, at_step: int, **extra: object) -> str:
    items = ", ".join([f"fault: {fault}", f"at_step: {at_step}", *(f"{k}: {v}" for k, v in extra.items())])
    return f"environment.args={{{items}}}"


# ---------------------------------------------------------------------- case 7: envs that raise
@pytest.mark.parametrize("fault", ["raise_step", "raise_reset_once"])
def test_recreate_drops_the_partial_episode_counts_and_goes_on(
    tmp_path: Path, clean_env: dict[str, str], fault: str
) -> None:
    res = run_job(
        fault_env(clean_env),
        tmp_path / "run",
        _env(fault, 30),
        "actor.env_failure=recreate",
        "actor.max_env_failures=2",
        "experiment.total_frames=3000",
        ranks=2,
    )
    assert res.finished, res.explain()
    warned = log_lines(res.text, "recreating it and dropping its partial episode")
    assert warned and "actor rank 1: env fault-env #" in warned[0], res.explain()
    m = re.search(r"rank 1 actor: .*env_failures=(\d+)", res.text)
    assert m is not None and int(m.group(1)) == len(warned), res.explain()
    print(f"{fault} with recreate: {len(warned)} env failure(s) recovered and counted; run finished rc=0")


def test_recreate_gives_up_after_max_consecutive_failures(tmp_path: Path, clean_env: dict[str, str]) -> None:
    res = run_job(
        fault_env(clean_env),
        tmp_path / "run",
        _env("raise_forever", 40),
        "actor.env_failure=recreate",
        "actor.max_env_failures=2",
        LONG,
        ranks=2,
        timeout=90,
        expect_fatal=True,
    )
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    assert fatal and fatal[0].startswith("[rank 1 actor "), res.explain()
    assert re.search(r"actor rank 1: env fault-env #\d raised in reset: RuntimeError: injected", fatal[0]), fatal[0]
    assert "(3 consecutive failures, max_env_failures=2)" in fatal[0], fatal[0]
    print(f"raise_forever with recreate, max 2: stopped after {res.seconds:.1f}s: {fatal[0][:200]}")


@pytest.mark.parametrize("fault", ["raise_step", "raise_reset_once"])
def test_fail_fast_stops_at_the_first_env_exception(tmp_path: Path, clean_env: dict[str, str], fault: str) -> None:
    res = run_job(fault_env(clean_env), tmp_path / "run", _env(fault, 30), LONG, ranks=2, timeout=90, expect_fatal=True)
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    what = "step" if fault == "raise_step" else "reset"
    assert fatal and re.search(rf"actor rank 1: env fault-env #\d raised in {what}\b.*injected", fatal[0]), (
        res.explain()
    )
    assert not log_lines(res.text, "recreating it")


# ---------------------------------------------------------------------- case 8: bad results
BAD_RESULTS = {
    "wrong_shape": "agent 0: obs field 'obs': expected shape (4,), got (5,)",
    "wrong_dtype": "agent 0: obs field 'obs': expected dtype float32, got float64",
    "nan_obs": "agent 0: obs field 'obs': expected finite values, got 1 NaN/Inf element(s) of 4",
    "inf_obs": "agent 0: obs field 'obs': expected finite values, got 1 NaN/Inf element(s) of 4",
    "nan_reward": "agent 0: reward: expected a finite value, got array([nan], dtype=float32)",
    "inf_reward": "agent 0: reward: expected a finite value, got array([inf], dtype=float32)",
    "too_few": "env fault-env #0 step 5 returned 1 results, expected a list of agent_count=2 StepResult/None",
}


@pytest.mark.parametrize("fault", list(BAD_RESULTS))
def test_bad_env_result_is_an_error_at_its_first_occurrence(
    tmp_path: Path, clean_env: dict[str, str], fault: str
) -> None:
    res = run_job(fault_env(clean_env), tmp_path / "run", _env(fault, 5, agents=2), LONG, timeout=60)
    assert res.rc != 0, res.explain()
    errors = log_lines(res.text, "EnvError:")
    assert errors, res.explain()
    expected = BAD_RESULTS[fault]
    if fault != "too_few":
        expected = f"local actor: env #0: env 'fault-env' step 5: {expected}"
    assert expected in errors[-1], res.explain()
    print(f"{fault}: {errors[-1].split('EnvError: ')[-1][:160]}")


def test_bad_result_names_the_actor_rank_under_mpi(tmp_path: Path, clean_env: dict[str, str]) -> None:
    res = run_job(
        fault_env(clean_env), tmp_path / "run", _env("nan_obs", 7), LONG, ranks=2, timeout=90, expect_fatal=True
    )
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    expected = "actor rank 1: env #0: env 'fault-env' step 7: agent 0: obs field 'obs': expected finite values"
    assert fatal and fatal[0].startswith("[rank 1 actor ") and expected in fatal[0], res.explain()


def test_late_nan_is_caught_with_check_env_always(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """``check_env: first`` validates ~100 steps per env; ``always`` catches a fault at any step."""
    res = run_job(
        fault_env(clean_env), tmp_path / "run", _env("nan_reward", 300), "actor.check_env=always", LONG, timeout=60
    )
    assert res.rc != 0, res.explain()
    assert "env 'fault-env' step 300: agent 0: reward: expected a finite value" in res.text, res.explain()
