"""GUI tests (offscreen, pytest-qt): item models, workers, drag-and-drop into buckets, self-test."""
import json
import os
import subprocess
import sys
import time

import pytest

pytest.importorskip("pytestqt")

from clipdesk.errors import QueryError  # noqa: E402
from clipdesk.ui.models import MIME_IDS, Item, ResultsModel, Thumbnails, paths_from_mime  # noqa: E402
from clipdesk.ui.workers import Jobs  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def jobs(qtbot, no_thread_leaks):
    j = Jobs()
    yield j
    assert j.shutdown(10000)
    assert j.pool.activeThreadCount() == 0


def test_results_model_roles_and_drag_data(qtbot, tmp_path):
    from conftest import make_photo

    paths = [str(make_photo(tmp_path / f"p{i}.jpg", (i * 40, 50, 90), pattern=i)) for i in range(3)]
    thumbs = Thumbnails(str(tmp_path / "thumbs"), 64)
    model = ResultsModel(thumbs)
    model.set_items([Item(p, 0.5 - i / 10) for i, p in enumerate(paths)])
    assert model.rowCount() == 3
    idx = model.index(1)
    assert model.data(idx, ResultsModel.PathRole) == paths[1]
    assert "score 0.400" in model.data(idx, 3)  # ToolTipRole
    with qtbot.waitSignal(model.dataChanged, timeout=10000):
        model.data(idx, 1)  # DecorationRole: placeholder now, the real thumbnail later
    assert not model.data(idx, 1).isNull()
    assert thumbs.wait(5000)
    assert os.listdir(tmp_path / "thumbs")  # cached on disk inside the given folder
    mime = model.mimeData([model.index(0), model.index(2)])
    assert [u.toLocalFile() for u in mime.urls()] == [paths[0], paths[2]]
    assert mime.hasFormat(MIME_IDS) and paths_from_mime(mime) == [paths[0], paths[2]]


def test_worker_delivers_progress_and_result(qtbot, jobs):
    from clipdesk.indexer.pipeline import Progress

    seen = []

    def job(n, progress=None, cancel=None):
        for i in range(n):
            progress(Progress("x", i + 1, n))
        return n * 2

    results = []
    finished = []
    # on_finished, not a waitSignal on the worker: it may finish before a waitSignal connects
    jobs.start(job, 3, on_progress=seen.append, on_result=results.append, on_finished=lambda: finished.append(1))
    qtbot.waitUntil(lambda: results == [6] and finished == [1], timeout=10000)
    assert [p.done for p in seen] == [1, 2, 3]


def test_worker_cancel_and_errors(qtbot, jobs):
    def slow(progress=None, cancel=None):
        for _ in range(500):
            cancel.check()
            time.sleep(0.01)
        return "finished"

    cancelled, results, errors = [], [], []
    w = jobs.start(slow, on_result=results.append, on_cancelled=lambda: cancelled.append(True))
    qtbot.wait(50)
    w.cancel()
    qtbot.waitUntil(lambda: cancelled == [True], timeout=5000)
    assert results == []

    def user_error():
        raise QueryError("The query is empty.")

    def bug():
        raise ZeroDivisionError("oops")

    jobs.start(user_error, on_error=lambda m, k: errors.append((m, k)))
    jobs.start(bug, on_error=lambda m, k: errors.append((m, k)))
    qtbot.waitUntil(lambda: len(errors) == 2, timeout=5000)
    assert ("The query is empty.", "QueryError") in errors
    assert any(k == "bug" and "ZeroDivisionError" in m for m, k in errors)


def test_a_job_no_longer_counts_as_running_when_its_outcome_arrives(qtbot, jobs):
    """A result, error or cancel slot (one that enables Undo, say) sees the job as over: an action
    the user starts from it is not refused as "still running" (CI caught the tags write's Undo
    racing with the job's separate finished signal)."""
    seen = []

    def note(kind):
        return lambda *a: seen.append((kind, [w.name for w in jobs.active]))

    def boom():
        raise QueryError("no")

    def cancelled(cancel=None):
        cancel.cancel()

    busy = []
    jobs.busy_changed.connect(busy.append)
    jobs.start(lambda: 1, name="ok", on_result=note("result"))
    jobs.start(boom, name="bad", on_error=note("error"))
    jobs.start(cancelled, name="stopped", on_cancelled=note("cancelled"))
    qtbot.waitUntil(lambda: len(seen) == 3 and busy[-1] is False, timeout=10000)
    for kind, running in seen:
        name = {"result": "ok", "error": "bad", "cancelled": "stopped"}[kind]
        assert name not in running, (kind, running)
    assert not jobs.active


def test_drag_and_drop_into_buckets(qtbot, window, photos, tmp_path):
    from conftest import make_photo

    from clipdesk.ui.selftest import drop_paths

    window.add_bucket("Anna")
    assert "Anna" in window.buckets
    with qtbot.waitSignal(window.search_finished, timeout=30000):
        window.search_bar.setText("anything")
        window.run_search()
    model = window.results
    assert model.rowCount() == 8  # 8 scores are too few to cut: all shown
    drop_paths(window.buckets["Anna"], model.mimeData([model.index(0), model.index(1)]))
    qtbot.waitUntil(lambda: len(window.buckets["Anna"].paths()) == 2, timeout=30000)
    dragged = {model.item(0).path, model.item(1).path}
    assert set(window.lib.labels()["Anna"]) == dragged == set(window.buckets["Anna"].paths())
    # a file from the "file manager" (URL only), outside the library: indexed, then labelled
    outside = make_photo(tmp_path / "elsewhere" / "new.jpg", (1, 2, 3), pattern=77)
    from PySide6.QtCore import QMimeData, QUrl

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(outside))])
    drop_paths(window.buckets["Anna"], mime)
    qtbot.waitUntil(lambda: len(window.buckets["Anna"].paths()) == 3, timeout=30000)
    assert str(outside) in window.lib.labels()["Anna"]


def test_search_errors_go_to_the_banner(qtbot, window):
    from clipdesk.query import Term

    with qtbot.waitSignal(window.job_failed, timeout=10000) as blocker:
        window.search_view.images = [(1.0, "/nonexistent/photo.jpg")]
        window.search_view.run()
    assert "cannot use /nonexistent/photo.jpg" in blocker.args[0].lower()
    assert window.banner.isVisible() and window.banner.cause == "search"
    # the cause goes away (a search that works): the banner clears itself
    with qtbot.waitSignal(window.search_finished, timeout=10000):
        window.search_view.set_text("red")
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=5000)
    assert Term  # the view holds its query as terms, never as text with paths


def test_selftest_command(tmp_path):
    from conftest import SUBPROCESS_TIMEOUT

    out = tmp_path / "st"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    p = subprocess.run([sys.executable, "-m", "clipdesk.ui.app", "--selftest", str(out), "--model", "test-tiny"],
                       capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT, env=env)
    report = json.loads((out / "selftest.json").read_text())
    assert p.returncode == 0, (report, p.stderr[-2000:])
    assert report["ok"] and [s["name"] for s in report["steps"]] == [
        "welcome", "index-sample", "text-search", "similar-search", "zero-shot", "buckets", "train", "apply"]
    assert all((out / f"{i + 1:02d}-{s['name']}.png").stat().st_size > 10_000 for i, s in enumerate(report["steps"]))
    assert report["max_gui_stall_ms"] > 0
