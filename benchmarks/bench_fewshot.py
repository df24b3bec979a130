"""Few-shot teaching: the full protocol on every evaluation set, and the probe's fitting time.

    .venv/bin/python benchmarks/bench_fewshot.py [--seeds 50] [--half-seeds 20]

For each set (shared/data/fewshot-proxy.npz and the sets under benchmarks/data/, built by
scripts/build_fewshot_sets.py): the learning curves of ``clipdesk eval fewshot`` over 50 seeds
(zero-shot, logistic regression, the probe, its ECE and the ECE's floor, the corrections and negatives protocols) on the whole file,
then on its development and check halves of classes (the probe's rule was chosen on the
development halves only). Then the fitting time the app pays on every click: ``fit_probe`` on 200
examples × 10 classes of 512-d vectors (median of 15, wall and CPU time), with the machine and its
load around it (benchmeta: a time taken under load is flagged, not published). Accuracy figures
do not depend on load. Writes benchmarks/out/fewshot.json and prints the tables (Markdown).
"""
from __future__ import annotations

import os

# One BLAS thread: the fits here are small matrix products, which OpenBLAS's threads slow down
# many times over when the two cores are shared (measured: 2.7 ms vs 45 ms per product pair under
# load); the protocol's figures do not depend on it, its run time does.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from benchmeta import Watch, machine

from clipdesk.teach.evaluation import eval_fewshot
from clipdesk.teach.probe import ProbeData, fit_probe
from clipdesk.zeroshot import normalise

SETS = [HERE.parent.parent / "shared" / "data" / "fewshot-proxy.npz",
        HERE / "data" / "debian-sections.npz", HERE / "data" / "debian-tags.npz"]


def markdown(res: dict) -> list[str]:
    title = res["file"] + (f", {res['half']} half" if res.get("half") else "")
    corr, neg = res.get("corrections"), res.get("negatives")
    lines = [f"**{title}** ({res['seeds']} seeds; ± = seed-to-seed s.d. of the probe)", "",
             "| K (classes) | zero-shot | logreg | probe | probe − zs | probe − max(zs, lr) | target | met | ECE probe"
             " | ECE floor | mean confidence | cv accuracy (app) | class-balanced accuracy |"
             + (f" corrections k={corr}: before → after (random k) |" if corr else "")
             + (f" negatives k={neg} of one class: accuracy, its false/true positives before → after"
                " (random negatives; as a 'none' class) |" if neg else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if corr else "") + ("---|" if neg else "")]
    for k, v in res["K"].items():
        row = (f"| {k} ({v['classes']}) | {v['zeroshot']:.4f} | {v['logreg']:.4f} | {v['probe']:.4f} ± {v['sd']['probe']:.3f}"
               f" | {v['probe'] - v['zeroshot']:+.4f} | {v['probe'] - max(v['zeroshot'], v['logreg']):+.4f}"
               f" | {v['target']:.4f} | {'yes' if v['meets_target'] else '**no**'}"
               f" | {v['ece']['probe']:.3f} | {v['ece']['floor']:.3f} | {v['confidence']:.3f}"
               f" | {v['cv_accuracy']['reported']:.3f} | {v['cv_accuracy']['balanced']:.3f} |")
        if corr:
            c = v.get("corrections")
            row += f" {c['before']:.4f} → {c['after']:.4f} ({c['random']:.4f}) |" if c else " – |"
        if neg:
            n = v.get("negatives")
            f = lambda m: f"{n[m]['accuracy']:.4f}, {n[m]['false_pos']:.1f}/{n[m]['true_pos']:.1f}"
            row += f" {f('before')} → {f('after')} ({f('random')}; {f('none_class')}) |" if n else " – |"
        lines.append(row)
    bands = next(iter(res["K"].values()))["reliability"]
    lines += ["", f"*Reliability*, {title}: test items of every seed by the probability the probe showed"
              " (right / items)", "",
              "| K | " + " | ".join(f"{100 * b['band'][0]:.0f}–{100 * b['band'][1]:.0f} %" for b in bands) + " |",
              "|---|" + "---|" * len(bands)]
    for k, v in res["K"].items():
        lines.append(f"| {k} | " + " | ".join(
            f"{100 * b['accuracy']:.0f} % / {b['n']}" if b["n"] else "–" for b in v["reliability"]) + " |")
    return lines + [""]


