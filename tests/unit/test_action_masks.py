"""Action masks: ``available_action`` restricts the discrete and multi-discrete heads in rollout and analyze."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hpcrl.acting.env_ring import EnvError, EnvRing
from hpcrl.api.data import RolloutRequest, SampleBatch
from hpcrl.api.environment import Action, Environment, StepResult
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutResult
from hpcrl.envs.checks import EnvChecker, EnvCheckError
from hpcrl.policies.actor_critic import check_policy_against_spaces, make_separate, make_shared, policy_args_from_spaces
from hpcrl.policies.distributions import CategoricalDistribution, DiagGaussianDistribution, MultiCategoricalDistribution


def random_masks(rng: np.random.Generator, b: int, n: int, dtype=np.uint8) -> np.ndarray:
    """``(b, n)`` 0/1 masks with at least one legal action per row, about half the actions masked."""
    m = (rng.random((b, n)) < 0.5).astype(dtype)
    m[np.arange(b), rng.integers(n, size=b)] = 1
    return m


def request(obs: NamedArray, b: int, evaluation: bool = False) -> RolloutRequest:
    return RolloutRequest(
        obs=obs, policy_state=None, is_evaluation=np.full((b, 1), evaluation), on_reset=np.zeros((b, 1), bool)
    )


# ---------------------------------------------------------------------- distributions
def test_masked_categorical_matches_torch_categorical_over_the_legal_actions():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 7, generator=gen) * 3
    mask = torch.from_numpy(random_masks(np.random.default_rng(0), 64, 7)).bool()
    dist = CategoricalDistribution(logits).masked(mask)
    actions = dist.sample(gen)
    for row in range(64):
        legal = mask[row].nonzero().squeeze(-1)
        ref = torch.distributions.Categorical(logits=logits[row, legal])
        pos = (legal == actions[row]).nonzero().squeeze()  # the action's index among the legal ones
        torch.testing.assert_close(dist.log_prob(actions)[row], ref.log_prob(pos))
        torch.testing.assert_close(dist.entropy()[row], ref.entropy())
        assert dist.mode()[row] == legal[ref.probs.argmax()]


def test_masked_gradients_are_finite():
    logits = torch.randn(16, 5, requires_grad=True)
    mask = torch.from_numpy(random_masks(np.random.default_rng(1), 16, 5)).bool()
    dist = CategoricalDistribution(logits).masked(mask)
    with torch.no_grad():
        a = dist.sample(torch.Generator().manual_seed(1))
    (dist.log_prob(a).sum() + dist.entropy().sum()).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~mask] == 0).all()  # masked logits do not move


def test_a_row_without_legal_action_is_left_unmasked():
    """Only terminal rows have none (the actor refuses others); their values must stay finite for the loss."""
    logits = torch.randn(2, 4)
    mask = torch.tensor([[False] * 4, [True, False, False, False]])
    dist = CategoricalDistribution(logits).masked(mask)
    torch.testing.assert_close(dist.log_probs[0], torch.log_softmax(logits[0], -1))
    assert torch.isfinite(dist.entropy()).all() and dist.mode()[1] == 0


def test_multi_categorical_masks_each_component():
    nvec = [3, 4]
    logits = torch.randn(5, 7)
    rng = np.random.default_rng(2)
    mask = torch.from_numpy(np.concatenate([random_masks(rng, 5, 3), random_masks(rng, 5, 4)], axis=1)).bool()
    dist = MultiCategoricalDistribution(logits, nvec).masked(mask)
    a = dist.sample(torch.Generator().manual_seed(0))
    ref0 = [
        torch.distributions.Categorical(logits=logits[r, :3].masked_fill(~mask[r, :3], -torch.inf)) for r in range(5)
    ]
    ref1 = [
        torch.distributions.Categorical(logits=logits[r, 3:].masked_fill(~mask[r, 3:], -torch.inf)) for r in range(5)
    ]
    for r in range(5):
        assert mask[r, a[r, 0]] and mask[r, 3 + a[r, 1]]
        want = ref0[r].log_prob(a[r, 0]) + ref1[r].log_prob(a[r, 1])
        torch.testing.assert_close(dist.log_prob(a)[r], want)
        torch.testing.assert_close(dist.entropy()[r], ref0[r].entropy() + ref1[r].entropy())


def test_a_continuous_distribution_cannot_be_masked():
    with pytest.raises(ValueError, match="'available_action' masks discrete and multi-discrete actions"):
        DiagGaussianDistribution(torch.zeros(2, 3), torch.zeros(3)).masked(torch.ones(2, 3, dtype=torch.bool))


# ---------------------------------------------------------------------- the policy
@pytest.mark.parametrize("factory", [make_separate, make_shared])
@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.int8])
def test_rollout_never_samples_nor_chooses_a_masked_action(factory, dtype):
    """1e5 draws from a policy whose logits prefer action 0, which is mostly masked."""
    n, b = 6, 100_000
    policy = factory(obs_dim={"obs": 4}, action_dim=n, seed=3)
    with torch.no_grad():  # make the masked actions the likely ones: a mistake would show at once
        policy._ac_net.action_head.logits.bias[:] = torch.tensor([8.0, 6.0, 0, 0, 0, 0])
    rng = np.random.default_rng(4)
    mask = random_masks(rng, b, n, dtype)
    mask[: b // 2, :2] = 0
    mask[: b // 2, 2] = 1
    obs = NamedArray(obs=rng.standard_normal((b, 4)).astype(np.float32), available_action=mask)
    out = policy.rollout(request(obs, b))
    x = out.action.x
    assert x.shape == (b,) and mask[np.arange(b), x].all()
    assert np.isfinite(out.analyzed_result.log_prob).all()
    det = policy.rollout(request(obs, b, evaluation=True)).action.x
    assert mask[np.arange(b), det].all()
    assert (det[b // 2 :][mask[b // 2 :, 0] == 1] == 0).all()  # where legal, the preferred action is the mode


def test_analyze_gives_the_masked_log_probs_and_entropy():
    n, t, b = 5, 3, 8
    policy = make_separate(obs_dim={"obs": 4}, action_dim=n, seed=1)
    rng = np.random.default_rng(5)
    obs = NamedArray(
        obs=rng.standard_normal((t, b, 4)).astype(np.float32),
        available_action=random_masks(rng, t * b, n).reshape(t, b, n),
    )
    rows = policy.rollout(request(obs[0], b))
    actions = np.stack([rows.action.x] + [policy.rollout(request(obs[i], b)).action.x for i in range(1, t)])
    sample = SampleBatch(obs=obs, action=Action(x=actions))
    res = policy.analyze(sample)
    logits = policy._ac_net.forward({"obs": torch.from_numpy(obs.obs)}, t, b).dist.logits.detach()
    m = torch.from_numpy(obs.available_action).bool()
    for i in range(t):
        for j in range(b):
            legal = m[i, j].nonzero().squeeze(-1)
            ref = torch.distributions.Categorical(logits=logits[i, j, legal])
            pos = (legal == int(actions[i, j])).nonzero().squeeze()
            torch.testing.assert_close(res.log_prob[i, j].detach(), ref.log_prob(pos))
            torch.testing.assert_close(res.entropy[i, j].detach(), ref.entropy())
    # the rollout's recorded log-prob is the masked one too
    torch.testing.assert_close(torch.from_numpy(rows.analyzed_result.log_prob[:, 0]), res.log_prob[0].detach())


def test_multi_discrete_policy_masks_every_component():
    nvec, b = [3, 2, 4], 20_000
    policy = make_separate(obs_dim={"obs": 2}, action_dim=nvec, seed=2)
    rng = np.random.default_rng(6)
    mask = np.concatenate([random_masks(rng, b, k) for k in nvec], axis=1)
    obs = NamedArray(obs=rng.standard_normal((b, 2)).astype(np.float32), available_action=mask)
    for evaluation in (False, True):
        x = policy.rollout(request(obs, b, evaluation)).action.x
        assert x.shape == (b, 3)
        assert mask[np.arange(b), x[:, 0]].all() and mask[np.arange(b), 3 + x[:, 1]].all()
        assert mask[np.arange(b), 5 + x[:, 2]].all()


def test_policy_errors_name_the_field():
    policy = make_separate(obs_dim={"obs": 2}, action_dim=4)
    obs = NamedArray(obs=np.zeros((3, 2), np.float32), available_action=np.ones((3, 5), np.uint8))
    with pytest.raises(ValueError, match=r"'available_action' has shape \(3, 5\), expected \(3, 4\)"):
        policy.rollout(request(obs, 3))
    cont = make_separate(obs_dim={"obs": 2}, action_dim=2, continuous_action=True)
    obs = NamedArray(obs=np.zeros((3, 2), np.float32), available_action=np.ones((3, 2), np.uint8))
    with pytest.raises(ValueError, match="this policy's actions are continuous"):
        cont.rollout(request(obs, 3))


def test_the_mask_is_no_policy_input_and_must_fit_the_head():
    obs_space = spaces.Dict(obs=spaces.Box(0, 1, (4,), np.float32), available_action=spaces.Box(0, 1, (6,), np.int8))
    args = policy_args_from_spaces(obs_space, spaces.Discrete(6))
    assert args["obs_dim"] == {"obs": 4} and args["action_dim"] == 6
    with pytest.raises(ValueError, match=r"'available_action' has shape \(6,\), expected \(5,\)"):
        check_policy_against_spaces({"obs_dim": {"obs": 4}}, obs_space, spaces.Discrete(5))
    check_policy_against_spaces({}, obs_space, spaces.MultiDiscrete([2, 4]))
    with pytest.raises(ValueError, match="masks discrete and multi-discrete actions"):
        check_policy_against_spaces({}, obs_space, spaces.Box(-1, 1, (6,), np.float32))


# ---------------------------------------------------------------------- env side
class Masked(Environment):
    """One agent, 3 actions; the mask at step ``empty_at`` allows nothing; ``done`` at ``length`` (mask all 0)."""

    def __init__(self, empty_at: int = -1, length: int = 4, nvec: list[int] | None = None):
        self.empty_at, self.length, self.nvec, self.t = empty_at, length, nvec, 0

    @property
    def agent_count(self) -> int:
        return 1

    @property
    def action_spaces(self):
        return [spaces.MultiDiscrete(self.nvec) if self.nvec else spaces.Discrete(3)]

    def _res(self) -> list[StepResult | None]:
        width = sum(self.nvec) if self.nvec else 3
        end = self.t >= self.length
        mask = np.ones(width, np.uint8)
        if end:
            mask[:] = 0
        elif self.t == self.empty_at:
            if self.nvec:
                mask[: self.nvec[0]] = 0  # the first component has no legal choice
            else:
                mask[:] = 0
        obs = NamedArray(obs=np.array([self.t], np.float32), available_action=mask)
        return [StepResult(obs, np.zeros(1, np.float32), np.array([end]), np.array([False]))]

    def reset(self):
        self.t = 0
        return self._res()

    def step(self, actions):
        self.t += 1
        return self._res()


def act(req: RolloutRequest) -> RolloutResult:
    n = len(req.obs)
    shape = (n,) if req.obs.available_action.shape[1] == 3 else (n, 2)
    return RolloutResult(action=Action(x=np.zeros(shape, np.int64)), policy_state=None,
                         analyzed_result=NamedArray(log_prob=np.zeros((n, 1), np.float32)))  # fmt: skip


def drive(ring: EnvRing, steps: int) -> None:
    for _ in range(steps):
        ring.consume(0, act(ring.request(0)), version=0)


@pytest.mark.parametrize("check", ["first", "off"])
def test_terminal_rows_may_have_no_legal_action(check):
    drive(EnvRing(lambda i: Masked(), 2, 1, 4, None, "masked", check=check), 30)


@pytest.mark.parametrize("nvec", [None, [2, 3]])
@pytest.mark.parametrize("check", ["first", "off"])
def test_no_legal_action_names_env_agent_and_step(check, nvec):
    ring = EnvRing(lambda i: Masked(empty_at=2 if i == 1 else -1, length=9, nvec=nvec), 2, 1, 4, None, "masked",
                   where="actor rank 5", check=check)  # fmt: skip
    with pytest.raises(EnvError) as info:
        drive(ring, 10)
    what = "a component has no legal choice" if nvec else "every entry is 0"
    assert (
        f"actor rank 5: env #1: env 'masked' step 2: agent 0: obs field 'available_action': no legal action ({what}"
        in str(info.value)
    )
    assert "neither done nor truncated" in str(info.value)


def test_a_reset_without_legal_action_is_named_as_reset():
    ring = EnvRing(lambda i: Masked(empty_at=0), 1, 1, 4, None, "masked", check="off")
    with pytest.raises(EnvError, match="env #0: env 'masked' reset: agent 0: obs field 'available_action': no legal"):
        drive(ring, 1)


def test_checker_refuses_mask_values_and_shapes():
    chk = EnvChecker("m", 1, None, [spaces.Discrete(3)])
    good = StepResult(
        NamedArray(obs=np.zeros(1, np.float32), available_action=np.array([1, 0, 1], np.uint8)), 0.0, False, False
    )
    chk.check([good], "reset")
    bad = StepResult(
        NamedArray(obs=np.zeros(1, np.float32), available_action=np.array([1, 2, 1], np.uint8)), 0.0, False, False
    )
    with pytest.raises(
        EnvCheckError,
        match=r"env 'm' step 1: agent 0: obs field 'available_action': expected 0 or 1 per action, got \[2\]",
    ):
        chk.check([bad], "step 1")
    chk2 = EnvChecker("m", 1, None, [spaces.Discrete(4)])
    with pytest.raises(
        EnvCheckError,
        match=r"'available_action': expected shape \(4,\) \(one entry per action of Discrete\(4\)\), got \(3,\)",
    ):
        chk2.check([good], "reset")


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
def test_the_random_policy_draws_uniformly_among_legal_actions(dtype):
    """1e5 draws: only legal actions, each about equally often; the log-prob is the masked draw's."""
    from hpcrl.policies.random import RandomPolicy

    n = 100_000
    mask = np.zeros((n, 5), dtype)
    mask[:, [1, 3, 4]] = 1
    mask[0] = 0  # no legal action: drawn among all
    obs = NamedArray(obs=np.zeros((n, 2), np.float32), available_action=mask)
    is_eval = np.zeros((n, 1), bool)
    is_eval[1] = True
    out = RandomPolicy(action_dim=5, seed=7).rollout(RolloutRequest(obs=obs, is_evaluation=is_eval))
    x, lp = out.action.x, out.analyzed_result.log_prob[:, 0]
    counts = np.bincount(x[2:], minlength=5)
    assert counts[[0, 2]].sum() == 0 and np.allclose(counts[[1, 3, 4]] / (n - 2), 1 / 3, atol=0.01)
    assert x[1] == 1  # an evaluation row takes the first legal action
    assert lp[0] == pytest.approx(-np.log(5)) and np.allclose(lp[1:], -np.log(3))
    sample = SampleBatch(obs=NamedArray(obs=np.zeros((2, n, 2), np.float32), available_action=np.stack([mask, mask])))
    again = RandomPolicy(action_dim=5).analyze(sample).log_prob[..., 0]
    assert np.allclose(again, np.stack([lp, lp]))

    multi = np.array([[1, 0, 0, 1, 1]] * 30_000, dtype)  # components of 2 and 3 choices
    obs = NamedArray(obs=np.zeros((30_000, 2), np.float32), available_action=multi)
    out = RandomPolicy(action_dim=[2, 3], seed=7).rollout(RolloutRequest(obs=obs))
    assert np.all(out.action.x[:, 0] == 0) and set(np.unique(out.action.x[:, 1])) == {1, 2}
    assert np.allclose(out.analyzed_result.log_prob, -np.log(2))
    with pytest.raises(ValueError, match=r"'available_action' has shape \(30000, 5\), expected \(30000, 6\)"):
        RandomPolicy(action_dim=6).rollout(RolloutRequest(obs=obs))
