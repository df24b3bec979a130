"""The FAISS vector store: a derived, rebuildable cache of the catalog's embeddings.

Vectors are L2-normalised, so inner product is cosine similarity. The index type follows the
library's size: exact search (``IndexIDMap2`` over ``IndexFlatIP``) up to ``EXACT_LIMIT`` vectors,
where one query costs a few milliseconds; above it an inverted-file index with 8-bit scalar
quantisation (``IndexIVFScalarQuantizer``), a quarter of the memory, whose ``nprobe`` is chosen at
build time as the smallest that reaches ``TARGET_RECALL`` recall@10 against exact search; above
``COMPRESS_LIMIT`` an inverted file of product-quantised codes (``IndexIVFPQ``, 4 dimensions per
byte: 136 bytes per photo with its id, so 10M photos take 1.4 GB), whose shortlist the caller
re-ranks with the exact vectors (the memory-mapped vector file). Where the installed FAISS sees a
GPU (faiss-gpu), approximate indexes are trained, filled and searched on it (:func:`gpu_count`).

The file on disk holds a small JSON header (catalog generation, model, count), the serialised
index and a digest of both, in one file written atomically, so a header can never describe another
index. The file is a cache and untrusted input: it is checked field by field before FAISS reads it
(see :meth:`VectorStore.load`), and anything wrong with it means "rebuild from the catalog".
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .files import atomic_write, open_derived

if TYPE_CHECKING:
    from .catalog import Catalog

EXACT_LIMIT = 50_000
COMPRESS_LIMIT = 2_000_000  # IVF-SQ8 takes 520 bytes per photo (1 GB at 2M); IVF-PQ 136
TARGET_RECALL = 0.95
# Recall@10 a product-quantised index is tuned to (issue 15's 0.9 plus a margin). Each doubling of
# nprobe doubles a query's time; at 5M, reaching 0.98 took 512 of 1,118 lists (p50 0.5 s).
PQ_TARGET_RECALL = 0.93
# 4 dimensions per one-byte code: 136 bytes per photo with its id at 512-d (1.4 GB at 10M). With 8
# (72 bytes) the codes blurred tight clusters of photos so much that a 5M library's exact top-10
# fell out of any affordable shortlist (recall@10 0.6 for photo-like queries at full probing).
PQ_DIMS_PER_BYTE = 4
GPU_MIN = 100_000  # vectors from which a GPU, where there is one, trains and searches the index
_MAGIC = b"CLIPDESK-VECTORS-2\n"  # 2: a digest follows the index


class VectorFileError(Exception):
    """``vectors.faiss`` is missing, truncated or not ours; the caller rebuilds it."""


@dataclass(frozen=True)
class VectorHeader:
    generation: int
    model: str
    dim: int
    count: int
    kind: str
    nprobe: int = 0


class VectorStore:
    """An id → vector index answering top-k inner-product queries, optionally within an id subset."""

    def __init__(self, dim: int, index: faiss.Index | None = None, nprobe: int = 0, generation: int = 0):
        self.dim = dim
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.nprobe = nprobe
        # The catalog generation this index reflects. Writers update it together with the
        # catalog under ``lock``; readers catch up (see ``catch_up``) under the same lock.
        self.generation = generation
        self.lock = threading.RLock()
        self._gpu = None  # a GPU copy of a large approximate index, made on first search
        self._apply_nprobe()

    @property
    def kind(self) -> str:
        if isinstance(self.index, faiss.IndexIVFPQ):
            return "ivf-pq"
        return "ivf-sq8" if self.is_approximate else "exact"

    def shortlist(self, want: int) -> int:
        """How many candidates to fetch for ``want`` results that the caller re-ranks exactly:
        product-quantised scores blur far more than 8-bit ones."""
        return max(50 * want, 2000) if self.kind == "ivf-pq" else max(4 * want, 100)

    @property
    def is_approximate(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _apply_nprobe(self) -> None:
        if self.is_approximate and self.nprobe:
            self.index.nprobe = self.nprobe

    # ------------------------------------------------------------------ updates
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add ``vectors`` (n, dim) float32 under ``ids`` (n,) int64."""
        if len(ids):
            with self.lock:
                self._gpu = None
                self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                        np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and len(self):
            with self.lock:
                self._gpu = None
                self.index.remove_ids(faiss.IDSelectorBatch(ids))

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, subset: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query (n, dim): ``(scores (n, k), ids (n, k))``, best first.

        Missing slots (fewer than k vectors) have id -1. ``subset`` restricts results to those ids.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self) if subset is None else min(len(self), len(subset))))
        if len(self) == 0 or (subset is not None and len(subset) == 0):
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        with self.lock:
            sel = None if subset is None else faiss.IDSelectorBatch(np.ascontiguousarray(subset, dtype=np.int64))
            if not self.is_approximate:
                params = None if sel is None else faiss.SearchParameters(sel=sel)
                return self.index.search(queries, k, params=params)
            # A query far from the library's photos may land in sparse lists: probe more lists
            # until k results are found, rather than return fewer than asked for.
            nprobe = max(1, self.index.nprobe)
            # GPU indexes take no id selector, and return at most 2,048 results per query.
            gpu = self._gpu_index() if sel is None and k <= 2048 else None
            while True:
                if gpu is not None:
                    gpu.nprobe = nprobe
                    scores, ids = gpu.search(queries, k)
                else:
                    params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None \
                        else faiss.SearchParametersIVF(nprobe=nprobe)
                    scores, ids = self.index.search(queries, k, params=params)
                if (ids >= 0).all() or nprobe >= self.index.nlist:
                    return scores, ids
                nprobe = min(self.index.nlist, nprobe * 4)

    def _gpu_index(self):
        """The GPU copy of a large approximate index (None on faiss-cpu, or when it is small)."""
        if self._gpu is None and len(self) >= GPU_MIN and gpu_count() > 0:
            self._gpu = _to_gpu(self.index)
        return self._gpu

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], total: int,
              exact_limit: int | None = None, compress_limit: int | None = None) -> VectorStore:
        """Build the index type that suits ``total`` vectors from ``(ids, vectors)`` chunks
        (thresholds: ``EXACT_LIMIT`` and ``COMPRESS_LIMIT`` unless given)."""
        exact_limit = EXACT_LIMIT if exact_limit is None else exact_limit
        compress_limit = COMPRESS_LIMIT if compress_limit is None else compress_limit
        if total <= exact_limit:
            store = cls(dim)
            for ids, vecs in chunks:
                store.add(ids, vecs)
            return store
        return cls._build_ivf(dim, chunks, total, pq=total > compress_limit)

    @classmethod
    def _build_ivf(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], total: int,
                   pq: bool = False) -> VectorStore:
        quantizer = faiss.IndexFlatIP(dim)
        if pq:
            # Fewer, larger lists than for SQ8 (sqrt(n)/2: 1,118 at 5M): training and assigning
            # cost nlist products per vector (minutes on 2 cores at 5M), a list scanned costs one
            # table lookup per byte of code, and the shortlist is re-ranked exactly anyway.
            nlist = int(np.clip(np.sqrt(total) / 2, 16, 4096))
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, _pq_bytes(dim), 8, faiss.METRIC_INNER_PRODUCT)
            sample_size = min(total, max(40 * nlist, 39 * 256 + 16))  # PQ's 256 centroids need ~10k points
        else:
            nlist = int(np.clip(4 * np.sqrt(total), 256, 16384))
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            sample_size = min(total, 40 * nlist)
        # Train on the first chunks, which are spread over the library's whole id range.
        it = iter(chunks)
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        have = 0
        for ids, vecs in it:
            pending.append((ids, vecs))
            have += len(ids)
            if have >= sample_size:
                break
        sample = np.concatenate([v for _, v in pending])[:sample_size]
        rng = np.random.default_rng(0)
        # Tuning queries: half are library vectors moved well away from themselves (real queries,
        # texts or other photos, rarely sit on an indexed photo), half are random directions, the
        # hardest case for an inverted file (a text query lies far from every photo).
        near = sample[rng.choice(len(sample), size=min(100, len(sample)), replace=False)]
        near = near + rng.standard_normal(near.shape).astype(np.float32) / np.sqrt(dim)
        queries = np.vstack([near, rng.standard_normal((100, dim)).astype(np.float32)])
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        on_gpu = total >= GPU_MIN and gpu_count() > 0
        work = _to_gpu(index) if on_gpu else index
        work.train(sample)
        del sample
        truth = _TopK(queries, 10) if pq else None  # exact answers, gathered while filling
        for ids, vecs in itertools.chain(pending, it):
            if len(ids):
                work.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32),
                                  np.ascontiguousarray(ids, dtype=np.int64))
                if truth is not None:
                    truth.update(ids, vecs)
        del pending
        if on_gpu:
            index = faiss.index_gpu_to_cpu(work)
        store = cls(dim, index)
        store._gpu = work if on_gpu else None
        store.nprobe = store._tune_nprobe(queries) if truth is None else store._tune_shortlist(queries, truth.ids)
        store._apply_nprobe()
        return store

    def _tune_shortlist(self, queries: np.ndarray, truth: np.ndarray, k: int = 10) -> int:
        """Smallest nprobe (doubling) whose shortlist holds the exact top-``k`` (``truth``, found
        while the index was filled) at ``PQ_TARGET_RECALL``, that is recall@k once the
        caller re-ranks the shortlist with the exact vectors."""
        nlist = self.index.nlist
        nprobe = 1
        while nprobe < nlist:
            self.nprobe = nprobe
            self._apply_nprobe()
            _, found = self.search(queries, self.shortlist(k))
            recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth.tolist(), found.tolist())])
            if recall >= PQ_TARGET_RECALL:
                break
            nprobe *= 2
        return min(nprobe, nlist)

    def _tune_nprobe(self, queries: np.ndarray, k: int = 10) -> int:
        """Smallest nprobe (doubling) whose recall@k reaches the target.

        The reference is the same index with every list probed: the 8-bit quantisation error is
        small next to the probing error that nprobe controls. (The benchmark measures recall
        against a true exact index.)
        """
        index = self.index
        index.nprobe = index.nlist
        _, truth = index.search(queries, k)
        nprobe = 1
        while nprobe < index.nlist:
            index.nprobe = nprobe
            _, found = index.search(queries, k)
            recall = np.mean([len(set(t) & set(f)) / k for t, f in zip(truth, found)])
            if recall >= TARGET_RECALL + 0.03:  # margin: real queries differ from the tuning ones
                break
            nprobe *= 2
        return min(nprobe, index.nlist)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str, model: str) -> None:
        """Write atomically: a reader sees the old file or the new one, never a mix. The index is
        streamed to the file (no second in-memory copy of a large index), followed by a digest of
        header and index that :meth:`load` checks."""
        def write(f) -> None:
            with self.lock:
                header = VectorHeader(self.generation, model, self.dim, len(self), self.kind, self.nprobe)
                head = json.dumps(header.__dict__).encode()
                digest = hashlib.blake2b(head, digest_size=_DIGEST_SIZE)
                f.write(_MAGIC)
                f.write(struct.pack("<I", len(head)))
                f.write(head)

                def emit(chunk) -> None:
                    digest.update(chunk)
                    f.write(chunk)

                faiss.write_index(self.index, faiss.PyCallbackIOWriter(emit))
                f.write(digest.digest())

        # An exact index takes its vectors (float32) and ids; a compressed one less. (FAISS hands
        # an exception raised in the writer callback, ENOSPC included, back unchanged.)
        atomic_write(path, write, size=len(self) * (self.dim * 4 + 8) if self.kind == "exact" else None)

    @classmethod
    def load(cls, path: str, max_count: int | None = None) -> tuple[VectorStore, VectorHeader]:
        """Read ``vectors.faiss``; raises :class:`VectorFileError` for anything but an intact file of ours.

        The file is untrusted: it is opened without following a symbolic link, and every size and
        count in it is checked against the file's real size (and the header's count against
        ``max_count``, the most vectors the catalog can account for) before FAISS allocates
        anything, so a damaged or hostile file costs a rebuild, never memory or time.
        """
        fd = open_derived(path, VectorFileError)
        try:
            with os.fdopen(fd, "rb") as f:
                size = os.fstat(fd).st_size
                header, head, start, end = _read_header(f, size, max_count)
                _check_payload(f, start, end, header)
                f.seek(start)
                digest = hashlib.blake2b(head, digest_size=_DIGEST_SIZE)
                left = [end - start]

                def read(n: int) -> bytes:
                    chunk = f.read(min(n, left[0]))
                    left[0] -= len(chunk)
                    digest.update(chunk)
                    return chunk

                index = faiss.read_index(faiss.PyCallbackIOReader(read))
                if left[0] != 0 or f.read(_DIGEST_SIZE) != digest.digest():
                    raise ValueError("checksum mismatch")
            if index.d != header.dim or index.ntotal != header.count:
                raise ValueError("index does not match its header")
        except VectorFileError:
            raise
        except Exception as e:  # noqa: BLE001 - any damage means "rebuild"
            raise VectorFileError(f"{path} is damaged ({e})") from None
        return cls(header.dim, index, header.nprobe, header.generation), header


