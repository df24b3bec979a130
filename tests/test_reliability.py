"""Never lose a library: bad files, kills, corruption, disk full, concurrent use, security.

Fault-injection tests with real files and real processes.
"""
import json
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from clipdesk.errors import (CatalogCorruptError, DiskFullError, LibraryLockedError, ModelMismatchError,
                             SchemaVersionError)
from clipdesk.indexer import decode
from clipdesk.indexer.decode import decode_image
from clipdesk.indexer.errors import UnreadableImageError
from clipdesk.library import Library, repair_library
from conftest import SUBPROCESS_TIMEOUT, catalog_rows, make_photo

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipdesk.cli"]


def run_cli(library, *args, timeout=SUBPROCESS_TIMEOUT):
    return subprocess.run([*CLI, "--library", str(library), *args], capture_output=True, text=True,
                          timeout=timeout)


# ---------------------------------------------------------------------- bad input
def _png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _jpeg_bytes(img: Image.Image, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, "JPEG", **kw)
    return buf.getvalue()


def _upright() -> Image.Image:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    return img


# raw image whose EXIF orientation tag o makes it upright again
_TO_RAW = {1: [], 2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180],
           4: [Image.Transpose.FLIP_TOP_BOTTOM], 5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_90],
           7: [Image.Transpose.TRANSVERSE], 8: [Image.Transpose.ROTATE_270]}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    raw = _upright()
    for op in _TO_RAW[orientation]:
        raw = raw.transpose(op)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    raw.save(path, "JPEG", exif=exif.tobytes(), quality=95)
    d = decode_image(str(path), min_side=64)
    assert d.image.size == (40, 20) and (d.width, d.height) == (40, 20)
    arr = np.asarray(d.image).astype(int)
    assert arr[:, :15, 0].mean() > 200 and arr[:, :15, 2].mean() < 60  # red on the left
    assert arr[:, 25:, 2].mean() > 200 and arr[:, 25:, 0].mean() < 60  # blue on the right


