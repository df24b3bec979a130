"""The torch-free runtime against the torch path (issue 25), in one run on this machine.

    python benchmarks/bench_runtime.py [agreement size cold gui indexing busy]   (default: all)

- agreement: random-weight ViT-B-32 and the default architecture, exported to model folders and
  run by the default runtime, against open_clip/torch fp32: mean (and min) cosine on the 359
  shared photos and on 1,000 varied prompts (non-ASCII, over-long), and how many of 50 queries
  give the same top 10 over the shared photos.
- size: a fresh venv with the default install (`pip install` of the wheel built here; pip's own
  cache in use, as a second install on a machine would have it) — seconds and megabytes — beside
  the size of the test venv, which holds the torch extra.
- cold: `clipdesk search "a dog" -k 10` on a 10,000-photo library (synthetic vectors, the
  default architecture), a new process each time, median of 5, torch-free venv vs the torch path
  (`ARCH/random`, which runs in torch); `clipdesk status` the same way.
- gui: a new process from start to the first painted grid of that library (offscreen Qt).
- indexing: 300 camera JPEGs: model-only M, decode-only D, bound B = 1/(1/M + 1/D) and the real
  `index` E, for the runtime's measured choice and for the torch path in the same run.
- busy: the same with one busy-loop process started by the benchmark, bound measured under it.
  (`BENCH_RUNTIME_ONLY=1 .venv-lite/bin/python benchmarks/bench_runtime.py indexing busy` measures
  the default install's own choice, without the torch path.)

Needs the [torch] extra (for the export and the torch path) and `make install-test`'s .venv-lite.
Every figure carries the load around it (benchmeta.Watch); results go to benchmarks/out/.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmeta import Watch, machine  # noqa: E402
from run_all import camera_library, clustered_vectors  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
LITE = Path(os.environ.get("CLIPDESK_LITE_PYTHON", REPO / ".venv-lite" / "bin" / "python"))
OUT = REPO / "benchmarks" / "out"
WORK = Path(os.environ.get("CLIPDESK_BENCH_WORK", tempfile.gettempdir())) / "clipdesk-bench-runtime"
DEFAULT_ARCH = "ViT-B-32-256"
ARCHS = ("ViT-B-32", DEFAULT_ARCH)


def exported(arch: str) -> Path:
    """The model folder of ``arch``'s seeded random weights (exported once, kept in WORK)."""
    from clipdesk.runtime import ModelSpec, export_to_folder

    dest = WORK / "models" / f"{arch}__random"
    if not (dest / "config.json").is_file():
        export_to_folder(ModelSpec(arch, "random"), dest)
    return dest


def prompts(n: int = 1000) -> list[str]:
    """Varied prompts: captions of the shared set, class phrases, non-ASCII and over-long ones."""
    caps = [json.loads(ln)["caption"] for ln in (SHARED / "photos" / "captioned" / "captions.jsonl").open()]
    classes = sorted(p.name for p in (SHARED / "photos" / "labelled").iterdir())
    extra = ["un chien dans la neige", "ein Hund im Schnee – Überraschung!", "雪の中の犬", "собака в снегу", "كلب في الثلج",
             "🐶 in ❄️", "café crème brûlée", "naïve façade", "&amp; <b>bold</b> &quot;quoted&quot;", "x" * 300,
             " ".join(["a very long description of a photo"] * 30), "", "   ", "\tTAB\nNEWLINE"]
    out = caps + [f"a photo of a {c}" for c in classes] + extra
    rng = np.random.default_rng(0)
    while len(out) < n:
        a, b = rng.choice(caps, 2)
        out.append(f"{a[:60]} and {b[:60]}")
    return out[:n]