# Sane limits on what a vector file may declare (checked before anything is allocated).
_MAX_HEADER = 64 * 1024
_MAX_DIM = 1 << 16
_MAX_NLIST = 1 << 20
_DIGEST_SIZE = 32


def _read_header(f, size: int, max_count: int | None) -> tuple[VectorHeader, bytes, int, int]:
    """``(header, header bytes, payload start, payload end)`` of an open vector file of ``size`` bytes."""
    if f.read(len(_MAGIC)) != _MAGIC:
        raise ValueError("not a clipdesk vector file (or one of an older format)")
    raw = f.read(4)
    if len(raw) != 4:
        raise ValueError("truncated")
    (n,) = struct.unpack("<I", raw)
    start = len(_MAGIC) + 4 + n
    end = size - _DIGEST_SIZE
    if n > _MAX_HEADER or start > end:
        raise ValueError(f"header length {n} does not fit the file ({size} bytes)")
    head = f.read(n)
    fields = json.loads(head)
    if not isinstance(fields, dict) or set(fields) != set(VectorHeader.__dataclass_fields__):
        raise ValueError("unexpected header fields")
    header = VectorHeader(**fields)
    ints = (header.generation, header.dim, header.count, header.nprobe)
    if not all(type(v) is int and v >= 0 for v in ints) or not isinstance(header.model, str):
        raise ValueError("header values of the wrong type")
    if not 1 <= header.dim <= _MAX_DIM or header.kind not in ("exact", "ivf-sq8", "ivf-pq"):
        raise ValueError(f"unsupported index (dim {header.dim}, kind {header.kind!r})")
    if max_count is not None and header.count > max_count:
        raise ValueError(f"declares {header.count} vectors, more than the catalog's {max_count}")
    return header, head, start, end


