"""The torch modules of the actor-critic policies: input encoders, MLP/GRU/LSTM torsos and the two-headed net."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpcrl.policies.distributions import ActionDistribution, linear_forward, make_action_head

__all__ = [
    "default_init",
    "make_activation",
    "InputEncoder",
    "NatureCNN",
    "Torso",
    "ActorCriticNet",
    "NetOutput",
    "RnnState",
    "RNN_TYPES",
]

#: the recurrent cells a torso can end with (``rnn_type``).
RNN_TYPES = ("gru", "lstm")

#: a torso's recurrent state in torch layout: a GRU's ``h`` ``(layers, b, hidden)``, or an LSTM's ``(h, c)``.
RnnState = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}

#: the same activations as functions (with the modules' default arguments), for the dense hot path.
_FUNCTIONAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": torch.relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
    "leaky_relu": F.leaky_relu,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (``tanh``, ``relu``, ``elu``, ``gelu``, ``silu``, ``leaky_relu``).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_ACTIVATIONS)}") from None


_M = TypeVar("_M", bound=nn.Module)


def _init(layer: _M, gain: float) -> _M:
    weight = getattr(layer, "weight", None)
    if weight is not None:
        nn.init.orthogonal_(weight, gain)
    bias = getattr(layer, "bias", None)
    if bias is not None:
        nn.init.zeros_(bias)
    return layer


def default_init(net: nn.Module) -> None:
    """Give every dense, convolutional and recurrent layer of ``net`` PyTorch's default initialisation again.

    What SB3 calls ``ortho_init=False``: the layers keep the init ``torch.nn`` gives them (Kaiming-uniform
    weights, small uniform biases). Parameters outside such layers (a Gaussian head's log-std, the
    observation normaliser's statistics) are left as they are.
    """
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.GRU, nn.LSTM)):
            module.reset_parameters()


class NatureCNN(nn.Module):
    """The Nature-DQN convolutional encoder for ``(C, H, W)`` images (uint8 inputs are scaled by 1/255).

    Images of at least 36x36 get the classic 8/4/3 kernels with strides 4/2/1; smaller
    ones get two stride-2 3x3 convolutions. Either way the output is a 512-wide ReLU layer.

    Args:
        shape: ``(C, H, W)``.
    """

    OUT_DIM = 512

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        c, h, w = (int(s) for s in shape)
        g = math.sqrt(2.0)
        if min(h, w) >= 36:
            convs: list[nn.Module] = [
                _init(nn.Conv2d(c, 32, 8, stride=4), g),
                nn.ReLU(),
                _init(nn.Conv2d(32, 64, 4, stride=2), g),
                nn.ReLU(),
                _init(nn.Conv2d(64, 64, 3, stride=1), g),
                nn.ReLU(),
            ]
        else:
            convs = [
                _init(nn.Conv2d(c, 32, 3, stride=2, padding=1), g),
                nn.ReLU(),
                _init(nn.Conv2d(32, 64, 3, stride=2, padding=1), g),
                nn.ReLU(),
            ]
        self.convs = nn.Sequential(*convs, nn.Flatten())
        with torch.no_grad():
            n_flat = int(self.convs(torch.zeros(1, c, h, w)).shape[1])
        self.fc = nn.Sequential(_init(nn.Linear(n_flat, self.OUT_DIM), g), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` -> ``(N, 512)``."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return self.fc(self.convs(x))  # type: ignore[no-any-return]


class InputEncoder(nn.Module):
    """Encodes named inputs and concatenates them, in the given order.

    Inputs of shape ``(C, H, W)`` go through a :class:`NatureCNN`; every other shape is
    flattened and cast to float32.

    Args:
        shapes: input name -> per-row shape.
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.shapes = {k: tuple(int(s) for s in v) for k, v in shapes.items()}
        self.cnns = nn.ModuleDict({k: NatureCNN(s) for k, s in self.shapes.items() if len(s) == 3})
        self._cnn_names = frozenset(self.cnns)
        cnn_dims = {k: NatureCNN.OUT_DIM for k in self.cnns}
        self.out_dim = sum(cnn_dims.get(k, int(np.prod(s))) for k, s in self.shapes.items())

    def forward(self, inputs: Mapping[str, torch.Tensor], n: int) -> torch.Tensor:
        """Encode ``n`` rows: each input is ``(n, *shape)`` (any leading dims multiplying to ``n``)."""
        parts = []
        for name, shape in self.shapes.items():
            x = inputs[name]
            if name in self._cnn_names:
                parts.append(self.cnns[name](x.reshape(n, *shape)))
            else:
                x = x.reshape(n, -1)
                parts.append(x if x.dtype == torch.float32 else x.float())
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


class Torso(nn.Module):
    """Encoder, then ``num_dense_layers`` dense layers, then an optional GRU or LSTM.

    Hidden dense layers use orthogonal init with gain sqrt(2) and zero bias; the recurrent
    cell (``torch.nn.GRU`` or ``torch.nn.LSTM``) uses orthogonal weights and zero biases, except the
    LSTM's forget-gate bias, which starts at 1 (Jozefowicz et al. 2015: the cell keeps its memory
    from the start of training).

    Args:
        shapes: input name -> per-row shape.
        hidden_dim: width of the dense layers.
        num_dense_layers: number of dense layers (0: the encoder output feeds the recurrent cell/heads).
        activation: activation name (see :func:`make_activation`).
        num_rnn_layers: recurrent layers (0: none).
        rnn_hidden_dim: recurrent hidden size.
        rnn_type: ``"gru"`` or ``"lstm"`` (see :data:`RNN_TYPES`).

    Raises:
        ValueError: unknown ``rnn_type``.
    """

    def __init__(
        self,
        shapes: Mapping[str, tuple[int, ...]],
        hidden_dim: int,
        num_dense_layers: int,
        activation: str,
        num_rnn_layers: int,
        rnn_hidden_dim: int,
        rnn_type: str = "gru",
    ) -> None:
        super().__init__()
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {list(RNN_TYPES)}, got {rnn_type!r}")
        self.encoder = InputEncoder(shapes)
        layers: list[nn.Module] = []
        dim = self.encoder.out_dim
        for _ in range(num_dense_layers):
            layers += [_init(nn.Linear(dim, hidden_dim), math.sqrt(2.0)), make_activation(activation)]
            dim = hidden_dim
        self.mlp = nn.Sequential(*layers)
        # The forward pass calls F.linear and the activation function over these layers' parameters
        # instead of going through nn.Sequential: the same math without per-module call overhead.
        self._dense: list[nn.Linear] = [m for m in layers if isinstance(m, nn.Linear)]
        make_activation(activation)  # validates the name even without dense layers
        self._act = _FUNCTIONAL[activation]
        # One attribute per cell type, so the parameter names (hence checkpoints) say which cell it is.
        self.gru: nn.GRU | None = None
        self.lstm: nn.LSTM | None = None
        self.rnn_type = rnn_type
        if num_rnn_layers > 0:
            rnn: nn.GRU | nn.LSTM
            if rnn_type == "lstm":
                rnn = self.lstm = nn.LSTM(dim, rnn_hidden_dim, num_layers=num_rnn_layers)
            else:
                rnn = self.gru = nn.GRU(dim, rnn_hidden_dim, num_layers=num_rnn_layers)
            for name, p in rnn.named_parameters():
                if "weight" in name:
                    nn.init.orthogonal_(p)
                else:
                    nn.init.zeros_(p)
            if self.lstm is not None:  # forget gates start open: input-side bias 1 on gate block 1 (i, f, g, o)
                with torch.no_grad():
                    for layer in range(num_rnn_layers):
                        getattr(self.lstm, f"bias_ih_l{layer}")[rnn_hidden_dim : 2 * rnn_hidden_dim].fill_(1.0)
            dim = rnn_hidden_dim
        self.out_dim = dim

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        t: int,
        b: int,
        hx: RnnState | None,
        on_reset: torch.Tensor | None,
        burn_in: int = 0,
    ) -> tuple[torch.Tensor, RnnState | None]:
        """Run ``t`` time steps of ``b`` rows.

        Args:
            inputs: name -> ``(t, b, *shape)`` (or ``(t * b, *shape)``).
            t: time steps.
            b: batch rows.
            hx: recurrent state before row 0: a GRU's ``(layers, b, hidden)`` or an LSTM's ``(h, c)``, each
                ``(layers, b, hidden)`` (``None`` for an MLP torso).
            on_reset: bool ``(t, b)``: zero the recurrent state (both ``h`` and ``c`` of an LSTM) before
                processing that row (``None``: never).
            burn_in: run the recurrent cell over the first ``burn_in`` rows without autograd: they only warm
                up the state, and no gradient flows back through them (their output features carry none either).

        Returns:
            Features ``(t, b, F)`` and the recurrent state after the last row (``None`` without one).
        """
        x = self.encoder.forward(inputs, t * b)
        act = self._act
        for layer in self._dense:
            x = act(linear_forward(layer, x))
        x = x.reshape(t, b, -1)
        rnn: nn.Module | None = self.gru if self.gru is not None else self.lstm
        if rnn is None:
            return x, None
        if hx is None:
            raise ValueError(f"a recurrent torso ({self.rnn_type}) needs a policy state, got None")
        if burn_in > 0:
            if burn_in >= t:
                raise ValueError(f"burn_in ({burn_in}) must be smaller than the rows replayed ({t})")
            with torch.no_grad():
                warm, hx = self._replay(rnn, x[:burn_in], hx, None if on_reset is None else on_reset[:burn_in])
            out, hx = self._replay(rnn, x[burn_in:], hx, None if on_reset is None else on_reset[burn_in:])
            return torch.cat([warm, out], dim=0), hx
        return self._replay(rnn, x, hx, on_reset)

    @staticmethod
    def _replay(
        rnn: nn.Module, x: torch.Tensor, hx: RnnState, on_reset: torch.Tensor | None
    ) -> tuple[torch.Tensor, RnnState]:
        """The cell over ``x`` ``(t, b, F)`` from ``hx``, zeroing the state before the rows with ``on_reset``."""
        t = int(x.shape[0])
        if on_reset is None:
            out, hx = rnn(x, hx)
            return out, hx
        # Run the cell over segments without resets; zero the state where a segment starts with one.
        starts = [0] + [int(s) for s in torch.nonzero(on_reset[1:].any(dim=1)).flatten().add(1).tolist()] + [t]
        keep = (~on_reset).to(x.dtype).unsqueeze(-1)  # (t, b, 1)
        outs = []
        for s, e in itertools.pairwise(starts):
            k = keep[s].unsqueeze(0)
            hx = (hx[0] * k, hx[1] * k) if isinstance(hx, tuple) else hx * k
            out, hx = rnn(x[s:e], hx)
            outs.append(out)
        return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)), hx


