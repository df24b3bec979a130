"""Keywords in and out: the tags other photo apps keep, as clipdesk labels, and back as XMP sidecars.

Reading (``tags import``): a photo's own XMP sidecars (``photo.ext.xmp`` as digiKam and darktable
name them; ``photo.xmp`` as Lightroom does, which belongs to the RAW when a RAW and its JPEG twin
share the stem), then the XMP embedded in the photo (``dc:subject``, ``lr:hierarchicalSubject``,
``digiKam:TagsList``) and its IPTC Keywords (UTF-8 with the charset marker, else Latin-1).
Hierarchies become labels ``a/b/c``; a flat keyword that is only a level of such a hierarchy
(Lightroom and digiKam write the levels into ``dc:subject`` too) is not a label of its own;
keywords differing only in case are one; darktable's automatic ``darktable|…`` tags are skipped.
Ratings, pick/reject flags and colour labels become labels too (:class:`PhotoInfo`).

Writing (``tags write`` / ``tags remove``): a keyword ``a/b/c`` is written the way digiKam,
Lightroom, darktable and Immich read it: ``digiKam:TagsList`` ``a/b/c``, ``lr:hierarchicalSubject``
``a|b|c`` and ``dc:subject`` ``a``, ``b``, ``c`` (with its ancestors, as Lightroom exports). An
existing sidecar is merged into (every other field and keyword survives; the XMP is parsed and
serialised by Exiv2, never hand-built); a new one starts from the photo's embedded metadata.
Photos are modified only with ``--embedded`` (their own XMP; the journal keeps the whole photo).
Everything is a plan first (:func:`plan_write`), then journaled steps (:func:`apply_write`) whose
result is read back from disk before it is counted, so :func:`undo` restores each file byte for
byte, deletes the sidecars it created, and brings back the ones a remove deleted.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

import exiv2

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.pipeline import CancelToken, Progress
from clipdesk.journal import EMBED_EXTENSIONS, MAX_EMBED_BYTES, REMOVE, Journal, UndoReport, read_bounded

KIND = "tags"
DEFAULT_PREFIX = "clipdesk/"
SUBJECT = "Xmp.dc.subject"
HIERARCHICAL = "Xmp.lr.hierarchicalSubject"
DIGIKAM = "Xmp.digiKam.TagsList"
IPTC_KEYWORDS = "Iptc.Application2.Keywords"
MAX_SIDECAR_BYTES = 16 << 20
MAX_KEYWORD = 500
MAX_PHOTO_BYTES = 512 << 20  # read whole only when Exiv2 cannot open the file by name

ProgressFn = Callable[[Progress], None]
_exiv2_lock = threading.Lock()  # Exiv2's log capture below is process-wide
DARKTABLE_NS = "http://darktable.sf.net/"
try:  # darktable's namespace is not one Exiv2 knows; its colour labels are read under this prefix
    exiv2.XmpProperties.registerNs(DARKTABLE_NS, "darktable")
except exiv2.Exiv2Error:
    pass  # already registered


class TagsError(ClipdeskError):
    """A tags command that cannot run (no such label, nothing selected, bad keyword)."""


class SidecarError(ClipdeskError):
    """A sidecar or photo whose metadata cannot be parsed: it is left untouched and reported."""


@dataclass(frozen=True)
class Problem:
    path: str
    reason: str

    def __post_init__(self) -> None:
        # Exiv2's messages end in a newline; a reason is one line wherever it is shown.
        object.__setattr__(self, "reason", " ".join(str(self.reason).split()))

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


# ---------------------------------------------------------------------- keywords
def normalise_keyword(text: str) -> str:
    """``" a / b/c "`` → ``"a/b/c"``; raises :class:`TagsError` for an empty or unprintable one."""
    parts = [p.strip() for p in str(text).replace("|", "/").split("/")]
    if not text or not all(parts) or len(text) > MAX_KEYWORD or any(not c.isprintable() for c in text):
        raise TagsError(f"Not a usable keyword: {text!r} (empty levels, control characters or too long).")
    return "/".join(parts)


def with_prefix(prefix: str, keyword: str) -> str:
    prefix = prefix.strip()
    return normalise_keyword(prefix.rstrip("/") + "/" + keyword if prefix.strip("/") else keyword)


def keywords_from(subject: Iterable[str], hierarchical: Iterable[str], rejected: list[str] | None = None) -> list[str]:
    """Labels from flat keywords and hierarchical paths (``a/b/c``), in first-seen order.

    A flat keyword that is one level of a hierarchical one is the flattened copy apps write
    beside it (Lightroom's "include parent keywords"), not a tag of its own. Keywords that differ
    only in case are one keyword (the first spelling wins), as in Lightroom and digiKam.
    darktable's automatic tags (``darktable|format|jpg``, ``darktable|changed``…) describe its
    own processing, not the photo: they are not imported.
    """
    out: dict[str, str] = {}
    levels: set[str] = set()
    for h in hierarchical:
        try:
            k = normalise_keyword(h)
        except TagsError:
            if rejected is not None and h.strip():
                rejected.append(h)
            continue
        levels.update(x.casefold() for x in k.split("/"))
        if not is_automatic(k):
            out.setdefault(k.casefold(), k)
    for s in subject:
        s = s.strip()
        if not s or s.casefold() in levels or "/" in s:
            continue  # a level of a tree keyword (or a path, read from the trees)
        if len(s) <= MAX_KEYWORD and s.isprintable():
            out.setdefault(s.casefold(), s)
        elif rejected is not None:
            rejected.append(s)
    return list(out.values())


def is_automatic(keyword: str) -> bool:
    """darktable's own tags (``darktable/…``), which it writes on every export and edit."""
    return keyword.split("/", 1)[0].strip().casefold() == "darktable"


# ---------------------------------------------------------------------- Exiv2 access
class _LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_image(source: bytes | str, what: str) -> exiv2.Image:
    """An Exiv2 image read from bytes or a path; any parse failure raises :class:`SidecarError`.

    Exiv2 reports an XMP packet it cannot decode only as a log message and goes on with no
    metadata: writing that back would wipe the user's sidecar, so the message is an error here.
    """
    logger = logging.getLogger("exiv2")
    capture = _LogCapture()
    with _exiv2_lock:
        # Whatever the application's logging settings, warnings must reach the capture.
        level, disabled, propagate = logger.level, logger.disabled, logger.propagate
        logger.setLevel(logging.WARNING)
        logger.disabled, logger.propagate = False, False  # reported as a Problem, not printed
        if exiv2.LogMsg.level() > exiv2.LogMsg.Level.warn:
            exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.warn)
        logger.addHandler(capture)
        try:
            image = exiv2.ImageFactory.open(source)
            image.readMetadata()
        except exiv2.Exiv2Error as e:
            raise SidecarError(f"{what}: cannot be parsed ({str(e.args[-1] if e.args else e).strip()})") from None
        finally:
            logger.removeHandler(capture)
            logger.setLevel(level)
            logger.disabled, logger.propagate = disabled, propagate
    if any("XMP" in m or "Failed" in m for m in capture.messages):
        raise SidecarError(f"{what}: cannot be parsed ({'; '.join(m.strip() for m in capture.messages)[:300]})")
    return image


