"""Advantage and return targets on hpcrl's row convention: GAE(lambda) and V-trace.

Inputs cover ``T + 1`` rows (see :class:`hpcrl.api.data.SampleBatch`): row ``t`` holds
``obs_t``, the value ``V_t`` of ``obs_t``, the reward ``r_t`` received on arriving at
``obs_t``, and ``done_t`` / ``truncated_t`` (``obs_t`` is terminal / the last of a cut
episode). Rows ``0 .. T-1`` that are neither done nor truncated are *decisions*; the
outputs cover those ``T`` rows and are zero on non-decisions. Row ``T`` only bootstraps.

With ``nt_{t+1} = 1 - done_{t+1}`` (bootstrap from the next obs unless it is terminal)
and ``k_{t+1} = (1 - done_{t+1}) (1 - truncated_{t+1})`` (the episode continues past it):

* GAE: ``delta_t = r_{t+1} + gamma nt_{t+1} V_{t+1} - V_t``,
  ``A_t = delta_t + gamma lambda k_{t+1} A_{t+1}``, return ``R_t = A_t + V_t``.
* V-trace (IMPALA, with ``rho_t = min(rho_bar, pi/mu)``, ``c_t = min(c_bar, pi/mu)``):
  ``delta_t = rho_t (r_{t+1} + gamma nt_{t+1} V_{t+1} - V_t)``,
  ``v_t - V_t = delta_t + gamma c_t k_{t+1} (v_{t+1} - V_{t+1})`` (zero on non-decisions and at ``T``),
  policy-gradient advantage ``rho_t (r_{t+1} + gamma nt_{t+1} v_{t+1} - V_t)``.

With ``pi == mu`` and ``rho_bar = c_bar = 1``, V-trace targets equal GAE(lambda=1) returns.

Both take and return torch tensors; the backward recursions run in numpy on the host (in the
inputs' dtype, operation for operation the same arithmetic), because a Python loop over small
torch ops costs several microseconds per op while the same numpy ops cost well under one.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["decision_mask", "gae", "vtrace"]


def decision_mask(done: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """Bool ``(T, B)``: rows ``0..T-1`` that are decisions (neither done nor truncated).

    Args:
        done: bool ``(T + 1, B)``.
        truncated: bool ``(T + 1, B)``.
    """
    return ~(done[:-1] | truncated[:-1])


def _check(reward: torch.Tensor, value: torch.Tensor, done: torch.Tensor, truncated: torch.Tensor) -> None:
    if value.dim() != 3 or reward.dim() != 3:
        raise ValueError(
            f"reward and value must be (T+1, B, D); got reward {tuple(reward.shape)}, value {tuple(value.shape)}"
        )
    if reward.shape[:2] != value.shape[:2] or done.shape != value.shape[:2] or truncated.shape != value.shape[:2]:
        raise ValueError(
            f"shapes disagree: reward {tuple(reward.shape)}, value {tuple(value.shape)}, done {tuple(done.shape)}, "
            f"truncated {tuple(truncated.shape)} (expected (T+1, B, D) and (T+1, B))"
        )
    if value.shape[0] < 2:
        raise ValueError(f"need at least 2 rows (T + 1 >= 2) to compute targets, got {value.shape[0]}")


def gae(
    reward: torch.Tensor,
    value: torch.Tensor,
    done: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation on hpcrl rows (see the module docstring).

    Args:
        reward: ``(T + 1, B, D)`` (row ``t``: reward on arriving at ``obs_t``).
        value: ``(T + 1, B, D)``, values of ``obs_t``.
        done: bool ``(T + 1, B)``.
        truncated: bool ``(T + 1, B)``.
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, each ``(T, B, D)``; zero advantage (and ``returns = V``)
        on non-decision rows.
    """
    _check(reward, value, done, truncated)
    r, v, dn, tr = _host(reward), _host(value), _host(done), _host(truncated)
    t_len = v.shape[0] - 1
    done_next = dn[1:, :, None]
    next_v = np.where(done_next, v.dtype.type(0), v[1:])
    delta = r[1:] + gamma * next_v - v[:-1]
    coef = (gamma * lam) * (~(dn | tr))[1:, :, None].astype(v.dtype)  # gamma lambda k_{t+1}
    decision = (~(dn[:-1] | tr[:-1]))[:, :, None]
    adv = np.zeros_like(delta)
    last = np.zeros_like(delta[0])
    zero = v.dtype.type(0)
    for t in range(t_len - 1, -1, -1):
        last = np.where(decision[t], delta[t] + coef[t] * last, zero)
        adv[t] = last
    adv_t = _back(adv, value)
    return adv_t, adv_t + value[:-1]


def _host(x: torch.Tensor) -> np.ndarray:
    """A numpy view (CPU) or copy (other devices) of ``x``."""
    return x.detach().cpu().numpy()


def _back(x: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``x`` as a tensor on ``like``'s device."""
    t = torch.from_numpy(x)
    return t if like.device.type == "cpu" else t.to(like.device)


def vtrace(
    reward: torch.Tensor,
    value: torch.Tensor,
    done: torch.Tensor,
    truncated: torch.Tensor,
    log_rho: torch.Tensor,
    gamma: float,
    rho_bar: float = 1.0,
    c_bar: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """V-trace targets and policy-gradient advantages (Espeholt et al. 2018) on hpcrl rows.

    Args:
        reward: ``(T + 1, B, D)``.
        value: ``(T + 1, B, D)``, the current critic's values of ``obs_t``.
        done: bool ``(T + 1, B)``.
        truncated: bool ``(T + 1, B)``.
        log_rho: ``(T + 1, B)`` (or ``(T, B)``): ``log pi(a_t|x_t) - log mu(a_t|x_t)``, target
            over behaviour policy.
        gamma: discount.
        rho_bar: truncation of the importance weight in ``delta_t`` and the policy gradient.
        c_bar: truncation of the trace coefficients ``c_t``.

    Returns:
        ``(vs, pg_advantages)``, each ``(T, B, D)``; on non-decision rows ``vs = V`` and the advantage is zero.
    """
    _check(reward, value, done, truncated)
    r, v, dn, tr = _host(reward), _host(value), _host(done), _host(truncated)
    t_len = v.shape[0] - 1
    ratio = _host(log_rho[:t_len].exp())[:, :, None]  # torch's exp (numpy's differs in the last bit)
    rho = np.minimum(ratio, v.dtype.type(rho_bar))
    c = np.minimum(ratio, v.dtype.type(c_bar))
    done_next = dn[1:, :, None]
    zero = v.dtype.type(0)
    next_v = np.where(done_next, zero, v[1:])
    delta = rho * (r[1:] + gamma * next_v - v[:-1])
    cont = (~(dn | tr))[1:, :, None].astype(v.dtype)  # k_{t+1}
    decision = (~(dn[:-1] | tr[:-1]))[:, :, None]
    vs_minus_v = np.zeros_like(delta)
    acc = np.zeros_like(delta[0])
    for t in range(t_len - 1, -1, -1):
        acc = np.where(decision[t], delta[t] + gamma * c[t] * cont[t] * acc, zero)
        vs_minus_v[t] = acc
    vs = v[:-1] + vs_minus_v
    vs_next = np.where(done_next, zero, np.concatenate([vs[1:], v[t_len:]], axis=0))
    pg_adv = np.where(decision, rho * (r[1:] + gamma * vs_next - v[:-1]), zero)
    return _back(vs, value), _back(pg_adv, value)
