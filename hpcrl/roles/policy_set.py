"""The policies of a multi-policy run on one acting rank, each kept on the weights its publisher sends.

An actor with inline inference and an inference rank of a multi-policy MPI run hold every policy of the
run (in ``policies`` order). The weights of a trained policy come from the lead of its trainer group,
those of a frozen one from rank 0, each on the policy's own tag (:func:`~hpcrl.comm.tags.policy_params_tag`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from hpcrl.api import config
from hpcrl.comm.params import ParamSubscriber
from hpcrl.comm.tags import policy_params_tag
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext

__all__ = ["PolicySet", "policy_subscribers", "pool_policies"]


def pool_policies(cfg: config.ExperimentConfig) -> set[str]:
    """The policies a self-play actor holds beside inference ranks: the self-play policy and its fixed opponents.

    Empty without ``selfplay``.
    """
    sp = cfg.selfplay
    return set() if sp is None else {sp.policy, *sp.fixed_opponents}


def policy_subscribers(cfg: config.ExperimentConfig, topo: Any, name: str) -> list[int]:
    """The ranks the weights of policy ``name`` are published to.

    The acting ranks (:attr:`~hpcrl.comm.topology.Topology.param_subscribers`: the inference ranks, or every
    actor with inline inference); with inference ranks, a self-play run's actors too for the self-play policy
    and its fixed opponents (:func:`pool_policies`: the actors play the snapshots and the fixed opponents
    themselves).
    """
    subscribers = list(topo.param_subscribers)
    if topo.inference and name in pool_policies(cfg):
        subscribers += [a for a in topo.actors if a not in subscribers]
    return subscribers


class PolicySet:
    """Every policy of a multi-policy run, built on ``device`` and subscribed to its publisher.

    Args:
        ctx: the rank context (``ctx.cfg`` is the resolved multi-policy config).
        device: where the policies' models go (``cpu`` on actors).
        where: names this rank in the policies' labels (``rank 3``).
        only: hold just these policies (``policies`` and ``subscribers`` have None for the others); default all.
    """

    def __init__(self, ctx: RankContext, device: str, where: str, only: Collection[str] | None = None) -> None:
        cfg = ctx.cfg
        topo = ctx.topo
        self.ctx = ctx
        self.names = list(cfg.policies)
        self.policies: list[Any] = []
        self.subscribers: list[ParamSubscriber | None] = []
        for i, (name, entry) in enumerate(cfg.policies.items()):
            if only is not None and name not in only:
                self.policies.append(None)
                self.subscribers.append(None)
                continue
            spec = config.Policy(entry.type_, dict(entry.args))
            try:
                self.policies.append(components.build_policy(spec, device, cfg.experiment.seed + i))
            except config.ConfigError as e:
                raise config.ConfigError(f"policies.{name}: {e}") from None
            source = topo.group_ranks(name)[0] if name in cfg.trainers else topo.leader
            self.subscribers.append(ParamSubscriber(ctx.comm, source, tag=policy_params_tag(i)))
        self.labels = [f"{n!r} ({type(p).__name__}) on {where}" for n, p in zip(self.names, self.policies)]
        """Per policy: its name, class and this rank, for the messages of result checks."""

    def _apply(self, i: int, got: tuple[int, dict[str, Any]] | None) -> None:
        if got is not None:
            self.policies[i].load_state_dict(got[1])
            self.policies[i].set_version(got[0])

    def wait_first(self) -> None:
        """Wait for the first weights of every policy (within the start-up and heartbeat time, if set)."""
        run = self.ctx.cfg.run
        timeout = (run.startup_seconds + run.heartbeat_seconds) if run.heartbeat_seconds else None
        for i, sub in enumerate(self.subscribers):
            if sub is not None:
                self._apply(i, sub.wait(timeout=timeout, on_idle=self.ctx.service))

    def update(self) -> None:
        """Load the newest weights that arrived for any policy (never blocks)."""
        for i, sub in enumerate(self.subscribers):
            if sub is not None:
                self._apply(i, sub.poll())

    def discard(self) -> None:
        """Take in what arrived without loading it (while the run drains)."""
        for sub in self.subscribers:
            if sub is not None:
                sub.poll()

    def versions(self) -> dict[str, int]:
        """Every held policy's current version, by name."""
        return {n: int(p.version) for n, p in zip(self.names, self.policies) if p is not None}

    def close(self) -> None:
        """Cancel the posted receives."""
        for sub in self.subscribers:
            if sub is not None:
                sub.close()
