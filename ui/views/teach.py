"""The Teach view: the whole teaching loop in one place.

1. Make buckets and fill them: from this view's own grid ("Suggested next" — the photos that would
   teach the probe most, or a diverse sample before any training — the whole library, or the
   current search), by drag, number keys 1–9, or right-click "Add to bucket".
2. Train (one bucket = that concept against the rest; several = tell them apart).
3. Apply to the library, then review per category, least sure first: accept (the photo becomes an
   example of that category) or reject (an example of "not this"); Retrain re-trains and re-applies
   in one click. Photos already in a bucket (or rejected) are not offered again.
"""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelectionModel, Qt, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (QComboBox, QFrame, QHBoxLayout, QLabel, QLineEdit, QPushButton, QSlider,
                               QSplitter, QVBoxLayout, QWidget)

from clipdesk.errors import ClipdeskError
from clipdesk.teach.probe import BACKGROUND
from clipdesk.teaching import NONE_CLASS, negative_label

from ..models import AnswerItems, Item, ResultsModel
from .actions import ResultActions
from .auto_apply import AutoApplyRow
from .buckets import BucketsPanel
from .context import Context
from .filters import FilterBar, browse_marked, suggest_marked
from .grid import PhotoGrid
from .text import ElidedLabel

PROBE = "teach"  # the probe this view trains
SUGGEST_K = 60
LIBRARY_LIMIT = 5000
SOURCES = ("Suggested next", "Whole library", "Current search")
NOT_PREFIX = "not "


