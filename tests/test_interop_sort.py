"""Which sidecar belongs to which photo, and a sort that keeps them together (issue 27, item 2).

Folders are laid out as Lightroom (``IMG.xmp`` for the RAW), digiKam (``IMG.JPG.xmp``) and darktable
(``IMG.CR2.xmp``, ``IMG_01.CR2.xmp`` for a duplicate) leave them; keywords are written and read
back with ExifTool."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clipdesk import organise, tags
from clipdesk.library import Classification
from conftest import make_photo
from test_organise import content
from test_tags import et, et_read, exiftool  # noqa: F401 - exiftool: the fixture


def camera_folder(root: Path) -> dict[str, Path]:
    """A RAW+JPEG pair with every sidecar style, and a lone JPEG with a Capture One ``photo.xmp``."""
    cam = root / "cam"
    jpg = make_photo(cam / "IMG_0002.JPG", (200, 40, 40))
    raw = cam / "IMG_0002.CR2"
    raw.write_bytes(b"raw stand-in: sorting reads no pixels")
    files = {"jpg": jpg, "raw": raw, "lone": make_photo(cam / "IMG_0003.jpg", (40, 40, 200), pattern=3)}
    for key, name, keyword in (("lr", "IMG_0002.xmp", "raw-lightroom"), ("dk", "IMG_0002.JPG.xmp", "jpeg-digikam"),
                               ("dt", "IMG_0002.CR2.xmp", "raw-darktable"),
                               ("dt01", "IMG_0002_01.CR2.xmp", "raw-duplicate"),
                               ("c1", "IMG_0003.xmp", "lone-captureone")):
        et("-o", str(cam / name), f"-XMP-dc:Subject={keyword}", str(jpg))
        files[key] = cam / name
    return files


def test_a_raws_sidecar_is_never_the_jpeg_twins(tmp_path, exiftool):
    f = camera_folder(tmp_path)
    assert tags.sidecar_names(str(f["raw"])) == [str(f["dt"]), str(f["lr"])]
    assert tags.sidecar_names(str(f["jpg"])) == [str(f["dk"])]  # not IMG_0002.xmp
    assert tags.sidecar_names(str(f["lone"])) == [str(f["c1"])]  # no RAW: photo.xmp is the JPEG's
    assert tags.read_photo_keywords(str(f["jpg"]))[0] == ["jpeg-digikam"]
    assert tags.read_photo_keywords(str(f["raw"]))[0] == ["raw-darktable", "raw-lightroom"]
    f["dk"].unlink()
    assert tags.read_photo_keywords(str(f["jpg"]))[0] == []  # still not the RAW's keywords
    assert tags.sidecar_target(str(f["jpg"])) == str(f["jpg"]) + ".xmp"


@pytest.mark.parametrize("mode", ["move", "copy"])
def test_a_pair_is_classified_once_and_renamed_with_all_its_sidecars(tmp_path, library, exiftool, mode):
    f = camera_folder(tmp_path)
    into = tmp_path / "sorted"
    taken = into / "cats" / "IMG_0002.CR2"  # a collision renames the whole unit
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"another raw")
    before_src, before_into = content(tmp_path / "cam"), content(into)
    rows = [Classification(str(f["raw"]), "birds", 0.55, 1), Classification(str(f["jpg"]), "cats", 0.9, 2),
            Classification(str(f["lone"]), "cats", 0.7, 3)]
    plan = organise.plan_sort(library, rows, str(into), mode)
    assert [(p.source, p.category) for p in plan.placements] == [(str(f["raw"]), "cats"), (str(f["lone"]), "cats")]
    report = organise.apply_sort(library, plan)
    out = into / "cats"
    expected = {"IMG_0002 (1).CR2", "IMG_0002 (1).JPG", "IMG_0002 (1).xmp", "IMG_0002 (1).CR2.xmp",
                "IMG_0002 (1).JPG.xmp", "IMG_0002 (1)_01.CR2.xmp", "IMG_0003.jpg", "IMG_0003.xmp", taken.name}
    assert set(os.listdir(out)) == expected
    # every photo shows its own keywords, read by ExifTool and by clipdesk
    assert et_read(out / "IMG_0002 (1).JPG.xmp")["XMP-dc:Subject"] == ["jpeg-digikam"]
    assert et_read(out / "IMG_0002 (1).xmp")["XMP-dc:Subject"] == ["raw-lightroom"]
    assert et_read(out / "IMG_0002 (1)_01.CR2.xmp")["XMP-dc:Subject"] == ["raw-duplicate"]
    assert tags.read_photo_keywords(str(out / "IMG_0002 (1).JPG"))[0] == ["jpeg-digikam"]
    assert tags.read_photo_keywords(str(out / "IMG_0003.jpg"))[0] == ["lone-captureone"]
    # the JSON lists what travelled, where it went
    placed = json.loads(json.dumps(report.as_dict()))["placements"]
    assert placed[0]["dest"] == str(out / "IMG_0002 (1).CR2")
    assert placed[0]["twins"] == [{"source": str(f["jpg"]), "dest": str(out / "IMG_0002 (1).JPG")}]
    assert sorted(s["dest"] for s in placed[0]["sidecars"]) == sorted(
        str(out / n) for n in expected if n.startswith("IMG_0002 (1)") and n.endswith(".xmp"))
    assert (sorted(os.listdir(tmp_path / "cam")) == []) == (mode == "move")
    organise.undo(library)
    assert content(tmp_path / "cam") == before_src and content(into) == before_into


def test_link_brings_the_sidecars(tmp_path, library, exiftool):
    f = camera_folder(tmp_path)
    into = tmp_path / "linked"
    rows = [Classification(str(f["jpg"]), "cats", 0.9, 2)]  # the JPEG alone: the RAW's sidecars stay
    report = organise.apply_sort(library, organise.plan_sort(library, rows, str(into), "link"))
    out = into / "cats"
    assert sorted(os.listdir(out)) == ["IMG_0002.JPG", "IMG_0002.JPG.xmp"]
    assert os.readlink(out / "IMG_0002.JPG.xmp") == str(f["dk"])
    assert report.as_dict()["placements"][0]["sidecars"] == [{"source": str(f["dk"]), "dest": str(out / "IMG_0002.JPG.xmp")}]
    keywords, problems = tags.read_photo_keywords(str(out / "IMG_0002.JPG"))
    assert keywords == [] and [p.path for p in problems] == [str(out / "IMG_0002.JPG.xmp")]  # links: not followed
    organise.undo(library)
    assert not into.exists()
