"""The policies of a multi-policy run on one acting rank, each kept on the weights its publisher sends.

An actor with inline inference and an inference rank of a multi-policy MPI run hold every policy of the
run (in ``policies`` order). The weights of a trained policy come from the lead of its trainer group,
those of a frozen one from rank 0, each on the policy's own tag (:func:`~hpcrl.comm.tags.policy_params_tag`).
"""

from __future__ import annotations

from typing import Any

from hpcrl.api import config
from hpcrl.comm.params import ParamSubscriber
from hpcrl.comm.tags import policy_params_tag
from hpcrl.runtime import components
from hpcrl.runtime.rank import RankContext

__all__ = ["PolicySet"]


class PolicySet:
    """Every policy of a multi-policy run, built on ``device`` and subscribed to its publisher.

    Args:
        ctx: the rank context (``ctx.cfg`` is the resolved multi-policy config).
        device: where the policies' models go (``cpu`` on actors).
        where: names this rank in the policies' labels (``rank 3``).
    """

    def __init__(self, ctx: RankContext, device: str, where: str) -> None:
        cfg = ctx.cfg
        topo = ctx.topo
        self.ctx = ctx
        self.names = list(cfg.policies)
        self.policies: list[Any] = []
        self.subscribers: list[ParamSubscriber] = []
        for i, (name, entry) in enumerate(cfg.policies.items()):
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
            self._apply(i, sub.wait(timeout=timeout, on_idle=self.ctx.service))

    def update(self) -> None:
        """Load the newest weights that arrived for any policy (never blocks)."""
        for i, sub in enumerate(self.subscribers):
            self._apply(i, sub.poll())

    def discard(self) -> None:
        """Take in what arrived without loading it (while the run drains)."""
        for sub in self.subscribers:
            sub.poll()

    def versions(self) -> dict[str, int]:
        """Every policy's current version, by name."""
        return {n: int(p.version) for n, p in zip(self.names, self.policies)}

    def close(self) -> None:
        """Cancel the posted receives."""
        for sub in self.subscribers:
            sub.close()
