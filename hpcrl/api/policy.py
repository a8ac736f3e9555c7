"""The policy API: how a model acts (``rollout``) and how it is analysed for training.

Batching convention (all messages are batched on dim 0; rows may come from different
agents of different envs):

* ``RolloutRequest.obs`` leaves have shape ``(B, *obs_shape)``.
* ``default_policy_state`` describes **one agent**, in the layout ``torch.nn.GRU`` uses for one sequence:
  every leaf has a batch slot of size 1 at axis 1, e.g. ``hx: (layers, 1, hidden)``.
  In requests, results and sample batches that slot is moved to the front and the
  rows are stacked there: ``hx`` arrives as ``(B, layers, hidden)`` in
  ``RolloutRequest.policy_state`` and as ``(T, B, layers, hidden)`` in
  ``SampleBatch.policy_state``. A recurrent policy transposes to ``(layers, B, hidden)``
  for ``torch.nn.GRU`` and back before returning ``RolloutResult.policy_state`` in the
  same ``(B, layers, hidden)`` layout. The system resets an agent's state to
  ``default_policy_state`` before the first observation of every episode (``on_reset``).

The records themselves are defined in :mod:`hpcrl.api.data`; :class:`RolloutRequest` and
:class:`RolloutResult` are importable from here too.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpcrl.api.data import RolloutRequest, RolloutResult, SampleBatch
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.registry import Registry

if TYPE_CHECKING:
    import torch

    from hpcrl.api import config

__all__ = [
    "Policy",
    "SingleModelPytorchPolicy",
    "RolloutRequest",
    "RolloutResult",
    "register",
    "make",
    "ALL_POLICIES",
    "state_to_agent",
    "publish_problem",
    "PolicyContractError",
    "result_rows_problem",
    "RolloutContractError",
    "check_rollout_result",
]


class RolloutContractError(ValueError):
    """A policy's ``rollout`` returned something that does not answer the request (names policy and field)."""


def _leaf_rows(leaf: Any) -> int | None:
    shape = getattr(leaf, "shape", None)
    if shape is None:
        shape = np.shape(leaf)
    return int(shape[0]) if len(shape) else None


def result_rows_problem(result: Any, rows: int) -> str | None:
    """What is wrong with a policy's answer to a request of ``rows`` rows; ``None`` if it answers it.

    It must be a :class:`RolloutResult` with an ``action``, and every leaf of ``action``, ``policy_state``
    and ``analyzed_result`` must have ``rows`` rows on axis 0 (a leaf with one row, or none, would
    otherwise be broadcast, or sliced wrongly when the batch is split between the actors that asked).
    """
    if not isinstance(result, RolloutResult):
        return f"rollout returned {type(result).__name__}, expected a RolloutResult"
    if result.action is None:
        return "rollout returned a RolloutResult without an action"
    for name in ("action", "policy_state", "analyzed_result"):
        value = getattr(result, name)
        if value is None:
            continue
        if not isinstance(value, NamedArray):
            return f"rollout returned {name} of type {type(value).__name__}, expected a NamedArray"
        for path, leaf in value.flat_items():
            got = _leaf_rows(leaf)
            if got != rows:
                shape = tuple(np.shape(leaf)) if getattr(leaf, "shape", None) is None else tuple(leaf.shape)
                return (
                    f"rollout returned {name}.{path} with {got} rows (shape {shape}) for a request of {rows} rows; "
                    f"every leaf of action, policy_state and analyzed_result needs one row per request row"
                )
    return None


def check_rollout_result(result: Any, rows: int, policy: str) -> RolloutResult:
    """Check that ``result`` answers a request of ``rows`` rows (see :func:`result_rows_problem`).

    Every runner of a policy (the one-process loop, inline actors, inference ranks) calls this before it uses
    or replies with a result, so a policy that breaks the contract is named where it ran, not where the rows
    are used later (an actor's env ring, a channel's schema check on another rank).

    Args:
        result: what ``policy.rollout(request)`` returned.
        rows: the request's rows.
        policy: the policy for messages, e.g. ``"'actor-critic-separate' (ActorCriticPolicy)"``.

    Returns:
        ``result``.

    Raises:
        RolloutContractError: not a RolloutResult, no action, or a field whose rows differ from the request's.
    """
    problem = result_rows_problem(result, rows)
    if problem is not None:
        raise RolloutContractError(f"policy {policy}: {problem}")
    return result


