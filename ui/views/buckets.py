"""Buckets: one frame per label, a drop target for photos, with its photos shown small inside.

Drop photos (from any grid or the file manager) on a bucket to add them; select photos in a
bucket and press Delete (or right-click → Remove) to take them out; ✕ deletes the bucket (undoable,
Ctrl+Z). All changes go through the ``LabelStore``.
"""
from __future__ import annotations

import os

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QFrame, QHBoxLayout, QLabel, QListView, QListWidget,
                               QListWidgetItem, QMenu, QScrollArea, QSizePolicy, QToolButton, QVBoxLayout,
                               QWidget)

from clipdesk.teaching import negative_label

from ..focus import keys_stay_on_content
from ..labels import LabelStore
from ..models import Thumbnails, paths_from_mime

ICON = 56
BUCKET_W = 236  # a bucket's width with up to three photos; it grows with more, up to MAX_BUCKET_W
MAX_BUCKET_W = 560


class BucketList(QListWidget):
    """The photos of one bucket; Delete takes the selected ones out."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__()
        self.bucket = bucket
        self.setObjectName(f"bucketList:{bucket.name}")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(ICON, ICON))
        self.setGridSize(QSize(ICON + 6, ICON + 6))
        # one row that scrolls sideways: a 4th photo is beside the others, not hidden below them
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setAcceptDrops(False)  # the frame takes drops, the list only shows
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu)

    def paintEvent(self, e) -> None:  # noqa: N802 - Qt
        super().paintEvent(e)
        if self.count() == 0:
            p = QPainter(self.viewport())
            p.setPen(QColor("#80868b"))
            p.drawText(self.viewport().rect(), Qt.AlignmentFlag.AlignCenter,
                       f"Drag photos here{self.bucket.key_hint}")
            p.end()

    def selected_paths(self) -> list[str]:
        return [it.data(Qt.ItemDataRole.UserRole) for it in self.selectedItems()]

    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt
        if e.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.selected_paths():
            self.bucket.store.remove(self.bucket.name, self.selected_paths())
            e.accept()
            return
        super().keyPressEvent(e)

    def _menu(self, pos) -> None:
        it = self.itemAt(pos)
        if it is not None and not it.isSelected():
            self.setCurrentItem(it)
        paths = self.selected_paths()
        if not paths:
            return
        menu = QMenu(self)
        menu.addAction(f"Remove {len(paths)} from “{self.bucket.name}”\tDel").triggered.connect(
            lambda _c=False: self.bucket.store.remove(self.bucket.name, paths))
        menu.exec(self.viewport().mapToGlobal(pos))


class Bucket(QFrame):
    """One label as a drop target: ``bucket:<name>`` with ``bucketList:<name>`` and ``bucketCount:<name>``."""

    def __init__(self, name: str, number: int, store: LabelStore, thumbnails: Thumbnails) -> None:
        super().__init__()
        self.name = name
        self.store = store
        self.thumbnails = thumbnails
        self.setObjectName(f"bucket:{name}")
        self.setProperty("bucket", "true")
        self.setAcceptDrops(True)
        self.setFixedWidth(BUCKET_W)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(8, 6, 8, 6)
        lay.setSpacing(4)
        head = QHBoxLayout()
        self.title = QLabel()
        self.title.setObjectName("title")
        self.count = QLabel("0 photos")
        self.count.setObjectName(f"bucketCount:{name}")
        self.count.setProperty("muted", "true")
        # the photos rejected as "not this": seen and taken back from here (they teach the probe too)
        self.rejected = QToolButton()
        self.rejected.setObjectName(f"bucketRejected:{name}")
        self.rejected.setAutoRaise(True)
        self.rejected.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.rejected.setMenu(QMenu(self.rejected))
        self.rejected.menu().aboutToShow.connect(self._fill_rejected)
        self.rejected.hide()
        close = QToolButton()
        close.setObjectName(f"deleteBucket:{name}")
        close.setText("✕")
        close.setToolTip(f"Delete the bucket “{name}” (photos are kept; Ctrl+Z undoes)")
        close.clicked.connect(lambda: store.delete(self.name))
        self.key = QLabel()
        self.key.setProperty("muted", "true")
        head.addWidget(self.title)
        head.addWidget(self.key, 1)
        head.addWidget(self.count)
        head.addWidget(self.rejected)
        head.addWidget(close)
        lay.addLayout(head)
        self.list = BucketList(self)
        self.list.setFixedHeight(ICON + 10 + self.list.horizontalScrollBar().sizeHint().height())
        lay.addWidget(self.list)
        self.set_number(number)
        thumbnails.ready.connect(self._thumb_ready)
        keys_stay_on_content(self)  # built after the window applied it

    def set_number(self, number: int) -> None:
        self.number = number
        self.key_hint = f", or press {number}" if number <= 9 else ""
        self.title.setText(self.fontMetrics().elidedText(self.name, Qt.TextElideMode.ElideRight, 110))
        self.title.setToolTip(self.name)
        self.key.setText(f"key {number}" if number <= 9 else "")
        self.key.setToolTip(f"Select photos in any grid and press {number} to put them here" if number <= 9 else "")
        self.list.viewport().update()

    def set_paths(self, paths: list[str], rejected: int = 0) -> None:
        if paths != self.paths():
            self.list.clear()
            for p in paths:
                it = QListWidgetItem()
                it.setToolTip(os.path.basename(p))
                it.setData(Qt.ItemDataRole.UserRole, p)
                it.setIcon(self.thumbnails.get(p) or self.thumbnails.placeholder)
                self.list.addItem(it)
        n = len(paths)
        # the bucket takes the room its photos need (the strip was mostly empty beside clipped photos)
        self.setFixedWidth(min(MAX_BUCKET_W, max(BUCKET_W, 16 + 4 + n * (ICON + 6))))
        self.count.setText(f"{n} photo{'s' if n != 1 else ''}")
        self.rejected.setText(f"{rejected} not ▾")
        self.rejected.setToolTip(f"{rejected} photo{'s' if rejected != 1 else ''} rejected as not “{self.name}”: "
                                 "see them, or take them back")
        self.rejected.setVisible(bool(rejected))

    def _fill_rejected(self) -> None:
        menu = self.rejected.menu()
        menu.clear()
        paths = self.store.rejected(self.name)
        head = menu.addAction(f"Rejected as not “{self.name}”:")
        head.setEnabled(False)
        for p in paths[:30]:
            icon = self.thumbnails.get(p) or self.thumbnails.placeholder
            act = menu.addAction(icon, f"Take back {os.path.basename(p)}")
            act.setToolTip(p)
            act.triggered.connect(lambda _c=False, p=p: self.store.remove(negative_label(self.name), [p]))
        if len(paths) > 30:
            menu.addAction(f"… and {len(paths) - 30} more").setEnabled(False)
        if len(paths) > 1:
            menu.addSeparator()
            menu.addAction(f"Take back all {len(paths)}").triggered.connect(
                lambda _c=False, ps=list(paths): self.store.remove(negative_label(self.name), ps))

    def paths(self) -> list[str]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def _thumb_ready(self, path: str) -> None:
        for i in range(self.list.count()):
            it = self.list.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == path:
                it.setIcon(self.thumbnails.get(path) or self.thumbnails.placeholder)

    def _hover(self, on: bool) -> None:
        self.setProperty("hover", "true" if on else "false")
        self.style().unpolish(self)
        self.style().polish(self)

    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            self._hover(True)
            e.acceptProposedAction()

    def dragMoveEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()

    def dragLeaveEvent(self, e) -> None:  # noqa: N802 - Qt
        self._hover(False)

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt
        self._hover(False)
        paths = paths_from_mime(e.mimeData())
        if paths:
            e.acceptProposedAction()
            self.store.add(self.name, paths)


class BucketsPanel(QScrollArea):
    """A horizontal row of buckets that follows the LabelStore."""

    def __init__(self, store: LabelStore, thumbnails: Thumbnails) -> None:
        super().__init__()
        self.store = store
        self.thumbnails = thumbnails
        self.setObjectName("buckets")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.area = QWidget()
        self.row = QHBoxLayout(self.area)
        self.row.setContentsMargins(0, 0, 0, 0)
        self.empty = QLabel("No buckets yet. Type a name (a person, a place, a kind of photo) and press "
                            "Add bucket; then drag photos into it, or select photos and press its number key.")
        self.empty.setWordWrap(True)
        self.empty.setProperty("muted", "true")
        self.row.addWidget(self.empty, 1)
        self.row.addStretch()
        self.setWidget(self.area)
        self.buckets: dict[str, Bucket] = {}
        store.changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        names = self.store.names()
        for name in list(self.buckets):
            if name not in names:
                b = self.buckets.pop(name)
                b.hide()
                b.deleteLater()
        for i, name in enumerate(names):
            b = self.buckets.get(name)
            if b is None:
                b = Bucket(name, i + 1, self.store, self.thumbnails)
                self.buckets[name] = b
            else:
                b.set_number(i + 1)
            self.row.insertWidget(i, b)  # keeps the store's order (number keys follow it)
            b.set_paths(self.store.paths(name), len(self.store.rejected(name)))
        self.empty.setVisible(not names)
