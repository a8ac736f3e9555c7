"""``hpcrl.report`` counts each frame once when a run is resumed with another layout (MPI, then one process)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import explain, run_hpcrl

from hpcrl.report import build_series
from hpcrl.storage.checkpoint import CheckpointManager, read_checkpoint_attrs


def _final_frames(run_dir: Path) -> int:
    return int(read_checkpoint_attrs(CheckpointManager(run_dir).list()[0])["frames"])


def test_report_frames_after_an_mpi_run_resumed_in_one_process(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run_dir = tmp_path / "run"
    fast = ["run.trace_flush_seconds=0.5", "experiment.total_frames=4000"]
    proc, _, _ = run_hpcrl(clean_env, run_dir, *fast, ranks=3)
    assert proc.returncode == 0, explain(proc)
    first = _final_frames(run_dir)
    proc, summary, _ = run_hpcrl(clean_env, run_dir, *fast, f"experiment.total_frames={first + 3000}")
    assert proc.returncode == 0 and summary is not None, explain(proc)
    assert "resumed from" in proc.stderr
    final = _final_frames(run_dir)
    assert final == summary["frames"] >= first + 3000
    # every source of the report's count is a lower bound of the frames stepped
    series = build_series(run_dir)
    assert series["episodes"]["frames"][-1] <= final
    assert series["trainer"]["frames"].max() <= final
    out = tmp_path / "report"
    rep = subprocess.run(
        [sys.executable, "-m", "hpcrl.report", str(run_dir), "--out", str(out)],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rep.returncode == 0, rep.stderr
    row = re.search(r"^\| frames \| ([0-9,]+) \|$", rep.stdout, re.M)
    assert row is not None, rep.stdout
    assert int(row.group(1).replace(",", "")) == final, rep.stdout
