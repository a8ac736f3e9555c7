"""Background checkpoint saves (hpcrl.storage.background / .writer, and Checkpointer with run.checkpoint_writer).

What must hold, for the writer thread and the writer process alike: the file holds the state at the
moment of the save even though training goes on changing it while the writer runs; files land in
version order; a failed background write is never lost (it reaches the trainer's thread and
on_save_error applies); the run's final save waits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcrl.acting import rings
from hpcrl.acting.env_ring import EnvRing
from hpcrl.api import config
from hpcrl.learning.checkpointing import Checkpointer
from hpcrl.learning.learner import Learner
from hpcrl.runtime import components
from hpcrl.storage.background import BackgroundSaver, ProcessSaver, ThreadSaver, make_saver, snapshot
from hpcrl.storage.checkpoint import CheckpointManager, load_checkpoint, prepare_run_dir
from hpcrl.storage.tree import CheckpointError
from hpcrl.storage.writer import available

WRITERS = [ThreadSaver, pytest.param(ProcessSaver, marks=pytest.mark.skipif(not available(), reason="needs Linux"))]


@pytest.fixture(params=WRITERS, ids=["thread", "process"])
def saver_cls(request: pytest.FixtureRequest) -> type[BackgroundSaver]:
    return request.param


def test_snapshot_shares_no_buffer() -> None:
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()  # non-contiguous view
    a = np.ones(4, np.int16)
    tree = {"t": t, "nested": [a, (bytearray(b"xy"), 3, "s", None)], "step": torch.tensor(7)}
    snap = snapshot(tree)
    t.add_(100)
    a[:] = 9
    tree["nested"][1][0][0] = ord("z")
    tree["step"] += 1
    assert torch.equal(snap["t"], torch.arange(6, dtype=torch.float32).reshape(2, 3).t())
    assert snap["t"].is_contiguous() and snap["t"].dtype == torch.float32
    assert np.array_equal(snap["nested"][0], np.ones(4, np.int16)) and snap["nested"][0].dtype == np.int16
    assert snap["nested"][1] == (b"xy", 3, "s", None)
    assert int(snap["step"]) == 7


def test_saved_file_holds_the_state_at_submit(tmp_path: Path, saver_cls: type[BackgroundSaver]) -> None:
    saver = saver_cls(CheckpointManager(prepare_run_dir(tmp_path / "run")))
    w = torch.zeros(1000)
    saver.submit({"w": w}, {"version": 1}, reason="periodic")
    for _ in range(50):  # keep changing it while the writer runs
        w.add_(1)
    outcome = saver.wait()
    assert outcome is not None and outcome.error is None and outcome.version == 1
    assert outcome.path is not None and outcome.path.name == "ckpt-000000001.h5"
    tree, attrs = load_checkpoint(outcome.path)
    assert torch.equal(tree["w"], torch.zeros(1000)) and attrs["version"] == 1
    assert saver.wait() is None and saver.poll() is None  # each outcome is handed out once
    saver.close()


def test_every_value_type_round_trips(tmp_path: Path, saver_cls: type[BackgroundSaver]) -> None:
    """The writer process gets the tree as JSON layout + shared memory: nothing may change on the way."""
    big = 2**100
    tree = {
        "f32": torch.randn(3, 5),
        "bf16": torch.randn(4, 2).to(torch.bfloat16),
        "i64": torch.arange(7),
        "bool_t": torch.tensor([True, False]),
        "empty": torch.zeros(0, 3),
        "scalar_t": torch.tensor(2.5, dtype=torch.float64),
        "view": torch.arange(12.0).reshape(3, 4).t(),  # non-contiguous
        "nd": np.arange(6, dtype=np.uint16).reshape(2, 3),
        "cplx": np.array([1 + 2j], np.complex64),
        "npscalar": np.float32(1.5),
        7: {"nested": [1, 2.0, "x", None, True, b"\x00\xff", (3, 4)]},
        "big": big,
        "nan": float("nan"),
        "text": "ü" * 10,
    }
    attrs = {"version": 3, "frames": np.int64(12), "ratio": 0.5, "done": True, "config": "a: 1\n"}
    saver = saver_cls(CheckpointManager(prepare_run_dir(tmp_path / "run")))
    saver.submit(tree, attrs, reason="periodic")
    outcome = saver.wait()
    saver.close()
    assert outcome is not None and outcome.error is None and outcome.path is not None
    got, got_attrs = load_checkpoint(outcome.path)
    for k in ("f32", "bf16", "i64", "bool_t", "empty", "scalar_t", "view"):
        assert isinstance(got[k], torch.Tensor) and got[k].dtype == tree[k].dtype, k
        assert torch.equal(got[k], tree[k]), k
    assert got["nd"].dtype == np.uint16 and np.array_equal(got["nd"], tree["nd"])
    assert got["cplx"].dtype == np.complex64 and got["cplx"][0] == 1 + 2j
    assert got["npscalar"] == np.float32(1.5) and got["npscalar"].dtype == np.float32
    assert got[7] == {"nested": [1, 2.0, "x", None, True, b"\x00\xff", [3, 4]]}
    assert got["big"] == big and np.isnan(got["nan"]) and got["text"] == "ü" * 10
    assert got_attrs["version"] == 3 and got_attrs["frames"] == 12 and got_attrs["done"] is True
    assert got_attrs["config"] == "a: 1\n" and got_attrs["ratio"] == 0.5


def test_unstorable_value_fails_at_submit_naming_it(tmp_path: Path, saver_cls: type[BackgroundSaver]) -> None:
    saver = saver_cls(CheckpointManager(prepare_run_dir(tmp_path / "run")))
    if saver_cls is ThreadSaver:  # the thread reports it from the writer, as a blocking save would
        saver.submit({"policy": {"bad": object()}}, {"version": 1}, reason="periodic")
        outcome = saver.wait()
        assert outcome is not None and outcome.error is not None
        error: Exception = outcome.error
    else:
        with pytest.raises(CheckpointError) as info:
            saver.submit({"policy": {"bad": object()}}, {"version": 1}, reason="periodic")
        error = info.value
        assert not saver.busy and saver.wait() is None  # nothing in flight
    assert "/policy/bad: cannot store a builtins.object" in str(error) and "ckpt-000000001.h5" in str(error)
    saver.close()
    assert list((tmp_path / "run" / "checkpoints").iterdir()) == []


class _GatedManager(CheckpointManager):
    """Blocks in save() until released; optionally fails."""

    def __init__(self, run_dir: Path, fail: BaseException | None = None) -> None:
        super().__init__(run_dir)
        self.gate = threading.Event()
        self.fail = fail

    def save(self, tree, attrs):  # type: ignore[no-untyped-def]
        self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        return super().save(tree, attrs)


def test_poll_busy_and_one_save_in_flight(tmp_path: Path) -> None:
    mgr = _GatedManager(prepare_run_dir(tmp_path / "run"))
    saver = ThreadSaver(mgr)
    saver.submit({"x": np.arange(3)}, {"version": 4}, reason="periodic")
    assert saver.busy and saver.poll() is None
    with pytest.raises(RuntimeError, match="collect the previous save"):
        saver.submit({"x": np.arange(3)}, {"version": 5}, reason="periodic")
    mgr.gate.set()
    outcome = saver.wait()
    assert outcome is not None and outcome.path is not None and outcome.write_seconds >= 0
    assert not saver.busy


@pytest.mark.parametrize(
    ("fail", "expect"),
    [
        (CheckpointError("cannot save checkpoint /x/ckpt-000000004.h5: ENOSPC"), "ENOSPC"),
        (ValueError("odd"), "checkpoint version 4: ValueError: odd"),  # anything else is still reported
    ],
)
def test_failed_write_reaches_the_caller(tmp_path: Path, fail: BaseException, expect: str) -> None:
    mgr = _GatedManager(prepare_run_dir(tmp_path / "run"), fail=fail)
    mgr.gate.set()
    saver = ThreadSaver(mgr)
    saver.submit({"x": np.arange(3)}, {"version": 4}, reason="periodic")
    outcome = saver.wait()
    assert outcome is not None and outcome.path is None and outcome.reason == "periodic"
    assert isinstance(outcome.error, CheckpointError) and expect in str(outcome.error)


@pytest.mark.skipif(not available(), reason="needs Linux")
def test_writer_process_errors_reach_the_caller_and_it_recovers(tmp_path: Path) -> None:
    run_dir = prepare_run_dir(tmp_path / "run")
    saver = ProcessSaver(CheckpointManager(run_dir, keep=2))
    saver.submit({"x": np.arange(3)}, {"version": 1}, reason="periodic")
    assert saver.busy and saver.poll() is None  # the writer is still starting
    assert saver.wait().error is None  # type: ignore[union-attr]
    pid = saver.writer.pid
    assert pid is not None
    # the writer's own failure (its temp file name is taken): reported with the file and the cause
    (run_dir / "checkpoints" / f"ckpt-000000002.h5.tmp.{pid}").mkdir()
    saver.submit({"x": np.arange(3)}, {"version": 2}, reason="periodic")
    outcome = saver.wait()
    assert outcome is not None and outcome.path is None and outcome.error is not None
    assert "cannot save checkpoint" in str(outcome.error) and "ckpt-000000002.h5" in str(outcome.error)
    assert "File exists" in str(outcome.error)
    assert saver.writer.pid == pid  # the writer survives its job's failure
    # the writer dies mid-save: reported, and the next save starts a new one
    saver.submit({"x": np.zeros(50_000_000, np.uint8)}, {"version": 3}, reason="periodic")
    os.kill(pid, signal.SIGKILL)
    outcome = saver.wait()
    assert outcome is not None and outcome.error is not None
    assert "ckpt-000000003.h5: the checkpoint writer process exited (code -9)" in str(outcome.error)
    saver.submit({"x": np.arange(4)}, {"version": 4}, reason="periodic")
    outcome = saver.wait()
    assert outcome is not None and outcome.path is not None and saver.writer.pid not in (None, pid)
    saver.close()
    assert saver.writer.pid is None
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert names == ["ckpt-000000001.h5", "ckpt-000000004.h5"]  # keep=2; no half-written 3


def test_make_saver(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    assert make_saver(mgr, "inline") is None
    assert isinstance(make_saver(mgr, "thread"), ThreadSaver)
    assert isinstance(make_saver(mgr, "process"), ProcessSaver if available() else ThreadSaver)


# ---------------------------------------------------------------------------------------------- Checkpointer
def _cfg(tmp_path: Path, **run: object) -> config.ExperimentConfig:
    return config.from_dict(
        {
            "environment": {"type_": "gym", "args": {"id": "CartPole-v1"}},
            "policy": {"type_": "actor-critic-separate", "args": {"obs_dim": {"obs": 4}, "action_dim": 2, "seed": 3}},
            "trainer": {"type_": "ppo", "args": {"epochs": 2, "minibatches": 2, "seed": 5}},
            "run": {"dir": str(tmp_path / "run"), **run},
            "training": {"max_staleness": 1000},
        }
    )


def _learner(cfg: config.ExperimentConfig, run_dir: Path | None) -> tuple[Learner, Checkpointer]:
    components.seed_everything(11)
    policy = components.build_policy(cfg.policy)
    trainer = components.build_trainer(cfg.trainer, policy, cfg.training)
    learner = Learner(cfg, policy, trainer, batch_size=4)
    return learner, Checkpointer(cfg, learner, run_dir, config_text=config.dump(cfg))


def _batches(cfg: config.ExperimentConfig, n: int) -> list:
    learner, _ = _learner(cfg, None)
    ring = EnvRing(rings.env_factory(cfg.environment), 4, 1, 16, None, "cartpole", seeds=[1, 2, 3, 4])
    out: list = []
    while len(out) < n:
        ring.consume(0, learner.policy.rollout(ring.request(0)), 0)
        out += ring.pop_fragments()
    return out[:n]


def _weights(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.policy.state_dict().items()}


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_learner_background_save_is_the_state_at_the_save(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, writer: str
) -> None:
    """Train on while the periodic save is written; resuming from it gives the weights of that moment."""
    assert config.Run().checkpoint_writer == "process"  # the default
    cfg = _cfg(tmp_path, checkpoint_writer=writer)
    batches = _batches(cfg, 6)
    run_dir = tmp_path / "run"
    learner, ckpt = _learner(cfg, run_dir)
    for b in batches[:3]:
        learner.add(b)
        learner.step()
    at_save = _weights(learner)
    opt_at_save = {
        k: {n: torch.as_tensor(v).clone() for n, v in s.items()}
        for k, s in learner.trainer.get_checkpoint()["optimizer"]["state"].items()
    }
    caplog.set_level(logging.INFO, logger="hpcrl")
    assert ckpt.save("periodic") is None  # handed to the writer thread
    for b in batches[3:]:  # these steps change weights and Adam state in place while the writer runs
        learner.add(b)
        learner.step()
        ckpt.after_step()
    ckpt.close()
    assert ckpt.last_checkpoint is not None and ckpt.last_checkpoint.name == "ckpt-000000003.h5"
    assert "written in" in caplog.text and "in the background" in caplog.text
    assert ckpt.saves_failed == 0

    resumed, resumed_ckpt = _learner(cfg, run_dir)
    assert resumed_ckpt.restore() == ckpt.last_checkpoint
    assert resumed.steps == 3 and resumed.policy.version == 3
    for k, v in _weights(resumed).items():
        assert torch.equal(v, at_save[k]), k
    opt = resumed.trainer.get_checkpoint()["optimizer"]["state"]
    for pid, s in opt_at_save.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(torch.as_tensor(opt[pid][key]), s[key]), (pid, key)


def test_learner_final_save_waits_and_lands_after_the_periodic_one(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    run_dir = tmp_path / "run"
    learner, ckpt = _learner(cfg, run_dir)
    batches = _batches(cfg, 2)
    learner.add(batches[0])
    learner.step()
    ckpt.save("periodic")
    learner.add(batches[1])
    learner.step()
    final = ckpt.save("final")  # waits for the periodic one, then writes in place
    assert final is not None and final.name == "ckpt-000000002.h5" and ckpt.last_checkpoint == final
    names = sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt-*.h5"))
    assert names == ["ckpt-000000001.h5", "ckpt-000000002.h5"]
    assert load_checkpoint(final)[1]["reason"] == "final"
    ckpt.close()


@pytest.mark.parametrize("mode", ["stop", "continue"])
def test_background_failure_is_applied_after_the_next_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    cfg = _cfg(tmp_path, on_save_error=mode, checkpoint_writer="thread")
    run_dir = tmp_path / "run"
    learner, ckpt = _learner(cfg, run_dir)
    err = CheckpointError("cannot save checkpoint ckpt-000000001.h5: [Errno 28] No space left on device")
    gated = _GatedManager(run_dir, fail=err)
    gated.gate.set()
    ckpt._saver = ThreadSaver(gated)  # the writer thread's manager fails; the checkpointer is unchanged
    batches = _batches(cfg, 2)
    learner.add(batches[0])
    learner.step()
    caplog.set_level(logging.INFO, logger="hpcrl")
    ckpt.save("periodic")
    ckpt._saver._thread.join()  # type: ignore[union-attr]
    learner.add(batches[1])
    assert learner.step() is not None
    if mode == "stop":
        with pytest.raises(CheckpointError, match="No space left"):
            ckpt.after_step()
    else:
        ckpt.after_step()  # training goes on
    assert ckpt.saves_failed == 1
    assert "checkpoint save failed (periodic): cannot save checkpoint ckpt-000000001.h5" in caplog.text


def test_sync_mode_returns_the_file(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, checkpoint_writer="inline")
    learner, ckpt = _learner(cfg, tmp_path / "run")
    learner.add(_batches(cfg, 1)[0])
    learner.step()
    path = ckpt.save("periodic")
    assert path is not None and path.exists() and ckpt.last_checkpoint == path


@pytest.mark.skipif(not available(), reason="needs Linux")
def test_writer_process_with_file_descriptors_above_1024(tmp_path: Path) -> None:
    """A big MPI job can hold many fds: waiting for the writer must not use select() (FD_SETSIZE 1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        saver = ProcessSaver(CheckpointManager(prepare_run_dir(tmp_path / "run")))
        saver.submit({"x": np.arange(3)}, {"version": 1}, reason="periodic")
        while (outcome := saver.poll()) is None:
            pass
        assert outcome.error is None and outcome.path is not None
        saver.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(not available(), reason="needs Linux")
def test_writer_process_survives_job_signals_mid_save(tmp_path: Path) -> None:
    """SLURM preemption and Ctrl-C signal the whole job: the save in flight must still land."""
    saver = ProcessSaver(CheckpointManager(prepare_run_dir(tmp_path / "run")))
    saver.submit({"x": np.arange(3)}, {"version": 1}, reason="periodic")
    assert saver.wait().error is None  # type: ignore[union-attr]
    pid = saver.writer.pid
    assert pid is not None
    saver.submit({"x": np.ones(30_000_000, np.uint8)}, {"version": 2}, reason="periodic")
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
        os.kill(pid, sig)
    outcome = saver.wait()
    assert outcome is not None and outcome.error is None and outcome.path is not None
    assert np.array_equal(load_checkpoint(outcome.path)[0]["x"][:5], np.ones(5, np.uint8))
    assert saver.writer.pid == pid
    saver.close()


def test_a_checkpoint_request_is_served_by_the_first_checkpoint_taken_after_it(tmp_path: Path) -> None:
    """SIGUSR2 / a ``checkpoint`` control message: one checkpoint per request, copies and overtaken ones cost none."""
    import time

    from hpcrl.runtime.session import StopFlag

    cfg = _cfg(tmp_path, checkpoint_writer="inline")
    learner, ckpt = _learner(cfg, tmp_path / "run")
    batches = _batches(cfg, 2)
    stop = StopFlag()
    assert not ckpt.serve(stop.checkpoint_request)  # nothing asked
    stop.request_checkpoint("SIGUSR2")
    asked = stop.checkpoint_request
    assert asked is not None
    stop.request_checkpoint("SIGUSR2 on rank 2 (actor)", at=asked[1] - 1.0)  # an older copy: the newest stays
    assert stop.checkpoint_request == asked
    learner.add(batches[0])
    learner.step()
    assert ckpt.serve(stop.checkpoint_request)
    assert ckpt.last_checkpoint is not None and load_checkpoint(ckpt.last_checkpoint)[1]["reason"] == "request"
    assert not ckpt.serve(stop.checkpoint_request)  # served
    assert not ckpt.serve(("SIGUSR2 on rank 3 (actor)", asked[1]))  # a copy of the same request
    learner.add(batches[1])
    learner.step()
    ckpt.save("periodic")
    assert not ckpt.serve(("SIGUSR2 on rank 1 (inference)", ckpt.state_time - 0.5))  # the periodic save took it
    time.sleep(0.01)
    stop.request_checkpoint("SIGUSR2")
    assert ckpt.serve(stop.checkpoint_request)  # a new request: a new checkpoint
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("ckpt-*.h5"))
    assert names == ["ckpt-000000001.h5", "ckpt-000000002.h5"]
    assert load_checkpoint(ckpt.last_checkpoint)[1]["reason"] == "request"
    ckpt.close()
    assert not Checkpointer(cfg, learner, None).serve(stop.checkpoint_request)  # a rank without a run dir
