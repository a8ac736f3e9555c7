"""HDF5 checkpoints: atomic saves, validated loads, keep-K rotation with fallback, and ``load_policy``.

A checkpoint file holds one tree (see :mod:`hpcrl.storage.tree`) written by the runtime as
``{"policy": policy.get_checkpoint(), "trainer": trainer.get_checkpoint(), "system": {...}}``,
and root attributes (version, frames, time, hpcrl version, the resolved config YAML, ...).
Files are written to ``<name>.tmp.<pid>`` in the same directory, fsynced, renamed into place
with ``os.replace`` and the directory is fsynced: a crash leaves either the old or the new file.

Examples:
    >>> import tempfile, numpy as np
    >>> run = prepare_run_dir(tempfile.mkdtemp())
    >>> mgr = CheckpointManager(run, keep=2)
    >>> for v in (1, 2, 3):
    ...     _ = mgr.save({"w": np.full(3, v, np.float32)}, {"version": v})
    >>> [p.name for p in mgr.list()]
    ['ckpt-000000003.h5', 'ckpt-000000002.h5']
    >>> path, tree, attrs = mgr.latest_valid()
    >>> attrs["version"], tree["w"].tolist()
    (3, [3.0, 3.0, 3.0])
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from hpcrl._version import __version__
from hpcrl.storage.files import make_private_dir
from hpcrl.storage.rundir import RunDirError, lock_held, pid_alive, prepare_run_dir
from hpcrl.storage.tree import CheckpointError, StorageError, read_tree, text_value, write_tree

if TYPE_CHECKING:
    from hpcrl.api.config import ExperimentConfig

__all__ = [
    "find_checkpoint",
    "CheckpointError",
    "StorageError",
    "RunDirError",
    "FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_attrs",
    "CheckpointManager",
    "load_policy",
    "prepare_run_dir",
]

log = logging.getLogger(__name__)

#: value of the root ``@format`` attribute of every hpcrl checkpoint.
FORMAT = "hpcrl-checkpoint-1"
_FORMAT_ATTR = "@format"
_LIBVER = ("v110", "v110")  # v2 object headers (checksummed metadata); readable by HDF5 >= 1.10
_NAME_RE = re.compile(r"ckpt-([0-9]{9,})\.h5")
_TMP_RE = re.compile(r".+\.h5\.tmp\.([0-9]+)")


_Paths = list[Path]  # ``CheckpointManager.list`` shadows the builtin inside the class body


# ============================================================== helpers
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _version_of(path: Path) -> int:
    m = _NAME_RE.fullmatch(path.name)
    return int(m.group(1)) if m else -1


def _attr_value(name: str, value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return np.bool_(value)
    if isinstance(value, (int, np.integer)):
        if not -(2**63) <= int(value) < 2**63:
            raise TypeError(f"checkpoint attribute {name!r}: {value} does not fit int64; store it as a string")
        return np.int64(value)
    if isinstance(value, (float, np.floating)):
        return np.float64(value)
    if isinstance(value, str):
        return text_value(value)
    raise TypeError(
        f"checkpoint attribute {name!r}: expected str, int, float or bool, got {type(value).__name__} "
        "(put structured data in the tree, or json.dumps it)"
    )


def _plain_attr(value: Any) -> Any:
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _user_attrs(f: Any) -> dict[str, Any]:
    return {k: _plain_attr(v) for k, v in f.attrs.items() if not k.startswith("@")}


class _FileSink:
    """A file object over ``fd`` for h5py's file-object driver that absorbs write errors.

    HDF5 writes the file straight to disk through it (no in-memory image). A failed write
    (a full disk, a size limit) is recorded in :attr:`error` and later writes are skipped, so
    HDF5 still closes the file cleanly; the caller then raises. (HDF5 cannot close a file whose
    own writes failed, which poisons every later save in the process and crashes it at exit:
    measured.) Reads past what was written return zeros, as HDF5's sec2 driver does.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pos = 0
        self.size = 0
        self.error: OSError | None = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def write(self, data: Any) -> int:
        n = len(data)
        if self.error is None:
            view, offset = memoryview(data), self.pos
            try:
                while view:
                    done = os.pwrite(self.fd, view, offset)
                    view, offset = view[done:], offset + done
            except OSError as e:
                self.error = e
        self.pos += n
        self.size = max(self.size, self.pos)
        return n

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n < 0 else n
        data = b"" if self.error is not None else os.pread(self.fd, n, self.pos)
        self.pos += n
        return data + bytes(n - len(data))

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as e:
                self.error = e
        self.size = size
        return size

    def flush(self) -> None:
        pass