class _Fields:
    """Reads the fixed-size fields of a FAISS stream between two offsets; skips data blocks."""

    def __init__(self, f, start: int, end: int):
        self.f, self.pos, self.end = f, start, end
        f.seek(start)

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.end:
            raise ValueError("truncated index")
        raw = self.f.read(n)
        if len(raw) != n:
            raise ValueError("truncated index")
        self.pos += n
        values = struct.unpack(fmt, raw)
        return values[0] if len(values) == 1 else values

    def expect(self, fmt: str, want, what: str) -> None:
        got = self.take(fmt)
        if got != want:
            raise ValueError(f"{what}: {got!r}, expected {want!r}")

    def skip(self, nbytes: int) -> None:
        if nbytes < 0 or self.pos + nbytes > self.end:
            raise ValueError("a block runs past the end of the file")
        self.pos += nbytes
        self.f.seek(self.pos)

    def vector(self, itemsize: int, want: int | None = None, what: str = "vector") -> int:
        n = self.take("<Q")
        if want is not None and n != want:
            raise ValueError(f"{what} holds {n} items, expected {want}")
        self.skip(n * itemsize)
        return n

    def index_header(self, fourcc: bytes, d: int, ntotal: int | None) -> int:
        self.expect("<4s", fourcc, "index type")
        got_d, got_n, _, _, _, metric = self.take("<iqqq?i")
        if got_d != d or (ntotal is not None and got_n != ntotal) or metric != faiss.METRIC_INNER_PRODUCT:
            raise ValueError(f"index header (d {got_d}, ntotal {got_n}, metric {metric}) does not match")
        return got_n


