"""Recurrent policies: the LSTM state, replay of real actor fragments, chunked training (chunk_len), burn_in."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from hpcrl.acting import rings
from hpcrl.acting.inline import InlineLoop
from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, make, state_to_agent
from hpcrl.api.trainer import SampleBatch
from hpcrl.comm.schema import Schema
from hpcrl.policies.actor_critic import (
    ActorCriticLSTMState,
    ActorCriticPolicy,
    ActorCriticState,
    SeparateActorCriticLSTMState,
    SeparateActorCriticState,
)
from hpcrl.runtime import components
from hpcrl.testing import test_pipeline
from hpcrl.trainers.chunks import chunk_batch, split_time
from hpcrl.trainers.ppo import PPOTrainer

VARIANTS = ["actor-critic-separate", "actor-critic-shared"]


def new_policy(variant: str = "actor-critic-separate", rnn_type: str = "lstm", seed: int = 0, **kw: Any) -> Any:
    args = dict(obs_dim=4, action_dim=3, hidden_dim=16, num_rnn_layers=1, rnn_type=rnn_type, seed=seed)
    return make(variant, **{**args, **kw})


def synthetic_batch(policy: Any, t: int = 16, b: int = 6, seed: int = 0) -> SampleBatch:
    """``(t + 1, b)`` rows from step-by-step rollouts, the state reset to the default at ``on_reset`` rows."""
    rng = np.random.default_rng(seed)
    default = state_to_agent(policy.default_policy_state)
    state = stack([default] * b)
    done, trunc = np.zeros((t + 1, b, 1), bool), np.zeros((t + 1, b, 1), bool)
    done[5, 0] = True
    trunc[9, 1] = True
    rows = []
    for step in range(t + 1):
        on_reset = np.zeros((b, 1), bool)
        on_reset[:, 0] = step == 0
        on_reset[0, 0] |= step == 6
        on_reset[1, 0] |= step == 10
        for i in np.flatnonzero(on_reset[:, 0]):
            state[int(i)] = default.apply(lambda x: x[None])
        obs = NamedArray(obs=rng.standard_normal((b, 4)).astype(np.float32))
        res = policy.rollout(RolloutRequest(obs=obs, policy_state=state, on_reset=on_reset))
        rows.append(
            SampleBatch(
                obs=obs,
                policy_state=state,
                action=res.action,
                analyzed_result=res.analyzed_result,
                reward=(obs.obs[:, :1] > 0).astype(np.float32) * (~on_reset),
                done=done[step],
                truncated=trunc[step],
                policy_version=np.zeros((b, 1), np.int64),
                on_reset=on_reset,
            )
        )
        state = res.policy_state
    return stack(rows)


def weights(policy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# ====================================================================== the state
@pytest.mark.parametrize(
    ("variant", "rnn_type", "cls", "fields"),
    [
        ("actor-critic-shared", "gru", ActorCriticState, ["hx"]),
        ("actor-critic-separate", "gru", SeparateActorCriticState, ["actor_hx", "critic_hx"]),
        ("actor-critic-shared", "lstm", ActorCriticLSTMState, ["hx", "cx"]),
        (
            "actor-critic-separate",
            "lstm",
            SeparateActorCriticLSTMState,
            ["actor_hx", "actor_cx", "critic_hx", "critic_cx"],
        ),
    ],
)
def test_policy_state_is_a_named_array_per_cell(variant: str, rnn_type: str, cls: type, fields: list[str]) -> None:
    policy = new_policy(variant, rnn_type, num_rnn_layers=2)
    state = policy.default_policy_state
    assert type(state) is cls and state.keys() == fields
    for _, leaf in state.flat_items():
        assert leaf.shape == (2, 1, 16) and leaf.dtype == np.float32 and not leaf.any()
    torsos = [policy.net.actor] + ([] if variant.endswith("shared") else [policy.net.critic])
    for torso in torsos:  # the cell type is in the parameter names, so checkpoints of the two never mix
        assert (torso.lstm is not None) == (rnn_type == "lstm") and (torso.gru is not None) == (rnn_type == "gru")


def test_gru_stays_the_default_and_bad_rnn_type_is_named() -> None:
    policy = make("actor-critic-separate", obs_dim=4, action_dim=3, num_rnn_layers=1)
    assert isinstance(policy.default_policy_state, SeparateActorCriticState) and policy.net.actor.gru is not None
    with pytest.raises(ValueError, match=r"rnn_type must be one of \['gru', 'lstm'\], got 'lstn'"):
        new_policy(rnn_type="lstn")


def test_chunk_len_as_a_policy_argument_points_to_the_trainer() -> None:
    with pytest.raises(ValueError, match=r"policy.args.chunk_len=10: .* move it to trainer.args.chunk_len"):
        new_policy(chunk_len=10)


def test_lstm_state_of_a_request_needs_both_fields() -> None:
    policy = new_policy("actor-critic-shared")
    b = 3
    obs = NamedArray(obs=np.zeros((b, 4), np.float32))
    with pytest.raises(ValueError, match=r"policy_state has no field 'cx'.*a lstm policy's state has \['hx', 'cx'\]"):
        policy.rollout(RolloutRequest(obs=obs, policy_state=NamedArray(hx=np.zeros((b, 1, 16), np.float32))))


# ====================================================================== real actor fragments: replay == rollout
def ring_fragments(policy: Any, fragment_length: int = 12, steps: int = 40) -> list[SampleBatch]:
    """Fragments an actor's env ring collects with ``policy`` on the memory task (episodes of 4 steps)."""
    cfg = config.from_dict(
        {
            "experiment": {"name": "recurrent-test", "seed": 3},
            "environment": {"type_": "memory", "args": {"delay": 2, "n_symbols": 3}},
            "policy": {"type_": "actor-critic-separate", "args": {}},
            "trainer": {"type_": "ppo", "args": {}},
            "actor": {"envs_per_actor": 3, "fragment_length": fragment_length},
        }
    )
    ring = rings.make_ring(cfg, rings.default_state_row(policy), "test actor")
    try:
        loop = InlineLoop(ring, policy, "test policy")
        for _ in range(steps):
            loop.step()
        return ring.pop_fragments()
    finally:
        ring.close()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_replay_of_actor_fragments_equals_step_by_step_rollout(variant: str, rnn_type: str) -> None:
    policy = new_policy(variant, rnn_type, obs_dim=4, action_dim=3, num_rnn_layers=2)
    frags = ring_fragments(policy)
    assert len(frags) >= 2
    batch = frags[-1]
    t1, b = batch.on_reset.shape[:2]
    assert batch.on_reset[1:].sum() >= b, "the fragment must hold episode starts after row 0"
    # the state the actor stored is zero wherever an episode starts (the ring's reset), h and c alike
    for _, leaf in batch.policy_state.flat_items():
        assert not leaf[batch.on_reset[..., 0]].any()
    # the data plane: the fragment's layout (with the LSTM state) packs into one buffer and back, class included
    schema = Schema.of(batch, batch_ndim=2)
    back = schema.unpack(schema.pack(batch), (t1, b), copy=True)
    assert type(back.policy_state) is type(batch.policy_state)
    for (p, x), (_, y) in zip(batch.flat_items(), back.flat_items()):
        np.testing.assert_array_equal(x, y, err_msg=p)

    ar = batch.analyzed_result
    acted = np.isfinite(ar.log_prob[..., 0])  # rows the policy acted on
    assert acted[:-1].all()
    with torch.no_grad():
        out = policy.analyze(batch)
    np.testing.assert_allclose(out.log_prob.numpy()[acted], ar.log_prob[..., 0][acted], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.value.numpy()[acted], ar.value[acted], rtol=1e-5, atol=1e-5)

    # chunks of 4 rows, each replayed from the state the actor stored at its first row: the same rows again
    chunked, rows = chunk_batch(batch.to_torch(), {"lp": torch.from_numpy(ar.log_prob[:-1])}, t1 - 1, 4, 0)
    with torch.no_grad():
        out_c = policy.analyze(chunked)
    np.testing.assert_allclose(out_c.log_prob.numpy(), rows["lp"][..., 0].numpy(), rtol=1e-5, atol=1e-5)

    # control: without the resets the replay carries the state over episode ends and differs
    no_reset = batch.copy()
    no_reset.on_reset[1:] = False
    with torch.no_grad():
        out_n = policy.analyze(no_reset)
    assert not np.allclose(out_n.value.numpy(), out.value.numpy(), atol=1e-3)


