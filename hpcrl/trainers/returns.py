"""Advantage and return targets on hpcrl's row convention: GAE(lambda) and V-trace.

Inputs cover ``T + 1`` rows (see :class:`hpcrl.api.trainer.SampleBatch`): row ``t`` holds
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
"""

from __future__ import annotations

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
    t_len = value.shape[0] - 1
    done_next = done[1:].unsqueeze(-1)
    next_v = torch.where(done_next, torch.zeros_like(value[1:]), value[1:])
    delta = reward[1:] + gamma * next_v - value[:-1]
    cont = (~(done | truncated)).unsqueeze(-1).to(value.dtype)  # k_t
    decision = decision_mask(done, truncated).unsqueeze(-1)
    adv = torch.zeros_like(delta)
    last = torch.zeros_like(delta[0])
    for t in range(t_len - 1, -1, -1):
        last = delta[t] + (gamma * lam) * cont[t + 1] * last
        last = torch.where(decision[t], last, torch.zeros_like(last))
        adv[t] = last
    return adv, adv + value[:-1]


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
    t_len = value.shape[0] - 1
    ratio = log_rho[:t_len].exp().unsqueeze(-1)
    rho = ratio.clamp(max=rho_bar)
    c = ratio.clamp(max=c_bar)
    done_next = done[1:].unsqueeze(-1)
    next_v = torch.where(done_next, torch.zeros_like(value[1:]), value[1:])
    delta = rho * (reward[1:] + gamma * next_v - value[:-1])
    cont = (~(done | truncated)).unsqueeze(-1).to(value.dtype)
    decision = decision_mask(done, truncated).unsqueeze(-1)
    vs_minus_v = torch.zeros_like(delta)
    acc = torch.zeros_like(delta[0])
    for t in range(t_len - 1, -1, -1):
        acc = delta[t] + gamma * c[t] * cont[t + 1] * acc
        acc = torch.where(decision[t], acc, torch.zeros_like(acc))
        vs_minus_v[t] = acc
    vs = value[:-1] + vs_minus_v
    vs_next = torch.cat([vs[1:], value[t_len:]], dim=0)
    vs_next = torch.where(done_next, torch.zeros_like(vs_next), vs_next)
    pg_adv = rho * (reward[1:] + gamma * vs_next - value[:-1])
    pg_adv = torch.where(decision, pg_adv, torch.zeros_like(pg_adv))
    return vs, pg_adv
