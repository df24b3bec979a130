"""The marks filter bar: minimum rating, Picked only, hide Rejected and a colour label — the marks
``clipdesk tags import`` read from Lightroom, digiKam and darktable (labels ``rating/N``,
``flag/picked``, ``flag/rejected``, ``color/NAME``).

One :class:`MarkFilter` per window (on the :class:`Context`), shown by a :class:`FilterBar` in each
view whose grid shows the library (Search, Teach): changing it in one changes it in both. The
filtering itself is the core's (:func:`clipdesk.tags.mark_filter`, then ``only``/``exclude`` of
:meth:`Library.search` and :meth:`Library.browse`), run in the views' workers.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QLabel, QMenu, QToolButton, QWidget

from clipdesk.tags import mark_colors, mark_filter

from ..flow import FlowLayout
from ..focus import keys_stay_on_content

STARS = ["Any rating"] + [("★" * n) + ("" if n == 5 else " or more") for n in range(1, 6)]


@dataclass(frozen=True)
class Marks:
    """What the filter asks for; the default asks for nothing."""

    min_rating: int = 0  # 0: any (rated or not)
    picked: bool = False
    hide_rejected: bool = False
    color: str = ""  # "": any

    def active(self) -> bool:
        return self != Marks()

    def ids(self, lib) -> tuple[set[int] | None, set[int]]:
        """``(only, exclude)`` for the library's search and browse (reads the catalog: a worker's job)."""
        if not self.active():
            return None, set()
        return mark_filter(lib, self.min_rating or None, self.picked, self.color or None, self.hide_rejected)

    def describe(self) -> str:
        parts = ([f"{'★' * self.min_rating}{'' if self.min_rating == 5 else '+'}"] if self.min_rating else []) + \
            (["picked"] if self.picked else []) + ([f"{self.color} label"] if self.color else []) + \
            (["no rejects"] if self.hide_rejected else [])
        return ", ".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Marks:
        """A stored filter; anything unreadable or out of range is the empty filter's value."""
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = {}
        data = data if isinstance(data, dict) else {}
        out = {}
        for f in fields(cls):
            v = data.get(f.name)
            if f.name == "min_rating" and isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 5:
                out[f.name] = v
            elif f.name in ("picked", "hide_rejected") and isinstance(v, bool):
                out[f.name] = v
            elif f.name == "color" and isinstance(v, str) and len(v) <= 40:
                out[f.name] = v.strip().casefold()
        return cls(**out)


class MarkFilter(QObject):
    """The window's one marks filter; ``changed`` fires when it really changes."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.marks = Marks()

    def set(self, marks: Marks) -> None:
        if marks != self.marks:
            self.marks = marks
            self.changed.emit()


def browse_marked(lib, limit: int, marks: Marks):
    """A worker's job: the newest ``limit`` photos the marks leave, and how many they leave."""
    only, exclude = marks.ids(lib)
    return lib.browse(limit, only=only, exclude=exclude)


def search_marked(lib, terms, k: int, marks: Marks):
    """A worker's job: ``(results, how many photos the marks leave)`` for a search among them."""
    only, exclude = marks.ids(lib)
    total = lib.catalog.counts()[0]
    if only is not None:
        total = len(only - exclude)
    else:
        total -= len(exclude)
    if total <= 0:
        return [], 0
    return lib.search_terms(terms, k=max(1, min(k, total)), only=only, exclude=exclude), total


def suggest_marked(lib, probe: str, k: int, marks: Marks, cancel=None):
    """A worker's job: Teach's suggestions among the photos the marks leave (more are asked for,
    then cut to those)."""
    only, exclude = marks.ids(lib)
    rows = lib.suggest(probe, k if not marks.active() else k * 4, cancel=cancel)
    return [r for r in rows if (only is None or r.id in only) and r.id not in exclude][:k]


