"""Categories that keep applying: per-probe auto-apply settings, per-category thresholds chosen
from the person's own examples, and the run that applies them to photos not seen yet.

- **Threshold** (:func:`category_scores`, :func:`choose_threshold`): the lowest probability above
  which the photos the category would apply to are right at least ``precision`` of the time,
  with the recall there. Read on the library itself: its photos (a sample of a large one) with
  the probe's probabilities — cross-validated on the examples (temperature and bias) and shifted
  to the library's own mix of categories (:func:`prior_shift`) — as the chance each is right;
  the examples, scored by the folds that did not see them (:attr:`clipdesk.teach.probe.FitReport.held_out`),
  and the photos rejected in Review with the answer the person gave. Fewer than
  ``1 / (1 − precision)`` examples on either side is "too few to know" (:attr:`Threshold.needed`
  says how many more).
- **Settings and Inbox** live in the library folder (``auto.json``: versioned, written
  atomically, changed only under ``auto.lock``: :func:`update_store`). A setting holds the probe's
  precision, its thresholds, and the actions per category (a default for every category, and a
  category's own where the person chose one): write the category as an XMP keyword
  (:mod:`clipdesk.tags`), copy or move the photo into ``FOLDER/<category>/`` (:mod:`clipdesk.organise`).
- **A run** takes the photos indexed since the probe's last run (catalog ids above its
  high-water mark) and predicts them. Above the category's threshold the photo gets its
  category's actions — the keywords of the batch as one journaled operation, its sorting as one
  per destination folder (resumable with ``tags resume`` / ``sort resume``) — and the batch is
  recorded in ``auto.json`` (photo, category, probability); :func:`undo` (``clipdesk auto undo``)
  takes the whole batch back. Below the threshold the photo goes to the Inbox (a photo that
  needs a decision).
- **Applied categories are not labels.** A run records nothing in the catalog's labels: labels
  are what probes train on, and a probe trained on its own guesses learns its own mistakes. What
  a run applied is in the batch record, the keyword and the folder; what the person decides in
  the Inbox becomes a label (it teaches the probe).
"""
from __future__ import annotations

import errno
import json
import math
import os
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np

from clipdesk.errors import ClipdeskError, ProbeError
from clipdesk.indexer.errors import disk_full_error, is_disk_full
from clipdesk.indexer.files import O_CLOEXEC, O_NOFOLLOW, O_NONBLOCK, atomic_write, check_library_entry
from clipdesk.indexer.lock import _try_lock  # the library lock's one non-blocking flock/msvcrt try
from clipdesk.teach.probe import BACKGROUND, Probe, ProbeData, fit_probe, training_prior
from clipdesk.teaching import NONE_CLASS, negative_label

STORE = "auto.json"
STORE_VERSION = 2  # 2: actions per category (1: one set per probe, migrated on load)
LOCK = "auto.lock"
LOCK_WAIT_S = 60.0  # a run of a large batch holds the lock while it writes keywords and sorts
MAX_STORE_BYTES = 64 << 20
DEFAULT_PRECISION = 0.9


class AutoError(ClipdeskError):
    """An auto-apply setting or run that cannot go ahead; the message says why."""


@dataclass(frozen=True)
class Threshold:
    """Where a category is applied: ``threshold`` None when there are too few examples to know."""

    category: str
    precision: float  # the target
    threshold: float | None = None
    estimated_precision: float | None = None  # on the held-out examples above the threshold
    estimated_recall: float | None = None
    positives: int = 0
    negatives: int = 0
    needed: int = 0  # more examples (of the category or not of it) before a threshold is known

    @property
    def known(self) -> bool:
        return self.threshold is not None

    def describe(self) -> str:
        if not self.known:
            return (f"{self.category}: too few examples to know ({self.positives} in, {self.negatives} not); "
                    f"label about {self.needed} more")
        if self.estimated_precision is None:
            return f"{self.category}: no threshold reaches {self.precision:.0%} yet — add examples"
        return (f"{self.category}: auto-apply above {self.threshold:.2f} — about {self.estimated_precision:.0%} right, "
                f"finds about {self.estimated_recall:.0%}")


