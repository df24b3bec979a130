"""Robust image decoding for indexing: any file in, an upright RGB image or a readable reason out.

Decoding is where a photo library meets the real world: truncated downloads, files with the
wrong extension, CMYK scans, 16-bit PNGs, palette images with transparency, decompression bombs,
corrupt EXIF blocks. Every failure becomes an :class:`UnreadableImageError` whose ``reason`` a
person understands; nothing else escapes.

JPEGs are decoded with Pillow's draft mode (DCT scaling), which is ~4x cheaper than a full decode
of a camera-sized photo when the model only needs a few hundred pixels.
"""
from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import warnings
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import UnreadableImageError
from .files import NotRegularFileError, open_regular
from .exif import read_exif as _read_exif
from .formats import RAW_EXTENSIONS, decode_raw, extra_extensions

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif"})
# Above this an image is treated as a decompression bomb and refused (a 50 MP camera is 50e6).
MAX_PIXELS = 250_000_000
_HASH_CHUNK = 64 * 1024

_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def heif_available() -> bool:
    """Whether HEIC/HEIF files can be decoded (the optional pillow-heif plugin is installed)."""
    return _register_heif()


_heif_state: bool | None = None


def _register_heif() -> bool:
    global _heif_state
    if _heif_state is None:
        try:
            import pillow_heif  # type: ignore[import-not-found]

            pillow_heif.register_heif_opener()
            _heif_state = True
        except ImportError:
            _heif_state = False
    return _heif_state


def supported_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) the scanner collects."""
    return IMAGE_EXTENSIONS | HEIF_EXTENSIONS | extra_extensions()


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright, at least ``min_side`` on its shorter side where the source allows
    width: int  # of the full-size upright image
    height: int
    taken: float | None  # EXIF capture time as a POSIX timestamp (local time), if present
    content_hash: str


class PixelBudget:
    """Caps the pixels being decoded at once by all decoder threads together.

    Memory then follows the budget, not the number of threads times the largest image: two
    170-megapixel PNGs are decoded one after the other, while ordinary photos (or JPEGs, which
    decode reduced) go on in parallel. One image larger than the budget still decodes, alone.
    """

    def __init__(self, pixels: int = MAX_PIXELS):
        self.capacity = pixels
        self._used = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        """A ``reserve(pixels)`` function for :func:`decode_image`; what it reserved is given
        back when the block ends (after the caller is done with the full-size image)."""
        held = 0

        def reserve(pixels: int) -> None:
            nonlocal held
            want = min(max(pixels, 0), self.capacity - held)
            with self._cond:
                self._cond.wait_for(lambda: self._used == 0 or self._used + want <= self.capacity)
                self._used += want
            held += want

        try:
            yield reserve
        finally:
            if held:
                with self._cond:
                    self._used -= held
                    self._cond.notify_all()


def _fingerprint(size: int, head: bytes, tail: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(size.to_bytes(8, "little"))
    h.update(head)
    h.update(tail)
    return h.hexdigest()


def content_hash(data: bytes) -> str:
    """A fingerprint of a file's bytes: its size plus its first and last 64 KiB.

    Cheap on multi-megabyte photos and enough to recognise a moved or renamed file.
    """
    return _fingerprint(len(data), data[:_HASH_CHUNK], data[-_HASH_CHUNK:])


def _stream_hash(f: BinaryIO, size: int) -> tuple[str, bytes]:
    """(:func:`content_hash` of an open file of ``size`` bytes, its first bytes), reading at most
    128 KiB whatever the file's size."""
    head = f.read(_HASH_CHUNK)
    if size > _HASH_CHUNK:
        f.seek(size - _HASH_CHUNK)
        tail = f.read(_HASH_CHUNK)
    else:
        tail = head
    return _fingerprint(size, head, tail), head


def file_hash(path: str) -> str:
    """:func:`content_hash` of a regular file on disk, reading only the parts it needs.

    Raises :class:`OSError` for a file that cannot be read or is not a regular file."""
    with os.fdopen(open_regular(path), "rb") as f:
        return _stream_hash(f, os.fstat(f.fileno()).st_size)[0]


def describe_os_error(e: OSError) -> str:
    """A person's explanation of why a file could not be opened."""
    if isinstance(e, NotRegularFileError):
        return f"not a regular file: this is {e.kind}, not an image file"
    if e.errno == errno.ENOENT:
        return "the file disappeared before it could be read"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: the file cannot be read"
    if e.errno == errno.EISDIR:
        return "this is a folder, not an image file"
    if e.errno == errno.ELOOP:
        return "symbolic link loop: the file cannot be read"
    return f"the file cannot be read ({e.strerror or e})"


