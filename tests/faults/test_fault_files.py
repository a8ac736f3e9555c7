"""Files a real run writes on a shared cluster: ``errors.log`` and ``--summary-json`` are private (0600) and
never written through a symlink planted where they go.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from faultkit import REPO, fault_env, hpcrl_cmd, log_lines, run_job

#: a trainer that raises at step 3 on rank 0 of a 3-rank job (as the exception cases of test_fault_ranks.py)
RAISE = ["layout.inference=1", "experiment.total_frames=100000000", "trainer.args.raise_at=3", "trainer.args.ranks=[0]"]


def _umask_022() -> None:
    os.umask(0o022)  # the common cluster default: without hpcrl's care files would be world-readable


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim.txt"
    v.write_text("precious\n")
    return v


@pytest.mark.parametrize("planted", [False, True], ids=["fresh", "planted-symlink"])
def test_errors_log_is_private_and_never_follows_a_link(
    tmp_path: Path, clean_env: dict[str, str], victim: Path, planted: bool
) -> None:
    run = tmp_path / "run"
    log = run / "errors.log"
    if planted:
        run.mkdir(mode=0o700)
        log.symlink_to(victim)
    res = run_job(fault_env(clean_env), run, *RAISE, ranks=3, timeout=120, preexec_fn=_umask_022, expect_fatal=True)
    assert res.rc != 0, res.explain()
    fatal = log_lines(res.text, "FATAL:")
    assert len(fatal) == 1 and "injected trainer failure" in fatal[0], res.explain()
    if planted:  # the abort still happens; the link and its target are left alone, and stderr says why
        assert victim.read_text() == "precious\n" and log.is_symlink()
        assert f"could not write {log} (it is a symbolic link, not followed); aborting anyway" in res.err, res.explain()
    else:
        assert stat.S_IMODE(os.lstat(log).st_mode) == 0o600
        assert "FATAL:" in log.read_text() and "injected trainer failure" in log.read_text()


def test_summary_json_is_private_and_replaces_a_planted_link(
    tmp_path: Path, clean_env: dict[str, str], victim: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    summary = shared / "summary.json"
    summary.symlink_to(victim)
    cmd = [*hpcrl_cmd(tmp_path / "run", "experiment.total_frames=200"), "--summary-json", str(summary)]
    proc = subprocess.run(
        cmd, env=fault_env(clean_env), cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=_umask_022
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert victim.read_text() == "precious\n"
    assert not summary.is_symlink() and stat.S_IMODE(os.lstat(summary).st_mode) == 0o600
    assert json.loads(summary.read_text())["frames"] >= 200
    assert sorted(p.name for p in shared.iterdir()) == ["summary.json"]
