"""The FAISS vector store: a derived, rebuildable cache of the catalog's embeddings.

Vectors are L2-normalised, so inner product is cosine similarity. The index type follows the
library's size: exact search (``IndexIDMap2`` over ``IndexFlatIP``) up to ``EXACT_LIMIT`` vectors,
where one query costs a few milliseconds; above it an inverted-file index with 8-bit scalar
quantisation (``IndexIVFScalarQuantizer``), a quarter of the memory, whose ``nprobe`` is chosen at
build time as the smallest that reaches ``TARGET_RECALL`` recall@10 against exact search.

The file on disk holds a small JSON header (catalog generation, model, count) and the serialised
index in one file, written atomically, so a header can never describe another index.
"""
from __future__ import annotations

import json
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .files import atomic_write

if TYPE_CHECKING:
    from .catalog import Catalog

EXACT_LIMIT = 50_000
TARGET_RECALL = 0.95
_MAGIC = b"CLIPDESK-VECTORS-1\n"


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
        self._apply_nprobe()

    @property
    def kind(self) -> str:
        return "ivf-sq8" if self.is_approximate else "exact"

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
                self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                        np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and len(self):
            with self.lock:
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
            while True:
                params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe) if sel is not None \
                    else faiss.SearchParametersIVF(nprobe=nprobe)
                scores, ids = self.index.search(queries, k, params=params)
                if (ids >= 0).all() or nprobe >= self.index.nlist:
                    return scores, ids
                nprobe = min(self.index.nlist, nprobe * 4)

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], total: int,
              exact_limit: int = EXACT_LIMIT) -> VectorStore:
        """Build the index type that suits ``total`` vectors from ``(ids, vectors)`` chunks."""
        if total <= exact_limit:
            store = cls(dim)
            for ids, vecs in chunks:
                store.add(ids, vecs)
            return store
        return cls._build_ivf(dim, chunks, total)

    @classmethod
    def _build_ivf(cls, dim: int, chunks: Iterable[tuple[np.ndarray, np.ndarray]], total: int) -> VectorStore:
        nlist = int(np.clip(4 * np.sqrt(total), 256, 16384))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        # Train on the first chunks, which are spread over the library's whole id range.
        it = iter(chunks)
        pending: list[tuple[np.ndarray, np.ndarray]] = []
        sample_size = min(total, 40 * nlist)
        have = 0
        for ids, vecs in it:
            pending.append((ids, vecs))
            have += len(ids)
            if have >= sample_size:
                break
        sample = np.concatenate([v for _, v in pending])[:sample_size]
        rng = np.random.default_rng(0)
        index.train(sample)
        store = cls(dim, index)
        for ids, vecs in pending:
            store.add(ids, vecs)
        for ids, vecs in it:
            store.add(ids, vecs)
        # Tuning queries: half are library vectors moved well away from themselves (real queries,
        # texts or other photos, rarely sit on an indexed photo), half are random directions, the
        # hardest case for an inverted file (a text query lies far from every photo).
        near = sample[rng.choice(len(sample), size=min(100, len(sample)), replace=False)]
        near = near + rng.standard_normal(near.shape).astype(np.float32) / np.sqrt(dim)
        queries = np.vstack([near, rng.standard_normal((100, dim)).astype(np.float32)])
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        store.nprobe = store._tune_nprobe(queries)
        store._apply_nprobe()
        return store

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
        streamed to the file (no second in-memory copy of a large index)."""
        def write(f) -> None:
            with self.lock:
                header = VectorHeader(self.generation, model, self.dim, len(self), self.kind, self.nprobe)
                head = json.dumps(header.__dict__).encode()
                f.write(_MAGIC)
                f.write(struct.pack("<I", len(head)))
                f.write(head)
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(f.write))

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str) -> tuple[VectorStore, VectorHeader]:
        try:
            f = open(path, "rb")
        except OSError as e:
            raise VectorFileError(f"cannot read {path}: {e}") from None
        try:
            with f:
                if f.read(len(_MAGIC)) != _MAGIC:
                    raise ValueError("not a clipdesk vector file")
                (n,) = struct.unpack("<I", f.read(4))
                header = VectorHeader(**json.loads(f.read(n)))
                index = faiss.read_index(faiss.PyCallbackIOReader(f.read))
            if index.d != header.dim or index.ntotal != header.count:
                raise ValueError("index does not match its header")
        except Exception as e:  # noqa: BLE001 - any damage means "rebuild"
            raise VectorFileError(f"{path} is damaged ({e})") from None
        return cls(header.dim, index, header.nprobe, header.generation), header


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
