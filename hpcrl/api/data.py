"""The records that travel between environment, policy and trainer.

* :class:`RolloutRequest`: observations an actor sends to the policy; :class:`RolloutResult`: the answer.
* :class:`SampleBatch`: trajectories an actor sends to the trainer.
* :class:`AnalyzedResult`: what ``policy.analyze(sample, target="ppo" | "vtrace")`` returns to the
  built-in trainers; :class:`PPGAuxResult`: what ``analyze(sample, target="ppg_aux")`` returns to the
  ``ppg`` trainer's auxiliary phase.

All of them are batched on the leading dims: ``(B, ...)`` for requests and results (rows may come from
different agents of different envs), ``(T + 1, B, ...)`` (time, batch) for sample batches. How a
recurrent policy state is laid out in these rows is described in :mod:`hpcrl.api.policy`.

:mod:`hpcrl.api.policy` and :mod:`hpcrl.api.trainer` re-export the records they use
(``from hpcrl.api.policy import RolloutRequest``, ``from hpcrl.api.trainer import SampleBatch``).
Importing this module does not import torch.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from hpcrl.api.namedarray import NamedArray

if TYPE_CHECKING:
    import torch

__all__ = ["RolloutRequest", "RolloutResult", "SampleBatch", "AnalyzedResult", "PPGAuxResult"]


class RolloutRequest(NamedArray):
    """A batch of observations to act on.

    Attributes:
        obs: NamedArray of named inputs, leaves ``(B, ...)``.
        policy_state: per-row policy state, leaves ``(B, ...)`` (see :mod:`hpcrl.api.policy`), or ``None``.
        is_evaluation: bool ``(B, 1)``: act deterministically for these rows.
        on_reset: bool ``(B, 1)``: ``obs`` is the first observation of an episode.
    """

    obs: NamedArray
    policy_state: NamedArray | None = None
    is_evaluation: np.ndarray | None = None
    on_reset: np.ndarray | None = None


class RolloutResult(NamedArray):
    """The policy's answer to a :class:`RolloutRequest`, row for row.

    Attributes:
        action: NamedArray of actions, leaves ``(B, ...)`` (built-ins use ``Action(x=...)``).
        policy_state: the next policy state, same layout as in the request, or ``None``.
        analyzed_result: NamedArray kept with the sample for training, e.g. ``log_prob`` and ``value``.
    """

    action: NamedArray
    policy_state: NamedArray | None = None
    analyzed_result: NamedArray | None = None


class SampleBatch(NamedArray, extra=True):
    """Trajectories for training: every leaf is ``(T + 1, B, ...)`` (time, batch).

    Row ``t`` of a column describes one decision point of one agent:

    * ``obs``: the observation at ``t``; ``on_reset`` (bool ``(.., 1)``): it is the first of an episode;
    * ``policy_state``: the policy state *before* acting on ``obs`` (already reset on ``on_reset``);
    * ``action``, ``analyzed_result`` (e.g. ``log_prob``, ``value``): what the policy did on ``obs``;
    * ``reward`` (float ``(.., 1)``): the reward received on arriving at ``obs``;
    * ``done`` / ``truncated`` (bool ``(.., 1)``): ``obs`` is terminal / the last of a cut episode.
      Such a row is not a decision (its action is never applied); its value bootstraps
      a truncated episode and is ignored for a terminated one.
    * ``policy_version`` (int64 ``(.., 1)``): the policy version that acted.

    The last row (``t = T``) is only there to bootstrap: consecutive fragments of the
    same agent overlap by that one row. Unknown extra fields are kept, never dropped.
    """

    obs: NamedArray
    policy_state: NamedArray | None = None
    action: NamedArray | None = None
    analyzed_result: NamedArray | None = None
    reward: np.ndarray | None = None
    done: np.ndarray | None = None
    truncated: np.ndarray | None = None
    policy_version: np.ndarray | None = None
    on_reset: np.ndarray | None = None


@dataclasses.dataclass
class AnalyzedResult:
    """What ``policy.analyze(sample, target="ppo" | "vtrace")`` returns: torch tensors that carry gradients.

    The built-in trainers (``ppo``, ``vtrace``) read it; a policy trained by them returns one, computed
    with the current weights on every row of ``sample`` (unlike ``RolloutResult.analyzed_result``, the
    NamedArray of numpy arrays that is stored with the sample at rollout). For a sample whose leaves are
    ``(T', B, ...)``:

    Attributes:
        log_prob: ``(T', B)``: log-probability of ``sample.action`` under the current policy.
        entropy: ``(T', B)``: entropy of the current action distribution.
        value: ``(T', B, value_dim)``: current critic values.
        aux_value: ``(T', B, value_dim)`` from an auxiliary value head, or ``None``.
    """

    log_prob: torch.Tensor
    entropy: torch.Tensor
    value: torch.Tensor
    aux_value: torch.Tensor | None = None


@dataclasses.dataclass
class PPGAuxResult:
    """What ``policy.analyze(sample, target="ppg_aux", old_dist_params=None)`` returns to the ``ppg`` trainer.

    The auxiliary phase of phasic policy gradient (:mod:`hpcrl.trainers.ppg`) asks for it twice: once without
    gradients and without ``old_dist_params``, at the start of the phase, to store the action distribution
    the policy must stay close to; then on every minibatch with ``old_dist_params`` (those stored
    parameters, same rows), to get the KL term. For a sample whose leaves are ``(T', B, ...)``:

    Attributes:
        dist_params: ``(T', B, P)``: the current action distribution's parameters, in whatever layout the
            policy's ``kl`` reads back (the built-in policies: normalised log-probabilities for discrete
            actions, the mean and log standard deviation for Gaussian ones).
        value: ``(T', B, value_dim)``: current critic values.
        aux_value: ``(T', B, value_dim)`` from the auxiliary value head (PPG distils the value into it).
        kl: ``(T', B)``: ``KL(old || current)`` per row, given ``old_dist_params``; ``None`` without them.
    """

    dist_params: torch.Tensor
    value: torch.Tensor
    aux_value: torch.Tensor | None
    kl: torch.Tensor | None = None
