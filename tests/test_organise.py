"""Sort into folders (clipdesk.organise): copy, move, link; never overwrite; the library follows
moves; undo; kill -9 and disk full leave no photo lost or duplicated."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipdesk import journal as journal_mod
from clipdesk import organise
from clipdesk.errors import DiskFullError
from clipdesk.journal import Journal
from clipdesk.library import Classification, Library
from conftest import make_photo


def content(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` (relative path -> sha256); links are listed as 'link'."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def all_photo_hashes(*roots: Path) -> list[str]:
    return sorted(h for r in roots if r.exists() for h in content(r).values() if not h.startswith("link:"))


@pytest.fixture
def indexed(library, photos):
    library.index([str(photos)])
    return library, photos


@pytest.fixture
def trained(indexed):
    """A library with a probe 'where' (trip / home): sorting by it needs no model in a subprocess."""
    lib, photos = indexed
    lib.add_to_label("trip", [str(p) for p in (photos / "trip 2019").glob("*.jpg")])
    lib.add_to_label("home", [str(p) for p in (photos / "home").glob("*.jpg")])
    lib.train("where", ["trip", "home"])
    return lib, photos


def rows_by_folder(lib) -> list[Classification]:
    """A deterministic 'classifier': the category is the photo's folder name (a/b nests)."""
    return [Classification(i.path, "trips/2019" if "trip" in i.path else "home", 0.9, i.id)
            for i in lib.catalog.all_images()]


def test_copy_never_overwrites_and_undo_removes_copies_and_folders(indexed, tmp_path):
    lib, photos = indexed
    into = tmp_path / "sorted"
    # same name from two folders, and a file already at one destination
    make_photo(photos / "home" / "img_0.jpg", (1, 2, 3), pattern=99)
    (into / "home").mkdir(parents=True)
    (into / "home" / "img_4.jpg").write_bytes(b"the user's own file")
    lib.index()
    before = content(photos)
    plan = organise.plan_sort(lib, rows_by_folder(lib), str(into), "copy")
    dests = sorted(Path(p.dest).relative_to(into).as_posix() for p in plan.placements)
    assert "home/img_4 (1).jpg" in dests and "home/img_0.jpg" in dests
    assert "trips/2019/img_0.jpg" in dests and len(dests) == len(set(dests)) == 9
    report = organise.apply_sort(lib, plan)
    assert len(report.placed) == 9
    assert (into / "home" / "img_4.jpg").read_bytes() == b"the user's own file"
    assert content(photos) == before  # copies leave the originals alone
    assert sorted(h for k, h in content(into).items() if k != "home/img_4.jpg") == all_photo_hashes(photos)
    undo = organise.undo(lib)
    assert undo.reverted == 9 and undo.conflicts == []
    assert content(into) == {"home/img_4.jpg": hashlib.sha256(b"the user's own file").hexdigest()}
    assert not (into / "trips").exists()  # folders it made are gone again


def test_move_library_follows_and_undo_puts_back(indexed, tmp_path):
    lib, photos = indexed
    lib.add_to_label("keep", [str(p) for p in sorted(photos.rglob("*.jpg"))[:3]])
    ids_before = {i.id: Path(i.path).name for i in lib.catalog.all_images()}
    labels_before = {k: sorted(Path(p).name for p in v) for k, v in lib.labels().items()}
    hashes = all_photo_hashes(photos)
    into = tmp_path / "sorted"
    report = organise.apply_sort(lib, organise.plan_sort(lib, rows_by_folder(lib), str(into), "move"))
    assert len(report.placed) == 8
    assert not list(photos.rglob("*.jpg")) and all_photo_hashes(into) == hashes  # moved, not copied
    images = lib.catalog.all_images()
    assert {i.id: Path(i.path).name for i in images} == ids_before  # same rows: vectors stay
    assert all(i.path.startswith(str(into)) for i in images)
    assert {k: sorted(Path(p).name for p in v) for k, v in lib.labels().items()} == labels_before
    rescan = lib.index()  # the library does not lose them on the next rescan
    assert (rescan.added, rescan.removed, rescan.moved) == (0, 0, 0) and lib.catalog.counts()[0] == 8
    hit = lib.search(lib.catalog.vectors_for([images[0].id])[0], k=1)[0]
    assert hit.path == images[0].path
    assert str(into) in lib.catalog.folders()
    undo = organise.undo(lib)
    assert undo.reverted == 8 and not into.exists()
    assert lib.catalog.folders() == [str(photos)]  # the folder this sort registered is forgotten again
    assert all_photo_hashes(photos) == hashes
    assert all(i.path.startswith(str(photos)) for i in lib.catalog.all_images())
    assert {i.id for i in lib.catalog.all_images()} == set(ids_before)


