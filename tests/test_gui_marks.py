"""Ratings, flags and colour labels in the app (issue 27 item 5): the marks filter bar in Search and
Teach, kept per library; "Add all shown to bucket"; title and description in the preview.
Offscreen, real clicks and keys on the real widgets; the marks are the labels ``tags import`` makes."""
from pathlib import Path

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from conftest import make_window, until  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]


def names(model) -> list[str]:
    return sorted(Path(it.path).name for it in model.items())


def mark(w, photos: Path) -> dict[str, str]:
    """img_0 ★5 picked red, img_1 ★4, img_2 ★2 red, img_3 rejected, img_4 picked; the rest unmarked."""
    p = {f"img_{i}": str(next(photos.rglob(f"img_{i}.jpg"))) for i in range(8)}
    lib = w.lib
    for label, who in (("rating/5", ["img_0"]), ("rating/4", ["img_1"]), ("rating/2", ["img_2"]),
                       ("flag/picked", ["img_0", "img_4"]), ("flag/rejected", ["img_3"]),
                       ("color/red", ["img_0", "img_2"])):
        # as ``tags import`` stores them (names with "/", which a bucket name cannot have)
        lib.catalog.add_to_label(label, [lib.catalog.id_for_path(p[n]) for n in who])
    w.labels.refresh()
    return p


def landed(w, before: int) -> None:
    until(lambda: w.search_view.landed > before, what="the search view reloaded")


def choose_rating(combo, stars: int) -> None:
    """Tab-reachable combo, chosen with the keyboard as a person would (focus, then Down keys)."""
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key.Key_Home)
    for _ in range(stars):
        QTest.keyClick(combo, Qt.Key.Key_Down)


def test_rating_filter_shows_only_rated_photos_and_keeps_grid_focus(window, photos):
    w = window
    mark(w, photos)
    bar = w.search_view.filter_bar
    before = w.search_view.landed
    choose_rating(bar.rating, 4)
    landed(w, before)
    until(lambda: names(w.results) == ["img_0.jpg", "img_1.jpg"], what="only the 4- and 5-star photos")
    assert "2 photos" in bar.count.text() and "★★★★" in bar.count.text()
    assert w.search_view.count_text == "2 photos"

    # a click on Picked only narrows further and leaves the keys on the grid
    w.search_view.grid.setFocus()
    before = w.search_view.landed
    QTest.mouseClick(bar.picked, Qt.MouseButton.LeftButton)
    landed(w, before)
    until(lambda: names(w.results) == ["img_0.jpg"], what="4+ stars and picked")
    assert bar.picked.isChecked() and bar.picked.focusPolicy() == Qt.FocusPolicy.TabFocus
    assert w.focusWidget() is not bar.picked

    # the same filter shows in Teach, whose whole-library grid follows it
    teach = w.teach_view
    assert teach.filter_bar.rating.currentIndex() == 4 and teach.filter_bar.picked.isChecked()
    w.tabs.setCurrentWidget(teach)
    teach.source.setCurrentIndex(1)
    until(lambda: names(teach.pick_results) == ["img_0.jpg"], what="Teach's library grid filtered")

    # back to no filter: all 8
    before = w.search_view.landed
    choose_rating(teach.filter_bar.rating, 0)
    QTest.mouseClick(teach.filter_bar.picked, Qt.MouseButton.LeftButton)
    landed(w, before)
    until(lambda: w.results.rowCount() == 8 and teach.pick_results.rowCount() == 8, what="the filter off")
    assert bar.count.text() == ""


def test_hide_rejected_and_colour_and_text_search_among_marked(window, photos):
    w = window
    mark(w, photos)
    bar = w.search_view.filter_bar
    before = w.search_view.landed
    QTest.mouseClick(bar.rejected, Qt.MouseButton.LeftButton)
    landed(w, before)
    until(lambda: w.results.rowCount() == 7 and "img_3.jpg" not in names(w.results), what="rejected hidden")
    assert w.search_view.count_text == "7 photos"
    w.search_view.run()  # the library's colours are read in a worker when it browses
    until(lambda: bar.color.findData("red") >= 0, what="the colour labels offered")
    before = w.search_view.landed
    bar.color.setCurrentIndex(bar.color.findData("red"))
    landed(w, before)
    until(lambda: names(w.results) == ["img_0.jpg", "img_2.jpg"], what="red labels only")
    # a text search searches among those photos only (the core's only=), with the count of them
    before = w.search_view.landed
    w.search_view.set_text("a red photo")
    landed(w, before)
    until(lambda: w.search_view.landed > before, what="search")
    assert set(names(w.results)) <= {"img_0.jpg", "img_2.jpg"}
    assert w.search_view._library_size == 2


def test_filter_is_kept_per_library(qtbot, tmp_path, photos, no_thread_leaks):
    from clipdesk.ui.views.filters import Marks

    w = make_window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        w.add_folders([str(photos)])
    mark(w, photos)
    w.ctx.marks.set(Marks(min_rating=5, hide_rejected=True))
    until(lambda: names(w.results) == ["img_0.jpg"], what="5 stars")
    other = tmp_path / "other"
    assert w.switch_library(str(other))
    assert w.ctx.marks.marks == Marks()  # the other library has no filter of its own
    assert w.search_view.filter_bar.rating.currentIndex() == 0
    assert w.switch_library(str(tmp_path / "lib"))
    assert w.ctx.marks.marks == Marks(min_rating=5, hide_rejected=True)
    assert w.search_view.filter_bar.rating.currentIndex() == 5 and w.search_view.filter_bar.rejected.isChecked()
    until(lambda: names(w.results) == ["img_0.jpg"], what="the filter back with its library")
    settings = w.settings
    w.shutdown()
    w.close()
    # a relaunch finds it too
    from clipdesk.library import Library
    from clipdesk.ui.main_window import MainWindow

    w2 = MainWindow(Library(str(tmp_path / "lib"), model="test-tiny"), settings)
    qtbot.addWidget(w2)
    assert w2.ctx.marks.marks == Marks(min_rating=5, hide_rejected=True)
    until(lambda: names(w2.results) == ["img_0.jpg"], what="relaunch filtered")
    w2.shutdown()