def fit_time(repeats: int = 15, n_classes: int = 10, per_class: int = 20, dim: int = 512) -> dict:
    rng = np.random.default_rng(0)
    centres = normalise(rng.normal(size=(n_classes, dim)))
    y = np.repeat(np.arange(n_classes), per_class)
    X = normalise(centres[y] + 0.35 * rng.normal(size=(len(y), dim))).astype(np.float32)
    text = normalise(centres + 0.35 * rng.normal(size=centres.shape)).astype(np.float32)
    names = [f"c{i}" for i in range(n_classes)]
    # what a refit after Review costs too: 20 of the 200 marked as corrections (their weight is
    # chosen by held-out likelihood: 15 more fits), or 20 negatives on top of the 200
    marked = np.zeros(len(y), bool)
    marked[::10] = True
    Xn = normalise(centres[(np.arange(20) + 1) % n_classes] + 0.35 * rng.normal(size=(20, dim))).astype(np.float32)
    variants = {"plain": ProbeData(names, text, X, y),
                "corrections_20": ProbeData(names, text, X, y, corrected=marked),
                "negatives_20": ProbeData(names, text, X, y, negatives=Xn, negative_of=np.arange(20) % n_classes)}
    for data in variants.values():
        fit_probe(data)  # warm-up
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in variants}
    with Watch() as w:
        for _ in range(repeats):  # interleaved: a change of load hits all alike
            for name, data in variants.items():
                t, c = time.perf_counter(), time.process_time()
                fit_probe(data)
                times[name]["wall"].append(time.perf_counter() - t)
                times[name]["cpu"].append(time.process_time() - c)
    out = {"examples": len(y), "classes": n_classes, "dim": dim, "repeats": repeats, "meta": w.meta()}
    for name, t in times.items():
        key = "" if name == "plain" else name + "_"
        out[f"{key}median_wall_ms"] = round(1000 * float(np.median(t["wall"])), 1)
        out[f"{key}median_cpu_ms"] = round(1000 * float(np.median(t["cpu"])), 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=50)
    p.add_argument("--half-seeds", type=int, default=20)
    p.add_argument("--sets", nargs="*", default=[str(s) for s in SETS])
    args = p.parse_args()
    out: dict = {"machine": machine(), "runs": []}
    lines: list[str] = []
    t0 = time.perf_counter()
    for path in args.sets:
        if not Path(path).exists():
            lines.append(f"{path}: missing, skipped")
            continue
        for half, seeds, k in ((None, args.seeds, 10), ("dev", args.half_seeds, 0), ("check", args.half_seeds, 0)):
            res = eval_fewshot(path, seeds=seeds, corrections=k, negatives=k, half=half)
            out["runs"].append(res)
            lines += markdown(res)
            print("\n".join(markdown(res)), flush=True)
    out["fit_time"] = fit_time()
    out["seconds"] = round(time.perf_counter() - t0, 1)
    ft = out["fit_time"]
    lines.append(f"fit_probe (one BLAS thread), {ft['examples']} examples × {ft['classes']} classes × {ft['dim']}-d: median "
                 f"{ft['median_wall_ms']} ms wall, {ft['median_cpu_ms']} ms CPU; with 20 of them marked as corrections "
                 f"{ft['corrections_20_median_wall_ms']} / {ft['corrections_20_median_cpu_ms']} ms; with 20 negatives "
                 f"{ft['negatives_20_median_wall_ms']} / {ft['negatives_20_median_cpu_ms']} ms"
                 f"{'' if ft['meta'].get('published', True) else ' (' + str(ft['meta'].get('flag')) + ')'}")
    print(lines[-1])
    print(f"machine: {out['machine']}; whole benchmark {out['seconds']} s")
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "fewshot.json").write_text(json.dumps(out, indent=1))
    (HERE / "out" / "fewshot.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
