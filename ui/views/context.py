"""What every view shares: the library, the worker pool, thumbnails, buckets, undo, and one way to
report errors and messages (the main window shows them). Views talk to each other only through
signals; the window wires them."""
from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoStack

from clipdesk.library import Library

from ..labels import LabelStore
from ..models import Thumbnails
from ..workers import Jobs
from .filters import MarkFilter


class Context(QObject):
    error = Signal(str, str, str)  # message, kind (error class name, "bug", "input"), cause
    resolved = Signal(str)  # cause: the problem of that kind is gone (its banner clears)
    message = Signal(str)  # a transient status line
    library_changed = Signal()  # another library was opened: views reset
    file_operation_changed = Signal()  # the last tags write / sort to undo changed (every Do ▸ menu shows it)
    auto_changed = Signal()  # an auto-apply batch ran or was undone: the Inbox reloads

    def __init__(self, lib: Library, jobs: Jobs, thumbnails: Thumbnails, labels: LabelStore,
                 undo: QUndoStack, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.lib, self.jobs, self.thumbnails, self.labels, self.undo = lib, jobs, thumbnails, labels, undo
        # The last file operation beside the photos, wherever it was started (Sort, Teach, or an
        # auto-apply batch of the folder watcher): one Undo for it, not one per tab.
        # (kind "tags" | "sort" | "auto", journal operation id or None)
        self.last_file_operation: tuple[str, str | None] | None = None
        self.marks = MarkFilter(self)  # the ratings/flags/colour filter the library's grids share
        labels.message.connect(self.message)
        labels.error.connect(lambda m, k: self.error.emit(m, k, "labels"))

    def set_last_file_operation(self, op: tuple[str, str | None] | None) -> None:
        self.last_file_operation = op
        self.file_operation_changed.emit()

    def failed(self, cause: str) -> Callable[[str, str], None]:
        """An ``on_error`` for a job: reports under ``cause``."""
        return lambda message, kind: self.error.emit(message, kind, cause)