def bench_agreement() -> dict:
    import torch

    from clipdesk.indexer.decode import decode_image
    from clipdesk.runtime import ModelSpec, load_encoder, torch_backend

    photos = sorted((SHARED / "photos" / "labelled").rglob("*.jpg"))
    texts = prompts()
    out = {}
    for arch in ARCHS:
        folder = exported(arch)
        ours = load_encoder(ModelSpec.parse(None, model_dir=str(folder)), precision="fp32")
        ref = torch_backend.load_encoder(ModelSpec(arch, "random"), "cpu", "fp32")
        assert ref.precision == "fp32" and isinstance(ref.model.logit_scale, torch.nn.Parameter)
        imgs = [decode_image(str(p), ours.min_side).image for p in photos]
        a = np.vstack([ours.encode_images(imgs[i:i + 32]) for i in range(0, len(imgs), 32)])
        b = np.vstack([ref.encode_images(imgs[i:i + 32]) for i in range(0, len(imgs), 32)])
        ta, tb = ours.encode_texts(texts), ref.encode_texts(texts)
        ci, ct = (a * b).sum(1), (ta * tb).sum(1)
        same = sum(set(np.argsort(-(a @ ta[q]))[:10]) == set(np.argsort(-(b @ tb[q]))[:10]) for q in range(50))
        auto = load_encoder(ModelSpec.parse(None, model_dir=str(folder)))  # the runtime's own choice
        c_auto = (np.vstack([auto.encode_images(imgs[i:i + 32]) for i in range(0, len(imgs), 32)]) * b).sum(1)
        # the default install's int8 (ONNX Runtime's dynamic int8), whatever this venv's own choice
        from clipdesk.runtime import onnx as ort_backend

        q = WORK / f"{arch}-int8-dynamic.onnx"
        if not q.exists():
            ort_backend.quantize_dynamic_int8(folder / "visual" / "model.onnx", q)
        int8 = ort_backend.OrtSession(q, os.cpu_count() or 1, "int8")
        prepared = [ours.prepare(im) for im in imgs]
        c8 = np.vstack([int8.run(np.stack(prepared[i:i + 32])) for i in range(0, len(prepared), 32)])
        c8 = ((c8 / np.linalg.norm(c8, axis=1, keepdims=True)) * b).sum(1)
        out[arch] = {"images": len(imgs), "image_mean_cos": round(float(ci.mean()), 6), "image_min_cos": round(float(ci.min()), 6),
                     "texts": len(texts), "text_mean_cos": round(float(ct.mean()), 6), "text_min_cos": round(float(ct.min()), 6),
                     "top10_identical_of_50": int(same),
                     "auto_choice": f"{auto.backend} {auto.precision}", "auto_image_mean_cos": round(float(c_auto.mean()), 6),
                     "auto_image_min_cos": round(float(c_auto.min()), 6),
                     "ort_dynamic_int8_image_mean_cos": round(float(c8.mean()), 6),
                     "ort_dynamic_int8_image_min_cos": round(float(c8.min()), 6)}
    return out


def _du_mb(path: Path) -> float:
    return round(int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0]) / 1e6, 1)


