"""Observation and reward normalisation in real runs: agreed across ranks, published, checkpointed, resumed.

The runs use ``normprobe-policy`` (``tests/integration/normprobe.py``): the ``actor-critic-separate`` policy
that records its observation stats at every version and every batch its trainer merges into them. The
checks compare those recordings, the checkpoints and an independent numpy computation over all recorded
batches.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import normprobe  # noqa: F401 - registers normprobe-policy here too, for hpcrl.load_policy
import numpy as np
import pytest
from helpers import explain, run_hpcrl

import hpcrl
from hpcrl.storage.checkpoint import CheckpointManager, load_checkpoint
from hpcrl.storage.trace import read_trace

HERE = Path(__file__).parent
NORM = [
    "experiment.imports=[normprobe]",
    "policy.type_=normprobe-policy",
    "policy.args.normalize_obs=true",
    "trainer.args.normalize_rewards=true",
    "run.progress=off",
]
PREFIX = "obs_normalizer.stats.obs."


def probe_env(clean_env: dict[str, str], probe: Path) -> dict[str, str]:
    probe.mkdir(parents=True, exist_ok=True)
    env = dict(clean_env)
    env["PYTHONPATH"] = str(HERE) + os.pathsep + env["PYTHONPATH"]
    env["NORMPROBE_DIR"] = str(probe)
    return env


def stats_files(probe: Path) -> dict[tuple[int, int], dict[str, np.ndarray]]:
    """(rank, version) -> the recorded observation stats."""
    out = {}
    for path in probe.glob("stats-r*-v*.npz"):
        rank, version = path.stem[len("stats-r") :].split("-v")
        with np.load(path) as f:
            out[(int(rank), int(version))] = {k: f[k] for k in f.files}
    return out


def batches(probe: Path, rank: int | None = None) -> list[dict[str, np.ndarray]]:
    """The batches the trainer merged (of one rank, or all), in process and step order."""
    pattern = "batch-r*.npz" if rank is None else f"batch-r{rank}-*.npz"
    paths = sorted(probe.glob(pattern), key=lambda p: (p.stat().st_mtime_ns, p.name))
    out = []
    for path in paths:
        with np.load(path) as f:
            out.append({k: f[k] for k in f.files})
    return out


def decision(batch: dict[str, np.ndarray]) -> np.ndarray:
    t = batch["done"].shape[0] - 1
    dn = batch["done"].reshape(t + 1, -1).astype(bool)
    tr = batch["truncated"].reshape(t + 1, -1).astype(bool)
    return ~(dn[:-1] | tr[:-1])


def decision_obs(bs: list[dict[str, np.ndarray]]) -> np.ndarray:
    return np.concatenate([b["obs"][: b["obs"].shape[0] - 1][decision(b)] for b in bs]).astype(np.float64)


def returns_of(batch: dict[str, np.ndarray], gamma: float) -> np.ndarray:
    """The forward discounted returns of a batch's decision rows, column by column (independent of hpcrl)."""
    mask = decision(batch)
    reward = batch["reward"].reshape(mask.shape[0] + 1, mask.shape[1]).astype(np.float64)
    out = []
    for col in range(mask.shape[1]):
        ret = 0.0
        for t in range(mask.shape[0]):
            if mask[t, col]:
                ret = gamma * ret + reward[t + 1, col]
                out.append((t, col, ret))
            else:
                ret = 0.0
    out.sort()
    return np.array([r for _, _, r in out])


def final_checkpoint(run_dir: Path) -> dict[str, Any]:
    tree, _ = load_checkpoint(CheckpointManager(run_dir).list()[0])
    return tree


