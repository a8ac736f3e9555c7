"""Actor-critic policies: shapes, GRU replay, gradient isolation, evaluation mode, spaces, checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray, stack
from hpcrl.api.policy import RolloutRequest, make, state_to_agent
from hpcrl.api.trainer import SampleBatch
from hpcrl.policies.actor_critic import (
    ActorCriticPolicy,
    check_policy_against_spaces,
    input_shapes,
    policy_args_from_spaces,
)
from hpcrl.policies.random import RandomPolicy
from hpcrl.trainers.ppo import AnalyzedResult

ACTIONS: dict[str, dict[str, Any]] = {
    "discrete": {"action_dim": 5},
    "multi": {"action_dim": [3, 2, 4]},
    "continuous": {"action_dim": 3, "continuous_action": True},
}
INPUTS: dict[str, dict[str, Any]] = {
    "vector": {"obs_dim": {"obs": 6}},
    "image": {"obs_dim": {"obs": 6, "pixels": [3, 12, 12]}},
}


def _obs(shapes: dict[str, tuple[int, ...]], b: int, rng: np.random.Generator) -> NamedArray:
    leaves = {}
    for name, shape in shapes.items():
        if len(shape) == 3:
            leaves[name] = rng.integers(0, 256, (b, *shape), dtype=np.uint8)
        else:
            leaves[name] = rng.standard_normal((b, *shape)).astype(np.float32)
    return NamedArray(**leaves)


def rollout_batch(
    policy: ActorCriticPolicy, t: int = 7, b: int = 4, seed: int = 0, resets: tuple[tuple[int, int], ...] = ((3, 1),)
) -> SampleBatch:
    """Roll the policy for ``t + 1`` rows like an actor would: state reset to default at ``on_reset`` rows."""
    rng = np.random.default_rng(seed)
    shapes = {**policy.actor_inputs, **policy.critic_inputs}
    default = state_to_agent(policy.default_policy_state)
    state = None if default is None else stack([default] * b)
    rows = []
    for step in range(t + 1):
        on_reset = np.zeros((b, 1), bool)
        on_reset[:, 0] = step == 0
        for rt, rb in resets:
            if rt == step:
                on_reset[rb] = True
        if state is not None:
            for i in np.flatnonzero(on_reset[:, 0]):
                state[int(i)] = default.apply(lambda x: x[None])  # type: ignore[union-attr]
        obs = _obs(shapes, b, rng)
        res = policy.rollout(
            RolloutRequest(obs=obs, policy_state=state, is_evaluation=np.zeros((b, 1), bool), on_reset=on_reset)
        )
        rows.append(
            SampleBatch(
                obs=obs,
                policy_state=state,
                action=res.action,
                analyzed_result=res.analyzed_result,
                reward=rng.standard_normal((b, 1)).astype(np.float32),
                done=np.zeros((b, 1), bool),
                truncated=np.zeros((b, 1), bool),
                policy_version=np.zeros((b, 1), np.int64),
                on_reset=on_reset,
            )
        )
        state = res.policy_state
    return stack(rows)


@pytest.mark.parametrize("variant", ["actor-critic-separate", "actor-critic-shared"])
@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("rnn", [0, 2])
@pytest.mark.parametrize("inputs", list(INPUTS))
def test_rollout_and_analyze_shapes_and_consistency(variant: str, action: str, rnn: int, inputs: str) -> None:
    policy = make(variant, **INPUTS[inputs], **ACTIONS[action], num_rnn_layers=rnn, hidden_dim=16, seed=3)
    assert isinstance(policy, ActorCriticPolicy)
    t, b = 7, 4
    batch = rollout_batch(policy, t, b)
    x = batch.action.x
    if action == "discrete":
        assert x.shape == (t + 1, b) and x.dtype == np.int64
        assert x.min() >= 0 and x.max() < 5
    elif action == "multi":
        assert x.shape == (t + 1, b, 3) and x.dtype == np.int64
        assert (x < np.array([3, 2, 4])).all() and (x >= 0).all()
    else:
        assert x.shape == (t + 1, b, 3) and x.dtype == np.float32
    ar = batch.analyzed_result
    assert ar.log_prob.shape == (t + 1, b, 1) and ar.log_prob.dtype == np.float32
    assert ar.value.shape == (t + 1, b, 1) and ar.value.dtype == np.float32
    if rnn:
        state = policy.default_policy_state
        assert state is not None
        for _, leaf in state.flat_items():
            assert leaf.shape == (rnn, 1, 16) and leaf.dtype == np.float32
        for _, leaf in batch.policy_state.flat_items():
            assert leaf.shape == (t + 1, b, rnn, 16)
    else:
        assert policy.default_policy_state is None and batch.policy_state is None

    out = policy.analyze(batch)
    assert isinstance(out, AnalyzedResult)
    assert out.log_prob.shape == (t + 1, b) and out.entropy.shape == (t + 1, b)
    assert out.value.shape == (t + 1, b, 1) and out.aux_value is None
    assert out.log_prob.requires_grad
    # Same weights: replaying the batch (GRU from row 0 with resets) reproduces what rollout computed.
    np.testing.assert_allclose(out.log_prob.detach().numpy(), ar.log_prob[..., 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.value.detach().numpy(), ar.value, rtol=1e-4, atol=1e-4)


def test_gru_replay_resets_hidden_state() -> None:
    policy = make("actor-critic-shared", obs_dim=3, action_dim=2, num_rnn_layers=1, hidden_dim=8)
    batch = rollout_batch(policy, t=6, b=2, resets=((3, 0),))
    out = policy.analyze(batch)
    np.testing.assert_allclose(out.value.detach().numpy(), batch.analyzed_result.value, atol=1e-5)
    # Dropping the reset changes the replay of column 0 after row 3 only.
    no_reset = batch.copy()
    no_reset.on_reset[3, 0] = False
    out2 = policy.analyze(no_reset)
    v1, v2 = out.value.detach().numpy(), out2.value.detach().numpy()
    np.testing.assert_allclose(v1[:3], v2[:3], atol=1e-6)
    np.testing.assert_allclose(v1[:, 1], v2[:, 1], atol=1e-6)
    assert not np.allclose(v1[3:, 0], v2[3:, 0])


def test_nature_cnn_image_input() -> None:
    policy = make("actor-critic-shared", obs_dim={"frames": (4, 84, 84)}, action_dim=6)
    obs = NamedArray(frames=np.random.default_rng(0).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8))
    res = policy.rollout(RolloutRequest(obs=obs))
    assert res.action.x.shape == (2,)
    convs = [m for m in policy.net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(8, 8), (4, 4), (3, 3)]


def test_make_policy_from_config_with_defaults() -> None:
    policy = make(
        config.Policy(
            type_="actor-critic-separate", args=dict(obs_dim={"obs": 187}, state_dim={"state": 623}, action_dim=16)
        )
    )
    assert isinstance(policy, ActorCriticPolicy) and policy.version == 0
    assert policy.default_policy_state is None
    assert policy.critic_inputs == {"state": (623,)} and policy.actor_inputs == {"obs": (187,)}
    linears = [m for m in policy.net.actor.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [64, 64]
    assert isinstance(policy.net.actor.mlp[1], torch.nn.Tanh)
    # orthogonal init: W W^T = gain^2 I for the rows of a wide layer
    w = policy.net.action_head.logits.weight.detach()
    torch.testing.assert_close(w @ w.T, 0.01**2 * torch.eye(16), atol=1e-6, rtol=1e-4)
    v = policy.net.value_head.weight.detach()
    assert float(v.norm()) == pytest.approx(1.0, rel=1e-4)
    rng = np.random.default_rng(0)
    obs = NamedArray(obs=rng.standard_normal((5, 187)).astype(np.float32), state=rng.random((5, 623)).astype("f4"))
    res = policy.rollout(RolloutRequest(obs=obs, is_evaluation=np.zeros((5, 1), bool), on_reset=np.ones((5, 1), bool)))
    assert res.action.x.shape == (5,) and res.policy_state is None


def test_centralized_critic_reads_state_only() -> None:
    policy = make("actor-critic-separate", obs_dim=4, state_dim={"state": 7}, action_dim=3)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((3, 4)).astype(np.float32)
    s1, s2 = rng.standard_normal((2, 3, 7)).astype(np.float32)
    ev = np.ones((3, 1), bool)
    r1 = policy.rollout(RolloutRequest(obs=NamedArray(obs=obs, state=s1), is_evaluation=ev))
    r2 = policy.rollout(RolloutRequest(obs=NamedArray(obs=obs, state=s2), is_evaluation=ev))
    np.testing.assert_array_equal(r1.analyzed_result.log_prob, r2.analyzed_result.log_prob)
    assert not np.allclose(r1.analyzed_result.value, r2.analyzed_result.value)
    with pytest.raises(KeyError, match="'state'"):
        policy.rollout(RolloutRequest(obs=NamedArray(obs=obs)))
    shared = make("actor-critic-shared", obs_dim=4, state_dim={"state": 7}, action_dim=3)
    assert shared.rollout(RolloutRequest(obs=NamedArray(obs=obs))).action.x.shape == (3,)


def _param_groups(policy: ActorCriticPolicy) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    actor, critic = [], []
    for name, p in policy.net.named_parameters():
        if name.startswith(("actor.", "action_head.", "aux_value_head.")):
            actor.append(p)
        elif name.startswith(("critic.", "value_head.")):
            critic.append(p)
        else:
            raise AssertionError(f"parameter {name} belongs to neither network")
    return actor, critic


@pytest.mark.parametrize(
    "kwargs",
    [
        {"obs_dim": {"obs": 6, "pixels": [3, 12, 12]}, "action_dim": 4},
        {"obs_dim": 6, "action_dim": 3, "continuous_action": True, "num_rnn_layers": 1},
        {"obs_dim": 6, "state_dim": {"state": 5}, "critic_uses_obs": True, "action_dim": [2, 3]},
        {"obs_dim": 6, "action_dim": 4, "auxiliary_head": True, "num_rnn_layers": 1},
    ],
)
def test_separate_networks_have_zero_cross_gradients(kwargs: dict[str, Any]) -> None:
    policy = make("actor-critic-separate", hidden_dim=16, **kwargs)
    batch = rollout_batch(policy, t=5, b=3)
    actor, critic = _param_groups(policy)
    assert actor and critic
    out = policy.analyze(batch)
    ret = torch.randn_like(out.value)
    value_loss = ((out.value - ret) ** 2).mean()
    policy_loss = -(out.log_prob * torch.randn_like(out.log_prob)).mean() - 0.01 * out.entropy.mean()
    for loss, own, other in ((value_loss, critic, actor), (policy_loss, actor, critic)):
        grads = torch.autograd.grad(loss, own + other, retain_graph=True, allow_unused=True)
        own_g, other_g = grads[: len(own)], grads[len(own) :]
        assert any(g is not None and bool(g.abs().sum() > 0) for g in own_g)
        for g in other_g:
            assert g is None or bool((g == 0).all())
    if out.aux_value is not None:
        aux_loss = ((out.aux_value - ret) ** 2).mean()
        grads = torch.autograd.grad(aux_loss, critic, allow_unused=True)
        assert all(g is None or bool((g == 0).all()) for g in grads)


def test_shared_variant_shares_the_torso() -> None:
    policy = make("actor-critic-shared", obs_dim=6, action_dim=4, hidden_dim=16)
    batch = rollout_batch(policy, t=3, b=2)
    out = policy.analyze(batch)
    value_loss = (out.value**2).mean()
    torso = list(policy.net.actor.parameters())
    grads = torch.autograd.grad(value_loss, torso)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    assert policy.net.critic is None


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("rnn", [0, 1])
def test_is_evaluation_rows_are_deterministic(action: str, rnn: int) -> None:
    policy = make("actor-critic-separate", obs_dim=5, num_rnn_layers=rnn, init_log_std=0.5, **ACTIONS[action])
    policy.net.action_head.apply(lambda m: torch.nn.init.normal_(m.weight) if isinstance(m, torch.nn.Linear) else None)
    rng = np.random.default_rng(1)
    b = 64
    obs = NamedArray(obs=rng.standard_normal((b, 5)).astype(np.float32))
    default = state_to_agent(policy.default_policy_state)
    state = None if default is None else stack([default] * b)
    ev = np.zeros((b, 1), bool)
    ev[::2] = True
    results = [policy.rollout(RolloutRequest(obs=obs, policy_state=state, is_evaluation=ev)) for _ in range(3)]
    xs = [r.action.x for r in results]
    np.testing.assert_array_equal(xs[0][::2], xs[1][::2])
    np.testing.assert_array_equal(xs[0][::2], xs[2][::2])
    assert not all(np.array_equal(xs[0][1::2], x[1::2]) for x in xs[1:])  # sampled rows vary
    with torch.no_grad():
        inputs = {"obs": torch.from_numpy(obs.obs)}
        hx = None if state is None else torch.from_numpy(state.actor_hx).transpose(0, 1).contiguous()
        chx = None if state is None else torch.from_numpy(state.critic_hx).transpose(0, 1).contiguous()
        mode = policy.net(inputs, 1, b, hx, chx).dist.mode()[0].numpy()
    np.testing.assert_allclose(xs[0][::2], mode[::2])


def test_seeded_init_is_reproducible() -> None:
    a = make("actor-critic-separate", obs_dim=4, action_dim=2, num_rnn_layers=1, seed=7)
    b = make("actor-critic-separate", obs_dim=4, action_dim=2, num_rnn_layers=1, seed=7)
    c = make("actor-critic-separate", obs_dim=4, action_dim=2, num_rnn_layers=1, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    # sampling is seeded too
    obs = NamedArray(obs=np.zeros((32, 4), np.float32))
    hx = stack([state_to_agent(a.default_policy_state)] * 32)  # type: ignore[list-item]
    xa = a.rollout(RolloutRequest(obs=obs, policy_state=hx)).action.x
    xb = b.rollout(RolloutRequest(obs=obs, policy_state=hx)).action.x
    np.testing.assert_array_equal(xa, xb)


@pytest.mark.parametrize("rnn", [0, 1])
def test_ortho_init_false_keeps_torch_default_init(rnn: int) -> None:
    """``ortho_init: false`` (SB3's ``ortho_init=False``): every layer as ``torch.nn`` initialises it."""
    kw: dict[str, Any] = dict(obs_dim=4, action_dim=2, continuous_action=True, init_log_std=-2.0, num_rnn_layers=rnn)
    ortho = make("actor-critic-separate", seed=3, **kw)
    plain = make("actor-critic-separate", seed=3, ortho_init=False, **kw)
    w = dict(ortho.net.named_parameters())["actor.mlp.2.weight"].detach()
    torch.testing.assert_close(w @ w.T, 2.0 * torch.eye(64), atol=1e-4, rtol=0)  # orthogonal, gain sqrt(2)
    params = dict(plain.net.named_parameters())
    for name, p in params.items():
        if name.endswith("log_std"):
            assert torch.equal(p, torch.full_like(p, -2.0)), name  # the Gaussian's log-std is not a layer
            continue
        if ".gru." in name:  # torch's recurrent init: uniform(-1/sqrt(hidden), 1/sqrt(hidden))
            bound = 1.0 / np.sqrt(64)
        else:  # torch's dense init: weights and biases within 1/sqrt(fan_in)
            bound = 1.0 / np.sqrt(params[name.rsplit(".", 1)[0] + ".weight"].shape[-1])
        assert float(p.detach().abs().max()) <= bound + 1e-6, name
        assert bool((p != 0).all()), name  # no zero biases: torch's default, not ours
    w = params["actor.mlp.2.weight"].detach()
    assert float((w @ w.T - 2.0 * torch.eye(64)).abs().max()) > 0.5  # not orthogonal
    again = make("actor-critic-separate", seed=3, ortho_init=False, **kw)  # still seeded
    assert all(torch.equal(p, q) for p, q in zip(plain.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="ortho_init must be true or false"):
        make("actor-critic-separate", ortho_init="no", **kw)


def test_checkpoint_round_trip_gives_identical_outputs() -> None:
    src = make("actor-critic-separate", obs_dim=4, action_dim=3, num_rnn_layers=1, auxiliary_head=True, seed=1)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.1 * torch.randn_like(p))
    src.inc_version()
    src.inc_version()
    batch = rollout_batch(src, t=5, b=3)
    ckpt = src.get_checkpoint()
    assert all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()) and ckpt["version"] == 2
    # a plain-types round trip (numpy arrays, ints) as a file format would do
    plain = {
        "model": {k: v.numpy() for k, v in ckpt["model"].items()},
        "version": 2,
        "sampler_rng": ckpt["sampler_rng"].numpy(),
    }
    dst = make("actor-critic-separate", obs_dim=4, action_dim=3, num_rnn_layers=1, auxiliary_head=True, seed=99)
    dst.load_checkpoint(plain)
    assert dst.version == 2
    o1, o2 = src.analyze(batch), dst.analyze(batch)
    for f in ("log_prob", "entropy", "value", "aux_value"):
        torch.testing.assert_close(getattr(o1, f), getattr(o2, f), rtol=0, atol=0)
    obs = NamedArray(obs=np.ones((4, 4), np.float32))
    st = stack([state_to_agent(src.default_policy_state)] * 4)  # type: ignore[list-item]
    r1, r2 = (
        src.rollout(RolloutRequest(obs=obs, policy_state=st)),
        dst.rollout(RolloutRequest(obs=obs, policy_state=st)),
    )
    np.testing.assert_array_equal(r1.action.x, r2.action.x)
    np.testing.assert_array_equal(r1.analyzed_result.value, r2.analyzed_result.value)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="activation"):
        make("actor-critic-separate", obs_dim=4, action_dim=2, activation="sigmoidal")
    with pytest.raises(ValueError, match="auxiliary_head"):
        make("actor-critic-shared", obs_dim=4, action_dim=2, auxiliary_head=True)
    with pytest.raises(ValueError, match="continuous_action"):
        make("actor-critic-separate", obs_dim=4, action_dim=[2, 2], continuous_action=True)
    with pytest.raises(TypeError, match=r"obs_dim\['obs'\]"):
        make("actor-critic-separate", obs_dim={"obs": "big"}, action_dim=2)
    with pytest.raises(TypeError, match="actor-critic-separate"):
        make("actor-critic-separate", obs_dim=4, action_dim=2, hiden_dim=3)
    policy = make("actor-critic-shared", obs_dim=4, action_dim=2, num_rnn_layers=1)
    with pytest.raises(ValueError, match="policy_state"):
        policy.rollout(RolloutRequest(obs=NamedArray(obs=np.zeros((2, 4), np.float32))))


