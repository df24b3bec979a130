"""Library care in the app: the Duplicates tab (find in a worker, keep, move the others to the Trash
with a confirmation, Ctrl+Z brings them back) and the folder watcher (photos copied into a watched
folder appear without a rescan; the toggle; clean stop). Offscreen, real clicks and keys on the
real widgets; files go to a Trash inside the test's temp folder, never the user's.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PIL import Image  # noqa: E402
from PySide6.QtCore import QPoint, Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from conftest import make_photo, make_window, until, when_shown  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.shared_data, pytest.mark.qt_log_ignore("This plugin does not support")]
SHOTS = Path(os.environ.get("CARE_SHOTS", "/tmp/u1shots"))


@pytest.fixture
def dups(tmp_path, shared_data) -> dict:
    """Three real photos; an exact copy of the first, a half-size JPEG of the second, a PNG of the third."""
    root = tmp_path / "photos"
    (root / "backup").mkdir(parents=True)
    srcs = [sorted((shared_data / "photos" / "labelled" / c).glob("*.jpg"))[1] for c in ("bird", "fish", "tool")]
    files = {}
    for k, src in enumerate(srcs):
        with Image.open(src) as im:
            im = im.convert("RGB")
        files[k] = root / f"photo{k}.jpg"
        im.save(files[k], quality=92)
        os.utime(files[k], (1_500_000_000, 1_500_000_000))  # the originals are the oldest
    shutil.copyfile(files[0], root / "backup" / "copy0.jpg")
    with Image.open(files[1]) as im:
        im.resize((im.width // 2, im.height // 2)).save(root / "small1.jpg", quality=85)
    with Image.open(files[2]) as im:
        im.save(root / "converted2.png")
    return {"root": root, "photo": {k: str(v) for k, v in files.items()}, "copy": str(root / "backup" / "copy0.jpg"),
            "small": str(root / "small1.jpg"), "png": str(root / "converted2.png")}


@pytest.fixture
def care(qtbot, tmp_path, dups, trash_dir, no_thread_leaks):
    w = make_window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        w.add_folders([str(dups["root"])])
    until(lambda: w.results.rowCount() == 6, what="the library shown")
    yield w
    w.shutdown()
    assert w.watch.watcher is None


def open_tab(w, text: str):
    bar = w.tabs.tabBar()
    i = next(i for i in range(bar.count()) if bar.tabText(i) == text)
    QTest.mouseClick(bar, Qt.MouseButton.LeftButton, pos=bar.tabRect(i).center())
    assert w.tabs.currentIndex() == i
    return w.tabs.currentWidget()


def answer_confirmation(accept: bool) -> list[str]:
    """When the Trash confirmation opens, note its text and click its button (or Cancel)."""
    seen: list[str] = []

    def find():
        box = QApplication.activeModalWidget()
        return box if isinstance(box, QMessageBox) and box.objectName() == "confirmTrash" else None

    def click(box):
        seen.append(box.text() + "\n" + box.informativeText())
        QTest.mouseClick(box.findChild(object, "confirmTrashButton" if accept else "cancelTrashButton"),
                         Qt.MouseButton.LeftButton)

    when_shown(find, click, every_ms=30)
    return seen


def set_threshold(view, text: str) -> None:
    spin = view.threshold
    spin.setFocus()
    QTest.keyClick(spin, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    QTest.keyClicks(spin, text)
    QTest.keyClick(spin, Qt.Key.Key_Return)


def find(view) -> None:
    QTest.mouseClick(view.find_button, Qt.MouseButton.LeftButton)
    until(lambda: view._find is None and view._searched, what="the duplicate search")


def ctrl_z(w, target) -> None:
    """Ctrl+Z as a person presses it: in the window, active again once the confirmation closed."""
    w.activateWindow()
    until(lambda: QApplication.activeWindow() is w, what="the window active again")
    QTest.keyClick(target, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)


def card_of(view, path: str):
    return next(c for c in view.cards if any(p.path == path for p in c.group.photos) and not c.resolved)


def test_find_keep_trash_and_undo_in_the_duplicates_tab(care, dups, trash_dir):
    w, lib = care, care.lib
    view = open_tab(w, "Duplicates")
    assert view is w.duplicates_view
    assert view.empty.isVisible() and "Nothing is moved until you choose" in view.empty.text()
    assert w.count_label.text() == "Find exact copies and near-duplicates"
    set_threshold(view, "0.5")  # random weights: every pair goes to the pixel check
    assert view.threshold.value() == 0.5 and float(w.settings.value("duplicates/threshold")) == 0.5
    find(view)
    assert sorted(c.group.kind for c in view.cards) == ["exact", "near", "near"]
    assert not view.empty.isVisible() and view.scroll.isVisible()
    assert "3 duplicate groups · 3 photos could go" == w.count_label.text()
    assert view.summary.text() == "3 groups (1 exact, 2 near) · 3 photos could go"
    for c in view.cards:
        chip = c.findChild(object, f"dupKind:{c.n}")
        assert chip.text() == ("Exact copies" if c.group.kind == "exact" else "Near-duplicates")
        assert c.cells[0].keep.isChecked() and c.keep_path == c.group.suggested_keep
    assert {c.group.suggested_keep for c in view.cards} == set(dups["photo"].values())
    # Every thumbnail fitted inside its box with its photo's aspect (never cropped); the facts shown.
    until(lambda: all(cell.thumb.pixmap() is not None and not cell.thumb.pixmap().isNull()
                      for c in view.cards for cell in c.cells), what="thumbnails")
    for c in view.cards:
        for cell in c.cells:
            pm, p = cell.thumb.pixmap(), cell.photo
            assert pm.width() <= cell.thumb.width() and pm.height() <= cell.thumb.height()
            assert abs(pm.width() / pm.height() - p.width / p.height) < 0.03, p.path
            info = cell.findChild(object, f"dupInfo:{c.n}:{c.cells.index(cell)}").text()
            assert f"{p.width} × {p.height}" in info and ("kB" in info or "MB" in info) and "KB" not in info
    shoot(w, "duplicates")

    # Choose the smaller one of the near pair to keep; its label gets the original's.
    lib.add_to_label("prints", [dups["photo"][1]])
    card = card_of(view, dups["small"])
    small = next(cell for cell in card.cells if cell.photo.path == dups["small"])
    QTest.mouseClick(small.keep, Qt.MouseButton.LeftButton, pos=QPoint(6, small.keep.height() // 2))
    assert card.keep_path == dups["small"] and small.property("keep") == "true"
    # Cancel first: nothing moves.
    seen = answer_confirmation(accept=False)
    QTest.mouseClick(card.trash_button, Qt.MouseButton.LeftButton)
    assert seen and seen[0].startswith("Move 1 file from this group to the Trash?")
    assert os.path.exists(dups["photo"][1]) and not card.resolved
    seen = answer_confirmation(accept=True)
    QTest.mouseClick(card.trash_button, Qt.MouseButton.LeftButton)
    until(lambda: card.resolved, what="the group moved to the Trash")
    assert not os.path.exists(dups["photo"][1]) and os.path.exists(dups["small"])
    assert [p.name for p in (trash_dir / "files").iterdir()] == ["photo1.jpg"]
    assert lib.catalog.id_for_path(dups["photo"][1]) is None
    assert lib.labels()["prints"] == [dups["small"]]
    assert "1 photo moved to the Trash — Ctrl+Z brings it back" in card.summary.text()
    shoot(w, "trashed")
    assert w.count_label.text() == "3 duplicate groups · 2 photos could go"
    until(lambda: w.results.rowCount() == 5, what="the Search grid without the trashed photo")
    assert w.undo_button.isEnabled()

    # Ctrl+Z: back where it was, indexed, its label back; the search shows the group again.
    ctrl_z(w, view)
    until(lambda: lib.catalog.id_for_path(dups["photo"][1]) is not None and view._find is None
          and len([c for c in view.cards if not c.resolved]) == 3, what="the undo and the new search")
    assert os.path.exists(dups["photo"][1]) and not list((trash_dir / "files").iterdir())
    assert lib.labels()["prints"] == [dups["photo"][1]]
    assert w.status.currentMessage() == "1 photo back from the Trash."
    until(lambda: w.results.rowCount() == 6, what="the Search grid with the photo back")

    # Every group at once, with one confirmation naming the count; one Ctrl+Z brings all back.
    seen = answer_confirmation(accept=True)
    QTest.mouseClick(view.trash_all, Qt.MouseButton.LeftButton)
    assert seen and seen[0].startswith("Move 3 files from 3 groups to the Trash?")
    until(lambda: all(c.resolved for c in view.cards), what="every group moved")
    assert sorted(p.name for p in (trash_dir / "files").iterdir()) == ["converted2.png", "copy0.jpg", "small1.jpg"]
    ctrl_z(w, view)
    until(lambda: lib.catalog.counts()[0] == 6 and view._find is None
          and len([c for c in view.cards if not c.resolved]) == 3, what="all three back")
    assert all(os.path.exists(dups[k]) for k in ("copy", "small", "png"))
    assert not w.banner.isVisible()


def test_groups_come_a_page_at_a_time_and_all_groups_means_all(care, dups, trash_dir, monkeypatch):
    import clipdesk.ui.views.duplicates as view_module

    monkeypatch.setattr(view_module, "PAGE", 1)
    view = open_tab(care, "Duplicates")
    set_threshold(view, "0.5")
    find(view)
    assert len(view.cards) == 1 and len(view.groups) == 3
    assert view.more.isVisible() and view.more.text() == "Show 1 more group (2 not shown)"
    QTest.mouseClick(view.more, Qt.MouseButton.LeftButton)
    assert len(view.cards) == 2 and view.more.text() == "Show 1 more group (1 not shown)"
    seen = answer_confirmation(accept=True)
    QTest.mouseClick(view.trash_all, Qt.MouseButton.LeftButton)
    assert seen and seen[0].startswith("Move 3 files from 3 groups to the Trash?")  # the unshown one too
    until(lambda: all(c.resolved for c in view.cards) and len(view.groups) == 2, what="all groups moved")
    assert not view.more.isVisible() and not view.trash_all.isEnabled()
    assert len(list((trash_dir / "files").iterdir())) == 3 and care.lib.catalog.counts()[0] == 3


def test_no_duplicates_says_so(window):
    view = open_tab(window, "Duplicates")
    find(view)
    assert view.cards == [] and view.empty.isVisible()
    assert view.empty.text().startswith("No duplicates among 8 photos at similarity ≥ 0.90.")
    assert window.count_label.text() == "No duplicates" and not view.trash_all.isEnabled()
    shoot(window, "none")


def test_find_shows_progress_and_cancel_stops_it(window, monkeypatch):
    """A long search (a stand-in that reports progress until cancelled): Cancel ends it, nothing shown."""
    from clipdesk.indexer.pipeline import Progress

    def slow_find(threshold, folder=None, progress=None, cancel=None):
        for n in range(10_000):
            progress(Progress("pixels", n, 10_000))
            cancel.check()
            time.sleep(0.01)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(window.lib, "find_duplicates", slow_find)
    view = open_tab(window, "Duplicates")
    QTest.mouseClick(view.find_button, Qt.MouseButton.LeftButton)
    until(lambda: view.progress_bar.isVisible() and view.progress_bar.maximum() == 10_000
          and view.progress_bar.value() > 0, what="progress shown")
    assert view.cancel_button.isVisible() and not view.find_button.isEnabled()
    assert "Checking pixels" in view.progress_bar.format()
    QTest.mouseClick(view.cancel_button, Qt.MouseButton.LeftButton)
    until(lambda: view._find is None, what="the search to stop")
    assert view.find_button.isEnabled() and not view.cancel_button.isVisible() and view.cards == []
    assert window.status.currentMessage() == "Finding duplicates cancelled."
    assert not window.banner.isVisible()


def test_copied_photos_appear_without_a_rescan_and_the_toggle(window, photos, monkeypatch):
    assert window.watch.toggle.isChecked() and window.watch.toggle.objectName() == "watchFolders"
    until(lambda: window.watch.watcher is not None and window.watch.watcher.modes, what="the watcher started")
    calls = []
    monkeypatch.setattr(window, "start_indexing", lambda *a, **k: calls.append(a))  # no rescan allowed
    for i in range(5):
        make_photo(photos / "new" / f"n{i}.jpg", (40 * i, 200, 90), pattern=20 + i)
    until(lambda: window.results.rowCount() == 13, timeout=30, what="5 new photos in the grid")
    assert "5 new photos" in window.status.currentMessage()
    os.remove(photos / "new" / "n0.jpg")
    until(lambda: window.results.rowCount() == 12, timeout=30, what="a deleted photo leaving the grid")
    assert calls == []

    # Off: no more watching (saved); on again: watching again.
    QTest.mouseClick(window.watch.toggle, Qt.MouseButton.LeftButton, pos=QPoint(8, window.watch.toggle.height() // 2))
    assert not window.watch.toggle.isChecked() and window.watch.watcher is None
    assert window.settings.value("watch_folders") in (False, "false")
    make_photo(photos / "new" / "while-off.jpg", (9, 9, 200), pattern=40)
    QTest.qWait(1500)  # past the watcher's 1 s debounce
    assert window.results.rowCount() == 12
    QTest.mouseClick(window.watch.toggle, Qt.MouseButton.LeftButton, pos=QPoint(8, window.watch.toggle.height() // 2))
    until(lambda: window.watch.watcher is not None and window.watch.watcher.modes, what="watching again")
    make_photo(photos / "new" / "after.jpg", (200, 9, 9), pattern=41)
    until(lambda: window.lib.catalog.id_for_path(str(photos / "new" / "after.jpg")) is not None, timeout=30,
          what="a photo added after the toggle")


def test_watcher_batch_and_indexing_job_take_turns(window, photos, tmp_path):
    """A watcher batch while an indexing job runs: both land, nothing fails, no error shown."""
    until(lambda: window.watch.watcher is not None and window.watch.watcher.modes, what="the watcher started")
    other = tmp_path / "other"
    for i in range(6):
        make_photo(other / f"o{i}.jpg", (10, 30 * i, 160), pattern=60 + i)
    for i in range(3):
        make_photo(photos / "more" / f"m{i}.jpg", (160, 30 * i, 10), pattern=70 + i)
    window.add_folders([str(other)])
    until(lambda: window.lib.catalog.counts()[0] == 17 and window._index_job is None, timeout=60,
          what="both the new folder and the watched photos indexed")
    until(lambda: str(other) in window.watch.watcher.modes, what="the new folder watched")
    assert not window.banner.isVisible()


def shoot(w, name: str) -> None:
    """Screenshots of the window at the two sizes every view must work at."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for size in ((1600, 1000), (1024, 640)):
        w.resize(*size)
        QTest.qWait(150)
        w.grab().save(str(SHOTS / f"care-{name}-{size[0]}x{size[1]}.png"))
    w.resize(1280, 800)