def _check_payload(f, start: int, end: int, h: VectorHeader) -> None:
    """Walk the serialised index and check every count against the header and the file's size.

    Only the layouts :class:`VectorStore` writes are accepted: ``IndexIDMap2`` over
    ``IndexFlatIP``, ``IndexIVFScalarQuantizer`` (8-bit) and ``IndexIVFPQ`` (8-bit codes), both
    with a flat quantizer and array lists.
    """
    r = _Fields(f, start, end)
    d = h.dim
    if h.kind == "exact":
        r.index_header(b"IxM2", d, h.count)
        r.index_header(b"IxFI", d, h.count)
        r.vector(4, h.count * d, "vectors")
        r.vector(8, h.count, "ids")
    else:
        r.index_header(b"IwPQ" if h.kind == "ivf-pq" else b"IwSq", d, h.count)
        nlist, _nprobe = r.take("<QQ")
        if not 1 <= nlist <= _MAX_NLIST or h.nprobe > nlist:
            raise ValueError(f"implausible list count {nlist}")
        r.index_header(b"IxFI", d, nlist)
        r.vector(4, nlist * d, "centroids")
        r.expect("<B", 0, "direct map")
        r.vector(8, 0, "direct map")
        if h.kind == "ivf-pq":
            r.take("<?")  # by residual
            code = r.take("<Q")
            pq_d, m, nbits = r.take("<QQQ")
            if pq_d != d or m != code or not 1 <= m <= d or d % m or nbits != 8:
                raise ValueError(f"product quantizer (d {pq_d}, M {m}, {nbits} bits, code {code}) does not fit")
            r.vector(4, d * 256, "product quantizer centroids")
        else:
            r.take("<iif")  # quantizer type, range statistic and its argument
            r.expect("<QQ", (d, d), "scalar quantizer size")
            trained = r.take("<Q")
            if trained > 2 * d:
                raise ValueError("implausible quantizer training data")
            r.skip(4 * trained)
            code = d
            r.expect("<Q", d, "code size")
            r.take("<?")
        r.expect("<4s", b"ilar", "inverted lists type")
        r.expect("<QQ", (nlist, code), "inverted lists shape")
        layout = r.take("<4s")
        n = r.take("<Q")
        if layout == b"full" and n == nlist:
            sizes = list(struct.unpack(f"<{n}Q", _read_exact(r, 8 * n)))
        elif layout == b"sprs" and n % 2 == 0 and n <= 2 * nlist:
            pairs = struct.unpack(f"<{n}Q", _read_exact(r, 8 * n))
            sizes = list(pairs[1::2])
            if any(i >= nlist for i in pairs[0::2]):
                raise ValueError("list number out of range")
        else:
            raise ValueError("unknown inverted list layout")
        if sum(sizes) != h.count:
            raise ValueError("inverted lists do not hold the declared count")
        r.skip(h.count * (code + 8))
    if r.pos != end:
        raise ValueError(f"{end - r.pos} unexpected bytes after the index")


