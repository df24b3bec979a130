"""Ratings in the real window (Xvfb + xdotool): photos rated with ExifTool (as Lightroom writes
``xmp:Rating`` and a title) are indexed and imported (``clipdesk tags import``), then the Search
tab's filter is set to "★★★★ or more" with a real click and keys: only those photos show, and the
preview shows the title. Screenshots at 1600×1000 and 1024×640."""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import Session, output_folder

pytestmark = [pytest.mark.e2e, pytest.mark.shared_data]
RATINGS = {"bird": 5, "fish": 4, "flower": 2, "tool": 0, "planet": 0, "monument": 1}
TITLE = "Heron at first light"


@pytest.fixture
def outdir(tmp_path) -> Path:
    return output_folder("marks", tmp_path / "e2e", ("library", "home", "screenshots", "photos", "state.json",
                                            "app.log"))


def test_rating_filter_and_title_in_the_preview(outdir: Path, shared_data: Path) -> None:
    if shutil.which("exiftool") is None:
        pytest.fail("the marks e2e run needs exiftool: sudo apt-get install -y libimage-exiftool-perl")
    photos = outdir / "photos"
    photos.mkdir()
    for cls, stars in RATINGS.items():
        src = sorted((shared_data / "photos" / "labelled" / cls).glob("*.jpg"))[0]
        dst = photos / f"{cls}.jpg"
        shutil.copy(src, dst)  # copies: ExifTool writes into them, never into the shared photos
        args = [f"-XMP-xmp:Rating={stars}"] if stars else []
        if cls == "bird":
            args.append(f"-XMP-dc:Title={TITLE}")
        if args:
            subprocess.run(["exiftool", "-q", "-overwrite_original", *args, str(dst)], check=True)
    library = outdir / "library"
    cli = [sys.executable, "-m", "clipdesk.cli", "--library", str(library), "--model", "test-tiny"]
    subprocess.run([*cli, "index", str(photos)], check=True, capture_output=True, timeout=300)
    subprocess.run([*cli, "tags", "import"], check=True, capture_output=True, timeout=120)
    high = {str(photos / "bird.jpg"), str(photos / "fish.jpg")}

    with Session(outdir, (1600, 1000), ["--library", str(library), "--model", "test-tiny"]) as s:
        s.fit_window()
        s.wait(lambda st: (g := s.widget("searchGrid", st)) and g["count"] == len(RATINGS), 60, "all photos shown")
        s.screenshot("unfiltered")
        # the rating box: a click opens it, Down ×4 picks "★★★★ or more", Return closes it
        s.click("searchFilterRating")
        time.sleep(0.3)
        s.key(*(["Down"] * 4), "Return")
        st = s.wait(lambda st: (g := s.widget("searchGrid", st)) and g["count"] == 2 and st, 30,
                    "only the 4- and 5-star photos")
        assert {i["path"] for i in s.items("searchGrid", st)} == high
        assert "2 photos" in s.widget("searchFilterCount", st)["text"]
        bird = next(i for i in s.items("searchGrid", st) if i["path"].endswith("bird.jpg"))
        s.click_at(*s.center(bird))
        st = s.wait(lambda st: TITLE in (s.widget("previewAbout", st) or {}).get("text", "") and st, 20,
                    "the title in the preview")
        assert "★★★★★" in s.widget("previewAbout", st)["text"]
        assert st["focus"] == "searchGrid"  # the keys are on the grid again after the click on a photo
        s.screenshot("filtered-preview")
        s.fit_window((1024, 640))
        time.sleep(0.8)
        st = s.state()
        bar = s.widget("searchFilterCount", st)
        assert bar and bar["visible"]
        s.screenshot("small-filtered")
        # kept for the library: a relaunch shows the same filter
        s.stop_app()
        s.start_app()
        s.fit_window()
        st = s.wait(lambda st: (g := s.widget("searchGrid", st)) and g["count"] == 2 and st, 60,
                    "the filter kept after a relaunch")
        assert s.widget("searchFilterRating", st)["text"].startswith("★★★★")