def _array(xmp: exiv2.XmpData, key: str) -> list[str]:
    if key not in xmp:
        return []
    value = xmp[key].value()
    try:
        return [value.toString(i) for i in range(value.count())]
    except (AttributeError, TypeError, exiv2.Exiv2Error):
        return [xmp[key].toString()]


def _set_array(xmp: exiv2.XmpData, key: str, items: list[str], kind) -> None:
    if not items:
        if key in xmp:
            del xmp[key]
        return
    value = exiv2.XmpArrayValue(kind)
    for item in items:
        value.read(item)
    xmp[key] = value


def _keyword_fields(xmp: exiv2.XmpData) -> tuple[list[str], list[str]]:
    """(flat keywords, hierarchical ones as ``a/b/c``) of one XMP packet."""
    return _array(xmp, SUBJECT), [h.replace("|", "/") for h in _array(xmp, HIERARCHICAL)] + _array(xmp, DIGIKAM)


def parse_sidecar(data: bytes, path: str) -> exiv2.Image:
    image = _read_image(data, path)
    if image.mimeType() != "application/rdf+xml":
        raise SidecarError(f"{path}: not an XMP sidecar ({image.mimeType()})")
    return image


EMPTY = b""  # what :func:`merge_keywords` returns when nothing at all is left in a sidecar
# An XMP packet with no properties: what a sidecar the user made becomes when its last keyword is
# removed (Exiv2 cannot serialise an empty packet: it writes a torn header instead).
EMPTY_PACKET = (b'<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
                b'<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
                b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
                b'  <rdf:Description rdf:about=""/>\n'
                b' </rdf:RDF>\n'
                b'</x:xmpmeta>\n'
                b'<?xpacket end="w"?>')


def _fold(keyword: str) -> str:
    return normalise_keyword_quiet(keyword).casefold()


