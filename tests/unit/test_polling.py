"""Pacing of polling waits (no MPI): the spin, yield and sleep phases of Backoff, and transfer_backoff."""

from __future__ import annotations

import time

import pytest

from hpcrl.comm import polling
from hpcrl.comm.polling import Backoff, WaitTimeout, transfer_backoff, wait_for


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, float]]:
    """Replace sleep and sched_yield in the polling module by recorders (nothing really pauses)."""
    calls: list[tuple[str, float]] = []
    monkeypatch.setattr(polling.time, "sleep", lambda s: calls.append(("sleep", s)))
    monkeypatch.setattr(polling.os, "sched_yield", lambda: calls.append(("yield", 0.0)))
    return calls


def test_phases_spin_then_yield_count_then_growing_sleeps(recorded: list[tuple[str, float]]) -> None:
    b = Backoff(min_sleep=1e-3, max_sleep=4e-3, spin_time=0.0, yields=2)
    b.reset()
    for _ in range(6):
        b.idle()
    assert recorded == [("yield", 0.0)] * 2 + [("sleep", 1e-3), ("sleep", 2e-3), ("sleep", 4e-3), ("sleep", 4e-3)]


def test_yield_time_keeps_yielding_until_it_has_passed(recorded: list[tuple[str, float]]) -> None:
    b = Backoff(min_sleep=1e-3, spin_time=0.0, yields=0, yield_time=0.05)
    b.reset()
    start = time.perf_counter()
    while time.perf_counter() - start < 0.03:  # well inside the yielding phase: no sleep yet
        b.idle()
    assert recorded and {kind for kind, _ in recorded} == {"yield"}
    while time.perf_counter() - start < 0.06:
        b.idle()
    assert ("sleep", 1e-3) in recorded  # the window has passed: back to sleeping


def test_without_yield_time_sleeping_starts_after_the_yield_count(recorded: list[tuple[str, float]]) -> None:
    b = Backoff(min_sleep=1e-3, spin_time=0.0, yields=0, yield_time=0.0)
    b.reset()
    b.idle()
    assert recorded == [("sleep", 1e-3)]


def test_transfer_backoff_scales_with_size_and_is_capped() -> None:
    assert transfer_backoff(0).yield_time == 0.0
    assert transfer_backoff(1 << 20).yield_time == pytest.approx((1 << 20) / polling.TRANSFER_RATE)
    assert transfer_backoff(1 << 40).yield_time == polling.MAX_TRANSFER_YIELD


def test_bad_pacing_is_refused() -> None:
    with pytest.raises(ValueError, match="yield_time >= 0"):
        Backoff(yield_time=-1.0)
    with pytest.raises(ValueError, match="min_sleep <= max_sleep"):
        Backoff(min_sleep=2.0, max_sleep=1.0)


def test_timeout_message_is_built_only_when_the_wait_times_out() -> None:
    built: list[int] = []

    def describe() -> str:
        built.append(1)
        return "a lazily named thing"

    assert wait_for(lambda: 7, describe, peer=2, timeout=1.0) == 7
    assert built == []
    with pytest.raises(WaitTimeout, match="waiting for a lazily named thing from rank 2"):
        wait_for(lambda: None, describe, peer=2, timeout=0.01, backoff=Backoff(min_sleep=1e-3, max_sleep=1e-3))
    assert built == [1]
