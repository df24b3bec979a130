"""clipdesk-gui entry point (the full desktop app arrives with the GUI issue)."""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication, QLabel

    app = QApplication(sys.argv if argv is None else argv)
    label = QLabel("clipdesk — the desktop app is on its way; use the clipdesk command meanwhile.")
    label.resize(520, 120)
    label.show()
    return app.exec()
