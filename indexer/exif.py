"""EXIF fields every decoder reads: orientation and capture date, and the range of dates a program
can show. Its own module so the decoders of every format (decode.py, formats.py) share it."""
from __future__ import annotations

from datetime import datetime

from PIL import Image

_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_EXIF_DATETIME_ORIGINAL = 0x9003
_EXIF_DATETIME = 0x0132


def read_exif(img: Image.Image) -> tuple[int, float | None]:
    """(orientation, capture time); a corrupt EXIF block is ignored rather than failing the image."""
    try:
        exif = img.getexif()
        orientation = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
        raw = None
        try:
            raw = exif.get_ifd(_EXIF_IFD).get(_EXIF_DATETIME_ORIGINAL)
        except Exception:  # noqa: BLE001 - a broken sub-IFD only loses the date
            raw = None
        raw = raw or exif.get(_EXIF_DATETIME)
        return (orientation if orientation in range(1, 9) else 1), parse_exif_date(raw)
    except Exception:  # noqa: BLE001 - Pillow raises many types on corrupt EXIF
        return 1, None


def parse_exif_date(raw: object) -> float | None:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str):
        return None
    try:
        return sane_timestamp(datetime.strptime(raw.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").timestamp())
    except (ValueError, OverflowError, OSError):
        return None


# Dates a program can show: datetime covers years 1..9999; two days of margin keep every time zone in.
_MIN_TIMESTAMP = -62135596800.0 + 2 * 86400
_MAX_TIMESTAMP = 253402300799.0 - 2 * 86400


def sane_timestamp(t: float | int | None) -> float | None:
    """``t`` (POSIX seconds) if it is a date between the years 1 and 9999, else None.

    A file's modification time can be anything the file system stores (year 2400, negative,
    beyond 64-bit nanoseconds); a capture date outside this range means "unknown", not an error.
    """
    if t is None:
        return None
    try:
        t = float(t)
    except (OverflowError, ValueError, TypeError):
        return None
    return t if _MIN_TIMESTAMP <= t <= _MAX_TIMESTAMP else None
