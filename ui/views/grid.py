"""The photo grid every view uses: fixed cells painted by one delegate, and the grid's gestures.

Every cell is exactly the same size (so ``setUniformItemSizes`` is true to its word): the
thumbnail is scaled to fit inside a square (aspect kept, never cropped, at most 2× upscaled) and
centred, one caption line (score, probability or date) sits below it, and a selected cell gets an
accent frame and a light tint instead of a solid block.

Gestures shared by every grid: drag (file URLs + our paths), number keys 1–9 add the selection to
bucket N, right-click "Add to bucket ▸", Ctrl+C copies paths, Enter opens, Delete asks the view.
"""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, QPoint, QRect, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QDrag, QFontMetrics, QGuiApplication, QKeySequence, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QListView, QMenu, QStyle, QStyledItemDelegate,
                               QStyleOptionViewItem)

from ..models import ResultsModel

ACCENT = QColor("#1a73e8")
TINT = QColor(26, 115, 232, 38)
PAD = 6  # around the thumbnail inside a cell
MAX_UPSCALE = 2.0
DRAG_IMAGE = 64  # the picture under the pointer while dragging: small, and beside the pointer, so the
# bucket it goes into stays visible


def fit_rect(pixmap_size: QSize, box: QRect) -> QRect:
    """The rectangle a picture of ``pixmap_size`` takes inside ``box``: aspect kept, never cropped,
    upscaled at most ``MAX_UPSCALE``×, centred."""
    w, h = max(1, pixmap_size.width()), max(1, pixmap_size.height())
    scale = min(box.width() / w, box.height() / h, MAX_UPSCALE)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    return QRect(box.x() + (box.width() - tw) // 2, box.y() + (box.height() - th) // 2, tw, th)


class PhotoDelegate(QStyledItemDelegate):
    """Paints one fixed-size cell: thumbnail fitted in a square, caption below, selection frame."""

    def __init__(self, thumb: int, parent=None) -> None:
        super().__init__(parent)
        self.thumb = thumb

    def cell_size(self, option: QStyleOptionViewItem | None = None) -> QSize:
        parent = self.parent()
        fm = option.fontMetrics if option is not None else (
            parent.fontMetrics() if parent is not None else QFontMetrics(QGuiApplication.font()))
        return QSize(self.thumb + 2 * PAD, self.thumb + 2 * PAD + fm.height() + 2)

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802 - Qt
        return self.cell_size(option)

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        cell = option.rect.adjusted(1, 1, -1, -1)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        hovered = bool(option.state & QStyle.StateFlag.State_MouseOver)
        if selected:
            painter.setBrush(TINT)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.drawRoundedRect(cell, 6, 6)
        elif hovered:
            painter.setBrush(QColor(0, 0, 0, 14))
            painter.setPen(Qt.PenStyle.NoPen)
            painter.drawRoundedRect(cell, 6, 6)
        # the cell may be wider than the thumbnail (cells spread to fill the row): centre it
        box = QRect(option.rect.x() + (option.rect.width() - self.thumb) // 2, option.rect.y() + PAD,
                    self.thumb, self.thumb)
        pm = index.data(Qt.ItemDataRole.DecorationRole)
        if pm is not None and not pm.isNull():
            painter.drawPixmap(fit_rect(pm.size(), box), pm)
        text = index.data(Qt.ItemDataRole.DisplayRole)
        if text:
            fm = option.fontMetrics
            line = QRect(box.x(), box.bottom() + 2, self.thumb, fm.height() + 2)
            painter.setPen(QColor("#202124") if selected else QColor("#5f6368"))
            painter.drawText(line, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter,
                             fm.elidedText(str(text), Qt.TextElideMode.ElideMiddle, self.thumb))
        if selected:
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(ACCENT, 3))
            painter.drawRoundedRect(cell.adjusted(1, 1, -1, -1), 6, 6)
        elif option.state & QStyle.StateFlag.State_HasFocus:
            # the photo the keys act on (1–9, A, R) when none is selected: a thin dashed frame
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(ACCENT, 1.5, Qt.PenStyle.DashLine))
            painter.drawRoundedRect(cell.adjusted(1, 1, -1, -1), 6, 6)
        painter.restore()


