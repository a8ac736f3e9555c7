"""Action heads: map features to action distributions (discrete, multi-discrete, diagonal Gaussian).

The distributions are small closed-form classes rather than ``torch.distributions`` objects:
on CPU with small batches, building a ``torch.distributions`` object and sampling through
``torch.multinomial`` cost more than the network itself. The formulas are the same:
categorical log-probabilities are ``log_softmax(logits)`` (``torch.distributions.Categorical``
normalises with ``logits - logsumexp(logits)``), the entropy is ``-sum(p log p)`` with log-probs
clamped to the dtype's minimum (as ``Categorical.entropy`` does), and the Gaussian log-density and
entropy are Normal's closed forms.

Categorical samples are ``argmax(p / q)`` with ``q ~ Exp(1)`` drawn by ``exponential_`` from the
caller's generator: exactly what ``torch.multinomial(p, 1)`` computes internally (bitwise the same
actions and generator state), without its validity checks, which cost four reductions and two
host syncs per call. (Inverse-CDF sampling draws another random stream: with it, the memory task's
learning benchmark, examples/memory/gru.yaml, failed on 3 of 6 seeds, against 0 of 6 with this
stream; seeded runs stay where they were.)

Action masks (:meth:`ActionDistribution.masked`, observation field ``available_action``): masked
logits are set to ``-inf`` before the softmax, so a masked action has probability 0 (never sampled,
never the mode) and ``log_prob``/``entropy`` are those of the categorical over the legal actions
only. A row with no legal action is left unmasked: that happens only on terminal rows, whose action
is never executed (the actor refuses such a row anywhere else, see :mod:`hpcrl.acting.env_ring`).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ActionDistribution",
    "CategoricalDistribution",
    "MultiCategoricalDistribution",
    "DiagGaussianDistribution",
    "ActionHead",
    "CategoricalHead",
    "MultiCategoricalHead",
    "GaussianHead",
    "make_action_head",
    "linear_forward",
]

#: bounds applied to a state-dependent log standard deviation (keeps exp() finite).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


class ActionDistribution(abc.ABC):
    """A batch of action distributions with leading batch dims ``(*batch)``.

    Actions are int64 ``(*batch)`` (discrete), int64 ``(*batch, n)`` (multi-discrete) or
    float32 ``(*batch, dim)`` (continuous); ``log_prob`` and ``entropy`` are ``(*batch)``.
    """

    @abc.abstractmethod
    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one action per batch row (from ``generator`` if given)."""

    @abc.abstractmethod
    def mode(self) -> torch.Tensor:
        """The most likely action (argmax / mean): the deterministic evaluation action."""

    @abc.abstractmethod
    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-probability (density) of ``action``, summed over action components."""

    @abc.abstractmethod
    def entropy(self) -> torch.Tensor:
        """Entropy, summed over action components."""

    def masked(self, mask: torch.Tensor) -> ActionDistribution:
        """This distribution restricted to the legal actions of ``mask`` (bool, one entry per logit).

        Raises:
            ValueError: the distribution has no logits to mask (continuous actions).
        """
        raise ValueError(
            f"the observation field 'available_action' masks discrete and multi-discrete actions; "
            f"{type(self).__name__} (continuous actions) cannot be masked"
        )

    def params(self) -> torch.Tensor:
        """The distribution's parameters as one tensor ``(*batch, P)`` (what :meth:`kl_from` reads back).

        Raises:
            TypeError: a distribution class without this optional capability (only PPG needs it).
        """
        raise TypeError(
            f"{type(self).__name__} does not give its parameters: the ppg trainer's clone term needs params() and "
            f"kl_from() (the built-in categorical, multi-categorical and Gaussian distributions have them)"
        )

    def kl_from(self, old_params: torch.Tensor) -> torch.Tensor:
        """``KL(old || self)`` per row ``(*batch)``, ``old`` given by an earlier :meth:`params` of the same kind.

        Raises:
            TypeError: a distribution class without this optional capability (only PPG needs it).
        """
        raise TypeError(
            f"{type(self).__name__} has no KL divergence: the ppg trainer's clone term needs params() and kl_from() "
            f"(the built-in categorical, multi-categorical and Gaussian distributions have them)"
        )


def _sample_index(
    log_probs: torch.Tensor, generator: torch.Generator | None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """One index per row of normalised ``log_probs`` ``(*batch, n)``, int64 ``(*batch)``.

    ``argmax(p / q)``, ``q ~ Exp(1)``: ``torch.multinomial(p, 1, generator=generator)``'s algorithm
    and random draws. Rows with NaN log-probs give an arbitrary index (their log-prob stays NaN);
    the policy reports them (see ``ActorCriticPolicy.rollout``).
    """
    probs = log_probs.exp()
    q = torch.empty_like(probs).exponential_(1.0, generator=generator)
    ratio = torch.div(probs, q, out=q)
    if mask is not None:  # 0 / 0 would be NaN, which argmax prefers: masked entries rank below every legal one
        ratio.masked_fill_(~mask, -1.0)
    return ratio.argmax(dim=-1)


def _entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """``-sum(p log p)`` over the last dim (log-probs clamped to the dtype's minimum, so ``0 * -inf`` is 0)."""
    lp = log_probs.clamp(min=torch.finfo(log_probs.dtype).min)
    return -(lp.exp() * lp).sum(-1)


def _kl(old_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``sum(p_old (log p_old - log p))`` over the last dim; log-probs clamped so that ``0 * (-inf)`` is 0."""
    low = torch.finfo(log_probs.dtype).min
    old = old_log_probs.clamp(min=low)
    return (old.exp() * (old - log_probs.clamp(min=low))).sum(-1)


class CategoricalDistribution(ActionDistribution):
    """One categorical over ``n`` actions.

    Args:
        logits: ``(*batch, n)`` unnormalised log-probabilities.
        mask: optional bool ``(*batch, n)``: the legal actions (see :meth:`ActionDistribution.masked`).

    Attributes:
        logits: the unnormalised logits (``-inf`` where masked).
        log_probs: ``log_softmax(logits)``.
        mask: the legal actions, or ``None`` (every action legal).
    """

    def __init__(self, logits: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if mask is not None:
            mask = mask | ~mask.any(dim=-1, keepdim=True)  # a row with no legal action: unmasked (terminal rows)
            logits = logits.masked_fill(~mask, -math.inf)
        self.logits = logits
        self.mask = mask
        self.log_probs = torch.log_softmax(logits, dim=-1)

    def masked(self, mask: torch.Tensor) -> CategoricalDistribution:
        """The categorical over the legal actions of bool ``mask`` ``(*batch, n)``."""
        return CategoricalDistribution(self.logits, mask if self.mask is None else mask & self.mask)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one action index per row."""
        return _sample_index(self.log_probs, generator, self.mask)

    def mode(self) -> torch.Tensor:
        """Argmax action."""
        return self.logits.argmax(dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of integer ``action`` ``(*batch)``."""
        return self.log_probs.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy per row."""
        return _entropy(self.log_probs)

    def params(self) -> torch.Tensor:
        """The normalised log-probabilities ``(*batch, n)``."""
        return self.log_probs

    def kl_from(self, old_params: torch.Tensor) -> torch.Tensor:
        """``sum(p_old (log p_old - log p))`` per row (log-probs clamped as in :meth:`entropy`)."""
        return _kl(old_params, self.log_probs)


class MultiCategoricalDistribution(ActionDistribution):
    """Independent categoricals, one per action component (``MultiDiscrete``).

    Args:
        logits: ``(*batch, sum(nvec))``, split along the last dim into ``nvec`` parts.
        nvec: number of choices of each component.
    """

    def __init__(self, logits: torch.Tensor, nvec: Sequence[int], mask: torch.Tensor | None = None) -> None:
        self.nvec = list(nvec)
        if mask is None:
            self.parts = [CategoricalDistribution(part) for part in torch.split(logits, self.nvec, -1)]
        else:
            self.parts = [
                CategoricalDistribution(part, m)
                for part, m in zip(torch.split(logits, self.nvec, -1), torch.split(mask, self.nvec, -1))
            ]

    def masked(self, mask: torch.Tensor) -> MultiCategoricalDistribution:
        """Each component restricted to its legal choices: bool ``mask`` ``(*batch, sum(nvec))``, split like logits."""
        out = MultiCategoricalDistribution.__new__(MultiCategoricalDistribution)
        out.nvec = self.nvec
        out.parts = [d.masked(m) for d, m in zip(self.parts, torch.split(mask, self.nvec, -1))]
        return out

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one index per component: ``(*batch, n)``."""
        return torch.stack([d.sample(generator) for d in self.parts], dim=-1)

    def mode(self) -> torch.Tensor:
        """Per-component argmax."""
        return torch.stack([d.mode() for d in self.parts], dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Sum of the components' log-probabilities; ``action`` is ``(*batch, n)``."""
        action = action.long()
        return torch.stack([d.log_prob(action[..., i]) for i, d in enumerate(self.parts)], dim=-1).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Sum of the components' entropies."""
        return torch.stack([d.entropy() for d in self.parts], dim=-1).sum(-1)

    def params(self) -> torch.Tensor:
        """The components' normalised log-probabilities, concatenated: ``(*batch, sum(nvec))``."""
        return torch.cat([d.log_probs for d in self.parts], dim=-1)

    def kl_from(self, old_params: torch.Tensor) -> torch.Tensor:
        """Sum of the components' KL divergences."""
        olds = torch.split(old_params, [d.log_probs.shape[-1] for d in self.parts], -1)
        return torch.stack([_kl(o, d.log_probs) for o, d in zip(olds, self.parts)], dim=-1).sum(-1)


class DiagGaussianDistribution(ActionDistribution):
    """A diagonal Gaussian over ``dim`` continuous components (unbounded; the env clips).

    Args:
        mean: ``(*batch, dim)``.
        log_std: broadcastable to ``mean``.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.mean = mean
        self.log_std = log_std
        self.std = log_std.exp()

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + std * eps``."""
        mean = self.mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + self.std * eps

    def mode(self) -> torch.Tensor:
        """The mean."""
        return self.mean

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-density summed over components: ``sum(-(a - mean)^2 / (2 std^2) - log std - log sqrt(2 pi))``."""
        z = action.to(self.mean.dtype) - self.mean
        return (-(z * z) / (2.0 * self.std * self.std) - self.log_std - _HALF_LOG_2PI).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy summed over components: ``sum(1/2 + log sqrt(2 pi) + log std)``."""
        return (self.log_std + (0.5 + _HALF_LOG_2PI)).expand_as(self.mean).sum(-1)

    def params(self) -> torch.Tensor:
        """``(*batch, 2 dim)``: the mean, then the log standard deviation."""
        return torch.cat([self.mean, self.log_std.expand_as(self.mean)], dim=-1)

    def kl_from(self, old_params: torch.Tensor) -> torch.Tensor:
        """``sum(log(std / std_old) + (std_old^2 + (mean_old - mean)^2) / (2 std^2) - 1/2)`` per row."""
        old_mean, old_log_std = old_params.chunk(2, dim=-1)
        var = self.std * self.std
        kl = self.log_std - old_log_std + ((2.0 * old_log_std).exp() + (old_mean - self.mean) ** 2) / (2.0 * var) - 0.5
        return kl.sum(-1)


def linear_forward(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` without the ``nn.Module`` call machinery (forward hooks are not run).

    Reads the parameters from the module's parameter dict: ``layer.weight`` goes through
    ``nn.Module.__getattr__``, which costs about as much as a small matmul on CPU.
    """
    params = layer._parameters
    return F.linear(x, params["weight"], params["bias"])  # type: ignore[arg-type]


def _linear(in_dim: int, out_dim: int, gain: float, bias: float = 0.0) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.constant_(layer.bias, bias)
    return layer


class ActionHead(nn.Module, abc.ABC):
    """Maps features ``(*batch, F)`` to an :class:`ActionDistribution`."""

    @abc.abstractmethod
    def forward(self, features: torch.Tensor) -> ActionDistribution:
        """The action distribution for ``features``."""


class CategoricalHead(ActionHead):
    """A linear layer to ``n`` logits (orthogonal init, gain ``gain``).

    Args:
        in_dim: feature size.
        n: number of actions.
        gain: init gain of the logits layer (small, so the initial policy is near uniform).
    """

    def __init__(self, in_dim: int, n: int, gain: float = 0.01) -> None:
        super().__init__()
        self.logits = _linear(in_dim, n, gain)

    def forward(self, features: torch.Tensor) -> ActionDistribution:
        """Categorical over the logits."""
        return CategoricalDistribution(linear_forward(self.logits, features))


class MultiCategoricalHead(ActionHead):
    """One linear layer to ``sum(nvec)`` logits, split per component.

    Args:
        in_dim: feature size.
        nvec: choices per component.
        gain: init gain of the logits layer.
    """

    def __init__(self, in_dim: int, nvec: Sequence[int], gain: float = 0.01) -> None:
        super().__init__()
        self.nvec = [int(n) for n in nvec]
        self.logits = _linear(in_dim, sum(self.nvec), gain)

    def forward(self, features: torch.Tensor) -> ActionDistribution:
        """Independent categoricals."""
        return MultiCategoricalDistribution(linear_forward(self.logits, features), self.nvec)


class GaussianHead(ActionHead):
    """A linear mean plus a learnable state-independent log-std, or a state-dependent one.

    Args:
        in_dim: feature size.
        dim: action dimensions.
        state_dependent_std: predict log-std from the features (clamped to
            ``[LOG_STD_MIN, LOG_STD_MAX]``) instead of one learnable vector.
        init_log_std: initial log standard deviation.
        gain: init gain of the mean (and log-std) layer.
    """

    def __init__(
        self, in_dim: int, dim: int, state_dependent_std: bool = False, init_log_std: float = 0.0, gain: float = 0.01
    ) -> None:
        super().__init__()
        self.mean = _linear(in_dim, dim, gain)
        self.state_dependent_std = state_dependent_std
        if state_dependent_std:
            self.log_std_layer: nn.Linear | None = _linear(in_dim, dim, gain, bias=init_log_std)
            self.log_std = None
        else:
            self.log_std_layer = None
            self.log_std = nn.Parameter(torch.full((dim,), float(init_log_std)))

    def forward(self, features: torch.Tensor) -> ActionDistribution:
        """Diagonal Gaussian."""
        mean = linear_forward(self.mean, features)
        if self.log_std_layer is not None:
            log_std = linear_forward(self.log_std_layer, features).clamp(LOG_STD_MIN, LOG_STD_MAX)
        else:
            assert self.log_std is not None
            log_std = self.log_std
        return DiagGaussianDistribution(mean, log_std)


def make_action_head(
    in_dim: int,
    action_dim: int | Sequence[int],
    continuous: bool,
    state_dependent_std: bool = False,
    init_log_std: float = 0.0,
    gain: float = 0.01,
) -> ActionHead:
    """Build the head for an action space description.

    Args:
        in_dim: feature size.
        action_dim: number of actions (discrete), a list of choices per component
            (multi-discrete) or the number of dimensions (continuous).
        continuous: Gaussian head (``action_dim`` must then be an int).
        state_dependent_std: see :class:`GaussianHead`.
        init_log_std: see :class:`GaussianHead`.
        gain: init gain of the output layer.

    Returns:
        The head module.

    Raises:
        ValueError: a bad ``action_dim`` (message shows it).
    """
    if continuous:
        if isinstance(action_dim, bool) or not isinstance(action_dim, int) or action_dim < 1:
            raise ValueError(f"continuous_action=True needs action_dim to be a positive int, got {action_dim!r}")
        if not math.isfinite(init_log_std):
            raise ValueError(f"init_log_std must be finite, got {init_log_std!r}")
        return GaussianHead(in_dim, action_dim, state_dependent_std, init_log_std, gain)
    if isinstance(action_dim, int) and not isinstance(action_dim, bool):
        if action_dim < 1:
            raise ValueError(f"action_dim must be >= 1, got {action_dim}")
        return CategoricalHead(in_dim, action_dim, gain)
    nvec = list(action_dim) if isinstance(action_dim, Sequence) else []
    if not nvec or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nvec):
        raise ValueError(f"multi-discrete action_dim must be a non-empty list of positive ints, got {action_dim!r}")
    return MultiCategoricalHead(in_dim, nvec, gain)
