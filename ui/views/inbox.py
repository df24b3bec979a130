"""The Inbox tab: new photos the categories that keep applying were not sure enough about.

The watcher's auto run (:func:`clipdesk.ops.auto.run`) puts every new photo under its category's
threshold into the Inbox (``auto.json``). Here they are a Review grid, least sure first, each
captioned with the category the probe would give it: Accept (A) puts it into that bucket, Reject
(R) marks it "not that", a bucket's number key puts it into that bucket; a photo captioned "none
of the buckets" is accepted as rejected from every bucket (one Ctrl+Z). Any of these labels the
photo — it teaches the probe — and takes it out of the Inbox. Once the person stops deciding and
the app is idle, the probe retrains in the background (the next auto run recalibrates its
thresholds from it). The tab title carries the count: "Inbox (3)".

The Undo here is the app's one undo of the last file operation (issue 26), so right after a batch it
takes the whole batch back (:func:`clipdesk.ops.auto.undo`).
"""
from __future__ import annotations

from PySide6.QtCore import QItemSelectionModel, Qt, QTimer, Signal
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from clipdesk.teaching import NONE_CLASS

from ..models import Item, ResultsModel
from .actions import ResultActions, _plural
from .context import Context
from .grid import PhotoGrid

IDLE_RETRAIN_MS = 3000  # quiet time after the last decision before retraining