def make_bad_folder(root: Path) -> dict[str, str | None]:
    """Bad and odd files beside good photos. Maps path → expected reason fragment (None: indexes fine)."""
    root.mkdir(parents=True)
    good = make_photo(root / "good.jpg", (10, 150, 60), pattern=1)
    data = good.read_bytes()
    cases: dict[str, str | None] = {str(good): None}

    def put(name: str, content: bytes, reason: str | None) -> None:
        p = root / name
        p.write_bytes(content)
        cases[str(p)] = reason

    put("zero.jpg", b"", "empty")
    put("truncated.jpg", data[: len(data) // 2], "truncated or damaged")
    put("random.jpg", np.random.default_rng(0).bytes(5000), "not a recognised image")
    put("text.png", b"hello, this is not a picture\n" * 20, "contains text")
    put("bomb.png", _png_declaring(50000, 50000), "safety limit")
    put("heic photo.heic", b"\x00\x00\x00\x18ftypheic" + b"\x00" * 100, "clipdesk[heic]")
    import io

    def save(name: str, img: Image.Image, fmt: str, **kw) -> None:
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        put(name, buf.getvalue(), None)

    save("png named.jpg", Image.new("RGB", (30, 30), (1, 2, 3)), "PNG")
    save("one pixel.png", Image.new("RGB", (1, 1), (9, 9, 9)), "PNG")
    save("cmyk.jpg", Image.new("CMYK", (40, 30), (0, 200, 200, 0)), "JPEG")
    save("sixteen.png", Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50), "PNG")
    pal = Image.new("P", (30, 30), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    save("palette.png", pal, "PNG", transparency=0)
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 255, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put("animated.gif", buf.getvalue(), None)
    bad_exif = data[:2] + b"\xff\xe1" + struct.pack(">H", 40) + b"Exif\x00\x00II*\x00" + b"\xff" * 28 + data[2:]
    put("corrupt exif.jpg", bad_exif, None)
    for name in ("it's \"quoted\".jpg", "dollar $HOME.jpg", "new\nline.jpg", "spaces  in  name.jpg"):
        put(name, data, None)
    put(os.fsdecode(b"caf\xe9-latin1.jpg"), data, None)
    deep = root
    for i in range(6):
        deep = deep / (f"{i}" + "d" * 200)
    deep.mkdir(parents=True)
    long_file = deep / ("l" * 200 + ".jpg")
    long_file.write_bytes(data)
    cases[str(long_file)] = None
    os.symlink(root / "does-not-exist.jpg", root / "broken link.jpg")
    cases[str(root / "broken link.jpg")] = "broken symbolic link"
    os.symlink(root / "loop-b.jpg", root / "loop-a.jpg")
    os.symlink(root / "loop-a.jpg", root / "loop-b.jpg")
    cases[str(root / "loop-a.jpg")] = "cannot be read"
    cases[str(root / "loop-b.jpg")] = "cannot be read"
    (root / "sub").mkdir()
    os.symlink(root, root / "sub" / "back to root")  # a folder loop
    (root / "folder.jpg").mkdir()  # a folder named like an image, with a photo inside
    inner = make_photo(root / "folder.jpg" / "inner.jpg", (200, 200, 10), pattern=3)
    cases[str(inner)] = None
    return cases


def test_bad_files_are_reported_and_skipped(tmp_path):
    cases = make_bad_folder(tmp_path / "photos")
    lib = tmp_path / "lib"
    p = run_cli(lib, "index", str(tmp_path / "photos"), "--model", "test-tiny", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    good = [k for k, v in cases.items() if v is None]
    bad = {k: v for k, v in cases.items() if v is not None}
    assert report["added"] == len(good) and report["failed"] == len(bad)
    status = json.loads(run_cli(lib, "status", "--json").stdout)
    assert status["images"] == len(good)
    failures = {f["path"]: f["reason"] for f in status["failures"]}
    assert set(failures) == set(bad)
    for path, fragment in bad.items():
        assert fragment in failures[path], (path, failures[path])
    # A later scan retries nothing that did not change.
    again = json.loads(run_cli(lib, "index", "--json").stdout)
    assert (again["added"], again["failed"], again["unchanged"]) == (0, 0, len(cases))
    # ...but a failed file that changes is retried.
    make_photo(tmp_path / "photos" / "zero.jpg", (5, 5, 5), pattern=9)
    third = json.loads(run_cli(lib, "index", "--json").stdout)
    assert (third["updated"], third["failed"]) == (1, 0)


def test_unreadable_file_reason(tmp_path, monkeypatch):
    path = make_photo(tmp_path / "locked.jpg")
    if os.geteuid() != 0:  # a real permission problem where the OS enforces one
        os.chmod(path, 0)
    else:  # root reads anything: inject the error the OS would raise
        def deny(p, *a, **k):
            raise PermissionError(13, "Permission denied", str(p))
        monkeypatch.setattr(decode, "open_regular", deny)
    with pytest.raises(UnreadableImageError, match="permission denied"):
        decode_image(str(path))


def test_file_deleted_or_replaced_between_scan_and_decode(tmp_path, monkeypatch):
    from clipdesk.indexer import pipeline
    from clipdesk.indexer.scan import ScannedFile

    root = tmp_path / "photos"
    keep = make_photo(root / "keep.jpg", pattern=1)
    swapped = make_photo(root / "swapped.jpg", pattern=2)
    real_scan = pipeline.scan

    def racy_scan(roots, on_problem=None, **kw):
        for f in real_scan(roots, on_problem, **kw):
            yield f if f.path != str(swapped) else ScannedFile(f.path, f.size + 1, f.mtime_ns - 5)
        yield ScannedFile(str(root / "vanished.jpg"), 1234, 1)  # listed, then deleted

    monkeypatch.setattr(pipeline, "scan", racy_scan)
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        r = lib.index([str(root)])
        assert (r.added, r.failed) == (2, 1)
        assert "disappeared" in dict(lib.catalog.failures())[str(root / "vanished.jpg")]
        monkeypatch.setattr(pipeline, "scan", real_scan)
        r2 = lib.index()
        # the replaced file's recorded (stale) stat differs from disk: re-embedded; the ghost is gone
        assert (r2.updated, r2.removed, r2.unchanged) == (1, 1, 1)
        assert lib.catalog.counts() == (2, 0)
        assert keep.exists()


# ---------------------------------------------------------------------- crashes
DRIVER = r"""
import os, signal, sys
from clipdesk.indexer import files
mode = os.environ.get("CLIPDESK_TEST_KILL")
if mode == "vector-save":
    real = os.replace
    def replace(src, dst):
        if str(dst).endswith("vectors.faiss"):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    files.os.replace = replace
if os.environ.get("CLIPDESK_TEST_SLOW"):
    import time
    from clipdesk.runtime import encoder as models
    real_embed = models.FolderEncoder.embed
    def slow(self, prepared):
        time.sleep(float(os.environ["CLIPDESK_TEST_SLOW"]))
        return real_embed(self, prepared)
    models.FolderEncoder.embed = slow
if os.environ.get("CLIPDESK_TEST_HOLD"):  # after a few batches, wait while this file exists
    import time
    from clipdesk.runtime import encoder as models
    real_embed, done = models.FolderEncoder.embed, [0]
    def held(self, prepared):
        done[0] += 1
        while done[0] > 8 and os.path.exists(os.environ["CLIPDESK_TEST_HOLD"]):
            time.sleep(0.05)
        return real_embed(self, prepared)
    models.FolderEncoder.embed = held
from clipdesk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def start_index(library, folder, env_extra=None, batch=8):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-c", DRIVER, "--library", str(library), "index", str(folder),
                             "--model", "test-tiny", "--batch-size", str(batch), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def many_photos(root: Path, n: int) -> Path:
    for i in range(n):
        make_photo(root / f"d{i % 5}" / f"p{i:04d}.jpg", ((i * 37) % 255, (i * 91) % 255, (i * 13) % 255),
                   size=(48, 40), pattern=i)
    return root


def assert_consistent(library) -> int:
    with Library(str(library)) as lib:
        conn = sqlite3.connect(f"file:{library}/catalog.sqlite?mode=ro", uri=True)
        neither = conn.execute("SELECT count(*) FROM images WHERE vector IS NULL AND error IS NULL").fetchone()[0]
        conn.close()
        assert neither == 0  # every row has its vector (or a recorded failure)
        store = lib.vectors
        ids = faiss.vector_to_array(store.index.id_map) if store.dim > 1 and len(store) else np.zeros(0)
        cat_ids = np.concatenate([i for i, _ in lib.catalog.iter_vectors()] or [np.zeros(0)])
        assert len(ids) == len(set(ids.tolist()))  # no duplicates in the index
        assert sorted(ids.tolist()) == sorted(cat_ids.tolist())  # every vector an image, every image a vector
        st = lib.status()
        assert st["images"] == len(cat_ids)
        return st["images"]


@pytest.mark.parametrize("when", ["early", "mid-batch", "vector-save"])
def test_kill_9_loses_nothing_committed(tmp_path, when):
    photos = many_photos(tmp_path / "photos", 240)
    lib = tmp_path / "lib"
    env = {"CLIPDESK_TEST_SLOW": "0.03"} if when != "vector-save" else {"CLIPDESK_TEST_KILL": "vector-save"}
    proc = start_index(lib, photos, env)
    if when == "early":
        deadline = time.monotonic() + 60
        while not (lib / "catalog.sqlite").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    elif when == "mid-batch":
        deadline = time.monotonic() + 120
        while catalog_rows(lib) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    before = assert_consistent(lib) if (lib / "catalog.sqlite").exists() else 0
    if when == "mid-batch":
        assert 100 <= before < 240
    finish = run_cli(lib, "index", str(photos), "--model", "test-tiny", "--json")
    assert finish.returncode == 0, finish.stderr
    report = json.loads(finish.stdout)
    assert report["added"] + report["unchanged"] == 240 and report["failed"] == 0
    assert assert_consistent(lib) == 240


# ---------------------------------------------------------------------- corruption and mismatches
def test_damaged_catalog_is_explained_and_repaired(tmp_path, photos):
    lib_dir = tmp_path / "lib"
    with Library(str(lib_dir), model="test-tiny") as lib:
        lib.index([str(photos)])
        lib.add_to_label("keep", [str(next((photos / "home").iterdir()))])
    cat = lib_dir / "catalog.sqlite"
    original = cat.read_bytes()
    cat.write_bytes(b"this is not a database" * 200)
    with pytest.raises(CatalogCorruptError, match=r"catalog\.sqlite.*clipdesk repair"):
        Library(str(lib_dir))
    p = run_cli(lib_dir, "status")
    assert p.returncode == 1 and "clipdesk repair" in p.stderr and "Traceback" not in p.stderr
    res = json.loads(run_cli(lib_dir, "repair", "--json").stdout)
    assert res["status"] == "repaired" and Path(res["damaged_copy"]).exists()
    assert all(f.exists() for f in photos.rglob("*.jpg"))  # photos untouched
    with Library(str(lib_dir), model="test-tiny") as lib:
        assert lib.index([str(photos)]).added == 8  # nothing salvageable: re-embedded

    # Partial damage: a page in the middle of the file is overwritten; readable rows survive.
    cat.write_bytes(original)
    for suffix in ("-wal", "-shm"):
        Path(str(cat) + suffix).unlink(missing_ok=True)
    page = 4096
    damaged = bytearray(original)
    n_pages = len(damaged) // page
    assert n_pages >= 3
    damaged[page * (n_pages - 1): page * n_pages] = b"\x00\xff" * (page // 2)
    cat.write_bytes(bytes(damaged))
    res = repair_library(str(lib_dir))
    assert res["status"] in ("repaired", "ok")
    with Library(str(lib_dir)) as lib:
        assert lib.status()["images"] >= 1
        assert_consistent(lib_dir)


def test_other_model_is_refused_and_reembed_converts(tmp_path, photos):
    import open_clip
    import torch

    from clipdesk.runtime.torch_backend import register_project_models

    register_project_models()
    torch.manual_seed(7)
    ckpt = tmp_path / "other.pt"
    torch.save(open_clip.create_model("test-tiny").state_dict(), ckpt)
    lib_dir = tmp_path / "lib"
    with Library(str(lib_dir), model="test-tiny") as lib:
        lib.index([str(photos)])
        lib.add_to_label("fav", [str(photos / "home" / "img_4.jpg")])
    p = run_cli(lib_dir, "search", "x", "--model", "test-tiny", "--weights", str(ckpt))
    assert p.returncode == 1 and "test-tiny" in p.stderr and "+file:" in p.stderr and "--reembed" in p.stderr
    with Library(str(lib_dir), model="test-tiny", weights=str(ckpt)) as lib:
        with pytest.raises(ModelMismatchError):
            lib.index()
        r = lib.index(reembed=True)
        assert r.updated == 8 and lib.model_name.startswith("test-tiny+file:")
        assert lib.labels()["fav"] == [str(photos / "home" / "img_4.jpg")]
    with Library(str(lib_dir)) as lib:  # reopened with no --model: the converted model, weights found
        assert lib.model_name.startswith("test-tiny+file:") and len(lib.search("x", k=3)) == 3
    assert_consistent(lib_dir)


def test_newer_schema_is_refused(tmp_path):
    with Library(str(tmp_path / "lib"), model="test-tiny"):
        pass
    conn = sqlite3.connect(tmp_path / "lib" / "catalog.sqlite")
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(SchemaVersionError, match="newer"):
        Library(str(tmp_path / "lib"))
    conn = sqlite3.connect(tmp_path / "lib" / "catalog.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 99  # not downgraded
    conn.close()


def test_disk_full_keeps_what_was_committed(tmp_path, photos):
    lib_dir = tmp_path / "lib"
    with Library(str(lib_dir), model="test-tiny") as lib:
        lib.index([str(photos)])
        more = many_photos(tmp_path / "more", 60)
        # SQLite's page limit produces the real SQLITE_FULL error path ("database or disk is full").
        pages = lib.catalog._conn.execute("PRAGMA page_count").fetchone()[0]
        lib.catalog._conn.execute(f"PRAGMA max_page_count={pages + 2}")
        with pytest.raises(DiskFullError, match="full"):
            lib.index([str(more)], batch_size=4)
    with Library(str(lib_dir)) as lib:
        assert lib.status()["images"] >= 8
        assert {r.path for r in lib.search("x", k=100, folder=str(photos))} == {str(p) for p in photos.rglob("*.jpg")}
    assert_consistent(lib_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_disk_full_on_a_real_tiny_filesystem(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        photos = many_photos(tmp_path / "photos", 400)
        p = run_cli(mnt / "lib", "index", str(photos), "--model", "test-tiny", "--json")
        assert p.returncode == 1 and "full" in p.stderr and "Traceback" not in p.stderr
        st = run_cli(mnt / "lib", "status", "--json")
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["images"] > 0
    finally:
        subprocess.run(["umount", str(mnt)])


# ---------------------------------------------------------------------- concurrent use
def test_one_writer_many_readers(tmp_path):
    photos = many_photos(tmp_path / "photos", 200)
    lib = tmp_path / "lib"
    hold = tmp_path / "hold"  # the writer stops after 8 batches until the readers have run
    hold.touch()
    writer = start_index(lib, photos, {"CLIPDESK_TEST_HOLD": str(hold)}, batch=4)
    try:
        deadline = time.monotonic() + 120
        while catalog_rows(lib) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run_cli(lib, "index", str(photos), "--model", "test-tiny")
        assert second.returncode == 1 and f"in use by PID {writer.pid}" in second.stderr
        reader = run_cli(lib, "search", "a photo", "-k", "5", "--json")
        assert reader.returncode == 0, reader.stderr
        assert len(json.loads(reader.stdout)) == 5
        assert writer.poll() is None  # the reads happened while the writer was still indexing
        with Library(str(lib)) as in_process:  # the GUI uses the same Library, so the same rules
            with pytest.raises(LibraryLockedError, match="in use by PID"):
                in_process.index()
    finally:
        hold.unlink()
        out, err = writer.communicate(timeout=SUBPROCESS_TIMEOUT)
    assert writer.returncode == 0, err
    assert json.loads(out)["added"] == 200


# ---------------------------------------------------------------------- security
def test_no_pickle_and_safe_torch_load():
    sources = [p for d in ("clipdesk", "indexer", "ui") for p in (REPO / d).rglob("*.py")]
    assert len(sources) > 10
    for p in sources:
        text = p.read_text()
        assert "import pickle" not in text and "pickle.load" not in text, p
        assert "allow_pickle=True" not in text, p
        for line in text.splitlines():
            if "torch.load(" in line:
                assert "weights_only=True" in line, (p, line)
        assert "shell=True" not in text and "os.system(" not in text, p
        # Network access only where the model's one-time download lives (its offline check) and
        # where the Ray engine checks that a cluster's address answers before handing it to Ray.
        if p.name not in ("download.py", "cluster.py"):
            assert "import socket" not in text and "from socket" not in text, p


def test_library_files_have_default_permissions(tmp_path, photos):
    umask = os.umask(0)
    os.umask(umask)
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        lib.index([str(photos)])
        lib.add_to_label("a", [str(photos / "home" / "img_4.jpg")])
        lib.train("p")
    for name in ("catalog.sqlite", "vectors.faiss", "probes/p.npz"):
        mode = (tmp_path / "lib" / name).stat().st_mode & 0o777
        assert mode == 0o666 & ~umask, (name, oct(mode))
