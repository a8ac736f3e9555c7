"""Multi-policy runs as real ``mpiexec`` jobs: trainer groups per policy, frozen policies, resume, refusals.

The task (``tests/integration/mpagents.py``) has two agents; agent ``a`` sees its own index in its
observation and earns ``a + 1`` for action 1. Its trainer reports the smallest and largest agent index of
every batch, so each trainer rank's trace shows whose rows it trained on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO
from helpers import explain

from hpcrl.storage.checkpoint import read_checkpoint_attrs
from hpcrl.storage.trace import read_trace
from tests.integration.indexed_env import checkpoint_weights

AC = {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 2}, "action_dim": 2, "hidden_dim": 8}}
PPO = {"type_": "mp-agent-stats-ppo", "args": {"epochs": 1, "minibatches": 1}}


def _config(run_dir: Path, trained: tuple[str, ...], **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "experiment": {"name": "mpm", "seed": 3, "total_frames": 1200, "imports": ["tests.integration.mpagents"]},
        "environment": {"type_": "mp-agent-tag", "args": {"n_agents": 2}},
        "policies": {"red": dict(AC), "blue": dict(AC)},
        "trainers": {name: dict(PPO) for name in trained},
        "agents": [{"match": 0, "policy": "red"}, {"match": ".*", "policy": "blue"}],
        "actor": {"envs_per_actor": 2, "fragment_length": 8},
        "run": {
            "dir": str(run_dir),
            "progress": "off",
            "checkpoint_writer": "inline",
            "checkpoint_every_steps": 5,
            "heartbeat_seconds": 60,
        },
    }
    for key, value in over.items():
        section, _, name = key.partition("__")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    return data


def _run(
    env: dict[str, str],
    mpiexec: str,
    data: dict[str, Any],
    ranks: int,
    tmp: Path,
    *overrides: str,
    timeout: float = 240,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None]:
    path = tmp / f"exp-{len(list(tmp.glob('exp-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))  # policies keep their order (trainer groups follow it)
    summary = path.with_suffix(".json")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "hpcrl.run", str(path), *overrides]
    cmd += ["--summary-json", str(summary)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return proc, (json.loads(summary.read_text()) if summary.exists() else None)


def _newest(run_dir: Path, policy: str) -> Path:
    files = sorted((run_dir / "checkpoints" / policy).glob("ckpt-*.h5"))
    assert files, f"no checkpoints of {policy} in {run_dir}"
    return files[-1]


def _agents_seen(run_dir: Path, rank: int) -> dict[str, set[float]]:
    """``{policy: agent indices}`` of every batch that trainer ``rank`` trained on (from its trace)."""
    stats = read_trace(run_dir / "traces" / f"rank-{rank:04d}.h5")["trainer"]["stats"]
    out: dict[str, set[float]] = {}
    for key, values in stats.items():
        policy, _, stat = key.partition("/")
        if stat in ("agent_min", "agent_max"):
            out.setdefault(policy, set()).update(float(v) for v in np.asarray(values) if np.isfinite(v))
    return out


def test_two_trained_policies_train_in_their_own_groups_and_resume(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    """red on trainer ranks 0-1 (gradient allreduce), blue on rank 2, actors 3-4; a stop, then a resume."""
    run = tmp_path / "two"
    data = _config(run, ("red", "blue"), layout={"trainers": {"red": 2, "blue": 1}})
    # a set after every red step: many steps see one frame count (rank 0 hears from the actors twice a second)
    cadence = ("run.checkpoint_every_steps=1", "run.keep_checkpoints=50")
    proc, first = _run(clean_env, mpiexec, data, 5, tmp_path, "run.stop_at_frames=600", *cadence)
    assert proc.returncode == 0 and first is not None, explain(proc)
    assert "(red [0-1], blue [2])" in first["layout"]
    versions = first["policy_versions"]
    assert versions["red"] > 0 and versions["blue"] > 0
    assert set(first["mean_return_by_policy"]) == {"red", "blue"}
    # each group trained only on its own agents' rows: red on agent 0 (both ranks), blue on agent 1
    assert _agents_seen(run, 0) == {"red": {0.0}} and _agents_seen(run, 1) == {"red": {0.0}}
    assert _agents_seen(run, 2) == {"blue": {1.0}}
    red, blue = _newest(run, "red"), _newest(run, "blue")
    assert red.name == f"ckpt-{versions['red']:09d}.h5" and blue.name == f"ckpt-{versions['blue']:09d}.h5"
    attrs = [read_checkpoint_attrs(p) for p in (red, blue)]
    assert int(attrs[0]["frames"]) == int(attrs[1]["frames"]) == first["frames"]  # one final set
    assert [a["policy_name"] for a in attrs] == ["red", "blue"]

    # every set (the periodic ones, the final one) has a frame count of its own, in both policies
    sets = {
        n: {int(read_checkpoint_attrs(p)["frames"]): p for p in (run / "checkpoints" / n).glob("*.h5")}
        for n in ("red", "blue")
    }
    assert len(sets["red"]) == len(list((run / "checkpoints" / "red").glob("*.h5"))) >= 2
    assert len(sets["blue"]) == len(list((run / "checkpoints" / "blue").glob("*.h5")))
    # files are named by version: a set taken while red's version stood still since the previous one rewrites
    # red's file of that version (with the later frame count), so blue may hold sets red no longer has; every
    # red file belongs to a set that blue has too
    assert set(sets["red"]) <= set(sets["blue"])

    # a stop between the files of the final set (red's is gone): the previous set is resumed, both policies
    red.unlink()
    at = max(set(sets["red"]) - {first["frames"]})
    resumed = {n: int(read_checkpoint_attrs(sets[n][at])["version"]) for n in ("red", "blue")}
    proc, second = _run(clean_env, mpiexec, data, 5, tmp_path)
    assert proc.returncode == 0 and second is not None, explain(proc)
    assert second["frames"] >= 1200 and second["frames_this_run"] == second["frames"] - at
    for name in ("red", "blue"):  # every policy continues from its own version
        assert f"resumed from {sets[name][at]}: version {resumed[name]}, {at} frames" in proc.stderr, explain(proc)
        assert second["policy_versions"][name] > resumed[name]
        assert int(read_checkpoint_attrs(_newest(run, name))["trainer_steps"]) == second["policy_versions"][name]

    # red's checkpoints are gone: never a silent fresh start of red beside blue's; the whole job ends
    for f in (run / "checkpoints" / "red").glob("*.h5"):
        f.unlink()
    blue_files = sorted((run / "checkpoints" / "blue").glob("*.h5"))
    proc, third = _run(clean_env, mpiexec, data, 5, tmp_path, timeout=120)
    assert proc.returncode != 0 and third is None, explain(proc)
    fatal = [line for line in proc.stderr.splitlines() if "FATAL" in line]
    assert any(
        line.startswith("[rank 0 trainer") and "no set of checkpoints to resume all policies from" in line
        for line in fatal
    ), explain(proc)
    assert sorted((run / "checkpoints" / "blue").glob("*.h5")) == blue_files


def test_a_frozen_policy_gets_no_trainer_and_never_changes(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    """red trained on rank 0, blue frozen: checkpointed with every set, same weights after a stop and a resume."""
    run = tmp_path / "frozen"
    data = _config(run, ("red",))
    proc, first = _run(clean_env, mpiexec, data, 3, tmp_path, "run.stop_at_frames=600")
    assert proc.returncode == 0 and first is not None, explain(proc)
    assert "1 trainer [0] (red [0])" in first["layout"] and first["policy_versions"]["blue"] == 0
    assert _agents_seen(run, 0) == {"red": {0.0}}
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["blue", "red"]
    frozen = checkpoint_weights(_newest(run, "blue"))
    red_start = checkpoint_weights(_newest(run, "red"))
    proc, second = _run(clean_env, mpiexec, data, 3, tmp_path)
    assert proc.returncode == 0 and second is not None, explain(proc)
    assert second["policy_versions"]["blue"] == 0 and second["policy_versions"]["red"] > first["policy_versions"]["red"]
    assert second["frames_this_run"] == second["frames"] - first["frames"]
    after = checkpoint_weights(_newest(run, "blue"))
    assert after.keys() == frozen.keys() and all(np.array_equal(after[k], frozen[k]) for k in frozen)
    red_end = checkpoint_weights(_newest(run, "red"))
    assert any(not np.array_equal(red_end[k], red_start[k]) for k in red_start)

    # both start from red's checkpoint (init_from): the frozen blue is published by rank 0 with those weights,
    # red trains on from that version on two trainer ranks (the second one takes weights and version from the first)
    source = _newest(run, "red")
    start = second["policy_versions"]["red"]
    other = tmp_path / "loaded"
    policies = {"red": dict(AC, init_from=str(source)), "blue": dict(AC, init_from=str(source))}
    data = _config(other, ("red",), policies=policies, layout={"trainers": {"red": 2}})
    proc, third = _run(clean_env, mpiexec, data, 4, tmp_path)
    assert proc.returncode == 0 and third is not None, explain(proc)
    assert third["policy_versions"]["blue"] == start and third["policy_versions"]["red"] > start
    steps = int(read_checkpoint_attrs(_newest(other, "red"))["trainer_steps"])
    assert third["policy_versions"]["red"] == start + steps
    assert f"rank 1 trainer: trainer_steps={steps}," in proc.stderr
    assert f"policy=red, lead=False, policy_version={start + steps}," in proc.stderr, explain(proc)
    loaded = checkpoint_weights(_newest(other, "blue"))
    assert all(np.array_equal(loaded[k], red_end[k]) for k in red_end)
    acting = [line for line in proc.stderr.splitlines() if " actor: frames=" in line]
    assert len(acting) == 2 and all(f"'blue': {start}}}" in line for line in acting), acting


def test_a_failing_trainer_group_ends_the_job(tmp_path: Path, clean_env: dict[str, str], mpiexec: str) -> None:
    """blue's trainer (rank 1) raises: the whole job ends, with one FATAL line naming the rank, none hangs."""
    data = _config(tmp_path / "fails", ("red", "blue"))
    data["trainers"]["blue"] = dict(PPO, type_="mp-agent-failing-ppo")
    proc, summary = _run(clean_env, mpiexec, data, 4, tmp_path, timeout=120)
    assert proc.returncode != 0 and summary is None, explain(proc)
    fatal = [line for line in proc.stderr.splitlines() if "FATAL" in line]
    assert any(
        line.startswith("[rank 1 trainer") and "RuntimeError: injected failure in the third trainer step" in line
        for line in fatal
    ), explain(proc)


