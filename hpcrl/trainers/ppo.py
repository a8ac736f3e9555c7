"""PPO (clipped surrogate, GAE) with an optional V-trace off-policy correction (APPO-style).

One :meth:`PPOTrainer.step` on a :class:`~hpcrl.api.data.SampleBatch` of ``T + 1`` rows:

1. Targets on the ``T`` decision rows (:mod:`hpcrl.trainers.returns`). GAE uses the
   behaviour values stored at rollout (``analyzed_result.value``). With ``vtrace=True`` the
   policy is first re-analysed without gradients; its log-probs give
   ``log_rho = log pi - log mu`` (``mu`` = behaviour ``analyzed_result.log_prob``) and its
   values ``V``; targets are V-trace ``vs`` and advantages ``rho_t (r + gamma v_{t+1} - V_t)``.
2. ``epochs`` passes over ``minibatches`` random minibatches: flattened ``(t, b)`` rows for
   an MLP policy, whole sequences (a split along ``B``) for a recurrent one (a policy is
   recurrent when its ``default_policy_state`` is not ``None``). Per minibatch, with the
   decision mask ``m`` and masked means:

   * ``ratio = exp(log pi_new - log mu)`` (also with V-trace: the clip is around the behaviour
     policy, as in APPO); advantages summed over value dims and normalised per minibatch (optional);
   * ``policy_loss = mean(max(-A ratio, -A clip(ratio, 1 - clip, 1 + clip)))``;
   * ``value_loss = 0.5 mean(sum_d (V_new - R)^2)``, or with ``value_clip``
     ``0.5 mean(sum_d max((V_new - R)^2, (V_old + clip(V_new - V_old, +-value_clip) - R)^2))``, where
     ``V_old`` are the values the targets were computed from (behaviour values for GAE, the
     start-of-step values for V-trace) and ``R`` the GAE returns or V-trace ``vs``;
   * ``aux_value_loss`` likewise for an auxiliary value head (unclipped);
   * ``loss = policy_loss + value_coef value_loss - entropy_coef entropy + aux_value_coef aux_value_loss``.

   ``backward()``, then ``sync.allreduce_gradients`` (once per minibatch), a non-finite
   check (agreed across ranks with ``sync.allreduce_mean`` when there is more than one trainer
   rank), grad-norm clipping and an Adam step (:func:`hpcrl.trainers.adam.make_adam`: torch's
   fused kernel when the device supports it).
   For an MLP policy the minibatch's non-decision rows are dropped before ``analyze`` (the
   masked means above become plain means over the remaining rows: the same loss, less work).
   With ``chunk_len`` (and ``burn_in``) a recurrent policy is trained on chunks of its fragments
   instead of whole fragments (:mod:`hpcrl.trainers.chunks`): the chunks are the minibatch units,
   each replayed from the state stored at its first row; burn-in rows are masked out of the loss.
3. Optional KL early stop after each epoch (mean ``approx_kl`` agreed with ``sync.allreduce_mean``).

The step's stats are means over its applied minibatch updates, except ``approx_kl_last_epoch``: the
mean approx KL of the last epoch's updates only, which is what Stable-Baselines3 logs as
``train/approx_kl`` (compare that one with SB3; the all-epoch mean is about half of it on CartPole,
since the first epoch starts at the behaviour policy).
4. ``policy.inc_version()`` unless every update was skipped.

The learning rate, ``entropy_coef`` and ``clip`` can each follow a schedule (``constant`` or
``linear``, :mod:`hpcrl.trainers.schedule`) of the run's progress in env frames,
``trainer.progress.fraction`` (``frames / experiment.total_frames``), which the system sets before every
step. The values used by a step are in its stats (``lr``, ``entropy_coef``, ``clip``), hence in the
trace. Because progress is counted in frames and stored in checkpoints, a run resumed with a different
rank layout or batch size continues its schedules exactly where they were.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hpcrl.api.data import AnalyzedResult, SampleBatch
from hpcrl.api.trainer import NonFiniteError, Trainer, TrainerStepResult
from hpcrl.trainers.adam import make_adam
from hpcrl.trainers.chunks import check_chunk_args, chunk_batch
from hpcrl.trainers.returns import decision_mask, gae, vtrace
from hpcrl.trainers.reward_norm import RewardNormalizer
from hpcrl.trainers.schedule import check_schedule, scheduled

if TYPE_CHECKING:
    from hpcrl.api.policy import Policy

__all__ = ["AnalyzedResult", "PPOTrainer", "make_vtrace"]

logger = logging.getLogger(__name__)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``(T, B, 1)`` -> ``(T, B)``; ``(T, B)`` unchanged."""
    return x.squeeze(-1) if x.dim() == 3 and x.shape[-1] == 1 else x


