"""User components that break their contract are named where they run: a policy whose ``rollout`` answers with
the wrong number of rows, a trainer whose ``step`` returns None.

Each test runs a real job (one process, or its own ``mpiexec``) and checks the exit code and the one line that
names the component, what it returned and what was expected.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from faultkit import fault_env, log_lines, run_job

HOST = socket.gethostname()
SHORT_POLICY = [
    "policy.type_=fault-policy",
    "policy.args={obs_dim: {obs: 4}, action_dim: 2, hidden_dim: 16, short_at: 5, ranks: [RANK]}",
]
#: where the policy runs: (ranks of the job, the rank running the policy, extra overrides, prefix of the message)
WHERE = {
    "one-process": (0, 0, [], ""),
    "inline-actor": (2, 1, [], f"[rank 1 actor {HOST}] FATAL: RolloutContractError: "),
    "inference-rank": (3, 1, ["layout.inference=1"], f"[rank 1 inference {HOST}] FATAL: RolloutContractError: "),
}


@pytest.mark.parametrize("where", list(WHERE))
def test_rollout_with_too_few_action_rows_names_the_policy(
    tmp_path: Path, clean_env: dict[str, str], where: str
) -> None:
    ranks, rank, extra, prefix = WHERE[where]
    overrides = [o.replace("RANK", str(rank)) for o in SHORT_POLICY] + extra
    res = run_job(fault_env(clean_env), tmp_path / "run", *overrides, ranks=ranks, timeout=90, expect_fatal=ranks > 0)
    assert res.rc != 0, res.explain()
    # actor-critic-separate splits its rows per group (two halves with remote inference, envs_per_actor=2)
    rows = 1 if where == "inference-rank" else 2
    expected = (
        "policy 'fault-policy' (ActorCriticPolicy"
        + (f") on rank 1 ({'inference' if ranks == 3 else 'actor'} on {HOST})" if ranks else ")")
        + f": rollout returned action.x with {rows - 1} rows (shape ({rows - 1},)) for a request of {rows} rows"
    )
    lines = log_lines(res.text, expected)
    assert lines, res.explain()
    if ranks:
        assert lines[-1].startswith(prefix), res.explain()
    else:
        assert res.err.rstrip().splitlines()[-1].startswith("hpcrl.api.policy.RolloutContractError: " + expected)
    assert "SchemaError" not in res.text, res.explain()


@pytest.mark.parametrize("ranks", [0, 3], ids=["one-process", "mpiexec-3"])
def test_trainer_step_returning_none_names_the_trainer(tmp_path: Path, clean_env: dict[str, str], ranks: int) -> None:
    res = run_job(
        fault_env(clean_env),
        tmp_path / "run",
        "trainer.args.return_none_at=2",
        ranks=ranks,
        timeout=90,
        expect_fatal=ranks > 0,
    )
    assert res.rc != 0, res.explain()
    expected = "trainer 'fault-ppo' (FaultyPPO).step returned None (NoneType); expected a TrainerStepResult"
    lines = log_lines(res.text, expected)
    assert lines, res.explain()
    if ranks:
        assert lines[-1].startswith(f"[rank 0 trainer {HOST}] FATAL: RuntimeError: {expected}"), res.explain()
    assert "AttributeError" not in res.text, res.explain()
