"""Evaluation during training and live TensorBoard scalars, in real runs (one process and MPI).

The runs use ``eval-guard-env`` (tests/integration/evalguard.py): its evaluation envs pay a reward of 1000
per step, and its trainer fails the run if a batch holds one. A passing run therefore shows that evaluation
episodes ran (their mean return is 1000 per step) and that none of their steps reached a trainer.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from helpers import explain, run_hpcrl

GUARD = [
    "experiment.imports=[tests.integration.evalguard]",
    "experiment.seed=1",
    "environment.type_=eval-guard-env",
    "environment.args={run_seed: 1, episode_length: 10}",
    "policy.args={hidden_dim: 8}",
    "trainer.type_=eval-guard-trainer",
    "trainer.args={}",
    "experiment.total_frames=30000",
    "actor.fragment_length=16",
    "run.eval_envs=1",
    "run.eval_episodes=3",
    "run.eval_every_frames=5000",
    "run.save_best=true",
    "run.trace_flush_seconds=0.5",
]


def _eval_rows(run_dir: Path) -> dict[str, list[float]]:
    from hpcrl.storage.trace import read_trace

    rows: dict[str, list[float]] = {"frames": [], "mean_return": [], "episodes": [], "policy_version": []}
    for path in sorted((run_dir / "traces").glob("rank-*.h5")):
        ev = read_trace(path)["eval"]
        for k in rows:
            rows[k] += ev[k].tolist()
    return rows


def _training_returns(run_dir: Path) -> list[float]:
    from hpcrl.storage.trace import read_trace

    out: list[float] = []
    for path in sorted((run_dir / "traces").glob("rank-*.h5")):
        out += read_trace(path)["episodes"]["return"].tolist()
    return out


@pytest.mark.parametrize(
    "layout,ranks",
    [((), 0), (("layout.inference=1", "layout.trainers=2"), 5), (("layout.trainers=2",), 4)],
    ids=["local", "mpi-remote-2trainers", "mpi-inline-2trainers"],
)
def test_evaluation_never_reaches_a_trainer(
    tmp_path: Path, clean_env: dict[str, str], layout: tuple[str, ...], ranks: int
) -> None:
    run_dir = tmp_path / "run"
    proc, summary, _ = run_hpcrl(clean_env, run_dir, *GUARD, *layout, ranks=ranks, timeout=240)
    assert proc.returncode == 0, explain(proc)
    assert summary is not None
    rows = _eval_rows(run_dir)
    assert len(rows["frames"]) >= 1, (rows, explain(proc))  # every 5000 of 30000 frames, one at a time
    # deterministic episodes of the evaluation envs: 10 steps of reward 1000 each
    assert all(r == pytest.approx(10 * 1000.0) for r in rows["mean_return"]), rows
    assert all(n == 3 for n in rows["episodes"]), rows
    assert all(v >= 0 for v in rows["policy_version"]), rows
    # ... and none of them among the training episodes (the guard trainer would have failed the run already)
    train = _training_returns(run_dir)
    assert train and max(train) == pytest.approx(10.0), max(train)
    assert summary["evaluations"] == len(rows["frames"])
    assert summary["best_eval_return"] == pytest.approx(10_000.0)
    best = run_dir / "checkpoints" / "best.h5"
    assert best.is_file()


def _multi_guard(run_dir: Path) -> dict[str, object]:
    """Two agents, two trained policies (red: agent 0, blue: agent 1), both with the guard trainer."""
    small = {"type_": "actor-critic-separate", "args": {"hidden_dim": 8}}
    return {
        "experiment": {"name": "mguard", "seed": 1, "total_frames": 20000, "imports": ["tests.integration.evalguard"]},
        "environment": {"type_": "eval-guard-env", "args": {"run_seed": 1, "episode_length": 10, "agents": 2}},
        "policies": {"red": small, "blue": small},
        "trainers": {"red": {"type_": "eval-guard-trainer"}, "blue": {"type_": "eval-guard-trainer"}},
        "agents": [{"match": 0, "policy": "red"}, {"match": 1, "policy": "blue"}],
        "actor": {"envs_per_actor": 2, "fragment_length": 16},
        "run": {
            "dir": str(run_dir),
            "progress": "off",
            "heartbeat_seconds": 60,
            "eval_envs": 1,
            "eval_episodes": 3,
            "eval_every_frames": 4000,
            "save_best": True,
            "trace_flush_seconds": 0.5,
        },
    }


@pytest.mark.parametrize(
    "layout,ranks",
    [({}, 0), ({"inference": 1}, 5), ({}, 4)],
    ids=["local", "mpi-remote", "mpi-inline"],
)
def test_multi_policy_evaluation_never_reaches_a_trainer(
    tmp_path: Path, clean_env: dict[str, str], layout: dict[str, int], ranks: int
) -> None:
    """Every policy plays its agents in the evaluation envs; none of their steps reaches either trainer."""
    run_dir = tmp_path / "run"
    data = _multi_guard(run_dir)
    data["layout"] = layout
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    summary_path = tmp_path / "summary.json"
    cmd = [sys.executable, "-m", "mpi4py", "-m", "hpcrl.run", str(path), "--summary-json", str(summary_path)]
    if ranks:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
    proc = subprocess.run(cmd, env=clean_env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, explain(proc)
    summary = json.loads(summary_path.read_text())
    rows = _eval_rows(run_dir)
    assert len(rows["frames"]) >= 1 and summary["evaluations"] == len(rows["frames"]), (rows, explain(proc))
    # the /eval rows follow red (the first trained policy): 3 deterministic episodes of 10 x 1000 each
    assert all(r == pytest.approx(10 * 1000.0) for r in rows["mean_return"]), rows
    assert all(n == 3 for n in rows["episodes"]), rows
    assert summary["last_eval_return_by_policy"] == {"red": pytest.approx(10_000.0), "blue": pytest.approx(10_000.0)}
    train = _training_returns(run_dir)
    assert train and max(train) == pytest.approx(10.0), max(train)
    best = run_dir / "checkpoints" / "red" / "best.h5"
    assert best.is_file() and not (run_dir / "checkpoints" / "best.h5").exists()
    import hpcrl

    assert hpcrl.load_policy(str(best)).version >= 0  # loads like red's own checkpoints
    from hpcrl.learning.evaltrack import previous_best

    assert previous_best(run_dir, best) == pytest.approx(10_000.0)  # what a resumed run starts from


def test_best_checkpoint_loads_and_resume_keeps_best(tmp_path: Path, clean_env: dict[str, str]) -> None:
    import hpcrl
    from hpcrl.learning.evaltrack import previous_best
    from hpcrl.storage.checkpoint import read_checkpoint_attrs

    run_dir = tmp_path / "run"
    cartpole = [
        "run.eval_episodes=2",
        "run.eval_every_frames=1000",
        "run.save_best=true",
        "experiment.total_frames=3000",
    ]
    proc, summary, _ = run_hpcrl(clean_env, run_dir, *cartpole)
    assert proc.returncode == 0, explain(proc)
    assert summary is not None and summary["evaluations"] >= 2
    best = run_dir / "checkpoints" / "best.h5"
    attrs = read_checkpoint_attrs(best)
    assert attrs["eval_return"] == pytest.approx(summary["best_eval_return"], abs=1e-3)
    policy = hpcrl.load_policy(str(best))
    assert policy.version == attrs["version"]
    assert previous_best(run_dir) == pytest.approx(attrs["eval_return"])
    # a resumed run starts from the run dir's best: its summary's best is never below it
    proc, summary2, _ = run_hpcrl(clean_env, run_dir, *cartpole[:-1], "experiment.total_frames=5000")
    assert proc.returncode == 0, explain(proc)
    assert summary2 is not None
    assert summary2["best_eval_return"] >= attrs["eval_return"] - 1e-3
    assert "best mean return so far" in proc.stderr + proc.stdout


def test_live_tensorboard_writes_return_loss_and_eval(tmp_path: Path, clean_env: dict[str, str]) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc, _, _ = run_hpcrl(
        clean_env,
        run_dir,
        "run.tensorboard=true",
        "run.eval_episodes=2",
        "run.eval_every_frames=1000",
        "run.log_interval_seconds=0.2",
    )
    assert proc.returncode == 0, explain(proc)
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ("episode/return", "trainer/policy_loss", "trainer/value_loss", "system/fps", "eval/mean_return"):
        assert tag in tags, sorted(tags)
    assert all(math.isfinite(e.value) for e in acc.Scalars("episode/return"))


def test_tensorboard_missing_is_a_clear_startup_error(tmp_path: Path, clean_env: dict[str, str]) -> None:
    # a directory on PYTHONPATH whose 'tensorboard' package cannot be found: a stub that hides the real one
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.abc, sys\n"
        "class _Hide(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'tensorboard' or name.startswith('tensorboard.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Hide())\n"
    )
    env = dict(clean_env, PYTHONPATH=f"{hide}:{clean_env['PYTHONPATH']}")
    run_dir = tmp_path / "run"
    proc, _, _ = run_hpcrl(env, run_dir, "run.tensorboard=true")
    assert proc.returncode == 2, explain(proc)
    assert "run.tensorboard" in proc.stderr and "pip install" in proc.stderr, proc.stderr
    assert not run_dir.exists()  # nothing was started


@pytest.mark.parametrize(("layout", "ranks"), [({}, 3), ({"inference": 1}, 4)], ids=["mpi-inline", "mpi-remote"])
def test_selfplay_evaluation_under_mpi_plays_the_fixed_opponent(
    tmp_path: Path, clean_env: dict[str, str], layout: dict[str, int], ranks: int
) -> None:
    """A self-play run under mpiexec evaluates the learner against its first fixed opponent (held by the actors
    when inference ranks serve the learner); none of the evaluation steps reaches the trainer."""
    run_dir = tmp_path / "run"
    data = _multi_guard(run_dir)
    data["policies"] = {"red": data["policies"]["red"], "rnd": {"type_": "random"}}  # type: ignore[index]
    data["trainers"] = {"red": {"type_": "eval-guard-trainer"}}
    data["agents"] = [{"match": 0, "policy": "red"}]
    data["selfplay"] = {"policy": "red", "opponent_agents": [1], "pool_size": 2, "snapshot_every_frames": 2000}
    data["selfplay"].update(fixed_opponents=["rnd"], fixed_fraction=0.2)
    data["layout"] = layout
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    summary_path = tmp_path / "summary.json"
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py"]
    cmd += ["-m", "hpcrl.run", str(path), "--summary-json", str(summary_path)]
    proc = subprocess.run(cmd, env=clean_env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, explain(proc)
    summary = json.loads(summary_path.read_text())
    rows = _eval_rows(run_dir)
    assert len(rows["frames"]) >= 1 and summary["evaluations"] == len(rows["frames"]), (rows, explain(proc))
    assert all(r == pytest.approx(10 * 1000.0) for r in rows["mean_return"]), rows  # red's agent, eval envs
    assert summary["last_eval_return_by_policy"]["red"] == pytest.approx(10_000.0)
    train = _training_returns(run_dir)
    assert train and max(train) == pytest.approx(10.0), max(train)
    assert summary["selfplay_games"] > 0 and summary["selfplay_vs_fixed"]["rnd"]["games"] > 0
    assert (run_dir / "checkpoints" / "red" / "best.h5").is_file()
