"""Quality measurements: few-shot probes against zero-shot and logistic regression, zero-shot
accuracy on a folder per class, and text↔image retrieval recall.

The few-shot evaluation calls exactly the probe code the app uses (``clipdesk.probe.fit_probe``).
Protocol (shared/data/README.md): for K in 1, 2, 4, 8, draw K training items per class at random
from classes with at least K + 2 items (the others sit that K out), test on every remaining item
of those classes; mean top-1 accuracy over seeds 0..seeds-1 with ``numpy.random.default_rng(seed)``.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable

import numpy as np

from clipdesk.errors import ClipdeskError
from clipdesk.probe import ProbeData, fit_probe
from clipdesk.zeroshot import class_weights_from_template_embeddings, normalise

SHOTS = (1, 2, 4, 8)


def logistic_regression(X: np.ndarray, y: np.ndarray, n_classes: int, C: float = 10.0,
                        iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression as scikit-learn fits it (L2 penalty ½‖W‖²/C, unpenalised
    bias, summed log-loss), solved with L-BFGS. Returns ``(W (C, dim), b (C,))``."""
    import torch

    Xt = torch.tensor(np.asarray(X, np.float32), dtype=torch.float64)
    yt = torch.tensor(np.asarray(y), dtype=torch.long)
    W = torch.zeros(n_classes, X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=iters, tolerance_grad=1e-8, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(Xt @ W.T + b, yt, reduction="sum") + 0.5 / C * (W**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach().numpy().astype(np.float32), b.detach().numpy().astype(np.float32)


def fewshot_splits(y: np.ndarray, n_classes: int, K: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(kept classes, train indices, test indices)`` of one seed of the protocol."""
    counts = np.bincount(y, minlength=n_classes)
    keep = np.where(counts >= K + 2)[0]
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.where(y == c)[0], K, replace=False) for c in keep])
    test = np.where(np.isin(y, keep) & ~np.isin(np.arange(len(y)), train))[0]
    return keep, train, test


def eval_fewshot(path: str, seeds: int = 50, shots=SHOTS,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Mean accuracy of zero-shot, logistic regression and clipdesk's probe per K."""
    try:
        with np.load(path, allow_pickle=False) as d:
            X, y, class_text = normalise(d["X"]), np.asarray(d["y"]), np.asarray(d["class_text"], np.float32)
            names = [str(n) for n in d["class_names"]]
    except (OSError, KeyError, ValueError) as e:
        raise ClipdeskError(f"Cannot read few-shot features from {path}: {e}") from None
    text = class_weights_from_template_embeddings(class_text)
    out: dict = {"K": {}, "seeds": seeds}
    for K in shots:
        acc: dict[str, list[float]] = {"zeroshot": [], "logreg": [], "probe": []}
        keep = None
        for seed in range(seeds):
            keep, train, test = fewshot_splits(y, len(names), K, seed)
            remap = {c: i for i, c in enumerate(keep)}
            ytr = np.array([remap[c] for c in y[train]])
            yte = np.array([remap[c] for c in y[test]])
            W0 = text[keep]
            acc["zeroshot"].append(float(np.mean((X[test] @ W0.T).argmax(1) == yte)))
            W, b = logistic_regression(X[train], ytr, len(keep))
            acc["logreg"].append(float(np.mean((X[test] @ W.T + b).argmax(1) == yte)))
            probe, _ = fit_probe(ProbeData([names[c] for c in keep], W0, X[train], ytr))
            acc["probe"].append(float(np.mean(probe.scores(X[test]).argmax(1) == yte)))
        out["K"][str(K)] = {k: round(float(np.mean(v)), 4) for k, v in acc.items()}
        out["K"][str(K)]["classes"] = int(len(keep))
        if progress:
            progress(f"K={K}: {out['K'][str(K)]}")
    return out


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
    return {"images": int(len(y)), "classes": len(classes),
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
        from clipdesk.models import ModelSpec, load_encoder

        self.encoder = load_encoder(ModelSpec.parse(getattr(args, "model", None), getattr(args, "weights", None)),
                                    getattr(args, "device", None))

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
        res = eval_fewshot(args.features, args.seeds)
        lines = [f"{'K':>2} {'classes':>7} {'zero-shot':>9} {'logreg':>7} {'probe':>7}"]
        lines += [f"{k:>2} {v['classes']:>7} {v['zeroshot']:>9.3f} {v['logreg']:>7.3f} {v['probe']:>7.3f}"
                  for k, v in res["K"].items()]
        emit(args, res, lines)
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
