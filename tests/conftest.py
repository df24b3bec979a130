"""Shared fixtures: temp libraries on the tiny model, synthetic photos, the shared data set."""
from __future__ import annotations

import os
import sqlite3
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download

REPO = Path(__file__).resolve().parents[1]
# The longest one command started by a test may run: below pytest-timeout's limit for the whole test
# (pyproject.toml, 300 s), so a hung command fails as itself, with its output, not as a pytest timeout.
SUBPROCESS_TIMEOUT = 240
# Resolved, as the library resolves the folders it is given: a linked ../shared compares equal.
SHARED_DATA = (REPO.parent / "shared" / "data").resolve()


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Caches and default libraries never leak into the user's home during tests."""
    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("CLIPDESK_LIBRARY", str(tmp_path_factory.getbasetemp() / "default-library"))
    monkeypatch.setenv("CLIPDESK_MODELS", str(tmp_path_factory.getbasetemp() / "models"))


@pytest.fixture
def trash_dir(tmp_path, monkeypatch) -> Path:
    """The desktop Trash of this test: never the user's. send2trash reads XDG_DATA_HOME once, when
    it is first imported, so its module constants are pointed at this test's folder too."""
    import send2trash.plat_other as plat

    data = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(data))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(plat, "XDG_DATA_HOME", os.fsencode(data))
    monkeypatch.setattr(plat, "HOMETRASH_B", os.fsencode(data / "Trash"))
    monkeypatch.setattr(plat, "HOMETRASH", str(data / "Trash"))
    return data / "Trash"


@pytest.fixture
def shared_data() -> Path:
    """The real photos in ../shared/data; missing data fails the test loudly (never skips)."""
    if not (SHARED_DATA / "photos" / "labelled").is_dir():
        pytest.fail(f"shared data set missing at {SHARED_DATA}: tests marked shared_data need it")
    return SHARED_DATA


def make_photo(path: Path, color=(200, 30, 30), size=(96, 72), pattern: int = 0, fmt: str | None = None) -> Path:
    """A small synthetic photo: a colour field with a pattern, so images differ in content."""
    rng = np.random.default_rng(pattern)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = color
    arr[:: max(2, pattern % 7 + 2)] //= 2
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, fmt)
    return path


def catalog_rows(library) -> int:
    """Rows committed to a library's catalog, read as another process would (0 before it exists)."""
    try:
        conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM images").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of 8 distinct small photos in two sub-folders (one with a space)."""
    root = tmp_path / "photos"
    colors = [(220, 20, 20), (20, 220, 20), (20, 20, 220), (220, 220, 20),
              (20, 220, 220), (220, 20, 220), (120, 120, 120), (250, 250, 250)]
    for i, c in enumerate(colors):
        make_photo(root / ("trip 2019" if i < 4 else "home") / f"img_{i}.jpg", c, pattern=i)
    return root


@pytest.fixture
def library(tmp_path):
    from clipdesk.library import Library

    lib = Library(str(tmp_path / "lib"), model="test-tiny")
    yield lib
    lib.close()


def until(cond, timeout: float = 30.0, what: str = "condition") -> None:
    """Run the Qt event loop until ``cond()`` holds (the app's own wait: see ui/selftest.py)."""
    from clipdesk.ui.selftest import wait_until

    try:
        wait_until(cond, timeout, what)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None  # a test failure, not an error


def when_shown(find, act, every_ms: int = 50, within: float = 10.0) -> None:
    """Poll ``find()`` on the Qt event loop until it returns a widget, then call ``act(widget)``:
    how a test answers a modal dialog its next call opens. Gives up after ``within`` seconds, so
    a dialog that never opened cannot leave a poller to answer a later test's dialog."""
    import time

    from PySide6.QtCore import QTimer

    deadline = time.monotonic() + within

    def tick() -> None:
        widget = find()
        if widget is not None:
            act(widget)
        elif time.monotonic() < deadline:
            QTimer.singleShot(every_ms, tick)

    QTimer.singleShot(every_ms, tick)


def make_window(tmp_path, lib=None):
    """The main window on a library in ``tmp_path`` (test-tiny) with settings of its own."""
    from PySide6.QtCore import QSettings

    from clipdesk.library import Library
    from clipdesk.ui.main_window import MainWindow

    lib = lib or Library(str(tmp_path / "lib"), model="test-tiny")
    win = MainWindow(lib, QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    win.resize(1280, 800)
    return win


@pytest.fixture
def window(qtbot, tmp_path, photos, no_thread_leaks):
    """The main window shown, with the ``photos`` folder indexed and on screen by date."""
    w = make_window(tmp_path)
    qtbot.addWidget(w)
    w.show()
    with qtbot.waitSignal(w.index_finished, timeout=60000):
        w.add_folders([str(photos)])
    until(lambda: w.results.rowCount() == 8, what="the library shown by date")
    yield w
    w.shutdown()
    assert w.jobs.pool.activeThreadCount() == 0 and w.thumbnails.pool.activeThreadCount() == 0


@pytest.fixture
def no_thread_leaks():
    """Fail a test that leaves threads running: Python threads, and Qt pool threads still busy.

    Threads that Qt started and that merely ran Python code show up as ``_DummyThread`` entries
    forever, so they are judged through Qt (``activeThreadCount``) instead.
    """
    def python_threads():
        return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread) and t.is_alive()}

    before = python_threads()
    yield
    for _ in range(100):
        extra = python_threads() - before
        busy = 0
        if "PySide6.QtCore" in sys.modules:
            from PySide6.QtCore import QThreadPool

            busy = QThreadPool.globalInstance().activeThreadCount()
        if not extra and not busy:
            return
        threading.Event().wait(0.05)
    pytest.fail(f"threads left running: {[t.name for t in extra]}, busy Qt pool threads: {busy}")
