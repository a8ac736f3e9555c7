"""Training faults end to end: non-finite losses/gradients (skip or stop), stale fragments, a slow trainer.

Cases 9 and 10 of docs/reliability.md, and back-pressure (``training.queue_batches``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faultkit import checkpoints, fault_env, log_lines, run_job, trainer_stats


def _float_leaves(tree: Any, path: str = "") -> list[tuple[str, np.ndarray]]:
    out: list[tuple[str, np.ndarray]] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _float_leaves(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _float_leaves(v, f"{path}/{i}")
    elif hasattr(tree, "detach"):
        if tree.is_floating_point():
            out.append((path, tree.detach().numpy()))
    elif isinstance(tree, np.ndarray) and tree.dtype.kind == "f":
        out.append((path, tree))
    elif isinstance(tree, float):
        out.append((path, np.asarray(tree)))
    return out


def _assert_all_finite(run_dir: Path) -> int:
    """Every float in every checkpoint of the run is finite; returns the newest checkpoint's policy version."""
    from hpcrl.storage.checkpoint import load_checkpoint

    files = checkpoints(run_dir)
    assert files, f"no checkpoints in {run_dir}"
    for f in files:
        tree, _ = load_checkpoint(f)
        leaves = _float_leaves(tree)
        assert leaves
        bad = [p for p, a in leaves if not np.isfinite(a).all()]
        assert not bad, f"{f}: non-finite values in {bad}"
    _, attrs = load_checkpoint(files[-1])
    return int(attrs["version"])


# ---------------------------------------------------------------------- case 9: non-finite
@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_counted(tmp_path: Path, clean_env: dict[str, str], kind: str) -> None:
    run_dir = tmp_path / "run"
    res = run_job(
        fault_env(clean_env),
        run_dir,
        "trainer.args.nan_steps=[3, 4]",
        f"trainer.args.nan_kind={kind}",
        "run.checkpoint_every_steps=2",
    )
    assert res.rc == 0 and res.summary is not None, res.explain()
    assert len(log_lines(res.text, "ppo step skipped entirely")) == 2, res.explain()
    stats = trainer_stats(run_dir)["stats"]
    assert stats["skipped_steps"][-1] == 2.0
    assert res.summary["policy_version"] == res.summary["trainer_steps"] - 2  # skipped steps change nothing
    _assert_all_finite(run_dir)
    print(f"NaN {kind} at trainer steps 3-4: skipped and counted (skipped_steps=2), run finished, weights finite")