def test_input_shapes() -> None:
    assert input_shapes(5) == {"obs": (5,)}
    assert input_shapes({"a": 2, "img": (3, 8, 8)}) == {"a": (2,), "img": (3, 8, 8)}
    assert input_shapes(None) == {}


def test_policy_args_from_spaces() -> None:
    box = gym.spaces.Box(-1, 1, (4,), np.float32)
    obs_space = gym.spaces.Dict({"obs": box, "state": gym.spaces.Box(-1, 1, (9,), np.float32)})
    args = policy_args_from_spaces(obs_space, gym.spaces.Discrete(3))
    assert args == {"obs_dim": {"obs": 4}, "state_dim": {"state": 9}, "action_dim": 3, "continuous_action": False}
    args = policy_args_from_spaces(
        gym.spaces.Dict({"obs": gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)}), gym.spaces.MultiDiscrete([3, 3])
    )
    assert args == {"obs_dim": {"obs": [4, 84, 84]}, "action_dim": [3, 3], "continuous_action": False}
    args = policy_args_from_spaces(box, gym.spaces.Box(-2, 2, (6,), np.float32))
    assert args["action_dim"] == 6 and args["continuous_action"] is True
    policy = make("actor-critic-separate", **policy_args_from_spaces(obs_space, gym.spaces.Discrete(3)))
    check_policy_against_spaces(policy.policy_args, obs_space, gym.spaces.Discrete(3))


