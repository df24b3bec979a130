"""``clipdesk-gui --selftest OUTDIR``: drive a real session through the real widgets, offscreen.

Steps: open the sample library and index it; text search; similar search from a result;
zero-shot with three categories; create two buckets and fill them by gestures on the Teach tab's own
grid (number key 1 for one, real drag-and-drop events for the other); train; apply. After each step the whole window is saved as
``OUTDIR/NN-step.png``; finally ``OUTDIR/selftest.json`` records each step's outcome and the
longest gap seen by a 10 ms timer on the GUI thread (how long the GUI was ever unresponsive).
"""
from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QElapsedTimer, QEventLoop, QMimeData, QPoint, Qt, QTimer
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent
from PySide6.QtWidgets import QApplication


class StallMeter:
    """Longest interval between ticks of a 10 ms timer on the GUI thread."""

    def __init__(self) -> None:
        self.max_gap_ms = 0.0
        self._clock = QElapsedTimer()
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self._clock.start()
        self._last = 0.0
        self._timer.start()

    def _tick(self) -> None:
        now = self._clock.nsecsElapsed() / 1e6
        if now - self._last > 50 and os.environ.get("CLIPDESK_SELFTEST_DEBUG"):
            traceback.print_stack(limit=1)
            print(f"stall {now - self._last:.0f} ms at {now:.0f} ms", flush=True)
        self.max_gap_ms = max(self.max_gap_ms, now - self._last)
        self._last = now

    def stop(self) -> None:
        self._timer.stop()


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Let the event loop run until ``cond()`` holds (the GUI thread never sleeps for long)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out waiting for {what}")
        pump(2)


