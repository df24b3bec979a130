"""The writer lock of a library: one process writes at a time, any number read.

An advisory lock on ``FOLDER/lock`` held for the writer's lifetime. The operating system
releases it when the process dies (kill -9 included), so a crash never leaves a stale lock.
"""
from __future__ import annotations

import os

from .errors import LibraryLockedError

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
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
        os.pwrite(fd, str(os.getpid()).encode(), 0)
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
