"""The folder watcher: real files, real file-system events, the tiny model.

New, changed, moved and deleted photos reach the library within seconds and without a rescan of
the library's folders; folders without events are rescanned lightly; memory stays flat under a
flood of events; the threads stop; ``clipdesk watch`` stops cleanly on SIGTERM.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

import clipdesk.ops.watch as watch_module
from clipdesk.library import Library
from clipdesk.ops.watch import MAX_PENDING, LibraryWatcher, collapse
from conftest import make_photo

WAIT = 30.0  # generous on a busy 2-core machine; the assertions on speed are separate


def _until(pred, timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


@pytest.fixture
def watched(tmp_path, no_thread_leaks):
    """An indexed library of one folder (with a sub-folder), a running watcher, its updates."""
    root = tmp_path / "photos"
    for i in range(3):
        make_photo(root / "2019" / f"old_{i}.jpg", (30 * i, 90, 160), pattern=i)
    lib = Library(str(tmp_path / "lib"), model="test-tiny")
    lib.index([str(root)])
    updates = []
    watcher = LibraryWatcher(lib, updates.append, debounce=0.3, max_delay=5.0)
    yield {"root": root, "lib": lib, "watcher": watcher, "updates": updates}
    watcher.stop()
    lib.close()


def _no_full_rescans(lib, monkeypatch):
    """Make a full rescan (``Library.index``) fail the test: the watcher must not need one."""
    def refuse(*a, **k):
        raise AssertionError("the watcher rescanned the whole library")

    monkeypatch.setattr(lib, "index", refuse)


def test_500_copied_photos_are_indexed_without_a_rescan(watched, tmp_path, monkeypatch):
    lib, root, watcher = watched["lib"], watched["root"], watched["watcher"]
    staging = tmp_path / "card"
    for i in range(500):
        make_photo(staging / "DCIM" / f"IMG_{i:04d}.jpg", (i % 250, (7 * i) % 250, 90), size=(48, 36), pattern=i)
    _no_full_rescans(lib, monkeypatch)
    watcher.start()
    t0 = time.monotonic()
    shutil.copytree(staging / "DCIM", root / "2024 card")  # a whole card copied in
    assert _until(lambda: lib.catalog.counts()[0] == 503), lib.catalog.counts()
    seconds = time.monotonic() - t0
    assert watcher.wait_idle(WAIT)
    assert seconds < 20, seconds
    refreshed = [u for u in watched["updates"] if u.kind == "refresh"]
    assert refreshed and sum(u.report.added for u in refreshed) == 500
    # Only the new folder was looked at, never the library's folder as a whole.
    assert all(Path(r).is_relative_to(root / "2024 card") for u in refreshed for r in u.roots), \
        [u.roots for u in refreshed]


def test_single_new_photo_is_refreshed_on_its_own(watched, monkeypatch):
    lib, root, watcher = watched["lib"], watched["root"], watched["watcher"]
    _no_full_rescans(lib, monkeypatch)
    watcher.start()
    new = make_photo(root / "2019" / "new.jpg", (250, 10, 10), pattern=9)
    assert _until(lambda: lib.catalog.id_for_path(str(new)) is not None)
    assert watcher.wait_idle(WAIT)
    roots = [r for u in watched["updates"] if u.kind == "refresh" for r in u.roots]
    assert roots and set(roots) == {str(new)}  # no folder walk for a created file


def test_renamed_folder_keeps_rows_and_labels(watched, monkeypatch):
    lib, root, watcher = watched["lib"], watched["root"], watched["watcher"]
    old = [str(root / "2019" / f"old_{i}.jpg") for i in range(3)]
    ids = [lib.catalog.id_for_path(p) for p in old]
    lib.add_to_label("family", old[:2])
    _no_full_rescans(lib, monkeypatch)
    watcher.start()
    os.rename(root / "2019", root / "Summer 2019")
    new = [str(root / "Summer 2019" / f"old_{i}.jpg") for i in range(3)]
    assert _until(lambda: all(lib.catalog.id_for_path(p) is not None for p in new))
    assert watcher.wait_idle(WAIT)
    assert [lib.catalog.id_for_path(p) for p in new] == ids  # moved, not re-embedded
    assert all(lib.catalog.id_for_path(p) is None for p in old)
    assert sorted(lib.labels()["family"]) == sorted(new[:2])
    assert sum(u.report.moved for u in watched["updates"] if u.report) == 3


def test_deleted_and_changed_photos(watched):
    lib, root, watcher = watched["lib"], watched["root"], watched["watcher"]
    watcher.start()
    gone, changed = root / "2019" / "old_0.jpg", root / "2019" / "old_1.jpg"
    before = lib.catalog.vectors_for([lib.catalog.id_for_path(str(changed))])[0]
    gone.unlink()
    make_photo(changed, (250, 250, 0), size=(80, 80), pattern=5)  # edited in place
    assert _until(lambda: lib.catalog.id_for_path(str(gone)) is None)
    assert watcher.wait_idle(WAIT)
    after = lib.catalog.vectors_for([lib.catalog.id_for_path(str(changed))])[0]
    assert float(before @ after) < 0.9999  # re-embedded
    assert lib.catalog.counts() == (2, 0)


def drained(watcher) -> None:
    """Wait until watchdog has handed over every event it read (on a loaded machine its queue
    lags behind the files: that backlog is watchdog's buffer, not memory the watcher keeps)."""
    assert _until(lambda: watcher._observer.event_queue.empty())
    time.sleep(0.3)


def test_memory_stays_flat_over_10000_events(watched, tmp_path):
    """10,000 real events (files created in many folders) while nothing is indexed yet: what is
    pending stays bounded and so does the memory the watcher holds."""
    lib, root = watched["lib"], watched["root"]
    watcher = LibraryWatcher(lib, debounce=600, max_delay=600)  # nothing runs during the flood
    flood = root / "flood"

    def burst(start: int, n: int) -> None:
        for i in range(start, start + n):
            d = flood / f"folder with a long name number {i // 50:04d}"
            d.mkdir(parents=True, exist_ok=True)
            os.mknod(d / f"a photo file with a rather long name {i:06d}.jpg")  # one event per file

    watcher.start()
    try:
        tracemalloc.start(16)  # deep enough to see the watcher's frames under the stdlib's
        burst(0, 2000)
        assert _until(lambda: watcher.events_seen >= 2000)
        drained(watcher)
        first = tracemalloc.take_snapshot()
        burst(2000, 8000)
        assert _until(lambda: watcher.events_seen >= 10000)
        drained(watcher)
        second = tracemalloc.take_snapshot()
        tracemalloc.stop()
        assert watcher.pending <= MAX_PENDING
        # Only what the watcher allocates (its own code or watchdog's anywhere on the stack): in
        # this process other tests' leftovers (Ray's threads, xdist's channel) allocate too.
        mine = [tracemalloc.Filter(True, f, all_frames=True) for f in (watch_module.__file__, "*/watchdog/*")]
        first, second = first.filter_traces(mine), second.filter_traces(mine)
        held = sum(t.size for t in second.traces)
        assert held > 10_000, held  # the filter sees the watcher's own memory (what it holds pending)
        growth = sum(s.size_diff for s in second.compare_to(first, "filename"))
        print("memory growth over 8,000 events:", growth, "bytes; held:", held)
        # 8,000 more pending paths would hold ~2 MB; bounded, the growth is a fraction of that.
        assert growth < 600_000, growth
    finally:
        tracemalloc.stop()
        watcher.stop()


def test_collapse_stays_inside_library_folders():
    folders = ["/p/lib"]
    places = [f"/p/lib/a/b{i}/x{j}.jpg" for i in range(10) for j in range(10)]
    assert collapse(places, 5, folders) == ["/p/lib/a"]
    assert collapse(["/p/lib/x.jpg", "/p/lib/y.jpg", "/p/lib/z.jpg"], 2, folders) == ["/p/lib"]
    assert collapse(["/p/lib/a/x.jpg", "/p/lib/a"], 5, folders) == ["/p/lib/a"]


def test_poll_mode_rescans_a_folder_without_events(watched):
    lib, root = watched["lib"], watched["root"]
    updates = []
    watcher = LibraryWatcher(lib, updates.append, poll_interval=0.5, force_poll=True)
    with watcher:
        assert watcher.modes == {lib.catalog.folders()[0]: "poll"}
        new = make_photo(root / "2019" / "polled.jpg", (0, 200, 0), pattern=3)
        assert _until(lambda: lib.catalog.id_for_path(str(new)) is not None)
    assert any(u.kind == "rescan" and u.report.added == 1 for u in updates)


def test_missing_folder_is_watched_once_it_is_back(tmp_path, no_thread_leaks):
    drive = tmp_path / "drive"
    make_photo(drive / "a.jpg", pattern=1)
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        lib.index([str(drive)])
        shutil.rmtree(drive)  # unplugged
        with LibraryWatcher(lib, poll_interval=0.3, debounce=0.2) as watcher:
            assert set(watcher.modes.values()) == {"missing"}
            time.sleep(0.5)
            assert lib.catalog.counts()[0] == 1  # an unplugged drive is not a deletion
            make_photo(drive / "a.jpg", pattern=1)
            make_photo(drive / "b.jpg", (0, 0, 200), pattern=2)
            assert _until(lambda: set(watcher.modes.values()) == {"events"})
            assert _until(lambda: lib.catalog.counts()[0] == 2)
            make_photo(drive / "c.jpg", (0, 200, 200), pattern=4)  # now through events
            assert _until(lambda: lib.catalog.counts()[0] == 3)


def test_locked_library_is_retried(watched, tmp_path):
    lib, root, watcher = watched["lib"], watched["root"], watched["watcher"]
    watcher.retry_delay = 0.3
    other = Library(lib.folder)  # another writer holds the lock
    other.lock.acquire()
    try:
        watcher.start()
        new = make_photo(root / "2019" / "while_locked.jpg", (9, 9, 200), pattern=8)
        assert _until(lambda: any(u.kind == "error" for u in watched["updates"]))
        assert lib.catalog.id_for_path(str(new)) is None
    finally:
        other.close()
    assert _until(lambda: lib.catalog.id_for_path(str(new)) is not None)


def test_library_inside_a_watched_folder_does_not_feed_itself(tmp_path, no_thread_leaks):
    root = tmp_path / "photos"
    make_photo(root / "a.jpg", pattern=1)
    with Library(str(root / "clipdesk-library"), model="test-tiny") as lib:
        lib.index([str(root)])
        updates = []
        with LibraryWatcher(lib, updates.append, debounce=0.2) as watcher:
            make_photo(root / ".hidden" / "b.jpg", pattern=2)
            (root / "notes.txt").write_text("not a photo")
            make_photo(root / "c.jpg", (0, 0, 200), pattern=3)
            assert _until(lambda: lib.catalog.counts()[0] == 2)
            assert watcher.wait_idle(WAIT)
            time.sleep(1.0)  # the catalog writes of that refresh must not start another one
            assert watcher.wait_idle(WAIT)
        assert [u.roots for u in updates if u.kind == "refresh"] == [[str(root / "c.jpg")]]


def test_cli_watch_indexes_and_stops_on_sigterm(tmp_path):
    root = tmp_path / "photos"
    make_photo(root / "a.jpg", pattern=1)
    lib_dir = tmp_path / "lib"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with Library(str(lib_dir), model="test-tiny") as lib:
        lib.index([str(root)])
    cmd = [sys.executable, "-m", "clipdesk.cli", "--library", str(lib_dir), "watch", "--json", "--debounce", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    lines: list[dict] = []
    reader = threading.Thread(target=lambda: [lines.append(json.loads(ln)) for ln in proc.stdout], daemon=True)
    reader.start()
    try:
        assert _until(lambda: any(u["kind"] == "rescan" for u in lines), 60)  # the catch-up at start
        make_photo(root / "b.jpg", (0, 0, 200), pattern=2)
        assert _until(lambda: any(u["kind"] == "refresh" and u["report"]["added"] == 1 for u in lines), 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    assert "Traceback" not in proc.stderr.read()
    with Library(str(lib_dir)) as lib:
        assert lib.catalog.counts()[0] == 2


def test_lost_events_mean_a_rescan_of_the_watched_folders(watched):
    """When the kernel's event queue overflows (watchdog logs it), changes may have been missed:
    the folders that rely on events are refreshed as a whole."""
    import logging

    lib, watcher = watched["lib"], watched["watcher"]
    with watcher:
        logging.getLogger("watchdog.observers.inotify_c").warning("Inotify queue overflowed; filesystem events were lost")
        assert _until(lambda: any(u.kind == "refresh" for u in watched["updates"]))
        assert watcher.wait_idle(WAIT)
    refreshed = [u.roots for u in watched["updates"] if u.kind == "refresh"]
    assert refreshed == [lib.catalog.folders()]


def test_folders_added_and_removed_while_watching(watched, tmp_path):
    lib, watcher = watched["lib"], watched["watcher"]
    watcher.start()
    other = tmp_path / "more"
    other.mkdir()
    lib.index([str(other)])
    assert watcher.sync_folders() == ([str(other)], [])
    make_photo(other / "new.jpg", (200, 10, 10), pattern=3)
    assert _until(lambda: lib.catalog.id_for_path(str(other / "new.jpg")) is not None)
    lib.remove_folder(str(other))
    assert watcher.sync_folders() == ([], [str(other)])
    assert str(other) not in watcher.modes
    make_photo(other / "later.jpg", (10, 200, 10), pattern=4)
    assert watcher.wait_idle(WAIT)
    time.sleep(watcher.debounce * 2)
    assert lib.catalog.id_for_path(str(other / "later.jpg")) is None  # no longer watched


def test_writer_threads_of_one_library_take_turns(watched):
    """The app's jobs and its watcher share one Library: its writers run one at a time."""
    lib = watched["lib"]
    inside, overlap = threading.Event(), []
    release = threading.Event()

    def hold() -> None:
        with lib.writing():
            inside.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    assert inside.wait(5)

    def second() -> None:
        with lib.writing():
            overlap.append(release.is_set())

    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.3)
    assert overlap == []  # still waiting for the first writer
    release.set()
    t.join(5)
    t2.join(5)
    assert overlap == [True]
