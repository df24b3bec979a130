"""Few-shot probes: teach clipdesk a category from a handful of labelled photos.

The probe starts from what the text encoder already knows and moves away from it only as far as
the examples justify. Each category c has

* a **prototype** ``P_c = normalise(τ·t_c + Σ x_i)``: the zero-shot text vector ``t_c`` counted as
  ``τ`` pseudo-examples plus the sum of the category's example embeddings ``x_i``. With no example
  it *is* the zero-shot classifier; as examples accumulate their mean takes over at the rate
  ``K / (τ + K)`` — a rule that follows from the number of shots, not a tuned blend. ``τ = 4``
  because zero-shot CLIP matches a 4-shot linear probe (Radford et al., 2021, fig. 6).
* a **cache** term (Tip-Adapter, Zhang et al. 2022): ``α · mean_i exp(-β (1 - x·x_i))``, a sharp
  kernel vote of the examples, which lets a category hold several distinct looks that one
  prototype averages away.

A category without text (the "rest of the library" when one concept is taught) has a prototype
made of sampled background photos only.

Scores become probabilities by a softmax with a temperature (and, for concept-vs-rest, a bias)
fitted by maximum likelihood on *leave-one-out* scores of the examples, so the probabilities are
calibrated on held-out data; for concept-vs-rest the fit weights both classes equally, so 0.5
means "as likely as not" in every probe and one threshold means the same thing across probes.
Leave-one-out scores are closed-form here (remove the example from its own prototype sum and
cache), so cross-validated accuracy is cheap and honest.

Methods compared on ``shared/data/fewshot-proxy.npz`` (``clipdesk eval fewshot``) before this one
was kept: plain logistic regression (far below zero-shot at K ≤ 4), logistic regression
initialised at and L2-pulled toward the text weights (≈ zero-shot at K = 1, −0.5 pt at K = 4 vs
this), kernel ridge regression with the zero-shot scores as prior mean (below zero-shot at
K = 1–4), an empirical-Bayes estimate of τ (worse: noisy at small K), leave-one-out selection of
τ and α on the shots (worse than the fixed rule: LOO on 1–8 shots is too noisy to choose with).
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
BACKGROUND = "(rest of the library)"
FORMAT_VERSION = 1

# A probe file is untrusted input (it may be hand-made, truncated or hostile): these bound what
# loading it may allocate, checked against the zip directory and the .npy headers before any read.
MAX_PROBE_FILE = 256 << 20  # bytes on disk
MAX_PROBE_DATA = 256 << 20  # bytes of all arrays together, uncompressed
MAX_META_CHARS = 1 << 20
MAX_CLASSES = 10_000
MAX_DIM = 8192
_MEMBERS = ("text", "keys", "key_labels", "bias", "meta")
# Parameters outside these ranges cannot come from fit_probe and would overflow the scores.
_PARAM_RANGES = {"tau": (0.0, 1e6), "alpha": (0.0, 1e3), "beta": (0.0, 1e3), "temperature": (1e-6, 1e4)}
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

    def __post_init__(self) -> None:
        if len(self.bias) != len(self.classes):
            self.bias = np.zeros(len(self.classes), np.float32)
        self._prototypes = _prototypes(self.text, self.keys, self.key_labels, len(self.classes), self.tau)
        self._counts = np.bincount(self.key_labels, minlength=len(self.classes)).astype(np.float32)

    # ------------------------------------------------------------------ prediction
    def scores(self, features: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """Raw scores (n, C) of L2-normalised ``features`` (n, dim)."""
        C = len(self.classes)
        out = np.empty((len(features), C), np.float32)
        # Memory stays bounded whatever the number of keys: blocks of at most _SCORE_BLOCK floats.
        # The per-class kernel means are one matrix product with a (keys × C) one-hot when that is
        # small, else sums over the keys sorted by class (no one-hot of unbounded size).
        chunk = max(1, min(chunk, _SCORE_BLOCK // max(len(self.keys), C, 1)))
        inv = 1.0 / np.maximum(self._counts, 1.0)
        if len(self.keys) * C <= _ONEHOT_LIMIT:
            onehot = np.eye(C, dtype=np.float32)[self.key_labels] * inv
            keys = self.keys
        else:
            order = np.argsort(self.key_labels, kind="stable")
            keys = self.keys[order]
            present, starts = np.unique(self.key_labels[order], return_index=True)
        for i in range(0, len(features), chunk):
            f = np.asarray(features[i:i + chunk], np.float32)
            s = f @ self._prototypes.T
            if self.alpha and len(keys):
                kernel = np.exp(-self.beta * (1.0 - f @ keys.T))
                if len(self.keys) * C <= _ONEHOT_LIMIT:
                    s += self.alpha * (kernel @ onehot)
                else:
                    s[:, present] += self.alpha * np.add.reduceat(kernel, starts, axis=1) * inv[present]
            out[i:i + chunk] = s
        return out

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (n, C)."""
        return softmax(self.temperature * self.scores(features) + self.bias)

    # ------------------------------------------------------------------ storage (no pickle)
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = dict(self.meta, classes=self.classes, tau=self.tau, alpha=self.alpha, beta=self.beta,
                    temperature=self.temperature, format=FORMAT_VERSION)
        return {"text": self.text.astype(np.float32), "keys": self.keys.astype(np.float32),
                "key_labels": self.key_labels.astype(np.int64), "bias": self.bias.astype(np.float32),
                "meta": np.array(json.dumps(meta))}

    @classmethod
    def from_arrays(cls, arrays) -> Probe:
        """A probe from its stored arrays, every field checked (:class:`ProbeDataError` if bad)."""
        for name in _MEMBERS:
            if name not in arrays:
                raise ProbeDataError(f"no '{name}' array")
        meta = _check_meta(arrays["meta"])
        classes = meta.pop("classes")
        params = {k: meta.pop(k) for k in _PARAM_RANGES}
        meta.pop("format", None)
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
        return cls(classes, text, keys.reshape(-1, text.shape[1]), labels.astype(np.int64), bias=bias,
                   meta=meta, **params)


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
            if set(infos) != expected:
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
    if entries > 2 * len(_MEMBERS) or cd_size > 64 * 1024:
        raise ProbeDataError(f"unexpected zip directory ({entries} entries)")
    f.seek(0)


