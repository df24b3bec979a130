"""Acting on results (Sort and Teach): select a group or "everything above P%", copy, export CSV.

One bar, used under every grid of classified photos. The actions of the library-interop issue
(write tags, copy/move into folders) are meant to join ``ResultActions.more`` — the "Do ▸" menu —
so they act on the same selection from the same place.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

from PySide6.QtCore import Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QLabel, QMenu, QPushButton, QSpinBox, QToolButton, QWidget

from clipdesk.errors import ClipdeskError
from clipdesk.export import write_csv  # the columns the CLI's export csv writes too

from ..flow import FlowLayout
from .dialogs import PlanDialog, ask_folder, ask_save_path
from .grid import PhotoGrid

Row = tuple[str, str, float]  # path, category, probability
SORT_JOBS = {"copy": "copying photos", "move": "moving photos", "link": "linking photos"}
# Jobs that write the catalog or files beside the photos: a file operation waits for them.
CONFLICTING_JOBS = frozenset({"indexing", "removing a folder", "writing tags", "undo", "moving photos to the Trash",
                              *SORT_JOBS.values()})
FIRST_FILES = 5  # files named in a preview


class _Classified(NamedTuple):  # what organise.plan_sort reads from a row
    path: str
    label: str
    probability: float


OPERATION_NAMES = {"tags": "tags write", "sort": "sort", "auto": "auto batch"}


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _counts(rows: list[Row]) -> str:
    return "\n".join(f"  {c}: {_plural(n, 'photo')}" for c, n in sorted(Counter(r[1] for r in rows).items()))


def _export(path: str, rows: list[Row]) -> int:
    """:func:`write_csv` for a worker: a failure is the user's to see, not a bug."""
    try:
        return write_csv(path, rows)
    except OSError as e:
        raise ClipdeskError(f"Cannot write {path}: {e.strerror or e}") from None