def test_lstm_reset_zeroes_the_cell_state_too() -> None:
    policy = new_policy("actor-critic-shared")
    batch = synthetic_batch(policy, t=12, b=2)
    base = policy.analyze(batch).value.detach().numpy()
    # a stored state that is not zero at a reset row must not matter: the replay zeroes h and c there
    dirty = batch.copy()
    dirty.policy_state.cx[6, 0] = 5.0
    dirty.policy_state.hx[6, 0] = 5.0
    dirty.policy_state.cx[0, 1] = 5.0
    np.testing.assert_array_equal(policy.analyze(dirty).value.detach().numpy(), base)
    # ... and replaying from a non-zero row 0 with the reset there cleared changes column 1 only
    dirty.on_reset[0, 1] = False
    v = policy.analyze(dirty).value.detach().numpy()
    np.testing.assert_array_equal(v[:, 0], base[:, 0])
    assert not np.allclose(v[:, 1], base[:, 1])


def test_lstm_policy_passes_the_pipeline_with_chunks() -> None:
    policy = config.Policy(
        type_="actor-critic-separate", args=dict(obs_dim=4, action_dim=2, num_rnn_layers=1, rnn_type="lstm")
    )
    trainer = config.Trainer(type_="ppo", args={"epochs": 1, "minibatches": 2, "chunk_len": 8, "burn_in": 2})
    env = config.Environment(type_="gym", args={"id": "CartPole-v1"})
    out = test_pipeline(env, policy, trainer, episodes=1, fragment_length=16)
    assert out["trainer_steps"] >= 2 and np.isfinite(out["last_stats"]["policy_loss"])


