"""Checkpoint faults end to end through ``hpcrl.run``: kill -9 during a save, corrupt and crafted files,
an unwritable or full checkpoint directory.

Cases 5, 6, 13 and 14 of docs/reliability.md (the storage-level tests are in tests/unit/test_checkpoint.py).
All runs here are one process (``python -m hpcrl.run``): the checkpoint code is the same on the MPI leader.
"""

from __future__ import annotations

import os
import pickle
import re
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from faultkit import (
    checkpoints,
    corrupt_flip,
    fault_env,
    log_lines,
    run_job,
    scrubbed_env,
    start_job,
    wait_until,
)

FLIP_DATASET = "/policy/model/actor.mlp.2.weight"


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run with three kept checkpoints (versions 50, 60, 64); tests work on copies."""
    run_dir = tmp_path_factory.mktemp("base") / "run"
    res = run_job(fault_env(scrubbed_env()), run_dir, "run.checkpoint_every_steps=10")
    assert res.rc == 0, res.explain()
    assert [p.name for p in checkpoints(run_dir)] == ["ckpt-000000050.h5", "ckpt-000000060.h5", "ckpt-000000064.h5"]
    return run_dir


@pytest.fixture
def run_copy(base_run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(base_run, dest)
    return dest


def _resume(env: dict[str, str], run_dir: Path, *extra: str) -> object:
    return run_job(env, run_dir, "experiment.total_frames=2600", *extra)


# ---------------------------------------------------------------------- case 5: SIGKILL during a save
def test_sigkill_during_a_save_keeps_the_previous_checkpoint(tmp_path: Path, clean_env: dict[str, str]) -> None:
    env = fault_env(clean_env)
    run_dir = tmp_path / "run"
    ckdir = run_dir / "checkpoints"
    job = start_job(
        env,
        run_dir,
        "experiment.total_frames=100000000",
        "run.checkpoint_every_steps=4",
        "trainer.args.ballast_mib=48",  # every checkpoint carries 48 MiB: a save takes long enough to hit
    )
    try:
        wait_until(lambda: checkpoints(run_dir) or job.proc.poll() is not None, 60, "the first checkpoint")
        assert job.proc.poll() is None, job.output()[-3000:]

        def tmp_file() -> Path | None:
            found = [p for p in ckdir.iterdir() if ".h5.tmp." in p.name] if ckdir.is_dir() else []
            return found[0] if found else None

        tmp = wait_until(tmp_file, 60, "a save in progress (a .tmp file)", poll=0.002)
        previous = checkpoints(run_dir)[-1]
        os.kill(job.proc.pid, signal.SIGKILL)
        res = job.finish(timeout=30)
    finally:
        job.kill()
    assert res.rc == -signal.SIGKILL
    # the temp file is the trainer's own (an inline save) or its checkpoint writer process's, which must
    # have died with it (PR_SET_PDEATHSIG): nothing may go on writing into the run directory
    writer = int(tmp.name.rsplit(".", 1)[1])
    if writer != job.proc.pid:
        wait_until(lambda: not Path(f"/proc/{writer}").exists(), 10, f"writer process {writer} to die with the trainer")
    if not tmp.exists():  # the save finished between our poll and the kill: the new file is complete then
        pytest.skip("the save completed before SIGKILL landed (timing); nothing to test this time")
    assert checkpoints(run_dir)[-1] == previous  # the interrupted file never got its final name
    from hpcrl.storage.checkpoint import read_checkpoint_attrs

    frames = int(read_checkpoint_attrs(previous)["frames"])
    again = run_job(env, run_dir, f"experiment.total_frames={frames + 500}")
    assert again.rc == 0, again.explain()
    assert f"removed stale temporary checkpoint {tmp}" in again.text, again.explain()
    assert f"resumed from {previous}" in again.text, again.explain()
    assert not tmp.exists()
    print(f"SIGKILL while writing {tmp.name}: restart removed it and resumed from {previous.name}")


# ---------------------------------------------------------------------- case 6: corrupt checkpoints
@pytest.mark.parametrize("how", ["truncate", "bitflip"])
def test_corrupt_newest_checkpoint_is_named_and_the_previous_one_is_used(
    run_copy: Path, clean_env: dict[str, str], how: str
) -> None:
    files = checkpoints(run_copy)
    newest, previous = files[-1], files[-2]
    if how == "truncate":
        os.truncate(newest, newest.stat().st_size // 2)
    else:
        corrupt_flip(newest, FLIP_DATASET)
    res = _resume(fault_env(clean_env), run_copy)
    assert res.rc == 0, res.explain()
    warned = log_lines(res.text, f"checkpoint {newest} is corrupt, falling back to the previous one")
    assert warned, res.explain()
    if how == "bitflip":
        assert FLIP_DATASET in warned[0] and "fletcher32" in warned[0], warned[0]
    assert f"resumed from {previous}: version 60" in res.text, res.explain()
    print(f"{how}: {warned[0].split('WARNING ')[-1][:220]}")


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(run_copy: Path, clean_env: dict[str, str]) -> None:
    files = checkpoints(run_copy)
    for p in files:
        os.truncate(p, 100)
    before = sorted(os.listdir(run_copy / "checkpoints"))
    res = _resume(fault_env(clean_env), run_copy)
    assert res.rc != 0, res.explain()
    err = log_lines(res.text, "none valid")  # one line: "hpcrl: 3 checkpoints in ... none valid: ..."
    assert err and re.search(r"3 checkpoints in .*/checkpoints, none valid", err[-1]), res.explain()
    assert all(p.name in err[-1] for p in files)
    assert "resumed from" not in res.text and "trainer steps" not in res.text
    assert sorted(os.listdir(run_copy / "checkpoints")) == before  # nothing new was written
    print(f"all corrupt: rc={res.rc}: {err[-1][:200]}")


def test_all_checkpoints_corrupt_aborts_an_mpi_job(run_copy: Path, clean_env: dict[str, str]) -> None:
    for p in checkpoints(run_copy):
        os.truncate(p, 100)
    res = run_job(fault_env(clean_env), run_copy, "experiment.total_frames=2600", ranks=2, expect_fatal=True)
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    assert fatal and fatal[0].startswith("[rank 0 trainer ") and "none valid" in fatal[0], res.explain()


# ---------------------------------------------------------------------- case 14: crafted checkpoints
class _Boom:
    """Unpickling this runs ``touch <marker>``: the marker proves whether anything was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def _add_bytes(f: h5py.File, name: str, payload: bytes, tag: str) -> None:
    data = np.frombuffer(payload, np.uint8)
    ds = f.create_dataset(name, data=data, chunks=(len(data),), fletcher32=True)
    ds.attrs["@type"] = np.bytes_(tag)
    ds.attrs["@shape"] = np.asarray(data.shape, np.int64)
    ds.attrs["@dtype"] = np.bytes_("uint8")


