"""PPG trainer: the auxiliary loss against a hand computation, KL terms, phases, versions, sync calls, memory cap,
checkpoints, contract errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from test_ppo import CountingSync, _as_plain, batch_for, new_policy, weights

from hpcrl.api.data import PPGAuxResult, SampleBatch
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import make
from hpcrl.api.trainer import make as make_trainer
from hpcrl.policies.distributions import CategoricalDistribution
from hpcrl.trainers.ppg import PPGTrainer, aux_loss_terms


def aux_policy(rnn: int = 0, seed: int = 0) -> Any:
    return new_policy(rnn=rnn, seed=seed, auxiliary_head=True)


def hand_gae_returns(batch: SampleBatch, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE returns ``(T, B)`` and the decision mask, written out row by row in float64."""
    r = np.asarray(batch.reward, np.float64)[..., 0]
    v = np.asarray(batch.analyzed_result.value, np.float64)[..., 0]
    done = np.asarray(batch.done)[..., 0]
    trunc = np.asarray(batch.truncated)[..., 0]
    t_len, b = r.shape[0] - 1, r.shape[1]
    adv = np.zeros((t_len + 1, b))
    for t in reversed(range(t_len)):
        for j in range(b):
            boot = 0.0 if done[t + 1, j] else v[t + 1, j]
            delta = r[t + 1, j] + gamma * boot - v[t, j]
            cont = 0.0 if (done[t + 1, j] or trunc[t + 1, j]) else 1.0
            adv[t, j] = delta + gamma * lam * cont * adv[t + 1, j]
    mask = ~(done[:-1] | trunc[:-1])
    return adv[:-1] + v[:-1], mask


def test_aux_phase_loss_matches_a_hand_computation() -> None:
    """With zero learning rates the weights stay put, so the phase's one update sees the start weights:
    its value losses are those of the start heads against hand-computed GAE returns, its KL is 0."""
    policy = aux_policy(seed=3)
    batch = batch_for(policy, t=10, b=3)
    with torch.no_grad():
        out = policy.analyze(batch, target="ppo")
    aux_v = out.aux_value[:-1, :, 0].double().numpy()
    v = out.value[:-1, :, 0].double().numpy()
    ret, mask = hand_gae_returns(batch, gamma=0.9, lam=0.8)
    assert mask.sum() == 10 * 3 - 2
    want_aux = 0.5 * np.mean((aux_v - ret)[mask] ** 2)
    want_value = 0.5 * np.mean((v - ret)[mask] ** 2)

    trainer = PPGTrainer(
        policy, n_pi=1, aux_epochs=1, aux_minibatches=1, lr=0.0, gamma=0.9, gae_lambda=0.8, beta_clone=2.0,
        aux_critic_coef=0.5,
    )  # fmt: skip
    before = weights(policy)
    stats = trainer.step(batch).stats
    assert all(torch.equal(before[k], w) for k, w in weights(policy).items())
    assert stats["ppg_updates"] == 1.0 and stats["ppg_phase"] == 1.0
    assert stats["ppg_aux_value_loss"] == pytest.approx(want_aux, rel=1e-5)
    assert stats["ppg_value_loss"] == pytest.approx(want_value, rel=1e-5)
    assert stats["ppg_kl"] == pytest.approx(0.0, abs=1e-7)
    assert stats["ppg_loss"] == pytest.approx(want_aux + 0.5 * want_value, rel=1e-5)


def _sample(policy: Any, n: int) -> SampleBatch:
    """``(1, n)`` rows of random obs and sampled actions."""
    from hpcrl.api.policy import RolloutRequest

    obs = NamedArray(obs=np.random.default_rng(1).standard_normal((n, 4)).astype(np.float32))
    act = policy.rollout(RolloutRequest(obs=obs)).action
    return SampleBatch(obs=obs, action=act).apply(lambda x: torch.as_tensor(x)[None])