# ============================================================== save / load
def save_checkpoint(path: str | Path, tree: Mapping[Any, Any], attrs: Mapping[str, Any]) -> Path:
    """Write ``tree`` and ``attrs`` to ``path`` atomically (mode 0600).

    The file is written as ``<path>.tmp.<pid>`` in the same directory, flushed and fsynced,
    renamed over ``path`` with ``os.replace`` and the directory is fsynced. ``hpcrl_version``
    and ``time`` attributes are added when missing.

    Args:
        path: destination file.
        tree: the checkpoint tree (see :mod:`hpcrl.storage.tree` for the supported values).
        attrs: root attributes: str, int (int64), float or bool values; names must not start with ``@``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        CheckpointError: anything went wrong (unwritable directory, disk full, unsupported value
            in the tree); the message names ``path`` and the cause. The temporary file is removed
            and an existing file at ``path`` is left untouched.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    created = False
    try:
        all_attrs: dict[str, Any] = {"hpcrl_version": __version__, "time": time.time(), **dict(attrs)}
        converted = {}
        for k, v in all_attrs.items():
            if not isinstance(k, str) or k.startswith("@"):
                raise TypeError(f"checkpoint attribute name {k!r}: expected a str not starting with '@'")
            converted[k] = _attr_value(k, v)
        # Create the file ourselves: mode 0600 from the first byte, and never follow a planted symlink.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
        try:
            sink = _FileSink(fd)
            with h5py.File(sink, "w", libver=_LIBVER, track_order=True) as f:
                f.attrs[_FORMAT_ATTR] = np.bytes_(FORMAT)
                for k, v in converted.items():
                    f.attrs[k] = v
                write_tree(f, tree)
            if sink.error is not None:
                raise sink.error
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        created = False
        _fsync_dir(path.parent)
    except Exception as e:
        if created:
            try:
                tmp.unlink()
            except OSError as cleanup:
                log.warning("could not remove temporary checkpoint %s: %s", tmp, cleanup)
        raise CheckpointError(f"cannot save checkpoint {path}: {_os_reason(e)}") from e
    except BaseException:
        if created:
            tmp.unlink(missing_ok=True)
        raise
    return path


def _open_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        f = h5py.File(path, "r", locking=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable HDF5 file ({_os_reason(e)})") from e
    try:
        fmt = f.attrs.get(_FORMAT_ATTR)
        fmt = bytes(fmt).decode("utf-8", "replace") if isinstance(fmt, (bytes, np.bytes_)) else fmt
    except Exception as e:
        f.close()
        raise CheckpointError(f"{path}: cannot read the root attributes ({_os_reason(e)})") from e
    if fmt != FORMAT:
        f.close()
        raise CheckpointError(f"{path}: not an hpcrl checkpoint (root {_FORMAT_ATTR} is {fmt!r}, expected {FORMAT!r})")
    return f


def read_checkpoint_attrs(path: str | Path) -> dict[str, Any]:
    """The root attributes of a checkpoint, without reading (or verifying) the tree.

    Raises:
        CheckpointError: the file is missing, not HDF5, or not an hpcrl checkpoint.
    """
    path = Path(path)
    f = _open_checkpoint(path)
    try:
        return _user_attrs(f)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read the root attributes ({_os_reason(e)})") from e
    finally:
        f.close()


def load_checkpoint(path: str | Path) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Every dataset is read, which verifies its fletcher32 checksums; every object is checked
    against its type tag. Nothing is unpickled or evaluated.

    Args:
        path: the ``.h5`` file.

    Returns:
        ``(tree, attrs)``: the tree (tensors restored as ``torch.Tensor``) and the root attributes
        as plain Python values.

    Raises:
        CheckpointError: missing, truncated, bit-flipped, non-HDF5 or crafted files (the message
            names the file and, where known, the dataset).
    """
    path = Path(path)
    f = _open_checkpoint(path)
    try:
        attrs = _user_attrs(f)
        tree = read_tree(f)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read ({_os_reason(e)})") from e
    finally:
        f.close()
    return tree, attrs