class FilterBar(QWidget):
    """The bar's controls, bound to a :class:`MarkFilter`. Tab reaches them; a click leaves the
    keys on the grid (``ui/focus.py``). ``shown`` (() -> paths) feeds "Add all shown to bucket ▸"."""

    def __init__(self, state: MarkFilter, labels, shown, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state, self.labels, self.shown = state, labels, shown
        self.setObjectName(name)
        lay = FlowLayout(self)  # wraps onto a second line in a narrow pane instead of cutting text
        self.rating = QComboBox()
        self.rating.setObjectName(f"{name}Rating")
        self.rating.addItems(STARS)
        self.rating.setToolTip("Only photos rated this many stars or more (ratings read by Tags → Import)")
        self.picked = QCheckBox("Picked only")
        self.picked.setObjectName(f"{name}Picked")
        self.rejected = QCheckBox("Hide rejected")
        self.rejected.setObjectName(f"{name}HideRejected")
        self.color = QComboBox()
        self.color.setObjectName(f"{name}Color")
        self.color.addItem("Any colour", "")
        self.count = QLabel("")
        self.count.setObjectName(f"{name}Count")
        self.count.setProperty("muted", "true")
        self.add_all = QToolButton()
        self.add_all.setObjectName(f"{name}AddAll")
        self.add_all.setText("Add all shown to bucket ▸")
        self.add_all.setToolTip("Put every photo shown into a bucket, e.g. your 5-star photos as examples to teach")
        self.add_all.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.add_all.setMenu(QMenu(self.add_all))
        self.add_all.menu().aboutToShow.connect(self._fill_menu)
        for w in (self.rating, self.picked, self.rejected, self.color, self.add_all, self.count):
            lay.addWidget(w)
        self.rating.currentIndexChanged.connect(lambda _i: self._edited())
        self.picked.toggled.connect(lambda _on: self._edited())
        self.rejected.toggled.connect(lambda _on: self._edited())
        self.color.currentIndexChanged.connect(lambda _i: self._edited())
        state.changed.connect(self.show_state)
        keys_stay_on_content(self)
        self.show_state()

    def _edited(self) -> None:
        self.state.set(Marks(self.rating.currentIndex(), self.picked.isChecked(), self.rejected.isChecked(),
                             self.color.currentData() or ""))

    def show_state(self) -> None:
        m = self.state.marks
        widgets = (self.rating, self.picked, self.rejected, self.color)
        for w in widgets:
            w.blockSignals(True)
        self.rating.setCurrentIndex(m.min_rating)
        self.picked.setChecked(m.picked)
        self.rejected.setChecked(m.hide_rejected)
        if m.color and self.color.findData(m.color) < 0:
            self.color.addItem(m.color.capitalize(), m.color)  # a stored colour the library may still carry
        self.color.setCurrentIndex(max(0, self.color.findData(m.color)))
        for w in widgets:
            w.blockSignals(False)

    def set_colors(self, colors: list[str]) -> None:
        """The colour labels to offer (the library's, read in a worker), plus the one chosen."""
        chosen = self.state.marks.color
        self.color.blockSignals(True)
        self.color.clear()
        self.color.addItem("Any colour", "")
        for c in sorted(set(colors) | ({chosen} if chosen else set())):
            self.color.addItem(c.capitalize(), c)
        self.color.setCurrentIndex(max(0, self.color.findData(chosen)))
        self.color.blockSignals(False)

    def load_colors(self, jobs) -> None:
        jobs.start(mark_colors, self.labels.lib, name="colour labels", on_result=self.set_colors)

    def set_count(self, shown: int, passing: int | None) -> None:
        """``passing``: how many photos of the library the filter leaves (None: no filter)."""
        if passing is None:
            self.count.setText("")
        else:
            self.count.setText(f"{self.state.marks.describe()}: {passing:,} photo{'s' if passing != 1 else ''}"
                               + (f", {shown:,} shown" if shown != passing else ""))

    def _fill_menu(self) -> None:
        menu = self.add_all.menu()
        menu.clear()
        paths = list(self.shown())
        names = self.labels.names()
        if not paths:
            menu.addAction("No photos shown").setEnabled(False)
            return
        for i, n in enumerate(names):
            act = menu.addAction(f"{n}\t{i + 1}" if i < 9 else n)
            act.triggered.connect(lambda _c=False, n=n: self.labels.add(n, paths))
        if names:
            menu.addSeparator()
        menu.addAction("New bucket…").triggered.connect(lambda _c=False: self.labels.add_to_new(self, paths))
