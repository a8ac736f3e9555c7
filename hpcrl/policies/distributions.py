"""Action heads: map features to torch.distributions for discrete, multi-discrete and continuous actions."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Categorical, Normal

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
]

#: bounds applied to a state-dependent log standard deviation (keeps exp() finite).
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


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


def _sample_categorical(dist: Categorical, generator: torch.Generator | None) -> torch.Tensor:
    probs = dist.probs
    flat = probs.reshape(-1, probs.shape[-1])
    idx = torch.multinomial(flat, 1, replacement=True, generator=generator)
    return idx.reshape(probs.shape[:-1])


class CategoricalDistribution(ActionDistribution):
    """One categorical over ``n`` actions.

    Args:
        logits: ``(*batch, n)`` unnormalised log-probabilities.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        self.dist = Categorical(logits=logits, validate_args=False)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one action index per row."""
        return _sample_categorical(self.dist, generator)

    def mode(self) -> torch.Tensor:
        """Argmax action."""
        return self.dist.logits.argmax(dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-probability of integer ``action`` ``(*batch)``."""
        return self.dist.log_prob(action.long())

    def entropy(self) -> torch.Tensor:
        """Entropy per row."""
        return self.dist.entropy()


class MultiCategoricalDistribution(ActionDistribution):
    """Independent categoricals, one per action component (``MultiDiscrete``).

    Args:
        logits: ``(*batch, sum(nvec))``, split along the last dim into ``nvec`` parts.
        nvec: number of choices of each component.
    """

    def __init__(self, logits: torch.Tensor, nvec: Sequence[int]) -> None:
        self.dists = [Categorical(logits=part, validate_args=False) for part in torch.split(logits, list(nvec), -1)]

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one index per component: ``(*batch, n)``."""
        return torch.stack([_sample_categorical(d, generator) for d in self.dists], dim=-1)

    def mode(self) -> torch.Tensor:
        """Per-component argmax."""
        return torch.stack([d.logits.argmax(dim=-1) for d in self.dists], dim=-1)

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Sum of the components' log-probabilities; ``action`` is ``(*batch, n)``."""
        action = action.long()
        return torch.stack([d.log_prob(action[..., i]) for i, d in enumerate(self.dists)], dim=-1).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Sum of the components' entropies."""
        return torch.stack([d.entropy() for d in self.dists], dim=-1).sum(-1)


class DiagGaussianDistribution(ActionDistribution):
    """A diagonal Gaussian over ``dim`` continuous components (unbounded; the env clips).

    Args:
        mean: ``(*batch, dim)``.
        log_std: broadcastable to ``mean``.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor) -> None:
        self.dist = Normal(mean, log_std.exp().expand_as(mean), validate_args=False)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``mean + std * eps``."""
        loc, scale = self.dist.loc, self.dist.scale
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        return loc + scale * eps

    def mode(self) -> torch.Tensor:
        """The mean."""
        return self.dist.loc

    def log_prob(self, action: torch.Tensor) -> torch.Tensor:
        """Log-density summed over components."""
        return self.dist.log_prob(action.to(self.dist.loc.dtype)).sum(-1)

    def entropy(self) -> torch.Tensor:
        """Entropy summed over components."""
        return self.dist.entropy().sum(-1)


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
        return CategoricalDistribution(self.logits(features))


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
        return MultiCategoricalDistribution(self.logits(features), self.nvec)


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
        mean = self.mean(features)
        if self.log_std_layer is not None:
            log_std = self.log_std_layer(features).clamp(LOG_STD_MIN, LOG_STD_MAX)
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
