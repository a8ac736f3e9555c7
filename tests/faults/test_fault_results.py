"""Bad env results at any step, through the real EnvRing: a named error, never a silent broadcast or cast.

Property-based (Hypothesis): ``fault-env`` bends agent 0's result at a random step (inside or past the
steps ``actor.check_env: first`` validates) with a random defect of :data:`faulty.BAD_DATA` (wrong shape,
scalar, extra dim, wrong dtype, non-bool flags, NaN/Inf, wrong types) or returns the wrong number of
results; the ring must raise an ``EnvError`` naming the env, the step, the agent and the field. The
variants of :data:`faulty.GOOD_DATA` (python floats, float64 or 0-d rewards, python bools) are accepted
and stored as their canonical values. Runs in process: about a second per dozen examples.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faultkit import fault_env, log_lines, run_job
from faulty import BAD_DATA, GOOD_DATA, FaultyEnv
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hpcrl.acting.env_ring import CHECK_FIRST_STEPS, EnvError, EnvRing
from hpcrl.policies.random import RandomPolicy

NONFINITE = {"obs_nan", "obs_inf", "reward_nan", "reward_inf"}
COUNT = {"too_few": "results, expected a list of agent_count", "too_many": "results, expected a list of agent_count"}
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ring(fault: str, at_step: int, check: str, agents: int, envs: int) -> EnvRing:
    return EnvRing(
        lambda i: FaultyEnv(fault, at_step=at_step, agents=agents, episode_length=25, seed=i),
        envs,
        1,
        8,
        None,
        "fault-env",
        where="actor rank 1",
        check=check,
        policy_name="random",
    )


def _drive(ring: EnvRing, until: int, on_step: object = None) -> None:
    """Cycle the ring until env 0 has stepped ``until`` times (resets take a cycle of their own)."""
    policy = RandomPolicy(action_dim=2)
    env0 = ring.groups[0].envs[0]
    for _ in range(3 * until + 10):
        ring.consume(0, policy.rollout(ring.request(0)), 0)
        ring.pop_fragments()
        if callable(on_step):
            on_step()
        if env0.steps >= until:  # type: ignore[attr-defined]
            return


@pytest.mark.filterwarnings("ignore:invalid value encountered in dot:RuntimeWarning")  # Inf * 0 in the check
@SETTINGS
@given(
    defect=st.sampled_from(sorted([*BAD_DATA, *COUNT])),
    at_step=st.integers(1, CHECK_FIRST_STEPS + 60),
    check=st.sampled_from(["first", "always", "off"]),
    agents=st.integers(1, 2),
    envs=st.integers(1, 3),
)
def test_a_bad_result_at_any_step_is_a_named_error(defect: str, at_step: int, check: str, agents: int, envs: int):
    nonfinite_unchecked = defect in NONFINITE and check == "off"  # "off" leaves NaN/Inf to the trainer
    fault = defect if defect in COUNT else f"data:{defect}"
    ring = _ring(fault, at_step, check, agents, envs)
    try:
        if nonfinite_unchecked:
            _drive(ring, at_step + 1)
            return
        with pytest.raises(EnvError) as info:
            _drive(ring, at_step + 1)
    finally:
        ring.close()
    msg = str(info.value)
    assert msg.startswith("actor rank 1: env"), msg
    if defect in COUNT:
        assert f"env fault-env #0 step {at_step} returned" in msg and COUNT[defect] in msg, msg
        return
    assert f"env #0: env 'fault-env' step {at_step}: agent 0: " in msg, msg
    assert BAD_DATA[defect][1] in msg, msg
    assert "broadcast" not in msg, msg  # never numpy's words: the error is ours and names the field


@SETTINGS
@given(
    variant=st.sampled_from(sorted(GOOD_DATA)),
    at_step=st.integers(1, CHECK_FIRST_STEPS + 60),
    check=st.sampled_from(["first", "always", "off"]),
)
@example(variant="truncated_int64", at_step=125, check="first")  # the bent step ends an episode
@example(variant="done_uint8", at_step=25, check="always")
def test_accepted_result_variants_are_stored_as_their_canonical_values(variant: str, at_step: int, check: str):
    ring = _ring(f"data:{variant}", at_step, check, 1, 2)
    g = ring.groups[0]
    seen: list[tuple[float, bool]] = []

    def look() -> None:
        if g.envs[0].steps == at_step and not g.on_reset[0]:  # type: ignore[attr-defined]
            seen.append((float(g.reward[0, 0]), bool(g.done[0, 0])))  # type: ignore[index]

    try:
        _drive(ring, at_step + 2, look)
    finally:
        ring.close()
    assert seen, "the bent step was never staged"
    reward, done = seen[0]
    if variant.startswith("reward"):
        assert reward == (2.0 if variant == "reward_int" else 0.5)
    elif variant.startswith("done"):
        assert done is False
    else:  # a truncated variant leaves done as the env computed it: the episode ends every 25th step
        assert done is (at_step % 25 == 0)


# ---------------------------------------------------------------------- end to end
LONG = "experiment.total_frames=3000"


def _env(fault: str, at_step: int) -> str:
    return f"environment.args={{fault: '{fault}', at_step: {at_step}}}"


@pytest.mark.parametrize(
    "defect, at_step",
    [("obs_shape_1", CHECK_FIRST_STEPS + 1), ("obs_scalar", CHECK_FIRST_STEPS + 1), ("reward_nan", 300)],
)
def test_a_bad_result_past_the_checked_steps_stops_a_default_run(
    tmp_path: Path, clean_env: dict[str, str], defect: str, at_step: int
) -> None:
    """With the default ``check_env: first``, a misfit or NaN after the first 100 steps still ends the run."""
    res = run_job(fault_env(clean_env), tmp_path / "run", _env(f"data:{defect}", at_step), LONG, timeout=90)
    assert res.rc != 0, res.explain()
    errors = log_lines(res.text, "EnvError:")
    expected = f"local actor: env #0: env 'fault-env' step {at_step}: agent 0: {BAD_DATA[defect][1]}"
    assert errors and expected in errors[-1], res.explain()
