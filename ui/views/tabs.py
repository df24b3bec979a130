"""Tab bar that switches tabs when a drag hovers over a tab title (drag from Search to Teach)."""
from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QTabBar

from ..models import paths_from_mime

HOVER_MS = 350  # how long a drag rests on a tab before it opens (like a file manager's spring-loading)


class DragTabBar(QTabBar):
    def __init__(self) -> None:
        super().__init__()
        self.setAcceptDrops(True)
        self._hover = -1
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._open)

    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()
            self._arm(self.tabAt(e.position().toPoint()))

    def dragMoveEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()
            self._arm(self.tabAt(e.position().toPoint()))

    def dragLeaveEvent(self, e) -> None:  # noqa: N802 - Qt
        self._timer.stop()
        self._hover = -1

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt
        # dropping on a title opens that tab; the photos go where they are dropped next
        self._timer.stop()
        i = self.tabAt(e.position().toPoint())
        if i >= 0:
            self.setCurrentIndex(i)
        e.ignore()

    def _arm(self, i: int) -> None:
        if i < 0 or i == self.currentIndex():
            self._timer.stop()
            self._hover = i
            return
        if i != self._hover:
            self._hover = i
            self._timer.start(HOVER_MS)

    def _open(self) -> None:
        if self._hover >= 0:
            self.setCurrentIndex(self._hover)


class ClickableLabel(QLabel):
    """A label that reacts to a click (the count line's "show all")."""

    def __init__(self, on_click) -> None:
        super().__init__()
        self._on_click = on_click

    def mouseReleaseEvent(self, e) -> None:  # noqa: N802 - Qt
        self._on_click()
        super().mouseReleaseEvent(e)
