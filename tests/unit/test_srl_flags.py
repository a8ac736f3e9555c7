"""SRL env conventions: ``done``/``truncated`` as uint8/int 0-1 arrays or python/numpy bools, ``truncated`` left out."""

from __future__ import annotations

import numpy as np
import pytest

from examples.srl_port.env import SrlMaskedChoice
from hpcrl.acting.env_ring import EnvError, EnvRing
from hpcrl.api.environment import Action, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutRequest, RolloutResult
from hpcrl.envs.checks import EnvChecker, EnvCheckError, flag_problem, normalize_result
from hpcrl.envs.results import FALSE
from hpcrl.testing import test_environment


def legal_first(req: RolloutRequest) -> RolloutResult:
    """The first legal action of every row (the first action where no action is legal: a terminal row)."""
    mask = np.asarray(req.obs.available_action)
    return RolloutResult(
        action=Action(x=mask.argmax(axis=1).astype(np.int64)),
        policy_state=None,
        analyzed_result=NamedArray(log_prob=np.zeros((len(mask), 1), np.float32)),
    )


def run(ring: EnvRing, steps: int) -> list:
    frags = []
    for _ in range(steps):
        ring.consume(0, legal_first(ring.request(0)), version=0)
        frags += ring.pop_fragments()
    return frags


@pytest.mark.parametrize(
    "value",
    [np.zeros(1, np.uint8), np.ones(1, np.uint8), np.array(1, np.int64), np.array([0], np.int32), 0, 1, True,
     np.bool_(False), np.uint8(1), np.zeros(1, np.bool_)],
)  # fmt: skip
def test_flags_accepted(value):
    assert flag_problem(value) is None


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([2], np.uint8), "expected 0 or 1 (or a bool), got 2 in a uint8 array (1,)"),
        (np.array([-1], np.int64), "expected 0 or 1 (or a bool), got -1 in a int64 array (1,)"),
        (3, "expected 0 or 1 (or a bool), got int 3"),
        (np.array([1.0]), "expected bool array of shape (1,) (or integer 0/1), got float64 array (1,)"),
        (np.ones(2, np.uint8), "expected bool array of shape (1,) (or integer 0/1), got uint8 array (2,)"),
        ({}, "pass info=... by keyword"),
    ],
)
def test_other_flag_values_are_refused(value, message):
    assert message in str(flag_problem(value))


def test_truncated_defaults_to_the_shared_false():
    r = StepResult(obs=NamedArray(obs=np.zeros(1, np.float32)), reward=np.zeros(1, np.float32), done=FALSE)
    assert r.truncated is FALSE and not r.truncated.flags.writeable


def test_normalize_converts_integer_flags_once():
    r = StepResult(NamedArray(obs=np.zeros(1, np.float32)), 0.0, np.ones(1, np.uint8), np.zeros(1, np.uint8))
    normalize_result(r)
    assert r.done.dtype == np.bool_ and r.done.shape == (1,) and r.done[0]
    assert r.truncated.dtype == np.bool_ and not r.truncated[0]
    bad = StepResult(NamedArray(obs=np.zeros(1, np.float32)), 0.0, np.array([2], np.uint8), False)
    assert normalize_result(bad).done.dtype == np.uint8  # left for the checker, never read as True


def test_the_srl_env_passes_the_checker_and_test_environment():
    report = test_environment("srl-masked-choice", steps=300, time_limit=7)
    assert report["episodes"] >= 40


def test_checker_names_env_agent_and_field_for_a_bad_value():
    chk = EnvChecker("srl", 1)
    ok = StepResult(NamedArray(obs=np.zeros(2, np.float32)), 0.0, np.zeros(1, np.uint8))
    chk.check([ok], "reset")
    bad = StepResult(NamedArray(obs=np.zeros(2, np.float32)), 1.0, np.zeros(1, np.uint8), np.array([7], np.uint8))
    with pytest.raises(EnvCheckError, match=r"env 'srl' step 4: agent 0: truncated: expected 0 or 1 .*got 7"):
        chk.check([bad], "step 4")
    with pytest.raises(EnvCheckError, match="agent 0: done: expected False after reset, got True"):
        chk.check([StepResult(NamedArray(obs=np.zeros(2, np.float32)), 0.0, np.ones(1, np.uint8))], "reset")


@pytest.mark.parametrize("check", ["first", "off"])
def test_the_ring_reads_uint8_flags_as_bool(check):
    """done (uint8) ends episodes, truncated (uint8) cuts them; the fragments hold bool flags."""
    ring = EnvRing(lambda i: SrlMaskedChoice(episode_length=4, time_limit=3 if i else 0), 2, 1, 8, None, "srl",
                   check=check)  # fmt: skip
    frags = run(ring, 40)
    assert frags
    f = frags[0]
    assert f.done.dtype == np.bool_ and f.truncated.dtype == np.bool_
    # env 0: done after 4 steps, never truncated; env 1: truncated after 3 steps, never done
    np.testing.assert_array_equal(f.done[:, 0, 0], [False, False, False, False, True, False, False, False, False])
    np.testing.assert_array_equal(f.truncated[:, 1, 0], [False, False, False, True, False, False, False, True, False])
    assert not f.done[:, 1].any() and not f.truncated[:, 0].any()
    lengths = sorted({e.length for e in ring.pop_episodes()})
    assert lengths == [3, 4]


class BadFlag(SrlMaskedChoice):
    """Returns ``done = 2`` (uint8) at its 150th step: past ``check_env: first``'s checked steps."""

    calls = 0

    def step(self, actions):
        out = super().step(actions)
        self.calls += 1
        if self.calls == 150:
            out[0].done = np.array([2], np.uint8)
        return out


@pytest.mark.parametrize("check", ["first", "off"])
def test_a_flag_other_than_0_or_1_names_env_agent_step_and_field(check):
    ring = EnvRing(lambda i: BadFlag(episode_length=1000), 1, 1, 8, None, "srl", where="actor rank 2", check=check)
    with pytest.raises(EnvError) as info:
        run(ring, 200)
    assert "actor rank 2: env #0: env 'srl' step 150: agent 0: done: expected 0 or 1 (or a bool), got 2" in str(
        info.value
    )
