"""Acting on results (Sort and Teach): select a group or "everything above P%", copy, export CSV.

One bar, used under every grid of classified photos. The actions of the library-interop issue
(write tags, copy/move into folders) are meant to join ``ResultActions.more`` — the "Do ▸" menu —
so they act on the same selection from the same place.
"""
from __future__ import annotations

import csv
import os
from collections.abc import Callable

from PySide6.QtCore import Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QPushButton, QSpinBox, QToolButton, QWidget

from .dialogs import ask_save_path
from .grid import PhotoGrid

Row = tuple[str, str, float]  # path, category, probability


def write_csv(path: str, rows: list[Row]) -> int:
    """Write ``path,category,probability`` rows; returns how many. Raises OSError."""
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        w = csv.writer(f)
        w.writerow(["path", "category", "probability"])
        for p, label, prob in rows:
            w.writerow([p, label, f"{prob:.4f}"])
    os.replace(tmp, path)
    return len(rows)


class ResultActions(QWidget):
    """Select ≥ P% · Copy paths · Export CSV… · Do ▸ — over one grid and its full result rows."""

    message = Signal(str)
    error = Signal(str, str)
    resolved = Signal()  # an export worked: an earlier export error is gone

    def __init__(self, grid: PhotoGrid, all_rows: Callable[[], list[Row]], export_name: str,
                 default_file: str) -> None:
        super().__init__()
        self.grid = grid
        self.all_rows = all_rows
        self.default_file = default_file
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
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
        self.more.addAction("Tags and folders: coming with library interop").setEnabled(False)
        more = QToolButton()
        more.setText("Do ▸")
        more.setMenu(self.more)
        more.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.summary = QLabel()
        self.summary.setProperty("muted", "true")
        for w in (self.threshold, self.select_above, self.copy, self.export, more):
            lay.addWidget(w)
        lay.addWidget(self.summary, 1)
        grid.selectionModel().selectionChanged.connect(lambda *_: self._summarise())
        grid.model().modelReset.connect(self._summarise)
        self._summarise()

    def select_at_least(self, p: float) -> int:
        rows = [i for i, it in enumerate(self.grid.results.items()) if it.score is not None and it.score >= p - 1e-9]
        self.grid.select_rows(rows)
        self.grid.setFocus()
        return len(rows)

    def _summarise(self) -> None:
        n = len(self.grid.selectionModel().selectedIndexes()) if self.grid.selectionModel() else 0
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
        rows = self._rows()
        if not rows:
            self.error.emit("Nothing to export yet: classify (Sort) or apply (Teach) first.", "input")
            return None
        if path is None:
            path = ask_save_path(self, "Export CSV", self.default_file)
        if not path:
            return None
        if not path.lower().endswith(".csv") and not os.path.splitext(path)[1]:
            path += ".csv"
        try:
            n = write_csv(path, rows)
        except OSError as e:
            self.error.emit(f"Cannot write {path}: {e.strerror or e}", "export")
            return None
        self.resolved.emit()
        self.message.emit(f"Exported {n} row{'s' if n != 1 else ''} to {path}")
        return path
