"""The run dir lock, ownership and temp-file sweep (hpcrl.storage.rundir), with real processes as holders.

End-to-end behaviour through ``python -m hpcrl.run`` (second starts, MPI, modes, resume) is in
tests/faults/test_fault_rundir.py.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hpcrl.storage import rundir
from hpcrl.storage.checkpoint import CheckpointManager
from hpcrl.storage.rundir import (
    LOCK_NAME,
    Holder,
    RunDirError,
    RunDirInUse,
    RunDirLock,
    lock_held,
    prepare_run_dir,
)

HOST = socket.gethostname()
REPO = Path(__file__).resolve().parents[2]

# A holder in another process: takes the lock (optionally on a filesystem "without flock"), says so, then
# waits for a line on stdin (release and exit), or forks a child that outlives it ("fork").
_HOLDER = textwrap.dedent(
    """
    import errno, fcntl, os, sys, time
    if sys.argv[2] == "noflock":
        def flock(fd, op):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        fcntl.flock = flock
    from hpcrl.storage.rundir import RunDirLock
    lock = RunDirLock.acquire(sys.argv[1])
    if sys.argv[2] == "fork":
        r, w = os.pipe()
        if os.fork() == 0:  # the at-fork hooks have run once fork() returns here
            os.write(w, b"x")
            time.sleep(120)
            os._exit(0)
        os.read(r, 1)  # the child is past fork(): report the lock only now
    print("locked", lock.mode, flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


class _Holder:
    def __init__(self, run: Path, env: dict[str, str], how: str = "flock") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(run), how],
            env=env,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("locked"), f"holder did not lock: {line!r} (rc {self.proc.poll()})"
        self.mode = line.split()[1]
        self.pid = self.proc.pid

    def release(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(30) == 0

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        else:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # a forked child left in its session
            except ProcessLookupError:
                pass


@pytest.fixture
def holders(clean_env: dict[str, str]) -> Iterator[list[_Holder]]:
    started: list[_Holder] = []
    yield started
    for h in started:
        h.cleanup()


@pytest.fixture
def no_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's filesystem has no locks: ``flock`` fails with ENOLCK (as on NFS without lockd)."""

    def flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", flock)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _record(run: Path, **fields: object) -> None:
    base = {"host": HOST, "pid": _dead_pid(), "since": 1.0e9, "mode": "file", "proc_start": None}
    base.update(fields)
    fd = os.open(run / LOCK_NAME, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(base))


# ============================================================== flock
def test_lock_is_exclusive_across_processes_and_names_the_holder(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder]
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env)
    holders.append(holder)
    assert holder.mode == "flock"
    record = json.loads((run / LOCK_NAME).read_text())
    assert record["pid"] == holder.pid and record["host"] == HOST and record["mode"] == "flock"
    assert stat.S_IMODE((run / LOCK_NAME).stat().st_mode) == 0o600
    with pytest.raises(RunDirInUse) as ei:
        RunDirLock.acquire(run)
    msg = str(ei.value)
    assert msg.startswith(f"run dir {run} is in use by pid {holder.pid} on host {HOST} (since 20")
    assert msg.endswith("): wait for it, stop it, or use another run.dir")
    assert ei.value.holder is not None and ei.value.holder.pid == holder.pid
    holder.release()
    assert not (run / LOCK_NAME).exists()
    with RunDirLock.acquire(run) as lock:
        assert lock.mode == "flock" and lock_held(run)
    assert not lock_held(run) and not (run / LOCK_NAME).exists()


def test_lock_of_a_sigkilled_holder_is_taken_over_with_a_warning(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder], caplog: pytest.LogCaptureFixture
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env)
    holders.append(holder)
    holder.kill9()
    assert (run / LOCK_NAME).exists()  # the file stays; the kernel dropped the flock
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.rundir"), RunDirLock.acquire(run) as lock:
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        assert lock.mode == "flock"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"taking over the lock left by pid {holder.pid} on host {HOST}" in warnings[0]
    assert "ended without releasing it" in warnings[0]


def test_a_forked_child_does_not_keep_the_lock_of_a_dead_parent(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder]
) -> None:
    """A process the holder forked (an env's worker, say) must not keep the run dir locked after the holder died."""
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env, how="fork")
    holders.append(holder)
    holder.kill9()  # its forked child sleeps on, in the same session
    with RunDirLock.acquire(run) as lock:
        assert lock.mode == "flock"


def test_symlinked_lock_file_is_refused(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    (run / LOCK_NAME).symlink_to(target)
    with pytest.raises(RunDirError, match=rf"{run / LOCK_NAME} is a symbolic link"):
        RunDirLock.acquire(run)
    assert target.read_text() == "keep"


def test_a_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    with RunDirLock.acquire(run), pytest.raises(RunDirInUse, match=f"pid {os.getpid()} on host"):
        RunDirLock.acquire(run)


# ============================================================== fallback without flock
@pytest.mark.usefixtures("no_flock")
def test_fallback_lock_file_excludes_another_process_and_is_removed_at_release(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder]
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env, how="noflock")
    holders.append(holder)
    assert holder.mode == "file"
    assert json.loads((run / LOCK_NAME).read_text())["mode"] == "file"
    with pytest.raises(RunDirInUse, match=rf"in use by pid {holder.pid} on host {HOST} \(since "):
        RunDirLock.acquire(run)
    holder.release()
    assert not (run / LOCK_NAME).exists()
    with RunDirLock.acquire(run) as lock:
        assert lock.mode == "file"
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (run / LOCK_NAME).exists()