@pytest.mark.parametrize(
    ("space", "name"),
    [
        (gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Discrete(3))), "Tuple"),
        (gym.spaces.Text(5), "Text"),
        (gym.spaces.Box(-1, 1, (2, 2), np.float32), "Box"),
    ],
)
def test_unsupported_action_space_error_names_the_space(space: Any, name: str) -> None:
    obs = gym.spaces.Dict({"obs": gym.spaces.Box(-1, 1, (4,), np.float32)})
    with pytest.raises(ValueError, match=f"unsupported action space .*{name}") as err:
        policy_args_from_spaces(obs, space)
    assert "Discrete" in str(err.value)  # says what is supported


def test_bad_obs_dim_against_space_names_input_and_shapes() -> None:
    obs_space = gym.spaces.Dict({"obs": gym.spaces.Box(-1, 1, (4,), np.float32)})
    act = gym.spaces.Discrete(2)
    with pytest.raises(ValueError, match=r"'obs'.*\(187,\).*\(4,\)"):
        check_policy_against_spaces({"obs_dim": {"obs": 187}, "action_dim": 2}, obs_space, act)
    with pytest.raises(ValueError, match=r"'state'.*not in the environment's observation space.*\['obs'\]"):
        check_policy_against_spaces({"obs_dim": 4, "state_dim": {"state": 3}, "action_dim": 2}, obs_space, act)
    with pytest.raises(ValueError, match=r"action_dim=3.*action_dim=2"):
        check_policy_against_spaces({"obs_dim": 4, "action_dim": 3}, obs_space, act)
    check_policy_against_spaces({"obs_dim": 4, "action_dim": 2}, obs_space, act)


