"""A policy that runs in this process acting on an env ring, and (with a learner) training on what it collects.

One :meth:`InlineLoop.step` is the body of every loop that runs its policy itself: the one-process run
(:func:`hpcrl.roles.local.run_local`), an actor rank with inline inference, :func:`hpcrl.testing.test_pipeline`
and :func:`hpcrl.evaluate.evaluate`. Each of them decides only when to stop and where fragments and
episodes go.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hpcrl.acting.env_ring import EnvRing, Episode
from hpcrl.api.policy import Policy, RolloutRequest, RolloutResult, check_rollout_result
from hpcrl.api.trainer import SampleBatch

if TYPE_CHECKING:
    from hpcrl.api.trainer import TrainerStepResult
    from hpcrl.learning.learner import Learner

__all__ = ["InlineLoop", "drop"]


def drop(_: Any) -> None:
    """A sink that discards what it is given (fragments nobody trains on, e.g. in an evaluation)."""


class InlineLoop:
    """The act (and learn) step of a policy that runs in this process.

    :meth:`step` does: ``ring.request`` -> ``policy.rollout`` (checked: one row per request row) ->
    ``ring.consume`` (the envs step) -> completed fragments to the learner or the ``fragments`` sink ->
    finished episodes to the ``episodes`` sink -> with a learner, every trainer step the queued batches
    allow, each followed by ``after_train_step``.

    Args:
        ring: the env ring.
        policy: the policy; it acts on every group of the ring in turn.
        who: names the policy in errors, e.g. ``"'actor-critic-separate' (ActorCriticPolicy)"``.
        learner: trains on the fragments; its ``frames`` follow the ring's (``base_frames + ring.frames``).
        base_frames: frames done before this process started (a resumed run).
        fragments: where completed fragments go (default: ``learner.add``; without a learner they stay in the
            ring for the caller's :meth:`EnvRing.pop_fragments`).
        episodes: where finished episodes go, a list at a time (default: they stay in the ring for the caller's
            :meth:`EnvRing.pop_episodes`).
        after_train_step: called with the result of every trainer step (e.g. the checkpoint cadence).
        rollout: runs the policy on a request instead of ``policy.rollout`` and the row check
            (``test_pipeline``, which names the part at fault in its own errors).
        trace: this process's trace writer: the time of each rollout (``inference``) and env step (``env_step``).
    """

    def __init__(
        self,
        ring: EnvRing,
        policy: Policy,
        who: str,
        *,
        learner: Learner | None = None,
        base_frames: int = 0,
        fragments: Callable[[SampleBatch], Any] | None = None,
        episodes: Callable[[list[Episode]], Any] | None = None,
        after_train_step: Callable[[TrainerStepResult | None], Any] | None = None,
        rollout: Callable[[RolloutRequest], RolloutResult] | None = None,
        trace: Any = None,
    ) -> None:
        self.ring = ring
        self.policy = policy
        self.who = who
        self.learner = learner
        self.base_frames = base_frames
        self.fragments = fragments if fragments is not None else (learner.add if learner is not None else None)
        self.episodes = episodes
        self.after_train_step = after_train_step
        self.rollout = rollout
        self.trace = trace

    def step(self, group: int = 0) -> None:
        """One act step of ``group``, then the fragments and episodes it completed, then the trainer steps they allow.

        Raises:
            RolloutContractError: the policy's result does not answer the request (names the policy).
            PolicyResultError: it does not fit the layout its first result fixed (names the policy and field).
            EnvError: an env failed (names it).
        """
        ring, policy = self.ring, self.policy
        t0 = time.perf_counter()
        request = ring.request(group)
        if self.rollout is None:
            result = check_rollout_result(policy.rollout(request), len(request), self.who)
        else:
            result = self.rollout(request)
        t1 = time.perf_counter()
        ring.consume(group, result, policy.version)
        trace = self.trace
        if trace is not None:
            trace.add_time("inference", t1 - t0)
            trace.add_time("env_step", time.perf_counter() - t1)
        learner = self.learner
        if learner is not None:
            learner.frames = self.base_frames + ring.frames  # the progress the next trainer steps see
        sink = self.fragments
        if sink is not None:
            for fragment in ring.pop_fragments():
                sink(fragment)
        if self.episodes is not None and ring.episodes:
            self.episodes(ring.pop_episodes())
        if learner is not None:
            while learner.ready():
                done = learner.step()
                if self.after_train_step is not None:
                    self.after_train_step(done)
