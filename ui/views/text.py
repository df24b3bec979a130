"""How the app writes text: sizes one way everywhere (the preview and the duplicates cards once
disagreed, "kB" against "KB"), and one-line labels that elide instead of wrapping (a wrapping
message made the toolbar it sits in jump)."""
from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPainter
from PySide6.QtWidgets import QLabel

UNITS = ("kB", "MB", "GB", "TB")  # decimal, as desktop file managers show them


def human_size(n: int | None) -> str:
    """``834 bytes``, ``12 kB``, ``3.4 MB``: whole kilobytes, one decimal from megabytes on."""
    if n is None:
        return "size unknown"
    if n < 1000:
        return f"{n:,} byte{'s' if n != 1 else ''}"
    value = n / 1000
    for unit in UNITS:
        if value < 1000 or unit == UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "kB" else f"{value:.1f} {unit}"
        value /= 1000
    return ""


class ElidedLabel(QLabel):
    """A one-line label that ends in "…" when there is no room; the whole text is its tooltip."""

    def setText(self, text: str) -> None:  # noqa: N802 - Qt
        super().setText(text)
        self.setToolTip(text)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt
        return QSize(0, super().minimumSizeHint().height())

    def paintEvent(self, e) -> None:  # noqa: N802 - Qt
        p = QPainter(self)
        p.setPen(self.palette().color(self.foregroundRole()))
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, self.width())
        p.drawText(self.rect(), int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text)
        p.end()
