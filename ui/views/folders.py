"""The library sidebar: the folders of the library, add / remove (confirmed, undoable) / rescan.

Folder changes are undoable like bucket changes: undoing an added folder forgets it again; undoing
a removal adds the folder back and re-indexes it (its photos' vectors are recomputed, which takes
as long as the first time — so removal is also confirmed first), then puts its photos back into the
buckets they were in.
"""
from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout

from .context import Context
from .dialogs import confirm


class FolderCommand(QUndoCommand):
    """Add or remove a folder. The first ``redo`` (when pushed) is skipped if the gesture already did it."""

    def __init__(self, sidebar: FoldersPanel, folder: str, adding: bool, labels: dict[str, list[str]],
                 done: bool) -> None:
        super().__init__(f"{'add' if adding else 'remove'} folder {os.path.basename(folder)}")
        self.sidebar, self.folder, self.adding, self.labels = sidebar, folder, adding, labels
        self._skip = done

    def redo(self) -> None:
        if self._skip:
            self._skip = False
            return
        (self.sidebar.index_requested.emit([self.folder]) if self.adding
         else self.sidebar.forget(self.folder))

    def undo(self) -> None:
        if self.adding:
            self.sidebar.forget(self.folder)
        else:
            self.sidebar.restore_requested.emit(self.folder, self.labels)


class FoldersPanel(QFrame):
    index_requested = Signal(list)  # folders to add / rescan ([] = every folder)
    restore_requested = Signal(str, dict)  # folder, {label: paths} to put back after indexing
    choose_requested = Signal()
    changed = Signal()

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.setObjectName("sidebar")
        lay = QVBoxLayout(self)
        t = QLabel("Library")
        t.setObjectName("title")
        lay.addWidget(t)
        self.library_label = QLabel()
        self.library_label.setObjectName("libraryPath")
        self.library_label.setProperty("muted", "true")
        self.library_label.setWordWrap(True)
        lay.addWidget(self.library_label)
        self.list = QListWidget()
        self.list.setObjectName("folders")
        self.list.setToolTip("Folders in this library")
        lay.addWidget(self.list, 1)
        row = QHBoxLayout()
        add = QPushButton("Add…")
        add.setObjectName("addFolderSide")
        add.clicked.connect(lambda _c=False: self.choose_requested.emit())
        self.remove_button = QPushButton("Remove")
        self.remove_button.setObjectName("removeFolder")
        self.remove_button.setToolTip("Forget the selected folder (the photos on disk are not touched)")
        self.remove_button.clicked.connect(lambda _c=False: self.remove_selected())
        rescan = QPushButton("Rescan")
        rescan.setObjectName("rescan")
        rescan.clicked.connect(lambda _c=False: self.index_requested.emit([]))
        for b in (add, self.remove_button, rescan):
            row.addWidget(b)
        lay.addLayout(row)
        self.setMinimumWidth(190)
        self.setMaximumWidth(320)

    def refresh(self, extra: list[str] = ()) -> None:
        folders = list(dict.fromkeys(self.ctx.lib.catalog.folders() + list(extra)))
        current = self.list.currentItem().data(Qt.ItemDataRole.UserRole) if self.list.currentItem() else None
        self.list.clear()
        for f in folders:
            it = QListWidgetItem(os.path.basename(f.rstrip(os.sep)) or f)
            it.setToolTip(f)
            it.setData(Qt.ItemDataRole.UserRole, f)
            self.list.addItem(it)
            if f == current:
                self.list.setCurrentItem(it)
        self.library_label.setText(self.ctx.lib.folder)
        self.remove_button.setEnabled(bool(folders))

    def folders(self) -> list[str]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def added(self, folders: list[str]) -> None:
        """Folders the user just added (indexing has started): one undo step each."""
        for f in folders:
            self.ctx.undo.push(FolderCommand(self, f, True, {}, done=True))

    def remove_selected(self) -> None:
        it = self.list.currentItem()
        if it is None:
            self.ctx.message.emit("Select a folder to remove first.")
            return
        folder = it.data(Qt.ItemDataRole.UserRole)
        prefix = folder.rstrip(os.sep) + os.sep
        labels = {n: [p for p in paths if p.startswith(prefix)] for n, paths in self.ctx.lib.labels().items()}
        labels = {n: p for n, p in labels.items() if p}
        n = len(self.ctx.lib.catalog.filter_ids(folder))
        if not confirm(self, "Remove folder",
                       f"Forget {folder} and its {n:,} indexed photo{'s' if n != 1 else ''}?\n\n"
                       "The photos on disk are not touched. Ctrl+Z adds the folder back, but its photos "
                       "have to be indexed again.", "Remove folder"):
            return
        self.forget(folder)
        self.ctx.undo.push(FolderCommand(self, folder, False, labels, done=True))

    def forget(self, folder: str) -> None:
        self.ctx.jobs.start(self.ctx.lib.remove_folder, folder, name="removing a folder",
                            on_result=lambda _n: self.changed.emit(), on_error=self.ctx.failed("folders"))
