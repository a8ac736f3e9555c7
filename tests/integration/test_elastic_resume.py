"""Elastic resume across simulated nodes: 8 ranks on 4 nodes -> 4 ranks on 2 nodes -> 16 ranks on 4 nodes.

Nodes are simulated with MPICH's Hydra (``mpiexec -launcher fork -hosts n1,n2,... -ppn P``): each host name
is its own MPI node. One CartPole run is cut into three real jobs in the same run dir by
``run.stop_at_frames`` (which leaves ``experiment.total_frames``, and so the schedules, unchanged), each with
another world size, trainer count and node count. Each job runs with ``--log-level debug``, so that every
trainer rank logs a digest of the state it holds right after restoring (:func:`hpcrl.storage.tree.tree_digest`
of weights, optimizer state, counters and RNG states) and every actor logs its env seeds.

Checked at each resume:

* every trainer rank of the new layout holds exactly the state stored in the previous job's newest
  checkpoint (its digest equals the digest of the file's tree, read with the storage reader);
* trainer steps and policy versions continue +1 from the checkpoint, frames never go back, and every step's
  ``lr`` is the linear schedule at its recorded frames, ``frames / total_frames`` (what an uninterrupted
  run uses), on every trainer rank alike;
* actor ``k``'s env seeds are ``env_seed(experiment.seed, k * envs_per_actor + i)`` whatever the layout, so
  an actor index present in two layouts steps the same env seeds in both;
* ``ranks.json`` records each rank's host and node.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import explain, run_hpcrl

from hpcrl.acting.rings import env_seed
from hpcrl.api.trainer import TrainingProgress
from hpcrl.storage.checkpoint import CheckpointManager, load_checkpoint, read_checkpoint_attrs
from hpcrl.storage.trace import read_trace
from hpcrl.storage.tree import tree_digest
from hpcrl.trainers.schedule import scheduled

TOTAL = 6000
LR = 0.003
SEED = 1
ENVS = 2
OVERRIDES = [
    f"experiment.total_frames={TOTAL}",
    f"experiment.seed={SEED}",
    f"actor.envs_per_actor={ENVS}",
    f"trainer.args.lr={LR}",
    "trainer.args.lr_schedule=linear",
    "trainer.args.epochs=1",
    "run.progress=off",
    "run.checkpoint_writer=inline",
    "run.checkpoint_every_steps=2",
]
#: (ranks, hosts, ranks per host, trainers, inference ranks, stop at frames; 0 = the end of the run)
STAGES = [
    (8, "n1,n2,n3,n4", 2, 2, 2, 1500),
    (4, "n1,n2", 2, 1, 1, 3000),
    (16, "n1,n2,n3,n4", 4, 4, 4, 0),
]

_RESTORED = re.compile(r"\[rank (\d+) trainer\] DEBUG .*restored state of (ckpt-\d+\.h5): digest ([0-9a-f]{64})")
_SEEDS = re.compile(r"\[rank (\d+) actor\] DEBUG .*actor index (\d+): env seeds \[([0-9, ]*)\]")


def _trainer_rows(run_dir: Path, before: set[Path]) -> dict[int, dict[str, list[float]]]:
    """Trainer rank -> its trace's step, frames, lr and policy_version columns (trace files new in this job)."""
    rows = {}
    for path in sorted(set((run_dir / "traces").glob("*.h5")) - before):
        tr = read_trace(path)
        if tr["attrs"]["role"] != "trainer":
            continue
        t = tr["trainer"]
        rows[int(tr["attrs"]["rank"])] = {
            "step": t["step"].tolist(),
            "frames": t["frames"].tolist(),
            "lr": t["stats"]["lr"].tolist() if len(t["step"]) else [],
            "version": t["stats"]["policy_version"].tolist() if len(t["step"]) else [],
        }
    return rows


