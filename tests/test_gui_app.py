"""The app as a person uses it (offscreen, real key/mouse/drag events on the real widgets):
the teaching loop, the grid, export, undo, banners, first run without network, settings."""
import csv
import os
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPoint, QRect, QSize, Qt, QTimer  # noqa: E402
from PySide6.QtGui import QColor, QContextMenuEvent, QImage, QPainter, QPixmap  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog, QStyle, QStyleOptionViewItem  # noqa: E402

from conftest import make_window, until, when_shown  # noqa: E402
from clipdesk.ui.selftest import pump  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]  # offscreen popups


def teach_tab(w, source=1, n=8):
    w.tabs.setCurrentWidget(w.teach_view)
    w.teach_view.source.setCurrentIndex(source)
    until(lambda: w.teach_view.pick_results.rowCount() == n, what="teach grid")
    return w.teach_view


def add_buckets(w, *names):
    t = w.teach_view
    for name in names:
        QTest.keyClicks(t.bucket_name, name)
        QTest.mouseClick(t.add_button, Qt.MouseButton.LeftButton)
    until(lambda: all(n in w.buckets for n in names), what="buckets")


def press_bucket_key(grid, rows, key):
    grid.select_rows(rows)
    grid.setFocus()
    QTest.keyClick(grid, key)


# ---------------------------------------------------------------------- the teaching loop
def test_teach_grid_is_filled_before_any_bucket_and_photos_go_in_by_number_key(window):
    t = teach_tab(window, source=0, n=8)  # "Suggested next": a diverse sample before training
    assert window.tabs.tabText(window.tabs.currentIndex()) == "Teach" and t.grid.objectName() == "teachGrid"
    add_buckets(window, "Anna", "Ben")
    paths = [it.path for it in t.pick_results.items()]
    press_bucket_key(t.grid, [0, 1], Qt.Key.Key_1)
    until(lambda: len(window.buckets["Anna"].paths()) == 2, what="bucket 1")
    assert set(window.lib.labels()["Anna"]) == set(paths[:2])
    assert window.buckets["Anna"].count.text().startswith("2")
    # labelled photos leave the suggestions
    assert not set(paths[:2]) & {it.path for it in t.pick_results.items()}
    press_bucket_key(t.grid, [0], Qt.Key.Key_2)
    until(lambda: len(window.buckets["Ben"].paths()) == 1, what="bucket 2")
    press_bucket_key(t.grid, [0], Qt.Key.Key_9)  # no bucket 9: nothing happens, it says so
    assert sum(len(v) for v in window.lib.labels().values()) == 3


def test_context_menu_adds_to_a_bucket_from_the_search_grid(window):
    add_buckets(window, "Anna")
    window.tabs.setCurrentWidget(window.search_view)
    grid = window.search_view.grid
    rect = grid.visualRect(window.results.index(3))
    chosen = []

    def pick():
        menu = QApplication.activePopupWidget()
        sub = next(a.menu() for a in menu.actions() if a.menu() is not None and a.text() == "Add to bucket")
        act = next(a for a in sub.actions() if a.data() == "Anna")
        chosen.append(act.text())
        act.trigger()
        menu.close()

    QTimer.singleShot(300, pick)
    ev = QContextMenuEvent(QContextMenuEvent.Reason.Mouse, rect.center(), grid.viewport().mapToGlobal(rect.center()))
    QApplication.sendEvent(grid.viewport(), ev)
    until(lambda: len(window.buckets["Anna"].paths()) == 1, what="menu add")
    assert chosen and window.buckets["Anna"].paths() == [window.results.item(3).path]


