"""Libraries a person leaves are not lost (Open library…, recent libraries, each with its model),
and the keys land on the photos after every action (issue 26, traps 1 and 2)."""
import os

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import (QAbstractButton, QAbstractSpinBox, QApplication, QComboBox,  # noqa: E402
                               QSlider)

from conftest import make_window, until  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]


class FakeSettings(dict):
    def value(self, key, default=None):
        return self.get(key, default)

    def setValue(self, key, value):  # noqa: N802 - QSettings' name
        self[key] = value


# ---------------------------------------------------------------------- plain parts
def test_recent_libraries_newest_first_keep_their_model_and_survive_a_damaged_value(tmp_path):
    from clipdesk.ui.recent import MAX_RECENT, RecentLibraries

    s = FakeSettings()
    r = RecentLibraries(s)
    r.remember(str(tmp_path / "a"), "test-tiny")
    r.remember(str(tmp_path / "b"), "ViT-B-32/x", None)
    r.remember(str(tmp_path / "a"))  # reopened: first again, its model kept
    assert [e.folder for e in r.entries()] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert r.get(str(tmp_path / "a")).model == "test-tiny"
    r.remember(str(tmp_path / "c"), "ViT", "/w/ckpt.safetensors")
    assert r.get(str(tmp_path / "c")).weights == "/w/ckpt.safetensors"
    r.remember(str(tmp_path / "d"), "dir:tiny", None, "/m/tiny")  # a model folder, kept with its library
    r.remember(str(tmp_path / "d"))
    assert (r.get(str(tmp_path / "d")).model_dir, r.get(str(tmp_path / "d")).model) == ("/m/tiny", "dir:tiny")
    for i in range(MAX_RECENT + 3):
        r.remember(str(tmp_path / f"x{i}"), "test-tiny")
    assert len(r.entries()) == MAX_RECENT
    s["recent_libraries"] = "{not json"
    assert r.entries() == []
    s["recent_libraries"] = '[{"folder": 3}, {"folder": "/ok", "model": ["x"]}]'
    assert [(e.folder, e.model) for e in r.entries()] == [("/ok", None)]


def test_messages_lose_their_command_line_words():
    from clipdesk.ui.views.banner import without_command_line

    cut = without_command_line(
        "Cannot download the weights of ViT-B-32: offline. Download the checkpoint elsewhere and pass it with "
        "--model ViT-B-32 --weights FILE, or try the demo model: --model test-tiny.")
    assert cut == "Cannot download the weights of ViT-B-32: offline."
    assert without_command_line("Indexed with A; B needs every photo re-embedded ('clipdesk index --reembed').") \
        == "Indexed with A; B needs every photo re-embedded."
    assert without_command_line("Disk full.") == "Disk full."


