"""Safe file access: regular files only, no symbolic links out of a library, atomic writes.

- :func:`open_regular` opens a file for reading without blocking (a FIFO would hang a plain
  ``open``) and refuses anything that is not a regular file once opened (``/dev/zero``, a FIFO, a
  folder): the check is made on the opened descriptor, so the file cannot be swapped in between.
- :func:`check_library_entry` refuses a library file (catalog, lock, vector cache, probes folder)
  that is a symbolic link or of the wrong type: following one would read or write outside the
  library folder.
- :func:`atomic_write`: a reader sees the old file or the new one, never a mix. Written to a
  temporary file in the same folder, flushed to disk, then renamed over the target; an exception
  (disk full included) removes the temporary file and leaves the old one. The new file gets the
  user's default permissions (``mkstemp`` alone would make it private).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from .errors import LibraryFileError, LibraryReadOnlyError, disk_full_error, is_disk_full

_UMASK = os.umask(0)
os.umask(_UMASK)

O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_BINARY = getattr(os, "O_BINARY", 0)


class NotRegularFileError(OSError):
    """A path that is not a regular file (a device, a FIFO, a folder, a socket)."""

    def __init__(self, path: str, mode: int):
        self.kind = describe_mode(mode)
        super().__init__(errno.EINVAL, f"not a regular file: {self.kind}", path)


def describe_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def open_regular(path: str, follow_symlinks: bool = True) -> int:
    """A read-only descriptor of the regular file ``path``; raises :class:`OSError` otherwise.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer;
    ``follow_symlinks=False`` adds ``O_NOFOLLOW`` (a symbolic link fails with ``ELOOP``).
    """
    flags = os.O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_BINARY | (0 if follow_symlinks else O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_derived(path: str, error: type[Exception]) -> int:
    """:func:`open_regular` for a library's derived files (``vectors.faiss``, ``vectors.f16``):
    a symbolic link is not followed, and any failure is one ``error`` saying what was wrong."""
    try:
        return open_regular(path, follow_symlinks=False)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{path} is a symbolic link, not followed") from None
        raise error(f"cannot read {path}: {e.strerror or e}") from None


def check_library_entry(path: str, want: str = "file") -> bool:
    """Whether the library entry ``path`` exists; raises :class:`LibraryFileError` if it is a
    symbolic link or not a regular file (``want="file"``) / folder (``want="dir"``)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise LibraryFileError(f"The library file {path} cannot be checked ({e.strerror or e}).") from None
    if stat.S_ISLNK(st.st_mode):
        raise LibraryFileError(
            f"The library file {path} is a symbolic link. clipdesk does not follow links out of a "
            "library folder (it could read or overwrite another file); remove the link.")
    ok = stat.S_ISDIR(st.st_mode) if want == "dir" else stat.S_ISREG(st.st_mode)
    if not ok:
        raise LibraryFileError(
            f"The library file {path} is {describe_mode(st.st_mode)}, not a "
            f"{'folder' if want == 'dir' else 'regular file'}; move it out of the library folder.")
    return True


def folder_writable(folder: str) -> bool:
    """Whether new files can be created in ``folder`` (false on a read-only mount, even for root)."""
    return os.access(folder, os.W_OK)


def is_read_only_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)


def atomic_write(path: str, write: Callable[[BinaryIO], None], size: int | None = None) -> None:
    """Write ``path`` atomically through ``write(file)``; ``size``: the bytes it will take, when
    known (a full disk's message then says how much space was needed)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        # mkstemp creates with O_EXCL, which never follows a symbolic link planted at the name.
        # (the name cut to 100 characters: a 255-byte name plus the temporary suffix is too long)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)[:100]}-", suffix=".tmp", dir=folder)
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(folder, f"write {os.path.basename(path)}", size) from None
        if is_read_only_error(e):
            raise LibraryReadOnlyError(f"Cannot write {path}: the folder is read-only ({e.strerror}).") from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        # os.replace renames over the name itself: a symbolic link there is replaced, not followed.
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_disk_full(e):
            raise disk_full_error(folder, f"write {os.path.basename(path)}", size) from None
        raise