def test_delete_takes_one_photo_out_of_a_bucket_and_ctrl_z_puts_it_back(window):
    t = teach_tab(window)
    add_buckets(window, "Anna")
    press_bucket_key(t.grid, [0, 1, 2], Qt.Key.Key_1)
    until(lambda: len(window.buckets["Anna"].paths()) == 3)
    lst = window.buckets["Anna"].list
    assert lst.objectName() == "bucketList:Anna"
    gone = lst.item(1).data(Qt.ItemDataRole.UserRole)
    lst.setCurrentRow(1)
    lst.setFocus()
    QTest.keyClick(lst, Qt.Key.Key_Delete)
    until(lambda: len(window.buckets["Anna"].paths()) == 2)
    assert gone not in window.lib.labels()["Anna"]
    QTest.keyClick(t.grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    until(lambda: len(window.buckets["Anna"].paths()) == 3)
    assert gone in window.lib.labels()["Anna"]


def test_undo_twenty_steps(window):
    t = teach_tab(window)
    add_buckets(window, "A", "B")  # 2 steps
    for r in range(8):  # 8 steps: one photo at a time into A by key 1 …
        press_bucket_key(t.grid, [r], Qt.Key.Key_1)
    for r in range(8):  # … and 8 more into B by key 2
        press_bucket_key(t.grid, [r], Qt.Key.Key_2)
    lst = window.buckets["A"].list
    for _ in range(4):  # 4 steps: Delete takes photos out of A one by one
        lst.setCurrentRow(0)
        lst.setFocus()
        QTest.keyClick(lst, Qt.Key.Key_Delete)
    assert window.undo_stack.count() == 23  # and the folder added by the fixture
    assert len(window.lib.labels()["A"]) == 4 and len(window.lib.labels()["B"]) == 8
    t.grid.setFocus()
    for _ in range(22):
        QTest.keyClick(t.grid, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.lib.labels() == {}  # back to before the two buckets were made
    assert "A" not in window.buckets and window.undo_stack.index() == 1  # only the folder step is left
    # Ctrl+Z in a text field is the field's own undo, not the app's
    window.undo_stack.redo()
    QTest.keyClicks(t.bucket_name, "xy")
    QTest.keyClick(t.bucket_name, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert t.bucket_name.text() != "xy" and "A" in window.lib.labels()


def test_bucket_delete_is_undoable(window):
    t = teach_tab(window)
    add_buckets(window, "Anna")
    press_bucket_key(t.grid, [0, 1], Qt.Key.Key_1)
    until(lambda: len(window.buckets["Anna"].paths()) == 2)
    before = sorted(window.lib.labels()["Anna"])
    close = window.buckets["Anna"].findChild(type(window.undo_button), "deleteBucket:Anna")
    QTest.mouseClick(close, Qt.MouseButton.LeftButton)
    until(lambda: "Anna" not in window.buckets)
    QTest.mouseClick(window.undo_button, Qt.MouseButton.LeftButton)
    until(lambda: "Anna" in window.buckets)
    assert sorted(window.lib.labels()["Anna"]) == before


def test_train_apply_review_accept_reject_retrain(window):
    t = teach_tab(window)
    add_buckets(window, "Anna", "Ben")
    press_bucket_key(t.grid, [0, 1], Qt.Key.Key_1)
    press_bucket_key(t.grid, [2, 3], Qt.Key.Key_2)
    until(lambda: len(window.buckets["Ben"].paths()) == 2)
    assert not t.accept_button.isEnabled()  # nothing applied yet: nothing to accept
    QTest.mouseClick(t.train_button, Qt.MouseButton.LeftButton)
    until(lambda: t.train_result.text().startswith("Trained on"), what="training")
    QTest.mouseClick(t.apply_button, Qt.MouseButton.LeftButton)
    until(lambda: t.predictions, what="apply")
    labelled = window.labels.labelled_paths()
    options = [t.review_category.itemText(i) for i in range(t.review_category.count())]
    assert set(options) <= {"Anna", "Ben"} and options
    shown = {it.path for it in t.review_results.items()}
    assert shown and not shown & labelled  # photos in buckets are not offered again
    probs = [it.score for it in t.review_results.items()]
    assert probs == sorted(probs)  # least sure first
    cat = t.review_category.currentData()
    first = t.review_results.item(0).path
    t.review_grid.select_rows([0])
    QTest.mouseClick(t.accept_button, Qt.MouseButton.LeftButton)
    until(lambda: first in window.lib.labels()[cat])
    assert first not in {it.path for it in t.review_results.items()}
    if t.review_results.rowCount():
        second = t.review_results.item(0).path
        t.review_grid.select_rows([0])
        QTest.mouseClick(t.reject_button, Qt.MouseButton.LeftButton)
        until(lambda: second in window.lib.labels().get(f"__not__.{cat}", []))
        assert second not in window.lib.labels()[cat] and "__not__." + cat not in window.buckets
    if t.review_results.rowCount():  # the keyboard: A accepts the current photo
        t.review_grid.clearSelection()
        t.review_grid.setFocus()
        current = t.review_grid.current_path()
        cat = t.review_category.currentData()
        QTest.keyClick(t.review_grid, Qt.Key.Key_A)
        until(lambda: current in window.lib.labels()[cat], what="key A accepts")
    # the confidence slider filters: at 0% nothing above 0 is shown
    t.confidence.setValue(0)
    assert all(it.score <= 0.0 + 1e-6 for it in t.review_results.items())
    t.confidence.setValue(100)
    examples_before = window.lib.load_probe("teach").keys.shape[0]
    QTest.mouseClick(t.retrain_button, Qt.MouseButton.LeftButton)  # retrain + re-apply, one click
    with_new = examples_before + 1
    until(lambda: window.lib.load_probe("teach").keys.shape[0] >= with_new and t.apply_button.isEnabled()
          and not window.jobs.active, what="retrain and apply")
    assert len(t.predictions) == 8
    out = str(window.lib.folder) + "-predictions.csv"
    drive_save_dialog(out)
    assert not t.review_grid.selected_paths()  # nothing auto-selected: Export writes every prediction
    QTest.mouseClick(t.actions_bar.export, Qt.MouseButton.LeftButton)
    until(lambda: os.path.exists(out), what="teach csv")
    rows = list(csv.reader(open(out)))
    assert len(rows) == 9 and {r[1] for r in rows[1:]} <= {"Anna", "Ben", "none of the buckets"}
    mine = {p: n for n in ("Anna", "Ben") for p in window.lib.labels()[n]}
    assert mine and all(r[1] == mine[r[0]] and r[2] == "1.0000" for r in rows[1:] if r[0] in mine)  # the person's word


def test_a_photo_put_in_another_bucket_than_the_probe_said_is_taught_as_a_correction(window, monkeypatch):
    import clipdesk.library as library

    t = teach_tab(window)
    add_buckets(window, "Anna", "Ben")
    press_bucket_key(t.grid, [0, 1], Qt.Key.Key_1)
    press_bucket_key(t.grid, [2, 3], Qt.Key.Key_2)
    until(lambda: len(window.buckets["Ben"].paths()) == 2)
    QTest.mouseClick(t.train_button, Qt.MouseButton.LeftButton)
    until(lambda: t.train_result.text().startswith("Trained on"), what="training")
    QTest.mouseClick(t.apply_button, Qt.MouseButton.LeftButton)
    until(lambda: t.predictions and t.review_results.rowCount(), what="apply")
    said = t.review_category.currentData()
    other = "Ben" if said == "Anna" else "Anna"
    wrong, right = t.review_results.item(0).path, None
    # the number key of the *other* bucket on a photo the probe put in ``said``: a correction
    press_bucket_key(t.review_grid, [0], Qt.Key.Key_1 if other == "Anna" else Qt.Key.Key_2)
    until(lambda: wrong in window.lib.labels()[other], what="correction")
    assert window.lib.corrections() == {other: {wrong}}
    assert "taught as a correction" in window.status.currentMessage()
    if t.review_results.rowCount():  # accepting the probe's own answer is not a correction
        right = t.review_results.item(0).path
        t.review_grid.select_rows([0])
        QTest.mouseClick(t.accept_button, Qt.MouseButton.LeftButton)
        until(lambda: right in window.lib.labels()[said], what="accept")
        assert window.lib.corrections() == {other: {wrong}}
    # Train hands the mark to the probe: that one example, and no other, is a correction
    seen = []
    real = library.fit_probe
    monkeypatch.setattr(library, "fit_probe", lambda data, *a, **k: (seen.append(data), real(data, *a, **k))[1])
    QTest.mouseClick(t.train_button, Qt.MouseButton.LeftButton)
    until(lambda: seen and not window.jobs.active, what="retraining")
    data = seen[0]
    marked = np.flatnonzero(np.asarray(data.corrected))
    assert len(marked) == 1 and data.classes[data.y[marked[0]]] == other
    row = window.lib.catalog.vectors_for([window.lib.catalog.id_for_path(wrong)])[0]
    assert np.allclose(data.X[marked[0]], row)
    # Ctrl+Z takes the photo out of the bucket, and its mark with it; redo puts both back
    undo_to = window.undo_stack.index() - (2 if right else 1)
    while window.undo_stack.index() > undo_to:
        window.undo_stack.undo()
    assert wrong not in window.lib.labels()[other] and window.lib.corrections() == {}
    window.undo_stack.redo()
    assert window.lib.corrections() == {other: {wrong}}


def close_if_open(dlg) -> None:
    try:
        if dlg.isVisible():
            dlg.reject()
    except RuntimeError:  # already closed and deleted: fine
        pass


def drive_save_dialog(path: str) -> list:
    """Type ``path`` into the (Qt, non-native) save dialog when it opens and press Enter."""
    from PySide6.QtWidgets import QLineEdit

    seen = []

    def find():
        return next((w for w in QApplication.topLevelWidgets() if isinstance(w, QFileDialog) and w.isVisible()), None)

    def fill(dlg):
        seen.append(dlg.testOption(QFileDialog.Option.DontUseNativeDialog))
        edit = dlg.findChild(QLineEdit, "fileNameEdit")
        # the whole path at once, then Enter (typed letter by letter, the file-name completer may
        # pop up and take the Enter for itself)
        edit.setText(path)
        QTest.keyClick(edit, Qt.Key.Key_Return)
        QTimer.singleShot(3000, lambda: close_if_open(dlg))  # never hang the test

    when_shown(find, fill, every_ms=100)
    return seen


def test_export_csv_from_sort_and_teach_opens_a_dialog_and_writes_the_file(window, tmp_path):
    sort = window.sort_view
    window.tabs.setCurrentWidget(sort)
    sort.categories.setPlainText("red\ngreen\nblue\nunicorn")
    QTest.mouseClick(sort.classify_button, Qt.MouseButton.LeftButton)
    until(lambda: sort.classified and sort.classify_button.isEnabled(), what="classify")
    # every category is listed, also those that got 0 photos
    names = [sort.category_list.item(i).text() for i in range(sort.category_list.count())]
    assert len([n for n in names if not n.startswith("(none)")]) == 4
    assert window.count_label.text().endswith("8 photos sorted")
    out = tmp_path / "sorted.csv"
    seen = drive_save_dialog(str(out))
    QTest.mouseClick(sort.actions_bar.export, Qt.MouseButton.LeftButton)
    until(lambda: out.exists(), what="csv file")
    assert seen == [True]  # a Qt dialog, not the desktop's: the same everywhere
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["path", "category", "probability"] and len(rows) == 9
    # select everything above P% and copy those paths
    sort.actions_bar.threshold.setValue(0)
    QTest.mouseClick(sort.actions_bar.select_above, Qt.MouseButton.LeftButton)
    assert len(sort.grid.selected_paths()) == sort.results.rowCount()
    QTest.mouseClick(sort.actions_bar.copy, Qt.MouseButton.LeftButton)
    assert QApplication.clipboard().text().split("\n") == sort.grid.selected_paths()


def test_search_shows_library_by_date_and_refine_keeps_paths_out_of_the_field(window):
    assert window.count_label.text() == "8 photos"
    taken = [it.taken for it in window.results.items() if it.taken]
    assert taken == sorted(taken, reverse=True)
    window.search_bar.setText("red")
    QTest.keyClick(window.search_bar, Qt.Key.Key_Return)
    until(lambda: window.search_view.landed == window.search_view.serial and window.search_view.text == "red")
    first = window.results.item(0).path
    window.grid.setCurrentIndex(window.results.index(0))
    QTest.mouseClick(window.search_view.preview.more, Qt.MouseButton.LeftButton)
    until(lambda: window.search_view.landed == window.search_view.serial and window.search_view.images)
    assert window.search_bar.text() == "red" and os.sep not in window.search_bar.text()
    assert window.search_view.terms_label.text() == f"like: {os.path.basename(first)}"
    assert first not in {it.path for it in window.results.items()}


def test_search_is_cut_where_scores_stop_standing_out_and_show_all_is_one_click(qtbot, tmp_path, monkeypatch,
                                                                                no_thread_leaks):
    from conftest import make_photo

    import clipdesk.ui.views.search as search
    from clipdesk.relevance import relevance_cut

    cuts = []
    # the demo model's scores are spread too evenly for any to stand out (the cut itself is
    # unit-tested in test_gui_core.py); here the cut is pinned to the two twins, to test the view
    monkeypatch.setattr(search, "relevance_cut", lambda scores: cuts.append(relevance_cut(scores)) or 2)

    root = tmp_path / "many"
    for i in range(3):  # three near-copies of one photo …
        make_photo(root / f"twin_{i}.jpg", (200, 40, 40), pattern=5)
    for i in range(15):  # … among fifteen others
        make_photo(root / f"other_{i}.jpg", ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256), pattern=100 + i)
    w = make_window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        w.add_folders([str(root)])
    until(lambda: w.count_label.text() == "18 photos")
    w.search_similar(str(root / "twin_0.jpg"))
    until(lambda: w.search_view.landed == w.search_view.serial and w.search_view.images)
    assert cuts and w.count_label.text() == "2 good matches · show the 17 closest"  # 18 in the library
    assert {os.path.basename(it.path) for it in w.results.items()} == {"twin_1.jpg", "twin_2.jpg"}
    assert w.search_bar.text() == ""  # the example is not written into the field as a path
    QTest.mouseClick(w.count_label, Qt.MouseButton.LeftButton)
    assert w.results.rowCount() == 17 and "show the 2 good matches only" in w.count_label.text()
    QTest.mouseClick(w.count_label, Qt.MouseButton.LeftButton)
    assert w.results.rowCount() == 2
    w.shutdown()


def test_banner_never_hides_a_control_and_clears_when_the_cause_is_gone(window):
    from PySide6.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit

    until(lambda: not window.jobs.active, what="idle")
    window.show_error("Cannot read that photo " + "very long explanation " * 20, "QueryError", "search")
    pump(50)
    assert window.banner.isVisible()
    assert window.banner.text.text().endswith("explanation ")  # the whole text, never cut
    banner = QRect(window.banner.mapTo(window, QPoint(0, 0)), window.banner.size())
    for tab in range(window.tabs.count()):  # on every tab: no control under the banner
        window.tabs.setCurrentIndex(tab)
        pump(20)
        controls = [w for kind in (QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit)
                    for w in window.findChildren(kind) if w.isVisible() and not window.banner.isAncestorOf(w)]
        assert controls
        hidden = [w.objectName() or type(w).__name__ for w in controls
                  if QRect(w.mapTo(window, QPoint(0, 0)), w.size()).intersects(banner)]
        assert not hidden, hidden
    window.tabs.setCurrentIndex(0)
    with pytest.raises(AssertionError):
        until(lambda: not window.banner.isVisible(), timeout=0.3)
    window.search_view.set_text("blue")  # a search that works: the cause is gone
    until(lambda: not window.banner.isVisible(), what="banner cleared")


def test_drag_over_a_tab_title_switches_tabs(window):
    from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent

    bar = window.tabs.tabBar()
    window.tabs.setCurrentIndex(0)
    mime = window.results.mimeData([window.results.index(0)])
    pos = bar.tabRect(2).center()  # a QPoint, as drag-enter and drag-move take
    for ev in (QDragEnterEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                               Qt.KeyboardModifier.NoModifier),
               QDragMoveEvent(pos, Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                              Qt.KeyboardModifier.NoModifier)):
        QApplication.sendEvent(bar, ev)
        assert ev.isAccepted()
    until(lambda: window.tabs.currentIndex() == 2, timeout=3, what="tab switch on hover")


# ---------------------------------------------------------------------- the grid
def test_delegate_never_crops_and_frames_the_selection(qtbot, tmp_path):
    from clipdesk.ui.models import Item, ResultsModel
    from clipdesk.ui.views.grid import PhotoDelegate, fit_rect

    assert fit_rect(QSize(400, 100), QRect(0, 0, 160, 160)) == QRect(0, 60, 160, 40)
    assert fit_rect(QSize(20, 40), QRect(0, 0, 160, 160)).size() == QSize(40, 80)  # ≤ 2× upscale
    model = ResultsModel()
    model.set_items([Item("/x/wide.jpg", 0.5, "A")])
    pm = QPixmap(300, 100)
    pm.fill(QColor("red"))
    model.data = lambda idx, role=0: pm if role == Qt.ItemDataRole.DecorationRole else (
        "50%" if role == Qt.ItemDataRole.DisplayRole else None)
    d = PhotoDelegate(120)
    for selected in (False, True):
        img = QImage(200, 200, QImage.Format.Format_RGB32)
        img.fill(QColor("white"))
        p = QPainter(img)
        opt = QStyleOptionViewItem()
        opt.rect = QRect(0, 0, *d.cell_size().toTuple())
        opt.fontMetrics = p.fontMetrics()
        opt.state = QStyle.StateFlag.State_Enabled | (QStyle.StateFlag.State_Selected if selected else QStyle.StateFlag.State_None)
        d.paint(p, opt, model.index(0))
        p.end()
        red = [(x, y) for x in range(200) for y in range(200) if img.pixelColor(x, y).red() > 200
               and img.pixelColor(x, y).green() < 60]
        xs, ys = [x for x, _ in red], [y for _, y in red]
        w, h = max(xs) - min(xs) + 1, max(ys) - min(ys) + 1
        assert (w, h) == (120, 40)  # the whole 3:1 picture, scaled to fit: nothing cut off
        if selected:
            accent = img.pixelColor(2, opt.rect.height() // 2)
            assert accent.blue() > 180 and accent.red() < 80  # a frame at the edge …
            inside = img.pixelColor(opt.rect.width() // 2, 8)
            assert inside.red() > 200 and inside.blue() > 200  # … and a light tint, not a block


def test_cells_keep_their_size_and_captions_after_relayout(window):
    grid = window.search_view.grid
    cell = grid.delegate.cell_size()
    window.sort_box.setCurrentIndex(1)  # sort by date
    QTest.keyClick(grid, Qt.Key.Key_Space)
    QTest.keyClick(grid, Qt.Key.Key_Space)
    window.resize(1024, 640)
    pump(100)
    sizes = {grid.visualRect(window.results.index(r)).size().toTuple() for r in range(window.results.rowCount())}
    assert sizes == {cell.toTuple()}
    assert all(window.results.data(window.results.index(r)) for r in range(window.results.rowCount()))  # captions
    window.apply_settings("", "auto", 96, window.lib.folder)  # thumbnail size applies at once
    assert grid.delegate.cell_size().width() == 96 + 12 and window.thumbnails.size == 96
    assert window.teach_view.review_grid.delegate.thumb == 96


# ---------------------------------------------------------------------- first run, folders, settings
def test_first_run_offline_one_dialog_then_demo_model_scans_the_registered_folder(qtbot, tmp_path, photos,
                                                                                 monkeypatch, no_thread_leaks):
    import clipdesk.library as libmod
    from clipdesk.errors import ModelDownloadError
    from clipdesk.library import Library
    from clipdesk.runtime import DEFAULT_MODEL, ModelSpec
    from clipdesk.ui.views.dialogs import ModelDialog

    real = libmod.load_encoder
    calls = []

    def offline(spec, *a, **k):
        calls.append(spec.arch)
        if spec.arch != "test-tiny":
            raise ModelDownloadError(f"Cannot download {spec.name}: no network.")
        return real(spec, *a, **k)

    monkeypatch.setattr(libmod, "load_encoder", offline)
    lib = Library(str(tmp_path / "lib"), model=DEFAULT_MODEL)
    lib.catalog.add_folder(str(photos))  # what the failed first run left behind: a folder, 0 photos
    assert lib.spec == ModelSpec.parse(DEFAULT_MODEL)
    w = make_window(tmp_path, lib)
    qtbot.addWidget(w)
    t0 = time.monotonic()
    w.show()
    until(lambda: any(isinstance(x, ModelDialog) and x.isVisible() for x in QApplication.topLevelWidgets()),
          timeout=10, what="model dialog")
    assert time.monotonic() - t0 < 10
    pump(300)
    dialogs = [x for x in QApplication.topLevelWidgets() if isinstance(x, ModelDialog) and x.isVisible()]
    assert len(dialogs) == 1 and dialogs[0].objectName() == "modelDialog"
    dlg = dialogs[0]
    assert {b.objectName() for b in (dlg.demo, dlg.choose, dlg.retry)} == {"useDemo", "chooseModelFolder",
                                                                          "retryDownload"}
    assert "loading" not in w.status_label.text() and "not loaded" in w.status_label.text()
    assert not w.banner.isVisible()  # the dialog says it; no second copy in a banner
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        QTest.mouseClick(dlg.demo, Qt.MouseButton.LeftButton)
    until(lambda: w.lib.catalog.counts()[0] == 8, what="the registered folder scanned")
    assert "meaningless" in w.banner.text.text()
    w.shutdown()


def test_first_run_offline_a_model_folder_is_checked_then_used_and_kept_with_the_library(
        qtbot, tmp_path, photos, monkeypatch, no_thread_leaks):
    """The dialog offers a model folder (no PyTorch needed): a broken one is refused in the dialog
    with its one-line problem; a good one is used, indexes the folder and is stored per library."""
    import shutil

    import clipdesk.library as libmod
    from clipdesk.errors import ModelDownloadError
    from clipdesk.library import Library
    from clipdesk.runtime import DEFAULT_MODEL
    from clipdesk.runtime.spec import PACKAGED
    from clipdesk.ui.recent import RecentLibraries
    from clipdesk.ui.views.dialogs import ModelDialog

    real = libmod.load_encoder

    def offline(spec, *a, **k):
        if spec.folder is None and spec.arch != "test-tiny":
            raise ModelDownloadError(f"Cannot download {spec.name}: no network.")
        return real(spec, *a, **k)

    monkeypatch.setattr(libmod, "load_encoder", offline)
    monkeypatch.setattr("clipdesk.runtime.torch_available", lambda: False)
    good = tmp_path / "models" / "tiny"
    shutil.copytree(PACKAGED / "test-tiny", good)
    broken = tmp_path / "models" / "broken"
    shutil.copytree(good, broken)
    (broken / "textual" / "model.onnx").write_bytes(b"not onnx")
    lib = Library(str(tmp_path / "lib"), model=DEFAULT_MODEL)
    lib.catalog.add_folder(str(photos))
    w = make_window(tmp_path, lib)
    qtbot.addWidget(w)
    w.show()
    until(lambda: any(isinstance(x, ModelDialog) and x.isVisible() for x in QApplication.topLevelWidgets()),
          timeout=10, what="model dialog")
    dlg = next(x for x in QApplication.topLevelWidgets() if isinstance(x, ModelDialog) and x.isVisible())
    assert dlg.checkpoint_button is None  # checkpoints need PyTorch: not offered without it
    assert dlg.choose.text() == "Choose a model folder…"
    assert not dlg.choose_folder(str(broken))
    assert dlg.isVisible() and dlg.folder_error.isVisible()
    assert "model.onnx" in dlg.folder_error.text() and "\n" not in dlg.folder_error.text()
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        assert dlg.choose_folder(str(good))
    until(lambda: w.lib.catalog.counts()[0] == 8, what="the registered folder indexed with the folder's model")
    assert w.lib.spec.folder == str(good)
    entry = RecentLibraries(w.settings).get(w.lib.folder)
    assert entry.model_dir == str(good) and entry.weights is None
    assert w.settings.value("model_dir") == str(good)
    w.shutdown()


def test_first_run_offline_two_failing_jobs_make_one_dialog_and_no_late_second_one(qtbot, tmp_path, photos,
                                                                                    monkeypatch, no_thread_leaks):
    """The issue's run: the model warms up and a folder is added at once, both fail offline."""
    import clipdesk.library as libmod
    from clipdesk.errors import ModelDownloadError
    from clipdesk.library import Library
    from clipdesk.runtime import DEFAULT_MODEL
    from clipdesk.ui.views.dialogs import ModelDialog

    real = libmod.load_encoder

    def offline(spec, *a, **k):
        if spec.arch != "test-tiny":
            time.sleep(1.0)  # the two jobs fail one after the other (they share the load lock)
            raise ModelDownloadError(f"Cannot download {spec.name}: no network.")
        return real(spec, *a, **k)

    monkeypatch.setattr(libmod, "load_encoder", offline)
    w = make_window(tmp_path, Library(str(tmp_path / "lib"), model=DEFAULT_MODEL))
    qtbot.addWidget(w)
    w.show()
    w.add_folders([str(photos)])

    def shown():
        return [x for x in QApplication.topLevelWidgets() if isinstance(x, ModelDialog) and x.isVisible()]

    until(lambda: shown(), timeout=10, what="model dialog")
    assert len(shown()) == 1
    # choose at once, while the second job is still failing with the old model: its failure comes
    # after the choice and must not bring the dialog back
    QTest.mouseClick(shown()[0].demo, Qt.MouseButton.LeftButton)
    until(lambda: w.lib.catalog.counts()[0] == 8 and not w.jobs.active, timeout=60, what="indexed with the demo")
    pump(300)
    assert shown() == []  # no second dialog
    assert "meaningless" in w.banner.text.text()  # the banner tells about the demo model, not the failure
    w.shutdown()


def test_registered_folder_with_no_photos_is_scanned_on_open(qtbot, tmp_path, photos, no_thread_leaks):
    from clipdesk.library import Library

    lib = Library(str(tmp_path / "lib"), model="test-tiny")
    lib.catalog.add_folder(str(photos))
    w = make_window(tmp_path, lib)
    qtbot.addWidget(w)
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        w.show()
    assert w.lib.catalog.counts()[0] == 8
    until(lambda: w.count_label.text() == "8 photos")
    w.shutdown()


def test_remove_folder_asks_first_and_undo_brings_it_back(window, photos, monkeypatch):
    import clipdesk.ui.views.folders as folders

    asked = []
    monkeypatch.setattr(folders, "confirm", lambda *a: asked.append(a[2]) or False)
    window.sidebar.list.setCurrentRow(0)
    QTest.mouseClick(window.sidebar.remove_button, Qt.MouseButton.LeftButton)
    assert asked and "8 indexed photos" in asked[0] and window.lib.catalog.counts()[0] == 8  # cancelled
    monkeypatch.setattr(folders, "confirm", lambda *a: True)
    QTest.mouseClick(window.sidebar.remove_button, Qt.MouseButton.LeftButton)
    until(lambda: window.lib.catalog.counts()[0] == 0 or window.banner.isVisible(), timeout=60, what="folder removed")
    assert window.lib.catalog.counts()[0] == 0, window.banner.text.text()
    with qtbot_wait(window):
        window.undo_stack.undo()
    until(lambda: window.lib.catalog.counts()[0] == 8, timeout=60, what="folder back")


class qtbot_wait:  # noqa: N801 - a tiny context manager: wait for the next index_finished
    def __init__(self, w):
        self.w, self.done = w, []

    def __enter__(self):
        self.w.index_finished.connect(lambda: self.done.append(1))

    def __exit__(self, *exc):
        until(lambda: self.done, timeout=60, what="indexing")


def test_settings_switch_library_at_once_and_explain_a_refused_model(window, tmp_path):
    other = tmp_path / "other-lib"
    done = window.apply_settings("", "auto", window.thumbnails.size, str(other))
    assert done == ["library"] and window.lib.folder == str(other)
    assert window.settings.value("library") == str(other)
    until(lambda: window.count_label.text() == "0 photos")
    window.close()  # closing keeps the switched library
    assert window.settings.value("library") == str(other)


def test_settings_refuse_another_model_for_an_indexed_library(window):
    done = window.apply_settings("ViT-B-32-256/datacomp_s34b_b86k", "auto", window.thumbnails.size, window.lib.folder)
    text = window.banner.text.text()
    assert done == [] and window.banner.isVisible() and "indexed with test-tiny" in text
    assert "Open library" in text and "--" not in text and "clipdesk index" not in text  # the app's way, no shell
    assert window.lib.spec.arch == "test-tiny"


def test_open_says_so_when_the_desktop_has_no_handler(window, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    import clipdesk.ui.desktop as desktop

    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda _u: False))
    monkeypatch.setattr(desktop.shutil, "which", lambda _p: None)
    path = window.results.item(0).path
    window.grid.setCurrentIndex(window.results.index(0))
    QTest.mouseClick(window.search_view.preview.open, Qt.MouseButton.LeftButton)
    assert window.banner.isVisible() and "No application" in window.banner.text.text()
    assert QApplication.clipboard().text() == path
    QTest.mouseClick(window.search_view.preview.show_folder, Qt.MouseButton.LeftButton)
    assert "No file manager" in window.banner.text.text()


def test_export_writes_off_the_gui_thread_and_a_failure_is_shown_not_raised(window, qtbot, tmp_path):
    sort = window.sort_view
    window.tabs.setCurrentWidget(sort)
    sort.categories.setPlainText("red\ngreen")
    QTest.mouseClick(sort.classify_button, Qt.MouseButton.LeftButton)
    until(lambda: sort.classified and sort.classify_button.isEnabled(), what="classify")
    bar = sort.actions_bar
    with qtbot.waitSignal(bar.error, timeout=20000) as failed:
        bar.export_csv(str(tmp_path / "no such folder" / "out.csv"))
    assert failed.args[0].startswith("Cannot write") and failed.args[1] == "export"
    out = tmp_path / "out.csv"
    with qtbot.waitSignal(bar.message, timeout=20000) as done:
        bar.export_csv(str(out))
    assert done.args[0] == f"Exported 8 rows to {out}"
    rows = list(csv.reader(out.open()))
    assert len(rows) == 9 and {r[1] for r in rows[1:]} <= {"red", "green", "(none)"}  # a category in every row


def test_a_library_switched_to_is_claimed_like_one_opened_at_start(window, tmp_path):
    """One window per library holds for a library switched to in the window: one open in another
    window is refused (and that window asked to the front); switching frees the library left."""
    from PySide6.QtWidgets import QWidget

    from clipdesk.library import Library
    from clipdesk.ui.instance import SingleInstance

    first = window.lib.folder
    window.single_instance = SingleInstance(first)
    assert window.single_instance.primary
    window.single_instance.serve(window)
    for name in ("held", "free"):
        Library(str(tmp_path / name), model="test-tiny").close()
    other_window = QWidget()
    held = SingleInstance(str(tmp_path / "held"))  # another window has this one open
    held.serve(other_window)
    try:
        assert not window.switch_library(str(tmp_path / "held"))
        assert window.lib.folder == first
        until(lambda: "open in another clipdesk window" in window.banner.text.text(), what="the refusal")
        until(lambda: other_window.isVisible(), what="the other window asked to the front")
        assert window.switch_library(str(tmp_path / "free"))
        assert not SingleInstance(str(tmp_path / "free")).primary  # this window answers for it now
        again = SingleInstance(first)  # and the library it left is free for a new launch
        assert again.primary
        again.release()
    finally:
        held.release()
        window.single_instance.release()
        other_window.close()
        pump(200)  # the sockets' last events, while the widgets they name still exist
