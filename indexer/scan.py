"""Recursive folder scanning: which image files exist now, with their size and modification time.

Hidden folders (a leading dot) are skipped, extensions match case-insensitively, symbolic links
to folders are followed once (a link loop or a second link to the same folder is not descended
twice), and a folder that cannot be read is reported rather than aborting the scan.

A folder holding a clipdesk library (its ``catalog.sqlite``), and the folders given in
``exclude`` (the library being indexed), are never descended: a library's thumbnails are not
photos. Roots that lie inside another root are scanned once, as part of the outer root.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .decode import supported_extensions
from .exif import sane_timestamp

CATALOG_NAME = "catalog.sqlite"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def is_library_folder(folder: str) -> bool:
    """Whether ``folder`` holds a clipdesk library: a SQLite ``catalog.sqlite`` beside a ``lock``
    file, or one with a catalog's tables (another program's ``catalog.sqlite`` is not one)."""
    path = os.path.join(folder, CATALOG_NAME)
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            if f.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                return False
    except OSError:
        return False
    if os.path.lexists(os.path.join(folder, "lock")):
        return True
    try:  # immutable: reads the file as it is, creates no side files in someone else's folder
        conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro&immutable=1", uri=True)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return {"images", "label_members", "tombstones"} <= tables


def outermost(roots: Iterable[str]) -> list[str]:
    """The roots that are not inside another root (by path), in their first-seen order."""
    roots = list(dict.fromkeys(roots))
    return [r for r in roots if not any(o != r and is_inside(r, o) for o in roots)]


def canonical_path(path: str) -> str:
    """A path with symbolic links resolved, except the last component of a file (the scanner
    records a linked photo under the link's own name). Folders resolve entirely."""
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def is_inside(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (by path; no file system access)."""
    folder = folder.rstrip(os.sep) or os.sep
    return path == folder or path.startswith(folder if folder.endswith(os.sep) else folder + os.sep)


_INT64 = 1 << 64


def fold_int64(value: int) -> int:
    """An integer folded into a signed 64-bit one (what SQLite stores).

    Used for modification times in nanoseconds, which only tell "changed since the last scan": a
    time outside the 64-bit range (after the year 2262 or before 1677, which file systems do
    return) wraps around instead of failing. Inode numbers (unsigned) likewise.
    """
    return (int(value) + (1 << 63)) % _INT64 - (1 << 63)


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute, normalised, symbolic links in the path kept as the user sees them
    size: int
    mtime_ns: int  # as the file system returned it: any integer, 64 bits or not
    ino: int = 0  # the file's inode number (0: unknown)

    @property
    def stamp(self) -> int:
        """The modification time as stored in the catalog (see :func:`fold_int64`)."""
        return fold_int64(self.mtime_ns)

    @property
    def mtime(self) -> float | None:
        """The modification time in POSIX seconds, None when it is not a showable date."""
        return sane_timestamp(self.mtime_ns / 1e9)


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str
    is_file: bool = False  # an image file (rather than a folder) that could not be read


def scan(
    roots: Iterable[str],
    on_problem: Callable[[ScanProblem], None] | None = None,
    extensions: frozenset[str] | None = None,
    exclude: Iterable[str] = (),
) -> Iterator[ScannedFile]:
    """Yield every image file under ``roots`` (files given directly as roots are yielded too).

    Problems (unreadable folders, broken links, link loops) go to ``on_problem``; the scan goes on.
    Folders in ``exclude`` and folders holding a clipdesk library are skipped.
    """
    exts = extensions or supported_extensions()
    seen_dirs: set[tuple[int, int]] = set()
    report = on_problem or (lambda _p: None)
    excluded: set[tuple[int, int]] = set()
    for folder in exclude:
        try:
            st = os.stat(folder)
            excluded.add((st.st_dev, st.st_ino))
        except OSError:
            continue

    roots = [os.path.abspath(os.path.expanduser(r)) for r in roots]
    for root in outermost(roots):
        try:
            st = os.stat(root)
        except OSError as e:
            report(ScanProblem(root, f"cannot be read ({e.strerror or e})"))
            continue
        if stat.S_ISREG(st.st_mode):
            if os.path.splitext(root)[1].lower() in exts:
                yield ScannedFile(root, st.st_size, st.st_mtime_ns, st.st_ino)
            continue
        if (st.st_dev, st.st_ino) in excluded or is_library_folder(root):
            report(ScanProblem(root, "is a clipdesk library folder, not a photo folder; not indexed"))
            continue
        yield from _walk(root, st, exts, seen_dirs, excluded, report)


def _walk(top, top_stat, exts, seen_dirs, excluded, report) -> Iterator[ScannedFile]:
    stack = [(top, top_stat)]
    while stack:
        folder, st = stack.pop()
        key = (st.st_dev, st.st_ino)
        if key in excluded or (folder != top and is_library_folder(folder)):
            continue  # a library's own files (thumbnails) are not photos
        if key in seen_dirs:
            report(ScanProblem(folder, "already scanned through another path (symbolic link loop?)"))
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            report(ScanProblem(folder, f"folder cannot be read ({e.strerror or e})"))
            continue
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = not is_dir and entry.is_file(follow_symlinks=True)
            except OSError as e:  # e.g. a symbolic link loop
                looks_like_image = os.path.splitext(entry.name)[1].lower() in exts
                report(ScanProblem(entry.path, f"cannot be read ({e.strerror or e})", looks_like_image))
                continue
            if is_dir:
                try:
                    subdirs.append((entry.path, entry.stat(follow_symlinks=True)))
                except OSError as e:
                    report(ScanProblem(entry.path, f"folder cannot be read ({e.strerror or e})"))
                continue
            if os.path.splitext(entry.name)[1].lower() not in exts:
                continue
            if not is_file:
                if entry.is_symlink():
                    report(ScanProblem(entry.path, "broken symbolic link (its target does not exist)", True))
                continue
            try:
                fst = entry.stat(follow_symlinks=True)
            except OSError as e:
                report(ScanProblem(entry.path, f"cannot be read ({e.strerror or e})", True))
                continue
            yield ScannedFile(entry.path, fst.st_size, fst.st_mtime_ns, fst.st_ino)
        # Depth-first in name order keeps results stable between runs.
        stack.extend(reversed(subdirs))
