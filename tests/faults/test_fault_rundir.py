"""The run directory's life cycle end to end through ``hpcrl.run``: one run per run dir, private modes, owner,
and what a resume writes.

A second start on a run dir in use (one process and ``mpiexec -n 3``), a SIGKILLed holder, fresh MPI starts
(modes, ``run.fresh`` on a new dir), a failed resume (config.yaml untouched, spec diff), an env id changed on
resume, and a run dir of another user. The lock itself (fallback without flock included) is unit-tested in
tests/unit/test_rundir.py.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
from pathlib import Path

import pytest
from faultkit import REPO, checkpoints, fault_env, log_lines, run_job, start_job, wait_until

from hpcrl.storage.checkpoint import read_checkpoint_attrs

HOST = socket.gethostname()
CARTPOLE = REPO / "examples" / "cartpole" / "ppo.yaml"
TINY_CARTPOLE = [
    "actor.envs_per_actor=2",
    "actor.fragment_length=32",
    "trainer.args.epochs=1",
    "trainer.args.minibatches=2",
    "run.progress=log",
]


def _snapshot(run_dir: Path) -> dict[str, tuple[int, int, int]]:
    """Every file and directory under ``run_dir``: relative path -> (inode, size, mtime)."""
    out = {}
    for root, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            p = Path(root) / name
            st = p.lstat()
            out[str(p.relative_to(run_dir))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def _in_use_line(run_dir: Path, pid: int) -> re.Pattern[str]:
    return re.compile(
        rf"^hpcrl: run dir {re.escape(str(run_dir))} is in use by pid {pid} on host {re.escape(HOST)} "
        r"\(since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\): wait for it, stop it, or use another run\.dir$"
    )


# ---------------------------------------------------------------------- a second start
def test_second_start_fails_at_once_and_touches_nothing(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """While a run trains (a save in flight), a second start on its run dir, alone or as ``mpiexec -n 3``, exits 2
    naming the first run's host and pid and changes nothing in the run dir; the first run then finishes normally."""
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    first = start_job(
        env,
        run_dir,
        "experiment.total_frames=100000000",
        "run.checkpoint_every_steps=4",
        "trainer.args.ballast_mib=16",  # each save takes long enough to be caught with its temp file on disk
    )
    try:
        ckdir = run_dir / "checkpoints"

        def saving() -> bool:
            if first.proc.poll() is not None:
                return True
            return ckdir.is_dir() and any(".h5.tmp." in p.name for p in ckdir.iterdir())

        for _ in range(20):  # freeze the first run (writer included) mid-save; it keeps its lock
            wait_until(saving, 90, "a checkpoint save in flight (a .tmp file)", poll=0.002)
            os.killpg(first.proc.pid, signal.SIGSTOP)
            before = _snapshot(run_dir)
            if any(".h5.tmp." in name for name in before) or first.proc.poll() is not None:
                break
            os.killpg(first.proc.pid, signal.SIGCONT)  # the save landed just before the freeze: catch the next
        try:
            assert first.proc.poll() is None, first.output()[-3000:]
            assert any(".h5.tmp." in name for name in before), before  # the in-flight save of the first run
            for ranks in (0, 3):
                res = run_job(env, run_dir, ranks=ranks, timeout=90)
                assert res.rc == 2, res.explain()
                lines = log_lines(res.err, "hpcrl:")
                assert len(lines) == 1 and _in_use_line(run_dir, first.proc.pid).match(lines[0]), res.explain()
                assert "Traceback" not in res.text and "Abort" not in res.text, res.explain()
                assert res.summary is None
                assert _snapshot(run_dir) == before  # no sweep, no config.yaml, no trace, no checkpoint
        finally:
            os.killpg(first.proc.pid, signal.SIGCONT)
        wait_until(lambda: len(checkpoints(run_dir)) >= 2 or first.proc.poll() is not None, 60, "more checkpoints")
        first.proc.send_signal(signal.SIGTERM)
        res1 = first.finish(timeout=90)
    finally:
        first.kill()
    assert res1.rc == 0, res1.explain()
    assert "stopped by SIGTERM" in res1.out, res1.explain()
    m = re.search(r"^\s*checkpoint\s+(\S+)$", res1.out, re.M)
    assert m is not None, res1.explain()
    final = Path(m.group(1))
    attrs = read_checkpoint_attrs(final)
    assert final.parent == run_dir / "checkpoints" and attrs["reason"] == "stop"
    assert str(run_dir) in attrs["config"]
    assert not (run_dir / ".lock").exists()  # released at the SIGTERM stop
    assert not [p for p in (run_dir / "checkpoints").iterdir() if ".tmp." in p.name]


def test_lock_of_a_sigkilled_run_does_not_block_the_next_start(tmp_path: Path, clean_env: dict[str, str]) -> None:
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    first = start_job(env, run_dir, "experiment.total_frames=100000000", "run.checkpoint_every_steps=4")
    try:
        wait_until(lambda: checkpoints(run_dir) or first.proc.poll() is not None, 60, "the first checkpoint")
        assert first.proc.poll() is None, first.output()[-3000:]
        pid = first.proc.pid
        os.killpg(pid, signal.SIGKILL)
        first.proc.wait(30)
    finally:
        first.kill()
    assert (run_dir / ".lock").exists()  # left behind; the kernel released the flock
    res = run_job(env, run_dir, "experiment.total_frames=300", "run.fresh=true", timeout=90)
    assert res.rc == 0, res.explain()
    taken = log_lines(res.err, "taking over the lock left by")
    assert len(taken) == 1 and f"pid {pid} on host {HOST}" in taken[0] and " WARNING " in taken[0], res.explain()


