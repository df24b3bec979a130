"""The buckets (labels) as the app sees them, and every change to them as an undoable command.

``LabelStore`` is the one place the GUI changes labels: each change is a ``QUndoCommand`` pushed on
the window's ``QUndoStack`` (Ctrl+Z), so a bucket filled by a drag, a number key, a menu, an
accept or a reject is undone the same way. Label writes are single SQLite transactions (a few
milliseconds), so commands run them directly; photos from outside the library are indexed first,
in a worker, and only then become a command. Rejected photos ("not A") live in the reserved label
``negative_label(A)`` (see ``clipdesk.teaching``) and are hidden from the bucket list.
"""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack
from PySide6.QtWidgets import QInputDialog, QWidget

from clipdesk.errors import ClipdeskError
from clipdesk.library import Library
from clipdesk.teaching import NEGATIVE_PREFIX, is_negative, negative_label, positive_of

UNDO_LIMIT = 100


class LabelCommand(QUndoCommand):
    """Add and remove memberships, create or delete labels; undo does the reverse.

    ``adds``/``removes`` map a label to the paths that really change (computed by the store), so
    undo never removes a photo that was in the bucket before the command. ``corrected`` maps a
    label to the added paths that are corrections (the applied probe said another category);
    removed memberships keep that mark when undo puts them back.
    """

    def __init__(self, store: LabelStore, text: str, adds: dict[str, list[str]] | None = None,
                 removes: dict[str, list[str]] | None = None, create: list[str] | None = None,
                 delete: list[str] | None = None, corrected: dict[str, set[str]] | None = None) -> None:
        super().__init__(text)
        self.store = store
        self.adds = {k: v for k, v in (adds or {}).items() if v}
        self.removes = {k: v for k, v in (removes or {}).items() if v}
        self.create = list(create or [])
        self.delete = list(delete or [])  # labels deleted; their members are in ``removes``
        self.corrected = {k: set(v) for k, v in (corrected or {}).items()}
        self.was_corrected = {k: store.corrected(k) & set(v) for k, v in self.removes.items()}

    @staticmethod
    def _add(lib: Library, name: str, paths: list[str], fixed: set[str]) -> None:
        for corrected in (False, True):
            part = [p for p in paths if (p in fixed) == corrected]
            if part:
                lib.add_to_label(name, part, corrected=corrected)

    def redo(self) -> None:
        lib = self.store.lib
        self.store.guard(lambda: (
            [lib.create_label(n) for n in self.create],
            [self._add(lib, n, p, self.corrected.get(n, set())) for n, p in self.adds.items()],
            [lib.remove_from_label(n, p) for n, p in self.removes.items() if n in lib.catalog.labels()],
            [lib.delete_label(n) for n in self.delete]))

    def undo(self) -> None:
        lib = self.store.lib
        self.store.guard(lambda: (
            [lib.create_label(n) for n in self.delete],
            [self._add(lib, n, p, self.was_corrected.get(n, set())) for n, p in self.removes.items()],
            [lib.remove_from_label(n, p) for n, p in self.adds.items() if n in lib.catalog.labels()],
            [lib.delete_label(n) for n in self.create]))


