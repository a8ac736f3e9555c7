"""Traces: buffered hot path, SWMR layout, overflow tables, live reads from another process, crash safety."""

from __future__ import annotations

import logging
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcrl.storage.trace import TraceError, TraceWriter, read_trace

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_with_late_keys_and_spans(tmp_path: Path) -> None:
    tw = TraceWriter(tmp_path, rank=3, role="trainer", flush_seconds=3600)
    assert tw.path == tmp_path / "traces" / "rank-0003.h5"
    tw.add_time("forward", 0.25)
    tw.add_time("forward", 0.25)
    tw.trainer_step(1, 100, {"loss": 1.0, "entropy": 0.5})
    tw.episode(1.5, 10, 100, wall_time=1000.0, policy_version=0)
    assert tw.path.stat().st_size == 0  # nothing written before the first flush
    tw.flush()
    tw.add_time("backward", 0.125)  # a span first seen after the file exists -> overflow table
    tw.trainer_step(2, 200, {"loss": 0.5, "kl": 0.01, "name": "not a number"})  # late key + non-numeric
    tw.episode(2.5, 20, 200)
    tw.close()
    tw.close()  # idempotent

    tr = read_trace(tw.path)
    assert tr["attrs"]["rank"] == 3 and tr["attrs"]["role"] == "trainer"
    assert tr["attrs"]["host"] and tr["attrs"]["start_time"] > 0
    ep = tr["episodes"]
    assert ep["return"].tolist() == [1.5, 2.5] and ep["length"].tolist() == [10, 20]
    assert ep["frames"].tolist() == [100, 200] and ep["policy_version"].tolist() == [0, -1]
    assert ep["wall_time"][0] == 1000.0 and ep["length"].dtype == np.int64
    trainer = tr["trainer"]
    assert trainer["step"].tolist() == [1, 2] and trainer["frames"].tolist() == [100, 200]
    stats = trainer["stats"]
    assert stats["loss"].tolist() == [1.0, 0.5]
    assert stats["entropy"][0] == 0.5 and math.isnan(stats["entropy"][1])
    assert math.isnan(stats["kl"][0]) and stats["kl"][1] == 0.01
    assert "name" not in stats
    fwd = tr["timings"]["forward"]
    assert fwd["seconds"].tolist() == [0.5, 0.5] and fwd["count"].tolist() == [2, 2]  # flush(), close()
    assert np.all(np.diff(fwd["wall_time"]) >= 0)
    bwd = tr["timings"]["backward"]
    assert bwd["seconds"].tolist() == [0.125] and bwd["count"].tolist() == [1]  # rows from its first sample

    with h5py.File(tw.path, "r") as f:  # plain h5py sees the documented layout
        assert f["episodes/return"].maxshape == (None,)
        assert f["trainer/stats/loss"].shape == (2,)
        assert f["timings/forward"].shape == (2, 3)
        assert list(f["committed"][()]) == [2, 2, 2]
        assert f.attrs["@format"] == b"hpcrl-trace-1"
    assert stat.S_IMODE(tw.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tw.path.parent.stat().st_mode) == 0o700