# ---------------------------------------------------------------------- trap 1: libraries
def test_switching_to_a_new_library_and_back_restores_buckets_probe_and_model(window, tmp_path):
    first = window.lib.folder
    window.tabs.setCurrentWidget(window.teach_view)
    t = window.teach_view
    t.source.setCurrentIndex(1)
    until(lambda: t.pick_results.rowCount() == 8, what="teach grid")
    window.labels.create("Anna")
    window.labels.create("Ben")
    paths = [it.path for it in t.pick_results.items()]
    window.labels.add("Anna", paths[:2])
    window.labels.add("Ben", paths[2:4])
    until(lambda: len(window.buckets["Ben"].paths()) == 2, what="buckets filled")
    QTest.mouseClick(t.train_button, Qt.MouseButton.LeftButton)
    until(lambda: t.train_result.text().startswith("Trained on"), what="training")

    other = tmp_path / "other library"
    assert window.open_library(str(other))
    assert window.lib.folder == str(other) and window.stack.currentIndex() == 0  # the Welcome page
    assert window.lib.spec.name == "test-tiny"  # the model chosen before, not the default's download
    until(lambda: not window.jobs.active, what="the new library's start-up")
    assert not window.banner.isVisible() and window.model_setup.dialog is None
    # the Welcome page offers the way back, and so does File ▸ Recent libraries
    recent = window.welcome.recent
    assert recent.isVisibleTo(window) and recent.count() == 1 and recent.item(0).data(Qt.ItemDataRole.UserRole) == first
    window._fill_recent_menu()
    assert [a.text() for a in window.recent_menu.actions()] == [first]
    rect = recent.visualItemRect(recent.item(0))
    QTest.mouseClick(recent.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    until(lambda: window.lib.folder == first and window.stack.currentIndex() == 1, what="back to the first library")
    assert sorted(window.buckets) == ["Anna", "Ben"] and sorted(window.buckets["Anna"].paths()) == sorted(paths[:2])
    assert "Trained earlier" in t.train_result.text()  # the probe is back …
    until(lambda: t.apply_button.isEnabled() and t.predictions and t.review_results.rowCount(),
          what="… and with it the Review list")
    assert window.settings.value("library") == first
    assert window.recent.get(str(other)).model == "test-tiny"


def test_a_folder_of_photos_is_not_opened_as_a_library(window, photos):
    before = window.lib.folder
    assert not window.open_library(str(photos))
    assert window.lib.folder == before
    assert window.banner.isVisible() and "not a clipdesk library" in window.banner.text.text()
    assert "Add a folder" in window.banner.text.text()


def test_a_relaunch_opens_the_last_library_with_its_model(tmp_path, monkeypatch):
    """app.main reads the library and its model from the settings the window wrote."""
    from PySide6.QtCore import QSettings

    from clipdesk.ui import app as app_module
    from clipdesk.ui.recent import RecentLibraries

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    lib_dir = tmp_path / "kept"
    settings.setValue("library", str(lib_dir))
    settings.setValue("model", "ViT-B-32-256/datacomp_s34b_b86k")  # the app-wide last choice …
    RecentLibraries(settings).remember(str(lib_dir), "test-tiny")  # … loses to the library's own
    settings.sync()
    opened = {}

    class Stop(Exception):
        pass

    def fake_library(folder, model=None, weights=None, **_kw):
        opened.update(folder=folder, model=model, weights=weights)
        raise Stop

    monkeypatch.setattr("clipdesk.library.Library", fake_library)
    monkeypatch.setattr(app_module, "QSettings", lambda *a: settings, raising=False)
    import PySide6.QtCore as qtcore

    monkeypatch.setattr(qtcore, "QSettings", lambda *a: settings)
    with pytest.raises(Stop):
        app_module.main([])
    assert opened == {"folder": str(lib_dir), "model": "test-tiny", "weights": None}


# ---------------------------------------------------------------------- trap 2: keys
def focus(w):
    w.activateWindow()
    until(lambda: QApplication.activeWindow() is w, what="the window active")


def test_number_boxes_take_no_focus_unless_clicked_and_buttons_keep_it_on_the_grid(window):
    kinds = {}
    for w in window.findChildren(QAbstractSpinBox) + window.findChildren(QSlider):
        kinds[w.objectName()] = w.focusPolicy()
    assert kinds and set(kinds.values()) == {Qt.FocusPolicy.ClickFocus}, kinds
    for w in window.findChildren(QAbstractButton) + window.findChildren(QComboBox):
        assert not (w.focusPolicy() & Qt.FocusPolicy.ClickFocus), w.objectName() or w.text()


def test_keys_after_retrain_and_apply_go_to_the_grid_not_the_threshold(window):
    focus(window)
    t = window.teach_view
    window.tabs.setCurrentWidget(t)
    t.source.setCurrentIndex(1)
    until(lambda: t.pick_results.rowCount() == 8, what="teach grid")
    for name in ("Anna", "Ben"):
        window.labels.create(name)
    paths = [it.path for it in t.pick_results.items()]
    window.labels.add("Anna", paths[:2])
    window.labels.add("Ben", paths[2:4])
    t.grid.setFocus()
    QTest.mouseClick(t.train_button, Qt.MouseButton.LeftButton)
    until(lambda: t.train_result.text().startswith("Trained on") and t.train_button.isEnabled(), what="training")
    assert QApplication.focusWidget() in (t.grid, t.review_grid)
    QTest.mouseClick(t.apply_button, Qt.MouseButton.LeftButton)
    until(lambda: t.predictions and t.review_results.rowCount(), what="apply")
    QTest.mouseClick(t.retrain_button, Qt.MouseButton.LeftButton)
    until(lambda: not window.jobs.active and t.retrain_button.isEnabled() and t.review_results.rowCount(),
          what="retrain and apply")
    threshold = t.actions_bar.threshold
    assert threshold.value() == 80
    focused = QApplication.focusWidget()
    assert focused is t.review_grid, focused and focused.objectName()
    current = t.review_grid.current_path()
    assert current
    QTest.keyClick(focused, Qt.Key.Key_1)  # the photo the keyboard is on goes to bucket 1
    until(lambda: current in window.lib.labels()["Anna"], what="key 1 after Retrain & apply")
    assert threshold.value() == 80


def test_find_duplicates_leaves_the_keys_off_the_similarity_box(window):
    focus(window)
    d = window.duplicates_view
    window.show_tab(3)
    before = d.threshold.value()
    QTest.mouseClick(d.find_button, Qt.MouseButton.LeftButton)
    until(lambda: d.find_button.isEnabled() and not window.jobs.active, what="find duplicates")
    QTest.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_1)
    QTest.keyClick(QApplication.focusWidget() or window, Qt.Key.Key_Up)
    assert d.threshold.value() == before and QApplication.focusWidget() is not d.threshold


