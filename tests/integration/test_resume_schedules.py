"""Schedules and counters survive any history of interruptions and resumes across rank layouts.

Every segment of a history is a real run (``python -m hpcrl.run`` or its own ``mpiexec`` job) in the same
run directory, stopped by ``run.stop_at_frames`` (which, unlike a smaller ``experiment.total_frames``,
leaves the run's length and so its schedules unchanged). The checks read every trainer rank's trace and
the checkpoints each segment leaves. The env is Pendulum with episodes longer than the run, so a fragment
always holds ``fragment_length`` env frames and one-process step boundaries fall at known frame counts.

Invariants checked at every trainer step of every segment:

* ``lr``, ``entropy_coef`` and ``clip`` equal the linear schedule at ``frames / total_frames`` (the same
  function, :func:`hpcrl.trainers.schedule.scheduled`, that an uninterrupted run uses) and ``lr > 0`` while
  the frame budget is not spent;
* every trainer rank of a segment records the same (step, frames, lr, entropy_coef, clip, version) rows;
* steps count up by one, versions by one per step, and frames never decrease, within and across segments:
  a resumed segment continues from the checkpoint the previous one left (steps, version, frames).

For one-process histories split right after trainer steps, the whole per-step sequence equals the
uninterrupted run's: the same steps and versions, at the same frames except for the env steps each restart
discards (the few frames of fragments still being filled, which env simulators cannot checkpoint; exactly
predicted here), and each step's lr, entropy_coef and clip are the schedule's at its frames.

Hypothesis budgets are small and reproducible (``derandomize``, no database, no shrinking); the ``_long``
variants with more examples run only with ``HPCRL_SLOW_TESTS=1``.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers import explain, run_hpcrl
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from hpcrl.api.trainer import TrainingProgress
from hpcrl.storage.checkpoint import CheckpointManager, read_checkpoint_attrs
from hpcrl.storage.trace import read_trace
from hpcrl.trainers.schedule import scheduled

TOTAL = 4000
ENVS, T = 2, 32
LOCAL_FRAMES_PER_STEP = ENVS * T  # no episode ends within the run: every fragment is T env steps per env
BASE = {"lr": 0.001, "entropy_coef": 0.01, "clip": 0.2}
OVERRIDES = [
    f"experiment.total_frames={TOTAL}",
    "environment.args={id: Pendulum-v1, max_episode_steps: 1000000}",
    f"actor.envs_per_actor={ENVS}",
    f"actor.fragment_length={T}",
    "trainer.args.epochs=1",
    "trainer.args.minibatches=2",
    f"trainer.args.lr={BASE['lr']}",
    f"trainer.args.entropy_coef={BASE['entropy_coef']}",
    f"trainer.args.clip={BASE['clip']}",
    "trainer.args.lr_schedule=linear",
    "trainer.args.entropy_schedule=linear",
    "trainer.args.clip_schedule=linear",
    "run.progress=off",
    "run.checkpoint_writer=inline",
]
CONFIG = "examples/pendulum/ppo.yaml"
KEYS = ("lr", "entropy_coef", "clip", "policy_version")

#: (mpiexec ranks, trainer ranks, inference ranks); 0 ranks = one process without MPI
LAYOUTS = [(0, 1, 0), (2, 1, 0), (3, 1, 0), (3, 1, 1), (4, 1, 0), (4, 1, 1), (4, 2, 0), (5, 1, 0), (5, 1, 1)]
LAYOUTS += [(5, 2, 0), (5, 2, 1)]


def expected(key: str, frames: int) -> float:
    """What an uninterrupted run uses at ``frames``: the linear schedule of ``frames / TOTAL``."""
    return scheduled("linear", BASE[key], TrainingProgress(frames, TOTAL).fraction)


def run_segment(env: dict[str, str], run_dir: Path, layout: tuple[int, int, int], stop_at: int) -> dict[str, Any]:
    """One real run of the history; returns its summary and the trainer rows of the trace files it wrote."""
    ranks, trainers, inference = layout
    before = set((run_dir / "traces").glob("*.h5")) if (run_dir / "traces").is_dir() else set()
    extra = [f"run.stop_at_frames={stop_at}"]
    if ranks:
        extra += [f"layout.trainers={trainers}", f"layout.inference={inference}"]
    proc, summary, _ = run_hpcrl(env, run_dir, *OVERRIDES, *extra, ranks=ranks, config=CONFIG, timeout=240)
    assert proc.returncode == 0 and summary is not None, explain(proc)
    rows: dict[int, dict[str, list[float]]] = {}  # trainer rank -> columns
    for path in sorted(set((run_dir / "traces").glob("*.h5")) - before):
        if path.stat().st_size == 0:
            continue
        tr = read_trace(path)
        if tr["attrs"]["role"] not in ("trainer", "local"):
            continue
        t = tr["trainer"]
        cols = {"step": t["step"].tolist(), "frames": t["frames"].tolist()}
        cols.update({k: t["stats"][k].tolist() for k in KEYS if k in t["stats"]} if len(t["step"]) else {})
        rows[int(tr["attrs"]["rank"])] = cols
    newest = CheckpointManager(run_dir).list()[0]
    return {"summary": summary, "rows": rows, "ckpt": read_checkpoint_attrs(newest), "stderr": proc.stderr}


def check_segment(seg: dict[str, Any], before: dict[str, int], layout: tuple[int, int, int]) -> dict[str, int]:
    """Assert the invariants of one segment, given the counters it resumed from; returns the counters it leaves."""
    rows = seg["rows"]
    trainers = 1 if layout[0] == 0 else layout[1]
    assert sorted(rows) == list(range(trainers)), f"trainer traces of ranks {sorted(rows)}, layout {layout}"
    leader = rows[0]
    for r in range(1, trainers):  # the schedule's inputs (and so its outputs) are the same on every trainer rank
        assert rows[r] == leader, f"trainer rank {r} stepped with other progress than the leader: {rows[r]} {leader}"
    steps, frames = leader["step"], leader["frames"]
    n = len(steps)
    assert steps == list(range(before["steps"] + 1, before["steps"] + n + 1)), (before, steps)
    if n:
        assert leader["policy_version"] == [float(before["version"] + i + 1) for i in range(n)], leader
        assert frames[0] >= before["frames"], f"resumed at {before['frames']} frames but stepped at {frames[0]}"
        assert all(a <= b for a, b in zip(frames, frames[1:])), frames
    for i, f in enumerate(frames):
        for key in ("lr", "entropy_coef", "clip"):
            assert leader[key][i] == expected(key, int(f)), (key, i, f, leader[key][i], expected(key, int(f)))
        if f < TOTAL:
            assert leader["lr"][i] > 0.0, f"lr 0 at {f} of {TOTAL} frames"
    ckpt = seg["ckpt"]  # what the next segment resumes from
    assert ckpt["trainer_steps"] == before["steps"] + n and ckpt["version"] == before["version"] + n, ckpt
    assert ckpt["frames"] >= (frames[-1] if n else before["frames"]), ckpt
    summary = seg["summary"]
    assert summary["trainer_steps"] == ckpt["trainer_steps"] and summary["policy_version"] == ckpt["version"]
    return {"steps": int(ckpt["trainer_steps"]), "version": int(ckpt["version"]), "frames": int(ckpt["frames"])}


def run_history(env: dict[str, str], run_dir: Path, history: list[tuple[tuple[int, int, int], int]]) -> list[dict]:
    """Run the segments (the last one to the end of the run), checking each; returns the segments."""
    counters = {"steps": 0, "version": 0, "frames": 0}
    segments = []
    for i, (layout, stop_at) in enumerate(history):
        seg = run_segment(env, run_dir, layout, stop_at if i < len(history) - 1 else 0)
        counters = check_segment(seg, counters, layout)
        segments.append(seg)
    assert counters["frames"] >= TOTAL
    return segments


def _tmp(base: Path) -> Path:
    """A fresh directory for one example of a property (they share the test's ``tmp_path``)."""
    return Path(tempfile.mkdtemp(prefix="history-", dir=base))


# ---------------------------------------------------------------------------------------------- regression


def test_one_process_run_resumed_with_five_ranks_and_two_trainers_keeps_its_lr_schedule(tmp_path, clean_env):
    run_dir = tmp_path / "run"
    first = run_segment(clean_env, run_dir, (0, 1, 0), stop_at=int(0.3 * TOTAL))
    resumed = run_segment(clean_env, run_dir, (5, 2, 0), stop_at=0)  # 3 actors: trainer 0 gets 2, trainer 1 gets 1
    resumed_from = int(first["ckpt"]["frames"])
    assert 0.3 * TOTAL <= resumed_from < TOTAL
    rows = resumed["rows"]
    assert sorted(rows) == [0, 1]
    for rank, cols in rows.items():
        assert cols["step"], f"trainer rank {rank} took no step after the resume"
        for f, lr in zip(cols["frames"], cols["lr"]):
            assert f >= resumed_from
            assert lr > 0.0 if f < TOTAL else lr == 0.0, f"rank {rank}: lr {lr} at {f} of {TOTAL} frames"
            assert lr == expected("lr", int(f)), f"rank {rank}: lr {lr} at {f} frames, schedule {expected('lr', f)}"
    assert "resuming with a different layout" in resumed["stderr"], resumed["stderr"][-3000:]
    assert "Schedules follow frames / experiment.total_frames" in resumed["stderr"]
    before = check_segment(first, {"steps": 0, "version": 0, "frames": 0}, (0, 1, 0))
    after = check_segment(resumed, before, (5, 2, 0))
    # once more in one process: the budget is spent, no step is taken, and no counter is reset
    again = run_segment(clean_env, run_dir, (0, 1, 0), stop_at=0)
    assert check_segment(again, after, (0, 1, 0)) == after
    assert again["summary"]["trainer_steps"] == after["steps"] and again["summary"]["frames"] == after["frames"]


# ---------------------------------------------------------------------------------------------- properties

layouts = st.sampled_from(LAYOUTS)


@st.composite
def histories(draw: Any, max_segments: int = 3) -> list[tuple[tuple[int, int, int], int]]:
    """1 to ``max_segments - 1`` interruptions at increasing frame counts, each segment in any layout, then a
    last segment to the end of the run."""
    cuts = draw(st.lists(st.integers(300, TOTAL - 300), min_size=1, max_size=max_segments - 1, unique=True))
    cuts = sorted(cuts)
    return [(draw(layouts), c) for c in cuts] + [(draw(layouts), 0)]


def budget(examples: int) -> settings:
    """A reproducible, small budget: fixed examples (no database), no shrinking (each example is several runs)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


#: the long variants run only on request (HPCRL_SLOW_TESTS=1): minutes of real runs each
long_variant = pytest.mark.skipif(
    os.environ.get("HPCRL_SLOW_TESTS", "").strip() in ("", "0"), reason="long property variant: set HPCRL_SLOW_TESTS=1"
)


def _check_any_history(env: dict[str, str], base: Path, history: list[tuple[tuple[int, int, int], int]]) -> None:
    run_history(env, _tmp(base) / "run", history)


@pytest.mark.timeout(600)  # several real runs per example; each run has its own 240 s hang guard
@budget(2)
@given(history=histories(max_segments=3))
@example(history=[((4, 2, 0), 1100), ((0, 1, 0), 2300), ((5, 1, 1), 0)])
def test_any_resume_history_across_layouts_follows_the_schedule(clean_env, tmp_path, history) -> None:
    _check_any_history(clean_env, tmp_path, history)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@long_variant
@budget(25)
@given(history=histories(max_segments=4))
def test_any_resume_history_across_layouts_follows_the_schedule_long(clean_env, tmp_path, history) -> None:
    _check_any_history(clean_env, tmp_path, history)


@functools.cache
def _uninterrupted(env_items: tuple[tuple[str, str], ...], base: Path) -> dict[str, list[float]]:
    """The trainer rows of one uninterrupted one-process run (one per test: every example compares with it)."""
    seg = run_segment(dict(env_items), _tmp(base) / "run", (0, 1, 0), 0)
    check_segment(seg, {"steps": 0, "version": 0, "frames": 0}, (0, 1, 0))
    return seg["rows"][0]


def _check_one_process_history(env: dict[str, str], base: Path, cut_steps: list[int]) -> None:
    ref = _uninterrupted(tuple(sorted(env.items())), base)
    # a fresh env ring needs a few more env steps for its first batch than for a later one (the bootstrap
    # row's action is applied before a fragment is complete); a restart discards those steps of the
    # partial fragment, so each resume shifts the later steps by exactly this many frames
    restart = ref["frames"][0] - (ref["frames"][1] - ref["frames"][0])
    assert ref["frames"][1] - ref["frames"][0] == LOCAL_FRAMES_PER_STEP and 0 <= restart < LOCAL_FRAMES_PER_STEP, ref
    cuts = sorted(set(cut_steps))
    # stop right after step k: at the frame count the uninterrupted run had at step k (plus earlier shifts)
    history = [((0, 1, 0), int(ref["frames"][k - 1]) + i * restart) for i, k in enumerate(cuts)] + [((0, 1, 0), 0)]
    segments = run_history(env, _tmp(base) / "run", history)
    assert [len(seg["rows"][0]["step"]) for seg in segments[:-1]] == [b - a for a, b in zip([0, *cuts], cuts)]
    joined: dict[str, list[float]] = {k: [] for k in ref}
    for seg in segments:
        for k in joined:
            joined[k] += seg["rows"][0][k]
    assert joined["step"] == ref["step"] and joined["policy_version"] == ref["policy_version"]
    shift = [restart * sum(1 for k in cuts if step > k) for step in ref["step"]]
    assert joined["frames"] == [f + d for f, d in zip(ref["frames"], shift)]
    for key in ("lr", "entropy_coef", "clip"):  # the same steps at those frames: the schedule's values there
        assert joined[key] == [expected(key, int(f)) for f in joined["frames"]]


@pytest.mark.timeout(600)
@budget(3)
@given(cut_steps=st.lists(st.integers(1, TOTAL // LOCAL_FRAMES_PER_STEP - 1), min_size=1, max_size=2))
def test_one_process_history_split_at_step_boundaries_equals_the_uninterrupted_run(
    clean_env, tmp_path, cut_steps
) -> None:
    _check_one_process_history(clean_env, tmp_path, cut_steps)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@long_variant
@budget(20)
@given(cut_steps=st.lists(st.integers(1, TOTAL // LOCAL_FRAMES_PER_STEP - 1), min_size=1, max_size=4))
def test_one_process_history_split_at_step_boundaries_equals_the_uninterrupted_run_long(
    clean_env, tmp_path, cut_steps
) -> None:
    _check_one_process_history(clean_env, tmp_path, cut_steps)
