"""``check_rollout_result``: the one check every runner of a policy applies to its answer."""

from __future__ import annotations

import numpy as np
import pytest

from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutContractError, RolloutResult, check_rollout_result


def _result(rows: int, state_rows: int | None = None, value_rows: int | None = None) -> RolloutResult:
    return RolloutResult(
        action=NamedArray(x=np.zeros(rows, np.int64)),
        policy_state=NamedArray(hx=np.zeros((rows if state_rows is None else state_rows, 1, 8), np.float32)),
        analyzed_result=NamedArray(value=np.zeros((rows if value_rows is None else value_rows, 1), np.float32)),
    )


def test_a_fitting_result_is_returned() -> None:
    res = _result(3)
    assert check_rollout_result(res, 3, "'p' (P)") is res


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (_result(2), "rollout returned action.x with 2 rows (shape (2,)) for a request of 3 rows"),
        (_result(3, state_rows=1), "rollout returned policy_state.hx with 1 rows (shape (1, 1, 8)) for a request of 3"),
        (_result(3, value_rows=4), "rollout returned analyzed_result.value with 4 rows (shape (4, 1)) for a request"),
        (None, "rollout returned NoneType, expected a RolloutResult"),
        (RolloutResult(action=None), "rollout returned a RolloutResult without an action"),
        (RolloutResult(action=np.zeros(3)), "rollout returned action of type ndarray, expected a NamedArray"),
        (RolloutResult(action=NamedArray(x=np.int64(1))), "rollout returned action.x with None rows (shape ())"),
    ],
    ids=["action", "state", "analyzed", "none", "no-action", "not-namedarray", "scalar-leaf"],
)
def test_a_result_that_does_not_answer_the_request_names_policy_and_field(result: object, expected: str) -> None:
    with pytest.raises(RolloutContractError) as info:
        check_rollout_result(result, 3, "'p' (P) on rank 1 (inference on h)")
    assert str(info.value).startswith("policy 'p' (P) on rank 1 (inference on h): " + expected), str(info.value)