def test_nonfinite_with_stop_ends_the_run_and_keeps_finite_checkpoints(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    run_dir = tmp_path / "run"
    res = run_job(
        fault_env(clean_env),
        run_dir,
        "trainer.args.nan_steps=[6]",
        "training.nonfinite=stop",
        "run.checkpoint_every_steps=2",
        "experiment.total_frames=100000000",
    )
    assert res.rc != 0, res.explain()
    err = log_lines(res.text, "NonFiniteError:")
    assert err and "ppo trainer: non-finite policy_loss (nan) at trainer step 5" in err[-1], res.explain()
    assert _assert_all_finite(run_dir) == 4  # the checkpoint after step 4 is the last one; nothing after the NaN
    print(f"NaN loss with nonfinite=stop: {err[-1].split('NonFiniteError: ')[-1]}; newest checkpoint version 4")


def test_nonfinite_on_one_trainer_rank_is_skipped_on_every_trainer_rank(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    run_dir = tmp_path / "run"
    res = run_job(
        fault_env(clean_env),
        run_dir,
        "layout.trainers=2",
        "trainer.args.nan_steps=[3]",
        "trainer.args.ranks=[1]",
        "run.checkpoint_every_steps=2",
        "training.max_staleness=1000",  # no stale drops here: the next test covers them with 2 trainers
        ranks=4,
    )
    assert res.finished, res.explain()
    for rank in (0, 1):
        assert trainer_stats(run_dir, rank)["stats"]["skipped_steps"][-1] == 1.0, rank
    _assert_all_finite(run_dir)


# ---------------------------------------------------------------------- case 10: staleness
def test_stale_fragments_are_dropped_and_counted_in_the_trace(tmp_path: Path, clean_env: dict[str, str]) -> None:
    env = fault_env(clean_env)
    strict = run_job(env, tmp_path / "strict", "layout.inference=1", "training.max_staleness=0", ranks=3)
    assert strict.finished and strict.summary is not None, strict.explain()
    traced = trainer_stats(tmp_path / "strict")["stats"]["dropped_fragments"]
    assert traced[-1] > 0 and traced[-1] <= strict.summary["dropped_fragments"]
    assert np.all(np.diff(traced) >= 0)  # a running count
    lenient = run_job(env, tmp_path / "lenient", "layout.inference=1", "training.max_staleness=1000", ranks=3)
    assert lenient.finished and lenient.summary is not None, lenient.explain()
    assert lenient.summary["dropped_fragments"] == 0
    assert trainer_stats(tmp_path / "lenient")["stats"]["dropped_fragments"][-1] == 0
    print(
        f"max_staleness=0: {strict.summary['dropped_fragments']} fragments dropped "
        f"({int(traced[-1])} in the rank-0 trace at the last step); max_staleness=1000: 0"
    )


def test_stale_fragments_with_two_trainer_ranks_keep_the_trainers_in_step(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    """A stale drop on one trainer rank must not make it skip a step the other rank takes (deadlock until 23b1bb0)."""
    run_dir = tmp_path / "run"
    res = run_job(
        fault_env(clean_env),
        run_dir,
        "layout.trainers=2",
        "training.max_staleness=0",
        "run.heartbeat_seconds=10",
        ranks=4,
        timeout=90,
    )
    assert res.finished and res.summary is not None, res.explain()
    assert res.summary["dropped_fragments"] > 0


# ---------------------------------------------------------------------- back-pressure: a slow trainer
@pytest.mark.parametrize("queue_batches", [1, 0], ids=["back-pressure", "none"])
def test_back_pressure_holds_actors_to_what_a_slow_trainer_takes_in(
    tmp_path: Path, clean_env: dict[str, str], queue_batches: int
) -> None:
    """With ``training.queue_batches`` > 0 actors wait for a slow trainer instead of producing fragments for
    nothing; with 0 they run ahead (the surplus is discarded at shutdown). Counts, not timings."""
    res = run_job(
        fault_env(clean_env),
        tmp_path / "run",
        "layout.inference=0",
        "trainer.args.step_sleep=0.1",
        f"training.queue_batches={queue_batches}",
        "training.max_staleness=1000",
        "experiment.total_frames=1500",
        ranks=3,  # trainer + 2 actors of 2 envs: a batch is 2 fragments of 16 steps x 2 envs
        timeout=90,
    )
    assert res.finished and res.summary is not None, res.explain()
    sent = [int(n) for n in re.findall(r"rank \d actor: frames=\d+.*?fragments=(\d+)", res.text)]
    assert len(sent) == 2, res.explain()
    steps = int(res.summary["trainer_steps"])
    # what the trainer took in (2 per step), what may wait in its queue (2 per queued batch), and per
    # actor one fragment received but not yet taken, one in flight, and one more that the shutdown drain
    # lets through before the actor sees the stop (measured: 59-61 against 58-60 without that slack)
    bound = 2 * steps + 2 * max(queue_batches, 1) + 2 * 3
    if queue_batches:
        assert sum(sent) <= bound, f"actors sent {sent} fragments for {steps} trainer steps (bound {bound})"
    else:
        assert sum(sent) > bound, f"without back-pressure actors should run ahead: sent {sent}, {steps} steps"
    print(f"queue_batches={queue_batches}: actors sent {sent} fragments, trainer steps {steps}, bound {bound}")
