"""The Duplicates view: find exact copies and near-duplicates, choose what to keep, move the others
to the desktop's Trash — and take it back with Ctrl+Z.

"Find duplicates" runs ``Library.find_duplicates`` in a worker (progress, Cancel). Each group is a
card: exact copies and near-duplicates look different; every photo shows its thumbnail (fitted,
never cropped), resolution, file size, date and folder; the suggested keeper is pre-selected and
any other can be chosen. "Move the others to the Trash" (one group, or every group at once) asks
first, saying how many files, then runs ``duplicates.trash_groups`` — one journaled operation —
in a worker. The operation goes on the window's undo stack, so Ctrl+Z (or Undo) runs
``duplicates.undo_trash``: the files come back from the Trash, are indexed again and get their
labels back. Cards are built a page at a time, so thousands of groups cost a few widgets.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace

from PySide6.QtCore import QSettings, QSize, Qt, Signal
from PySide6.QtGui import QFontMetrics, QGuiApplication, QUndoCommand
from PySide6.QtWidgets import (QButtonGroup, QDoubleSpinBox, QFrame, QHBoxLayout, QLabel, QMenu, QMessageBox,
                               QProgressBar, QPushButton, QRadioButton, QScrollArea, QSizePolicy, QVBoxLayout,
                               QWidget)

from clipdesk import duplicates as dup
from clipdesk.errors import ClipdeskError

from ..focus import keys_stay_on_content
from .actions import CONFLICTING_JOBS, _plural
from .context import Context
from .grid import fit_rect
from .text import ElidedLabel, human_size

SETTING = "duplicates/threshold"
TRASH_JOB = "moving photos to the Trash"
FIND_JOB = "finding duplicates"
PAGE = 40  # group cards built at a time ("Show more")
THUMB = 150  # the square a thumbnail is fitted into
CELL_W = THUMB + 24
STAGES = {"duplicates": "comparing photos", "pixels": "checking pixels", "done": "grouping",
          "trash": "moving to the trash"}
STYLE = """
QFrame[dupCard="true"] { background: white; border: 1px solid #dfe3e8; border-radius: 8px; }
QFrame[dupCard="true"][resolved="true"] { background: #f1f3f4; }
QLabel[chip="exact"] { background: #e6f4ea; color: #137333; border-radius: 9px; padding: 2px 8px; font-weight: 600; }
QLabel[chip="near"] { background: #fef7e0; color: #b06000; border-radius: 9px; padding: 2px 8px; font-weight: 600; }
QFrame[dupCell="true"] { border: 2px solid transparent; border-radius: 6px; }
QFrame[dupCell="true"][keep="true"] { border: 2px solid #1a73e8; background: #eef3fd; }
QLabel[dupThumb="true"] { background: #f1f3f4; border-radius: 4px; }
QScrollArea[dupRow="true"], QScrollArea[dupRow="true"] > QWidget > QWidget { background: transparent; }
"""


def describe_date(taken: float | None) -> str:
    return time.strftime("%d %b %Y %H:%M", time.localtime(taken)) if taken else "no date"


class TrashCommand(QUndoCommand):
    """Duplicates moved to the Trash, on the window's undo stack: undo brings them back (a job).

    Pushed after the move happened, so its first redo does nothing; once undone it is dropped
    from the stack (moving the files again is a new, confirmed action, not a silent redo)."""

    def __init__(self, view: DuplicatesView, operation: str | None, n: int) -> None:
        super().__init__(f"move {_plural(n, 'photo')} to the Trash")
        self.view, self.operation = view, operation

    def redo(self) -> None:
        pass  # pushed after the files moved

    def undo(self) -> None:
        self.setObsolete(True)
        self.view.undo_trash(self.operation)


class PhotoCell(QFrame):
    """One photo of a group: thumbnail, Keep, name, resolution · size, date, folder."""

    def __init__(self, card: GroupCard, k: int, photo: dup.DuplicatePhoto, kind: str) -> None:
        super().__init__()
        self.card, self.photo = card, photo
        n = card.n
        self.setObjectName(f"dupPhoto:{n}:{k}")
        self.setProperty("dupCell", "true")
        self.setFixedWidth(CELL_W)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.setSpacing(2)
        self.thumb = QLabel()
        self.thumb.setObjectName(f"dupThumb:{n}:{k}")
        self.thumb.setProperty("dupThumb", "true")
        self.thumb.setFixedSize(THUMB, THUMB)
        self.thumb.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumb.setToolTip(photo.path)
        self.keep = QRadioButton("Keep")
        self.keep.setObjectName(f"dupKeep:{n}:{k}")
        self.keep.setToolTip("Keep this one; the others of the group go to the Trash")
        fm = QFontMetrics(self.font())
        width = CELL_W - 14
        name = os.path.basename(photo.path)
        folder = os.path.dirname(photo.path)
        res = f"{photo.width} × {photo.height}" if photo.width and photo.height else "size unknown"
        score = "same bytes" if kind == "exact" else f"similarity {photo.score:.2f}"
        lines = [(fm.elidedText(name, Qt.TextElideMode.ElideMiddle, width), "dupName", False),
                 (f"{res} · {human_size(photo.size)}", "dupInfo", True),
                 (describe_date(photo.taken), "dupDate", True),
                 (fm.elidedText(folder, Qt.TextElideMode.ElideMiddle, width), "dupFolder", True)]
        if k:  # the keeper is what the others are compared with
            lines.append((score, "dupScore", True))
        lay.addWidget(self.thumb, 0, Qt.AlignmentFlag.AlignHCenter)
        lay.addWidget(self.keep)
        for text, name_, muted in lines:
            label = QLabel(text)
            label.setObjectName(f"{name_}:{n}:{k}")
            label.setToolTip(photo.path)
            if muted:
                label.setProperty("muted", "true")
            else:
                f = label.font()
                f.setBold(True)
                label.setFont(f)
            lay.addWidget(label)
        lay.addStretch(1)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)
        self.show_thumbnail()

    def show_thumbnail(self) -> None:
        pm = self.card.view.ctx.thumbnails.get(self.photo.path)
        if pm is None or pm.isNull():
            return
        r = fit_rect(pm.size(), self.thumb.rect())  # fitted inside, never cropped, ≤ 2× upscaled
        self.thumb.setPixmap(pm.scaled(QSize(r.width(), r.height()), Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation))

    def set_keep(self, keep: bool) -> None:
        if self.property("keep") != ("true" if keep else "false"):
            self.setProperty("keep", "true" if keep else "false")
            self.style().unpolish(self)
            self.style().polish(self)

    def mouseDoubleClickEvent(self, e) -> None:  # noqa: N802 - Qt
        self.card.view.open_requested.emit(self.photo.path)

    def _menu(self, pos) -> None:
        menu = QMenu(self)
        view = self.card.view
        menu.addAction("Open").triggered.connect(lambda _c=False: view.open_requested.emit(self.photo.path))
        menu.addAction("Show in folder").triggered.connect(
            lambda _c=False: view.show_in_folder_requested.emit(self.photo.path))
        menu.addAction("Copy path").triggered.connect(
            lambda _c=False: QGuiApplication.clipboard().setText(self.photo.path))
        menu.addAction("Keep this one").triggered.connect(lambda _c=False: self.keep.setChecked(True))
        menu.exec(self.mapToGlobal(pos))


class GroupCard(QFrame):
    """One duplicate group: what kind, its photos side by side, the keeper, its Trash button."""

    def __init__(self, view: DuplicatesView, n: int, group: dup.DuplicateGroup) -> None:
        super().__init__()
        self.view, self.n, self.group = view, n, group
        self.keep_path = group.suggested_keep
        self.resolved = False
        self.setObjectName(f"dupGroup:{n}")
        self.setProperty("dupCard", "true")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(10, 8, 10, 8)
        head = QHBoxLayout()
        chip = QLabel("Exact copies" if group.kind == "exact" else "Near-duplicates")
        chip.setObjectName(f"dupKind:{n}")
        chip.setProperty("chip", group.kind)
        chip.setToolTip("The same bytes, under other names or folders" if group.kind == "exact" else
                        "The same picture re-encoded, resized, slightly cropped or converted "
                        "(checked on the pixels, not only the similarity)")
        self.summary = QLabel()
        self.summary.setObjectName(f"dupSummary:{n}")
        self.summary.setProperty("muted", "true")
        self.summary.setWordWrap(True)
        self.summary.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.trash_button = QPushButton("Move the others to the Trash")
        self.trash_button.setObjectName(f"dupTrash:{n}")
        self.trash_button.setToolTip("Keep the selected photo; move the others of this group to the Trash "
                                     "(Ctrl+Z brings them back)")
        self.trash_button.clicked.connect(lambda _c=False: view.confirm_and_trash([self]))
        head.addWidget(chip)
        head.addWidget(self.summary, 1)
        head.addWidget(self.trash_button)
        lay.addLayout(head)
        row = QWidget()
        cells = QHBoxLayout(row)
        cells.setContentsMargins(0, 0, 0, 0)
        cells.setSpacing(8)
        self.keep_group = QButtonGroup(self)
        self.cells: list[PhotoCell] = []
        for k, p in enumerate(group.photos):
            cell = PhotoCell(self, k, p, group.kind)
            self.cells.append(cell)
            self.keep_group.addButton(cell.keep, k)
            cells.addWidget(cell)
            cell.keep.setChecked(p.path == self.keep_path)
        cells.addStretch(1)
        self.keep_group.idToggled.connect(self._keep_toggled)
        scroll = QScrollArea()  # a group wider than the window scrolls sideways
        scroll.setObjectName(f"dupPhotos:{n}")
        scroll.setProperty("dupRow", "true")
        scroll.setWidget(row)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setSizeAdjustPolicy(QScrollArea.SizeAdjustPolicy.AdjustToContents)
        scroll.setMinimumHeight(row.sizeHint().height() + scroll.horizontalScrollBar().sizeHint().height())
        lay.addWidget(scroll)
        keys_stay_on_content(self)  # built after the window applied it
        self._update()

    def _keep_toggled(self, k: int, checked: bool) -> None:
        if checked:
            self.keep_path = self.group.photos[k].path
            self._update()

    def others(self) -> list[str]:
        return [p.path for p in self.group.photos if p.path != self.keep_path]

    def _update(self) -> None:
        for c in self.cells:
            c.set_keep(c.photo.path == self.keep_path)
        if not self.resolved:
            self.summary.setText(f"{len(self.group.photos)} photos · keep 1, "
                                 f"{len(self.group.photos) - 1} can go")

    def mark_trashed(self, result: dup.TrashResult) -> None:
        """The others went to the Trash: show what is left, lock the choice."""
        self.resolved = True
        gone = set(result.trashed)
        for c in self.cells:
            c.setVisible(c.photo.path not in gone)
            c.keep.setEnabled(False)
        failed = f"; {_plural(len(result.failed), 'file')} left: " + "; ".join(
            f"{os.path.basename(p)} ({r})" for p, r in result.failed[:2]) if result.failed else ""
        undo = f" — Ctrl+Z brings {'it' if len(result.trashed) == 1 else 'them'} back" if result.undoable else \
            " — restore them from the desktop's Trash (this platform does not say where it keeps them)"
        self.summary.setText(f"Kept {os.path.basename(result.kept)}; {_plural(len(result.trashed), 'photo')} "
                             f"moved to the Trash{undo if result.trashed else ''}{failed}")
        self.trash_button.setEnabled(False)
        self.setProperty("resolved", "true")
        self.style().unpolish(self)
        self.style().polish(self)


class DuplicatesView(QWidget):
    count_changed = Signal(str)
    progress = Signal(object)
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)
    changed = Signal()  # photos left or came back: the library's other views refresh
    finished = Signal()  # a search for duplicates ended (found, failed or cancelled)

    def __init__(self, ctx: Context, settings: QSettings) -> None:
        super().__init__()
        self.ctx, self.settings = ctx, settings
        self.setStyleSheet(STYLE)
        self.groups: list[dup.DuplicateGroup] = []
        self.cards: list[GroupCard] = []
        self._cells: dict[str, list[PhotoCell]] = {}  # path -> its cells, for thumbnails landing
        self.count_text = "Find exact copies and near-duplicates"
        self._find = None
        self._searched = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        top = QHBoxLayout()
        self.find_button = QPushButton("Find duplicates")
        self.find_button.setObjectName("findDuplicates")
        self.find_button.setProperty("primary", "true")
        self.find_button.clicked.connect(lambda _c=False: self.find())
        self.threshold = QDoubleSpinBox()
        self.threshold.setObjectName("duplicateThreshold")
        self.threshold.setRange(0.5, 1.0)
        self.threshold.setSingleStep(0.01)
        self.threshold.setDecimals(2)
        self.threshold.setValue(self._saved_threshold())
        self.threshold.setToolTip("How similar two photos must look to be compared on their pixels "
                                  f"(0.5–1; default {dup.DEFAULT_THRESHOLD:.2f}). Lower finds more candidates; "
                                  "the pixel check still keeps merely similar photos apart.")
        self.threshold.valueChanged.connect(lambda v: self.settings.setValue(SETTING, float(v)))
        label = QLabel("Similarity at least")
        label.setBuddy(self.threshold)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setObjectName("cancelDuplicates")
        self.cancel_button.clicked.connect(lambda _c=False: self.cancel())
        self.cancel_button.hide()
        self.progress_bar = QProgressBar()
        self.progress_bar.setObjectName("duplicateProgress")
        self.progress_bar.setMaximumWidth(200)
        self.progress_bar.hide()
        self.summary = ElidedLabel()  # gives way on a small window (the count label says the same)
        self.summary.setObjectName("duplicateSummary")
        self.summary.setProperty("muted", "true")
        self.trash_all = QPushButton("Move the others to the Trash (all groups)")
        self.trash_all.setObjectName("trashAllDuplicates")
        self.trash_all.setToolTip("In every group, keep the selected photo and move the others to the Trash")
        self.trash_all.clicked.connect(lambda _c=False: self.confirm_and_trash(self._open_cards(), everything=True))
        self.trash_all.setEnabled(False)
        for w in (self.find_button, label, self.threshold, self.progress_bar, self.cancel_button):
            top.addWidget(w)
        top.addWidget(self.summary, 1)
        top.addWidget(self.trash_all)
        lay.addLayout(top)
        self.empty = QLabel()
        self.empty.setObjectName("duplicatesEmpty")
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.empty.setProperty("muted", "true")
        self.empty.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        self.scroll = QScrollArea()
        self.scroll.setObjectName("duplicateGroups")
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Focus rests on the groups, not on the similarity field, when a button it was on goes off:
        # Ctrl+Z then undoes the last move instead of editing the number.
        self.scroll.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        inner = QWidget()
        inner.setObjectName("page")
        self.list = QVBoxLayout(inner)
        self.list.setContentsMargins(0, 4, 4, 4)
        self.list.setSpacing(8)
        self.more = QPushButton()
        self.more.setObjectName("moreDuplicates")
        self.more.clicked.connect(lambda _c=False: self._build_page())
        self.list.addWidget(self.more)
        self.list.addStretch(1)
        self.scroll.setWidget(inner)
        lay.addWidget(self.empty, 1)
        lay.addWidget(self.scroll, 1)
        ctx.thumbnails.ready.connect(self._thumbnail_ready)
        ctx.library_changed.connect(self.reset)
        self._show_state()

    # ------------------------------------------------------------------ state
    def _saved_threshold(self) -> float:
        try:
            value = float(self.settings.value(SETTING, dup.library_threshold(self.ctx.lib)))
            dup.check_threshold(value)
            return value
        except (TypeError, ValueError, ClipdeskError):
            return dup.DEFAULT_THRESHOLD

    def _open_cards(self) -> list[GroupCard]:
        return [c for c in self.cards if not c.resolved]

    def _show_state(self) -> None:
        shown = bool(self.cards)
        self.scroll.setVisible(shown)
        self.empty.setVisible(not shown)
        if not self._searched:
            self.empty.setText("Find exact copies and near-duplicates (re-encoded, resized, slightly cropped or "
                               "converted versions of a photo).\nNothing is moved until you choose; what you move "
                               "goes to the desktop's Trash and Ctrl+Z brings it back.")
        elif not self.groups:
            n = self.ctx.lib.catalog.counts()[0]
            self.empty.setText(f"No duplicates among {_plural(n, 'photo')} at similarity ≥ "
                               f"{self.threshold.value():.2f}.\nLower the similarity to look further; the pixel "
                               "check still keeps merely similar photos apart.")
        left = len(self.groups) - len(self.cards)
        self.more.setVisible(left > 0)
        self.more.setText(f"Show {min(PAGE, left)} more group{'s' if min(PAGE, left) != 1 else ''} "
                          f"({left:,} not shown)")
        self.trash_all.setEnabled((bool(self._open_cards()) or left > 0) and self._find is None)
        if self._searched:
            exact = sum(g.kind == "exact" for g in self.groups)
            waiting = [c.group for c in self._open_cards()] + self.groups[len(self.cards):]
            can_go = sum(len(g.photos) - 1 for g in waiting)
            self.summary.setText(f"{_plural(len(self.groups), 'group')} ({exact:,} exact, "
                                 f"{len(self.groups) - exact:,} near) · {_plural(can_go, 'photo')} could go"
                                 if self.groups else "")
            self.count_text = (f"{_plural(len(self.groups), 'duplicate group')} · {_plural(can_go, 'photo')} could go"
                               if self.groups else "No duplicates")
        else:
            self.summary.setText("")
            self.count_text = "Find exact copies and near-duplicates"
        self.count_changed.emit(self.count_text)

    def reset(self) -> None:
        self.cancel()
        self._searched = False
        self.groups = []
        self._clear_cards()
        self._show_state()

    def _clear_cards(self) -> None:
        for c in self.cards:
            self.list.removeWidget(c)
            c.deleteLater()
        self.cards = []
        self._cells = {}

    def _build_page(self) -> None:
        start = len(self.cards)
        for n in range(start, min(len(self.groups), start + PAGE)):
            card = GroupCard(self, n, self.groups[n])
            self.list.insertWidget(self.list.indexOf(self.more), card)
            self.cards.append(card)
            for cell in card.cells:
                self._cells.setdefault(cell.photo.path, []).append(cell)
        self._show_state()

    def _thumbnail_ready(self, path: str) -> None:
        for cell in self._cells.get(path, ()):
            cell.show_thumbnail()

    # ------------------------------------------------------------------ finding
    def find(self) -> None:
        if self._find is not None:
            return
        self.scroll.setFocus()
        self.find_button.setEnabled(False)
        self.cancel_button.show()
        self.progress_bar.setRange(0, 0)
        self.progress_bar.show()
        self.trash_all.setEnabled(False)
        self.summary.setText("Looking for duplicates…")
        self._find = self.ctx.jobs.start(self.ctx.lib.find_duplicates, float(self.threshold.value()), name=FIND_JOB,
                                         on_result=self._found, on_error=self.ctx.failed("duplicates"),
                                         on_progress=self._progress, on_cancelled=self._cancelled,
                                         on_finished=self._find_finished)

    def cancel(self) -> None:
        if self._find is not None:
            self._find.cancel()
            self.summary.setText("Cancelling…")

    def _progress(self, p) -> None:
        if p.total:
            self.progress_bar.setRange(0, p.total)
            self.progress_bar.setValue(p.done)
        self.progress_bar.setFormat(f"{STAGES.get(p.stage, p.stage).capitalize()} %p%")
        self.progress.emit(replace(p, stage=STAGES.get(p.stage, p.stage)))

    def _found(self, report: dup.DuplicateReport) -> None:
        self.ctx.resolved.emit("duplicates")
        self._searched = True
        self.groups = list(report.groups)
        self._clear_cards()
        self._build_page()
        if report.unreadable:
            self.ctx.message.emit(f"{_plural(len(report.unreadable), 'photo')} could not be read and were "
                                  "left out of the comparison.")

    def _cancelled(self) -> None:
        self.ctx.message.emit("Finding duplicates cancelled.")

    def focus_target(self):
        return self.scroll

    def _find_finished(self) -> None:
        self._find = None
        self.find_button.setEnabled(True)
        self.cancel_button.hide()
        self.progress_bar.hide()
        self._show_state()
        if self.scroll.isVisible():
            self.scroll.setFocus()  # the groups, not the similarity box, take the keys
        self.finished.emit()

    # ------------------------------------------------------------------ the Trash
    def _busy(self) -> bool:
        running = [w.name for w in self.ctx.jobs.active if w.name in CONFLICTING_JOBS]
        if running:
            self.ctx.error.emit(f"{running[0].capitalize()} is still running: wait for it, or cancel it, first.",
                                "input", "duplicates")
        return bool(running)

    def confirm_and_trash(self, cards: list[GroupCard], everything: bool = False) -> None:
        """Ask (saying how many files), then move the others of ``cards`` to the Trash in a worker.
        ``everything``: the groups not shown yet too (each keeps its suggested photo)."""
        cards = [c for c in cards if not c.resolved and c.others()]
        rest = self.groups[len(self.cards):] if everything else []
        if not (cards or rest) or self._busy():
            return
        files = sum(len(c.others()) for c in cards) + sum(len(g.photos) - 1 for g in rest)
        groups = len(cards) + len(rest)
        where = "this group" if groups == 1 and not everything else _plural(groups, "group")
        if not self.ask(f"Move {_plural(files, 'file')} from {where} to the Trash?",
                        "The selected photo of each group is kept; labels of the others move to it.\n"
                        "The files go to the desktop's Trash, not deleted: Ctrl+Z (Undo) brings them back.",
                        f"Move {_plural(files, 'file')} to the Trash"):
            return
        choices = [(c.group, c.keep_path) for c in cards] + [(g, None) for g in rest]
        self.scroll.setFocus()
        for c in cards:
            c.trash_button.setEnabled(False)
        self.trash_all.setEnabled(False)
        self.ctx.jobs.start(dup.trash_groups, self.ctx.lib, choices, name=TRASH_JOB,
                            on_result=lambda results, cs=cards, r=rest: self._trashed(cs, r, results),
                            on_error=self._trash_failed(cards), on_cancelled=self._trash_cancelled,
                            on_progress=self._progress)

    def ask(self, title: str, text: str, action: str) -> bool:
        """The confirmation: a Qt message box whose buttons the end-to-end harness can find."""
        box = QMessageBox(QMessageBox.Icon.Question, "Move to the Trash", title, parent=self)
        box.setObjectName("confirmTrash")
        box.setInformativeText(text)
        ok = box.addButton(action, QMessageBox.ButtonRole.AcceptRole)
        ok.setObjectName("confirmTrashButton")
        cancel = box.addButton(QMessageBox.StandardButton.Cancel)
        cancel.setObjectName("cancelTrashButton")
        box.setDefaultButton(ok)
        box.exec()
        return box.clickedButton() is ok

    def _trashed(self, cards: list[GroupCard], rest: list[dup.DuplicateGroup],
                 results: list[dup.TrashResult]) -> None:
        self.ctx.resolved.emit("duplicates")
        for card, r in zip(cards, results):
            card.mark_trashed(r)
        done = {id(g) for g, r in zip(rest, results[len(cards):]) if not r.failed}
        self.groups = [g for g in self.groups if id(g) not in done]  # groups never shown, now resolved
        moved = sum(len(r.trashed) for r in results)
        failed = [(p, why) for r in results for p, why in r.failed]
        operation = next((r.operation for r in results if r.operation), None)
        if moved and operation:
            self.ctx.undo.push(TrashCommand(self, operation, moved))
        undoable = all(r.undoable for r in results)
        self.ctx.message.emit(f"Moved {_plural(moved, 'photo')} to the Trash."
                              + (f" Ctrl+Z brings {'it' if moved == 1 else 'them'} back." if moved and undoable else ""))
        if failed:
            self.ctx.error.emit(f"{_plural(len(failed), 'file')} stayed where they were: "
                                + "; ".join(f"{p}: {why}" for p, why in failed[:3]), "TrashError", "duplicates")
        if moved:
            self.changed.emit()
        self._show_state()

    def _trash_failed(self, cards: list[GroupCard]):
        def failed(message: str, kind: str) -> None:
            for c in cards:
                c.trash_button.setEnabled(not c.resolved)
            self._show_state()
            self.ctx.error.emit(message, kind, "duplicates")
        return failed

    def _trash_cancelled(self) -> None:
        # What moved before the stop is journaled: Ctrl+Z takes back the newest trash operation.
        self.ctx.undo.push(TrashCommand(self, None, 0))
        self.ctx.message.emit("Stopped: what was moved so far can be brought back with Ctrl+Z.")
        self.changed.emit()
        self.find()

    def undo_trash(self, operation: str | None) -> None:
        """Bring the photos of ``operation`` back from the Trash (a worker; called by Ctrl+Z)."""
        self.ctx.message.emit("Bringing the photos back from the Trash…")
        self.ctx.jobs.start(dup.undo_trash, self.ctx.lib, operation, name="undo", on_result=self._untrashed,
                            on_error=self.ctx.failed("duplicates"), on_progress=self.progress.emit)

    def _untrashed(self, report) -> None:
        self.ctx.resolved.emit("duplicates")
        self.ctx.message.emit(f"{_plural(report.reverted, 'photo')} back from the Trash.")
        if report.conflicts:
            self.ctx.error.emit(f"{_plural(len(report.conflicts), 'file')} could not be brought back: "
                                + "; ".join(f"{c.path}: {c.reason}" for c in report.conflicts[:3]),
                                "TrashError", "duplicates")
        self.changed.emit()
        if self._searched:
            self.find()  # the groups as they are now