def test_watch_updates_become_short_status_lines(qtbot, tmp_path):
    from types import SimpleNamespace

    from PySide6.QtCore import QSettings

    from clipdesk.indexer.pipeline import IndexReport
    from clipdesk.ui.views.watching import FolderWatch, describe
    from clipdesk.ops.watch import WatchUpdate

    assert describe(IndexReport(added=3)) == "3 new photos"
    assert describe(IndexReport(added=1, removed=2)) == "1 new photo, 2 removed"
    assert describe(IndexReport(moved=4, failed=1)) == "4 photos moved, 1 unreadable"
    assert describe(IndexReport(unchanged=9)) == ""
    fw = FolderWatch(SimpleNamespace(lib=None), QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    fw.watcher = object()  # as if running
    lines, changes = [], []
    fw.message.connect(lines.append)
    fw.changed.connect(lambda: changes.append(1))
    for u in (WatchUpdate("error", message="locked"), WatchUpdate("error", message="locked"),
              WatchUpdate("refresh", report=IndexReport(unchanged=5)),
              WatchUpdate("refresh", report=IndexReport(added=2)), WatchUpdate("error", message="locked")):
        fw._on_update(u)
    assert lines == ["Watching folders: locked (will retry)", "2 new photos", "Watching folders: locked (will retry)"]
    assert changes == [1]  # only the batch that changed something refreshes the views
    fw.watcher = None
    fw.close()


def test_a_watcher_that_cannot_start_says_so_once(qtbot, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from PySide6.QtCore import QSettings

    from clipdesk.ui.views.watching import FolderWatch
    from clipdesk.ops.watch import LibraryWatcher

    def refuse(self):
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(LibraryWatcher, "start", refuse)
    lib = SimpleNamespace(folder=str(tmp_path / "lib"), catalog=SimpleNamespace(folders=lambda: [str(tmp_path)]))
    fw = FolderWatch(SimpleNamespace(lib=lib), QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    lines = []
    fw.message.connect(lines.append)
    fw.sync()
    until(lambda: lines, what="the message")
    assert fw.watcher is None and lines == [
        "Cannot watch the library's folders (inotify instance limit reached); rescan to catch up with changes."]
    fw.close()


def test_switching_library_watches_the_new_one(window, photos, tmp_path):
    from clipdesk.library import Library

    until(lambda: window.watch.watcher is not None and str(photos) in window.watch.watcher.modes,
          what="the first library watched")
    first = window.watch.watcher
    other = tmp_path / "other-photos"
    make_photo(other / "x.jpg", (10, 10, 240), pattern=90)
    lib = Library(str(tmp_path / "lib2"), model="test-tiny")
    lib.index([str(other)])
    lib.close()
    assert window.switch_library(str(tmp_path / "lib2"))
    until(lambda: window.watch.watcher is not None and window.watch.watcher is not first
          and list(window.watch.watcher.modes) == [str(other)], what="the new library watched")
    assert first._worker is None  # the old watcher's threads ended
    make_photo(other / "y.jpg", (240, 10, 10), pattern=91)
    until(lambda: window.lib.catalog.id_for_path(str(other / "y.jpg")) is not None, what="a new photo in the new library")