def _read_exact(r: _Fields, n: int) -> bytes:
    if r.pos + n > r.end:
        raise ValueError("truncated index")
    raw = r.f.read(n)
    if len(raw) != n:
        raise ValueError("truncated index")
    r.pos += n
    return raw


def gpu_count() -> int:
    """GPUs the installed FAISS can use (0 with faiss-cpu, which has no GPU functions)."""
    if not hasattr(faiss, "index_cpu_to_gpu"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA set-up means "no GPU", not a crash
        return 0


_GPU_RESOURCES: list = []


def _to_gpu(index: faiss.Index):
    """A copy of ``index`` on GPU 0 (product-quantised lists with float16 lookup tables, which
    large code sizes need)."""
    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    options = faiss.GpuClonerOptions()
    options.useFloat16 = True
    return faiss.index_cpu_to_gpu(_GPU_RESOURCES[0], 0, index, options)


def _pq_bytes(dim: int) -> int:
    """Sub-quantizers (one byte each): one per ``PQ_DIMS_PER_BYTE`` dimensions (fewer where that
    does not divide ``dim``)."""
    for m in range(max(1, dim // PQ_DIMS_PER_BYTE), 0, -1):
        if dim % m == 0:
            return m
    return 1


class _TopK:
    """The exact top-``k`` ids of some queries over vectors seen a chunk at a time."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.ids = np.zeros((len(queries), 0), np.int64)

    def update(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        s = np.hstack([self.scores, self.queries @ np.asarray(vecs, np.float32).T])
        i = np.hstack([self.ids, np.broadcast_to(np.asarray(ids, np.int64), (len(self.queries), len(ids)))])
        keep = min(self.k, s.shape[1])
        top = np.argpartition(-s, keep - 1, axis=1)[:, :keep]
        self.scores = np.take_along_axis(s, top, 1)
        self.ids = np.take_along_axis(i, top, 1)


def catch_up(store: VectorStore, catalog: Catalog) -> int:
    """Apply the catalog's changes since ``store.generation`` to ``store``; returns rows changed.

    Idempotent (ids are removed before they are added), so a concurrent writer committing in
    between only means the next call replays a little.
    """
    with store.lock:
        gen = catalog.generation
        if gen == store.generation:
            return 0
        deleted = catalog.deleted_since(store.generation)
        changed = list(catalog.iter_vectors(since_generation=store.generation))
        gone = np.concatenate([deleted] + [ids for ids, _ in changed])
        store.remove(np.unique(gone))
        for ids, vecs in changed:
            store.add(ids, vecs)
        store.generation = gen
        return len(gone)
