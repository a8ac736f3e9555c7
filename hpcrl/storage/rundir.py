"""The run directory: private creation, one owner, and an exclusive lock for the life of a run.

Only one run may write a run directory at a time. The run's leader (the one process of a local run,
rank 0 of an MPI job) takes :class:`RunDirLock` on ``RUN_DIR/.lock`` before it touches anything else
in the directory and keeps it until the run ends; a second start fails at once with
:class:`RunDirInUse` naming the holder's host and pid.

* Where the filesystem supports ``flock`` the lock is an exclusive ``flock`` on ``.lock`` (opened with
  ``O_NOFOLLOW``, mode 0600) held through an open file descriptor. The kernel (or the NFS lock
  manager) drops it when the holder dies, even by ``SIGKILL``; the next start takes it over, logging
  a WARNING that names the run that ended without releasing it.
* Where ``flock`` fails with ``ENOLCK``, ``EOPNOTSUPP`` or ``ENOSYS`` (NFS without a lock manager, some
  FUSE filesystems) the lock is the existence of ``.lock`` itself, created with ``O_CREAT | O_EXCL``.
  A lock file of a dead process on this host is taken over with a WARNING; one of another host cannot
  be checked from here and is refused (the message says how to remove it if that run is gone).

``.lock`` holds one JSON line describing the holder (host, pid, start time): data for messages only.
The holder removes it when it releases the lock (normal end, exception, ``atexit``, the MPI abort hook).

Examples:
    >>> import tempfile
    >>> run = prepare_run_dir(tempfile.mkdtemp())
    >>> with RunDirLock.acquire(run) as lock:
    ...     lock_held(run), (run / ".lock").exists()
    (True, True)
    >>> lock_held(run), (run / ".lock").exists()
    (False, False)
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import json
import logging
import os
import socket
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from hpcrl.storage.files import make_private_dir
from hpcrl.storage.tree import StorageError

__all__ = [
    "LOCK_NAME",
    "Holder",
    "RunDirError",
    "RunDirInUse",
    "RunDirLock",
    "check_owner",
    "lock_held",
    "make_run_dir",
    "pid_alive",
    "prepare_run_dir",
    "release_all",
]

log = logging.getLogger(__name__)

#: name of the lock file inside the run directory.
LOCK_NAME = ".lock"
#: errors of ``flock`` that mean "this filesystem has no locks" (use the lock-file fallback).
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS})
_RECORD_BYTES = 4096


class RunDirError(StorageError):
    """The run directory cannot be used: not writable, owned by another user (the message names the path)."""


# ============================================================== creation and ownership
def _os_reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno is not None:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror or e}"
    return f"{type(e).__name__}: {e}"


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_owner(path: str | Path, what: str = "run dir") -> None:
    """Refuse ``path`` if it exists and belongs to another user than this process's effective user.

    A run's files are private (0700 directories, 0600 files): a directory of another user is either
    someone else's run or a mistake in ``run.dir``, and writing into it (possible for root) would
    leave files its owner cannot manage.

    Raises:
        RunDirError: ``run dir X belongs to user A (uid N), not to B (uid M): ...``.
    """
    path = Path(path)
    try:
        st = path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return  # creating it reports what is wrong
    except OSError as e:
        raise RunDirError(f"{what} {path} cannot be checked: {_os_reason(e)}") from e
    me = os.geteuid()
    if st.st_uid != me:
        raise RunDirError(
            f"{what} {path} belongs to user {_user(st.st_uid)}, not to {_user(me)}, who runs this job: "
            f"use a run.dir of your own, or have its owner move it aside or hand it over (chown)"
        )


def make_run_dir(path: str | Path) -> Path:
    """Create the run directory itself (0700) if missing and check it is this user's; nothing inside it.

    Raises:
        RunDirError: it cannot be created, or belongs to another user.
    """
    path = Path(path)
    check_owner(path)
    try:
        make_private_dir(path)
    except OSError as e:
        raise RunDirError(f"run dir {path} is not writable: {_os_reason(e)}") from e
    check_owner(path)  # created by someone else between the check and mkdir
    return path


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run directory (0700) with ``checkpoints/`` and ``traces/`` and check it is writable.

    Directories created here get mode 0700; existing ones keep their mode. The run directory and
    existing subdirectories must belong to this process's user.

    Args:
        path: the run directory.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        RunDirError: it cannot be created or written (``run dir X is not writable: <OS error>``), or
            it or one of its subdirectories belongs to another user.
    """
    path = make_run_dir(path)
    try:
        for sub in ("checkpoints", "traces"):
            check_owner(path / sub, f"the {sub} directory")
            make_private_dir(path / sub)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"run dir {path} is not writable: {_os_reason(e)}") from e
    return path


