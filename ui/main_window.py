"""The clipdesk main window: search, browse, zero-shot sort and drag-and-drop teaching.

No ML or storage logic lives here: every action calls the core ``Library`` in a worker (see
``workers.py``) and shows the result. Errors from any worker land in one banner at the top.
"""
from __future__ import annotations

import csv
import os
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QSettings, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QGuiApplication, QKeySequence, QPixmap, QShortcut
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDialog, QDialogButtonBox, QFileDialog,
                               QFormLayout, QFrame, QHBoxLayout, QLabel, QLineEdit, QListView,
                               QListWidget, QListWidgetItem, QMainWindow, QMessageBox,
                               QPlainTextEdit, QProgressBar, QPushButton, QScrollArea, QSizePolicy,
                               QSlider, QSpinBox, QSplitter, QStackedWidget, QTabWidget, QToolButton,
                               QVBoxLayout, QWidget)

from clipdesk.library import Library
from clipdesk.probe import BACKGROUND

from .models import Item, ResultsModel, Thumbnails, grid_size, load_qimage, paths_from_mime
from .workers import Jobs

PROBE = "teach"  # the probe the Teach tab trains
SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"
STYLE = """
QMainWindow, QWidget#page { background: #f7f8fa; }
QLineEdit#search { padding: 7px 12px; border: 1px solid #c9ced6; border-radius: 16px; background: white;
                   font-size: 14px; }
QLineEdit#search:focus { border-color: #1a73e8; }
QFrame#banner { background: #fdecea; border: 1px solid #f5c2c0; border-radius: 6px; }
QFrame#banner QLabel { color: #8c1d18; }
QFrame#sidebar, QFrame#preview { background: white; border: 1px solid #e3e6ea; border-radius: 8px; }
QFrame#bucket { background: white; border: 1px solid #dfe3e8; border-radius: 8px; }
QFrame#bucket[hover="true"] { border: 2px dashed #1a73e8; }
QLabel#title { font-size: 15px; font-weight: 600; }
QLabel#muted { color: #5f6368; }
QPushButton { padding: 5px 10px; border-radius: 6px; border: 1px solid #c9ced6; background: white; }
QPushButton:hover { background: #eef3fd; }
QPushButton#primary { background: #1a73e8; color: white; border: none; }
QPushButton#primary:hover { background: #1765cc; }
QPushButton#primary:disabled { background: #a8c7fa; }
QListView { background: white; border: 1px solid #e3e6ea; border-radius: 8px; }
QTabWidget::pane { border: none; }
QTabBar::tab { padding: 6px 18px; border: none; border-bottom: 2px solid transparent; background: transparent;
               color: #5f6368; font-weight: 600; }
QTabBar::tab:selected { color: #1a73e8; border-bottom-color: #1a73e8; }
"""


class SearchBar(QLineEdit):
    """The search field; an image file dropped on it runs a similar-image search."""

    image_dropped = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("search")
        self.setPlaceholderText('Describe a photo — "dog in the snow" — or drop an image here')
        self.setClearButtonEnabled(True)
        self.setAcceptDrops(True)

    def dragEnterEvent(self, e) -> None:
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()
        else:
            super().dragEnterEvent(e)

    def dragMoveEvent(self, e) -> None:
        e.acceptProposedAction() if paths_from_mime(e.mimeData()) else super().dragMoveEvent(e)

    def dropEvent(self, e) -> None:
        paths = paths_from_mime(e.mimeData())
        if paths:
            e.acceptProposedAction()
            self.image_dropped.emit(paths[0])
        else:
            super().dropEvent(e)


class Grid(QListView):
    """A virtualised thumbnail grid (icon mode over a ResultsModel)."""

    def __init__(self, model: ResultsModel, thumb: int) -> None:
        super().__init__()
        self.setModel(model)
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setLayoutMode(QListView.LayoutMode.Batched)
        self.setBatchSize(200)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.setDragEnabled(True)
        self.setDragDropMode(QAbstractItemView.DragDropMode.DragOnly)
        self.setSpacing(4)
        self.set_thumb_size(thumb)

    def set_thumb_size(self, thumb: int) -> None:
        self.setIconSize(QSize(thumb, thumb))
        self.setGridSize(grid_size(thumb))

    def selected_paths(self) -> list[str]:
        return [i.data(ResultsModel.PathRole) for i in self.selectionModel().selectedIndexes()]


