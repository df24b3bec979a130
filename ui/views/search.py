"""The Search view: the library by date with no query; text, image and refined searches, cut where
the scores stop being relevant ("23 good matches · show all 359"); a preview pane.

The query is held here as terms (text plus weighted example images), never written back into the
search field as file paths: "More like this" shows the examples as a short "like: name.jpg" line.
"""
from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QSplitter, QToolButton, QVBoxLayout, QWidget

from clipdesk.errors import QueryError
from clipdesk.indexer.formats import collapse_twins
from clipdesk.query import Term, parse_query
from clipdesk.relevance import relevance_cut

from ..models import Item, ResultsModel, paths_from_mime
from .context import Context
from .filters import FilterBar, browse_marked, search_marked
from .grid import PhotoGrid
from .preview import PreviewPane

BROWSE_LIMIT = 5000  # newest photos shown with no query
SEARCH_DEPTH = 2000  # scores fetched per search: the distribution the relevance cut reads


def _matches(n: int) -> str:
    return f"{n:,} match{'es' if n != 1 else ''}"


def count_line(good: int, fetched: int, library: int, show_all: bool) -> str:
    """The count line of a search: ``good`` clear matches of the ``fetched`` closest photos (a
    search fetches at most ``SEARCH_DEPTH`` of a ``library``-photo library: "all 2,000" would
    be wrong in a library of 7,000). A link ("show …") only where a click changes something."""
    if good >= fetched:
        return _matches(fetched)
    closest = f"all {fetched:,}" if fetched >= library else f"the {fetched:,} closest"
    clear = f"{good:,} good {'match' if good == 1 else 'matches'}"
    if not show_all:
        return f"{clear} · show {closest}" if good else f"No clear match · show {closest}"
    return f"{closest} · show the {clear} only" if good else f"No clear match · {closest} below"


