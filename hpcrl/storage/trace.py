"""Per-rank HDF5 traces: episodes, trainer stats and timing spans, appended in SWMR mode (live-readable).

Layout of ``RUN_DIR/traces/rank-NNNN.h5`` (mode 0600; all 1-D tables chunked, ``maxshape=(None,)``)::

    /                    attrs: @format, rank, role, host, pid, start_time, flush_seconds, hpcrl_version
    /episodes/return, length, frames, wall_time, policy_version
    /trainer/step, frames, wall_time
    /trainer/stats/<key>            one float64 dataset per stat key known when the file is created
    /timings/<span>                 (N, 3) rows (wall_time, cumulative seconds, count), one row per flush
    /overflow/trainer_names         (S,) fixed-width names of stat keys first seen after the file was created
    /overflow/trainer               (N, S) float64, rows aligned with /trainer/step (NaN = no value)
    /overflow/timing_names          (S,) span names first seen after the file was created
    /overflow/timings               (N, S, 3) rows aligned with the /timings rows
    /committed                      int64 (3,): rows of episodes, trainer, timings that are complete
    /eval/frames, wall_time, policy_version, policy_version_min, episodes, mean_return, std_return,
          mean_length               one row per evaluation during training (``run.eval_episodes``)
    /eval/committed                 int64 (1,): rows of /eval that are complete
    /selfplay/frames, wall_time, learner_version, opponent_version, opponent_index, outcome, learner_return,
          opponent_return           one row per finished self-play game (outcome 1 win, 0 draw, -1 loss)
    /selfplay/committed             int64 (1,): rows of /selfplay that are complete

SWMR forbids creating datasets once readers may be attached, so nothing is written until the
first flush: records are buffered in memory, and the first flush creates every dataset for
the stat keys and span names seen so far, switches to SWMR and renames the file into place.
Keys and spans that appear later take a slot in the fixed-width ``/overflow`` tables
(``overflow_slots`` each); beyond that they are dropped with one WARNING per name.
:func:`read_trace` merges both, so callers see one dict per kind. Each flush writes the
data, flushes, then advances ``/committed`` and flushes again: a reader clips every table
to ``/committed`` and never sees half-written rows. A crash loses at most ``flush_seconds``.

Examples:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> with TraceWriter(run, rank=0, role="trainer") as tw:
    ...     tw.add_time("forward", 0.5)
    ...     tw.trainer_step(1, 1000, {"loss": 0.25})
    ...     tw.episode(10.0, 200, 1000)
    >>> tr = read_trace(run / "traces" / "rank-0000.h5")
    >>> tr["attrs"]["role"], tr["trainer"]["stats"]["loss"].tolist(), tr["episodes"]["return"].tolist()
    ('trainer', [0.25], [10.0])
    >>> tr["timings"]["forward"]["seconds"].tolist()
    [0.5]
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from hpcrl._version import __version__
from hpcrl.storage.files import create_exclusive
from hpcrl.storage.tree import StorageError, decode_key, encode_key, text_value

__all__ = ["TraceError", "TraceWriter", "read_trace", "FORMAT", "EPISODE_FIELDS", "EVAL_FIELDS", "SELFPLAY_FIELDS"]

log = logging.getLogger(__name__)

#: value of the root ``@format`` attribute of a trace file.
FORMAT = "hpcrl-trace-1"
#: episode columns and their dtypes.
EPISODE_FIELDS: dict[str, str] = {
    "return": "float64",
    "length": "int64",
    "frames": "int64",
    "wall_time": "float64",
    "policy_version": "int64",
}
_TRAINER_FIELDS = {"step": "int64", "frames": "int64", "wall_time": "float64"}
#: columns of ``/eval`` (one row per evaluation during training) and their dtypes.
EVAL_FIELDS: dict[str, str] = {
    "frames": "int64",
    "wall_time": "float64",
    "policy_version": "int64",
    "policy_version_min": "int64",
    "episodes": "int64",
    "mean_return": "float64",
    "std_return": "float64",
    "mean_length": "float64",
}
#: columns of ``/selfplay`` (one row per finished self-play game) and their dtypes.
SELFPLAY_FIELDS: dict[str, str] = {
    "frames": "int64",
    "wall_time": "float64",
    "learner_version": "int64",
    "opponent_version": "int64",
    "opponent_index": "int64",
    "outcome": "int64",
    "learner_return": "float64",
    "opponent_return": "float64",
}
_NAME_BYTES = 128
_CHUNK_ROWS = 1024
_LIBVER = ("v110", "v110")  # SWMR needs >= v110; upper bound keeps files readable by HDF5 1.10 tools


class TraceError(StorageError):
    """A trace file cannot be written or read (the message names the file)."""


def _reserve(path: Path) -> Path:
    """Create ``path`` (0600, exclusive) or, if it exists, the first free ``<stem>.r<N>.h5`` next to it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    candidate = path
    for n in range(1, 100_000):
        try:
            fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            candidate = path.with_name(f"{path.stem}.r{n}{path.suffix}")
            continue
        os.close(fd)
        if candidate != path:
            log.info("trace %s exists (an earlier attempt of this run); writing %s", path.name, candidate.name)
        return candidate
    raise TraceError(f"trace {path}: no free file name (tried {path.stem}.r1 .. r99999)")


