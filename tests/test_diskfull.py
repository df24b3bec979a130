"""A full disk is a full disk (issue 30): every writer of a library, against a small real file
system (a size-limited tmpfs, where this machine lets the tests mount one) and against an
injected ENOSPC/EDQUOT (everywhere).

What each test holds to: one :class:`DiskFullError` naming the folder (never "damaged", never
"repair"); nothing half-made left behind; and once space is freed, the same command resumes where
it stopped, with nothing lost and nothing twice.
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipdesk.errors import CatalogCorruptError, DiskFullError
from clipdesk.indexer import vecfile
from clipdesk.indexer.catalog import Catalog
from clipdesk.indexer.errors import is_disk_full, space_short
from clipdesk.indexer.files import atomic_write
from clipdesk.indexer.vectors import VectorStore
from clipdesk.library import Library
from conftest import SUBPROCESS_TIMEOUT, make_photo

CLI = [sys.executable, "-m", "clipdesk.cli"]
MANY = 200  # photos: a catalog of them outgrows what the small disk leaves free


def run_cli(library, *args):
    return subprocess.run([*CLI, "--library", str(library), *args], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT)


def many_photos(root: Path, n: int) -> Path:
    for i in range(n):
        make_photo(root / f"d{i % 5}" / f"p{i:04d}.jpg", ((i * 37) % 255, (i * 91) % 255, (i * 13) % 255),
                   size=(48, 40), pattern=i)
    return root


def catalog_rows(library: Path) -> tuple[int, int, int]:
    """(rows, distinct paths, rows with neither a vector nor a recorded failure)."""
    conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*), count(DISTINCT path), "
                            "sum(vector IS NULL AND error IS NULL) FROM images").fetchone()
    finally:
        conn.close()


def assert_one_line_disk_full(p: subprocess.CompletedProcess, folder: Path) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.startswith("clipdesk:")]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    line = lines[0]
    assert "is full" in line and str(folder) in line, line
    assert "repair" not in line and "damaged" not in line, line
    return line


# ---------------------------------------------------------------------- a small real file system
class SmallDisk:
    """A tmpfs of ``size`` mounted at ``path``; :meth:`fill` leaves only a few KB free."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"

    def free_kb(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize // 1024

    def fill(self, leave_kb: int = 0) -> None:
        with open(self.filler, "ab") as f:
            f.write(b"\0" * max(0, self.free_kb() - leave_kb) * 1024)
        assert self.free_kb() <= leave_kb + 4

    def free_up(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-ENOSPC tests below still run)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({p.stderr.decode().strip()})")
    try:
        yield SmallDisk(mnt)
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def photos_many(tmp_path_factory):
    return many_photos(tmp_path_factory.mktemp("photos_many"), MANY)


@pytest.fixture(scope="module")
def photos10(tmp_path_factory):
    return many_photos(tmp_path_factory.mktemp("photos10"), 10)


# 0 KB: SQLite cannot even make its WAL index ("disk I/O error" on open); 64 KB: the WAL fills
# while a batch is written (SQLITE_FULL).
@pytest.mark.parametrize("leave_kb", [0, 64])
def test_cli_index_on_a_full_disk_says_so_then_resumes(small_disk, photos10, photos_many, leave_kb):
    lib = small_disk.path / "lib"
    first = run_cli(lib, "index", str(photos10), "--model", "test-tiny")
    assert first.returncode == 0, first.stderr
    small_disk.fill(leave_kb)
    p = run_cli(lib, "index", str(photos_many), "--model", "test-tiny")
    assert_one_line_disk_full(p, lib)
    # Not damage: repair, on the still full disk, finds nothing to mend (or says the disk is full).
    r = run_cli(lib, "repair")
    assert r.returncode == 0 and "ok" in r.stdout or "is full" in r.stderr, (r.stdout, r.stderr)
    assert os.listdir(lib).count("catalog.sqlite") == 1 and not [n for n in os.listdir(lib) if "damaged" in n]

    small_disk.free_up()
    rows, distinct, neither = catalog_rows(lib)
    assert rows == distinct >= 10 and neither == 0 and rows < MANY + 10
    again = run_cli(lib, "index", str(photos_many), "--model", "test-tiny", "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["added"] == MANY + 10 - rows  # exactly what was missing: nothing twice, nothing lost
    assert catalog_rows(lib) == (MANY + 10, MANY + 10, 0)
    st = run_cli(lib, "search", "a photo", "-k", "500", "--json")
    assert st.returncode == 0, st.stderr
    found = [r["path"] for r in json.loads(st.stdout)]
    assert len(found) == len(set(found)) == MANY + 10  # the vector index has each photo once


# No room even for the catalog (0 KB), for its WAL index (16 KB), for its schema (64 KB).
@pytest.mark.parametrize("leave_kb", [0, 16, 64])
def test_cli_create_on_a_full_disk_leaves_nothing(small_disk, photos10, leave_kb):
    lib = small_disk.path / "lib"
    small_disk.fill(leave_kb)
    p = run_cli(lib, "index", str(photos10), "--model", "test-tiny")
    line = assert_one_line_disk_full(p, lib)
    assert "create the library" in line and "needs about" in line and "Nothing was created" in line
    assert sorted(os.listdir(small_disk.path)) == ["filler"]  # no library, no hidden half-made one
    missing = run_cli(lib, "status")
    assert missing.returncode == 1 and "No library at" in missing.stderr

    small_disk.free_up()
    again = run_cli(lib, "index", str(photos10), "--model", "test-tiny", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["added"] == 10


def test_a_library_created_before_the_disk_filled_keeps_its_model(small_disk, photos10, photos_many):
    """The issue's case: creation went through, indexing did not. The model asked for is recorded
    with the library, so the next run without --model uses it (not the default model)."""
    lib = small_disk.path / "lib"
    small_disk.fill(320)  # enough to create the library, not to index MANY photos
    p = run_cli(lib, "index", str(photos_many), "--model", "test-tiny")
    line = assert_one_line_disk_full(p, lib)
    assert "write the catalog" in line
    small_disk.free_up()
    again = run_cli(lib, "index", "--json")  # no --model, no paths: the library's folders, its model
    assert again.returncode == 0, again.stderr
    st = json.loads(run_cli(lib, "status", "--json").stdout)
    assert st["model"] == "test-tiny" and st["images"] == MANY


def test_core_jobs_on_a_full_disk_resume_without_doubles(small_disk, photos10, photos_many):
    """The jobs the app runs (index, label, train) through the same Library, in-process."""
    folder = small_disk.path / "lib"
    with Library(str(folder), model="test-tiny") as lib:
        lib.index([str(photos10)])
        some = sorted(str(p) for p in photos10.rglob("*.jpg"))[:4]
        small_disk.fill(0)
        with pytest.raises(DiskFullError) as e:
            lib.index([str(photos_many)], batch_size=8)
        assert e.value.folder == str(folder) and "repair" not in str(e.value)
        with pytest.raises(DiskFullError):
            lib.add_to_label("cats", some)
        with pytest.raises(DiskFullError):
            lib.add_to_label("dogs", some[:2])
        small_disk.free_up()
        rows = lib.status()["images"]
        report = lib.index([str(photos_many)], batch_size=8)
        assert report.added == MANY + 10 - rows and lib.status()["images"] == MANY + 10
        lib.add_to_label("cats", some[:2])
        lib.add_to_label("dogs", some[2:])
        small_disk.fill(0)
        with pytest.raises(DiskFullError):
            lib.train("pets")
        assert not (folder / "probes").exists() or not list((folder / "probes").iterdir())
        small_disk.free_up()
        lib.add_to_label("cats", some[:2])  # again: members once, not twice
        assert lib.labels() == {"cats": some[:2], "dogs": some[2:]}
        lib.train("pets")
        assert [p.name for p in lib.probes()] == ["pets"]
    assert catalog_rows(folder) == (MANY + 10, MANY + 10, 0)


def test_the_app_shows_a_full_disk_in_its_banner(qtbot, no_thread_leaks, small_disk, photos10, photos_many):
    pytest.importorskip("pytestqt")
    from conftest import make_window, until

    folder = small_disk.path / "lib"
    lib = Library(str(folder), model="test-tiny")
    lib.index([str(photos10)])
    w = make_window(small_disk.path.parent, lib)
    qtbot.addWidget(w)
    w.show()
    try:
        small_disk.fill(0)
        with qtbot.waitSignal(w.index_finished, timeout=120000):
            w.start_indexing([str(photos_many)])
        until(lambda: w.banner.isVisible(), what="the banner")
        text = w.banner.text.text()
        assert "is full" in text and str(folder) in text and "repair" not in text and "bug" not in text
        # the job stopped: its thread ends a moment after its last signal (asserting it at the very
        # instant the banner showed failed once in a full parallel run)
        until(lambda: w.jobs.pool.activeThreadCount() == 0, what="the indexing job's thread to end")
        small_disk.free_up()
        with qtbot.waitSignal(w.index_finished, timeout=120000):
            w.start_indexing([str(photos_many)])
        until(lambda: not w.banner.isVisible(), what="the banner cleared")
        assert lib.status()["images"] == MANY + 10
    finally:
        w.shutdown()
    assert catalog_rows(folder) == (MANY + 10, MANY + 10, 0)


# ---------------------------------------------------------------------- injected ENOSPC / EDQUOT
def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_classification():
    assert is_disk_full(OSError(errno.ENOSPC, "x")) and is_disk_full(OSError(errno.EDQUOT, "x"))
    assert not is_disk_full(OSError(errno.EACCES, "x"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    io = sqlite3.OperationalError("disk I/O error")
    assert not is_disk_full(io)  # without the folder, it cannot be told


def test_sqlite_io_error_is_full_only_where_space_is_short(tmp_path, monkeypatch):
    io = sqlite3.OperationalError("disk I/O error")
    assert not is_disk_full(io, str(tmp_path))  # plenty of space: real damage
    monkeypatch.setattr(os, "statvfs", lambda _p: os.statvfs_result((4096, 4096, 100, 0, 0, 0, 0, 0, 0, 255)))
    assert is_disk_full(io, str(tmp_path))


def test_a_quota_shows_in_a_trial_allocation_not_in_free_space(tmp_path, monkeypatch):
    assert not space_short(str(tmp_path))

    def quota(*_a):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "posix_fallocate", quota)
    assert space_short(str(tmp_path))
    assert os.listdir(tmp_path) == []  # the trial file is gone


def test_real_damage_still_suggests_repair(tmp_path):
    with Library(str(tmp_path / "lib"), model="test-tiny"):
        pass
    path = tmp_path / "lib" / "catalog.sqlite"
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(CatalogCorruptError, match="repair"):
        Library(str(tmp_path / "lib"))


def test_atomic_write_on_a_quota_keeps_the_old_file(tmp_path):
    target = tmp_path / "probe.npz"
    target.write_bytes(b"old")

    def write(f):
        f.write(b"new")
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    with pytest.raises(DiskFullError, match="needs about 2.0 MB") as e:
        atomic_write(str(target), write, size=2_000_000)
    assert e.value.folder == str(tmp_path) and e.value.needed == 2_000_000
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["probe.npz"]


def test_vector_index_save_on_a_full_disk(tmp_path, monkeypatch):
    store = VectorStore(8)
    vecs = np.eye(8, dtype=np.float32)
    store.add(np.arange(8, dtype=np.int64), vecs)
    path = str(tmp_path / "vectors.faiss")
    store.save(path, "m")
    before = Path(path).read_bytes()
    store.add(np.arange(8, 16, dtype=np.int64), vecs)
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, b):
            self.n += 1
            if self.n > 3:  # past the header: inside FAISS's own writer callback
                _enospc()
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: Full(real_fdopen(*a, **k)))
    with pytest.raises(DiskFullError, match="vectors.faiss"):
        store.save(path, "m")
    monkeypatch.undo()
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["vectors.faiss"]


def test_vector_file_patch_on_a_full_disk_is_rebuilt_after(tmp_path, monkeypatch):
    cat = Catalog.open(str(tmp_path / "lib"))
    from clipdesk.indexer.catalog import ImageRecord

    def rec(i):
        v = np.zeros(8, np.float32)
        v[i % 8] = 1
        return ImageRecord(f"/p/{i}.jpg", 1, 1, f"h{i}", 1, 1, None, v)

    cat.write_batch([rec(i) for i in range(5)])
    path = str(tmp_path / "lib" / vecfile.FILENAME)
    lid = cat.library_id(create=True)
    vecfile.sync(path, cat, "m", lid, 8)
    cat.write_batch([rec(i) for i in range(5, 9)])
    monkeypatch.setattr(os, "pwrite", _enospc)
    with pytest.raises(DiskFullError, match="vectors.f16"):
        vecfile.sync(path, cat, "m", lid, 8)
    monkeypatch.undo()
    state, header = vecfile.sync(path, cat, "m", lid, 8)
    assert header.live == 9 and header.generation == cat.generation
    with vecfile.VectorFile.open(path) as vf:
        ids = np.concatenate([i for i, _ in vf.blocks()])
    assert sorted(ids.tolist()) == [i for i, _ in cat.iter_vectors() for i in i.tolist()]
    cat.close()


def test_creation_cut_short_leaves_no_library(tmp_path, monkeypatch):
    def full(_self):
        raise DiskFullError("full")

    monkeypatch.setattr(Catalog, "checkpoint", full)
    with pytest.raises(DiskFullError, match="create the library"):
        Library(str(tmp_path / "lib"), model="test-tiny")
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        assert lib.catalog.get_meta("model") == "test-tiny"


def test_creation_into_a_folder_that_holds_other_files(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "notes.txt").write_text("mine")
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        assert lib.catalog.get_meta("model") == "test-tiny"
    assert sorted(os.listdir(tmp_path)) == ["lib"]
    assert (tmp_path / "lib" / "notes.txt").read_text() == "mine"


def test_journal_record_torn_by_a_full_disk_is_cut_back(tmp_path, monkeypatch):
    from clipdesk.journal import Journal

    (tmp_path / "lib").mkdir()
    j = Journal(str(tmp_path / "lib"))
    op = j.start("tags", "t", [{"action": "write", "path": str(tmp_path / "a.xmp")}])
    real_write = os.write

    def half(fd, data):  # half a record reaches the disk, then it is full
        real_write(fd, bytes(data[: len(data) // 2]))
        _enospc()

    monkeypatch.setattr(os, "write", half)
    xmp = str(tmp_path / "a.xmp")
    with pytest.raises(DiskFullError):
        op._append(type="begin", n=0, path=xmp)
    monkeypatch.undo()
    op._append(type="begin", n=0, path=xmp)  # the run resumed once space is freed
    op._append(type="done", n=0, noop=True)
    op.close()
    assert j.load(op.id).steps[0].state == "done"  # every line is still a record


def test_the_writer_lock_on_a_full_disk(tmp_path, monkeypatch):
    from clipdesk.indexer.lock import LibraryLock

    lock = LibraryLock(str(tmp_path))
    monkeypatch.setattr(os, "pwrite", _enospc)  # no room for the PID: the lock is still taken
    lock.acquire()
    assert lock.held
    other = LibraryLock(str(tmp_path))
    with pytest.raises(Exception, match="in use by PID unknown"):
        other.acquire()
    lock.release()
    (tmp_path / "lock").unlink()
    monkeypatch.setattr(os, "open", _enospc)  # no inode left for the lock file
    with pytest.raises(DiskFullError, match="lock"):
        LibraryLock(str(tmp_path)).acquire()


def test_thumbnails_still_show_when_their_cache_cannot_be_written(qtbot, small_disk, photos10):
    """A full disk under the library's thumbnail cache: the photo still shows (decoded again next
    time), and no half-written cache file is left on the full disk."""
    from types import SimpleNamespace

    from clipdesk.ui.models import _ThumbTask

    cache = small_disk.path / "thumbnails"
    photo = sorted(photos10.rglob("*.jpg"))[0]
    small_disk.fill(0)
    try:  # the last pages too: not even a 1 KB thumbnail fits
        with open(small_disk.path / "filler-tail", "ab") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError as e:
        assert is_disk_full(e)
    got = []
    signals = SimpleNamespace(ready=SimpleNamespace(emit=lambda path, img: got.append((path, img))))
    _ThumbTask(str(photo), 128, str(cache), signals).run()
    assert got and got[0][0] == str(photo) and not got[0][1].isNull()
    left = [(p, p.stat().st_size) for p in small_disk.path.rglob("*") if p.is_file() and not p.name.startswith("filler")]
    assert not left, left
    small_disk.free_up()
    _ThumbTask(str(photo), 128, str(cache), signals).run()  # with room again it is cached
    assert not got[1][1].isNull() and len(list(cache.rglob("*.jpg"))) == 1
