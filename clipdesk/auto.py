"""Categories that keep applying: per-probe auto-apply settings, per-category thresholds chosen
from the person's own examples, and the run that applies them to photos not seen yet.

- **Threshold** (:func:`choose_threshold`): from the probe's examples scored by the folds that
  did not see them (:attr:`clipdesk.probe.FitReport.held_out`) plus the photos rejected from the
  category in Review, the lowest probability above which the category's examples are right at
  least ``precision`` of the time, with the recall there. Fewer than ``1 / (1 − precision)``
  examples on either side is "too few to know" (:attr:`Threshold.needed` says how many more).
- **Settings and Inbox** live in the library folder (``auto.json``: versioned, written
  atomically). A run takes the photos indexed since the probe's last run (catalog ids above its
  high-water mark), predicts them, and above the category's threshold records the label, writes
  the XMP keyword (:mod:`clipdesk.tags`) and sorts the photo (:mod:`clipdesk.organise`), each as
  one journaled operation of the batch (resumable with ``tags resume`` / ``sort resume``), and
  :func:`undo` (``clipdesk auto undo``) takes the whole batch back; below the threshold the
  photo goes to the Inbox (a photo that needs a decision).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from clipdesk.errors import ClipdeskError, ProbeError
from clipdesk.indexer.files import atomic_write
from clipdesk.probe import BACKGROUND, Probe, ProbeData, fit_probe
from clipdesk.teaching import NONE_CLASS, negative_label

STORE = "auto.json"
STORE_VERSION = 1
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
        return (f"{self.category}: auto-apply above {self.threshold:.2f} — about {self.estimated_precision:.0%} right, "
                f"finds about {self.estimated_recall:.0%}")


def min_examples(precision: float) -> int:
    """Examples needed on each side to tell ``precision`` from chance: 1 / (1 − precision)."""
    return max(3, math.ceil(1.0 / max(1e-6, 1.0 - precision) - 1e-9))


def choose_threshold(p: np.ndarray, member: np.ndarray, precision: float = DEFAULT_PRECISION,
                     category: str = "", enough: bool = True) -> Threshold:
    """The lowest probability ``t`` such that the items with ``p ≥ t`` are members at least
    ``precision`` of the time, with the share of members found there (recall).

    ``p`` (n,): held-out probabilities of the category; ``member`` (n,) bool. With ``enough``
    (the app), fewer than :func:`min_examples` members or non-members give "too few to know".
    """
    p, member = np.asarray(p, np.float64), np.asarray(member, bool)
    pos, neg = int(member.sum()), int((~member).sum())
    need = min_examples(precision)
    if enough and (pos < need or neg < need):
        return Threshold(category, precision, positives=pos, negatives=neg,
                         needed=max(0, need - pos) + max(0, need - neg))
    if not pos:
        return Threshold(category, precision, positives=pos, negatives=neg, needed=need)
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(member[order])
    prec = tp / np.arange(1, len(p) + 1)
    # a cut is only between distinct probabilities: ties go in together
    last_of_tie = np.r_[p[order][1:] != p[order][:-1], True]
    ok = np.flatnonzero((prec >= precision - 1e-12) & last_of_tie)
    if not len(ok):  # no cut reaches it: apply nothing (above every probability)
        return Threshold(category, precision, 1.0, None, 0.0, pos, neg)
    k = int(ok.max())
    return Threshold(category, precision, float(p[order][k]), float(prec[k]), float(tp[k] / pos), pos, neg)


def category_scores(probe: Probe, rejected: dict[str, np.ndarray] | None = None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per category of ``probe``: (p (n,), member (n,) bool) — its examples' held-out probabilities
    (a refit on its stored examples) and ``rejected`` (category -> (m, dim) photos rejected from it
    in Review, scored by the probe itself: they cannot be held out of a fit they are not in). The
    costly part of a threshold; :func:`choose_threshold` on it is cheap for any precision."""
    data = ProbeData(list(probe.classes), probe.text, probe.keys, probe.key_labels)
    _, report = fit_probe(data)
    held = report.held_out
    out = {}
    for c, name in enumerate(probe.classes):
        if name in (BACKGROUND, NONE_CLASS):
            continue
        p, member = held[:, c], probe.key_labels == c
        R = (rejected or {}).get(name)
        if R is not None and len(R):
            p = np.concatenate([p, probe.probabilities(np.asarray(R, np.float32))[:, c]])
            member = np.concatenate([member, np.zeros(len(R), bool)])
        out[name] = (p, member)
    return out


