"""Losing a node: every rank of one node killed, frozen, or its launcher proxy lost with it.

Two nodes are simulated on one machine with MPICH's Hydra: ``mpiexec -launcher fork -hosts n1,n2 -ppn 2 -n 4``
starts one ``hydra_pmi_proxy`` per "node", each with two ranks (ranks 0-1 on n1, 2-3 on n2); Hydra gives each
rank its node's name in ``PMI_HOSTNAME``, which hpcrl uses as the rank's host in its messages.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from faultkit import (
    FAULT_YAML,
    MPIEXEC,
    PYTHON,
    REPO,
    checkpoints,
    fault_env,
    job_processes,
    kill_group,
    log_lines,
    run_job,
    wait_until,
)

from hpcrl.storage.checkpoint import read_checkpoint_attrs

HEARTBEAT = 8
OVERRIDES = ["experiment.total_frames=100000000", "run.checkpoint_every_steps=5", f"run.heartbeat_seconds={HEARTBEAT}"]


class TwoNodeJob:
    """A job over simulated nodes (4 ranks on two by default), output to files, killed as a process group on cleanup."""

    def __init__(
        self,
        env: dict[str, str],
        run_dir: Path,
        hosts: str = "n1,n2",
        ppn: int = 2,
        *extra: str,
        launcher: tuple[str, ...] = (),
    ) -> None:
        self.run_dir = run_dir
        self.size = ppn * len(hosts.split(","))
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.out = run_dir.parent / "job.out"
        self.err = run_dir.parent / "job.err"
        cmd = [MPIEXEC, "-launcher", "fork", *launcher, "-hosts", hosts, "-ppn", str(ppn), "-n", str(self.size)]
        cmd += [PYTHON, "-m", "mpi4py", "-m", "hpcrl.run", str(FAULT_YAML), f"run.dir={run_dir}", *OVERRIDES, *extra]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=err, start_new_session=True)

    def text(self) -> str:
        return self.out.read_text() + "\n" + self.err.read_text()

    def ranks(self) -> dict[int, tuple[int, str]]:
        """Rank -> (pid, node) of the job's Python ranks, from their environment."""
        found = {}
        for pid in job_processes(self.run_dir):
            try:
                env = dict(
                    v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v
                )
            except OSError:
                continue
            if b"PMI_RANK" in env:
                found[int(env[b"PMI_RANK"])] = (pid, env.get(b"PMI_HOSTNAME", b"?").decode())
        return found

    def start(self) -> dict[int, tuple[int, str]]:
        """Wait until training is under way (a checkpoint exists) and every rank is seen."""
        wait_until(lambda: checkpoints(self.run_dir) or self.proc.poll() is not None, 120, "the first checkpoint")
        assert self.proc.poll() is None, self.text()[-4000:]

        def all_ranks() -> dict[int, tuple[int, str]] | None:
            found = self.ranks()
            return found if len(found) == self.size else None

        return wait_until(all_ranks, 10, f"the {self.size} rank pids")  # type: ignore[no-any-return]

    def finish(self, timeout: float) -> tuple[int, float]:
        t0 = time.monotonic()
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the job was still running {timeout:.0f} s after the fault:\n{self.text()[-6000:]}")
        return rc, time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            kill_group(self.proc.pid)
            self.proc.wait(timeout=30)
        for pid in job_processes(self.run_dir):  # an orphan whose proxy is gone may have left the group's reach
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _no_leftovers(run_dir: Path, within: float) -> None:
    wait_until(lambda: not job_processes(run_dir), within, "every process of the job to be gone", poll=0.2)


