"""A layout that wraps: its widgets left to right, and onto the next line when the width runs out.

Qt has no such layout; the bars above the grids (the marks filter, the actions under a result)
hold more controls than a pane of a 1024-pixel window is wide, and in a row they were squeezed
until their text was cut ("opy path", "port CSV"). In a :class:`FlowLayout` each control keeps its
size and the bar takes a second line instead (``heightForWidth``, so the pane makes room).
"""
from __future__ import annotations

from PySide6.QtCore import QPoint, QRect, QSize, Qt
from PySide6.QtWidgets import QLayout, QLayoutItem, QWidget


class FlowLayout(QLayout):
    def __init__(self, parent: QWidget | None = None, spacing: int = 6) -> None:
        super().__init__(parent)
        self._items: list[QLayoutItem] = []
        self._gap = spacing
        self.setContentsMargins(0, 0, 0, 0)

    # ------------------------------------------------------------------ QLayout's interface
    def addItem(self, item: QLayoutItem) -> None:  # noqa: N802 - Qt's name
        self._items.append(item)

    def count(self) -> int:
        return len(self._items)

    def itemAt(self, i: int) -> QLayoutItem | None:  # noqa: N802
        return self._items[i] if 0 <= i < len(self._items) else None

    def takeAt(self, i: int) -> QLayoutItem | None:  # noqa: N802
        return self._items.pop(i) if 0 <= i < len(self._items) else None

    def expandingDirections(self) -> Qt.Orientation:  # noqa: N802
        return Qt.Orientation(0)

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, width: int) -> int:  # noqa: N802
        return self._lay_out(QRect(0, 0, width, 0), apply=False)

    def setGeometry(self, rect: QRect) -> None:  # noqa: N802
        super().setGeometry(rect)
        self._lay_out(rect, apply=True)

    def sizeHint(self) -> QSize:  # noqa: N802 - one line, as wide as all of it
        hints = [it.sizeHint() for it in self._visible()]
        m = self.contentsMargins()
        width = sum(h.width() for h in hints) + self._gap * max(0, len(hints) - 1)
        height = max((h.height() for h in hints), default=0)
        return QSize(width + m.left() + m.right(), height + m.top() + m.bottom())

    def minimumSize(self) -> QSize:  # noqa: N802 - as narrow as its widest control
        m = self.contentsMargins()
        size = QSize()
        for it in self._visible():
            size = size.expandedTo(it.minimumSize())
        return QSize(size.width() + m.left() + m.right(), size.height() + m.top() + m.bottom())

    # ------------------------------------------------------------------ placing
    def _visible(self) -> list[QLayoutItem]:
        return [it for it in self._items if not it.isEmpty()]  # a hidden widget takes no room

    def _lay_out(self, rect: QRect, apply: bool) -> int:
        """Place the items in lines within ``rect`` (each line's items centred on it); returns the
        height they take."""
        m = self.contentsMargins()
        area = rect.adjusted(m.left(), m.top(), -m.right(), -m.bottom())
        lines: list[list[tuple[QLayoutItem, QSize]]] = [[]]
        x = 0
        for it in self._visible():
            hint = it.sizeHint()
            hint.setWidth(min(hint.width(), max(1, area.width())))  # a long label never runs past
            if lines[-1] and x + hint.width() > area.width():
                lines.append([])
                x = 0
            lines[-1].append((it, hint))
            x += hint.width() + self._gap
        y = area.y()
        for line in lines:
            height = max((h.height() for _, h in line), default=0)
            if apply:
                x = area.x()
                for it, hint in line:
                    it.setGeometry(QRect(QPoint(x, y + (height - hint.height()) // 2), hint))
                    x += hint.width() + self._gap
            y += height + self._gap
        used = y - self._gap - area.y() if any(lines) else 0
        return used + m.top() + m.bottom()