def category_thresholds(probe: Probe, precision: float = DEFAULT_PRECISION,
                        rejected: dict[str, np.ndarray] | None = None) -> dict[str, Threshold]:
    """A threshold per category of ``probe`` (see :func:`category_scores`)."""
    return {name: choose_threshold(p, member, precision, name)
            for name, (p, member) in category_scores(probe, rejected).items()}


def library_scores(lib, probe: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """:func:`category_scores` of the library's probe ``probe`` with the photos rejected in Review
    (what the app computes once per training, then moves a precision slider over)."""
    loaded = lib.load_probe(probe)
    return category_scores(loaded, _rejected(lib, loaded))


# ---------------------------------------------------------------------- the store
@dataclass
class AutoSetting:
    probe: str
    precision: float = DEFAULT_PRECISION
    write_tags: bool = False
    sort_into: str | None = None
    mode: str = "copy"
    seen: int = 0  # catalog ids up to this have been through a run
    calibrated_for: float = 0.0  # the probe's 'created' time the thresholds were chosen for
    thresholds: dict[str, dict] = field(default_factory=dict)


def _store_path(lib) -> str:
    return os.path.join(lib.folder, STORE)


def load_store(lib) -> dict:
    """``{"version", "auto": {probe: AutoSetting}, "inbox": [...], "batches": [...]}``."""
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
        d["auto"] = {k: AutoSetting(**v) for k, v in d.get("auto", {}).items()}
        d.setdefault("inbox", [])
        d.setdefault("batches", [])
        return d
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise AutoError(f"The auto-apply settings {path} are damaged ({str(e)[:80]}); "
                        "remove the file to start again.") from None


def save_store(lib, store: dict) -> None:
    out = dict(store, version=STORE_VERSION, auto={k: asdict(v) for k, v in store["auto"].items()})
    data = json.dumps(out, indent=1).encode("utf-8")
    atomic_write(_store_path(lib), lambda f: f.write(data))


def add(lib, probe: str, precision: float = DEFAULT_PRECISION, write_tags: bool = False,
        sort_into: str | None = None, mode: str = "copy") -> tuple[AutoSetting, dict[str, Threshold]]:
    """Switch probe ``probe`` to keep applying; returns the setting and its thresholds. Photos
    indexed before now are not touched (``seen`` starts at the newest catalog id)."""
    if not 0.5 <= precision < 1.0:
        raise AutoError(f"The precision must be between 0.5 and 1 (got {precision}).")
    if mode not in ("copy", "move"):
        raise AutoError(f"Unknown sort mode {mode!r} (use copy or move).")
    lib.load_probe(probe)  # refuses a missing or mismatched probe now, with its own message
    if sort_into:
        sort_into = os.path.realpath(os.path.abspath(os.path.expanduser(sort_into)))
    ids = lib.catalog.filter_ids()
    setting = AutoSetting(probe, precision, write_tags, sort_into, mode, seen=int(max(ids, default=0)))
    thresholds = _calibrate(lib, setting)
    store = load_store(lib)
    store["auto"][probe] = setting
    save_store(lib, store)
    return setting, thresholds


def configure(lib, probe: str, precision: float = DEFAULT_PRECISION, write_tags: bool = False,
              sort_into: str | None = None, mode: str = "copy") -> tuple[AutoSetting, dict[str, Threshold]]:
    """:func:`add`, or change the options of a probe that already keeps applying without forgetting
    which photos it has seen (the app's switch and slider call this on every change)."""
    old = load_store(lib)["auto"].get(probe)
    setting, thresholds = add(lib, probe, precision, write_tags, sort_into, mode)
    if old is not None and old.seen != setting.seen:
        store = load_store(lib)
        store["auto"][probe].seen = old.seen
        save_store(lib, store)
        setting.seen = old.seen
    return setting, thresholds


def remove(lib, probe: str) -> None:
    store = load_store(lib)
    if probe not in store["auto"]:
        raise AutoError(f"Probe '{probe}' is not applied automatically ('clipdesk auto list').")
    del store["auto"][probe]
    store["inbox"] = [e for e in store["inbox"] if e.get("probe") != probe]
    save_store(lib, store)


def _rejected(lib, probe: Probe) -> dict[str, np.ndarray]:
    labels = lib.catalog.labels()
    rejected = {}
    for name in probe.classes:
        ids = labels.get(negative_label(name), [])
        if ids:
            rejected[name] = lib.catalog.vectors_for(ids)
    return rejected


def _calibrate(lib, setting: AutoSetting) -> dict[str, Threshold]:
    probe = lib.load_probe(setting.probe)
    got = category_thresholds(probe, setting.precision, _rejected(lib, probe))
    setting.thresholds = {k: asdict(v) for k, v in got.items()}
    setting.calibrated_for = float(probe.meta.get("created", 0.0))
    return got


def settle_inbox(lib, paths) -> int:
    """Take the photos at ``paths`` out of the Inbox (the person decided about them: labelled,
    accepted or rejected); returns how many entries left."""
    gone = set(paths)
    store = load_store(lib)
    keep = [e for e in store["inbox"] if e.get("path") not in gone]
    n = len(store["inbox"]) - len(keep)
    if n:
        store["inbox"] = keep
        save_store(lib, store)
    return n


@dataclass
class RunReport:
    probe: str
    photos: int = 0
    applied: dict[str, int] = field(default_factory=dict)  # category -> photos
    inbox: int = 0
    tags_operation: str | None = None
    sort_operation: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        done = ", ".join(f"{n} {c}" for c, n in self.applied.items()) or "none applied"
        text = f"{self.probe}: {self.photos} new photos: {done}, {self.inbox} in the Inbox"
        return text + "".join(f"\n  {p}" for p in self.problems)


def run(lib, probes: list[str] | None = None) -> list[RunReport]:
    """Apply every auto probe (or ``probes``) to the photos indexed since its last run.

    A probe that cannot run (deleted, trained with another model, sort folder gone or read-only)
    is reported in its :class:`RunReport` and left for the next run; the others still run.
    """
    from clipdesk import organise, tags

    store = load_store(lib)
    reports = []
    for name, setting in list(store["auto"].items()):
        if probes and name not in probes:
            continue
        rep = RunReport(name)
        reports.append(rep)
        try:
            probe = lib.load_probe(name)
        except ProbeError as e:
            rep.problems.append(f"{e} Auto-apply of '{name}' is paused ('clipdesk auto remove {name}' to stop it).")
            continue
        if float(probe.meta.get("created", 0.0)) != setting.calibrated_for:
            _calibrate(lib, setting)  # retrained since: its thresholds are chosen again
        ids = [int(i) for i in lib.catalog.filter_ids() if int(i) > setting.seen]
        if not ids:
            continue
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
                else:
                    inbox.append({"id": i, "path": info[i].path, "probe": name, "category": cat,
                                           "probability": round(float(pr[c]), 4)})
                    rep.inbox += 1
        try:
            if rows and setting.write_tags:
                plan = tags.plan_write({r.path: [r.label] for r in rows})
                rep.problems += [f"{p.path}: {p.reason}" for p in plan.problems]
                rep.tags_operation = tags.apply_write(lib, plan, f"auto {name}").operation
            if rows and setting.sort_into:
                plan = organise.plan_sort(lib, rows, setting.sort_into, setting.mode)
                rep.problems += [f"{p.path}: {p.reason}" for p in plan.problems]
                rep.sort_operation = organise.apply_sort(lib, plan).operation
        except ClipdeskError as e:
            # the journal keeps what was done (resumable with 'tags resume'/'sort resume' or
            # undoable); the photos stay unseen so the next run offers them again
            rep.problems.append(str(e))
            rep.inbox = 0
            continue
        store["inbox"] += inbox
        setting.seen = max([setting.seen] + ids)
        store["batches"].append({"probe": name, "ids": ids, "applied": [list(a) for a in applied],
                                 "tags_operation": rep.tags_operation, "sort_operation": rep.sort_operation})
        store["batches"] = store["batches"][-100:]
        save_store(lib, store)
    return reports


def undo(lib) -> dict:
    """Undo the newest batch: its sort (photos back, copies removed), then its keywords (sidecars
    restored exactly), then its labels and Inbox entries; the photos count as not seen again only
    if the probe is re-added. Returns what was undone."""
    from clipdesk import organise, tags

    store = load_store(lib)
    if not store["batches"]:
        raise AutoError("No auto-apply batch to undo.")
    batch = store["batches"][-1]
    done = {"probe": batch["probe"], "applied": len(batch["applied"])}
    if batch.get("sort_operation"):
        done["sort"] = organise.undo(lib, batch["sort_operation"]).as_dict()
    if batch.get("tags_operation"):
        done["tags"] = tags.undo(lib, batch["tags_operation"]).as_dict()
    store["batches"].pop()
    ids = set(batch.get("ids", []))
    store["inbox"] = [e for e in store["inbox"] if not (e.get("probe") == batch["probe"] and e.get("id") in ids)]
    save_store(lib, store)
    return done


@dataclass(frozen=True)
class _Row:  # what organise.plan_sort reads of a classified photo
    path: str
    label: str
    probability: float