_ALLOWED_DTYPES = {"text": "f", "keys": "f", "bias": "f", "key_labels": "iu", "meta": "U"}


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


def _fit_calibration(scores: np.ndarray, y: np.ndarray, fit_bias: bool, balanced: bool
                     ) -> tuple[float, np.ndarray]:
    """Temperature (and bias) maximising the (class-balanced) likelihood of held-out scores."""
    C = scores.shape[1]
    w = np.ones(len(y), np.float64)
    if balanced:
        counts = np.bincount(y, minlength=C).astype(np.float64)
        w = (len(y) / (C * np.maximum(counts, 1)))[y]
    onehot = np.eye(C)[y]
    # A grid over the temperature (the likelihood is unimodal in it) and, per temperature, plain
    # gradient steps on the bias, where the problem is convex.
    best = (np.inf, 10.0, np.zeros(C))
    for T in np.geomspace(1.0, 300.0, 40):
        b = np.zeros(C)
        for _ in range(50 if fit_bias else 0):
            p = softmax(T * scores + b)
            b -= 0.5 * ((p - onehot) * w[:, None]).sum(0) / w.sum()
        p = softmax(T * scores + b)
        nll = -(w * np.log(np.clip((p * onehot).sum(1), 1e-12, None))).sum() / w.sum()
        if nll < best[0]:
            best = (nll, float(T), b.copy())
    return best[1], best[2].astype(np.float32)


@dataclass(frozen=True)
class FitReport:
    cv_accuracy: float  # leave-one-out accuracy of the probe on its examples
    zeroshot_accuracy: float  # accuracy of the text classifier alone on the same examples
    examples: int


def fit_probe(data: ProbeData, zeroshot_text: np.ndarray | None = None, meta: dict | None = None
              ) -> tuple[Probe, FitReport]:
    """Train a probe on ``data``; also report its LOO accuracy next to zero-shot's.

    ``zeroshot_text`` (C, dim) is the text classifier used for the zero-shot comparison (defaults
    to ``data.text``; for concept-vs-rest it holds a generic "photo" prompt for the rest).
    """
    if len(data.y) == 0:
        raise ValueError("no examples")
    y = np.asarray(data.y)
    has_text = data.has_text
    balanced = not has_text.all()  # concept vs rest: the background sample size is arbitrary
    scores = loo_scores(data)
    T, b = _fit_calibration(scores, y, fit_bias=balanced, balanced=balanced)
    probs = softmax(T * scores + b)
    weights = np.ones(len(y))
    if balanced:
        counts = np.bincount(y, minlength=len(data.classes))
        weights = 1.0 / counts[y]
    cv = float(((probs.argmax(1) == y) * weights).sum() / weights.sum())
    zs_text = data.text if zeroshot_text is None else zeroshot_text
    zs_pred = (data.X @ zs_text.T).argmax(1)
    zs = float(((zs_pred == y) * weights).sum() / weights.sum())
    probe = Probe(list(data.classes), np.asarray(data.text, np.float32), np.asarray(data.X, np.float32),
                  y.astype(np.int64), temperature=T, bias=b, meta=dict(meta or {}))
    return probe, FitReport(cv, zs, int(len(y)))


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """How much a label would teach: 1 − (top probability − runner-up), in [0, 1]."""
    if probabilities.shape[1] < 2:
        return np.zeros(len(probabilities))
    part = np.sort(probabilities, axis=1)
    return 1.0 - (part[:, -1] - part[:, -2])
