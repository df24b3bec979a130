"""Duplicate finding at scale: time, peak memory and recall of ``find_duplicates`` on synthetic
libraries of 512-d vectors (100k; 1M on request), built through the real catalog and index code.

    .venv/bin/python benchmarks/bench_duplicates.py                 # 100k
    .venv/bin/python benchmarks/bench_duplicates.py 100000 1000000  # and 1M (~2 min to build)

Vectors: 3000 themes (clusters) whose members have cosine ~0.8 to each other (photos of one
subject), plus planted near-duplicates: 1 % of the photos get a twin at cosine 0.93–0.99 (a
re-encode, a resize) and 1 % a merely similar neighbour at cosine 0.82–0.88 (a burst shot).
The search runs with ``verify_pixels=False`` (synthetic rows have no files): the figures are the
range search, exact re-scoring and grouping. Each size runs in a fresh child process so its peak
resident memory (VmHWM) is its own. Prints one JSON document; record it in RESULTS.md with the
machine's load (``/proc/loadavg``), which is printed with it.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import clustered_vectors, machine, peak_rss_mb  # noqa: E402

THRESHOLD = 0.90
DIM = 512


def _near(rng, v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Unit vectors at a cosine drawn from [lo, hi] to each row of ``v``."""
    cos = rng.uniform(lo, hi, (len(v), 1)).astype(np.float32)
    noise = rng.standard_normal(v.shape).astype(np.float32)
    noise -= (noise * v).sum(1, keepdims=True) * v
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    out = cos * v + np.sqrt(1 - cos**2) * noise
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def build(folder: Path, n: int) -> dict:
    from clipdesk.indexer.catalog import Catalog, ImageRecord
    from clipdesk.indexer.vectors import VectorStore

    t0 = time.perf_counter()
    rng = np.random.default_rng(1)
    planted = n // 100
    base_n = n - 2 * planted
    base = clustered_vectors(base_n, DIM, clusters=3000, spread=0.5, seed=0)
    twins = _near(rng, base[:planted], 0.93, 0.99)
    similar = _near(rng, base[planted:2 * planted], 0.82, 0.88)
    folder.mkdir(parents=True, exist_ok=True)
    cat = Catalog.open(str(folder))
    cat.set_meta("model", "ViT-B-32-256/random")
    cat.set_meta("dim", str(DIM))
    chunks = [(0, base), (base_n, twins), (base_n + planted, similar)]
    for offset, vecs in chunks:
        for i in range(0, len(vecs), 5000):
            cat.write_batch([ImageRecord(f"/photos/{(offset + k) // 1000:04d}/IMG_{offset + k:07d}.jpg",
                                         3_000_000 + offset + k, 1_600_000_000_000_000_000 + offset + k,
                                         f"{offset + k:032x}", 4000, 3000, 1_500_000_000.0 + (offset + k) * 60, v)
                             for k, v in enumerate(vecs[i:i + 5000], start=i)])
    del base, twins, similar
    store = VectorStore.build(DIM, cat.iter_vectors(), cat.vector_count())
    store.generation = cat.generation
    store.save(str(folder / "vectors.faiss"), "ViT-B-32-256/random")
    cat.close()
    # Catalog ids are 1-based in insertion order: twin k (row base_n + k) belongs to row k.
    return {"planted_twins": planted, "planted_similar": planted, "base": base_n,
            "build_s": round(time.perf_counter() - t0, 1), "index": store.kind}


def child(folder: str, n: int, base: int, planted: int) -> None:
    """A fresh process: open the library, find duplicates, report time, memory and recall."""
    from clipdesk.duplicates import find_duplicates
    from clipdesk.library import Library

    t0 = time.perf_counter()
    lib = Library(folder)
    lib.vectors  # noqa: B018 - opening the index is part of what a user waits for
    open_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = find_duplicates(lib, THRESHOLD, verify_pixels=False)
    find_s = time.perf_counter() - t1
    twins = {(k + 1, base + k + 1) for k in range(planted)}
    similar = {(planted + k + 1, base + planted + k + 1) for k in range(planted)}
    found = set()
    for g in report.groups:
        ids = sorted(p.id for p in g.photos)
        found |= {(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]}
    print(json.dumps({
        "open_s": round(open_s, 2), "find_s": round(find_s, 2), "peak_rss_mb": round(peak_rss_mb()),
        "index": lib.vectors.kind, "candidate_pairs": report.candidates, "groups": len(report.groups),
        "planted_twin_recall": round(len(found & twins) / len(twins), 4),
        "planted_similar_grouped": len(found & similar),
        "other_pairs_grouped": len(found - twins - similar),
    }))


def main(sizes: list[int]) -> None:
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "threshold": THRESHOLD,
           "vectors": "3000 clusters (member-to-member cosine ~0.8), 1 % planted twins at 0.93-0.99, "
                      "1 % planted similar at 0.82-0.88; 512-d float16 in the catalog; verify_pixels=False"}
    work = Path(tempfile.mkdtemp(prefix="clipdesk-bench-dup-"))
    try:
        for n in sizes:
            folder = work / f"lib{n}"
            row = build(folder, n)
            load_before = open("/proc/loadavg").read().split()[:3]
            res = subprocess.run([sys.executable, __file__, "--child", str(folder), str(n), str(row["base"]),
                                  str(row["planted_twins"])], capture_output=True, text=True, timeout=3600)
            if res.returncode:
                raise SystemExit(res.stderr[-3000:])
            row.update(json.loads(res.stdout.strip().splitlines()[-1]))
            row["loadavg_before"] = " ".join(load_before)
            row["loadavg_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
            out[str(n)] = row
            print(json.dumps({n: row}), file=sys.stderr, flush=True)
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    else:
        main([int(a) for a in sys.argv[1:]] or [100_000])
