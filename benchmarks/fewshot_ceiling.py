"""How far labels alone can take a classifier on a few-shot set: the ceiling a K-shot target must
sit under.

    .venv/bin/python benchmarks/fewshot_ceiling.py [SET[:half]:K ...]

For the classes a K keeps (those with ≥ K + 2 items, as ``clipdesk eval fewshot``), a 5-fold
split of *every* item of those classes: logistic regression at the best C of a grid (chosen on the
same folds, so optimistic) and clipdesk's probe each train on 4/5 of all items (far more than K per
class) and predict the fifth. Each item's out-of-fold answer is then averaged over the *test items
of each of the protocol's 50 seeds* (the items a K-shot run is scored on; the bigger classes weigh
more there), beside zero-shot on the same items and the issue's target for it: a K-shot probe sees
fewer labels of the same classes, so it is not expected to beat these. Accuracy figures do not
depend on the machine's load. Prints a Markdown table.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from clipdesk.teach.evaluation import fewshot_splits, load_fewshot, logistic_regression, targets
from clipdesk.teach.probe import ProbeData, fit_probe

SETS = {"fewshot-proxy": HERE.parent.parent / "shared" / "data" / "fewshot-proxy.npz",
        "debian-sections": HERE / "data" / "debian-sections.npz",
        "debian-tags": HERE / "data" / "debian-tags.npz"}
DEFAULT = ["fewshot-proxy:4", "fewshot-proxy:8", "fewshot-proxy:dev:4", "fewshot-proxy:dev:8",
           "fewshot-proxy:check:4", "fewshot-proxy:check:8", "debian-sections:32", "debian-tags:dev:32"]
C_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def ceiling(path: Path, K: int, half: str | None, seeds: int = 50) -> dict:
    X, y, names, text = load_fewshot(str(path), half)
    keep = np.where(np.bincount(y, minlength=len(names)) >= K + 2)[0]
    items = np.where(np.isin(y, keep))[0]
    remap = np.full(len(names), -1)
    remap[keep] = np.arange(len(keep))
    Xk, yk, W0 = X[items], remap[y[items]], text[keep]
    fold = np.random.default_rng(0).permutation(len(yk)) % 5
    right_lr: dict[float, np.ndarray] = {}
    for C in C_GRID:
        right = np.zeros(len(yk), bool)
        for f in range(5):
            tr, te = fold != f, fold == f
            W, b = logistic_regression(Xk[tr], yk[tr], len(keep), C=C)
            right[te] = (Xk[te] @ W.T + b).argmax(1) == yk[te]
        right_lr[C] = right
    right_probe = np.zeros(len(yk), bool)
    for f in range(5):
        tr, te = fold != f, fold == f
        probe = fit_probe(ProbeData([names[c] for c in keep], W0, Xk[tr], yk[tr]))[0]
        right_probe[te] = probe.probabilities(Xk[te]).argmax(1) == yk[te]
    right_zs = (Xk @ W0.T).argmax(1) == yk
    at = np.full(len(y), -1)
    at[items] = np.arange(len(items))
    rows = {"zeroshot": [], "probe": [], **{C: [] for C in C_GRID}}
    for seed in range(seeds):  # the protocol's own test items, seed by seed
        test = at[fewshot_splits(y, len(names), K, seed)[2]]
        rows["zeroshot"].append(right_zs[test].mean())
        rows["probe"].append(right_probe[test].mean())
        for C in C_GRID:
            rows[C].append(right_lr[C][test].mean())
    best_c = max(C_GRID, key=lambda C: np.mean(rows[C]))
    return {"classes": len(keep), "items": int(len(yk)), "zeroshot": float(np.mean(rows["zeroshot"])),
            "logreg": float(np.mean(rows[best_c])), "C": best_c, "probe": float(np.mean(rows["probe"]))}


def main(args: list[str]) -> int:
    print("| set | K (classes, items) | zero-shot | target | logreg trained on 4/5 of all items (best C) | probe trained on 4/5 of all items |")
    print("|---|---|---|---|---|---|")
    for arg in args or DEFAULT:
        parts = arg.split(":")
        name, K, half = parts[0], int(parts[-1]), parts[1] if len(parts) == 3 else None
        r = ceiling(SETS[name], K, half)
        target = f"{targets(K, r['zeroshot'], 0.0):.4f}" if K < 16 else "— (K-shot logreg + 0.01)"
        print(f"| {name}{', ' + half + ' half' if half else ''} | {K} ({r['classes']}, {r['items']}) | {r['zeroshot']:.4f}"
              f" | {target}"
              f" | {r['logreg']:.4f} (C = {r['C']:g}) | {r['probe']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