# ---------------------------------------------------------------------- MPI start-up
def test_fresh_mpi_starts_make_private_dirs_and_move_nothing(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """Non-leader ranks wait for the leader: the dirs are 0700 and ``run.fresh`` on a new dir moves nothing."""
    env = fault_env(clean_env)
    for i in range(3):
        run_dir = tmp_path / f"run{i}"
        res = run_job(env, run_dir, "experiment.total_frames=300", "run.fresh=true", ranks=3, timeout=120)
        assert res.finished, res.explain()
        assert not log_lines(res.text, "moved the existing"), res.explain()
        assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "config.yaml", "ranks.json", "traces"]
        for d in (run_dir, run_dir / "checkpoints", run_dir / "traces"):
            assert stat.S_IMODE(d.stat().st_mode) == 0o700, (d, oct(d.stat().st_mode), i)
        assert sorted(p.name for p in (run_dir / "traces").iterdir()) == [f"rank-{r:04d}.h5" for r in range(3)]


# ---------------------------------------------------------------------- resume
@pytest.mark.parametrize("ranks", [0, 3], ids=["one-process", "mpiexec-3"])
def test_failed_resume_keeps_config_yaml_and_shows_the_spec_diff(
    tmp_path: Path, clean_env: dict[str, str], ranks: int
) -> None:
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    res = run_job(env, run_dir, "experiment.total_frames=300")
    assert res.rc == 0, res.explain()
    config_before = (run_dir / "config.yaml").read_bytes()
    assert b"hidden_dim: 16" in config_before
    res = run_job(
        env, run_dir, "experiment.total_frames=600", "policy.args.hidden_dim=32", ranks=ranks, expect_fatal=bool(ranks)
    )
    assert res.rc != 0, res.explain()
    assert "does not fit policy 'actor-critic-separate'" in res.text, res.explain()
    fatal = log_lines(res.text, "does not fit policy 'actor-critic-separate'")
    both = re.compile(  # the one error line names both (resolved) policy configs
        r"; the checkpoint's policy: \{args: \{action_dim: 2, [^}]*hidden_dim: 16, obs_dim: \{obs: 4\}\}, "
        r"type_: actor-critic-separate\}; this run's policy: \{args: \{action_dim: 2, [^}]*hidden_dim: 32, "
        r"obs_dim: \{obs: 4\}\}, type_: actor-critic-separate\}$"
    )
    assert any(both.search(line) for line in fatal), fatal
    assert (run_dir / "config.yaml").read_bytes() == config_before
    warning = log_lines(res.err, "was written with another environment/policy spec")
    assert len(warning) == 1 and " WARNING " in warning[0], res.explain()
    diff = res.err[res.err.index(warning[0]) :].splitlines()
    assert "-    hidden_dim: 16" in diff and "+    hidden_dim: 32" in diff, res.explain()
    assert not (run_dir / ".lock").exists()


def test_env_id_change_on_resume_warns_with_a_diff(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """CartPole-v1 -> CartPole-v0 has the same spaces, so the checkpoint loads: the change must still be said."""
    run_dir = tmp_path / "run"
    res = run_job(clean_env, run_dir, *TINY_CARTPOLE, "experiment.total_frames=300", config=CARTPOLE)
    assert res.rc == 0, res.explain()
    assert not log_lines(res.err, "another environment/policy spec")
    res = run_job(
        clean_env,
        run_dir,
        *TINY_CARTPOLE,
        "experiment.total_frames=600",
        "environment.args.id=CartPole-v0",
        config=CARTPOLE,
    )
    assert res.rc == 0, res.explain()
    warning = log_lines(res.err, "was written with another environment/policy spec; this run resumes it with the new")
    assert len(warning) == 1, res.explain()
    diff = res.err[res.err.index(warning[0]) :].splitlines()
    assert "-    id: CartPole-v1" in diff and "+    id: CartPole-v0" in diff, res.explain()
    assert not [line for line in diff if line.startswith(("-  ", "+  ")) and "id: CartPole" not in line]
    assert "id: CartPole-v0" in (run_dir / "config.yaml").read_text()


# ---------------------------------------------------------------------- ownership
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another user")
def test_run_dir_of_another_user_is_refused(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    os.chown(run_dir, 65534, 65534)
    res = run_job(fault_env(clean_env), run_dir, "experiment.total_frames=300", timeout=60)
    assert res.rc == 2, res.explain()
    lines = log_lines(res.err, "hpcrl:")
    assert len(lines) == 1, res.explain()
    assert lines[0].startswith(f"hpcrl: run dir {run_dir} belongs to user ") and "(uid 65534)" in lines[0]
    assert "use a run.dir of your own" in lines[0]
    assert list(run_dir.iterdir()) == []
