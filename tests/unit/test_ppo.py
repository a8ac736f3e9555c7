"""PPO / V-trace trainer: updates, minibatching, sync calls, schedules, non-finite handling, checkpoints, learning."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, make, state_to_agent
from hpcrl.api.trainer import GradientSync, NonFiniteError, SampleBatch, TrainerStepResult, TrainingProgress
from hpcrl.api.trainer import make as make_trainer
from hpcrl.policies.actor_critic import ActorCriticPolicy
from hpcrl.policies.random import RandomPolicy
from hpcrl.trainers.adam import FusedAdam, fused_adam_supported, make_adam
from hpcrl.trainers.null import NullTrainer
from hpcrl.trainers.ppo import PPOTrainer
from hpcrl.trainers.returns import gae

STATS = ["policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance", "grad_norm", "lr"]


def batch_for(policy: Any, t: int = 16, b: int = 6, seed: int = 0) -> SampleBatch:
    """A (t + 1, b) batch from the policy on random inputs, with one terminal and one truncated row."""
    rng = np.random.default_rng(seed)
    default = state_to_agent(policy.default_policy_state)
    state = None if default is None else stack([default] * b)
    done, trunc = np.zeros((t + 1, b, 1), bool), np.zeros((t + 1, b, 1), bool)
    done[5, 0] = True
    trunc[9, 1] = True
    rows = []
    for step in range(t + 1):
        on_reset = np.zeros((b, 1), bool)
        on_reset[:, 0] = step == 0
        on_reset[0, 0] |= step == 6
        on_reset[1, 0] |= step == 10
        if state is not None:
            for i in np.flatnonzero(on_reset[:, 0]):
                state[int(i)] = default.apply(lambda x: x[None])  # type: ignore[union-attr]
        obs = NamedArray(obs=rng.standard_normal((b, 4)).astype(np.float32))
        res = policy.rollout(RolloutRequest(obs=obs, policy_state=state, on_reset=on_reset))
        reward = (obs.obs[:, :1] > 0).astype(np.float32) * (~on_reset)
        rows.append(
            SampleBatch(
                obs=obs,
                policy_state=state,
                action=res.action,
                analyzed_result=res.analyzed_result,
                reward=reward,
                done=done[step],
                truncated=trunc[step],
                policy_version=np.full((b, 1), policy.version, np.int64),
                on_reset=on_reset,
            )
        )
        state = res.policy_state
    return stack(rows)


def new_policy(rnn: int = 0, seed: int = 0, **kw: Any) -> ActorCriticPolicy:
    policy = make("actor-critic-separate", obs_dim=4, action_dim=3, hidden_dim=16, num_rnn_layers=rnn, seed=seed, **kw)
    assert isinstance(policy, ActorCriticPolicy)
    return policy


def weights(policy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


class CountingSync(GradientSync):
    """Stands in for a sync over 2 trainer ranks (one rank: the trainer does not ask for agreement)."""

    world_size = 2

    def __init__(self) -> None:
        self.grad_calls = 0
        self.mean_calls: list[float] = []

    def allreduce_gradients(self, params: Any) -> None:
        params = list(params)
        assert params and all(isinstance(p, torch.Tensor) for p in params)
        self.grad_calls += 1

    def allreduce_mean(self, values: np.ndarray) -> np.ndarray:
        self.mean_calls.append(float(np.asarray(values)[0]))
        return np.asarray(values, dtype=np.float64)


@pytest.mark.parametrize("rnn", [0, 1])
@pytest.mark.parametrize("kind", ["ppo", "vtrace"])
def test_step_updates_weights_version_and_reports_stats(rnn: int, kind: str) -> None:
    policy = new_policy(rnn)
    batch = batch_for(policy)
    trainer = make_trainer(kind, policy, value_clip=0.2, entropy_coef=0.01)
    before = weights(policy)
    result = trainer.step(batch)
    assert isinstance(result, TrainerStepResult) and not result.skipped
    assert result.step == 1 and policy.version == 1
    after = weights(policy)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for k in STATS:
        assert isinstance(result.stats[k], float) and np.isfinite(result.stats[k]), k
    assert result.stats["skipped_updates"] == 0.0 and result.stats["updates"] == 16.0
    assert result.stats["frames"] == 16 * 6
    assert trainer.step(batch).step == 2 and policy.version == 2


def test_step_improves_the_objective_on_a_fixed_batch() -> None:
    policy = new_policy()
    batch = batch_for(policy, t=32, b=8)
    t = torch.from_numpy
    reward, value = t(batch.reward), t(batch.analyzed_result.value)
    done, trunc = t(batch.done[..., 0]), t(batch.truncated[..., 0])
    adv, ret = gae(reward, value, done, trunc, 0.99, 0.95)
    mask = ~(done[:-1] | trunc[:-1])
    a = adv[..., 0][mask]
    a = (a - a.mean()) / (a.std() + 1e-8)
    old_lp = t(batch.analyzed_result.log_prob[:-1, ..., 0])[mask]

    def objective() -> tuple[float, float]:
        with torch.no_grad():
            out = policy.analyze(batch)
        ratio = (out.log_prob[:-1][mask] - old_lp).exp()
        return float(-(ratio * a).mean()), float(((out.value[:-1] - ret) ** 2)[mask].mean())

    pg0, v0 = objective()
    assert abs(pg0) < 1e-5  # ratio 1 before any update
    trainer = PPOTrainer(policy, lr=3e-3, epochs=4)
    trainer.step(batch)
    pg1, v1 = objective()
    assert pg1 < pg0 - 1e-4
    assert v1 < v0


@pytest.mark.parametrize("rnn", [0, 1])
def test_minibatches_and_sync_calls(rnn: int) -> None:
    policy = new_policy(rnn)
    batch = batch_for(policy, t=16, b=6)
    shapes: list[tuple[int, ...]] = []
    analyze = policy.analyze

    def spy(sample: Any, target: str = "ppo", **kw: Any) -> Any:
        shapes.append(tuple(sample.action.x.shape))
        return analyze(sample, target, **kw)

    policy.analyze = spy  # type: ignore[method-assign]
    trainer = PPOTrainer(policy, epochs=3, minibatches=4)
    sync = CountingSync()
    trainer.sync = sync
    trainer.step(batch)
    assert sync.grad_calls == 12  # exactly once per minibatch
    assert len(sync.mean_calls) == 12 and all(v == 0.0 for v in sync.mean_calls)  # agreed non-finite flags
    if rnn:  # whole sequences: all 17 rows, columns split 2/2/1/1
        assert len(shapes) == 12 and all(s[0] == 17 for s in shapes)
        assert sorted(s[1] for s in shapes[:4]) == [1, 1, 2, 2]
    else:  # flattened (t, b) rows: 96 rows in 4 minibatches of 24, less the 2 non-decision rows (done, truncated)
        assert len(shapes) == 12 and all(s[0] == 1 and 22 <= s[1] <= 24 for s in shapes)
        assert [sum(s[1] for s in shapes[i : i + 4]) for i in (0, 4, 8)] == [94, 94, 94]


def test_one_rank_sync_is_not_asked_to_agree_per_minibatch() -> None:
    policy = new_policy()
    batch = batch_for(policy)
    sync = CountingSync()
    sync.world_size = 1
    trainer = PPOTrainer(policy, epochs=2, minibatches=3)
    trainer.sync = sync
    result = trainer.step(batch)
    assert sync.grad_calls == 6 and sync.mean_calls == [] and result.stats["updates"] == 6.0
    # non-finite updates are still detected (and skipped) locally
    result = trainer.step(_nan_batch(policy))
    assert result.skipped and result.stats["skipped_updates"] == 6.0 and sync.mean_calls == []


def test_kl_early_stop_goes_through_allreduce_mean() -> None:
    policy = new_policy()
    batch = batch_for(policy)
    trainer = PPOTrainer(policy, lr=1e-2, epochs=5, minibatches=2, target_kl=1e-9)
    sync = CountingSync()
    trainer.sync = sync
    result = trainer.step(batch)
    assert result.stats["epochs"] == 1.0 and result.stats["updates"] == 2.0
    assert len(sync.mean_calls) == 3 and sync.mean_calls[-1] > 1e-9  # 2 flags + the epoch's KL

    class OtherRankSaysStop(CountingSync):
        def allreduce_mean(self, values: np.ndarray) -> np.ndarray:
            super().allreduce_mean(values)
            return np.asarray(values, np.float64) if len(self.mean_calls) % 3 else np.array([1e9])

    trainer = PPOTrainer(new_policy(), epochs=5, minibatches=2, target_kl=10.0)
    trainer.sync = OtherRankSaysStop()
    assert trainer.step(batch).stats["epochs"] == 1.0


def test_schedules_follow_training_progress_not_the_step_count() -> None:
    policy = new_policy()
    batch = batch_for(policy)
    trainer = PPOTrainer(
        policy,
        lr=1e-3,
        entropy_coef=0.01,
        clip=0.2,
        lr_schedule="linear",
        entropy_schedule="linear",
        clip_schedule="linear",
        epochs=2,
        minibatches=1,
    )
    assert trainer.progress == TrainingProgress(0, 0)  # before the system sets it: the start values
    fractions = [0.0, 0.25, 0.25, 0.9, 1.0, 1.0]  # the same progress twice: the same values (no step count)
    got, clipped = [], []
    for frames in (0, 250, 250, 900, 1000, 1500):
        trainer.progress = TrainingProgress(frames, 1000)
        stats = trainer.step(batch).stats
        got += [stats["lr"], stats["entropy_coef"], stats["clip"]]
        clipped.append(stats["clip_fraction"])
        assert trainer.optimizer.param_groups[0]["lr"] == stats["lr"]  # the optimizer used what is reported
    assert got == pytest.approx([v * (1 - f) for f in fractions for v in (1e-3, 0.01, 0.2)])
    # the scheduled clip is the one applied: the policy has moved since the batch was made, so at clip 0
    # (the budget spent) every row counts as clipped, and at the start (clip 0.2) few do
    assert clipped[-2:] == [1.0, 1.0] and clipped[0] < 0.5, clipped

    constant = PPOTrainer(new_policy(), lr=1e-3, entropy_coef=0.01, clip=0.2, epochs=1, minibatches=1)
    constant.progress = TrainingProgress(900, 1000)
    stats = constant.step(batch_for(constant.policy)).stats
    assert (stats["lr"], stats["entropy_coef"], stats["clip"]) == (1e-3, 0.01, 0.2)


def test_schedule_arguments_are_checked_and_total_steps_is_refused() -> None:
    policy = new_policy()
    for name in ("lr_schedule", "entropy_schedule", "clip_schedule"):
        with pytest.raises(ValueError, match=rf"ppo trainer: bad {name}='cosine'; expected one of 'constant', 'lin"):
            PPOTrainer(policy, **{name: "cosine"})
    # a trainer-step horizon would depend on the rank layout: refused with a message naming the key
    spec = config.Trainer(type_="ppo", args={"lr_schedule": "linear", "total_steps": 100})
    with pytest.raises(ValueError, match=r"total_steps=100 is not supported.*remove trainer.args.total_steps"):
        make_trainer(spec, policy)


def test_seeded_step_is_deterministic() -> None:
    results = []
    for trainer_seed in (5, 5, 6):
        policy = new_policy(seed=2)
        batch = batch_for(policy, seed=3)
        PPOTrainer(policy, seed=trainer_seed).step(batch)
        results.append(weights(policy))
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert not all(torch.equal(results[0][k], results[2][k]) for k in results[0])


def _as_plain(x: Any) -> Any:
    """What a file format might hand back: numpy arrays, string keys, lists."""
    if isinstance(x, torch.Tensor):
        return x.numpy()
    if isinstance(x, dict):
        return {str(k): _as_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_as_plain(v) for v in x]
    return x


@pytest.mark.parametrize("plain", [False, True])
def test_checkpoint_round_trip(plain: bool) -> None:
    policy = new_policy(rnn=1, seed=1)
    batch = batch_for(policy)
    trainer = PPOTrainer(policy, seed=4)
    trainer.step(batch)
    p_ckpt, t_ckpt = policy.get_checkpoint(), trainer.get_checkpoint()
    if plain:
        p_ckpt, t_ckpt = _as_plain(p_ckpt), _as_plain(t_ckpt)
    policy2 = new_policy(rnn=1, seed=77)
    trainer2 = PPOTrainer(policy2, seed=99)
    policy2.load_checkpoint(p_ckpt)
    trainer2.load_checkpoint(t_ckpt)
    assert policy2.version == 1 and trainer2.step_count == 1
    trainer.step(batch)
    trainer2.step(batch)
    w1, w2 = weights(policy), weights(policy2)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    o1, o2 = policy.analyze(batch), policy2.analyze(batch)
    torch.testing.assert_close(o1.log_prob, o2.log_prob, rtol=0, atol=0)


def _nan_batch(policy: Any) -> SampleBatch:
    batch = batch_for(policy)
    batch.reward[:] = np.nan
    return batch


def test_nonfinite_skip_mode() -> None:
    policy = new_policy(rnn=1)
    trainer = PPOTrainer(policy, epochs=2, minibatches=3)
    before = weights(policy)
    result = trainer.step(_nan_batch(policy))
    assert result.skipped and result.stats["skipped_updates"] == 6.0 and result.stats["updates"] == 0.0
    assert policy.version == 0 and result.step == 0
    after = weights(policy)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # one bad sequence: only the minibatches holding it are skipped, and the step counts
    batch = batch_for(policy)
    batch.reward[3, 2, 0] = np.nan
    result = trainer.step(batch)
    assert not result.skipped and result.stats["skipped_updates"] == 2.0 and result.stats["updates"] == 4.0
    assert result.step == 1 and policy.version == 1
    assert all(np.isfinite(v) for v in result.stats.values())


def test_nonfinite_stop_mode_names_the_loss_term() -> None:
    policy = new_policy()
    trainer = PPOTrainer(policy)
    trainer.nonfinite = "stop"
    with pytest.raises(NonFiniteError, match=r"non-finite (policy_loss|value_loss)"):
        trainer.step(_nan_batch(policy))
    assert policy.version == 0

    class BadGradient(GradientSync):
        def allreduce_gradients(self, params: Any) -> None:
            next(iter(params)).grad.fill_(float("inf"))

    trainer.sync = BadGradient()
    with pytest.raises(NonFiniteError, match="gradient of parameter 'actor"):
        trainer.step(batch_for(policy))


def test_auxiliary_head_loss_is_reported() -> None:
    policy = new_policy(auxiliary_head=True)
    result = PPOTrainer(policy).step(batch_for(policy))
    assert np.isfinite(result.stats["aux_value_loss"])


def test_vtrace_on_stale_samples() -> None:
    policy = new_policy()
    stale = batch_for(policy, seed=1)
    ppo = PPOTrainer(policy, lr=1e-2)
    for _ in range(3):
        ppo.step(batch_for(policy, seed=2))
    trainer = make_trainer("vtrace", policy, vtrace_rho=1.0, vtrace_c=0.9)
    assert isinstance(trainer, PPOTrainer) and trainer.vtrace
    result = trainer.step(stale)
    assert result.stats["approx_kl"] > 0 and np.isfinite(result.stats["value_loss"])


def test_trainer_needs_parameters_and_fields() -> None:
    with pytest.raises(TypeError, match="trainable torch parameters; RandomPolicy"):
        make_trainer("ppo", RandomPolicy())
    with pytest.raises(TypeError, match="ppo"):
        make_trainer("ppo", new_policy(), learning_rate=1.0)
    policy = new_policy()
    batch = batch_for(policy)
    batch.analyzed_result = NamedArray(value=batch.analyzed_result.value)
    with pytest.raises(ValueError, match="log_prob"):
        PPOTrainer(policy).step(batch)


def test_null_trainer_with_random_policy() -> None:
    policy = RandomPolicy(action_dim=3)
    trainer = make_trainer("null", policy)
    assert isinstance(trainer, NullTrainer)
    batch = SampleBatch(obs=NamedArray(obs=np.zeros((9, 4, 2))), reward=np.zeros((9, 4, 1)))
    result = trainer.step(batch)
    assert result.stats == {"frames": 32.0} and result.step == 1 and policy.version == 1


# ---------------------------------------------------------------------- learning smoke test
def cartpole_fragments(
    policy: Any, n_envs: int = 8, t: int = 128, seed: int = 0
) -> Iterator[tuple[SampleBatch, list[int]]]:
    """Yield ``(t + 1, n_envs)`` fragments on hpcrl's row convention plus the episode lengths finished meanwhile."""
    envs = [gym.make("CartPole-v1") for _ in range(n_envs)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]).astype(np.float32)
    rew, done, trunc = np.zeros((n_envs, 1), np.float32), np.zeros((n_envs, 1), bool), np.zeros((n_envs, 1), bool)
    reset, ep_len, lengths, last = np.ones((n_envs, 1), bool), np.zeros(n_envs, int), [], None
    while True:
        rows = [last] if last is not None else []  # consecutive fragments overlap by one row
        while len(rows) < t + 1:
            o = NamedArray(obs=obs)
            r = policy.rollout(RolloutRequest(obs=o, is_evaluation=np.zeros((n_envs, 1), bool), on_reset=reset))
            rows.append(
                SampleBatch(obs=o, action=r.action, analyzed_result=r.analyzed_result, reward=rew, done=done,
                            truncated=trunc, on_reset=reset, policy_version=np.full((n_envs, 1), policy.version))
            )  # fmt: skip
            obs, rew, done, trunc, reset = obs.copy(), rew.copy(), done.copy(), trunc.copy(), reset.copy()
            for i, env in enumerate(envs):
                if done[i, 0] or trunc[i, 0]:  # that row was not a decision: reset instead of stepping
                    lengths.append(int(ep_len[i]))
                    ep_len[i] = 0
                    obs[i], rew[i], done[i], trunc[i], reset[i] = env.reset()[0], 0.0, False, False, True
                else:
                    obs[i], rew[i, 0], done[i, 0], trunc[i, 0], _ = env.step(int(r.action.x[i]))
                    reset[i], ep_len[i] = False, ep_len[i] + 1
        last = rows[-1]
        yield stack(rows), lengths
        lengths = []


