"""Ratings, pick/reject flags and colour labels in (issue 27, item 5): built with ExifTool the way
Lightroom, digiKam and Windows write them; imported as labels; filters for search; teaching examples."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clipdesk import tags
from conftest import make_photo
from test_tags import et, exiftool  # noqa: F401 - exiftool: the fixture


@pytest.fixture
def marked(library, photos, exiftool):
    p = sorted(str(x) for x in photos.rglob("*.jpg"))
    et("-o", p[0].rsplit(".", 1)[0] + ".xmp", "-XMP-xmp:Rating=5", p[0])  # Lightroom: photo.xmp
    et("-overwrite_original", "-Exif:Rating=4", p[1])  # a camera or Windows: Exif rating in the photo
    et("-o", p[2] + ".xmp", "-XMP-digiKam:PickLabel=3", "-XMP-digiKam:ColorLabel=1", p[2])  # digiKam
    et("-o", p[3] + ".xmp", "-XMP-xmp:Rating=-1", p[3])  # darktable / Lightroom: rejected
    et("-overwrite_original", "-XMP-microsoft:RatingPercent=75", p[4])  # Windows Photo Gallery
    et("-o", p[5] + ".xmp", "-XMP-xmp:Label=Green", "-XMP-xmp:Rating=0", p[5])  # Lightroom: colour, unrated
    library.index([str(photos)])
    return library, p


def test_ratings_flags_and_colours_become_labels(marked):
    lib, p = marked
    report = tags.import_tags(lib, prefix="lr/")
    assert report.problems == []
    labels = {k: sorted(v) for k, v in lib.labels().items()}
    assert labels == {"rating/5": [p[0]], "rating/4": sorted([p[1], p[4]]), "flag/picked": [p[2]],
                      "color/red": [p[2]], "flag/rejected": [p[3]], "color/green": [p[5]]}
    # usable as teaching examples: "my 4-star photos" against the rest
    assert lib.train("liked", ["rating/4"]).examples == 2


def test_search_filters_by_rating_and_pick(marked):
    lib, p = marked
    tags.import_tags(lib)
    folder = lib.folder
    lib.close()

    def search(*extra: str) -> list[str]:
        r = subprocess.run([sys.executable, "-m", "clipdesk.cli", "--library", folder, "search", "a photo",
                            "-k", "50", "--json", *extra], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stderr
        return sorted(x["path"] for x in json.loads(r.stdout))

    assert len(search()) == 8
    assert search("--rating", "4") == sorted([p[0], p[1], p[4]])
    assert search("--rating", "5") == [p[0]]
    assert search("--picked") == [p[2]]
    assert search("--picked", "--rating", "1") == []


def test_title_and_description_for_the_preview(tmp_path, exiftool):
    a = make_photo(tmp_path / "a.jpg")
    et("-overwrite_original", "-XMP-dc:Title=Harbour", "-XMP-dc:Description=Early boats", str(a))
    b = make_photo(tmp_path / "b.jpg")
    et("-overwrite_original", "-charset", "iptc=latin1", "-IPTC:ObjectName=Möwe", "-IPTC:Caption-Abstract=Küste", str(b))
    c = make_photo(tmp_path / "c.jpg")
    et("-o", str(c) + ".xmp", "-XMP-dc:Title=From the sidecar", str(c))
    et("-overwrite_original", "-XMP-dc:Title=Embedded", str(c))
    assert tags.read_photo_info(str(a))[0].as_dict() == {"rating": None, "flag": None, "color": None,
                                                         "title": "Harbour", "description": "Early boats"}
    info, problems = tags.read_photo_info(str(b))
    assert (info.title, info.description, problems) == ("Möwe", "Küste", [])
    assert tags.read_photo_info(str(c))[0].title == "From the sidecar"  # the sidecar wins, as in digiKam


def test_suggestions_do_not_count_marks_as_decisions(tmp_path, photos):
    """A photo with stars is still unlabelled for teaching: suggestions may offer it."""
    from clipdesk.library import MARK_LABELS, Library
    from clipdesk.tags import COLOR_LABEL, PICKED, RATING_LABEL, REJECTED

    assert all(label.startswith(MARK_LABELS) for label in (RATING_LABEL.format(5), COLOR_LABEL.format("red"),
                                                            PICKED, REJECTED))
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        lib.index([str(photos)])
        every = sorted(str(p) for p in photos.rglob("*.jpg"))
        lib.catalog.add_to_label("rating/5", [lib.catalog.id_for_path(p) for p in every])  # as tags import does
        lib.add_to_label("a", every[:1])
        suggested = {c.path for c in lib.suggest("p", k=100)}
        assert suggested == set(every[1:])


DARKTABLE_SIDECAR = """<?xml version="1.0" encoding="UTF-8"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="XMP Core 4.4.0-Exiv2">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:darktable="http://darktable.sf.net/"
   xmp:Rating="3"
   darktable:xmp_version="5"
   darktable:raw_params="0">
   <darktable:colorlabels>
    <rdf:Seq>
     {}
    </rdf:Seq>
   </darktable:colorlabels>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_darktable_colour_labels_are_read_from_its_sidecar(library, photos):
    """darktable keeps colour labels as numbers in its own namespace (0 red … 4 purple), a photo may
    carry several, in ``photo.jpg.xmp`` (written here as darktable writes it: ExifTool cannot)."""
    p = sorted(str(x) for x in photos.rglob("*.jpg"))
    with open(p[0] + ".xmp", "w") as f:
        f.write(DARKTABLE_SIDECAR.format("<rdf:li>2</rdf:li><rdf:li>0</rdf:li>"))  # green, then red
    with open(p[1] + ".xmp", "w") as f:
        f.write(DARKTABLE_SIDECAR.format("<rdf:li>4</rdf:li>"))
    with open(p[2] + ".xmp", "w") as f:
        f.write(DARKTABLE_SIDECAR.format("<rdf:li>9</rdf:li>"))  # not a darktable colour: none
    library.index([str(photos)])
    report = tags.import_tags(library)
    assert report.problems == []
    labels = {k: sorted(v) for k, v in library.labels().items()}
    assert labels == {"rating/3": sorted(p[:3]), "color/green": [p[0]], "color/purple": [p[1]]}
    assert tags.read_photo_info(p[0])[0].color == "green"
