"""The app on a million-photo library: how long the GUI thread stalls (issue 12.3 seen from the
window). Offscreen Qt, the cached synthetic 1M library of bench_scale.py (its photos do not exist
on disk, so thumbnails are placeholders: what is measured is the window's own work).

A timer on the GUI thread ticks every 10 ms; the longest gap between ticks is the longest time a
user's clicks and repaints would have waited. Measured: the window opening on the library, Sort's
Classify (the pass runs on a worker), and switching between the categories it found.

    python benchmarks/bench_gui_scale.py        # builds the 1M library first if it is not cached
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import ARCH, OUT, build_catalog  # noqa: E402
from benchmeta import Watch  # noqa: E402


def measure(folder: str) -> dict:
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    from clipdesk.library import Library
    from clipdesk.ui.main_window import MainWindow
    from clipdesk.ui.selftest import wait_until

    beats: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start(10)

    def stall(since: float) -> float:
        b = [x for x in beats if x >= since]
        return round(max((y - x for x, y in zip(b, b[1:])), default=0.0), 2)

    out: dict = {}
    t = time.perf_counter()
    lib = Library(folder, model=ARCH)
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "s.ini"), QSettings.Format.IniFormat)
    win = MainWindow(lib, settings)
    win.resize(1600, 1000)
    win.show()
    wait_until(lambda: win.results.rowCount() > 0, 300, "the library shown")
    out["open_s"], out["open_longest_stall_s"] = round(time.perf_counter() - t, 2), stall(t)

    sort = win.sort_view
    win.tabs.setCurrentWidget(sort)
    lib.text_encoder  # noqa: B018 - the model's load (and its precision check) is not the pass
    sort.categories.setPlainText("dog\nbeach\ncity\nfood\nmountain")
    t = time.perf_counter()
    sort.classify_button.click()
    wait_until(lambda: sort.category_list.count() > 0 and sort.classify_button.isEnabled(), 300, "classification")
    out["classify_in_app_s"], out["classify_longest_stall_s"] = round(time.perf_counter() - t, 2), stall(t)
    out["photos"] = len(sort.classified)

    switches = []
    t = time.perf_counter()
    for row in range(sort.category_list.count()):
        s = time.perf_counter()
        sort.category_list.setCurrentRow(row)
        app.processEvents()
        switches.append({"category": sort.category_list.item(row).text(), "grid_rows": sort.results.rowCount(),
                         "s": round(time.perf_counter() - s, 3)})
        end = time.perf_counter() + 0.3  # let it paint
        while time.perf_counter() < end:
            app.processEvents()
    out["category_switches"] = switches
    out["switching_longest_stall_s"] = stall(t)
    win.shutdown()
    return out


def main() -> None:
    folder = str(build_catalog(1_000_000))
    with Watch() as w:
        figures = measure(folder)
    figures["meta"] = w.meta()
    print(json.dumps(figures, indent=1))
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "bench_gui_scale.json", "a") as f:
        f.write(json.dumps({"date": date.today().isoformat(), **figures}) + "\n")


if __name__ == "__main__":
    main()