def ckpt_obs_stats(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    model = tree["policy"]["model"]
    return {k: np.asarray(model[PREFIX + k], np.float64) for k in ("count", "mean", "var")}


def test_two_trainer_ranks_and_the_inference_rank_hold_the_same_stats(tmp_path: Path, clean_env: dict[str, str]):
    """5 ranks: trainers 0-1 (each with its own actor), inference 2. At every version the trainer ranks agree
    bit for bit, and the inference rank acts with exactly the stats the trainer leader published. The stats are
    the mean/variance of every decision row of both trainer ranks' batches; reward stats are agreed too."""
    probe = tmp_path / "probe"
    env = probe_env(clean_env, probe)
    run_dir = tmp_path / "run"
    proc, summary, _ = run_hpcrl(env, run_dir, *NORM, "layout.trainers=2", "layout.inference=1", ranks=5, timeout=300)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    roles = {e["rank"]: e["role"] for e in json.loads((run_dir / "ranks.json").read_text())}
    assert [roles[r] for r in range(3)] == ["trainer", "trainer", "inference"], roles
    stats = stats_files(probe)
    trainer_versions = sorted(v for r, v in stats if r == 0)
    assert len(trainer_versions) >= 3, sorted(stats)
    for v in trainer_versions:
        for k in ("count", "mean", "var"):
            assert np.array_equal(stats[(0, v)][k], stats[(1, v)][k]), f"trainer ranks differ at version {v}: {k}"
    seen = [v for r, v in stats if r == 2 and v >= 1]
    assert len(seen) >= 2, sorted(stats)
    for v in seen:
        for k in ("count", "mean", "var"):
            assert np.array_equal(stats[(2, v)][k], stats[(0, v)][k]), f"inference rank differs at version {v}: {k}"
    # the leader's final stats: every decision row of both ranks' batches
    last = stats[(0, trainer_versions[-1])]
    rows = decision_obs(batches(probe, 0) + batches(probe, 1))
    assert float(last["count"]) == len(rows) and len(batches(probe, 1)) > 0
    np.testing.assert_allclose(last["mean"], rows.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(last["var"], rows.var(0), rtol=1e-9, atol=1e-12)
    tree = final_checkpoint(run_dir)
    for k, v in ckpt_obs_stats(tree).items():
        assert np.array_equal(v, last[k]), k
    rets = np.concatenate([returns_of(b, 0.98) for b in batches(probe, 0) + batches(probe, 1)])
    reward_norm = tree["trainer"]["reward_norm"]
    assert float(np.asarray(reward_norm["count"])) == len(rets)
    np.testing.assert_allclose(np.asarray(reward_norm["var"]).ravel(), [rets.var()], rtol=1e-9)
    scales = {}
    for path in sorted((run_dir / "traces").glob("*.h5")):
        tr = read_trace(path)
        if tr["attrs"]["role"] == "trainer":
            scales[int(tr["attrs"]["rank"])] = tr["trainer"]["stats"]["reward_scale"].tolist()
        elif tr["attrs"]["role"] == "actor" and len(tr["episodes"]["return"]):
            ep = tr["episodes"]  # CartPole pays 1 per step: reported returns are the raw env returns
            np.testing.assert_array_equal(ep["return"], ep["length"])
    assert sorted(scales) == [0, 1] and scales[0] == scales[1] and len(scales[0]) >= 3, scales


TOTAL = 4000
PENDULUM = [
    f"experiment.total_frames={TOTAL}",
    "environment.args={id: Pendulum-v1, max_episode_steps: 300}",
    "actor.envs_per_actor=2",
    "actor.fragment_length=32",
    "trainer.args.epochs=1",
    "trainer.args.minibatches=2",
    "run.checkpoint_writer=inline",
]


@pytest.mark.timeout(600)
def test_a_resumed_run_keeps_its_stats_as_an_uninterrupted_one(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """One process, stopped at 50% of the frames and resumed: the final observation and reward stats are those
    of every batch trained on in both segments (as for the uninterrupted run, which trains on as many rows);
    a resume that dropped or re-counted the checkpointed stats would not match."""
    results = {}
    for name, cuts in (("straight", [0]), ("resumed", [TOTAL // 2, 0])):
        probe = tmp_path / name / "probe"
        env = probe_env(clean_env, probe)
        run_dir = tmp_path / name / "run"
        for stop in cuts:
            proc, summary, _ = run_hpcrl(
                env,
                run_dir,
                *NORM,
                *PENDULUM,
                f"run.stop_at_frames={stop}",
                config="examples/pendulum/ppo.yaml",
                timeout=240,
            )
            assert proc.returncode == 0 and summary is not None, explain(proc)
        bs = batches(probe)
        assert len({p.name.split("-")[2] for p in probe.glob("batch-*.npz")}) == len(cuts)  # one process per segment
        tree = final_checkpoint(run_dir)
        obs = ckpt_obs_stats(tree)
        rows = decision_obs(bs)
        assert float(obs["count"]) == len(rows), (name, float(obs["count"]), len(rows))
        np.testing.assert_allclose(obs["mean"], rows.mean(0), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(obs["var"], rows.var(0), rtol=1e-9, atol=1e-12)
        rets = np.concatenate([returns_of(b, 0.9) for b in bs])
        rn = tree["trainer"]["reward_norm"]
        assert float(np.asarray(rn["count"])) == len(rets)
        np.testing.assert_allclose(np.asarray(rn["var"]).ravel(), [rets.var()], rtol=1e-9)
        np.testing.assert_allclose(np.asarray(rn["mean"]).ravel(), [rets.mean()], rtol=1e-9, atol=1e-12)
        results[name] = (len(bs), float(obs["count"]), int(tree["system"]["trainer_steps"]))
        loaded = hpcrl.load_policy(str(run_dir)).obs_normalizer.state()["obs"]  # what evaluate acts with
        assert all(np.array_equal(loaded[k], obs[k]) for k in obs), (loaded, obs)
    assert results["resumed"] == results["straight"], results  # the same steps, over as many rows
