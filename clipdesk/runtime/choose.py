"""The measured choice of backend and precision for the image tower, cached per machine.

On first use of a model's image tower, ONNX Runtime fp32 is timed against an int8 copy of the
graph — ONNX Runtime's dynamic int8 (built once per model and machine), or where NNCF is installed
(``clipdesk[int8]``) OpenVINO's static int8 — and, where OpenVINO is installed
(``clipdesk[openvino]``), OpenVINO's own choice (bf16 on CPUs with bf16 units). A candidate is kept
only if its embeddings agree with fp32 (mean cosine ≥ ``MIN_AGREEMENT``) and it is faster by a
margin: ``GAIN`` for a float one, ``INT8_GAIN`` over the best float one for int8. The verdict is cached in the user cache folder per
CPU, core count, backend versions and model, and not cached when other programs kept the cores busy
while timing (the times would be wrong).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelError
from clipdesk.runtime import onnx, openvino
from clipdesk.runtime.folder import ModelFolder
from clipdesk.runtime.preprocess import Preprocessing

log = logging.getLogger(__name__)

MIN_AGREEMENT = 0.99
GAIN = 1.1  # OpenVINO must be this much faster than ONNX Runtime fp32 to be chosen
INT8_GAIN = 1.3  # int8 must be this much faster than the better of the others
OTHERS_BUSY_SHARE = 0.25
CALIBRATION_IMAGES = 64


def cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("CLIPDESK_CACHE_DIR") or user_cache_dir("clipdesk"))


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def _cpu_name() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    return cpu


def machine_key(folder: ModelFolder, threads: int) -> str:
    st = folder.visual.stat()
    parts = [folder.name, f"{st.st_size}", _cpu_name(), f"threads {threads}", onnx.version(),
             f"int8 {int8_backend()}"]
    if openvino.available():
        parts.append(openvino.version())
    return "|".join(parts)


def machine_loaded() -> bool:
    """Whether the 1-minute load average is above the number of cores this process may use."""
    try:
        return os.getloadavg()[0] > cores()
    except (OSError, AttributeError):
        return False


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / ticks


@contextmanager
def others_cpu(out: dict):
    """Sets ``out["cores"]`` to the cores other processes kept busy (on average) during the block."""
    busy, own, t = _busy_cpu_seconds(), time.process_time(), time.monotonic()
    try:
        yield out
    finally:
        end, seconds = _busy_cpu_seconds(), time.monotonic() - t
        out["cores"] = None if busy is None or end is None or seconds <= 0 else \
            max(0.0, (end - busy - (time.process_time() - own)) / seconds)


def free_cores(sample: float = 0.1) -> int:
    """Cores other processes leave free, measured over ``sample`` seconds (/proc/stat; all cores
    where the system does not say). The image graph runs on that many threads: threads beyond
    the free cores only wait for a neighbour's core and stall the batch they belong to."""
    out: dict = {}
    with others_cpu(out):
        time.sleep(sample)
    busy = out["cores"]
    return cores() if busy is None else max(1, min(cores(), round(cores() - busy)))


def calibration_images(n: int, pre: Preprocessing, seed: int = 0) -> np.ndarray:
    """``n`` photo-like model inputs (n, 3, size, size), normalised as ``pre`` normalises photos:
    1/f colour noise (the spectrum of natural images) with correlated channels and random
    brightness and contrast. They time the backends and calibrate static int8 without photos."""
    size = pre.size
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    f[0, 0] = 1.0
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        spectrum = rng.standard_normal((3, size, size)) + 1j * rng.standard_normal((3, size, size))
        img = np.fft.ifft2(spectrum / f ** (rng.uniform(1.5, 2.5) / 2)).real
        img = np.einsum("cd,dhw->chw", rng.normal(0.6, 0.25, (3, 3)) + np.eye(3), img)
        img = (img - img.mean()) / (img.std() + 1e-6)
        img = rng.uniform(0.3, 0.7) + rng.uniform(0.1, 0.3) * img + rng.normal(0, 0.08, (3, 1, 1))
        out[i] = (np.clip(img, 0.0, 1.0) - mean) / std
    return out


def int8_backend() -> str | None:
    """Which int8 this install builds: "openvino" (static, NNCF), "onnxruntime" (dynamic), or None."""
    if openvino.nncf_available():
        return "openvino"
    return "onnxruntime" if onnx.quantize_available() else None


def int8_path(folder: ModelFolder, backend: str) -> Path:
    """Where this machine keeps the int8 image graph of ``folder`` (built once)."""
    st = folder.visual.stat()
    version = openvino.version() if backend == "openvino" else onnx.version()
    tag = f"{folder.name}|{st.st_size}|{int(st.st_mtime)}|{version}|calibration {CALIBRATION_IMAGES}"
    digest = hashlib.blake2b(tag.encode(), digest_size=10).hexdigest()
    suffix = ".xml" if backend == "openvino" else ".onnx"
    return cache_dir() / "int8" / f"{folder.name.replace('/', '_').replace(':', '_')}-{digest}{suffix}"