class InboxView(QWidget):
    count_changed = Signal(str)
    title_changed = Signal(str)  # "Inbox (3)"
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)
    progress = Signal(object)
    loaded = Signal()
    retrained = Signal(object)  # the TrainReport of a background retrain

    def __init__(self, ctx: Context, probe: str) -> None:
        super().__init__()
        self.ctx, self.probe = ctx, probe
        self.entries: list[dict] = []
        self.count_text = ""
        self._serial = 0
        self._decided = False  # something was decided since the last retrain
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        head = QHBoxLayout()
        title = QLabel("New photos that need a decision")
        title.setObjectName("title")
        self.note = QLabel()
        self.note.setObjectName("inboxNote")
        self.note.setProperty("muted", "true")
        head.addWidget(title)
        head.addWidget(self.note, 1)
        lay.addLayout(head)
        self.results = ResultsModel(ctx.thumbnails, self)
        self.results.label_captions = True  # what the probe would say, and how sure
        self.grid = PhotoGrid(self.results, ctx.thumbnails.size, ctx.labels, "inboxGrid")
        self.grid.set_empty_text("The Inbox is empty. With \"Keep applying to new photos\" on (Teach tab), new "
                                 "photos the taught categories are unsure about wait here for a decision.")
        self.grid.open_requested.connect(self.open_requested)
        self.grid.show_in_folder_requested.connect(self.show_in_folder_requested)
        lay.addWidget(self.grid, 1)
        row = QHBoxLayout()
        self.accept_button = QPushButton("Accept")
        self.accept_button.setObjectName("inboxAccept")
        self.accept_button.setToolTip("The selected photos are what their caption says (key A)")
        self.accept_button.clicked.connect(lambda _c=False: self.judge(True))
        self.reject_button = QPushButton("Reject")
        self.reject_button.setObjectName("inboxReject")
        self.reject_button.setToolTip("The selected photos are NOT what their caption says (key R)")
        self.reject_button.clicked.connect(lambda _c=False: self.judge(False))
        self.undo_button = QPushButton("Undo last batch")
        self.undo_button.setObjectName("inboxUndo")
        self.undo_button.setToolTip("Take back the last file operation: an auto batch's keywords and "
                                    "sorting, or the last tags write / sort")
        self.undo_button.clicked.connect(lambda _c=False: self.actions_bar.undo_file_operation())
        hint = QLabel("Or press a bucket's number key.")
        hint.setProperty("muted", "true")
        for w in (self.accept_button, self.reject_button, hint):
            row.addWidget(w)
        row.addStretch(1)
        row.addWidget(self.undo_button)
        lay.addLayout(row)
        self.actions_bar = ResultActions(self.grid, self._rows, "inboxExport", "inbox.csv")
        self.actions_bar.message.connect(ctx.message)
        self.actions_bar.error.connect(lambda m, k: ctx.error.emit(m, k, "export"))
        self.actions_bar.attach(ctx, self.progress.emit)
        lay.addWidget(self.actions_bar)
        for key, accept in (("A", True), ("R", False)):
            sc = QShortcut(QKeySequence(key), self.grid, context=Qt.ShortcutContext.WidgetShortcut)
            sc.activated.connect(lambda a=accept: self.judge(a))
        self._retrain_timer = QTimer(self)
        self._retrain_timer.setSingleShot(True)
        self._retrain_timer.setInterval(IDLE_RETRAIN_MS)
        self._retrain_timer.timeout.connect(self._retrain_when_idle)
        ctx.labels.changed.connect(self._labels_changed)
        ctx.file_operation_changed.connect(self._show_undo)
        ctx.auto_changed.connect(self.reload)
        self._show_undo()
        self._buttons()

    def focus_target(self):
        return self.grid

    # ------------------------------------------------------------------ contents
    def reload(self) -> None:
        from clipdesk.ops import auto

        self._serial += 1
        serial = self._serial
        lib = self.ctx.lib
        self.ctx.jobs.start(lambda: auto.load_store(lib)["inbox"], name="inbox",
                            on_result=lambda e: self._loaded(serial, e), on_error=self.ctx.failed("auto"))

    def _loaded(self, serial: int, entries: list[dict]) -> None:
        if serial != self._serial:
            return
        labelled = self.ctx.labels.labelled_paths()
        undecided = [e for e in entries if e.get("path") not in labelled]
        if len(undecided) != len(entries):  # labelled elsewhere (Teach, a drag) since: decided
            self._settle([e["path"] for e in entries if e.get("path") in labelled])
        self.entries = sorted(undecided, key=lambda e: e.get("probability", 0.0))  # least sure first
        self._show_entries()
        self.loaded.emit()

    def _show_entries(self) -> None:
        """Show ``self.entries``, keeping the keys' photo at the same place in the grid."""
        current = self.grid.currentIndex().row()
        self.results.set_items([Item(e["path"], e.get("probability"), self._caption(e)) for e in self.entries])
        if self.entries:
            self.grid.selectionModel().setCurrentIndex(
                self.results.index(min(max(current, 0), len(self.entries) - 1)),
                QItemSelectionModel.SelectionFlag.NoUpdate)
        self._count()
        self._buttons()

    @staticmethod
    def _caption(e: dict) -> str:
        return "none of the buckets" if e.get("category") == NONE_CLASS else e.get("category") or "?"

    def _count(self) -> None:
        n = len(self.entries)
        self.count_text = f"{_plural(n, 'photo')} to decide" if n else "Inbox empty"
        self.note.setText(f"{_plural(n, 'photo')} under their category's threshold, least sure first" if n else "")
        self.title_changed.emit(f"Inbox ({n:,})" if n else "Inbox")
        self.count_changed.emit(self.count_text)

    def _buttons(self) -> None:
        ok = bool(self.entries)
        self.accept_button.setEnabled(ok)
        self.reject_button.setEnabled(ok)

    def _show_undo(self) -> None:
        last = self.ctx.last_file_operation
        self.undo_button.setEnabled(last is not None)
        self.undo_button.setText("Undo last batch" if last is None or last[0] == "auto"
                                 else f"Undo last {'tags write' if last[0] == 'tags' else 'sort'}")

    def _rows(self) -> list[tuple[str, str, float]]:
        return [(e["path"], self._caption(e), float(e.get("probability", 0.0))) for e in self.entries]

    # ------------------------------------------------------------------ deciding
    def judge(self, accept: bool) -> None:
        """Accept or reject the selected photos for the category each is captioned with."""
        paths = self.grid.selected_paths() or [p for p in [self.grid.current_path()] if p]
        by_path = {e["path"]: e for e in self.entries}
        buckets = set(self.ctx.labels.names())
        groups: dict[str, list[str]] = {}
        none = []  # captioned "none of the buckets": accepting it says so, as a rejection from each
        for p in paths:
            cat = by_path.get(p, {}).get("category")
            if cat in buckets:
                groups.setdefault(cat, []).append(p)
            elif cat == NONE_CLASS and accept:
                none.append(p)
        if not groups and not none:
            if paths:
                self.ctx.message.emit("Put it into a bucket with the bucket's number key.")
            return
        for cat, ps in groups.items():
            (self.ctx.labels.add if accept else self.ctx.labels.reject)(cat, ps)
        if none:
            self.ctx.labels.reject_from_all(none)
        self.grid.setFocus()

    def _labels_changed(self) -> None:
        labelled = self.ctx.labels.labelled_paths()
        decided = [e["path"] for e in self.entries if e["path"] in labelled]
        if not decided:
            return
        self.entries = [e for e in self.entries if e["path"] not in labelled]
        self._show_entries()
        self._settle(decided)
        self._decided = True
        self._retrain_timer.start()  # restarted by every decision: retrain once they stop

    def _settle(self, paths: list[str]) -> None:
        from clipdesk.ops import auto

        lib = self.ctx.lib
        self.ctx.jobs.start(auto.settle_inbox, lib, paths, name="inbox", on_error=self.ctx.failed("auto"))

    # ------------------------------------------------------------------ retraining
    def _retrain_when_idle(self) -> None:
        from clipdesk.teaching import negative_label

        if not self._decided:
            return
        if self.ctx.jobs.active:  # the app is busy: try again when it has been quiet a while
            self._retrain_timer.start()
            return
        labels = self.ctx.labels
        names = [n for n in labels.names() if labels.paths(n)]
        if not names:
            return
        self._decided = False
        negatives = [negative_label(n) for n in names if labels.rejected(n)]
        self.ctx.message.emit("Retraining with your Inbox decisions…")
        self.ctx.jobs.start(self.ctx.lib.train, self.probe, names, negatives=negatives, name="retraining",
                            on_result=self.retrained.emit, on_error=self.ctx.failed("auto"))