def test_ppo_learns_cartpole() -> None:
    policy = make("actor-critic-separate", obs_dim=4, action_dim=2, seed=1)
    trainer = make_trainer("ppo", policy, lr=1e-3, seed=1)
    frames, history, best = 0, [], 0.0
    for batch, lengths in cartpole_fragments(policy, seed=10):
        history += lengths
        frames += 8 * 128
        trainer.step(batch)
        if len(history) >= 20:
            best = max(best, float(np.mean(history[-20:])))
        if best > 100 or frames >= 50_000:
            break
    assert best > 100, f"mean episode length {best:.1f} after {frames} frames"


def test_multi_dimensional_value_head() -> None:
    policy = new_policy(value_dim=2)
    result = PPOTrainer(policy).step(batch_for(policy))
    assert not result.skipped and np.isfinite(result.stats["value_loss"])


# ---------------------------------------------------------------------- the lean fused Adam
needs_fused = pytest.mark.skipif(
    not fused_adam_supported(torch.device("cpu"), torch.float32), reason="no fused Adam kernel on CPU in this torch"
)


def _adam_pair(lr: float = 3e-3) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter], Any, Any]:
    g = torch.Generator().manual_seed(0)
    pa = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(16, 4), (16,), (3, 16), (3,)]]
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    return pa, pb, torch.optim.Adam(pa, lr=lr, eps=1e-5, fused=True), make_adam(pb, lr=lr, eps=1e-5)