def _append(ds: Any, data: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize((n + data.shape[0], *ds.shape[1:]))
    ds[n : n + data.shape[0]] = data


def _table(group: Any, name: str, dtype: str, tail: tuple[int, ...] = (), fill: float = 0.0) -> Any:
    return group.create_dataset(
        name,
        shape=(0, *tail),
        maxshape=(None, *tail),
        chunks=(_CHUNK_ROWS, *tail),
        dtype=dtype,
        fillvalue=fill,
    )


def _names_table(group: Any, name: str, slots: int) -> Any:
    """``(slots,)`` fixed-width, NUL-terminated UTF-8 names (h5dump shows them without padding)."""
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(_NAME_BYTES)
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    tid.set_cset(h5py.h5t.CSET_UTF8)
    space = h5py.h5s.create_simple((slots,))
    return h5py.Dataset(h5py.h5d.create(group.id, name.encode(), tid, space))


class TraceWriter:
    """Appends one rank's episodes, trainer stats and timing spans to an HDF5 file (SWMR, live-readable).

    The hot-path methods (:meth:`episode`, :meth:`trainer_step`, :meth:`add_time`,
    :meth:`maybe_flush`) only append to in-memory lists/dicts; I/O happens in :meth:`flush`,
    at most every ``flush_seconds`` when driven by :meth:`maybe_flush`.

    Args:
        path: the trace file (``*.h5``), or a run directory: then ``RUN_DIR/traces/rank-NNNN.h5``.
            An existing file is never overwritten: a restarted rank writes ``rank-NNNN.r1.h5``, ...
            (:attr:`path` is the file actually used).
        rank: this process's rank (stored as an attribute).
        role: this rank's role (``trainer``, ``actor``, ``inference``, ``local``).
        flush_seconds: :meth:`maybe_flush` writes at least this often; a crash loses at most this much.
        overflow_slots: width of the tables for stat keys / span names first seen after the first flush.

    Raises:
        TraceError: the file cannot be created.
    """

    def __init__(
        self, path: str | Path, rank: int, role: str, flush_seconds: float = 5.0, overflow_slots: int = 32
    ) -> None:
        p = Path(path)
        if p.suffix != ".h5":
            p = p / "traces" / f"rank-{int(rank):04d}.h5"
        try:
            self.path = _reserve(p)
        except OSError as e:
            raise TraceError(f"trace {p}: cannot create ({e.strerror or e})") from e
        self.rank = int(rank)
        self.role = str(role)
        self.flush_seconds = float(flush_seconds)
        self.overflow_slots = int(overflow_slots)
        self.start_time = time.time()
        self._next_flush = time.monotonic() + self.flush_seconds
        self._episodes: list[tuple[float, int, int, float, int]] = []
        self._trainer: list[tuple[int, int, float, dict[str, float]]] = []
        self._spans: dict[str, list[float]] = {}  # span -> [cumulative seconds, count]
        self._evals: list[dict[str, float]] = []
        self._eval_committed = np.zeros(1, np.int64)
        self._games: list[dict[str, float]] = []
        self._games_committed = np.zeros(1, np.int64)
        self._f: Any = None
        self._ds: dict[str, Any] = {}
        self._stat_ds: dict[str, Any] = {}
        self._span_ds: dict[str, Any] = {}
        self._over_stats: dict[str, int] = {}
        self._over_spans: dict[str, int] = {}
        self._dropped: set[str] = set()
        self._committed = np.zeros(3, np.int64)
        self._closed = False

    # ------------------------------------------------------------------ hot path
    def episode(
        self, ret: float, length: int, frames: int, wall_time: float | None = None, policy_version: int = -1
    ) -> None:
        """Record a finished episode.

        Args:
            ret: the episode return.
            length: its length in steps.
            frames: cumulative environment frames stepped by this rank when it ended (the
                report sums the latest value of every rank to get the run's frames).
            wall_time: ``time.time()`` when it ended (default: now).
            policy_version: the policy version that finished it (-1 = unknown).
        """
        self._episodes.append((ret, length, frames, time.time() if wall_time is None else wall_time, policy_version))

    def trainer_step(self, step: int, frames: int, stats: dict[str, float], wall_time: float | None = None) -> None:
        """Record one trainer step's stats (keys may vary; numbers only).

        Args:
            step: the trainer step number.
            frames: frames consumed by the trainer so far (the run's frames, for the leader).
            stats: stat name -> value (loss, entropy, kl, ...).
            wall_time: ``time.time()`` of the step (default: now).
        """
        self._trainer.append((step, frames, time.time() if wall_time is None else wall_time, dict(stats)))

    def evaluation(self, result: dict[str, Any]) -> None:
        """Record one evaluation during training (a row of ``/eval``).

        Args:
            result: the :data:`EVAL_FIELDS` values (``frames``, ``policy_version``, ``episodes``,
                ``mean_return``, ...); a missing ``wall_time`` is now, other missing values are -1 / NaN.
        """
        row = dict(result)
        row.setdefault("wall_time", time.time())
        self._evals.append(row)

    def selfplay_game(self, row: dict[str, Any]) -> None:
        """Record one finished self-play game (a row of ``/selfplay``; see :data:`SELFPLAY_FIELDS`).

        Args:
            row: the column values; a missing ``wall_time`` is now, other missing values are -1 / NaN.
        """
        row = dict(row)
        row.setdefault("wall_time", time.time())
        self._games.append(row)

    def add_time(self, span: str, seconds: float) -> None:
        """Add ``seconds`` to the timing span ``span`` (cumulative; sampled at every flush)."""
        acc = self._spans.get(span)
        if acc is None:
            self._spans[span] = [seconds, 1]
        else:
            acc[0] += seconds
            acc[1] += 1

    def maybe_flush(self) -> None:
        """Flush if ``flush_seconds`` have passed since the last flush (cheap to call every iteration)."""
        if time.monotonic() >= self._next_flush:
            self.flush()

    # ------------------------------------------------------------------ I/O
    def flush(self) -> None:
        """Write everything recorded since the last flush and make it visible to readers.

        Raises:
            TraceError: the write failed (the buffered records of this interval are lost).
        """
        if self._closed:
            return
        self._next_flush = time.monotonic() + self.flush_seconds
        episodes, self._episodes = self._episodes, []
        trainer, self._trainer = self._trainer, []
        try:
            if self._f is None:
                self._create(trainer)
            self._write_episodes(episodes)
            self._write_trainer(trainer)
            self._write_timings()
            evals, self._evals = self._evals, []
            self._write_evals(evals)
            games, self._games = self._games, []
            self._write_rows("selfplay", SELFPLAY_FIELDS, games, self._games_committed)
            self._f.flush()  # data first ...
            self._ds["committed"][:] = self._committed
            self._ds["eval/committed"][:] = self._eval_committed
            self._ds["selfplay/committed"][:] = self._games_committed
            self._f.flush()  # ... then the row counts readers trust
        except TraceError:
            raise
        except Exception as e:
            raise TraceError(f"trace {self.path}: cannot write ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        """Flush and close the file (idempotent).

        Raises:
            TraceError: the final flush failed (the file is closed anyway).
        """
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            if self._f is not None:
                try:
                    self._f.close()
                finally:
                    self._f = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    def _create(self, pending_trainer: list[tuple[int, int, float, dict[str, float]]]) -> None:
        """Create every dataset, switch to SWMR, and rename the file over the reserved name."""
        stat_keys: dict[str, None] = {}  # ordered set of the keys seen so far
        for _, _, _, stats in pending_trainer:
            for key in stats:
                stat_keys.setdefault(key, None)
        tmp = self.path.with_name(f"{self.path.name}.tmp.{os.getpid()}")
        os.close(create_exclusive(tmp))  # 0600, never through a link planted at the temporary name
        try:
            f = h5py.File(tmp, "w", libver=_LIBVER, locking="best-effort")
        except Exception:
            tmp.unlink(missing_ok=True)
            raise
        try:
            self._populate(f, list(stat_keys))
            f.swmr_mode = True
            os.replace(tmp, self.path)
        except BaseException:
            f.close()
            tmp.unlink(missing_ok=True)
            raise
        self._f = f

    def _populate(self, f: Any, stat_keys: list[str]) -> None:
        for k, v in {
            "@format": np.bytes_(FORMAT),
            "rank": self.rank,
            "role": text_value(self.role),
            "host": text_value(socket.gethostname()),
            "pid": os.getpid(),
            "start_time": self.start_time,
            "flush_seconds": self.flush_seconds,
            "hpcrl_version": text_value(__version__),
        }.items():
            f.attrs[k] = v
        ep = f.create_group("episodes")
        for name, dt in EPISODE_FIELDS.items():
            self._ds[f"episodes/{name}"] = _table(ep, name, dt)
        tr = f.create_group("trainer")
        for name, dt in _TRAINER_FIELDS.items():
            self._ds[f"trainer/{name}"] = _table(tr, name, dt)
        st = tr.create_group("stats")
        for key in stat_keys:
            self._stat_ds[key] = _table(st, encode_key(key), "float64", fill=np.nan)
        tm = f.create_group("timings")
        for span in self._spans:
            ds = _table(tm, encode_key(span), "float64", (3,))
            ds.attrs["columns"] = text_value("wall_time,seconds,count")
            self._span_ds[span] = ds
        ov = f.create_group("overflow")
        s = self.overflow_slots
        self._ds["overflow/trainer_names"] = _names_table(ov, "trainer_names", s)
        self._ds["overflow/timing_names"] = _names_table(ov, "timing_names", s)
        self._ds["overflow/trainer"] = _table(ov, "trainer", "float64", (s,), fill=np.nan)
        self._ds["overflow/timings"] = _table(ov, "timings", "float64", (s, 3))
        self._ds["committed"] = f.create_dataset("committed", data=np.zeros(3, np.int64))
        ev = f.create_group("eval")
        for name, dt in EVAL_FIELDS.items():
            self._ds[f"eval/{name}"] = _table(ev, name, dt, fill=-1 if dt == "int64" else np.nan)
        self._ds["eval/committed"] = ev.create_dataset("committed", data=np.zeros(1, np.int64))
        sp = f.create_group("selfplay")
        for name, dt in SELFPLAY_FIELDS.items():
            self._ds[f"selfplay/{name}"] = _table(sp, name, dt, fill=-1 if dt == "int64" else np.nan)
        self._ds["selfplay/committed"] = sp.create_dataset("committed", data=np.zeros(1, np.int64))

    def _slot(self, name: str, table: dict[str, int], names_key: str, what: str) -> int | None:
        slot = table.get(name)
        if slot is not None:
            return slot
        raw = name.encode("utf-8")
        if len(table) >= self.overflow_slots or len(raw) >= _NAME_BYTES:
            if name not in self._dropped:
                self._dropped.add(name)
                why = "too long" if len(raw) >= _NAME_BYTES else f"all {self.overflow_slots} overflow slots are used"
                log.warning(
                    "trace %s: dropping %s %r first seen after the file was created (%s)", self.path, what, name, why
                )
            return None
        slot = table[name] = len(table)
        self._ds[names_key][slot] = np.bytes_(raw)
        return slot

    def _write_episodes(self, rows: list[tuple[float, int, int, float, int]]) -> None:
        if not rows:
            return
        for i, (name, dt) in enumerate(EPISODE_FIELDS.items()):
            _append(self._ds[f"episodes/{name}"], np.fromiter((r[i] for r in rows), dtype=dt, count=len(rows)))
        self._committed[0] += len(rows)

    def _write_trainer(self, rows: list[tuple[int, int, float, dict[str, float]]]) -> None:
        if not rows:
            return
        n = len(rows)
        for i, (name, dt) in enumerate(_TRAINER_FIELDS.items()):
            _append(self._ds[f"trainer/{name}"], np.fromiter((r[i] for r in rows), dtype=dt, count=n))
        cols = {key: np.full(n, np.nan) for key in self._stat_ds}
        over = np.full((n, self.overflow_slots), np.nan)
        for j, (_, _, _, stats) in enumerate(rows):
            for key, value in stats.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    if key not in self._dropped:
                        self._dropped.add(key)
                        log.warning("trace %s: dropping non-numeric trainer stat %r (%r)", self.path, key, value)
                    continue
                col = cols.get(key)
                if col is not None:
                    col[j] = v
                    continue
                slot = self._slot(key, self._over_stats, "overflow/trainer_names", "trainer stat")
                if slot is not None:
                    over[j, slot] = v
        for key, ds in self._stat_ds.items():
            _append(ds, cols[key])
        _append(self._ds["overflow/trainer"], over)
        self._committed[1] += n

    def _write_evals(self, rows: list[dict[str, float]]) -> None:
        if not rows:
            return
        for name, dt in EVAL_FIELDS.items():
            missing = -1 if dt == "int64" else np.nan
            values = np.array([r.get(name, missing) for r in rows], dtype=dt)
            _append(self._ds[f"eval/{name}"], values)
        self._eval_committed[0] += len(rows)

    def _write_rows(self, group: str, fields: dict[str, str], rows: list[dict[str, Any]], committed: Any) -> None:
        if not rows:
            return
        for name, dt in fields.items():
            missing = -1 if dt == "int64" else np.nan
            _append(self._ds[f"{group}/{name}"], np.array([r.get(name, missing) for r in rows], dtype=dt))
        committed[0] += len(rows)

    def _write_timings(self) -> None:
        now = time.time()
        over = np.zeros((1, self.overflow_slots, 3))
        over[0, :, 0] = now
        for span, (seconds, count) in self._spans.items():
            row = np.array([[now, seconds, count]])
            ds = self._span_ds.get(span)
            if ds is not None:
                _append(ds, row)
                continue
            slot = self._slot(span, self._over_spans, "overflow/timing_names", "timing span")
            if slot is not None:
                over[0, slot] = row[0]
        _append(self._ds["overflow/timings"], over)
        self._committed[2] += 1


# ============================================================== reading
def _names(ds: Any) -> list[str]:
    out = []
    for raw in ds[()]:
        name = bytes(raw).decode("utf-8", "replace")
        if not name:
            break
        out.append(name)
    return out


def _read_trace(f: Any, path: Path) -> dict[str, Any]:
    fmt = f.attrs.get("@format")
    fmt = bytes(fmt).decode() if isinstance(fmt, (bytes, np.bytes_)) else fmt
    if fmt != FORMAT:
        raise TraceError(f"{path}: not an hpcrl trace (root @format is {fmt!r}, expected {FORMAT!r})")
    n_ep, n_tr, n_tm = (int(x) for x in f["committed"][()])
    attrs: dict[str, Any] = {}
    for k, v in f.attrs.items():
        if k.startswith("@"):
            continue
        if isinstance(v, (bytes, np.bytes_)):
            v = bytes(v).decode("utf-8", "replace")
        elif isinstance(v, np.generic):
            v = v.item()
        attrs[k] = v
    episodes = {name: f["episodes"][name][:n_ep] for name in EPISODE_FIELDS}
    trainer: dict[str, Any] = {name: f["trainer"][name][:n_tr] for name in _TRAINER_FIELDS}
    stats = {str(decode_key(name)): ds[:n_tr] for name, ds in f["trainer/stats"].items()}
    over = f["overflow/trainer"][:n_tr]
    for slot, name in enumerate(_names(f["overflow/trainer_names"])):
        stats.setdefault(name, over[:, slot])
    trainer["stats"] = stats
    timings: dict[str, dict[str, np.ndarray]] = {}
    for name, ds in f["timings"].items():
        rows = ds[:n_tm]
        timings[str(decode_key(name))] = {"wall_time": rows[:, 0], "seconds": rows[:, 1], "count": rows[:, 2]}
    over_t = f["overflow/timings"][:n_tm]
    for slot, name in enumerate(_names(f["overflow/timing_names"])):
        rows = over_t[:, slot]
        seen = rows[:, 2] > 0  # rows before the span first appeared carry no data
        first = int(np.argmax(seen)) if seen.any() else len(rows)
        rows = rows[first:]
        timings.setdefault(name, {"wall_time": rows[:, 0], "seconds": rows[:, 1], "count": rows[:, 2]})
    if "eval" in f:
        n_ev = int(f["eval/committed"][0])
        evals = {name: f["eval"][name][:n_ev] for name in EVAL_FIELDS}
    else:  # a trace written before evaluation tables existed
        evals = {name: np.zeros(0, dt) for name, dt in EVAL_FIELDS.items()}
    if "selfplay" in f:
        n_sp = int(f["selfplay/committed"][0])
        games = {name: f["selfplay"][name][:n_sp] for name in SELFPLAY_FIELDS}
    else:  # a trace written before self-play tables existed
        games = {name: np.zeros(0, dt) for name, dt in SELFPLAY_FIELDS.items()}
    return {
        "path": str(path),
        "selfplay": games,
        "attrs": attrs,
        "episodes": episodes,
        "trainer": trainer,
        "timings": timings,
        "eval": evals,
    }


def read_trace(path: str | Path) -> dict[str, Any]:
    """Read a trace file, also while its writer is still appending (SWMR read).

    Args:
        path: a ``rank-NNNN*.h5`` trace.

    Returns:
        ``{"path", "attrs": {rank, role, host, pid, start_time, ...},
        "episodes": {return, length, frames, wall_time, policy_version},
        "trainer": {step, frames, wall_time, "stats": {key: array}},
        "timings": {span: {wall_time, seconds, count}},
        "eval": {frames, wall_time, policy_version, policy_version_min, episodes, mean_return, std_return,
        mean_length}}`` with numpy arrays, clipped to the
        rows the writer has committed.

    Raises:
        TraceError: the file is empty (its writer has not flushed yet), not HDF5, or not a trace.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise TraceError(f"{path}: empty (its writer has not flushed yet)")
        f = h5py.File(path, "r", swmr=True, locking="best-effort")
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"{path}: cannot open trace ({type(e).__name__}: {e})") from e
    try:
        return _read_trace(f, path)
    except TraceError:
        raise
    except Exception as e:
        raise TraceError(f"{path}: cannot read trace ({type(e).__name__}: {e})") from e
    finally:
        f.close()
