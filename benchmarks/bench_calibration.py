"""Per-category thresholds (issue 28): the precision they reach on held-out items, and the recall.

    .venv/bin/python benchmarks/bench_calibration.py [--seeds 5]

For each evaluation set (the ones bench_fewshot.py uses: shared/data/fewshot-proxy.npz and
benchmarks/data/*.npz): ``clipdesk eval calibration`` at K = 4, 8, 16 examples per class and
target precision 0.8 / 0.9 / 0.95 — the threshold chosen per category as the app chooses it
(clipdesk.ops.auto.category_scores: the examples held out of the probe's folds, and the unlabelled
test items standing in for the library, their probabilities shifted to its mix of categories),
then the precision of the test items above it (pooled over categories) and the recall there,
mean over seeds; beside it, thresholds chosen knowing the test labels ("best": where every photo
the probe names is already right more often than the target, the target is out of reach and
this is the bar). Goal: within 0.05 of the target (of "best" where out of reach) at K ≥ 8.
Accuracy figures do not depend on load. Writes benchmarks/out/calibration.json.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small fits: BLAS threads only slow them (bench_fewshot.py)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from bench_fewshot import SETS
from benchmeta import machine

from clipdesk.teach.evaluation import calibration_table, eval_calibration


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--sets", nargs="*", default=[str(s) for s in SETS])
    args = p.parse_args()
    out: dict = {"machine": machine(), "runs": []}
    for path in args.sets:
        t = time.perf_counter()
        res = eval_calibration(path, args.seeds)
        res["seconds"] = round(time.perf_counter() - t, 1)
        out["runs"].append(res)
        print("\n".join(calibration_table(res)), f"({res['seconds']} s)", flush=True)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "calibration.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
