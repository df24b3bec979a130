"""The preview pane: the selected photo large, its details, and what to do with it."""
from __future__ import annotations

import html
import os
from datetime import datetime

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout

from clipdesk.tags import PhotoInfo, read_photo_info

from ..models import Item, load_qimage
from .context import Context
from .text import human_size


class PreviewPane(QFrame):
    refine = Signal(int, str)  # +1 more like / -1 less like, path
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.setObjectName("preview")
        self.setMinimumWidth(220)
        self.path: str | None = None
        lay = QVBoxLayout(self)
        self.image = QLabel("Select a photo to see it here")
        self.image.setObjectName("previewImage")
        self.image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image.setMinimumHeight(160)
        self.image.setWordWrap(True)
        self.image.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Expanding)
        self.image.setProperty("muted", "true")
        self.info = QLabel()
        self.info.setObjectName("previewInfo")
        self.info.setWordWrap(True)
        self.info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.about = QLabel()  # title, description and marks, as other apps wrote them (read in a worker)
        self.about.setObjectName("previewAbout")
        self.about.setWordWrap(True)
        self.about.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.about.setVisible(False)
        lay.addWidget(self.image, 1)
        lay.addWidget(self.about)
        lay.addWidget(self.info)
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        self.more = QPushButton("More like this")
        self.more.setObjectName("moreLike")
        self.less = QPushButton("Less like this")
        self.less.setObjectName("lessLike")
        self.open = QPushButton("Open")
        self.open.setObjectName("openPhoto")
        self.show_folder = QPushButton("Show in folder")
        self.show_folder.setObjectName("showInFolder")
        self.more.clicked.connect(lambda _c=False: self._emit(self.refine, +1))
        self.less.clicked.connect(lambda _c=False: self._emit(self.refine, -1))
        self.open.clicked.connect(lambda _c=False: self._emit(self.open_requested))
        self.show_folder.clicked.connect(lambda _c=False: self._emit(self.show_in_folder_requested))
        row1.addWidget(self.more)
        row1.addWidget(self.less)
        row2.addWidget(self.open)
        row2.addWidget(self.show_folder)
        lay.addLayout(row1)
        lay.addLayout(row2)
        self._enable(False)

    def _emit(self, signal, *args) -> None:
        if self.path:
            signal.emit(*args, self.path)

    def _enable(self, on: bool) -> None:
        for b in (self.more, self.less, self.open, self.show_folder):
            b.setEnabled(on)

    def clear(self) -> None:
        self.path = None
        self.image.setPixmap(QPixmap())
        self.image.setText("Select a photo to see it here")
        self.info.setText("")
        self.about.setText("")
        self.about.setVisible(False)
        self._enable(False)

    def show_item(self, it: Item | None) -> None:
        if it is None:
            self.clear()
            return
        self.path = it.path
        self._enable(True)
        self._set_pixmap(self.ctx.thumbnails.get(it.path) or self.ctx.thumbnails.placeholder)
        # the large picture is decoded in a worker (a 12 MP photo would hold the GUI thread)
        self.ctx.jobs.start(load_qimage, it.path, 720, name="preview",
                            on_result=lambda img, p=it.path: self._loaded(p, img),
                            on_error=lambda msg, _kind, p=it.path: self._failed(p, msg))
        self.about.setVisible(False)  # until this photo's metadata is read (sidecars, XMP, IPTC: a worker's job)
        self.ctx.jobs.start(read_photo_info, it.path, name="photo info",
                            on_result=lambda r, p=it.path: self._info_read(p, r[0]),
                            on_error=lambda _msg, _kind: None)  # unreadable metadata: the photo still shows
        try:
            st = os.stat(it.path)
            size = human_size(st.st_size)
        except OSError:
            size = "missing"
        when = datetime.fromtimestamp(it.taken).strftime("%d %b %Y %H:%M") if it.taken else "unknown date"
        score = ""
        if it.score is not None:
            score = f"<br>{it.label}: {it.score:.0%}" if it.label else f"<br>score {it.score:.3f}"
        self.info.setText(f"<b>{os.path.basename(it.path)}</b><br>{os.path.dirname(it.path)}"
                          f"<br>{size} · {when}{score}")

    def _info_read(self, path: str, info: PhotoInfo) -> None:
        if path != self.path:
            return
        text = describe_info(info)
        self.about.setText(text)
        self.about.setVisible(bool(text))

    def _set_pixmap(self, pm: QPixmap) -> None:
        w = max(64, self.image.width() - 8)
        h = max(64, self.image.height() - 8)
        self.image.setPixmap(pm.scaled(w, h, Qt.AspectRatioMode.KeepAspectRatio,
                                       Qt.TransformationMode.SmoothTransformation))

    def _failed(self, path: str, message: str) -> None:
        if path == self.path:
            self.image.setText(f"Cannot show this photo:\n{message}")

    def _loaded(self, path: str, img) -> None:
        if path == self.path and not img.isNull():
            self._set_pixmap(QPixmap.fromImage(img))


def describe_info(info: PhotoInfo) -> str:
    """The preview's lines for what other apps wrote: title (bold), description, then the marks
    (★★★★, picked/rejected, colour label); rich text with the person's words escaped."""
    marks = " · ".join(x for x in ("★" * (info.rating or 0), info.flag or "",
                                   f"{info.color} label" if info.color else "") if x)
    lines = ([f"<b>{html.escape(info.title)}</b>"] if info.title else []) + \
        ([html.escape(info.description).replace("\n", "<br>")] if info.description else []) + \
        ([marks] if marks else [])
    return "<br>".join(lines)
