"""Formats beyond Pillow's own: camera RAW through LibRaw (``rawpy``), HEIC/HEIF, AVIF, and twins.

- RAW (CR2, CR3, NEF, ARW, RAF, ORF, RW2, DNG, PEF): the camera's embedded full-size JPEG preview
  when it has one (a JPEG decode with DCT scaling: fast), else a half-size demosaic. The
  orientation is LibRaw's (``sizes.flip``, read from the file's metadata whatever the maker); the
  capture date is read from the file's EXIF when it is TIFF-based (most RAWs) or from the preview.
- HEIC/HEIF open through the ``pillow-heif`` plugin (a core dependency), AVIF through Pillow's own
  plugin; :func:`decode.decode_image` handles both like any Pillow format.
- Twins: a RAW and its JPEG (``IMG_0001.CR2`` + ``IMG_0001.JPG``) are both indexed;
  :func:`collapse_twins` shows such a pair once in a result list.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import BinaryIO, TypeVar

from PIL import Image, features

from .errors import UnreadableImageError
from .exif import parse_exif_date, read_exif

RAW_EXTENSIONS = frozenset({".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".dng", ".pef"})
AVIF_EXTENSIONS = frozenset({".avif"})
MAX_RAW_PIXELS = 250_000_000
_FLIP = {  # LibRaw sizes.flip -> Pillow transposes that make the image upright
    3: [Image.Transpose.ROTATE_180],
    5: [Image.Transpose.ROTATE_90],  # 90° counter-clockwise
    6: [Image.Transpose.ROTATE_270],  # 90° clockwise
}
_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME = 0x8769, 0x9003, 0x0132
_EXIF_HEAD = 1 << 20  # bytes read for a RAW's EXIF date: bounded whatever the file's size
T = TypeVar("T")


def extra_extensions() -> frozenset[str]:
    """Extensions this module adds to the scanner's list (AVIF only where Pillow can read it)."""
    return RAW_EXTENSIONS | (AVIF_EXTENSIONS if features.check("avif") else frozenset())


def is_raw(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in RAW_EXTENSIONS


def decode_raw(path: str, f: BinaryIO, min_side: int) -> tuple[Image.Image, int, int, float | None]:
    """(upright RGB image at least ``min_side`` where possible, full width, full height, EXIF date).

    ``f`` is the already opened (regular) file; LibRaw reads it by descriptor where the platform
    allows, so the file decoded is the one that was checked. Raises :class:`UnreadableImageError`.
    """
    import rawpy

    try:
        fd_path = f"/proc/self/fd/{f.fileno()}"
        source = fd_path if os.path.exists(fd_path) else path
    except (OSError, AttributeError):  # bytes already read (decode_image(data=...))
        source = f
    try:
        with rawpy.imread(source) as raw:
            sizes = raw.sizes
            if sizes.raw_width * sizes.raw_height > MAX_RAW_PIXELS:
                raise UnreadableImageError(path, f"the RAW file declares {sizes.raw_width}×{sizes.raw_height} "
                                                 "pixels, over the safety limit")
            flip = sizes.flip
            width, height = (sizes.height, sizes.width) if flip in (5, 6) else (sizes.width, sizes.height)
            img, taken = _preview(raw, min_side, flip)
            if img is None:
                rgb = raw.postprocess(half_size=True, output_bps=8, use_camera_wb=True, no_auto_bright=False)
                img = Image.fromarray(rgb)  # postprocess applies the orientation itself
    except UnreadableImageError:
        raise
    except (rawpy.LibRawFileUnsupportedError, rawpy.NotSupportedError) as e:
        raise UnreadableImageError(path, f"not a RAW file LibRaw can read ({_text(e)})") from None
    except (rawpy.LibRawError, OSError, ValueError) as e:
        raise UnreadableImageError(path, f"the RAW file is truncated or damaged ({_text(e)})") from None
    if taken is None:
        f.seek(0)
        taken = _tiff_date(f)
    return img, width, height, taken


def _text(e: BaseException) -> str:
    msg = e.args[0] if e.args else e
    return msg.decode(errors="replace") if isinstance(msg, bytes) else str(msg)


def _preview(raw, min_side: int, flip: int) -> tuple[Image.Image | None, float | None]:
    """The embedded JPEG preview, upright, if it is big enough for ``min_side``; its EXIF date."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError, rawpy.LibRawError):
        return None, None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None, None
    try:
        img = Image.open(io.BytesIO(thumb.data))
        if min(img.size) < min_side or img.format != "JPEG":
            return None, None
        _, taken = read_exif(img)  # the same EXIF date parsing as every other photo
        img.draft("RGB", (min_side, min_side))
        img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, None  # a broken preview: demosaic the RAW data instead
    for op in _FLIP.get(flip, ()):
        img = img.transpose(op)
    return img, taken


def _tiff_date(f: BinaryIO) -> float | None:
    """The EXIF capture date of a TIFF-based RAW (CR2, NEF, ARW, DNG, PEF…), None otherwise."""
    head = f.read(_EXIF_HEAD)
    if not head.startswith((b"II*\x00", b"MM\x00*")):
        return None
    try:
        exif = Image.Exif()
        exif.load(head)  # the TIFF header, IFD0 and the EXIF IFD sit near the start of the file
        raw = exif.get_ifd(_EXIF_IFD).get(_DATETIME_ORIGINAL) or exif.get(_DATETIME)
        return parse_exif_date(raw)
    except Exception:  # noqa: BLE001 - a damaged header: the date is unknown
        return None


def twin_key(path: str) -> str | None:
    """``folder/stem`` (case-folded) for a RAW or a JPEG/HEIC that may have a RAW twin, else None."""
    stem, ext = os.path.splitext(path)
    ext = ext.lower()
    if ext in RAW_EXTENSIONS or ext in (".jpg", ".jpeg", ".heic", ".heif", ".tif", ".tiff"):
        return os.path.join(os.path.dirname(stem), os.path.basename(stem).casefold())
    return None


def collapse_twins(items: Iterable[T], path: Callable[[T], str] = lambda r: r.path) -> list[T]:
    """``items`` with each RAW + JPEG pair kept once, at the rank of its best-placed member.

    Only a real pair collapses: two JPEGs (or a RAW and a PNG) with one stem both stay.
    """
    items = list(items)
    keys = [twin_key(path(i)) for i in items]
    kinds: dict[str, set[bool]] = {}
    for i, k in zip(items, keys):
        if k is not None:
            kinds.setdefault(k, set()).add(is_raw(path(i)))
    seen: set[str] = set()
    out = []
    for i, k in zip(items, keys):
        if k is not None and kinds[k] == {True, False}:
            if k in seen:
                continue
            seen.add(k)
        out.append(i)
    return out
