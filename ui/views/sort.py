"""The Sort view: zero-shot classification into categories typed one per line (no training)."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPlainTextEdit, QPushButton,
                               QVBoxLayout, QWidget)

from ..models import AnswerItems, ResultsModel
from .actions import ResultActions
from .context import Context
from .grid import PhotoGrid

NONE = "(none)"


class SortView(QWidget):
    count_changed = Signal(str)
    finished = Signal()
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)
    progress = Signal(object)

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.classified: list = []
        self.names: list[str] = []
        self.count_text = "Type categories and press Classify"
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        left = QVBoxLayout()
        t = QLabel("Categories")
        t.setObjectName("title")
        self.categories = QPlainTextEdit()
        self.categories.setObjectName("categories")
        self.categories.setPlaceholderText("beach\nmountains\ncity\nfood")
        self.categories.setToolTip("One per line, or separated by commas: bird, flower, car")
        self.classify_button = QPushButton("Classify")
        self.classify_button.setObjectName("classify")
        self.classify_button.setProperty("primary", "true")
        self.classify_button.clicked.connect(lambda _c=False: self.run())
        self.category_list = QListWidget()
        self.category_list.setObjectName("sortCategories")
        self.category_list.currentItemChanged.connect(lambda *_: self._show_category())
        left.addWidget(t)
        left.addWidget(self.categories, 2)
        left.addWidget(self.classify_button)
        left.addWidget(self.category_list, 3)
        side = QWidget()
        side.setLayout(left)
        side.setFixedWidth(230)
        lay.addWidget(side)
        right = QVBoxLayout()
        self.results = ResultsModel(ctx.thumbnails, self)
        self.grid = PhotoGrid(self.results, ctx.thumbnails.size, ctx.labels, "sortGrid")
        self.grid.set_empty_text("Type two or more categories on the left (one per line, or separated by commas) "
                                 "and press Classify: every photo goes to the category it looks most like. "
                                 "No training needed.")
        self.grid.open_requested.connect(self.open_requested)
        self.grid.show_in_folder_requested.connect(self.show_in_folder_requested)
        self.actions_bar = ResultActions(self.grid, self._rows, "sortExportCsv", "categories.csv",
                                         rest_name=lambda: NONE)
        self.actions_bar.message.connect(ctx.message)
        self.actions_bar.error.connect(lambda m, k: ctx.error.emit(m, k, "export"))
        self.actions_bar.resolved.connect(lambda: ctx.resolved.emit("export"))
        self.actions_bar.attach(ctx, self.progress.emit)
        right.addWidget(self.grid, 1)
        right.addWidget(self.actions_bar)
        lay.addLayout(right, 1)

    def _rows(self) -> list[tuple[str, str, float]]:
        return self.classified.as_rows() if self.classified else []

    def run(self) -> None:
        # one per line, or separated by commas as on the command line ("bird, flower, car")
        names = [n.strip() for line in self.categories.toPlainText().splitlines() for n in line.split(",")
                 if n.strip()]
        if len(names) < 2:
            self.ctx.error.emit("Type at least two categories, one per line or separated by commas.",
                                "input", "sort")
            return
        self.classify_button.setEnabled(False)
        self.names = list(dict.fromkeys(names))
        self.ctx.jobs.start(self.ctx.lib.classify, names, name="classification", on_result=self._done,
                            on_error=self.ctx.failed("sort"), on_progress=self.progress.emit,
                            on_finished=self._finished)

    def _finished(self) -> None:
        self.classify_button.setEnabled(True)
        self.finished.emit()

    def _done(self, results) -> None:
        self.ctx.resolved.emit("sort")
        self.classified = results
        counts = results.counts()  # from the columns: no pass over a million rows here
        self.category_list.clear()
        # every category, even with 0 photos (a category that gets nothing is an answer too)
        for name in self.names + ([None] if counts.get(None) else []):
            n = counts.get(name, 0)
            it = QListWidgetItem(f"{name or NONE}  ({n})")
            it.setData(Qt.ItemDataRole.UserRole, name)
            self.category_list.addItem(it)
        best = max(range(len(self.names)), key=lambda i: counts.get(self.names[i], 0)) if self.names else 0
        self.category_list.setCurrentRow(best)

    def _show_category(self) -> None:
        it = self.category_list.currentItem()
        if it is None:
            return
        name = it.data(Qt.ItemDataRole.UserRole)
        found = self.classified
        rows = found.take(found.by_probability(found.rows_with([name]), descending=True)) if found else []
        self.results.set_items(AnswerItems(rows, NONE))
        self.count_text = f"{len(rows):,} in “{name or NONE}” · {len(self.classified):,} photos sorted"
        if not rows:
            self.grid.set_empty_text(f"No photo was sorted into “{name or NONE}”.")
        self.count_changed.emit(self.count_text)

    def reset(self) -> None:
        self.classified = []
        self.category_list.clear()
        self.results.set_items([])
        self.count_text = "Type categories and press Classify"
        self.count_changed.emit(self.count_text)
