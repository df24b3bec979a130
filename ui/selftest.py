"""``clipdesk-gui --selftest OUTDIR``: drive a real session through the real widgets, offscreen.

Steps: open the sample library and index it; text search; similar search from a result;
zero-shot with three categories; create two buckets and drop three photos into each through real
drag-and-drop events; train; apply. After each step the whole window is saved as
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

from PySide6.QtCore import QElapsedTimer, QMimeData, QPoint, Qt, QTimer
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
        QApplication.processEvents()
        time.sleep(0.002)


def drop_paths(widget, mime: QMimeData) -> None:
    """Deliver a real drag-enter, drag-move and drop sequence to ``widget``."""
    pos = QPoint(widget.width() // 2, widget.height() // 2)
    actions = Qt.DropAction.CopyAction
    buttons, mods = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    for ev in (QDragEnterEvent(pos.toPointF(), actions, mime, buttons, mods),
               QDragMoveEvent(pos.toPointF(), actions, mime, buttons, mods),
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
        win.open_sample.click()
        wait_until(lambda: win._index_job is None and win.lib.catalog.counts()[0] > 0, 300, "indexing")
        n = win.lib.catalog.counts()[0]
        expected = sum(1 for p in SAMPLE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if n != expected:
            raise AssertionError(f"indexed {n} of {expected} sample photos")
        wait_until(lambda: win.lib.encoder_loaded, 120, "model")
        win.refresh_library_views()

    def search(query: str) -> Callable[[], None]:
        def run() -> None:
            win.search_bar.setText(query)
            before = win._search_serial
            win.search_bar.returnPressed.emit()
            wait_until(lambda: win._search_serial > before and win.results.rowCount() > 0, 60, "results")
        return run

    def similar() -> None:
        first = win.results.item(0).path
        win.grid.setCurrentIndex(win.results.index(0))
        before = win._search_serial
        win.search_similar(first)
        wait_until(lambda: win._search_serial > before and win.results.rowCount() > 0
                   and win.results.item(0).path != first, 60, "similar results")
        win.grid.setCurrentIndex(win.results.index(0))

    def zero_shot() -> None:
        win.tabs.setCurrentIndex(1)
        win.categories.setPlainText("bird\nfish\ntool")
        win.classify_button.click()
        wait_until(lambda: win.category_list.count() > 0 and win.classify_button.isEnabled(), 60, "classification")
        if len(win._classified) != win.lib.catalog.counts()[0]:
            raise AssertionError("not every photo was classified")

    def buckets() -> None:
        win.tabs.setCurrentIndex(2)
        for name in ("Anna", "Ben"):
            win.bucket_name.setText(name)
            win.bucket_name.returnPressed.emit()
        items = win.results.items()
        for name, folder in (("Anna", "bird"), ("Ben", "fish")):
            rows = [i for i, it in enumerate(items) if f"{os.sep}{folder}{os.sep}" in it.path][:3]
            if len(rows) < 3:
                rows = [i for i in range(len(items)) if i not in rows][:3]
            mime = win.results.mimeData([win.results.index(r) for r in rows])
            drop_paths(win.buckets[name], mime)
        wait_until(lambda: all(len(win.buckets[n].paths()) == 3 for n in ("Anna", "Ben")), 60, "bucket contents")

    def train() -> None:
        win.train_button.click()
        wait_until(lambda: win.train_button.isEnabled() and "accuracy" in win.train_result.text(), 60, "training")

    def apply() -> None:
        win.apply_button.click()
        wait_until(lambda: win.apply_button.isEnabled() and win._predictions, 60, "predictions")
        if len(win._predictions) != win.lib.catalog.counts()[0]:
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
