"""Observation normalisation in the actor-critic policy and reward normalisation in the PPO trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcrl.api import config
from hpcrl.api.data import RolloutRequest, SampleBatch
from hpcrl.api.environment import Action
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import make
from hpcrl.comm.params import published_copy
from hpcrl.policies.actor_critic import RolloutAnalysis
from hpcrl.policies.running_stats import RunningMoments, batch_moments
from hpcrl.storage.checkpoint import load_checkpoint, save_checkpoint
from hpcrl.trainers.ppo import PPOTrainer
from hpcrl.trainers.reward_norm import RewardNormalizer

OBS = 3


def policy(**kw: Any) -> Any:
    args = dict(obs_dim=OBS, action_dim=2, hidden_dim=16, normalize_obs=True, seed=3)
    args.update(kw)
    return make(config.Policy(type_="actor-critic-separate", args=args))


def batch(rng: np.random.Generator, t: int = 8, b: int = 3, ends: tuple[tuple[int, int, str], ...] = ()) -> SampleBatch:
    """A ``T + 1``-row batch of random obs (mean 5, std 3) and rewards; ``ends``: (row, col, "done"|"truncated")."""
    done = np.zeros((t + 1, b, 1), bool)
    trunc = np.zeros((t + 1, b, 1), bool)
    for row, col, kind in ends:
        (done if kind == "done" else trunc)[row, col] = True
    return SampleBatch(
        obs=NamedArray(obs=(rng.normal(5.0, 3.0, (t + 1, b, OBS))).astype(np.float32)),
        action=Action(x=rng.integers(0, 2, (t + 1, b)).astype(np.int64)),
        analyzed_result=RolloutAnalysis(
            log_prob=np.full((t + 1, b, 1), np.log(0.5), np.float32),
            value=rng.normal(0.0, 1.0, (t + 1, b, 1)).astype(np.float32),
        ),
        reward=rng.normal(1.0, 2.0, (t + 1, b, 1)).astype(np.float32),
        done=done,
        truncated=trunc,
    )


def decision_rows(sb: SampleBatch) -> np.ndarray:
    t = sb.done.shape[0] - 1
    mask = ~(sb.done[:t, :, 0] | sb.truncated[:t, :, 0])
    return np.asarray(sb.obs.obs[:t][mask], np.float64)


# ---------------------------------------------------------------------------------------------- running moments


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_merged_batches_equal_the_moments_of_all_rows(sizes: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 20), (n, 2)) for n in sizes]
    stats = RunningMoments((2,))
    for part in parts:
        n, (mean,), (var,) = batch_moments([part])
        stats.update(n, mean, var)
    rows = np.concatenate(parts)
    assert stats.count == len(rows)
    if len(rows):
        np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats.var, rows.var(0), rtol=1e-9, atol=1e-10)
    else:
        assert stats.mean.tolist() == [0.0, 0.0] and stats.var.tolist() == [1.0, 1.0]


def test_policy_stats_are_the_moments_of_every_decision_row_seen() -> None:
    """Three batches, with a termination and a truncation inside: terminal rows and each bootstrap row T are
    left out (row T is row 0 of the next fragment)."""
    rng = np.random.default_rng(0)
    p = policy()
    seen = []
    for ends in ((), ((3, 0, "done"), (6, 2, "truncated")), ((0, 1, "done"),)):
        sb = batch(rng, ends=ends)
        p.update_normalizer(sb)
        seen.append(decision_rows(sb))
    rows = np.concatenate(seen)
    assert len(rows) == 3 * 8 * 3 - 3
    s = p.obs_normalizer.state()["obs"]
    assert float(s["count"]) == len(rows)
    np.testing.assert_allclose(s["mean"], rows.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["var"], rows.var(0), rtol=1e-12)


def test_rollout_and_analyze_act_on_clipped_normalised_inputs() -> None:
    """A normalising policy acts exactly as the same weights without normalisation on (obs - mean) / std,
    clipped to obs_clip (here one feature is 1000 std away)."""
    rng = np.random.default_rng(1)
    p = policy(obs_clip=5.0)
    p.update_normalizer(batch(rng))
    s = p.obs_normalizer.state()["obs"]
    plain = policy(normalize_obs=False)
    plain.load_state_dict({k: v for k, v in p.state_dict().items() if not k.startswith("obs_normalizer.")})
    obs = rng.normal(5.0, 3.0, (6, OBS)).astype(np.float32)
    obs[0, 1] = 5.0 + 1000 * float(np.sqrt(s["var"][1]))
    manual = ((obs - s["mean"]) / np.sqrt(s["var"] + 1e-8)).clip(-5.0, 5.0).astype(np.float32)
    assert manual[0, 1] == 5.0
    ev = np.ones((6, 1), bool)
    a = p.rollout(RolloutRequest(obs=NamedArray(obs=obs), is_evaluation=ev))
    b = plain.rollout(RolloutRequest(obs=NamedArray(obs=manual), is_evaluation=ev))
    np.testing.assert_allclose(a.analyzed_result.value, b.analyzed_result.value, rtol=1e-6)
    np.testing.assert_array_equal(a.action.x, b.action.x)
    sb = SampleBatch(obs=NamedArray(obs=obs[None]), action=NamedArray(x=a.action.x[None]))
    got = p.analyze(sb).value
    want = plain.analyze(SampleBatch(obs=NamedArray(obs=manual[None]), action=NamedArray(x=a.action.x[None]))).value
    torch.testing.assert_close(got, want)


def test_stats_travel_with_published_weights_and_checkpoints(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    p = policy()
    p.update_normalizer(batch(rng))
    want = p.obs_normalizer.state()["obs"]
    sub = policy()  # a subscriber: fresh stats until the published weights arrive
    sub.load_state_dict(published_copy(p.state_dict()))
    path = save_checkpoint(tmp_path / "c.h5", {"policy": p.get_checkpoint()}, {"version": 0})
    tree, _ = load_checkpoint(path)
    resumed = policy()
    resumed.load_checkpoint(tree["policy"])
    for other in (sub, resumed):
        got = other.obs_normalizer.state()["obs"]
        for k in ("count", "mean", "var"):
            assert np.array_equal(got[k], want[k]), k
            assert got[k].dtype == np.float64


def test_a_checkpoint_without_stats_does_not_load_into_a_normalising_policy() -> None:
    with pytest.raises(RuntimeError, match="obs_normalizer.stats.obs.mean"):
        policy().load_checkpoint(policy(normalize_obs=False).get_checkpoint())


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"obs_norm_keys": ["pos"]}, "obs_norm_keys names 'pos', which is not an input of the policy"),
        ({"obs_dim": {"obs": [3, 8, 8]}}, "input 'obs' of shape (3, 8, 8): observation normalisation applies to"),
        ({"normalize_obs": False, "obs_norm_keys": ["obs"]}, "obs_norm_keys=['obs'] is given but normalize_obs is"),
        ({"obs_clip": 0.0}, "obs_clip must be a positive number, got 0.0"),
        ({"obs_norm_keys": "obs"}, "obs_norm_keys must be a list of input names"),
    ],
)
def test_bad_normalisation_arguments_are_named(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        policy(**kw)


def test_only_the_named_vector_inputs_are_normalised() -> None:
    rng = np.random.default_rng(4)
    p = policy(obs_dim={"obs": 3, "extra": 2}, obs_norm_keys=["extra"])
    assert p.obs_normalizer.keys == ["extra"]
    obs = NamedArray(obs=np.full((2, 3, 3), 7.0, np.float32), extra=rng.normal(4, 2, (2, 3, 2)).astype(np.float32))
    sb = SampleBatch(obs=obs, done=np.zeros((2, 3, 1), bool), truncated=np.zeros((2, 3, 1), bool))
    p.update_normalizer(sb)
    inputs = p._inputs(NamedArray(obs=obs.obs[0], extra=obs.extra[0]))
    assert torch.equal(inputs["obs"], torch.from_numpy(obs.obs[0]))  # untouched
    extra = inputs["extra"].numpy()  # the rows the stats were taken from: mean 0, variance 1
    np.testing.assert_allclose(extra.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(extra.var(0), 1.0, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- rewards


def independent_returns(reward: np.ndarray, done: np.ndarray, trunc: np.ndarray, gamma: float) -> np.ndarray:
    """Per column, split rows into episodes at done/truncated rows; discount forward within each piece."""
    t = reward.shape[0] - 1
    values = []
    for col in range(reward.shape[1]):
        acc = None
        for row in range(t):
            if done[row, col] or trunc[row, col]:
                acc = None  # the transition from a terminal row is not taken
                continue
            acc = reward[row + 1, col] if acc is None else gamma * acc + reward[row + 1, col]
            values.append(acc)
    return np.array(values, np.float64)


def test_reward_normalisation_against_numpy_with_a_termination_inside() -> None:
    """T = 6, B = 2; column 0 terminates at row 3 (its next row is a reset), column 1 is truncated at row 5."""
    rng = np.random.default_rng(5)
    gamma = 0.9
    reward = rng.normal(2.0, 3.0, (7, 2, 1)).astype(np.float32)
    done = np.zeros((7, 2), bool)
    trunc = np.zeros((7, 2), bool)
    done[3, 0] = True
    trunc[5, 1] = True
    norm = RewardNormalizer(gamma, clip=1.5)
    out = norm.normalize(torch.from_numpy(reward), torch.from_numpy(done), torch.from_numpy(trunc))
    rets = independent_returns(reward[:, :, 0].astype(np.float64), done, trunc, gamma)
    assert len(rets) == 12 - 2
    want = np.clip(reward / np.sqrt(rets.var() + 1e-8), -1.5, 1.5)
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6)
    assert 0 < int((out.abs() == 1.5).sum()) < 14  # some rewards are clipped, not all
    assert float(norm.state()["count"]) == 0  # staged until commit
    norm.commit()
    st_ = norm.state()
    assert float(st_["count"]) == 10 and np.allclose(st_["var"], [rets.var()], rtol=1e-12)
    # a second batch merges into the first
    reward2 = rng.normal(-1.0, 1.0, (7, 2, 1)).astype(np.float32)
    none = np.zeros((7, 2), bool)
    norm.normalize(torch.from_numpy(reward2), torch.from_numpy(none), torch.from_numpy(none))
    norm.commit()
    both = np.concatenate([rets, independent_returns(reward2[:, :, 0].astype(np.float64), none, none, gamma)])
    np.testing.assert_allclose(norm.state()["var"], [both.var()], rtol=1e-10)
    np.testing.assert_allclose(norm.state()["mean"], [both.mean()], rtol=1e-10)


def test_ppo_targets_use_normalised_rewards_and_the_step_keeps_the_stats() -> None:
    rng = np.random.default_rng(6)
    sb = batch(rng, ends=((3, 0, "done"), (5, 1, "truncated")))
    p = policy(normalize_obs=False)
    tr = PPOTrainer(p, gamma=0.95, normalize_rewards=True, epochs=1, minibatches=2)
    d = tr._prepare(sb)
    done, trunc = sb.done[:, :, 0], sb.truncated[:, :, 0]
    rets = independent_returns(sb.reward[:, :, 0].astype(np.float64), done, trunc, 0.95)
    want = np.clip(sb.reward / np.sqrt(rets.var() + 1e-8), -10, 10)
    np.testing.assert_allclose(d["reward"].numpy(), want, rtol=1e-6)
    result = tr.step(sb)
    ck = tr.get_checkpoint()["reward_norm"]
    assert float(ck["count"]) == len(rets)
    np.testing.assert_allclose(ck["var"], [rets.var()], rtol=1e-12)
    assert result.stats["reward_scale"] == pytest.approx(np.sqrt(rets.var() + 1e-8))


def make_pair(seed: int = 0) -> tuple[Any, PPOTrainer]:
    p = policy(seed=seed)
    return p, PPOTrainer(p, normalize_rewards=True, epochs=2, minibatches=2, seed=seed)


def test_a_resumed_trainer_equals_the_uninterrupted_one(tmp_path: Path) -> None:
    """Four steps straight vs two steps, an HDF5 checkpoint, fresh objects, two more steps: the same weights,
    observation stats and reward stats, bit for bit."""
    rng = np.random.default_rng(7)
    batches = [batch(rng, ends=((2 + i, i % 3, "done"),)) for i in range(4)]
    p1, t1 = make_pair()
    for sb in batches:
        t1.step(sb)
    p2, t2 = make_pair()
    for sb in batches[:2]:
        t2.step(sb)
    path = save_checkpoint(tmp_path / "c.h5", {"policy": p2.get_checkpoint(), "trainer": t2.get_checkpoint()}, {})
    tree, _ = load_checkpoint(path)
    p3, t3 = make_pair()
    p3.load_checkpoint(tree["policy"])
    t3.load_checkpoint(tree["trainer"])
    for sb in batches[2:]:
        t3.step(sb)
    a, b = p1.state_dict(), p3.state_dict()
    assert a.keys() == b.keys() and any(k.startswith("obs_normalizer.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ra, rb = t1.get_checkpoint()["reward_norm"], t3.get_checkpoint()["reward_norm"]
    for k in ("count", "mean", "var"):
        assert np.array_equal(ra[k], rb[k]), k
    assert float(a["obs_normalizer.stats.obs.count"]) == sum(len(decision_rows(sb)) for sb in batches)


def test_a_skipped_step_changes_no_stats() -> None:
    """A batch with a NaN reward gives a non-finite loss: the step is skipped and neither the observation nor
    the reward statistics take the batch (the NaN does not poison them)."""
    rng = np.random.default_rng(8)
    p, t = make_pair()
    t.step(batch(rng))
    before_obs = p.obs_normalizer.state()["obs"]
    before_rew = t.get_checkpoint()["reward_norm"]
    bad = batch(rng)
    bad.reward[4, 1, 0] = np.nan
    result = t.step(bad)
    assert result.skipped
    after_obs = p.obs_normalizer.state()["obs"]
    after_rew = t.get_checkpoint()["reward_norm"]
    for k in ("count", "mean", "var"):
        assert np.array_equal(after_obs[k], before_obs[k]) and np.array_equal(after_rew[k], before_rew[k]), k
    t.step(batch(rng))  # and the next good batch merges as usual
    assert float(t.get_checkpoint()["reward_norm"]["count"]) == 2 * 8 * 3


def test_a_trainer_checkpoint_without_reward_stats_starts_them_afresh(caplog: pytest.LogCaptureFixture) -> None:
    _, old = make_pair()
    plain = old.get_checkpoint()
    del plain["reward_norm"]
    _, t = make_pair()
    t.load_checkpoint(plain)
    assert "the checkpoint has no reward normalisation stats; starting them afresh" in caplog.text
    assert t.get_checkpoint()["reward_norm"] == {}  # as before any batch
    caplog.clear()
    t.load_checkpoint(make_pair()[1].get_checkpoint())  # a trainer that never stepped: nothing to warn about
    assert "reward normalisation" not in caplog.text


def test_a_policy_that_acted_uses_stats_that_arrive_or_change_later() -> None:
    """Published stats loaded into a policy that already acted, and a later update, take effect at once."""
    rng = np.random.default_rng(9)
    req = RolloutRequest(obs=NamedArray(obs=rng.normal(5.0, 3.0, (4, OBS)).astype(np.float32)))
    sub, trained = policy(), policy()
    before = sub.rollout(req).analyzed_result.value
    trained.update_normalizer(batch(rng))
    sub.load_state_dict(published_copy(trained.state_dict()))
    now = sub.rollout(req).analyzed_result.value
    assert not np.array_equal(now, before)
    np.testing.assert_array_equal(now, trained.rollout(req).analyzed_result.value)
    more = batch(rng)
    for p in (sub, trained):
        p.update_normalizer(more)
    np.testing.assert_array_equal(sub.rollout(req).analyzed_result.value, trained.rollout(req).analyzed_result.value)
    fresh = policy()
    fresh.load_state_dict(published_copy(trained.state_dict()))
    np.testing.assert_array_equal(sub.rollout(req).analyzed_result.value, fresh.rollout(req).analyzed_result.value)
