"""The status bar: the library line, one progress bar with its label, and Cancel for running jobs."""
from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QProgressBar, QPushButton, QStatusBar

STATUS_CHARS = 160  # a status message is one short line (model download chatter is cut to it)


class StatusArea(QStatusBar):
    cancel_requested = Signal()

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("statusbar")
        self.label = QLabel()
        self.label.setObjectName("libraryStatus")
        self.progress = QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setMaximumWidth(240)
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.setObjectName("progressLabel")
        self.progress_label.setProperty("muted", "true")
        self.cancel = QPushButton("Cancel")
        self.cancel.setObjectName("cancelJobs")
        self.cancel.hide()
        self.cancel.clicked.connect(lambda _c=False: self._cancel())
        self.addWidget(self.label, 1)
        self.addPermanentWidget(self.progress_label)
        self.addPermanentWidget(self.progress)
        self.addPermanentWidget(self.cancel)

    def _cancel(self) -> None:
        self.progress_label.setText("Cancelling…")
        self.cancel_requested.emit()

    def line(self, message: str, ms: int = 10000) -> None:
        """A transient message: its first line only, at most ``STATUS_CHARS`` characters."""
        text = (message or "").strip()
        first = text.splitlines()[0] if text else ""
        if len(first) > STATUS_CHARS:
            first = first[:STATUS_CHARS].rsplit(" ", 1)[0] + "…"
        self.showMessage(first, ms)

    def set_busy(self, text: str, maximum: int = 0) -> None:
        self.progress.setRange(0, maximum)
        self.progress.setValue(0)
        self.progress.show()
        self.progress_label.setText(text)
        self.cancel.show()

    def clear_busy(self) -> None:
        self.progress.hide()
        self.cancel.hide()
        self.progress_label.setText("")

    def job_progress(self, p) -> None:
        """Progress of classify / predict and the like (``Progress`` with stage, done, total)."""
        if p.total:
            if p.done >= p.total:  # that job is through: no "Predict… 100%" left while others run
                if self.progress_label.text() == f"{p.stage.capitalize()}…":
                    self.clear_busy()
                return
            if not self.progress.isVisible():
                self.set_busy(f"{p.stage.capitalize()}…", p.total)
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)

    def index_progress(self, p) -> None:
        if p.stage == "scan":
            self.progress_label.setText(f"Scanning… {p.done:,} files")
        elif p.stage == "embed" and p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
            eta = f", {int(p.eta // 60)}:{int(p.eta % 60):02d} left" if p.eta else ""
            self.progress_label.setText(f"Indexing {p.done:,}/{p.total:,} · {p.rate:.1f} img/s{eta}")
