"""The Policy contract end to end: what passes test_pipeline deploys under mpiexec, and what would not deploy fails.

``coin-policy`` (tests/faults/faulty.py) is a numpy-only user policy with nothing but the abstract methods:
it must run under ``mpiexec -n 3`` with an inference rank, which loads the published (empty) state and
sets the version through the base class. ``sized-coin-policy`` also implements ``Policy.args_from_spaces``
(its sizes come from the env's spaces, in one process and under MPI) and asks for ``experiment.seed``;
a policy without the hook keeps its args as configured. ``stale-policy`` trains torch weights but publishes none: under
MPI that is refused at start-up on the trainer leader, and the whole job ends; in one process it runs
with a warning.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import FAULT_YAML, fault_env, log_lines, run_job

from hpcrl.api import config
from hpcrl.runtime import components
from hpcrl.testing import PipelineError, test_pipeline

COIN = ["policy.type_=coin-policy", "policy.args={}", "trainer.type_='null'", "trainer.args={}"]
SIZED = ["policy.type_=sized-coin-policy", "policy.args={}", "trainer.type_='null'", "trainer.args={}"]
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


# ---------------------------------------------------------------------- Policy.args_from_spaces, takes_seed
def _resolved(policy: str, args: str = "{}") -> config.ExperimentConfig:
    import faulty  # noqa: F401  (registers the user policies)

    cfg = config.load(FAULT_YAML, [f"policy.type_={policy}", f"policy.args={args}", "trainer.type_='null'"])
    return components.resolve_experiment(cfg)[0]


def _stored_policy_args(run_dir: Path) -> dict:
    return config.parse_yaml((run_dir / "config.yaml").read_text(), "config.yaml")["policy"]["args"]


@pytest.mark.parametrize("name", ["sized-coin-policy", "sized-coin-factory"], ids=["class", "factory-function"])
def test_a_user_policy_hook_fills_its_sizes_from_the_env_spaces_and_takes_the_seed(name: str) -> None:
    cfg = _resolved(name)
    assert cfg.policy.args == {"obs_dim": 4, "action_dim": 2}
    policy = components.build_policy(cfg.policy, seed=cfg.experiment.seed)
    assert (policy.obs_dim, policy.n, policy.seed) == (4, 2, cfg.experiment.seed)


def test_a_user_policy_hook_names_a_given_size_that_does_not_fit() -> None:
    with pytest.raises(
        config.ConfigError,
        match=r"^policy\.args: policy 'sized-coin-policy' does not fit env fault-env: ValueError: obs_dim=5 does "
        r"not fit the env's spaces \(obs_dim=4\)",
    ):
        _resolved("sized-coin-policy", "{obs_dim: 5}")


def test_a_user_policy_without_the_hook_keeps_its_args_and_its_own_seed() -> None:
    import numpy as np

    cfg = _resolved("coin-policy", "{action_dim: 3}")
    assert cfg.policy.args == {"action_dim": 3}
    policy = components.build_policy(cfg.policy, seed=cfg.experiment.seed)
    assert policy.n == 3
    assert policy.rng.integers(0, 1000, 8).tolist() == np.random.default_rng(0).integers(0, 1000, 8).tolist()


def test_a_user_policy_hook_fills_its_sizes_in_test_pipeline() -> None:
    import faulty  # noqa: F401

    out = test_pipeline(config.Environment(type_="fault-env"), "sized-coin-policy", "null", episodes=1)
    assert out["trainer_steps"] >= 2


@pytest.mark.parametrize("ranks", [0, 3], ids=["one-process", "mpiexec-3-inference-rank"])
def test_a_user_policy_hook_fills_its_sizes_in_a_run(tmp_path: Path, clean_env: dict[str, str], ranks: int) -> None:
    run_dir = tmp_path / "run"
    extra = ["layout.inference=1"] if ranks else []
    res = run_job(fault_env(clean_env), run_dir, *SIZED, *extra, ranks=ranks, timeout=120)
    assert res.finished, res.explain()
    assert res.summary is not None and res.summary["policy_version"] >= 1, res.explain()
    assert _stored_policy_args(run_dir) == {"obs_dim": 4, "action_dim": 2}
