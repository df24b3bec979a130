"""Whole-library answers (``Library.classify``, ``Library.predict``) held as columns.

A million photos' categories as a million Python objects cost more than computing them (1.6 s of
a 7 s predict at 1M, measured); as four arrays they cost nothing until someone looks. Views count
and filter with the arrays and build :class:`Classification` rows only for what they show;
iterating or indexing gives rows as before, made on demand.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Classification:
    path: str
    label: str | None
    probability: float
    id: int

    def as_dict(self) -> dict:
        return {"path": self.path, "label": self.label, "probability": round(self.probability, 6)}


class Classifications(Sequence[Classification]):
    """Every photo's category: ``ids`` (n,) int64 in catalog order, ``paths`` (n,), ``label_index``
    (n,) int32 into ``names`` (-1: no category, i.e. None), ``probability`` (n,) float32."""

    def __init__(self, names: Sequence[str | None], ids: np.ndarray, paths: list[str],
                 label_index: np.ndarray, probability: np.ndarray):
        self.names = tuple(names)
        self.ids = np.asarray(ids, np.int64)
        self.paths = paths
        self.label_index = np.asarray(label_index, np.int32)
        self.probability = np.asarray(probability, np.float32)
        self._order: tuple | None = None  # labels_of's search order, made on its first call
        n = len(self.ids)
        if not (len(paths) == len(self.label_index) == len(self.probability) == n):
            raise ValueError("columns of different lengths")
        if n and not (-1 <= int(self.label_index.min()) and int(self.label_index.max()) < len(self.names)):
            raise ValueError("label index out of range")

    @classmethod
    def concatenate(cls, names: Sequence[str | None], parts: Sequence[tuple]) -> Classifications:
        """From ``(ids, paths, label_index, probability)`` chunks, in order."""
        if not parts:
            return cls(names, np.zeros(0, np.int64), [], np.zeros(0, np.int32), np.zeros(0, np.float32))
        paths: list[str] = []
        for p in parts:
            paths += p[1]
        return cls(names, np.concatenate([p[0] for p in parts]), paths,
                   np.concatenate([p[2] for p in parts]), np.concatenate([p[3] for p in parts]))

    # ------------------------------------------------------------------ rows on demand
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        i = range(len(self))[i]  # IndexError and negative indices as for a list
        k = int(self.label_index[i])
        return Classification(self.paths[i], self.names[k] if k >= 0 else None, float(self.probability[i]),
                              int(self.ids[i]))

    def __iter__(self) -> Iterator[Classification]:
        names = self.names + (None,)  # index -1 reads the last: None
        for path, k, p, i in zip(self.paths, self.label_index.tolist(), self.probability.tolist(), self.ids.tolist()):
            yield Classification(path, names[k], p, i)

    def labels_of(self, ids: Sequence[int]) -> list[str | None]:
        """The category of each catalog id in ``ids`` (None: no category, or not among these rows);
        a binary search in the id column (sorted once, on the first call, if it is not)."""
        if self._order is None:
            order = None if len(self.ids) < 2 or bool((np.diff(self.ids) > 0).all()) \
                else np.argsort(self.ids, kind="stable")
            self._order = (order, self.ids if order is None else self.ids[order])
        order, sorted_ids = self._order
        want = np.asarray(ids, np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, want), max(len(sorted_ids) - 1, 0))
        out: list[str | None] = []
        for w, a in zip(want.tolist(), at.tolist()):
            if not len(sorted_ids) or int(sorted_ids[a]) != w:
                out.append(None)
                continue
            k = int(self.label_index[a if order is None else order[a]])
            out.append(self.names[k] if k >= 0 else None)
        return out

    def take(self, rows: np.ndarray | Sequence[int]) -> Classifications:
        """The rows at positions ``rows``, in that order (a selection, sorted or filtered)."""
        rows = np.asarray(rows, np.int64)
        return Classifications(self.names, self.ids[rows], [self.paths[r] for r in rows.tolist()],
                               self.label_index[rows], self.probability[rows])

    def as_rows(self, blank: Sequence[str] = ()) -> list[tuple[str, str, float]]:
        """``(path, label, probability)`` per photo, "" for no label or a label in ``blank``
        (what an export writes); built from the columns without a row object each."""
        names = [("" if n in blank else n) for n in self.names] + [""]  # index -1 reads the last
        labels = [names[k] for k in self.label_index.tolist()]
        return list(zip(self.paths, labels, self.probability.tolist()))

    # ------------------------------------------------------------------ columns
    def index_of(self, label: str | None) -> int:
        """The label index of ``label`` (-1 for None; ValueError for a name not among them)."""
        return -1 if label is None else self.names.index(label)

    def counts(self) -> dict[str | None, int]:
        """Photos per label (None: no category), labels with none left out."""
        n = np.bincount(self.label_index + 1, minlength=len(self.names) + 1)
        return {(self.names[k - 1] if k else None): int(c) for k, c in enumerate(n.tolist()) if c}

    def rows_with(self, labels: Sequence[str | None], min_probability: float | None = None,
                  max_probability: float | None = None) -> np.ndarray:
        """Positions of the photos whose label is one of ``labels`` (names not present match
        nothing), within the probability bounds, in catalog order."""
        want = [self.names.index(x) if x in self.names else (-1 if x is None else None) for x in labels]
        mask = np.isin(self.label_index, [w for w in want if w is not None])
        if min_probability is not None:
            mask &= self.probability >= np.float32(min_probability)
        if max_probability is not None:
            mask &= self.probability <= np.float32(max_probability)
        return np.flatnonzero(mask)

    def by_probability(self, rows: np.ndarray, descending: bool = False) -> np.ndarray:
        """``rows`` ordered by probability (ties in catalog order)."""
        p = self.probability[rows]
        return rows[np.argsort(-p if descending else p, kind="stable")]