def test_random_policy() -> None:
    for kwargs, shape, dtype in (
        ({"action_dim": 4}, (6,), np.int64),
        ({"action_dim": [2, 3]}, (6, 2), np.int64),
        ({"action_dim": 3, "continuous_action": True}, (6, 3), np.float32),
    ):
        p = RandomPolicy(**kwargs)
        ev = np.zeros((6, 1), bool)
        ev[0] = True
        res = p.rollout(RolloutRequest(obs=NamedArray(obs=np.zeros((6, 2), np.float32)), is_evaluation=ev))
        assert res.action.x.shape == shape and res.action.x.dtype == dtype
        assert not res.action.x[0].any()
        assert res.analyzed_result.log_prob.shape == (6, 1) and res.analyzed_result.value.shape == (6, 1)
    p = make("random", action_dim=2)
    assert np.allclose(
        p.rollout(RolloutRequest(obs=NamedArray(obs=np.zeros((3, 1))))).analyzed_result.log_prob, -np.log(2)
    )
    p.inc_version()
    p2 = RandomPolicy()
    p2.load_checkpoint(p.get_checkpoint())
    assert p2.version == 1
    batch = SampleBatch(obs=NamedArray(obs=np.zeros((5, 3, 1))))
    assert p.analyze(batch).log_prob.shape == (5, 3, 1)