# ============================================================== processes
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[0].decode(), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid: int, proc_start: int | None = None) -> bool:
    """Whether process ``pid`` of this host is alive (a zombie, or a reused pid, counts as dead).

    Args:
        pid: the process id.
        proc_start: its start time as recorded by :class:`Holder` (clock ticks since boot); a live
            process with another start time has reused the pid.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state == "Z":
        return False
    return proc_start is None or start == proc_start


# ============================================================== the lock record
@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a run directory's lock, as written in ``.lock``."""

    host: str
    """Host name of the holder."""
    pid: int
    """Its process id on that host."""
    since: float
    """When it took the lock (seconds since the epoch)."""
    mode: str
    """``flock`` or ``file`` (the lock-file fallback)."""
    proc_start: int | None = None
    """Its start time in clock ticks since boot (tells a reused pid apart), where known."""

    @classmethod
    def me(cls, mode: str) -> Holder:
        """This process."""
        stat = _proc_stat(os.getpid())
        return cls(socket.gethostname(), os.getpid(), time.time(), mode, stat[1] if stat else None)

    def describe(self) -> str:
        """``pid P on host H (since 2026-12-05 13:22:16)``."""
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"pid {self.pid} on host {self.host} (since {since})"

    def encode(self) -> bytes:
        """The JSON line written to ``.lock``."""
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    @classmethod
    def decode(cls, raw: bytes) -> Holder | None:
        """Parse a ``.lock`` record (data only); None if empty or not a record."""
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(d, dict):
            return None
        host, pid, since, mode, start = (d.get(k) for k in ("host", "pid", "since", "mode", "proc_start"))
        if not isinstance(host, str) or type(pid) is not int or mode not in ("flock", "file"):
            return None
        if not isinstance(since, (int, float)) or isinstance(since, bool):
            return None
        return cls(host, pid, float(since), str(mode), start if type(start) is int else None)

    def is_stale_here(self) -> bool:
        """Whether this holder was a process of this host that is no longer alive."""
        return self.host == socket.gethostname() and not pid_alive(self.pid, self.proc_start)


class RunDirInUse(RunDirError):
    """Another run holds the run directory's lock.

    Args:
        run_dir: the run directory.
        holder: who holds it (None when the lock file cannot be read).
        remove_hint: add how to remove a fallback lock file the holder of which cannot be checked.
    """

    def __init__(self, run_dir: Path, holder: Holder | None, remove_hint: bool = False) -> None:
        self.run_dir = run_dir
        self.holder = holder
        who = holder.describe() if holder is not None else "another process (its lock file cannot be read)"
        msg = f"run dir {run_dir} is in use by {who}: wait for it, stop it, or use another run.dir"
        if remove_hint:
            msg += f" (if that run is known to be gone, remove {run_dir / LOCK_NAME})"
        super().__init__(msg)


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, _RECORD_BYTES, 0)