@pytest.mark.usefixtures("no_flock")
def test_fallback_takes_over_a_dead_local_holder_with_a_warning(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder], caplog: pytest.LogCaptureFixture
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env, how="noflock")
    holders.append(holder)
    holder.kill9()  # its lock file stays behind
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.rundir"), RunDirLock.acquire(run) as lock:
        assert lock.mode == "file"
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"lock file left by pid {holder.pid} on host {HOST}" in warnings[0], warnings
    assert "no longer running" in warnings[0]


@pytest.mark.usefixtures("no_flock")
def test_fallback_refuses_a_holder_on_another_host_and_says_how_to_remove_it(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    _record(run, host="node-b17", pid=4242)
    with pytest.raises(RunDirInUse) as ei:
        RunDirLock.acquire(run)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1.0e9))
    assert str(ei.value) == (
        f"run dir {run} is in use by pid 4242 on host node-b17 (since {since}): wait for it, stop it, "
        f"or use another run.dir (if that run is known to be gone, remove {run / LOCK_NAME})"
    )
    assert json.loads((run / LOCK_NAME).read_text())["host"] == "node-b17"  # untouched


@pytest.mark.usefixtures("no_flock")
def test_fallback_refuses_an_unreadable_lock_file(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    (run / LOCK_NAME).write_text("not a record")
    with pytest.raises(RunDirInUse, match=rf"its lock file cannot be read.*remove {run / LOCK_NAME}"):
        RunDirLock.acquire(run)


def test_flock_obeys_a_live_fallback_holder(tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder]) -> None:
    """A host without flock and one with it share a run dir: the lock file of the first still counts."""
    run = prepare_run_dir(tmp_path / "run")
    holder = _Holder(run, clean_env, how="noflock")
    holders.append(holder)
    with pytest.raises(RunDirInUse, match=f"pid {holder.pid} on host"):
        RunDirLock.acquire(run)
    (run / LOCK_NAME).unlink()
    _record(run, host="node-b17", pid=4242)
    with pytest.raises(RunDirInUse, match="pid 4242 on host node-b17.*if that run is known to be gone"):
        RunDirLock.acquire(run)


def test_holder_record_is_data_only() -> None:
    assert Holder.decode(b'{"host": "h", "pid": "1", "since": 1, "mode": "flock"}') is None
    assert Holder.decode(b"!!python/object:os.system") is None
    assert Holder.decode(b"[1, 2]") is None
    h = Holder.me("flock")
    assert Holder.decode(h.encode()) == h


# ============================================================== ownership and modes
def test_new_run_dir_and_subdirs_are_private(tmp_path: Path) -> None:
    run = prepare_run_dir(tmp_path / "a" / "run")
    for d in (run, run / "checkpoints", run / "traces"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to another user")
@pytest.mark.parametrize("where", [".", "checkpoints", "traces"])
def test_run_dir_of_another_user_is_refused(tmp_path: Path, where: str) -> None:
    run = tmp_path / "run"
    (run / where).mkdir(parents=True, exist_ok=True)
    os.chown(run / where, 65534, 65534)
    path = run if where == "." else run / where
    with pytest.raises(RunDirError) as ei:
        prepare_run_dir(run)
    msg = str(ei.value)
    assert f"{path} belongs to user " in msg and "(uid 65534), not to " in msg, msg
    assert "use a run.dir of your own" in msg
    if where == ".":
        assert os.listdir(run) == []  # nothing was created in it


# ============================================================== temp-file sweep
def test_sweep_keeps_the_temp_file_of_a_live_writer(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run = prepare_run_dir(tmp_path / "run")
    mgr = CheckpointManager(run)
    mgr.save({"w": np.arange(3.0)}, {"version": 1})
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], env=clean_env)
    try:
        live = run / "checkpoints" / f"ckpt-000000002.h5.tmp.{writer.pid}"
        stale = run / "checkpoints" / f"ckpt-000000003.h5.tmp.{_dead_pid()}"
        live.write_bytes(b"in progress")
        stale.write_bytes(b"left over")
        with RunDirLock.acquire(run):
            assert mgr.sweep_tmp() == [stale]
        assert live.read_bytes() == b"in progress" and not stale.exists()
    finally:
        writer.kill()
        writer.wait()


def test_sweep_without_the_lock_removes_nothing(
    tmp_path: Path, clean_env: dict[str, str], holders: list[_Holder], caplog: pytest.LogCaptureFixture
) -> None:
    run = prepare_run_dir(tmp_path / "run")
    stale = run / "checkpoints" / f"ckpt-000000003.h5.tmp.{_dead_pid()}"
    stale.write_bytes(b"another run's")
    holders.append(_Holder(run, clean_env))
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.checkpoint"):
        assert CheckpointManager(run).sweep_tmp() == []
    assert stale.exists()
    assert "does not hold the run dir lock" in caplog.text


def test_release_all_releases_every_lock(tmp_path: Path) -> None:
    a, b = prepare_run_dir(tmp_path / "a"), prepare_run_dir(tmp_path / "b")
    RunDirLock.acquire(a)
    RunDirLock.acquire(b)
    rundir.release_all()
    assert not lock_held(a) and not lock_held(b)
    assert not (a / LOCK_NAME).exists() and not (b / LOCK_NAME).exists()
