"""Duplicate photos: exact copies (same bytes, any name or folder) and near-duplicates.

Near-duplicates are re-encodes, resizes, small crops, format conversions and lightly edited
exports of one photo. They are found in two steps:

1. **Candidates** from the vector index: a range search (every pair whose embedding cosine is at
   least ``threshold``), never all pairs: the vectors are split into cells around centroids (the
   inverted lists of the approximate index of a large library), and each photo is compared, by
   matrix products, with its own cell and the two other cells nearest to it, so a million-photo
   library costs a few passes over its vectors. Candidates from 8-bit codes are re-scored with the catalog's exact
   vectors.
2. **Pixel check** of each candidate pair: photos that are merely similar (burst shots of
   different moments, another photo of the same subject, a mirrored or heavily cropped version)
   share an embedding neighbourhood but not their pixels. A 64-bit DCT perceptual hash of the
   decoded image, a coarse exposure-free colour layout and the aspect ratio settle those cheaply. Limits were measured on real photos
   (``clipdesk eval duplicates``; see ``evaluate_duplicates``).

Groups never chain: a group is built around its best photo (``suggested_keep``), and each other
member must itself be a duplicate of that photo.

The core only finds and acts; it never prints. ``trash_groups`` moves the non-kept photos of
groups to the desktop's Trash (``send2trash``; never a permanent delete) as one journaled
operation (``clipdesk.journal``) and moves their labels to the kept photo; ``undo_trash`` brings
them back where the platform tells where the Trash keeps them (freedesktop: Linux desktops).
"""
from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.catalog import ImageInfo
from clipdesk.indexer.decode import decode_image
from clipdesk.indexer.errors import UnreadableImageError
from clipdesk.indexer.pipeline import CancelToken, Progress
from clipdesk.indexer.scan import is_inside

# Embedding cosine at or above which two photos are candidate near-duplicates (a setting: the
# library's meta key ``duplicates.threshold`` overrides it). NOT yet measured with trained
# weights (none can be installed where this was written): it is kept loose on purpose, so the
# measured pixel check below decides; ``clipdesk eval duplicates --model NAME`` measures it.
DEFAULT_THRESHOLD = 0.90
THRESHOLD_META = "duplicates.threshold"
# Pixel check limits, chosen with ``clipdesk eval duplicates`` on the 359 shared labelled photos
# (3,213 images, 5.16M pairs): pixel check alone precision 0.992, recall 0.962 per pair.
MAX_HASH_DISTANCE = 12  # of 64 perceptual-hash bits
MAX_COLOUR_DISTANCE = 0.10  # mean difference of the exposure-normalised 4×4 colour layout
MAX_ASPECT_CHANGE = 0.12  # relative change of width/height (a 5 % crop changes it by ~5 %)
# Other cells each photo is compared with (its twin may sit across a border), and how many of
# its cell's most frequent choices are compared with the whole cell at once (one product instead
# of many small ones). Measured on planted twins (benchmarks/bench_duplicates.py): on the
# k-means cells of an exact index (10k, 50k photos) 4 probes reach recall 1.0 where 3 lose 1 %
# at 10k (+7 % time); on the inverted lists of an approximate index (100k, 1M) 1 probe reaches
# 1.0 and costs about half of 2.
EXTRA_PROBES = {"exact": 4, "approximate": 1}
TARGET_CELLS = {"exact": 8, "approximate": 4}
# The cells among which a photo's extra cells are chosen: every cell up to this many, else the
# ones whose centroids are nearest its own (in weakly clustered data a photo's second-nearest
# centroid is often not near its own centroid, so the list is long).
CANDIDATE_CELLS = 256
SINGLE_CELL = 8192  # below this many vectors, one cell: every pair is compared
CELL_CACHE_FLOATS = 16 << 20  # decoded cells kept for reuse (64 MB)
_ROWS = 1024  # rows of one matrix product (memory: _ROWS × cell neighbourhood floats)
MAX_PAIRS_PER_PHOTO = 200  # candidates kept per photo (a flood of identical blank frames)
_APPROX_MARGIN = 0.02  # 8-bit codes blur scores: fetch a little below, re-score exactly

ProgressFn = Callable[[Progress], None]


# ---------------------------------------------------------------------- results
@dataclass(frozen=True)
class DuplicatePhoto:
    id: int
    path: str
    size: int
    width: int | None
    height: int | None
    taken: float | None
    score: float  # similarity to the group's suggested keeper (1.0 for itself and exact copies)

    def as_dict(self) -> dict:
        return {"path": self.path, "size": self.size, "width": self.width, "height": self.height,
                "taken": self.taken, "score": round(float(self.score), 6)}


@dataclass(frozen=True)
class DuplicateGroup:
    kind: str  # "exact" or "near"
    photos: list[DuplicatePhoto]  # the suggested keeper first
    suggested_keep: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "photos": [p.as_dict() for p in self.photos],
                "suggested_keep": self.suggested_keep}


@dataclass
class DuplicateReport:
    groups: list[DuplicateGroup] = field(default_factory=list)
    threshold: float = DEFAULT_THRESHOLD
    candidates: int = 0  # near pairs the vector index proposed
    rejected_by_pixels: int = 0  # of those, pairs the pixel check found to be different photos
    unreadable: list[str] = field(default_factory=list)  # files that could not be checked
    seconds: float = 0.0


@dataclass(frozen=True)
class PixelCheck:
    """What the pixel check uses of one photo, from a small decode of it."""

    phash: int  # perceptual hash of the whole picture
    phash_center: int  # ... and of its central 90 % (a slightly cropped copy matches one of them)
    colours: tuple[float, ...]  # 4×4 grid of mean RGB, divided by the overall mean (exposure-free)
    aspect: float  # width / height of the upright image


