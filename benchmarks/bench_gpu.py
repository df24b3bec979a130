"""GPU indexing figures (issue 12, item 1), as one short script for a CUDA machine:

    .venv/bin/python benchmarks/bench_gpu.py [--images N] [--photos DIR]

- D_cpu: decode + prepare of camera JPEGs on the CPU, all cores (clipdesk's CPU path);
- D_gpu: read + nvJPEG decode + resize/crop/normalise on the GPU (gpu_decode.py), and nvJPEG
  decode alone;
- M: the model only (ViT-B-32-256, random weights, fp16, through ``Encoder.embed``, batch 32);
- E: end to end through the indexing pipeline (``index_files``) with the GPU path, and with the
  CPU path alone for comparison;
- the bound B = min(M, D_cpu + D_gpu) and E/B (target: E ≥ 1,000 img/s on an H100/H200 with
  16 cores, E/B ≥ 0.9);
- agreement: mean cosine between the CPU path's and the GPU path's embeddings (target ≥ 0.995).

Photos: 4000×3000 JPEGs made from ../shared/data/photos/highres (as `make bench` does), or the
JPEGs of ``--photos``; without either, synthetic ones (say so in any figure you publish). Prints
one JSON document with the machine and the load (benchmeta). Without CUDA it prints
"no CUDA: skipped" and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmeta  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ARCH = "ViT-B-32-256/random"


def synthetic_camera_jpegs(folder: Path, n: int) -> Path:
    """n 4000×3000 JPEGs of smooth gradients and noise (when no real photos are at hand)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)

    def make(i: int) -> None:
        rng = np.random.default_rng(i)
        small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((4000, 3000), Image.Resampling.BICUBIC)
        noise = rng.integers(0, 12, (3000, 4000, 3), dtype=np.uint8)
        Image.fromarray(np.asarray(im) // 2 + noise).save(folder / f"IMG_{i:05d}.jpg", "JPEG", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(make, range(n)))
    return folder


def photo_files(work: Path, n: int, photos: str | None) -> tuple[list[str], str]:
    if photos:
        files = sorted(str(p) for p in Path(photos).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
        return files[:n], f"JPEGs of {photos}"
    if (SHARED / "photos" / "highres").is_dir():
        from run_all import camera_library

        folder = camera_library(work / "photos", n)
        return sorted(str(p) for p in folder.glob("*.jpg")), "4000×3000 JPEGs from shared/photos/highres"
    folder = synthetic_camera_jpegs(work / "photos", n)
    return sorted(str(p) for p in folder.glob("*.jpg")), "SYNTHETIC 4000×3000 JPEGs (no shared photos here)"


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def run(n: int, photos: str | None, cpu_check: bool = False) -> dict:
    """All figures. ``cpu_check``: the same steps on the CPU, the GPU's decoder replaced by
    torchvision's CPU decoder, to check the script's mechanics where no GPU is (figures meaningless)."""
    import torch

    from clipdesk.indexer import gpu_decode
    from clipdesk.indexer.catalog import Catalog
    from clipdesk.indexer.decode import decode_image, read_plain_jpeg
    from clipdesk.indexer.gpu_decode import GPU_BATCH, GpuJpegDecoder, GpuPreprocess, nvjpeg_decode
    from clipdesk.indexer.pipeline import index_files
    from clipdesk.indexer.vectors import VectorStore
    from clipdesk.runtime import ModelSpec, load_encoder

    work = Path(tempfile.mkdtemp(prefix="clipdesk-bench-gpu-"))
    cores = benchmeta.cores()
    dev = "cpu" if cpu_check else "cuda"
    sync = (lambda: None) if cpu_check else torch.cuda.synchronize
    decoder = cpu_jpeg_decode if cpu_check else nvjpeg_decode
    try:
        files, what = photo_files(work, n, photos)
        enc = load_encoder(ModelSpec.parse(ARCH), device=dev)
        out: dict = {"images": len(files), "photos": what, "cores": cores, "precision": enc.precision,
                     "gpu_batch": GPU_BATCH}

        # D_cpu: clipdesk's CPU path, one thread per core
        def cpu_prepare(p: str):
            return enc.prepare(decode_image(p, enc.min_side).image)

        with ThreadPoolExecutor(cores) as pool:
            t = time.perf_counter()
            cpu_prepared = list(pool.map(cpu_prepare, files))
            d_cpu = rate(len(files), time.perf_counter() - t)

        # D_gpu: read (threads) + nvJPEG + prepare on the GPU, batches of GPU_BATCH
        gpu = GpuJpegDecoder(dev, GpuPreprocess.of(enc.preprocess), decode=decoder)
        with ThreadPoolExecutor(max(2, cores // 4)) as pool:
            t = time.perf_counter()
            jpegs = list(pool.map(lambda p: read_plain_jpeg(p, 64 << 20), files))
            read_s = time.perf_counter() - t
        keep = [k for k, j in enumerate(jpegs) if j is not None]
        jp = [jpegs[k] for k in keep]
        gpu.decode(jp[:8])  # warm-up (nvJPEG handles, kernels)
        sync()
        t = time.perf_counter()
        gpu_prepared = []
        for i in range(0, len(jp), GPU_BATCH):
            gpu_prepared += gpu.decode(jp[i:i + GPU_BATCH])
        sync()
        gpu_s = time.perf_counter() - t
        bad = sum(isinstance(x, Exception) for x in gpu_prepared)
        staged = gpu._stage(jp[:GPU_BATCH])
        t = time.perf_counter()
        reps = 0
        for _ in range(3):
            decoder(staged, dev)
            reps += len(staged)
        sync()
        out.update({"D_cpu_img_s": d_cpu, "D_gpu_img_s": rate(len(jp), gpu_s),
                    "nvjpeg_decode_only_img_s": rate(reps, time.perf_counter() - t),
                    "read_for_gpu_img_s": rate(len(files), read_s),
                    "gpu_taken": len(jp), "gpu_refused_or_failed": len(files) - len(jp) + bad})

        # M: the model alone, fp16, batches of 32 of GPU-prepared inputs
        ok = [x for x in gpu_prepared if not isinstance(x, Exception)][:256]
        enc.embed(ok[:32])
        sync()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(0, len(ok), 32):
                enc.embed(ok[i:i + 32])
            sync()
            times.append(time.perf_counter() - t)
        m = rate(len(ok), statistics.median(times))
        out["M_img_s"] = m

        # agreement: the same photos through the CPU path and the GPU path
        cpu_vec = enc.embed([cpu_prepared[k] for k in keep[:256]])
        gpu_vec = enc.embed([x for x in gpu_prepared[:256]])
        if not any(isinstance(x, Exception) for x in gpu_prepared[:256]):
            cos = (cpu_vec * gpu_vec).sum(1)
            out["cosine_cpu_vs_gpu_path"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                             "images": len(cos)}
        del cpu_prepared, gpu_prepared, ok
        if (SHARED / "photos" / "labelled").is_dir():
            shared = sorted((SHARED / "photos" / "labelled").rglob("*.jpg"))
            shared = shared[:: 6 if cpu_check else 1]
            sj = [(p, read_plain_jpeg(str(p), 64 << 20)) for p in shared]
            sj = [(p, j) for p, j in sj if j is not None]
            a = enc.embed([cpu_prepare(str(p)) for p, _ in sj])
            g = []
            for i in range(0, len(sj), GPU_BATCH):
                g += gpu.decode([j for _, j in sj[i:i + GPU_BATCH]])
            b = enc.embed(g)
            cos = (a * b).sum(1)
            out["cosine_cpu_vs_gpu_path_shared_photos"] = {
                "mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                "images": len(cos), "of": len(shared)}

        # E: the pipeline end to end, GPU path and CPU path alone (fresh catalog each)
        def index(tag: str) -> float:
            cat = Catalog.open(str(work / f"lib-{tag}"))
            store = VectorStore(enc.dim)
            rep = index_files(cat, store, enc, [str(Path(files[0]).parent)], workers=cores)
            cat.close()
            out[f"E_{tag}_path_indexed_failed"] = [rep.added, rep.failed]  # the whole folder
            return rate(rep.added, rep.seconds)

        real = gpu_decode.for_embedder
        try:
            if cpu_check:  # the CPU plays the GPU
                gpu_decode.for_embedder = lambda e, w: gpu_decode.HybridDecoder(
                    GpuJpegDecoder(dev, GpuPreprocess.of(enc.preprocess), decode=decoder), cpu_jpeg_slots=w)
            e_gpu = index("gpu")
            gpu_decode.for_embedder = lambda *a: None
            e_cpu = index("cpu")
        finally:
            gpu_decode.for_embedder = real
        bound = min(m, d_cpu + out["D_gpu_img_s"])
        out.update({"E_gpu_path_img_s": e_gpu, "E_cpu_path_img_s": e_cpu, "bound_B_img_s": round(bound, 1),
                    "E_over_B": round(e_gpu / bound, 3),
                    "compared_with": "B = min(M, D_cpu + D_gpu), all measured in this run"})
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cpu_jpeg_decode(datas: list, device: str) -> list:
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in datas]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--photos", help="a folder of JPEGs to use instead of generated camera JPEGs")
    ap.add_argument("--cpu-check", action="store_true",
                    help="run every step on the CPU (the GPU decoder replaced by torchvision's CPU "
                         "decoder) to check the script where no GPU is; the figures mean nothing")
    args = ap.parse_args()
    if args.cpu_check:
        print(json.dumps(run(args.images, args.photos, cpu_check=True), indent=1))
        return 0
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        print(json.dumps({"gpu": "no CUDA: skipped", "machine": benchmeta.machine()}))
        return 0
    with benchmeta.Watch() as watch:
        figures = run(args.images, args.photos)
    figures.update(watch.meta())
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