@dataclasses.dataclass
class NetOutput:
    """What :class:`ActorCriticNet` computes for ``(t, b)`` rows.

    Attributes:
        dist: action distribution, batch ``(t, b)``.
        value: ``(t, b, value_dim)``.
        aux_value: ``(t, b, value_dim)`` from the auxiliary head on the actor features, or ``None``.
        actor_hx: actor (or shared) recurrent state after the last row (GRU ``h`` or LSTM ``(h, c)``), or ``None``.
        critic_hx: critic recurrent state (separate variant), or ``None``.
    """

    dist: ActionDistribution
    value: torch.Tensor
    aux_value: torch.Tensor | None
    actor_hx: RnnState | None
    critic_hx: RnnState | None


class ActorCriticNet(nn.Module):
    """Actor and critic, either fully separate (two torsos) or sharing one torso (two heads).

    Args:
        actor_shapes: named inputs of the actor (and of the shared torso).
        critic_shapes: named inputs of the critic torso (ignored when ``shared``).
        action_dim: see :func:`hpcrl.policies.distributions.make_action_head`.
        continuous_action: Gaussian action head.
        shared: one torso with two heads instead of two torsos.
        hidden_dim: width of dense layers.
        num_dense_layers: dense layers per torso.
        activation: activation name.
        num_rnn_layers: recurrent layers per torso (0 = MLP).
        rnn_hidden_dim: recurrent hidden size.
        value_dim: outputs of the value head.
        auxiliary_head: add a value head on the actor features (separate variant only).
        state_dependent_std: see :class:`hpcrl.policies.distributions.GaussianHead`.
        init_log_std: see :class:`hpcrl.policies.distributions.GaussianHead`.
        rnn_type: ``"gru"`` or ``"lstm"`` (see :class:`Torso`).
    """

    def __init__(
        self,
        actor_shapes: Mapping[str, tuple[int, ...]],
        critic_shapes: Mapping[str, tuple[int, ...]],
        action_dim: int | Sequence[int],
        continuous_action: bool,
        shared: bool,
        hidden_dim: int,
        num_dense_layers: int,
        activation: str,
        num_rnn_layers: int,
        rnn_hidden_dim: int,
        value_dim: int,
        auxiliary_head: bool,
        state_dependent_std: bool,
        init_log_std: float,
        rnn_type: str = "gru",
    ) -> None:
        super().__init__()
        torso_args = (hidden_dim, num_dense_layers, activation, num_rnn_layers, rnn_hidden_dim, rnn_type)
        self.shared = shared
        self.actor = Torso(actor_shapes, *torso_args)
        self.critic: Torso | None = None if shared else Torso(critic_shapes, *torso_args)
        critic_dim = self.actor.out_dim if self.critic is None else self.critic.out_dim
        self.action_head = make_action_head(
            self.actor.out_dim, action_dim, continuous_action, state_dependent_std, init_log_std
        )
        self.value_head = _init(nn.Linear(critic_dim, value_dim), 1.0)
        self.aux_value_head = _init(nn.Linear(self.actor.out_dim, value_dim), 1.0) if auxiliary_head else None

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        t: int,
        b: int,
        actor_hx: RnnState | None = None,
        critic_hx: RnnState | None = None,
        on_reset: torch.Tensor | None = None,
        burn_in: int = 0,
    ) -> NetOutput:
        """Evaluate ``(t, b)`` rows.

        Args:
            inputs: every named input either torso needs, leaves ``(t, b, *shape)``.
            t: time steps.
            b: batch rows.
            actor_hx: actor/shared recurrent state (see :meth:`Torso.forward`; recurrent only).
            critic_hx: critic recurrent state (separate recurrent only).
            on_reset: bool ``(t, b)``: zero recurrent states before these rows.
            burn_in: leading rows that only warm up the recurrent states (see :meth:`Torso.forward`).

        Returns:
            A :class:`NetOutput`.
        """
        # Submodules' forward() are called directly (no hooks are used): on small CPU batches the
        # nn.Module call machinery costs as much as the layers themselves.
        actor_feat, actor_hx = self.actor.forward(inputs, t, b, actor_hx, on_reset, burn_in)
        dist = self.action_head.forward(actor_feat)
        aux = None
        if self.aux_value_head is not None:
            aux = linear_forward(self.aux_value_head, actor_feat)
        if self.critic is not None:
            critic_feat, critic_hx = self.critic.forward(inputs, t, b, critic_hx, on_reset, burn_in)
        else:
            critic_feat = actor_feat
        value = linear_forward(self.value_head, critic_feat)
        return NetOutput(dist, value, aux, actor_hx, critic_hx)
