"""Local vs Ray indexing throughput on this machine: what the cluster engine costs on one node.

The same camera-sized JPEGs (4000×3000, from ../shared/data/photos/highres) are indexed into fresh
libraries by the local pipeline and by `--engine ray` on a Ray instance started here (with as many
CPUs as this process may use), with the real model architecture (`ViT-B-32-256/random`: trained
weights cost the same). For each run: the job rate (images / the whole `index`, model loads and Ray
start-up of the job included) and the steady rate (images / time between the first and the last
committed batch). The Ray instance's own start is timed apart (a cluster is started once, not per
job). Runs are interleaved (local, Ray, Ray, local, ...) so a change of load hits each engine
alike; medians are reported. The libraries are compared: same paths, the largest vector
difference (float16 rows). The photos are made once under benchmarks/out/camera-N/.

    python benchmarks/bench_ray.py [N_PHOTOS]      # default 300; prints one JSON document

Machine and load come with the figures (benchmeta); a run under load says so and is not for
RESULTS.md. On a real cluster the rate scales with the workers; this measures the overhead only.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmeta  # noqa: E402
from run_all import ARCH, camera_library  # noqa: E402 - the same photos as the indexing benchmark

OUT = Path(__file__).resolve().parent / "out"


def vectors(folder: Path) -> dict[str, np.ndarray]:
    conn = sqlite3.connect(f"file:{folder}/catalog.sqlite?mode=ro", uri=True)
    try:
        return {os.fsdecode(p): np.frombuffer(v, np.float16).astype(np.float32)
                for p, v in conn.execute("SELECT path, vector FROM images WHERE vector IS NOT NULL")}
    finally:
        conn.close()


def descendants_cpu_seconds() -> float:
    """CPU seconds of this process's live descendants (Ray's raylet and workers are not waited
    for, so the rusage of children, which benchmeta counts as this run's own, misses them). A
    lower bound: workers that exited and were not reaped by their raylet are not counted, so
    the "under load" flag errs on the side of flagging."""
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / tick  # utime stime cutime cstime
    me, total = os.getpid(), 0.0
    for pid in parent:
        p = pid
        while p > 1 and p != me:
            p = parent.get(p, 0)
        if p == me and pid != me:
            total += cpu[pid]
    return total


def run(photos: Path, lib_dir: Path, engine_args: dict | None) -> dict:
    """One ``index`` into a fresh library: job and steady rates."""
    from clipdesk.library import Library

    commits: list[tuple[float, int]] = []

    def progress(p) -> None:
        if p.stage == "embed" and p.done:
            commits.append((time.perf_counter(), p.done))

    with Library(str(lib_dir), model=ARCH) as lib:
        lib.encoder  # noqa: B018 - the driver's own model load is not the engine's cost
        engine = lib.ray_engine(**engine_args) if engine_args is not None else None
        t = time.perf_counter()
        report = lib.index([str(photos)], engine=engine, progress=progress)
        seconds = time.perf_counter() - t
        precision = lib.encoder.precision
    (t0, d0), (t1, d1) = commits[0], commits[-1]
    # Results arrive in bursts (a Ray task's files at once): a steady rate needs a few of them.
    arrivals = len({round(c[0], 1) for c in commits})
    return {"images": report.added, "failed": report.failed, "seconds": round(seconds, 2),
            "job_img_s": round(report.added / seconds, 1),
            "steady_img_s": round((d1 - d0) / (t1 - t0), 1) if arrivals >= 3 else None,
            "first_batch_after_s": round(t0 - t, 2), "arrivals": arrivals, "driver_precision": precision}


def main(n: int, rounds: int = 2) -> dict:
    import ray

    work = Path(tempfile.mkdtemp(prefix="clipdesk-bench-ray-"))
    out: dict = {"date": time.strftime("%Y-%m-%d"), "photos": f"{n} JPEGs 4000x3000 q90", "model": ARCH,
                 "ray": ray.__version__, "rounds": rounds}
    try:
        photos = camera_library(OUT / f"camera-{n}", n)  # kept: made once (minutes), reused
        cores = benchmeta.cores()
        configs = {"local": None, f"ray_1_worker_x_{cores}_cpus": dict(cpus_per_worker=cores, workers=1),
                   f"ray_{cores}_workers_x_1_cpu": dict(cpus_per_worker=1, workers=cores)}
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        with benchmeta.Watch() as watch:
            t = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            out["ray_start_s"] = round(time.perf_counter() - t, 2)
            try:
                # Interleaved (local, Ray, Ray, local, ...): a change of load hits every engine alike.
                for r in range(rounds):
                    for name, args in configs.items():
                        runs[name].append(run(photos, work / f"{name}-{r}", args))
            finally:
                ray_cpu = descendants_cpu_seconds()
                ray.shutdown()
        local = vectors(work / "local-0")
        for name, rs in runs.items():
            row = out[name] = {"runs": rs}
            for key in ("job_img_s", "steady_img_s", "first_batch_after_s"):
                values = [x[key] for x in rs if x[key] is not None]
                row[f"median_{key}"] = round(statistics.median(values), 2) if values else None
            if name != "local":
                for key in ("job_img_s", "steady_img_s"):
                    mine, base = row[f"median_{key}"], out["local"][f"median_{key}"]
                    row[f"{key}_vs_local"] = round(mine / base, 3) if mine and base else None
                other = vectors(work / f"{name}-0")
                row["same_paths_as_local"] = sorted(other) == sorted(local)
                row["max_abs_vector_diff_vs_local"] = float(max(
                    (np.abs(other[p] - v).max() for p, v in local.items() if p in other), default=float("nan")))
        # Ray's processes worked for this benchmark: they are not "other processes".
        others = None if watch.others_cores is None else max(0.0, watch.others_cores - ray_cpu / watch.seconds)
        out["ray_processes_cpu_s"] = round(ray_cpu, 1)
        out.update(benchmeta.flag_if_loaded({"machine": benchmeta.machine()}, watch.before, watch.after, others))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


if __name__ == "__main__":
    figures = main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_ray.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
