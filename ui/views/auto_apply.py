"""The Teach tab's "Keep applying to new photos" row: the taught categories that keep organising.

For the probe the Teach tab trains: a switch (auto-apply on or off, :mod:`clipdesk.ops.auto`), what to
do with a photo above its category's threshold (write the category as an XMP keyword; copy or move
it into ``FOLDER/<category>/``) for every category or for the one picked beside them (a category's
own choice wins over "every category"), and a target-precision slider (default 90 %) whose estimate
updates live: "Beach: auto-apply above 0.83 — about 9 in 10 right, finds about 7 in 10", or
"too few examples to know — add 8 more" (the Suggested grid shows the photos that would help).

The costly part — refitting the probe to score its examples on folds that did not see them,
and scoring the library's photos the thresholds will apply to (:func:`clipdesk.ops.auto.library_scores`)
— runs on a worker after each training and after the buckets change; moving the slider only
re-cuts those scores (:meth:`clipdesk.ops.auto.CategoryScores.threshold`: a sort and a cumulative sum,
milliseconds), so the estimate follows the slider at once.
Switching on, changing an option or letting go of the slider saves the setting on a worker.
"""
from __future__ import annotations

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QCheckBox, QComboBox, QFrame, QHBoxLayout, QLabel, QSlider, QVBoxLayout

from .context import Context
from .dialogs import ask_folder

SORT_CHOICES = ("Don't sort", "Copy into folder…", "Move into folder…")
EVERY = "Every category"  # the category picker's first entry: the probe's default actions
MODES = (None, "copy", "move")
RESCORE_MS = 800  # after the buckets change: one refit for a burst of labels


SHOWN_CATEGORIES = 3  # estimates on the line under the switch; the tooltip has every category


def in_ten(x: float) -> str:
    """0.87 → "9 in 10" (how a person reads a rate)."""
    return f"{round(x * 10):d} in 10"


def describe(t) -> str:
    """One category's threshold (:class:`clipdesk.ops.auto.Threshold`) as the Teach tab says it."""
    if not t.known:
        return f"{t.category}: too few examples to know — add {t.needed} more"
    if t.estimated_precision is None:
        return f"{t.category}: no threshold reaches {t.precision:.0%} yet — add examples"
    return (f"{t.category}: auto-apply above {t.threshold:.2f} — about {in_ten(t.estimated_precision)} right, "
            f"finds about {in_ten(t.estimated_recall)}")


