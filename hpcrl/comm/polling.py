"""Waiting without busy-spinning: test, yield, then sleep with exponential back-off, with timeouts.

MPICH's blocking ``Wait``/``Recv`` spin a core at 100% while they wait. With 64 ranks on a few
cores that starves the ranks that have work, so hpcrl never blocks inside MPI: it tests the
requests back to back for 50 us (keeps small-message latency low), yields the core a few times,
then sleeps 20 us, 40 us, ... up to 2 ms between tests. ``on_idle`` lets the caller do something
useful between tests (e.g. poll control messages).

Examples:
    >>> backoff = Backoff(min_sleep=1e-6, max_sleep=1e-5, spin_time=0.0, yields=2)
    >>> calls = iter([None, None, None, 42])
    >>> wait_for(lambda: next(calls), "the answer", backoff=backoff)
    42
    >>> wait_for(lambda: None, "a message", peer=3, timeout=0.001)
    Traceback (most recent call last):
    ...
    hpcrl.comm.polling.WaitTimeout: timed out after 0.001 s waiting for a message from rank 3
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from hpcrl.comm.mpi import load_mpi

if TYPE_CHECKING:
    from mpi4py import MPI

__all__ = ["Backoff", "Describe", "transfer_backoff", "WaitTimeout", "wait_for", "wait", "wait_any", "cancel", "OnIdle"]

T = TypeVar("T")
_log = logging.getLogger(__name__)

#: Called once per unsuccessful test while waiting (e.g. to poll control messages); may raise to stop waiting.
OnIdle = Callable[[], None]
#: What a wait is for, for its timeout message: a string, or a callable that builds it only if the wait times out
#: (hot paths pass a lambda so that a wait that succeeds costs no string formatting).
Describe = str | Callable[[], str]


class WaitTimeout(TimeoutError):
    """A wait ran past its timeout; the message names what was awaited and the peer rank.

    Attributes:
        what: what was awaited.
        peer: the rank it was awaited from (or ``None``).
        timeout: the timeout in seconds.
    """

    def __init__(self, what: Describe, peer: int | None, timeout: float) -> None:
        what = what if isinstance(what, str) else what()
        self.what = what
        self.peer = peer
        self.timeout = timeout
        frm = f" from rank {peer}" if peer is not None else ""
        super().__init__(f"timed out after {timeout:g} s waiting for {what}{frm}")


class Backoff:
    """Pacing for a polling loop: a short hot spin, a few yields, then exponentially growing sleeps.

    Call :meth:`idle` after every unsuccessful test and :meth:`reset` after progress. The three
    phases trade latency for CPU: for ``spin_time`` seconds the caller tests back to back (an answer
    that is microseconds away costs no extra latency), then it yields the core ``yields`` times and
    for at least ``yield_time`` seconds (free when no other process wants the core), then it sleeps
    ``min_sleep``, doubling up to ``max_sleep``. An idle rank thus costs at most ``spin_time`` +
    ``yield_time`` of CPU per wait plus one wake-up per ``max_sleep``.

    ``yield_time`` is for waits on a transfer known to be in flight (see :func:`transfer_backoff`):
    MPICH moves a large shared-memory message in a pipeline that advances only while both ranks
    call into MPI, so a rank asleep in the middle of it stalls the copy.

    Args:
        min_sleep: first sleep in seconds (after spinning and yielding).
        max_sleep: longest sleep in seconds (the worst-case added latency once idle for a while).
        factor: growth factor of the sleep.
        spin_time: seconds of back-to-back testing before yielding starts (0 disables it).
        yields: tests with one ``sched_yield`` each before sleeping starts (at least).
        yield_time: seconds of yielding tests before sleeping starts (at least; 0: count only).
    """

    __slots__ = (
        "_count",
        "_sleep",
        "_spin_until",
        "_yield_until",
        "factor",
        "max_sleep",
        "min_sleep",
        "spin_time",
        "yield_time",
        "yields",
    )

    def __init__(
        self,
        min_sleep: float = 20e-6,
        max_sleep: float = 2e-3,
        factor: float = 2.0,
        spin_time: float = 50e-6,
        yields: int = 16,
        yield_time: float = 0.0,
    ) -> None:
        if not 0 < min_sleep <= max_sleep:
            raise ValueError(f"Backoff needs 0 < min_sleep <= max_sleep, got {min_sleep} and {max_sleep}")
        if factor < 1.0 or spin_time < 0 or yields < 0 or yield_time < 0:
            raise ValueError(
                "Backoff needs factor >= 1, spin_time >= 0, yields >= 0, yield_time >= 0; "
                f"got {factor}, {spin_time}, {yields}, {yield_time}"
            )
        self.min_sleep = float(min_sleep)
        self.max_sleep = float(max_sleep)
        self.factor = float(factor)
        self.spin_time = float(spin_time)
        self.yields = int(yields)
        self.yield_time = float(yield_time)
        self._count = 0
        self._sleep = self.min_sleep
        self._spin_until = 0.0
        self._yield_until = 0.0

    def reset(self) -> None:
        """Start again from the spinning phase (call it when a wait starts or progress was made)."""
        self._count = 0
        self._sleep = self.min_sleep
        now = time.perf_counter()
        self._spin_until = now + self.spin_time
        self._yield_until = now + self.spin_time + self.yield_time if self.yield_time else 0.0

    def idle(self) -> None:
        """Pause once: nothing while spinning, then ``sched_yield``, then a growing sleep."""
        if self._spin_until and time.perf_counter() < self._spin_until:
            return
        self._spin_until = 0.0
        if self._count < self.yields or (self._yield_until and time.perf_counter() < self._yield_until):
            self._count += 1
            os.sched_yield()
            return
        self._yield_until = 0.0
        time.sleep(self._sleep)
        self._sleep = min(self._sleep * self.factor, self.max_sleep)


#: Shared-memory copy rate assumed by :func:`transfer_backoff` (bytes/s; deliberately low: a wait that
#: yields a little longer than the copy takes costs little, one that sleeps mid-copy stalls it).
TRANSFER_RATE = 1e9
#: Upper bound of the yielding phase of :func:`transfer_backoff` (seconds).
MAX_TRANSFER_YIELD = 20e-3


def transfer_backoff(nbytes: int) -> Backoff:
    """Pacing for a wait on ``nbytes`` known to be in flight: yield (never sleep) while they copy.

    Args:
        nbytes: bytes of the message(s) being waited for.

    Returns:
        A :class:`Backoff` whose yielding phase lasts ``nbytes / TRANSFER_RATE`` (at most
        ``MAX_TRANSFER_YIELD``), then backs off as usual.

    Examples:
        >>> round(transfer_backoff(16 << 20).yield_time, 4)
        0.0168
        >>> transfer_backoff(1024).yield_time
        0.0
    """
    seconds = min(nbytes / TRANSFER_RATE, MAX_TRANSFER_YIELD)
    return Backoff(yield_time=seconds if seconds > 50e-6 else 0.0)


def wait_for(
    poll: Callable[[], T | None],
    what: Describe,
    peer: int | None = None,
    timeout: float | None = None,
    on_idle: OnIdle | None = None,
    backoff: Backoff | None = None,
) -> T:
    """Call ``poll()`` until it returns something other than ``None``, backing off in between.

    Args:
        poll: non-blocking test; returns ``None`` while there is nothing yet.
        what: what is awaited, for the timeout message (e.g. ``"a RESULT message"``), or a callable
            returning it (called only on a timeout).
        peer: the rank it is awaited from, for the timeout message.
        timeout: seconds before :class:`WaitTimeout` is raised; ``None`` waits forever.
        on_idle: called after every unsuccessful poll.
        backoff: pacing; a fresh default :class:`Backoff` when ``None``.

    Returns:
        The first non-``None`` value ``poll`` returned.

    Raises:
        WaitTimeout: ``timeout`` passed first.
    """
    result = poll()
    if result is not None:
        return result
    pace = backoff if backoff is not None else Backoff()
    pace.reset()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if on_idle is not None:
            on_idle()
        pace.idle()
        result = poll()
        if result is not None:
            return result
        if deadline is not None and time.monotonic() > deadline:
            raise WaitTimeout(what, peer, float(timeout))  # type: ignore[arg-type]


def wait(
    requests: MPI.Request | Sequence[MPI.Request],
    what: Describe,
    peer: int | None = None,
    timeout: float | None = None,
    on_idle: OnIdle | None = None,
    backoff: Backoff | None = None,
) -> list[MPI.Status]:
    """Wait for one request or all of several, without busy-spinning.

    Args:
        requests: one ``MPI.Request`` or a sequence of them (null requests count as complete).
        what: what is awaited, for the timeout message.
        peer: the peer rank, for the timeout message.
        timeout: seconds before :class:`WaitTimeout`; ``None`` waits forever.
        on_idle: called after every unsuccessful test.
        backoff: pacing (default :class:`Backoff`).

    Returns:
        One status per request, in order.

    Raises:
        WaitTimeout: not all requests completed within ``timeout``.
    """
    mpi: Any = load_mpi()
    reqs: list[MPI.Request] = [requests] if isinstance(requests, mpi.Request) else list(requests)  # type: ignore[arg-type]
    statuses = [mpi.Status() for _ in reqs]

    def poll() -> bool | None:
        return True if mpi.Request.Testall(reqs, statuses) else None

    wait_for(poll, what, peer, timeout, on_idle, backoff)
    return statuses


def wait_any(
    requests: Sequence[MPI.Request],
    what: Describe,
    peer: int | None = None,
    timeout: float | None = None,
    on_idle: OnIdle | None = None,
    backoff: Backoff | None = None,
) -> tuple[int, MPI.Status]:
    """Wait until one of ``requests`` completes, without busy-spinning.

    Args:
        requests: requests to watch (at least one must be active).
        what: what is awaited, for the timeout message.
        peer: the peer rank, for the timeout message.
        timeout: seconds before :class:`WaitTimeout`; ``None`` waits forever.
        on_idle: called after every unsuccessful test.
        backoff: pacing (default :class:`Backoff`).

    Returns:
        ``(index, status)`` of a completed request.

    Raises:
        ValueError: no request is active (nothing could ever complete).
        WaitTimeout: none completed within ``timeout``.
    """
    mpi: Any = load_mpi()
    reqs = list(requests)
    if not any(reqs):
        raise ValueError(f"wait_any for {what if isinstance(what, str) else what()}: no active request to wait on")
    status = mpi.Status()

    def poll() -> tuple[int, MPI.Status] | None:
        index, flag = mpi.Request.Testany(reqs, status)
        return (int(index), status) if flag and index != mpi.UNDEFINED else None

    return wait_for(poll, what, peer, timeout, on_idle, backoff)


def cancel(requests: Sequence[MPI.Request], what: str, grace: float = 1.0) -> int:
    """Cancel active requests (at shutdown) and reap them.

    A request that completed anyway (its message arrived first) counts as reaped. Sends may be
    impossible to cancel once the receiver has started matching them; those are given ``grace`` seconds.

    Args:
        requests: requests to cancel (null ones are ignored).
        what: what they are, for the log.
        grace: seconds to wait for the cancellations to take effect.

    Returns:
        How many requests were still active after ``grace`` (left behind; normally 0).
    """
    mpi: Any = load_mpi()
    active = [r for r in requests if r]
    for r in active:
        with contextlib.suppress(mpi.Exception):  # already complete, or not cancellable: reaped below
            r.Cancel()
    if not active:
        return 0
    try:
        wait(active, what, timeout=grace, backoff=Backoff(yields=4))
    except WaitTimeout:
        left = sum(1 for r in active if r)
        _log.warning("%d request(s) for %s could not be cancelled within %g s", left, what, grace)
        return left
    except mpi.Exception as e:  # a cancelled request that had failed: nothing left to do with it
        _log.debug("while cancelling %s: %s", what, e)
    return 0