def _adam_steps(pa: list[Any], pb: list[Any], oa: Any, ob: Any, n: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for step in range(n):
        for i, (a, b) in enumerate(zip(pa, pb)):
            grad = torch.randn(a.shape, generator=g)
            a.grad, b.grad = (None, None) if (step, i) == (2, 1) else (grad.clone(), grad.clone())
        for opt in (oa, ob):
            opt.param_groups[0]["lr"] = 3e-3 * (1 - step / (2 * n))
            opt.step()


@needs_fused
def test_fused_adam_is_bitwise_torch_adam_and_shares_its_state_dict_layout() -> None:
    pa, pb, oa, ob = _adam_pair()
    assert isinstance(ob, FusedAdam)
    _adam_steps(pa, pb, oa, ob, 6, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    sa, sb = oa.state_dict(), ob.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for i in sa["state"] for k in ("step", "exp_avg"))
    # checkpoints move both ways between the implementations
    pc, pd, oc, od = _adam_pair()
    for dst, src in ((pc, pa), (pd, pb)):
        with torch.no_grad():
            for p, q in zip(dst, src):
                p.copy_(q)
    oc.load_state_dict(_clone(sb))
    od.load_state_dict(_clone(sa))
    _adam_steps(pc, pd, oc, od, 3, seed=2)
    _adam_steps(pa, pb, oa, ob, 3, seed=2)
    assert all(torch.equal(a, b) and torch.equal(c, a) and torch.equal(d, a) for a, b, c, d in zip(pa, pb, pc, pd))


def _clone(sd: dict[str, Any]) -> dict[str, Any]:
    return {
        "state": {i: {k: v.clone() for k, v in st.items()} for i, st in sd["state"].items()},
        "param_groups": [dict(g) for g in sd["param_groups"]],
    }


@needs_fused
def test_fused_adam_rejects_mismatched_state() -> None:
    *_, ob = _adam_pair()
    other = FusedAdam([torch.nn.Parameter(torch.zeros(5))])
    with pytest.raises(ValueError, match="parameter groups of sizes \\[1\\]"):
        ob.load_state_dict(other.state_dict())
    bad = ob.state_dict()
    bad["state"] = {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4), "exp_avg_sq": torch.zeros(4)}}
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(4,\), expected \(16, 4\)"):
        ob.load_state_dict(bad)
    with pytest.raises(ValueError, match="one device with one dtype"):
        FusedAdam([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))])


