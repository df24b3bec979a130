"""Results as CSV for spreadsheets: the columns the app's **Export CSV…** writes, shared with
``clipdesk export csv`` so both give the same file.

One row per photo: ``path``, ``category`` (empty for no category) and ``probability`` (four
decimals; empty where there is none, as for the members of a label). UTF-8, optionally with a
byte-order mark (``bom``: what Excel needs to read UTF-8); a file name that is not valid UTF-8
is written as its exact bytes (as the file system has it), never altered. The file is written
atomically: a temporary file in the same folder, fsynced, renamed over the target.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.files import atomic_write

COLUMNS = ("path", "category", "probability")
Row = tuple[str, str, "float | None"]  # path, category ("" for none), probability (None: not a prediction)


class ExportError(ClipdeskError):
    """An export that cannot be made (no such label, a file that cannot be written)."""


def selection_rows(lib, label: str | None = None, probe: str | None = None,
                   classify: Sequence[str] | None = None, threshold: float | None = None,
                   progress=None, cancel=None) -> list[Row]:
    """The rows of one label's photos, a probe's predictions or zero-shot categories, as the app
    exports them (a probe's "none of these" is an empty category)."""
    from clipdesk.teaching import NONE_CLASS

    if len([x for x in (label, probe, classify) if x]) != 1:
        raise ExportError("Choose exactly one of a label, a probe or zero-shot categories.")
    if label:
        labels = lib.labels()
        if label not in labels:
            raise ExportError(f"No label named '{label}'.")
        return [(p, label, None) for p in labels[label]]
    found = (lib.predict(probe, progress=progress, cancel=cancel) if probe
             else lib.classify(list(classify), threshold, progress=progress, cancel=cancel))
    return found.as_rows(blank=(NONE_CLASS,))


def csv_bytes(rows: Iterable[Row], bom: bool = False) -> tuple[bytes, int]:
    """The CSV file of ``rows`` (the first row of a path wins: one row per photo) and its row count."""
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(COLUMNS)
    seen: set[str] = set()
    for path, category, probability in rows:
        if path in seen:
            continue
        seen.add(path)
        w.writerow([path, category or "", "" if probability is None else f"{probability:.4f}"])
    data = out.getvalue().encode("utf-8", "surrogateescape")  # surrogates: the name's exact bytes
    return (b"\xef\xbb\xbf" + data if bom else data), len(seen)


def write_csv(path: str, rows: Iterable[Row], bom: bool = False) -> int:
    """Write ``rows`` to ``path`` atomically; returns how many rows. Raises :class:`OSError`, or
    the library's full-disk and read-only errors."""
    data, n = csv_bytes(rows, bom)
    atomic_write(path, lambda f: f.write(data), size=len(data))
    return n
