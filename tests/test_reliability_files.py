"""Reliability round 2, storage: odd timestamps, bounded memory, folder operations, library files
that are links, read-only libraries.

Real files, real processes (the installed ``clipdesk`` command) and real mounts (a read-only bind
mount; a tmpfs for timestamps ext4 cannot store). Commands that could run away on a regression
(read a device, hang on a FIFO, allocate what a file claims) run under a watchdog that kills them
past a time or memory limit, so a regression fails the test instead of exhausting the machine.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipdesk.indexer.errors import (CatalogCorruptError, FolderNotInLibraryError, LibraryFileError,
                                     LibraryReadOnlyError)
from clipdesk.indexer.catalog import SCHEMA_VERSION
from clipdesk.indexer.vectors import VectorFileError, VectorStore
from clipdesk.library import Library
from conftest import SUBPROCESS_TIMEOUT, make_photo

CLIPDESK = str(Path(sys.executable).parent / "clipdesk")
IS_ROOT = os.geteuid() == 0


# ---------------------------------------------------------------------- helpers
def cli(library, *args, timeout=120):
    return subprocess.run([CLIPDESK, "--library", str(library), *args], capture_output=True, text=True,
                          timeout=timeout)


def cli_json(library, *args):
    p = cli(library, *args, "--json")
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    return json.loads(p.stdout)


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_watched(library, *args, timeout=90, max_rss_mb=2500):
    """Run the CLI under a watchdog: ``(returncode, stdout, stderr, peak RSS MB, why it was killed)``.

    The peak is the child's own maximum resident set (``wait4``), whatever killed it or not.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([CLIPDESK, "--library", str(library), *args], stdout=out, stderr=err)
        t0, killed = time.monotonic(), None
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if killed is None:
                rss = _rss_mb(p.pid)
                if rss > max_rss_mb:
                    killed = f"killed: resident memory {rss:.0f} MB over {max_rss_mb} MB"
                elif time.monotonic() - t0 > timeout:
                    killed = f"killed: still running after {timeout} s"
                if killed:
                    p.kill()
            time.sleep(0.02)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss / 1024, killed


@contextmanager
def mounted(*cmds: list[str], target: Path):
    """Run mount commands (as root); skip loudly where the OS refuses; always unmount."""
    if not IS_ROOT:
        pytest.skip("SKIPPED LOUDLY: mounting needs root; this class is untested here")
    for cmd in cmds:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            subprocess.run(["umount", str(target)], capture_output=True)
            pytest.skip(f"SKIPPED LOUDLY: the OS refused {' '.join(cmd)}: {r.stderr.strip()}")
    try:
        yield target
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(target)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def read_only_view(src: Path, mnt: Path):
    """``src`` seen read-only at ``mnt`` through a bind mount (chmod is no barrier for root)."""
    mnt.mkdir(parents=True, exist_ok=True)
    return mounted(["mount", "--bind", str(src), str(mnt)],
                   ["mount", "-o", "remount,bind,ro", str(mnt)], target=mnt)


def small_photos(root: Path, n: int = 4) -> list[Path]:
    return [make_photo(root / f"p{i}.jpg", ((i * 60) % 255, 120, 200 - i * 30), size=(48, 40), pattern=i)
            for i in range(n)]


def assert_same_hits(got: list[dict], expected: list[dict]) -> None:
    """Same photos in the same order; scores equal up to the catalog's float16 rounding."""
    assert [h["path"] for h in got] == [h["path"] for h in expected]
    assert all(abs(g["score"] - e["score"]) < 2e-3 for g, e in zip(got, expected))


def library_paths(lib: Path) -> set[str]:
    with Library(str(lib)) as L:
        return {i.path for i in L.catalog.all_images()}


# ---------------------------------------------------------------------- 1. timestamps
# What file systems return: ext4 stores up to the year 2446 (beyond 64-bit nanoseconds), tmpfs
# any 64-bit second count; negative times predate 1970, and below -2**63 ns predate 1677.
EXT4_TIMES = {"year 2400": None, "ns beyond 64 bits": 2**63 * 10, "year 1600": -(2**62) * 10,
              "int64 max": 2**63 - 1, "int64 min": -(2**63), "epoch": 0}
TMPFS_TIMES = {"2**70 ns": 2**70, "-2**70 ns": -(2**70), "2**90 ns": 2**90}


def _set_times(folder: Path, times: dict) -> dict[str, int]:
    made = {}
    for i, (name, ns) in enumerate(times.items()):
        p = make_photo(folder / f"{name.replace(' ', '_').replace('*', '')}.jpg", (i * 40, 90, 160), pattern=i)
        if ns is None:
            subprocess.run(["touch", "-d", "2400-01-01", str(p)], check=True)
        else:
            os.utime(p, ns=(ns, ns))
        made[str(p)] = os.stat(p).st_mtime_ns
    return made