def _replace(f: h5py.File, name: str, data: np.ndarray, shape_attr: tuple[int, ...]) -> None:
    attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, data=data, chunks=data.shape, fletcher32=True)
    for k, v in attrs.items():
        ds.attrs[k] = v
    ds.attrs["@shape"] = np.asarray(shape_attr, np.int64)


@pytest.mark.parametrize("craft", ["pickle_tag", "wrong_dtype", "recorded_shape_lies"])
def test_crafted_checkpoint_is_rejected_and_the_previous_one_used(
    run_copy: Path, clean_env: dict[str, str], tmp_path: Path, craft: str
) -> None:
    marker = tmp_path / "executed"
    newest, previous = checkpoints(run_copy)[-1], checkpoints(run_copy)[-2]
    with h5py.File(newest, "r+") as f:
        if craft == "pickle_tag":
            _add_bytes(f, "/system/evil", pickle.dumps(_Boom(marker)), "pickle")
            expect = "/system/evil: unknown @type tag 'pickle'"
        elif craft == "wrong_dtype":
            _replace(f, FLIP_DATASET, np.zeros((16, 16), np.float64), (16, 16))
            expect = f"{FLIP_DATASET}: dtype float64 does not match the recorded float32"
        else:
            _replace(f, FLIP_DATASET, np.zeros((16, 16), np.float32), (3, 3))
            expect = f"{FLIP_DATASET}: shape (16, 16) does not match the recorded @shape (3, 3)"
    res = _resume(fault_env(clean_env), run_copy)
    assert res.rc == 0, res.explain()
    warned = log_lines(res.text, f"checkpoint {newest} is corrupt")
    assert warned and expect in warned[0], res.explain()
    assert f"resumed from {previous}" in res.text
    assert not marker.exists()


