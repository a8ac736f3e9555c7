"""Files hpcrl writes are private (0600 files, 0700 dirs) and never written through a planted symlink or FIFO."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from hpcrl.report import write_report
from hpcrl.runtime.session import write_text_atomic
from hpcrl.storage.checkpoint import prepare_run_dir
from hpcrl.storage.files import append_private, make_private_dir, write_file_atomic
from hpcrl.storage.trace import TraceWriter


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the directory being written, which a planted link points at."""
    v = tmp_path / "elsewhere" / "victim.txt"
    v.parent.mkdir()
    v.write_text("precious\n")
    return v


@pytest.fixture(autouse=True)
def _open_umask() -> object:
    """The umask many clusters default to: files 0644, dirs 0755 unless hpcrl says otherwise."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_replaces_a_planted_link_and_never_follows_one(tmp_path: Path, victim: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "out.json").symlink_to(victim)  # at the destination: os.replace swaps the link itself
    (d / f"out.json.tmp.{os.getpid()}").symlink_to(victim)  # at the temporary name: removed, never followed
    write_file_atomic(d / "out.json", b"{}")
    assert victim.read_text() == "precious\n"
    assert (d / "out.json").read_bytes() == b"{}" and not (d / "out.json").is_symlink()
    assert mode(d / "out.json") == 0o600
    assert sorted(p.name for p in d.iterdir()) == ["out.json"]


def test_write_text_atomic_does_not_follow_a_link_at_its_temporary_name(tmp_path: Path, victim: Path) -> None:
    (tmp_path / f"config.yaml.tmp.{os.getpid()}").symlink_to(victim)
    write_text_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert victim.read_text() == "precious\n"
    assert (tmp_path / "config.yaml").read_text() == "a: 1\n" and mode(tmp_path / "config.yaml") == 0o600


def test_append_private_refuses_links_and_fifos(tmp_path: Path, victim: Path) -> None:
    append_private(tmp_path / "errors.log", "one\n")
    assert mode(tmp_path / "errors.log") == 0o600
    (tmp_path / "link.log").symlink_to(victim)
    with pytest.raises(OSError) as info:
        append_private(tmp_path / "link.log", "two\n")
    assert info.value.errno == errno.ELOOP and victim.read_text() == "precious\n"
    os.mkfifo(tmp_path / "fifo.log")
    with pytest.raises(OSError):  # ENXIO (no reader) instead of blocking forever
        append_private(tmp_path / "fifo.log", "three\n")


def test_make_private_dir_creates_every_missing_level_0700(tmp_path: Path) -> None:
    make_private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3
    (tmp_path / "x").write_text("")
    with pytest.raises(NotADirectoryError):
        make_private_dir(tmp_path / "x")


def test_trace_temporary_file_is_not_written_through_a_planted_link(tmp_path: Path, victim: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    (run / "traces" / f"rank-0000.h5.tmp.{os.getpid()}").symlink_to(victim)
    with TraceWriter(run, 0, "trainer", flush_seconds=3600) as tw:
        tw.trainer_step(1, 100, {"loss": 1.0}, wall_time=1.0)
    assert victim.read_text() == "precious\n"
    assert mode(run / "traces" / "rank-0000.h5") == 0o600


def test_report_is_private(tmp_path: Path, victim: Path) -> None:
    run = prepare_run_dir(tmp_path / "run")
    with TraceWriter(run, 1, "actor", flush_seconds=3600) as tw:
        for i in range(5):
            tw.episode(float(i), 10, (i + 1) * 10, wall_time=100.0 + i, policy_version=0)
    files = write_report(run)
    assert mode(run / "report") == 0o700
    assert files and all(mode(p) == 0o600 for p in files), {p.name: oct(mode(p)) for p in files}
    # an existing default report dir of this user is tightened; a link at a file name is replaced, not followed
    os.chmod(run / "report", 0o755)
    (run / "report" / "summary.md").unlink()
    (run / "report" / "summary.md").symlink_to(victim)
    write_report(run)
    assert mode(run / "report") == 0o700 and victim.read_text() == "precious\n"
    assert mode(run / "report" / "summary.md") == 0o600
    # --out: created 0700 with its missing parents, files 0600
    out = tmp_path / "shared" / "reports" / "r1"
    assert all(mode(p) == 0o600 for p in write_report(run, out))
    assert mode(out) == 0o700 and mode(out.parent) == 0o700
