"""Atomic file writes: a reader sees the old file or the new one, never a mix.

Written to a temporary file in the same folder, flushed to disk, then renamed over the target;
an exception (disk full included) removes the temporary file and leaves the old one. The new file
gets the user's default permissions (``mkstemp`` alone would make it private).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from .errors import DiskFullError, is_disk_full

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if is_disk_full(e):
            raise DiskFullError(f"The disk is full: cannot write {path}. Free some space and try again.") from None
        raise
