"""``experiment.total_frames`` under MPI: actors step their share of the frames and stop.

The leader splits the frames left to run over the actor ranks at start; each actor stops at its share, to
within one step of its env group, so a run steps at most ``envs_per_actor - 1`` frames per actor rank more
than ``total_frames``, and the final checkpoint counts every frame stepped (so a resumed run and
``hpcrl.report`` agree with what was stepped).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import explain, run_hpcrl

from hpcrl.storage.checkpoint import CheckpointManager, read_checkpoint_attrs

ENVS = 3  # odd, so shares and groups (halves with remote inference) do not divide evenly
TOTAL = 3001
#: (world size, overrides, actor ranks)
LAYOUTS = {
    "1-trainer-2-actors": (3, [], 2),
    "remote-inference": (3, ["layout.inference=1"], 1),
    "2-trainers": (4, ["layout.trainers=2"], 2),
    "2-trainers-no-back-pressure": (4, ["layout.trainers=2", "training.queue_batches=0"], 2),
}


def _actor_frames(stderr: str) -> dict[int, int]:
    """Frames each actor rank stepped, from the leader's per-rank final stats lines."""
    return {int(r): int(f) for r, f in re.findall(r"rank (\d+) actor: frames=(\d+)", stderr)}


def _final_frames(run_dir: Path) -> int:
    return int(read_checkpoint_attrs(CheckpointManager(run_dir).list()[0])["frames"])


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_frames_stepped_stay_within_one_env_group_per_actor_of_total_frames(
    tmp_path: Path, clean_env: dict[str, str], layout: str
) -> None:
    ranks, overrides, actors = LAYOUTS[layout]
    run_dir = tmp_path / "run"
    over = [f"experiment.total_frames={TOTAL}", f"actor.envs_per_actor={ENVS}", "actor.fragment_length=16"]
    proc, summary, _ = run_hpcrl(clean_env, run_dir, *over, *overrides, ranks=ranks)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    stepped = _actor_frames(proc.stderr)
    assert len(stepped) == actors, explain(proc)
    assert TOTAL <= sum(stepped.values()) <= TOTAL + actors * (ENVS - 1), stepped
    assert _final_frames(run_dir) == sum(stepped.values()) == summary["frames"]  # the checkpoint counts them all
    # a resumed run steps only what is left, again split over the actors
    more = TOTAL + 1000
    proc, summary, _ = run_hpcrl(clean_env, run_dir, *over, *overrides, f"experiment.total_frames={more}", ranks=ranks)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    base = sum(stepped.values())
    again = _actor_frames(proc.stderr)
    assert more - base <= sum(again.values()) <= more - base + actors * (ENVS - 1), (base, again)
    assert _final_frames(run_dir) == base + sum(again.values())
