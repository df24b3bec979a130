"""Few-shot probes: teach clipdesk a category from a handful of labelled photos — or hundreds.

The probe starts from what the text encoder already knows and moves away from it only as far as
the examples justify, by a rule that holds from 1 example per category to hundreds:

* **The prior** is the prototype rule of earlier versions: per category ``c`` a prototype
  ``P_c = normalise(τ·t_c + Σ x_i)`` (the zero-shot text vector ``t_c`` counted as ``τ = 4``
  pseudo-examples plus the category's examples), plus a **cache** term (Tip-Adapter, Zhang et al.
  2022) ``α · mean_i exp(-β (1 - x·x_i))``, a kernel vote of the examples, scaled to logits by
  its own leave-one-out temperature ``T₀``.
* **The probe** is a linear layer ``W`` (plus the same cache vote) fitted by maximum a posteriori:
  cross-entropy on the examples plus a Gaussian prior ``λ/2‖W − T₀·P‖²`` centred on the prior.
  Its weight is fixed while the data's grows with every example, so the prior fades with evidence
  and, with many examples, the probe becomes a regularised logistic regression.
* **How firm the prior is** comes from the examples themselves: ``λ = λ₀·(z/(1−z))³`` where ``z``
  is the zero-shot accuracy on the examples (the text's agreement with them). A text that is
  right 9 times in 10 holds the probe ~730× more firmly than one right half the time.
  ``λ₀ = 0.1`` and the power 3 were chosen on the *development* halves of classes of three
  evaluation sets (``clipdesk eval fewshot --half dev``) and checked on the other halves.

A category without text (the "rest of the library" when one concept is taught, or "none of
these") has a prototype made of its examples only, and an unpenalised bias balances it.

**Corrections** (``ProbeData.corrected``): a label given *because the probe was wrong*. The most
confident mistakes are not a fair sample: on debian-sections (K = 1, 8 seeds) a logistic
regression trained on every other item of the file still gets 76 % of them wrong, against 36 % of
random pool items — they are atypical or debatably labelled, and the text is wrong on all of them
by construction. Taken as ordinary examples they made the text look far worse than it is (λ and
``T₀`` fell), the probe let go of its prior, and a refit after correcting the 10 most confident
mistakes *lost* accuracy (debian-sections K = 1: 0.469 → 0.414). So corrections (1) stay out of
the prior's two estimates (λ's agreement ``z`` and the prior's scale ``T₀``), and (2) weigh in the
likelihood 1, ½ or 0 — whichever best predicts the *fair* examples held out (5 folds over those;
:func:`_correction_weight`): corrections that generalise count fully, idiosyncratic ones stay
prototypes and cache keys (they still fix themselves and their near-duplicates). Measured by the
corrections protocol (dev halves, 10 seeds): (1) alone turned K = 1 on debian-sections dev from
0.570 → 0.536 into 0.570 → 0.576 but left losses at K = 4–8 on the whole file; (1) + (2) gives
gains or ties within seed noise at every K on the Debian halves. Tried and dropped: a bounded
(label-noise) likelihood (no effect: with N ≪ dim the fit interpolates every example anyway).

**Negatives** (``ProbeData.negatives``/``negative_of``: "less like this", a rejection in Review,
``--negatives``): an item known *not* to be in category ``c`` adds ``−log(1 − p_c(x))`` to the
likelihood (its probability mass goes to the other categories in proportion), and counts in the
text's agreement (agreeing when the text does not pick ``c``): without that, a text that agrees
with a handful of examples (λ ≈ 700) held the probe so firmly that ten rejections changed nothing.
Negatives are not examples (no cache key, no prototype); the file format is unchanged. In the
negatives protocol (50 seeds, whole files) ten of them cut their category's held-out false
positives by 45–90 % at K = 1–2 (and its true positives by 6–72 %), overall accuracy within
−0.0044 … +0.0030; taught as a text-less "none of these" class instead, the same rejections cost
0.012–0.102 of accuracy (the extra class swallows true members); see benchmarks/RESULTS.md.

Scores become probabilities by a softmax with a temperature (and, for concept-vs-rest, a bias)
fitted by maximum likelihood on **out-of-fold** scores: the probe is refitted on 5 stratified
folds, each scoring the examples it did not see, so the probabilities are calibrated on held-out
examples and ``FitReport.cv_accuracy`` is the accuracy on them. (With one example per category
no fold can hold one out; the prior's closed-form leave-one-out scores stand in.) Held-out
models see a fifth fewer examples than the final one, so the probabilities err on the modest side.

**The cache's weight and width** (α, β) are chosen per fit among (1, 20) — the rule of earlier
versions — and (10, 10), (30, 10), (100, 10) by the out-of-fold likelihood the calibration already
computes: a candidate replaces (1, 20) only when it predicts the held-out examples better by more
than ``SELECTION_SE = 2`` standard errors of the paired per-example difference (1 once every
class has 16 examples: below). Evidence (dev halves, 10 seeds; margin over max(zero-shot,
logistic regression)): a fixed wide, heavy cache (α = 30–100, β = 10) lifted K = 32 on the Debian dev halves (sections +0.004 → +0.015–0.021, tags
−0.009 → +0.004–0.010) but cost the proxy's dev half 0.03–0.11 at K = 1–8; chosen per fit
without the guard it still cost the proxy 0.013–0.03 at K = 2–4 (too few held-out examples to
choose well); with the 2-SE guard the proxy is unchanged and K = 32 reaches +0.015 (sections) and
−0.000 (tags). The full run before the λ floor (2026-11-27 22:17 UTC): dev halves +0.016 / +0.002, check
halves +0.011 / +0.009, whole files +0.006 / +0.012 (sections / tags; target +0.01), K = 1–8
unchanged within seed noise. A guard of 1 SE: tags +0.005, proxy K = 2–8 −0.008 to −0.014. Tried at K = 16–32
without gain (dev halves): λ scaled ×0.1–×10, another fixed λ floor (0.002–1: the dev halves' texts mostly
earn a λ above it; see the floor below), the text vector(s) as
extra examples, shrinkage LDA (alone and with zero-shot logits), averaging the fold models.

**A floor under λ, chosen per fit.** λ does two jobs: it says how far to trust the text, and it
is the only thing that regularises the linear layer. A weak text (zero-shot right on 43 % of
debian-sections' examples) gave λ = 0.05, so at K = 16–32 the fit was a barely regularised
logistic regression on 400–800 examples of 256-d vectors: a 5-fold fit on all of the file's items
showed logistic regression best at C = 3 (λ ≈ 0.33) and the probe below it. So before the cache is
chosen, floors λ ∈ (0.15, 0.4, 1) above the text's λ are tried with the same out-of-fold
likelihood and 2-SE guard (λ = max(text's λ, the winner)); a text that earns a firmer prior never
sees them. The floor stage was checked on the development halves first (10 seeds: every K within
−0.001 … +0.000 of before: their texts are strong enough that the floors rarely bind), then run
on the whole files and the check halves: debian-sections K = 32 +0.0034 → +0.0171 and K = 16
+0.0155 → +0.0181 over max(zero-shot, logistic regression), K ≤ 8 unchanged (same 10 seeds);
in the full run (50 seeds, benchmarks/RESULTS.md, 2026-11-28 00:40 UTC) K = 32 +0.0062 → +0.0226
and K = 16 +0.0171 → +0.0203, every other row within −0.0009 … +0.0032 of the run before. Tried
first: a fixed floor of 0.4 (the same gain on debian-sections, but chosen by looking at it),
choosing λ and the cache in one stage (the cache chosen at λ = 0.05 then kept the floor from
helping), and choosing the floor by out-of-fold accuracy (noisier). Tried on the same quick
protocol without keeping: centring the vectors (on their mean) before the fit (+0.005 at K = 32
on the Debian sets, −0.002 to −0.02 on the proxy at K = 4), a free class bias (−0.05 on the proxy
at K = 4), and the average of a centred and an uncentred probe (+0.002 to +0.007 everywhere, for
twice the scoring cost over a library).

**A looser guard once every class has many examples.** With ``MANY_EXAMPLES = 16`` or more
examples in every class (each of the 5 folds holds 3 or more of each out), the paired
out-of-fold difference is steady enough to choose on ``SELECTION_SE_MANY = 1`` standard error
instead of 2; below that the 2-SE guard stands (a 1-SE guard at every K cost the proxy 0.008–0.014
at K = 2–8, above). First set aside on 10 dev-half seeds (tags dev K = 32 +0.005, within their
noise), then rerun on 20 dev-half seeds (margin over max(zero-shot, logistic regression)): tags
K = 32 +0.0020 → +0.0057, sections K = 32 +0.0158 → +0.0200, K = 16 within +0.0003, proxy
K = 16 unchanged (+0.0400). Then, once, the check halves (20 seeds): tags K = 16 +0.0157 →
+0.0156, K = 32 +0.0088 → +0.0111; sections K = 16 +0.0136 → +0.0183, K = 32 +0.0113 →
+0.0113; and the whole files (50 seeds, benchmarks/RESULTS.md): tags K = 16 +0.0150 → +0.0160,
K = 32 +0.0119 → +0.0127; sections K = 16 +0.0203 → +0.0251, K = 32 +0.0226 → +0.0236; the proxy at
K = 16 (3 classes) +0.0342 → +0.0240, still above its +0.01. K ≤ 8 never reaches it.

**Tried after that, not kept** (dev halves, 10–20 seeds; margins over zero-shot at K ≤ 8, over
max(zero-shot, logistic regression) from K = 16). τ = 8 instead of 4: proxy dev K = 4 +0.015 →
+0.023, but K = 2 +0.017 → +0.009 and Debian dev K = 1–4 down 0.008–0.015. τ chosen per fit by the
prototype rule's leave-one-out likelihood: proxy dev K = 4 −0.017 (unguarded), unchanged with the
2-SE guard. τ from the text's odds (τ₀·(z/(1−z))^p, p = 1 or ½): proxy K = 2 −0.008 to −0.010,
Debian dev K = 1–2 down to −0.015. λ₀ × 3 and × 10: proxy dev K = 8 +0.004, tags dev K = 32 −0.004
and −0.008. More cache candidates (β = 5 or 20 with α up to 300): ±0.001. Whitening by the
library's own (unlabelled) covariance, text vectors included: tags dev K = 32 +0.009, but
zero-shot in the whitened space falls from 0.89 to 0.59 on the proxy and the probe with it
(−0.17 at K = 4). A centred probe without renormalising (foldable into one linear layer, so free
at scoring time), averaged in logits with the plain one: proxy dev K = 4 −0.006, tags K = 32
−0.002. No selection guard at all from K = 16: proxy dev K = 16 −0.006. Transductive refinement
of the class directions by the unlabelled pool (soft assignments, 5 rounds): proxy dev K = 4
−0.010 to −0.019, worse again with other classes' items in the pool. Class priors re-estimated on the unlabelled pool (Saerens et al.'s
EM): −0.01 to −0.06 everywhere.

Methods compared before this one (``clipdesk eval fewshot``, benchmarks/RESULTS.md): the prototype
rule alone (caps below logistic regression from K = 16: the class mean is not the best direction),
logistic regression (far below zero-shot at K ≤ 4), MAP logistic regression with a fixed λ (no
single λ suits a strong text, which wants λ ≥ 10, and a weak one, which wants λ ≤ 0.1), λ chosen
per fit by cross-validated likelihood (noisy with few examples: picked small λ where it hurt), and
a blend of the fit and its prior weighted by held-out likelihood (no gain).
"""
from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from clipdesk.errors import ProbeError
from clipdesk.zeroshot import normalise, softmax

