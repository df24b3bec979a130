"""The welcome page of an empty library: add a folder, or open the sample library."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget


class WelcomePage(QWidget):
    add_folder = Signal()
    open_sample = Signal()

    def __init__(self, sample_available: bool) -> None:
        super().__init__()
        self.setObjectName("page")
        lay = QVBoxLayout(self)
        lay.addStretch(2)
        title = QLabel("Welcome to clipdesk")
        title.setObjectName("welcomeTitle")
        sub = QLabel("Find your photos by describing them, sort them with no training,\n"
                     "and teach clipdesk your own categories with a few examples.\n"
                     "Everything stays on this computer.")
        sub.setProperty("muted", "true")
        for w in (title, sub):
            w.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(w)
        row = QHBoxLayout()
        row.addStretch()
        self.add_button = QPushButton("Add a folder…")
        self.add_button.setObjectName("addFolder")
        self.add_button.setProperty("primary", "true")
        self.add_button.clicked.connect(lambda _c=False: self.add_folder.emit())
        self.sample_button = QPushButton("Open the sample library")
        self.sample_button.setObjectName("openSample")
        self.sample_button.clicked.connect(lambda _c=False: self.open_sample.emit())
        self.sample_button.setEnabled(sample_available)
        row.addWidget(self.add_button)
        row.addWidget(self.sample_button)
        row.addStretch()
        lay.addSpacing(16)
        lay.addLayout(row)
        hint = QLabel("You can also drop a folder anywhere on this window.")
        hint.setProperty("muted", "true")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addSpacing(8)
        lay.addWidget(hint)
        lay.addStretch(3)