def merged_arrays(subject: list[str], hier: list[str], digikam: list[str], add: Sequence[str],
                  remove: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """The three keyword arrays with ``add`` added and ``remove`` removed, case-insensitively.

    ``a/b/c`` goes in as ``a``, ``b``, ``c`` in ``dc:subject`` (Lightroom's default: a keyword's
    ancestors are exported with it), ``a|b|c`` and ``a/b/c`` in the trees. Removing it takes out
    its tree entries and every level no remaining tree entry still uses.
    """
    gone = {normalise_keyword(k).casefold() for k in remove}
    hier = [h for h in hier if _fold(h) not in gone]
    digikam = [d for d in digikam if _fold(d) not in gone]
    kept = {lvl.casefold() for t in hier + digikam for lvl in normalise_keyword_quiet(t).split("/")}
    gone_levels = {lvl for k in gone for lvl in k.split("/")} - kept
    subject = [s for s in subject if s.strip().casefold() not in gone_levels | gone]
    have_s = {s.strip().casefold() for s in subject}
    have_h, have_d = {_fold(h) for h in hier}, {_fold(d) for d in digikam}
    for k in map(normalise_keyword, add):
        f = k.casefold()
        if f in gone:
            continue
        for level in k.split("/"):
            if level.casefold() not in have_s:
                subject.append(level)
                have_s.add(level.casefold())
        # A flat keyword goes into the tag trees too: digiKam ignores dc:subject once a sidecar
        # has a TagsList, so a keyword only there would be invisible to it.
        if f not in have_h:
            hier.append(k.replace("/", "|"))
            have_h.add(f)
        if f not in have_d:
            digikam.append(k)
            have_d.add(f)
    return subject, hier, digikam


def merge_keywords(data: bytes | None, add: Sequence[str], remove: Sequence[str], path: str = "sidecar",
                   seed: exiv2.XmpData | None = None) -> bytes | None:
    """The sidecar ``data`` (None: a new one) with keywords added and removed; None if unchanged,
    :data:`EMPTY` if no property at all is left in it.

    Only the three keyword arrays are touched; every other property, namespace and keyword stays.
    A new sidecar starts from ``seed`` (the photo's embedded metadata, :func:`embedded_seed`).
    The bytes are parsed back before they are returned: a change Exiv2 did not make is an error,
    never reported as written.
    """
    if data is None:
        if not add:
            return None
        image = exiv2.ImageFactory.create(exiv2.ImageType.xmp)
        xmp = exiv2.XmpData()
        for d in seed if seed is not None else ():
            xmp.add(d)
    else:
        image = parse_sidecar(data, path)
        xmp = image.xmpData()
    arrays = _array(xmp, SUBJECT), _array(xmp, HIERARCHICAL), _array(xmp, DIGIKAM)
    subject, hier, digikam = merged_arrays(*(list(a) for a in arrays), add, remove)
    if (subject, hier, digikam) == arrays and data is not None:
        return None
    _set_keywords(xmp, (subject, hier, digikam))
    if not xmp.count():
        return EMPTY
    # A sidecar's Exif/IPTC views are conversions of its XMP; writing them back would reformat
    # properties (GPS, tiff) the user's tools wrote. Only the XMP is written.
    return _write_checked(image, xmp, path, (subject, hier, digikam), parse_sidecar, xmp_only=True)


def _set_keywords(xmp: exiv2.XmpData, arrays: tuple) -> None:
    """Set the three keyword fields: ``dc:subject``, ``lr:hierarchicalSubject``, ``digiKam:TagsList``."""
    subject, hier, digikam = arrays
    _set_array(xmp, SUBJECT, subject, exiv2.TypeId.xmpBag)
    _set_array(xmp, HIERARCHICAL, hier, exiv2.TypeId.xmpBag)
    _set_array(xmp, DIGIKAM, digikam, exiv2.TypeId.xmpSeq)


def _write_checked(image: exiv2.Image, xmp: exiv2.XmpData, path: str, arrays: tuple, reread: Callable,
                   xmp_only: bool = False) -> bytes:
    """``image``'s bytes with ``xmp`` written into it (``xmp_only``: its Exif and IPTC views
    dropped), parsed back with ``reread`` to check the three keyword ``arrays`` are there."""
    with _exiv2_lock:
        image.setXmpData(xmp)
        if xmp_only:
            image.exifData().clear()
            image.iptcData().clear()
        try:
            image.writeMetadata()
        except exiv2.Exiv2Error as e:
            raise SidecarError(f"{path}: cannot be written ({str(e.args[-1] if e.args else e).strip()})") from None
        with image.io().data() as view:
            out = bytes(view)
    check = reread(out, path).xmpData()
    if (_array(check, SUBJECT), _array(check, HIERARCHICAL), _array(check, DIGIKAM)) != arrays:
        raise SidecarError(f"{path}: Exiv2 did not write the keyword change; left untouched")
    return out


def merge_embedded(data: bytes, add: Sequence[str], remove: Sequence[str], path: str) -> bytes | None:
    """The photo ``data`` with keywords added to and removed from its embedded XMP (every other
    byte of metadata as Exiv2 rewrites it), None if unchanged. Read back before it is returned."""
    image = _read_image(data, path)
    if not exiv2.ImageFactory.checkMode(image.imageType(), exiv2.MetadataId.mdXmp) & exiv2.AccessMode.amWrite:
        raise SidecarError(f"{path}: Exiv2 cannot write XMP into this kind of file; write a sidecar instead "
                           "(without --embedded)")
    xmp = image.xmpData()
    arrays = _array(xmp, SUBJECT), _array(xmp, HIERARCHICAL), _array(xmp, DIGIKAM)
    subject, hier, digikam = merged_arrays(*(list(a) for a in arrays), add, remove)
    if (subject, hier, digikam) == arrays:
        return None
    _set_keywords(xmp, (subject, hier, digikam))
    return _write_checked(image, xmp, path, (subject, hier, digikam), _read_image)


def embedded_keywords(data: bytes | None, path: str) -> set[str]:
    """The tree keywords (``a/b/c``, case-folded) embedded in a photo's XMP."""
    if not data:
        return set()
    return {_fold(k) for k in _keyword_fields(_read_image(data, path).xmpData())[1]}


def keywords_in(data: bytes | None, path: str) -> set[str]:
    """The tree keywords (``a/b/c``, case-folded) of sidecar bytes; empty for no sidecar."""
    if not data:
        return set()
    xmp = parse_sidecar(data, path).xmpData()
    return {_fold(k) for k in _keyword_fields(xmp)[1]}


def normalise_keyword_quiet(text: str) -> str:
    try:
        return normalise_keyword(text)
    except TagsError:
        return text


# ---------------------------------------------------------------------- sidecars of a photo
def folder_names(folder: str) -> dict[str, list[str]]:
    """The names in ``folder`` by lower-case name, read once per folder state: a folder of 40,000
    photos is listed once, not once per photo (a new or removed file changes its mtime)."""
    try:
        st = os.stat(folder or ".")
    except OSError:
        return {}
    return _folder_names(folder or ".", st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=16)
def _folder_names(folder: str, _mtime_ns: int, _ino: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    try:
        for e in os.listdir(folder):
            out.setdefault(e.lower(), []).append(e)
    except OSError:
        pass
    return out


def stem_sidecar_owners(folder: str, stem: str) -> list[str]:
    """The files (not sidecars) a ``stem.xmp`` in ``folder`` can belong to: the RAWs of that stem
    if there are any (Lightroom, Bridge and Capture One give ``IMG_0002.xmp`` to ``IMG_0002.CR2``,
    never to its JPEG twin), else every file of that stem."""
    from clipdesk.indexer.formats import is_raw

    entries = folder_names(folder)
    same = [n for low, names in entries.items() for n in names
            if os.path.splitext(low)[0] == stem.lower() and not low.endswith(".xmp")]
    raws = [n for n in same if is_raw(n)]
    return raws or same


def owns_stem_sidecar(photo: str) -> bool:
    """Whether ``photo.xmp`` (Lightroom's naming) is ``photo``'s own sidecar (see :func:`stem_sidecar_owners`)."""
    folder, name = os.path.split(photo)
    owners = stem_sidecar_owners(folder, os.path.splitext(name)[0])
    return not owners or name.lower() in {n.lower() for n in owners}


def sidecar_names(photo: str) -> list[str]:
    """Existing sidecars of ``photo``: ``photo.ext.xmp`` first, then ``photo.xmp`` (any case) when
    it is this photo's (a RAW's, not its JPEG twin's: :func:`owns_stem_sidecar`)."""
    folder, name = os.path.split(photo)
    stem = os.path.splitext(name)[0]
    entries = folder_names(folder)
    out = []
    for wanted in (name.lower() + ".xmp", stem.lower() + ".xmp"):
        if wanted == stem.lower() + ".xmp" and not owns_stem_sidecar(photo):
            continue
        exact = [e for e in entries.get(wanted, []) if os.path.exists(os.path.join(folder, e))]
        if exact:
            out.append(os.path.join(folder, exact[0]))
    return out


def version_sidecars(photo: str) -> list[str]:
    """darktable's sidecars of a photo's duplicates: ``photo_01.ext.xmp``, ``photo_02.ext.xmp``…"""
    folder, name = os.path.split(photo)
    stem, ext = os.path.splitext(name)
    pattern = re.compile(re.escape(stem.lower()) + r"_\d+" + re.escape(ext.lower()) + r"\.xmp")
    return sorted(os.path.join(folder, e) for low, names in folder_names(folder).items()
                  if pattern.fullmatch(low) for e in names)


def sidecar_target(photo: str) -> str:
    """The sidecar a write goes to: an existing one, else a new ``photo.ext.xmp``."""
    existing = sidecar_names(photo)
    return existing[0] if existing else photo + ".xmp"


def read_sidecar(path: str) -> bytes | None:
    """A sidecar's bytes (None if absent); :class:`SidecarError` for a link, device or huge file."""
    try:
        return read_bounded(path, MAX_SIDECAR_BYTES)
    except OSError as e:
        raise SidecarError(f"{path}: cannot be read ({e.strerror or e}; a symbolic link or not a file?)") from None


IPTC_UTF8 = "\x1b%G"  # Iptc.Envelope.CharacterSet: the ISO 2022 escape for UTF-8
IPTC_CHARSET = "Iptc.Envelope.CharacterSet"
# What a new sidecar takes from the photo (besides keywords), so that digiKam and darktable,
# which read a sidecar instead of the photo once there is one, still see them.
SEED_KEYS = ("Xmp.xmp.Rating", "Xmp.MicrosoftPhoto.Rating", "Xmp.xmp.Label", "Xmp.digiKam.ColorLabel",
             "Xmp.digiKam.PickLabel", "Xmp.dc.title", "Xmp.dc.description", "Xmp.photoshop.Headline",
             SUBJECT, HIERARCHICAL, DIGIKAM)


def iptc_strings(iptc: exiv2.IptcData, key: str, photo: str, problems: list[Problem]) -> list[str]:
    """The values of an IPTC dataset as text. With the UTF-8 marker they are UTF-8; without it
    they are Latin-1 (Windows-1252, as ExifTool, digiKam and Lightroom read them). A value that
    does not decode is reported with the photo's path, never dropped without a word."""
    utf8 = any(d.key() == IPTC_CHARSET and d.toString() == IPTC_UTF8 for d in iptc)
    other = [d.toString() for d in iptc if d.key() == IPTC_CHARSET and d.toString() != IPTC_UTF8]
    out = []
    for d in iptc:
        if d.key() != key:
            continue
        raw = d.toString().encode("utf-8", "surrogateescape")  # the dataset's bytes, exactly
        if other:
            problems.append(Problem(photo, f"IPTC {key.rsplit('.', 1)[-1]} {raw!r} is in a character set "
                                           f"clipdesk does not read ({other[0]!r}); not imported"))
            continue
        try:
            out.append(raw.decode("utf-8" if utf8 else "cp1252"))
        except UnicodeDecodeError:
            problems.append(Problem(photo, f"IPTC {key.rsplit('.', 1)[-1]} {raw!r} cannot be decoded as "
                                           f"{'UTF-8' if utf8 else 'Latin-1'}; not imported"))
    return out


def _embedded(photo: str, problems: list[Problem]) -> tuple[exiv2.XmpData, exiv2.IptcData, exiv2.ExifData] | None:
    """The photo's XMP, IPTC and Exif as Exiv2 reads them (the XMP of HEIC/AVIF through Pillow,
    see below), None (with a problem) when it cannot be read."""
    try:
        if not stat.S_ISREG(os.stat(photo).st_mode):
            raise SidecarError(f"{photo}: not a regular file")
        try:
            photo.encode("utf-8")
            image = _read_image(photo, photo)
        except UnicodeEncodeError:  # a name that is not UTF-8: Exiv2 takes the (bounded) bytes
            image = _read_image(read_bounded(photo, MAX_PHOTO_BYTES) or b"", photo)
        xmp = image.xmpData()
        if not xmp.count() and os.path.splitext(photo)[1].lower() in _PILLOW_XMP:
            xmp = _pillow_xmp(photo)
        return xmp, image.iptcData(), image.exifData()
    except SidecarError as e:
        problems.append(Problem(photo, str(e).split(": ", 1)[-1]))
    except (OSError, UnicodeError) as e:
        problems.append(Problem(photo, f"cannot be read ({e})"))
    return None


def _sidecar_xmps(photo: str, problems: list[Problem]) -> list[exiv2.XmpData]:
    out = []
    for sidecar in sidecar_names(photo):
        try:
            data = read_sidecar(sidecar)
            if data is not None:
                out.append(parse_sidecar(data, sidecar).xmpData())
        except SidecarError as e:
            problems.append(Problem(sidecar, str(e).split(": ", 1)[-1]))
    return out


RATING_LABEL = "rating/{}"
COLOR_LABEL = "color/{}"
PICKED, REJECTED = "flag/picked", "flag/rejected"
DIGIKAM_COLORS = {1: "red", 2: "orange", 3: "yellow", 4: "green", 5: "blue", 6: "magenta", 7: "gray",
                  8: "black", 9: "white"}
DIGIKAM_PICKS = {1: "rejected", 3: "picked"}  # 2 is "pending": not a decision
DARKTABLE_COLORS = {0: "red", 1: "yellow", 2: "green", 3: "blue", 4: "purple"}  # darktable:colorlabels


@dataclass
class PhotoInfo:
    """What other apps say about a photo besides keywords: for filters, labels and the preview."""

    rating: int | None = None  # 1–5 stars; None: not rated
    flag: str | None = None  # "picked" | "rejected"
    color: str | None = None  # colour label: red, yellow, green, blue, purple, orange, …
    title: str | None = None
    description: str | None = None

    def labels(self) -> list[str]:
        """The labels ``tags import`` makes of them (``rating/4``, ``flag/picked``, ``color/red``)."""
        return ([RATING_LABEL.format(self.rating)] if self.rating else []) + \
            ([f"flag/{self.flag}"] if self.flag else []) + ([f"color/{self.color}"] if self.color else [])

    def as_dict(self) -> dict:
        return {"rating": self.rating, "flag": self.flag, "color": self.color, "title": self.title,
                "description": self.description}


def _number(text: str | None) -> int | None:
    try:
        return int(float((text or "").strip()))
    except ValueError:
        return None


def _stars(percent: int | None) -> int | None:
    """Microsoft's RatingPercent (1, 25, 50, 75, 99) as stars (0: not rated)."""
    if percent is None:
        return None
    return 0 if percent <= 0 else max(1, min(5, (percent + 12) // 25 + 1)) if percent >= 13 else 1


def _lang_alt(xmp: exiv2.XmpData, key: str) -> str | None:
    if key not in xmp:
        return None
    try:
        texts = dict(xmp[key].value())
        text = texts.get("x-default") or next(iter(texts.values()), "")
    except (TypeError, ValueError):
        text = xmp[key].toString()
    return text.strip() or None


def _info_from(info: PhotoInfo, xmp: exiv2.XmpData, exif: exiv2.ExifData | None = None) -> None:
    """Fill what ``info`` does not know yet from one XMP packet (and the photo's Exif)."""
    def get(key: str) -> str | None:
        return xmp[key].toString() if key in xmp else None

    rating = _number(get("Xmp.xmp.Rating"))
    if rating is None:
        rating = _stars(_number(get("Xmp.MicrosoftPhoto.Rating")))
    exif_values = {d.key(): d.toString() for d in exif} if exif is not None else {}
    if rating is None:
        rating = _number(exif_values.get("Exif.Image.Rating"))
    if rating is None:
        rating = _stars(_number(exif_values.get("Exif.Image.RatingPercent")))
    if info.flag is None:  # digiKam's pick label, else Lightroom's and darktable's "rejected" (-1)
        info.flag = DIGIKAM_PICKS.get(_number(get("Xmp.digiKam.PickLabel"))) or \
            ("rejected" if rating is not None and rating < 0 else None)
    if info.rating is None and rating is not None and 1 <= rating <= 5:
        info.rating = rating
    if info.color is None:
        label = (get("Xmp.xmp.Label") or "").strip().casefold()
        # darktable keeps a list (a photo may carry several): the first one listed
        listed = next((d.toString() for d in xmp if d.key() == "Xmp.darktable.colorlabels"), "")
        darktable = [DARKTABLE_COLORS.get(_number(c)) for c in listed.split(",")]
        info.color = label or DIGIKAM_COLORS.get(_number(get("Xmp.digiKam.ColorLabel"))) or \
            next((c for c in darktable if c), None)
    info.title = info.title or _lang_alt(xmp, "Xmp.dc.title")
    info.description = info.description or _lang_alt(xmp, "Xmp.dc.description")


def read_photo(photo: str) -> tuple[list[str], PhotoInfo, list[Problem]]:
    """A photo's keywords and :class:`PhotoInfo`, from its own sidecars first, then what is
    embedded (XMP, IPTC, the Exif rating): digiKam and darktable read a sidecar before the photo."""
    problems: list[Problem] = []
    info = PhotoInfo()
    subject: list[str] = []
    hierarchical: list[str] = []
    for xmp in _sidecar_xmps(photo, problems):
        flat, tree = _keyword_fields(xmp)
        subject += flat
        hierarchical += tree
        _info_from(info, xmp)
    embedded = _embedded(photo, problems)
    if embedded is not None:
        xmp, iptc, exif = embedded
        flat, tree = _keyword_fields(xmp)
        subject += flat + iptc_strings(iptc, IPTC_KEYWORDS, photo, problems)
        hierarchical += tree
        _info_from(info, xmp, exif)
        for attr, key in (("title", "Iptc.Application2.ObjectName"), ("description", "Iptc.Application2.Caption")):
            if getattr(info, attr) is None and any(d.key() == key for d in iptc):
                setattr(info, attr, next((t.strip() for t in iptc_strings(iptc, key, photo, problems)
                                          if t.strip()), None))
    rejected: list[str] = []
    keywords = keywords_from(subject, hierarchical, rejected)
    problems += [Problem(photo, f"keyword {k!r} is not usable (empty levels, control characters or too long); "
                                "not imported") for k in rejected]
    return keywords, info, problems


def marked_ids(lib, rating: int | None = None, picked: bool = False, color: str | None = None,
               labels: dict[str, list[int]] | None = None) -> set[int] | None:
    """Ids of the photos rated ``rating`` stars or more and/or picked and/or with colour label
    ``color`` (labels ``tags import`` made); None when no filter is asked for."""
    if not rating and not picked and not color:
        return None
    labels = lib.catalog.labels() if labels is None else labels
    ids: set[int] | None = None
    if rating:
        ids = {i for n in range(max(1, rating), 6) for i in labels.get(RATING_LABEL.format(n), [])}
    for wanted, label in ((picked, PICKED), (color, COLOR_LABEL.format((color or "").casefold()))):
        if wanted:
            chosen = set(labels.get(label, []))
            ids = chosen if ids is None else ids & chosen
    return ids


def mark_filter(lib, rating: int | None = None, picked: bool = False, color: str | None = None,
                hide_rejected: bool = False) -> tuple[set[int] | None, set[int]]:
    """``(only, exclude)`` for :meth:`Library.search` and :meth:`Library.browse`: the photos the
    marks leave (None: all) and the rejected ones to leave out (when ``hide_rejected``)."""
    labels = lib.catalog.labels()
    return (marked_ids(lib, rating, picked, color, labels=labels),
            set(labels.get(REJECTED, [])) if hide_rejected else set())


def mark_colors(lib) -> list[str]:
    """The colour labels the library's photos carry (``color/red`` → ``red``), sorted."""
    prefix = COLOR_LABEL.format("")
    return sorted(n[len(prefix):] for n, ids in lib.catalog.labels().items() if n.startswith(prefix) and ids)


def read_photo_keywords(photo: str) -> tuple[list[str], list[Problem]]:
    """Every keyword of a photo: its own sidecars, embedded XMP and IPTC Keywords (see module doc)."""
    keywords, _info, problems = read_photo(photo)
    return keywords, problems


def read_photo_info(photo: str) -> tuple[PhotoInfo, list[Problem]]:
    """Rating, pick/reject flag, colour label, title and description (for the preview)."""
    _keywords, info, problems = read_photo(photo)
    return info, problems


def embedded_seed(photo: str, problems: list[Problem]) -> exiv2.XmpData:
    """What a new sidecar of ``photo`` starts from: its embedded keywords (XMP and IPTC), rating,
    title and description (:data:`SEED_KEYS`); darktable's automatic tags are left out."""
    seed = exiv2.XmpData()
    embedded = _embedded(photo, problems)
    if embedded is None:
        return seed
    xmp, iptc, _exif = embedded
    for d in xmp:
        if d.key() in SEED_KEYS:
            seed.add(d)
    subject, hier, digikam = _array(seed, SUBJECT), _array(seed, HIERARCHICAL), _array(seed, DIGIKAM)
    hier = [h for h in hier if not is_automatic(normalise_keyword_quiet(h))]
    digikam = [k for k in digikam if not is_automatic(normalise_keyword_quiet(k))]
    have = {x.strip().casefold() for x in subject}
    subject += [k for k in dict.fromkeys(iptc_strings(iptc, IPTC_KEYWORDS, photo, problems))
                if k.strip() and k.strip().casefold() not in have]
    _set_array(seed, SUBJECT, subject, exiv2.TypeId.xmpBag)
    _set_array(seed, HIERARCHICAL, hier, exiv2.TypeId.xmpBag)
    _set_array(seed, DIGIKAM, digikam, exiv2.TypeId.xmpSeq)
    if "Xmp.dc.title" not in seed:
        title = iptc_strings(iptc, "Iptc.Application2.ObjectName", photo, problems)
        if title and title[0].strip():
            value = exiv2.LangAltValue()
            value.read(f'lang="x-default" {title[0].strip()}')
            seed["Xmp.dc.title"] = value
    return seed


_PILLOW_XMP = frozenset({".heic", ".heif", ".avif"})  # Exiv2 does not find the XMP item of these


def _pillow_xmp(photo: str) -> exiv2.XmpData:
    """The XMP packet of a HEIC/AVIF photo as its Pillow plugin reads it (headers only)."""
    from PIL import Image

    from clipdesk.indexer.decode import heif_available

    heif_available()  # registers the HEIF opener
    try:
        with Image.open(photo) as img:
            packet = img.info.get("xmp")
    except (OSError, ValueError, SyntaxError) as e:
        raise SidecarError(f"{photo}: cannot be read ({e})") from None
    if not isinstance(packet, bytes) or not packet.strip() or len(packet) > MAX_SIDECAR_BYTES:
        return exiv2.XmpData()
    return _read_image(packet, photo).xmpData()


# ---------------------------------------------------------------------- import
@dataclass
class ImportReport:
    photos: int = 0  # photos looked at
    tagged: int = 0  # photos with at least one keyword
    labels: dict[str, int] = field(default_factory=dict)  # label -> photos added to it
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"photos": self.photos, "tagged": self.tagged, "labels": self.labels,
                "problems": [p.as_dict() for p in self.problems]}


def import_tags(lib, paths: Sequence[str] = (), prefix: str = "", progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> ImportReport:
    """Make the keywords of the library's photos (under ``paths``, default all) clipdesk labels.

    Only indexed photos are read (index a folder first). Each keyword ``k`` becomes label
    ``prefix + k``; labels only ever gain photos, so importing twice changes nothing.
    """
    roots = [os.path.abspath(os.path.expanduser(p)) for p in paths]
    images = [i for i in lib.catalog.all_images()
              if not roots or any(i.path == r or i.path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)]
    report = ImportReport(photos=len(images))
    members: dict[str, list[int]] = {}
    # ``Fish`` and ``fish`` are one keyword: one label, the library's spelling if it has one
    names = {name.casefold(): name for name in lib.labels()}
    for n, info in enumerate(images):
        if cancel is not None:
            cancel.check()
        keywords, marks, problems = read_photo(info.path)
        report.problems += problems
        if keywords:
            report.tagged += 1
        for label in marks.labels():  # ratings, flags, colours: not prefixed, so filters find them
            members.setdefault(names.setdefault(label.casefold(), label), []).append(info.id)
        for k in keywords:
            try:
                label = with_prefix(prefix, k)
                members.setdefault(names.setdefault(label.casefold(), label), []).append(info.id)
            except TagsError as e:
                report.problems.append(Problem(info.path, str(e)))
        if progress and (n % 50 == 0 or n + 1 == len(images)):
            progress(Progress("import", n + 1, len(images), path=info.path))
    with lib.writing():
        for label, ids in members.items():
            lib.catalog.add_to_label(label, ids)
            report.labels[label] = len(ids)
    return report


# ---------------------------------------------------------------------- write / remove
@dataclass
class SidecarChange:
    sidecar: str
    photos: list[str]
    add: list[str]
    remove: list[str]
    action: str  # create | update | delete (a sidecar clipdesk made, nothing left in it) | embed (the photo)

    @property
    def create(self) -> bool:
        return self.action == "create"

    def as_dict(self) -> dict:
        return {"sidecar": self.sidecar, "photos": self.photos, "add": self.add, "remove": self.remove,
                "action": self.action}


@dataclass
class TagPlan:
    changes: list[SidecarChange] = field(default_factory=list)
    unchanged: int = 0  # sidecars that already say what was asked
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"changes": [c.as_dict() for c in self.changes], "unchanged": self.unchanged,
                "problems": [p.as_dict() for p in self.problems]}


@dataclass
class TagWriteReport:
    """What a write/remove changed, counted from what is on disk afterwards."""

    operation: str | None
    written: int = 0  # existing sidecars updated
    created: int = 0
    deleted: int = 0  # sidecars clipdesk had created, removed with their last keyword
    embedded: int = 0  # photos whose embedded XMP was rewritten (``--embedded``)
    unchanged: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return self.written + self.created + self.deleted + self.embedded

    def summary(self) -> str:
        if not self.changed:
            why = (f"{len(self.problems)} could not be written" if self.problems
                   else "there was nothing to write" if not self.unchanged
                   else "every sidecar already says that")
            return f"Nothing written: {why} ({self.unchanged} sidecars unchanged)."
        text = (f"{self.written} sidecars updated, {self.created} created, {self.deleted} deleted, "
                f"{self.unchanged} unchanged")
        return f"{self.embedded} photos' embedded XMP updated, " + text if self.embedded else text

    def as_dict(self) -> dict:
        return {"operation": self.operation, "changed": self.changed, "written": self.written,
                "created": self.created, "deleted": self.deleted, "embedded": self.embedded,
                "unchanged": self.unchanged,
                "message": self.summary(), "problems": [p.as_dict() for p in self.problems]}


def created_sidecars(lib) -> frozenset[str]:
    """Sidecars clipdesk itself created (a ``tags`` operation not undone since)."""
    return frozenset(Journal(lib.folder).created_files(KIND))


def plan_write(keywords: dict[str, list[str]], remove: bool = False, created: Collection[str] = (),
               embedded: bool = False) -> TagPlan:
    """What writing (or removing) ``keywords`` (photo path -> keywords) would change, file by file.

    Photos sharing one sidecar share one change (a RAW and its JPEG twin do not: the JPEG's
    keywords go to ``photo.JPG.xmp``). Sidecars that cannot be parsed, links, and read-only
    folders are reported, never touched. A sidecar in ``created`` (:func:`created_sidecars`) that
    would be left with nothing in it is deleted; any other keeps an empty XMP packet.

    ``embedded``: the keywords go into the photo's own XMP instead (JPEG, TIFF, DNG: the formats
    Lightroom reads that way and Exiv2 writes); the photo is backed up whole in the journal.
    """
    if embedded:
        return _plan_embedded(keywords, remove)
    plan = TagPlan()
    by_sidecar: dict[str, tuple[list[str], dict[str, None]]] = {}
    for photo, kws in keywords.items():
        if not os.path.isfile(photo):
            plan.problems.append(Problem(photo, "the photo is missing; no sidecar written"))
            continue
        target = sidecar_target(photo)
        photos, words = by_sidecar.setdefault(target, ([], {}))
        photos.append(photo)
        for k in kws:
            words.setdefault(normalise_keyword(k))
    for sidecar, (photos, words) in by_sidecar.items():
        folder = os.path.dirname(sidecar)
        try:
            data = read_sidecar(sidecar)
            if data is None and remove:
                plan.unchanged += 1
                continue
            words_list = list(words)
            new = merge_keywords(data, [] if remove else words_list, words_list if remove else [], sidecar)
        except SidecarError as e:
            plan.problems.append(Problem(sidecar, str(e).split(": ", 1)[-1] + "; left untouched"))
            continue
        if new is None:
            plan.unchanged += 1
            continue
        if not os.access(folder, os.W_OK) or (data is not None and not os.access(sidecar, os.W_OK)):
            plan.problems.append(Problem(sidecar, "the folder or sidecar is read-only; not written"))
            continue
        action = "create" if data is None else "delete" if new == EMPTY and sidecar in created else "update"
        plan.changes.append(SidecarChange(sidecar, photos, [] if remove else list(words),
                                          list(words) if remove else [], action))
    return plan


def _plan_embedded(keywords: dict[str, list[str]], remove: bool) -> TagPlan:
    plan = TagPlan()
    for photo, kws in keywords.items():
        words = list(dict.fromkeys(normalise_keyword(k) for k in kws))
        if os.path.splitext(photo)[1].lower() not in EMBED_EXTENSIONS:
            plan.problems.append(Problem(photo, "Exiv2 cannot write XMP into this kind of file; write a sidecar "
                                                "instead (without --embedded)"))
            continue
        try:
            data = read_bounded(photo, MAX_EMBED_BYTES)
            if data is None:
                plan.problems.append(Problem(photo, "the photo is missing; nothing written"))
                continue
            new = merge_embedded(data, [] if remove else words, words if remove else [], photo)
        except OSError as e:
            plan.problems.append(Problem(photo, f"cannot be read ({e.strerror or e}); left untouched"))
            continue
        except SidecarError as e:
            plan.problems.append(Problem(photo, str(e).split(": ", 1)[-1] + "; left untouched"))
            continue
        if new is None:
            plan.unchanged += 1
        elif not os.access(photo, os.W_OK) or not os.access(os.path.dirname(photo), os.W_OK):
            plan.problems.append(Problem(photo, "the photo or its folder is read-only; not written"))
        else:
            plan.changes.append(SidecarChange(photo, [photo], [] if remove else words, words if remove else [],
                                              "embed"))
    return plan


def apply_write(lib, plan: TagPlan, description: str = "tags write", progress: ProgressFn | None = None,
                cancel: CancelToken | None = None) -> TagWriteReport:
    """Apply a plan as one journaled operation (undo with :func:`undo`)."""
    report = TagWriteReport(None, unchanged=plan.unchanged, problems=list(plan.problems))
    if not plan.changes:
        return report
    with lib.writing():
        journal = Journal(lib.folder)
        ours = journal.created_files(KIND)
        steps = [{"action": "embed" if c.action == "embed" else "write", "path": c.sidecar,
                  "info": {"photos": c.photos, "add": c.add, "remove": c.remove, "ours": c.sidecar in ours}}
                 for c in plan.changes]
        with journal.start(KIND, description, steps) as op:
            report.operation = op.id
            _run(op, report, progress, cancel)
    return report


def resume(lib, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> TagWriteReport:
    """Finish the newest ``tags`` operation that was interrupted (killed, cancelled, disk full)."""
    with lib.writing():
        op = Journal(lib.folder).interrupted(KIND)
        if op is None:
            raise TagsError("No interrupted 'tags' operation to resume.")
        report = TagWriteReport(op.id)
        with op:
            op.recover()
            _run(op, report, progress, cancel)
    return report


WRITE_BATCH = 64  # sidecars per journal sync


def _new_content(step, data: bytes | None, problems: list[Problem]) -> bytes | None:
    """What a ``write`` step puts at its sidecar now: bytes, :data:`REMOVE`, or None (no change)."""
    add, remove = step.info.get("add", []), step.info.get("remove", [])
    seed = None
    if data is None and add:
        photos = [p for p in step.info.get("photos", []) if isinstance(p, str)]
        seed = embedded_seed(photos[0], problems) if photos else None
    new = merge_keywords(data, add, remove, step.path, seed=seed)
    if new == EMPTY:
        return REMOVE if step.info.get("ours") is True else EMPTY_PACKET
    return new


def _read_photo(photo: str) -> bytes:
    try:
        data = read_bounded(photo, MAX_EMBED_BYTES)
    except OSError as e:
        raise SidecarError(f"{photo}: cannot be read ({e.strerror or e})") from None
    if data is None:
        raise SidecarError(f"{photo}: the photo is missing")
    return data


def _on_disk(step, new: bytes) -> bool:
    """Whether the sidecar (or photo) on disk now is what the step meant to leave there."""
    try:
        now = _read_photo(step.path) if step.action == "embed" else read_sidecar(step.path)
        if new == REMOVE:
            return now is None
        if now != new:
            return False
        have = embedded_keywords(now, step.path) if step.action == "embed" else keywords_in(now, step.path)
    except SidecarError:
        return False
    return all(_fold(k) in have for k in step.info.get("add", [])) and \
        not any(_fold(k) in have for k in step.info.get("remove", []))


def _run(op, report: TagWriteReport, progress: ProgressFn | None, cancel: CancelToken | None) -> None:
    pending = op.pending()
    done = [0]

    def each(step) -> None:
        done[0] += 1
        if progress:
            progress(Progress("write", done[0], len(pending), path=step.path))

    for start in range(0, len(pending), WRITE_BATCH):
        if cancel is not None:
            cancel.check()
        batch, failed = [], set()
        for step in pending[start:start + WRITE_BATCH]:
            try:
                if step.action == "embed":
                    data = _read_photo(step.path)
                    new = merge_embedded(data, step.info.get("add", []), step.info.get("remove", []), step.path)
                else:
                    data = read_sidecar(step.path)
                    new = _new_content(step, data, report.problems)
            except SidecarError as e:
                # Changed into something unparsable since planning: left alone, like at planning.
                report.problems.append(Problem(step.path, str(e).split(": ", 1)[-1] + "; left untouched"))
                data = new = None
                failed.add(step.n)
            batch.append((step, data, new))
        op.write_files(batch, cancel.check if cancel is not None else None, each)
        for step, data, new in batch:
            if new is None:
                report.unchanged += step.n not in failed
            elif not _on_disk(step, new):
                report.problems.append(Problem(step.path, "the change is not on disk after writing it "
                                                          "(changed by another program meanwhile?)"))
            else:
                kind = ("embedded" if step.action == "embed" else "deleted" if new == REMOVE
                        else "created" if data is None else "written")
                setattr(report, kind, getattr(report, kind) + 1)
    op.finish()


def undo(lib, operation: str | None = None) -> UndoReport:
    """Restore every sidecar of the newest (or the given) ``tags`` operation as it was before."""
    with lib.writing():
        op = Journal(lib.folder).latest(KIND, operation)
        with op:
            return op.undo()


# ---------------------------------------------------------------------- what to write
def selection(lib, label: str | None = None, probe: str | None = None, min_probability: float | None = None,
              classify: Sequence[str] | None = None, threshold: float | None = None, prefix: str = DEFAULT_PREFIX,
              progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> dict[str, list[str]]:
    """Photo path -> keywords, from one label, a probe's predictions, or zero-shot categories.

    ``min_probability`` defaults to 0.8 for a probe and 0 for zero-shot (whose probabilities are
    spread over the categories; ``threshold`` answers "none" there)."""
    from clipdesk.teaching import NONE_CLASS, is_negative

    chosen = [x for x in (label, probe, classify) if x]
    if len(chosen) != 1:
        raise TagsError("Choose exactly one of a label, a probe or zero-shot categories.")
    out: dict[str, list[str]] = {}
    if label:
        labels = lib.labels()
        if label not in labels:
            raise TagsError(f"No label named '{label}'.")
        keyword = with_prefix(prefix, label)
        return {p: [keyword] for p in labels[label]}
    if probe:
        floor = 0.8 if min_probability is None else min_probability
        rows = lib.predict(probe, progress=progress, cancel=cancel)
    else:
        floor = min_probability or 0.0
        rows = lib.classify(list(classify), threshold, progress=progress, cancel=cancel)
    rows = [r for r in rows if r.label is not None and r.probability >= floor]
    for r in rows:
        if r.label == NONE_CLASS or is_negative(r.label):
            continue
        out.setdefault(r.path, []).append(with_prefix(prefix, r.label))
    return out
