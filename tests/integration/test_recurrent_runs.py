"""Recurrent (LSTM) policies in real runs: remote inference and two trainer ranks under mpiexec, config errors."""

from __future__ import annotations

from helpers import explain, run_hpcrl

LSTM = "examples/memory/lstm.yaml"


def test_lstm_with_chunks_over_remote_inference_and_two_trainers(tmp_path, clean_env):
    # the LSTM state (h, c) travels in requests, results and fragments; both trainer ranks train on chunks.
    # 5 ranks: 2 trainers, 1 inference, 2 actors (every trainer rank needs an actor of its own)
    proc, summary, _ = run_hpcrl(
        clean_env,
        tmp_path / "lstm",
        "layout.inference=1",
        "layout.trainers=2",
        "trainer.args.chunk_len=8",
        "trainer.args.burn_in=2",
        ranks=5,
        config=LSTM,
        timeout=240,
    )
    assert proc.returncode == 0, explain(proc)
    assert summary is not None, explain(proc)
    assert "2 trainers [0-1]" in summary["layout"] and "1 inference [2]" in summary["layout"], summary["layout"]
    assert summary["frames"] >= 3000 and summary["trainer_steps"] >= 1 and summary["policy_version"] >= 1
    assert summary["episodes"] > 0
    assert "rank 1 trainer: trainer_steps=" in proc.stderr
    for rank in (3, 4):  # actors handle the LSTM state with numpy only
        actor_line = next(line for line in proc.stderr.splitlines() if f"rank {rank} actor: frames=" in line)
        assert "torch_loaded=False" in actor_line, actor_line


def test_bad_chunk_len_stops_an_mpi_job_with_the_key_path(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(
        clean_env, tmp_path / "bad", "layout.inference=1", "trainer.args.chunk_len=12", ranks=3, config=LSTM
    )
    assert proc.returncode != 0 and summary is None, explain(proc)
    assert "trainer.args.chunk_len: 12 does not divide actor.fragment_length 32" in proc.stderr, explain(proc)