def _run_stage(env: dict[str, str], run_dir: Path, stage: tuple[int, str, int, int, int, int]) -> dict[str, Any]:
    ranks, hosts, ppn, trainers, inference, stop_at = stage
    before = set((run_dir / "traces").glob("*.h5")) if (run_dir / "traces").is_dir() else set()
    proc, summary, _ = run_hpcrl(
        env,
        run_dir,
        *OVERRIDES,
        f"layout.trainers={trainers}",
        f"layout.inference={inference}",
        f"run.stop_at_frames={stop_at}",
        ranks=ranks,
        hosts=hosts,
        ppn=ppn,
        log_level="debug",
        timeout=300,
    )
    assert proc.returncode == 0 and summary is not None, explain(proc)
    return {"proc": proc, "summary": summary, "rows": _trainer_rows(run_dir, before)}


@pytest.mark.timeout(900)  # three real jobs, each with its own 300 s hang guard
def test_resume_across_node_counts_carries_the_exact_state(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    counters = {"steps": 0, "version": 0, "frames": 0}
    stored: tuple[str, str] | None = None  # (file name, digest) of the newest checkpoint before a job
    seeds_seen: dict[int, list[int]] = {}
    for n, stage in enumerate(STAGES):
        ranks, hosts, ppn, trainers, _, _ = stage
        job = _run_stage(clean_env, run_dir, stage)
        text = job["proc"].stderr + job["proc"].stdout
        where = f"stage {n} ({ranks} ranks on {hosts}, {trainers} trainers)"

        # the rank table: every rank's simulated host, in Hydra's block order, and its node index
        table = json.loads((run_dir / "ranks.json").read_text())
        names = hosts.split(",")
        assert [e["host"] for e in table] == [names[r // ppn] for r in range(ranks)], (where, table)
        assert [e["node"] for e in table] == [r // ppn for r in range(ranks)], (where, table)

        # every trainer rank resumed exactly the state stored in the previous job's newest checkpoint
        restored = {int(r): (name, digest) for r, name, digest in _RESTORED.findall(text)}
        if stored is None:
            assert not restored, (where, restored)
        else:
            assert sorted(restored) == list(range(trainers)), (where, restored, text[-3000:])
            for r, got in restored.items():
                assert got == stored, f"{where}: trainer rank {r} restored {got}, the stored state is {stored}"

        # counters continue; every step's lr is the uninterrupted run's schedule at its frames, on every rank
        rows = job["rows"]
        assert sorted(rows) == list(range(trainers)), (where, sorted(rows))
        lead = rows[0]
        for r in range(1, trainers):
            assert rows[r] == lead, f"{where}: trainer rank {r} recorded other steps than the leader"
        k = len(lead["step"])
        assert k >= 1, (where, lead)
        assert lead["step"] == list(range(counters["steps"] + 1, counters["steps"] + k + 1)), (where, counters, lead)
        assert lead["version"] == [float(counters["version"] + i + 1) for i in range(k)], (where, counters, lead)
        assert lead["frames"][0] >= counters["frames"] and lead["frames"] == sorted(lead["frames"]), (where, lead)
        for f, lr in zip(lead["frames"], lead["lr"]):
            assert lr == scheduled("linear", LR, TrainingProgress(int(f), TOTAL).fraction), (where, f, lr)
            assert lr > 0.0

        # env seeds depend on (seed, actor index) only
        seeds = {int(k): [int(s) for s in v.split(",")] for _, k, v in _SEEDS.findall(text)}
        actors = ranks - trainers - stage[4]
        assert sorted(seeds) == list(range(actors)), (where, sorted(seeds))
        for k_, got_seeds in seeds.items():
            assert got_seeds == [env_seed(SEED, k_ * ENVS + i) for i in range(ENVS)], (where, k_, got_seeds)
            assert seeds_seen.setdefault(k_, got_seeds) == got_seeds, (where, k_)

        newest = CheckpointManager(run_dir).list()[0]
        attrs = read_checkpoint_attrs(newest)
        assert attrs["trainer_steps"] == counters["steps"] + k and attrs["version"] == counters["version"] + k
        assert attrs["world_size"] == ranks and attrs["trainer_ranks"] == trainers, attrs
        assert job["summary"]["trainer_steps"] == attrs["trainer_steps"]
        counters = {
            "steps": int(attrs["trainer_steps"]),
            "version": int(attrs["version"]),
            "frames": int(attrs["frames"]),
        }
        stored = (newest.name, tree_digest(load_checkpoint(newest)[0]))
    assert counters["frames"] >= TOTAL and job["summary"]["reason"] == "total_frames reached", job["summary"]