def decode_image(path: str, min_side: int = 224, data: bytes | None = None,
                 reserve: Callable[[int], None] | None = None) -> DecodedImage:
    """Decode ``path`` (or its already-read bytes) into an upright RGB image.

    ``min_side`` is the size the caller will resize the shorter side to; decoding may return a
    reduced image no smaller than that (JPEG draft mode). Raises :class:`UnreadableImageError`.

    The file is never read whole: it is opened as a regular file only (a FIFO or a device such as
    ``/dev/zero`` is refused, never read), fingerprinted from its first and last 64 KiB, and
    Pillow reads from it only what decoding needs, so memory follows the image's pixel count
    (capped by ``MAX_PIXELS``), not the file's size. ``reserve``, if given, is called with the
    number of pixels about to be decoded, before any is (see :class:`PixelBudget`).
    """
    if data is not None:
        return _decode(path, io.BytesIO(data), len(data), min_side, reserve)
    try:
        fd = open_regular(path)
    except OSError as e:
        raise UnreadableImageError(path, describe_os_error(e)) from None
    with os.fdopen(fd, "rb") as f:
        try:
            size = os.fstat(fd).st_size
            return _decode(path, f, size, min_side, reserve)
        except OSError as e:  # a read error of the medium (EIO), not a format problem
            raise UnreadableImageError(path, describe_os_error(e)) from None


def _decode(path: str, f: BinaryIO, size: int, min_side: int,
            reserve: Callable[[int], None] | None) -> DecodedImage:
    if size == 0:
        raise UnreadableImageError(path, "the file is empty (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if ext in HEIF_EXTENSIONS and not _register_heif():
        raise UnreadableImageError(
            path, "HEIC/HEIF support is not installed: install it with pip install 'clipdesk[heic]'"
        )
    digest, head = _stream_hash(f, size)
    f.seek(0)
    if ext in RAW_EXTENSIONS:  # camera RAW: LibRaw, see formats.py
        img, width, height, taken = decode_raw(path, f, min_side)
        return DecodedImage(image=img, width=width, height=height, taken=taken, content_hash=digest)
    try:
        with warnings.catch_warnings():
            # We apply our own, explicit pixel limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(f)
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise UnreadableImageError(
                    path,
                    f"the image declares {width}×{height} pixels, over the {MAX_PIXELS // 1_000_000} "
                    "megapixel safety limit (possible decompression bomb)",
                )
            if img.format == "JPEG" and min_side > 0:
                img.draft("RGB", (min_side, min_side))
            if reserve is not None:  # after draft (the pixels really decoded), before the EXIF
                reserve(img.size[0] * img.size[1])  # read, which decodes a PNG whole
            exif = _read_exif(img)
            img.load()
    except UnreadableImageError:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(
            path, f"the image declares too many pixels, over the safety limit (possible decompression bomb: {e})"
        ) from None
    except UnidentifiedImageError:
        raise UnreadableImageError(path, _describe_unknown(head)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnreadableImageError(path, f"the file is truncated or damaged ({e})") from None

    orientation, taken = exif
    try:
        img = _to_rgb(img)
        for op in _TRANSPOSE.get(orientation, ()):
            img = img.transpose(op)
    except (OSError, ValueError) as e:
        raise UnreadableImageError(path, f"the image data cannot be converted ({e})") from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(image=img, width=width, height=height, taken=taken, content_hash=digest)


@dataclass(frozen=True)
class JpegBytes:
    """A plain JPEG read whole for a GPU decoder, with what the catalog needs from its header."""

    data: bytearray  # the file's bytes
    width: int  # of the full-size upright image
    height: int
    orientation: int  # EXIF orientation (1..8), for the decoder to apply
    taken: float | None
    content_hash: str


def read_plain_jpeg(path: str, max_bytes: int, max_pixels: int = MAX_PIXELS) -> JpegBytes | None:
    """The bytes and header facts of a baseline 8-bit RGB/greyscale JPEG of at most ``max_bytes``,
    or None for anything :func:`decode_image` should decode instead (another format, CMYK,
    progressive, a missing end marker as in truncated files, too big, unreadable).

    None is never a verdict on the file: the CPU decoder then reads it and words any failure, so
    a file fails with the same reason whichever decoder was tried first.
    """
    try:
        fd = open_regular(path)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            size = os.fstat(fd).st_size
            if not 4 <= size <= max_bytes:
                return None
            data = bytearray(size)
            if f.readinto(data) != size:
                return None
        except OSError:
            return None
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if (img.format != "JPEG" or img.mode not in ("RGB", "L") or img.info.get("progressive")
                    or img.info.get("progression")):
                return None
            width, height = img.size
            if width * height > max_pixels:
                return None
            orientation, taken = _read_exif(img)
    except Exception:  # noqa: BLE001 - whatever Pillow makes of it, the CPU path decides
        return None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return JpegBytes(data, width, height, orientation, taken, content_hash(data))




def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit and float greyscale: scale to 8 bits by the actual range rather than clipping.
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        hi = float(arr.max()) if arr.size else 0.0
        scale = 255.0 / hi if hi > 255 else 1.0
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def _describe_unknown(data: bytes) -> str:
    head = data[:512]
    if head.startswith((b"ftyp", b"\x00\x00\x00")) and b"ftypheic" in data[:32]:
        return "HEIC/HEIF support is not installed: install it with pip install 'clipdesk[heic]'"
    try:
        head.decode("utf-8")
        printable = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) / max(len(head), 1)
        if printable > 0.95:
            return "not an image: the file contains text"
    except UnicodeDecodeError:
        pass
    return "not a recognised image format (the file's contents are not an image Pillow can read)"


# Truncated files must raise, not decode to grey silently.
ImageFile.LOAD_TRUNCATED_IMAGES = False
