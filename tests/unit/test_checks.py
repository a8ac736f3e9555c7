"""EnvChecker / normalize_result: every error names env, where, agent, field, expected and actual."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from hpcrl.api.environment import Action, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.envs.checks import EnvChecker, EnvCheckError, normalize_result, normalize_results
from hpcrl.envs.results import FALSE, TRUE, ZERO_REWARD, flag, record_builder, reward_array

OBS = spaces.Dict(obs=spaces.Box(-1.0, 1.0, (3,), np.float32), state=spaces.Box(-1.0, 1.0, (5,), np.float32))


def res(obs=None, state=None, reward=0.0, done=False, truncated=False) -> StepResult:
    o = np.zeros(3, np.float32) if obs is None else obs
    s = np.zeros(5, np.float32) if state is None else state
    return StepResult(NamedArray(obs=o, state=s), reward, done, truncated)


@pytest.fixture
def chk() -> EnvChecker:
    return EnvChecker("demo-env", 2, [OBS, OBS], [spaces.Discrete(4), spaces.Box(-1, 1, (2,), np.float32)])


def expect(chk: EnvChecker, results, where: str, *parts: str) -> str:
    with pytest.raises(EnvCheckError) as ei:
        chk.check(results, where)
    msg = str(ei.value)
    for p in ("'demo-env'", where, *parts):
        assert p in msg, f"{p!r} missing from: {msg}"
    return msg


def test_valid_results_pass(chk):
    chk.check([res(), res()], "reset")
    chk.check([res(reward=1.5, done=True), None], "step 1")
    chk.check([None, res(reward=np.array([0.5], np.float32), truncated=np.array([True]))], "step 2")


def test_too_few_results(chk):
    msg = expect(chk, [res()], "step 4")
    assert "returned 1 results, expected agent_count=2" in msg


def test_not_a_list(chk):
    expect(chk, (res(), res()), "step 1", "tuple", "expected a list of 2")


def test_wrong_shape_names_agent_field_expected_actual(chk):
    expect(
        chk, [res(), res(obs=np.zeros(4, np.float32))], "step 7", "agent 1", "'obs'", "expected shape (3,)", "got (4,)"
    )


def test_wrong_dtype(chk):
    expect(
        chk,
        [res(state=np.zeros(5, np.float64)), res()],
        "step 2",
        "agent 0",
        "'state'",
        "expected dtype float32",
        "got float64",
    )


def test_nan_obs(chk):
    bad = np.zeros(3, np.float32)
    bad[1] = np.nan
    expect(chk, [res(), res(obs=bad)], "step 3", "agent 1", "'obs'", "expected finite", "NaN/Inf")


def test_inf_reward(chk):
    expect(
        chk,
        [res(reward=np.array([np.inf], np.float32)), res()],
        "step 9",
        "agent 0",
        "reward",
        "expected a finite",
        "inf",
    )
    expect(chk, [res(), res(reward=float("-inf"))], "step 9", "agent 1", "reward", "finite", "-inf")


def test_missing_and_extra_fields(chk):
    r = StepResult(NamedArray(obs=np.zeros(3, np.float32), extra=np.zeros(5, np.float32)), 0.0, False, False)
    expect(chk, [res(), r], "step 1", "agent 1", "obs fields", "missing ['state']", "unexpected ['extra']")


def test_obs_not_namedarray_and_leaf_not_array(chk):
    r = StepResult({"obs": np.zeros(3, np.float32)}, 0.0, False, False)  # type: ignore[arg-type]
    expect(chk, [r, res()], "step 1", "agent 0", "expected a NamedArray", "dict")
    r2 = StepResult(NamedArray(obs=[0.0, 0.0, 0.0], state=np.zeros(5, np.float32)), 0.0, False, False)
    expect(chk, [res(), r2], "step 1", "agent 1", "'obs'", "expected a numpy float32 array", "list")


def test_entry_type(chk):
    expect(chk, [res(), "x"], "step 1", "agent 1", "expected a StepResult or None", "str")


def test_flags(chk):
    expect(chk, [res(done=2), res()], "step 1", "agent 0", "done", "expected 0 or 1 (or a bool)", "int 2")
    expect(
        chk,
        [res(), res(truncated=np.array([1, 0]))],
        "step 1",
        "agent 1",
        "truncated",
        "expected bool",
        "int64 array (2,)",
    )


def test_reward_type_and_shape(chk):
    expect(chk, [res(reward="1"), res()], "step 1", "agent 0", "reward", "expected a float32 array", "str")
    chk.check([res(reward=np.array([1.0], np.float32)), res()], "step 1")
    expect(
        chk,
        [res(reward=np.array([1.0, 2.0], np.float32)), res()],
        "step 2",
        "agent 0",
        "expected shape (1,)",
        "got (2,)",
    )


def test_reset_must_be_clean(chk):
    expect(chk, [res(reward=1.0), res()], "reset", "agent 0", "reward", "expected 0 after reset")
    expect(chk, [res(), res(done=True)], "reset", "agent 1", "done", "expected False after reset")
    expect(chk, [None, None], "reset", "every agent's result is None")


def test_malformed_declared_spaces():
    with pytest.raises(EnvCheckError, match=r"observation_spaces has 1 entries, expected a list of agent_count=2"):
        EnvChecker("e", 2, [OBS])
    with pytest.raises(EnvCheckError, match=r"observation_spaces\[0\] \(agent 0\): expected a gymnasium.spaces.Dict"):
        EnvChecker("e", 1, [spaces.Box(0, 1, (3,))])
    with pytest.raises(EnvCheckError, match="agent_count must be a positive int"):
        EnvChecker("e", 0)


def test_nested_dict_spaces():
    sp = spaces.Dict(obs=spaces.Box(0, 1, (2,), np.float32), extra=spaces.Dict(mask=spaces.Box(0, 1, (3,), np.int8)))
    chk = EnvChecker("nested", 1, [sp])
    good = NamedArray(obs=np.zeros(2, np.float32), extra=NamedArray(mask=np.zeros(3, np.int8)))
    chk.check([StepResult(good, 0.0, False, False)], "reset")
    bad = NamedArray(obs=np.zeros(2, np.float32), extra=NamedArray(mask=np.zeros(3, np.int16)))
    with pytest.raises(EnvCheckError, match=r"agent 0: obs field 'extra.mask': expected dtype int8, got int16"):
        chk.check([StepResult(bad, 0.0, False, False)], "step 1")


def test_layout_learned_without_spaces():
    chk = EnvChecker("free", 1)
    chk.check([StepResult(NamedArray(obs=np.zeros(3, np.float32)), 0.0, False, False)], "reset")
    chk.check([StepResult(NamedArray(obs=np.ones(3, np.float32)), 1.0, False, False)], "step 1")
    with pytest.raises(
        EnvCheckError, match=r"env 'free' step 2: agent 0: obs field 'obs': expected shape \(3,\), got \(2,\)"
    ):
        chk.check([StepResult(NamedArray(obs=np.zeros(2, np.float32)), 0.0, False, False)], "step 2")
    with pytest.raises(EnvCheckError, match="expected a numeric/bool dtype, got object"):
        EnvChecker("obj", 1).check([StepResult(NamedArray(obs=np.array([None])), 0.0, False, False)], "reset")


def test_check_actions(chk):
    chk.check_actions([Action(x=np.int64(3)), Action(x=np.zeros(2, np.float32))], "step 1")
    chk.check_actions([None, Action(x=np.zeros(2, np.float32))], "step 1")
    with pytest.raises(
        EnvCheckError, match=r"step 5: agent 0: action field 'x': expected integer \(\) in Discrete\(4\), got .* 4"
    ):
        chk.check_actions([Action(x=np.int64(4)), None], "step 5")
    with pytest.raises(EnvCheckError, match=r"agent 1: action field 'x': expected finite float \(2,\)"):
        chk.check_actions([None, Action(x=np.zeros(3, np.float32))], "step 5")
    with pytest.raises(EnvCheckError, match="got 1 actions, expected a list of agent_count=2"):
        chk.check_actions([None], "step 5")


def test_normalize_result_scalars_and_0d():
    r = normalize_result(StepResult(NamedArray(obs=np.zeros(1, np.float32)), 2.5, True, np.bool_(False)))
    assert r is not None
    assert r.reward.dtype == np.float32 and r.reward.shape == (1,) and r.reward[0] == 2.5
    assert r.done.dtype == np.bool_ and r.done.shape == (1,) and r.done[0]
    assert r.truncated.shape == (1,) and not r.truncated[0]
    r2 = normalize_result(
        StepResult(NamedArray(obs=np.zeros(1, np.float32)), np.float64(1.0), np.array(True), np.array([False]))
    )
    assert r2 is not None and r2.reward.dtype == np.float32 and r2.done.shape == (1,) and r2.done[0]
    r3 = normalize_result(StepResult(NamedArray(obs=np.zeros(1)), np.array(3, np.int64), False, False))
    assert r3 is not None and r3.reward.dtype == np.float32 and r3.reward.tolist() == [3.0]
    assert normalize_result(None) is None


def test_normalize_keeps_canonical_objects_and_converts_dict_obs():
    rew = np.array([1.0], np.float32)
    done = np.array([False])
    r = StepResult({"obs": np.zeros(2, np.float32)}, rew, done, FALSE)  # type: ignore[arg-type]
    out = normalize_results([r, None])
    assert out[0] is r and r.reward is rew and r.done is done and r.truncated is FALSE
    assert isinstance(r.obs, NamedArray) and r.obs.keys() == ["obs"]


def test_checker_accepts_what_normalize_produces(chk):
    results = [res(reward=1, done=np.bool_(True)), res(reward=np.float32(0.5), truncated=np.array(True))]
    chk.check(results, "step 1")
    normalize_results(results)
    chk.check(results, "step 1")


def test_shared_result_arrays_are_read_only():
    for a in (TRUE, FALSE, ZERO_REWARD, reward_array(1.0), reward_array(0.123456)):
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0] = 0
    assert reward_array(1.0) is reward_array(1) is reward_array(np.float64(1.0))
    assert flag(np.bool_(True)) is TRUE and flag(0) is FALSE
    assert np.isnan(reward_array(float("nan"))[0])
    arr = reward_array(np.array([2.5]))  # unhashable array rewards work too
    assert arr.dtype == np.float32 and arr.tolist() == [2.5]
    assert reward_array(np.array(3.0)).tolist() == [3.0]


def test_record_builder_matches_constructor():
    x, y, z = np.zeros(2), np.ones(3), np.arange(4)
    for keys, vals in ((("a",), (x,)), (("a", "b"), (x, y)), (("a", "b", "c"), (x, y, z))):
        rec = record_builder(keys)(*vals)
        assert rec == NamedArray(**dict(zip(keys, vals)))
        assert rec.keys() == list(keys)
    r1, r2 = record_builder(("a",))(x), record_builder(("a",))(x)
    r1["b"] = y  # adding a field to one record must not touch the other
    assert r1.keys() == ["a", "b"] and r2.keys() == ["a"]
