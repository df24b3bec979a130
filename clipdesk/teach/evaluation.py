"""Quality measurements: few-shot probes against zero-shot and logistic regression, zero-shot
accuracy on a folder per class, and text↔image retrieval recall.

The few-shot evaluation calls exactly the probe code the app uses (``clipdesk.teach.probe.fit_probe``).
Protocol (shared/data/README.md): for K in 1, 2, 4, 8, 16, 32, draw K training items per class at
random from classes with at least K + 2 items (the others sit that K out; a K with fewer than two
such classes is skipped), test on every remaining item of those classes; mean top-1 accuracy over
seeds 0..seeds-1 with ``numpy.random.default_rng(seed)``. Per K it also reports the expected
calibration error (ECE, 15 bins) of the probe's probabilities on the test items with the floor
perfectly calibrated probabilities would show on as many items (:func:`ece_floor`), their mean
top probability (below the accuracy: modest; above: overconfident), a reliability table (every
test item of every seed by the band of probability the probe gave it — 50–60 %, …, 90–100 % — and
how often those were right: what the app's confidence slider means), the probe's own
cross-validated accuracy (what the app reports after Train) beside its class-balanced accuracy on
the test items, and the
*corrections* protocol: the test items are split in two (a review pool and a held-out half); after
the first fit the ``corrections`` most confident mistakes in the pool are labelled with their true
class and the probe is refit; accuracy on the held-out half before and after, next to adding as
many *random* pool items instead (what correcting mistakes buys over labelling anything).

``half="dev"``/``"check"`` restricts a file to one half of its classes (a fixed split): a probe's
rule is chosen on the development halves of every file and checked on the other halves.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable

import numpy as np

from clipdesk.errors import ClipdeskError
from clipdesk.teach.probe import ProbeData, fit_probe
from clipdesk.zeroshot import class_weights_from_template_embeddings, normalise, softmax

SHOTS = (1, 2, 4, 8, 16, 32)
ECE_BINS = 15
HALF_SEED = 123  # the fixed class split into development / check halves


def targets(K: int, zeroshot: float, logreg: float) -> float:
    """The accuracy the probe must reach at K shots (issue 14): never below zero-shot at K = 1–2,
    +0.03 at K = 4, +0.04 at K = 8, and beyond the better of zero-shot and logistic regression by
    0.01 from K = 16 on."""
    if K <= 2:
        return zeroshot - 0.005
    if K < 8:
        return zeroshot + 0.03
    if K < 16:
        return zeroshot + 0.04
    return max(zeroshot, logreg) + 0.01


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ_b (n_b / n)·|accuracy_b − confidence_b| over equal-width bins of the top probability."""
    return _ece(probs.max(1), probs.argmax(1) == y, bins)


def _ece(conf: np.ndarray, right: np.ndarray, bins: int = ECE_BINS) -> float:
    edges = np.minimum((conf * bins).astype(int), bins - 1)
    gap = np.bincount(edges, weights=right - conf, minlength=bins)  # Σ (right − conf) per bin
    return float(np.abs(gap).sum() / len(conf))


ECE_FLOOR_DRAWS = 20


def ece_floor(probs: np.ndarray, bins: int = ECE_BINS, draws: int = ECE_FLOOR_DRAWS, seed: int = 0) -> float:
    """The ECE that *perfectly calibrated* probabilities would still show on this many items: each
    item right with exactly its top probability, drawn ``draws`` times. On a few hundred items
    this floor is several points, so an ECE is read against it, not against 0."""
    conf = probs.max(1).astype(np.float64)
    rng = np.random.default_rng(seed)
    return float(np.mean([_ece(conf, rng.random(len(conf)) < conf, bins) for _ in range(draws)]))


# Confidence bands of the reliability table: what the app's slider shows (a photo at 80 %) against
# how often such photos are right on held-out items.
RELIABILITY_EDGES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def reliability(confidence: np.ndarray, right: np.ndarray, edges=RELIABILITY_EDGES) -> list[dict]:
    """Per band of top probability ``[lo, hi)`` (the last band includes 1): how many items were
    shown there, their mean top probability and the fraction of them predicted right."""
    confidence, right = np.asarray(confidence, np.float64), np.asarray(right, bool)
    band = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, len(edges) - 2)
    out = []
    for b in range(len(edges) - 1):
        m = band == b
        out.append({"band": [edges[b], edges[b + 1]], "n": int(m.sum()),
                    "confidence": round(float(confidence[m].mean()), 4) if m.any() else None,
                    "accuracy": round(float(right[m].mean()), 4) if m.any() else None})
    return out