def test_a_checkpoint_request_and_a_stop_save_every_policy_at_one_frame_count(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    """SIGUSR2 on an actor: a set of every policy; SIGTERM on blue's trainer rank: the run stops with a final set."""
    run = tmp_path / "signals"
    data = _config(run, ("red", "blue"))
    data["experiment"]["total_frames"] = 10**9
    data["run"].update(checkpoint_every_steps=0, checkpoint_every_seconds=0, progress="log", log_interval_seconds=0.5)
    path = tmp_path / "signals.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    summary = tmp_path / "signals.json"
    cmd = [
        mpiexec,
        "-n",
        "4",
        sys.executable,
        "-m",
        "mpi4py",
        "-m",
        "hpcrl.run",
        str(path),
        "--summary-json",
        str(summary),
    ]
    err = tmp_path / "signals.stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen(
            cmd, env=clean_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
        try:

            def wait(pred: Any, what: str) -> None:
                deadline = time.monotonic() + 120
                while not pred():
                    assert proc.poll() is None, f"the job ended while waiting for {what}: {err.read_text()[-3000:]}"
                    assert time.monotonic() < deadline, f"timed out waiting for {what}"
                    time.sleep(0.1)

            wait(lambda: "hpcrl.progress: frames" in err.read_text(), "the first progress line")
            pids = {int(e["rank"]): int(e["pid"]) for e in json.loads((run / "ranks.json").read_text())}
            os.kill(pids[3], signal.SIGUSR2)  # an actor asks for a checkpoint
            wait(
                lambda: all(list((run / "checkpoints" / n).glob("*.h5")) for n in ("red", "blue")), "the requested set"
            )
            time.sleep(2.0)  # let both policies step past the requested set (files are named by version)
            os.kill(pids[1], signal.SIGTERM)  # blue's trainer rank: the whole run stops
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    text = err.read_text()
    assert rc == 0, text[-5000:]
    result = json.loads(summary.read_text())
    assert result["reason"].startswith("SIGTERM on rank 1 (trainer"), result["reason"]
    sets: dict[str, list[tuple[int, str]]] = {}
    for name in ("red", "blue"):
        attrs = [read_checkpoint_attrs(p) for p in sorted((run / "checkpoints" / name).glob("*.h5"))]
        sets[name] = [(int(a["frames"]), str(a["reason"])) for a in attrs]
    for name in ("red", "blue"):  # the stop set: every policy at the run's final frame count
        assert sets[name][-1] == (result["frames"], "stop"), sets
    # the requested set: one frame count for every policy; a policy that had not stepped since then (on a slow
    # machine) has its request file rewritten by the stop set, whose version is the same
    requested = {f for name in ("red", "blue") for f, r in sets[name] if r == "request"}
    assert len(requested) == 1 and requested.pop() < result["frames"], sets
    assert all([r for _, r in sets[name]] in (["request", "stop"], ["stop"]) for name in ("red", "blue")), sets
    assert "checkpoint requested by SIGUSR2 on rank 3 (actor" in text
    progress = [line for line in text.splitlines() if "hpcrl.progress: frames" in line]
    assert "by policy: red " in progress[-1] and ", blue " in progress[-1], progress[-1:]  # both policies' returns


def _acted_versions(run_dir: Path, rank: int, policy: str) -> np.ndarray:
    """The newest version that acted a row of each batch trainer ``rank`` trained on (from its trace)."""
    stats = read_trace(run_dir / "traces" / f"rank-{rank:04d}.h5")["trainer"]["stats"]
    values = np.asarray(stats[f"{policy}/acted_version"])
    return values[np.isfinite(values)]


def _role_line(stderr: str, rank: int, role: str) -> str:
    """The final stats line of ``rank`` in rank 0's per-role table."""
    lines = [line for line in stderr.splitlines() if f"hpcrl.roles.trainer: rank {rank} {role}: " in line]
    assert len(lines) == 1, stderr[-5000:]
    return lines[0]


def test_inference_ranks_serve_every_policy_in_batches_of_its_own(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    """layout.inference: the inference rank holds every policy; each policy's rows reach only that policy.

    blue is a frozen ``random`` policy: its results have another layout than red's actor-critic ones, so a
    request answered by the wrong policy fails the ring's result check and ends the run.
    """
    run = tmp_path / "remote"
    policies = {"red": dict(AC), "blue": {"type_": "random", "args": {"action_dim": 2}}}
    data = _config(run, ("red",), policies=policies, layout={"inference": 1})
    proc, summary = _run(clean_env, mpiexec, data, 4, tmp_path)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert "1 trainer [0] (red [0]), 1 inference [1], 2 actors [2-3]" in summary["layout"]
    assert summary["policy_versions"]["red"] > 0 and summary["policy_versions"]["blue"] == 0
    assert summary["inference_requests"] > 0
    assert _agents_seen(run, 0) == {"red": {0.0}}
    # red's rows were acted by red's published versions (a mix-up would show blue's version 0 throughout)
    acted = _acted_versions(run, 0, "red")
    final = summary["policy_versions"]["red"]
    assert acted.max() >= max(1, final // 2) and np.all(acted <= final)
    line = _role_line(proc.stderr, 1, "inference")
    assert "mean_batch_by_policy={'red': " in line and "policy_versions={'red': " in line and "'blue': 0}" in line
    for actor in (2, 3):  # remote inference: the actors ask for both policies' actions
        assert "requests=" in _role_line(proc.stderr, actor, "actor")

    # two trained policies on one inference rank per node, red with two trainer ranks: each group trains on
    # its own agents' rows, the inference rank follows both groups' publications
    run = tmp_path / "remote-two"
    data = _config(run, ("red", "blue"), layout={"trainers": {"red": 2}, "inference_per_node": 1})
    proc, summary = _run(clean_env, mpiexec, data, 6, tmp_path)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert "3 trainers [0-2] (red [0-1], blue [2]), 1 inference" in summary["layout"], summary["layout"]
    assert _agents_seen(run, 0) == {"red": {0.0}} and _agents_seen(run, 2) == {"blue": {1.0}}
    assert all(v > 0 for v in summary["policy_versions"].values())
    assert "policy_versions={'red': " in _role_line(proc.stderr, 3, "inference")


def test_inference_ranks_carry_each_policys_own_recurrent_state(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    """An LSTM learner (agents 0 and 2) and a frozen GRU (agent 1) on one inference rank: each keeps its layout."""

    def rnn(kind: str) -> dict[str, Any]:
        return {"type_": "actor-critic-separate", "args": {**AC["args"], "num_rnn_layers": 1, "rnn_type": kind}}

    run = tmp_path / "rnn"
    agents = [{"match": "0|2", "policy": "red"}, {"match": ".*", "policy": "blue"}]
    data = _config(run, ("red",), policies={"red": rnn("lstm"), "blue": rnn("gru")}, agents=agents)
    data["environment"]["args"]["n_agents"] = 3
    data["layout"] = {"inference": 1}
    proc, summary = _run(clean_env, mpiexec, data, 4, tmp_path)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert summary["policy_versions"]["red"] > 0 and summary["policy_versions"]["blue"] == 0
    assert _agents_seen(run, 0) == {"red": {0.0, 2.0}}


@pytest.mark.parametrize("inference", [False, True], ids=["inline", "inference-rank"])
def test_selfplay_runs_on_the_actors_and_resumes_from_the_restored_weights(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str, inference: bool
) -> None:
    """Self-play under mpiexec: each actor plays snapshots of the weights it received; rank 0 keeps the score.

    Agent 1 is the opponent: its rows never reach the trainer; every game is in rank 0's ``/selfplay`` trace;
    a frozen random policy plays a quarter of the games (a fixed opponent); a resumed run's pools start from
    the restored weights (no game against an older snapshot after it). With an inference rank, it serves the
    learner's rows while the actors play the opponents themselves (it never sees an opponent row).
    """
    run = tmp_path / "selfplay"
    policies = {"red": dict(AC), "rnd": {"type_": "random", "args": {"action_dim": 2}}}
    data = _config(run, ("red",), policies=policies, agents=[{"match": 0, "policy": "red"}])
    data["selfplay"] = {"policy": "red", "opponent_agents": [1], "pool_size": 3, "snapshot_every_frames": 160}
    data["selfplay"].update(fixed_opponents=["rnd"], fixed_fraction=0.25)  # rank 0 publishes the frozen rnd
    ranks, actors = (4, (2, 3)) if inference else (3, (1, 2))
    if inference:
        data["layout"] = {"inference": 1}
    proc, first = _run(clean_env, mpiexec, data, ranks, tmp_path, "run.stop_at_frames=600")
    assert proc.returncode == 0 and first is not None, explain(proc)
    assert _agents_seen(run, 0) == {"red": {0.0}}  # the opponent's rows were dropped on the actors
    games = read_trace(run / "traces" / "rank-0000.h5")["selfplay"]
    n = len(games["outcome"])
    assert n == first["selfplay_games"] > 0 and first["episodes"] - 4 <= n <= first["episodes"]
    assert np.all(games["opponent_version"] <= games["learner_version"]) and games["opponent_version"].max() > 0
    fixed = int((games["opponent_version"] == -1).sum())  # the fixed opponent's games: about a quarter
    assert fixed == first["selfplay_vs_fixed"]["rnd"]["games"] and 0.1 * n < fixed < 0.45 * n
    assert 2 <= len(first["selfplay_pool_versions"]) <= 3
    assert {int(v) for v in first["selfplay_vs_pool"]} <= set(first["selfplay_pool_versions"])  # JSON keys
    for actor in actors:  # each actor keeps a pool of its own (of the newest 3 snapshots)
        line = _role_line(proc.stderr, actor, "actor")
        pool = line.partition("selfplay_pool_versions=[")[2].partition("]")[0]
        assert len(pool.split(", ")) == 3, pool
        assert ("requests=" in line) == inference, line
    if inference:  # the learner's rows only: no opponent row (of a snapshot or of rnd) reached it
        line = _role_line(proc.stderr, 1, "inference")
        batches = line.partition("mean_batch_by_policy={")[2].partition("}")[0]
        assert batches.startswith("'red': ") and batches.endswith("'rnd': 0.0"), line

    restored = first["policy_versions"]["red"]
    proc, second = _run(clean_env, mpiexec, data, ranks, tmp_path)
    assert proc.returncode == 0 and second is not None, explain(proc)
    games = read_trace(run / "traces" / "rank-0000.r1.h5")["selfplay"]  # the resumed run's trace
    assert len(games["outcome"]) == second["selfplay_games"] > 0
    snapshots = games["opponent_version"][games["opponent_version"] >= 0]
    assert snapshots.min() == restored, explain(proc)


REFUSALS = [
    ({"trainers": {}}, "trainers: a multi-policy config without any trained policy runs in one process for now"),
]


@pytest.mark.parametrize(("over", "message"), REFUSALS, ids=["frozen"])
def test_what_does_not_run_under_mpi_is_refused_before_any_communication(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str, over: dict[str, Any], message: str
) -> None:
    run = tmp_path / "refused"
    data = _config(run, ("red",))
    if "selfplay" in over:
        data["agents"] = [{"match": 0, "policy": "red"}]
        del data["policies"]["blue"]
    data.update({k: v for k, v in over.items() if "__" not in k})
    for key, value in over.items():
        if "__" in key:
            section, name = key.split("__")
            data[section][name] = value
    proc, _ = _run(clean_env, mpiexec, data, 2, tmp_path, timeout=120)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.count(f"hpcrl: config error: {message}") == 1, explain(proc)
    assert "this job has 2 MPI ranks" in proc.stderr
    assert not run.exists()


def test_a_layout_mapping_naming_a_frozen_policy_is_a_config_error(
    tmp_path: Path, clean_env: dict[str, str], mpiexec: str
) -> None:
    data = _config(tmp_path / "run", ("red",), layout={"trainers": {"red": 1, "blue": 1}})
    proc, _ = _run(clean_env, mpiexec, data, 2, tmp_path, timeout=120)
    assert proc.returncode == 2, explain(proc)
    assert proc.stderr.count("layout.trainers.blue: policy 'blue' is frozen (it has no entry in trainers)") == 1
