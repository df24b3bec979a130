"""The clipdesk main window: composes the views (``views/``) and routes their signals.

No ML or storage logic lives here, and no view logic either: each view (Search, Sort, Teach, the
folder sidebar, the preview) is its own module with its own model. The window owns what they
share — the library, the worker pool, thumbnails, buckets and the undo stack (``views.Context``)
— plus indexing (queued jobs, then-callbacks), the one error banner and settings, which apply at
once. The model's warm-up and first-run dialog live in ``views/model_setup.py``.
"""
from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (QApplication, QComboBox, QDialog, QFileDialog, QHBoxLayout, QLineEdit, QMainWindow,
                               QPushButton, QSplitter, QStackedWidget, QTabWidget, QToolButton, QVBoxLayout,
                               QWidget)

from clipdesk.errors import ClipdeskError, ModelError, ModelMismatchError
from clipdesk.library import Library

from . import desktop
from .focus import keys_stay_on_content
from .labels import LabelStore, make_undo_stack
from .models import Thumbnails, paths_from_mime
from .recent import RecentLibraries, model_choice
from .views.banner import Banner, without_command_line
from .views.context import Context
from .views.filters import Marks
from .views.dialogs import SettingsDialog
from .views.duplicates import DuplicatesView
from .views.folders import FoldersPanel
from .views.inbox import InboxView
from .views.model_setup import ModelSetup
from .views.search import SearchBar, SearchView
from .views.status import StatusArea
from .views.sort import SortView
from .views.tabs import ClickableLabel, DragTabBar
from .views.teach import PROBE, TeachView
from .views.watching import FolderWatch
from .views.welcome import WelcomePage
from .workers import Jobs

__all__ = ["MainWindow", "PROBE", "SAMPLE"]

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample"
STYLE = """
QMainWindow, QWidget#page { background: #f7f8fa; }
QLineEdit#search { padding: 6px 12px; border: 1px solid #c9ced6; border-radius: 16px; background: white;
                   font-size: 14px; }
QLineEdit#search:focus { border-color: #1a73e8; }
QFrame#banner { background: #fdecea; border: 1px solid #f5c2c0; border-radius: 6px; }
QFrame#banner[info="true"] { background: #e8f0fe; border-color: #c6dafc; }
QFrame#banner QLabel { color: #8c1d18; }
QFrame#banner[info="true"] QLabel { color: #174ea6; }
QFrame#sidebar, QFrame#preview { background: white; border: 1px solid #e3e6ea; border-radius: 8px; }
QFrame#sidebar QPushButton { padding: 4px 6px; }
QFrame[bucket="true"] { background: white; border: 1px solid #dfe3e8; border-radius: 8px; }
QFrame[bucket="true"][hover="true"] { border: 2px dashed #1a73e8; background: #eef3fd; }
QLabel#title { font-size: 14px; font-weight: 600; }
QLabel#welcomeTitle { font-size: 28px; font-weight: 600; }
QLabel[muted="true"] { color: #5f6368; }
QLabel#countLabel { color: #3c4043; padding: 0 6px; }
QLabel#countLabel[link="true"] { color: #1a73e8; }
QPushButton { padding: 5px 10px; border-radius: 6px; border: 1px solid #c9ced6; background: white; }
QPushButton:hover { background: #eef3fd; }
QPushButton:disabled { color: #9aa0a6; }
QPushButton[primary="true"] { background: #1a73e8; color: white; border: none; }
QPushButton[primary="true"]:hover { background: #1765cc; }
QPushButton[primary="true"]:disabled { background: #a8c7fa; }
QListView { background: white; border: 1px solid #e3e6ea; border-radius: 8px; }
QTabWidget::pane { border: none; }
QTabBar::tab { padding: 6px 18px; border: none; border-bottom: 2px solid transparent; background: transparent;
               color: #5f6368; font-weight: 600; }
QTabBar::tab:selected { color: #1a73e8; border-bottom-color: #1a73e8; }
"""


