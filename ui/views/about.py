"""The About box: clipdesk's version, the model runtime, the library's model (``clipdesk.about``,
the same lines as ``clipdesk --version``) and where this library and the settings live."""
from __future__ import annotations

import html

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import QMessageBox, QWidget

from clipdesk.about import report


def about_lines(library, settings: QSettings | None = None) -> list[str]:
    # the encoder only if it is loaded: the About box never loads a model on the GUI thread
    lines = report(model=library.model_name, encoder=library.loaded_encoder)
    lines.append(f"library: {library.folder}")
    lines.append(f"settings: {(settings or QSettings()).fileName()}")
    return lines


def show_about(parent: QWidget, library, settings: QSettings | None = None) -> None:
    box = QMessageBox(QMessageBox.Icon.NoIcon, "About clipdesk", "", QMessageBox.StandardButton.Close, parent)
    box.setObjectName("aboutBox")
    first, *rest = about_lines(library, settings)
    box.setText(f"<b>{html.escape(first)}</b>")
    box.setInformativeText("<br>".join(html.escape(line) for line in rest))
    box.setIconPixmap(parent.windowIcon().pixmap(64, 64))
    box.setStyleSheet("QLabel { min-width: 460px; }")  # one line per fact, not wrapped
    box.exec()