def _check_dates_indexed(tmp_path: Path, photos: Path, made: dict[str, int], via_cli: bool) -> None:
    lib = tmp_path / "lib"
    assert any(not -(2**63) <= ns < 2**63 for ns in made.values())  # the case that overflowed
    if via_cli:  # the command that failed with an internal OverflowError
        first = cli_json(lib, "index", str(photos), "--model", "test-tiny")
        assert (first["added"], first["failed"]) == (len(made), 0)
    with Library(str(lib), model="test-tiny") as L:
        if not via_cli:
            r = L.index([str(photos)])
            assert (r.added, r.failed) == (len(made), 0)
        again = L.index()  # the stored stamps compare equal: nothing re-embedded
        assert (again.unchanged, again.updated) == (len(made), 0)
        # A change between two out-of-range times is still seen.
        path = next(p for p, ns in made.items() if not -(2**63) <= ns < 2**63)
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns - 10**18))
        third = L.index()
        assert (third.updated, third.unchanged) == (1, len(made) - 1)
        infos = L.catalog.all_images()
        assert {i.path for i in infos} == set(made)
        for info in infos:  # every stored date is one a program can show, or unknown
            assert info.taken is None or datetime(1, 1, 2).timestamp() <= info.taken <= datetime(9999, 12, 30).timestamp()
        by_date = L.search(L.catalog.vectors_for([infos[0].id])[0], k=len(made), sort="date")
        assert len(by_date) == len(made)


def test_file_times_outside_64_bit_nanoseconds_index(tmp_path):
    photos = tmp_path / "photos"
    _check_dates_indexed(tmp_path, photos, _set_times(photos, EXT4_TIMES), via_cli=True)


def test_file_times_tmpfs_extremes_index(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    with mounted(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], target=mnt):
        made = _set_times(mnt / "photos", TMPFS_TIMES)
        assert 2**90 in made.values()  # tmpfs kept the huge value
        _check_dates_indexed(tmp_path, mnt / "photos", made, via_cli=False)


@pytest.mark.parametrize("raw", ["9999:12:31 23:59:59", "0001:01:01 00:00:00", "0000:00:00 00:00:00",
                                 "2019:13:45 99:99:99", "\x00\x00garbage", "1969:12:31 23:59:59"])
def test_absurd_exif_dates_index_with_a_showable_date(tmp_path, raw):
    exif = Image.Exif()
    exif[0x0132] = raw  # DateTime
    p = tmp_path / "photos" / "exif.jpg"
    p.parent.mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(p, "JPEG", exif=exif.tobytes())
    os.utime(p, ns=(2**63 * 10, 2**63 * 10))  # and no usable file time to fall back on
    with Library(str(tmp_path / "lib"), model="test-tiny") as L:
        r = L.index([str(p.parent)])
        assert (r.added, r.failed) == (1, 0)
        (info,) = L.catalog.all_images()
        if info.taken is not None:
            datetime.fromtimestamp(info.taken)  # a date the GUI can show
            assert -62135596800 < info.taken < 253402300799


# ---------------------------------------------------------------------- 2. bounded memory
def test_huge_non_image_named_jpg_indexes_in_bounded_memory(tmp_path):
    """A 1 GB (sparse) file named .jpg is refused after reading a few KB: not read whole."""
    base, big = tmp_path / "base", tmp_path / "big"
    small_photos(base, 2)
    small_photos(big, 2)
    with open(big / "huge.jpg", "wb") as f:
        f.truncate(1 << 30)
    rc, out, err, base_peak, killed = run_watched(tmp_path / "lib1", "index", str(base), "--model", "test-tiny",
                                                  "--json")
    assert rc == 0 and not killed, err
    rc, out, err, peak, killed = run_watched(tmp_path / "lib2", "index", str(big), "--model", "test-tiny", "--json",
                                             max_rss_mb=base_peak + 900)
    assert not killed, killed
    assert rc == 0, err
    assert (json.loads(out)["added"], json.loads(out)["failed"]) == (2, 1)
    assert peak - base_peak < 150, (peak, base_peak)
    status = cli_json(tmp_path / "lib2", "status")
    assert "not a recognised image" in {f["path"]: f["reason"] for f in status["failures"]}[str(big / "huge.jpg")]


def test_pixel_budget_decodes_huge_images_one_at_a_time(tmp_path):
    """Decoder threads share one pixel budget: two images over half of it never decode together
    (a PNG is decoded whole by its EXIF read, so the budget is taken before that)."""
    import threading

    from clipdesk.indexer.decode import PixelBudget, decode_image

    budget = PixelBudget(pixels=1000)
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (30, 20), (i * 50, 0, 0)).save(paths[-1])  # 600 pixels each
    inside, most, lock = [0], [0], threading.Lock()

    def work(path):
        with budget.hold() as reserve:
            def counting(n):
                reserve(n)
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
            decode_image(str(path), 16, reserve=counting)
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=work, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1 and budget._used == 0
    with budget.hold() as reserve:  # one image larger than the whole budget still goes through
        reserve(5000)
        assert budget._used == 1000


