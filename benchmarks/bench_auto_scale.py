"""What reading a category's threshold on the library costs (issue 28) as the library grows.

    .venv/bin/python benchmarks/bench_auto_scale.py [--sizes 10000 100000 1000000]

On the synthetic libraries of bench_scale.py (clustered unit vectors through the real catalog
code, cached under benchmarks/out/), with 4 labels × 50 photos and a probe trained on them:
``clipdesk.ops.auto.library_scores`` — the refit for the examples' held-out probabilities, the
sample of at most 20,000 library photos, their probabilities and the prior shift — timed cold (a
fresh process: the vector file opened, nothing cached) and once more warm in the same process.
This is what the app runs after each training, and ``auto run`` after a retrain. Writes
benchmarks/out/auto_scale.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def child(folder: str) -> dict:
    from bench_scale import ARCH, _labels

    from clipdesk.library import Library
    from clipdesk.ops import auto

    lib = Library(folder, model=ARCH)
    n = lib.catalog.counts()[0]
    if "auto-bench" not in {p.name for p in lib.probes()}:
        with lib.writing():
            names = _labels(lib, n, prefix="auto")
            lib._write_vector_file()
        lib.train("auto-bench", names)
    times = []
    for _ in range(2):
        t = time.perf_counter()
        scores = auto.library_scores(lib, "auto-bench")
        times.append(time.perf_counter() - t)
    th = {k: s.threshold(0.9, enough=False) for k, s in scores.items()}
    return {"photos": n, "cold_s": round(times[0], 3), "warm_s": round(times[1], 3),
            "scored": int(sum(len(s.p) for s in scores.values())),
            "thresholds": {k: (round(t.threshold, 3) if t.known else None) for k, t in th.items()}}


def main() -> int:
    from bench_scale import OUT, build_catalog
    from benchmeta import machine

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--child")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    out = {"machine": machine(), "runs": []}
    for n in args.sizes:
        folder = build_catalog(n)
        with open("/proc/loadavg") as f:
            before = f.read().split()[0]
        # the first child trains the probe and writes the vector file; the second times it cold
        for _ in range(2):
            r = subprocess.run([sys.executable, __file__, "--child", str(folder)], capture_output=True,
                               text=True, timeout=3600)
            if r.returncode:
                print(r.stderr[-3000:], file=sys.stderr)
                return 1
        res = json.loads(r.stdout.strip().splitlines()[-1])
        with open("/proc/loadavg") as f:
            res["load"] = f"{before} → {f.read().split()[0]}"
        out["runs"].append(res)
        print(res, flush=True)
    OUT.mkdir(exist_ok=True)
    (OUT / "auto_scale.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