# ============================================================== rotation
class CheckpointManager:
    """The checkpoints of one run: ``RUN_DIR/checkpoints/ckpt-<version:09d>.h5``, newest K kept.

    Constructing a manager touches nothing on disk; :meth:`save` creates the directory (0700).
    Call :meth:`sweep_tmp` once at start on the writing rank only, holding the run dir lock.

    Args:
        run_dir: the run directory (the checkpoints live in its ``checkpoints/`` subdirectory).
        keep: how many valid checkpoints to keep (>= 1).
        policy: in a multi-policy run, the policy whose checkpoints these are
            (``RUN_DIR/checkpoints/<policy>/``); ``None`` = the single policy's (``RUN_DIR/checkpoints/``).
        directory: the directory holding the checkpoint files, when it is not one of those (a
            ``RUN_DIR/checkpoints/<policy>`` given to :func:`find_checkpoint`); only for reading.
    """

    def __init__(
        self, run_dir: str | Path, keep: int = 3, policy: str | None = None, directory: str | Path | None = None
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        if policy is not None:
            self.dir = self.dir / policy
        if directory is not None:
            self.dir = Path(directory)
        self.keep = int(keep)

    def path_for(self, version: int) -> Path:
        """The file name used for policy ``version``."""
        return self.dir / f"ckpt-{int(version):09d}.h5"

    def list(self) -> _Paths:
        """Checkpoint files, newest (highest version) first; temporary files are not listed."""
        if not self.dir.is_dir():
            return []
        found = [(_version_of(p), p) for p in self.dir.iterdir() if _NAME_RE.fullmatch(p.name) and p.is_file()]
        return [p for _, p in sorted(found, reverse=True)]

    def sweep_tmp(self) -> _Paths:
        """Remove stale ``*.h5.tmp.<pid>`` files left by interrupted saves (each removal is logged).

        Sweeps only while this process holds the run directory's lock
        (:class:`~hpcrl.storage.rundir.RunDirLock`), so it never removes another run's file; without
        the lock it logs a WARNING and removes nothing. A file whose ``<pid>`` is a live process of this
        host (a writer still at work) is never removed either.

        Returns:
            The removed files.
        """
        removed: _Paths = []
        if not self.dir.is_dir():
            return removed
        if not lock_held(self.run_dir):
            log.warning(
                "not sweeping temporary checkpoints in %s: this process does not hold the run dir lock", self.dir
            )
            return removed
        for p in sorted(self.dir.iterdir()):
            m = _TMP_RE.fullmatch(p.name)
            if m and p.is_file():
                if pid_alive(int(m.group(1))):
                    log.info("kept temporary checkpoint %s: process %s is still running", p, m.group(1))
                    continue
                try:
                    p.unlink()
                except OSError as e:
                    log.warning("could not remove stale temporary checkpoint %s: %s", p, e)
                    continue
                log.warning("removed stale temporary checkpoint %s (left by an interrupted save)", p)
                removed.append(p)
        return removed

    def save(self, tree: Mapping[Any, Any], attrs: Mapping[str, Any]) -> Path:
        """Atomically write a checkpoint for ``attrs["version"]``, then prune to the newest ``keep``.

        Args:
            tree: the checkpoint tree.
            attrs: root attributes; ``version`` (the policy version, an int >= 0) is required.

        Returns:
            The written file.

        Raises:
            CheckpointError: no valid ``version``, or the save failed (older files are untouched).
        """
        path = self.begin(attrs)
        save_checkpoint(path, tree, attrs)
        self.prune(path)
        return path

    def begin(self, attrs: Mapping[str, Any]) -> Path:
        """Check ``attrs["version"]``, create the directory (0700) and return the file to write.

        :meth:`save` is ``begin`` + :func:`save_checkpoint` + :meth:`prune`; a writer elsewhere (the
        checkpoint writer process) does the middle step itself.

        Raises:
            CheckpointError: no valid ``version``, or the directory cannot be created.
        """
        version = attrs.get("version")
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or int(version) < 0:
            raise CheckpointError(f"cannot save a checkpoint in {self.dir}: attrs['version'] must be an int >= 0")
        try:
            make_private_dir(self.dir)
        except OSError as e:
            raise CheckpointError(f"cannot save checkpoint in {self.dir}: {_os_reason(e)}") from e
        path = self.path_for(int(version))
        newest = self.list()
        if newest and _version_of(newest[0]) > int(version):
            log.warning("saving checkpoint version %d below the newest existing one (%s)", version, newest[0])
        return path

    def prune(self, just_saved: Path) -> None:
        """Delete files older than the ``keep``-th newest file that opens as an hpcrl checkpoint.

        Files newer than that (even corrupt ones, kept as evidence) and the file just saved are never deleted.
        """
        valid = 0
        for p in self.list():
            if valid >= self.keep and p != just_saved:
                try:
                    p.unlink()
                    log.debug("pruned old checkpoint %s", p)
                except OSError as e:
                    log.warning("could not remove old checkpoint %s: %s", p, e)
                continue
            try:
                read_checkpoint_attrs(p)
            except CheckpointError:
                continue
            valid += 1

    def latest_valid(self) -> tuple[Path, dict[Any, Any], dict[str, Any]] | None:
        """Load the newest checkpoint that verifies, skipping corrupt ones with a WARNING each.

        Returns:
            ``(path, tree, attrs)``, or ``None`` when there are no checkpoint files at all.

        Raises:
            CheckpointError: checkpoint files exist but none is valid
                (``"N checkpoints in DIR, none valid: ..."``): never a silent fresh start.
        """
        files = self.list()
        reasons = []
        for p in files:
            try:
                tree, attrs = load_checkpoint(p)
            except CheckpointError as e:
                log.warning("checkpoint %s is corrupt, falling back to the previous one: %s", p, e)
                reasons.append(f"{p.name}: {e}")
                continue
            if reasons:
                log.warning("resuming from %s (skipped %d corrupt newer checkpoint(s))", p, len(reasons))
            return p, tree, attrs
        if files:
            raise CheckpointError(
                f"{len(files)} checkpoints in {self.dir}, none valid: "
                + "; ".join(reasons)
                + " (move them aside or set run.fresh to start from scratch)"
            )
        return None


# ============================================================== load_policy
def find_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """Load a checkpoint file, or the newest valid one of a run directory (or its ``checkpoints/``).

    Returns:
        ``(file, tree, attrs)``.

    Raises:
        CheckpointError: no (valid) checkpoint there (names the path).
    """
    p = Path(path)
    if p.is_dir():
        if any(_NAME_RE.fullmatch(c.name) for c in p.iterdir()):  # a directory of checkpoint files
            found = CheckpointManager(p, directory=p).latest_valid()
            if found is not None:
                return found
        is_ckpt_dir = p.name == "checkpoints" and not (p / "checkpoints").is_dir()
        run_dir = p.parent if is_ckpt_dir else p
        found = CheckpointManager(run_dir).latest_valid()
        if found is None:
            where = run_dir / "checkpoints"
            policies = sorted(c.name for c in where.iterdir() if c.is_dir()) if where.is_dir() else []
            if policies:
                raise CheckpointError(
                    f"no checkpoints in {where}: it is a multi-policy run; give the checkpoints of one policy, "
                    f"{where}/<policy> (policies: {', '.join(policies)})"
                )
            raise CheckpointError(f"no checkpoints in {where}")
        return found
    tree, attrs = load_checkpoint(p)
    return p, tree, attrs


def load_policy(
    path: str | Path,
    device: str = "cpu",
    *,
    config: ExperimentConfig | str | Path | None = None,
    trust_config: bool = False,
) -> Any:
    """Rebuild a trained policy from a checkpoint file or a run directory (its newest valid checkpoint).

    By default the policy is built from the resolved config stored in the checkpoint's ``config``
    attribute, but only if its ``policy.type_`` is registered in this process (the built-ins, or a
    policy the caller's code registered before this call) and its ``policy.args`` name no
    ``"module:attribute"``; nothing the file names is imported or called otherwise (see
    :mod:`hpcrl.storage.stored_config`). The weights are restored with
    ``policy.load_checkpoint(tree["policy"])``.

    Args:
        path: an ``.h5`` checkpoint, a run directory, or its ``checkpoints/`` directory.
        device: where to move the policy (if it supports ``to(device)``).
        config: build the policy from this config instead (an ``ExperimentConfig`` or a YAML file);
            its ``experiment.imports`` are imported.
        trust_config: build the policy the stored config names, importing its ``experiment.imports``
            (only for checkpoints whose writer you trust).

    Returns:
        The policy with its weights and version.

    Raises:
        UntrustedConfigError: (a ``CheckpointError``) the stored config names a policy that is not registered
            here, or a ``"module:attribute"`` argument; the message names the entry and both ways to proceed.
        CheckpointError: no (valid) checkpoint, or it lacks the config/policy (names the file).
    """
    from hpcrl.api import policy as policy_mod
    from hpcrl.storage.stored_config import loading_config

    file, tree, attrs = find_checkpoint(path)
    if "policy" not in tree or not isinstance(tree["policy"], dict):
        raise CheckpointError(f"{file}: no /policy group in the checkpoint tree (found {sorted(map(str, tree))})")
    cfg = loading_config(file, attrs, config=config, trust_config=trust_config)
    policy = policy_mod.make(cfg.single_policy)
    policy.load_checkpoint(tree["policy"])
    to = getattr(policy, "to", None)
    if callable(to):
        to(device)
    log.info("loaded policy %r version %s from %s", cfg.single_policy.type_, attrs.get("version"), file)
    return policy
