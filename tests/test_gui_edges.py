"""Rough edges of issue 26, each as a class: search messages and malformed queries, commas in
Sort, counts, sizes, grids that fill their row."""
import os

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from conftest import until  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]


def test_count_line_says_what_a_click_shows():
    from clipdesk.ui.views.search import count_line

    assert count_line(5, 5, 5, False) == "5 matches"
    assert count_line(23, 359, 359, False) == "23 good matches · show all 359"
    assert count_line(23, 2000, 7000, False) == "23 good matches · show the 2,000 closest"  # not "all"
    assert count_line(23, 2000, 7000, True) == "the 2,000 closest · show the 23 good matches only"
    assert count_line(0, 2000, 7000, False) == "No clear match · show the 2,000 closest"
    shown = count_line(0, 2000, 7000, True)
    assert "show" not in shown.replace("shown", "") and "0" not in shown.split("·")[0]  # no "show 0 … only"


def test_sizes_are_written_one_way():
    from clipdesk.ui.views.text import human_size

    assert human_size(None) == "size unknown"
    assert human_size(1) == "1 byte" and human_size(999) == "999 bytes"
    assert human_size(480_000) == "480 kB" and human_size(3_400_000) == "3.4 MB"
    assert human_size(2_500_000_000) == "2.5 GB"


def test_malformed_queries_are_explained_and_the_results_stay(window):
    sv = window.search_view
    window.search_bar.setText("red")
    QTest.keyClick(window.search_bar, Qt.Key.Key_Return)
    until(lambda: sv.landed == sv.serial and sv.typed, what="a search")
    shown = [it.path for it in window.results.items()]
    for bad, says in (('"fish" + 2000*"coral"', "out of range"), ("red -", "ends with an operator"),
                      ('"unclosed', "Unclosed quote")):
        window.search_bar.setText(bad)
        QTest.keyClick(window.search_bar, Qt.Key.Key_Return)
        assert window.banner.isVisible() and says in window.banner.text.text(), window.banner.text.text()
        assert [it.path for it in window.results.items()] == shown and sv.text == "red"
    window.search_bar.setText('"red" + 0.5*"green" - blue')  # the command line's syntax works here too
    QTest.keyClick(window.search_bar, Qt.Key.Key_Return)
    until(lambda: sv.landed == sv.serial and len(sv.typed) == 3, what="a combined search")
    assert not window.banner.isVisible()
    assert sv.describe_query() == "“red” + “green” − “blue”"  # every part, each quoted once


def test_enter_on_an_empty_box_keeps_the_example_photo_and_clearing_reruns(window):
    sv = window.search_view
    example = window.results.item(2).path
    window.search_similar(example)
    until(lambda: sv.landed == sv.serial and sv.images, what="a search by example")
    window.search_bar.setText("red")
    QTest.keyClick(window.search_bar, Qt.Key.Key_Return)
    until(lambda: sv.landed == sv.serial and sv.typed, what="text + example")
    assert not sv.images  # a new typed query is a new search
    sv.images = [(1.0, example)]  # as after "More like this" on a text search
    serial = sv.serial
    window.search_bar.clear()  # clearing the box: the example alone, searched again (no stale text)
    until(lambda: sv.serial > serial and sv.landed == sv.serial, what="the rerun")
    assert sv.text == "" and [p for _w, p in sv.images] == [example]
    QTest.keyClick(window.search_bar, Qt.Key.Key_Return)  # Enter on the empty box drops nothing
    until(lambda: sv.landed == sv.serial, what="the search")
    assert [p for _w, p in sv.images] == [example]
    assert "1 example photo" in sv.describe_query()


def test_sort_takes_commas_as_the_command_line_does(window):
    sort = window.sort_view
    window.tabs.setCurrentWidget(sort)
    sort.categories.setPlainText("bird, flower, car")
    QTest.mouseClick(sort.classify_button, Qt.MouseButton.LeftButton)
    until(lambda: sort.classified and sort.classify_button.isEnabled(), what="classify")
    assert sort.names == ["bird", "flower", "car"] and not window.banner.isVisible()


def test_grid_cells_spread_to_fill_the_row(window):
    grid = window.search_view.grid
    window.resize(1111, 700)
    until(lambda: grid.width() > 0)
    QTest.qWait(50)
    cell = grid.delegate.cell_size().width()
    room = grid.contentsRect().width() - grid.verticalScrollBar().sizeHint().width()
    cols = room // cell
    assert grid.gridSize().width() * cols >= room - cols - 2  # no band of a cell's width left empty
    assert grid.gridSize().width() * cols <= room
    rects = [grid.visualRect(window.results.index(i)) for i in range(min(cols, window.results.rowCount()))]
    assert len({r.y() for r in rects}) == 1  # still one row: spreading never wraps a cell


