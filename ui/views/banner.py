"""The error banner: floats over the page, bottom centre (the layout never shifts under the pointer)
and clears itself when its cause is gone.

Each message has a *cause* key ("search", "model", "index", …). A later success of the same kind
calls ``clear(cause)``; the banner only hides if the message showing is still that cause's.
"""
from __future__ import annotations

import re

from PySide6.QtCore import QEvent, QObject, Qt, QTimer
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QFrame, QGraphicsDropShadowEffect, QHBoxLayout, QLabel, QToolButton, QWidget

INFO_MS = 6000  # information (not an error) hides by itself
# Core messages also serve the command line: "(… 'clipdesk index --reembed …')" or "pass it with
# --model X --weights FILE". In the app those words mean nothing; the app's own ways are on screen.
_COMMAND_ASIDE = re.compile(r"\s*\((?:[^()]*?)(?:--[a-z]|'clipdesk |`clipdesk )[^()]*\)")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_COMMAND = re.compile(r"(?:^|\s)--[a-z][a-z-]*|'clipdesk [a-z]|`clipdesk [a-z]")


def without_command_line(text: str) -> str:
    """``text`` without the asides and sentences that tell a shell user what to type."""
    text = _COMMAND_ASIDE.sub("", text)
    kept = [s for s in _SENTENCE.split(text) if not _COMMAND.search(s)]
    return " ".join(kept) if kept else text


class Banner(QFrame):
    def __init__(self, host: QWidget) -> None:
        super().__init__(host)
        self.host = host
        self.setObjectName("banner")
        self.cause: str | None = None
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 8, 8, 8)
        self.text = QLabel()
        self.text.setObjectName("bannerText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = self.close_button = QToolButton()
        close.setObjectName("bannerClose")
        close.setText("✕")
        close.setToolTip("Dismiss")
        close.clicked.connect(self.dismiss)
        lay.addWidget(self.text, 1)
        lay.addWidget(close, 0, Qt.AlignmentFlag.AlignVCenter)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.dismiss)
        shadow = QGraphicsDropShadowEffect(self)
        shadow.setBlurRadius(18)
        shadow.setOffset(0, 2)
        shadow.setColor(QColor(0, 0, 0, 60))
        self.setGraphicsEffect(shadow)
        host.installEventFilter(self)
        self.hide()

    def show_message(self, text: str, cause: str = "error", info: bool = False) -> None:
        self.cause = cause
        self.text.setText(text)  # whole message, wrapped: never cut mid-word
        self.setProperty("info", "true" if info else "false")
        for w in (self, self.text):  # the label's colour depends on the frame's property
            w.style().unpolish(w)
            w.style().polish(w)
        self._timer.stop()
        if info:
            self._timer.start(INFO_MS)
        self._place()
        self.show()
        self.raise_()

    def clear(self, cause: str) -> None:
        """The cause is gone: hide the banner if it is showing that cause's message."""
        if self.cause == cause:
            self.dismiss()

    def dismiss(self) -> None:
        self.cause = None
        self.hide()

    def _place(self) -> None:
        # bottom centre, over the grids' last row: the tabs and the search field stay clickable
        width = max(200, min(self.host.width() - 40, 900))
        self.setFixedWidth(width)
        m = self.layout().contentsMargins()
        text_w = width - m.left() - m.right() - self.layout().spacing() - self.close_button.sizeHint().width()
        self.setFixedHeight(max(self.text.heightForWidth(text_w), self.close_button.sizeHint().height())
                            + m.top() + m.bottom() + 6)
        self.move((self.host.width() - self.width()) // 2, self.host.height() - self.height() - 6)

    def eventFilter(self, obj: QObject, e: QEvent) -> bool:  # noqa: N802 - Qt
        if obj is self.host and e.type() == QEvent.Type.Resize and self.isVisible():
            self._place()
        return False
