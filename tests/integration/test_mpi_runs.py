"""End-to-end runs of ``python -m hpcrl.run`` in one process and as mpiexec jobs (subprocesses)."""

from __future__ import annotations

import h5py
from helpers import explain, run_hpcrl


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