def min_examples(precision: float) -> int:
    """Examples needed on each side to tell ``precision`` from chance: 1 / (1 − precision)."""
    return max(3, math.ceil(1.0 / max(1e-6, 1.0 - precision) - 1e-9))


POOL_SAMPLE = 20_000  # library photos a threshold is read on (a seeded sample of larger libraries)
PRIOR_ITERATIONS = 200
PRIOR_STRENGTH = 100.0  # pseudo-photos at the examples' own mix (prior_shift)


def prior_shift(P: np.ndarray, prior: np.ndarray, iterations: int = PRIOR_ITERATIONS,
                tol: float = 1e-6, strength: float = PRIOR_STRENGTH) -> tuple[np.ndarray, np.ndarray]:
    """``(Q, prior')``: the probabilities ``P`` (n, C), calibrated to the class frequencies
    ``prior``, re-weighted to the frequencies of the photos they were computed on, estimated by
    expectation-maximisation (Saerens, Latinne & Decaestecker 2002). A probe taught with 8 examples
    of each category calibrates to 1 in C each; in a library where one category is 1 photo in 50
    its raw probabilities overstate it, and so would every precision read from them.

    The estimate is a MAP one: ``strength`` pseudo-photos at ``prior`` join the photos, so a small
    library (or a probe that can hardly tell its categories apart, whose likelihood is flat) moves
    it little — plain EM took a 20-photo library with a weak probe to 95 % one category."""
    P = np.asarray(P, np.float64)
    prior = np.asarray(prior, np.float64)
    if not len(P):
        return P, prior
    # a class without examples has no frequency its probabilities were calibrated to: it keeps
    # its probabilities as they are (shifting it from ~0 would multiply them without bound)
    free = prior > 1e-6
    base = np.where(free, prior, 1.0)

    def shifted(pi: np.ndarray) -> np.ndarray:
        Q = P * np.where(free, pi / base, 1.0)
        return Q / np.maximum(Q.sum(1, keepdims=True), 1e-300)

    pi = prior.copy()
    for _ in range(iterations):
        new = np.where(free, np.clip((shifted(pi).sum(0) + strength * prior) / (len(P) + strength), 1e-9, None),
                       prior)
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return shifted(pi), pi


@dataclass(frozen=True)
class CategoryScores:
    """What a category's threshold is read from (computed once per training; a precision is then
    a cheap cut, :meth:`threshold`): the photos the probe names this category (its top answer)
    with their probability ``p``, and ``right``, the chance each is right — 1 or 0 where the person
    said so (an example, held out of the fit that scores it; a photo rejected in Review), else its
    probability adjusted to the library's own mix of categories (:func:`prior_shift`).
    ``expected``: the photos of the category expected among all scored (the recall's base)."""

    category: str
    p: np.ndarray
    right: np.ndarray
    expected: float
    positives: int  # the person's examples of the category, and of everything else (rejections too)
    negatives: int

    def threshold(self, precision: float = DEFAULT_PRECISION, enough: bool = True) -> Threshold:
        return choose_threshold(self.p, self.right, precision, self.category, enough=enough,
                                expected=self.expected, examples=(self.positives, self.negatives))


