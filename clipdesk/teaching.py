"""What the Teach loop stores beside the user's own labels, and how it reaches a probe.

A photo *rejected* for category A ("this is not A") is stored in the label ``NEGATIVE_PREFIX + A``.
The prefix is reserved: user labels may not start with it, so the two never collide, and label
lists shown to people hide these labels. :func:`bucket_data` turns buckets and rejections into a
probe's training input, the one rule the app and ``clipdesk eval fewshot --rejection`` share.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from clipdesk.teach.probe import ProbeData

NEGATIVE_PREFIX = "__not__."
NONE_CLASS = "(none of these)"  # the extra class a multi-class probe learns from photos rejected from every bucket


def negative_label(name: str) -> str:
    return NEGATIVE_PREFIX + name


def is_negative(label: str) -> bool:
    return label.startswith(NEGATIVE_PREFIX)


def positive_of(label: str) -> str:
    """``"__not__.Anna"`` → ``"Anna"``."""
    return label[len(NEGATIVE_PREFIX):] if is_negative(label) else label


def bucket_data(buckets: list[str], text: np.ndarray, X: np.ndarray, y: np.ndarray, rejected: np.ndarray,
                rejected_from: Sequence[Iterable[int]], none_text: np.ndarray | None = None,
                corrected: np.ndarray | None = None) -> tuple[ProbeData, np.ndarray]:
    """The training input of a multi-bucket probe: the buckets' examples plus the photos rejected
    from them, and the text classifier zero-shot is compared with.

    ``rejected`` (M, dim) are photos not in any bucket, ``rejected_from[i]`` the buckets photo
    ``i`` was rejected from. "Not A" says nothing about which other bucket a photo is in, so a
    photo rejected from some buckets is a *negative* of each of them (it lowers their probability,
    :class:`ProbeData.negatives`); only a photo rejected from every bucket is known to be in none
    of them and becomes an example of the text-less class ``NONE_CLASS``. Taught as "none of
    these" after one rejection, a photo of another bucket made "none" take over the library
    (issue 26: 3 + 3 examples, one rejection, 69 % of the held-out items went to "none").
    ``none_text`` (1, dim): the generic text ("photo") zero-shot uses for that class.
    """
    C = len(buckets)
    dim = np.shape(X)[1]
    none, neg, neg_of = [], [], []
    for i, came in enumerate(rejected_from):
        came = sorted({int(c) for c in came if 0 <= int(c) < C})
        if len(came) == C:
            none.append(i)
        else:
            neg += [i] * len(came)
            neg_of += came
    rejected = np.asarray(rejected, np.float32).reshape(-1, dim)
    classes, zs_text = list(buckets), np.asarray(text, np.float32)
    X, y = np.asarray(X, np.float32), np.asarray(y, np.int64)
    if corrected is not None:
        corrected = np.asarray(corrected, bool)
    if none:
        classes.append(NONE_CLASS)
        generic = np.zeros((1, dim), np.float32) if none_text is None else np.asarray(none_text, np.float32)
        zs_text = np.vstack([zs_text, generic.reshape(1, dim)])
        text = np.vstack([text, np.zeros((1, dim), np.float32)])
        X, y = np.vstack([X, rejected[none]]), np.concatenate([y, np.full(len(none), C)])
        if corrected is not None:
            corrected = np.concatenate([corrected, np.zeros(len(none), bool)])
    data = ProbeData(classes, np.asarray(text, np.float32), X, y)
    if corrected is not None and corrected.any():
        data.corrected = corrected
    if neg:
        data.negatives, data.negative_of = rejected[neg], np.array(neg_of, np.int64)
    return data, zs_text
