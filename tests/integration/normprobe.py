"""A test hook for observation/reward normalisation runs: an actor-critic policy that records its stats.

Loaded into every rank of a test job with ``experiment.imports=[normprobe]`` (``tests/integration`` on the
subprocess's ``PYTHONPATH``); registers ``normprobe-policy``, the ``actor-critic-separate`` policy with two
recordings under the directory ``$NORMPROBE_DIR`` (nothing is written without it):

* ``stats-r<rank>-v<version>.npz``: the observation stats (``count``, ``mean``, ``var`` of input ``obs``)
  whenever the policy's version changes: after a trainer step (``inc_version``) and when published weights
  arrive on an inference rank (``set_version``);
* ``batch-r<rank>-<pid>-<n>.npz``: every batch the trainer merges into the stats (``obs``, ``reward``,
  ``done``, ``truncated`` of all ``T + 1`` rows), numbered in order per process.

Nothing here is imported by hpcrl itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hpcrl.api.policy import register
from hpcrl.policies.actor_critic import ActorCriticPolicy

__all__ = ["NormProbePolicy", "launcher_rank"]


def launcher_rank() -> int:
    """This process's rank from the launcher's environment (0 outside a launcher)."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


class NormProbePolicy(ActorCriticPolicy):
    """``actor-critic-separate`` that records its observation stats and the batches it is updated with."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(shared=False, **kwargs)
        self._batches = 0

    def _dir(self) -> Path | None:
        d = os.environ.get("NORMPROBE_DIR")
        return Path(d) if d else None

    def _dump(self) -> None:
        d = self._dir()
        if d is None or self.obs_normalizer is None:
            return
        stats = self.obs_normalizer.state()["obs"]
        np.savez(d / f"stats-r{launcher_rank()}-v{self.version}.npz", **stats)

    def inc_version(self) -> None:
        super().inc_version()
        self._dump()

    def set_version(self, version: int) -> None:
        super().set_version(version)
        self._dump()

    def update_normalizer(self, samples: Any, sync: Any = None) -> None:
        d = self._dir()
        if d is not None:
            self._batches += 1
            fields = {
                "obs": _host(samples.obs["obs"]),
                "reward": _host(samples.reward),
                "done": _host(samples.done),
                "truncated": _host(samples.truncated),
            }
            np.savez(d / f"batch-r{launcher_rank()}-{os.getpid()}-{self._batches:05d}.npz", **fields)
        super().update_normalizer(samples, sync)


register("normprobe-policy", NormProbePolicy)