class TeachView(QWidget):
    count_changed = Signal(str)
    trained = Signal()
    applied = Signal()
    suggestions_loaded = Signal()
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)
    progress = Signal(object)

    def __init__(self, ctx: Context, search_items) -> None:
        super().__init__()
        self.ctx = ctx
        self.search_items = search_items  # () -> the Search view's current items
        self.predictions: list = []
        self.concept: str | None = None  # set when the probe is one concept against the rest
        self.count_text = ""
        self._source_serial = 0
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        lay.setSpacing(6)

        row = QHBoxLayout()
        self.bucket_name = QLineEdit()
        self.bucket_name.setObjectName("bucketName")
        self.bucket_name.setPlaceholderText("New bucket, e.g. Anna")
        fm = self.bucket_name.fontMetrics()  # the whole placeholder shows, however the window is sized
        self.bucket_name.setMinimumWidth(fm.horizontalAdvance(self.bucket_name.placeholderText()) + 24)
        self.bucket_name.setMaximumWidth(max(220, self.bucket_name.minimumWidth()))
        self.bucket_name.returnPressed.connect(self.add_bucket)
        self.add_button = QPushButton("Add bucket")
        self.add_button.setObjectName("addBucket")
        self.add_button.clicked.connect(lambda _c=False: self.add_bucket())
        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("train")
        self.train_button.setProperty("primary", "true")
        self.train_button.clicked.connect(lambda _c=False: self.train())
        self.apply_button = QPushButton("Apply to library")
        self.apply_button.setObjectName("apply")
        self.apply_button.clicked.connect(lambda _c=False: self.apply())
        self.apply_button.setEnabled(False)
        self.train_result = ElidedLabel("Fill a bucket or two, then press Train.")  # one line: the row never jumps
        self.train_result.setObjectName("trainResult")
        self.train_result.setProperty("muted", "true")
        for w in (self.bucket_name, self.add_button, self.train_button, self.apply_button):
            row.addWidget(w)
        row.addWidget(self.train_result, 1)
        lay.addLayout(row)

        self.buckets = BucketsPanel(ctx.labels, ctx.thumbnails)
        self.buckets.setFixedHeight(118)
        lay.addWidget(self.buckets)
        self.auto_row = AutoApplyRow(ctx, PROBE)  # the taught categories that keep applying
        lay.addWidget(self.auto_row)

        split = QSplitter()
        split.setChildrenCollapsible(False)
        # left: photos to label
        pick = QFrame()
        pl = QVBoxLayout(pick)
        pl.setContentsMargins(0, 0, 0, 0)
        head = QHBoxLayout()
        title = QLabel("Photos")
        title.setObjectName("title")
        self.source = QComboBox()
        self.source.setObjectName("teachSource")
        self.source.addItems(SOURCES)
        self.source.setToolTip("Suggested next: the photos whose labels would teach the most")
        self.source.currentIndexChanged.connect(lambda _i: self.load_source())
        head.addWidget(title)
        head.addWidget(self.source)
        head.addStretch()
        pl.addLayout(head)
        self.pick_results = ResultsModel(ctx.thumbnails, self)
        # the same marks filter as Search's: "my 5-star photos", then "Add all shown to bucket ▸"
        self.filter_bar = FilterBar(ctx.marks, ctx.labels, lambda: [it.path for it in self.pick_results.items()],
                                    "teachFilter")
        ctx.marks.changed.connect(self._marks_changed)
        pl.addWidget(self.filter_bar)
        self.pick_results.label_captions = True  # suggestions: what the probe thinks, and how sure
        self.grid = PhotoGrid(self.pick_results, ctx.thumbnails.size, ctx.labels, "teachGrid")
        self.grid.open_requested.connect(self.open_requested)
        self.grid.show_in_folder_requested.connect(self.show_in_folder_requested)
        pl.addWidget(self.grid, 1)
        hint = QLabel("Drag photos into a bucket, or select them and press its number.")
        hint.setProperty("muted", "true")
        hint.setWordWrap(True)
        pl.addWidget(hint)
        split.addWidget(pick)

        # right: review after Apply
        review = QFrame()
        rl = QVBoxLayout(review)
        rl.setContentsMargins(0, 0, 0, 0)
        rh = QHBoxLayout()
        rtitle = QLabel("Review")
        rtitle.setObjectName("title")
        self.review_category = QComboBox()
        self.review_category.setObjectName("reviewCategory")
        self.review_category.setMinimumContentsLength(len("none of the buckets"))  # never elided
        self.review_category.currentIndexChanged.connect(lambda _i: self.show_review())
        self.confidence = QSlider(Qt.Orientation.Horizontal)
        self.confidence.setObjectName("confidence")
        self.confidence.setRange(0, 100)
        self.confidence.setValue(100)
        self.confidence.setMinimumWidth(80)
        self.confidence.setToolTip("Show photos with a confidence up to this. Confidence is calibrated on "
                                   "examples the probe did not train on: of the photos shown at 80%, about "
                                   "80% are right (if anything, a few more).")
        self.confidence.valueChanged.connect(lambda _v: self.show_review())
        self.confidence_label = QLabel("≤ 100%")
        self.confidence_label.setObjectName("confidenceLabel")
        rh.addWidget(rtitle)
        rh.addWidget(self.review_category, 2)
        rh.addWidget(self.confidence, 1)
        rh.addWidget(self.confidence_label)
        rl.addLayout(rh)
        self.review_counts = ElidedLabel("")  # how the probe sorted the library: no category takes over unseen
        self.review_counts.setObjectName("reviewCounts")
        self.review_counts.setProperty("muted", "true")
        rl.addWidget(self.review_counts)
        self.review_results = ResultsModel(ctx.thumbnails, self)
        self.review_grid = PhotoGrid(self.review_results, ctx.thumbnails.size, ctx.labels, "reviewGrid")
        self.review_grid.set_empty_text("Train, then Apply: the photos the model sorted appear here, "
                                        "least sure first, to accept or reject.")
        self.review_grid.open_requested.connect(self.open_requested)
        self.review_grid.show_in_folder_requested.connect(self.show_in_folder_requested)
        rl.addWidget(self.review_grid, 1)
        brow = QHBoxLayout()
        self.accept_button = QPushButton("Accept")
        self.accept_button.setObjectName("accept")
        self.accept_button.setToolTip("The selected photos are examples of this category (key A)")
        self.accept_button.clicked.connect(lambda _c=False: self.judge(True))
        self.reject_button = QPushButton("Reject")
        self.reject_button.setObjectName("reject")
        self.reject_button.setToolTip("The selected photos are NOT this category (key R)")
        self.reject_button.clicked.connect(lambda _c=False: self.judge(False))
        self.retrain_button = QPushButton("Retrain && apply")
        self.retrain_button.setObjectName("retrain")
        self.retrain_button.setProperty("primary", "true")
        self.retrain_button.clicked.connect(lambda _c=False: self.train(then_apply=True))
        for w in (self.accept_button, self.reject_button, self.retrain_button):
            brow.addWidget(w)
        brow.addStretch()
        rl.addLayout(brow)
        self.actions_bar = ResultActions(self.review_grid, self._rows, "exportCsv", "predictions.csv",
                                         rest_name=self.rest_name)
        self.actions_bar.message.connect(ctx.message)
        self.actions_bar.error.connect(lambda m, k: ctx.error.emit(m, k, "export"))
        self.actions_bar.resolved.connect(lambda: ctx.resolved.emit("export"))
        self.actions_bar.attach(ctx, self.progress.emit)
        rl.addWidget(self.actions_bar)
        split.addWidget(review)
        split.setSizes([500, 500])
        lay.addWidget(split, 1)

        for key, accept in (("A", True), ("R", False)):
            sc = QShortcut(QKeySequence(key), self.review_grid, context=Qt.ShortcutContext.WidgetShortcut)
            sc.activated.connect(lambda a=accept: self.judge(a))
        ctx.labels.changed.connect(self._labels_changed)
        self._update_buttons()
        self._judge_buttons()
        self._show_earlier_probe()

    def focus_target(self):
        """The grid the keys act on: Review once there is something to review, else the photos."""
        return self.review_grid if self.review_results.rowCount() else self.grid

    def _show_earlier_probe(self) -> None:
        """A probe trained in an earlier session can be applied at once."""
        try:
            probes = self.ctx.lib.probes()
        except ClipdeskError:
            probes = []
        earlier = next((p for p in probes if p.name == PROBE and p.model == self.ctx.lib.model_name), None)
        self.auto_row.load()
        if earlier is None:
            self.train_result.setText("Fill a bucket or two, then press Train.")
            self.apply_button.setEnabled(False)
            return
        self.concept = earlier.labels[0] if len(earlier.labels) == 1 else None
        self.train_result.setProperty("muted", "false")
        self.train_result.setText(f"Trained earlier (accuracy {earlier.cv_accuracy:.0%} on held-out examples): "
                                  "its answers are in Review; train again after new examples.")
        self.apply_button.setEnabled(True)
        # the Review list comes back with the probe (a relaunch or a switch back): applying reads the
        # stored vectors only, in a worker, so it costs no model load
        self.apply()

    # ------------------------------------------------------------------ buckets
    def add_bucket(self) -> None:
        if self.ctx.labels.create(self.bucket_name.text()):
            self.bucket_name.clear()

    def _labels_changed(self) -> None:
        self._update_buttons()
        if self.predictions:
            self.show_review()
        # photos just labelled leave the suggestions
        labelled = self.ctx.labels.labelled_paths()
        if self.source.currentIndex() == 0:
            keep = [it for it in self.pick_results.items() if it.path not in labelled]
            if len(keep) != self.pick_results.rowCount():
                self.pick_results.set_items(keep)
                self._count()

    def _update_buttons(self) -> None:
        filled = [n for n in self.ctx.labels.names() if self.ctx.labels.paths(n)]
        self.train_button.setEnabled(bool(filled))
        self.retrain_button.setEnabled(bool(filled) and bool(self.predictions))

    # ------------------------------------------------------------------ photo source
    def load_source(self) -> None:
        self._source_serial += 1
        serial = self._source_serial
        i = self.source.currentIndex()
        lib = self.ctx.lib
        if i == 0:
            marks = self.ctx.marks.marks
            self.grid.set_empty_text(
                f"No suggestions among the photos marked {marks.describe()}: photos with imported marks count as "
                "labelled. Choose “Whole library” above to see them." if marks.active() else
                "No photos to suggest: add a folder, or every photo is labelled already.")
            self.ctx.jobs.start(suggest_marked, lib, PROBE, SUGGEST_K, self.ctx.marks.marks, name="suggestions",
                                on_result=lambda r: self._source_loaded(serial, [
                                    Item(c.path, c.probability if c.label else None, c.label) for c in r]),
                                on_error=self.ctx.failed("teach"))
        elif i == 1:
            self.grid.set_empty_text("The library is empty: add a folder first.")
            self.filter_bar.load_colors(self.ctx.jobs)
            self.ctx.jobs.start(browse_marked, lib, LIBRARY_LIMIT, self.ctx.marks.marks, name="browse",
                                on_result=lambda r: self._source_loaded(serial, [
                                    Item(x.path, None, taken=x.taken) for x in r[0]]),
                                on_error=self.ctx.failed("teach"))
        else:
            self.grid.set_empty_text("Search for something on the Search tab first; its results show here.")
            self._source_loaded(serial, list(self.search_items()))

    def _marks_changed(self) -> None:
        """The marks filter changed: the photos shown follow (Current search follows when the
        Search tab's search, which the filter reruns, lands)."""
        if self.source.currentIndex() != 2:
            self.load_source()

    def _source_loaded(self, serial: int, items: list[Item]) -> None:
        if serial != self._source_serial:
            return
        self.pick_results.set_items(items)
        self.grid.scrollToTop()
        self._count()
        self.suggestions_loaded.emit()

    def _count(self) -> None:
        n = self.pick_results.rowCount()
        what = SOURCES[self.source.currentIndex()].lower()
        self.count_text = f"{n:,} photo{'s' if n != 1 else ''} · {what}"
        marks = self.ctx.marks.marks
        self.filter_bar.set_count(n, n if marks.active() else None)
        if marks.active():
            self.count_text += f" · {marks.describe()}"
        if self.predictions:
            self.count_text += f" · {self.review_results.rowCount():,} to review"
        self.count_changed.emit(self.count_text)

    # ------------------------------------------------------------------ train and apply
    def train(self, then_apply: bool = False) -> None:
        labels = self.ctx.labels
        names = [n for n in labels.names() if labels.paths(n)]
        if not names:
            self.ctx.error.emit("Put some photos into a bucket first (drag them, or select and press 1).",
                                "input", "teach")
            return
        negatives = [negative_label(n) for n in names if labels.rejected(n)]
        self.train_button.setEnabled(False)
        self.retrain_button.setEnabled(False)
        self.train_result.setText("Training…")
        self.focus_target().setFocus()  # 1–9, A and R act on the photos while and after it trains
        self.ctx.jobs.start(self.ctx.lib.train, PROBE, names, negatives=negatives, name="training",
                            on_result=lambda r: self._trained(r, then_apply), on_error=self.ctx.failed("teach"),
                            on_finished=self._update_buttons)

    def _trained(self, r, then_apply: bool) -> None:
        self.ctx.resolved.emit("teach")
        self.concept = r.labels[0] if len(r.labels) == 1 else None
        self.train_result.setText(
            f"Trained on {r.examples} photos: accuracy {r.cv_accuracy:.0%} on examples held out of training "
            f"(cross-validated; zero-shot would get {r.zeroshot_accuracy:.0%}).")
        self.apply_button.setEnabled(True)
        self.auto_row.rescore()  # the thresholds follow the new probe
        self.trained.emit()
        if self.source.currentIndex() == 0:
            self.load_source()  # what to label next depends on the new probe
        if then_apply:
            self.apply()

    def apply(self) -> None:
        self.apply_button.setEnabled(False)
        self.ctx.jobs.start(self.ctx.lib.predict, PROBE, name="applying", on_result=self._applied,
                            on_error=self.ctx.failed("teach"), on_progress=self.progress.emit,
                            on_finished=lambda: self.apply_button.setEnabled(True))

    def _applied(self, predictions) -> None:
        self.predictions = predictions
        self.ctx.labels.predictions = predictions  # labels given against them are corrections
        keep = self.review_category.currentData()
        counts = predictions.counts()  # from the columns: no pass over a million rows here
        cats = sorted(c for c in counts if c not in (None, NONE_CLASS, BACKGROUND))
        self.review_category.blockSignals(True)
        self.review_category.clear()
        for c in cats:
            self.review_category.addItem(c, c)
        if counts.get(None) or counts.get(NONE_CLASS):
            rest = f"{NOT_PREFIX}{self.concept}" if self.concept else "none of the buckets"
            self.review_category.addItem(rest, "")
        rest_n = sum(counts.get(k) or 0 for k in (None, NONE_CLASS, BACKGROUND))
        self.review_counts.setText("Predicted: " + " · ".join(
            [f"{c} {counts[c]:,}" for c in cats] + ([f"{self.rest_name()} {rest_n:,}"] if rest_n else [])))
        i = self.review_category.findData(keep)
        self.review_category.setCurrentIndex(max(0, i))
        self.review_category.blockSignals(False)
        self.show_review()
        self._update_buttons()
        self.applied.emit()

    # ------------------------------------------------------------------ review
    def _review_rows(self, limit: float = 100.0):
        """The predictions to review: the chosen category's photos not labelled yet, at most
        ``limit`` % sure, least sure first (those are worth a look); None before any."""
        want = self.review_category.currentData()
        if want is None or not self.predictions:
            return None
        pred = self.predictions
        rows = pred.rows_with([None, NONE_CLASS] if want == "" else [want], max_probability=(limit + 1e-6) / 100)
        labelled = self.ctx.labels.labelled_paths()
        paths = pred.paths
        rows = np.array([r for r in rows.tolist() if paths[r] not in labelled], np.int64)
        return pred.take(pred.by_probability(rows))

    def show_review(self) -> None:
        limit = self.confidence.value()
        self.confidence_label.setText(f"≤ {limit}%")
        rows = self._review_rows(limit)
        rows = [] if rows is None else rows
        current = self.review_grid.currentIndex().row()
        want = self.review_category.currentData()
        self.review_results.set_items(AnswerItems(rows, want or "none"))
        if rows:
            # current, not selected: Export and Copy act on a selection the user makes, else on all
            self.review_grid.selectionModel().setCurrentIndex(
                self.review_results.index(min(max(current, 0), len(rows) - 1)),
                QItemSelectionModel.SelectionFlag.NoUpdate)
        elif self.predictions:
            self.review_grid.set_empty_text("Nothing left to review here: every photo in this category at this "
                                            "confidence is labelled. Retrain, or pick another category.")
        self._judge_buttons()
        self._count()

    def _judge_buttons(self) -> None:
        want = self.review_category.currentData()
        ok = bool(self.review_results.rowCount()) and (want != "" or self.concept is not None)
        self.accept_button.setEnabled(ok)
        self.reject_button.setEnabled(ok)

    def judge(self, accept: bool) -> None:
        """Accept or reject the selected review photos for the category shown."""
        paths = self.review_grid.selected_paths() or [p for p in [self.review_grid.current_path()] if p]
        want = self.review_category.currentData()
        if not paths or want is None:
            return
        if want == "":  # "not <concept>": accepting confirms it is not the concept
            if self.concept is None:
                return
            (self.ctx.labels.reject if accept else self.ctx.labels.add)(self.concept, paths)
        else:
            (self.ctx.labels.add if accept else self.ctx.labels.reject)(want, paths)
        self.review_grid.setFocus()

    def _rows(self) -> list[tuple[str, str, float]]:
        """Every photo's category: the person's bucket for the photos in one (probability 1: they
        said so), else the probe's answer ("" for none of the buckets)."""
        if not self.predictions:
            return []
        labels = self.ctx.labels
        mine = {p: n for n in labels.names() for p in labels.paths(n)}
        return [(p, mine[p], 1.0) if p in mine else (p, c, prob)
                for p, c, prob in self.predictions.as_rows(blank=(NONE_CLASS,))]

    def rest_name(self) -> str:
        """What the photos in no bucket are called (the review list's last category)."""
        return f"{NOT_PREFIX}{self.concept}" if self.concept else "none of the buckets"

    def reset(self) -> None:
        self.predictions = []
        self.ctx.labels.predictions = None
        self.review_category.clear()
        self.review_results.set_items([])
        self._show_earlier_probe()
        self.load_source()