def test_tab_shortcuts_down_from_search_and_escape(window):
    focus(window)
    QTest.keyClick(window, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.teach_view
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_Tab, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.duplicates_view
    QTest.keyClick(QApplication.focusWidget(), Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert window.tabs.currentWidget() is window.search_view and QApplication.focusWidget() is window.grid
    window.search_bar.setFocus()
    QTest.keyClick(window.search_bar, Qt.Key.Key_Down)
    assert QApplication.focusWidget() is window.grid and window.grid.currentIndex().isValid()
    window.banner.show_message("Something to read", "test")
    QTest.keyClick(window.grid, Qt.Key.Key_Escape)
    assert not window.banner.isVisible()
    window.search_bar.setFocus()
    QTest.keyClick(window.search_bar, Qt.Key.Key_Escape)  # no banner: Escape steps back to the photos
    assert QApplication.focusWidget() is window.grid


def test_the_download_message_does_not_stay_in_the_status_bar_after_the_failure(window):
    until(lambda: not window.jobs.active, what="idle")  # no other job's message lands in between
    window.status_message.emit("Fetching weights of ViT-B-32 (downloaded once, then cached)…")
    QApplication.processEvents()
    assert window.statusBar().currentMessage().startswith("Fetching weights")
    window.model_setup.dialog = object()  # a dialog is open already: no second one
    window.show_error("Cannot download the weights of ViT-B-32: offline.", "ModelDownloadError", "model")
    assert window.statusBar().currentMessage() == ""
    window.model_setup.dialog = None


def test_welcome_page_without_other_libraries_shows_no_empty_list(qtbot, tmp_path, no_thread_leaks):
    w = make_window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    try:
        assert w.stack.currentIndex() == 0
        assert w.welcome.open_button.isVisible() and not w.welcome.recent.isVisible()
        assert w.menuBar().isVisible() and w.open_library_action.isEnabled()
        assert os.path.isdir(w.lib.folder)
    finally:
        w.shutdown()


def test_sort_categories_come_back_with_their_library(window, tmp_path):
    first = window.lib.folder
    window.sort_view.categories.setPlainText("beach\nmountains")
    assert window.open_library(str(tmp_path / "second"))
    assert window.sort_view.categories.toPlainText() == ""  # the new library has none yet
    window.sort_view.categories.setPlainText("cats, dogs")
    assert window.open_library(first)
    assert window.sort_view.categories.toPlainText() == "beach\nmountains"
    window.close()  # a relaunch: the settings keep them
    from clipdesk.ui.recent import RecentLibraries

    assert RecentLibraries(window.settings).note(first, "sort_categories") == "beach\nmountains"
    assert RecentLibraries(window.settings).note(str(tmp_path / "second"), "sort_categories") == "cats, dogs"


def test_rejected_photos_are_seen_and_taken_back_from_their_bucket(window):
    from clipdesk.teaching import negative_label

    t = window.teach_view
    window.tabs.setCurrentWidget(t)
    window.labels.create("Anna")
    paths = [window.results.item(i).path for i in range(3)]
    window.labels.add("Anna", paths[:1])
    bucket = window.buckets["Anna"]
    assert not bucket.rejected.isVisible()
    window.labels.reject("Anna", paths[1:3])
    until(lambda: bucket.rejected.isVisible(), what="the rejected count")
    assert bucket.rejected.text() == "2 not ▾" and bucket.count.text() == "1 photo"
    bucket._fill_rejected()
    actions = [a for a in bucket.rejected.menu().actions() if a.text().startswith("Take back ")]
    assert sorted(a.text() for a in actions) == sorted([f"Take back {os.path.basename(p)}" for p in paths[1:3]]
                                                      + ["Take back all 2"])
    next(a for a in actions if a.text() == f"Take back {os.path.basename(paths[1])}").trigger()
    until(lambda: window.lib.labels().get(negative_label("Anna"), []) == [paths[2]], what="one taken back")
    assert bucket.rejected.text() == "1 not ▾" and "rejected as not “Anna”" in window.status.currentMessage()
    window.undo_stack.undo()
    until(lambda: sorted(window.lib.labels()[negative_label("Anna")]) == sorted(paths[1:3]), what="undo")


def test_model_dir_on_the_command_line_opens_the_library_with_that_folder(tmp_path, monkeypatch):
    """``clipdesk-gui --model-dir DIR`` reaches the Library; a relaunch reads the folder kept per library."""
    from PySide6.QtCore import QSettings

    import clipdesk.ui.main_window  # noqa: F401 - bound to the real Library before the patch below
    from clipdesk.ui import app as app_module
    from clipdesk.ui.recent import RecentLibraries

    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    opened = []

    class Stop(Exception):
        pass

    def fake_library(folder, model=None, weights=None, model_dir=None, **_kw):
        opened.append((folder, model, weights, model_dir))
        raise Stop

    monkeypatch.setattr("clipdesk.library.Library", fake_library)
    import PySide6.QtCore as qtcore

    monkeypatch.setattr(qtcore, "QSettings", lambda *a: settings)
    lib_dir, models = tmp_path / "lib", tmp_path / "m"
    with pytest.raises(Stop):
        app_module.main(["--library", str(lib_dir), "--model-dir", str(models)])
    RecentLibraries(settings).remember(str(lib_dir), "dir:m", None, str(models))
    with pytest.raises(Stop):
        app_module.main(["--library", str(lib_dir)])
    assert opened == [(str(lib_dir), None, None, str(models))] * 2