def test_stored_filter_that_is_not_ours_is_the_empty_filter():
    from clipdesk.ui.views.filters import Marks

    assert Marks.from_json("not json") == Marks()
    assert Marks.from_json('{"min_rating": 9, "picked": "yes", "color": 3}') == Marks()
    assert Marks.from_json('{"min_rating": 3, "color": "Red"}') == Marks(min_rating=3, color="red")
    assert Marks.from_json(Marks(2, True, True, "blue").to_json()) == Marks(2, True, True, "blue")


def test_add_all_shown_to_bucket_teaches_from_my_five_star_photos(window, photos):
    from clipdesk.ui.views.filters import Marks

    w = window
    p = mark(w, photos)
    w.labels.create("best")
    teach = w.teach_view
    w.tabs.setCurrentWidget(teach)
    teach.source.setCurrentIndex(1)
    w.ctx.marks.set(Marks(min_rating=4))
    until(lambda: names(teach.pick_results) == ["img_0.jpg", "img_1.jpg"], what="4+ stars in Teach")
    menu = teach.filter_bar.add_all.menu()
    menu.aboutToShow.emit()
    act = next(a for a in menu.actions() if a.text().startswith("best"))
    act.trigger()
    assert sorted(w.labels.paths("best")) == sorted([p["img_0"], p["img_1"]])
    w.undo_stack.undo()  # one undoable change, as every bucket change
    assert w.labels.paths("best") == []

    # the grid's own gestures do the same: select all shown (Ctrl+A), then the bucket's number key
    teach.grid.setFocus()
    QTest.keyClick(teach.grid, Qt.Key.Key_A, Qt.KeyboardModifier.ControlModifier)
    n = w.labels.names().index("best") + 1
    QTest.keyClick(teach.grid, Qt.Key.Key_0 + n)
    until(lambda: sorted(w.labels.paths("best")) == sorted([p["img_0"], p["img_1"]]), what="Ctrl+A then number")


XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/"
 xmp:Rating="4" xmp:Label="Red">
<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Harbour at &lt;dawn&gt;</rdf:li></rdf:Alt></dc:title>
<dc:description><rdf:Alt><rdf:li xml:lang="x-default">Boats, fog and gulls</rdf:li></rdf:Alt></dc:description>
</rdf:Description></rdf:RDF></x:xmpmeta>"""


def test_preview_shows_title_and_description_read_in_a_worker(window, photos, monkeypatch):
    import threading

    from clipdesk.ui.views import preview as preview_mod

    w = window
    photo = next(photos.rglob("img_5.jpg"))
    Path(str(photo) + ".xmp").write_text(XMP, encoding="utf-8")
    threads = []
    real = preview_mod.read_photo_info
    monkeypatch.setattr(preview_mod, "read_photo_info",
                        lambda p: (threads.append(threading.current_thread()), real(p))[1])
    pane = w.search_view.preview
    row = next(i for i, it in enumerate(w.results.items()) if it.path == str(photo))
    w.search_view.grid.setCurrentIndex(w.results.index(row))
    until(lambda: pane.about.isVisible() and "Harbour" in pane.about.text(), what="the title shown")
    text = pane.about.text()
    assert "<b>Harbour at &lt;dawn&gt;</b>" in text  # the title's own markup is text, not HTML
    assert "Boats, fog and gulls" in text and "★★★★" in text and "red label" in text
    assert threads and threads[0] is not threading.main_thread()
    # a photo with nothing written about it shows no such lines
    other = next(i for i, it in enumerate(w.results.items()) if it.path != str(photo))
    w.search_view.grid.setCurrentIndex(w.results.index(other))
    until(lambda: len(threads) >= 2 and not w.jobs._active, what="the other photo's info read")
    assert not pane.about.isVisible()


def test_browse_only_and_exclude_in_the_core(library, photos):
    from clipdesk.tags import mark_colors, mark_filter

    library.index([str(photos)])
    rows, total = library.browse()
    assert total == 8
    by = {Path(r.path).name: r.id for r in rows}
    library.catalog.add_to_label("rating/3", [by["img_1.jpg"], by["img_2.jpg"]])
    library.catalog.add_to_label("flag/rejected", [by["img_2.jpg"]])
    library.catalog.add_to_label("color/blue", [by["img_1.jpg"]])
    only, exclude = mark_filter(library, rating=3, hide_rejected=True)
    assert only == {by["img_1.jpg"], by["img_2.jpg"]} and exclude == {by["img_2.jpg"]}
    some, n = library.browse(only=only, exclude=exclude)
    assert [Path(r.path).name for r in some] == ["img_1.jpg"] and n == 1
    rest, n = library.browse(limit=3, exclude=exclude)
    assert n == 7 and len(rest) == 3 and by["img_2.jpg"] not in {r.id for r in rest}
    assert mark_colors(library) == ["blue"]
    assert mark_filter(library, color="BLUE")[0] == {by["img_1.jpg"]}