def _vals(x: torch.Tensor) -> torch.Tensor:
    """``(T, B)`` -> ``(T, B, 1)``; ``(T, B, D)`` unchanged."""
    return x.unsqueeze(-1) if x.dim() == 2 else x


class PPOTrainer(Trainer):
    """Proximal policy optimisation with GAE, or with V-trace targets for stale samples.

    Args:
        policy: a policy whose ``analyze`` returns :class:`~hpcrl.api.data.AnalyzedResult` and whose
            ``parameters()`` are torch parameters.
        lr: Adam learning rate (the start value with ``lr_schedule: linear``).
        gamma: discount.
        gae_lambda: GAE lambda (unused with V-trace, whose traces are cut by ``vtrace_c`` only).
        clip: PPO ratio clip (the start value with ``clip_schedule: linear``).
        value_clip: clip of the value change around the target-time values, or ``None``.
        value_coef: value loss weight.
        entropy_coef: entropy bonus weight (the start value with ``entropy_schedule: linear``).
        aux_value_coef: auxiliary value loss weight (used only if the policy has an aux head).
        epochs: passes over the batch per step.
        minibatches: minibatches per epoch (capped at the number of rows / sequences).
        max_grad_norm: global grad-norm clip, or ``None``.
        normalize_advantages: normalise advantages per minibatch (masked mean/std).
        lr_schedule: ``"constant"`` or ``"linear"``: ``lr * (1 - progress.fraction)``, which reaches 0 when
            ``experiment.total_frames`` env frames are done (never a function of a step count, so it does not
            depend on the rank layout or batch size, and resumes exactly).
        entropy_schedule: the same choice for ``entropy_coef``.
        clip_schedule: the same choice for ``clip``.
        total_steps: not supported; giving it raises ``ValueError`` (schedules follow
            ``experiment.total_frames``, not a number of trainer steps).
        target_kl: stop the epochs early once an epoch's mean approx KL exceeds this, or ``None``.
        vtrace: V-trace targets and advantages instead of GAE.
        vtrace_rho: V-trace ``rho_bar``.
        vtrace_c: V-trace ``c_bar``.
        adam_eps: Adam epsilon.
        normalize_rewards: divide rewards by the running std of the discounted return before the targets
            (:mod:`hpcrl.trainers.reward_norm`); value targets are then in normalised units.
        reward_clip: normalised rewards are clipped to ``[-reward_clip, reward_clip]``.
        seed: seed of the minibatch permutation generator.
        chunk_len: recurrent policies only: train each fragment in chunks of this many steps, each replayed
            from the policy state stored at its first step (must divide ``actor.fragment_length``); ``None``:
            whole fragments. See :mod:`hpcrl.trainers.chunks`.
        burn_in: recurrent policies only: the first ``burn_in`` steps of every chunk (of the fragment without
            ``chunk_len``) only warm up the state and carry no loss; must be smaller than ``chunk_len``.

    Raises:
        ValueError: a bad argument (the message names it).
        TypeError: the policy has no trainable torch parameters.
    """

    def __init__(
        self,
        policy: Policy,
        lr: float = 3e-4,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip: float = 0.2,
        value_clip: float | None = None,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        aux_value_coef: float = 0.5,
        epochs: int = 4,
        minibatches: int = 4,
        max_grad_norm: float | None = 0.5,
        normalize_advantages: bool = True,
        lr_schedule: str = "constant",
        entropy_schedule: str = "constant",
        clip_schedule: str = "constant",
        total_steps: int | None = None,
        target_kl: float | None = None,
        vtrace: bool = False,
        vtrace_rho: float = 1.0,
        vtrace_c: float = 1.0,
        adam_eps: float = 1e-5,
        normalize_rewards: bool = False,
        reward_clip: float = 10.0,
        seed: int = 0,
        chunk_len: int | None = None,
        burn_in: int = 0,
    ) -> None:
        super().__init__(policy)
        if total_steps is not None:
            raise ValueError(
                f"ppo trainer: total_steps={total_steps!r} is not supported: schedules (lr_schedule, "
                f"entropy_schedule, clip_schedule) follow the run's progress in env frames, "
                f"frames / experiment.total_frames, whatever the rank layout; remove trainer.args.total_steps"
            )
        for name, value in (
            ("lr_schedule", lr_schedule),
            ("entropy_schedule", entropy_schedule),
            ("clip_schedule", clip_schedule),
        ):
            check_schedule(name, value, "ppo trainer")
        checks = {
            "lr": lr >= 0,
            "gamma": 0 <= gamma <= 1,
            "gae_lambda": 0 <= gae_lambda <= 1,
            "clip": clip > 0,
            "value_clip": value_clip is None or value_clip > 0,
            "epochs": isinstance(epochs, int) and epochs >= 1,
            "minibatches": isinstance(minibatches, int) and minibatches >= 1,
            "max_grad_norm": max_grad_norm is None or max_grad_norm > 0,
            "target_kl": target_kl is None or target_kl > 0,
            "vtrace_rho": vtrace_rho > 0,
            "vtrace_c": vtrace_c > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"ppo trainer: bad {name}={locals()[name]!r}")
        self.chunk_len, self.burn_in = check_chunk_args(chunk_len, burn_in)
        if (self.chunk_len is not None or self.burn_in) and policy.default_policy_state is None:
            raise ValueError(
                f"trainer.args.chunk_len / trainer.args.burn_in apply to recurrent policies only; "
                f"{type(policy).__name__} has no policy state (actor-critic policies: policy.args.num_rnn_layers > 0)"
            )
        self._params = [p for p in policy.parameters() if getattr(p, "requires_grad", False)]
        if not self._params:
            raise TypeError(
                f"ppo trainer needs a policy with trainable torch parameters; {type(policy).__name__} has none"
            )
        self.lr, self.gamma, self.gae_lambda, self.clip = float(lr), float(gamma), float(gae_lambda), float(clip)
        self.value_clip = None if value_clip is None else float(value_clip)
        self.value_coef, self.entropy_coef = float(value_coef), float(entropy_coef)
        self.aux_value_coef = float(aux_value_coef)
        self.epochs, self.minibatches = epochs, minibatches
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.normalize_advantages = bool(normalize_advantages)
        self.lr_schedule, self.entropy_schedule, self.clip_schedule = lr_schedule, entropy_schedule, clip_schedule
        self.target_kl = None if target_kl is None else float(target_kl)
        self.vtrace, self.vtrace_rho, self.vtrace_c = bool(vtrace), float(vtrace_rho), float(vtrace_c)
        self.optimizer = make_adam(self._params, lr=self.lr, eps=float(adam_eps))
        self._gen = torch.Generator()
        self._gen.manual_seed(int(seed))
        self._step = 0
        self._reward_norm = RewardNormalizer(self.gamma, reward_clip) if normalize_rewards else None

    @property
    def step_count(self) -> int:
        """Completed (not fully skipped) trainer steps."""
        return self._step

    # ------------------------------------------------------------------ data
    def _device(self) -> torch.device:
        return self._params[0].device

    def _prepare(self, samples: SampleBatch) -> dict[str, Any]:
        """Check fields and move what the step needs to the model's device."""
        dev = self._device()
        missing = [f for f in ("obs", "action", "analyzed_result", "reward", "done", "truncated") if samples[f] is None]
        if missing:
            raise ValueError(f"ppo trainer: SampleBatch is missing {missing}")
        ar: Any = samples["analyzed_result"]
        for f in ("log_prob", "value"):
            if f not in ar or ar[f] is None:
                raise ValueError(f"ppo trainer: SampleBatch.analyzed_result has no {f!r} (fields: {ar.keys()})")

        def tt(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
            t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
            return t.to(dev, dtype) if dtype is not None else t.to(dev)

        lean = SampleBatch(
            obs=samples.obs, action=samples.action, policy_state=samples.policy_state, on_reset=samples.on_reset
        ).to_torch(dev)
        reward = _vals(tt(samples.reward, torch.float32))
        value = _vals(tt(ar.value, torch.float32))
        done = tt(samples.done).reshape(reward.shape[:2]).bool()
        truncated = tt(samples.truncated).reshape(reward.shape[:2]).bool()
        if self._reward_norm is not None:  # staged; kept by commit() once the step applied an update
            reward = self._reward_norm.normalize(reward, done, truncated, self.sync)
        if reward.shape[-1] not in (1, value.shape[-1]):
            raise ValueError(f"reward {tuple(reward.shape)} and value {tuple(value.shape)} have different widths")
        return {
            "lean": lean,
            "reward": reward,
            "value": value,
            "done": done,
            "truncated": truncated,
            "old_lp": _rows(tt(ar.log_prob, torch.float32)),
        }

    def _targets(self, d: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(advantages (T, B), returns (T, B, D), values used for the targets (T, B, D))``."""
        reward, done, trunc = d["reward"], d["done"], d["truncated"]
        if self.vtrace:
            with torch.no_grad():
                cur = self.policy.analyze(d["lean"], target="ppo")
            value = _vals(cur.value.float())
            log_rho = _rows(cur.log_prob.float()) - d["old_lp"]
            reward = reward.expand(*reward.shape[:2], value.shape[-1])
            ret, adv = vtrace(reward, value, done, trunc, log_rho, self.gamma, self.vtrace_rho, self.vtrace_c)
        else:
            value = d["value"]
            reward = reward.expand(*reward.shape[:2], value.shape[-1])
            adv, ret = gae(reward, value, done, trunc, self.gamma, self.gae_lambda)
        return adv.sum(-1), ret, value[:-1]

    # ------------------------------------------------------------------ step
    def scheduled_values(self, fraction: float) -> dict[str, float]:
        """``{"lr", "entropy_coef", "clip"}`` at ``fraction`` of the run (what a step at that progress uses)."""
        return {
            "lr": scheduled(self.lr_schedule, self.lr, fraction),
            "entropy_coef": scheduled(self.entropy_schedule, self.entropy_coef, fraction),
            "clip": scheduled(self.clip_schedule, self.clip, fraction),
        }

    def step(self, samples: SampleBatch) -> TrainerStepResult:
        """One PPO step (see the module docstring); increments the policy version unless fully skipped."""
        now = self.scheduled_values(self.progress.fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = now["lr"]

        d = self._prepare(samples)
        adv, ret, v_old = self._targets(d)
        t_len, b = adv.shape
        mask = decision_mask(d["done"], d["truncated"])
        rows = {"adv": adv, "ret": ret, "v_old": v_old, "old_lp": d["old_lp"][:t_len], "mask": mask}
        recurrent = self.policy.default_policy_state is not None
        lean = d["lean"]
        t_rows = t_len if recurrent else 1  # rows per sequence that _update trains on
        if recurrent:
            units = b
            if self.chunk_len is not None or self.burn_in:
                t_rows = self.chunk_len or t_len
                lean, rows = chunk_batch(lean, rows, t_len, self.chunk_len, self.burn_in)
                units = int(rows["mask"].shape[1])
        else:
            units = t_len * b
            lean = lean[:t_len].apply(lambda x: x.reshape(t_len * b, *x.shape[2:]))
            rows = {k: v.reshape(t_len * b, *v.shape[2:]) for k, v in rows.items()}
        n_mb = min(self.minibatches, units)

        names: list[str] = []
        per_update: list[torch.Tensor] = []  # one detached stats vector per applied update
        skipped = epochs_done = epoch_start = 0
        for _ in range(self.epochs):
            epoch_start = len(per_update)
            for idx in torch.randperm(units, generator=self._gen).tensor_split(n_mb):
                idx = idx.to(mask.device)
                if recurrent:
                    sub = lean[:, idx]
                    mb = {k: v[:, idx] for k, v in rows.items()}
                else:
                    keep = idx[rows["mask"][idx]]  # decision rows only: then every row counts
                    if keep.numel() > 0:
                        idx = keep
                    sub = lean[idx].apply(lambda x: x.unsqueeze(0))
                    mb = {k: v[idx].unsqueeze(0) for k, v in rows.items()}
                    if keep.numel() > 0:
                        mb["mask"] = None
                update = self._update(sub, mb, t_rows, now["clip"], now["entropy_coef"])
                if update is None:
                    skipped += 1
                    continue
                names, values = update
                per_update.append(values)
            epochs_done += 1
            if self.target_kl is not None:
                epoch_kl = [float(v[names.index("approx_kl")]) for v in per_update[epoch_start:]]
                kl = float(np.mean(epoch_kl)) if epoch_kl else 0.0
                if float(self.sync.allreduce_mean(np.array([kl]))[0]) > self.target_kl:
                    break

        updates = len(per_update)
        sums = [0.0] * len(names)
        for row in torch.stack(per_update).tolist() if per_update else []:
            sums = [a + x for a, x in zip(sums, row)]
        out = {k: v / updates for k, v in zip(names, sums)}
        for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "grad_norm"):
            out.setdefault(k, 0.0)
        last_epoch = [float(v[names.index("approx_kl")]) for v in per_update[epoch_start:]]
        out["approx_kl_last_epoch"] = float(np.mean(last_epoch)) if last_epoch else 0.0
        out["explained_variance"] = self._explained_variance(ret, v_old, mask)
        out.update(now)
        out["skipped_updates"] = float(skipped)
        out["updates"] = float(updates)
        out["epochs"] = float(epochs_done)
        out["frames"] = float(t_len * b)
        if updates:
            _update_normalizers(self.policy, samples, self.sync, self._reward_norm, out)
            self.policy.inc_version()
            self._step += 1
        else:
            logger.warning("ppo step skipped entirely: all %d updates had a non-finite loss or gradient", skipped)
        return TrainerStepResult(stats=out, step=self._step, skipped=updates == 0)

    def _update(
        self, sub: SampleBatch, mb: dict[str, torch.Tensor | None], t_rows: int, clip: float, entropy_coef: float
    ) -> tuple[list[str], torch.Tensor] | None:
        """One minibatch update with this step's (scheduled) ``clip`` and ``entropy_coef``.

        ``mb["mask"]`` is the decision mask of the rows, or ``None`` when every row is a
        decision (then the masked means are plain means).

        Returns:
            The stats' names and their values (one detached tensor), or ``None`` when the
            update was skipped (non-finite, agreed across ranks).
        """
        res = self.policy.analyze(sub, target="ppo", **({"burn_in": self.burn_in} if self.burn_in else {}))
        new_lp, entropy, new_v = _rows(res.log_prob), _rows(res.entropy), _vals(res.value)
        if new_lp.shape[0] != t_rows:
            new_lp, entropy, new_v = new_lp[:t_rows], entropy[:t_rows], new_v[:t_rows]
        m = mb["mask"]
        count = None if m is None else m.sum().clamp(min=1)

        def mmean(x: torch.Tensor) -> torch.Tensor:
            if m is None or count is None:
                return x.mean()
            return torch.where(m, x, torch.zeros_like(x)).sum() / count

        adv, old_lp, ret, v_old = mb["adv"], mb["old_lp"], mb["ret"], mb["v_old"]
        assert adv is not None and old_lp is not None and ret is not None and v_old is not None
        if self.normalize_advantages:
            mean = mmean(adv)
            std = mmean((adv - mean) ** 2).sqrt()
            adv = (adv - mean) / (std + 1e-8)
        logratio = new_lp - old_lp
        ratio = logratio.exp()
        neg_adv = -adv
        policy_loss = mmean(torch.max(neg_adv * ratio, neg_adv * ratio.clamp(1.0 - clip, 1.0 + clip)))
        v_err = (new_v - ret) ** 2
        if self.value_clip is not None:
            v_clipped = v_old + (new_v - v_old).clamp(-self.value_clip, self.value_clip)
            v_err = torch.max(v_err, (v_clipped - ret) ** 2)
        value_loss = 0.5 * mmean(v_err.sum(-1))
        ent = mmean(entropy)
        terms = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": ent}
        loss = policy_loss + self.value_coef * value_loss
        if entropy_coef != 0.0:  # a zero-weight term would only add work to backward()
            loss = loss - entropy_coef * ent
        if res.aux_value is not None:
            aux_v = _vals(res.aux_value)[:t_rows]
            aux_loss = 0.5 * mmean(((aux_v - ret) ** 2).sum(-1))
            terms["aux_value_loss"] = aux_loss
            loss = loss + self.aux_value_coef * aux_loss

        for p in self._params:  # optimizer.zero_grad(set_to_none=True)
            p.grad = None
        loss.backward()
        for p in self._params:  # every rank reduces the same flat layout, even for unused parameters
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        self.sync.allreduce_gradients(self._params)
        grads = [p.grad for p in self._params if p.grad is not None]
        grad_norm = _total_norm(grads)
        local_bad = not (bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm)))
        if getattr(self.sync, "world_size", 1) > 1:  # all trainer ranks skip together
            bad = float(self.sync.allreduce_mean(np.array([float(local_bad)]))[0]) > 0
        else:
            bad = local_bad
        if bad:
            if self.nonfinite == "stop":
                raise NonFiniteError(self._describe_nonfinite(terms, loss))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.max_grad_norm is not None:
            _clip_grads_(grads, self.max_grad_norm, grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            approx_kl = mmean((ratio - 1.0) - logratio)
            clip_fraction = mmean(((ratio - 1.0).abs() > clip).float())
            names = [*terms, "approx_kl", "clip_fraction", "grad_norm", "loss"]
            values = torch.stack([*terms.values(), approx_kl, clip_fraction, grad_norm, loss])
        return names, values.detach()

    def _describe_nonfinite(self, terms: dict[str, torch.Tensor], loss: torch.Tensor) -> str:
        for name, value in terms.items():
            if not bool(torch.isfinite(value)):
                return f"ppo trainer: non-finite {name} ({value.item()}) at trainer step {self._step}"
        if not bool(torch.isfinite(loss)):
            return f"ppo trainer: non-finite total loss ({loss.item()}) at trainer step {self._step}"
        named = getattr(getattr(self.policy, "net", None), "named_parameters", None)
        pairs = list(named()) if callable(named) else [(str(i), p) for i, p in enumerate(self._params)]
        for name, p in pairs:
            if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                return f"ppo trainer: non-finite gradient of parameter {name!r} at trainer step {self._step}"
        return f"ppo trainer: non-finite loss or gradient on another trainer rank at trainer step {self._step}"

    @staticmethod
    def _explained_variance(ret: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> float:
        """``1 - Var(R - V) / Var(R)`` over decision rows (0.0 when ``Var(R)`` is 0)."""
        y, p = ret[mask], pred[mask]
        if y.numel() < 2:
            return 0.0
        var_y = float(y.var(unbiased=False))
        if var_y == 0.0 or not math.isfinite(var_y):
            return 0.0
        return 1.0 - float((y - p).var(unbiased=False)) / var_y

    # ------------------------------------------------------------------ checkpoints
    def get_checkpoint(self) -> dict[str, Any]:
        """``{"optimizer": optimizer.state_dict() (tensors cloned to CPU), "step": int, "rng": uint8 tensor}``.

        With ``normalize_rewards`` also ``"reward_norm"``: the return statistics (``count``, ``mean``, ``var``).
        """
        out = {
            "optimizer": _clone_tensors(self.optimizer.state_dict()),
            "step": self._step,
            "rng": self._gen.get_state(),
        }
        if self._reward_norm is not None:
            out["reward_norm"] = self._reward_norm.state()
        return out

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore optimizer state, step counter and minibatch RNG.

        Accepts the output of :meth:`get_checkpoint` after a round trip through plain
        types (numpy arrays for tensors, string keys for the optimizer's integer keys). An
        empty dict (a checkpoint without trainer state) keeps the fresh optimizer.
        """
        if not checkpoint:
            logger.warning("ppo trainer: empty trainer checkpoint; keeping a fresh optimizer and step counter")
            return
        self.optimizer.load_state_dict(_restore_optimizer_state(checkpoint["optimizer"]))
        if isinstance(self.optimizer, torch.optim.Optimizer):  # the fallback: not the saver's implementation flags
            for group in self.optimizer.param_groups:
                group.update(fused=False, foreach=True)
        self._step = int(checkpoint["step"])
        if checkpoint.get("rng") is not None:
            self._gen.set_state(torch.as_tensor(np.asarray(checkpoint["rng"]), dtype=torch.uint8))
        if self._reward_norm is not None:
            self._reward_norm.load(checkpoint.get("reward_norm"))


def _update_normalizers(
    policy: Any, samples: SampleBatch, sync: Any, reward_norm: RewardNormalizer | None, stats: dict[str, float]
) -> None:
    """After an applied step: the policy's observation stats take the batch, the staged reward stats are kept."""
    update = getattr(policy, "update_normalizer", None)
    if callable(update):
        update(samples, sync)
    if reward_norm is not None:
        reward_norm.commit()
        stats["reward_scale"] = reward_norm.std()


def _total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The global 2-norm of ``grads``, computed as ``torch.nn.utils.get_total_norm`` does (norm of per-tensor norms).

    Written out because the generic utility's grouping by device and dtype costs more than the
    norms themselves for a small model on CPU. Gradients on several devices take the per-tensor path.
    """
    if not grads:
        return torch.zeros(())
    dev = grads[0].device
    if all(g.device == dev for g in grads):
        norms = list(torch._foreach_norm(grads))
    else:
        norms = [torch.linalg.vector_norm(g).to(dev) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))


def _clip_grads_(grads: list[torch.Tensor], max_norm: float, total_norm: torch.Tensor) -> None:
    """Scale ``grads`` in place by ``min(1, max_norm / (total_norm + 1e-6))`` (``clip_grads_with_norm_``'s rule)."""
    coef = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    dev = grads[0].device if grads else coef.device
    if all(g.device == dev for g in grads):
        torch._foreach_mul_(grads, coef.to(dev))
    else:
        for g in grads:
            g.mul_(coef.to(g.device))


def _clone_tensors(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _clone_tensors(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_clone_tensors(v) for v in x)
    return x


def _restore_optimizer_state(sd: dict[str, Any]) -> dict[str, Any]:
    """Undo what a plain-types round trip may do to ``optimizer.state_dict()``; copies every tensor."""

    def conv(x: Any) -> Any:
        if isinstance(x, (np.ndarray, np.generic)):
            return torch.tensor(x)
        if isinstance(x, torch.Tensor):
            return x.clone()
        if isinstance(x, dict):
            return {(int(k) if isinstance(k, str) and k.isdigit() else k): conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(conv(v) for v in x)
        return x

    state = {k: conv(v) for k, v in sd["state"].items()}
    state = {(int(k) if isinstance(k, str) and k.isdigit() else k): v for k, v in state.items()}
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        g["params"] = [int(p) for p in g["params"]]
        groups.append({k: (v.item() if isinstance(v, np.generic) else v) for k, v in g.items()})
    return {"state": state, "param_groups": groups}


def make_vtrace(policy: Policy, **kwargs: Any) -> PPOTrainer:
    """``vtrace``: a :class:`PPOTrainer` with ``vtrace=True`` (V-trace targets for stale samples)."""
    return PPOTrainer(policy, vtrace=True, **kwargs)
