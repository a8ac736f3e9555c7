"""GAE and V-trace on hpcrl's row convention: hand-computed values and cross-checks."""

from __future__ import annotations

import pytest
import torch

from hpcrl.trainers.returns import decision_mask, gae, vtrace


def _col(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def _hand_example() -> tuple[torch.Tensor, ...]:
    """Two columns, T = 5 (+1 bootstrap row).

    Column 0: row 2 is terminal (done), row 3 starts a new episode, row 4 is truncated,
    row 5 starts another. Column 1: one long episode, reward 1 per step, V = 0.
    """
    value = torch.stack([_col(1, 2, 3, 4, 5, 6), _col(0, 0, 0, 0, 0, 0)], 1).unsqueeze(-1)
    reward = torch.stack([_col(0, 1, 3, 0, 3, 0), _col(0, 1, 1, 1, 1, 1)], 1).unsqueeze(-1)
    done = torch.tensor([[0, 0], [0, 0], [1, 0], [0, 0], [0, 0], [0, 0]], dtype=torch.bool)
    trunc = torch.tensor([[0, 0], [0, 0], [0, 0], [0, 0], [1, 0], [0, 0]], dtype=torch.bool)
    return reward, value, done, trunc


def test_gae_hand_computed() -> None:
    reward, value, done, trunc = _hand_example()
    adv, ret = gae(reward, value, done, trunc, gamma=0.9, lam=0.8)
    # column 0 (gamma * lambda = 0.72):
    #   row 3: delta = r4 + 0.9 * V4 - V3 = 3 + 4.5 - 4 = 3.5; row 4 truncated -> no further trace
    #   row 2 done, row 4 truncated: not decisions -> 0
    #   row 1: delta = r2 + 0 (row 2 terminal) - V1 = 3 - 2 = 1; trace stops at the terminal row
    #   row 0: delta = r1 + 0.9 * V1 - V0 = 1 + 1.8 - 1 = 1.8; A0 = 1.8 + 0.72 * 1 = 2.52
    expected0 = _col(2.52, 1.0, 0.0, 3.5, 0.0)
    # column 1: delta = 1 everywhere (V = 0), A_t = 1 + 0.72 A_{t+1}, A_4 = 1
    expected1 = _col(2.88038656, 2.611648, 2.2384, 1.72, 1.0)
    torch.testing.assert_close(adv[..., 0], torch.stack([expected0, expected1], 1))
    torch.testing.assert_close(ret, adv + value[:-1])
    assert ret[3, 0, 0].item() == pytest.approx(7.5)


def test_decision_mask() -> None:
    _, _, done, trunc = _hand_example()
    mask = decision_mask(done, trunc)
    assert mask.shape == (5, 2)
    assert mask[:, 0].tolist() == [True, True, False, True, False]
    assert mask[:, 1].all()


def _brute_force_returns(reward, value, done, trunc, gamma):  # type: ignore[no-untyped-def]
    """Discounted returns walked forward row by row (no recursion), bootstrapping as the convention says."""
    t1, b, _ = value.shape
    out = torch.zeros(t1 - 1, b, value.shape[-1], dtype=value.dtype)
    for col in range(b):
        for t in range(t1 - 1):
            if done[t, col] or trunc[t, col]:
                out[t, col] = value[t, col]
                continue
            g, disc, j = torch.zeros_like(value[0, col]), 1.0, t + 1
            while True:
                g = g + disc * reward[j, col]
                disc *= gamma
                if done[j, col]:
                    break
                if trunc[j, col] or j == t1 - 1:
                    g = g + disc * value[j, col]
                    break
                j += 1
            out[t, col] = g
    return out


def _random_batch(seed: int, t1: int = 12, b: int = 5, d: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    reward = torch.randn(t1, b, d, generator=g, dtype=torch.float64)
    value = torch.randn(t1, b, d, generator=g, dtype=torch.float64)
    ends = torch.rand(t1, b, generator=g)
    done = ends < 0.15
    trunc = (ends >= 0.15) & (ends < 0.25)
    return reward, value, done, trunc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_lambda1_equals_brute_force_returns(seed: int) -> None:
    reward, value, done, trunc = _random_batch(seed, d=2)
    _, ret = gae(reward, value, done, trunc, gamma=0.95, lam=1.0)
    torch.testing.assert_close(ret, _brute_force_returns(reward, value, done, trunc, 0.95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vtrace_on_policy_equals_gae_lambda1(seed: int) -> None:
    reward, value, done, trunc = _random_batch(seed)
    log_rho = torch.zeros(reward.shape[:2], dtype=torch.float64)
    vs, pg_adv = vtrace(reward, value, done, trunc, log_rho, gamma=0.97, rho_bar=1.0, c_bar=1.0)
    adv, ret = gae(reward, value, done, trunc, gamma=0.97, lam=1.0)
    torch.testing.assert_close(vs, ret)
    torch.testing.assert_close(pg_adv, adv)
    torch.testing.assert_close(vs, _brute_force_returns(reward, value, done, trunc, 0.97))


def test_vtrace_truncated_importance_weights_hand_computed() -> None:
    # one column, gamma = 1, V = 0, reward 1 on arriving at rows 1 and 2; ratios pi/mu = 2 and 0.5
    reward = _col(0, 1, 1).reshape(3, 1, 1)
    value = torch.zeros(3, 1, 1, dtype=torch.float64)
    done = trunc = torch.zeros(3, 1, dtype=torch.bool)
    log_rho = torch.log(_col(2.0, 0.5, 1.0)).reshape(3, 1)
    vs, pg_adv = vtrace(reward, value, done, trunc, log_rho, gamma=1.0, rho_bar=1.0, c_bar=1.0)
    # rho = c = (1, 0.5): delta = (1, 0.5); vs1 = 0.5; vs0 = 1 + 1 * 0.5 = 1.5
    torch.testing.assert_close(vs[:, 0, 0], _col(1.5, 0.5))
    # pg advantages: rho0 (r1 + vs1 - V0) = 1.5; rho1 (r2 + V2 - V1) = 0.5
    torch.testing.assert_close(pg_adv[:, 0, 0], _col(1.5, 0.5))
    # with rho_bar = c_bar = 2 the first weight is 2: delta0 = 2, vs0 = 2 + 2 * 0.5 = 3
    vs2, pg2 = vtrace(reward, value, done, trunc, log_rho, gamma=1.0, rho_bar=2.0, c_bar=2.0)
    torch.testing.assert_close(vs2[:, 0, 0], _col(3.0, 0.5))
    torch.testing.assert_close(pg2[:, 0, 0], _col(3.0, 0.5))


def test_vtrace_ignores_non_decision_rows_and_terminal_bootstrap() -> None:
    reward, value, done, trunc = _hand_example()
    log_rho = torch.zeros(reward.shape[:2], dtype=torch.float64)
    vs, pg_adv = vtrace(reward, value, done, trunc, log_rho, gamma=0.9)
    # non-decision rows: vs = V and zero advantage
    assert vs[2, 0, 0].item() == pytest.approx(3.0) and pg_adv[2, 0, 0].item() == 0.0
    assert vs[4, 0, 0].item() == pytest.approx(5.0) and pg_adv[4, 0, 0].item() == 0.0
    # row 1 -> row 2 is terminal: vs1 = r2 = 3
    assert vs[1, 0, 0].item() == pytest.approx(3.0)
    # row 3 -> row 4 truncated: bootstrap with V4: 3 + 0.9 * 5
    assert vs[3, 0, 0].item() == pytest.approx(7.5)


def test_nan_in_non_decision_rows_does_not_leak() -> None:
    reward, value, done, trunc = _hand_example()
    value = value.clone()
    value[2, 0, 0] = float("nan")  # terminal row: its value must be ignored
    adv, ret = gae(reward, value, done, trunc, gamma=0.9, lam=0.8)
    mask = decision_mask(done, trunc)
    assert torch.isfinite(adv[mask]).all() and torch.isfinite(ret[mask]).all()


def test_shape_errors_name_the_shapes() -> None:
    reward, value, done, trunc = _hand_example()
    with pytest.raises(ValueError, match="shapes disagree"):
        gae(reward[:-1], value, done, trunc, 0.9, 0.9)
    with pytest.raises(ValueError, match="at least 2 rows"):
        gae(reward[:1], value[:1], done[:1], trunc[:1], 0.9, 0.9)
