"""Qt item models (thin adapters over plain Python lists) and the asynchronous thumbnail cache.

``ResultsModel`` backs the virtualised thumbnail grid (``views/grid.py``): it holds a plain list of results and asks
``Thumbnails`` for images on demand; thumbnails are decoded off the GUI thread (Pillow draft
mode), cached on disk inside the library folder, and the grid shows a placeholder until they land.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from PySide6.QtCore import (QAbstractListModel, QMimeData, QModelIndex, QObject, QRunnable, Qt,
                            QThreadPool, QUrl, Signal)
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap

MIME_IDS = "application/x-clipdesk-image-paths"
CACHE_BYTES = 160 * 1024 * 1024  # decoded thumbnails kept in memory


@dataclass(frozen=True)
class Item:
    path: str
    score: float | None = None  # similarity, or a probability for classified/predicted items
    label: str | None = None
    taken: float | None = None


class AnswerItems(Sequence[Item]):
    """The grid's items for rows of a whole-library answer (``clipdesk.results.Classifications``),
    made when the grid asks for them: a category of a million photos shows at once instead of
    after a million objects are built on the GUI thread. Unlabelled rows show ``unlabelled``."""

    def __init__(self, answers, unlabelled: str | None = None):
        self.answers = answers
        self.unlabelled = unlabelled

    def __len__(self) -> int:
        return len(self.answers)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        r = self.answers[i]
        return Item(r.path, r.probability, r.label or self.unlabelled)


# ---------------------------------------------------------------------- thumbnails
class _ThumbSignals(QObject):
    ready = Signal(str, QImage)


class _ThumbTask(QRunnable):
    def __init__(self, path: str, size: int, cache_dir: str | None, signals: _ThumbSignals):
        super().__init__()
        self.path, self.size, self.cache_dir, self.signals = path, size, cache_dir, signals

    def run(self) -> None:
        from clipdesk.indexer.errors import UnreadableImageError

        cached = None
        if self.cache_dir:
            try:
                st = os.stat(self.path)
                key = hashlib.sha1(f"{self.path}|{st.st_size}|{st.st_mtime_ns}|{self.size}".encode(
                    "utf-8", "surrogateescape")).hexdigest()
                cached = os.path.join(self.cache_dir, key[:2], key + ".jpg")
            except OSError:
                cached = None
        img = QImage()
        if cached and os.path.exists(cached):
            img = QImage(cached)
        if img.isNull():
            try:
                img = load_qimage(self.path, self.size)
            except (UnreadableImageError, OSError):
                img = QImage()
            if cached and not img.isNull():
                self._keep(img, cached)
        self.signals.ready.emit(self.path, img)

    @staticmethod
    def _keep(img: QImage, cached: str) -> None:
        """Cache a thumbnail; a cache that cannot be written (a full disk, a read-only library)
        only means it is made again next time: the photo still shows."""
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice

        # encoded in memory, written by Python: QImage.save to a file reports success on a full
        # disk and left empty thumbnails in the cache
        data = QByteArray()
        buf = QBuffer(data)
        buf.open(QIODevice.OpenModeFlag.WriteOnly)
        if not img.save(buf, "JPG", 85):
            return
        tmp = cached + ".tmp"
        try:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(bytes(data))
            os.replace(tmp, cached)
            return
        except OSError:
            pass
        try:
            os.unlink(tmp)  # a part written before the disk filled
        except OSError:
            pass


def load_qimage(path: str, size: int) -> QImage:
    """Decode an image file (reduced, upright) into a QImage; safe to call off the GUI thread."""
    from PIL import Image

    from clipdesk.indexer.decode import decode_image

    pil = decode_image(path, size).image
    pil.thumbnail((size, size), Image.Resampling.BICUBIC)
    return QImage(pil.tobytes(), pil.width, pil.height, 3 * pil.width, QImage.Format.Format_RGB888).copy()


class Thumbnails(QObject):
    """Asynchronous, disk-cached thumbnails; ``ready(path)`` fires when one arrives."""

    ready = Signal(str)

    def __init__(self, cache_dir: str | None, size: int = 160, parent: QObject | None = None):
        super().__init__(parent)
        self.cache_dir = cache_dir
        self.size = size
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max(1, min(4, (os.cpu_count() or 2))))
        self.pool.setExpiryTimeout(2000)
        self._signals = _ThumbSignals()
        self._signals.ready.connect(self._arrived, Qt.ConnectionType.QueuedConnection)
        self._pixmaps: OrderedDict[str, QPixmap] = OrderedDict()
        self._pending: set[str] = set()
        self.placeholder = self._make_placeholder()

    def _make_placeholder(self) -> QPixmap:
        pm = QPixmap(self.size, self.size)
        pm.fill(QColor("#e8eaed"))
        return pm

    def set_cache_dir(self, cache_dir: str | None) -> None:
        self.cache_dir = cache_dir
        self._pixmaps.clear()

    def set_size(self, size: int) -> None:
        """Decode at a new size from now on (the views ask again as they repaint)."""
        if size == self.size:
            return
        self.size = size
        self._pixmaps.clear()
        self.placeholder = self._make_placeholder()

    def get(self, path: str) -> QPixmap | None:
        pm = self._pixmaps.get(path)
        if pm is not None:
            self._pixmaps.move_to_end(path)
            return pm
        if path not in self._pending:
            self._pending.add(path)
            self.pool.start(_ThumbTask(path, self.size, self.cache_dir, self._signals))
        return None

    def _arrived(self, path: str, img: QImage) -> None:
        self._pending.discard(path)
        pm = QPixmap.fromImage(img) if not img.isNull() else self._broken()
        self._pixmaps[path] = pm
        while len(self._pixmaps) > self.capacity:
            self._pixmaps.popitem(last=False)
        self.ready.emit(path)

    def _broken(self) -> QPixmap:
        pm = self._make_placeholder()
        p = QPainter(pm)
        p.setPen(QColor("#9aa0a6"))
        p.drawText(pm.rect(), Qt.AlignmentFlag.AlignCenter, "cannot\nread")
        p.end()
        return pm

    @property
    def capacity(self) -> int:
        """Pixmaps kept in memory: about ``CACHE_BYTES`` whatever the thumbnail size (≥ a few screens)."""
        return max(200, CACHE_BYTES // (4 * self.size * self.size))

    @property
    def idle(self) -> bool:
        """No thumbnail is being decoded or waiting to be delivered."""
        return not self._pending

    def wait(self, ms: int = 10000) -> bool:
        """Block until decoding threads finish (shutdown only: this blocks the calling thread)."""
        return self.pool.waitForDone(ms)


# ---------------------------------------------------------------------- results
class ResultsModel(QAbstractListModel):
    """A list of images for the grid; drag sources carry file URLs (for other apps) and paths."""

    PathRole = Qt.ItemDataRole.UserRole + 1
    ScoreRole = Qt.ItemDataRole.UserRole + 2
    LabelRole = Qt.ItemDataRole.UserRole + 3

    def __init__(self, thumbnails: Thumbnails | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._items: Sequence[Item] = []
        self._rows: dict[str, set[int]] = {}  # rows whose thumbnail was asked for, by path
        self.label_captions = False  # captions name the label too (grids of mixed labels)
        self.thumbnails = thumbnails
        if thumbnails is not None:
            thumbnails.ready.connect(self._thumbnail_ready)

    # plain-Python side
    def set_items(self, items: Sequence[Item]) -> None:
        """Show ``items``: a list, or an :class:`AnswerItems` (kept as it is, read row by row)."""
        self.beginResetModel()
        self._items = items if isinstance(items, AnswerItems) else list(items)
        self._rows = {}
        self.endResetModel()

    def items(self) -> list[Item]:
        return list(self._items)

    def item(self, row: int) -> Item:
        return self._items[row]

    # Qt side
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: B008 - Qt signature
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        it = self._items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption(it, self.label_captions)
        if role == Qt.ItemDataRole.DecorationRole:
            if self.thumbnails is None:
                return None
            self._rows.setdefault(it.path, set()).add(index.row())  # to repaint when it lands
            return self.thumbnails.get(it.path) or self.thumbnails.placeholder
        if role == Qt.ItemDataRole.ToolTipRole:
            lines = [os.path.basename(it.path)]
            if it.label is not None:
                lines.append(f"{it.label}: {it.score:.0%}" if it.score is not None else it.label)
            elif it.score is not None:
                lines.append(f"score {it.score:.3f}")
            if it.taken:
                lines.append(datetime.fromtimestamp(it.taken).strftime("%Y-%m-%d %H:%M"))
            return "\n".join(lines)
        if role == self.PathRole:
            return it.path
        if role == self.ScoreRole:
            return it.score
        if role == self.LabelRole:
            return it.label
        return None

    def flags(self, index: QModelIndex) -> Qt.ItemFlag:
        base = super().flags(index)
        return base | Qt.ItemFlag.ItemIsDragEnabled if index.isValid() else base

    def mimeTypes(self) -> list[str]:
        return ["text/uri-list", MIME_IDS]

    def mimeData(self, indexes) -> QMimeData:
        paths = list(dict.fromkeys(self._items[i.row()].path for i in indexes if i.isValid()))
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(p) for p in paths])
        mime.setData(MIME_IDS, "\n".join(paths).encode("utf-8", "surrogateescape"))
        return mime

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.CopyAction

    def _thumbnail_ready(self, path: str) -> None:
        for row in sorted(self._rows.get(path, ())):
            idx = self.index(row)
            self.dataChanged.emit(idx, idx, [Qt.ItemDataRole.DecorationRole])


def paths_from_mime(mime: QMimeData) -> list[str]:
    """Image paths dragged from our grid or from the system file manager."""
    if mime.hasFormat(MIME_IDS):
        raw = bytes(mime.data(MIME_IDS)).decode("utf-8", "surrogateescape")
        return [p for p in raw.split("\n") if p]
    return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()]


def caption(it: Item, with_label: bool = False) -> str:
    """The line under a thumbnail: a probability (after its label, ``with_label``), a search score,
    else the date taken or the name."""
    if it.score is not None and it.label is not None:
        return f"{it.label} {it.score:.0%}" if with_label else f"{it.score:.0%}"
    if it.score is not None:
        return f"{it.score:.3f}"
    if it.taken:
        return datetime.fromtimestamp(it.taken).strftime("%d %b %Y")
    return os.path.basename(it.path)