def choose_threshold(p: np.ndarray, right: np.ndarray, precision: float = DEFAULT_PRECISION,
                     category: str = "", enough: bool = True, expected: float | None = None,
                     examples: tuple[int, int] | None = None) -> Threshold:
    """The lowest probability ``t`` such that the photos with ``p ≥ t`` are right at least
    ``precision`` of the time, with the share of the category found there (recall).

    ``p`` (n,): probabilities of the category; ``right`` (n,): whether each is the category, known
    (bool, 0/1) or expected (its calibrated probability); ``expected``: how many of the scored
    photos are the category (default ``right.sum()``). ``examples`` ``(in, not)``: the person's own
    examples on each side (default: ``right`` counted as labels). With ``enough`` (the app), fewer
    than :func:`min_examples` of them on a side is "too few to know".
    """
    p, right = np.asarray(p, np.float64), np.asarray(right, np.float64)
    pos, neg = examples if examples is not None else (int((right >= 0.5).sum()), int((right < 0.5).sum()))
    need = min_examples(precision)
    if enough and (pos < need or neg < need):
        return Threshold(category, precision, positives=pos, negatives=neg,
                         needed=max(0, need - pos) + max(0, need - neg))
    total = float(right.sum()) if expected is None else float(expected)
    if not len(p) or total <= 0:
        return Threshold(category, precision, positives=pos, negatives=neg, needed=need)
    order = np.argsort(-p, kind="stable")
    ps = p[order]
    tp = np.cumsum(right[order])
    prec = tp / np.arange(1, len(p) + 1)
    # a cut is only between distinct probabilities (ties go in together); the deepest that keeps
    # the precision (requiring it at every cut above too let one rejected photo at the very top
    # switch a category off; on the evaluation sets both rules reach the same precision)
    last_of_tie = np.r_[ps[1:] != ps[:-1], True]
    ok = np.flatnonzero((prec >= precision - 1e-12) & last_of_tie)
    if not len(ok):  # no cut reaches it: apply nothing (above every probability)
        return Threshold(category, precision, 1.0, None, 0.0, pos, neg)
    k = int(ok.max())
    return Threshold(category, precision, float(ps[k]), float(prec[k]), float(min(1.0, tp[k] / total)), pos, neg)


def category_scores(probe: Probe, pool: np.ndarray | None = None, rejected: dict[str, np.ndarray] | None = None,
                    held_out: np.ndarray | None = None) -> dict[str, CategoryScores]:
    """Per category of ``probe``, what its threshold is read from (:class:`CategoryScores`).

    ``pool`` (n, dim): the library's photos that are neither examples nor rejections (a sample
    of a large library); the photos a threshold will apply to, so a precision is estimated on
    them, through the probe's probabilities shifted to their mix of categories. The examples (a
    refit gives each its probability from the folds that did not see it) and ``rejected``
    (category -> (m, dim) photos rejected from it in Review, scored by the probe itself: they are
    not in its fit) join them with what the person said they are. The costly part of a threshold;
    :meth:`CategoryScores.threshold` on it is cheap for any precision. ``held_out``: the examples'
    held-out probabilities when the fit that made ``probe`` is at hand (its
    :attr:`~clipdesk.teach.probe.FitReport.held_out`), else the examples are refitted for them.
    """
    data = ProbeData(list(probe.classes), probe.text, probe.keys, probe.key_labels)
    held = fit_probe(data)[1].held_out if held_out is None else held_out
    labels = np.asarray(probe.key_labels)
    C = len(probe.classes)
    if pool is not None and len(pool):
        P = probe.probabilities(np.asarray(pool, np.float32))
        Q, _ = prior_shift(P, training_prior(data))
    else:
        P = Q = np.zeros((0, C))
    top_pool, top_held = P.argmax(1), held.argmax(1)
    out = {}
    for c, name in enumerate(probe.classes):
        if name in (BACKGROUND, NONE_CLASS):
            continue
        sel, mine = top_pool == c, top_held == c
        p = [P[sel, c], held[mine, c]]
        right = [Q[sel, c], (labels[mine] == c).astype(np.float64)]
        R = (rejected or {}).get(name)
        n_rejected = 0
        if R is not None and len(R):
            PR = probe.probabilities(np.asarray(R, np.float32))
            p.append(PR[PR.argmax(1) == c, c])
            right.append(np.zeros(int((PR.argmax(1) == c).sum())))
            n_rejected = len(R)
        positives = int((labels == c).sum())
        out[name] = CategoryScores(name, np.concatenate(p), np.concatenate(right),
                                   float(Q[:, c].sum()) + positives, positives,
                                   int((labels != c).sum()) + n_rejected)
    return out


def category_thresholds(probe: Probe, precision: float = DEFAULT_PRECISION, pool: np.ndarray | None = None,
                        rejected: dict[str, np.ndarray] | None = None) -> dict[str, Threshold]:
    """A threshold per category of ``probe`` (see :func:`category_scores`)."""
    return {name: s.threshold(precision) for name, s in category_scores(probe, pool, rejected).items()}