# ---------------------------------------------------------------------- pixels
def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT32 = _dct_matrix(32)


def perceptual_hash(image) -> int:
    """64-bit DCT hash of a PIL image: the signs of its 8×8 lowest frequencies against their median.

    Stable under re-encoding, resizing, format conversion and exposure changes (brightness moves
    only the DC term, contrast scales all terms alike); a mirror flips every odd horizontal
    frequency, so a mirrored photo lands far away.
    """
    from PIL import Image

    gray = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float64)
    low = (_DCT32 @ gray @ _DCT32.T)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count() if hasattr(int, "bit_count") else bin(a ^ b).count("1")


def pixel_check(path: str) -> PixelCheck:
    """Decode ``path`` small (JPEG draft mode) and summarise it. Raises UnreadableImageError."""
    img = decode_image(path, 64)
    return pixel_summary(img.image, img.width / max(1, img.height))


def pixel_summary(image, aspect: float | None = None) -> PixelCheck:
    from PIL import Image

    w, h = image.size
    center = image.crop((int(w * 0.05), int(h * 0.05), w - int(w * 0.05), h - int(h * 0.05)))
    grid = np.asarray(image.convert("RGB").resize((4, 4), Image.Resampling.BOX), np.float64)
    colours = (grid / (grid.mean() + 1e-6)).ravel()
    return PixelCheck(perceptual_hash(image), perceptual_hash(center), tuple(colours.round(4).tolist()),
                      aspect if aspect is not None else w / max(1, h))


def pixel_distances(a: PixelCheck, b: PixelCheck) -> tuple[int, float, float]:
    """``(hash bits apart, colour layout distance, relative aspect change)`` of two photos."""
    bits = min(hamming(a.phash, b.phash), hamming(a.phash_center, b.phash_center))
    colour = float(np.abs(np.subtract(a.colours, b.colours)).mean())
    aspect = max(a.aspect, b.aspect) / max(1e-9, min(a.aspect, b.aspect)) - 1.0
    return bits, colour, aspect


def same_pixels(a: PixelCheck, b: PixelCheck, max_distance: int = MAX_HASH_DISTANCE,
                max_colour: float = MAX_COLOUR_DISTANCE, max_aspect_change: float = MAX_ASPECT_CHANGE) -> bool:
    """Whether two photos show the same picture (re-encoded, resized, slightly cropped or edited):
    the same shapes (perceptual hash), the same colours where they are (a colour variant of a
    drawing or another moment of a burst differs there) and nearly the same aspect ratio."""
    bits, colour, aspect = pixel_distances(a, b)
    return aspect <= max_aspect_change and bits <= max_distance and colour <= max_colour


# ---------------------------------------------------------------------- keeper
_FORMAT_RANK = {  # camera originals first, lossy conversions last
    **dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"), 0),
    **dict.fromkeys((".heic", ".heif"), 1), **dict.fromkeys((".jpg", ".jpeg"), 2),
    **dict.fromkeys((".tif", ".tiff"), 3), ".avif": 4, ".png": 5, ".webp": 6, ".bmp": 7, ".gif": 8,
}
_COPY_MARKS = ("copy", "(1)", "(2)", "(3)", "-edited", "_edited", "export")


def keep_order(p: DuplicatePhoto | ImageInfo) -> tuple:
    """Sort key for "which photo to keep": largest resolution, then oldest date, then the original
    format (camera formats before conversions, names without a copy mark), then the bigger file."""
    name = os.path.basename(p.path).lower()
    ext = os.path.splitext(name)[1]
    return (-((p.width or 0) * (p.height or 0)),
            p.taken if p.taken is not None else float("inf"),
            _FORMAT_RANK.get(ext, 9),
            any(m in name for m in _COPY_MARKS),
            -(p.size or 0),
            p.path)


def suggested_keep(photos: Sequence[DuplicatePhoto | ImageInfo]) -> str:
    return min(photos, key=keep_order).path


