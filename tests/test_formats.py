"""HEIC, AVIF and camera RAW index with a plain install; RAW+JPEG twins show once.

Real files: HEIC and AVIF written by their Pillow plugins, DNG written by a real DNG writer
(pidng), EXIF date and orientation set by ExifTool.
"""
from __future__ import annotations

import io
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipdesk.indexer import decode, formats
from clipdesk.indexer.decode import decode_image
from clipdesk.indexer.errors import UnreadableImageError
from clipdesk.library import SearchResult, search_without_twins
from conftest import make_photo

EXIF_DATE = "2021:05:06 07:08:09"
TAKEN = datetime(2021, 5, 6, 7, 8, 9).timestamp()


def exiftool(*args: str) -> None:
    tool = shutil.which("exiftool")
    if tool is None:
        pytest.fail("ExifTool is missing: install the Debian package libimage-exiftool-perl")
    subprocess.run([tool, "-q", "-q", "-overwrite_original", *args], check=True, capture_output=True)


def write_dng(path: Path, width: int = 128, height: int = 96) -> Path:
    """A real Bayer DNG: the left half bright and flat, the right half dark noise."""
    try:
        from pidng.core import RAW2DNG, DNGTags, Tag
        from pidng.defs import CalibrationIlluminant, CFAPattern, DNGVersion, PhotometricInterpretation
    except ImportError:
        pytest.fail("pidng (a DNG writer) is missing: pip install pidng")
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 600, (height, width)).astype(np.uint16)
    raw[:, : width // 2] = 3500
    t = DNGTags()
    for tag, value in ((Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width),
                       (Tag.TileLength, height), (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16),
                       (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
                       (Tag.CFARepeatPatternDim, [2, 2]), (Tag.CFAPattern, CFAPattern.RGGB),
                       (Tag.BlackLevel, 0), (Tag.WhiteLevel, 4095),
                       (Tag.ColorMatrix1, [[1, 1], [0, 1], [0, 1], [0, 1], [1, 1], [0, 1], [0, 1], [0, 1], [1, 1]]),
                       (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65),
                       (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]), (Tag.Make, "Test"), (Tag.Model, "Cam"),
                       (Tag.DNGVersion, DNGVersion.V1_4), (Tag.DNGBackwardVersion, DNGVersion.V1_2)):
        t.set(tag, value)
    writer = RAW2DNG()
    writer.options(t, path="", compress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.convert(raw, filename=str(path.with_suffix("")))
    return path


def test_heic_and_avif_decode_upright_with_their_date(tmp_path):
    assert decode.heif_available()  # pillow-heif is a core dependency (also registers its writer)
    for fmt, ext in (("HEIF", ".heic"), ("AVIF", ".avif")):
        arr = np.zeros((60, 100, 3), np.uint8)
        arr[:30] = (250, 20, 20)  # red top half, blue bottom half
        arr[30:] = (20, 20, 250)
        exif = Image.Exif()
        exif[0x0112] = 6  # stored sideways: shown rotated 90° clockwise
        exif[0x0132] = EXIF_DATE
        path = tmp_path / f"photo{ext}"
        Image.fromarray(arr).save(path, fmt, exif=exif.tobytes(), quality=95)
        d = decode_image(str(path), 32)
        assert (d.width, d.height) == (60, 100) and d.image.size == (60, 100)
        px = np.asarray(d.image).astype(int)
        assert px[50, 45, 0] > 150 and px[50, 15, 2] > 150  # red on the right, blue on the left
        assert d.taken == pytest.approx(TAKEN)
    assert {".heic", ".heif", ".avif"} <= decode.supported_extensions()


def test_dng_demosaics_with_exif_orientation_and_date(tmp_path):
    dng = write_dng(tmp_path / "IMG_0001.dng")
    exiftool(f"-DateTimeOriginal={EXIF_DATE}", "-Orientation#=6", str(dng))
    d = decode_image(str(dng), 32)
    assert (d.width, d.height) == (96, 128)  # portrait after the 90° turn
    assert d.image.mode == "RGB" and d.image.size == (48, 64)  # a half-size demosaic
    px = np.asarray(d.image).astype(float).mean(axis=2)
    assert px[:28].mean() > px[36:].mean() + 50  # the bright left half became the top
    assert d.taken == pytest.approx(TAKEN)


@pytest.mark.parametrize("ext", sorted(formats.RAW_EXTENSIONS))
def test_every_raw_extension_takes_the_raw_path(tmp_path, monkeypatch, ext):
    raw = write_dng(tmp_path / "src.dng")
    target = tmp_path / f"IMG_0002{ext.upper()}"
    raw.rename(target)
    calls = []
    real = decode.decode_raw

    def spy(path, f, min_side):
        calls.append(path)
        return real(path, f, min_side)

    monkeypatch.setattr(decode, "decode_raw", spy)
    assert ext in decode.supported_extensions()
    d = decode_image(str(target), 32)
    assert calls == [str(target)] and d.image.size == (64, 48)


def test_embedded_preview_is_used_when_big_enough(tmp_path, monkeypatch):
    import rawpy

    dng = write_dng(tmp_path / "IMG_0003.dng")
    preview = io.BytesIO()
    exif = Image.Exif()
    exif[0x0132] = EXIF_DATE
    Image.new("RGB", (400, 300), (0, 200, 0)).save(preview, "JPEG", exif=exif.tobytes())
    real_imread = rawpy.imread

    class WithPreview:
        def __init__(self, source):
            self.raw = real_imread(source)
            self.sizes = self.raw.sizes._replace(flip=6)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.raw.close()

        def extract_thumb(self):
            return rawpy.Thumbnail(rawpy.ThumbFormat.JPEG, preview.getvalue())

        def postprocess(self, **kw):
            raise AssertionError("demosaiced although a big enough preview exists")

    monkeypatch.setattr(rawpy, "imread", WithPreview)
    d = decode_image(str(dng), 224)
    assert d.image.size == (300, 400)  # the preview, turned upright by the RAW's orientation
    assert np.asarray(d.image)[150, 150, 1] > 150 and d.taken == pytest.approx(TAKEN)
    # a preview smaller than the model needs is not enough: the RAW is demosaiced instead
    with pytest.raises(AssertionError, match="demosaiced"):
        decode_image(str(dng), 512)


def test_damaged_raw_files_are_readable_failures(tmp_path, library):
    folder = tmp_path / "raws"
    good = write_dng(folder / "good.dng")
    (folder / "noise.nef").write_bytes(np.random.default_rng(1).bytes(4000))
    (folder / "cut.dng").write_bytes(good.read_bytes()[:3000])
    for name in ("noise.nef", "cut.dng"):
        with pytest.raises(UnreadableImageError) as e:
            decode_image(str(folder / name))
        assert "RAW" in e.value.reason
    report = library.index([str(folder)])
    assert (report.added, report.failed) == (1, 2)


def test_library_indexes_every_format_and_shows_twins_once(tmp_path, library):
    assert decode.heif_available()
    folder = tmp_path / "camera"
    write_dng(folder / "IMG_0001.DNG")
    make_photo(folder / "IMG_0001.JPG", (220, 220, 220))
    make_photo(folder / "IMG_0002.JPG", (20, 20, 20), pattern=2)
    make_photo(folder / "IMG_0003.heic", (20, 200, 20), pattern=3, fmt="HEIF")
    make_photo(folder / "IMG_0004.avif", (200, 20, 200), pattern=4, fmt="AVIF")
    report = library.index([str(folder)])
    assert (report.added, report.failed) == (5, 0)
    everything = library.search("a photo", k=10)
    assert len(everything) == 5
    shown = search_without_twins(library, "a photo", k=10)
    names = [Path(r.path).name for r in shown]
    assert len(names) == 4 and len({n.split(".")[0] for n in names}) == 4
    best = next(r for r in everything if Path(r.path).stem == "IMG_0001")
    assert any(r.path == best.path for r in shown)  # the pair keeps its better-ranked member


def test_collapse_twins_only_merges_real_pairs():
    rows = [SearchResult(p, 1.0 - i / 10, i) for i, p in enumerate(
        ["/a/IMG_1.JPG", "/a/IMG_2.png", "/a/IMG_1.CR2", "/b/IMG_1.cr2", "/a/IMG_2.NEF", "/a/x.jpg", "/a/x.jpeg"])]
    kept = [r.path for r in formats.collapse_twins(rows)]
    assert kept == ["/a/IMG_1.JPG", "/a/IMG_2.png", "/b/IMG_1.cr2", "/a/IMG_2.NEF", "/a/x.jpg", "/a/x.jpeg"]