class Bucket(QFrame):
    """A label bucket on the Teach tab: drop photos (from the grid or the file manager) into it."""

    dropped = Signal(str, list)
    remove_requested = Signal(str)

    def __init__(self, name: str, thumbnails: Thumbnails) -> None:
        super().__init__()
        self.name = name
        self.thumbnails = thumbnails
        self.setObjectName("bucket")
        self.setAcceptDrops(True)
        self.setMinimumWidth(220)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
        lay = QVBoxLayout(self)
        head = QHBoxLayout()
        self.title = QLabel(name)
        self.title.setObjectName("title")
        self.count = QLabel("0 photos")
        self.count.setObjectName("muted")
        close = QToolButton()
        close.setText("✕")
        close.setToolTip(f"Delete the bucket “{name}” (photos are kept)")
        close.clicked.connect(lambda: self.remove_requested.emit(self.name))
        head.addWidget(self.title)
        head.addStretch()
        head.addWidget(self.count)
        head.addWidget(close)
        lay.addLayout(head)
        self.list = QListWidget()
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(64, 64))
        self.list.setGridSize(QSize(72, 72))
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setAcceptDrops(False)  # the frame takes drops, the list only shows
        lay.addWidget(self.list)
        hint = QLabel("Drag photos here")
        hint.setObjectName("muted")
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(hint)
        thumbnails.ready.connect(self._thumb_ready)

    def set_paths(self, paths: list[str]) -> None:
        self.list.clear()
        for p in paths:
            it = QListWidgetItem()
            it.setToolTip(os.path.basename(p))
            it.setData(Qt.ItemDataRole.UserRole, p)
            pm = self.thumbnails.get(p)
            it.setIcon(pm or self.thumbnails.placeholder)
            self.list.addItem(it)
        self.count.setText(f"{len(paths)} photo{'s' if len(paths) != 1 else ''}")

    def paths(self) -> list[str]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def _thumb_ready(self, path: str) -> None:
        for i in range(self.list.count()):
            it = self.list.item(i)
            if it.data(Qt.ItemDataRole.UserRole) == path:
                it.setIcon(self.thumbnails.get(path) or self.thumbnails.placeholder)

    def _hover(self, on: bool) -> None:
        self.setProperty("hover", "true" if on else "false")
        self.style().unpolish(self)
        self.style().polish(self)

    def dragEnterEvent(self, e) -> None:
        if paths_from_mime(e.mimeData()):
            self._hover(True)
            e.acceptProposedAction()

    def dragMoveEvent(self, e) -> None:
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()

    def dragLeaveEvent(self, e) -> None:
        self._hover(False)

    def dropEvent(self, e) -> None:
        self._hover(False)
        paths = paths_from_mime(e.mimeData())
        if paths:
            e.acceptProposedAction()
            self.dropped.emit(self.name, paths)