@pytest.mark.parametrize("with_proxy", [False, True], ids=["its-ranks", "its-ranks-and-proxy"])
def test_losing_every_rank_of_a_node_ends_the_job_at_once(
    tmp_path: Path, clean_env: dict[str, str], with_proxy: bool
) -> None:
    """Hydra SIGKILLs the surviving ranks within about 0.1 s (no SIGTERM first, so no rank can say anything then);
    its banner names one pid and the node (when the node's proxy survives). The rank table hpcrl logged at
    start-up (and ranks.json) uses the same node names, so the node in the banner maps to its ranks."""
    job = TwoNodeJob(fault_env(clean_env), tmp_path / "run")
    try:
        ranks = job.start()
        victims = [pid for r, (pid, node) in ranks.items() if node == "n2"]
        assert sorted(r for r, (_, node) in ranks.items() if node == "n2") == [2, 3], ranks
        if with_proxy:
            victims.append(_parent(victims[0]))  # hydra_pmi_proxy of n2
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        rc, after = job.finish(timeout=60)
    finally:
        job.kill()
    text = job.text()
    assert rc in (9, 255), f"rc={rc}\n{text[-4000:]}"  # Hydra's exit status, see docs/reliability.md
    if not with_proxy:  # without its proxy Hydra's mpiexec fails an internal assertion instead, naming nothing
        assert "RUNNING AT n2" in text, text[-4000:]
    assert log_lines(text, "on 2 nodes: n1 [0-1], n2 [2-3]; every rank's role, host and pid: "), text[-4000:]
    table = {e["rank"]: e for e in json.loads((tmp_path / "run" / "ranks.json").read_text())}
    assert [table[r]["host"] for r in range(4)] == ["n1", "n1", "n2", "n2"], table
    assert [table[r]["pid"] for r in (2, 3)] == [ranks[2][0], ranks[3][0]], table
    _no_leftovers(tmp_path / "run", 10)
    print(f"node n2 lost ({'ranks and proxy' if with_proxy else 'ranks'}): mpiexec exit {rc} after {after:.2f} s")


