"""Where a ranked list of search scores stops being relevant.

A search always returns *something*: every photo has some cosine similarity to every query, so a
plain top-k "matches" the whole library. What separates real matches is how far a score stands
above the library's typical score for that query. ``relevance_cut`` estimates the typical score
and its spread robustly (median and MAD of the scores it is given, which should be most or all of
the library's scores for the query) and keeps the scores that stand ``z`` robust standard
deviations above it; a clear gap just below the cut moves the cut to the gap.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MIN_SCORES = 12  # fewer scores than this say nothing about a distribution: all are kept
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution × this = its standard deviation


def relevance_cut(scores: Sequence[float], z: float = 3.0, min_spread: float = 1e-4) -> int:
    """How many of ``scores`` (any order) are good matches: a count in ``[0, len(scores)]``.

    The good matches are always the highest scores, so the caller keeps the first ``n`` of its
    best-first list.
    """
    s = np.sort(np.asarray(scores, np.float64))[::-1]
    n = len(s)
    if n < MIN_SCORES:
        return n
    med = float(np.median(s))
    spread = max(MAD_TO_SIGMA * float(np.median(np.abs(s - med))), min_spread)
    good = int(np.count_nonzero((s - med) / spread >= z))
    if good == 0:
        return 0
    # A sharp drop a little below the cut is a better boundary than the z line itself: look for
    # the largest gap among the next few scores and cut there when it dwarfs the typical step.
    window = s[:min(n, 2 * good + 2)]
    gaps = -np.diff(window)
    if len(gaps) > good:
        typical = float(np.median(gaps)) or min_spread
        tail = gaps[good - 1:]
        j = int(np.argmax(tail))
        if tail[j] > 4 * typical and j > 0:
            good += j
    return good


def describe_cut(good: int, total: int) -> str:
    """The count line the app shows: ``"23 good matches · show all 359"``."""
    if good >= total:
        return f"{total:,} match{'es' if total != 1 else ''}"
    if good == 0:
        return f"No clear match · show all {total:,}"
    return f"{good:,} good match{'es' if good != 1 else ''} · show all {total:,}"