def test_restart_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "traces" / "rank-0000.h5"
    with TraceWriter(path, 0, "local") as a:
        a.episode(1.0, 1, 1)
    with TraceWriter(path, 0, "local") as b:
        b.episode(2.0, 1, 1)
    assert b.path.name == "rank-0000.r1.h5"
    assert read_trace(a.path)["episodes"]["return"].tolist() == [1.0]
    assert read_trace(b.path)["episodes"]["return"].tolist() == [2.0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["rank-0000.h5", "rank-0000.r1.h5"]


def test_overflow_full_warns_once_per_name(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tw = TraceWriter(tmp_path / "t.h5", 0, "actor", flush_seconds=3600, overflow_slots=2)
    tw.flush()
    with caplog.at_level(logging.WARNING, logger="hpcrl.storage.trace"):
        for step in range(3):
            tw.trainer_step(step, 0, {"a": 1.0, "b": 2.0, "c": 3.0})
            for span in ("x", "y", "z"):
                tw.add_time(span, 1.0)
            tw.flush()
    tw.close()
    tr = read_trace(tw.path)
    assert sorted(tr["trainer"]["stats"]) == ["a", "b"] and sorted(tr["timings"]) == ["x", "y"]
    warned = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(warned) == 2 and "'c'" in warned[0] and "'z'" in warned[1]


def test_maybe_flush_respects_interval(tmp_path: Path) -> None:
    tw = TraceWriter(tmp_path / "t.h5", 0, "actor", flush_seconds=3600)
    for i in range(100):
        tw.episode(float(i), 1, i)
        tw.maybe_flush()
    assert tw.path.stat().st_size == 0
    tw.flush_seconds = 0.0
    tw._next_flush = 0.0  # the interval has elapsed
    tw.maybe_flush()
    assert len(read_trace(tw.path)["episodes"]["return"]) == 100
    tw.close()


def test_read_trace_rejects_bad_files(tmp_path: Path) -> None:
    empty = tmp_path / "rank-0001.h5"
    empty.touch()
    with pytest.raises(TraceError, match="not flushed yet"):
        read_trace(empty)
    text = tmp_path / "text.h5"
    text.write_text("hello" * 100)
    with pytest.raises(TraceError, match=str(text)):
        read_trace(text)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(TraceError, match="not an hpcrl trace"):
        read_trace(tmp_path / "other.h5")
    with pytest.raises(TraceError, match="cannot create"):
        TraceWriter(text / "sub" / "t.h5", 0, "actor")


_WRITER = """
import sys, time
from hpcrl.storage.trace import TraceWriter
path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tw = TraceWriter(path, 1, "actor", flush_seconds=0.05)
if mode == "live":
    for i in range(n):
        tw.episode(float(i), 1, i + 1)
        tw.add_time("env_step", 0.001)
        tw.maybe_flush()
        time.sleep(0.01)
    tw.close()
else:  # crash: flush n episodes, buffer more, then die without closing
    for i in range(n):
        tw.episode(float(i), 1, i + 1)
    tw.flush()
    for i in range(5):
        tw.episode(-1.0, 1, 0)
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _writer(tmp_path: Path, env: dict[str, str], n: int, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(_WRITER))
    path = tmp_path / "traces" / "rank-0001.h5"
    return subprocess.Popen([sys.executable, str(script), str(path), str(n), mode], env=env, cwd=REPO), path


def test_live_swmr_read_sees_growing_episodes(tmp_path: Path, clean_env: dict[str, str]) -> None:
    n = 250
    proc, path = _writer(tmp_path, clean_env, n, "live")
    counts: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None:
            assert time.monotonic() < deadline, "writer did not finish"
            try:
                tr = read_trace(path)
            except (TraceError, FileNotFoundError):
                time.sleep(0.02)  # not created / first flush not done yet
                continue
            ep = tr["episodes"]
            assert len(ep["return"]) == len(ep["frames"]) == len(ep["wall_time"])  # clipped to committed rows
            assert ep["frames"].tolist() == list(range(1, len(ep["frames"]) + 1))
            counts.append(len(ep["return"]))
            time.sleep(0.03)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    assert proc.returncode == 0
    assert counts == sorted(counts), "episode counts must never decrease"
    assert len(set(counts)) >= 3, f"expected to watch the trace grow while it was written, saw {counts}"
    final = read_trace(path)
    assert len(final["episodes"]["return"]) == n
    assert final["timings"]["env_step"]["count"][-1] == n


def test_crash_keeps_flushed_rows(tmp_path: Path, clean_env: dict[str, str]) -> None:
    proc, path = _writer(tmp_path, clean_env, 40, "crash")
    proc.wait(60)
    assert proc.returncode == -signal.SIGKILL
    tr = read_trace(path)
    assert tr["episodes"]["return"].tolist() == [float(i) for i in range(40)]
    assert not [p for p in path.parent.iterdir() if ".tmp." in p.name]
    assert os.path.getsize(path) > 0