@needs_fused
def test_ppo_trainer_does_not_import_torch_dynamo(clean_env: dict[str, str]) -> None:
    code = (
        "import sys\n"
        "from hpcrl.api.policy import make\n"
        "from hpcrl.trainers.ppo import PPOTrainer\n"
        "from hpcrl.trainers.adam import FusedAdam\n"
        "p = make('actor-critic-separate', obs_dim=4, action_dim=2)\n"
        "t = PPOTrainer(p)\n"
        "assert isinstance(t.optimizer, FusedAdam), type(t.optimizer)\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, cwd=Path(__file__).resolve().parents[2], env=clean_env
    )


def test_approx_kl_last_epoch_is_stable_baselines3s_convention() -> None:
    """SB3 logs the mean KL of the last epoch only; ``approx_kl`` averages every update.

    With 2 epochs of one minibatch, the first update starts at the behaviour policy (KL exactly 0),
    so the all-update mean is half of the last epoch's.
    """
    policy = new_policy()
    trainer = make_trainer("ppo", policy, epochs=2, minibatches=1, lr=1e-2)
    stats = trainer.step(batch_for(policy)).stats
    assert stats["updates"] == 2.0
    assert stats["approx_kl_last_epoch"] > 0.0
    assert stats["approx_kl_last_epoch"] == pytest.approx(2 * stats["approx_kl"], rel=1e-6)