# ---------------------------------------------------------------------- finding
def find_duplicates(library, threshold: float | None = None, folder: str | None = None,
                    verify_pixels: bool = True, progress: ProgressFn | None = None,
                    cancel: CancelToken | None = None) -> DuplicateReport:
    """Every group of duplicate photos in ``library`` (exact groups first, then near groups).

    ``threshold`` defaults to the library's setting (:func:`library_threshold`). ``folder``
    limits the search to photos under that folder (a group needs two of them).
    ``verify_pixels=False`` trusts the embedding alone (benchmarks on synthetic vectors, which
    have no files).
    """
    t0 = time.perf_counter()
    if threshold is None:
        threshold = library_threshold(library)
    check_threshold(threshold)
    notify = progress or (lambda _p: None)
    catalog = library.catalog
    folder = os.path.abspath(os.path.expanduser(folder)) if folder else None
    if folder and not any(is_inside(folder, f) or is_inside(f, folder) for f in catalog.folders()):
        raise ClipdeskError(f"{folder} is not in the library: its folders are "
                            f"{', '.join(catalog.folders()) or '(none)'}.")
    report = DuplicateReport(threshold=threshold)

    # 1. Exact: same fingerprint, confirmed byte for byte (the fingerprint reads only the ends).
    exact: list[list[int]] = []
    for ids in catalog.hash_groups(folder):
        if cancel is not None:
            cancel.check()
        exact += _confirm_identical(catalog.images(ids), report)
    info: dict[int, ImageInfo] = {}
    for ids in exact:
        info.update(catalog.images(ids))
    exact = [[m.id for m in sorted((info[i] for i in ids), key=keep_order)] for ids in exact]  # keeper first
    exact.sort(key=lambda ids: info[ids[0]].path)
    # Only each exact group's keeper takes part in the near search: a copy is not a second photo.
    hidden = {i for ids in exact for i in ids[1:]}

    # 2. Near: candidates from the vector index, then the pixel check.
    subset = catalog.filter_ids(folder) if folder else None
    pairs = near_pairs(library, threshold, subset=subset, skip=hidden, progress=notify, cancel=cancel)
    report.candidates = len(pairs)
    ids_needed = sorted({i for pair in pairs for i in pair} - info.keys())
    info.update(catalog.images(ids_needed))
    checks = _pixel_checks([info[i] for i in {i for pair in pairs for i in pair} if i in info],
                           report, notify, cancel) if verify_pixels else {}

    def verified(a: int, b: int) -> bool:
        if not verify_pixels:
            return True
        ca, cb = checks.get(a), checks.get(b)
        return ca is not None and cb is not None and same_pixels(ca, cb)

    near_groups = _group(pairs, info, verified, report, cancel)

    # 3. Results, keeper first.
    for ids in exact:
        report.groups.append(_make_group("exact", [info[i] for i in ids], {i: 1.0 for i in ids}))
    for members, scores in sorted(near_groups, key=lambda g: g[0][0].path):
        report.groups.append(_make_group("near", members, scores))
    report.seconds = time.perf_counter() - t0
    notify(Progress("done", len(report.groups), len(report.groups)))
    return report


def _pixel_checks(photos: Sequence[ImageInfo], report: DuplicateReport, notify: ProgressFn,
                  cancel: CancelToken | None) -> dict[int, PixelCheck | None]:
    """Pixel summaries of the candidate photos, decoded in a thread pool (Pillow releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p: ImageInfo) -> PixelCheck | None:
        if cancel is not None and cancel.cancelled:
            return None
        try:
            return pixel_check(p.path)
        except UnreadableImageError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                            thread_name_prefix="clipdesk-duplicates") as pool:
        checks = {}
        for n, (p, check) in enumerate(zip(photos, pool.map(one, photos)), 1):
            checks[p.id] = check
            if n % 50 == 0 or n == len(photos):
                notify(Progress("pixels", n, len(photos)))
    if cancel is not None:
        cancel.check()
    report.unreadable += sorted(p.path for p in photos if checks[p.id] is None)
    return checks


def check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0.5 <= float(threshold) <= 1.0):
        raise ClipdeskError(f"The duplicate threshold must be a cosine similarity between 0.5 and 1 "
                            f"(got {threshold!r}).")


def library_threshold(library) -> float:
    """The library's duplicate threshold setting, else :data:`DEFAULT_THRESHOLD`."""
    raw = library.catalog.get_meta(THRESHOLD_META)
    try:
        value = float(raw) if raw is not None else DEFAULT_THRESHOLD
        check_threshold(value)
        return value
    except (ValueError, ClipdeskError):
        return DEFAULT_THRESHOLD  # a damaged setting falls back rather than blocking the feature


def set_library_threshold(library, threshold: float) -> None:
    check_threshold(threshold)
    library.catalog.set_meta(THRESHOLD_META, repr(float(threshold)))


def _make_group(kind: str, members: list[ImageInfo], scores: dict[int, float]) -> DuplicateGroup:
    # float16 vectors are unit length to ~1e-3: a copy's cosine may read 1.0004
    photos = [DuplicatePhoto(m.id, m.path, m.size, m.width, m.height, m.taken, min(1.0, scores.get(m.id, 1.0)))
              for m in members]
    return DuplicateGroup(kind, photos, photos[0].path)


def _confirm_identical(members: dict[int, ImageInfo], report: DuplicateReport) -> list[list[int]]:
    """Split one fingerprint group into groups of byte-identical files (missing files dropped)."""
    by_digest: dict[str, list[int]] = {}
    for i, m in members.items():
        try:
            by_digest.setdefault(_full_hash(m.path), []).append(i)
        except OSError:
            report.unreadable.append(m.path)
    return [sorted(ids) for ids in by_digest.values() if len(ids) > 1]


