"""Action masks and SRL-style flags end to end: one process, and mpiexec -n 5 (2 trainers, 1 inference, 2 actor ranks).

The envs raise on an illegal action, so a run that finishes never sampled a masked one; the SRL-style env
returns ``done``/``truncated`` as uint8 and leaves ``truncated`` out at reset.
"""

from __future__ import annotations

import pytest
from helpers import explain, run_hpcrl

SRL = "examples/srl_port/ppo.yaml"
MPI4 = ("layout.inference=1", "layout.trainers=2")


def _finished(proc, summary, frames: int = 3000) -> None:
    assert proc.returncode == 0, explain(proc)
    assert summary is not None and summary["reason"] in ("finished", "total_frames reached"), explain(proc)
    assert summary["frames"] >= frames and summary["episodes"] > 0 and summary["trainer_steps"] >= 1
    assert summary.get("env_failures", 0) == 0


def test_srl_env_with_masks_in_one_process(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(clean_env, tmp_path / "one", "environment.args.time_limit=5", config=SRL)
    _finished(proc, summary)


def test_srl_env_with_masks_remote_inference_two_trainers(tmp_path, clean_env):
    proc, summary, _ = run_hpcrl(clean_env, tmp_path / "mpi", *MPI4, ranks=5, config=SRL, timeout=240)
    _finished(proc, summary)
    assert "2 trainers [0-1]" in summary["layout"] and "1 inference" in summary["layout"]


def test_pettingzoo_tictactoe_masks_remote_inference_two_trainers(tmp_path, clean_env):
    pytest.importorskip("pettingzoo", reason="the tic-tac-toe example needs pettingzoo")
    proc, summary, _ = run_hpcrl(
        clean_env, tmp_path / "ttt", *MPI4, ranks=5, config="examples/tictactoe/ppo.yaml", timeout=240
    )
    _finished(proc, summary)