def test_pickle_bytes_in_a_checkpoint_are_never_unpickled(
    run_copy: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    marker = tmp_path / "executed"
    newest = checkpoints(run_copy)[-1]
    with h5py.File(newest, "r+") as f:  # legal opaque bytes: loaded as bytes and ignored
        _add_bytes(f, "/system/blob", pickle.dumps(_Boom(marker)), "bytes")
    res = _resume(fault_env(clean_env), run_copy)
    assert res.rc == 0, res.explain()
    assert f"resumed from {newest}" in res.text, res.explain()
    assert not marker.exists()


def test_checkpoint_that_does_not_fit_the_model_is_named(
    run_copy: Path, clean_env: dict[str, str], tmp_path: Path
) -> None:
    newest, previous = checkpoints(run_copy)[-1], checkpoints(run_copy)[-2]
    with h5py.File(newest, "r+") as f:
        _replace(f, FLIP_DATASET, np.zeros((3, 3), np.float32), (3, 3))
    res = _resume(fault_env(clean_env), run_copy)
    fell_back = res.rc == 0 and f"resumed from {previous}" in res.text and str(newest) in res.text
    named = res.rc != 0 and any(str(newest) in line and "actor.mlp.2.weight" in line for line in res.err.splitlines())
    assert fell_back or named, res.explain()


# ---------------------------------------------------------------------- case 13: unwritable / full
def test_checkpoint_dir_that_is_a_file_fails_before_training(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (run_dir / "checkpoints").write_text("not a directory")
    res = run_job(fault_env(clean_env), run_dir)
    assert res.rc != 0, res.explain()
    err = log_lines(res.text, f"run dir {run_dir} is not writable")
    assert err and "ENOTDIR: exists and is not a directory" in err[-1], res.explain()
    assert not (run_dir / "traces" / "rank-0000.h5").exists()


@pytest.fixture
def small_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, object, str]]:
    """A run dir whose checkpoints cannot exceed ~6 MiB: a 6 MiB tmpfs, or RLIMIT_FSIZE where mount is refused.

    Yields ``(run_dir, preexec_fn, errno name)``.
    """
    run_dir = tmp_path / "run"
    ckdir = run_dir / "checkpoints"
    ckdir.mkdir(parents=True)
    os.chmod(run_dir, 0o700)
    limit = 6 << 20 if request.param == "fsize" else resource.RLIM_INFINITY

    def limits() -> None:  # no core file from a crashing child, whatever the CI's ulimit -c
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    if request.param == "tmpfs":
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=6m,mode=0700", "tmpfs", str(ckdir)], capture_output=True
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        try:
            yield run_dir, limits, "ENOSPC"
        finally:
            subprocess.run(["umount", "-l", str(ckdir)], check=False)
    else:
        yield run_dir, limits, "EFBIG"


BALLAST = [
    "experiment.total_frames=520",  # ~17 trainer steps of 32 frames: saves at 5, 10, 15 and a final one
    "run.checkpoint_every_steps=5",
    "trainer.args.ballast_mib=8",
    "trainer.args.ballast_from=10",
]


@pytest.mark.parametrize("small_disk", ["tmpfs", "fsize"], indirect=True)
@pytest.mark.parametrize("mode", ["stop", "continue"])
def test_full_disk_at_save_keeps_the_previous_checkpoint(
    small_disk: tuple[Path, object, str], clean_env: dict[str, str], mode: str
) -> None:
    run_dir, preexec, errname = small_disk
    res = run_job(
        fault_env(clean_env),
        run_dir,
        *BALLAST,
        "trainer.args.ballast_until=11",  # only the save at step 10 is too big; later ones fit again
        f"run.on_save_error={mode}",
        preexec_fn=preexec,  # type: ignore[arg-type]
    )
    errors = log_lines(res.text, "checkpoint save failed (periodic)")
    assert errors and "ckpt-000000010.h5" in errors[0] and errname in errors[0], res.explain()
    assert [p for p in (run_dir / "checkpoints").iterdir() if ".tmp." in p.name] == []
    names = [p.name for p in checkpoints(run_dir)]
    assert "ckpt-000000005.h5" in names and "ckpt-000000010.h5" not in names
    if mode == "stop":
        assert res.rc == 2, res.explain()  # hpcrl.run's one-line storage error, not a crash
        assert names == ["ckpt-000000005.h5"]
    else:
        assert res.rc == 0, res.explain()
        assert len(errors) == 1 and "ckpt-000000015.h5" in names  # saving works again once there is room


@pytest.mark.parametrize("small_disk", ["tmpfs", "fsize"], indirect=True)
def test_full_disk_at_save_fails_loudly_keeps_the_previous_and_removes_the_temp_file(
    small_disk: tuple[Path, object, str], clean_env: dict[str, str]
) -> None:
    """Loud, previous kept, no temp file, no bad resume."""
    run_dir, preexec, _ = small_disk
    res = run_job(fault_env(clean_env), run_dir, *BALLAST, "run.on_save_error=stop", preexec_fn=preexec)  # type: ignore[arg-type]
    assert res.rc != 0
    print(f"first run {res.seconds:.1f}s rc={res.rc}")
    errors = log_lines(
        res.text, "ERROR hpcrl.learning.checkpointing: checkpoint save failed (periodic): cannot save checkpoint"
    )
    assert errors and f"{run_dir}/checkpoints/ckpt-000000010.h5" in errors[0], res.explain()
    assert [p for p in (run_dir / "checkpoints").iterdir() if ".tmp." in p.name] == []
    assert [p.name for p in checkpoints(run_dir)] == ["ckpt-000000005.h5"]
    t0 = time.monotonic()
    again = run_job(fault_env(clean_env), run_dir, "experiment.total_frames=600")  # no limit, no ballast
    assert again.rc == 0, again.explain()
    assert f"resumed from {run_dir}/checkpoints/ckpt-000000005.h5" in again.text
    print(f"full disk: save failed loudly, ckpt 5 kept, no temp file; restart resumed ({time.monotonic() - t0:.1f}s)")
