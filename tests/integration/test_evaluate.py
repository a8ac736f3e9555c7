"""hpcrl.load_policy and python -m hpcrl.evaluate on a freshly trained run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from conftest import REPO

import hpcrl
from hpcrl.api import config
from hpcrl.api.namedarray import NamedArray
from hpcrl.api.policy import RolloutRequest
from hpcrl.evaluate import evaluate
from hpcrl.roles.local import run_local


def _cfg(tmp_path):
    return config.load(
        REPO / "examples/cartpole/ppo.yaml",
        [
            f"run.dir={tmp_path / 'run'}",
            "experiment.total_frames=3000",
            "actor.envs_per_actor=2",
            "actor.fragment_length=64",
            "run.progress=off",
        ],
    )


def test_load_policy_and_evaluate(tmp_path, clean_env):
    summary = run_local(_cfg(tmp_path))
    policy = hpcrl.load_policy(str(tmp_path / "run"))
    assert policy.version == summary["policy_version"]
    req = RolloutRequest(obs=NamedArray(obs=np.zeros((3, 4), np.float32)), is_evaluation=np.ones((3, 1), bool))
    a1, a2 = policy.rollout(req).action.x, policy.rollout(req).action.x
    assert np.array_equal(a1, a2)  # deterministic in evaluation
    out = evaluate(tmp_path / "run", episodes=4, envs=2)
    assert out["episodes"] == 4 and out["version"] == policy.version and out["mean_return"] > 0
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrl.evaluate", str(tmp_path / "run"), "--episodes", "2"],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 episodes, return" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "hpcrl.evaluate", str(tmp_path / "missing")],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "missing" in proc.stderr