TEXT_PSEUDO_SHOTS = 4.0  # τ
CACHE_WEIGHT = 1.0  # α
CACHE_SHARPNESS = 20.0  # β
PRIOR_PRECISION = 0.1  # λ₀: the prior's precision when the text is right as often as wrong
AGREEMENT_POWER = 3.0  # λ = λ₀ · (z / (1 − z))³, z = zero-shot accuracy on the examples
MIN_PRIOR_PRECISION = 0.05
CV_FOLDS = 5
BACKGROUND = "(rest of the library)"
FORMAT_VERSION = 2  # 2: a fitted linear layer ("weights"); 1 (no weights): the prototype rule

# A probe file is untrusted input (it may be hand-made, truncated or hostile): these bound what
# loading it may allocate, checked against the zip directory and the .npy headers before any read.
MAX_PROBE_FILE = 256 << 20  # bytes on disk
MAX_PROBE_DATA = 256 << 20  # bytes of all arrays together, uncompressed
MAX_META_CHARS = 1 << 20
MAX_CLASSES = 10_000
MAX_DIM = 8192
_MEMBERS = ("text", "keys", "key_labels", "bias", "meta")
_OPTIONAL_MEMBERS = ("weights",)
MAX_WEIGHT = 1e6  # |w| of a fitted linear layer (fits stay far below; larger is a forged file)
# Parameters outside these ranges cannot come from fit_probe and would overflow the scores.
_PARAM_RANGES = {"tau": (0.0, 1e6), "alpha": (0.0, 1e6), "beta": (0.0, 1e3), "temperature": (1e-6, 1e4)}
_UNIT_SLACK = 1.01  # stored vectors are L2-normalised (float16 round trips move norms by ~1e-3)
_SCORE_BLOCK = 1 << 24  # floats per temporary (n × keys) block in scores(): 64 MB
_ONEHOT_LIMIT = 1 << 20  # keys × classes up to which scores() uses a one-hot product (4 MB)


