"""Keywords in and out (clipdesk.tags) and the journal behind them, checked with an independent
reader: ExifTool writes the sidecars we import and reads the sidecars we write."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipdesk import journal as journal_mod
from clipdesk import tags
from clipdesk.errors import DiskFullError
from clipdesk.journal import Journal, JournalError
from conftest import make_photo

EXIFTOOL = shutil.which("exiftool")
KEYWORD_TAGS = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList", "XMP-x:XMPToolkit"}


@pytest.fixture
def exiftool():
    if EXIFTOOL is None:
        pytest.fail("ExifTool is missing: install the Debian package libimage-exiftool-perl")
    return EXIFTOOL


def et(*args: str) -> None:
    subprocess.run([EXIFTOOL, "-q", "-q", *args], check=True, capture_output=True)


def et_read(path: Path) -> dict:
    """ExifTool's view of a file's XMP (with groups; lists stay lists)."""
    out = subprocess.run([EXIFTOOL, "-j", "-G1", "-struct", "-XMP:all", str(path)], check=True,
                         capture_output=True, text=True).stdout
    data = json.loads(out)[0]
    data.pop("SourceFile")
    return {k: v if isinstance(v, list) or k not in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject",
                                                      "XMP-digiKam:TagsList") else [v] for k, v in data.items()}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


FOREIGN = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:acme="http://example.com/acme/1.0/" acme:Project="Alpha">
   <acme:Notes><rdf:Seq><rdf:li>one</rdf:li><rdf:li>two</rdf:li></rdf:Seq></acme:Notes>
   <acme:Owner rdf:parseType="Resource"><acme:Name>Ann</acme:Name></acme:Owner>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.fixture
def indexed(library, photos):
    library.index([str(photos)])
    return library, photos


# ---------------------------------------------------------------------- import
def test_import_reads_lightroom_digikam_embedded_and_iptc_keywords(indexed, exiftool):
    lib, photos = indexed
    trip = sorted((photos / "trip 2019").glob("*.jpg"))
    home = sorted((photos / "home").glob("*.jpg"))
    # Lightroom: photo.xmp, hierarchy in lr:hierarchicalSubject, every level flattened into dc:subject
    et("-o", str(trip[0].with_suffix(".xmp")), "-XMP-dc:Subject=Places", "-XMP-dc:Subject=Beach",
       "-XMP-dc:Subject=holiday", "-XMP-lr:HierarchicalSubject=Places|Beach", "-XMP-xmp:Rating=5", str(trip[0]))
    # digiKam / darktable: photo.ext.xmp with digiKam:TagsList
    et("-o", str(trip[1]) + ".xmp", "-XMP-digiKam:TagsList=People/Family/Ann", "-XMP-dc:Subject=Ann", str(trip[1]))
    # embedded XMP and IPTC in the photo itself (the test's own copy)
    et("-overwrite_original", "-XMP-dc:Subject=receipt", "-IPTC:Keywords=paper", "-IPTC:Keywords=tax", str(home[0]))
    report = tags.import_tags(lib, prefix="lr/")
    assert report.photos == 8 and report.tagged == 3 and report.problems == []
    labels = lib.labels()
    assert labels["lr/Places/Beach"] == [str(trip[0])]
    assert labels["lr/holiday"] == [str(trip[0])]
    assert labels["lr/People/Family/Ann"] == [str(trip[1])]
    assert {k for k, v in labels.items() if v == [str(home[0])]} == {"lr/receipt", "lr/paper", "lr/tax"}
    # levels that only flatten a hierarchy are not labels of their own
    assert not {"lr/Places", "lr/Beach", "lr/Ann"} & set(labels)
    again = tags.import_tags(lib, [str(photos / "trip 2019")], prefix="lr/")
    assert again.photos == 4 and lib.labels() == labels  # importing twice changes nothing


def test_import_then_train_uses_the_imported_labels(indexed, exiftool):
    lib, photos = indexed
    for p in sorted((photos / "trip 2019").glob("*.jpg"))[:3]:
        et("-o", str(p) + ".xmp", "-XMP-digiKam:TagsList=Trips/2019", str(p))
    tags.import_tags(lib)
    report = lib.train("trips", ["Trips/2019"])
    assert report.labels == ["Trips/2019"] and report.examples == 3


def test_unparsable_sidecar_is_reported_and_left_untouched(indexed, exiftool):
    lib, photos = indexed
    photo = sorted((photos / "home").glob("*.jpg"))[0]
    broken = Path(str(photo) + ".xmp")
    et("-o", str(broken), "-XMP-dc:Subject=keepme", str(photo))
    broken.write_bytes(broken.read_bytes()[:300])  # torn in the middle of the XML
    before = digest(broken)
    report = tags.import_tags(lib)
    assert [p.path for p in report.problems] == [str(broken)] and "parsed" in report.problems[0].reason
    plan = tags.plan_write({str(photo): ["clipdesk/x"]})
    assert plan.changes == [] and plan.problems[0].path == str(broken)
    assert digest(broken) == before


# ---------------------------------------------------------------------- write, merge, undo
def test_written_sidecars_are_read_by_exiftool_as_digikam_and_lightroom_keywords(indexed, exiftool):
    lib, photos = indexed
    chosen = sorted((photos / "trip 2019").glob("*.jpg"))[:2]
    lib.add_to_label("receipts", [str(p) for p in chosen])
    photo_hashes = {p: digest(p) for p in photos.rglob("*.jpg")}
    plan = tags.plan_write(tags.selection(lib, label="receipts"))
    assert [c.create for c in plan.changes] == [True, True]
    report = tags.apply_write(lib, plan)
    assert (report.written, report.created) == (0, 2)
    for p in chosen:
        meta = et_read(Path(str(p) + ".xmp"))
        assert meta["XMP-dc:Subject"] == ["clipdesk", "receipts"]  # with its ancestors, as Lightroom exports
        assert meta["XMP-lr:HierarchicalSubject"] == ["clipdesk|receipts"]  # Lightroom's keyword tree
        assert meta["XMP-digiKam:TagsList"] == ["clipdesk/receipts"]  # digiKam's tag tree
    assert {p: digest(p) for p in photos.rglob("*.jpg")} == photo_hashes  # photos never modified
    assert tags.read_photo_keywords(str(chosen[0]))[0] == ["clipdesk/receipts"]


def test_merge_keeps_every_other_field_and_undo_restores_bytes(indexed, exiftool):
    lib, photos = indexed
    photo = sorted((photos / "home").glob("*.jpg"))[0]
    sidecar = Path(str(photo) + ".xmp")
    sidecar.write_text(FOREIGN)
    et("-overwrite_original", "-XMP-xmp:Rating=4", "-XMP-dc:Description=A day out", "-GPSLatitude=48.8584",
       "-GPSLatitudeRef=N", "-GPSLongitude=2.2945", "-GPSLongitudeRef=E", "-XMP-dc:Subject=old",
       "-XMP-lr:HierarchicalSubject=Mine|old", "-XMP-digiKam:TagsList=Mine/old", str(sidecar))
    original = sidecar.read_bytes()
    before = et_read(sidecar)
    assert before["XMP-acme:Project"] == "Alpha" and before["XMP-xmp:Rating"] == 4
    report = tags.apply_write(lib, tags.plan_write({str(photo): ["clipdesk/receipts"]}))
    assert report.written == 1 and report.created == 0
    after = et_read(sidecar)
    assert {k: v for k, v in after.items() if k not in KEYWORD_TAGS} == \
        {k: v for k, v in before.items() if k not in KEYWORD_TAGS}  # rating, GPS, description, acme:*
    assert after["XMP-dc:Subject"] == ["old", "clipdesk", "receipts"]
    assert after["XMP-lr:HierarchicalSubject"] == ["Mine|old", "clipdesk|receipts"]
    assert after["XMP-digiKam:TagsList"] == ["Mine/old", "clipdesk/receipts"]
    # remove: only our keyword goes, in all three fields
    tags.apply_write(lib, tags.plan_write({str(photo): ["clipdesk/receipts"]}, remove=True))
    removed = et_read(sidecar)
    assert removed["XMP-dc:Subject"] == ["old"] and removed["XMP-digiKam:TagsList"] == ["Mine/old"]
    assert removed["XMP-lr:HierarchicalSubject"] == ["Mine|old"]
    # undo twice: the remove, then the write; the sidecar is byte for byte what the user had
    assert tags.undo(lib).reverted == 1
    assert et_read(sidecar)["XMP-dc:Subject"] == ["old", "clipdesk", "receipts"]
    assert tags.undo(lib).reverted == 1
    assert sidecar.read_bytes() == original
    with pytest.raises(journal_mod.NothingToUndoError):
        tags.undo(lib)


def test_a_raws_photo_xmp_is_updated_and_its_jpeg_twin_gets_its_own(tmp_path, library, exiftool):
    folder = tmp_path / "cam"
    jpg = make_photo(folder / "IMG_0001.JPG", (10, 200, 10))
    raw = folder / "IMG_0001.CR2"
    raw.write_bytes(b"raw bytes stand-in")  # planning reads no pixels
    et("-o", str(folder / "IMG_0001.xmp"), "-XMP-dc:Subject=lightroom", str(jpg))
    plan = tags.plan_write({str(jpg): ["clipdesk/cat"], str(raw): ["clipdesk/cat", "clipdesk/pet"]})
    by_sidecar = {c.sidecar: c for c in plan.changes}
    assert set(by_sidecar) == {str(folder / "IMG_0001.xmp"), str(jpg) + ".xmp"}
    assert by_sidecar[str(folder / "IMG_0001.xmp")].photos == [str(raw)]  # Lightroom's: the RAW's
    assert by_sidecar[str(jpg) + ".xmp"].photos == [str(jpg)] and by_sidecar[str(jpg) + ".xmp"].create
    tags.apply_write(library, plan)
    assert sorted(os.listdir(folder)) == ["IMG_0001.CR2", "IMG_0001.JPG", "IMG_0001.JPG.xmp", "IMG_0001.xmp"]
    assert et_read(folder / "IMG_0001.xmp")["XMP-dc:Subject"] == ["lightroom", "clipdesk", "cat", "pet"]
    assert et_read(folder / "IMG_0001.JPG.xmp")["XMP-lr:HierarchicalSubject"] == ["clipdesk|cat"]


def test_undo_keeps_a_sidecar_edited_since_and_deletes_created_ones(indexed, exiftool):
    lib, photos = indexed
    a, b = sorted((photos / "home").glob("*.jpg"))[:2]
    tags.apply_write(lib, tags.plan_write({str(a): ["clipdesk/x"], str(b): ["clipdesk/x"]}))
    et("-overwrite_original", "-XMP-xmp:Rating=2", str(a) + ".xmp")  # the user edits one in another app
    edited = digest(Path(str(a) + ".xmp"))
    report = tags.undo(lib)
    assert report.reverted == 1 and [c.path for c in report.conflicts] == [str(a) + ".xmp"]
    assert digest(Path(str(a) + ".xmp")) == edited and not Path(str(b) + ".xmp").exists()


def test_dry_run_and_json_through_the_cli(indexed, exiftool):
    lib, photos = indexed
    lib.add_to_label("sea", [str(p) for p in sorted(photos.rglob("*.jpg"))[:3]])
    folder = lib.folder
    lib.close()
    cli = [sys.executable, "-m", "clipdesk.cli", "--library", folder]
    p = subprocess.run([*cli, "tags", "write", "--label", "sea", "--dry-run", "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert [c["action"] for c in plan["changes"]] == ["create"] * 3 and plan["changes"][0]["add"] == ["clipdesk/sea"]
    assert not list(photos.rglob("*.xmp")) and not (Path(folder) / "journal").exists()
    p = subprocess.run([*cli, "tags", "write", "--label", "sea", "--prefix", "", "--json"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["created"] == 3
    for x in photos.rglob("*.xmp"):  # a flat keyword is in digiKam's and Lightroom's trees too
        meta = et_read(x)
        assert meta["XMP-dc:Subject"] == meta["XMP-digiKam:TagsList"] == meta["XMP-lr:HierarchicalSubject"] == ["sea"]
    p = subprocess.run([*cli, "tags", "write", "--json"], capture_output=True, text=True)
    assert p.returncode == 2 and "--label" in p.stderr
    p = subprocess.run([*cli, "tags", "undo", "--json"], capture_output=True, text=True)
    assert p.returncode == 0 and json.loads(p.stdout)["reverted"] == 3 and not list(photos.rglob("*.xmp"))


# ---------------------------------------------------------------------- faults
def test_disk_full_mid_write_keeps_the_journal_consistent(indexed, monkeypatch):
    lib, photos = indexed
    targets = sorted(photos.rglob("*.jpg"))[:4]
    Path(str(targets[0]) + ".xmp").write_text(FOREIGN)
    originals = {p: (Path(str(p) + ".xmp").read_bytes() if Path(str(p) + ".xmp").exists() else None) for p in targets}
    real = os.replace
    calls = []

    def replace(src, dst):
        if str(dst).endswith(".jpg.xmp"):
            calls.append(dst)
            if len(calls) == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(journal_mod.os, "replace", replace)
    with pytest.raises(DiskFullError):
        tags.apply_write(lib, tags.plan_write({str(p): ["clipdesk/full"] for p in targets}))
    monkeypatch.setattr(journal_mod.os, "replace", real)
    assert not [f for f in os.listdir(targets[0].parent) if f.endswith(".tmp")]  # no half-written file
    op = Journal(lib.folder).interrupted("tags")
    # the batch was announced at once; the 4th was never reached (recovery sees its hash unchanged)
    assert [s.state for s in op.steps] == ["done", "done", "begun", "begun"]
    report = tags.resume(lib)  # space freed: finish it
    assert report.written + report.created == 2
    assert all("clipdesk/full" in tags.read_photo_keywords(str(p))[0] for p in targets)
    assert tags.undo(lib).reverted == 4
    for p, data in originals.items():
        side = Path(str(p) + ".xmp")
        assert (side.read_bytes() if side.exists() else None) == data


def test_read_only_folder_is_reported_not_written(indexed, monkeypatch):
    lib, photos = indexed
    ro = photos / "home"
    real = os.access
    monkeypatch.setattr(tags.os, "access", lambda p, mode: False if str(p) == str(ro) else real(p, mode))
    plan = tags.plan_write({str(p): ["clipdesk/x"] for p in sorted(photos.rglob("*.jpg"))})
    assert len(plan.changes) == 4 and {p.path.rsplit(os.sep, 2)[-2] for p in plan.problems} == {"home"}
    assert all("read-only" in p.reason for p in plan.problems)


def test_a_damaged_or_linked_journal_is_a_clear_error(indexed, tmp_path):
    lib, photos = indexed
    tags.apply_write(lib, tags.plan_write({str(sorted(photos.rglob("*.jpg"))[0]): ["clipdesk/x"]}))
    j = Journal(lib.folder)
    (op_id,) = j.ids()
    path = Path(j.folder) / f"{op_id}.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b'{"type": "begin", "n": 99, "path": "/etc/passwd"}\n' + b"".join(lines[1:]))
    with pytest.raises(JournalError, match="damaged"):
        tags.undo(lib, op_id)
    victim = tmp_path / "precious.txt"
    victim.write_text("not a sidecar")
    for forged in ({"type": "begin", "n": 0, "path": str(victim), "before": None, "after": "x"},
                   {"type": "begin", "n": 0, "path": str(victim) + ".xmp", "tmp": str(victim)}):
        path.write_bytes(b"".join(lines) + json.dumps(forged).encode() + b"\n")
        with pytest.raises(JournalError, match="damaged"):  # undo never acts on names it would not use
            tags.undo(lib, op_id)
        assert victim.read_text() == "not a sidecar"
    path.write_bytes(b"".join(lines) + b'{"type": "und')  # a torn last line is ignored
    assert j.load(op_id).steps[0].state == "done"
    shutil.rmtree(j.folder)
    os.symlink(tmp_path, j.folder)
    with pytest.raises(Exception, match="symbolic link"):
        tags.undo(lib)


KILL_DRIVER = r"""
import os, signal, sys
from clipdesk import journal
n = int(os.environ["KILL_AT"])
real = os.replace
count = [0]
def replace(src, dst):
    if str(dst).endswith(".xmp"):
        count[0] += 1
        if count[0] == n:
            if os.environ.get("KILL_WHEN") == "after":
                real(src, dst)
            os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