def library_pool(lib, probe: Probe, labels: dict[str, list[int]], limit: int = POOL_SAMPLE) -> np.ndarray:
    """(n, dim) the library photos a threshold of ``probe`` is read on: every embedded photo that
    is not one of its examples or rejections (those come with their answers; ``labels``: the
    catalog's), at most ``limit`` of them (a sample, the same one each time for the same library)."""
    taught = set(probe.classes) | {negative_label(c) for c in probe.classes}
    skip = {i for label, ids in labels.items() if label in taught for i in ids}
    ids = [int(i) for i in lib.catalog.filter_ids() if int(i) not in skip]
    if len(ids) > limit:
        ids = sorted(np.random.default_rng(len(ids)).choice(ids, limit, replace=False).tolist())
    if not ids:
        return np.zeros((0, probe.keys.shape[1]), np.float32)
    return lib._exact_vectors(ids)  # the memory-mapped vector file when current, else the catalog


def library_scores(lib, probe: str) -> dict[str, CategoryScores]:
    """:func:`category_scores` of the library's probe ``probe``, read on the library's photos, with
    the photos rejected in Review (what the app computes once per training, then moves a
    precision slider over)."""
    return _library_scores(lib, lib.load_probe(probe))


def _library_scores(lib, probe: Probe) -> dict[str, CategoryScores]:
    labels = lib.catalog.labels()  # read once: the pool leaves out what the rejections bring in
    return category_scores(probe, library_pool(lib, probe, labels), _rejected(lib, probe, labels))


# ---------------------------------------------------------------------- the store
@dataclass
class Actions:
    """What happens to a photo applied to a category, beyond recording it in the batch."""

    write_tags: bool = False  # the category as an XMP keyword (sidecar)
    sort_into: str | None = None  # copy or move the photo into sort_into/<category>/
    mode: str = "copy"

    @property
    def any(self) -> bool:
        return self.write_tags or bool(self.sort_into)

    def describe(self) -> str:
        acts = (["keyword"] if self.write_tags else []) + ([f"{self.mode} into {self.sort_into}"] if self.sort_into else [])
        return ", ".join(acts) or "nothing written"


@dataclass
class AutoSetting:
    probe: str
    precision: float = DEFAULT_PRECISION
    default: Actions = field(default_factory=Actions)  # for every category without its own
    categories: dict[str, Actions] = field(default_factory=dict)  # a category's own actions
    seen: int = 0  # catalog ids up to this have been through a run
    calibrated_for: float = 0.0  # the probe's 'created' time the thresholds were chosen for
    thresholds: dict[str, dict] = field(default_factory=dict)

    def actions(self, category: str) -> Actions:
        return self.categories.get(category, self.default)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutoSetting:
        d = dict(d)
        d["default"] = Actions(**d.get("default", {}))
        d["categories"] = {str(k): Actions(**v) for k, v in d.get("categories", {}).items()}
        return cls(**d)


def _migrate_v1(d: dict) -> dict:
    """Version 1 held one set of actions per probe: it becomes the probe's default."""
    for v in d.get("auto", {}).values():
        v["default"] = {k: v.pop(k) for k in ("write_tags", "sort_into", "mode") if k in v}
    for b in d.get("batches", []):
        b["sort_operations"] = [op for op in [b.pop("sort_operation", None)] if op]
    d["version"] = 2
    return d


def _store_path(lib) -> str:
    return os.path.join(lib.folder, STORE)


def load_store(lib) -> dict:
    """``{"version", "auto": {probe: AutoSetting}, "inbox": [...], "batches": [...]}``. Reading needs
    no lock (the file is replaced atomically); changing it does: :func:`update_store`."""
    path = _store_path(lib)
    empty = {"version": STORE_VERSION, "auto": {}, "inbox": [], "batches": []}
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return empty
    except OSError as e:
        raise AutoError(f"Cannot read the auto-apply settings {path}: {e.strerror or e}.") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_STORE_BYTES + 1)
    try:
        if len(raw) > MAX_STORE_BYTES:
            raise ValueError("too large")
        d = json.loads(raw.decode("utf-8"))
        if not isinstance(d, dict) or type(d.get("version")) is not int:
            raise ValueError("not a settings object")
        if d["version"] > STORE_VERSION:
            raise AutoError(f"{path} was written by a newer clipdesk; upgrade clipdesk.")
        if d["version"] == 1:
            d = _migrate_v1(d)
        d["auto"] = {k: AutoSetting.from_dict(v) for k, v in d.get("auto", {}).items()}
        d.setdefault("inbox", [])
        d.setdefault("batches", [])
        return d
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise AutoError(f"The auto-apply settings {path} are damaged ({str(e)[:80]}); "
                        "remove the file to start again.") from None