@dataclass
class ProbeData:
    """Training input: category names, their text vectors and labelled example embeddings."""

    classes: list[str]
    text: np.ndarray  # (C, dim) zero-shot class vectors; rows of zeros for categories without text
    X: np.ndarray  # (N, dim) L2-normalised example embeddings
    y: np.ndarray  # (N,) category index of each example
    # Negative examples: items known NOT to belong to a category ("less like this", a rejection
    # in Review, ``--negatives``): (M, dim) embeddings and (M,) the category each one is not.
    negatives: np.ndarray | None = None
    negative_of: np.ndarray | None = None
    # (N,) bool, optional: the examples labelled *because the probe got them wrong* (a correction
    # in Review). They train the probe like any example but are not a fair sample of how good the
    # text is, so they stay out of the prior's two estimates (λ's agreement and T₀).
    corrected: np.ndarray | None = None

    @property
    def has_text(self) -> np.ndarray:
        return np.linalg.norm(self.text, axis=1) > 0


@dataclass
class Probe:
    classes: list[str]
    text: np.ndarray  # (C, dim)
    keys: np.ndarray  # (N, dim) the examples (cache keys)
    key_labels: np.ndarray  # (N,)
    tau: float = TEXT_PSEUDO_SHOTS
    alpha: float = CACHE_WEIGHT
    beta: float = CACHE_SHARPNESS
    temperature: float = 10.0
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (C,)
    meta: dict = field(default_factory=dict)
    # (C, dim) linear layer fitted by :func:`fit_probe` (format 2); None: the prototypes (format 1)
    weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.bias) != len(self.classes):
            self.bias = np.zeros(len(self.classes), np.float32)
        self._prototypes = _prototypes(self.text, self.keys, self.key_labels, len(self.classes), self.tau)
        self._linear = self._prototypes if self.weights is None else np.asarray(self.weights, np.float32)
        self._counts = np.bincount(self.key_labels, minlength=len(self.classes)).astype(np.float32)

    # ------------------------------------------------------------------ prediction
    def scores(self, features: np.ndarray, chunk: int = 16384) -> np.ndarray:
        """Raw scores (n, C) of L2-normalised ``features`` (n, dim)."""
        C = len(self.classes)
        n_keys = len(self.keys) if self.alpha else 0
        out = np.empty((len(features), C), np.float32)
        inv = 1.0 / np.maximum(self._counts, 1.0)
        # The per-class kernel means are one matrix product with a (keys × C) one-hot when that is
        # small, else sums over the keys sorted by class (no one-hot of unbounded size).
        onehot = n_keys * C <= _ONEHOT_LIMIT
        if onehot:
            keys, labels = self.keys, self.key_labels
            mix = np.eye(C, dtype=np.float32)[labels] * inv
        else:
            order = np.argsort(self.key_labels, kind="stable")
            keys, labels = self.keys[order], self.key_labels[order]
            present, starts = np.unique(labels, return_index=True)
        # One matrix product per chunk gives both terms: the kernel's exponent β·(x·k) − β (keys
        # scaled by β; exp taken in place) and the linear layer's scores. A whole-library pass is
        # this product and little else. Memory stays bounded whatever the number of keys: blocks
        # of at most _SCORE_BLOCK floats.
        stacked = np.ascontiguousarray(np.vstack([self.beta * keys[:n_keys], self._linear]).T, np.float32)
        chunk = max(1, min(chunk, _SCORE_BLOCK // max(n_keys + C, 1)))
        tmp = np.empty((min(chunk, len(features)), n_keys + C), np.float32)
        for i in range(0, len(features), chunk):
            f = features[i:i + chunk]
            if f.dtype != np.float32:
                f = np.asarray(f, np.float32)
            t, o = tmp[:len(f)], out[i:i + len(f)]
            np.matmul(f, stacked, out=t)
            if n_keys:
                kernel = t[:, :n_keys]
                np.subtract(kernel, np.float32(self.beta), out=kernel)
                np.exp(kernel, out=kernel)
                if onehot:
                    np.matmul(kernel, mix, out=o)
                else:
                    o[:] = 0.0
                    o[:, present] = np.add.reduceat(kernel, starts, axis=1) * inv[present]
                o *= np.float32(self.alpha)
                o += t[:, n_keys:]
            else:
                o[:] = t[:, n_keys:]
        return out

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (n, C)."""
        return softmax(self.temperature * self.scores(features) + self.bias)

    # ------------------------------------------------------------------ storage (no pickle)
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = dict(self.meta, classes=self.classes, tau=self.tau, alpha=self.alpha, beta=self.beta,
                    temperature=self.temperature, format=1 if self.weights is None else FORMAT_VERSION)
        out = {"text": self.text.astype(np.float32), "keys": self.keys.astype(np.float32),
               "key_labels": self.key_labels.astype(np.int64), "bias": self.bias.astype(np.float32),
               "meta": np.array(json.dumps(meta))}
        if self.weights is not None:
            out["weights"] = np.asarray(self.weights, np.float32)
        return out

    @classmethod
    def from_arrays(cls, arrays) -> Probe:
        """A probe from its stored arrays, every field checked (:class:`ProbeDataError` if bad)."""
        for name in _MEMBERS:
            if name not in arrays:
                raise ProbeDataError(f"no '{name}' array")
        meta = _check_meta(arrays["meta"])
        classes = meta.pop("classes")
        params = {k: meta.pop(k) for k in _PARAM_RANGES}
        fmt = meta.pop("format", 0)
        C = len(classes)
        text = _float_array(arrays["text"], "text", 2)
        keys = _float_array(arrays["keys"], "keys", 2)
        bias = _float_array(arrays["bias"], "bias", 1)
        labels = np.asarray(arrays["key_labels"])
        if text.shape[0] != C or not 1 <= text.shape[1] <= MAX_DIM:
            raise ProbeDataError(f"text vectors of shape {text.shape} for {C} classes")
        if keys.shape[1] != text.shape[1] and keys.shape[0]:
            raise ProbeDataError(f"example vectors of {keys.shape[1]} dimensions, text vectors of {text.shape[1]}")
        if bias.shape != (C,):
            raise ProbeDataError(f"bias of shape {bias.shape} for {C} classes")
        if labels.dtype.kind not in "iu" or labels.shape != (len(keys),):
            raise ProbeDataError(f"example labels must be {len(keys)} integers (got {labels.dtype} {labels.shape})")
        if len(labels) and (labels.min() < 0 or labels.max() >= C):
            raise ProbeDataError(f"example labels outside 0..{C - 1}")
        for name, vecs in (("text", text), ("keys", keys)):
            if len(vecs) and float(np.linalg.norm(vecs.astype(np.float64), axis=1).max()) > _UNIT_SLACK:
                raise ProbeDataError(f"'{name}' vectors are not normalised")
        weights = None
        if "weights" in arrays:
            weights = _float_array(arrays["weights"], "weights", 2)
            if weights.shape != text.shape:
                raise ProbeDataError(f"weights of shape {weights.shape} for text vectors of shape {text.shape}")
            if float(np.abs(weights).max(initial=0.0)) > MAX_WEIGHT:
                raise ProbeDataError("'weights' holds values out of range")
        elif fmt >= 2:
            raise ProbeDataError("no 'weights' array")
        return cls(classes, text, keys.reshape(-1, text.shape[1]), labels.astype(np.int64), bias=bias,
                   meta=meta, weights=weights, **params)


class ProbeDataError(ProbeError):
    """A probe file's content is invalid; the message says what (without the file's name)."""


def _float_array(a, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f" or a.ndim != ndim:
        raise ProbeDataError(f"'{name}' must be a {ndim}-d float array (got {a.dtype} of shape {a.shape})")
    with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
        a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ProbeDataError(f"'{name}' holds NaN or infinite values")
    return a


def _check_meta(raw) -> dict:
    raw = np.asarray(raw)
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise ProbeDataError("the metadata is not a text")
    text = str(raw)
    if len(text) > MAX_META_CHARS:
        raise ProbeDataError("the metadata is too long")
    try:  # NaN/Infinity are valid Python JSON but never a valid parameter
        meta = json.loads(text, parse_constant=lambda c: float("nan"))
    except (ValueError, RecursionError) as e:
        raise ProbeDataError(f"the metadata is not JSON ({str(e)[:80]})") from None
    if not isinstance(meta, dict):
        raise ProbeDataError("the metadata is not a JSON object")
    fmt = meta.get("format", 0)
    if type(fmt) is not int:
        raise ProbeDataError("the format version is not an integer")
    if fmt > FORMAT_VERSION:
        raise ProbeDataError(f"written by a newer clipdesk (format {fmt}); upgrade clipdesk")
    classes = meta.get("classes")
    if not isinstance(classes, list) or not 1 <= len(classes) <= MAX_CLASSES \
            or not all(isinstance(c, str) and c for c in classes):
        raise ProbeDataError("'classes' must be a list of 1 to 10000 non-empty names")
    for key, (lo, hi) in _PARAM_RANGES.items():
        v = meta.get(key)
        if type(v) not in (int, float) or not lo <= v <= hi:  # NaN fails the comparison
            raise ProbeDataError(f"'{key}' must be a number between {lo:g} and {hi:g} (got {v!r:.40})")
        meta[key] = float(v)
    for key in ("labels", "negatives"):
        v = meta.get(key, [])
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ProbeDataError(f"'{key}' must be a list of names")
    for key in ("cv_accuracy", "zeroshot_accuracy"):
        v = meta.get(key, 0.0)
        if type(v) not in (int, float) or not 0.0 <= v <= 1.0:
            raise ProbeDataError(f"'{key}' must be a number between 0 and 1")
    for key, ok in (("examples", lambda v: type(v) is int and 0 <= v < 1 << 53),
                    ("created", lambda v: type(v) in (int, float) and abs(v) < 1e12),
                    ("model", lambda v: isinstance(v, str))):
        if key in meta and not ok(meta[key]):
            raise ProbeDataError(f"'{key}' has an invalid value")
    return meta


def load_probe_file(path: str) -> Probe:
    """Load a probe saved by :meth:`Probe.to_arrays` + ``np.savez``, treating the file as untrusted.

    Never follows a symbolic link, never blocks on a FIFO or device, and checks the zip directory
    and every ``.npy`` header against the size limits before reading any array, so a hostile file
    (a zip bomb, absurd shapes) costs no more memory than a valid probe of the same limits. Raises
    :class:`ProbeError` naming the file and what is wrong with it.
    """
    try:
        arrays = _read_npz(path)
        return Probe.from_arrays(arrays)
    except ProbeDataError as e:
        reason = str(e)
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, struct.error, zlib.error) as e:
        # a damaged zip or .npy header
        reason = str(e) or type(e).__name__
    raise ProbeError(f"The probe file {path} is damaged: {reason[:300]}.")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if os.path.islink(path):
            raise ProbeDataError("it is a symbolic link (not followed)") from None
        raise ProbeDataError(e.strerror or str(e)) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProbeDataError("not a regular file")
        if st.st_size > MAX_PROBE_FILE:
            raise ProbeDataError(f"{st.st_size} bytes (a probe is at most {MAX_PROBE_FILE >> 20} MiB)")
        _check_zip_directory(f, st.st_size)
        with zipfile.ZipFile(f) as z:
            infos = {i.filename: i for i in z.infolist()}
            expected = {f"{m}.npy" for m in _MEMBERS}
            if not expected <= set(infos) <= expected | {f"{m}.npy" for m in _OPTIONAL_MEMBERS}:
                raise ProbeDataError(f"unexpected contents {sorted(infos)[:8]}")
            if any(i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or i.flag_bits & 1
                   for i in infos.values()):
                raise ProbeDataError("unsupported zip compression or encryption")
            if sum(i.file_size for i in infos.values()) > MAX_PROBE_DATA:
                raise ProbeDataError("its arrays are too large")
            return {name[:-4]: _read_npy(z, info) for name, info in infos.items()}


def _check_zip_directory(f, size: int) -> None:
    """Bound the zip's central directory (entries and bytes) before zipfile parses it."""
    tail = min(size, 22 + 65535)
    f.seek(size - tail)
    data = f.read(tail)
    at = data.rfind(b"PK\x05\x06")
    if at < 0 or len(data) - at < 22:
        raise ProbeDataError("not a zip (.npz) file")
    entries, cd_size = struct.unpack("<H", data[at + 10:at + 12])[0], struct.unpack("<L", data[at + 12:at + 16])[0]
    if entries > 2 * (len(_MEMBERS) + len(_OPTIONAL_MEMBERS)) or cd_size > 64 * 1024:
        raise ProbeDataError(f"unexpected zip directory ({entries} entries)")
    f.seek(0)


_ALLOWED_DTYPES = {"text": "f", "keys": "f", "bias": "f", "key_labels": "iu", "meta": "U", "weights": "f"}


def _read_npy(z: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One .npy member, its header checked before its data is read (no pickle, bounded size)."""
    from numpy.lib import format as npy

    name = info.filename[:-4]
    with z.open(info) as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = npy.read_array_header_1_0(f, max_header_size=4096)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy.read_array_header_2_0(f, max_header_size=4096)
        else:
            raise ProbeDataError(f"'{name}' has an unknown .npy version {version}")
        if dtype.hasobject or dtype.kind not in _ALLOWED_DTYPES[name] or dtype.itemsize > 8 * (
                MAX_META_CHARS if name == "meta" else 1) or dtype.subdtype is not None or dtype.names:
            raise ProbeDataError(f"'{name}' has an unexpected type {dtype}")
        if any(d < 0 for d in shape) or dtype.itemsize == 0:
            raise ProbeDataError(f"'{name}' has an invalid shape {shape}")
        count = math.prod(shape)
        nbytes = count * dtype.itemsize
        if nbytes > info.file_size:  # the member cannot hold what the header declares
            raise ProbeDataError(f"'{name}' is truncated")
        out = np.empty(count, dtype)
        raw = out.view(np.uint8)
        pos = 0
        while pos < nbytes:
            chunk = f.read(min(1 << 20, nbytes - pos))
            if not chunk:
                raise ProbeDataError(f"'{name}' is truncated")
            raw[pos:pos + len(chunk)] = np.frombuffer(chunk, np.uint8)
            pos += len(chunk)
    return out.reshape(shape, order="F" if fortran else "C")


def _prototypes(text: np.ndarray, X: np.ndarray, y: np.ndarray, n_classes: int, tau: float) -> np.ndarray:
    sums = np.zeros((n_classes, text.shape[1]), np.float32)
    if len(y) * n_classes <= _ONEHOT_LIMIT:  # one matrix product (np.add.at is slow)
        sums += np.eye(n_classes, dtype=np.float32)[y].T @ np.asarray(X, np.float32)
    else:
        np.add.at(sums, y, X)
    return normalise(tau * text + sums)


def loo_scores(data: ProbeData, tau: float = TEXT_PSEUDO_SHOTS, alpha: float = CACHE_WEIGHT,
               beta: float = CACHE_SHARPNESS) -> np.ndarray:
    """Leave-one-out scores (N, C): example i scored by the probe trained without it (closed form)."""
    C = len(data.classes)
    X, y = np.asarray(data.X, np.float32), np.asarray(data.y)
    sums = np.zeros((C, X.shape[1]), np.float32)
    np.add.at(sums, y, X)
    base = tau * data.text + sums
    scores = X @ normalise(base).T
    own = normalise(base[y] - X)  # each example's own prototype without it
    scores[np.arange(len(y)), y] = (X * own).sum(1)
    if alpha:
        counts = np.bincount(y, minlength=C).astype(np.float32)
        K = np.exp(-beta * (1.0 - X @ X.T))
        np.fill_diagonal(K, 0.0)
        onehot = np.eye(C, dtype=np.float32)[y]
        n = np.tile(counts, (len(y), 1))
        n[np.arange(len(y)), y] -= 1
        scores += alpha * (K @ onehot) / np.maximum(n, 1.0)
    return scores


def _fit_calibration(scores: np.ndarray, y: np.ndarray, fit_bias: bool, balanced: bool,
                     temperatures: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Temperature (and bias) maximising the (class-balanced) likelihood of held-out scores."""
    C = scores.shape[1]
    w = _class_weights(y, C, balanced)
    onehot = np.eye(C)[y]
    Ts = np.geomspace(1.0, 300.0, 40) if temperatures is None else np.asarray(temperatures, np.float64)
    # A grid over the temperature (the likelihood is unimodal in it) and, per temperature, plain
    # gradient steps on the bias, where the problem is convex: every temperature of a block at
    # once (each stops when its own step is negligible), blocks bounded to 4M floats.
    best = (np.inf, 10.0, np.zeros(C))
    block = max(1, (1 << 22) // max(scores.size, 1))
    for at in range(0, len(Ts), block):
        T = Ts[at:at + block][:, None, None]
        B = np.zeros((T.shape[0], 1, C))
        active = np.ones(T.shape[0], bool)
        for _ in range(50 if fit_bias else 0):
            p = softmax(T * scores + B)
            step = ((p - onehot) * w[:, None]).sum(1) / w.sum()
            step[~active] = 0.0
            B[:, 0] -= 0.5 * step
            active &= np.abs(step).max(1) >= 1e-4  # converged: the rest would not move it
            if not active.any():
                break
        p = softmax(T * scores + B)
        nll = -(w * np.log(np.clip((p * onehot).sum(2), 1e-12, None))).sum(1) / w.sum()
        i = int(np.argmin(nll))
        if nll[i] < best[0]:
            best = (float(nll[i]), float(Ts[at + i]), B[i, 0].copy())
    return best[1], best[2].astype(np.float32)


def balanced_fit(data: ProbeData) -> bool:
    """Whether a fit weighs each class as much as any other (concept vs rest: see :func:`fit_probe`)."""
    return bool(not data.has_text.all() and int(data.has_text.sum()) <= 1)


def training_prior(data: ProbeData) -> np.ndarray:
    """(C,) the class frequencies a probe's probabilities are calibrated to: its examples' weighted
    shares (uniform for a balanced fit). A library whose photos fall into the classes in other
    proportions shifts them (:func:`clipdesk.ops.auto.prior_shift`)."""
    C = len(data.classes)
    y = np.asarray(data.y, np.int64)
    counts = np.bincount(y, weights=_class_weights(y, C, balanced_fit(data)), minlength=C)
    return counts / max(counts.sum(), 1e-12)


def _class_weights(y: np.ndarray, C: int, balanced: bool) -> np.ndarray:
    """Per-example weights: 1, or (balanced) each class weighing as much as any other in total."""
    if not balanced:
        return np.ones(len(y), np.float64)
    counts = np.bincount(y, minlength=C).astype(np.float64)
    return (len(y) / (C * np.maximum(counts, 1)))[y]


def _cache(F: np.ndarray, keys: np.ndarray, labels: np.ndarray, C: int, beta: float,
           leave_one_out: bool = False) -> np.ndarray:
    """Per-class mean kernel vote (n, C) of ``keys`` for ``F``; with ``leave_one_out`` (F is keys)
    each example's own vote is removed, as a held-out example would see it."""
    K = np.exp(-beta * (1.0 - F @ keys.T))
    n = np.tile(np.bincount(labels, minlength=C).astype(np.float32), (len(F), 1))
    if leave_one_out:
        np.fill_diagonal(K, 0.0)
        n[np.arange(len(F)), labels] -= 1
    return (K @ np.eye(C, dtype=np.float32)[labels]) / np.maximum(n, 1.0)


def prior_precision(zeroshot_agreement: float) -> float:
    """λ of the Gaussian prior around the text classifier, from how often the text alone is right
    on the examples (``zeroshot_agreement`` = z): λ₀·(z/(1−z))³ — a text that is right 9 times in
    10 holds the probe ~730× more firmly than one right half the time."""
    z = min(max(zeroshot_agreement, 0.05), 0.95)
    return max(PRIOR_PRECISION * (z / (1.0 - z)) ** AGREEMENT_POWER, MIN_PRIOR_PRECISION)


def _map_fit(X: np.ndarray, y: np.ndarray, W0: np.ndarray, offset: np.ndarray, lam: float,
             w: np.ndarray, b0: np.ndarray | None, iters: int = 100,
             negatives: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``argmin_{W,b} Σ wᵢ·CE(W xᵢ + oᵢ + b, yᵢ) + λ/2‖W − W₀‖²`` (b only when ``b0`` is given,
    unpenalised: the class balance of concept-vs-rest), by L-BFGS from the prior mean.

    ``negatives`` = ``(Xn, cn, offset_n, wn)``: items known *not* to
    belong to class ``cn`` ("less like this", a rejection), each adding ``−wn·log(1 − p_cn)``.

    Plain numpy (no autograd, no threads of its own): a few hundred small matrix products, which
    keeps a refit on every click fast on a busy two-core machine.
    """
    # The two products with X (N × dim) are the whole cost: float32 for them (2× less memory
    # traffic); the optimiser's state, the loss and the softmax stay float64.
    N, C = len(y), W0.shape[0]
    n_pos = N
    if negatives is not None and len(negatives[1]):
        Xn, cn, on, wn = negatives
        X = np.vstack([np.asarray(X, np.float32), np.asarray(Xn, np.float32)])
        offset = np.vstack([np.broadcast_to(offset, (N, C)), np.broadcast_to(on, (len(cn), C))])
        w = np.concatenate([np.asarray(w, np.float64), np.asarray(wn, np.float64)])
        neg_mask = np.zeros((len(cn), C), bool)
        neg_mask[np.arange(len(cn)), cn] = True
    else:
        neg_mask = None
    X = np.ascontiguousarray(X, np.float32)
    base = (X @ np.asarray(W0, np.float32).T).astype(np.float64) + offset
    Y = np.zeros((N, C))
    Y[np.arange(N), y] = 1.0
    w = np.asarray(w, np.float64)[:, None]
    wp = w[:n_pos]
    with_bias = b0 is not None
    size = W0.size

    def f(theta):
        D = theta[:size].reshape(W0.shape)
        z = base + X @ D.T.astype(np.float32)
        if with_bias:
            z = z + theta[size:]
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        s = e.sum(1, keepdims=True)
        p = e / s
        zp, pp = z[:n_pos], p[:n_pos]
        loss = float((wp * (np.log(s[:n_pos]) - (zp * Y).sum(1, keepdims=True))).sum())
        G = wp * (pp - Y)
        if neg_mask is not None:
            # −log(1 − p_c) = logsumexp(z) − logsumexp_{j≠c}(z); its gradient p − q, q the
            # softmax over the other classes
            zn = np.where(neg_mask, -np.inf, z[n_pos:])
            mn = zn.max(1, keepdims=True)
            en = np.exp(zn - mn)
            sn = en.sum(1, keepdims=True)
            wn_ = w[n_pos:]
            loss += float((wn_ * (np.log(s[n_pos:]) - mn - np.log(sn))).sum())
            G = np.vstack([G, wn_ * (p[n_pos:] - en / sn)])
        loss += 0.5 * lam * float(D.ravel() @ D.ravel())
        g = ((G.T.astype(np.float32) @ X) + lam * D).ravel()
        if with_bias:
            g = np.concatenate([g, G.sum(0)])
        return loss, g

    theta = np.zeros(size + (C if with_bias else 0))
    if with_bias:
        theta[size:] = b0
    theta = _lbfgs(f, theta, iters)
    W = (np.asarray(W0, np.float64) + theta[:size].reshape(W0.shape)).astype(np.float32)
    bias = theta[size:].astype(np.float32) if with_bias else np.zeros(C, np.float32)
    return W, bias


def _lbfgs(f, x: np.ndarray, iters: int, memory: int = 10, gtol: float = 1e-5) -> np.ndarray:
    """Minimise a smooth convex ``f(x) -> (value, gradient)``: L-BFGS with a backtracking
    (Armijo) line search; stops on a small gradient, a negligible decrease or ``iters`` steps."""
    fx, g = f(x)
    S: list[np.ndarray] = []
    Yk: list[np.ndarray] = []
    for it in range(iters):
        if np.abs(g).max() <= gtol * max(1.0, abs(fx) / max(len(x), 1)):
            break
        q = g.copy()
        alphas = []
        for s_, y_ in zip(reversed(S), reversed(Yk)):
            a = (s_ @ q) / (y_ @ s_)
            alphas.append(a)
            q -= a * y_
        if S:
            q *= (S[-1] @ Yk[-1]) / (Yk[-1] @ Yk[-1])
        else:
            q /= max(np.linalg.norm(g), 1.0)
        for (s_, y_), a in zip(zip(S, Yk), reversed(alphas)):
            q += s_ * (a - (y_ @ q) / (y_ @ s_))
        d = -q
        slope = g @ d
        if slope >= 0:  # not a descent direction (numerical): restart from the gradient
            S.clear(), Yk.clear()
            d, slope = -g / max(np.linalg.norm(g), 1.0), -(g @ g) / max(np.linalg.norm(g), 1.0)
        step = 1.0
        for _ in range(30):
            fn, gn = f(x + step * d)
            if fn <= fx + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s_, y_ = step * d, gn - g
        x = x + s_
        decrease = fx - fn
        fx, g = fn, gn
        if y_ @ s_ > 1e-12:
            S.append(s_), Yk.append(y_)
            if len(S) > memory:
                S.pop(0), Yk.pop(0)
        if decrease <= 1e-10 * max(1.0, abs(fx)):
            break
    return x


def _folds(y: np.ndarray, n_folds: int) -> np.ndarray:
    """Stratified fold of each example (deterministic: a probe refit on the same labels is the same)."""
    f = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = np.where(y == c)[0]
        f[idx] = np.random.default_rng(len(idx)).permutation(len(idx)) % n_folds
    return f


@dataclass(frozen=True)
class FitReport:
    cv_accuracy: float  # cross-validated accuracy of the probe on its examples (held-out folds)
    zeroshot_accuracy: float  # accuracy of the text classifier alone on the same examples
    examples: int
    prior_precision: float = 0.0  # λ: how firmly the probe was held to the text classifier
    # (N, C) calibrated probabilities of the examples from the folds that did not see them (what a
    # per-category threshold is chosen on: clipdesk.ops.auto.choose_threshold)
    held_out: np.ndarray | None = field(default=None, repr=False, compare=False)


def _fit_linear(data: ProbeData, y: np.ndarray, w: np.ndarray, balanced: bool, T0: float, b0: np.ndarray,
                lam: float, tau: float, alpha: float, beta: float, train: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """The MAP linear layer and bias on the examples ``train`` (default: all)."""
    C = len(data.classes)
    X = np.asarray(data.X, np.float32)
    if train is not None:
        X, y, w = X[train], y[train], w[train]
    P = _prototypes(np.asarray(data.text, np.float32), X, y, C, tau)
    offset = T0 * alpha * _cache(X, X, y, C, beta, leave_one_out=True) if alpha else np.zeros((len(y), C))
    neg = None
    if data.negatives is not None and len(data.negatives):
        Xn = np.asarray(data.negatives, np.float32)
        on = T0 * alpha * _cache(Xn, X, y, C, beta) if alpha else np.zeros((len(Xn), C))
        neg = (Xn, np.asarray(data.negative_of, np.int64), on, np.ones(len(Xn)))
    W, b = _map_fit(X, y, T0 * P, offset, lam, w, b0 if balanced else None, negatives=neg)
    return W, b, T0 * P


# (α, β) of the cache tried per fit, chosen by out-of-fold likelihood (the first: the default)
CACHE_CANDIDATES = ((CACHE_WEIGHT, CACHE_SHARPNESS), (10.0, 10.0), (30.0, 10.0), (100.0, 10.0))
SELECTION_SE = 2.0
# With this many examples in every class (each fold holds ≥ 3 of each out), the held-out
# likelihood is steady enough to choose on a looser guard
MANY_EXAMPLES = 16
SELECTION_SE_MANY = 1.0
# λ's floors tried per fit when the text's λ is below them (a weak text must not leave the fit
# unregularised), chosen like the cache, before it
REGULARISATION_FLOORS = (0.15, 0.4, 1.0)
CORRECTION_WEIGHTS = (1.0, 0.5, 0.0)  # tried in this order; the first best held-out likelihood wins


def _correction_weight(data: ProbeData, y: np.ndarray, w: np.ndarray, fair: np.ndarray, balanced: bool,
                       T0: float, b0: np.ndarray, lam: float, tau: float, alpha: float, beta: float) -> float:
    """How much the corrections weigh in the likelihood: the weight (of CORRECTION_WEIGHTS) under
    which the probe best predicts the *fair* examples it did not see (folds over those only; the
    corrections stay in every training fold). 0 keeps them as prototypes and cache keys only."""
    X = np.asarray(data.X, np.float32)
    C = len(data.classes)
    idx = np.where(fair)[0]
    n = min(CV_FOLDS, len(idx))
    if n < 2:
        return 1.0
    fold = np.random.default_rng(len(idx)).permutation(len(idx)) % n
    best = (np.inf, 1.0)
    for omega in CORRECTION_WEIGHTS:
        ww = w.copy()
        ww[~fair] *= omega
        nll = 0.0
        for f in range(n):
            te = idx[fold == f]
            tr = np.ones(len(y), bool)
            tr[te] = False
            W, b, _ = _fit_linear(data, y, ww, balanced, T0, b0, lam, tau, alpha, beta, train=tr)
            z = X[te] @ W.T + b + (T0 * alpha * _cache(X[te], X[tr], y[tr], C, beta) if alpha else 0.0)
            z = z - z.max(1, keepdims=True)
            ce = np.log(np.exp(z).sum(1)) - z[np.arange(len(te)), y[te]]
            nll += float((w[te] * ce).sum())
        if nll < best[0] - 1e-9:
            best = (nll, omega)
    return best[1]


def fit_probe(data: ProbeData, zeroshot_text: np.ndarray | None = None, meta: dict | None = None,
              folds: int = CV_FOLDS) -> tuple[Probe, FitReport]:
    """Train a probe on ``data``; report its cross-validated accuracy next to zero-shot's.

    The probe is a linear layer (plus the cache vote) with a Gaussian prior centred on the
    calibrated prototype rule (the text classifier with the examples' means, τ pseudo-shots), whose
    precision λ grows with how often the text alone is right on the examples
    (:func:`prior_precision`): the MAP fit moves away from the text as far as the evidence says,
    and the prior fades as examples accumulate (its weight is fixed while the data's grows).
    Probabilities are calibrated (temperature, and for concept-vs-rest a bias) on ``folds``-fold
    out-of-fold scores, so they are held-out probabilities; ``cv_accuracy`` is the accuracy of
    those out-of-fold predictions.

    ``zeroshot_text`` (C, dim) is the text classifier used for the zero-shot comparison (defaults
    to ``data.text``; for concept-vs-rest it holds a generic "photo" prompt for the rest).
    """
    if len(data.y) == 0:
        raise ValueError("no examples")
    if data.negatives is not None:
        neg, of = np.asarray(data.negatives), np.asarray(data.negative_of if data.negative_of is not None else [])
        if neg.ndim != 2 or neg.shape[1] != np.shape(data.X)[1] or of.shape != (len(neg),) \
                or (len(of) and (of.min() < 0 or of.max() >= len(data.classes))):
            raise ValueError(f"negatives of shape {neg.shape} with categories of shape {of.shape}")
        if len(neg) and len(data.classes) < 2:
            raise ValueError("negatives need at least two categories (an item is not A, so it is another)")
    y = np.asarray(data.y)
    C = len(data.classes)
    X = np.asarray(data.X, np.float32)
    # Class-balanced weights and a free bias are for concept vs rest only: there the rest is a
    # sample of arbitrary size. A text-less "none of these" class among several taught ones holds
    # the person's own rejections, so its examples count one by one like any bucket's, without a
    # bias: balanced, one rejection weighed as much as a whole bucket and its bias gave it a
    # bucket's share; with 3 + 3 examples one rejection took 69 % of the held-out items (issue 26).
    balanced = balanced_fit(data)
    w = _class_weights(y, C, balanced)
    zs_text = data.text if zeroshot_text is None else zeroshot_text
    right = (X @ np.asarray(zs_text, np.float32).T).argmax(1) == y
    zs = float((right * w).sum() / w.sum())
    # The prior's statistics come from the examples that are a fair sample: not the corrections,
    # chosen because the probe (and mostly the text) got them wrong (see the module docstring).
    fair = np.ones(len(y), bool)
    if data.corrected is not None:
        corrected = np.asarray(data.corrected, bool)
        if corrected.shape != y.shape:
            raise ValueError(f"'corrected' of shape {corrected.shape} for {len(y)} examples")
        if not corrected.all():
            fair = ~corrected
    tau, alpha, beta = TEXT_PSEUDO_SHOTS, CACHE_WEIGHT, CACHE_SHARPNESS
    # The prior mean: the prototype rule at its own leave-one-out temperature (its logit scale).
    fair_data = data if fair.all() else ProbeData(data.classes, data.text, X[fair], y[fair])

    def prior_scale(alpha: float, beta: float) -> tuple[float, np.ndarray]:
        return _fit_calibration(loo_scores(fair_data, tau, alpha, beta), y[fair], fit_bias=balanced, balanced=balanced)

    T0, b0 = prior_scale(alpha, beta)
    agree, judged = float((right * w)[fair].sum()), float(w[fair].sum())
    if data.negatives is not None and len(data.negatives):
        # a negative is a judgement on the text too: it agrees when the text does not pick the
        # category the item is not (without this a text that agrees with a few examples holds
        # the probe so firmly that "less like this" changes nothing)
        neg_right = (np.asarray(data.negatives, np.float32) @ np.asarray(zs_text, np.float32).T).argmax(1) \
            != np.asarray(data.negative_of)
        agree, judged = agree + float(neg_right.sum()), judged + len(neg_right)
    lam = prior_precision(agree / judged)
    if not fair.all():
        w = w.copy()
        w[~fair] *= _correction_weight(data, y, w, fair, balanced, T0, b0, lam, tau, alpha, beta)
    n_folds = min(folds, int(np.bincount(y).max()))
    if n_folds >= 2:
        # λ's floor, then the cache's weight and width: the candidate whose out-of-fold
        # probabilities are the most likely on the fair examples; the winner's folds calibrate.
        fold = _folds(y, n_folds)

        def out_of_fold(cand_alpha: float, cand_beta: float, cand_lam: float) -> tuple:
            cT0, cb0 = (T0, b0) if (cand_alpha, cand_beta) == (alpha, beta) else prior_scale(cand_alpha, cand_beta)
            oof = np.zeros((len(y), C), np.float32)
            for f in range(n_folds):
                tr, te = fold != f, fold == f
                W, b, _ = _fit_linear(data, y, w, balanced, cT0, cb0, cand_lam, tau, cand_alpha, cand_beta, train=tr)
                cache = cT0 * cand_alpha * _cache(X[te], X[tr], y[tr], C, cand_beta) if cand_alpha else 0.0
                oof[te] = X[te] @ W.T + cache + b
            T, bias = _fit_calibration(oof, y, fit_bias=balanced, balanced=balanced,
                                       temperatures=np.geomspace(0.05, 20.0, 40))
            p = softmax(T * oof + bias)[fair]
            nll = -w[fair] * np.log(np.clip(p[np.arange(len(p)), y[fair]], 1e-12, None))
            return nll, cand_alpha, cand_beta, cT0, cb0, oof, T, bias, cand_lam

        guard = SELECTION_SE_MANY if np.bincount(y, minlength=C).min() >= MANY_EXAMPLES else SELECTION_SE

        def replaces(cand: tuple, default: tuple, best: tuple) -> bool:
            # a candidate replaces the default only when it predicts the held-out examples better
            # by more than `guard` standard errors of the paired difference (few examples make
            # the choice noisy; the default is the rule that holds at small K), and beats the
            # best so far
            gain = default[0] - cand[0]
            return gain.mean() - guard * gain.std() / math.sqrt(len(gain)) > 0 and cand[0].sum() < best[0].sum()

        # First how firmly to hold the fit (λ's floor), then the cache's weight and width at that λ
        best = default = out_of_fold(alpha, beta, lam)
        for floor in REGULARISATION_FLOORS:
            if floor > lam:
                cand = out_of_fold(alpha, beta, floor)
                best = cand if replaces(cand, default, best) else best
        default = best
        for cand_alpha, cand_beta in CACHE_CANDIDATES[1:]:
            cand = out_of_fold(cand_alpha, cand_beta, default[8])
            best = cand if replaces(cand, default, best) else best
        _, alpha, beta, T0, b0, oof, T, bias, lam = best
    else:  # one example per class: no fold can hold one out; the prior's own leave-one-out
        # scores (closed form) stand in, already calibrated by T0
        b_prior = b0 if balanced else np.zeros(C, np.float32)
        oof = T0 * loo_scores(data, tau, alpha, beta) + b_prior
        T, bias = 1.0, np.zeros(C, np.float32)
    W, b, _ = _fit_linear(data, y, w, balanced, T0, b0, lam, tau, alpha, beta)
    probs = softmax(T * oof + bias)
    cv = float(((probs.argmax(1) == y) * w).sum() / w.sum())
    probe = Probe(list(data.classes), np.asarray(data.text, np.float32), X, y.astype(np.int64),
                  tau=tau, alpha=T0 * alpha, beta=beta, temperature=T, bias=(T * b + bias).astype(np.float32),
                  meta=dict(meta or {}), weights=W)
    return probe, FitReport(cv, zs, len(y), lam, held_out=probs.astype(np.float32))


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """How much a label would teach: 1 − (top probability − runner-up), in [0, 1]."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    part = np.sort(probabilities, axis=1)
    return 1.0 - (part[:, -1] - part[:, -2])
