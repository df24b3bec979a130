"""Recursive folder scanning: which image files exist now, with their size and modification time.

Hidden folders (a leading dot) are skipped, extensions match case-insensitively, symbolic links
to folders are followed once (a link loop or a second link to the same folder is not descended
twice), and a folder that cannot be read is reported rather than aborting the scan.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .decode import supported_extensions


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute, normalised, symbolic links in the path kept as the user sees them
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ScanProblem:
    path: str
    reason: str
    is_file: bool = False  # an image file (rather than a folder) that could not be read


def scan(
    roots: Iterable[str],
    on_problem: Callable[[ScanProblem], None] | None = None,
    extensions: frozenset[str] | None = None,
) -> Iterator[ScannedFile]:
    """Yield every image file under ``roots`` (files given directly as roots are yielded too).

    Problems (unreadable folders, broken links, link loops) go to ``on_problem``; the scan goes on.
    """
    exts = extensions or supported_extensions()
    seen_dirs: set[tuple[int, int]] = set()
    report = on_problem or (lambda _p: None)

    for root in roots:
        root = os.path.abspath(os.path.expanduser(root))
        try:
            st = os.stat(root)
        except OSError as e:
            report(ScanProblem(root, f"cannot be read ({e.strerror or e})"))
            continue
        if stat.S_ISREG(st.st_mode):
            if os.path.splitext(root)[1].lower() in exts:
                yield ScannedFile(root, st.st_size, st.st_mtime_ns)
            continue
        yield from _walk(root, st, exts, seen_dirs, report)


def _walk(top, top_stat, exts, seen_dirs, report) -> Iterator[ScannedFile]:
    stack = [(top, top_stat)]
    while stack:
        folder, st = stack.pop()
        key = (st.st_dev, st.st_ino)
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
            yield ScannedFile(entry.path, fst.st_size, fst.st_mtime_ns)
        # Depth-first in name order keeps results stable between runs.
        stack.extend(reversed(subdirs))
