"""End-to-end runs of ``python -m hpcrl.run`` in one process and as mpiexec jobs (subprocesses)."""

from __future__ import annotations

import json

import h5py
from helpers import explain, run_hpcrl

from hpcrl.storage.checkpoint import read_checkpoint_attrs


def _trained(summary, proc):
    assert proc.returncode == 0, explain(proc)
    assert summary is not None, explain(proc)
    assert summary["frames"] >= 3000 and summary["trainer_steps"] >= 1 and summary["policy_version"] >= 1
    assert summary["episodes"] > 0


def test_single_process_run_trains_and_resumes(tmp_path, clean_env):
    run_dir = tmp_path / "local"
    proc, summary, _ = run_hpcrl(clean_env, run_dir)
    _trained(summary, proc)
    assert (run_dir / "config.yaml").exists() and (run_dir / "traces" / "rank-0000.h5").exists()
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts
    proc, again, _ = run_hpcrl(clean_env, run_dir, "experiment.total_frames=6000")
    assert proc.returncode == 0, explain(proc)
    assert "resumed from" in proc.stderr
    assert again["frames"] >= 6000 and again["frames_this_run"] < again["frames"]
    assert again["policy_version"] > summary["policy_version"]


def test_two_ranks_inline_inference(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(clean_env, tmp_path / "n2", ranks=2)
    _trained(summary, proc)
    assert summary["world_size"] == 2 and "inline inference" in summary["layout"]


def test_three_ranks_one_per_role(tmp_path, clean_env):
    run_dir = tmp_path / "n3"
    proc, summary, _ = run_hpcrl(clean_env, run_dir, "layout.inference=1", ranks=3)
    _trained(summary, proc)
    assert "1 inference [1]" in summary["layout"]
    assert "rank 1 inference: batches=" in proc.stderr and "rank 2 actor: frames=" in proc.stderr
    # an actor with remote inference needs numpy + the env only: it never imports torch
    actor_line = next(line for line in proc.stderr.splitlines() if "rank 2 actor: frames=" in line)
    assert "torch_loaded=False" in actor_line, actor_line
    for r in range(3):  # one trace per rank, with that rank's role
        with h5py.File(run_dir / "traces" / f"rank-{r:04d}.h5", "r", swmr=True) as f:
            role = f.attrs["role"]
            assert (role.decode() if isinstance(role, bytes) else role) == ("trainer", "inference", "actor")[r]


def test_four_ranks_two_trainers_allreduce(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(clean_env, tmp_path / "n4", "layout.trainers=2", ranks=4)
    _trained(summary, proc)
    assert "2 trainers [0-1]" in summary["layout"]
    assert "rank 1 trainer: trainer_steps=" in proc.stderr


def test_gru_policy_over_remote_inference(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(
        clean_env,
        tmp_path / "gru",
        "layout.inference=1",
        "policy.args.num_rnn_layers=1",
        "trainer.type_=vtrace",
        ranks=3,
    )
    _trained(summary, proc)


def test_parameterless_random_policy_over_mpi(tmp_path, clean_env):
    # a policy without parameters still gets its versions published (an empty state dict)
    proc, summary, _ = run_hpcrl(
        clean_env,
        tmp_path / "random",
        "policy.type_=random",
        "policy.args={action_dim: 2}",
        "trainer.type_='null'",
        "trainer.args={}",
        "layout.inference=1",
        ranks=3,
    )
    assert proc.returncode == 0, explain(proc)
    assert summary is not None and summary["frames"] >= 3000 and summary["trainer_steps"] >= 1, explain(proc)


def test_layout_error_is_named_before_any_communication(tmp_path, clean_env):
    proc, _, _ = run_hpcrl(clean_env, tmp_path / "bad", "layout.trainers=1", "layout.actors=5", ranks=2)
    assert proc.returncode != 0
    assert "layout asks for trainers=1 inference=0 actors=5 = 6 ranks but the world size is 2" in proc.stderr


def test_config_error_names_the_key(tmp_path, clean_env):
    proc, _, _ = run_hpcrl(clean_env, tmp_path / "cfg", "actor.envs_per_actr=2")
    assert proc.returncode == 2
    assert "actor.envs_per_actr: unknown key (did you mean 'envs_per_actor'?)" in proc.stderr


def test_four_nodes_with_trainers_on_different_nodes_and_an_inference_rank_per_node(tmp_path, clean_env):
    """12 ranks on 4 simulated nodes in cyclic order (``-hosts n1:1,n2:1,n3:1,n4:1``: rank r on node r % 4),
    so the two trainer ranks are on n1 and n2; 4 inference ranks, one per node; it trains and checkpoints."""
    run_dir = tmp_path / "nodes4"
    proc, summary, _ = run_hpcrl(
        clean_env,
        run_dir,
        "layout.trainers=2",
        "layout.inference=4",
        "run.checkpoint_every_steps=2",
        ranks=12,
        hosts="n1:1,n2:1,n3:1,n4:1",
        timeout=300,
    )
    _trained(summary, proc)
    assert summary["frames"] >= 3000 and summary["world_size"] == 12, summary
    table = json.loads((run_dir / "ranks.json").read_text())
    assert [e["host"] for e in table] == [f"n{r % 4 + 1}" for r in range(12)], table
    assert [e["node"] for e in table] == [r % 4 for r in range(12)], table
    trainers = [e for e in table if e["role"] == "trainer"]
    assert len(trainers) == 2 and trainers[0]["host"] != trainers[1]["host"], trainers
    assert sorted(e["host"] for e in table if e["role"] == "inference") == ["n1", "n2", "n3", "n4"], table
    assert "4 nodes: n1 [0,4,8], n2 [1,5,9], n3 [2,6,10], n4 [3,7,11]" in proc.stderr, proc.stderr[-3000:]
    assert "rank 1 trainer: trainer_steps=" in proc.stderr
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts and read_checkpoint_attrs(ckpts[-1])["world_size"] == 12