def _full_hash(path: str) -> str:
    from clipdesk.indexer.files import open_regular

    h = hashlib.blake2b(digest_size=20)
    with os.fdopen(open_regular(path), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def near_pairs(library, threshold: float, subset: np.ndarray | None = None, skip: Iterable[int] = (),
               progress: ProgressFn | None = None, cancel: CancelToken | None = None,
               probes: int | None = None) -> dict[tuple[int, int], float]:
    """Pairs ``(a, b)``, ``a < b``, whose exact embedding cosine is at least ``threshold``.

    A range search by cells, never all pairs: the library's vectors are split into cells around
    centroids (the inverted lists of an approximate index, else a k-means of the vectors). Each
    photo is compared, by matrix products, with the photos of its own cell and of the ``probes``
    other cells whose centroids are nearest to it (chosen among the centroids nearest its own),
    where the twin of a photo near a cell's border lands. Memory is one cell's block at a time
    plus the pairs found. ``subset`` limits both ends to those ids; ids in ``skip`` take no part.
    """
    from threadpoolctl import threadpool_limits

    # Thousands of small matrix products: a multi-threaded BLAS spends more time waking and
    # spinning its threads than multiplying (measured 77 s against 6 s single-threaded at 100k
    # on a busy 2-core machine), and one core stays free for the app.
    with threadpool_limits(1):
        return _near_pairs(library, threshold, subset, skip, progress, cancel, probes)


def _near_pairs(library, threshold, subset, skip, progress, cancel, probes) -> dict[tuple[int, int], float]:
    notify = progress or (lambda _p: None)
    cells = _Cells(library.vectors, library.catalog)
    kind = "approximate" if cells.approximate else "exact"
    probes = EXTRA_PROBES[kind] if probes is None else probes
    target_cells = TARGET_CELLS[kind]
    skipped = _IdMask(np.fromiter((int(i) for i in skip), np.int64))
    allowed = None if subset is None else _IdMask(np.asarray(subset, np.int64))
    radius = float(threshold) - (_APPROX_MARGIN if cells.approximate else 1e-4)
    raw: dict[tuple[int, int], float] = {}
    candidates = cells.neighbours(CANDIDATE_CELLS)
    centroids = cells.unit_centroids

    def cell(c: int) -> tuple[np.ndarray, np.ndarray]:
        ids, vecs = cells.get(c)
        keep = ~skipped(ids)
        if allowed is not None:
            keep &= allowed(ids)
        return (ids, vecs) if keep.all() else (ids[keep], vecs[keep])

    for c in range(cells.count):
        if cancel is not None:
            cancel.check()
        ids, vecs = cell(c)
        if len(ids):
            near = np.asarray(candidates[c], np.int64)
            chosen = np.zeros((len(ids), 0), np.int64)
            if len(near) and probes > 0:
                k = min(probes, len(near))
                scores = vecs @ centroids[near].T  # (m, candidates): where each photo's twins may sit
                chosen = near[np.argpartition(-scores, k - 1, axis=1)[:, :k]]
            # Each call costs more than its arithmetic: one product with the cell itself and the
            # cells most of its photos lean towards, then only the few choices left over.
            targets, votes = np.unique(chosen, return_counts=True)
            common = targets[np.argsort(-votes, kind="stable")[:target_cells]]
            blocks = [cell(int(t)) for t in common]
            _pairs_in_block(ids, vecs, np.concatenate([ids] + [b[0] for b in blocks]),
                            np.vstack([vecs] + [b[1] for b in blocks]), radius, raw)
            for t in np.setdiff1d(targets, common):
                rows = np.nonzero((chosen == t).any(1))[0]
                t_ids, t_vecs = cell(int(t))
                if len(t_ids):
                    _pairs_in_block(ids[rows], vecs[rows], t_ids, t_vecs, radius, raw)
        notify(Progress("duplicates", c + 1, cells.count))
    if cells.approximate and raw:
        raw = _rescore(library.catalog, raw)
    return {pair: s for pair, s in raw.items() if s >= threshold}


class _IdMask:
    """Membership of catalog ids in a set, as a lookup table (ids are small positive integers)."""

    def __init__(self, ids: np.ndarray):
        self._table = np.zeros(int(ids.max(initial=-1)) + 1, bool)
        self._table[ids] = True

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        out = np.zeros(len(ids), bool)
        inside = ids < len(self._table)
        out[inside] = self._table[ids[inside]]
        return out


class _Cells:
    """The library's vectors grouped into cells: ``get(c) -> (ids, vectors (m, dim) float32)``.

    On an approximate (IVF, 8-bit) index the cells are its inverted lists, decoded (scores are
    then approximate and re-scored exactly afterwards); on an exact index the vectors are read
    from the catalog and, above ``SINGLE_CELL``, split by a k-means of ``sqrt(n)`` centroids.
    """

    def __init__(self, store, catalog):
        self.store = store
        self.approximate = store.is_approximate
        if self.approximate:
            index = store.index
            self.count = index.nlist
            self.centroids = index.quantizer.reconstruct_n(0, index.nlist)
            self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
            self._cached_floats = 0
            return
        chunks = list(catalog.iter_vectors())
        ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
        vecs = np.vstack([c[1] for c in chunks]) if chunks else np.zeros((0, store.dim), np.float32)
        del chunks
        if len(ids) <= SINGLE_CELL:
            self.count, self.centroids = 1, vecs.mean(0, keepdims=True) if len(ids) else np.zeros((1, store.dim))
            self._members = [np.arange(len(ids))]
        else:
            import faiss

            k = int(np.sqrt(len(ids)))
            rng = np.random.default_rng(0)
            sample = vecs[rng.choice(len(ids), min(len(ids), 40 * k), replace=False)]
            km = faiss.Kmeans(vecs.shape[1], k, niter=10, seed=1, spherical=True)
            km.train(sample)
            _, assign = km.index.search(vecs, 1)
            order = np.argsort(assign[:, 0], kind="stable")
            bounds = np.searchsorted(assign[order, 0], np.arange(k + 1))
            self.count, self.centroids = k, km.centroids
            self._members = [order[bounds[c]:bounds[c + 1]] for c in range(k)]
        self._ids, self._vecs = ids, vecs

    def get(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if not self.approximate:
            m = self._members[c]
            return self._ids[m], self._vecs[m]
        hit = self._cache.get(c)
        if hit is not None:
            self._cache.move_to_end(c)
            return hit
        import faiss

        index = self.store.index
        with self.store.lock:
            n = index.invlists.list_size(c)
            if n == 0:
                return np.zeros(0, np.int64), np.zeros((0, index.d), np.float32)
            ids = faiss.rev_swig_ptr(index.invlists.get_ids(c), n).copy()
            codes = faiss.rev_swig_ptr(index.invlists.get_codes(c), n * index.code_size).copy()
        quantizer = index.pq if hasattr(index, "pq") else index.sq  # IVF-PQ above 2M photos, else IVF-SQ8
        vecs = quantizer.decode(codes.reshape(n, index.code_size))
        if index.by_residual:
            vecs += self.centroids[c]
        out = (ids.astype(np.int64), vecs)
        self._cache[c] = out
        self._cached_floats += vecs.size
        while self._cached_floats > CELL_CACHE_FLOATS:  # least recently used cells go first
            _, (_, old) = self._cache.popitem(last=False)
            self._cached_floats -= old.size
        return out

    @property
    def unit_centroids(self) -> np.ndarray:
        cen = np.asarray(self.centroids, np.float32)
        return cen / np.maximum(np.linalg.norm(cen, axis=1, keepdims=True), 1e-12)

    def neighbours(self, k: int) -> list[list[int]]:
        """For each cell, the ``k`` cells whose centroids are nearest to its own."""
        if self.count <= 1 or k <= 0:
            return [[] for _ in range(self.count)]
        if k >= self.count - 1:
            return [[j for j in range(self.count) if j != c] for c in range(self.count)]
        cen = self.unit_centroids
        out = []
        for lo in range(0, self.count, 1024):
            sims = cen[lo:lo + 1024] @ cen.T
            sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf
            top = np.argpartition(-sims, min(k, self.count - 1) - 1, axis=1)[:, :min(k, self.count - 1)]
            out += [sorted(int(j) for j in row) for row in top]
        return out


def _pairs_in_block(ids: np.ndarray, vecs: np.ndarray, other_ids: np.ndarray, other_vecs: np.ndarray,
                    radius: float, out: dict[tuple[int, int], float]) -> None:
    """Add to ``out`` every pair of a row of ``vecs`` with a row of ``other_vecs`` scoring at least
    ``radius`` (self-pairs excluded; at most ``MAX_PAIRS_PER_PHOTO`` per row, the best)."""
    for lo in range(0, len(ids), _ROWS):
        sims = vecs[lo:lo + _ROWS] @ other_vecs.T
        hit_rows, hit_cols = np.nonzero(sims >= radius)
        if not len(hit_rows):
            continue
        a = ids[lo:lo + _ROWS][hit_rows]
        b = other_ids[hit_cols]
        scores = sims[hit_rows, hit_cols]
        keep = a != b
        a, b, scores, rows = a[keep], b[keep], scores[keep], hit_rows[keep]
        counts = np.bincount(rows, minlength=len(sims))
        if counts.max(initial=0) > MAX_PAIRS_PER_PHOTO:  # a flood of identical frames: the best only
            order = np.lexsort((-scores, rows))
            rank = np.arange(len(order)) - np.repeat(np.cumsum(counts) - counts, counts)
            sel = order[rank < MAX_PAIRS_PER_PHOTO]
            a, b, scores = a[sel], b[sel], scores[sel]
        lo_ids, hi_ids = np.minimum(a, b).tolist(), np.maximum(a, b).tolist()
        for x, y, s in zip(lo_ids, hi_ids, scores.tolist()):
            out[(x, y)] = s


def _rescore(catalog, raw: dict[tuple[int, int], float]) -> dict[tuple[int, int], float]:
    """Exact cosines of approximate candidate pairs, from the catalog's vectors (in chunks)."""
    out: dict[tuple[int, int], float] = {}
    pairs = sorted(raw)
    for lo in range(0, len(pairs), 20_000):
        chunk = pairs[lo:lo + 20_000]
        ids = sorted({x for p in chunk for x in p})
        pos = {i: k for k, i in enumerate(ids)}
        vecs = catalog.vectors_for(ids)
        a = vecs[[pos[x] for x, _ in chunk]]
        b = vecs[[pos[y] for _, y in chunk]]
        out.update(zip(chunk, np.einsum("ij,ij->i", a, b).tolist()))
    return out


def _group(pairs: dict[tuple[int, int], float], info: dict[int, ImageInfo],
           verified: Callable[[int, int], bool], report: DuplicateReport, cancel: CancelToken | None
           ) -> list[tuple[list[ImageInfo], dict[int, float]]]:
    """Groups without chaining: the best photo left (by :func:`keep_order`) gathers its
    candidates that pass the pixel check and are not grouped yet; then the next best, and so on.

    Every pair at or above the threshold is in ``pairs``, so a photo's candidates are all the
    photos it can be grouped with: the work is linear in the pairs, however large a chain of
    similar photos (a time-lapse, a burst) is.
    """
    neighbours: dict[int, list[tuple[int, float]]] = {}
    for (a, b), s in pairs.items():
        if a in info and b in info:
            neighbours.setdefault(a, []).append((b, s))
            neighbours.setdefault(b, []).append((a, s))
    grouped: set[int] = set()
    rejected = 0
    out = []
    for n, anchor in enumerate(sorted(neighbours, key=lambda i: keep_order(info[i]))):
        if cancel is not None and n % 1000 == 0:
            cancel.check()
        if anchor in grouped:
            continue
        members, scores = [anchor], {anchor: 1.0}
        for m, s in neighbours[anchor]:
            if m in grouped:
                continue
            if verified(anchor, m):
                members.append(m)
                scores[m] = s
            else:
                rejected += 1
        if len(members) > 1:
            grouped.update(members)
            members.sort(key=lambda i: keep_order(info[i]))  # the anchor stays first: it sorts first
            out.append(([info[i] for i in members], scores))
    report.rejected_by_pixels = rejected
    return out


# ---------------------------------------------------------------------- acting
TRASH_KIND = "trash"  # the journal kind of "move duplicates to the Trash" (undo: :func:`undo_trash`)


@dataclass(frozen=True)
class TrashResult:
    kept: str
    trashed: list[str]
    failed: list[tuple[str, str]]  # (path, reason) of files left in place
    labels_moved: int  # label memberships given to the kept photo
    operation: str | None = None  # the journaled operation (``clipdesk duplicates --undo``)
    undoable: bool = True  # False where the Trash location of a moved file is not known

    def as_dict(self) -> dict:
        return {"kept": self.kept, "trashed": self.trashed,
                "failed": [{"path": p, "reason": r} for p, r in self.failed], "labels_moved": self.labels_moved,
                "operation": self.operation, "undoable": self.undoable}


def trash_others(library, group: DuplicateGroup, keep: str | None = None,
                 trash: Callable[[str], None] | None = None) -> TrashResult:
    """Move every photo of ``group`` but ``keep`` (default: the suggested one) to the Trash
    (one journaled operation: see :func:`trash_groups`)."""
    return trash_groups(library, [(group, keep)], trash)[0]


def trash_groups(library, choices: Sequence[tuple[DuplicateGroup, str | None]],
                 trash: Callable[[str], None] | None = None, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None) -> list[TrashResult]:
    """For each ``(group, keep)``, move every photo of the group but ``keep`` (None: the suggested
    one) to the desktop's Trash (``send2trash``; never a permanent delete). One result per group.

    One journaled operation for all of them (kind ``trash``), planned before anything moves, so
    one undo (:func:`undo_trash`) brings every file back. Each file's labels go to the kept photo
    before any file moves (so no label is lost if a move fails) and come back on undo; the catalog
    forgets only the files that did reach the Trash. A file that changed since the duplicate
    search (another size) is left alone: it may no longer be a copy. A keeper that is gone stops
    everything before anything moves.
    """
    from clipdesk.journal import Journal, TrashError

    if trash is None:
        from send2trash import send2trash as trash
    catalog = library.catalog
    with library.writing():
        plans = []
        for group, keep in choices:
            keep = os.path.abspath(keep) if keep else group.suggested_keep
            if keep not in {p.path for p in group.photos}:
                raise ClipdeskError(f"{keep} is not in this duplicate group.")
            keep_id = catalog.id_for_path(keep)
            if keep_id is None or not os.path.isfile(keep):
                raise ClipdeskError(f"The photo to keep, {keep}, is no longer in the library or on disk; "
                                    "nothing was moved. Search for duplicates again.")
            others: list[tuple[int, str]] = []
            failed: list[tuple[str, str]] = []
            for p in group.photos:
                if p.path == keep:
                    continue
                i = catalog.id_for_path(p.path)
                try:
                    size = os.stat(p.path).st_size
                except OSError as e:
                    failed.append((p.path, f"cannot be read ({e.strerror or e})"))
                    continue
                if i is None or i != p.id:
                    failed.append((p.path, "is no longer this photo in the library"))
                elif size != p.size:
                    failed.append((p.path, "changed since the duplicate search"))
                else:
                    others.append((i, p.path))
            plans.append((keep, keep_id, others, failed))
        labels = catalog.labels()
        members = {name: set(ids) for name, ids in labels.items()}
        steps, added_by_group = [], []
        for g, (keep, keep_id, others, _failed) in enumerate(plans):
            added = sorted(n for n, m in members.items() if keep_id not in m and any(i in m for i, _ in others))
            added_by_group.append(added)
            steps += [{"action": "trash", "path": path, "source": path,
                       "info": {"group": g, "kept": keep, "labels": sorted(n for n, m in members.items() if i in m),
                                "labels_added": added}} for i, path in others]
        trashed: dict[int, list[str]] = {g: [] for g in range(len(plans))}
        unknown: set[int] = set()
        operation = None
        done_ids: list[int] = []
        if steps:
            id_of = {path: i for _k, _ki, others, _f in plans for i, path in others}
            n_photos = len(steps)
            with Journal(library.folder).start(
                    TRASH_KIND, f"move {n_photos} duplicate{'s' if n_photos != 1 else ''} to the Trash",
                    steps) as op:
                operation = op.id
                for (_keep, keep_id, _o, _f), added in zip(plans, added_by_group):
                    for name in added:
                        catalog.add_to_label(name, [keep_id])
                try:
                    for n, step in enumerate(op.steps):
                        if cancel is not None:
                            cancel.check()  # what moved so far is journaled: undo brings it back
                        g = step.info["group"]
                        try:
                            where = op.trash_file(step, trash)
                        except TrashError as e:
                            plans[g][3].append((step.source, str(e)))
                            continue
                        if where is None:
                            unknown.add(g)
                        trashed[g].append(step.source)
                        done_ids.append(id_of[step.source])
                        if progress is not None:
                            progress(Progress("trash", n + 1, len(op.steps), path=step.source))
                    op.finish()
                finally:
                    if done_ids:
                        catalog.delete_images(done_ids)
                        library.vectors  # noqa: B018 - catch the index up with the deletion
                        library._save_store()  # noqa: SLF001 - the writer persists its index, as index() does
    return [TrashResult(keep, trashed[g], failed, len(added_by_group[g]), operation if trashed[g] else None,
                        g not in unknown)
            for g, (keep, _ki, _o, failed) in enumerate(plans)]


def undo_trash(library, operation: str | None = None, progress: ProgressFn | None = None,
               cancel: CancelToken | None = None):
    """Bring back the photos of the newest (or the given) ``trash`` operation from the Trash.

    Each file goes back to its original path if that name is free (never overwrites; a file that
    is no longer in the Trash, or whose Trash location is unknown on this platform, is reported
    as a conflict). The restored photos are indexed again, get their labels back, and the labels
    their keeper received only for them are taken away again. Returns the journal's UndoReport.
    """
    from clipdesk.journal import Journal

    with library.writing():
        op = Journal(library.folder).latest(TRASH_KIND, operation)
        with op:
            op.recover()  # a kill mid-step: settle it, so it is undone like the rest
            report = op.undo()
        left = {c.path for c in report.conflicts}
        moved = [s for s in op.steps if s.state != "planned" and not s.applied.get("noop")]
        restored = [s for s in moved if s.source not in left and os.path.isfile(s.source)]
        if not restored:
            return report
        library.refresh([s.source for s in restored], progress=progress, cancel=cancel)
        catalog = library.catalog
        for s in restored:
            i = catalog.id_for_path(s.source)
            for name in s.info.get("labels", []) if i is not None else []:
                if isinstance(name, str):
                    catalog.add_to_label(name, [i])
        # A label the keeper got only because of these photos goes away again, unless a photo it
        # came from is still in the Trash (then the keeper carries it on).
        labels = catalog.labels()
        for kept, name in {(s.info.get("kept"), n) for s in moved for n in s.info.get("labels_added", [])}:
            still_out = any(s not in restored and s.info.get("kept") == kept and name in s.info.get("labels", [])
                            for s in moved)
            kept_id = catalog.id_for_path(kept) if isinstance(kept, str) else None
            if not still_out and kept_id is not None and name in labels:
                catalog.remove_from_label(name, [kept_id])
        return report


# ---------------------------------------------------------------------- evaluation
# True duplicates of each photo, and near-misses that are *not* duplicates of it (another photo of
# the same class is the third kind of near-miss: the set holds every photo of a class).
TRUE_VARIANTS = ("quality", "resized", "crop5", "format", "exposure", "exif_stripped")
NEAR_MISSES = ("mirrored", "heavy_crop")


@dataclass(frozen=True)
class EvalItem:
    path: str
    source: int  # index of the photo it was made from
    variant: str  # "original", one of TRUE_VARIANTS or one of NEAR_MISSES
    cls: str  # the source's class folder

    @property
    def duplicate_kind(self) -> bool:
        return self.variant == "original" or self.variant in TRUE_VARIANTS


def build_eval_set(source: str, out: str, limit: int | None = None, seed: int = 0,
                   cancel: CancelToken | None = None) -> list[EvalItem]:
    """Write the duplicate evaluation set for the photos under ``source`` into ``out``.

    Each photo becomes an "original" (JPEG, quality 95, with an EXIF capture date, as a camera
    writes it) plus its true duplicates: JPEG at quality 60, resized to half, 5 % cropped, PNG,
    exposure +15 %, and the same pixels with the EXIF stripped; and its near-misses: mirrored,
    and heavily cropped (the central 55 % of each side).
    """
    from PIL import Image, ImageEnhance, ImageOps

    from clipdesk.indexer.decode import supported_extensions

    exts = supported_extensions()
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(source) for f in fs
                   if os.path.splitext(f)[1].lower() in exts)
    if not files:
        raise ClipdeskError(f"No photos under {source}.")
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(files):
        files = sorted(rng.choice(files, limit, replace=False).tolist())
    os.makedirs(out, exist_ok=True)
    items: list[EvalItem] = []
    for k, path in enumerate(files):
        if cancel is not None:
            cancel.check()
        cls = os.path.basename(os.path.dirname(path))
        try:
            with Image.open(path) as im:
                im = ImageOps.exif_transpose(im).convert("RGB")
        except Exception:  # noqa: BLE001 - a broken source photo is left out of the set
            continue
        if min(im.size) < 32:
            continue
        w, h = im.size
        base = os.path.join(out, f"{k:04d}")
        exif = Image.Exif()
        exif[0x0132] = "2020:01:02 03:04:05"  # DateTime
        exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"  # DateTimeOriginal
        cx, cy = int(round(w * 0.05)), int(round(h * 0.05))
        ox, oy = int(rng.integers(0, cx + 1)), int(rng.integers(0, cy + 1))
        hw, hh = int(w * 0.55), int(h * 0.55)
        variants = {
            "original": lambda p: im.save(p, "JPEG", quality=95, exif=exif),
            "quality": lambda p: im.save(p, "JPEG", quality=60),
            "resized": lambda p: im.resize((max(16, w // 2), max(16, h // 2)), Image.Resampling.LANCZOS)
            .save(p, "JPEG", quality=90),
            "crop5": lambda p: im.crop((ox, oy, w - (cx - ox), h - (cy - oy))).save(p, "JPEG", quality=90),
            "format": lambda p: im.save(p, "PNG"),
            "exposure": lambda p: ImageEnhance.Brightness(im).enhance(1.15).save(p, "JPEG", quality=90),
            "exif_stripped": lambda p: im.save(p, "JPEG", quality=95),
            "mirrored": lambda p: ImageOps.mirror(im).save(p, "JPEG", quality=90),
            "heavy_crop": lambda p: im.crop(((w - hw) // 2, (h - hh) // 2, (w + hw) // 2, (h + hh) // 2))
            .save(p, "JPEG", quality=90),
        }
        for name, save in variants.items():
            p = f"{base}-{name}.{'png' if name == 'format' else 'jpg'}"
            save(p)
            items.append(EvalItem(p, k, name, cls))
    return items


def _popcount64(x: np.ndarray) -> np.ndarray:
    table = np.array([bin(i).count("1") for i in range(256)], np.uint8)
    return table[x.view(np.uint8).reshape(*x.shape, 8)].sum(-1, dtype=np.int32)


def _pr(decided: np.ndarray, truth: np.ndarray) -> dict:
    tp = int(np.count_nonzero(decided & truth))
    fp = int(np.count_nonzero(decided & ~truth))
    positives = int(np.count_nonzero(truth))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / positives if positives else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "true_pairs": tp, "false_pairs": fp}


def evaluate_duplicates(library, items: Sequence[EvalItem],
                        thresholds: Sequence[float] = tuple(np.round(np.arange(0.80, 0.995, 0.01), 2)),
                        hash_distances: Sequence[int] = (4, 6, 8, 10, 12, 14, 16, 20),
                        colour_distances: Sequence[float] = (0.04, 0.06, 0.08, 0.12, 0.2, 1.0),
                        cancel: CancelToken | None = None) -> dict:
    """Precision and recall of duplicate detection on an indexed evaluation set, per pair of photos.

    Reports: the pixel check alone (per hash distance; independent of the model), the embedding
    alone and embedding + pixel check (per threshold), the threshold with the best F1, and the
    real ``find_duplicates`` at that threshold (its groups turned into pairs), with recall per
    kind of true duplicate and false pairs per kind of near-miss.
    """
    catalog = library.catalog
    ids = [catalog.id_for_path(it.path) for it in items]
    kept = [(it, i) for it, i in zip(items, ids) if i is not None]
    if len(kept) < 2:
        raise ClipdeskError("The evaluation set could not be indexed.")
    items = [it for it, _ in kept]
    ids = [i for _, i in kept]
    n = len(items)
    vecs = catalog.vectors_for(ids)
    sims = vecs @ vecs.T
    checks = []
    for it in items:
        if cancel is not None:
            cancel.check()
        checks.append(pixel_check(it.path))
    hashes = np.array([c.phash for c in checks], np.uint64)
    centers = np.array([c.phash_center for c in checks], np.uint64)
    colours = np.array([c.colours for c in checks], np.float32)
    aspect = np.array([c.aspect for c in checks])
    upper = np.triu(np.ones((n, n), bool), 1)
    d = np.minimum(_popcount64(hashes[:, None] ^ hashes[None, :]),
                   _popcount64(centers[:, None] ^ centers[None, :]))[upper]
    c = np.concatenate([np.abs(colours[k:k + 64, None] - colours[None]).mean(-1)[upper[k:k + 64]]
                        for k in range(0, n, 64)])
    r = (np.maximum(aspect[:, None], aspect[None, :]) / np.minimum(aspect[:, None], aspect[None, :]))[upper]
    s = sims[upper]
    src = np.array([it.source for it in items])
    dup = np.array([it.duplicate_kind for it in items])
    truth = ((src[:, None] == src[None, :]) & dup[:, None] & dup[None, :])[upper]
    aspect_ok = r - 1.0 <= MAX_ASPECT_CHANGE
    pixel = {f"bits<={h}": _pr(aspect_ok & (d <= h) & (c <= MAX_COLOUR_DISTANCE), truth) for h in hash_distances}
    pixel |= {f"bits<={MAX_HASH_DISTANCE}, colour<={x}": _pr(aspect_ok & (d <= MAX_HASH_DISTANCE) & (c <= x), truth)
              for x in colour_distances}
    pixel_ok = aspect_ok & (d <= MAX_HASH_DISTANCE) & (c <= MAX_COLOUR_DISTANCE)
    embedding = {float(t): _pr(s >= t, truth) for t in thresholds}
    combined = {float(t): _pr((s >= t) & pixel_ok, truth) for t in thresholds}
    best = max(thresholds, key=lambda t: (combined[float(t)]["f1"], -t))

    # The real code path at the chosen threshold, judged per pair and per kind of variant.
    report = find_duplicates(library, float(best), cancel=cancel)
    index_of = {i: k for k, i in enumerate(ids)}
    found = np.zeros((n, n), bool)
    for g in report.groups:
        members = [index_of[p.id] for p in g.photos if p.id in index_of]
        for a in members:
            for b in members:
                found[a, b] = a != b
    found_pairs = found[upper]
    per_variant = {}
    orig = {it.source: k for k, it in enumerate(items) if it.variant == "original"}
    for v in TRUE_VARIANTS:
        ks = [k for k, it in enumerate(items) if it.variant == v and it.source in orig]
        per_variant[v] = round(float(np.mean([found[k, orig[items[k].source]] for k in ks])), 4) if ks else None
    false_by_kind = {"mirrored": 0, "heavy_crop": 0, "other photo of the same class": 0, "other class": 0}
    for a, b in zip(*np.nonzero(np.triu(found, 1))):
        ia, ib = items[a], items[b]
        if ia.source == ib.source and ia.duplicate_kind and ib.duplicate_kind:
            continue
        if ia.source == ib.source:
            false_by_kind["mirrored" if "mirrored" in (ia.variant, ib.variant) else "heavy_crop"] += 1
        else:
            false_by_kind["other photo of the same class" if ia.cls == ib.cls else "other class"] += 1
    return {
        "model": library.model_name, "photos": len({it.source for it in items}), "images": n,
        "pairs": int(upper.sum()), "duplicate_pairs": int(truth.sum()),
        "max_hash_distance": MAX_HASH_DISTANCE, "max_colour_distance": MAX_COLOUR_DISTANCE,
        "max_aspect_change": MAX_ASPECT_CHANGE,
        "pixel_check": pixel, "embedding": embedding, "embedding_and_pixels": combined,
        "chosen_threshold": float(best),
        "find_duplicates": {**_pr(found_pairs, truth), "groups": len(report.groups),
                            "recall_by_variant": per_variant, "false_pairs_by_kind": false_by_kind},
    }