def state_to_agent(state: NamedArray | None) -> NamedArray | None:
    """Drop the size-1 batch slot (axis 1) of every leaf of a single-agent policy state.

    ``hx: (layers, 1, hidden)`` becomes ``(layers, hidden)``, the row layout used in batches.

    Raises:
        ValueError: a leaf has no size-1 axis 1 (names the field and its shape).
    """
    if state is None:
        return None
    for path, leaf in state.flat_items():
        if np.ndim(leaf) < 2 or np.shape(leaf)[1] != 1:
            raise ValueError(
                f"default_policy_state.{path} has shape {tuple(np.shape(leaf))}; expected a batch slot of size 1 "
                f"at axis 1, e.g. (layers, 1, hidden)"
            )
    return state.apply(lambda x: np.asarray(x)[:, 0])


class Policy(abc.ABC):
    """A policy acts on batches of observations and analyses samples for its trainer.

    Subclasses implement :meth:`rollout`, :meth:`analyze`, :meth:`get_checkpoint` and
    :meth:`load_checkpoint`. A policy whose weights change during training also implements
    :meth:`state_dict`/:meth:`load_state_dict`: that is what the trainer leader publishes to
    inference ranks and inline-inference actors (a policy with trainable :meth:`parameters`
    that publishes nothing is refused at start-up under MPI). The version counter
    (:attr:`version`, :meth:`inc_version`, :meth:`set_version`) is kept here; a subclass may
    override all three, consistently.
    """

    _version: int = 0  # class default: a subclass need not call ``super().__init__()``

    takes_seed: ClassVar[bool] = False
    """The constructor takes ``seed``: a run passes ``experiment.seed`` unless ``policy.args`` gives one."""

    @classmethod
    def args_from_spaces(cls, args: dict[str, Any], observation_space: Any, action_space: Any) -> dict[str, Any]:
        """The constructor arguments ``args`` (``policy.args``) completed and checked against one agent's spaces.

        A run calls this once at start-up, on every rank, before any policy is built; what it returns is
        the policy spec the run builds, saves in ``config.yaml`` and checkpoints. Fill in what the spaces
        determine (input and action sizes) where ``args`` leaves it out, and raise ``ValueError`` naming
        the argument when a given one does not fit. The default returns ``args`` unchanged. For a policy
        registered as a factory function, the hook of the class its return annotation names is used.

        Args:
            args: the configured constructor arguments (a copy: it may be changed and returned).
            observation_space: the env's first agent's observation space (gymnasium), or None when the env
                declares none.
            action_space: its action space, or None.

        Returns:
            The arguments to build the policy with.
        """
        return args

    @property
    def default_policy_state(self) -> NamedArray | None:
        """One agent's initial state (leaves with a size-1 slot at axis 1), or ``None`` if stateless."""
        return None

    @property
    def version(self) -> int:
        """Number of trainer updates applied to these weights (assignable: ``self.version = 0`` works)."""
        return self._version

    @version.setter
    def version(self, value: int) -> None:
        self._version = int(value)

    def inc_version(self) -> None:
        """Increment :attr:`version` (the trainer calls this after each update)."""
        self._version = int(self._version) + 1

    def set_version(self, version: int) -> None:
        """Set :attr:`version` (inference ranks call this when weights arrive from the trainer)."""
        self._version = int(version)

    @abc.abstractmethod
    def rollout(self, request: RolloutRequest, **kwargs: Any) -> RolloutResult:
        """Act on a batch of observations (numpy in, numpy out)."""

    @abc.abstractmethod
    def analyze(self, sample: SampleBatch, target: str = "ppo", **kwargs: Any) -> Any:
        """Recompute what the ``target`` trainer needs (log-probs, values, ...) on ``sample``.

        The built-in trainers call it with ``target="ppo"`` (also for ``vtrace`` and the policy phase of
        ``ppg``) and expect an :class:`~hpcrl.api.data.AnalyzedResult`; the auxiliary phase of ``ppg``
        calls it with ``target="ppg_aux"`` and expects a :class:`~hpcrl.api.data.PPGAuxResult`. A custom
        trainer defines what it expects.
        """

    @abc.abstractmethod
    def get_checkpoint(self) -> dict[str, Any]:
        """Everything needed to restore the policy: tensors, arrays and plain types only."""

    @abc.abstractmethod
    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore from :meth:`get_checkpoint`'s output."""

    def state_dict(self) -> dict[str, Any]:
        """Weights to publish to inference ranks (name -> tensor/array); empty if none."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        """Load weights from :meth:`state_dict` (the base class has none to load)."""

    def parameters(self) -> Iterator[Any]:
        """Trainable parameters (torch tensors); empty if none."""
        return iter(())


class PolicyContractError(TypeError):
    """A policy does not implement what the run needs (the message names the policy and the methods)."""


def publish_problem(policy: Policy) -> str | None:
    """Why ``policy``'s weights would not reach inference ranks, or ``None`` if they would.

    A policy with trainable parameters (``parameters()`` yields tensors with ``requires_grad``) must
    publish them: :meth:`Policy.state_dict` must not be empty and :meth:`Policy.load_state_dict` must be
    overridden. Without that, actors with inline inference and inference ranks act with the initial
    weights for the whole run.
    """
    trainable = any(getattr(p, "requires_grad", False) for p in policy.parameters())
    if not trainable:
        return None
    name = type(policy).__name__
    missing = []
    if not policy.state_dict():
        missing.append("state_dict() returns nothing")
    if type(policy).load_state_dict is Policy.load_state_dict:
        missing.append("load_state_dict() is not overridden")
    if not missing:
        return None
    return (
        f"policy {name} has trainable parameters but {' and '.join(missing)}: inference ranks and actors would "
        f"act with the initial weights for the whole run. Implement {name}.state_dict() (name -> tensor/array "
        f"of the weights) and {name}.load_state_dict(state_dict), or derive it from SingleModelPytorchPolicy"
    )


class SingleModelPytorchPolicy(Policy):
    """A policy around one ``torch.nn.Module``: device, published weights and tensor-only checkpoints.

    Subclasses implement :meth:`rollout` and :meth:`analyze` using :attr:`net`. The
    system moves the policy to a device with :meth:`to`; trainers synchronise gradients
    through the injected sync object (see :class:`hpcrl.api.trainer.Trainer`), so no DDP
    wrapper is needed.

    Args:
        net: the model.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        self._net = net
        self._version = 0
        self._device: Any = "cpu"

    @property
    def net(self) -> torch.nn.Module:
        """The wrapped model."""
        return self._net

    @property
    def device(self) -> Any:
        """Where the model lives."""
        return self._device

    def to(self, device: Any) -> SingleModelPytorchPolicy:
        """Move the model to ``device`` (``"cpu"``, ``"cuda"``, ...); returns self."""
        self._net.to(device)
        self._device = device
        return self

    def parameters(self) -> Iterator[Any]:
        """The model's parameters."""
        return iter(self._net.parameters())

    def state_dict(self) -> dict[str, Any]:
        """The model's state dict (tensors)."""
        return dict(self._net.state_dict())

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load model weights (tensors or numpy arrays)."""
        import torch

        sd = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
        self._net.load_state_dict(sd)

    def get_checkpoint(self) -> dict[str, Any]:
        """``{"model": {name: tensor}, "version": int}`` (tensors on CPU)."""
        return {
            "model": {k: v.detach().cpu().clone() for k, v in self._net.state_dict().items()},
            "version": self.version,
        }

    def load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore model weights and version.

        Raises:
            KeyError: the checkpoint lacks ``model`` or ``version``.
        """
        self.load_state_dict(checkpoint["model"])
        self.set_version(int(checkpoint["version"]))


ALL_POLICIES: Registry[Policy] = Registry("policy")

for _name, _target in {
    "actor-critic-separate": "hpcrl.policies.actor_critic:make_separate",
    "actor-critic-shared": "hpcrl.policies.actor_critic:make_shared",
    "random": "hpcrl.policies.random:RandomPolicy",
}.items():
    ALL_POLICIES.register(_name, _target)


def register(name: str, policy_class: Any) -> None:
    """Register a policy class (or factory, or ``"module:attr"`` string) under ``name``."""
    ALL_POLICIES.register(name, policy_class)


def make(spec: config.Policy | str, **kwargs: Any) -> Policy:
    """Build a policy from a ``config.Policy`` spec or a registered name.

    Raises:
        RegistryError: unknown name (the message lists the registered ones).
        TypeError: the result is not a :class:`Policy`.
    """
    if isinstance(spec, str):
        name, args = spec, dict(kwargs)
    else:
        name, args = spec.type_, {**spec.args, **kwargs}
    policy = ALL_POLICIES.make(name, **args)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy {name!r} built a {type(policy).__name__}, which is not an hpcrl Policy")
    return policy