def save_store(lib, store: dict) -> None:
    out = dict(store, version=STORE_VERSION, auto={k: v.as_dict() for k, v in store["auto"].items()})
    data = json.dumps(out, indent=1).encode("utf-8")
    atomic_write(_store_path(lib), lambda f: f.write(data))


_held = threading.local()  # lock path -> depth, per thread: a holder may take it again


@contextmanager
def store_lock(lib, wait: float | None = None):
    """Hold the lock of ``auto.json`` (``FOLDER/auto.lock``): one writer at a time across the app's
    threads (watcher, jobs) and processes (the app, ``clipdesk auto run``, ``clipdesk watch``).

    An flock on a file descriptor of its own per holder, so threads of one process exclude each
    other too; the system releases it when a process dies. Re-entrant within a thread. Waits at most
    ``wait`` seconds (default :data:`LOCK_WAIT_S`), then raises :class:`AutoError` naming the holder.
    """
    path = os.path.join(lib.folder, LOCK)
    depth = _held.__dict__.setdefault("depth", {})
    if depth.get(path):
        depth[path] += 1
        try:
            yield
        finally:
            depth[path] -= 1
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP or os.path.islink(path):
            check_library_entry(path)  # the clear "is a symbolic link" error
        if is_disk_full(e):
            raise disk_full_error(lib.folder, "create the auto-apply lock") from None
        raise AutoError(f"Cannot change the auto-apply settings in {lib.folder}: {e.strerror or e}.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            check_library_entry(path)
            raise AutoError(f"The auto-apply lock {path} is not a regular file.")
        deadline = time.monotonic() + (LOCK_WAIT_S if wait is None else wait)
        pause = 0.002
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise AutoError(f"The auto-apply settings of {lib.folder} stayed busy (PID {holder} is applying or "
                                "changing them); try again in a moment.")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:
            pass  # held all the same; only the holder's PID goes unsaid
        depth[path] = 1
        try:
            yield
        finally:
            del depth[path]
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def update_store(lib, wait: float | None = None):
    """Read-modify-write of ``auto.json`` under :func:`store_lock`: yields the store, saves it
    when the block ends without an exception."""
    with store_lock(lib, wait):
        store = load_store(lib)
        yield store
        save_store(lib, store)


def add(lib, probe: str, precision: float = DEFAULT_PRECISION, write_tags: bool = False,
        sort_into: str | None = None, mode: str = "copy", category: str | None = None
        ) -> tuple[AutoSetting, dict[str, Threshold]]:
    """Switch probe ``probe`` to keep applying, or change its options; returns the setting and its
    thresholds. The actions (keyword, sort) are the default of every category, or with ``category``
    that category's own. A probe switched on now does not touch the photos indexed before
    (``seen`` starts at the newest catalog id); one already on keeps what it has seen and the other
    categories' actions (the app's switch, options and slider call this on every change)."""
    if not 0.5 <= precision < 1.0:
        raise AutoError(f"The precision must be between 0.5 and 1 (got {precision}).")
    if mode not in ("copy", "move"):
        raise AutoError(f"Unknown sort mode {mode!r} (use copy or move).")
    loaded = lib.load_probe(probe)  # refuses a missing or mismatched probe now, with its own message
    if category is not None and (category not in loaded.classes or category in (BACKGROUND, NONE_CLASS)):
        names = ", ".join(c for c in loaded.classes if c not in (BACKGROUND, NONE_CLASS))
        raise AutoError(f"Probe '{probe}' has no category '{category}' (it has {names}).")
    if sort_into:
        sort_into = os.path.realpath(os.path.abspath(os.path.expanduser(sort_into)))
    actions = Actions(write_tags, sort_into or None, mode)
    setting = AutoSetting(probe, precision)
    thresholds = _calibrate(lib, setting)  # the refit: outside the lock
    with update_store(lib) as store:
        old = store["auto"].get(probe)
        if old is None:
            setting.seen = int(max(lib.catalog.filter_ids(), default=0))
        else:
            setting.seen, setting.default, setting.categories = old.seen, old.default, dict(old.categories)
        if category is None:
            setting.default = actions
        else:
            setting.categories[category] = actions
        store["auto"][probe] = setting
    return setting, thresholds


def configure(lib, probe: str, precision: float = DEFAULT_PRECISION, write_tags: bool = False,
              sort_into: str | None = None, mode: str = "copy", category: str | None = None
              ) -> tuple[AutoSetting, dict[str, Threshold]]:
    """:func:`add` (the name the app's row calls it by)."""
    return add(lib, probe, precision, write_tags, sort_into, mode, category)


def remove(lib, probe: str) -> None:
    with update_store(lib) as store:
        if probe not in store["auto"]:
            raise AutoError(f"Probe '{probe}' is not applied automatically ('clipdesk auto list').")
        del store["auto"][probe]
        store["inbox"] = [e for e in store["inbox"] if e.get("probe") != probe]


def _rejected(lib, probe: Probe, labels: dict[str, list[int]]) -> dict[str, np.ndarray]:
    rejected = {}
    for name in probe.classes:
        ids = labels.get(negative_label(name), [])
        if ids:
            rejected[name] = lib.catalog.vectors_for(ids)
    return rejected


def _calibrate(lib, setting: AutoSetting) -> dict[str, Threshold]:
    probe = lib.load_probe(setting.probe)
    got = {name: scores.threshold(setting.precision) for name, scores in _library_scores(lib, probe).items()}
    setting.thresholds = {k: asdict(v) for k, v in got.items()}
    setting.calibrated_for = float(probe.meta.get("created", 0.0))
    return got


def settle_inbox(lib, paths) -> int:
    """Take the photos at ``paths`` out of the Inbox (the person decided about them: labelled,
    accepted or rejected); returns how many entries left."""
    gone = set(paths)
    with update_store(lib) as store:
        keep = [e for e in store["inbox"] if e.get("path") not in gone]
        n = len(store["inbox"]) - len(keep)
        store["inbox"] = keep
    return n


@dataclass
class RunReport:
    probe: str
    photos: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # category -> photos
    inbox: int = 0
    tags_operation: str | None = None
    sort_operations: list[str] = field(default_factory=list)  # one per (folder, copy/move) chosen
    problems: list[str] = field(default_factory=list)
    verbs: dict[str, str] = field(default_factory=dict)  # category -> "tagged" / "sorted as" / "applied"

    @property
    def sort_operation(self) -> str | None:
        return self.sort_operations[0] if self.sort_operations else None

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        done = ", ".join(f"{n} {c}" for c, n in self.applied.items()) or "none applied"
        text = f"{self.probe}: {self.photos} new photos: {done}, {self.inbox} in the Inbox"
        return text + "".join(f"\n  {p}" for p in self.problems)


def run(lib, probes: list[str] | None = None) -> list[RunReport]:
    """Apply every auto probe (or ``probes``) to the photos indexed since its last run.

    Each probe's batch runs under :func:`store_lock`, so the app's watcher, its jobs and a
    ``clipdesk`` process never lose each other's changes nor apply the same photos twice. A probe
    that cannot run (deleted, trained with another model, sort folder gone or read-only) is
    reported in its :class:`RunReport` and left for the next run; the others still run.
    """
    reports = []
    for name in list(load_store(lib)["auto"]):
        if probes and name not in probes:
            continue
        with update_store(lib) as store:
            setting = store["auto"].get(name)
            if setting is None:
                continue  # removed since
            rep = RunReport(name)
            reports.append(rep)
            _run_probe(lib, store, setting, rep)
    return reports


def _run_probe(lib, store: dict, setting: AutoSetting, rep: RunReport) -> None:
    from clipdesk import organise, tags

    name = setting.probe
    try:
        probe = lib.load_probe(name)
    except ProbeError as e:
        rep.problems.append(f"{e} Auto-apply of '{name}' is paused ('clipdesk auto remove {name}' to stop it).")
        return
    if float(probe.meta.get("created", 0.0)) != setting.calibrated_for:
        _calibrate(lib, setting)  # retrained since: its thresholds are chosen again
    ids = [int(i) for i in lib.catalog.filter_ids() if int(i) > setting.seen]
    if not ids:
        return
    info = lib._paths(ids)
    ids = [i for i in ids if i in info and os.path.isfile(info[i].path)]
    rep.photos = len(ids)
    rows, applied, inbox = [], [], []
    if ids:
        probs = probe.probabilities(lib.catalog.vectors_for(ids))
        for i, pr in zip(ids, probs):
            c = int(pr.argmax())
            cat = probe.classes[c]
            t = setting.thresholds.get(cat, {}).get("threshold")
            if cat in (BACKGROUND, NONE_CLASS) and BACKGROUND in probe.classes:
                continue  # concept vs rest: the rest is neither applied nor asked about
            if t is not None and pr[c] >= t and cat != NONE_CLASS:
                applied.append((i, cat, float(pr[c])))
                rows.append(_Row(info[i].path, cat, float(pr[c])))
                rep.applied[cat] = rep.applied.get(cat, 0) + 1
                acts = setting.actions(cat)
                rep.verbs[cat] = "tagged" if acts.write_tags else "sorted as" if acts.sort_into else "applied"
            else:
                inbox.append({"id": i, "path": info[i].path, "probe": name, "category": cat,
                              "probability": round(float(pr[c]), 4)})
                rep.inbox += 1
    try:
        # every plan first (a sort folder that vanished stops the batch before anything is written)
        tagged = {r.path: [r.label] for r in rows if setting.actions(r.label).write_tags}
        tag_plan = tags.plan_write(tagged) if tagged else None
        groups: dict[tuple[str, str], list[_Row]] = {}
        for r in rows:
            a = setting.actions(r.label)
            if a.sort_into:
                groups.setdefault((a.sort_into, a.mode), []).append(r)
        sort_plans = [organise.plan_sort(lib, group, into, mode) for (into, mode), group in groups.items()]
        if tag_plan is not None:
            rep.problems += [f"{p.path}: {p.reason}" for p in tag_plan.problems]
            rep.tags_operation = tags.apply_write(lib, tag_plan, f"auto {name}").operation
        for plan in sort_plans:
            rep.problems += [f"{p.path}: {p.reason}" for p in plan.problems]
            rep.sort_operations.append(organise.apply_sort(lib, plan).operation)
    except ClipdeskError as e:
        # the journal keeps what was done (resumable with 'tags resume'/'sort resume' or
        # undoable); the photos stay unseen so the next run offers them again
        rep.problems.append(str(e))
        rep.inbox = 0
        return
    store["inbox"] += inbox
    setting.seen = max([setting.seen] + ids)
    store["batches"].append({"probe": name, "ids": ids, "applied": [list(a) for a in applied],
                             "tags_operation": rep.tags_operation, "sort_operations": rep.sort_operations})
    store["batches"] = store["batches"][-100:]


def undo(lib) -> dict:
    """Undo the newest batch: its sorting (photos back, copies removed), then its keywords (sidecars
    restored exactly), then its record and Inbox entries; the photos count as not seen again only
    if the probe is re-added. Returns what was undone."""
    from clipdesk import organise, tags

    with update_store(lib) as store:
        if not store["batches"]:
            raise AutoError("No auto-apply batch to undo.")
        batch = store["batches"][-1]
        done = {"probe": batch["probe"], "applied": len(batch["applied"])}
        sorts = [organise.undo(lib, op).as_dict() for op in reversed(batch.get("sort_operations") or [])]
        if sorts:
            done["sort"] = sorts[0] if len(sorts) == 1 else sorts
        if batch.get("tags_operation"):
            done["tags"] = tags.undo(lib, batch["tags_operation"]).as_dict()
        store["batches"].pop()
        ids = set(batch.get("ids", []))
        store["inbox"] = [e for e in store["inbox"] if not (e.get("probe") == batch["probe"] and e.get("id") in ids)]
    return done


@dataclass(frozen=True)
class _Row:  # what organise.plan_sort reads of a classified photo
    path: str
    label: str
    probability: float
