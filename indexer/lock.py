"""The writer lock of a library: one process writes at a time, any number read.

An advisory lock on ``FOLDER/lock`` held for the writer's lifetime. The operating system
releases it when the process dies (kill -9 included), so a crash never leaves a stale lock.
"""
from __future__ import annotations

import errno
import os
import stat

from .errors import LibraryFileError, LibraryLockedError, LibraryReadOnlyError, disk_full_error, is_disk_full
from .files import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, check_library_entry, is_read_only_error

if os.name == "nt":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False


class LibraryLock:
    """Exclusive writer lock; raises :class:`LibraryLockedError` naming the holder's PID."""

    FILENAME = "lock"

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, self.FILENAME)
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        # Never through a symbolic link (it would truncate its target and write a PID into it),
        # never a FIFO or device (O_NONBLOCK: opening one must not wait).
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP or os.path.islink(self.path):
                check_library_entry(self.path)  # raises the clear "is a symbolic link" error
            if is_disk_full(e):
                raise disk_full_error(self.folder, "create the library's lock file") from None
            if is_read_only_error(e):
                raise LibraryReadOnlyError(
                    f"The library {self.folder} is read-only (read-only storage or permissions): "
                    "searching works, but indexing and other changes need write access.") from None
            raise
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            check_library_entry(self.path)
            raise LibraryFileError(f"The library's lock {self.path} is not a regular file.")
        if not _try_lock(fd):
            try:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise LibraryLockedError(
                f"The library {self.folder} is in use by PID {holder} (another clipdesk is "
                "indexing or editing it). Wait for it to finish, or close the other window."
            )
        os.ftruncate(fd, 0)
        try:
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError as e:  # the lock is held all the same; only its holder's PID goes unsaid
            if not is_disk_full(e):
                os.close(fd)
                raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> LibraryLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
