"""The Policy contract end to end: what passes test_pipeline deploys under mpiexec, and what would not deploy fails.

``coin-policy`` (tests/faults/faulty.py) is a numpy-only user policy with nothing but the abstract methods:
it must run under ``mpiexec -n 3`` with an inference rank, which loads the published (empty) state and
sets the version through the base class. ``stale-policy`` trains torch weights but publishes none: under
MPI that is refused at start-up on the trainer leader, and the whole job ends; in one process it runs
with a warning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import fault_env, log_lines, run_job

from hpcrl.api import config
from hpcrl.testing import PipelineError, test_pipeline

COIN = ["policy.type_=coin-policy", "policy.args={}", "trainer.type_='null'", "trainer.args={}"]
STALE = ["policy.type_=stale-policy", "policy.args={hidden_dim: 16, obs_dim: 4, action_dim: 2}"]
STALE_MESSAGE = (
    "policy StalePolicy has trainable parameters but state_dict() returns nothing and load_state_dict() is not "
    "overridden: inference ranks and actors would act with the initial weights for the whole run. Implement "
    "StalePolicy.state_dict()"
)


def test_numpy_policy_with_only_the_abstract_methods_passes_test_pipeline() -> None:
    import faulty  # noqa: F401  (registers coin-policy)

    out = test_pipeline(config.Environment(type_="fault-env"), "coin-policy", "null", episodes=1, trainer_steps=2)
    assert out["policy_version"] >= 2


def test_numpy_policy_with_only_the_abstract_methods_runs_with_an_inference_rank(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    res = run_job(fault_env(clean_env), tmp_path / "run", *COIN, "layout.inference=1", ranks=3, timeout=120)
    assert res.finished, res.explain()
    assert res.summary is not None and res.summary["policy_version"] >= 1, res.explain()
    assert "1 inference [1]" in res.summary["layout"], res.explain()


@pytest.mark.parametrize("inference", [1, 0], ids=["inference-rank", "inline-inference"])
def test_a_policy_that_publishes_nothing_is_refused_at_start_up_under_mpi(
    tmp_path: Path, clean_env: dict[str, str], inference: int
) -> None:
    res = run_job(
        fault_env(clean_env),
        tmp_path / "run",
        *STALE,
        f"layout.inference={inference}",
        ranks=3,
        timeout=120,
        expect_fatal=True,
    )
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    assert fatal and fatal[0].startswith("[rank 0 trainer "), res.explain()
    assert STALE_MESSAGE in fatal[0] and "PolicyContractError" in fatal[0], fatal[0]
    assert res.summary is None  # no training happened


def test_a_policy_that_publishes_nothing_runs_with_a_warning_in_one_process(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    res = run_job(fault_env(clean_env), tmp_path / "run", *STALE, timeout=120)
    assert res.finished, res.explain()
    warned = log_lines(res.text, "WARNING")
    assert any(STALE_MESSAGE in w and "fails at start-up under mpiexec" in w for w in warned), res.explain()


def test_a_policy_that_publishes_nothing_fails_test_pipeline() -> None:
    import faulty  # noqa: F401  (registers stale-policy)

    spec = config.Policy(type_="stale-policy", args={"hidden_dim": 16, "obs_dim": 4, "action_dim": 2})
    with pytest.raises(PipelineError, match=r"policy StalePolicy has trainable parameters but state_dict\(\)"):
        test_pipeline(config.Environment(type_="fault-env"), spec, "ppo")