def test_thumbnail_size_change_keeps_the_selection(window):
    grid = window.search_view.grid
    grid.select_rows([5, 6])
    window.apply_settings("", "auto", 96, window.lib.folder)
    assert grid.selected_rows() == [5, 6]


def test_one_undo_for_the_last_file_operation_wherever_it_started(window):
    from pathlib import Path

    from clipdesk import tags
    from test_gui_interop import answer_plan, classified

    sort = classified(window)
    teach_bar = window.teach_view.actions_bar
    assert not teach_bar.undo_last.isEnabled()
    rows = [p for p, _c, _ in sort._rows()]
    answer_plan(apply=True)
    next(a for a in sort.actions_bar.more.actions() if a.objectName() == "writeTagsAction").trigger()
    until(lambda: sort.actions_bar.undo_last.isEnabled(), what="tags written")
    assert teach_bar.undo_last.isEnabled() and teach_bar.undo_last.text() == "Undo last tags write"
    teach_bar.undo_last.trigger()  # Teach's Do ▸ Undo takes back the write made on the Sort tab
    until(lambda: not any(Path(tags.sidecar_target(p)).exists() for p in rows), what="undo from the other tab")
    until(lambda: not sort.actions_bar.undo_last.isEnabled() and not teach_bar.undo_last.isEnabled(),
          what="both menus to show nothing left to undo")


def test_the_copy_to_folder_picker_starts_beside_the_photos_then_where_it_was_left(window, monkeypatch, tmp_path):
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QFileDialog

    from test_gui_interop import classified

    QSettings().remove("last_folder_dir")
    sort = classified(window)
    starts = []
    chosen = tmp_path / "sorted"
    chosen.mkdir()
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda _p, _t, start, *_a, **_k: starts.append(start) or ""))
    sort.actions_bar.start_sort("copy")  # cancelled in the picker: nothing happens
    photos_root = os.path.commonpath([os.path.dirname(p) for p, _c, _ in sort._rows()])
    assert starts == [photos_root]
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        staticmethod(lambda _p, _t, start, *_a, **_k: starts.append(start) or str(chosen)))
    from clipdesk.ui.views.dialogs import ask_folder

    assert ask_folder(window, "x", photos_root) == str(chosen)
    assert ask_folder(window, "x", photos_root) == str(chosen) and starts[-1] == str(chosen)  # where it was left
    QSettings().remove("last_folder_dir")


def test_the_drag_image_is_small_and_counts_the_photos(qtbot):
    from PySide6.QtGui import QColor, QPixmap

    from clipdesk.ui.views.grid import ACCENT, DRAG_IMAGE, drag_image

    pm = QPixmap(400, 200)
    pm.fill(QColor("red"))
    one, many = drag_image(pm, 1).toImage(), drag_image(pm, 12).toImage()
    assert one.width() == one.height() == DRAG_IMAGE  # not a whole cell over the bucket under the pointer
    corner = (DRAG_IMAGE - 14, 10)  # where the count badge goes
    assert one.pixelColor(*corner).alpha() == 0  # one photo: no badge (and the picture is fitted, not cropped)
    badge = many.pixelColor(*corner)
    assert badge.alpha() == 255 and badge.rgb() in (ACCENT.rgb(), QColor("white").rgb())  # the badge or its digits
    assert one.pixelColor(DRAG_IMAGE // 2, DRAG_IMAGE // 2).red() > 200  # the photo itself


def test_a_finished_job_leaves_no_progress_bar_behind(qtbot):
    from types import SimpleNamespace

    from clipdesk.ui.views.status import StatusArea

    bar = StatusArea()
    qtbot.addWidget(bar)
    bar.show()
    bar.job_progress(SimpleNamespace(stage="predict", done=10, total=100))
    assert bar.progress.isVisible() and bar.progress_label.text() == "Predict…"
    bar.job_progress(SimpleNamespace(stage="predict", done=100, total=100))
    assert not bar.progress.isVisible() and not bar.cancel.isVisible()  # not "Predict… 100%" for ever
    bar.set_busy("Indexing: scanning…")
    bar.job_progress(SimpleNamespace(stage="predict", done=100, total=100))
    assert bar.progress.isVisible()  # another job's bar is left alone


def test_clipdesk_gui_started_directly_runs_the_qt_dependency_check(monkeypatch, capsys):
    from clipdesk.ui import app

    assert app.QT_DEPS_CHECK.is_file()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert app.check_qt_dependencies() == 0  # the real script: offscreen needs no X libraries
    monkeypatch.setattr(app, "check_qt_dependencies", lambda: 1)  # as on a desktop missing libxcb-cursor0
    started = []
    monkeypatch.setattr("clipdesk.library.Library", lambda *a, **k: started.append(a))
    assert app.main([]) == 1 and not started  # stops before Qt could abort with its raw message