def bench_size() -> dict:
    work = WORK / "size"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work / "wheel"), str(REPO)],
                   check=True, capture_output=True)
    wheel = next((work / "wheel").glob("clipdesk-*.whl"))
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    t = time.perf_counter()
    p = subprocess.run([str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                       capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(p.stderr[-2000:])
    site = next((work / "venv" / "lib").glob("python3*/site-packages"))
    biggest = sorted(((_du_mb(d), d.name) for d in site.iterdir() if d.is_dir()), reverse=True)[:8]
    torchless = subprocess.run([str(work / "venv" / "bin" / "python"), "-c", "import importlib.util as u;"
                                "print(u.find_spec('torch') is None)"], capture_output=True, text=True).stdout.strip()
    return {"wheel_mb": round(wheel.stat().st_size / 1e6, 2), "pip_install_s": round(seconds, 1),
            "pip_cache": "pip's cache as this machine has it (packages downloaded before)",
            "default_install_venv_mb": _du_mb(work / "venv"), "no_torch": torchless == "True",
            "largest_packages_mb": biggest, "test_venv_with_torch_mb": _du_mb(REPO / ".venv")}


def _library(folder: Path, n: int, model_dir: Path | None) -> Path:
    """n synthetic photos with clustered 512-d vectors, through the catalog and vector code."""
    from clipdesk.indexer.catalog import Catalog, ImageRecord
    from clipdesk.indexer.vectors import VectorStore

    if (folder / "catalog.sqlite").exists():
        return folder
    folder.mkdir(parents=True)
    cat = Catalog.open(str(folder))
    name = f"{DEFAULT_ARCH}/random"
    cat.set_meta("model", name)
    cat.set_meta("dim", "512")
    if model_dir is not None:
        cat.set_meta("model_dir", str(model_dir))
    vecs = clustered_vectors(n, 512)
    photos = WORK / "thumbs"
    photos.mkdir(exist_ok=True)
    src = sorted((SHARED / "photos" / "labelled").rglob("*.jpg"))
    recs = [ImageRecord(str(src[k % len(src)]) if k < len(src) else f"/photos/{k // 1000:04d}/IMG_{k:07d}.jpg",
                        3_000_000 + k, 1_600_000_000_000_000_000 + k, f"{k:032x}", 4000, 3000,
                        1_500_000_000.0 + k * 60, vecs[k]) for k in range(n)]
    for i in range(0, n, 5000):
        cat.write_batch(recs[i:i + 5000])
    for f in ("/photos", str(SHARED / "photos" / "labelled")):  # the app shows a library with folders
        cat.add_folder(f)
    store = VectorStore.build(512, cat.iter_vectors(), cat.vector_count())
    store.generation = cat.generation
    store.save(str(folder / "vectors.faiss"), name)
    cat.close()
    return folder


def _timed(cmd: list[str], env: dict, runs: int = 5) -> dict:
    times = []
    for _ in range(runs + 1):  # the first warms the page cache and is not counted
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        times.append(time.perf_counter() - t)
        if p.returncode:
            raise RuntimeError(f"{cmd}: {p.stderr[-1000:]}")
    times = times[1:]
    return {"median_s": round(statistics.median(times), 3), "runs_s": [round(x, 3) for x in times]}


def _env() -> dict:
    return dict(os.environ, CLIPDESK_CACHE_DIR=str(WORK / "cache"), CLIPDESK_MODELS=str(WORK / "models"),
                HF_HUB_OFFLINE="1")


def bench_cold(n: int = 10_000) -> dict:
    folder = exported(DEFAULT_ARCH)
    lite = _library(WORK / f"lib-lite-{n}", n, folder)
    torchlib = _library(WORK / f"lib-torch-{n}", n, None)
    env = _env()
    out = {"photos": n, "model": f"{DEFAULT_ARCH}/random"}
    out["search_runtime"] = _timed([str(LITE), "-m", "clipdesk.cli", "--library", str(lite), "search", "a dog", "-k", "10"], env)
    out["status_runtime"] = _timed([str(LITE), "-m", "clipdesk.cli", "--library", str(lite), "status"], env)
    out["search_torch_path"] = _timed([sys.executable, "-m", "clipdesk.cli", "--library", str(torchlib), "search",
                                       "a dog", "-k", "10"], env)
    out["import_onnxruntime_tokenizers_s"] = _timed([str(LITE), "-c", "import onnxruntime, tokenizers"], env)["median_s"]
    out["import_torch_s"] = _timed([sys.executable, "-c", "import torch"], env)["median_s"]
    return out


GUI_CHILD = r"""
import os, sys, time
t0 = float(os.environ["BENCH_T0"])
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
from PySide6.QtCore import QEvent, QObject, QSettings
from PySide6.QtWidgets import QApplication
app = QApplication([sys.argv[0]])
from clipdesk.library import Library
from clipdesk.ui.main_window import MainWindow
lib = Library(sys.argv[1], model_process=True)
win = MainWindow(lib, QSettings(os.path.join(sys.argv[2], "s.ini"), QSettings.Format.IniFormat))
class Painted(QObject):
    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.Paint and win.search_view.results.rowCount() > 0:
            print(time.time() - t0, win.search_view.results.rowCount(), flush=True)
            os._exit(0)
        return False
f = Painted()
win.search_view.grid.viewport().installEventFilter(f)
win.resize(1600, 1000)
win.show()
app.exec()
"""


def bench_gui(n: int = 10_000) -> dict:
    lite = _library(WORK / f"lib-lite-{n}", n, exported(DEFAULT_ARCH))
    times = []
    for _ in range(6):
        env = dict(_env(), BENCH_T0=repr(time.time()))
        p = subprocess.run([str(LITE), "-c", GUI_CHILD, str(lite), tempfile.mkdtemp()], capture_output=True,
                           text=True, env=env, timeout=120)
        if p.returncode:
            raise RuntimeError(p.stderr[-1500:])
        times.append(float(p.stdout.split()[0]))
    return {"photos": n, "start_to_first_painted_grid_median_s": round(statistics.median(times[1:]), 3),
            "runs_s": [round(x, 3) for x in times[1:]], "platform": "offscreen Qt, torch-free venv"}


def _busy_loop(stop) -> None:  # one core kept busy by another process
    while not stop.is_set():
        pass


def _rates(enc, files, batch: int = 32) -> tuple[float, float]:
    """(M, D): model-only and decode-only rates over ``files`` with this machine's cores."""
    from clipdesk.indexer.decode import decode_image

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        t = time.perf_counter()
        prepared = list(pool.map(lambda p: enc.prepare(decode_image(p, enc.min_side).image), files))
        D = len(files) / (time.perf_counter() - t)
    x = prepared[:batch]
    enc.embed(x)  # warm-up (and the runtime's one-time measurement)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        enc.embed(x)
        runs.append(len(x) / (time.perf_counter() - t))
    return statistics.median(runs), D


def _index_rate(photos: Path, folder: Path, **kw) -> float:
    from clipdesk.library import Library

    shutil.rmtree(folder, ignore_errors=True)
    with Library(str(folder), **kw) as lib:
        rep = lib.index([str(photos)])
    return rep.added / rep.seconds


def bench_indexing(n: int = 300, busy: bool = False) -> dict:
    from clipdesk.runtime import ModelSpec, load_encoder

    photos = camera_library(WORK / "camera", n)
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    folder = exported(DEFAULT_ARCH)
    stop = multiprocessing.Event()
    hog = multiprocessing.Process(target=_busy_loop, args=(stop,), daemon=True) if busy else None
    if hog:
        hog.start()
        time.sleep(1)
    try:
        out = {"images": n, "busy_loop_processes": int(busy)}
        enc = load_encoder(ModelSpec.parse(None, model_dir=str(folder)))
        M, D = _rates(enc, files)
        B = 1 / (1 / M + 1 / D)
        E = statistics.median(_index_rate(photos, WORK / f"idx-rt-{r}", model_dir=str(folder)) for r in range(2))
        out["runtime"] = {"choice": f"{enc.backend} {enc.precision}", "M": round(M, 1), "D": round(D, 1),
                          "B": round(B, 1), "E": round(E, 1), "E_over_B": round(E / B, 3)}
        out["python"] = sys.executable
        if os.environ.get("BENCH_RUNTIME_ONLY"):  # run in the default (torch-free) install: no torch path
            return out
        tenc = load_encoder(ModelSpec(DEFAULT_ARCH, "random"))
        tM, tD = _rates(tenc, files)
        tB = 1 / (1 / tM + 1 / tD)
        tE = statistics.median(_index_rate(photos, WORK / f"idx-torch-{r}", model=f"{DEFAULT_ARCH}/random")
                               for r in range(2))
        out["torch_path"] = {"precision": tenc.precision, "M": round(tM, 1), "D": round(tD, 1), "B": round(tB, 1),
                             "E": round(tE, 1), "E_over_B": round(tE / tB, 3)}
        out["E_runtime_over_E_torch"] = round(E / tE, 3)
        return out
    finally:
        stop.set()
        if hog:
            hog.join(5)


BENCHES = {"agreement": bench_agreement, "size": bench_size, "cold": bench_cold, "gui": bench_gui,
           "indexing": bench_indexing, "busy": lambda: bench_indexing(busy=True)}


def main() -> None:
    names = sys.argv[1:] or list(BENCHES)
    WORK.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "date": date.today().isoformat()}
    for name in names:
        with Watch() as w:
            try:
                figures = BENCHES[name]()
            except Exception as e:  # noqa: BLE001 - one failed benchmark must not lose the others' figures
                figures = {"error": f"{type(e).__name__}: {e}"}
        meta = w.meta()
        figures["meta"] = {k: v for k, v in meta.items() if k != "machine"}
        results[name] = figures
        print(json.dumps({name: figures}), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "bench_runtime.json", "a") as f:
        f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