class MainWindow(QMainWindow):
    """The app. ``library`` is opened by the caller; the window owns it from then on."""

    search_finished = Signal()
    index_finished = Signal()
    model_ready = Signal()
    job_failed = Signal(str)
    status_message = Signal(str)  # from any thread: model loading and download progress

    def __init__(self, library: Library, settings: QSettings | None = None) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.lib = library
        self.settings = settings or QSettings("clipdesk", "clipdesk")
        self.recent = RecentLibraries(self.settings)
        self.single_instance = None  # set by ui/app.py: the window answers for its library
        self.jobs = Jobs(self)
        thumb = int(self.settings.value("thumb_size", 160))
        self.thumbnails = Thumbnails(os.path.join(library.folder, "thumbnails"), thumb, self)
        self.undo_stack = make_undo_stack(self)
        self.labels = LabelStore(library, self.undo_stack, self._index_then, self)
        self.ctx = Context(library, self.jobs, self.thumbnails, self.labels, self.undo_stack, self)
        self._index_job = None
        self._index_queue: list[tuple[list[str], list]] = []
        self._index_then_calls: list = []
        self.setWindowTitle("clipdesk")
        self.setStyleSheet(STYLE)
        self._build()
        self._menus()
        self._wire()
        self._shortcuts()
        keys_stay_on_content(self)
        self._remember_library()
        self._restore_sort_categories()
        self._restore_marks()
        self.status_message.connect(self.status.line)
        library.status_callback = self.status_message.emit
        self.refresh_library_views()
        geom = self.settings.value("geometry")
        if geom is not None:
            self.restoreGeometry(geom)
        else:
            self.resize(1280, 800)
        QTimer.singleShot(0, self._startup)

    # ------------------------------------------------------------------ composition
    def _build(self) -> None:
        self.stack = QStackedWidget()
        central = QWidget()
        central.setObjectName("page")
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(0)
        # the banner has its own strip above every page (the Welcome page too): it never hides a control
        self.banner = Banner()
        strip = QHBoxLayout()
        strip.setContentsMargins(10, 6, 10, 0)
        strip.addWidget(self.banner)
        column.addLayout(strip)
        column.addWidget(self.stack, 1)
        self.setCentralWidget(central)
        self.welcome = WelcomePage(SAMPLE.is_dir())
        self.stack.addWidget(self.welcome)
        page = QWidget()
        page.setObjectName("page")
        outer = QVBoxLayout(page)
        outer.setContentsMargins(10, 10, 10, 4)
        top = QHBoxLayout()
        self.search_bar = SearchBar()
        self.sort_box = QComboBox()
        self.sort_box.setObjectName("sortOrder")
        self.sort_box.addItems(["Best match", "Date"])
        self.sort_box.setToolTip("Order the matches by score or by date taken (newest first)")
        self.count_label = ClickableLabel(self._count_clicked)
        self.count_label.setObjectName("countLabel")
        self.undo_button = QToolButton()
        self.undo_button.setObjectName("undoButton")
        self.settings_button = QPushButton("Settings")
        self.settings_button.setObjectName("settingsButton")
        top.addWidget(self.search_bar, 1)
        top.addWidget(self.sort_box)
        top.addWidget(self.count_label)
        top.addWidget(self.undo_button)
        top.addWidget(self.settings_button)
        outer.addLayout(top)

        split = QSplitter()
        self.sidebar = FoldersPanel(self.ctx)
        split.addWidget(self.sidebar)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("tabs")
        self.tabs.setTabBar(DragTabBar())
        self.search_view = SearchView(self.ctx)
        self.sort_view = SortView(self.ctx)
        self.teach_view = TeachView(self.ctx, self.search_view.current_items)
        self.tabs.addTab(self.search_view, "Search")
        self.tabs.addTab(self.sort_view, "Sort")
        self.tabs.addTab(self.teach_view, "Teach")
        self.duplicates_view = DuplicatesView(self.ctx, self.settings)
        self.tabs.addTab(self.duplicates_view, "Duplicates")
        self.inbox_view = InboxView(self.ctx, PROBE)  # new photos the taught categories were unsure about
        self.tabs.addTab(self.inbox_view, "Inbox")
        split.addWidget(self.tabs)
        split.setStretchFactor(1, 1)
        split.setCollapsible(0, True)  # drag the divider to the left edge to hide the folders
        split.setCollapsible(1, False)
        split.setSizes([210, 1070])
        self.split = split
        outer.addWidget(split, 1)
        self.stack.addWidget(page)
        self.model_setup = ModelSetup(self.ctx, self.settings, self.banner, self)
        self.setAcceptDrops(True)

        self.status = StatusArea()
        self.setStatusBar(self.status)
        self.status_label, self.progress = self.status.label, self.status.progress
        self.watch = FolderWatch(self.ctx, self.settings, self)  # keeps the library current while open
        self.status.addPermanentWidget(self.watch.toggle)

    def _menus(self) -> None:
        """File (libraries, folders, settings) and View (the tabs): reachable from every page,
        the Welcome page included."""
        bar = self.menuBar()
        bar.setObjectName("menuBar")
        file = bar.addMenu("&File")
        file.setObjectName("fileMenu")
        self.open_library_action = file.addAction("Open library…")
        self.open_library_action.setObjectName("openLibraryAction")
        self.open_library_action.setShortcut(QKeySequence.StandardKey.Open)
        self.open_library_action.triggered.connect(lambda _c=False: self.choose_library())
        self.recent_menu = file.addMenu("Recent libraries")
        self.recent_menu.setObjectName("recentMenu")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        file.addSeparator()
        add = file.addAction("Add a folder of photos…")
        add.triggered.connect(lambda _c=False: self.choose_folder())
        settings = file.addAction("Settings…")
        settings.setShortcut(QKeySequence.StandardKey.Preferences)
        settings.triggered.connect(lambda _c=False: self.open_settings())
        file.addSeparator()
        quit_ = file.addAction("Quit")
        quit_.setShortcut(QKeySequence.StandardKey.Quit)
        quit_.triggered.connect(lambda _c=False: self.close())
        view = bar.addMenu("&View")
        view.setObjectName("viewMenu")
        for i, name in enumerate(("Search", "Sort", "Teach", "Duplicates", "Inbox")):
            act = view.addAction(name)
            act.setShortcut(QKeySequence(f"Ctrl+{i + 1}"))
            act.triggered.connect(lambda _c=False, i=i: self.show_tab(i))
        view.addSeparator()
        nxt = view.addAction("Next tab")
        nxt.setShortcuts([QKeySequence("Ctrl+Tab"), QKeySequence("Ctrl+PgDown")])
        nxt.triggered.connect(lambda _c=False: self.show_tab((self.tabs.currentIndex() + 1) % self.tabs.count()))
        prev = view.addAction("Previous tab")
        prev.setShortcuts([QKeySequence("Ctrl+Shift+Tab"), QKeySequence("Ctrl+PgUp")])
        prev.triggered.connect(lambda _c=False: self.show_tab((self.tabs.currentIndex() - 1) % self.tabs.count()))

    def _fill_recent_menu(self) -> None:
        self.recent_menu.clear()
        entries = [e for e in self.recent.entries() if e.folder != self.lib.folder and e.exists]
        for e in entries:
            act = self.recent_menu.addAction(e.folder)
            act.setToolTip(f"model {e.model}" if e.model else "")
            act.triggered.connect(lambda _c=False, f=e.folder: self.open_library(f))
        if not entries:
            self.recent_menu.addAction("No other library yet").setEnabled(False)

    def _wire(self) -> None:
        ctx = self.ctx
        ctx.error.connect(self.show_error)
        ctx.resolved.connect(self.banner.clear)
        ctx.message.connect(lambda m: self.statusBar().showMessage(m, 6000))
        self.welcome.add_folder.connect(self.choose_folder)
        self.welcome.open_sample.connect(self.open_sample_library)
        self.welcome.open_library.connect(self.choose_library)
        self.welcome.open_recent.connect(self.open_library)
        self.search_bar.down_pressed.connect(self.focus_grid)
        self.search_bar.returnPressed.connect(self.run_search)
        self.search_bar.textChanged.connect(self._query_edited)
        self.search_bar.image_dropped.connect(self.search_similar)
        self.sort_box.currentIndexChanged.connect(
            lambda i: self.search_view.set_sort("date" if i == 1 else "score"))
        self.settings_button.clicked.connect(lambda _c=False: self.open_settings())
        self.undo_button.setText("Undo")
        self.undo_button.setEnabled(False)
        self.undo_button.clicked.connect(lambda _c=False: self.undo_stack.undo())
        self.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self.undo_stack.undoTextChanged.connect(lambda t: self.undo_button.setToolTip(f"Undo {t} (Ctrl+Z)"))
        for view in (self.search_view, self.sort_view, self.teach_view, self.duplicates_view, self.inbox_view):
            view.count_changed.connect(lambda _t: self._show_count())
            view.open_requested.connect(self.open_file)
            view.show_in_folder_requested.connect(self.show_in_folder)
        self.search_view.finished.connect(self.search_finished)
        self.ctx.marks.changed.connect(self._save_marks)
        # Teach's "Current search" follows a search the marks filter reran
        self.search_view.finished.connect(
            lambda: self.teach_view.source.currentIndex() == 2 and self.teach_view.load_source())
        self.sort_view.progress.connect(self.status.job_progress)
        self.teach_view.progress.connect(self.status.job_progress)
        self.duplicates_view.progress.connect(self.status.job_progress)
        self.inbox_view.progress.connect(self.status.job_progress)
        self.inbox_view.title_changed.connect(lambda t: self.tabs.setTabText(self.tabs.indexOf(self.inbox_view), t))
        self.inbox_view.retrained.connect(lambda r: self.teach_view._trained(r, False))
        self.duplicates_view.changed.connect(self._library_content_changed)
        self.watch.message.connect(lambda m: self.statusBar().showMessage(m, 6000))
        self.watch.changed.connect(self._watched_change)
        self.status.cancel_requested.connect(self.jobs.cancel_all)
        self.tabs.currentChanged.connect(self._tab_changed)
        self.sidebar.index_requested.connect(self.start_indexing)
        self.sidebar.restore_requested.connect(self._restore_folder)
        self.sidebar.choose_requested.connect(self.choose_folder)
        self.sidebar.changed.connect(self._library_content_changed)
        self.model_setup.changed.connect(self._model_changed)
        self.model_setup.changed.connect(self._remember_library)  # the model chosen belongs to this library
        self.model_setup.state_changed.connect(self.refresh_status)
        self.model_setup.loaded.connect(self.model_ready)
        self.jobs.busy_changed.connect(self._busy_changed)

    def _shortcuts(self) -> None:
        find = QAction("Find", self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(self.focus_search)
        self.addAction(find)
        # Ctrl+Z anywhere in the window; a focused text field keeps its own undo (it takes the
        # shortcut first through ShortcutOverride).
        self.undo_action = self.undo_stack.createUndoAction(self, "Undo")
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.redo_action = self.undo_stack.createRedoAction(self, "Redo")
        self.redo_action.setShortcut(QKeySequence.StandardKey.Redo)
        self.addAction(self.undo_action)
        self.addAction(self.redo_action)
        about = QAction("About clipdesk", self)  # F1; also a button in Settings
        about.setShortcut(QKeySequence.StandardKey.HelpContents)
        about.triggered.connect(self.show_about)
        self.addAction(about)
        space = QShortcut(QKeySequence(Qt.Key.Key_Space), self.search_view.grid,
                          context=Qt.ShortcutContext.WidgetShortcut)
        space.activated.connect(self.search_view.toggle_preview)
        escape = QShortcut(QKeySequence(Qt.Key.Key_Escape), self)
        escape.activated.connect(self.step_back)

    def step_back(self) -> None:
        """Escape: close the banner; else leave a text field for the photos."""
        if self.banner.isVisible():
            self.banner.dismiss()
        elif isinstance(QApplication.focusWidget(), QLineEdit):
            self.focus_grid()

    def show_tab(self, i: int) -> None:
        self.tabs.setCurrentIndex(i)
        self.focus_grid()

    def focus_grid(self) -> None:
        """Put the keyboard on the current tab's photos (its grid keys then work at once)."""
        view = self.tabs.currentWidget()
        target = view.focus_target() if hasattr(view, "focus_target") else getattr(view, "grid", view)
        if target is None or not target.isVisible():
            return
        target.setFocus(Qt.FocusReason.OtherFocusReason)
        sel = target.selectionModel() if hasattr(target, "selectionModel") else None
        if sel is not None and not sel.currentIndex().isValid() and target.model().rowCount():
            target.setCurrentIndex(target.model().index(0, 0))

    # ------------------------------------------------------------------ compatibility names
    @property
    def results(self):
        return self.search_view.results

    @property
    def grid(self):
        return self.search_view.grid

    @property
    def buckets(self):
        return self.teach_view.buckets.buckets

    def add_bucket(self, name: str) -> None:
        self.labels.create(name)

    # ------------------------------------------------------------------ start-up and model
    def _startup(self) -> None:
        if self.jobs.closed:
            return
        empty = self.lib.empty_folders()
        if empty:  # registered by a run that failed (e.g. offline): scan them now
            self.start_indexing(empty)
        else:
            self.model_setup.warm()
        self.search_view.run()
        self.teach_view.load_source()
        self.inbox_view.reload()
        self.watch.sync()

    def _model_changed(self) -> None:
        """After another model was chosen (or a retry): load it, and scan folders left empty."""
        empty = self.lib.empty_folders()
        if empty:
            self.start_indexing(empty)
        else:
            self.model_setup.warm()

    # ------------------------------------------------------------------ errors and status
    def show_error(self, message: str, kind: str = "", cause: str = "error") -> None:
        """The one place errors are shown."""
        self.job_failed.emit(message)
        if kind in ("ModelDownloadError", "ModelError") or cause == "model":
            self.statusBar().clearMessage()  # "Fetching weights…" is over: the failure says what happened
        if kind == "ModelDownloadError":
            self.model_setup.missing(message)  # the dialog says it; no banner on top of it
            return
        message = without_command_line(message)  # the app's own ways are on screen; no shell commands
        text = f"Something went wrong (a bug): {message}" if kind == "bug" else message
        self.banner.show_message(text, cause)

    def refresh_status(self) -> None:
        images, failed = self.lib.catalog.counts()
        device = self.model_setup.device_text()
        extra = f" · {failed} unreadable" if failed else ""
        self.status_label.setText(f"{images:,} photos{extra} · model {self.lib.model_name} · {device}")

    def _show_count(self) -> None:
        view = self.tabs.currentWidget()
        text = getattr(view, "count_text", "")
        self.count_label.setText(text)
        link = "show " in text
        if self.count_label.property("link") != link:
            self.count_label.setProperty("link", link)
            self.count_label.style().unpolish(self.count_label)
            self.count_label.style().polish(self.count_label)
        self.count_label.setCursor(Qt.CursorShape.PointingHandCursor if link else Qt.CursorShape.ArrowCursor)

    def _count_clicked(self) -> None:
        if self.tabs.currentWidget() is self.search_view:
            self.search_view.toggle_show_all()

    def _tab_changed(self, i: int) -> None:
        self._show_count()
        focus = QApplication.focusWidget()
        if focus is None or not focus.isVisible() or not isinstance(focus, QLineEdit):
            self.focus_grid()  # the keys follow the tab shown, not a widget left on the hidden one
        if self.tabs.widget(i) is self.teach_view and self.teach_view.source.currentIndex() == 2:
            self.teach_view.load_source()  # "current search" follows the Search tab

    def set_busy(self, text: str, maximum: int = 0) -> None:
        self.status.set_busy(text, maximum)

    def clear_busy(self) -> None:
        if not self.jobs.active:
            self.status.clear_busy()

    def refresh_library_views(self) -> None:
        folders = self.lib.catalog.folders()
        self.sidebar.refresh([f for fs, _ in self._index_queue for f in fs])
        self.stack.setCurrentIndex(1 if folders or self._index_job is not None else 0)
        self.welcome.set_recent(self.recent.entries(), self.lib.folder)
        self.refresh_status()

    def _library_content_changed(self) -> None:
        self.refresh_library_views()
        self.labels.refresh()
        if not self.search_view.terms():
            self.search_view.run()
        self.watch.sync()  # folders added or removed are watched, or no longer

    def _watched_change(self) -> None:
        """The folder watcher indexed what changed on disk: counts, buckets and results follow."""
        self.refresh_library_views()
        self.labels.refresh()
        self.search_view.run()

    # ------------------------------------------------------------------ search (routing)
    def run_search(self) -> None:
        self.tabs.setCurrentWidget(self.search_view)
        self.search_view.set_text(self.search_bar.text())

    def _query_edited(self, text: str) -> None:
        if not text and self.search_view.text:
            self.search_view.set_text("")  # cleared: the library by date, or the example photos alone

    def _busy_changed(self, busy: bool) -> None:
        if not busy:
            self.clear_busy()

    def search_similar(self, path: str) -> None:
        self.tabs.setCurrentWidget(self.search_view)
        self.search_bar.clear()
        self.search_view.search_image(path)

    def focus_search(self) -> None:
        self.tabs.setCurrentWidget(self.search_view)
        self.search_bar.setFocus()
        self.search_bar.selectAll()

    def open_file(self, path: str) -> None:
        problem = desktop.open_path(path)
        if problem:
            self.banner.show_message(problem, "desktop", info=True)

    def show_in_folder(self, path: str) -> None:
        problem = desktop.show_in_folder(path)
        if problem:
            self.banner.show_message(problem, "desktop", info=True)

    # ------------------------------------------------------------------ folders and indexing
    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt
        if any(os.path.isdir(p) for p in paths_from_mime(e.mimeData())):
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt
        folders = [p for p in paths_from_mime(e.mimeData()) if os.path.isdir(p)]
        if folders:
            e.acceptProposedAction()
            self.add_folders(folders)

    def choose_folder(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Add a folder of photos", str(Path.home()),
                                             QFileDialog.Option.DontUseNativeDialog | QFileDialog.Option.ShowDirsOnly)
        if d:
            self.add_folders([d])

    def open_sample_library(self) -> None:
        self.add_folders([str(SAMPLE)])

    def add_folders(self, folders: list[str]) -> None:
        """The user adds folders: index them (one undo step per new folder)."""
        known = set(self.lib.catalog.folders())
        new = [os.path.abspath(f) for f in folders if os.path.abspath(f) not in known]
        self.start_indexing([os.path.abspath(f) for f in folders])
        self.sidebar.added(new)

    def _index_then(self, paths: list[str], then) -> None:
        self.start_indexing(paths, then)

    def _restore_folder(self, folder: str, labels: dict) -> None:
        def put_back() -> None:
            for name, paths in labels.items():
                known = [p for p in paths if self.lib.catalog.id_for_path(p) is not None]
                if known:
                    try:
                        self.lib.add_to_label(name, known)
                    except ClipdeskError as e:
                        self.show_error(str(e), type(e).__name__, "labels")
            self.labels.refresh()
        self.start_indexing([folder], put_back)

    def start_indexing(self, folders: list[str], then=None) -> None:
        """Index ``folders`` (or files; [] rescans every folder); ``then()`` runs after it succeeds."""
        if self._index_job is not None:
            self._index_queue.append((list(folders), [then] if then else []))
            self.statusBar().showMessage("Queued after the indexing that is running.", 4000)
            self.sidebar.refresh([f for fs, _ in self._index_queue for f in fs if os.path.isdir(f)])
            return
        self.stack.setCurrentIndex(1)
        self.sidebar.refresh([f for f in folders if os.path.isdir(f)])
        self.set_busy("Indexing: scanning…")
        self._index_then_calls = [then] if then else []
        self._index_job = self.jobs.start(
            self.lib.index, folders, name="indexing", on_progress=self._index_progress,
            on_result=self._index_done, on_error=self.model_setup.on_error("index"), on_cancelled=self._index_cancelled,
            on_finished=self._index_finished)

    def _index_progress(self, p) -> None:
        self.status.index_progress(p)
        if p.stage == "embed" and p.done and p.done % 256 < 32:
            self.refresh_status()  # counts grow while indexing; search works meanwhile

    def _index_done(self, report) -> None:
        self.banner.clear("index")
        if self.lib.encoder_loaded:
            self.model_setup.mark_loaded()
        msg = f"Indexed: {report.added} new, {report.updated} changed, {report.removed} removed"
        if report.failed:
            msg += f", {report.failed} could not be read (see status)"
        self.statusBar().showMessage(msg, 8000)
        calls, self._index_then_calls = self._index_then_calls, []
        for fn in calls:
            fn()

    def _index_cancelled(self) -> None:
        self._index_then_calls = []
        self.statusBar().showMessage("Indexing cancelled; what was indexed is kept.", 8000)

    def _index_finished(self) -> None:
        self._index_job = None
        self._index_then_calls = []
        self.clear_busy()
        if self._index_queue:
            folders, thens = self._index_queue.pop(0)
            self.start_indexing(folders, thens[0] if thens else None)
        self._library_content_changed()
        self.teach_view.load_source()
        self.index_finished.emit()

    # ------------------------------------------------------------------ settings
    def show_about(self) -> None:
        from .views.about import show_about

        show_about(self, self.lib, self.settings)

    def open_settings(self) -> None:
        vectors = self.lib.catalog.vector_count()
        note = (f"This library's {vectors:,} photos were indexed with this model. To use another model, "
                "open a new library (File → Open library…, an empty folder) and add your folders there.") \
            if vectors else ""
        dlg = SettingsDialog(self, self.lib.model_name, self.settings.value("device", "auto") or "auto",
                             self.thumbnails.size, self.lib.folder, note, self.lib.spec.folder or "")
        if dlg.exec() != QDialog.DialogCode.Accepted:
            return
        self.apply_settings(dlg.model.text().strip(), dlg.device.currentText(), dlg.thumb.value(),
                            dlg.library.text().strip(), dlg.model_dir.text().strip())

    def apply_settings(self, model: str, device: str, thumb: int, library: str,
                       model_dir: str = "") -> list[str]:
        """Apply settings at once; returns what changed (and says precisely what could not).
        ``model_dir``: a model folder, used instead of ``model`` when given."""
        done = []
        if thumb != self.thumbnails.size:
            self.thumbnails.set_size(thumb)
            for g in (self.search_view.grid, self.sort_view.grid, self.teach_view.grid, self.teach_view.review_grid,
                      self.inbox_view.grid):
                g.set_thumb_size(thumb)
            self.settings.setValue("thumb_size", thumb)
            done.append(f"thumbnails {thumb} px")
        if library and os.path.abspath(os.path.expanduser(library)) != self.lib.folder:
            if self.switch_library(library):
                done.append("library")
                return done  # the new library has its own model
        if device != (self.settings.value("device", "auto") or "auto"):
            self.settings.setValue("device", device)
            self.lib.device = None if device == "auto" else device
            if self.lib.encoder_loaded:  # reload the same model on the new device
                self.lib.use_model(None, self.lib.spec.weights, self.lib.spec.folder)
                self.model_setup.warm()
            done.append(f"device {device}")
        if model_dir and os.path.abspath(os.path.expanduser(model_dir)) != self.lib.spec.folder:
            from .views.dialogs import check_model_folder

            model_dir = os.path.abspath(os.path.expanduser(model_dir))
            problem = check_model_folder(model_dir)
            try:
                if problem:
                    raise ModelError(problem)
                self.lib.use_model(None, None, model_dir)
            except ClipdeskError as e:
                self.show_error(f"Model not changed: {e}", type(e).__name__, "settings")
            else:
                self.settings.setValue("model_dir", model_dir)
                self.settings.remove("weights")
                self._remember_library()
                self._model_changed()
                done.append(f"model folder {model_dir}")
            model = ""  # the folder is the model
        if model and model != self.lib.model_name and model != self.lib.spec.name:
            try:
                self.lib.use_model(model)
            except ModelMismatchError:
                self.show_error(f"Model not changed: this library's photos were indexed with {self.lib.model_name}. "
                                f"To use {model}, open a new library (File → Open library…, an empty folder) and "
                                "add your folders there.", "ModelMismatchError", "settings")
            except ClipdeskError as e:
                self.show_error(f"Model not changed: {e}", type(e).__name__, "settings")
            else:
                self.settings.setValue("model", model)
                self.settings.remove("weights")
                self.settings.remove("model_dir")
                self._remember_library()
                self._model_changed()
                done.append(f"model {model}")
        if done:
            self.statusBar().showMessage("Applied: " + ", ".join(done), 6000)
        return done

    # ------------------------------------------------------------------ libraries
    def _remember_library(self) -> None:
        """This library, first in the recent list, with the model it uses now."""
        self.recent.remember(self.lib.folder, *model_choice(self.lib.spec))

    def _save_sort_categories(self) -> None:
        """The categories typed on the Sort tab, kept per library (a relaunch or a switch back finds them)."""
        self.recent.set_note(self.lib.folder, "sort_categories", self.sort_view.categories.toPlainText())

    def _restore_sort_categories(self) -> None:
        self.sort_view.categories.setPlainText(self.recent.note(self.lib.folder, "sort_categories"))

    def _save_marks(self) -> None:
        """The marks filter (ratings, flags, colour), kept per library like the Sort categories."""
        self.recent.set_note(self.lib.folder, "marks", self.ctx.marks.marks.to_json())

    def _restore_marks(self) -> None:
        marks = self.ctx.marks
        marks.blockSignals(True)  # the views load once, after the switch, not once per change
        marks.set(Marks.from_json(self.recent.note(self.lib.folder, "marks")))
        marks.blockSignals(False)
        for bar in (self.search_view.filter_bar, self.teach_view.filter_bar):
            bar.show_state()

    def choose_library(self) -> None:
        start = os.path.dirname(self.lib.folder) if os.path.isdir(os.path.dirname(self.lib.folder)) else str(Path.home())
        d = QFileDialog.getExistingDirectory(self, "Open a library (or an empty folder for a new one)", start,
                                             QFileDialog.Option.DontUseNativeDialog | QFileDialog.Option.ShowDirsOnly)
        if d:
            self.open_library(d)

    def open_library(self, folder: str) -> bool:
        """Open the library at ``folder`` (an empty or new folder becomes a new library); a folder of
        photos that is not a library is refused with what to do instead."""
        folder = os.path.abspath(os.path.expanduser(folder))
        if folder == self.lib.folder:
            return True
        catalog = os.path.join(folder, "catalog.sqlite")
        if os.path.isdir(folder) and not os.path.lexists(catalog) and any(os.scandir(folder)):
            self.show_error(f"{folder} is not a clipdesk library. To search its photos, add it as a folder "
                            "(File → Add a folder of photos…); for a new library, choose an empty folder.",
                            "input", "library")
            return False
        return self.switch_library(folder)

    def switch_library(self, folder: str) -> bool:
        claim = None  # one window per library (ui/app.py SingleInstance), for a library switched to too
        if self.single_instance is not None:
            from .instance import SingleInstance

            claim = SingleInstance(folder)
            if not claim.primary:
                shown = claim.show_other()
                self.show_error(f"The library {folder} is open in another clipdesk window"
                                + (", now in front." if shown else ".")
                                + " Close it there to open it here.", "input", "library")
                return False
        try:
            new = Library(folder, device=self.lib.device, model_process=self.lib.model_process)
        except ClipdeskError as e:
            if claim is not None:
                claim.release()
            self.show_error(f"Cannot open the library {folder}: {e}", type(e).__name__, "library")
            return False
        if claim is not None:  # this window answers for the new library now, and frees the old one
            self.single_instance.release()
            claim.serve(self)
            self.single_instance = claim
        if not new.catalog.get_meta("model"):
            # a library with no vectors yet: the model chosen for it before, else the one in use now
            # (a person who chose the demo model or a checkpoint is not asked again)
            entry = self.recent.get(new.folder)
            model, weights, model_dir = (entry.model, entry.weights, entry.model_dir) \
                if entry and (entry.model or entry.model_dir) else model_choice(self.lib.spec)
            try:
                new.use_model(model, weights, model_dir)
            except ClipdeskError:
                pass  # the model loads (or asks) when needed, as on a first run
        self._remember_library()
        self._save_sort_categories()
        self.jobs.shutdown(close=False)
        self.jobs.closed = True  # results of the old library's jobs, still queued, are dropped …
        QApplication.sendPostedEvents()
        self.jobs.closed = False  # … and the new library's jobs deliver again
        self.watch.stop()  # its threads use the old library
        old = self.lib
        self.lib = self.ctx.lib = new
        new.status_callback = self.status_message.emit
        self.thumbnails.set_cache_dir(os.path.join(new.folder, "thumbnails"))
        self.undo_stack.clear()  # its steps belong to the other library
        self.labels.set_library(new)
        old.close()
        self.settings.setValue("library", new.folder)
        self._remember_library()
        self.banner.clear("library")
        self.model_setup.failed = False
        self.refresh_library_views()
        self.search_bar.clear()  # the query was the other library's
        self._restore_marks()
        self.search_view.reset()
        self.sort_view.reset()
        self._restore_sort_categories()
        self.teach_view.reset()
        self.ctx.library_changed.emit()
        self.statusBar().showMessage(f"Opened the library {new.folder}", 6000)
        QTimer.singleShot(0, self._startup)
        return True

    # ------------------------------------------------------------------ closing
    def closeEvent(self, e) -> None:  # noqa: N802 - Qt
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("library", self.lib.folder)
        self._remember_library()
        self._save_sort_categories()
        self.shutdown()
        super().closeEvent(e)

    def shutdown(self) -> None:
        """Cancel running jobs, wait for every thread, close the library."""
        if getattr(self, "_shut", False):
            return
        self._shut = True
        self.undo_stack.blockSignals(True)
        self.jobs.cancel_all()  # a watcher batch waiting for a job's writes then stops at once
        self.watch.close()
        self.jobs.shutdown()
        self.thumbnails.wait()
        self.lib.close()