class SettingsDialog(QDialog):
    def __init__(self, parent, model: str, device: str, thumb: int, library: str) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        form = QFormLayout(self)
        self.model = QLineEdit(model)
        self.model.setPlaceholderText("ViT-B-32-256/datacomp_s34b_b86k")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(device or "auto")
        self.thumb = QSpinBox()
        self.thumb.setRange(64, 320)
        self.thumb.setSingleStep(16)
        self.thumb.setValue(thumb)
        row = QHBoxLayout()
        self.library = QLineEdit(library)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self._browse)
        row.addWidget(self.library)
        row.addWidget(browse)
        form.addRow("Model", self.model)
        form.addRow("Device", self.device)
        form.addRow("Thumbnail size", self.thumb)
        form.addRow("Library folder", row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def _browse(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Library folder", self.library.text())
        if d:
            self.library.setText(d)


class MainWindow(QMainWindow):
    """The app. ``library`` is opened by the caller; the window owns it from then on."""

    search_finished = Signal()
    index_finished = Signal()
    job_failed = Signal(str)
    status_message = Signal(str)  # from any thread: model loading and download progress

    def __init__(self, library: Library, settings: QSettings | None = None) -> None:
        super().__init__()
        self.lib = library
        self.settings = settings or QSettings("clipdesk", "clipdesk")
        self.jobs = Jobs(self)
        thumb = int(self.settings.value("thumb_size", 160))
        self.thumbnails = Thumbnails(os.path.join(library.folder, "thumbnails"), thumb, self)
        self._index_job = None
        self._search_serial = 0
        self._classified: list = []
        self._predictions: list = []
        self.setWindowTitle("clipdesk")
        self.setStyleSheet(STYLE)
        self._build()
        self._shortcuts()
        self.status_message.connect(lambda m: self.statusBar().showMessage(m, 10000))
        library.status_callback = self.status_message.emit
        self.refresh_library_views()
        geom = self.settings.value("geometry")
        if geom is not None:
            self.restoreGeometry(geom)
        else:
            self.resize(1280, 800)
        QTimer.singleShot(0, self._warm_model)

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        self.stack = QStackedWidget()
        self.setCentralWidget(self.stack)
        self.stack.addWidget(self._welcome_page())
        self.stack.addWidget(self._main_page())
        self.setAcceptDrops(True)

        sb = self.statusBar()
        self.status_label = QLabel()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(260)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.progress_label = QLabel()
        self.progress_label.setObjectName("muted")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.hide()
        self.cancel_button.clicked.connect(self.cancel_jobs)
        sb.addWidget(self.status_label, 1)
        sb.addPermanentWidget(self.progress_label)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.cancel_button)

    def _welcome_page(self) -> QWidget:
        page = QWidget()
        page.setObjectName("page")
        lay = QVBoxLayout(page)
        lay.addStretch(2)
        title = QLabel("Welcome to clipdesk")
        title.setStyleSheet("font-size: 28px; font-weight: 600;")
        sub = QLabel("Find your photos by describing them, sort them with no training,\n"
                     "and teach clipdesk your own categories with a few examples.\n"
                     "Everything stays on this computer.")
        sub.setObjectName("muted")
        sub.setStyleSheet("font-size: 14px;")
        for w in (title, sub):
            w.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(w)
        row = QHBoxLayout()
        row.addStretch()
        self.add_first = QPushButton("Add a folder…")
        self.add_first.setObjectName("primary")
        self.add_first.clicked.connect(self.choose_folder)
        self.open_sample = QPushButton("Open the sample library")
        self.open_sample.clicked.connect(self.open_sample_library)
        self.open_sample.setEnabled(SAMPLE.is_dir())
        row.addWidget(self.add_first)
        row.addWidget(self.open_sample)
        row.addStretch()
        lay.addSpacing(16)
        lay.addLayout(row)
        lay.addStretch(3)
        return page

    def _main_page(self) -> QWidget:
        page = QWidget()
        page.setObjectName("page")
        outer = QVBoxLayout(page)
        outer.setContentsMargins(10, 10, 10, 4)

        top = QHBoxLayout()
        self.search_bar = SearchBar()
        self.search_bar.returnPressed.connect(self.run_search)
        self.search_bar.image_dropped.connect(self.search_similar)
        self.sort_box = QComboBox()
        self.sort_box.addItems(["Best match", "Date"])
        self.sort_box.setToolTip("Sort the matches by score or by date taken")
        self.sort_box.currentIndexChanged.connect(lambda _i: self.run_search() if self.search_bar.text() else None)
        settings = QPushButton("Settings")
        settings.clicked.connect(self.open_settings)
        top.addWidget(self.search_bar, 1)
        top.addWidget(self.sort_box)
        top.addWidget(settings)
        outer.addLayout(top)

        self.banner = QFrame()
        self.banner.setObjectName("banner")
        bl = QHBoxLayout(self.banner)
        self.banner_text = QLabel()
        self.banner_text.setWordWrap(True)
        self.banner_text.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        dismiss = QToolButton()
        dismiss.setText("✕")
        dismiss.clicked.connect(self.banner.hide)
        bl.addWidget(self.banner_text, 1)
        bl.addWidget(dismiss)
        self.banner.hide()
        outer.addWidget(self.banner)

        split = QSplitter()
        split.addWidget(self._sidebar())
        self.tabs = QTabWidget()
        self.tabs.addTab(self._search_tab(), "Search")
        self.tabs.addTab(self._sort_tab(), "Sort")
        self.tabs.addTab(self._teach_tab(), "Teach")
        split.addWidget(self.tabs)
        split.setStretchFactor(1, 1)
        split.setSizes([250, 1010])
        outer.addWidget(split, 1)
        return page

    def _sidebar(self) -> QWidget:
        box = QFrame()
        box.setObjectName("sidebar")
        lay = QVBoxLayout(box)
        t = QLabel("Library")
        t.setObjectName("title")
        lay.addWidget(t)
        self.library_label = QLabel()
        self.library_label.setObjectName("muted")
        self.library_label.setWordWrap(True)
        lay.addWidget(self.library_label)
        self.folder_list = QListWidget()
        self.folder_list.setToolTip("Folders in this library")
        lay.addWidget(self.folder_list, 1)
        row = QHBoxLayout()
        add = QPushButton("Add…")
        add.clicked.connect(self.choose_folder)
        remove = QPushButton("Remove")
        remove.setToolTip("Forget the selected folder (the photos on disk are not touched)")
        remove.clicked.connect(self.remove_folder)
        rescan = QPushButton("Rescan")
        rescan.clicked.connect(lambda: self.start_indexing([]))
        for b in (add, remove, rescan):
            row.addWidget(b)
        lay.addLayout(row)
        box.setMinimumWidth(240)
        return box

    def _search_tab(self) -> QWidget:
        w = QWidget()
        lay = QHBoxLayout(w)
        lay.setContentsMargins(0, 6, 0, 0)
        split = QSplitter()
        self.results = ResultsModel(self.thumbnails, self)
        self.grid = Grid(self.results, self.thumbnails.size)
        self.grid.selectionModel().currentChanged.connect(lambda cur, _prev: self.show_preview(cur.row()))
        self.grid.doubleClicked.connect(lambda idx: self.open_file(self.results.item(idx.row()).path))
        split.addWidget(self.grid)
        split.addWidget(self._preview())
        split.setStretchFactor(0, 1)
        split.setSizes([760, 300])
        lay.addWidget(split)
        return w

    def _preview(self) -> QWidget:
        self.preview = QFrame()
        self.preview.setObjectName("preview")
        self.preview.setMinimumWidth(260)
        lay = QVBoxLayout(self.preview)
        self.preview_image = QLabel("Select a photo")
        self.preview_image.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview_image.setMinimumHeight(240)
        self.preview_image.setObjectName("muted")
        self.preview_info = QLabel()
        self.preview_info.setWordWrap(True)
        self.preview_info.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        lay.addWidget(self.preview_image, 1)
        lay.addWidget(self.preview_info)
        row1, row2 = QHBoxLayout(), QHBoxLayout()
        self.more_button = QPushButton("More like this")
        self.more_button.clicked.connect(lambda: self.refine(+1))
        self.less_button = QPushButton("Less like this")
        self.less_button.clicked.connect(lambda: self.refine(-1))
        open_b = QPushButton("Open")
        open_b.clicked.connect(lambda: self._current_path() and self.open_file(self._current_path()))
        show_b = QPushButton("Show in folder")
        show_b.clicked.connect(lambda: self._current_path() and self.open_file(os.path.dirname(self._current_path())))
        row1.addWidget(self.more_button)
        row1.addWidget(self.less_button)
        row2.addWidget(open_b)
        row2.addWidget(show_b)
        lay.addLayout(row1)
        lay.addLayout(row2)
        return self.preview

    def _sort_tab(self) -> QWidget:
        w = QWidget()
        lay = QHBoxLayout(w)
        lay.setContentsMargins(0, 6, 0, 0)
        left = QVBoxLayout()
        t = QLabel("Categories, one per line")
        t.setObjectName("title")
        self.categories = QPlainTextEdit()
        self.categories.setPlaceholderText("beach\nmountains\ncity\nfood")
        self.categories.setMaximumWidth(260)
        row = QHBoxLayout()
        self.classify_button = QPushButton("Classify")
        self.classify_button.setObjectName("primary")
        self.classify_button.clicked.connect(self.run_classify)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.clicked.connect(self.export_csv)
        self.export_button.setEnabled(False)
        row.addWidget(self.classify_button)
        row.addWidget(self.export_button)
        self.category_list = QListWidget()
        self.category_list.setMaximumWidth(260)
        self.category_list.currentTextChanged.connect(lambda _t: self._show_category())
        for x in (t, self.categories):
            left.addWidget(x)
        left.addLayout(row)
        left.addWidget(self.category_list)
        lay.addLayout(left)
        self.sort_results = ResultsModel(self.thumbnails, self)
        self.sort_grid = Grid(self.sort_results, self.thumbnails.size)
        lay.addWidget(self.sort_grid, 1)
        return w

    def _teach_tab(self) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 6, 0, 0)
        row = QHBoxLayout()
        self.bucket_name = QLineEdit()
        self.bucket_name.setPlaceholderText("New bucket name, e.g. Anna")
        self.bucket_name.setMaximumWidth(260)
        self.bucket_name.returnPressed.connect(self.add_bucket)
        add = QPushButton("Add bucket")
        add.clicked.connect(self.add_bucket)
        self.train_button = QPushButton("Train")
        self.train_button.setObjectName("primary")
        self.train_button.clicked.connect(self.run_train)
        self.apply_button = QPushButton("Apply to library")
        self.apply_button.clicked.connect(self.run_apply)
        self.train_result = QLabel("Drag a few photos into each bucket, then press Train.")
        self.train_result.setObjectName("muted")
        self.bucket_name.setMinimumWidth(200)
        for x in (self.bucket_name, add, self.train_button, self.apply_button):
            row.addWidget(x)
        row.addStretch()
        lay.addLayout(row)
        self.train_result.setWordWrap(True)
        lay.addWidget(self.train_result)
        self.bucket_area = QWidget()
        self.bucket_row = QHBoxLayout(self.bucket_area)
        self.bucket_row.addStretch()
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(self.bucket_area)
        scroll.setMinimumHeight(230)
        scroll.setMaximumHeight(260)
        lay.addWidget(scroll)
        self.buckets: dict[str, Bucket] = {}
        review = QHBoxLayout()
        self.pred_filter = QComboBox()
        self.pred_filter.currentIndexChanged.connect(lambda _i: self._show_predictions())
        self.confidence = QSlider(Qt.Orientation.Horizontal)
        self.confidence.setRange(0, 100)
        self.confidence.setValue(100)
        self.confidence.setMaximumWidth(240)
        self.confidence.valueChanged.connect(lambda _v: self._show_predictions())
        self.confidence_label = QLabel()
        review.addWidget(QLabel("Show"))
        review.addWidget(self.pred_filter)
        review.addWidget(QLabel("with confidence up to"))
        review.addWidget(self.confidence)
        review.addWidget(self.confidence_label)
        review.addStretch()
        lay.addLayout(review)
        self.pred_results = ResultsModel(self.thumbnails, self)
        self.pred_grid = Grid(self.pred_results, self.thumbnails.size)
        lay.addWidget(self.pred_grid, 1)
        return w

    def _shortcuts(self) -> None:
        find = QAction("Find", self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(self.focus_search)
        self.addAction(find)
        # Space and Ctrl+C belong to the grids, so text fields keep their own meaning of them.
        for grid in (self.grid, self.sort_grid, self.pred_grid):
            copy = QShortcut(QKeySequence.StandardKey.Copy, grid, context=Qt.ShortcutContext.WidgetShortcut)
            copy.activated.connect(lambda g=grid: self.copy_paths(g))
        space = QShortcut(QKeySequence(Qt.Key.Key_Space), self.grid, context=Qt.ShortcutContext.WidgetShortcut)
        space.activated.connect(self.toggle_preview)

    # ------------------------------------------------------------------ helpers
    def show_error(self, message: str, kind: str = "") -> None:
        """The one place errors are shown."""
        self.banner_text.setText(message if kind != "bug" else f"Something went wrong (a bug): {message}")
        self.banner.show()
        self.job_failed.emit(message)
        if kind == "ModelDownloadError":
            self._model_missing(message)

    def _model_missing(self, message: str) -> None:
        box = QMessageBox(self)
        box.setWindowTitle("Model weights needed")
        box.setText("clipdesk needs the CLIP model's weights (downloaded once, about 600 MB).")
        box.setInformativeText(message)
        download = box.addButton("Try download again", QMessageBox.ButtonRole.AcceptRole)
        choose = box.addButton("Choose a checkpoint file…", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is download:
            self._warm_model()
        elif box.clickedButton() is choose:
            f, _ = QFileDialog.getOpenFileName(self, "CLIP checkpoint", "", "Checkpoints (*.safetensors *.bin *.pt *.pth)")
            if f:
                self.settings.setValue("weights", f)
                self.show_error("Restart clipdesk to use the chosen checkpoint.", "info")

    def set_busy(self, text: str, maximum: int = 0) -> None:
        self.progress.setRange(0, maximum)
        self.progress.setValue(0)
        self.progress.show()
        self.progress_label.setText(text)
        self.cancel_button.show()

    def clear_busy(self) -> None:
        if not self.jobs.active:
            self.progress.hide()
            self.cancel_button.hide()
            self.progress_label.setText("")

    def cancel_jobs(self) -> None:
        self.jobs.cancel_all()
        self.progress_label.setText("Cancelling…")

    def refresh_library_views(self) -> None:
        folders = self.lib.catalog.folders()
        self.folder_list.clear()
        for f in folders:
            it = QListWidgetItem(os.path.basename(f) or f)
            it.setToolTip(f)
            it.setData(Qt.ItemDataRole.UserRole, f)
            self.folder_list.addItem(it)
        self.stack.setCurrentIndex(1 if folders else 0)
        images, failed = self.lib.catalog.counts()
        device = self.lib.encoder.device if self.lib.encoder_loaded else "loading…"
        extra = f" · {failed} unreadable" if failed else ""
        self.status_label.setText(f"{images:,} photos{extra} · model {self.lib.model_name} · {device}")
        self.library_label.setText(self.lib.folder)
        self._refresh_buckets()

    def _warm_model(self) -> None:
        """Load the model in the background so the first search is quick."""
        if self.lib.encoder_loaded:
            return
        self.status_label.setText(f"Loading model {self.lib.spec.name}…")
        self.jobs.start(lambda: self.lib.encoder, name="model loading",
                        on_result=lambda _e: self.refresh_library_views(), on_error=self.show_error)

    def _current_path(self) -> str | None:
        idx = self.grid.currentIndex()
        return self.results.item(idx.row()).path if idx.isValid() else None

    def open_file(self, path: str) -> None:
        QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def focus_search(self) -> None:
        self.tabs.setCurrentIndex(0)
        self.search_bar.setFocus()
        self.search_bar.selectAll()

    def copy_paths(self, grid: Grid | None = None) -> None:
        paths = (grid or self.grid).selected_paths()
        if paths:
            QGuiApplication.clipboard().setText("\n".join(paths))

    def toggle_preview(self) -> None:
        self.preview.setVisible(not self.preview.isVisible())

    # ------------------------------------------------------------------ folders and indexing
    def dragEnterEvent(self, e) -> None:
        if any(os.path.isdir(p) for p in paths_from_mime(e.mimeData())):
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        folders = [p for p in paths_from_mime(e.mimeData()) if os.path.isdir(p)]
        if folders:
            e.acceptProposedAction()
            self.start_indexing(folders)

    def choose_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Add a folder of photos", str(Path.home()))
        if d:
            self.start_indexing([d])

    def open_sample_library(self) -> None:
        self.start_indexing([str(SAMPLE)])

    def remove_folder(self) -> None:
        it = self.folder_list.currentItem()
        if it is None:
            return
        folder = it.data(Qt.ItemDataRole.UserRole)
        self.jobs.start(self.lib.remove_folder, folder, name="removing a folder",
                        on_result=lambda _n: self.refresh_library_views(), on_error=self.show_error)

    def start_indexing(self, folders: list[str]) -> None:
        if self._index_job is not None:
            self.show_error("Indexing is already running; wait for it or cancel it first.")
            return
        self.stack.setCurrentIndex(1)
        for f in folders:  # show new folders at once; the index job registers them for real
            if not any(self.folder_list.item(i).data(Qt.ItemDataRole.UserRole) == f
                       for i in range(self.folder_list.count())):
                it = QListWidgetItem(os.path.basename(f) or f)
                it.setData(Qt.ItemDataRole.UserRole, f)
                self.folder_list.addItem(it)
        self.set_busy("Indexing: scanning…")
        self._index_started = time.monotonic()
        self._index_job = self.jobs.start(
            self.lib.index, folders, name="indexing", on_progress=self._index_progress,
            on_result=self._index_done, on_error=self.show_error, on_cancelled=self._index_cancelled,
            on_finished=self._index_finished)

    def _index_progress(self, p) -> None:
        if p.stage == "scan":
            self.progress_label.setText(f"Scanning… {p.done:,} files")
        elif p.stage == "embed" and p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)
            eta = f", {int(p.eta // 60)}:{int(p.eta % 60):02d} left" if p.eta else ""
            self.progress_label.setText(f"Indexing {p.done:,}/{p.total:,} · {p.rate:.1f} img/s{eta}")
            if p.done and p.done % 256 < 32:
                self.refresh_library_views()  # counts grow while indexing; search works meanwhile

    def _index_done(self, report) -> None:
        msg = f"Indexed: {report.added} new, {report.updated} changed, {report.removed} removed"
        if report.failed:
            msg += f", {report.failed} could not be read (see status)"
        self.statusBar().showMessage(msg, 8000)

    def _index_cancelled(self) -> None:
        self.statusBar().showMessage("Indexing cancelled; what was indexed is kept.", 8000)

    def _index_finished(self) -> None:
        self._index_job = None
        self.clear_busy()
        self.refresh_library_views()
        self.index_finished.emit()

    # ------------------------------------------------------------------ search
    def run_search(self) -> None:
        query = self.search_bar.text().strip()
        if not query:
            return
        self._search(self.lib.search, query)

    def search_similar(self, path: str) -> None:
        self.search_bar.setText(f'"{path}"')
        self._search(self.lib.similar, path)

    def _search(self, fn, arg) -> None:
        self._search_serial += 1
        serial = self._search_serial
        sort = "date" if self.sort_box.currentIndex() == 1 else "score"
        self.tabs.setCurrentIndex(0)
        self.jobs.start(fn, arg, k=500, sort=sort, name="search",
                        on_result=lambda res: self._search_done(serial, res), on_error=self.show_error,
                        on_finished=self.search_finished.emit)

    def _search_done(self, serial: int, results) -> None:
        if serial != self._search_serial:
            return  # a newer search is on its way
        self.banner.hide()
        self.results.set_items([Item(r.path, r.score, taken=r.taken) for r in results])
        self.statusBar().showMessage(f"{len(results)} matches", 4000)
        if results:
            self.grid.setCurrentIndex(self.results.index(0))

    def refine(self, sign: int) -> None:
        """More/less like this: add the selected photo as a positive or negative query term."""
        path = self._current_path()
        if not path:
            return
        query = self.search_bar.text().strip()
        if query:
            query = f'{query} {"+" if sign > 0 else "-"} 0.5*"{path}"'
        elif sign > 0:
            query = f'"{path}"'
        else:
            return
        self.search_bar.setText(query)
        self.run_search()

    def show_preview(self, row: int) -> None:
        if row < 0 or row >= self.results.rowCount():
            return
        it = self.results.item(row)
        # The thumbnail at once; the large preview is decoded in a worker (a 12 MP photo would
        # hold the GUI thread for a tenth of a second).
        self._set_preview_pixmap(self.thumbnails.get(it.path) or self.thumbnails.placeholder)
        self._preview_path = it.path
        self.jobs.start(load_qimage, it.path, 720, name="preview",
                        on_result=lambda img, p=it.path: self._preview_loaded(p, img),
                        on_error=lambda msg, _kind, p=it.path: self._preview_failed(p, msg))
        try:
            st = os.stat(it.path)
            size = f"{st.st_size / 1e6:.1f} MB" if st.st_size > 1e6 else f"{st.st_size / 1e3:.0f} kB"
        except OSError:
            size = "missing"
        when = datetime.fromtimestamp(it.taken).strftime("%d %b %Y %H:%M") if it.taken else "unknown date"
        score = f"<br>score {it.score:.3f}" if it.score is not None else ""
        self.preview_info.setText(f"<b>{os.path.basename(it.path)}</b><br>{os.path.dirname(it.path)}"
                                  f"<br>{size} · {when}{score}")

    def _set_preview_pixmap(self, pm: QPixmap) -> None:
        self.preview_image.setPixmap(pm.scaled(max(64, self.preview_image.width() - 8), 360,
                                               Qt.AspectRatioMode.KeepAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation))

    def _preview_failed(self, path: str, message: str) -> None:
        if path == getattr(self, "_preview_path", None):
            self.preview_image.setText(f"Cannot show this photo:\n{message}")

    def _preview_loaded(self, path: str, img) -> None:
        if path == getattr(self, "_preview_path", None) and not img.isNull():
            self._set_preview_pixmap(QPixmap.fromImage(img))

    # ------------------------------------------------------------------ zero-shot sort
    def run_classify(self) -> None:
        names = [n.strip() for n in self.categories.toPlainText().splitlines() if n.strip()]
        if len(names) < 2:
            self.show_error("Type at least two categories, one per line.")
            return
        self.classify_button.setEnabled(False)
        self.set_busy("Classifying…")
        self.jobs.start(self.lib.classify, names, name="classification", on_result=self._classified_done,
                        on_error=self.show_error, on_progress=self._generic_progress,
                        on_finished=lambda: (self.classify_button.setEnabled(True), self.clear_busy()))

    def _generic_progress(self, p) -> None:
        if p.total:
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)

    def _classified_done(self, results) -> None:
        self._classified = results
        self.export_button.setEnabled(bool(results))
        counts = Counter(r.label for r in results)
        self.category_list.clear()
        for name, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            it = QListWidgetItem(f"{name or 'none'}  ({n})")
            it.setData(Qt.ItemDataRole.UserRole, name)
            self.category_list.addItem(it)
        self.category_list.setCurrentRow(0)

    def _show_category(self) -> None:
        it = self.category_list.currentItem()
        if it is None:
            return
        name = it.data(Qt.ItemDataRole.UserRole)
        rows = sorted((r for r in self._classified if r.label == name), key=lambda r: -r.probability)
        self.sort_results.set_items([Item(r.path, r.probability, r.label or "none") for r in rows])

    def export_csv(self, path: str | None = None) -> None:
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export categories", "categories.csv", "CSV (*.csv)")
        if not path:
            return
        with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
            w = csv.writer(f)
            w.writerow(["path", "category", "probability"])
            for r in self._classified:
                w.writerow([r.path, r.label or "", f"{r.probability:.4f}"])
        self.statusBar().showMessage(f"Exported {len(self._classified)} rows to {path}", 6000)

    # ------------------------------------------------------------------ teaching
    def _refresh_buckets(self) -> None:
        labels = self.lib.labels()
        for name in list(self.buckets):
            if name not in labels:
                self.buckets.pop(name).deleteLater()
        for name, paths in labels.items():
            if name not in self.buckets:
                b = Bucket(name, self.thumbnails)
                b.dropped.connect(self.add_to_bucket)
                b.remove_requested.connect(self.delete_bucket)
                self.bucket_row.insertWidget(self.bucket_row.count() - 1, b)
                self.buckets[name] = b
            self.buckets[name].set_paths(paths)

    def add_bucket(self, name: str | None = None) -> None:
        name = (name or self.bucket_name.text()).strip()
        if not name:
            return
        try:
            self.lib.create_label(name)
        except Exception as e:  # noqa: BLE001 - shown in the banner
            self.show_error(str(e))
            return
        self.bucket_name.clear()
        self._refresh_buckets()

    def delete_bucket(self, name: str) -> None:
        self.lib.delete_label(name)
        self._refresh_buckets()

    def add_to_bucket(self, name: str, paths: list[str]) -> None:
        self.jobs.start(self.lib.add_to_label, name, paths, name="labelling",
                        on_result=lambda _n: self._refresh_buckets(), on_error=self.show_error)

    def run_train(self) -> None:
        labels = [n for n, b in self.buckets.items() if b.paths()]
        if not labels:
            self.show_error("Drag some photos into a bucket first.")
            return
        self.train_button.setEnabled(False)
        self.train_result.setText("Training…")
        self.jobs.start(self.lib.train, PROBE, labels, name="training", on_result=self._trained,
                        on_error=self.show_error, on_finished=lambda: self.train_button.setEnabled(True))

    def _trained(self, r) -> None:
        self.train_result.setText(
            f"Trained on {r.examples} photos: cross-validated accuracy <b>{r.cv_accuracy:.0%}</b> "
            f"(zero-shot would get {r.zeroshot_accuracy:.0%}). Press Apply to label the library.")
        self.train_result.setObjectName("")

    def run_apply(self) -> None:
        self.apply_button.setEnabled(False)
        self.set_busy("Applying…")
        self.jobs.start(self.lib.predict, PROBE, name="applying", on_result=self._applied,
                        on_error=self.show_error, on_progress=self._generic_progress,
                        on_finished=lambda: (self.apply_button.setEnabled(True), self.clear_busy()))

    def _applied(self, predictions) -> None:
        self._predictions = predictions
        labels = sorted({p.label for p in predictions if p.label is not None})
        self.pred_filter.blockSignals(True)
        self.pred_filter.clear()
        self.pred_filter.addItems(labels + (["not " + labels[0]] if any(p.label is None for p in predictions) else []))
        self.pred_filter.blockSignals(False)
        self._show_predictions()

    def _show_predictions(self) -> None:
        limit = self.confidence.value() / 100
        self.confidence_label.setText(f"{self.confidence.value()}%")
        choice = self.pred_filter.currentText()
        want = None if choice.startswith("not ") else choice
        rows = [p for p in self._predictions if p.label == want and p.probability <= limit + 1e-9]
        rows.sort(key=lambda p: p.probability)  # least sure first: those are worth reviewing
        self.pred_results.set_items([Item(p.path, p.probability, p.label or BACKGROUND) for p in rows])

    # ------------------------------------------------------------------ settings and closing
    def open_settings(self) -> None:
        dlg = SettingsDialog(self, self.settings.value("model", "") or "", self.settings.value("device", "auto"),
                             self.thumbnails.size, self.lib.folder)
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return
        self.settings.setValue("model", dlg.model.text().strip())
        self.settings.setValue("device", dlg.device.currentText())
        self.settings.setValue("thumb_size", dlg.thumb.value())
        if dlg.library.text() != self.lib.folder:
            self.settings.setValue("library", dlg.library.text())
        self.statusBar().showMessage("Settings saved; model, device and library changes apply on restart.", 8000)

    def closeEvent(self, e) -> None:
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("library", self.lib.folder)
        self.shutdown()
        super().closeEvent(e)

    def shutdown(self) -> None:
        """Cancel running jobs, wait for every thread, close the library."""
        self.jobs.shutdown()
        self.thumbnails.wait()
        self.lib.close()
