"""Actor-critic policies (separate or shared networks; discrete, multi-discrete or Gaussian actions; MLP, GRU or LSTM).

Importing this module does not import torch (actor ranks unpack its NamedArray records);
torch is imported when a policy is built. Two registered factories:

* ``actor-critic-separate`` (:func:`make_separate`): actor and critic are two complete
  networks (encoders, dense layers, GRU or LSTM); no parameter is shared, even on common inputs.
  With ``state_dim`` the critic reads those inputs (a centralized critic) instead of the
  actor's; ``auxiliary_head=True`` adds a PPG-style value head on the actor's features.
* ``actor-critic-shared`` (:func:`make_shared`): one torso, a policy head and a value head.
  ``state_dim`` is ignored (the actor must not depend on a centralized state).

Examples:
    >>> from hpcrl.api import config
    >>> from hpcrl.api.policy import make
    >>> policy = make(config.Policy(type_="actor-critic-separate",
    ...     args=dict(obs_dim={"obs": 187}, state_dim={"state": 623}, action_dim=16)))
    >>> policy.default_policy_state is None
    True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.data import AnalyzedResult, PPGAuxResult, RolloutRequest, RolloutResult, SampleBatch
from hpcrl.api.environment import AVAILABLE_ACTION, Action
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import SingleModelPytorchPolicy
from hpcrl.policies.spaces import (
    check_policy_against_spaces,
    input_shapes,
    policy_args_from_spaces,
)

if TYPE_CHECKING:
    import torch

    from hpcrl.policies.networks import RnnState

__all__ = [
    "ActorCriticPolicy",
    "ActorCriticState",
    "SeparateActorCriticState",
    "ActorCriticLSTMState",
    "SeparateActorCriticLSTMState",
    "RolloutAnalysis",
    "make_separate",
    "make_shared",
    "input_shapes",
    "policy_args_from_spaces",
    "check_policy_against_spaces",
]

logger = logging.getLogger(__name__)


class ActorCriticState(NamedArray):
    """GRU state of the shared variant: ``hx`` is ``(layers, 1, hidden)`` per agent."""

    hx: np.ndarray


class SeparateActorCriticState(NamedArray):
    """GRU states of the separate variant: one per network, each ``(layers, 1, hidden)`` per agent."""

    actor_hx: np.ndarray
    critic_hx: np.ndarray


class ActorCriticLSTMState(NamedArray):
    """LSTM state of the shared variant: hidden ``hx`` and cell ``cx``, each ``(layers, 1, hidden)`` per agent."""

    hx: np.ndarray
    cx: np.ndarray


class SeparateActorCriticLSTMState(NamedArray):
    """LSTM states of the separate variant: hidden and cell state per network, each ``(layers, 1, hidden)``."""

    actor_hx: np.ndarray
    actor_cx: np.ndarray
    critic_hx: np.ndarray
    critic_cx: np.ndarray


#: (rnn_type, shared) -> the policy state record and its fields, in the order the torsos use them.
_STATE_RECORDS: dict[tuple[str, bool], type[NamedArray]] = {
    ("gru", True): ActorCriticState,
    ("gru", False): SeparateActorCriticState,
    ("lstm", True): ActorCriticLSTMState,
    ("lstm", False): SeparateActorCriticLSTMState,
}


class RolloutAnalysis(NamedArray):
    """What a rollout keeps for training: behaviour ``log_prob`` ``(B, 1)`` and ``value`` ``(B, value_dim)``."""

    log_prob: np.ndarray
    value: np.ndarray


# ====================================================================== the policy
class ActorCriticPolicy(SingleModelPytorchPolicy):
    """An actor-critic policy on one :class:`hpcrl.policies.networks.ActorCriticNet`.

    ``rollout`` samples actions (the mode for ``is_evaluation`` rows) and returns
    ``Action(x=...)`` (int64 ``(B,)`` discrete, int64 ``(B, n)`` multi-discrete, float32
    ``(B, dim)`` continuous), the next policy state and a :class:`RolloutAnalysis`.
    ``analyze`` re-evaluates a :class:`~hpcrl.api.data.SampleBatch` and returns an
    :class:`~hpcrl.api.data.AnalyzedResult` for all ``T + 1`` rows.

    Args:
        shared: one torso with two heads (``actor-critic-shared``) instead of two networks.
        obs_dim: actor inputs (see :func:`input_shapes`); ``(C, H, W)`` shapes get a CNN.
        action_dim: number of actions, a list of choices per component, or the number of
            continuous dimensions.
        state_dim: centralized-critic inputs (separate variant: the critic reads these
            instead of ``obs_dim``; shared variant: ignored).
        continuous_action: Gaussian actions.
        hidden_dim: dense layer width.
        num_dense_layers: dense layers per torso.
        activation: activation name (``tanh``, ``relu``, ...).
        num_rnn_layers: recurrent layers (0 = MLP, no policy state).
        rnn_hidden_dim: recurrent hidden size (default ``hidden_dim``).
        rnn_type: the recurrent cell when ``num_rnn_layers > 0``: ``"gru"`` (state ``hx``, or
            ``actor_hx``/``critic_hx`` for the separate variant) or ``"lstm"`` (hidden and cell state:
            ``hx``/``cx``, or ``actor_hx``/``actor_cx``/``critic_hx``/``critic_cx``).
        chunk_len: not a policy argument here: chunked training is ``trainer.args.chunk_len``; giving it
            raises ``ValueError`` that says so (SRL takes it as a policy argument).
        value_dim: value outputs (one per reward component).
        auxiliary_head: PPG-style auxiliary value head on the actor features (separate only).
        state_dependent_std: Gaussian log-std predicted from features instead of learned per dimension.
        init_log_std: initial Gaussian log-std.
        ortho_init: orthogonal initialisation (hidden layers gain sqrt(2), action head 0.01, value head 1,
            zero biases; recurrent cells orthogonal). ``False``: every layer keeps PyTorch's default
            initialisation (SB3's and rl-zoo's ``ortho_init=False``, used by its MuJoCo settings); the
            Gaussian log-std still starts at ``init_log_std``.
        critic_uses_obs: with ``state_dim``, the separate critic reads the actor inputs too.
        normalize_obs: normalise the ``obs_norm_keys`` inputs by their running mean and variance
            (:mod:`hpcrl.policies.obs_norm`); the stats are part of the weights (published, checkpointed)
            and the trainer updates them (:meth:`update_normalizer`).
        obs_norm_keys: the vector inputs to normalise (default ``["obs"]``); only with ``normalize_obs``.
        obs_clip: normalised inputs are clipped to ``[-obs_clip, obs_clip]``.
        seed: seed for the weight init and the action sampler.
        device: where the model lives (``"auto"``: cuda when available).

    Attributes:
        policy_args: the normalised ``obs_dim``/``state_dim``/``action_dim``/``continuous_action``
            (plain types), for :func:`check_policy_against_spaces`.

    Raises:
        ValueError / TypeError: bad arguments (the message names the argument).
    """

    takes_seed = True

    @classmethod
    def args_from_spaces(cls, args: dict[str, Any], observation_space: Any, action_space: Any) -> dict[str, Any]:
        """``obs_dim``/``state_dim``/``action_dim``/``continuous_action`` from the spaces where ``args`` omits them.

        See :func:`policy_args_from_spaces`; given arguments are kept and checked with
        :func:`check_policy_against_spaces`.

        Raises:
            ValueError: the env declares no spaces and ``obs_dim`` or ``action_dim`` is missing, or a given
                argument does not fit the spaces (names the input and both shapes).
        """
        if observation_space is None or action_space is None:
            if "obs_dim" not in args or "action_dim" not in args:
                raise ValueError(
                    "the env declares no observation/action spaces, so policy.args.obs_dim and "
                    "policy.args.action_dim must be given"
                )
            return args
        filled = dict(args)
        for key, value in policy_args_from_spaces(observation_space, action_space).items():
            filled.setdefault(key, value)
        check_policy_against_spaces(filled, observation_space, action_space)
        return filled

    def __init__(
        self,
        *,
        shared: bool,
        obs_dim: int | Mapping[str, Any],
        action_dim: int | Sequence[int],
        state_dim: int | Mapping[str, Any] | None = None,
        continuous_action: bool = False,
        hidden_dim: int = 64,
        num_dense_layers: int = 2,
        activation: str = "tanh",
        num_rnn_layers: int = 0,
        rnn_hidden_dim: int | None = None,
        rnn_type: str = "gru",
        value_dim: int = 1,
        auxiliary_head: bool = False,
        state_dependent_std: bool = False,
        init_log_std: float = 0.0,
        ortho_init: bool = True,
        critic_uses_obs: bool = False,
        normalize_obs: bool = False,
        obs_norm_keys: Sequence[str] | None = None,
        obs_clip: float = 10.0,
        seed: int = 0,
        device: str = "cpu",
        chunk_len: Any = None,
    ) -> None:
        import torch

        from hpcrl.policies.networks import RNN_TYPES, ActorCriticNet, default_init

        if chunk_len is not None:
            raise ValueError(
                f"policy.args.chunk_len={chunk_len!r}: chunked training of recurrent policies is a trainer "
                f"argument in hpcrl; move it to trainer.args.chunk_len (with an optional trainer.args.burn_in)"
            )
        if rnn_type not in RNN_TYPES:
            raise ValueError(f"rnn_type must be one of {list(RNN_TYPES)}, got {rnn_type!r}")
        if not isinstance(ortho_init, bool):
            raise ValueError(f"ortho_init must be true or false, got {ortho_init!r}")

        actor_shapes = input_shapes(obs_dim, "obs_dim")
        if not actor_shapes:
            raise ValueError("obs_dim must name at least one input")
        state_shapes = input_shapes(state_dim if not isinstance(state_dim, int) else {"state": state_dim}, "state_dim")
        if shared and state_shapes:
            logger.info("actor-critic-shared ignores state_dim %s (the shared torso reads obs_dim only)", state_shapes)
            state_shapes = {}
        if shared and auxiliary_head:
            raise ValueError("auxiliary_head=True needs actor-critic-separate (the shared torso has one value head)")
        critic_shapes = dict(state_shapes) if state_shapes else dict(actor_shapes)
        if state_shapes and critic_uses_obs:
            critic_shapes = {**actor_shapes, **state_shapes}
        for name, value in (("hidden_dim", hidden_dim), ("value_dim", value_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_dense_layers < 0 or num_rnn_layers < 0:
            raise ValueError(
                f"num_dense_layers and num_rnn_layers must be >= 0, got {num_dense_layers}, {num_rnn_layers}"
            )
        rnn_hidden = int(rnn_hidden_dim) if rnn_hidden_dim is not None else int(hidden_dim)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = ActorCriticNet(
                actor_shapes,
                critic_shapes,
                action_dim,
                bool(continuous_action),
                bool(shared),
                int(hidden_dim),
                int(num_dense_layers),
                activation,
                int(num_rnn_layers),
                rnn_hidden,
                int(value_dim),
                bool(auxiliary_head),
                bool(state_dependent_std),
                float(init_log_std),
                rnn_type,
            )
            if not ortho_init:
                default_init(net)
        super().__init__(net)
        self._ac_net = net
        self._obs_norm = _obs_normalizer(net, normalize_obs, obs_norm_keys, obs_clip, {**actor_shapes, **critic_shapes})
        self.shared = bool(shared)
        self.continuous_action = bool(continuous_action)
        self.value_dim = int(value_dim)
        self.num_rnn_layers = int(num_rnn_layers)
        self.rnn_hidden_dim = rnn_hidden
        self.rnn_type = rnn_type
        self._state_cls = _STATE_RECORDS[(rnn_type, self.shared)]
        self.actor_inputs = actor_shapes
        self.critic_inputs = critic_shapes if not shared else dict(actor_shapes)
        self._input_names = list(dict.fromkeys([*self.actor_inputs, *self.critic_inputs]))
        self._seed = int(seed)
        self._gen: torch.Generator | None = None
        self.policy_args: dict[str, Any] = {
            "obs_dim": {k: list(v) for k, v in actor_shapes.items()},
            "state_dim": {k: list(v) for k, v in state_shapes.items()} or None,
            "action_dim": action_dim,
            "continuous_action": bool(continuous_action),
        }
        self._num_logits = 0 if continuous_action else int(np.sum(action_dim))  # logits of the head
        self._on_cpu = True
        self.to(device)

    # ------------------------------------------------------------------ state
    @property
    def default_policy_state(self) -> NamedArray | None:
        """``None`` for an MLP; zero recurrent state(s) ``(layers, 1, hidden)`` float32 otherwise.

        One field per state tensor (see ``rnn_type``): a GRU has ``hx`` (separate: ``actor_hx``,
        ``critic_hx``), an LSTM adds the cell state ``cx`` (separate: ``actor_cx``, ``critic_cx``).
        """
        if self.num_rnn_layers == 0:
            return None
        shape = (self.num_rnn_layers, 1, self.rnn_hidden_dim)
        return self._state_cls(**{name: np.zeros(shape, np.float32) for name in self._state_cls._fields})

    def to(self, device: Any) -> ActorCriticPolicy:
        """Move the model to ``device`` (``"auto"``: cuda when available); the sampler gets a fresh generator there."""
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        super().to(device)
        self._on_cpu = torch.device(device).type == "cpu"
        self._gen = None
        return self

    def _generator(self) -> torch.Generator:
        if self._gen is None:
            import torch

            self._gen = torch.Generator(device=self._device)
            self._gen.manual_seed(self._seed)
        return self._gen

    def _tensor(self, x: Any) -> torch.Tensor:
        import torch

        if isinstance(x, torch.Tensor):
            t = x
        else:
            arr = np.asarray(x)
            if not arr.flags.writeable or not arr.flags.c_contiguous:
                arr = np.array(arr, copy=True, order="C")
            t = torch.from_numpy(arr)
        return t if self._on_cpu else t.to(self._device, non_blocking=True)

    def _inputs(self, obs: NamedArray) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._input_names:
            if name not in obs:
                raise KeyError(f"policy input {name!r} is missing from the observation; it has {obs.keys()}")
            out[name] = self._tensor(obs[name])
        return out if self._obs_norm is None else self._obs_norm.normalize(out)

    def _action_mask(self, obs: NamedArray, t: int, b: int) -> torch.Tensor | None:
        """The bool ``(t, b, logits)`` mask of the observation field ``available_action``, or ``None``.

        Raises:
            ValueError: the policy's actions are continuous, or the field's shape is not ``(rows, logits)``.
        """
        if AVAILABLE_ACTION not in obs:
            return None
        if self.continuous_action:
            raise ValueError(
                f"{type(self).__name__}: the observation field {AVAILABLE_ACTION!r} masks discrete and multi-discrete "
                f"actions, but this policy's actions are continuous"
            )
        m = self._tensor(obs[AVAILABLE_ACTION])
        n = self._num_logits
        if m.dim() < 1 or m.shape[-1] != n or m.numel() != t * b * n:
            raise ValueError(
                f"{type(self).__name__}: observation field {AVAILABLE_ACTION!r} has shape {tuple(m.shape)}, "
                f"expected {(b, n) if t == 1 else (t, b, n)} (one 0/1 entry per action of the head, action_dim="
                f"{self.policy_args['action_dim']})"
            )
        return m.reshape(t, b, n).bool()

    def _states(self, state: NamedArray | None, b: int) -> tuple[RnnState | None, RnnState | None]:
        """Row-major states ``(B, layers, hidden)`` -> the torsos' layout ``(layers, B, hidden)``.

        Returns:
            ``(actor, critic)`` states: a GRU's tensor or an LSTM's ``(h, c)``; ``critic`` is ``None`` for
            the shared variant, both are ``None`` for an MLP.
        """
        if self.num_rnn_layers == 0:
            return None, None
        if state is None:
            raise ValueError(
                "a recurrent actor-critic policy needs policy_state (rows of default_policy_state), got None"
            )
        out = {}
        for name in self._state_cls._fields:
            if name not in state:
                raise ValueError(
                    f"policy_state has no field {name!r} (it has {state.keys()}); a {self.rnn_type} policy's "
                    f"state has {list(self._state_cls._fields)}"
                )
            t = self._tensor(state[name]).float()
            if t.shape != (b, self.num_rnn_layers, self.rnn_hidden_dim):
                raise ValueError(
                    f"policy_state.{name} has shape {tuple(t.shape)}, expected "
                    f"({b}, {self.num_rnn_layers}, {self.rnn_hidden_dim}) (batch, layers, hidden)"
                )
            out[name] = t.transpose(0, 1).contiguous()
        if self.rnn_type == "lstm":
            if self.shared:
                return (out["hx"], out["cx"]), None
            return (out["actor_hx"], out["actor_cx"]), (out["critic_hx"], out["critic_cx"])
        return (out["hx"], None) if self.shared else (out["actor_hx"], out["critic_hx"])

    def _state_record(self, actor: RnnState | None, critic: RnnState | None) -> NamedArray | None:
        """The torsos' states after a rollout step as a policy-state record of ``(B, layers, hidden)`` rows."""
        if actor is None:
            return None
        parts: list[RnnState] = [actor] if self.shared else [actor, critic]  # type: ignore[list-item]
        tensors: list[torch.Tensor] = []
        for part in parts:
            tensors.extend(part if isinstance(part, tuple) else (part,))
        return self._state_cls(
            **{name: self._numpy(t.transpose(0, 1)) for name, t in zip(self._state_cls._fields, tensors, strict=True)}
        )

    # ------------------------------------------------------------------ acting
    def rollout(self, request: RolloutRequest, **kwargs: Any) -> RolloutResult:
        """Act on a batch: sample (or take the mode for ``is_evaluation`` rows).

        With an observation field ``available_action`` (0/1 or bool per logit), masked actions get
        probability 0: they are never sampled nor taken as the mode, and the recorded log-prob is the
        masked distribution's.

        Args:
            request: obs leaves ``(B, ...)``; ``policy_state`` rows ``(B, layers, hidden)`` when recurrent.
            **kwargs: unused.

        Returns:
            ``RolloutResult(action=Action(x), policy_state, analyzed_result=RolloutAnalysis)``, numpy.
        """
        import torch

        with torch.inference_mode():
            inputs = self._inputs(request.obs)
            b = int(next(iter(inputs.values())).shape[0])
            actor_hx, critic_hx = self._states(request.policy_state, b)
            out = self._ac_net.forward(inputs, 1, b, actor_hx, critic_hx)
            dist = out.dist
            mask = self._action_mask(request.obs, 1, b)
            if mask is not None:
                dist = dist.masked(mask)
            action = dist.sample(self._generator())
            ev = request.is_evaluation
            if ev is not None and np.asarray(ev).any():
                mask = self._tensor(np.asarray(ev, dtype=bool).reshape(1, b))
                if action.dim() == 3:
                    mask = mask.unsqueeze(-1)
                action = torch.where(mask, dist.mode(), action)
            log_prob = self._numpy(dist.log_prob(action).reshape(b, 1))
            if not self.continuous_action and not np.isfinite(log_prob).all():
                bad = np.flatnonzero(~np.isfinite(log_prob[:, 0]))[:10].tolist()
                raise ValueError(
                    f"{type(self).__name__}.rollout: non-finite action probabilities in rows {bad} of {b} "
                    f"(NaN/Inf in the observations or the weights)"
                )
            analysis = RolloutAnalysis(log_prob=log_prob, value=self._numpy(out.value[0]))
            x = self._numpy(action[0].float() if self.continuous_action else action[0].long())
            state = self._state_record(out.actor_hx, out.critic_hx)
            return RolloutResult(action=Action(x=x), policy_state=state, analyzed_result=analysis)

    def _numpy(self, t: torch.Tensor) -> np.ndarray:
        """A C-contiguous numpy array of ``t`` (float32 for floating tensors); no copy when already so on CPU."""
        import torch

        if t.is_floating_point() and t.dtype != torch.float32:
            t = t.float()
        if not self._on_cpu:
            t = t.cpu()
        return t.contiguous().numpy()

    def analyze(self, sample: SampleBatch, target: str = "ppo", **kwargs: Any) -> AnalyzedResult | PPGAuxResult:
        """Re-evaluate every row of ``sample`` with the current weights (gradients follow the caller).

        Recurrent policies replay the GRU or LSTM over time from ``policy_state`` at row 0,
        zeroing the state (an LSTM's hidden and cell state) before every row with ``on_reset``:
        the same state the actor used, which it reset to :attr:`default_policy_state` (zeros) there.

        Args:
            sample: leaves ``(T', B, ...)`` (numpy or torch): ``obs``, ``action.x``, and for
                recurrent policies ``policy_state`` and ``on_reset``. ``T'`` is whatever the
                trainer passes (``T + 1`` rows, or ``1`` row of flattened samples for an MLP).
            target: ``"ppo"`` (also ``"vtrace"``) or ``"ppg_aux"`` (the ``ppg`` trainer's auxiliary phase).
            **kwargs: ``old_dist_params`` (``ppg_aux`` only): the ``dist_params`` of an earlier call on the
                same rows, to get ``kl``. ``burn_in`` (int, recurrent policies): the first ``burn_in`` rows
                only warm up the state: the GRU/LSTM runs over them without autograd, so no gradient flows
                back through them (the trainer gives them no loss; see :mod:`hpcrl.trainers.chunks`).

        Returns:
            ``ppo``/``vtrace``: :class:`~hpcrl.api.data.AnalyzedResult` with ``log_prob`` ``(T', B)``,
            ``entropy`` ``(T', B)``, ``value`` ``(T', B, value_dim)`` and ``aux_value``
            (same shape, or ``None`` without the auxiliary head), torch tensors on the model's device.
            ``ppg_aux``: :class:`~hpcrl.api.data.PPGAuxResult` (``dist_params``, ``value``, ``aux_value``,
            and ``kl`` when ``old_dist_params`` is given).

        Raises:
            ValueError: unknown ``target`` or missing fields (the message names them).
        """
        if target not in ("ppo", "vtrace", "ppg_aux"):
            raise ValueError(
                f"{type(self).__name__}.analyze: unknown target {target!r}; expected 'ppo', 'vtrace' or 'ppg_aux'"
            )
        if sample.action is None or "x" not in sample.action:
            raise ValueError("analyze needs sample.action.x (the actions taken)")
        inputs = self._inputs(sample.obs)
        action = self._tensor(sample.action["x"])
        t, b = int(action.shape[0]), int(action.shape[1])
        actor_hx = critic_hx = on_reset = None
        burn_in = 0
        if self.num_rnn_layers > 0:
            burn_in = int(kwargs.get("burn_in", 0) or 0)
            if sample.policy_state is None or sample.on_reset is None:
                raise ValueError("a recurrent policy's analyze needs sample.policy_state and sample.on_reset")
            actor_hx, critic_hx = self._states(sample.policy_state[0], b)
            on_reset = self._tensor(sample.on_reset).reshape(t, b).bool()
        out = self._ac_net.forward(inputs, t, b, actor_hx, critic_hx, on_reset, burn_in)
        dist = out.dist
        mask = self._action_mask(sample.obs, t, b)
        if mask is not None:
            dist = dist.masked(mask)
        if target == "ppg_aux":
            return _ppg_aux_result(out, dist, kwargs.get("old_dist_params"))
        return AnalyzedResult(
            log_prob=dist.log_prob(action),
            entropy=dist.entropy(),
            value=out.value,
            aux_value=out.aux_value,
        )

    # ------------------------------------------------------------------ observation statistics
    def update_normalizer(self, samples: SampleBatch, sync: Any = None) -> None:
        """Merge the decision rows of ``samples`` into the running observation stats (with ``normalize_obs``).

        Trainers call this once per applied step; a no-op without ``normalize_obs``. Rows ``0..T-1`` that
        are neither done nor truncated count (the bootstrap row ``T`` is row 0 of the next fragment).

        Args:
            samples: a :class:`~hpcrl.api.data.SampleBatch` of ``T + 1`` rows with ``obs``, ``done`` and
                ``truncated`` (numpy or torch).
            sync: the trainer ranks' :class:`~hpcrl.api.trainer.GradientSync`; with several ranks this is a
                collective and every rank ends with the same stats.

        Raises:
            ValueError: ``samples`` lacks ``done`` or ``truncated``.
        """
        if self._obs_norm is None:
            return
        if samples.done is None or samples.truncated is None:
            raise ValueError("update_normalizer needs samples.done and samples.truncated (decision rows)")
        done, trunc = _host(samples.done), _host(samples.truncated)
        t_len = done.shape[0] - 1
        mask = ~(done.reshape(t_len + 1, -1)[:-1].astype(bool) | trunc.reshape(t_len + 1, -1)[:-1].astype(bool))
        rows = {k: _host(samples.obs[k])[:t_len][mask] for k in self._obs_norm.keys if k in samples.obs}
        self._obs_norm.update(rows, sync)

    @property
    def obs_normalizer(self) -> Any:
        """The :class:`~hpcrl.policies.obs_norm.ObsNormalizer` (``normalize_obs``), or ``None``."""
        return self._obs_norm

    # ------------------------------------------------------------------ checkpoints
    def get_checkpoint(self) -> dict[str, Any]:
        """Model weights, version and the action sampler's RNG state (tensors and ints)."""
        ckpt = super().get_checkpoint()
        ckpt["sampler_rng"] = self._generator().get_state()
        return ckpt

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore weights, version and (if present) the sampler RNG state."""
        import torch

        super().load_checkpoint(checkpoint)
        rng = checkpoint.get("sampler_rng")
        if rng is not None:
            self._generator().set_state(torch.as_tensor(np.asarray(rng), dtype=torch.uint8).cpu())


def _ppg_aux_result(out: Any, dist: Any, old_dist_params: torch.Tensor | None) -> PPGAuxResult:
    """``analyze(target="ppg_aux")``'s answer from a network output and its (masked) action distribution.

    ``kl`` is given when old parameters are.
    """
    params = dist.params()
    kl = None
    if old_dist_params is not None:
        if tuple(old_dist_params.shape) != tuple(params.shape):
            raise ValueError(
                f"analyze(target='ppg_aux'): old_dist_params has shape {tuple(old_dist_params.shape)}, "
                f"expected {tuple(params.shape)} (the dist_params of the same rows)"
            )
        kl = dist.kl_from(old_dist_params)
    return PPGAuxResult(dist_params=params, value=out.value, aux_value=out.aux_value, kl=kl)


def _host(x: Any) -> np.ndarray:
    """A numpy array of ``x`` (numpy, or a torch tensor on any device)."""
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()  # type: ignore[no-any-return]
    return np.asarray(x)


def _obs_normalizer(
    net: Any, enabled: bool, keys: Sequence[str] | None, clip: float, inputs: dict[str, tuple[int, ...]]
) -> Any:
    """Attach an :class:`~hpcrl.policies.obs_norm.ObsNormalizer` to ``net`` (its buffers join the state dict)."""
    if not enabled:
        if keys is not None:
            raise ValueError(
                f"obs_norm_keys={list(keys)!r} is given but normalize_obs is false; set normalize_obs: true"
            )
        return None
    from hpcrl.policies.obs_norm import ObsNormalizer, check_obs_norm_keys

    names = check_obs_norm_keys(keys, inputs)
    norm = ObsNormalizer({k: inputs[k] for k in names}, clip)
    net.add_module("obs_normalizer", norm)
    return norm


def make_separate(**kwargs: Any) -> ActorCriticPolicy:
    """``actor-critic-separate``: two complete networks; see :class:`ActorCriticPolicy` for the arguments."""
    return ActorCriticPolicy(shared=False, **kwargs)


def make_shared(**kwargs: Any) -> ActorCriticPolicy:
    """``actor-critic-shared``: one torso with a policy and a value head; see :class:`ActorCriticPolicy`."""
    return ActorCriticPolicy(shared=True, **kwargs)