journal.os.replace = replace
from clipdesk.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_kill_9_during_tags_write_then_resume_and_undo(indexed, when):
    lib, photos = indexed
    targets = sorted(photos.rglob("*.jpg"))
    Path(str(targets[1]) + ".xmp").write_text(FOREIGN)
    originals = {p: (Path(str(p) + ".xmp").read_bytes() if Path(str(p) + ".xmp").exists() else None) for p in targets}
    lib.add_to_label("all", [str(p) for p in targets])
    folder = lib.folder
    lib.close()
    env = dict(os.environ, KILL_AT="4", KILL_WHEN=when)
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, "--library", folder, "tags", "write", "--label", "all"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == -signal.SIGKILL
    op = Journal(folder).interrupted("tags")
    journaled_tmp = {s.applied.get("tmp") for s in op.steps}
    assert {str(f) for f in photos.rglob("*.tmp")} <= journaled_tmp  # a kill leaves only journaled temp files
    for t in targets:  # every sidecar is either as it was or completely written
        side = Path(str(t) + ".xmp")
        if side.exists() and side.read_bytes() != originals[t]:
            assert "clipdesk/all" in tags.read_photo_keywords(str(t))[0]
    cli = [sys.executable, "-m", "clipdesk.cli", "--library", folder]
    r = subprocess.run([*cli, "tags", "write", "--resume", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert all("clipdesk/all" in tags.read_photo_keywords(str(t))[0] for t in targets)
    assert not list(photos.rglob("*.tmp"))
    r = subprocess.run([*cli, "tags", "undo", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["conflicts"] == []
    for t in targets:
        side = Path(str(t) + ".xmp")
        assert (side.read_bytes() if side.exists() else None) == originals[t]


def test_keywords_embedded_in_heic_are_read(tmp_path, exiftool):
    from clipdesk.indexer.decode import heif_available

    assert heif_available()
    photo = make_photo(tmp_path / "IMG_0100.heic", (30, 90, 200), fmt="HEIF")
    et("-overwrite_original", "-XMP-dc:Subject=iphone", "-XMP-lr:HierarchicalSubject=Trips|Rome", str(photo))
    assert tags.read_photo_keywords(str(photo)) == (["Trips/Rome", "iphone"], [])


def test_probe_predictions_become_keywords_over_the_minimum_probability(indexed):
    lib, photos = indexed
    trip = sorted((photos / "trip 2019").glob("*.jpg"))
    home = sorted((photos / "home").glob("*.jpg"))
    lib.add_to_label("trip", [str(p) for p in trip])
    lib.add_to_label("home", [str(p) for p in home])
    lib.train("where", ["trip", "home"])
    predictions = {r.path: r for r in lib.predict("where")}
    median = sorted(r.probability for r in predictions.values())[4]
    for floor in (0.0, median):
        chosen = tags.selection(lib, probe="where", min_probability=floor, prefix="auto/")
        expected = {p: [f"auto/{r.label}"] for p, r in predictions.items() if r.probability >= floor}
        assert chosen == expected
    assert 0 < len(chosen) < 8  # the floor really filters
    assert len(tags.selection(lib, probe="where", min_probability=0.0)) == 8
    with pytest.raises(tags.TagsError, match="exactly one"):
        tags.selection(lib, label="trip", probe="where")
    with pytest.raises(tags.TagsError, match="No label"):
        tags.selection(lib, label="nope")


def test_cancel_between_steps_leaves_an_operation_to_resume_or_undo(indexed):
    from clipdesk.indexer.pipeline import Cancelled, CancelToken

    lib, photos = indexed
    token = CancelToken()
    seen = []

    def progress(p):
        seen.append(p.done)
        if p.done == 3:
            token.cancel()

    plan = tags.plan_write({str(p): ["clipdesk/c"] for p in sorted(photos.rglob("*.jpg"))})
    with pytest.raises(Cancelled):
        tags.apply_write(lib, plan, progress=progress, cancel=token)
    assert seen == [1, 2, 3] and len(list(photos.rglob("*.xmp"))) == 3
    assert tags.resume(lib).created == 5 and len(list(photos.rglob("*.xmp"))) == 8
    assert tags.undo(lib).reverted == 8 and not list(photos.rglob("*.xmp"))


def test_a_photo_name_that_is_not_utf8(tmp_path, library, exiftool):
    photo = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9.jpg"))
    make_photo(photo, (120, 60, 30))
    et("-overwrite_original", "-XMP-dc:Subject=latin1", os.fsencode(str(photo)))  # bytes: the exact name
    assert tags.read_photo_keywords(str(photo)) == (["latin1"], [])
    report = tags.apply_write(library, tags.plan_write({str(photo): ["clipdesk/x"]}))
    assert report.created == 1 and sorted(tags.read_photo_keywords(str(photo))[0]) == ["clipdesk/x", "latin1"]
    assert tags.undo(library).reverted == 1 and not Path(str(photo) + ".xmp").exists()