def test_importing_records_and_random_policy_does_not_import_torch(clean_env: dict[str, str]) -> None:
    code = (
        "import sys, numpy as np\n"
        "import hpcrl.policies.actor_critic as ac, hpcrl.policies.random as r\n"
        "from hpcrl.api.namedarray import NamedArray\n"
        "from hpcrl.api.policy import RolloutRequest\n"
        "r.RandomPolicy(3).rollout(RolloutRequest(obs=NamedArray(obs=np.zeros((2, 1)))))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[2], env=clean_env
    )


def test_state_dependent_std_and_value_dim() -> None:
    policy = make(
        "actor-critic-separate", obs_dim=5, action_dim=2, continuous_action=True, state_dependent_std=True, value_dim=3
    )
    assert policy.net.action_head.log_std is None and policy.net.action_head.log_std_layer is not None
    batch = rollout_batch(policy, t=4, b=3)
    assert batch.analyzed_result.value.shape == (5, 3, 3)
    out = policy.analyze(batch)
    assert out.value.shape == (5, 3, 3)
    np.testing.assert_allclose(out.log_prob.detach().numpy(), batch.analyzed_result.log_prob[..., 0], atol=1e-4)


def test_categorical_sampling_is_torch_multinomial_and_formulas_match_torch_distributions() -> None:
    from hpcrl.policies.distributions import CategoricalDistribution, DiagGaussianDistribution

    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    logits = torch.randn(3, 7, 4) * 3
    dist = CategoricalDistribution(logits)
    ref = torch.distributions.Categorical(logits=logits)
    for _ in range(20):  # the same draws and generator state as torch.multinomial on the probabilities
        expected = torch.multinomial(ref.probs.reshape(-1, 4), 1, True, generator=g1).reshape(3, 7)
        torch.testing.assert_close(dist.sample(g2), expected, rtol=0, atol=0)
    assert torch.equal(g1.get_state(), g2.get_state())
    action = dist.sample(g2)
    torch.testing.assert_close(dist.log_prob(action), ref.log_prob(action))
    torch.testing.assert_close(dist.entropy(), ref.entropy())
    assert torch.equal(dist.mode(), logits.argmax(-1))
    masked = CategoricalDistribution(torch.tensor([[0.0, float("-inf"), 1.0]]))  # a zero-probability action
    torch.testing.assert_close(masked.entropy(), torch.distributions.Categorical(logits=masked.logits).entropy())
    assert all(int(masked.sample(g2)[0]) != 1 for _ in range(200))
    mean, log_std = torch.randn(5, 3), torch.randn(3) * 0.3
    gauss = DiagGaussianDistribution(mean, log_std)
    normal = torch.distributions.Normal(mean, log_std.exp().expand_as(mean))
    a = gauss.sample(g2)
    torch.testing.assert_close(gauss.log_prob(a), normal.log_prob(a).sum(-1))
    torch.testing.assert_close(gauss.entropy(), normal.entropy().sum(-1))


