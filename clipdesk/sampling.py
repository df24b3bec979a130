"""A diverse sample of a library: photos that cover its variety, for labelling before any training.

Farthest-point sampling (the greedy k-centre algorithm, also k-means++'s deterministic cousin):
start from one seeded random photo, then repeatedly take the photo farthest (in cosine distance)
from everything taken so far. On a library of 14 kinds of photos the first 14 picks land in
different kinds far more often than a random sample's do. The candidates are bounded by the
caller (a random subset of a few thousand), so the cost is O(k · candidates · dim).
"""
from __future__ import annotations

import numpy as np


def farthest_point_sample(vectors: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` rows of ``vectors`` (n, dim; L2-normalised) spread over the set, first pick seeded."""
    n = len(vectors)
    k = max(0, min(k, n))
    if k == 0:
        return []
    V = np.asarray(vectors, np.float32)
    rng = np.random.default_rng(seed)
    first = int(rng.integers(n))
    chosen = [first]
    # distance to the nearest chosen point; chosen points get -inf so they are never picked again
    dist = 1.0 - V @ V[first]
    dist[first] = -np.inf
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        if not np.isfinite(dist[nxt]):
            break
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - V @ V[nxt])
        dist[chosen] = -np.inf
    return chosen
