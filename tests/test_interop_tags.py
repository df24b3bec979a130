"""Keywords as Lightroom, digiKam and darktable expect them (issue 27): every case is built with
ExifTool and the result read back with ExifTool, the independent reader."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clipdesk import tags
from conftest import make_photo
from test_tags import digest, et, et_read, exiftool  # noqa: F401 - exiftool: the fixture


@pytest.fixture
def indexed(library, photos):
    library.index([str(photos)])
    return library, photos


def cli(lib_folder: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipdesk.cli", "--library", lib_folder, *args],
                          capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------- 1: success means changed
def test_remove_deletes_the_sidecars_clipdesk_created_and_undo_brings_them_back(indexed, exiftool):
    lib, photos = indexed
    chosen = sorted(photos.rglob("*.jpg"))[:3]
    lib.add_to_label("sea", [str(p) for p in chosen])
    written = tags.apply_write(lib, tags.plan_write(tags.selection(lib, label="sea")))
    assert (written.created, written.changed) == (3, 3)
    made = {p: digest(Path(str(p) + ".xmp")) for p in chosen}
    # the keyword is the sidecar's only content: the sidecar clipdesk made goes with it
    plan = tags.plan_write(tags.selection(lib, label="sea"), remove=True, created=tags.created_sidecars(lib))
    assert [c.action for c in plan.changes] == ["delete"] * 3
    removed = tags.apply_write(lib, plan, "tags remove")
    assert (removed.deleted, removed.written, removed.changed) == (3, 0, 3)
    assert not list(photos.rglob("*.xmp"))
    # removing again changes nothing, and says so
    again = tags.apply_write(lib, tags.plan_write(tags.selection(lib, label="sea"), remove=True,
                                                  created=tags.created_sidecars(lib)))
    assert again.operation is None and again.changed == 0 and again.unchanged == 3
    assert again.summary().startswith("Nothing written")
    assert tags.undo(lib).reverted == 3  # the remove: byte for byte what was there
    assert {p: digest(Path(str(p) + ".xmp")) for p in chosen} == made
    assert tags.undo(lib).reverted == 3 and not list(photos.rglob("*.xmp"))


def test_a_users_sidecar_is_kept_empty_not_deleted_and_undo_is_byte_exact(indexed, exiftool):
    lib, photos = indexed
    photo = sorted(photos.rglob("*.jpg"))[0]
    sidecar = Path(str(photo) + ".xmp")
    et("-o", str(sidecar), "-XMP-dc:Subject=sea", str(photo))  # made by another app, only our keyword
    original = sidecar.read_bytes()
    plan = tags.plan_write({str(photo): ["sea"]}, remove=True, created=tags.created_sidecars(lib))
    assert [c.action for c in plan.changes] == ["update"]
    report = tags.apply_write(lib, plan, "tags remove")
    assert (report.written, report.deleted) == (1, 0)
    assert "XMP-dc:Subject" not in et_read(sidecar) and tags.read_photo_keywords(str(photo)) == ([], [])
    assert tags.undo(lib).reverted == 1 and sidecar.read_bytes() == original


def test_cli_remove_then_remove_again_says_nothing_was_written(indexed, exiftool):
    lib, photos = indexed
    lib.add_to_label("sea", [str(p) for p in sorted(photos.rglob("*.jpg"))[:2]])
    folder = lib.folder
    lib.close()
    assert cli(folder, "tags", "write", "--label", "sea", "--json").returncode == 0
    p = cli(folder, "tags", "remove", "--label", "sea", "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and (out["deleted"], out["changed"]) == (2, 2) and not list(photos.rglob("*.xmp"))
    p = cli(folder, "tags", "remove", "--label", "sea", "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["operation"] is None and out["changed"] == 0
    assert "Nothing written" in out["message"] and "Nothing written" in p.stderr
    p = cli(folder, "tags", "remove", "--label", "sea")
    assert p.returncode == 0 and p.stdout.startswith("Nothing written: every sidecar already says that")


def test_a_change_exiv2_did_not_make_is_a_problem_not_a_count(indexed, monkeypatch):
    lib, photos = indexed
    photo = sorted(photos.rglob("*.jpg"))[0]
    plan = tags.plan_write({str(photo): ["clipdesk/x"]})
    real = tags.merge_keywords
    # the bytes that reach the disk do not hold the keyword (what Exiv2 did with an empty packet)
    monkeypatch.setattr(tags, "_new_content", lambda step, data, problems: tags.EMPTY_PACKET)
    report = tags.apply_write(lib, plan)
    assert report.changed == 0 and [p.path for p in report.problems] == [str(photo) + ".xmp"]
    assert "not on disk" in report.problems[0].reason
    monkeypatch.setattr(tags, "_new_content", lambda step, data, problems: real(data, ["a"], [], step.path))
    assert tags.undo(lib).reverted == 1 and not Path(str(photo) + ".xmp").exists()


# ---------------------------------------------------------------------- 3: nothing dropped silently
def test_iptc_without_charset_is_latin1_and_undecodable_utf8_is_reported(tmp_path, exiftool):
    latin = make_photo(tmp_path / "latin.jpg")
    et("-overwrite_original", "-charset", "iptc=latin1", "-IPTC:Keywords=Müll", "-IPTC:Keywords=café", str(latin))
    assert b"M\xfcll" in latin.read_bytes()  # Latin-1 bytes, no charset marker
    assert tags.read_photo_keywords(str(latin)) == (["Müll", "café"], [])
    utf8 = make_photo(tmp_path / "utf8.jpg")
    et("-overwrite_original", "-IPTC:CodedCharacterSet=UTF8", "-IPTC:Keywords=Müll", str(utf8))
    assert tags.read_photo_keywords(str(utf8)) == (["Müll"], [])
    lying = tmp_path / "lying.jpg"
    lying.write_bytes(latin.read_bytes())
    et("-overwrite_original", "-IPTC:CodedCharacterSet=UTF8", str(lying))  # marker says UTF-8, bytes are not
    keywords, problems = tags.read_photo_keywords(str(lying))
    assert keywords == [] and [p.path for p in problems] == [str(lying)] * 2
    assert "cannot be decoded as UTF-8" in problems[0].reason


def test_failure_reasons_are_one_line(tmp_path, exiftool):
    photo = make_photo(tmp_path / "a.jpg")
    sidecar = Path(str(photo) + ".xmp")
    et("-o", str(sidecar), "-XMP-dc:Subject=keep", str(photo))
    sidecar.write_bytes(sidecar.read_bytes()[:250])
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    problems = tags.read_photo_keywords(str(photo))[1] + tags.read_photo_keywords(str(tmp_path / "b.jpg"))[1]
    assert len(problems) == 2
    assert all(p.reason and "\n" not in p.reason and p.reason == p.reason.strip() for p in problems)


# ---------------------------------------------------------------------- 4: conventions
def test_a_new_sidecar_starts_from_the_photos_embedded_metadata(tmp_path, library, exiftool):
    photo = make_photo(tmp_path / "cam" / "DSC_0001.jpg")
    et("-overwrite_original", "-XMP-xmp:Rating=4", "-XMP-dc:Title=Harbour at dawn", "-XMP-dc:Subject=boat",
       "-XMP-lr:HierarchicalSubject=darktable|format|jpg", "-IPTC:Keywords=Hafen", "-charset", "iptc=latin1",
       "-IPTC:Keywords=Möwe", str(photo))
    before = digest(photo)
    tags.apply_write(library, tags.plan_write({str(photo): ["clipdesk/sea"]}))
    meta = et_read(Path(str(photo) + ".xmp"))
    assert meta["XMP-xmp:Rating"] == 4 and meta["XMP-dc:Title"] == "Harbour at dawn"
    assert meta["XMP-dc:Subject"] == ["boat", "Hafen", "Möwe", "clipdesk", "sea"]
    assert meta["XMP-lr:HierarchicalSubject"] == ["clipdesk|sea"]  # darktable's own tags stay out
    assert digest(photo) == before  # the photo is not touched
    assert sorted(tags.read_photo_keywords(str(photo))[0]) == ["Hafen", "Möwe", "boat", "clipdesk/sea"]


def test_keywords_merge_case_insensitively_and_darktable_tags_are_not_labels(tmp_path, library, exiftool):
    photo = make_photo(tmp_path / "p" / "IMG_1.jpg")
    sidecar = Path(str(photo) + ".xmp")
    et("-o", str(sidecar), "-XMP-dc:Subject=Animals", "-XMP-dc:Subject=Fish", "-XMP-lr:HierarchicalSubject=Animals|Fish",
       "-XMP-lr:HierarchicalSubject=darktable|changed", "-XMP-dc:Subject=fish", "-XMP-digiKam:TagsList=Animals/Fish",
       str(photo))
    assert tags.read_photo_keywords(str(photo))[0] == ["Animals/Fish"]  # no 'fish', no 'darktable/changed'
    original = sidecar.read_bytes()
    plan = tags.plan_write({str(photo): ["animals/fish"]})
    assert plan.changes == [] and plan.unchanged == 1  # already there, in another case
    tags.apply_write(library, tags.plan_write({str(photo): ["animals/FISH/shark"]}))
    meta = et_read(sidecar)
    assert meta["XMP-dc:Subject"] == ["Animals", "Fish", "fish", "shark"]  # levels not doubled
    assert meta["XMP-lr:HierarchicalSubject"] == ["Animals|Fish", "darktable|changed", "animals|FISH|shark"]
    assert meta["XMP-digiKam:TagsList"] == ["Animals/Fish", "animals/FISH/shark"]
    assert tags.undo(library).reverted == 1 and sidecar.read_bytes() == original


def test_import_case_insensitive_labels(indexed, exiftool):
    lib, photos = indexed
    a, b = sorted((photos / "home").glob("*.jpg"))[:2]
    et("-o", str(a) + ".xmp", "-XMP-dc:Subject=Fish", str(a))
    et("-overwrite_original", "-XMP-dc:Subject=fish", str(b))
    tags.import_tags(lib)
    assert {k: sorted(v) for k, v in lib.labels().items()} == {"Fish": sorted([str(a), str(b)])}


def test_tags_write_embedded_then_undo_gives_back_each_photo_byte_for_byte(tmp_path, library, exiftool):
    from clipdesk.indexer.decode import heif_available

    assert heif_available()  # registers Pillow's HEIF plugin
    jpg = make_photo(tmp_path / "p" / "a.jpg")
    tif = make_photo(tmp_path / "p" / "b.tif", (20, 90, 200), fmt="TIFF")
    heic = make_photo(tmp_path / "p" / "c.heic", (30, 90, 200), fmt="HEIF")
    et("-overwrite_original", "-Make=Canon", "-IPTC:Keywords=old", "-XMP-dc:Subject=old", "-XMP-xmp:Rating=3", str(jpg))
    sums = {p: digest(p) for p in (jpg, tif, heic)}
    before = {p: et_read(p) for p in (jpg, tif)}
    plan = tags.plan_write({str(p): ["clipdesk/sea"] for p in (jpg, tif, heic)}, embedded=True)
    assert [c.action for c in plan.changes] == ["embed", "embed"]
    assert [p.path for p in plan.problems] == [str(heic)] and "without --embedded" in plan.problems[0].reason
    report = tags.apply_write(library, plan)
    assert (report.embedded, report.created, report.changed) == (2, 0, 2)
    assert not list((tmp_path / "p").glob("*.xmp"))  # no sidecar: the keywords are in the photos
    for p in (jpg, tif):
        meta = et_read(p)
        assert meta["XMP-lr:HierarchicalSubject"] == ["clipdesk|sea"]
        assert {k: v for k, v in meta.items() if k not in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject",
                                                            "XMP-digiKam:TagsList", "XMP-x:XMPToolkit")} == \
            {k: v for k, v in before[p].items() if k not in ("XMP-dc:Subject", "XMP-x:XMPToolkit")}
    assert et_read(jpg)["XMP-dc:Subject"] == ["old", "clipdesk", "sea"]
    assert "clipdesk/sea" in tags.read_photo_keywords(str(jpg))[0]
    assert digest(heic) == sums[heic]
    assert tags.undo(library).reverted == 2
    assert {p: digest(p) for p in (jpg, tif, heic)} == sums  # sha256: byte-identical


def test_embedded_write_through_the_cli_and_a_photo_edited_since_is_kept(indexed, exiftool):
    lib, photos = indexed
    chosen = sorted(photos.rglob("*.jpg"))[:2]
    lib.add_to_label("sea", [str(p) for p in chosen])
    folder = lib.folder
    lib.close()
    sums = {p: digest(p) for p in chosen}
    p = cli(folder, "tags", "write", "--label", "sea", "--embedded", "--dry-run", "--json")
    assert p.returncode == 0 and [c["action"] for c in json.loads(p.stdout)["changes"]] == ["embed", "embed"]
    assert {q: digest(q) for q in chosen} == sums
    p = cli(folder, "tags", "write", "--label", "sea", "--embedded", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["embedded"] == 2
    et("-overwrite_original", "-XMP-xmp:Rating=1", str(chosen[0]))  # edited in another app since
    edited = digest(chosen[0])
    p = cli(folder, "tags", "undo", "--json")
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["reverted"] == 1 and [c["path"] for c in out["conflicts"]] == [str(chosen[0])]
    assert digest(chosen[0]) == edited and digest(chosen[1]) == sums[chosen[1]]
