"""Private files: created 0600 (directories 0700), written atomically, never through a planted symlink.

On a shared cluster another user may be able to place a symlink (or a FIFO) where hpcrl is about to
write, hoping it writes through it into a file of theirs or of yours. Everything here opens with
``O_NOFOLLOW``; new files are created with ``O_EXCL`` (which also never follows a link) and mode 0600
from the first byte, so the umask never makes them world-readable.

Examples:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_file_atomic(d / "a.txt", b"hello")
    >>> append_private(d / "log", "one "); append_private(d / "log", "two")
    >>> (d / "a.txt").read_text(), (d / "log").read_text(), oct((d / "log").stat().st_mode & 0o777)
    ('hello', 'one two', '0o600')
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = ["append_private", "create_exclusive", "make_private_dir", "write_file_atomic"]


def create_exclusive(path: str | Path, mode: int = 0o600) -> int:
    """Create ``path`` for writing (``O_CREAT | O_EXCL | O_NOFOLLOW``, ``mode``); returns the fd.

    For temporary names that embed the writer's pid: an entry already there is left over from a dead
    process with the same pid (or planted); it is unlinked (a link itself, never its target) and the
    create tried once more.

    Raises:
        OSError: the file cannot be created (``FileExistsError`` if the name is taken again at once).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, mode)
    except FileExistsError:
        os.unlink(path)
        return os.open(path, flags, mode)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically.

    ``<name>.tmp.<pid>`` is created exclusively with ``mode`` (see :func:`create_exclusive`), written,
    fsynced and renamed over ``path`` with ``os.replace`` (which replaces a symlink at ``path``, never
    its target); then the directory is fsynced.

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    fd = create_exclusive(tmp, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def append_private(path: str | Path, text: str) -> None:
    """Append ``text`` to the regular file ``path``, creating it with mode 0600; never through a symlink.

    Opened with ``O_APPEND | O_CREAT | O_NOFOLLOW`` (a symlink at ``path`` fails with ``ELOOP``) and
    ``O_NONBLOCK`` (a FIFO without a reader fails instead of blocking); anything but a regular file is
    refused. An existing file keeps its mode.

    Raises:
        OSError: the file cannot be opened or written, or is not a regular file.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(path, flags, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        view = memoryview(text.encode("utf-8", "replace"))
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def make_private_dir(path: str | Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700; an existing directory keeps its mode.

    Raises:
        OSError: a component cannot be created, or ``path`` exists and is not a directory.
    """
    path = Path(path)
    missing = []
    p = path
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            if not p.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", str(p)) from None
    return path
