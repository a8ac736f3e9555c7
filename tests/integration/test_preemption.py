"""Preemption without SLURM: SIGTERM/SIGUSR1 to one rank, to mpiexec, or to a one-process run.

Every rank must agree to stop at the next step boundary, the leader must write a complete checkpoint
with ``reason="stop"``, every process must exit 0 well within SLURM's default KillWait (30 s), and a
rerun with the same run dir must resume from that checkpoint. SIGUSR2 to any rank asks for a checkpoint
now: the leader writes one (``reason="request"``) and the run goes on.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from helpers import TINY

#: SLURM sends SIGKILL this long after SIGTERM by default (KillWait): a stop must finish well before.
EXIT_WITHIN = 30.0
#: a long run, so only the signal ends it
LONG = "experiment.total_frames=10000000"

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find rank pids")


class Job:
    """A background ``hpcrl.run`` (one process or an mpiexec job) with its output in files."""

    def __init__(
        self, env: dict[str, str], run_dir: Path, *overrides: str, ranks: int = 0, session: bool = False
    ) -> None:
        self.run_dir = run_dir
        self.summary = run_dir.parent / f"{run_dir.name}-summary-{time.monotonic_ns()}.json"
        self.out = run_dir.parent / f"{run_dir.name}-{time.monotonic_ns()}.out"
        self.err = self.out.with_suffix(".err")
        cmd = [sys.executable, "-m", "hpcrl.run"] if not ranks else [sys.executable, "-m", "mpi4py", "-m", "hpcrl.run"]
        cmd += [str(REPO / "examples/cartpole/ppo.yaml"), f"run.dir={run_dir}", *TINY, *overrides]
        cmd += ["--summary-json", str(self.summary)]
        if ranks:
            cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), *cmd]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err, start_new_session=session)

    def text(self) -> str:
        """stdout + stderr so far."""
        return self.out.read_text() + self.err.read_text()

    def explain(self) -> str:
        """The tail of the output, for assertion messages."""
        return f"rc={self.proc.poll()}\n{self.text()[-6000:]}"

    def wait_for_training(self, min_steps: int = 2, timeout: float = 90.0) -> None:
        """Block until rank 0 logged at least ``min_steps`` trainer steps."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            steps = [int(s) for s in re.findall(r"hpcrl\.progress: frames .* steps (\d+)", self.err.read_text())]
            if steps and max(steps) >= min_steps:
                return
            if self.proc.poll() is not None:
                pytest.fail(f"the run ended before training started:\n{self.explain()}")
            time.sleep(0.2)
        self.kill()
        pytest.fail(f"no trainer step within {timeout:.0f} s:\n{self.explain()}")

    def wait(self, timeout: float) -> tuple[int, float]:
        """Wait for the exit; returns (exit code, seconds waited). Kills the job on timeout."""
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running {timeout:.0f} s after the signal:\n{self.explain()}")
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        """SIGKILL the job and the ranks it started."""
        for pid in [*descendants(self.proc.pid), self.proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)

    def result(self) -> dict[str, Any]:
        """The run summary rank 0 wrote."""
        assert self.summary.exists(), f"no summary:\n{self.explain()}"
        return json.loads(self.summary.read_text())


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc; mpiexec -> hydra_pmi_proxy -> python ranks)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            data = stat.read_text()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def rank_pid(job: Job, rank: int) -> int:
    """The pid of the python process of ``rank`` (Hydra sets PMI_RANK, Open MPI OMPI_COMM_WORLD_RANK)."""
    wanted = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid in descendants(job.proc.pid):
        try:
            environ = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"hpcrl.run" in cmdline and environ & wanted:
            return pid
    pytest.fail(f"no process of rank {rank} below mpiexec pid {job.proc.pid}")


def newest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    from hpcrl.storage.checkpoint import read_checkpoint_attrs

    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert ckpts, f"no checkpoint in {run_dir}"
    return ckpts[-1], read_checkpoint_attrs(ckpts[-1])


def assert_stopped_with_checkpoint(job: Job, rc: int, waited: float, reason: str) -> dict[str, Any]:
    """Exit 0 in time, summary reason, a complete checkpoint of the final state with reason "stop"."""
    assert rc == 0, job.explain()
    assert waited < EXIT_WITHIN, f"took {waited:.1f} s to stop (SLURM would SIGKILL after {EXIT_WITHIN:.0f} s)"
    summary = job.result()
    assert summary["reason"].startswith(reason), summary["reason"]
    path, attrs = newest_checkpoint(job.run_dir)
    assert summary["checkpoint"] == str(path)
    assert attrs["reason"] == "stop"
    assert attrs["frames"] == summary["frames"] and attrs["version"] == summary["policy_version"] >= 1
    return summary


def assert_resumes(env: dict[str, str], run_dir: Path, before: dict[str, Any], ranks: int = 0, *extra: str) -> None:
    """Rerun with the same run dir: resumes from the stop checkpoint and continues counting frames."""
    target = before["frames"] + 2000
    job = Job(env, run_dir, f"experiment.total_frames={target}", *extra, ranks=ranks)
    rc, _ = job.wait(timeout=120)
    assert rc == 0, job.explain()
    assert f"resumed from {before['checkpoint']}: version {before['policy_version']}" in job.text()
    again = job.result()
    assert again["frames"] >= target and again["frames_this_run"] < again["frames"]
    assert again["policy_version"] > before["policy_version"]
    _, attrs = newest_checkpoint(run_dir)
    assert attrs["reason"] == "final"