# ====================================================================== chunked training
def test_split_time_layout() -> None:
    x = torch.arange(8 * 2).reshape(8, 2)  # x[t, b] = 2 t + b
    y = split_time(x, 4)
    assert y.shape == (4, 4)
    # column c * B + b is chunk c of column b
    assert y[:, 0].tolist() == [0, 2, 4, 6] and y[:, 1].tolist() == [1, 3, 5, 7]
    assert y[:, 2].tolist() == [8, 10, 12, 14] and y[:, 3].tolist() == [9, 11, 13, 15]


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
@pytest.mark.parametrize("kind", ["ppo", "vtrace"])
def test_chunk_len_equal_to_the_fragment_trains_like_whole_fragments(rnn_type: str, kind: str) -> None:
    a, b = new_policy(rnn_type=rnn_type, seed=4), new_policy(rnn_type=rnn_type, seed=4)
    batch = synthetic_batch(a, t=16, b=6)
    args = dict(epochs=2, minibatches=3, seed=5, vtrace=kind == "vtrace")
    ta, tb = PPOTrainer(a, **args), PPOTrainer(b, chunk_len=16, **args)  # type: ignore[arg-type]
    for _ in range(2):
        sa, sb = ta.step(batch).stats, tb.step(batch).stats
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k] == pytest.approx(sb[k], rel=1e-5, abs=1e-6), k
    assert_same_weights(weights(a), weights(b))


def test_chunks_are_the_minibatch_units_and_start_from_their_stored_state() -> None:
    policy = new_policy(seed=1)
    batch = synthetic_batch(policy, t=16, b=6)
    seen: list[SampleBatch] = []
    analyze = policy.analyze

    def spy(sample: Any, target: str = "ppo", **kw: Any) -> Any:
        seen.append(sample)
        return analyze(sample, target, **kw)

    policy.analyze = spy
    PPOTrainer(policy, epochs=1, minibatches=4, chunk_len=4).step(batch)
    assert [tuple(s.action.x.shape) for s in seen] == [(4, 6)] * 4  # 4 chunks x 6 columns = 24 units, 6 per minibatch
    got = sorted(tuple(s.policy_state.actor_cx[0, c].flatten().tolist()) for s in seen for c in range(6))
    stored = sorted(
        tuple(batch.policy_state.actor_cx[r, c].flatten().tolist()) for r in (0, 4, 8, 12) for c in range(6)
    )
    assert got == stored


def _burn_in_trained(policy: Any, batch: SampleBatch, burn_in: int) -> dict[str, torch.Tensor]:
    PPOTrainer(policy, epochs=1, minibatches=1, chunk_len=8, burn_in=burn_in, normalize_advantages=False).step(batch)
    return weights(policy)


def test_burn_in_rows_carry_no_loss() -> None:
    base = new_policy(seed=2)
    batch = synthetic_batch(base, t=16, b=6)
    # other actions (and behaviour log-probs) on the burn-in rows 0-1 and 8-9 of every chunk
    other = batch.copy()
    for r in (0, 1, 8, 9):
        other.action.x[r] = (other.action.x[r] + 1) % 3
        other.analyzed_result.log_prob[r] -= 0.5
    w1 = _burn_in_trained(new_policy(seed=2), batch, burn_in=2)
    w2 = _burn_in_trained(new_policy(seed=2), other, burn_in=2)
    assert_same_weights(w1, w2, atol=0)
    # control: without burn-in those rows are trained on
    w3 = _burn_in_trained(new_policy(seed=2), batch, burn_in=0)
    w4 = _burn_in_trained(new_policy(seed=2), other, burn_in=0)
    assert any(not torch.allclose(w3[k], w4[k]) for k in w3)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru"])
