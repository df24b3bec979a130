"""Typed errors for failures a user can cause or fix (bad files, locked or damaged libraries).

The CLI turns each into a one-line message and exit code 1; the GUI shows it in one place.
"""
from __future__ import annotations

import errno
import sqlite3


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
    """The disk holding the library filled up; what was committed before is intact."""


def is_disk_full(e: BaseException) -> bool:
    """Whether an exception means the disk is full (SQLITE_FULL or ENOSPC)."""
    if isinstance(e, sqlite3.OperationalError):
        return "disk is full" in str(e)
    return isinstance(e, OSError) and e.errno == errno.ENOSPC