def drag_image(pm: QPixmap | None, n: int) -> QPixmap:
    """A ``DRAG_IMAGE`` px picture of the first photo dragged, with the count when there are more."""
    out = QPixmap(DRAG_IMAGE, DRAG_IMAGE)
    out.fill(Qt.GlobalColor.transparent)
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
    if pm is not None and not pm.isNull():
        p.setOpacity(0.85)
        p.drawPixmap(fit_rect(pm.size(), QRect(0, 0, DRAG_IMAGE, DRAG_IMAGE)), pm)
        p.setOpacity(1.0)
    if n > 1:
        badge = QRect(DRAG_IMAGE - 28, 0, 28, 20)
        p.setBrush(ACCENT)
        p.setPen(Qt.PenStyle.NoPen)
        p.drawRoundedRect(badge, 10, 10)
        p.setPen(QColor("white"))
        p.drawText(badge, Qt.AlignmentFlag.AlignCenter, str(n) if n < 1000 else "999+")
    p.end()
    return out


class PhotoGrid(QListView):
    """A virtualised grid over a ResultsModel. ``labels`` (a LabelStore) enables the bucket gestures."""

    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)
    delete_pressed = Signal(list)  # paths; a view decides what Delete means (e.g. take out of a bucket)
    context_menu_about_to_show = Signal(QMenu, list)  # a view adds its own actions (menu, paths)

    def __init__(self, model: ResultsModel, thumb: int, labels=None, name: str = "") -> None:
        super().__init__()
        if name:
            self.setObjectName(name)
        self.labels = labels
        self.setModel(model)
        self.delegate = PhotoDelegate(thumb, self)
        self.setItemDelegate(self.delegate)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setWrapping(True)
        self.setUniformItemSizes(True)  # true: every cell is delegate.cell_size()
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(400)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setMouseTracking(True)
        self.setSpacing(0)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._context_menu)
        self.doubleClicked.connect(lambda idx: self.open_requested.emit(idx.data(ResultsModel.PathRole)))
        self.set_thumb_size(thumb)

    empty_text = ""  # what to do when the grid is empty ("Add a folder…"), painted in the middle

    def set_empty_text(self, text: str) -> None:
        self.empty_text = text
        self.viewport().update()

    def paintEvent(self, e) -> None:  # noqa: N802 - Qt
        super().paintEvent(e)
        if self.model() is not None and self.model().rowCount() == 0 and self.empty_text:
            p = QPainter(self.viewport())
            p.setPen(QColor("#5f6368"))
            r = self.viewport().rect().adjusted(24, 24, -24, -24)
            p.drawText(r, Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.empty_text)
            p.end()

    @property
    def results(self) -> ResultsModel:
        return self.model()

    def set_thumb_size(self, thumb: int) -> None:
        """Another thumbnail size; the selection stays, and so does the photo in view."""
        selected = self.selected_rows() if self.selectionModel() else []
        current = self.currentIndex()
        self.delegate.thumb = thumb
        self.setIconSize(QSize(thumb, thumb))
        self._spread()
        if selected and self.selected_rows() != selected:
            self.select_rows(selected)
        if current.isValid():
            QTimer.singleShot(0, lambda: self.scrollTo(current, QAbstractItemView.ScrollHint.PositionAtCenter))

    def _spread(self) -> None:
        """Cells share the row's width: as many whole cells as fit, the rest spread between them
        (no empty band at the right edge)."""
        cell = self.delegate.cell_size()
        # room for the scroll bar is kept either way, so its coming and going never re-wraps the rows
        width = self.contentsRect().width() - self.verticalScrollBar().sizeHint().width() - 2
        cols = max(1, width // max(1, cell.width()))
        size = QSize(max(cell.width(), width // cols), cell.height())
        if size != self.gridSize():
            self.setGridSize(size)
            self.scheduleDelayedItemsLayout()

    def resizeEvent(self, e) -> None:  # noqa: N802 - Qt
        super().resizeEvent(e)
        self._spread()

    def selected_rows(self) -> list[int]:
        """The selected rows in order, read from the selection's ranges (a selection of 200,000
        photos is a few ranges; asking Qt for each index took a second)."""
        rows = set()
        for r in self.selectionModel().selection():
            rows.update(range(r.top(), r.bottom() + 1))
        return sorted(rows)

    def selected_paths(self) -> list[str]:
        return [self.results.item(r).path for r in self.selected_rows()]

    def current_path(self) -> str | None:
        idx = self.currentIndex()
        return self.results.item(idx.row()).path if idx.isValid() else None

    def select_rows(self, rows: list[int]) -> None:
        from PySide6.QtCore import QItemSelection, QItemSelectionModel

        sel = QItemSelection()
        rows = list(rows)
        start = 0
        for i in range(1, len(rows) + 1):  # one range per run of consecutive rows, not one per row
            if i == len(rows) or rows[i] != rows[i - 1] + 1:
                sel.select(self.results.index(rows[start]), self.results.index(rows[i - 1]))
                start = i
        self.selectionModel().select(sel, QItemSelectionModel.SelectionFlag.ClearAndSelect)
        if rows:
            self.selectionModel().setCurrentIndex(self.results.index(rows[0]),
                                                  QItemSelectionModel.SelectionFlag.NoUpdate)

    def copy_paths(self) -> None:
        paths = self.selected_paths()
        if paths:
            QGuiApplication.clipboard().setText("\n".join(paths))

    # ------------------------------------------------------------------ gestures
    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt
        key = e.key()
        plain = not (e.modifiers() & (Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.AltModifier
                                      | Qt.KeyboardModifier.MetaModifier))
        if plain and Qt.Key.Key_1 <= key <= Qt.Key.Key_9 and self.labels is not None:
            names = self.labels.names()
            n = key - Qt.Key.Key_1
            # the selection, else the photo the keyboard is on (as A and R do)
            paths = self.selected_paths() or [p for p in [self.current_path()] if p]
            if n < len(names) and paths:
                self.labels.add(names[n], paths)
            elif paths:
                self.labels.say(f"There is no bucket {n + 1}: make one on the Teach tab first.")
            e.accept()
            return
        if key in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and plain:
            paths = self.selected_paths()
            if paths:
                self.delete_pressed.emit(paths)
            e.accept()
            return
        if key in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and plain:
            path = self.current_path()
            if path:
                self.open_requested.emit(path)
            e.accept()
            return
        if e.matches(QKeySequence.StandardKey.Copy):
            self.copy_paths()
            e.accept()
            return
        super().keyPressEvent(e)

    def startDrag(self, actions) -> None:  # noqa: N802 - Qt
        rows = self.selected_rows()
        if not rows:
            return
        indexes = [self.results.index(r) for r in rows]
        drag = QDrag(self)
        drag.setMimeData(self.results.mimeData(indexes))
        drag.setPixmap(drag_image(indexes[0].data(Qt.ItemDataRole.DecorationRole), len(rows)))
        drag.setHotSpot(QPoint(-12, -12))  # the picture sits below-right of the pointer, not under it
        drag.exec(actions, Qt.DropAction.CopyAction)

    def _context_menu(self, pos: QPoint) -> None:
        idx = self.indexAt(pos)
        if idx.isValid() and not self.selectionModel().isSelected(idx):
            self.setCurrentIndex(idx)
        paths = self.selected_paths()
        if not paths:
            return
        menu = self.build_menu(paths)
        menu.exec(self.viewport().mapToGlobal(pos))

    def build_menu(self, paths: list[str]) -> QMenu:
        """The right-click menu for ``paths`` (separate from showing it, so it can be tested)."""
        menu = QMenu(self)
        if self.labels is not None:
            sub = menu.addMenu("Add to bucket")
            sub.setObjectName("addToBucketMenu")
            for i, name in enumerate(self.labels.names()):
                act = sub.addAction(f"{name}\t{i + 1}" if i < 9 else name)
                act.setData(name)
                act.triggered.connect(lambda _c=False, n=name, p=list(paths): self.labels.add(n, p))
            if self.labels.names():
                sub.addSeparator()
            new = sub.addAction("New bucket…")
            new.triggered.connect(lambda _c=False, p=list(paths): self.labels.add_to_new(self, p))
        menu.addSeparator()
        copy = menu.addAction(f"Copy path{'s' if len(paths) > 1 else ''}")
        copy.triggered.connect(lambda _c=False, p=list(paths): QGuiApplication.clipboard().setText("\n".join(p)))
        if len(paths) == 1:
            menu.addAction("Open").triggered.connect(lambda _c=False: self.open_requested.emit(paths[0]))
            menu.addAction("Show in folder").triggered.connect(
                lambda _c=False: self.show_in_folder_requested.emit(paths[0]))
        self.context_menu_about_to_show.emit(menu, list(paths))
        return menu