def test_burn_in_rows_carry_no_gradient(rnn_type: str) -> None:
    policy = new_policy(rnn_type=rnn_type, seed=3)
    batch = synthetic_batch(policy, t=12, b=4).to_torch()
    k = 3

    def grads(sample: Any, **kw: Any) -> dict[str, torch.Tensor]:
        policy.net.zero_grad(set_to_none=True)
        out = policy.analyze(sample, **kw)
        rows = slice(kw.get("burn_in", 0), None)
        (out.log_prob[rows].sum() + out.value[rows].sum() + out.entropy[rows].sum()).backward()
        return {n: p.grad.clone() for n, p in policy.net.named_parameters() if p.grad is not None}

    warmed = grads(batch[:8], burn_in=k)
    # the same rows replayed from the state stored at row k (the warmed state: the weights did not change)
    direct = grads(batch[k:8])
    assert warmed.keys() == direct.keys()
    for name in warmed:
        torch.testing.assert_close(warmed[name], direct[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
    # control: replaying the first k rows with autograd lets gradient flow back through them
    policy.net.zero_grad(set_to_none=True)
    out = policy.analyze(batch[:8])
    (out.log_prob[k:].sum() + out.value[k:].sum() + out.entropy[k:].sum()).backward()
    through = {n: p.grad.clone() for n, p in policy.net.named_parameters() if p.grad is not None}
    assert any(not torch.allclose(through[n], direct[n], atol=1e-6) for n in direct if rnn_type in n)


# ====================================================================== bad values: clear errors naming the key
def cfg_with(trainer_args: dict[str, Any], fragment_length: int = 32, **policy_args: Any) -> config.ExperimentConfig:
    return config.from_dict(
        {
            "environment": {"type_": "memory", "args": {"delay": 2}},
            "policy": {
                "type_": "actor-critic-separate",
                "args": {"num_rnn_layers": 1, "rnn_type": "lstm", **policy_args},
            },
            "trainer": {"type_": "ppo", "args": trainer_args},
            "actor": {"envs_per_actor": 2, "fragment_length": fragment_length},
        }
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            {"chunk_len": 12},
            "trainer.args.chunk_len: 12 does not divide actor.fragment_length 32; fragments are trained in chunks "
            "of chunk_len steps, so chunk_len must be one of [1, 2, 4, 8, 16, 32]",
        ),
        (
            {"chunk_len": 4, "burn_in": 4},
            "trainer.args.chunk_len: 4 must be greater than trainer.args.burn_in 4",
        ),
        ({"chunk_len": 2, "burn_in": 3}, "trainer.args.chunk_len: 2 must be greater than trainer.args.burn_in 3"),
        ({"chunk_len": 0}, "trainer.args.chunk_len: expected a positive int (steps per chunk) or null, got 0"),
        ({"chunk_len": "8"}, "trainer.args.chunk_len: expected a positive int (steps per chunk) or null, got '8'"),
        (
            {"chunk_len": 8, "burn_in": -1},
            "trainer.args.burn_in: expected an int >= 0 (warm-up steps per chunk), got -1",
        ),
        ({"burn_in": 32}, "trainer.args.burn_in: 32 must be smaller than actor.fragment_length 32"),
    ],
)
def test_bad_chunk_values_are_config_errors_naming_the_key(args: dict[str, Any], message: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        components.resolve_experiment(cfg_with(args))
    assert message in str(err.value)


def test_good_chunk_values_resolve() -> None:
    cfg, _ = components.resolve_experiment(cfg_with({"chunk_len": 8, "burn_in": 2}))
    assert cfg.trainer.args == {"chunk_len": 8, "burn_in": 2}


def test_trainer_checks_chunks_itself() -> None:
    policy = new_policy()
    with pytest.raises(ValueError, match=r"trainer.args.chunk_len: 4 must be greater than trainer.args.burn_in 5"):
        PPOTrainer(policy, chunk_len=4, burn_in=5)
    trainer = PPOTrainer(policy, chunk_len=5)
    with pytest.raises(ValueError, match=r"trainer.args.chunk_len: 5 does not divide the batch's fragment length 16"):
        trainer.step(synthetic_batch(policy, t=16, b=2))
    with pytest.raises(
        ValueError, match=r"trainer.args.burn_in: 16 must be smaller than the batch's fragment length 16"
    ):
        PPOTrainer(policy, burn_in=16).step(synthetic_batch(policy, t=16, b=2))
    mlp = make("actor-critic-separate", obs_dim=4, action_dim=3)
    assert isinstance(mlp, ActorCriticPolicy)
    with pytest.raises(ValueError, match=r"apply to recurrent policies only; ActorCriticPolicy has no policy state"):
        PPOTrainer(mlp, chunk_len=4)