def _read_path(path: Path) -> tuple[bytes, int] | None:
    """(content, inode) of the lock file, or None if it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _read_fd(fd), os.fstat(fd).st_ino
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _write_record(fd: int, holder: Holder) -> None:
    data = holder.encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)


def _open_lock_file(path: Path, flags: int) -> int:
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RunDirError(f"{path} is a symbolic link: refusing to use it as the run dir lock") from e
        if isinstance(e, FileExistsError):
            raise
        raise RunDirError(f"run dir {path.parent} is not writable (lock file {path.name}): {_os_reason(e)}") from e


# ============================================================== the lock
_HELD: dict[Path, RunDirLock] = {}


def _key(run_dir: Path) -> Path:
    return Path(os.path.realpath(run_dir))


class RunDirLock:
    """The exclusive lock of one run directory, held by this process until :meth:`release`.

    Take it with :meth:`acquire`; it is released by :meth:`release`, at interpreter exit and (for the
    ``flock`` kind) by the kernel when the process dies. A forked child does not inherit it.
    """

    def __init__(self, run_dir: Path, fd: int | None, holder: Holder, inode: int) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.holder = holder
        self._fd = fd
        self._inode = inode

    @property
    def mode(self) -> str:
        """``flock`` or ``file``."""
        return self.holder.mode

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunDirLock:
        """Lock ``run_dir`` (which must exist) for this process, or fail at once.

        Raises:
            RunDirInUse: another live run holds it (the message names its host, pid and start time).
            RunDirError: the lock file cannot be created (names the path and the OS error).
        """
        run_dir = Path(run_dir)
        held = _HELD.get(_key(run_dir))
        if held is not None:
            raise RunDirInUse(run_dir, held.holder)
        path = run_dir / LOCK_NAME
        for _ in range(20):
            created = True
            try:
                fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                created = False
                try:
                    fd = _open_lock_file(path, os.O_RDWR)
                except FileExistsError:  # pragma: no cover - O_EXCL is not set here
                    continue
                except RunDirError as e:
                    if isinstance(e.__cause__, FileNotFoundError):
                        continue  # released between the two opens
                    raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = Holder.decode(_read_fd(fd))
                same = _same_file(fd, path)
                if e.errno in _NO_FLOCK and created and same:
                    os.unlink(path)  # the fallback creates it again, with its record
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    if not same:
                        continue  # its holder is releasing it right now
                    raise RunDirInUse(run_dir, holder) from None
                if e.errno in _NO_FLOCK:
                    log.debug("run dir %s: flock is not supported here (%s); using a lock file", run_dir, e)
                    return cls._acquire_file(run_dir)
                raise RunDirError(f"cannot lock run dir {run_dir} ({path}): {_os_reason(e)}") from e
            if not _same_file(fd, path):  # a holder removed it while releasing: lock the new file
                os.close(fd)
                continue
            try:
                return cls._take_flock(run_dir, fd)
            except BaseException:
                os.close(fd)
                raise
        raise RunDirError(f"cannot lock run dir {run_dir}: {path} kept changing (other processes starting?)")

    @classmethod
    def _take_flock(cls, run_dir: Path, fd: int) -> RunDirLock:
        """We hold the ``flock`` on ``fd``; check what the file says about a previous holder and claim it."""
        previous = Holder.decode(_read_fd(fd))
        if previous is not None and previous.mode == "file":
            # a lock file of a host without flock: its holder cannot see our flock, so obey its file
            if previous.host != socket.gethostname():
                raise RunDirInUse(run_dir, previous, remove_hint=True)
            if not previous.is_stale_here():
                raise RunDirInUse(run_dir, previous)
        if previous is not None:
            log.warning(
                "run dir %s: taking over the lock left by %s, which ended without releasing it",
                run_dir,
                previous.describe(),
            )
        me = Holder.me("flock")
        try:
            _write_record(fd, me)
        except OSError as e:
            raise RunDirError(f"run dir {run_dir} is not writable (lock file {LOCK_NAME}): {_os_reason(e)}") from e
        lock = cls(run_dir, fd, me, os.fstat(fd).st_ino)
        _HELD[_key(run_dir)] = lock
        log.debug("locked run dir %s (flock)", run_dir)
        return lock

    @classmethod
    def _acquire_file(cls, run_dir: Path) -> RunDirLock:
        """The fallback without ``flock``: the lock is the existence of ``.lock`` (``O_CREAT | O_EXCL``)."""
        path = run_dir / LOCK_NAME
        me = Holder.me("file")
        for _ in range(20):
            try:
                fd = _open_lock_file(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                pass
            else:
                try:
                    _write_record(fd, me)
                    inode = os.fstat(fd).st_ino
                except OSError as e:
                    os.close(fd)
                    path.unlink(missing_ok=True)
                    raise RunDirError(f"run dir {run_dir} is not writable (lock file): {_os_reason(e)}") from e
                os.close(fd)
                lock = cls(run_dir, None, me, inode)
                _HELD[_key(run_dir)] = lock
                log.debug("locked run dir %s (lock file; the filesystem has no flock)", run_dir)
                return lock
            found = _read_path(path)
            for _wait in range(10):  # a holder creates the file, then writes its record
                if found is None or found[0]:
                    break
                time.sleep(0.05)
                found = _read_path(path)
            if found is None:
                continue  # released meanwhile
            raw, inode = found
            holder = Holder.decode(raw)
            if holder is None:
                raise RunDirInUse(run_dir, None, remove_hint=True)
            if holder.host != me.host:
                raise RunDirInUse(run_dir, holder, remove_hint=True)
            if not holder.is_stale_here():
                raise RunDirInUse(run_dir, holder)
            # stale: move it aside, but only the very file judged stale (another start may replace it)
            aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if os.stat(aside, follow_symlinks=False).st_ino != inode:
                try:
                    os.link(aside, path)  # a new holder's file: put it back
                except FileExistsError:
                    pass
                os.unlink(aside)
                continue
            os.unlink(aside)
            log.warning(
                "run dir %s: taking over the lock file left by %s, which is no longer running",
                run_dir,
                holder.describe(),
            )
        raise RunDirError(f"cannot lock run dir {run_dir}: {path} kept changing (other processes starting?)")

    def release(self) -> None:
        """Remove the lock file (if it is still this lock's) and release the lock; idempotent."""
        if _HELD.get(_key(self.run_dir)) is self:
            del _HELD[_key(self.run_dir)]
        fd, self._fd = self._fd, None
        try:
            if fd is not None:  # flock: remove the file while still holding it, then drop the lock
                if _same_file(fd, self.path):
                    self.path.unlink()
                os.close(fd)
            elif self._inode:
                found = _read_path(self.path)
                if found is not None and found[1] == self._inode and Holder.decode(found[0]) == self.holder:
                    self.path.unlink()
        except OSError as e:
            log.warning("run dir %s: could not remove the lock file %s: %s", self.run_dir, self.path, e)
        finally:
            self._inode = 0

    def _forget(self) -> None:
        """In a forked child: drop the inherited descriptor (the parent keeps the lock)."""
        fd, self._fd = self._fd, None
        self._inode = 0
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunDirLock({str(self.run_dir)!r}, mode={self.mode!r}, held={self._inode != 0})"


def lock_held(run_dir: str | Path) -> bool:
    """Whether this process holds the lock of ``run_dir``."""
    return _key(Path(run_dir)) in _HELD


def release_all() -> None:
    """Release every run dir lock this process holds (at exit, and before an MPI abort)."""
    for lock in list(_HELD.values()):
        lock.release()


def _after_fork_in_child() -> None:
    for lock in list(_HELD.values()):
        lock._forget()
    _HELD.clear()


atexit.register(release_all)
os.register_at_fork(after_in_child=_after_fork_in_child)
