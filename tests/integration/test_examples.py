"""Smoke runs of the example and benchmark experiment YAMLs: each trains a few steps in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcrl.api import config
from hpcrl.roles.local import run_local
from hpcrl.runtime import components
from hpcrl.storage.trace import read_trace

ROOT = Path(__file__).resolve().parents[2]

#: YAML -> extra smoke overrides (besides the common ones below).
YAMLS: dict[str, list[str]] = {
    "examples/memory/gru.yaml": [],
    "examples/memory/mlp.yaml": [],
    "examples/pendulum/ppo.yaml": [],
    "examples/quickstart/exp.yaml": [],
    "benchmarks/configs/cartpole_ppo.yaml": [],
    "examples/cartpole/ppo.yaml": [],
    "examples/cartpole/ppg.yaml": [],
    "benchmarks/configs/acrobot_ppo.yaml": [],
    "benchmarks/configs/acrobot_ppg_arms.yaml": [],
    "examples/cartpole/eval.yaml": ["run.eval_every_frames=32", "run.eval_episodes=2"],
    "examples/pong/pong.yaml": [],
    "examples/pettingzoo/simple_spread.yaml": [],
    "examples/mujoco/halfcheetah.yaml": [],
    "examples/srl_port/ppo.yaml": [],
    "examples/tictactoe/ppo.yaml": [],
}

#: YAML -> modules its environment needs (the optional extras ``atari``, ``pettingzoo``, ``mujoco``).
NEEDS: dict[str, list[str]] = {
    "examples/cartpole/eval.yaml": ["tensorboard"],
    "examples/pong/pong.yaml": ["ale_py", "cv2"],
    "examples/pettingzoo/simple_spread.yaml": ["pettingzoo", "mpe2"],
    "examples/mujoco/halfcheetah.yaml": ["mujoco"],
    "examples/tictactoe/ppo.yaml": ["pettingzoo"],
}


def _needs(rel: str) -> None:
    for mod in NEEDS.get(rel, []):
        pytest.importorskip(mod, reason=f"{rel} needs the optional module {mod}")


SMOKE = [
    "experiment.total_frames=96",
    "actor.envs_per_actor=2",
    "actor.fragment_length=8",
    "run.progress='off'",
    "run.checkpoint_every_seconds=0",
]


@pytest.mark.parametrize("rel", sorted(YAMLS))
def test_yaml_loads_and_resolves(rel: str) -> None:
    """The file loads strictly as written and its policy fits the env's spaces."""
    _needs(rel)
    cfg = config.load(ROOT / rel)
    components.import_user_modules(cfg)  # examples with their own env register it there
    spec = components.resolve_policy_spec(cfg)
    assert "obs_dim" in spec.args and "action_dim" in spec.args
    assert cfg.experiment.total_frames > 0


@pytest.mark.parametrize("rel", sorted(YAMLS))
def test_yaml_trains(rel: str, tmp_path: Path) -> None:
    """A tiny run finishes, makes trainer steps, writes a checkpoint and a trace."""
    _needs(rel)
    cfg = config.load(ROOT / rel, [*SMOKE, *YAMLS[rel], f"run.dir={tmp_path / 'run'}"])
    summary = run_local(cfg)
    assert summary["reason"] == "finished"
    assert summary["frames"] >= 96
    assert summary["trainer_steps"] >= 1
    assert summary["policy_version"] == summary["trainer_steps"]
    assert summary["checkpoint"] and Path(summary["checkpoint"]).is_file()
    traces = sorted((tmp_path / "run" / "traces").glob("rank-*.h5"))
    assert traces, "no trace written"
    tr = read_trace(traces[0])
    assert len(tr["trainer"]["step"]) == summary["trainer_steps"]


def test_quickstart_obs_only_critic_override(tmp_path: Path) -> None:
    """``policy.args.state_dim=null`` (the benchmark's obs-only critic arm) builds and trains."""
    cfg = config.load(
        ROOT / "examples/quickstart/exp.yaml", [*SMOKE, "policy.args.state_dim=null", f"run.dir={tmp_path / 'run'}"]
    )
    assert cfg.policy.args["state_dim"] is None
    summary = run_local(cfg)
    assert summary["trainer_steps"] >= 1