def test_link_and_dry_run_through_the_cli(trained, tmp_path):
    lib, photos = trained
    folder = lib.folder
    lib.close()
    into = tmp_path / "links"
    cli = [sys.executable, "-m", "clipdesk.cli", "--library", folder]
    p = subprocess.run([*cli, "sort", "--classify", "red,green,blue", "--into", str(into), "--link", "--dry-run",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["mode"] == "link" and len(plan["placements"]) == 8 and sum(plan["categories"].values()) == 8
    assert not into.exists()
    p = subprocess.run([*cli, "sort", "--probe", "where", "--into", str(into), "--link", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    links = [x for x in into.rglob("*") if x.is_symlink()]
    assert len(links) == 8 and all(Path(os.readlink(x)).is_file() for x in links)
    assert {x.parent.name for x in links} <= {"trip", "home"}
    p = subprocess.run([*cli, "sort", "--undo", "--json"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and json.loads(p.stdout)["reverted"] == 8 and not into.exists()
    p = subprocess.run([*cli, "sort", "--classify", "a,b"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--into" in p.stderr
    with Library(folder) as again, pytest.raises(journal_mod.NothingToUndoError):
        organise.undo(again)


def test_bad_destinations_are_refused(indexed, tmp_path, monkeypatch):
    lib, photos = indexed
    rows = rows_by_folder(lib)
    with pytest.raises(organise.OrganiseError, match="inside the library"):
        organise.plan_sort(lib, rows, os.path.join(lib.folder, "sorted"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(organise.OrganiseError, match="not a folder"):
        organise.plan_sort(lib, rows, str(tmp_path / "file"))
    real = os.access
    monkeypatch.setattr(organise.os, "access", lambda p, m: False if str(p) == str(tmp_path) else real(p, m))
    with pytest.raises(organise.OrganiseError, match="read-only"):
        organise.plan_sort(lib, rows, str(tmp_path / "new" / "deeper"))
    monkeypatch.undo()
    with pytest.raises(organise.OrganiseError, match="cannot be a folder"):
        organise.plan_sort(lib, [Classification(rows[0].path, "../escape", 1.0, 1)], str(tmp_path / "x"))


def test_disk_full_during_copy_then_undo(indexed, tmp_path, monkeypatch):
    lib, photos = indexed
    into = tmp_path / "sorted"
    real = journal_mod.shutil.copyfileobj
    calls = []

    def copyfileobj(fin, fout, length=0):
        calls.append(1)
        if len(calls) == 4:
            fout.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fin, fout, length)

    monkeypatch.setattr(journal_mod.shutil, "copyfileobj", copyfileobj)
    with pytest.raises(DiskFullError):
        organise.apply_sort(lib, organise.plan_sort(lib, rows_by_folder(lib), str(into), "copy"))
    assert len([p for p in into.rglob("*") if p.is_file()]) == 3  # no partial copy, no temp file left
    assert organise.undo(lib).reverted == 3 and not into.exists()


def test_move_across_file_systems_copies_then_removes(indexed, tmp_path, monkeypatch):
    lib, photos = indexed
    hashes = all_photo_hashes(photos)

    def exdev(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(journal_mod, "rename_noreplace", exdev)
    into = tmp_path / "other-disk"
    organise.apply_sort(lib, organise.plan_sort(lib, rows_by_folder(lib), str(into), "move"))
    assert not list(photos.rglob("*.jpg")) and all_photo_hashes(into) == hashes
    assert all(i.path.startswith(str(into)) for i in lib.catalog.all_images())
    organise.undo(lib)
    assert all_photo_hashes(photos) == hashes and not into.exists()


KILL_DRIVER = r"""
import os, signal, sys
from clipdesk import journal
n, how = int(os.environ["KILL_AT"]), os.environ["KILL_HOW"]
count = [0]
if how == "rename":
    real = journal.rename_noreplace
    def patched(src, dst):
        count[0] += 1
        if count[0] == n:
            real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)  # moved, but neither journaled nor followed yet
        real(src, dst)
    journal.rename_noreplace = patched
else:  # a cross-device move killed between its complete copy and the removal of the original
    def exdev(src, dst):
        raise OSError(18, "Invalid cross-device link")
    journal.rename_noreplace = exdev
    real_unlink = os.unlink
    def unlink(path, *a, **k):
        if str(path).endswith(".jpg") and "sorted" not in str(path):
            count[0] += 1
            if count[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
        real_unlink(path, *a, **k)
    journal.os.unlink = unlink
from clipdesk.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("how", ["rename", "exdev"])
def test_kill_9_during_sort_move_loses_and_duplicates_nothing(trained, tmp_path, how):
    lib, photos = trained
    hashes = all_photo_hashes(photos)
    folder = lib.folder
    lib.close()
    into = tmp_path / "sorted"
    env = dict(os.environ, KILL_AT="3", KILL_HOW=how)
    args = ["--library", folder, "sort", "--probe", "where", "--into", str(into), "--move"]
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    after_kill = all_photo_hashes(photos, into)
    if how == "rename":
        assert after_kill == hashes  # every photo exactly once
    else:
        assert len(after_kill) == len(hashes) + 1  # one photo in both places until recovery
    cli = [sys.executable, "-m", "clipdesk.cli", "--library", folder]
    r = subprocess.run([*cli, "sort", "--resume", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert not list(photos.rglob("*.jpg")) and all_photo_hashes(into) == hashes
    assert not [x for x in into.rglob("*") if x.name.endswith(".tmp")]
    st = subprocess.run([*cli, "status", "--json"], capture_output=True, text=True, timeout=120)
    assert json.loads(st.stdout)["images"] == 8
    with Library(folder) as again:
        assert all(i.path.startswith(str(into)) for i in again.catalog.all_images())
    r = subprocess.run([*cli, "sort", "--undo", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["conflicts"] == []
    assert all_photo_hashes(photos) == hashes and not into.exists()


def test_undo_of_an_interrupted_sort_without_resume(trained, tmp_path):
    lib, photos = trained
    hashes = all_photo_hashes(photos)
    folder = lib.folder
    lib.close()
    into = tmp_path / "sorted"
    env = dict(os.environ, KILL_AT="5", KILL_HOW="exdev")
    args = ["--library", folder, "sort", "--probe", "where", "--into", str(into), "--move"]
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, *args], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == -signal.SIGKILL
    op = Journal(folder).interrupted("sort")
    assert [s.state for s in op.steps].count("done") == 4
    r = subprocess.run([sys.executable, "-m", "clipdesk.cli", "--library", folder, "sort", "--undo", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all_photo_hashes(photos) == hashes and not into.exists()


def test_sidecars_travel_with_their_photo(indexed, tmp_path):
    lib, photos = indexed
    home = sorted((photos / "home").glob("*.jpg"))
    (Path(str(home[0]) + ".xmp")).write_text("<digikam sidecar/>")  # photo.ext.xmp: moves along
    (home[1].with_suffix(".xmp")).write_text("<lightroom sidecar/>")  # photo.xmp, its only user: moves
    (home[2].with_suffix(".CR2")).write_bytes(b"raw twin")  # not indexed: photo.xmp is the RAW's, it stays
    (home[2].with_suffix(".xmp")).write_text("<raw's sidecar/>")
    into = tmp_path / "sorted"
    (into / "home").mkdir(parents=True)
    (into / "home" / home[0].name).write_bytes(b"taken")  # the photo gets a suffix; its sidecar follows
    before = content(photos)
    plan = organise.plan_sort(lib, rows_by_folder(lib), str(into), "move")
    organise.apply_sort(lib, plan)
    renamed = into / "home" / f"{home[0].stem} (1).jpg"
    assert renamed.exists() and Path(str(renamed) + ".xmp").read_text() == "<digikam sidecar/>"
    assert (into / "home" / f"{home[1].stem}.xmp").read_text() == "<lightroom sidecar/>"
    assert not home[1].with_suffix(".xmp").exists()
    assert not (into / "home" / f"{home[2].stem}.xmp").exists()  # the JPEG never takes the RAW's keywords
    assert home[2].with_suffix(".xmp").read_text() == "<raw's sidecar/>"
    organise.undo(lib)
    assert content(photos) == before and content(into) == {f"home/{home[0].name}": hashlib.sha256(b"taken").hexdigest()}


def test_undo_never_deletes_a_copy_whose_original_is_gone(indexed, tmp_path):
    lib, photos = indexed
    into = tmp_path / "sorted"
    organise.apply_sort(lib, organise.plan_sort(lib, rows_by_folder(lib), str(into), "copy"))
    original = sorted(photos.rglob("*.jpg"))[0]
    original.unlink()  # the user deletes an original, keeping the sorted copy
    report = organise.undo(lib)
    assert report.reverted == 7 and len(report.conflicts) == 1 and "original" in report.conflicts[0].reason
    assert [p.name for p in into.rglob("*.jpg")] == [original.name]