def test_a_frozen_node_is_named_by_the_heartbeat(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """A node that hangs (or whose network is cut) leaves its ranks silent: the leader names all of them."""
    job = TwoNodeJob(fault_env(clean_env), tmp_path / "run")
    try:
        ranks = job.start()
        victims = [pid for pid, node in ranks.values() if node == "n2"]
        for pid in victims:
            os.kill(pid, signal.SIGSTOP)
        rc, after = job.finish(timeout=HEARTBEAT + 40)
    finally:
        for pid, _ in ranks.values():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.kill()
    text = job.text()
    assert rc != 0, text[-4000:]
    expected = (
        f"2 ranks have been silent for {{}} s (run.heartbeat_seconds={HEARTBEAT}): rank 2 (actor on n2), "
        "rank 3 (actor on n2); they are hung or dead; every rank on n2 is silent: is the node down or hung?"
    )
    fatal = log_lines((tmp_path / "run" / "errors.log").read_text(), "FATAL: RankFailure:")
    assert fatal, text[-4000:]
    head, tail = expected.split("{}")
    assert head in fatal[0] and tail in fatal[0], fatal[0]
    _no_leftovers(tmp_path / "run", 10)
    print(f"node n2 frozen: job aborted {after:.1f} s after SIGSTOP, rc={rc}: {fatal[0][:200]}")


def test_a_rank_left_without_its_node_proxy_exits_by_itself(tmp_path: Path, clean_env: dict[str, str]) -> None:
    """Rank 3 and n2's proxy die, rank 2 lives on: Hydra cannot reach rank 2 any more. The leader names rank 3
    after the heartbeat; rank 2 then finds the leader silent and must exit on its own (its stderr is a closed
    pipe and MPI_Abort fails without its proxy), not spin in MPI_Finalize forever."""
    job = TwoNodeJob(fault_env(clean_env), tmp_path / "run")
    try:
        ranks = job.start()
        os.kill(ranks[3][0], signal.SIGKILL)
        os.kill(_parent(ranks[3][0]), signal.SIGKILL)
        rc, _ = job.finish(timeout=HEARTBEAT + 40)
        text = job.text()
        assert rc != 0, text[-4000:]
        assert log_lines(text, "rank 3 (actor on n2) has been silent for"), text[-4000:]
        _no_leftovers(tmp_path / "run", HEARTBEAT + 30)  # rank 2's own heartbeat check ends it
    finally:
        job.kill()
    errors = (tmp_path / "run" / "errors.log").read_text()
    assert log_lines(errors, "[rank 2 actor n2] FATAL: RankFailure: rank 0 (trainer on n1) has been silent"), errors


def test_losing_one_of_four_nodes_ends_the_job_and_the_next_start_resumes(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """8 ranks on 4 simulated nodes (2 per node, 2 trainer ranks): every rank of n3 is SIGKILLed at once, found
    by its host in ranks.json. The job exits non-zero at once; Hydra's banner names n3 and the start-up line
    naming each node's ranks maps it to ranks 4-5; nothing is left behind; the next start resumes."""
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    job = TwoNodeJob(env, run_dir, "n1,n2,n3,n4", 2, "layout.trainers=2")
    try:
        job.start()
        table = json.loads((run_dir / "ranks.json").read_text())
        lost = {e["rank"]: e["pid"] for e in table if e["host"] == "n3"}
        assert sorted(lost) == [4, 5] and {e["node"] for e in table if e["host"] == "n3"} == {2}, table
        before = checkpoints(run_dir)[-1]
        for pid in lost.values():
            os.kill(pid, signal.SIGKILL)
        rc, after = job.finish(timeout=60)
    finally:
        job.kill()
    text = job.text()
    assert rc != 0, text[-4000:]
    assert "RUNNING AT n3" in text, text[-4000:]
    assert log_lines(text, "on 4 nodes: n1 [0-1], n2 [2-3], n3 [4-5], n4 [6-7]; every rank's"), text[-4000:]
    _no_leftovers(run_dir, 10)
    newest = checkpoints(run_dir)[-1]
    frames = int(read_checkpoint_attrs(newest)["frames"])
    again = [*OVERRIDES, f"run.stop_at_frames={frames + 300}", "layout.trainers=2"]
    res = run_job(env, run_dir, *again, ranks=4, timeout=120)
    assert res.finished, res.explain()
    resumed = log_lines(res.text, "resumed from")
    assert resumed and newest.name in resumed[0] and newest.name >= before.name, res.explain()
    assert res.summary is not None and res.summary["frames"] >= frames + 300, res.summary
    print(f"node n3 of 4 lost: mpiexec exit {rc} after {after:.2f} s; restart {resumed[0].split('INFO ')[-1]}")


def test_a_lost_node_is_named_in_one_line_when_hydra_leaves_the_survivors_running(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """With ``mpiexec -disable-auto-cleanup`` Hydra does not kill the survivors; it sends them SIGUSR1, which
    hpcrl takes as a stop: the leader writes a stop checkpoint and the ranks drain. The lost node's ranks never
    join the drain; the heartbeats, which go on while draining, name them and their node in one FATAL line and
    the job aborts. Nothing is left behind and the next start resumes from the stop checkpoint."""
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    job = TwoNodeJob(env, run_dir, "n1,n2,n3,n4", 2, "layout.trainers=2", launcher=("-disable-auto-cleanup",))
    try:
        job.start()
        table = json.loads((run_dir / "ranks.json").read_text())
        lost = {e["rank"]: e["pid"] for e in table if e["host"] == "n3"}
        assert sorted(lost) == [4, 5], table
        for pid in lost.values():
            os.kill(pid, signal.SIGKILL)
        rc, after = job.finish(timeout=60)
    finally:
        job.kill()
    text = job.text()
    assert rc != 0, text[-4000:]
    fatal = log_lines((run_dir / "errors.log").read_text(), "FATAL: RankFailure:")
    assert len(fatal) == 1, fatal
    expected = (
        f"(run.heartbeat_seconds={HEARTBEAT}): rank 4 (actor on n3), rank 5 (actor on n3); they are hung or dead; "
        "every rank on n3 is silent: is the node down or hung?"
    )
    assert expected in fatal[0], fatal[0]
    _no_leftovers(run_dir, 10)
    newest = checkpoints(run_dir)[-1]
    attrs = read_checkpoint_attrs(newest)
    assert attrs["reason"] == "stop", attrs  # written when Hydra's SIGUSR1 arrived: nothing trained is lost
    again = [*OVERRIDES, f"run.stop_at_frames={int(attrs['frames']) + 300}", "layout.trainers=2"]
    res = run_job(env, run_dir, *again, ranks=4, timeout=120)
    assert res.finished, res.explain()
    resumed = log_lines(res.text, "resumed from")
    assert resumed and newest.name in resumed[0], res.explain()
    print(f"node n3 of 4 lost under -disable-auto-cleanup: exit {rc} after {after:.1f} s: {fatal[0][-230:]}")