class ResultActions(QWidget):
    """Select ≥ P% · Copy paths · Export CSV… · Do ▸ — over one grid and its full result rows."""

    message = Signal(str)
    error = Signal(str, str)
    resolved = Signal()  # an export worked: an earlier export error is gone

    def __init__(self, grid: PhotoGrid, all_rows: Callable[[], list[Row]], export_name: str,
                 default_file: str, rest_name: Callable[[], str] = lambda: "") -> None:
        super().__init__()
        self.grid = grid
        self.all_rows = all_rows
        self.rest_name = rest_name  # the export's category for a photo in none (tags skip those)
        self.default_file = default_file
        lay = FlowLayout(self)  # wraps onto a second line in a narrow pane instead of cutting text
        self.threshold = QSpinBox()
        self.threshold.setObjectName(f"{export_name}Threshold")
        self.threshold.setRange(0, 100)
        self.threshold.setValue(80)
        self.threshold.setSuffix(" %")
        self.select_above = QPushButton("Select ≥")
        self.select_above.setObjectName(f"{export_name}SelectAbove")
        self.select_above.setToolTip("Select every photo shown with a probability at or above this")
        self.select_above.clicked.connect(lambda _c=False: self.select_at_least(self.threshold.value() / 100))
        self.copy = QPushButton("Copy paths")
        self.copy.setObjectName(f"{export_name}Copy")
        self.copy.setToolTip("Copy the selected photos' paths (all shown when none is selected)")
        self.copy.clicked.connect(lambda _c=False: self.copy_paths())
        self.export = QPushButton("Export CSV…")
        self.export.setObjectName(export_name)
        self.export.setToolTip("Save path, category and probability: the selected photos, or all when none is")
        self.export.clicked.connect(lambda _c=False: self.export_csv())  # clicked(bool) is not a path
        self.more = QMenu(self)
        self.ctx = None  # set by attach(): the library and its jobs
        self.on_progress: Callable | None = None
        self.write_tags = self.more.addAction("Write tags…")
        self.write_tags.setObjectName("writeTagsAction")
        self.write_tags.setToolTip("Write each photo's category as a keyword into its XMP sidecar")
        self.write_tags.triggered.connect(lambda _c=False: self.start_write_tags())
        self.copy_to = self.more.addAction("Copy to folders…")
        self.copy_to.setObjectName("copyToFoldersAction")
        self.copy_to.triggered.connect(lambda _c=False: self.start_sort("copy"))
        self.move_to = self.more.addAction("Move to folders…")
        self.move_to.setObjectName("moveToFoldersAction")
        self.move_to.triggered.connect(lambda _c=False: self.start_sort("move"))
        self.more.addSeparator()
        self.undo_last = self.more.addAction("Undo last tags write / sort")
        self.undo_last.setObjectName("undoFileOperationAction")
        self.undo_last.setEnabled(False)
        self.undo_last.triggered.connect(lambda _c=False: self.undo_file_operation())
        for a in (self.write_tags, self.copy_to, self.move_to):
            a.setEnabled(False)
        more = QToolButton()
        more.setObjectName(f"{export_name}Do")
        more.setText("Do ▸")
        more.setMenu(self.more)
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.summary = QLabel()
        self.summary.setProperty("muted", "true")
        for w in (self.threshold, self.select_above, self.copy, self.export, more, self.summary):
            lay.addWidget(w)
        grid.selectionModel().selectionChanged.connect(lambda *_: self._summarise())
        grid.model().modelReset.connect(self._summarise)
        self._summarise()

    def select_at_least(self, p: float) -> int:
        rows = [i for i, it in enumerate(self.grid.results.items()) if it.score is not None and it.score >= p - 1e-9]
        self.grid.select_rows(rows)
        self.grid.setFocus()
        return len(rows)

    def _summarise(self) -> None:
        n = len(self.grid.selected_rows()) if self.grid.selectionModel() else 0
        self.summary.setText(f"{n} selected" if n else "")

    def _rows(self) -> list[Row]:
        chosen = set(self.grid.selected_paths())
        rows = self.all_rows()
        return [r for r in rows if r[0] in chosen] if chosen else rows

    def copy_paths(self) -> None:
        chosen = self.grid.selected_paths() or [it.path for it in self.grid.results.items()]
        if chosen:
            QGuiApplication.clipboard().setText("\n".join(chosen))
            self.message.emit(f"Copied {len(chosen)} path{'s' if len(chosen) != 1 else ''}.")

    def export_csv(self, path: str | None = None) -> str | None:
        rest = self.rest_name()
        rows = [(p, c or rest, prob) for p, c, prob in self._rows()]  # a category in every row
        if not rows:
            self.error.emit("Nothing to export yet: classify (Sort) or apply (Teach) first.", "input")
            return None
        if path is None:
            path = ask_save_path(self, "Export CSV", self.default_file)
        if not path:
            return None
        if not path.lower().endswith(".csv") and not os.path.splitext(path)[1]:
            path += ".csv"
        def written(n: int) -> None:
            self.resolved.emit()
            self.message.emit(f"Exported {n} row{'s' if n != 1 else ''} to {path}")

        if self.ctx is None:
            try:
                written(_export(path, rows))
            except ClipdeskError as e:  # a full disk, a read-only folder, or any OSError said as such
                self.error.emit(str(e), "export")
                return None
        else:  # a million rows take seconds to write: not on the GUI thread
            self.ctx.jobs.start(_export, path, rows, name="export", on_result=written,
                                on_error=lambda message, _kind: self.error.emit(message, "export"))
        return path

    # ------------------------------------------------------------------ tags and folders
    def attach(self, ctx, on_progress: Callable | None = None) -> None:
        """Give the bar the library and its jobs: Write tags / Copy / Move to folders then work."""
        self.ctx, self.on_progress = ctx, on_progress
        for a in (self.write_tags, self.copy_to, self.move_to):
            a.setEnabled(True)
        ctx.file_operation_changed.connect(self._show_undo)
        ctx.library_changed.connect(lambda: ctx.set_last_file_operation(None))  # it was the other library's
        self._show_undo()

    @property
    def last(self) -> tuple[str, str | None] | None:
        """The last tags write or sort, from this bar or another (one undo for the app)."""
        return self.ctx.last_file_operation if self.ctx is not None else None

    def _show_undo(self) -> None:
        last = self.last
        self.undo_last.setText(f"Undo last {OPERATION_NAMES[last[0]]}" if last else "Undo last tags write / sort")
        self.undo_last.setEnabled(last is not None)

    def _chosen(self) -> list[Row]:
        """The selected photos, else every shown row at or above the threshold; with a category."""
        chosen = set(self.grid.selected_paths())
        rows = self.all_rows()
        if chosen:
            rows = [r for r in rows if r[0] in chosen]
        else:
            p = self.threshold.value() / 100
            rows = [r for r in rows if r[2] >= p - 1e-9]
        return [r for r in rows if r[1]]

    def _fail(self, message: str, kind: str) -> None:
        self.ctx.error.emit(message, kind, "interop")

    def _busy(self) -> bool:
        """Whether a job that changes the library or the files beside the photos is running.

        Reading jobs (a preview, search, suggestions) never block an action: only another file
        operation, its undo, or indexing would race with it."""
        running = [w.name for w in self.ctx.jobs.active if w.name in CONFLICTING_JOBS]
        if running:
            self._fail(f"{running[0].capitalize()} is still running: wait for it, or cancel it, first.", "input")
            return True
        return False

    def _start(self, fn, *args, kind: str, name: str, on_result: Callable) -> None:
        self.ctx.jobs.start(fn, *args, name=name, on_result=on_result, on_error=self._fail,
                            on_progress=self.on_progress, on_cancelled=lambda: self._cancelled(kind, name))

    def _cancelled(self, kind: str, name: str) -> None:
        # the part done is journaled as an interrupted operation: undo takes the newest of its kind
        self._remember(kind, None)
        self.message.emit(f"{name.capitalize()} cancelled: what was done so far is kept; "
                          "Do ▸ Undo puts it back.")

    def start_write_tags(self, prefix: str | None = None) -> None:
        """Preview, then write each photo's category as a keyword (``prefix`` + category)."""
        from clipdesk import tags
        from clipdesk.errors import ClipdeskError

        if self.ctx is None or self._busy():
            return
        rows = self._chosen()
        if not rows:
            self._fail("Nothing to tag: select photos, or lower the threshold, after classifying.", "input")
            return
        plans: dict[str, object] = {}

        def describe(prefix: str) -> tuple[str, bool]:
            try:
                keywords = {p: [tags.with_prefix(prefix, c)] for p, c, _ in rows}
                plan = plans[prefix] = tags.plan_write(keywords)
            except (ClipdeskError, ValueError) as e:
                return f"Cannot write these keywords: {e}", False
            created = sum(c.create for c in plan.changes)
            lines = [f"Write keywords for {_plural(len(rows), 'photo')}:", _counts(rows), "",
                     f"{_plural(created, 'sidecar')} created, {len(plan.changes) - created:,} updated, "
                     f"{plan.unchanged:,} unchanged."]
            lines += [f"  {'create' if c.create else 'update'} {c.sidecar}  +" + " +".join(c.add)
                      for c in plan.changes[:FIRST_FILES]]
            if len(plan.changes) > FIRST_FILES:
                lines.append(f"  … and {len(plan.changes) - FIRST_FILES:,} more")
            if plan.problems:
                lines.append(f"{_plural(len(plan.problems), 'problem')} (left untouched): "
                             + "; ".join(f"{p.path}: {p.reason}" for p in plan.problems[:3]))
            return "\n".join(lines), bool(plan.changes)

        dialog = PlanDialog(self, "Write tags", "Write tags", describe, "clipdesk/" if prefix is None else prefix)
        if not dialog.exec():
            return
        plan = plans.get(dialog.prefix_text())
        if plan is None:
            return
        self._start(tags.apply_write, self.ctx.lib, plan, "tags write", kind="tags", name="writing tags",
                    on_result=self._tags_written)

    def _tags_written(self, r) -> None:
        self.ctx.resolved.emit("interop")
        if r.operation:
            self._remember("tags", r.operation)
        problems = f", {_plural(len(r.problems), 'problem')}" if r.problems else ""
        self.message.emit(f"Tags written: {r.written:,} sidecars updated, {r.created:,} created, "
                          f"{r.unchanged:,} unchanged{problems}." + (" Undo: Do ▸ Undo last tags write / sort."
                                                                     if r.operation else ""))

    def start_sort(self, mode: str, into: str | None = None) -> None:
        """Choose a folder, preview, then copy or move each photo into ``into/<category>/``."""
        from clipdesk import organise
        from clipdesk.errors import ClipdeskError

        if self.ctx is None or self._busy():
            return
        rows = self._chosen()
        if not rows:
            self._fail("Nothing to sort: select photos, or lower the threshold, after classifying.", "input")
            return
        if into is None:
            try:  # first time: start beside the photos, not in the home folder
                near = os.path.commonpath([os.path.dirname(r[0]) for r in rows])
            except ValueError:
                near = None
            into = ask_folder(self, f"{mode.capitalize()} into folders under… (New Folder: the toolbar)", near)
        if not into:
            return
        try:
            plan = organise.plan_sort(self.ctx.lib, [_Classified(*r) for r in rows], into, mode)
        except ClipdeskError as e:
            self._fail(str(e), type(e).__name__)
            return
        counts = plan.as_dict()["categories"]
        sidecars = sum(len(p.sidecars) for p in plan.placements)
        lines = [f"{mode.capitalize()} {_plural(len(plan.placements), 'photo')} into {plan.into}:"]
        lines += [f"  {c}/: {_plural(n, 'photo')}" for c, n in sorted(counts.items())]
        lines += [f"  {p.source} → {p.dest}" for p in plan.placements[:FIRST_FILES]]
        if len(plan.placements) > FIRST_FILES:
            lines.append(f"  … and {len(plan.placements) - FIRST_FILES:,} more")
        if sidecars:
            lines.append(f"{_plural(sidecars, 'XMP sidecar')} go with them.")
        if plan.in_place:
            lines.append(f"{_plural(plan.in_place, 'photo')} already in place.")
        if plan.problems:
            lines.append(f"{_plural(len(plan.problems), 'problem')} (not sorted): "
                         + "; ".join(f"{p.path}: {p.reason}" for p in plan.problems[:3]))
        dialog = PlanDialog(self, f"{mode.capitalize()} to folders", mode.capitalize(),
                            lambda _p: ("\n".join(lines), bool(plan.placements)))
        if not dialog.exec():
            return
        self._start(organise.apply_sort, self.ctx.lib, plan, kind="sort", name=SORT_JOBS[mode],
                    on_result=self._sorted)

    def _sorted(self, r) -> None:
        self.ctx.resolved.emit("interop")
        if r.operation:
            self._remember("sort", r.operation)
        moved = " The moved photos keep their labels; classify again to see their new paths." \
            if r.mode == "move" and r.placed else ""
        self.message.emit(f"{_plural(len(r.placed), 'photo')} {'copied' if r.mode == 'copy' else r.mode + 'd'} "
                          f"into folders.{moved}" + (" Undo: Do ▸ Undo last tags write / sort." if r.operation else ""))

    def _remember(self, kind: str, operation: str | None) -> None:
        self.ctx.set_last_file_operation((kind, operation))

    def undo_file_operation(self) -> None:
        """Undo the last tags write or sort, wherever it was started (the core's journaled undo)."""
        from clipdesk import organise, tags

        if self.ctx is None or self.last is None or self._busy():
            return
        kind, operation = self.last
        self.undo_last.setEnabled(False)
        if kind == "auto":
            self._undo_auto_batch()
            return

        def done(r) -> None:
            self.ctx.set_last_file_operation(None)
            self.ctx.resolved.emit("interop")
            kept = f"; kept {_plural(len(r.conflicts), 'file')} changed since" if r.conflicts else ""
            self.message.emit(f"Undid the {'tags write' if kind == 'tags' else 'sort'}: "
                              f"{_plural(r.reverted, 'change')} reverted{kept}.")

        def failed(message: str, k: str) -> None:
            self.undo_last.setEnabled(True)
            self._fail(message, k)

        self.ctx.jobs.start(tags.undo if kind == "tags" else organise.undo, self.ctx.lib, operation,
                            name="undo", on_result=done, on_error=failed)

    def _undo_auto_batch(self) -> None:
        """The newest auto-apply batch back: its sorting, keywords and Inbox entries (``auto undo``)."""
        from clipdesk.ops import auto

        def done(r: dict) -> None:
            self.ctx.set_last_file_operation(None)
            self.ctx.resolved.emit("interop")
            self.ctx.auto_changed.emit()
            self.message.emit(f"Undid the auto batch of '{r['probe']}': {_plural(r['applied'], 'photo')} "
                              "no longer tagged or sorted.")

        def failed(message: str, k: str) -> None:
            self.undo_last.setEnabled(True)
            self._fail(message, k)

        self.ctx.jobs.start(auto.undo, self.ctx.lib, name="undo", on_result=done, on_error=failed)