def logistic_regression(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = 10.0,
                        iters: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression as scikit-learn fits it (L2 penalty ½‖W‖²/C, unpenalised
    bias, summed log-loss), solved with L-BFGS (numpy). Returns ``(W (C, dim), b (C,))``."""
    from clipdesk.teach.probe import _lbfgs

    X = np.asarray(X, np.float64)
    d = X.shape[1]
    Y = np.eye(n_classes)[np.asarray(y)]
    size = n_classes * d

    def f(theta):
        W, b = theta[:size].reshape(n_classes, d), theta[size:]
        z = X @ W.T + b
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        s = e.sum(1, keepdims=True)
        loss = float((np.log(s) - (z * Y).sum(1, keepdims=True)).sum()) + 0.5 / C * float(W.ravel() @ W.ravel())
        G = e / s - Y
        return loss, np.concatenate([(G.T @ X + W / C).ravel(), G.sum(0)])

    theta = _lbfgs(f, np.zeros(size + n_classes), iters, gtol=1e-8)
    return theta[:size].reshape(n_classes, d).astype(np.float32), theta[size:].astype(np.float32)


def fewshot_splits(y: np.ndarray, n_classes: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kept classes, train indices, test indices)`` of one seed of the protocol."""
    counts = np.bincount(y, minlength=n_classes)
    keep = np.where(counts >= K + 2)[0]
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.where(y == c)[0], K, replace=False) for c in keep])
    test = np.where(np.isin(y, keep) & ~np.isin(np.arange(len(y)), train))[0]
    return keep, train, test


def class_index(keep: np.ndarray, n_classes: int) -> np.ndarray:
    """original class → its position among ``keep`` (-1 for a class left out)."""
    remap = np.full(n_classes, -1)
    remap[keep] = np.arange(len(keep))
    return remap


