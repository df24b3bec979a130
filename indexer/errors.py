"""Typed errors for failures a user can cause or fix (bad files, locked or damaged libraries).

The CLI turns each into a one-line message and exit code 1; the GUI shows it in one place.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import tempfile


class ClipdeskError(Exception):
    """Base of every error clipdesk reports to the user as a message rather than a bug."""


class UnreadableImageError(ClipdeskError):
    """An image file that cannot be decoded; ``reason`` is meant for a person."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LibraryLockedError(ClipdeskError):
    """Another process holds the library's writer lock."""


class CatalogCorruptError(ClipdeskError):
    """The catalog database cannot be read; ``clipdesk repair`` may salvage it."""


class SchemaVersionError(ClipdeskError):
    """The catalog was written by a newer clipdesk and must not be downgraded."""


class LibraryNotFoundError(ClipdeskError):
    """No library exists at the given folder (and creating one was not asked for)."""


class LibraryReadOnlyError(ClipdeskError):
    """A change was asked of a library on read-only storage (reading it works)."""


class LibraryFileError(ClipdeskError):
    """A library file is a symbolic link or of the wrong type, so it is not opened."""


class FolderNotInLibraryError(ClipdeskError):
    """A folder operation named a folder that is not one of the library's folders."""


class DiskFullError(ClipdeskError):
    """The disk (or the user's quota) holding the library, or a folder clipdesk writes beside the
    photos, is full. What was committed before is intact, and the same command run again once
    space is freed resumes where it stopped. ``folder``: where the write failed; ``needed``: the
    bytes the write needed, when known."""

    def __init__(self, message: str, folder: str | None = None, needed: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.needed = needed


# "No space left on device" and "Disk quota exceeded": to the person, both mean "free some space".
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13
_SQLITE_IOERR = 10
# An SQLite I/O error in a folder with less free space than this is taken for a full disk: SQLite
# needs a few pages of WAL and 32 KB of shared memory index to open, write or even read a catalog.
_SPACE_MARGIN = 1 << 20


def is_disk_full(e: BaseException, folder: str | None = None) -> bool:
    """Whether an exception means the disk is full: ENOSPC or EDQUOT, SQLite's SQLITE_FULL, or
    (given the ``folder`` written to) SQLite's "disk I/O error" in a folder with (almost) no
    space left. SQLite reports a full disk as an I/O error when it fails to grow its WAL or its
    shared-memory file, so its own code alone cannot tell a full disk from a damaged one."""
    if isinstance(e, DiskFullError):
        return True
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == _SQLITE_FULL or "disk is full" in str(e):
            return True
        io_error = (code is not None and code & 0xFF == _SQLITE_IOERR) or "disk I/O error" in str(e)
        return io_error and folder is not None and space_short(folder)
    return isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS


def free_space(folder: str) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def space_short(folder: str, need: int = _SPACE_MARGIN) -> bool:
    """Whether ``need`` bytes cannot be written in ``folder``: too little free space on its file
    system, or (quotas do not show in the free space) a trial allocation refused with ENOSPC or
    EDQUOT. The trial file is removed at once."""
    free = free_space(folder)
    if free is not None and free < need:
        return True
    if not hasattr(os, "posix_fallocate"):
        return False
    try:
        fd, tmp = tempfile.mkstemp(prefix=".clipdesk-space-", dir=folder)
    except OSError as e:
        return e.errno in DISK_FULL_ERRNOS
    try:
        os.posix_fallocate(fd, 0, need)
    except OSError as e:
        return e.errno in DISK_FULL_ERRNOS
    finally:
        os.close(fd)
        os.unlink(tmp)
    return False


def format_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def disk_full_error(folder: str, what: str, needed: int | None = None, after: str | None = None) -> DiskFullError:
    """The one message for a full disk: the folder, what could not be written, the space it needed
    when known (and what is free), and what to do. ``after``: what happens to the work so far."""
    existing = folder
    while existing and not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)  # a library not created yet: its parent's disk
    free = free_space(existing)
    space = ""
    if needed:
        space = f"; it needs about {format_size(needed)}" + (f" ({format_size(free)} free)" if free is not None else "")
    elif free is not None:
        space = f" ({format_size(free)} free)"
    after = after or "What was saved before is intact; free some space and try again."
    return DiskFullError(f"The disk holding {folder} is full: cannot {what}{space}. {after}", folder, needed)
