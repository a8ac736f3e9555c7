"""Phasic policy gradient (PPG, Cobbe et al. 2020): PPO steps, then an auxiliary phase every ``n_pi`` steps.

:class:`PPGTrainer` is a :class:`~hpcrl.trainers.ppo.PPOTrainer` (same arguments, same loss, same
schedules, same gradient allreduce) with two additions:

1. **Policy phase.** Every :meth:`PPGTrainer.step` is a PPO step (:meth:`PPOTrainer.step
   <hpcrl.trainers.ppo.PPOTrainer.step>`). Before it, the batch's value targets ``R`` (the GAE returns,
   or the V-trace ``vs``: the targets the PPO step trains the critic on) are computed and the batch is
   kept on this trainer rank: for an MLP policy its decision rows (``obs``, ``action``, ``R``), for a
   recurrent one its whole sequences (plus ``policy_state``, ``on_reset`` and the decision mask).
   In the policy phase the auxiliary head is not trained (``aux_value_coef`` defaults to 0).
2. **Auxiliary phase**, at the end of every ``n_pi``-th step, over the ``n_pi`` kept batches. First,
   without gradients, ``policy.analyze(sample, target="ppg_aux")`` gives each kept row's action
   distribution ``pi_old`` (:class:`~hpcrl.api.data.PPGAuxResult` ``.dist_params``). Then ``aux_epochs``
   passes, each over ``aux_minibatches`` random minibatches of the kept rows (sequences when recurrent),
   minimise (masked means over decision rows)::

       0.5 mean(sum_d (V_aux - R)^2)  +  beta_clone mean(KL(pi_old || pi))  +  aux_critic_coef 0.5 mean(sum_d (V - R)^2)

   with ``V_aux`` the auxiliary head (the value distilled into the policy network's features), the KL
   term keeping the policy where it was, and the last term training the critic further (the paper's
   ``L_value`` in the auxiliary phase). Each minibatch: ``backward()``, ``sync.allreduce_gradients``,
   a non-finite check agreed across trainer ranks, grad-norm clipping (``max_grad_norm``) and a step of a
   separate Adam optimizer (learning rate ``aux_lr``, following ``lr_schedule``). Every trainer rank
   runs exactly ``aux_epochs * aux_minibatches`` auxiliary updates (an empty minibatch, on a rank
   with fewer rows than minibatches, contributes zero gradients), so the collectives match. The phase
   increments the policy version once more (unless every update was skipped), so the weights the
   runtime publishes after the step carry a new version. Its stats (``ppg_*``) join the step's stats.

Memory: the kept batches stay on the trainer's device until the auxiliary phase. ``aux_buffer_mb``
caps them (with the old distribution's parameters the phase adds); a batch that would exceed the cap
raises :class:`ValueError` naming the sizes, at the first step if ``n_pi`` batches of its size would.
Kept batches are not checkpointed: a resumed run starts a new phase (its first auxiliary phase comes
``n_pi`` steps after the resume).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hpcrl.api.data import PPGAuxResult, SampleBatch
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.trainer import NonFiniteError, TrainerStepResult
from hpcrl.trainers.adam import make_adam
from hpcrl.trainers.ppo import PPOTrainer, _clip_grads_, _clone_tensors, _restore_optimizer_state, _total_norm
from hpcrl.trainers.returns import decision_mask
from hpcrl.trainers.schedule import scheduled

if TYPE_CHECKING:
    from hpcrl.api.policy import Policy

__all__ = ["PPGTrainer", "aux_loss_terms"]

logger = logging.getLogger(__name__)

_MiB = 1024 * 1024


def _vals(x: torch.Tensor) -> torch.Tensor:
    """``(T, B)`` -> ``(T, B, 1)``; ``(T, B, D)`` unchanged."""
    return x.unsqueeze(-1) if x.dim() == 2 else x


def _nbytes(x: Any) -> int:
    """Bytes held by a tensor, or by every tensor leaf of a NamedArray / dict."""
    if isinstance(x, torch.Tensor):
        return int(x.numel() * x.element_size())
    if isinstance(x, NamedArray):
        return sum(_nbytes(v) for v in x.leaves())
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    return 0


def aux_loss_terms(
    res: PPGAuxResult, ret: torch.Tensor, mask: torch.Tensor | None, t_rows: int
) -> dict[str, torch.Tensor]:
    """The auxiliary phase's loss terms on one minibatch (masked means over decision rows).

    Args:
        res: ``analyze(sample, target="ppg_aux", old_dist_params=...)`` on the minibatch.
        ret: value targets ``(T, B, D)``.
        mask: bool ``(T, B)`` decision rows, or ``None`` when every row counts.
        t_rows: ``T``: rows of ``res`` beyond it (the bootstrap row of a sequence) are dropped.

    Returns:
        ``{"aux_value_loss": 0.5 mean(sum_d (V_aux - R)^2), "value_loss": 0.5 mean(sum_d (V - R)^2),
        "kl": mean(KL(old || new))}``.

    Raises:
        ValueError: the result has no ``aux_value`` or no ``kl``.
    """
    if res.aux_value is None:
        raise ValueError("ppg trainer: analyze(target='ppg_aux') returned no aux_value (the policy has no aux head)")
    if res.kl is None:
        raise ValueError("ppg trainer: analyze(target='ppg_aux', old_dist_params=...) returned no kl")
    count = None if mask is None else mask.sum().clamp(min=1)

    def mmean(x: torch.Tensor) -> torch.Tensor:
        if mask is None or count is None:
            return x.mean()
        return torch.where(mask, x, torch.zeros_like(x)).sum() / count

    aux_v, v = _vals(res.aux_value)[:t_rows], _vals(res.value)[:t_rows]
    kl = res.kl[:t_rows]
    if kl.dim() == 3 and kl.shape[-1] == 1:
        kl = kl.squeeze(-1)
    return {
        "aux_value_loss": 0.5 * mmean(((aux_v - ret) ** 2).sum(-1)),
        "value_loss": 0.5 * mmean(((v - ret) ** 2).sum(-1)),
        "kl": mmean(kl),
    }


class PPGTrainer(PPOTrainer):
    """Phasic policy gradient: PPO policy phases of ``n_pi`` steps, each followed by an auxiliary phase.

    Needs a policy whose ``analyze(sample, target="ppg_aux")`` returns a
    :class:`~hpcrl.api.data.PPGAuxResult` with an ``aux_value`` (``actor-critic-separate`` with
    ``auxiliary_head: true``); checked on the first step.

    Args:
        policy: the policy (see above).
        n_pi: PPO steps (batches) per policy phase; the auxiliary phase runs after every ``n_pi``-th step,
            over those ``n_pi`` batches (the paper's ``N_pi``, 32).
        aux_epochs: passes over the kept batches in an auxiliary phase (the paper's ``E_aux``, 6).
        beta_clone: weight of ``KL(pi_old || pi)``, which keeps the policy where it was at the start of the
            auxiliary phase (the paper's ``beta_clone``, 1).
        aux_minibatches: minibatches per auxiliary epoch (of decision rows for an MLP policy, of sequences
            for a recurrent one); every trainer rank runs ``aux_epochs * aux_minibatches`` updates.
        aux_lr: learning rate of the auxiliary phase's Adam optimizer (``None``: ``lr``); it follows
            ``lr_schedule`` as ``lr`` does.
        aux_critic_coef: weight of the critic's value loss in the auxiliary phase (the paper trains the
            value network further there; 0 leaves the critic to the policy phase).
        aux_value_coef: weight of the auxiliary head's value loss in the *policy* phase (PPO's argument;
            0 here: PPG trains the auxiliary head in the auxiliary phase only).
        aux_buffer_mb: cap, in MiB, on the batches a trainer rank keeps for the auxiliary phase (plus the
            old distribution's parameters); exceeding it raises ``ValueError``.
        **kwargs: every :class:`~hpcrl.trainers.ppo.PPOTrainer` argument (``lr``, ``gamma``, ``clip``,
            ``epochs``, ``minibatches``, the schedules, V-trace, ``chunk_len``/``burn_in``,
            ``normalize_rewards``, ...): the policy phase is exactly their PPO step.

    Raises:
        ValueError: a bad argument (the message names it).
        TypeError: the policy has no trainable torch parameters.
    """

    def __init__(
        self,
        policy: Policy,
        n_pi: int = 32,
        aux_epochs: int = 6,
        beta_clone: float = 1.0,
        aux_minibatches: int = 16,
        aux_lr: float | None = None,
        aux_critic_coef: float = 1.0,
        aux_value_coef: float = 0.0,
        aux_buffer_mb: float = 1024.0,
        **kwargs: Any,
    ) -> None:
        _check_names(kwargs)
        super().__init__(policy, aux_value_coef=aux_value_coef, **kwargs)
        checks = {
            "n_pi": isinstance(n_pi, int) and not isinstance(n_pi, bool) and n_pi >= 1,
            "aux_epochs": isinstance(aux_epochs, int) and not isinstance(aux_epochs, bool) and aux_epochs >= 0,
            "beta_clone": beta_clone >= 0,
            "aux_minibatches": isinstance(aux_minibatches, int)
            and not isinstance(aux_minibatches, bool)
            and aux_minibatches >= 1,
            "aux_lr": aux_lr is None or aux_lr >= 0,
            "aux_critic_coef": aux_critic_coef >= 0,
            "aux_buffer_mb": aux_buffer_mb > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ppg trainer: bad {name}={locals()[name]!r}")
        self.n_pi, self.aux_epochs, self.aux_minibatches = n_pi, aux_epochs, aux_minibatches
        self.beta_clone, self.aux_critic_coef = float(beta_clone), float(aux_critic_coef)
        self.aux_lr = self.lr if aux_lr is None else float(aux_lr)
        self.aux_buffer_mb = float(aux_buffer_mb)
        self.aux_buffer_bytes = int(self.aux_buffer_mb * _MiB)
        self.aux_optimizer = make_adam(self._params, lr=self.aux_lr, eps=self.optimizer.param_groups[0]["eps"])
        self._kept: list[dict[str, Any]] = []
        self._kept_bytes = 0
        self._param_row_bytes: int | None = None  # bytes of one row's dist_params: known after the first check
        self._aux_phases = 0

    # ------------------------------------------------------------------ the kept batches
    @property
    def kept_batches(self) -> int:
        """Batches kept for the next auxiliary phase."""
        return len(self._kept)

    @property
    def kept_bytes(self) -> int:
        """Bytes they hold (the old distribution's parameters they will need included)."""
        return self._kept_bytes

    def _check_policy(self, lean: SampleBatch) -> None:
        """Ask the policy for ``ppg_aux`` on one row; fail early with a clear message if it cannot answer."""
        name = type(self.policy).__name__
        probe = lean[:1].apply(lambda x: x[:, :1])  # one row of one column
        try:
            with torch.no_grad():
                res = self.policy.analyze(probe, target="ppg_aux")
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"ppg trainer: policy {name} cannot answer analyze(target='ppg_aux'): {e} (the built-in "
                f"actor-critic-separate policy with auxiliary_head: true can)"
            ) from e
        if not isinstance(res, PPGAuxResult):
            raise ValueError(
                f"ppg trainer: policy {name}.analyze(target='ppg_aux') returned {type(res).__name__}, "
                f"expected a PPGAuxResult"
            )
        if res.aux_value is None:
            raise ValueError(
                f"ppg trainer: policy {name} has no auxiliary value head; PPG distils the value into it: "
                f"set policy.args.auxiliary_head: true (actor-critic-separate)"
            )
        p = res.dist_params
        self._param_row_bytes = int(p.shape[-1] * p.element_size())

    @property
    def recurrent(self) -> bool:
        """Whether the policy is recurrent (its ``default_policy_state`` is not ``None``)."""
        return self.policy.default_policy_state is not None

    def _keep(self, samples: SampleBatch) -> None:
        """Compute the batch's value targets (as the PPO step will) and keep what the auxiliary phase needs."""
        with torch.no_grad():
            d = self._prepare(samples)
            if self._param_row_bytes is None:
                self._check_policy(d["lean"])
            _, ret, _ = self._targets(d)
        lean = d["lean"]
        t_len, b = ret.shape[:2]
        mask = decision_mask(d["done"], d["truncated"])
        if self.recurrent:
            if self._kept and int(self._kept[0]["ret"].shape[0]) != t_len:
                raise ValueError(
                    f"ppg trainer: a recurrent policy's kept batches must have one fragment length; this batch has "
                    f"T={t_len}, the first kept one T={int(self._kept[0]['ret'].shape[0])}"
                )
            item: dict[str, Any] = {
                "sample": SampleBatch(
                    obs=lean.obs, action=lean.action, policy_state=lean.policy_state, on_reset=lean.on_reset
                ).apply(lambda x: x.clone()),
                "ret": ret.clone(),
                "mask": mask.clone(),
                "units": b,
            }
            rows = (t_len + 1) * b
        else:
            keep = mask.reshape(-1).nonzero().squeeze(-1)
            flat = SampleBatch(obs=lean.obs, action=lean.action)[:t_len]
            flat = flat.apply(lambda x: x.reshape(t_len * b, *x.shape[2:])[keep].unsqueeze(0))
            item = {
                "sample": flat,
                "ret": ret.reshape(t_len * b, -1)[keep].unsqueeze(0),
                "mask": None,
                "units": int(keep.numel()),
            }
            rows = int(keep.numel())
        assert self._param_row_bytes is not None
        size = _nbytes(item) + rows * self._param_row_bytes
        self._check_cap(size)
        self._kept.append(item)
        self._kept_bytes += size

    def _check_cap(self, size: int) -> None:
        """Raise if keeping a batch of ``size`` bytes (or ``n_pi`` of them, at the first) exceeds the cap."""
        held = len(self._kept)
        need = self._kept_bytes + size if held else size * self.n_pi
        if need <= self.aux_buffer_bytes:
            return
        raise ValueError(
            f"ppg trainer: the batches kept for the auxiliary phase would take {need / _MiB:.3g} MiB "
            f"({'after batch ' + str(held + 1) if held else str(self.n_pi) + ' batches'} of n_pi={self.n_pi}, "
            f"this one {size / _MiB:.3g} MiB), over trainer.args.aux_buffer_mb={self.aux_buffer_mb:g}; "
            f"raise aux_buffer_mb (the memory is on the trainer's device) or lower trainer.args.n_pi or the "
            f"batch size"
        )

    # ------------------------------------------------------------------ step
    def step(self, samples: SampleBatch) -> TrainerStepResult:
        """A PPO step on ``samples``; after every ``n_pi``-th, the auxiliary phase (see the module docstring)."""
        self._keep(samples)
        result = super().step(samples)
        stats = dict(result.stats)
        stats["ppg_kept_mb"] = self._kept_bytes / _MiB  # the most this phase holds at once
        skipped = result.skipped
        if len(self._kept) >= self.n_pi:
            aux = self._aux_phase()
            stats.update(aux)
            skipped = skipped and aux["ppg_updates"] == 0
        stats["ppg_kept_batches"] = float(len(self._kept))
        return TrainerStepResult(stats=stats, step=self._step, skipped=skipped)

    def _aux_phase(self) -> dict[str, float]:
        """Distil the value into the auxiliary head over the kept batches, then drop them; returns ``ppg_*`` stats."""
        kept, self._kept, self._kept_bytes = self._kept, [], 0
        lr = scheduled(self.lr_schedule, self.aux_lr, self.progress.fraction)
        for group in self.aux_optimizer.param_groups:
            group["lr"] = lr
        with torch.no_grad():
            for item in kept:
                item["old"] = self.policy.analyze(item["sample"], target="ppg_aux").dist_params.detach()
        # every unit (row or sequence) of every kept batch, as (batch, index) pairs
        owner = torch.cat([torch.full((it["units"],), i, dtype=torch.long) for i, it in enumerate(kept)])
        local = torch.cat([torch.arange(it["units"]) for it in kept])
        total = int(owner.numel())
        axis = 1
        names: list[str] = []
        per_update: list[torch.Tensor] = []
        skipped = 0
        for _ in range(self.aux_epochs):
            for idx in torch.randperm(total, generator=self._gen).tensor_split(self.aux_minibatches):
                mb = _gather(kept, owner[idx], local[idx], axis) if idx.numel() else None
                update = self._aux_update(mb)
                if update is None:
                    skipped += 1
                    continue
                if mb is not None:
                    names, values = update
                    per_update.append(values)
        updates = self.aux_epochs * self.aux_minibatches - skipped
        out = {f"ppg_{k}": v for k, v in zip(names, torch.stack(per_update).mean(0).tolist())} if per_update else {}
        for k in ("aux_value_loss", "value_loss", "kl", "loss", "grad_norm"):
            out.setdefault(f"ppg_{k}", 0.0)
        out["ppg_updates"] = float(updates)
        out["ppg_skipped_updates"] = float(skipped)
        out["ppg_lr"] = lr
        out["ppg_phase"] = float(self._aux_phases + 1)
        with torch.no_grad():  # a fingerprint of the weights after the phase (the same on every trainer rank)
            out["ppg_param_sum"] = float(sum(p.detach().double().sum() for p in self._params))
        self._aux_phases += 1
        if updates:
            self.policy.inc_version()
        else:
            logger.warning("ppg auxiliary phase skipped entirely: all %d updates were non-finite", skipped)
        return out

    def _aux_update(self, mb: dict[str, Any] | None) -> tuple[list[str], torch.Tensor] | None:
        """One auxiliary minibatch update (``mb`` is ``None`` for an empty minibatch: zero gradients).

        Returns:
            The stats' names and values, or ``None`` when skipped (non-finite, agreed across ranks).
        """
        for p in self._params:
            p.grad = None
        terms: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=self._device())
        if mb is not None:
            res = self.policy.analyze(mb["sample"], target="ppg_aux", old_dist_params=mb["old"])
            t_rows = int(mb["ret"].shape[0])
            terms = aux_loss_terms(res, mb["ret"], mb["mask"], t_rows)
            loss = terms["aux_value_loss"] + self.beta_clone * terms["kl"]
            if self.aux_critic_coef != 0.0:
                loss = loss + self.aux_critic_coef * terms["value_loss"]
            loss.backward()
        for p in self._params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.sync.allreduce_gradients(self._params)
        grads = [p.grad for p in self._params if p.grad is not None]
        grad_norm = _total_norm(grads)
        local_bad = not (bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))
        if getattr(self.sync, "world_size", 1) > 1:
            bad = float(self.sync.allreduce_mean(np.array([float(local_bad)]))[0]) > 0
        else:
            bad = local_bad
        if bad:
            if self.nonfinite == "stop":
                said = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items()) or "on another trainer rank"
                raise NonFiniteError(
                    f"ppg trainer: non-finite auxiliary-phase loss or gradient ({said}) "
                    f"in auxiliary phase {self._aux_phases + 1}"
                )
            self.aux_optimizer.zero_grad(set_to_none=True)
            return None
        if self.max_grad_norm is not None:
            _clip_grads_(grads, self.max_grad_norm, grad_norm)
        self.aux_optimizer.step()
        with torch.no_grad():
            names = [*terms, "loss", "grad_norm"]
            values = torch.stack([*(t.detach() for t in terms.values()), loss.detach(), grad_norm])
        return names, values

    # ------------------------------------------------------------------ checkpoints
    def get_checkpoint(self) -> dict[str, Any]:
        """PPO's trainer state plus the auxiliary optimizer's and the phase count (the kept batches are not saved)."""
        ckpt = super().get_checkpoint()
        ckpt["aux_optimizer"] = _clone_tensors(self.aux_optimizer.state_dict())
        ckpt["aux_phases"] = self._aux_phases
        return ckpt

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore :meth:`get_checkpoint`'s output; the next auxiliary phase comes ``n_pi`` steps later.

        A checkpoint of a ``ppo`` run (no auxiliary optimizer) keeps a fresh auxiliary optimizer.
        """
        super().load_checkpoint(checkpoint)
        self._kept, self._kept_bytes = [], 0
        if checkpoint.get("aux_optimizer") is not None:
            self.aux_optimizer.load_state_dict(_restore_optimizer_state(checkpoint["aux_optimizer"]))
            if isinstance(self.aux_optimizer, torch.optim.Optimizer):
                for group in self.aux_optimizer.param_groups:
                    group.update(fused=False, foreach=True)
        self._aux_phases = int(checkpoint.get("aux_phases", 0))


def _check_names(kwargs: dict[str, Any]) -> None:
    """Raise ``TypeError`` naming an argument that is neither PPG's nor PPO's (with the closest name)."""
    import difflib
    import inspect

    ppo = [n for n in inspect.signature(PPOTrainer.__init__).parameters if n not in ("self", "policy")]
    ppg = [n for n in inspect.signature(PPGTrainer.__init__).parameters if n not in ("self", "policy", "kwargs")]
    known = sorted(set(ppo) | set(ppg))
    for name in kwargs:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"ppg trainer: unknown argument {name!r}{hint}; the arguments are {known}")


def _gather(kept: list[dict[str, Any]], owner: torch.Tensor, local: torch.Tensor, axis: int) -> dict[str, Any]:
    """One minibatch: the units ``local`` of kept batches ``owner``, concatenated along the batch axis."""
    from hpcrl.api.namedarray import concat

    samples, rets, masks, olds = [], [], [], []
    for i in torch.unique(owner).tolist():
        it = kept[i]
        sel = local[owner == i].to(it["ret"].device)
        samples.append(it["sample"].apply(lambda x, sel=sel: x.index_select(axis, sel.to(x.device))))
        rets.append(it["ret"].index_select(axis, sel))
        olds.append(it["old"].index_select(axis, sel.to(it["old"].device)))
        if it["mask"] is not None:
            masks.append(it["mask"].index_select(axis, sel))
    return {
        "sample": samples[0] if len(samples) == 1 else concat(samples, axis=axis),
        "ret": torch.cat(rets, dim=axis),
        "old": torch.cat(olds, dim=axis),
        "mask": torch.cat(masks, dim=axis) if masks else None,
    }
