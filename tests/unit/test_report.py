"""``python -m hpcrl.report``: summary numbers, plots and the CLI on a synthetic run directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcrl.report import ReportError, build_summary, main, write_report
from hpcrl.storage import trace as trace_mod
from hpcrl.storage.checkpoint import prepare_run_dir
from hpcrl.storage.trace import TraceWriter

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0


@pytest.fixture(autouse=True)
def _fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Timing rows are stamped with time.time() at flush: pin it to the end of the synthetic run."""
    monkeypatch.setattr(trace_mod.time, "time", lambda: T0 + 60.5)


def _synthetic_run(root: Path) -> Path:
    """Trainer rank 0, actor ranks 1-2 (rank 2 restarted once, counting its frames from zero again)."""
    run = prepare_run_dir(root / "run")
    with TraceWriter(run, 0, "trainer", flush_seconds=3600) as tw:
        tw.start_time = T0
        for step in range(1, 51):
            stats = {"policy_loss": 1.0 / step, "value_loss": 2.0 / step, "entropy": 1.0, "kl": 0.01 * step}
            stats["dropped_fragments"] = float(step // 10)
            tw.trainer_step(step, step * 200, stats, wall_time=T0 + step)
        tw.add_time("trainer_step", 30.0)
        tw.add_time("wait_batch", 10.0)
    # actors: 60 episodes each over 60 s, returns rising 0..59 (rank 1) and 100 + 0..59 (rank 2, two segments)
    with TraceWriter(run, 1, "actor", flush_seconds=3600) as tw:
        tw.start_time = T0
        for i in range(60):
            tw.episode(float(i), 10, (i + 1) * 100, wall_time=T0 + i + 0.5, policy_version=i // 2)
        tw.add_time("env_step", 40.0)
        tw.add_time("inference", 20.0)
    for seg, idx in enumerate((range(30), range(30, 60))):
        with TraceWriter(run, 2, "actor", flush_seconds=3600) as tw:
            tw.start_time = T0 + 30 * seg
            for k, i in enumerate(idx):
                tw.episode(100.0 + i, 10, (k + 1) * 100, wall_time=T0 + i + 0.7, policy_version=i // 2)
            tw.add_time("env_step", 20.0)
    return run


def test_build_summary_numbers(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)
    assert sorted(p.name for p in (run / "traces").iterdir()) == [
        "rank-0000.h5",
        "rank-0001.h5",
        "rank-0002.h5",
        "rank-0002.r1.h5",
    ]
    s = build_summary(run)
    assert s["episodes"] == 120
    assert s["frames"] == 60 * 100 * 2  # the restarted segment is chained, not double counted
    assert s["trainer_steps"] == 50
    assert s["best_return"] == 159.0
    rets = np.array([r for i in range(60) for r in (float(i), 100.0 + i)])  # merged in wall-time order
    assert s["final_mean_return"] == pytest.approx(rets[-100:].mean())
    assert s["wall_time_seconds"] == pytest.approx(60.0, abs=1.0)
    assert s["fps"] == pytest.approx(s["frames"] / s["wall_time_seconds"])
    assert s["fragments"] == {"dropped_fragments": 5.0}
    assert s["last_stats"]["kl"] == pytest.approx(0.5)
    assert s["ranks"] == {"trainer": 1, "actor": 2}
    assert s["time_split"]["actor"] == {"env_step": 80.0, "inference": 20.0}
    assert s["time_split"]["trainer"] == {"trainer_step": 30.0, "wait_batch": 10.0}
    assert s["policy_version"] == 29


def test_write_report_files(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)
    files = write_report(run, tmp_path / "out")
    names = sorted(p.name for p in files)
    assert names == [
        "fps.png",
        "return_vs_frames.png",
        "return_vs_time.png",
        "summary.md",
        "time_breakdown.png",
        "trainer_stats.png",
    ]
    for p in files:
        assert p.parent == tmp_path / "out" and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "| frames | 12,000 |" in md and "| trainer steps | 50 |" in md
    assert "| actor | env_step | 80.0 | 80.0% |" in md
    assert "dropped_fragments (last)" in md


def test_report_skips_unreadable_and_empty_traces(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path)
    (run / "traces" / "rank-0009.h5").touch()  # a rank that never flushed
    s = build_summary(run)
    assert s["traces"] == 4 and len(s["skipped_traces"]) == 1 and "rank-0009.h5" in s["skipped_traces"][0]
    with pytest.raises(ReportError, match="has no traces"):
        build_summary(prepare_run_dir(tmp_path / "empty"))


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _synthetic_run(tmp_path)
    assert main([str(run), "--tensorboard"]) == 0
    out = capsys.readouterr().out
    assert "# hpcrl run report" in out and (run / "report" / "summary.md").exists()
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard is not installed" in out
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"hpcrl.report: error: no such run directory: {tmp_path / 'nope'}\n"
    assert main([str(run / "traces" / "rank-0000.h5")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main([str(prepare_run_dir(tmp_path / "empty"))]) == 2  # an existing run dir without traces
    assert "has no traces (looked for" in capsys.readouterr().err


def test_cli_module_entry_point(tmp_path: Path, clean_env: dict[str, str]) -> None:
    run = _synthetic_run(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "hpcrl.report", str(run), "--out", str(tmp_path / "o")],
        cwd=REPO,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "| episodes | 120 |" in r.stdout
    assert (tmp_path / "o" / "return_vs_frames.png").exists()
