"""A lean Adam for the trainers: torch's fused Adam kernel without the ``torch.optim`` machinery.

Why not ``torch.optim.Adam(fused=True)``: constructing any ``torch.optim`` optimizer imports
``torch._dynamo`` (about one CPU-second per process on a small machine, measured with torch 2.13),
and every ``step()`` goes through profiler and dynamo wrappers that cost as much as the kernel for
a small model. :class:`FusedAdam` calls the same kernel (``torch._fused_adam_``) with the same
arguments as ``torch.optim.Adam(fused=True)`` does, so its updates are bitwise the same, and its
:meth:`~FusedAdam.state_dict` has ``torch.optim.Adam``'s layout, so checkpoints written by either
load into the other.

:func:`make_adam` picks it when the kernel runs on the parameters' device and dtype (CPU since
torch 2.4, CUDA) and falls back to ``torch.optim.Adam(foreach=True)`` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["FusedAdam", "make_adam", "fused_adam_supported"]

logger = logging.getLogger(__name__)

_SUPPORT: dict[tuple[str, torch.dtype], bool] = {}


def _kernel_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """One Adam step, in place, exactly as ``torch.optim.adam._fused_adam`` does it (no amsgrad, no decay)."""
    torch._foreach_add_(steps, 1)
    torch._fused_adam_(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        [],
        steps,
        amsgrad=False,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        weight_decay=0.0,
        eps=eps,
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


def fused_adam_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused Adam kernel runs on ``device`` for ``dtype`` (probed once, on a 1-element tensor)."""
    key = (str(device), dtype)
    if key not in _SUPPORT:
        ok = dtype.is_floating_point and hasattr(torch, "_fused_adam_") and hasattr(torch, "_foreach_add_")
        if ok:
            try:
                with torch.no_grad():
                    p = torch.zeros(1, device=device, dtype=dtype)
                    state = [torch.zeros_like(p), torch.zeros_like(p)]
                    step = torch.zeros((), device=device, dtype=torch.float32)
                    _kernel_step([p], [torch.ones_like(p)], [state[0]], [state[1]], [step], 0.1, 0.9, 0.999, 1e-8)
                ok = bool(torch.isfinite(p).all()) and float(p) != 0.0
            except (RuntimeError, NotImplementedError, TypeError) as e:
                logger.debug("fused Adam kernel unavailable on %s/%s: %s", device, dtype, e)
                ok = False
        _SUPPORT[key] = ok
    return _SUPPORT[key]


class FusedAdam:
    """Adam (no weight decay, no amsgrad) over one parameter group, on torch's fused kernel.

    The interface is the part of ``torch.optim.Optimizer`` the trainers use: ``param_groups``
    (one group; its ``lr``, ``betas`` and ``eps`` are read at every step), :meth:`step`,
    :meth:`zero_grad`, :meth:`state_dict` and :meth:`load_state_dict`.

    Args:
        params: the parameters (all on one device, one floating dtype the kernel supports; see
            :func:`fused_adam_supported`).
        lr: learning rate.
        betas: ``(beta1, beta2)``.
        eps: epsilon added to the denominator.

    Raises:
        ValueError: no parameters, or parameters on several devices / dtypes.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("FusedAdam got an empty parameter list")
        kinds = {(p.device, p.dtype) for p in self.params}
        if len(kinds) != 1:
            raise ValueError(
                f"FusedAdam needs all parameters on one device with one dtype, got {sorted(map(str, kinds))}"
            )
        self.param_groups: list[dict[str, Any]] = [
            {
                "lr": float(lr),
                "betas": (float(betas[0]), float(betas[1])),
                "eps": float(eps),
                "weight_decay": 0,
                "amsgrad": False,
                "maximize": False,
                "foreach": None,
                "capturable": False,
                "differentiable": False,
                "fused": True,
                "decoupled_weight_decay": False,
                "params": self.params,
            }
        ]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _state_of(self, i: int) -> dict[str, torch.Tensor]:
        st = self.state.get(i)
        if st is None:
            p = self.params[i]
            st = {
                "step": torch.zeros((), dtype=torch.float32, device=p.device),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
            self.state[i] = st
        return st

    @torch.no_grad()
    def step(self) -> None:
        """Update every parameter that has a ``.grad`` (others, and their state, are left alone)."""
        group = self.param_groups[0]
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            st = self._state_of(i)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(st["exp_avg"])
            exp_avg_sqs.append(st["exp_avg_sq"])
            steps.append(st["step"])
        if not params:
            return
        beta1, beta2 = (float(b) for b in group["betas"])
        _kernel_step(params, grads, exp_avgs, exp_avg_sqs, steps, float(group["lr"]), beta1, beta2, float(group["eps"]))

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop (or zero) every parameter's ``.grad``."""
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.detach_().zero_()

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.Adam.state_dict()``'s layout: ``{"state": {index: {...}}, "param_groups": [{...}]}``.

        The group lists the parameter indices under ``"params"``. The tensors are the live state
        (as torch's optimizers return them); clone before keeping.
        """
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        group["params"] = list(range(len(self.params)))
        return {"state": {i: dict(st) for i, st in sorted(self.state.items())}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from :meth:`state_dict` or from ``torch.optim.Adam`` (copies the tensors).

        Raises:
            ValueError: a different number of groups or parameters, or a state tensor whose
                shape does not match its parameter (the message names the parameter index).
        """
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            sizes = [len(g["params"]) for g in groups]
            raise ValueError(
                f"optimizer state has parameter groups of sizes {sizes}; this optimizer has one group of "
                f"{len(self.params)} parameters"
            )
        index = {int(saved): i for i, saved in enumerate(groups[0]["params"])}
        new_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, saved in state_dict["state"].items():
            i = index.get(int(key))
            if i is None:
                raise ValueError(f"optimizer state for parameter {key!r}, which is not in the parameter group")
            p = self.params[i]
            st: dict[str, torch.Tensor] = {}
            for name in ("exp_avg", "exp_avg_sq"):
                t = torch.as_tensor(saved[name])
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(
                        f"optimizer state {name} of parameter {i} has shape {tuple(t.shape)}, expected {tuple(p.shape)}"
                    )
                st[name] = t.to(device=p.device, dtype=p.dtype, copy=True)
            st["step"] = torch.as_tensor(saved["step"]).to(device=p.device, dtype=torch.float32, copy=True).reshape(())
            new_state[i] = st
        group = self.param_groups[0]
        for k, v in groups[0].items():
            if k in ("lr", "eps"):
                group[k] = float(v)
            elif k == "betas":
                group[k] = (float(v[0]), float(v[1]))
        self.state = new_state


def make_adam(params: Iterable[torch.Tensor], lr: float, eps: float) -> FusedAdam | torch.optim.Adam:
    """Adam for ``params``: :class:`FusedAdam` when the fused kernel supports them, else ``torch.optim.Adam``.

    The fallback (``foreach=True``) covers parameters on several devices or dtypes and torch
    builds without a fused kernel for the device (CPU before torch 2.4).
    """
    params = list(params)
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) == 1:
        device, dtype = next(iter(kinds))
        if fused_adam_supported(device, dtype):
            return FusedAdam(params, lr=lr, eps=eps)
    logger.debug("using torch.optim.Adam(foreach=True) for parameters on %s", sorted(map(str, kinds)))
    return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)
