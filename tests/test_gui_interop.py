"""Library interop in the app: Do ▸ Write tags… / Copy to folders… (preview, worker, undo), and
RAW+JPEG twins shown once by ``clipdesk search``. Offscreen, real clicks on the real widgets."""
import json
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog  # noqa: E402

from conftest import until, when_shown  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]


def jpgs(folder: Path) -> list[Path] | None:
    """The photos under ``folder``; None while a worker is removing folders under the scan."""
    try:
        return list(folder.rglob("*.jpg"))
    except FileNotFoundError:
        return None


def classified(w):
    sort = w.sort_view
    w.tabs.setCurrentWidget(sort)
    sort.categories.setPlainText("red\ngreen\nblue")
    QTest.mouseClick(sort.classify_button, Qt.MouseButton.LeftButton)
    until(lambda: sort.classified and sort.classify_button.isEnabled(), what="classify")
    sort.grid.clearSelection()
    sort.actions_bar.threshold.setValue(0)  # no selection: every row at/above 0 %
    return sort


def answer_plan(apply: bool) -> list[str]:
    """When the preview dialog opens, note its text and click Apply (or Cancel)."""
    seen: list[str] = []

    def find():
        return next((d for d in QApplication.topLevelWidgets()
                     if isinstance(d, QDialog) and d.objectName() == "planDialog" and d.isVisible()), None)

    def click(dlg):
        seen.append(dlg.findChild(object, "planText").text())
        seen.append(dlg.findChild(object, "planApply").isEnabled())
        QTest.mouseClick(dlg.findChild(object, "planApply" if apply else "planCancel"), Qt.MouseButton.LeftButton)

    when_shown(find, click, within=30.0)  # the plan is made in a worker: as long as the test's own wait
    return seen


def test_write_tags_from_the_sort_tab_then_undo(window):
    from clipdesk import tags

    sort = classified(window)
    bar = sort.actions_bar
    action = next(a for a in bar.more.actions() if a.objectName() == "writeTagsAction")
    assert action.isEnabled() and not bar.undo_last.isEnabled()
    rows = [(p, c) for p, c, _ in sort._rows()]
    assert len(rows) == 8
    seen = answer_plan(apply=False)  # Cancel changes nothing
    action.trigger()
    assert seen and "8 sidecars created, 0 updated" in seen[0] and "clipdesk/" in seen[0] and seen[1] is True
    assert not any(Path(tags.sidecar_target(p)).exists() for p, _ in rows)
    seen = answer_plan(apply=True)
    action.trigger()
    until(lambda: bar.undo_last.isEnabled(), what="tags written")
    for p, c in rows:
        keywords, problems = tags.read_photo_keywords(p)
        assert f"clipdesk/{c}" in keywords and not problems
    assert "Tags written: 0 sidecars updated, 8 created" in window.status.currentMessage()
    # a second write changes nothing: the preview says so and Apply is off
    seen = answer_plan(apply=False)
    action.trigger()
    assert "0 sidecars created, 0 updated, 8 unchanged" in seen[0] and seen[1] is False
    bar.undo_last.trigger()
    until(lambda: not any(Path(tags.sidecar_target(p)).exists() for p, _ in rows), what="undo")
    until(lambda: "Undid the tags write" in window.status.currentMessage(), what="undo message")


# Intermittent in full parallel runs on 2 cores (once in about ten runs, 2026-12-06: "timed out
# waiting for copied"; 34 copies in parallel runs, 16 beside Ray's tests, did not reproduce it
# later that day): one rerun, and a failure now says what the app said and which jobs were running.
@pytest.mark.flaky(reruns=1)
def test_copy_to_folders_puts_copies_in_category_folders_and_keeps_originals(window, tmp_path, monkeypatch):
    said = []
    window.status.messageChanged.connect(lambda m: said.append(m) if m else None)
    sort = classified(window)
    bar = sort.actions_bar
    dest = tmp_path / "sorted"
    monkeypatch.setattr("clipdesk.ui.views.actions.ask_folder", lambda *a: str(dest))
    rows = sort._rows()
    seen = answer_plan(apply=True)
    next(a for a in bar.more.actions() if a.objectName() == "copyToFoldersAction").trigger()
    try:
        until(lambda: bar.undo_last.isEnabled(), what="copied")
    except AssertionError as e:
        raise AssertionError(f"{e}; the plan dialog: {seen}; the status lines: {said}; "
                             f"jobs running: {[j.name for j in window.jobs.active]}") from None
    assert seen and f"Copy 8 photos into {dest}" in seen[0]
    for p, c, _ in rows:
        assert Path(p).is_file()
        copy = dest / c / Path(p).name
        assert copy.is_file() and copy.read_bytes() == Path(p).read_bytes()
    assert len(list(dest.rglob("*.jpg"))) == 8
    bar.undo_last.trigger()
    until(lambda: jpgs(dest) == [], what="copies removed")
    assert all(Path(p).is_file() for p, _, _ in rows)


def test_cancelled_copy_keeps_what_was_done_and_undo_removes_it(window, tmp_path, monkeypatch):
    from clipdesk import organise

    sort = classified(window)
    bar = sort.actions_bar
    dest = tmp_path / "sorted"
    monkeypatch.setattr("clipdesk.ui.views.actions.ask_folder", lambda *a: str(dest))
    real = organise.apply_sort

    def cancelled_after_one(lib, plan, progress=None, cancel=None):
        def step(p):
            progress(p)
            cancel.cancel()  # as the status bar's Cancel does, after the first photo

        return real(lib, plan, progress=step, cancel=cancel)

    monkeypatch.setattr(organise, "apply_sort", cancelled_after_one)
    answer_plan(apply=True)
    next(a for a in bar.more.actions() if a.objectName() == "copyToFoldersAction").trigger()
    until(lambda: bar.undo_last.isEnabled(), what="cancelled")
    assert "cancelled" in window.status.currentMessage()
    assert len(list(dest.rglob("*.jpg"))) == 1
    bar.undo_last.trigger()
    until(lambda: jpgs(dest) == [], what="the one copy removed")


def test_copy_into_the_library_folder_is_one_clear_error(window, monkeypatch):
    sort = classified(window)
    errors = []
    window.ctx.error.connect(lambda m, k, c: errors.append((m, c)))
    monkeypatch.setattr("clipdesk.ui.views.actions.ask_folder", lambda *a: window.lib.folder)
    next(a for a in sort.actions_bar.more.actions() if a.objectName() == "moveToFoldersAction").trigger()
    assert len(errors) == 1 and "inside the library folder" in errors[0][0] and errors[0][1] == "interop"
    assert window.teach_view.actions_bar.write_tags.isEnabled()  # the Teach tab's bar has them too


def test_cli_search_shows_a_raw_jpeg_pair_once(tmp_path, library, capsys):
    from clipdesk.cli import main
    from conftest import make_photo
    from test_formats import write_dng

    folder = tmp_path / "camera"
    write_dng(folder / "IMG_0001.DNG")
    make_photo(folder / "IMG_0001.JPG", (220, 220, 220))
    make_photo(folder / "IMG_0002.JPG", (20, 20, 20), pattern=2)
    assert library.index([str(folder)]).added == 3
    assert len(library.search("a photo", k=10)) == 3
    library.close()
    capsys.readouterr()
    assert main(["--library", library.folder, "search", "a photo", "-k", "10", "--json"]) == 0
    stems = [Path(r["path"]).stem for r in json.loads(capsys.readouterr().out)]
    assert sorted(stems) == ["IMG_0001", "IMG_0002"]
