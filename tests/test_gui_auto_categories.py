"""The Teach tab's auto-apply row sets actions per category (issue 28): the category picker, each
category's own options (a keyword for one, nothing for the other), and "Every category"."""
from __future__ import annotations

import pytest

pytest.importorskip("PySide6")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402

from conftest import until  # noqa: E402
from test_gui_auto import trained_window  # noqa: E402

pytestmark = [pytest.mark.gui, pytest.mark.qt_log_ignore("This plugin does not support")]


def test_the_options_apply_to_the_category_picked(window, tmp_path):
    from clipdesk.ops import auto

    w, t, _ = trained_window(window)
    row = t.auto_row
    picks = [row.category.itemText(i) for i in range(row.category.count())]
    assert picks == ["Every category", "A", "B"]  # filled from the trained probe's categories
    row.keep.setChecked(True)  # on, with nothing written for any category
    until(lambda: "teach" in auto.load_store(w.lib)["auto"] and not w.jobs.active, what="the setting saved")

    row.category.setCurrentIndex(2)  # B only: a keyword, and copies into a folder
    assert not row.write_tags.isChecked()
    QTest.mouseClick(row.write_tags, Qt.MouseButton.LeftButton)
    until(lambda: "B" in auto.load_store(w.lib)["auto"]["teach"].categories and not w.jobs.active,
          what="B's options saved")
    row.set_sort("copy", str(tmp_path / "sorted"))
    until(lambda: auto.load_store(w.lib)["auto"]["teach"].categories["B"].sort_into and not w.jobs.active,
          what="B's sort saved")
    s = auto.load_store(w.lib)["auto"]["teach"]
    assert s.default == auto.Actions() and set(s.categories) == {"B"}
    assert s.actions("B") == auto.Actions(True, str(tmp_path / "sorted"), "copy")
    assert s.actions("A") == auto.Actions()
    assert "'B' (keyword, copy into" in w.status.currentMessage()

    row.category.setCurrentIndex(1)  # A shows its own (the default's) options, not B's
    assert not row.write_tags.isChecked() and row.sort.currentIndex() == 0
    row.category.setCurrentIndex(2)
    assert row.write_tags.isChecked() and row.sort.currentIndex() == 1
    row.category.setCurrentIndex(0)  # every category: the default changes, B keeps its own
    QTest.mouseClick(row.write_tags, Qt.MouseButton.LeftButton)
    until(lambda: auto.load_store(w.lib)["auto"]["teach"].default.write_tags and not w.jobs.active,
          what="the default saved")
    s = auto.load_store(w.lib)["auto"]["teach"]
    assert s.actions("A") == auto.Actions(True) and s.actions("B").sort_into == str(tmp_path / "sorted")
