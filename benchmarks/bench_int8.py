"""Issue 12 item 6: int8 image towers against torch's bf16 on CPUs (ViT-B-32-256, random weights).

    .venv/bin/python benchmarks/bench_int8.py              # model only + agreement + end to end (~6 min)
    .venv/bin/python benchmarks/bench_int8.py --e2e 0      # without the end-to-end runs

Needs ``pip install 'clipdesk[int8]'`` (OpenVINO + NNCF); ONNX Runtime (``onnxruntime onnx``) adds
its dynamic and static int8 where installed. Before each part it waits (up to ``--wait-quiet``
seconds) for the 1-minute load average to fall below 1.5; every part records the load before and
after and the CPU other processes used (benchmeta), and says whether it is publishable.

1. Model only, batch 32, 2 warm-ups, median of 5 runs interleaved across all candidates (so a
   change of load hits all alike), and CPU ms per image (process time): torch fp32 and bf16;
   OpenVINO fp32 with a bf16 inference hint; OpenVINO static int8 as the app builds it (NNCF,
   calibrated on synthetic photo-like images: ``clipdesk.models.calibration_images``) and, for
   comparison, calibrated on 300 real photos (``shared/data/photos/captioned``, not the photos
   the agreement is measured on); ONNX Runtime dynamic int8 (the app's other backend) and static
   int8 (QDQ, per-channel weights, calibrated on the same 300 photos).
2. Agreement with fp32 on the 359 labelled photos: mean and min cosine, and zero-shot top-1
   agreement with fp32 (14 class prompts, fp32 text vectors). With random weights the top two
   class scores are near-ties, so top-1 agreement is a mechanics figure, not a quality one.
3. End to end: the real ``Library.index`` (what ``clipdesk index`` runs) of N camera JPEGs
   (4000×3000), bf16 against int8 (the app's build), 3 runs each, interleaved.

Results: printed as JSON and written to benchmarks/out/int8-<time>.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmeta
from run_all import ARCH, REPO, SHARED, camera_library, model_rates

CALIBRATION_PHOTOS = 300


def _prepared(enc, paths) -> np.ndarray:
    from clipdesk.indexer.decode import decode_image

    return np.stack([np.asarray(enc.prepare(decode_image(str(p), enc.min_side).image), np.float32) for p in paths])


def _openvino(xml: str, threads: int, precision: str = "f32"):
    import openvino as ov
    import torch

    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                    "PERFORMANCE_HINT": "LATENCY",
                                                    "INFERENCE_PRECISION_HINT": precision,
                                                    "ENABLE_CPU_PINNING": False})
    request = compiled.create_infer_request()
    return lambda t: torch.from_numpy(np.array(request.infer({0: t.numpy()})[0], copy=True))


def candidates(enc, calib: np.ndarray, work: Path, say=print) -> tuple[dict, dict]:
    """{name: (model, dtype) or fn} of every candidate installed here, and their build seconds."""
    import torch

    from clipdesk.models import Int8Visual

    threads = torch.get_num_threads()
    fp32 = enc.model
    out = {"torch_fp32": (fp32, torch.float32), "torch_bf16": (copy.deepcopy(fp32).to(torch.bfloat16), torch.bfloat16)}
    build: dict[str, float] = {}
    size = enc.image_size
    have_ov = Int8Visual.backend_available() == "openvino"
    if have_ov:
        import nncf
        import openvino as ov

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ov_fp32 = ov.convert_model(fp32.visual, example_input=torch.zeros(1, 3, size, size), input=[(-1, 3, size, size)])
        ov.save_model(ov_fp32, str(work / "ov_fp32.xml"), compress_to_fp16=False)
        out["openvino_bf16_hint"] = _openvino(str(work / "ov_fp32.xml"), threads, "bf16")
        t = time.perf_counter()
        app = Int8Visual.build(enc.spec, fp32, say, backend="openvino")
        build["openvino_int8_static_synthetic_calibration (the app's)"] = round(time.perf_counter() - t, 1)
        if app is not None:
            out["openvino_int8_static_synthetic_calibration"] = lambda t: torch.from_numpy(app(t.numpy()))
        t = time.perf_counter()
        nncf.set_log_level(40)
        q = nncf.quantize(ov_fp32, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                          preset=nncf.QuantizationPreset.MIXED)
        ov.save_model(q, str(work / "ov_int8_photos.xml"), compress_to_fp16=False)
        build["openvino_int8_static_photo_calibration"] = round(time.perf_counter() - t, 1)
        out["openvino_int8_static_photo_calibration"] = _openvino(str(work / "ov_int8_photos.xml"), threads)
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError:
        say("onnxruntime/onnx not installed: its candidates are left out")
        return out, build
    t = time.perf_counter()
    dyn = Int8Visual.build(enc.spec, fp32, say, backend="onnxruntime")
    build["onnxruntime_int8_dynamic (the app's other backend)"] = round(time.perf_counter() - t, 1)
    if dyn is not None:
        out["onnxruntime_int8_dynamic"] = lambda t: torch.from_numpy(dyn(t.numpy()))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    t = time.perf_counter()
    with torch.enable_grad(), warnings.catch_warnings():  # plain attention path: it has an ONNX form
        warnings.simplefilter("ignore")
        torch.onnx.export(fp32.visual, (torch.zeros(1, 3, size, size),), str(work / "v.onnx"), input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False, opset_version=17)
        quantize_static(str(work / "v.onnx"), str(work / "v.qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    build["onnxruntime_int8_static_qdq_photo_calibration"] = round(time.perf_counter() - t, 1)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(work / "v.qdq.onnx"), so, providers=["CPUExecutionProvider"])
    out["onnxruntime_int8_static_qdq_photo_calibration"] = lambda t: torch.from_numpy(sess.run(None, {"x": t.numpy()})[0])
    return out, build


def agreement(enc, models: dict) -> dict:
    """Mean/min cosine with fp32 and zero-shot top-1 agreement on the labelled photos."""
    import torch

    root = SHARED / "photos" / "labelled"
    paths = sorted(root.rglob("*.jpg"))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    x = torch.from_numpy(_prepared(enc, paths))
    txt = torch.from_numpy(enc.encode_texts([f"a photo of a {c}" for c in classes]))

    def emb(v):
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), 32):
                b = x[i:i + 32]
                o = v(b) if callable(v) else v[0].encode_image(b.to(v[1]))
                outs.append(torch.nn.functional.normalize(o.float(), dim=-1))
        return torch.cat(outs)

    ref = emb(models["torch_fp32"])
    scores = ref @ txt.T
    top = scores.argmax(1)
    s = scores.sort(1, descending=True).values
    res = {"photos": len(paths), "classes": len(classes),
           "fp32_median_top1_top2_margin": round(float((s[:, 0] - s[:, 1]).median()), 4)}
    for k, v in models.items():
        if k == "torch_fp32":
            continue
        e = emb(v)
        cos = (ref * e).sum(1)
        res[k] = {"mean_cosine": round(float(cos.mean()), 5), "min_cosine": round(float(cos.min()), 5),
                  "zero_shot_top1_agreement": round(float(((e @ txt.T).argmax(1) == top).float().mean()), 4)}
    return res


def end_to_end(n: int, runs: int = 3) -> dict:
    """``Library.index`` of n camera JPEGs, bf16 against int8, interleaved; img/s per run."""
    from clipdesk.library import Library

    photos = REPO / "benchmarks" / "out" / "camera-300"
    if len(list(photos.glob("*.jpg"))) < n:
        photos = camera_library(photos, 300)
    work = Path(tempfile.mkdtemp(prefix="clipdesk-int8-e2e-"))
    src = work / "photos"
    src.mkdir()
    for p in sorted(photos.glob("*.jpg"))[:n]:
        os.symlink(p, src / p.name)
    res: dict[str, list[float]] = {"bf16": [], "int8": []}
    try:
        for r in range(runs):
            for prec in ("bf16", "int8"):
                lib = Library(str(work / f"lib-{prec}-{r}"), model=ARCH, precision=prec)
                lib.encoder  # noqa: B018 - loaded outside the timing
                if lib.encoder.precision != prec:
                    raise RuntimeError(f"asked for {prec}, got {lib.encoder.precision} (is clipdesk[int8] installed?)")
                rep = lib.index([str(src)])
                lib.close()
                res[prec].append(round(rep.added / rep.seconds, 1))
                print(f"  e2e {prec} run {r + 1}: {res[prec][-1]} img/s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: float(np.median(v)) for k, v in res.items()}
    return {"images": n, "img_s": res, "median_img_s": med, "int8_over_bf16": round(med["int8"] / med["bf16"], 2),
            "target_img_s": 55}


def _part(name: str, fn, results: dict, wait: float) -> None:
    if wait:
        benchmeta.wait_until_quiet(max_wait=wait)
    with benchmeta.Watch() as w:
        figures = fn()
    figures.update({k: v for k, v in w.meta().items() if k != "machine"})
    results[name] = figures
    print(json.dumps({name: figures}), flush=True)
    if not figures["published"]:
        print(f"{name}: {figures['flag']}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--e2e", type=int, default=150, metavar="N",
                    help="camera JPEGs indexed end to end (0: skip; at most 300). Short runs understate "
                         "int8's gain: 20 JPEGs read 1.2x, 150 and 300 read 1.6-1.7x (start-up dominates)")
    ap.add_argument("--wait-quiet", type=float, default=300.0, metavar="SECONDS")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipdesk-int8-"))
    os.environ["CLIPDESK_CACHE_DIR"] = str(work / "cache")  # int8 builds from scratch, timed; e2e reuses them
    warnings.filterwarnings("ignore")
    import torch

    from clipdesk.models import ModelSpec, load_encoder

    enc = load_encoder(ModelSpec.parse(ARCH), precision="fp32")
    captioned = sorted((SHARED / "photos" / "captioned").rglob("*.jpg"))[:CALIBRATION_PHOTOS]
    calib = _prepared(enc, captioned)
    results: dict = {"machine": benchmeta.machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "threads": torch.get_num_threads(), "batch": 32}
    try:
        models, build = candidates(enc, calib, work, say=lambda m: print(m, file=sys.stderr, flush=True))
        results["build_seconds"] = build

        def model_only():
            rates = model_rates(models, size=enc.image_size)
            bf16 = rates["torch_bf16"]
            return {"img_s": {k: v["median"] for k, v in rates.items()},
                    "cpu_ms_per_img": {k: v["cpu_ms_per_img"] for k, v in rates.items()},
                    "over_torch_bf16": {k: round(v["median"] / bf16["median"], 2) for k, v in rates.items()},
                    "over_torch_bf16_by_cpu_time": {k: round(bf16["cpu_ms_per_img"] / v["cpu_ms_per_img"], 2)
                                                    for k, v in rates.items()},
                    "runs_img_s": {k: v["runs"] for k, v in rates.items()},
                    "compared_with": "torch bf16, same batch, same run, interleaved"}

        _part("model_only", model_only, results, args.wait_quiet)
        results["agreement_labelled_photos"] = agreement(enc, models)
        print(json.dumps({"agreement_labelled_photos": results["agreement_labelled_photos"]}), flush=True)
        models.clear()  # free the candidates before the end-to-end runs
        if args.e2e:
            _part("end_to_end", lambda: end_to_end(args.e2e), results, args.wait_quiet)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = REPO / "benchmarks" / "out" / f"int8-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