class AutoApplyRow(QFrame):
    """The switch, its actions, the precision slider and the live estimate for probe ``probe``."""

    thresholds_shown = Signal()  # the estimate text changed (tests and the e2e run wait on it)
    setting_saved = Signal()

    def __init__(self, ctx: Context, probe: str) -> None:
        super().__init__()
        self.ctx, self.probe = ctx, probe
        self.scores: dict | None = None  # category -> clipdesk.ops.auto.CategoryScores, from the last refit
        self.sort_into: str | None = None
        self.setting = None  # the stored clipdesk.ops.auto.AutoSetting (None: not switched on)
        self._loading = False
        self._serial = 0
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        lay = QHBoxLayout()
        outer.addLayout(lay)
        self.keep = QCheckBox("Keep applying to new photos")
        self.keep.setObjectName("autoKeep")
        self.keep.setToolTip("Every photo the folder watcher indexes is predicted: above its category's threshold "
                             "it gets the actions on the right; below it, it goes to the Inbox tab")
        self.write_tags = QCheckBox("Write keyword")
        self.write_tags.setObjectName("autoWriteTags")
        self.write_tags.setToolTip("Write the category as an XMP keyword (a sidecar beside the photo; undoable)")
        self.category = QComboBox()
        self.category.setObjectName("autoCategory")
        self.category.addItem(EVERY, None)
        self.category.setToolTip("The category the keyword and sort options apply to; a category's own choice "
                                 "wins over \"Every category\"")
        self.sort = QComboBox()
        self.sort.setObjectName("autoSort")
        self.sort.addItems(SORT_CHOICES)
        self.sort.setToolTip("Also copy or move the photo into FOLDER/<category>/ (undoable)")
        self.precision = QSlider(Qt.Orientation.Horizontal)
        self.precision.setObjectName("autoPrecision")
        self.precision.setRange(50, 99)
        self.precision.setValue(90)
        self.precision.setMaximumWidth(140)
        self.precision.setToolTip("How often an applied category must be right; sets each category's threshold")
        self.precision_label = QLabel("90 % right")
        self.precision_label.setObjectName("autoPrecisionLabel")
        # its own line under the controls, wrapped: beside them a small window left it no room
        self.estimate = QLabel("Train to see where each category would be applied.")
        self.estimate.setObjectName("autoEstimate")
        self.estimate.setProperty("muted", "true")
        self.estimate.setWordWrap(True)
        for w in (self.keep, self.category, self.write_tags, self.sort, self.precision, self.precision_label):
            lay.addWidget(w)
        lay.addStretch(1)
        outer.addWidget(self.estimate)
        self.keep.toggled.connect(lambda _on: self._changed())
        self.category.currentIndexChanged.connect(lambda _i: (self._show_actions(), self.show_estimate()))
        self.write_tags.toggled.connect(lambda _on: self._changed())
        self.sort.currentIndexChanged.connect(self._sort_chosen)
        self.precision.valueChanged.connect(lambda _v: self.show_estimate())
        self.precision.sliderReleased.connect(self._changed)
        self._save_timer = QTimer(self)  # keyboard steps of the slider: saved once they stop
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(600)
        self._save_timer.timeout.connect(self._changed)
        self.precision.actionTriggered.connect(lambda _a: self._save_timer.start())
        self._rescore_timer = QTimer(self)
        self._rescore_timer.setSingleShot(True)
        self._rescore_timer.setInterval(RESCORE_MS)
        self._rescore_timer.timeout.connect(self.rescore)
        ctx.labels.changed.connect(lambda: self._rescore_timer.start() if self.scores is not None else None)

    # ------------------------------------------------------------------ reading the setting
    def load(self) -> None:
        """Show this library's stored setting (a worker reads ``auto.json``), then score."""
        from clipdesk.ops import auto

        self._serial += 1
        serial = self._serial
        self.ctx.jobs.start(lambda: auto.load_store(self.ctx.lib)["auto"].get(self.probe), name="auto settings",
                            on_result=lambda s: self._loaded(serial, s), on_error=self.ctx.failed("auto"))

    def _loaded(self, serial: int, setting) -> None:
        if serial != self._serial:
            return
        self.setting = setting
        self._loading = True
        try:
            self.keep.setChecked(setting is not None)
            self.precision.setValue(round(setting.precision * 100) if setting is not None else 90)
            self._fill_categories(list(setting.thresholds) if setting is not None else [])
        finally:
            self._loading = False
        self._show_actions()
        self.rescore()

    # ------------------------------------------------------------------ the category the options are for
    def chosen_category(self) -> str | None:
        """The category the options apply to; None for every category."""
        return self.category.currentData()

    def _fill_categories(self, names: list[str]) -> None:
        have = [self.category.itemData(i) for i in range(1, self.category.count())]
        if have == names:
            return
        current = self.chosen_category()
        blocked = self.category.blockSignals(True)
        try:
            while self.category.count() > 1:
                self.category.removeItem(1)
            for name in names:
                self.category.addItem(name, name)
            self.category.setCurrentIndex(max(0, self.category.findData(current)) if current else 0)
        finally:
            self.category.blockSignals(blocked)

    def _show_actions(self) -> None:
        """The options of the chosen category (its own, else every category's)."""
        from clipdesk.ops.auto import Actions

        s, cat = self.setting, self.chosen_category()
        a = (s.actions(cat) if cat else s.default) if s is not None else Actions()
        loading, self._loading = self._loading, True
        try:
            self.write_tags.setChecked(a.write_tags)
            self.sort_into = a.sort_into
            self.sort.setCurrentIndex(MODES.index(a.mode) if a.sort_into else 0)
            self._sort_tooltip()
        finally:
            self._loading = loading

    # ------------------------------------------------------------------ the estimate
    def rescore(self) -> None:
        """Refit on a worker: the held-out scores every precision is cut from."""
        from clipdesk.ops import auto
        from clipdesk.errors import ProbeError

        lib = self.ctx.lib
        self._serial += 1
        serial = self._serial

        def scores():
            try:
                return auto.library_scores(lib, self.probe)
            except ProbeError:
                return None  # not trained yet (or trained with another model): nothing to estimate
        self.ctx.jobs.start(scores, name="calibrating", on_result=lambda r: self._scored(serial, r),
                            on_error=self.ctx.failed("auto"))

    def _scored(self, serial: int, scores) -> None:
        if serial != self._serial:
            return
        self.scores = scores
        if scores:
            self._fill_categories(list(scores))
        self.show_estimate()

    def thresholds(self) -> list:
        p = self.precision.value() / 100
        return [s.threshold(p) for s in (self.scores or {}).values()]

    def show_estimate(self) -> None:
        self.precision_label.setText(f"{self.precision.value()} % right")
        if not self.scores:
            self.estimate.setText("Train to see where each category would be applied.")
            self.estimate.setToolTip("")
        else:
            got = self.thresholds()
            lines = [describe(t) for t in got]
            picked = self.category.currentData()  # a category picked beside the switch: its line first
            shown = sorted(lines, key=lambda line: not (picked and line.startswith(f"{picked}: ")))
            text = "; ".join(shown[:SHOWN_CATEGORIES])
            if len(shown) > SHOWN_CATEGORIES:
                text += f"; and {len(shown) - SHOWN_CATEGORIES} more categories (hover to see all)"
            self.estimate.setText(text)
            more = "\n\nToo few examples: Suggested next (left) shows the photos that would help most." \
                if any(not t.known for t in got) else ""
            self.estimate.setToolTip("\n".join(lines) + "\n\nEstimated on your library's photos (each counted by how "
                                     "likely it is the category, for how common each category is in your library), "
                                     "your examples (each scored by a probe trained without it) and the photos you "
                                     "rejected in Review." + more)
        self.thresholds_shown.emit()

    # ------------------------------------------------------------------ saving
    def _sort_chosen(self, i: int) -> None:
        if self._loading:
            return
        if i and not self.sort_into:
            folder = ask_folder(self, f"{SORT_CHOICES[i].rstrip('…')}: photos go into FOLDER/<category>/")
            if not folder:
                self.sort.setCurrentIndex(0)
                return
            self.sort_into = folder
        if not i:
            self.sort_into = None
        self._sort_tooltip()
        self._changed()

    def _sort_tooltip(self) -> None:
        self.sort.setToolTip(f"Into {self.sort_into}/<category>/" if self.sort_into
                             else "Also copy or move the photo into FOLDER/<category>/ (undoable)")

    def set_sort(self, mode: str | None, folder: str | None = None) -> None:
        """Choose the sort action without a folder dialog (``folder`` given)."""
        self.sort_into = folder if mode else None
        self.sort.setCurrentIndex(MODES.index(mode))

    def _changed(self) -> None:
        """Save the switch and its options (a worker: ``auto.add`` refits to calibrate)."""
        from clipdesk.ops import auto

        if self._loading:
            return
        self._save_timer.stop()
        lib, on = self.ctx.lib, self.keep.isChecked()
        precision = self.precision.value() / 100
        write, mode = self.write_tags.isChecked(), MODES[self.sort.currentIndex()]
        into = self.sort_into if mode else None
        category = self.chosen_category()

        def save():
            if on:
                return auto.configure(lib, self.probe, precision, write, into, mode or "copy", category)[0]
            if self.probe in auto.load_store(lib)["auto"]:
                auto.remove(lib, self.probe)
            return None

        def failed(message: str, kind: str) -> None:
            self._loading = True
            self.keep.setChecked(False)  # it is not on: the banner says why
            self._loading = False
            self.ctx.error.emit(message, kind, "auto")

        self.ctx.jobs.start(save, name="auto settings", on_result=lambda s: self._saved(on, s, category),
                            on_error=failed)

    def _saved(self, on: bool, setting, category: str | None) -> None:
        self.setting = setting
        self.ctx.resolved.emit("auto")
        if on:
            a = setting.actions(category) if category else setting.default
            acts = a.describe() if a.any else ""
            who = f"'{category}'" if category else "the taught categories"
            self.ctx.message.emit(f"New photos in watched folders are now sorted by {who}"
                                  + (f" ({acts})" if acts else "") + "; unsure ones go to the Inbox.")
        self.setting_saved.emit()