def int8_session(folder: ModelFolder, threads: int, say: Callable[[str], None]):
    """The int8 image tower (see :func:`int8_backend`), built once per model and machine."""
    backend = int8_backend()
    if backend is None:
        raise ModelError("precision int8 needs onnx (the default install has it) or OpenVINO with NNCF")
    path = int8_path(folder, backend)
    if not path.is_file():
        say("Preparing an int8 image model for this machine (once)…")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
        try:
            if backend == "openvino":
                openvino.build_int8(folder.visual, path, calibration_images(CALIBRATION_IMAGES, folder.preprocess))
            else:
                onnx.quantize_dynamic_int8(folder.visual, tmp)
                os.replace(tmp, path)
        except Exception as e:  # noqa: BLE001 - converter/quantiser errors have no common base
            raise ModelError(f"the int8 image model could not be built ({type(e).__name__}: {e})") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    try:
        if backend == "openvino":
            return openvino.OvSession(path, threads, "int8")
        return onnx.OrtSession(path, threads, "int8")
    except ModelError:
        for p in (path, path.with_suffix(".bin")):  # a damaged cached file is dropped, built again next time
            with contextlib.suppress(OSError):
                p.unlink()
        raise


def session_for(folder: ModelFolder, precision: str, threads: int, say: Callable[[str], None]):
    """The image session for one explicit precision (fp32, bf16, int8)."""
    if precision == "fp32":
        return onnx.OrtSession(folder.visual, threads)
    if precision in ("bf16", "openvino"):
        if not openvino.available():
            raise ModelError("precision bf16 runs through OpenVINO: pip install 'clipdesk[openvino]'")
        return openvino.OvSession(folder.visual, threads, "bf16")
    if precision == "int8":
        return int8_session(folder, threads, say)
    raise ModelError(f"Unknown precision '{precision}' (auto, fp32, bf16, int8)")


def measure(candidates: dict, x: np.ndarray, repeats: int = 2) -> dict:
    """Time each session on ``x`` and compare its embeddings with the first one's (the reference)."""
    result, ref = {}, None
    for name, session in candidates.items():
        try:
            out = session.run(x)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                out = session.run(x)
                best = min(best, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - a backend that fails here is not chosen
            log.info("%s unavailable: %s", name, e)
            continue
        out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        ref = out if ref is None else ref
        result[name] = {"img_s": round(len(x) / best, 1), "agreement": round(float((ref * out).sum(1).mean()), 5)}
    return result


def pick(timings: dict) -> str:
    """ONNX Runtime fp32 unless OpenVINO (bf16 where the CPU has it) is ``GAIN`` times faster, or int8 ``INT8_GAIN`` times faster than the better,
    and each agrees with fp32."""
    best = "fp32"
    rate = timings["fp32"]["img_s"]
    ov = timings.get("openvino")
    if ov and ov["agreement"] >= MIN_AGREEMENT and ov["img_s"] >= GAIN * rate:
        best, rate = "openvino", ov["img_s"]
    int8 = timings.get("int8")
    if int8 and int8["agreement"] >= MIN_AGREEMENT and int8["img_s"] >= INT8_GAIN * rate:
        best = "int8"
    return best


def image_session(folder: ModelFolder, requested: str, threads: int,
                  status: Callable[[str], None] | None = None):
    """The image session for ``requested`` precision; "auto" measures once per machine."""
    say = status or (lambda _m: None)
    if requested != "auto":
        return session_for(folder, requested, threads, say)
    path = cache_dir() / "precision.json"
    key = machine_key(folder, threads)
    try:
        cached = json.loads(path.read_text()) if path.stat().st_size < (1 << 20) else {}
        cached = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        cached = {}
    choice = cached.get(key, {}).get("precision") if isinstance(cached.get(key), dict) else None
    if choice in ("fp32", "openvino", "int8"):
        try:
            return session_for(folder, choice, threads, say)
        except ModelError as e:
            log.info("cached choice %s failed (%s): measuring again", choice, e)
    candidates = {"fp32": onnx.OrtSession(folder.visual, threads)}
    loaded = machine_loaded()
    if not openvino.available() and (int8_backend() is None or loaded):  # nothing to compare with
        return candidates["fp32"]
    say("Measuring the fastest way to run the model on this machine (once)…")
    if openvino.available():
        with contextlib.suppress(ModelError):
            candidates["openvino"] = openvino.OvSession(folder.visual, threads, "bf16")
    if int8_backend() is not None and not loaded:  # int8 is built (seconds) only on a quiet machine
        with contextlib.suppress(ModelError):
            candidates["int8"] = int8_session(folder, threads, say)
    others: dict = {}
    with others_cpu(others):
        timings = measure(candidates, calibration_images(8, folder.preprocess, seed=1))
    best = pick(timings) if "fp32" in timings else "fp32"
    busy = others["cores"] is not None and others["cores"] > OTHERS_BUSY_SHARE * cores()
    if not (loaded or busy):
        cached[key] = {"precision": best, **{f"{k}_img_s": v["img_s"] for k, v in timings.items()},
                       **{f"{k}_agreement": v["agreement"] for k, v in timings.items() if k != "fp32"}}
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cached, indent=1))
            os.replace(tmp, path)
    else:
        log.info("backends measured under load (other processes: %s cores): not cached", others["cores"])
    return candidates[best]
