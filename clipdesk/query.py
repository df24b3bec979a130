"""Combined search queries: weighted text and image terms, with negatives.

Syntax (plain text is one term; ``+``/``-`` at the start or after a space join terms)::

    a dog in the snow
    "beach" + 0.5*"sunset" - "people"
    ~/Pictures/cat.jpg + "in the snow"
    "kids playing" -crowd

A term is a quoted string or bare words, optionally weighted ``W*term`` (``W`` a decimal number,
``1.5`` or ``2e-1``, between ``MIN_WEIGHT`` and ``MAX_WEIGHT``, or 0). A term naming an image
file (by extension) is an image term. A query has at most ``MAX_QUERY_CHARS`` characters and
``MAX_TERMS`` terms. The query vector is the normalised weighted sum of the
terms' normalised embeddings: ``q = normalise(Σ wᵢ·eᵢ)``.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clipdesk.errors import QueryError
from clipdesk.indexer.decode import supported_extensions

# One way to match each number (no nested repetition), so a long run of digits costs linear time.
_WEIGHT = re.compile(r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*\*\s*")
# Only the weights' ratios matter (the sum is normalised); beyond these bounds a weight is a typo
# and, at 1e999, an infinity that would turn the query vector into NaN.
MIN_WEIGHT = 1e-3
MAX_WEIGHT = 1e3
MAX_QUERY_CHARS = 10_000
MAX_TERMS = 100


@dataclass(frozen=True)
class Term:
    weight: float
    text: str | None = None
    image: str | None = None  # absolute path

    def __str__(self) -> str:
        what = f"image {self.image}" if self.image else repr(self.text)
        return f"{self.weight:+g}*{what}"


def _split(query: str) -> list[tuple[int, str]]:
    """Split at top-level ``+``/``-`` operators: outside quotes, at the start, after whitespace
    or right after a quoted term."""
    parts: list[tuple[int, str]] = []
    sign, buf, quote, after_operator, closed_at = 1, "", None, False, -1
    for i, ch in enumerate(query):
        if quote:
            buf += ch
            if ch == quote:
                quote, closed_at = None, i
            continue
        at_term_start = not buf.strip() or (buf.rstrip().endswith("*") and _WEIGHT.fullmatch(buf) is not None)
        if ch in "\"'" and at_term_start:
            quote = ch
        elif ch in "+-" and (i == 0 or query[i - 1].isspace() or closed_at == i - 1):
            if buf.strip():
                parts.append((sign, buf))
            elif after_operator:
                raise QueryError(f"Two operators in a row in: {query}")
            sign, buf, after_operator = (1 if ch == "+" else -1), "", True
            continue
        buf += ch
    if quote:
        raise QueryError(f"Unclosed quote in: {query}")
    if not buf.strip():
        raise QueryError(f"The query ends with an operator: {query}")
    parts.append((sign, buf))
    return parts


def parse_query(query: str) -> list[Term]:
    """Parse a query string into weighted terms. Raises :class:`QueryError`."""
    if not query or not query.strip():
        raise QueryError("The query is empty.")
    if len(query) > MAX_QUERY_CHARS:
        raise QueryError(f"The query is too long ({len(query)} characters; at most {MAX_QUERY_CHARS}).")
    terms = []
    parts = _split(query)
    if len(parts) > MAX_TERMS:
        raise QueryError(f"The query has too many terms ({len(parts)}; at most {MAX_TERMS}).")
    for sign, raw in parts:
        weight = 1.0
        m = _WEIGHT.match(raw)
        if m:
            weight = float(m.group(1))
            if not (weight == 0.0 or MIN_WEIGHT <= weight <= MAX_WEIGHT):  # also inf
                raise QueryError(f"The weight {m.group(1)[:20]} is out of range: use 0 or a number "
                                 f"from {MIN_WEIGHT:g} to {MAX_WEIGHT:g}.")
            raw = raw[m.end():]
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        if not raw.strip():
            raise QueryError(f"Empty term in: {query}")
        terms.append(_term(sign * weight, raw))
    return terms


def _term(weight: float, raw: str) -> Term:
    if os.path.splitext(raw)[1].lower() in supported_extensions():
        path = os.path.abspath(os.path.expanduser(raw))
        if not os.path.isfile(path):
            raise QueryError(f"Image not found: {path}")
        return Term(weight, image=path)
    return Term(weight, text=raw.strip())


def combine(weights: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """``normalise(Σ wᵢ·vᵢ)`` of L2-normalised vectors (n, dim) → (dim,) float32."""
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite input is refused just below
        q = (np.asarray(weights, np.float32)[:, None] * np.asarray(vectors, np.float32)).sum(0)
        norm = float(np.linalg.norm(q))
    if not math.isfinite(norm):
        raise QueryError("The query's weights or vectors are not finite numbers.")
    if norm < 1e-6:
        raise QueryError("The query's terms cancel each other out.")
    return (q / norm).astype(np.float32)


def query_vector(terms: list[Term], embed_texts: Callable[[list[str]], np.ndarray],
                 embed_image: Callable[[str], np.ndarray]) -> np.ndarray:
    """The (dim,) query vector of ``terms``, embedding texts in one batch."""
    texts = [t.text for t in terms if t.text is not None]
    text_vecs = iter(embed_texts(texts)) if texts else iter(())
    vecs = [next(text_vecs) if t.text is not None else embed_image(t.image) for t in terms]
    return combine(np.array([t.weight for t in terms]), np.stack(vecs))