def load_fewshot(path: str, half: str | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """``(X, y, class names, text classifier)`` of a few-shot file (the fewshot-proxy layout),
    optionally one half of its classes (``"dev"`` or ``"check"``)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            X = normalise(np.asarray(d["X"], np.float32))
            y = np.asarray(d["y"]).astype(np.int64)
            class_text = np.asarray(d["class_text"], np.float32)
            names = [str(n) for n in d["class_names"]]
    except (OSError, KeyError, ValueError, EOFError) as e:
        raise ClipdeskError(f"Cannot read few-shot features from {path}: {e}") from None
    if X.ndim != 2 or y.shape != (len(X),) or class_text.ndim != 3 or class_text.shape[0] != len(names) \
            or class_text.shape[2] != X.shape[1] or not len(names) or (len(y) and not 0 <= y.min() <= y.max() < len(names)):
        raise ClipdeskError(f"Cannot read few-shot features from {path}: inconsistent arrays "
                            f"(X {X.shape}, y {y.shape}, class_text {class_text.shape}, {len(names)} names).")
    if not (np.isfinite(X).all() and np.isfinite(class_text).all()):
        raise ClipdeskError(f"Cannot read few-shot features from {path}: NaN or infinite values.")
    text = class_weights_from_template_embeddings(class_text)
    if half is not None:
        keep = class_half(len(names), half)
        m = np.isin(y, keep)
        remap = class_index(keep, len(names))
        X, y, text, names = X[m], remap[y[m]], text[keep], [names[c] for c in keep]
    return X, y, names, text


def class_half(n_classes: int, half: str) -> np.ndarray:
    """The classes of the development (``"dev"``) or check (``"check"``) half of a file."""
    if half not in ("dev", "check"):
        raise ValueError(f"half must be 'dev' or 'check', not {half!r}")
    order = np.random.default_rng(HALF_SEED).permutation(n_classes)
    return np.sort(order[0 if half == "dev" else 1::2])


def _fit(names, text, X, y, **extra):
    return fit_probe(ProbeData(list(names), text, X, y, **extra))[0]


def _balanced_accuracy(right: np.ndarray, y: np.ndarray) -> float:
    """Accuracy with every class weighing the same (the examples a probe is cross-validated on
    hold K of each class; a test set holds whatever each class has left)."""
    return float(np.mean([right[y == c].mean() for c in np.unique(y)]))


def _corrections(names, text, X, y, pool, held, k: int, probe, rng) -> tuple[float, float, float, int]:
    """Held-out accuracy before, after correcting the ``k`` most confident mistakes of ``pool``,
    and after labelling ``k`` random pool items instead; and how many mistakes were corrected."""
    before = float(np.mean(probe.scores(X[held]).argmax(1) == y[held]))
    p = probe.probabilities(X[pool])
    wrong = np.where(p.argmax(1) != y[pool])[0]
    fix = pool[wrong[np.argsort(-p[wrong].max(1), kind="stable")][:k]]
    rand = rng.choice(pool, min(k, len(pool)), replace=False)
    out = [before]
    for extra, marked in ((fix, True), (rand, False)):
        # the corrections are marked as such (the app knows a label that overrode a prediction);
        # random labels are a fair sample and are not
        corrected = np.r_[np.zeros(len(probe.key_labels), bool), np.full(len(extra), marked)]
        again = _fit(names, text, np.vstack([probe.keys, X[extra]]), np.concatenate([probe.key_labels, y[extra]]),
                     corrected=corrected)
        out.append(float(np.mean(again.scores(X[held]).argmax(1) == y[held])))
    return out[0], out[1], out[2], len(fix)


def _negatives(names, text, X, y, pool, held, k: int, probe, rng) -> dict:
    """The negatives protocol: after the first fit, the class ``c`` with the most false positives
    in ``pool`` gets its ``k`` most confident false positives as negatives ("not c", as "Less like
    this" or a rejection in Review gives them, not as examples of their true class), and the probe
    is refit. Held-out accuracy, and ``c``'s false and true positives among the held-out items:
    before, after, with ``k`` random pool items outside ``c`` as negatives instead, and with the
    same negatives as an extra class without text ("none of these", how the app's multi-class
    Teach used rejections until now; a held-out item predicted "none" counts as a mistake)."""
    Xk, yk = probe.keys, probe.key_labels
    C = len(names)
    p = probe.probabilities(X[pool])
    pred = p.argmax(1)
    false_pos = pred != y[pool]
    if not false_pos.any():
        return {}
    c = int(np.bincount(pred[false_pos], minlength=C).argmax())
    cand = np.where(false_pos & (pred == c))[0]
    given = pool[cand[np.argsort(-p[cand, c], kind="stable")][:k]]
    outside = pool[y[pool] != c]
    rand = rng.choice(outside, min(len(given), len(outside)), replace=False)

    def measure(pr, n_classes=C) -> tuple[float, int, int]:
        ph = pr.scores(X[held]).argmax(1)
        return (float(np.mean(ph == y[held])), int(((ph == c) & (y[held] != c)).sum()),
                int(((ph == c) & (y[held] == c)).sum()))

    out = {"before": measure(probe)}
    for key, neg in (("after", given), ("random", rand)):
        out[key] = measure(_fit(names, text, Xk, yk, negatives=X[neg], negative_of=np.full(len(neg), c)))
    none = _fit(list(names) + ["(none of these)"], np.vstack([text, np.zeros_like(text[:1])]),
                np.vstack([Xk, X[given]]), np.concatenate([yk, np.full(len(given), C)]))
    out["none_class"] = measure(none)
    out["given"] = len(given)
    return out


REJECTION_SHOTS = 3  # the protocol's examples per class (issue 26: "3 + 3 examples, one Reject")


def _rejection(names, text, X, y, train, test, ytr, yte) -> dict | None:
    """The rejection protocol (issue 26 trap 3) on one seed: after the first fit, the most
    confident wrong prediction among the test items (the "library") is rejected from the bucket
    it was put in, exactly as the app's Teach tab stores it ("not c", through
    :func:`clipdesk.teaching.bucket_data`), and the probe is refit. On the other test items: the
    accuracy before and after, the share whose answer changed, and each class's predicted share
    before and after next to its true share ("none of these" has a true share of 0)."""
    from clipdesk.teaching import bucket_data

    C = len(names)
    probe = fit_probe(ProbeData(list(names), text, X[train], ytr))[0]
    p = probe.probabilities(X[test])
    pred = p.argmax(1)
    wrong = np.flatnonzero(pred != yte)
    if not len(wrong):
        return None
    r = int(wrong[np.argmax(p[wrong].max(1))])
    data, zs = bucket_data(list(names), text, X[train], ytr, X[test][[r]], [{int(pred[r])}])
    after = fit_probe(data, zs)[0].probabilities(X[test]).argmax(1)
    held = np.arange(len(test)) != r
    n = len(data.classes) + 1  # one more column: "none of these", whether the probe has it or not
    share = lambda v: np.bincount(np.where(v >= C, C, v)[held], minlength=n)[:C + 1] / held.sum()
    before_share, after_share, true_share = share(pred), share(after), share(yte)
    # a class "takes over" by what its share grew beyond both its share before and its true share
    takeover = after_share - np.maximum(before_share, true_share)
    return {"before": float(np.mean(pred[held] == yte[held])), "after": float(np.mean(after[held] == yte[held])),
            "changed": float(np.mean(after[held] != pred[held])), "none": float(after_share[C]),
            "takeover": float(takeover.max()), "gain": float((after_share - before_share).max())}


def eval_rejection(path: str, seeds: int = 50, buckets: tuple = (0, 2), half: str | None = None) -> dict:
    """The rejection protocol (:func:`_rejection`) at K = ``REJECTION_SHOTS``, mean over seeds,
    for every class with at least K + 2 items (``buckets`` 0) and for random sets of that many
    classes (2: the app's "3 + 3 examples"). Seeds where the first fit makes no mistake are skipped
    (counted in ``seeds``). Goal: accuracy after ≥ before − 0.01, no class taking over."""
    X, y, names, text = load_fewshot(path, half)
    out: dict = {"file": os.path.basename(path), "half": half, "K": REJECTION_SHOTS, "rows": {}}
    for nb in buckets:
        got = []
        for seed in range(seeds):
            keep, train, test = fewshot_splits(y, len(names), REJECTION_SHOTS, seed)
            if nb:
                keep = np.sort(np.random.default_rng([seed, nb]).choice(keep, nb, replace=False))
                train, test = train[np.isin(y[train], keep)], test[np.isin(y[test], keep)]
            remap = class_index(keep, len(names))
            r = _rejection([names[c] for c in keep], text[keep], X, y, train, test, remap[y[train]], remap[y[test]])
            if r:
                got.append(r)
        if not got:
            continue
        row = {k: round(float(np.mean([g[k] for g in got])), 4) for k in got[0]}
        row["worst_takeover"] = round(float(max(g["takeover"] for g in got)), 4)
        row["accuracy_change"] = round(row["after"] - row["before"], 4)
        row["meets_goal"] = bool(row["accuracy_change"] >= -0.01 and row["none"] <= 0.01 and row["takeover"] <= 0.01)
        row.update(classes=len(keep), seeds=len(got))
        out["rows"]["all" if not nb else str(nb)] = row
    return out


def rejection_table(res: dict) -> list[str]:
    lines = [f"{res['file']}: one rejection of a wrong prediction at K = {res['K']}, then retrain "
             "(mean over seeds with a mistake to reject)",
             f"{'classes':>8} {'seeds':>5} {'before':>7} {'after':>7} {'Δacc':>7} {'changed':>8} {'none':>6}"
             f" {'takeover':>8} {'worst':>6} goal"]
    for v in res["rows"].values():
        lines.append(f"{v['classes']:>8} {v['seeds']:>5} {v['before']:>7.3f} {v['after']:>7.3f} {v['accuracy_change']:>+7.3f}"
                     f" {v['changed']:>8.3f} {v['none']:>6.3f} {v['takeover']:>+8.3f} {v['worst_takeover']:>+6.3f}"
                     f" {'met' if v['meets_goal'] else 'NOT met'}")
    lines.append("changed: share of the other test items whose answer changed; none: their share put into "
                 "'none of these'; takeover: the most any class's share grew beyond both its share before and "
                 "its true share (mean; worst seed)")
    return lines


def eval_fewshot(path: str, seeds: int = 50, shots=SHOTS, corrections: int = 10, half: str | None = None,
                 progress: Callable[[str], None] | None = None, negatives: int = 0) -> dict:
    """Learning curves of zero-shot, logistic regression and clipdesk's probe (accuracy per K,
    mean and seed-to-seed standard deviation), the probe's ECE, and the corrections and negatives
    protocols (``corrections``/``negatives`` items per refit; 0 leaves a protocol out)."""
    X, y, names, text = load_fewshot(path, half)
    out: dict = {"file": os.path.basename(path), "half": half, "seeds": seeds, "corrections": corrections,
                 "negatives": negatives, "K": {}}
    for K in shots:
        counts = np.bincount(y, minlength=len(names))
        if (counts >= K + 2).sum() < 2:
            continue
        acc: dict[str, list[float]] = {"zeroshot": [], "logreg": [], "probe": []}
        ece: dict[str, list[float]] = {"probe": [], "logreg": [], "floor": []}
        confidence: list[float] = []
        cv: dict[str, list[float]] = {"reported": [], "balanced": []}
        shown, shown_right = [], []
        corr: list[tuple] = []
        negs: list[dict] = []
        keep = None
        for seed in range(seeds):
            keep, train, test = fewshot_splits(y, len(names), K, seed)
            remap = class_index(keep, len(names))
            ytr, yte = remap[y[train]], remap[y[test]]
            W0, kn = text[keep], [names[c] for c in keep]
            acc["zeroshot"].append(float(np.mean((X[test] @ W0.T).argmax(1) == yte)))
            W, b = logistic_regression(X[train], ytr, len(keep))
            lr = X[test] @ W.T + b
            acc["logreg"].append(float(np.mean(lr.argmax(1) == yte)))
            ece["logreg"].append(expected_calibration_error(softmax(lr), yte))
            probe, report = fit_probe(ProbeData(kn, W0, X[train], ytr))
            p = probe.probabilities(X[test])
            right = p.argmax(1) == yte
            acc["probe"].append(float(np.mean(right)))
            ece["probe"].append(expected_calibration_error(p, yte))
            ece["floor"].append(ece_floor(p, seed=seed))
            confidence.append(float(p.max(1).mean()))
            # what the app says of a probe (its cross-validated accuracy) against what it then
            # does on the items it never saw, weighted as its examples are (every class alike)
            cv["reported"].append(report.cv_accuracy)
            cv["balanced"].append(_balanced_accuracy(right, yte))
            shown.append(p.max(1))
            shown_right.append(right)
            if corrections or negatives:
                rng = np.random.default_rng([seed, K])
                order = rng.permutation(len(test))
                pool, held = order[: len(test) // 2], order[len(test) // 2:]
                Xl, yl = np.vstack([X[train], X[test]]), np.concatenate([ytr, yte])
            if corrections:
                corr.append(_corrections(kn, W0, Xl, yl, len(train) + pool, len(train) + held, corrections,
                                         probe, rng))
            if negatives:
                got = _negatives(kn, W0, Xl, yl, len(train) + pool, len(train) + held, negatives, probe,
                                 np.random.default_rng([seed, K, 1]))
                if got:
                    negs.append(got)
        row: dict = {m: round(float(np.mean(v)), 4) for m, v in acc.items()}
        row["classes"] = len(keep)
        row["sd"] = {m: round(float(np.std(v)), 4) for m, v in acc.items()}
        # seed-to-seed spread of the probe's margins (what a test with a few seeds must allow for)
        gain = np.array(acc["probe"]) - np.array(acc["zeroshot"])
        row["sd"]["probe_minus_zeroshot"] = round(float(np.std(gain)), 4)
        row["sd"]["probe_minus_best"] = round(float(np.std(
            np.array(acc["probe"]) - np.maximum(acc["zeroshot"], acc["logreg"]))), 4)
        row["ece"] = {m: round(float(np.mean(v)), 4) for m, v in ece.items()}
        row["confidence"] = round(float(np.mean(confidence)), 4)  # the probe's mean top probability
        row["cv_accuracy"] = {m: round(float(np.mean(v)), 4) for m, v in cv.items()}
        # every test item of every seed, by the band of probability it was shown at
        row["reliability"] = reliability(np.concatenate(shown), np.concatenate(shown_right))
        row["target"] = round(targets(K, row["zeroshot"], row["logreg"]), 4)
        row["meets_target"] = bool(row["probe"] >= row["target"])
        if corrections:
            c = np.array(corr)
            row["corrections"] = {"before": round(float(c[:, 0].mean()), 4), "after": round(float(c[:, 1].mean()), 4),
                                  "random": round(float(c[:, 2].mean()), 4), "corrected": round(float(c[:, 3].mean()), 2)}
        if negatives and negs:
            row["negatives"] = {"given": round(float(np.mean([g["given"] for g in negs])), 2), "seeds": len(negs)}
            for key in ("before", "after", "random", "none_class"):
                v = np.array([g[key] for g in negs], np.float64)
                row["negatives"][key] = {"accuracy": round(float(v[:, 0].mean()), 4),
                                         "false_pos": round(float(v[:, 1].mean()), 2),
                                         "true_pos": round(float(v[:, 2].mean()), 2)}
            gain = np.array([g["after"][0] - g["before"][0] for g in negs])
            row["negatives"]["gain_sd"] = round(float(gain.std()), 4)
        out["K"][str(K)] = row
        if progress:
            progress(f"K={K}: {row}")
    return out


CALIBRATION_SHOTS = (4, 8, 16)
CALIBRATION_TARGETS = (0.8, 0.9, 0.95)


def eval_calibration(path: str, seeds: int = 5, shots=CALIBRATION_SHOTS, targets=CALIBRATION_TARGETS,
                     half: str | None = None) -> dict:
    """Per-category thresholds as the app chooses them (:func:`clipdesk.ops.auto.category_scores`: the
    probe's examples held out of its folds, and the unlabelled test items standing in for the
    library they will apply to) against what they do on the test items: per K and target
    precision, the precision reached on the test items the thresholds let through (pooled over
    categories) and the recall there, mean over seeds; how often the app would say "too few to
    know" (thresholds are used anyway here, to measure them); and the same for thresholds chosen
    with the test labels in hand (``best``: what perfect knowledge reaches, the bar where a target
    is out of reach — every photo the probe names already right more often than asked).
    Goal: within 0.05 of the target at K ≥ 8 (of ``best`` where the target is out of reach)."""
    from clipdesk.ops.auto import category_scores, choose_threshold

    X, y, names, text = load_fewshot(path, half)
    out: dict = {"file": os.path.basename(path), "half": half, "seeds": seeds, "K": {}}
    for K in shots:
        if (np.bincount(y, minlength=len(names)) >= K + 2).sum() < 2:
            continue
        got: dict[float, list] = {t: [] for t in targets}
        keep = None
        for seed in range(seeds):
            keep, train, test = fewshot_splits(y, len(names), K, seed)
            remap = class_index(keep, len(names))
            ytr, yte = remap[y[train]], remap[y[test]]
            probe, report = fit_probe(ProbeData([names[c] for c in keep], text[keep], X[train], ytr))
            scores = list(category_scores(probe, X[test], held_out=report.held_out).values())
            p = probe.probabilities(X[test])
            top = p.argmax(1)
            for t in targets:
                tp = shown = unknown = best_tp = best_shown = 0
                for c, sc in enumerate(scores):
                    th = sc.threshold(t, enough=False)
                    unknown += not sc.threshold(t).known
                    sel = (top == c) & (p[:, c] >= (th.threshold if th.known else 1.0 + 1e-9))
                    tp += int((sel & (yte == c)).sum())
                    shown += int(sel.sum())
                    mine = top == c  # the best cut, knowing the test labels
                    best = choose_threshold(p[mine, c], yte[mine] == c, t, enough=False, expected=(yte == c).sum())
                    sel = mine & (p[:, c] >= (best.threshold if best.known else 1.0 + 1e-9))
                    best_tp += int((sel & (yte == c)).sum())
                    best_shown += int(sel.sum())
                got[t].append((tp / shown if shown else np.nan, tp / len(yte), unknown / len(keep),
                               best_tp / best_shown if best_shown else np.nan, best_tp / len(yte)))
        row = {}
        for t, v in got.items():
            a = np.array(v, np.float64)

            def mean(col: int) -> float | None:
                return round(float(np.nanmean(a[:, col])), 4) if np.isfinite(a[:, col]).any() else None

            cell = {"precision": mean(0), "recall": round(float(a[:, 1].mean()), 4),
                    "too_few": round(float(a[:, 2].mean()), 3), "best_precision": mean(3),
                    "best_recall": round(float(a[:, 4].mean()), 4)}
            reachable = cell["best_precision"] is None or cell["best_precision"] <= t + 0.05
            bar = t if reachable else cell["best_precision"]
            cell["out_of_reach"] = not reachable
            cell["within_0.05"] = cell["precision"] is not None and abs(cell["precision"] - bar) <= 0.05
            row[str(t)] = cell
        out["K"][str(K)] = dict(row, classes=len(keep))
    return out


def calibration_table(res: dict) -> list[str]:
    lines = [f"{res['file']}{' (' + res['half'] + ' half)' if res.get('half') else ''}: per-category thresholds "
             f"for a target precision, on held-out items (mean of {res['seeds']} seeds)",
             f"{'K':>3} {'classes':>7}  target: precision reached / recall [the same with thresholds chosen knowing "
             "the test labels] (share of categories 'too few to know')"]
    for k, v in res["K"].items():
        cells = []
        for t, c in v.items():
            if t == "classes":
                continue
            prec = "  —  " if c["precision"] is None else f"{c['precision']:.3f}"
            best = "  —  " if c["best_precision"] is None else f"{c['best_precision']:.3f}"
            cells.append(f"{float(t):.2f}: {prec} / {c['recall']:.3f} [best {best} / {c['best_recall']:.3f}"
                         f"{', target out of reach' if c['out_of_reach'] else ''}] ({c['too_few']:.0%})"
                         f"{'' if c['within_0.05'] else ' ✗'}")
        lines.append(f"{k:>3} {v['classes']:>7}  " + "   ".join(cells))
    return lines


def eval_zeroshot(lib, folder: str) -> dict:
    """Top-1/top-5 zero-shot accuracy of the library's model on ``folder/CLASS/*.jpg``."""
    from clipdesk.indexer.decode import decode_image
    from clipdesk.indexer.scan import scan
    from clipdesk.zeroshot import class_weights

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    if len(classes) < 2:
        raise ClipdeskError(f"{folder} needs at least two class folders.")
    enc = lib.encoder
    W = class_weights(enc.encode_texts, classes)
    feats, labels = [], []
    for ci, c in enumerate(classes):
        files = [f.path for f in scan([os.path.join(folder, c)])]
        for i in range(0, len(files), 32):
            imgs = [decode_image(p, enc.min_side).image for p in files[i:i + 32]]
            feats.append(enc.encode_images(imgs))
            labels += [ci] * len(imgs)
    F, y = np.concatenate(feats), np.array(labels)
    S = F @ W.T
    top = np.argsort(-S, axis=1)
    confused = Counter((classes[t], classes[p]) for t, p in zip(y, top[:, 0]) if t != p)
    return {"images": len(y), "classes": len(classes),
            "top1": round(float(np.mean(top[:, 0] == y)), 4),
            "top5": round(float(np.mean([t in row[:5] for t, row in zip(y, top)])), 4),
            "most_confused": [{"true": a, "predicted": b, "count": n} for (a, b), n in confused.most_common(10)]}


def eval_retrieval(lib, captions: str) -> dict:
    """Recall@1/5/10 of text→image and image→text on a captions.jsonl file (images/ beside it)."""
    from clipdesk.indexer.decode import decode_image

    base = os.path.join(os.path.dirname(os.path.abspath(captions)), "images")
    with open(captions, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    enc = lib.encoder
    feats, texts = [], []
    for i in range(0, len(rows), 32):
        chunk = rows[i:i + 32]
        feats.append(enc.encode_images([decode_image(os.path.join(base, r["image"]), enc.min_side).image
                                        for r in chunk]))
        texts += [r["caption"] for r in chunk]
    I = np.concatenate(feats)
    T = np.concatenate([enc.encode_texts(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    S = T @ I.T
    n = len(rows)

    def recall(sim: np.ndarray) -> dict:
        rank = (sim > sim[np.arange(n), np.arange(n)][:, None]).sum(1)
        return {f"R@{k}": round(float(np.mean(rank < k)), 4) for k in (1, 5, 10)}

    return {"pairs": n, "text_to_image": recall(S), "image_to_text": recall(S.T)}


class _ModelOnly:
    """What the zero-shot and retrieval evaluations need of a library (its encoder), for runs
    outside any library: measuring a model must not create one."""

    def __init__(self, args):
        from clipdesk.runtime import ModelSpec, load_encoder

        self.encoder = load_encoder(ModelSpec.parse(getattr(args, "model", None), getattr(args, "weights", None),
                                                    getattr(args, "model_dir", None)), getattr(args, "device", None))

    def close(self) -> None:
        pass


def _model_only(args, open_library):
    """The library's model when ``--library`` (or the default one) exists, else ``--model``'s."""
    from clipdesk.errors import LibraryNotFoundError

    try:
        return open_library(args)
    except LibraryNotFoundError:
        return _ModelOnly(args)


def run_cli(args, open_library, emit) -> int:
    if args.what == "fewshot":
        res = eval_fewshot(args.features, args.seeds, shots=args.shots, corrections=args.corrections,
                           half=args.half, negatives=getattr(args, "negatives", 0))
        lines = fewshot_table(res)
        if getattr(args, "rejection", False):
            res["rejection"] = eval_rejection(args.features, args.seeds, half=args.half)
            lines += rejection_table(res["rejection"])
        emit(args, res, lines)
        return 0
    if args.what == "calibration":
        res = eval_calibration(args.features, args.seeds, shots=args.shots, half=args.half)
        emit(args, res, calibration_table(res))
        return 0
    lib = _model_only(args, open_library)
    try:
        if args.what == "zeroshot":
            res = eval_zeroshot(lib, args.folder)
            emit(args, res, [f"top-1 {res['top1']:.3f}  top-5 {res['top5']:.3f}  ({res['images']} images)"])
        else:
            res = eval_retrieval(lib, args.captions)
            emit(args, res, [f"text→image {res['text_to_image']}", f"image→text {res['image_to_text']}"])
    finally:
        lib.close()
    return 0


def fewshot_table(res: dict) -> list[str]:
    """The learning curves as text lines: accuracy, probe − zero-shot, target, ECE, corrections,
    negatives (held-out accuracy, and the class's false/true positives)."""
    title = (f"{res['file']}{' (' + res['half'] + ' half)' if res.get('half') else ''}: "
             f"mean of {res['seeds']} seeds (± seed-to-seed s.d. of the probe)")
    header = (f"{'K':>3} {'classes':>7} {'zero-shot':>9} {'logreg':>7} {'probe':>14} {'Δzs':>7} {'target':>7}"
              f" {'ECE':>6} {'floor':>6} {'conf':>6} {'lr ECE':>6} {'cv':>6} {'bal':>6}")
    if res.get("corrections"):
        header += f"  corrections (k={res['corrections']}): before → after (random)"
    if res.get("negatives"):
        header += (f"  negatives (k={res['negatives']}) of one class: accuracy, its false/true positives"
                   " before → after (random negatives; as a 'none' class)")
    lines = [title, header]
    for k, v in res["K"].items():
        line = (f"{k:>3} {v['classes']:>7} {v['zeroshot']:>9.3f} {v['logreg']:>7.3f} "
                f"{v['probe']:>7.3f} ±{v['sd']['probe']:.3f} {v['probe'] - v['zeroshot']:>+7.3f} "
                f"{v['target']:>6.3f}{'' if v['meets_target'] else '✗'}{' ' if v['meets_target'] else ''}"
                f"{v['ece']['probe']:>6.3f} {v['ece']['floor']:>6.3f} {v['confidence']:>6.3f} {v['ece']['logreg']:>6.3f}"
                f" {v['cv_accuracy']['reported']:>6.3f} {v['cv_accuracy']['balanced']:>6.3f}")
        if "corrections" in v:
            c = v["corrections"]
            line += f"  {c['before']:.3f} → {c['after']:.3f} ({c['random']:.3f})"
        if "negatives" in v:
            n = v["negatives"]
            line += "  " + " → ".join(
                f"{n[m]['accuracy']:.3f} {n[m]['false_pos']:.1f}/{n[m]['true_pos']:.1f}" for m in ("before", "after"))
            line += "".join(f" ({n[m]['accuracy']:.3f} {n[m]['false_pos']:.1f}/{n[m]['true_pos']:.1f})"
                            for m in ("random", "none_class"))
        lines.append(line)
    lines += ["floor: the ECE perfectly calibrated probabilities would show on as many test items; "
              "cv: the probe's cross-validated accuracy on its examples (what the app reports); "
              "bal: its accuracy on the test items, every class weighing the same",
              "reliability (every test item of every seed): shown at → right (items)"]
    for k, v in res["K"].items():
        lines.append(f"{k:>3}  " + "  ".join(
            f"{100 * b['band'][0]:.0f}–{100 * b['band'][1]:.0f} %: {100 * b['accuracy']:.0f} % ({b['n']})"
            for b in v["reliability"] if b["n"]))
    return lines