def _torch_kl(kind: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``KL(old || new)`` from ``torch.distributions``, per row, from each side's ``dist_params``."""
    from torch.distributions import Categorical, Normal, kl_divergence

    if kind == "discrete":
        return kl_divergence(Categorical(logits=old), Categorical(logits=new))
    if kind == "multi":
        return sum(
            kl_divergence(Categorical(logits=o), Categorical(logits=n))
            for o, n in zip(old.split([3, 2], -1), new.split([3, 2], -1))
        )
    om, ols = old.chunk(2, -1)
    nm, nls = new.chunk(2, -1)
    return kl_divergence(Normal(om, ols.exp()), Normal(nm, nls.exp())).sum(-1)


@pytest.mark.parametrize("kind", ["discrete", "multi", "gaussian"])
def test_ppg_aux_kl_and_losses_match_torch_distributions(kind: str) -> None:
    action_dim: Any = {"discrete": 3, "multi": [3, 2], "gaussian": 2}[kind]
    policy = make(
        "actor-critic-separate", obs_dim=4, action_dim=action_dim, continuous_action=kind == "gaussian",
        hidden_dim=8, auxiliary_head=True, seed=2,
    )  # fmt: skip
    sample = _sample(policy, 7)
    with torch.no_grad():
        old = policy.analyze(sample, target="ppg_aux").dist_params
        assert policy.analyze(sample, target="ppg_aux", old_dist_params=old).kl.abs().max() < 1e-6
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    res = policy.analyze(sample, target="ppg_aux", old_dist_params=old)
    assert isinstance(res, PPGAuxResult) and res.kl is not None and res.kl.requires_grad
    want = _torch_kl(kind, old, res.dist_params.detach())
    assert want.min() > 1e-4  # the perturbation moved the policy
    torch.testing.assert_close(res.kl.detach(), want, rtol=1e-4, atol=1e-6)
    # the loss terms: masked means over a hand-picked mask
    ret = torch.randn(1, 7, 1)
    mask = torch.tensor([[True, False, True, True, False, True, True]])
    terms = aux_loss_terms(res, ret, mask, 1)
    m = mask[0]
    aux_v, v = res.aux_value.detach()[0, :, 0], res.value.detach()[0, :, 0]
    torch.testing.assert_close(terms["aux_value_loss"].detach(), 0.5 * ((aux_v - ret[0, :, 0])[m] ** 2).mean())
    torch.testing.assert_close(terms["value_loss"].detach(), 0.5 * ((v - ret[0, :, 0])[m] ** 2).mean())
    torch.testing.assert_close(terms["kl"].detach(), want[0][m].mean(), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="old_dist_params has shape"):
        policy.analyze(sample, target="ppg_aux", old_dist_params=old[:, :3])


def test_categorical_kl_with_masked_actions_is_finite() -> None:
    inf = float("inf")
    old = CategoricalDistribution(torch.tensor([[0.0, -inf, 1.0]])).params()
    kl = CategoricalDistribution(torch.tensor([[1.0, -inf, 0.0]])).kl_from(old)
    p = torch.softmax(torch.tensor([0.0, 1.0]), -1)
    q = torch.softmax(torch.tensor([1.0, 0.0]), -1)
    torch.testing.assert_close(kl, (p * (p.log() - q.log())).sum()[None])


def test_phases_versions_and_sync_calls() -> None:
    """Every n_pi-th step adds an auxiliary phase: one more version and aux_epochs * aux_minibatches allreduces."""
    policy = aux_policy()
    batch = batch_for(policy)
    trainer = make_trainer("ppg", policy, n_pi=3, epochs=1, minibatches=2, aux_epochs=2, aux_minibatches=3)
    assert isinstance(trainer, PPGTrainer)
    sync = CountingSync()
    trainer.sync = sync
    versions, calls, kept, phases = [], [], [], []
    for _ in range(6):
        stats = trainer.step(batch).stats
        versions.append(policy.version)
        calls.append(sync.grad_calls)
        kept.append(stats["ppg_kept_batches"])
        phases.append(stats.get("ppg_phase"))
    assert versions == [1, 2, 4, 5, 6, 8]
    assert calls == [2, 4, 12, 14, 16, 24]
    assert kept == [1, 2, 0, 1, 2, 0] and phases == [None, None, 1.0, None, None, 2.0]
    assert trainer.step_count == 6


def test_recurrent_policy_and_empty_minibatches_keep_the_collective_count() -> None:
    """3 sequences in 5 minibatches: 2 are empty on this rank, yet it joins all 5 allreduces per epoch."""
    policy = aux_policy(rnn=1)
    batch = batch_for(policy, t=10, b=3)
    trainer = PPGTrainer(policy, n_pi=1, epochs=1, minibatches=1, aux_epochs=2, aux_minibatches=5, aux_lr=1e-2)
    sync = CountingSync()
    trainer.sync = sync
    before = weights(policy)
    stats = trainer.step(batch).stats
    assert sync.grad_calls == 1 + 2 * 5 and stats["ppg_updates"] == 10.0
    assert policy.version == 2
    assert any(not torch.equal(before[k], w) for k, w in weights(policy).items())


def test_aux_phase_fits_the_aux_head_and_keeps_the_policy_close() -> None:
    policy = aux_policy(seed=5)
    batch = batch_for(policy, t=32, b=8)
    ret, mask = hand_gae_returns(batch, 0.99, 0.95)

    def measure() -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            out = policy.analyze(batch, target="ppo")
            res = policy.analyze(batch, target="ppg_aux")
        return float(np.mean((out.aux_value[:-1, :, 0].numpy() - ret)[mask] ** 2)), res.dist_params

    err0, p0 = measure()
    trainer = PPGTrainer(
        policy, n_pi=1, lr=0.0, aux_lr=1e-2, aux_epochs=8, aux_minibatches=4, beta_clone=1.0, max_grad_norm=None
    )
    trainer.step(batch)
    err1, p1 = measure()
    kl = CategoricalDistribution(p1).kl_from(p0)
    assert err1 < 0.5 * err0
    assert float(kl.mean()) < 1e-3


def _row_bytes() -> int:
    return 4 * 4 + 8 + 4 + 3 * 4  # obs (4 float32) + action (int64) + return (float32) + 3 log-probs (float32)


def test_memory_cap_is_counted_and_enforced() -> None:
    policy = aux_policy()
    batch = batch_for(policy, t=16, b=6)
    per_batch = (16 * 6 - 2) * _row_bytes()  # the decision rows only
    mib = 1024 * 1024
    tight = PPGTrainer(policy, n_pi=4, aux_buffer_mb=(4 * per_batch - 1) / mib)
    with pytest.raises(ValueError, match=r"would take .* MiB \(4 batches of n_pi=4.*trainer\.args\.aux_buffer_mb"):
        tight.step(batch)
    assert policy.version == 0  # refused before any update
    trainer = PPGTrainer(policy, n_pi=4, aux_buffer_mb=4 * per_batch / mib)
    for k in (1, 2):
        trainer.step(batch)
        assert trainer.kept_batches == k and trainer.kept_bytes == k * per_batch
    big = batch_for(policy, t=16, b=24)
    with pytest.raises(ValueError, match="after batch 3 of n_pi=4"):
        trainer.step(big)
    trainer.step(batch)
    trainer.step(batch)
    assert trainer.kept_batches == 0 and trainer.kept_bytes == 0  # the phase ran and let them go


@pytest.mark.parametrize("plain", [False, True])
def test_checkpoint_restores_the_aux_optimizer_and_starts_a_new_phase(plain: bool) -> None:
    policy = aux_policy(seed=1)
    batch = batch_for(policy)
    trainer = PPGTrainer(policy, n_pi=2, seed=4, aux_epochs=2, aux_minibatches=2)
    for _ in range(3):  # one phase done, one batch kept
        trainer.step(batch)
    assert trainer.kept_batches == 1
    p_ckpt, t_ckpt = policy.get_checkpoint(), trainer.get_checkpoint()
    if plain:
        p_ckpt, t_ckpt = _as_plain(p_ckpt), _as_plain(t_ckpt)
    policy2 = aux_policy(seed=9)
    trainer2 = PPGTrainer(policy2, n_pi=2, seed=8, aux_epochs=2, aux_minibatches=2)
    policy2.load_checkpoint(p_ckpt)
    trainer2.load_checkpoint(t_ckpt)
    assert trainer2.kept_batches == 0 and trainer2.step_count == 3
    assert trainer2.step(batch).stats.get("ppg_phase") is None  # a new phase: its aux phase is 2 steps away
    stats = trainer2.step(batch).stats
    assert stats["ppg_phase"] == 2.0
    # the same two steps from the saved state, with the kept batch dropped as a resume does: the same weights
    trainer._kept, trainer._kept_bytes = [], 0
    trainer.step(batch)
    trainer.step(batch)
    w1, w2 = weights(policy), weights(policy2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)


def test_a_policy_without_the_aux_head_is_refused_at_the_first_step() -> None:
    policy = new_policy()
    trainer = PPGTrainer(policy, n_pi=2)
    with pytest.raises(ValueError, match="no auxiliary value head.*auxiliary_head: true"):
        trainer.step(batch_for(policy))
    assert policy.version == 0
    with pytest.raises(ValueError, match="bad n_pi=0"):
        PPGTrainer(policy, n_pi=0)
    with pytest.raises(ValueError, match="bad aux_buffer_mb=0"):
        PPGTrainer(policy, aux_buffer_mb=0)
    with pytest.raises(TypeError, match=r"ppg trainer: unknown argument 'n_pii' \(did you mean 'n_pi'\?\)"):
        PPGTrainer(policy, n_pii=3)
    assert PPGTrainer(policy, epochs=2, target_kl=0.1).epochs == 2  # PPO's arguments pass through


def test_nonfinite_aux_update_is_skipped_or_stops() -> None:
    """A non-finite auxiliary loss (here: a kept batch's targets corrupted after its PPO step) skips the update,
    counted in the stats; with ``nonfinite = "stop"`` it raises, naming the auxiliary phase."""
    from hpcrl.api.trainer import NonFiniteError

    policy = aux_policy()
    batch = batch_for(policy)
    trainer = PPGTrainer(policy, n_pi=2, aux_epochs=1, aux_minibatches=2)
    trainer.step(batch)
    trainer._kept[0]["ret"][:] = float("nan")
    before = weights(policy)
    res = trainer.step(batch)
    assert res.stats["ppg_skipped_updates"] == 2.0 and res.stats["ppg_updates"] == 0.0
    assert policy.version == 2  # the two PPO steps; the phase changed nothing
    assert not res.skipped and res.stats["updates"] > 0
    assert any(not torch.equal(before[k], w) for k, w in weights(policy).items())  # the PPO update only
    trainer.nonfinite = "stop"
    trainer.step(batch)
    trainer._kept[0]["ret"][:] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite auxiliary-phase loss or gradient \(aux_value_loss=nan"):
        trainer.step(batch)