class SearchView(QWidget):
    count_changed = Signal(str)
    finished = Signal()  # a search or browse landed (tests and the self-test wait on it)
    open_requested = Signal(str)
    show_in_folder_requested = Signal(str)

    def __init__(self, ctx: Context) -> None:
        super().__init__()
        self.ctx = ctx
        self.text = ""
        self.typed: list[Term] = []  # the typed query, parsed as the command line parses it
        self.images: list[tuple[float, str]] = []  # (weight, path) example images
        self.sort = "score"
        self.show_all = False
        self.serial = 0
        self.landed = 0  # the serial of the last search or browse that finished
        self._all: list[Item] = []
        self._good = 0
        self._library_size = 0
        self.count_text = ""
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 6, 0, 0)
        terms = QHBoxLayout()
        self.terms_label = QLabel()
        self.terms_label.setObjectName("queryTerms")
        self.terms_label.setProperty("muted", "true")
        self.clear_terms = QToolButton()
        self.clear_terms.setObjectName("clearImageTerms")
        self.clear_terms.setText("✕")
        self.clear_terms.setToolTip("Forget the example photos")
        self.clear_terms.clicked.connect(self.forget_images)
        terms.addWidget(self.terms_label, 1)
        terms.addWidget(self.clear_terms)
        lay.addLayout(terms)
        self.results = ResultsModel(ctx.thumbnails, self)
        self.filter_bar = FilterBar(ctx.marks, ctx.labels, lambda: [it.path for it in self.results.items()],
                                    "searchFilter")
        ctx.marks.changed.connect(self.run)
        lay.addWidget(self.filter_bar)
        split = QSplitter()
        self.grid = PhotoGrid(self.results, ctx.thumbnails.size, ctx.labels, "searchGrid")
        self.preview = PreviewPane(ctx)
        self.grid.selectionModel().currentChanged.connect(
            lambda cur, _prev: self.preview.show_item(self.results.item(cur.row()) if cur.isValid() else None))
        self.grid.open_requested.connect(self.open_requested)
        self.grid.show_in_folder_requested.connect(self.show_in_folder_requested)
        self.grid.context_menu_about_to_show.connect(self._menu)
        self.preview.refine.connect(self.refine)
        self.preview.open_requested.connect(self.open_requested)
        self.preview.show_in_folder_requested.connect(self.show_in_folder_requested)
        split.addWidget(self.grid)
        split.addWidget(self.preview)
        split.setStretchFactor(0, 1)
        split.setCollapsible(0, False)
        split.setSizes([760, 280])
        lay.addWidget(split, 1)
        self._show_terms()

    # ------------------------------------------------------------------ query state
    def terms(self) -> list[Term]:
        return list(self.typed) + [Term(w, image=p) for w, p in self.images]

    def describe_query(self) -> str:
        """The whole query in words: “fish” + “coral”, and 2 example photos."""
        parts = []
        for t in self.typed:
            what = f"“{t.text}”" if t.text else os.path.basename(t.image or "")
            sign = "−" if t.weight < 0 else "+"
            parts.append(what if not parts and t.weight >= 0 else f"{sign} {what}")
        text = " ".join(parts)
        n = len(self.images)
        examples = f"{n} example photo{'s' if n != 1 else ''}" if n else ""
        return " and ".join(p for p in (text, examples) if p) or "this search"

    def _show_terms(self) -> None:
        if self.images:
            likes = [os.path.basename(p) for w, p in self.images if w > 0]
            unlikes = [os.path.basename(p) for w, p in self.images if w < 0]
            parts = ([f"like: {', '.join(likes)}"] if likes else []) + (
                [f"not like: {', '.join(unlikes)}"] if unlikes else [])
            self.terms_label.setText(" · ".join(parts))
            self.terms_label.setToolTip("\n".join(p for _w, p in self.images))
        self.terms_label.setVisible(bool(self.images))
        self.clear_terms.setVisible(bool(self.images))

    def set_text(self, text: str) -> None:
        """A typed query (the command line's syntax: ``"beach" + 0.5*"sunset" - people``): replaces
        the typed terms. A query that does not parse is shown as an error, and the search shown
        stays. A new query is a new search (example photos go); an empty one — Enter on the empty
        field, or clearing it — keeps the example photos (✕ forgets them)."""
        text = text.strip()
        try:
            typed = parse_query(text) if text else []
        except QueryError as e:
            self.ctx.error.emit(str(e), "QueryError", "search")
            return
        self.text, self.typed = text, typed
        if typed:
            self.images = []
        self.run()

    def search_image(self, path: str) -> None:
        """An image dropped on the search field (or "similar"): search by that image alone."""
        self.text, self.typed = "", []
        self.images = [(1.0, os.path.abspath(path))]
        self.run()

    def refine(self, sign: int, path: str) -> None:
        """More/less like this: add the photo as a positive or negative example."""
        if not self.text and not self.images and sign < 0:
            self.ctx.message.emit("“Less like this” needs a search to refine first.")
            return
        self.images = [(w, p) for w, p in self.images if p != path] + [(0.5 * sign if self.terms() else 1.0, path)]
        self.run()

    def forget_images(self) -> None:
        self.images = []
        self.run()

    def set_sort(self, sort: str) -> None:
        self.sort = sort
        self._show()

    def toggle_show_all(self) -> None:
        if self._good < len(self._all) and not (self.show_all and self._good == 0):  # never back to nothing
            self.show_all = not self.show_all
            self._show()

    # ------------------------------------------------------------------ running
    def run(self) -> None:
        self._show_terms()
        self.serial += 1
        serial = self.serial
        self.show_all = False
        terms = self.terms()
        lib = self.ctx.lib
        marks = self.ctx.marks.marks  # the core filters: only the photos the marks leave are read or scored
        if not terms:
            self.filter_bar.load_colors(self.ctx.jobs)  # the library's colour labels (new imports too)
            self.ctx.jobs.start(browse_marked, lib, BROWSE_LIMIT, marks, name="browse",
                                on_result=lambda r: self._browsed(serial, *r), on_error=self._failed,
                                on_finished=lambda: self._landed(serial))
            return
        self.ctx.jobs.start(search_marked, lib, terms, SEARCH_DEPTH, marks, name="search",
                            on_result=lambda r: self._searched(serial, *r), on_error=self._failed,
                            on_finished=lambda: self._landed(serial))

    def _landed(self, serial: int) -> None:
        if serial == self.serial:
            self.landed = serial
            self.finished.emit()

    def _failed(self, message: str, kind: str) -> None:
        self.ctx.error.emit(message, kind, "search")

    def _browsed(self, serial: int, rows, total: int) -> None:
        if serial != self.serial:
            return
        self.ctx.resolved.emit("search")
        self._all = [Item(r.path, None, taken=r.taken) for r in rows]
        self._good = len(self._all)
        shown = len(self._all)
        self._library_size = total
        self.count_text = f"{total:,} photo{'s' if total != 1 else ''}" if shown >= total else \
            f"newest {shown:,} of {total:,} photos"
        self.grid.set_empty_text(
            f"No photo is marked {self.ctx.marks.marks.describe()}. Change the filter above, or import the "
            "marks with Tags → Import." if self.ctx.marks.marks.active() else
            "No photos yet. Add a folder (left), or drop one on this window.")
        self._show(keep_order=True)

    def _searched(self, serial: int, results, total: int) -> None:
        if serial != self.serial:
            return  # a newer search is on its way
        self.ctx.resolved.emit("search")
        self._library_size = total  # the photos searched among (the marks filter's)
        results = collapse_twins(results)  # a RAW + JPEG pair is one photo: shown once, at its better rank
        self._all = [Item(r.path, r.score, taken=r.taken) for r in results]
        self._good = relevance_cut([r.score for r in results])
        self.count_text = count_line(self._good, len(self._all), self._library_size, False)
        marks = self.ctx.marks.marks
        self.grid.set_empty_text(
            f"No photo stands out for {self.describe_query()}. Click “show all” above to see the closest ones, "
            f"or describe the photo differently." if self._all else
            f"No photo is marked {marks.describe()}: change the filter above." if marks.active() else
            "Nothing matches: the library is empty.")
        self._show()

    def _show(self, keep_order: bool = False) -> None:
        items = self._all if self.show_all or not self.terms() else self._all[:self._good]
        if not keep_order and self.sort == "date":
            items = sorted(items, key=lambda it: (it.taken is None, -(it.taken or 0.0)))
        current = self.grid.current_path()
        self.results.set_items(items)
        if self.terms() and self._good < len(self._all):
            self.count_text = count_line(self._good, len(self._all), self._library_size, self.show_all)
        self.count_changed.emit(self.count_text)
        self.filter_bar.set_count(len(items), self._library_size if self.ctx.marks.marks.active() else None)
        if items:
            rows = [i for i, it in enumerate(items) if it.path == current] or [0]
            self.grid.setCurrentIndex(self.results.index(rows[0]))
        else:
            self.preview.clear()

    def _menu(self, menu, paths: list[str]) -> None:
        if len(paths) == 1:
            menu.addSeparator()
            menu.addAction("More like this").triggered.connect(lambda _c=False: self.refine(+1, paths[0]))
            menu.addAction("Less like this").triggered.connect(lambda _c=False: self.refine(-1, paths[0]))

    def reset(self) -> None:
        """Another library: forget the query, show its photos."""
        self.text, self.typed, self.images = "", [], []
        self.preview.clear()
        self.run()

    def current_items(self) -> list[Item]:
        return self.results.items()

    def toggle_preview(self) -> None:
        self.preview.setVisible(not self.preview.isVisible())


class SearchBar(QLineEdit):
    """The search field; an image file dropped on it runs a similar-image search."""

    image_dropped = Signal(str)
    down_pressed = Signal()  # Down leaves the field for the photos below it

    def __init__(self) -> None:
        super().__init__()
        self.setObjectName("search")
        self.setPlaceholderText('Describe a photo — "dog in the snow" — or drop an image here')
        self.setClearButtonEnabled(True)
        self.setAcceptDrops(True)

    def keyPressEvent(self, e) -> None:  # noqa: N802 - Qt
        if e.key() == Qt.Key.Key_Down and not e.modifiers():
            self.down_pressed.emit()
            e.accept()
            return
        super().keyPressEvent(e)

    def dragEnterEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()
        else:
            super().dragEnterEvent(e)

    def dragMoveEvent(self, e) -> None:  # noqa: N802 - Qt
        if paths_from_mime(e.mimeData()):
            e.acceptProposedAction()
        else:
            super().dragMoveEvent(e)

    def dropEvent(self, e) -> None:  # noqa: N802 - Qt
        paths = paths_from_mime(e.mimeData())
        if paths:
            e.acceptProposedAction()
            self.image_dropped.emit(paths[0])
        else:
            super().dropEvent(e)