@pytest.mark.slow
def test_huge_pngs_decode_within_one_image_of_memory(tmp_path):
    """Two 169-megapixel PNGs (2.5 MB files) cost no more than one: ~1.7 GB peak, not ~2.4."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    for i in range(2):
        img = Image.new("RGB", (13000, 13000), (i * 100, 50, 200))
        img.save(two / f"big{i}.png", compress_level=1)
        del img
    os.link(two / "big0.png", one / "big0.png")
    peaks = []
    for folder, lib in ((one, tmp_path / "lib1"), (two, tmp_path / "lib2")):
        rc, out, err, peak, killed = run_watched(lib, "index", str(folder), "--model", "test-tiny", "--json",
                                                 timeout=SUBPROCESS_TIMEOUT, max_rss_mb=4000)
        assert rc == 0 and not killed, (err, killed)
        assert json.loads(out)["added"] == len(os.listdir(folder))
        peaks.append(peak)
    assert peaks[1] - peaks[0] < 200, peaks


@pytest.fixture
def indexed(tmp_path):
    """A small library over 4 photos, built in-process; returns (library folder, photo paths)."""
    photos = small_photos(tmp_path / "photos", 4)
    lib = tmp_path / "lib"
    with Library(str(lib), model="test-tiny") as L:
        L.index([str(tmp_path / "photos")])
        L.add_to_label("first", [str(photos[0])])
    return lib, photos


def test_similar_refuses_devices_and_fifos_without_hanging(tmp_path, indexed):
    lib, _ = indexed
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    for target, words in (("/dev/zero", "character device"), (str(fifo), "named pipe")):
        rc, out, err, peak, killed = run_watched(lib, "similar", target, timeout=60, max_rss_mb=1500)
        assert not killed, (target, killed)
        assert rc == 1 and "Traceback" not in err and words in err and "not a regular file" in err, (target, err)


def test_hash_of_a_fifo_is_refused_not_waited_for(tmp_path):
    from clipdesk.indexer.decode import decode_image, file_hash
    from clipdesk.indexer.errors import UnreadableImageError

    fifo = tmp_path / "f.jpg"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="named pipe"):
        file_hash(str(fifo))
    with pytest.raises(UnreadableImageError, match="named pipe"):
        decode_image(str(fifo))
    assert time.monotonic() - t0 < 5


def _payload_offset(data: bytes) -> int:
    """Where the serialised FAISS index starts in a vectors.faiss (after magic, length, header)."""
    magic_end = data.index(b"\n") + 1
    (n,) = struct.unpack("<I", data[magic_end:magic_end + 4])
    return magic_end + 4 + n


def _vectors_file_claiming(lib: Path, count_field: int) -> None:
    """Rewrite vectors.faiss so that its stored vector array claims ``count_field`` floats."""
    path = lib / "vectors.faiss"
    data = bytearray(path.read_bytes())
    off = _payload_offset(bytes(data))
    assert data[off:off + 4] == b"IxM2" and data[off + 37:off + 41] == b"IxFI"
    size_at = off + 37 + 37  # after the IDMap header and the flat index's header
    (stored,) = struct.unpack("<Q", data[size_at:size_at + 8])
    assert stored == 4 * 64  # 4 photos × dim 64: the field really is the vector array's size
    data[size_at:size_at + 8] = struct.pack("<Q", count_field)
    path.write_bytes(bytes(data))


def test_vector_file_claiming_a_huge_count_is_rebuilt_not_allocated(tmp_path, indexed):
    lib, photos = indexed
    rc, out, err, base_peak, killed = run_watched(lib, "similar", str(photos[1]), "--json")
    assert rc == 0 and not killed, err
    expected = json.loads(out)
    _vectors_file_claiming(lib, 1 << 29)  # 2 GB of floats declared in a 2 KB file
    small = (lib / "vectors.faiss").stat().st_size
    assert small < 100_000
    rc, out, err, peak, killed = run_watched(lib, "similar", str(photos[1]), "--json",
                                             max_rss_mb=base_peak + 1000)
    assert not killed, killed
    assert rc == 0 and "Traceback" not in err, err
    assert_same_hits(json.loads(out), expected)  # rebuilt from the catalog: the same answer
    assert peak - base_peak < 150, (peak, base_peak)


def test_vector_file_header_length_over_a_sparse_file_costs_nothing(tmp_path, indexed):
    lib, photos = indexed
    rc, out, err, base_peak, _ = run_watched(lib, "similar", str(photos[1]), "--json")
    assert rc == 0, err
    expected = json.loads(out)
    path = lib / "vectors.faiss"
    data = bytearray(path.read_bytes())
    magic_end = data.index(b"\n") + 1
    data[magic_end:magic_end + 4] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    with open(path, "r+b") as f:
        f.truncate(5 << 30)  # sparse: 5 GB that cost no disk
    t0 = time.monotonic()
    rc, out, err, peak, killed = run_watched(lib, "similar", str(photos[1]), "--json", timeout=60,
                                             max_rss_mb=base_peak + 1000)
    assert not killed, killed
    assert rc == 0, err
    assert_same_hits(json.loads(out), expected)
    assert peak - base_peak < 150 and time.monotonic() - t0 < 30, (peak, base_peak)


def test_catalog_vector_of_the_wrong_size_is_a_clear_error(tmp_path, indexed):
    lib, photos = indexed
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("UPDATE images SET vector=? WHERE id=(SELECT min(id) FROM images)", (b"\x00" * 7,))
    conn.commit()
    conn.close()
    (lib / "vectors.faiss").unlink()
    with Library(str(lib)) as L:
        with pytest.raises(CatalogCorruptError, match="repair"):
            L.vectors  # noqa: B018


def test_catalog_vector_that_is_huge_is_refused_without_loading_it(tmp_path, indexed):
    lib, photos = indexed
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("UPDATE images SET vector=zeroblob(300000000) WHERE id=(SELECT max(id) FROM images)")
    conn.commit()
    conn.close()
    (lib / "vectors.faiss").unlink()
    import tracemalloc

    tracemalloc.start()  # the sqlite3 module returns blobs as Python bytes: traced if read
    try:
        with Library(str(lib)) as L:
            with pytest.raises(CatalogCorruptError, match="repair"):
                L.vectors  # noqa: B018
            with pytest.raises(CatalogCorruptError, match="repair"):
                L.catalog.vectors_for([i.id for i in L.catalog.all_images()])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000, peak  # the 300 MB value was never loaded


# Property: whatever the bytes of vectors.faiss, a library opens and answers from its catalog.


@pytest.fixture(scope="module")
def vector_library(tmp_path_factory):
    root = tmp_path_factory.mktemp("vprop")
    small_photos(root / "photos", 6)
    with Library(str(root / "lib"), model="test-tiny") as L:
        L.index([str(root / "photos")])
        query = L.catalog.vectors_for([L.catalog.all_images()[0].id])[0]
        expected = [r.path for r in L.search(query, k=6)]
    data = (root / "lib" / "vectors.faiss").read_bytes()
    off = _payload_offset(data)
    ids_at = off + 74 + 8 + 6 * 64 * 4
    # Offsets of the length, dimension, count and size fields a hostile file would inflate.
    fields = [data.index(b"\n") + 1, off + 4, off + 8, off + 41, off + 45, off + 74, ids_at]
    assert struct.unpack("<Q", data[ids_at:ids_at + 8]) == (6,)
    return root / "lib", data, query, expected, fields


def _mutations():
    edit = st.tuples(st.integers(0, 10_000), st.binary(min_size=1, max_size=8))
    return st.one_of(
        st.lists(edit, min_size=1, max_size=4).map(lambda e: ("edit", e)),
        st.integers(0, 10_000).map(lambda n: ("truncate", n)),
        st.binary(max_size=4096).map(lambda b: ("replace", b)),
        # a size or count field (anywhere, or one of the known ones) set to a huge or negative number
        st.tuples(st.integers(0, 10_000), st.sampled_from([2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1, -1]),
                  st.sampled_from(["<I", "<Q"])).map(lambda t: ("number", t)),
        st.tuples(st.integers(0, 6), st.sampled_from([7, 2**29, 2**32 - 1, 2**40, 2**63 - 1, -1]),
                  st.sampled_from(["<I", "<Q"])).map(lambda t: ("field", t)),
    )


def _mutate(data: bytes, m, fields: list[int]) -> bytes:
    kind, arg = m
    b = bytearray(data)
    if kind == "field":
        kind, arg = "number", (fields[arg[0]], *arg[1:])
    if kind == "edit":
        for pos, chunk in arg:
            pos %= len(b)
            b[pos:pos + len(chunk)] = chunk
    elif kind == "truncate":
        del b[arg % len(b):]
    elif kind == "replace":
        return arg
    else:
        pos, value, fmt = arg
        raw = struct.pack(fmt, value % (1 << (8 * struct.calcsize(fmt))))
        pos %= len(b)
        b[pos:pos + len(raw)] = raw
    return bytes(b)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(m=_mutations())
def test_property_any_vector_file_bytes_give_a_working_library(vector_library, m):
    lib, original, query, expected, fields = vector_library
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    (lib / "vectors.faiss").write_bytes(_mutate(original, m, fields))
    t0 = time.monotonic()
    try:
        VectorStore.load(str(lib / "vectors.faiss"), max_count=6)
    except VectorFileError:
        pass  # the one error the loader raises; the library rebuilds on it
    with Library(str(lib)) as L:
        got = L.search(query, k=6)
    assert [r.path for r in got] == expected and abs(got[0].score - 1) < 2e-3
    assert time.monotonic() - t0 < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 100 * 1024  # KB


# ---------------------------------------------------------------------- 4. folder operations
def test_symlinked_alias_of_a_folder_is_the_same_folder(tmp_path, indexed):
    lib, photos = indexed
    alias = tmp_path / "alias"
    os.symlink(tmp_path / "photos", alias)
    r = cli_json(lib, "index", str(alias))
    assert (r["added"], r["unchanged"]) == (0, 4)
    assert cli_json(lib, "folder", "list") == [str(tmp_path / "photos")]
    again = cli_json(lib, "index")
    assert (again["removed"], again["unchanged"]) == (0, 4)
    status = cli_json(lib, "status")
    assert status["images"] == 4 and status["labels"] == {"first": 1}
    # Labelling through the alias finds the same photo (no second row).
    p = cli(lib, "label", "add", "first", str(alias / photos[1].name))
    assert p.returncode == 0, p.stderr
    assert cli_json(lib, "status")["images"] == 4
    assert sorted(cli_json(lib, "label", "list")["first"]) == [str(photos[0]), str(photos[1])]
    # Removing the folder by its alias works too.
    assert cli_json(lib, "folder", "remove", str(alias))["removed"] == 4


def test_nested_folders_scan_once_and_removal_keeps_what_another_covers(tmp_path):
    parent = tmp_path / "photos"
    child = parent / "child"
    child_photos = small_photos(child, 2)
    top = make_photo(parent / "top.jpg", (250, 10, 10), pattern=9)
    lib = tmp_path / "lib"
    with Library(str(lib), model="test-tiny") as L:
        L.index([str(child)])
        L.add_to_label("kids", [str(child_photos[0])])
        r = L.index([str(parent)])
        assert (r.added, r.unchanged) == (1, 2)
    p = cli(lib, "index", "--json")
    assert p.returncode == 0 and "already scanned" not in p.stderr, p.stderr
    assert json.loads(p.stdout)["unchanged"] == 3
    # The child folder is covered by its parent: removing it forgets nothing.
    assert cli_json(lib, "folder", "remove", str(child))["removed"] == 0
    assert cli_json(lib, "status")["labels"] == {"kids": 1}
    assert library_paths(lib) == {str(top), *map(str, child_photos)}
    # Child again, then the parent removed: the child's photos and label stay, the rest goes.
    with Library(str(lib)) as L:
        assert L.index([str(child)]).unchanged == 2
    assert cli_json(lib, "folder", "remove", str(parent))["removed"] == 1
    assert library_paths(lib) == set(map(str, child_photos))
    assert cli_json(lib, "status")["labels"] == {"kids": 1}
    assert cli_json(lib, "folder", "list") == [str(child)]


def test_removing_what_is_not_a_library_folder_forgets_nothing(tmp_path, indexed):
    lib, photos = indexed
    before = cli_json(lib, "status")
    for wrong in ("/", str(tmp_path), str(tmp_path / "photos" / "nope"), str(tmp_path / "phot")):
        p = cli(lib, "folder", "remove", wrong)
        assert p.returncode == 1 and "Traceback" not in p.stderr, (wrong, p.stderr)
        assert "not a folder of this library" in p.stderr and str(tmp_path / "photos") in p.stderr, p.stderr
    assert cli_json(lib, "status") == before
    with Library(str(lib)) as L, pytest.raises(FolderNotInLibraryError):
        L.remove_folder("/")


def _labels_and_dates(L: Library) -> dict[str, tuple[str, float]]:
    labels = {p: name for name, paths in L.labels().items() for p in paths}
    return {os.path.basename(i.path): (labels.get(i.path), i.taken) for i in L.catalog.all_images()}


@pytest.mark.parametrize("how", ["move folder", "rename all", "copy then delete"])
def test_identical_files_moved_together_keep_their_labels_and_dates(tmp_path, how):
    """Three copies of one photo, each with its own label and date, indexed in the order y, z, x
    (so neither row order nor name order pairs them right by chance), then moved together."""
    a = tmp_path / "photos" / "a"
    a.mkdir(parents=True)
    dates = {"y": 1_400_000_000, "z": 1_500_000_000, "x": 1_600_000_000}
    with Library(str(tmp_path / "lib"), model="test-tiny") as L:
        original = make_photo(tmp_path / "original.jpg", (40, 40, 200), pattern=3)
        for name, when in dates.items():
            shutil.copyfile(original, a / f"{name}.jpg")
            os.utime(a / f"{name}.jpg", (when, when))
            L.index([str(tmp_path / "photos")])
        for name in dates:
            L.add_to_label(f"is-{name}", [str(a / f"{name}.jpg")])
        before = _labels_and_dates(L)
        assert before == {f"{n}.jpg": (f"is-{n}", float(d)) for n, d in dates.items()}
        b = tmp_path / "photos" / "b"
        if how == "move folder":
            os.rename(a, b)
            expect = before
        elif how == "rename all":  # new names: only the inode tells which file is which
            renamed = {"z": "m", "x": "n", "y": "o"}
            for old, new in renamed.items():
                os.rename(a / f"{old}.jpg", a / f"{new}.jpg")
            expect = {f"{new}.jpg": before[f"{old}.jpg"] for old, new in renamed.items()}
        else:  # copied elsewhere (new inodes), names kept, originals deleted
            shutil.copytree(a, b, copy_function=shutil.copy2)
            shutil.rmtree(a)
            expect = before
        r = L.index()
        assert (r.moved, r.added, r.removed) == (3, 0, 0)
        assert _labels_and_dates(L) == expect


def test_a_library_inside_a_photo_folder_is_never_indexed(tmp_path):
    photos = tmp_path / "photos"
    small_photos(photos, 2)
    lib = photos / "my library"  # the library lives among the photos it indexes
    with Library(str(lib), model="test-tiny") as L:
        assert L.index([str(photos)]).added == 2
    thumbs = [make_photo(lib / "thumbnails" / "ab" / f"t{i}.jpg", (9, 9, 9), pattern=i) for i in range(3)]
    other = photos / "other"  # another library's folder, with its own thumbnails
    with Library(str(other), model="test-tiny"):
        pass
    make_photo(other / "thumbnails" / "c.jpg", (1, 2, 3))
    app = photos / "app"  # another program's catalog.sqlite does not make a folder a library
    app.mkdir()
    foreign = sqlite3.connect(app / "catalog.sqlite")
    foreign.execute("CREATE TABLE albums(name TEXT)")
    foreign.commit()
    foreign.close()
    app_photo = make_photo(app / "a.jpg", (200, 100, 0), pattern=5)
    r = cli_json(lib, "index")
    assert r["added"] == 1 and r["unchanged"] == 2
    paths = library_paths(lib)
    assert len(paths) == 3 and all(Path(p).parent == photos for p in paths - {str(app_photo)}), paths
    assert all(t.exists() for t in thumbs)
    for target in (lib, lib / "thumbnails", other):
        p = cli(lib, "index", str(target))
        assert p.returncode == 1 and "library folder" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert cli_json(lib, "folder", "list") == [str(photos)]


def test_a_photo_folder_that_became_a_library_keeps_its_photos(tmp_path, indexed):
    lib, photos = indexed
    with Library(str(tmp_path / "photos"), model="test-tiny"):  # a library created in the photo folder
        pass
    with Library(str(lib)) as L:
        r = L.index()
        assert (r.removed, r.unchanged) == (0, 0)
        assert any("holds a clipdesk library" in p.reason for p in r.problems)
        assert L.status()["images"] == 4 and L.status()["labels"] == {"first": 1}


# ---------------------------------------------------------------------- 5. links out of the library
def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, indexed):
    lib, _ = indexed
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (lib / "lock").unlink()
    os.symlink(victim, lib / "lock")
    p = cli(lib, "index")
    assert p.returncode == 1 and "symbolic link" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert victim.read_text() == "precious\n"


def test_a_dangling_catalog_link_creates_nothing_outside(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    target = tmp_path / "elsewhere" / "catalog.sqlite"
    target.parent.mkdir()
    os.symlink(target, lib / "catalog.sqlite")
    small_photos(tmp_path / "photos", 1)
    for args in (("status",), ("index", str(tmp_path / "photos"), "--model", "test-tiny")):
        p = cli(lib, *args)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert not target.exists()


@pytest.mark.parametrize("name", ["vectors.faiss", "catalog.sqlite-wal", "catalog.sqlite-shm", "probes"])
def test_other_library_files_that_are_links_are_refused(tmp_path, indexed, name):
    lib, _ = indexed
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_bytes(b"keep me")
    if name == "probes":
        os.symlink(outside, lib / name)
    else:
        (lib / name).unlink(missing_ok=True)
        os.symlink(victim, lib / name)
    p = cli(lib, "status")
    assert p.returncode == 1 and "symbolic link" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert victim.read_bytes() == b"keep me" and sorted(os.listdir(outside)) == ["victim"]
    with pytest.raises(LibraryFileError, match="symbolic link"):
        Library(str(lib))


@pytest.mark.parametrize("name", ["vectors.faiss", "lock"])
def test_library_files_that_are_fifos_are_refused_without_hanging(tmp_path, indexed, name):
    lib, photos = indexed
    (lib / name).unlink(missing_ok=True)
    os.mkfifo(lib / name)
    command = ("similar", str(photos[1])) if name == "vectors.faiss" else ("index",)
    rc, out, err, peak, killed = run_watched(lib, *command, timeout=60)
    assert not killed, killed
    assert rc == 1 and "named pipe" in err and "Traceback" not in err, err


# ---------------------------------------------------------------------- 6. read-only libraries
def _read_only_checks(mnt: Path, photos: list[Path], extra_label: str | None = None) -> None:
    status = cli_json(mnt, "status")
    assert status["images"] == 4 and status["labels"].get("first") == 1
    if extra_label:
        assert extra_label in status["labels"]  # rows only the WAL holds are read
    hits = cli_json(mnt, "similar", str(photos[0]), "-k", "3")
    assert len(hits) == 3 and str(photos[0]) not in {h["path"] for h in hits}
    assert sorted(cli_json(mnt, "folder", "list")) == [str(photos[0].parent)]
    assert cli_json(mnt, "repair")["status"] == "ok"
    for args in (("index",), ("label", "add", "second", str(photos[1])), ("folder", "remove", str(photos[0].parent))):
        p = cli(mnt, *args)
        assert p.returncode == 1 and "read-only" in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_read_only_library_is_readable(tmp_path, indexed):
    lib, photos = indexed
    (lib / "vectors.faiss").unlink()  # readers rebuild the cache in memory; nothing is written
    before = sorted(os.listdir(lib))
    with read_only_view(lib, tmp_path / "ro"):
        _read_only_checks(tmp_path / "ro", photos)
    assert sorted(os.listdir(lib)) == before


def test_read_only_library_with_a_live_wal_is_readable(tmp_path, indexed):
    lib, photos = indexed
    writer = sqlite3.connect(lib / "catalog.sqlite", isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO labels(name, created) VALUES ('wal-only', 0)")
    assert (lib / "catalog.sqlite-wal").stat().st_size > 0
    try:
        with read_only_view(lib, tmp_path / "ro"):
            _read_only_checks(tmp_path / "ro", photos, "wal-only")
    finally:
        writer.close()


def test_read_only_copy_with_a_wal_but_no_shm_is_readable(tmp_path, indexed):
    lib, photos = indexed
    writer = sqlite3.connect(lib / "catalog.sqlite", isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO labels(name, created) VALUES ('wal-only', 0)")
    copy = tmp_path / "copy"
    shutil.copytree(lib, copy, ignore=shutil.ignore_patterns("*-shm"))  # e.g. burnt to a DVD without it
    writer.close()
    assert (copy / "catalog.sqlite-wal").stat().st_size > 0 and not (copy / "catalog.sqlite-shm").exists()
    with read_only_view(copy, tmp_path / "ro"):
        _read_only_checks(tmp_path / "ro", photos, "wal-only")
    assert not (copy / "catalog.sqlite-shm").exists()


def test_read_only_library_writes_are_refused_in_process(tmp_path, indexed):
    lib, photos = indexed
    with read_only_view(lib, tmp_path / "ro"):
        with Library(str(tmp_path / "ro")) as L:
            assert L.catalog.read_only and L.status()["images"] == 4
            for write in (lambda: L.index(), lambda: L.create_label("x"), lambda: L.remove_folder(str(photos[0].parent))):
                with pytest.raises(LibraryReadOnlyError, match="read-only"):
                    write()


# ---------------------------------------------------------------------- schema 2 (inode numbers)
def _make_schema_1(lib: Path) -> None:
    _make_schema_2(lib)
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("ALTER TABLE images DROP COLUMN ino")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


def _make_schema_2(lib: Path) -> None:
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("ALTER TABLE label_members DROP COLUMN corrected")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()


def test_schema_1_catalog_is_migrated_with_a_backup(tmp_path, indexed):
    lib, photos = indexed
    _make_schema_1(lib)
    with Library(str(lib)) as L:
        assert L.catalog.version == SCHEMA_VERSION == 3
        assert L.status()["images"] == 4 and L.status()["labels"] == {"first": 1}
        os.rename(photos[0], photos[0].with_name("renamed.jpg"))
        r = L.index()
        assert (r.moved, r.added, r.removed) == (1, 0, 0)
        assert L.labels() == {"first": [str(photos[0].with_name("renamed.jpg"))]}
    conn = sqlite3.connect(lib / "catalog.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM images WHERE ino != 0").fetchone()[0] == 4  # stamped by the rescan
    conn.close()
    backup = sqlite3.connect(lib / "catalog.sqlite.v1.bak")
    assert backup.execute("PRAGMA user_version").fetchone()[0] == 1
    assert backup.execute("SELECT count(*) FROM images").fetchone()[0] == 4
    backup.close()


def test_schema_2_catalog_gains_the_correction_mark_and_keeps_its_labels(tmp_path, indexed):
    lib, photos = indexed
    _make_schema_2(lib)
    with Library(str(lib)) as L:
        assert L.catalog.version == 3 and L.labels() == {"first": [str(photos[0])]}
        assert L.corrections() == {}  # every label given before is a plain one
        L.add_to_label("first", [str(photos[1])], corrected=True)
        L.add_to_label("first", [str(photos[0])], corrected=True)  # already in: stays as given
        assert L.corrections() == {"first": {str(photos[1])}}
    backup = sqlite3.connect(lib / "catalog.sqlite.v2.bak")
    assert backup.execute("PRAGMA user_version").fetchone()[0] == 2
    backup.close()


def test_salvage_keeps_labels_of_an_older_catalog_and_the_marks_of_a_current_one(tmp_path, indexed):
    from clipdesk.indexer.catalog import salvage

    lib, photos = indexed
    with Library(str(lib)) as L:
        L.add_to_label("second", [str(photos[1])], corrected=True)
    current = salvage(str(lib / "catalog.sqlite"), str(tmp_path / "fresh3"))
    assert current["label_members"] == 2
    with Library(str(tmp_path / "fresh3")) as L:
        assert L.catalog.corrections() == {"second": {L.catalog.id_for_path(str(photos[1]))}}
    _make_schema_2(lib)  # a damaged catalog may be older than this clipdesk: no mark column
    older = salvage(str(lib / "catalog.sqlite"), str(tmp_path / "fresh2"))
    assert older["label_members"] == 2
    with Library(str(tmp_path / "fresh2")) as L:
        assert sorted(L.catalog.labels()) == ["first", "second"] and L.catalog.corrections() == {}


def test_migration_backup_name_that_is_a_link_is_refused(tmp_path, indexed):
    lib, _ = indexed
    _make_schema_1(lib)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.symlink(victim, lib / "catalog.sqlite.v1.bak")
    with pytest.raises(LibraryFileError, match="symbolic link"):
        Library(str(lib))
    assert victim.read_bytes() == b"keep me"


def test_schema_1_library_on_read_only_media_is_read_without_migrating(tmp_path, indexed):
    lib, photos = indexed
    _make_schema_1(lib)
    with read_only_view(lib, tmp_path / "ro"):
        with Library(str(tmp_path / "ro")) as L:
            assert L.catalog.version == 1 and L.status()["images"] == 4
            assert [r.path for r in L.similar(str(tmp_path / "photos" / "p0.jpg"), k=1)] != []
    assert not (lib / "catalog.sqlite.v1.bak").exists()


def test_rows_registered_through_a_link_by_an_older_version_are_merged_with_their_labels(tmp_path, indexed):
    """The state the old bug left: one folder registered under its real path and a link, every
    photo with two rows carrying different labels. The next index merges them, labels united."""
    lib, photos = indexed
    alias = tmp_path / "alias"
    os.symlink(tmp_path / "photos", alias)
    conn = sqlite3.connect(lib / "catalog.sqlite")
    conn.execute("INSERT INTO folders(path, added) VALUES (?, 0)", (os.fsencode(str(alias)),))
    conn.execute("INSERT INTO images(path, size, mtime_ns, hash, width, height, taken, vector, vgen, ino)"
                 " SELECT CAST(replace(path, ?, ?) AS BLOB), size, mtime_ns, hash, width, height, taken, vector, vgen, ino"
                 " FROM images", (os.fsencode(str(tmp_path / "photos")), os.fsencode(str(alias))))
    conn.execute("INSERT INTO labels(name, created) VALUES ('via-link', 0)")
    conn.execute("INSERT INTO label_members(label, image_id, corrected) SELECT 'via-link', id, 1 FROM images"
                 " WHERE path=?", (os.fsencode(str(alias / photos[1].name)),))  # given as a correction
    conn.commit()
    conn.close()
    with Library(str(lib)) as L:
        assert L.status()["images"] == 8
        r = L.index()
        assert (r.added, r.removed, r.unchanged) == (0, 0, 4)
        assert L.catalog.folders() == [str(tmp_path / "photos")]
        assert L.status()["images"] == 4 and len(L.vectors) == 4
        assert L.labels() == {"first": [str(photos[0])], "via-link": [str(photos[1])]}
        assert L.corrections() == {"via-link": {str(photos[1])}}  # the mark moves with the label
