"""The welcome page of an empty library: add a folder, open the sample library, or go back to a
library opened before ("Open library…" and the recent libraries)."""
from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget

from ..recent import RecentLibrary


class WelcomePage(QWidget):
    add_folder = Signal()
    open_sample = Signal()
    open_library = Signal()  # choose a library folder
    open_recent = Signal(str)  # a library folder from the recent list

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
        self.open_button = QPushButton("Open library…")
        self.open_button.setObjectName("welcomeOpenLibrary")
        self.open_button.setToolTip("Open another clipdesk library folder")
        self.open_button.clicked.connect(lambda _c=False: self.open_library.emit())
        row.addWidget(self.add_button)
        row.addWidget(self.sample_button)
        row.addWidget(self.open_button)
        row.addStretch()
        lay.addSpacing(16)
        lay.addLayout(row)
        hint = QLabel("You can also drop a folder anywhere on this window.")
        hint.setProperty("muted", "true")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addSpacing(8)
        lay.addWidget(hint)
        self.recent_title = QLabel("Recent libraries")
        self.recent_title.setObjectName("title")
        self.recent_title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.recent = QListWidget()
        self.recent.setObjectName("recentLibraries")
        self.recent.setMaximumWidth(640)
        self.recent.setMaximumHeight(160)
        self.recent.itemActivated.connect(self._activated)
        self.recent.itemClicked.connect(self._activated)
        box = QHBoxLayout()
        box.addStretch()
        box.addWidget(self.recent, 4)
        box.addStretch()
        lay.addSpacing(20)
        lay.addWidget(self.recent_title)
        lay.addLayout(box)
        lay.addStretch(3)
        self.set_recent([], "")

    def set_recent(self, entries: list[RecentLibrary], current: str) -> None:
        """The libraries to go back to (the one open now is left out)."""
        self.recent.clear()
        for e in entries:
            if e.folder == current or not e.exists:
                continue
            it = QListWidgetItem(e.folder + (f"   · {e.model}" if e.model else ""))
            it.setData(Qt.ItemDataRole.UserRole, e.folder)
            it.setToolTip(f"Open the library {e.folder}")
            self.recent.addItem(it)
        shown = self.recent.count() > 0
        self.recent.setVisible(shown)
        self.recent_title.setVisible(shown)

    def _activated(self, item: QListWidgetItem) -> None:
        self.open_recent.emit(item.data(Qt.ItemDataRole.UserRole))