def pump(ms: int) -> None:
    """Run the event loop for ``ms``. Not ``QApplication.processEvents()``: in PySide6 6.12 each call
    of it (and of ``QTest.qWait``) drops one reference to Python's ``None`` too many, and a loop
    polling it for a minute kills the interpreter ("deallocating None")."""
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def drop_paths(widget, mime: QMimeData) -> None:
    """Deliver a real drag-enter, drag-move and drop sequence to ``widget``."""
    pos = QPoint(widget.width() // 2, widget.height() // 2)
    actions = Qt.DropAction.CopyAction
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    # Qt's signatures: drag-enter and drag-move take a QPoint, a drop a QPointF.
    for ev in (QDragEnterEvent(pos, actions, mime, buttons, mods),
               QDragMoveEvent(pos, actions, mime, buttons, mods),
               QDropEvent(pos.toPointF(), actions, mime, buttons, mods)):
        QApplication.sendEvent(widget, ev)
        if not ev.isAccepted():
            raise RuntimeError(f"{type(ev).__name__} was not accepted by {widget}")


def run_selftest(app: QApplication, outdir: str, model: str = "test-tiny", library: str | None = None) -> int:
    from PySide6.QtCore import QSettings

    from clipdesk.library import Library

    from .main_window import SAMPLE, MainWindow

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if library is None:
        tmp = tempfile.TemporaryDirectory(prefix="clipdesk-selftest-")
        library = os.path.join(tmp.name, "library")
    settings = QSettings(str(out / "selftest-settings.ini"), QSettings.Format.IniFormat)
    meter = StallMeter()
    steps: list[dict] = []
    savers: list[threading.Thread] = []
    win = MainWindow(Library(library, model=model, model_process=True), settings)
    win.resize(1280, 800)
    win.show()
    meter.start()

    def step(name: str, fn: Callable[[], None]) -> bool:
        t0 = time.perf_counter()
        ok, error = True, None
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - recorded in the report
            ok, error = False, f"{type(e).__name__}: {e}"
            traceback.print_exc()
        t_grab = time.perf_counter()
        win.grab()  # painting requests the visible thumbnails; let them arrive, then shoot
        t1 = time.perf_counter()
        wait_until(lambda: win.thumbnails.idle, 30, "thumbnails")
        t2 = time.perf_counter()
        shot = win.grab().toImage()
        t3 = time.perf_counter()
        # PNG compression takes ~50 ms: done off the GUI thread (QImage may be used from any thread)
        saver = threading.Thread(target=shot.save, args=(str(out / f"{len(steps) + 1:02d}-{name}.png"),))
        saver.start()
        savers.append(saver)
        if os.environ.get("CLIPDESK_SELFTEST_DEBUG"):
            print(f"screenshot of {name}: grab {1000 * (t1 - t_grab):.0f} ms, wait {1000 * (t2 - t1):.0f} ms, "
                  f"grab {1000 * (t3 - t2):.0f} ms", flush=True)
        entry = {"name": name, "ok": ok, "seconds": round(time.perf_counter() - t0, 3)}
        if error:
            entry["error"] = error
        steps.append(entry)
        return ok

    def open_sample() -> None:
        win.welcome.sample_button.click()
        wait_until(lambda: win._index_job is None and win.lib.catalog.counts()[0] > 0, 300, "indexing")
        n = win.lib.catalog.counts()[0]
        expected = sum(1 for p in SAMPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if n != expected:
            raise AssertionError(f"indexed {n} of {expected} sample photos")
        wait_until(lambda: win.lib.encoder_loaded, 120, "model")
        wait_until(lambda: win.results.rowCount() == n, 30, "the library shown by date")

    def landed(before: int, what: str) -> None:
        """Wait for the search to land; when no score stood out (the demo model's random scores
        rarely do), click "show all" on the count line, as a person would."""
        from PySide6.QtTest import QTest

        view = win.search_view
        wait_until(lambda: view.serial > before and view.landed == view.serial, 60, what)
        if win.results.rowCount() == 0 and view._all:
            QTest.mouseClick(win.count_label, Qt.MouseButton.LeftButton)
        wait_until(lambda: win.results.rowCount() > 0, 10, what)

    def search(query: str) -> Callable[[], None]:
        def run() -> None:
            win.search_bar.setText(query)
            before = win.search_view.serial
            win.search_bar.returnPressed.emit()
            landed(before, "results")
        return run

    def similar() -> None:
        first = win.results.item(0).path
        win.grid.setCurrentIndex(win.results.index(0))
        before = win.search_view.serial
        win.search_similar(first)
        landed(before, "similar results")
        if first in {it.path for it in win.results.items()}:
            raise AssertionError("the example photo is among its own similar results")
        win.grid.setCurrentIndex(win.results.index(0))

    def zero_shot() -> None:
        sort = win.sort_view
        win.tabs.setCurrentIndex(1)
        sort.categories.setPlainText("bird\nfish\ntool")
        sort.classify_button.click()
        wait_until(lambda: sort.category_list.count() > 0 and sort.classify_button.isEnabled(), 60, "classification")
        if len(sort.classified) != win.lib.catalog.counts()[0]:
            raise AssertionError("not every photo was classified")

    def buckets() -> None:
        # through gestures only: number key 1 for Anna, a drag-and-drop for Ben
        from PySide6.QtTest import QTest

        teach = win.teach_view
        win.tabs.setCurrentIndex(2)
        for name in ("Anna", "Ben"):
            teach.bucket_name.setText(name)
            teach.bucket_name.returnPressed.emit()
        teach.source.setCurrentIndex(1)  # the whole library
        wait_until(lambda: teach.pick_results.rowCount() > 0, 30, "the library in the Teach grid")
        items = teach.pick_results.items()
        for key, name, folder in ((Qt.Key.Key_1, "Anna", "bird"), (None, "Ben", "fish")):
            rows = [i for i, it in enumerate(items) if f"{os.sep}{folder}{os.sep}" in it.path][:3]
            if len(rows) < 3:
                rows = [i for i in range(len(items)) if i not in rows][:3]
            if key is not None:
                teach.grid.select_rows(rows)
                teach.grid.setFocus()
                QTest.keyClick(teach.grid, key)
            else:
                drop_paths(win.buckets[name], teach.pick_results.mimeData([teach.pick_results.index(r) for r in rows]))
        wait_until(lambda: all(len(win.buckets[n].paths()) == 3 for n in ("Anna", "Ben")), 60, "bucket contents")

    def train() -> None:
        teach = win.teach_view
        teach.train_button.click()
        wait_until(lambda: teach.train_button.isEnabled() and teach.train_result.text().startswith("Trained on"), 60, "training")

    def apply() -> None:
        teach = win.teach_view
        teach.apply_button.click()
        wait_until(lambda: teach.apply_button.isEnabled() and teach.predictions, 60, "predictions")
        if len(teach.predictions) != win.lib.catalog.counts()[0]:
            raise AssertionError("not every photo got a prediction")

    wait_until(lambda: win.isVisible(), 10, "window")
    step("welcome", lambda: None)
    for name, fn in (("index-sample", open_sample), ("text-search", search("a bird on a branch")),
                     ("similar-search", similar), ("zero-shot", zero_shot), ("buckets", buckets),
                     ("train", train), ("apply", apply)):
        if not step(name, fn):
            break
    meter.stop()
    for saver in savers:
        saver.join()
    win.close()
    report = {"ok": all(s["ok"] for s in steps) and len(steps) == 8, "steps": steps,
              "max_gui_stall_ms": round(meter.max_gap_ms, 1)}
    (out / "selftest.json").write_text(json.dumps(report, indent=1))
    if tmp is not None:
        tmp.cleanup()
    return 0 if report["ok"] else 1
