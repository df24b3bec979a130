"""The OpenVINO backend: reads the folder's ONNX graph directly; bf16 where the CPU has it, and a
static int8 image tower through NNCF (``clipdesk[int8]``), calibrated on photo-like images."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelError


def available() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def nncf_available() -> bool:
    from importlib.util import find_spec

    try:
        return available() and find_spec("nncf") is not None
    except (ImportError, ValueError):
        return False


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return f"openvino {v('openvino')}"
    except PackageNotFoundError:
        return ""


class OvSession:
    """``run(x) → y`` over one graph compiled for the CPU. ``precision``: "bf16" (OpenVINO's own
    choice on CPUs with bf16 units, f32 elsewhere), "fp32", or "int8" (an NNCF-quantised .xml)."""

    backend = "openvino"

    def __init__(self, path: Path, threads: int, precision: str = "bf16"):
        import openvino as ov

        config = {"INFERENCE_NUM_THREADS": max(1, threads), "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "ENABLE_CPU_PINNING": False}  # decoder threads share these cores
        if precision in ("fp32", "int8"):  # int8: the layers NNCF left in float stay fp32
            config["INFERENCE_PRECISION_HINT"] = "f32"
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except Exception as e:  # noqa: BLE001 - OpenVINO raises RuntimeError subclasses and others
            raise ModelError(f"{path} cannot be loaded by OpenVINO ({str(e).splitlines()[0][:300]})") from None
        if precision == "bf16":  # what OpenVINO chose on this CPU
            chosen = str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower()
            precision = "bf16" if "bf16" in chosen or "bfloat16" in chosen else "fp32"
        self.precision = precision
        shape = compiled.outputs[0].get_partial_shape()
        self.output_dim = shape[shape.rank.get_length() - 1].get_length() \
            if shape.rank.is_static and shape[shape.rank.get_length() - 1].is_static else None
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:  # one infer request: one call at a time
            return np.array(self._request.infer({0: np.ascontiguousarray(x, np.float32)})[0], np.float32, copy=True)


def build_int8(onnx_path: Path, out: Path, calibration: np.ndarray) -> None:
    """Quantise the image graph at ``onnx_path`` to static int8 with NNCF; written as ``out`` (.xml)
    and its .bin, the .xml last, so an .xml on disk is always a whole model."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    tmp = out.with_name(f"{out.stem}.{os.getpid()}.tmp.xml")  # processes building at once (Ray workers)
    try:
        model = ov.Core().read_model(str(onnx_path))
        nncf.set_log_level(logging.ERROR)
        # NNCF draws progress bars on stdout/stderr: not this library's to print (a one-off, seconds)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # SmoothQuant off: on synthetic calibration it lowered the worst photo's agreement
            quantised = nncf.quantize(model, nncf.Dataset([calibration[i:i + 1] for i in range(len(calibration))]),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
                                      preset=nncf.QuantizationPreset.MIXED,
                                      advanced_parameters=AdvancedQuantizationParameters(
                                          smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
        ov.save_model(quantised, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(tmp, out)
    finally:
        for t in (tmp, tmp.with_suffix(".bin")):
            with contextlib.suppress(OSError):
                t.unlink()
