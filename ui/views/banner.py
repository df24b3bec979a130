"""The error banner: a strip above the tabs that clears itself when its cause is gone.

It takes its own room in the page's layout (the tabs move down while it shows) instead of
floating over the page: a banner must never hide a control (an earlier floating banner covered
Accept/Reject/Retrain, Rescan and the Sort toolbar).

Each message has a *cause* key ("search", "model", "index", …). A later success of the same kind
calls ``clear(cause)``; the banner only hides if the message showing is still that cause's.
Escape closes it (the window's shortcut), and so does its ✕.
"""
from __future__ import annotations

import re

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QSizePolicy, QToolButton, QWidget

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
    def __init__(self, host: QWidget | None = None) -> None:
        super().__init__(host)
        self.setObjectName("banner")
        self.cause: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(12, 6, 8, 6)
        self.text = QLabel()
        self.text.setObjectName("bannerText")
        self.text.setWordWrap(True)
        self.text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        close = self.close_button = QToolButton()
        close.setObjectName("bannerClose")
        close.setText("✕")
        close.setToolTip("Dismiss (Esc)")
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.clicked.connect(self.dismiss)
        lay.addWidget(self.text, 1)
        lay.addWidget(close, 0, Qt.AlignmentFlag.AlignVCenter)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.dismiss)
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
        self.show()

    def clear(self, cause: str) -> None:
        """The cause is gone: hide the banner if it is showing that cause's message."""
        if self.cause == cause:
            self.dismiss()

    def dismiss(self) -> None:
        self.cause = None
        self.hide()