def test_sigterm_to_one_actor_rank_stops_every_rank_and_resumes(tmp_path, clean_env):
    run_dir = tmp_path / "actor"
    job = Job(clean_env, run_dir, LONG, "layout.inference=1", ranks=3)
    job.wait_for_training()
    os.kill(rank_pid(job, 2), signal.SIGTERM)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    summary = assert_stopped_with_checkpoint(job, rc, waited, "SIGTERM on rank 2 (actor")
    text = job.text()
    for r, role in enumerate(("trainer", "inference", "actor")):  # every rank drained and reported
        assert f"rank {r} {role}:" in text, text[-3000:]
    assert_resumes(clean_env, run_dir, summary, 3, "layout.inference=1")


def test_sigusr1_to_the_inference_rank_stops_the_job(tmp_path, clean_env):
    job = Job(clean_env, tmp_path / "inference", LONG, "layout.inference=1", ranks=3)
    job.wait_for_training()
    os.kill(rank_pid(job, 1), signal.SIGUSR1)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    assert_stopped_with_checkpoint(job, rc, waited, "SIGUSR1 on rank 1 (inference")


def test_sigterm_to_mpiexec_is_forwarded_to_every_rank(tmp_path, clean_env):
    """Hydra's mpiexec passes SIGTERM (and SIGUSR1, SIGINT) on to every rank; the leader's own flag wins."""
    job = Job(clean_env, tmp_path / "mpiexec", LONG, "layout.inference=1", ranks=3)
    job.wait_for_training()
    job.proc.send_signal(signal.SIGTERM)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    assert_stopped_with_checkpoint(job, rc, waited, "SIGTERM")


def test_sigterm_to_a_single_process_run_checkpoints_and_resumes(tmp_path, clean_env):
    run_dir = tmp_path / "local"
    job = Job(clean_env, run_dir, LONG)
    job.wait_for_training()
    job.proc.send_signal(signal.SIGTERM)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    summary = assert_stopped_with_checkpoint(job, rc, waited, "stopped by SIGTERM")
    assert_resumes(clean_env, run_dir, summary)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_the_whole_process_group_keeps_background_checkpoints(tmp_path, clean_env, sig):
    """SLURM and Ctrl-C signal every process of the job, the checkpoint writer process included: a periodic
    save in flight must still land, and the run must stop with its stop checkpoint, no failed save."""
    job = Job(clean_env, tmp_path / "group", LONG, "run.checkpoint_every_steps=1", session=True)
    job.wait_for_training(min_steps=4)
    os.killpg(job.proc.pid, sig)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    assert_stopped_with_checkpoint(job, rc, waited, "stopped by SIG")
    text = job.text()
    assert "written in" in text and "in the background" in text, job.explain()  # the writer process was in use
    assert "checkpoint save failed" not in text, job.explain()


def test_sigterm_to_the_leader_alone_stops_the_job(tmp_path, clean_env):
    job = Job(clean_env, tmp_path / "leader", LONG, "layout.inference=1", ranks=3)
    job.wait_for_training()
    os.kill(rank_pid(job, 0), signal.SIGTERM)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    assert_stopped_with_checkpoint(job, rc, waited, "SIGTERM")


# ---------------------------------------------------------------------- SIGUSR2: a checkpoint now
def wait_for_requested_checkpoint(job: Job, timeout: float = 60.0) -> tuple[Path, dict[str, Any]]:
    """The first checkpoint written on request (``reason="request"``), once it is on disk."""
    from hpcrl.storage.checkpoint import read_checkpoint_attrs

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted((job.run_dir / "checkpoints").glob("ckpt-*.h5")):
            attrs = read_checkpoint_attrs(path)
            if attrs["reason"] == "request":
                return path, attrs
        if job.proc.poll() is not None:
            pytest.fail(f"the run ended without a requested checkpoint:\n{job.explain()}")
        time.sleep(0.1)
    job.kill()
    pytest.fail(f"no requested checkpoint within {timeout:.0f} s:\n{job.explain()}")


def assert_checkpoint_now_and_run_goes_on(job: Job, asked_by: str) -> None:
    """A requested checkpoint appears, training goes on past it, and a later stop ends the run cleanly."""
    path, attrs = wait_for_requested_checkpoint(job)
    assert job.proc.poll() is None, job.explain()  # the request did not stop the run
    assert f"checkpoint requested by {asked_by}" in job.text(), job.explain()
    job.wait_for_training(min_steps=int(attrs["trainer_steps"]) + 2)  # it trains on after the checkpoint
    job.proc.send_signal(signal.SIGTERM)
    rc, waited = job.wait(timeout=EXIT_WITHIN + 30)
    summary = assert_stopped_with_checkpoint(job, rc, waited, "")
    assert path.exists() and summary["checkpoint"] != str(path)
    assert summary["frames"] > attrs["frames"] and summary["policy_version"] > attrs["version"]


def test_sigusr2_to_an_actor_rank_writes_a_checkpoint_and_the_run_goes_on(tmp_path, clean_env):
    job = Job(clean_env, tmp_path / "usr2", LONG, "layout.inference=1", ranks=3)
    job.wait_for_training()
    os.kill(rank_pid(job, 2), signal.SIGUSR2)
    assert_checkpoint_now_and_run_goes_on(job, "SIGUSR2 on rank 2 (actor")


def test_sigusr2_to_a_single_process_run_writes_a_checkpoint_and_the_run_goes_on(tmp_path, clean_env):
    job = Job(clean_env, tmp_path / "usr2-local", LONG)
    job.wait_for_training()
    job.proc.send_signal(signal.SIGUSR2)
    assert_checkpoint_now_and_run_goes_on(job, "SIGUSR2")