def test_rollout_names_rows_with_non_finite_action_probabilities() -> None:
    policy = make("actor-critic-separate", obs_dim=3, action_dim=4)
    obs = np.zeros((5, 3), np.float32)
    obs[3, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite action probabilities in rows \[3\] of 5"):
        policy.rollout(RolloutRequest(obs=NamedArray(obs=obs)))


def test_args_from_spaces_fills_what_is_missing_keeps_what_is_given_and_needs_dims_without_spaces() -> None:
    from hpcrl.policies.actor_critic import ActorCriticPolicy

    obs_space = gym.spaces.Dict({"obs": gym.spaces.Box(-1, 1, (4,), np.float32)})
    act = gym.spaces.Discrete(2)
    args = ActorCriticPolicy.args_from_spaces({"hidden_dim": 16}, obs_space, act)
    assert args == {"hidden_dim": 16, "obs_dim": {"obs": 4}, "action_dim": 2, "continuous_action": False}
    assert next(iter(args)) == "hidden_dim"  # given args first, as configured
    with pytest.raises(ValueError, match=r"action_dim=3.*action_dim=2"):
        ActorCriticPolicy.args_from_spaces({"action_dim": 3}, obs_space, act)
    with pytest.raises(ValueError, match="declares no observation/action spaces, so policy.args.obs_dim and"):
        ActorCriticPolicy.args_from_spaces({"obs_dim": 4}, None, None)
    assert ActorCriticPolicy.args_from_spaces({"obs_dim": 4, "action_dim": 2}, None, None) == {
        "obs_dim": 4,
        "action_dim": 2,
    }
    assert ActorCriticPolicy.takes_seed