class LabelStore(QObject):
    """Buckets of the current library, with undoable changes. ``changed`` fires after each change."""

    changed = Signal()
    message = Signal(str)  # a short status line ("Added 3 photos to Anna")
    error = Signal(str, str)  # message, kind (shown in the banner)

    def __init__(self, lib: Library, undo: QUndoStack, index_paths: Callable | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.lib = lib
        self.undo = undo
        # index_paths(paths, then) indexes files from outside the library in a worker, then calls then()
        self.index_paths = index_paths
        self._labels: dict[str, list[str]] = {}
        self._corrected: dict[str, set[str]] = {}
        # the applied probe's answers (clipdesk.results.Classifications, set by the Teach tab): a
        # photo put into bucket B that it had given another category is marked as a correction
        self.predictions = None
        self.refresh()

    def set_library(self, lib: Library) -> None:
        self.lib = lib
        self.predictions = None
        self.refresh()

    def refresh(self) -> None:
        try:
            self._labels = self.lib.labels()
            self._corrected = self.lib.corrections()
        except ClipdeskError as e:
            self.error.emit(str(e), type(e).__name__)
            self._labels, self._corrected = {}, {}
        self.changed.emit()

    def guard(self, fn: Callable) -> None:
        try:
            fn()
        except ClipdeskError as e:
            self.error.emit(str(e), type(e).__name__)
        self.refresh()

    def say(self, text: str) -> None:
        self.message.emit(text)

    # ------------------------------------------------------------------ reading
    def names(self) -> list[str]:
        """The user's buckets, in the order shown (number key N is the N-th)."""
        return [n for n in self._labels if not is_negative(n)]

    def paths(self, name: str) -> list[str]:
        return list(self._labels.get(name, []))

    def corrected(self, name: str) -> set[str]:
        """The photos of bucket ``name`` put there as corrections of the applied probe."""
        return set(self._corrected.get(name, ()))

    def _corrections_among(self, name: str, paths: list[str], ids: dict[str, int | None]) -> set[str]:
        """Of ``paths`` (catalog ``ids``) about to go into bucket ``name``, those the applied probe
        put elsewhere."""
        if self.predictions is None or not paths:
            return set()
        known = [(p, ids[p]) for p in paths if ids[p] is not None]
        said = self.predictions.labels_of([i for _, i in known])
        # (None: a photo the probe did not see, indexed since. An answer of "none of these" or
        # "the rest of the library" that the user overrules is a correction too.)
        return {p for (p, _), label in zip(known, said) if label is not None and label != name}

    def rejected(self, name: str) -> list[str]:
        return list(self._labels.get(negative_label(name), []))

    def negatives(self) -> list[str]:
        """Existing, non-empty reserved labels of rejected photos."""
        return [n for n, p in self._labels.items() if is_negative(n) and p]

    def labelled_paths(self) -> set[str]:
        """Every photo in any bucket or rejected from one (not offered for review again)."""
        return {p for paths in self._labels.values() for p in paths}

    # ------------------------------------------------------------------ changing
    def create(self, name: str) -> bool:
        name = (name or "").strip()
        if not name:
            return False
        if name.startswith(NEGATIVE_PREFIX):
            self.error.emit(f"Bucket names may not start with '{NEGATIVE_PREFIX}' (reserved).", "input")
            return False
        if name in self._labels:
            self.error.emit(f"There is already a bucket named '{name}'.", "input")
            return False
        try:
            from clipdesk.library import _check_name

            _check_name(name, "bucket")
        except ClipdeskError as e:
            self.error.emit(str(e), "input")
            return False
        self.undo.push(LabelCommand(self, f"create bucket {name}", create=[name]))
        return True

    def delete(self, name: str) -> None:
        neg = negative_label(name)
        removes = {name: self.paths(name), neg: self.rejected(name)}
        delete = [name] + ([neg] if neg in self._labels else [])
        self.undo.push(LabelCommand(self, f"delete bucket {name}", removes=removes, delete=delete))
        self.say(f"Deleted the bucket “{name}” — Ctrl+Z brings it back.")

    def add(self, name: str, paths: list[str]) -> None:
        """Put photos into bucket ``name`` (and take them out of its rejected photos)."""
        self._change(name, paths, accept=True)

    def reject(self, name: str, paths: list[str]) -> None:
        """Mark photos as "not ``name``" (and take them out of bucket ``name``)."""
        self._change(name, paths, accept=False)

    def reject_from_all(self, paths: list[str]) -> None:
        """Mark photos as in none of the buckets (rejected from each; taught as "none of these")
        as one undoable change."""
        paths = [p for p in dict.fromkeys(paths) if self.lib.catalog.id_for_path(p) is not None]
        buckets = self.names()
        adds, removes = {}, {}
        for b in buckets:
            rejected, members = set(self.rejected(b)), set(self.paths(b))
            adds[negative_label(b)] = [p for p in paths if p not in rejected]
            removes[b] = [p for p in paths if p in members]
        if not paths or not buckets or not any(adds.values()) and not any(removes.values()):
            return
        n = len(paths)
        self.undo.push(LabelCommand(self, f"put {n} in none of the buckets", adds=adds, removes=removes))
        self.say(f"Marked {n} photo{'s' if n != 1 else ''} as in none of the buckets — Ctrl+Z undoes.")

    def remove(self, name: str, paths: list[str]) -> None:
        gone = [p for p in paths if p in set(self.paths(name))]
        if gone:
            self.undo.push(LabelCommand(self, f"remove {len(gone)} from {name}", removes={name: gone}))
            where = f"the photos rejected as not “{positive_of(name)}”" if is_negative(name) else f"“{name}”"
            self.say(f"Took {len(gone)} photo{'s' if len(gone) != 1 else ''} out of {where} — Ctrl+Z undoes.")

    def add_to_new(self, parent: QWidget, paths: list[str]) -> None:
        name, ok = QInputDialog.getText(parent, "New bucket", "Name of the new bucket:")
        if ok and name.strip() and (name.strip() in self._labels or self.create(name)):
            self.add(name.strip(), paths)

    def _change(self, name: str, paths: list[str], accept: bool) -> None:
        if not paths:
            return
        ids = {p: self.lib.catalog.id_for_path(p) for p in dict.fromkeys(paths)}
        outside = [p for p in ids if ids[p] is None]
        if outside and self.index_paths is not None:
            # files from the file manager: index them first (a worker), then label all of them
            def then() -> None:
                known = [p for p in paths if self.lib.catalog.id_for_path(p) is not None]
                if known:
                    self._change(name, known, accept)
            self.index_paths(outside, then)
            return
        target, other = (name, negative_label(name)) if accept else (negative_label(name), name)
        have = set(self._labels.get(target, []))
        new = [p for p in dict.fromkeys(paths) if p not in have]
        out = [p for p in dict.fromkeys(paths) if p in set(self._labels.get(other, []))]
        if not new and not out:
            self.say(f"Already {'in' if accept else 'rejected from'} “{name}”.")
            return
        verb = "add" if accept else "reject"
        fixed = self._corrections_among(name, new, ids) if accept else set()
        n = len(new)
        self.undo.push(LabelCommand(self, f"{verb} {len(paths)} {'to' if accept else 'from'} {name}",
                                    adds={target: new}, removes={other: out}, corrected={target: fixed}))
        said = "" if not fixed else " — the probe had put it elsewhere: taught as a correction" if n == 1 \
            else f" — {len(fixed)} of them the probe had put elsewhere: taught as corrections"
        self.say(f"{'Added' if accept else 'Rejected'} {n} photo{'s' if n != 1 else ''} "
                 f"{'to' if accept else 'from'} “{name}”{said}.")


def make_undo_stack(parent: QObject) -> QUndoStack:
    stack = QUndoStack(parent)
    stack.setUndoLimit(UNDO_LIMIT)
    return stack
