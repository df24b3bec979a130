"""The ONNX Runtime backend: one graph, CPU (or a CUDA/ROCm provider where installed)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelError


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None


def version() -> str:
    import onnxruntime

    return f"onnxruntime {onnxruntime.__version__}"


class OrtSession:
    """``run(x) → y`` over one ONNX graph with one input and (at least) one output."""

    backend = "onnxruntime"

    def __init__(self, path: Path, threads: int, precision: str = "fp32", optimise: bool = True):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if not optimise:  # graph rewrites cost 0.3 s of a 0.67 s load (text tower, ViT-B-32) and
            # gained nothing measurable at run time (100 texts: 0.528 s optimised, 0.543 s not)
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads, options.inter_op_num_threads = max(1, threads), 1
        options.log_severity_level = 3
        # Threads that spin while waiting take cores other processes (the decoders, a busy
        # neighbour) need: measured 0.23 of the bound under load with spinning on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's errors have no common public base
            raise ModelError(f"{path} cannot be loaded by ONNX Runtime ({str(e).splitlines()[0][:300]})") from None
        inp = self._session.get_inputs()
        if len(inp) != 1:
            raise ModelError(f"{path} has {len(inp)} inputs; a CLIP tower has one")
        self.input_name = inp[0].name
        self.input_shape = list(inp[0].shape)
        self.input_dtype = np.int32 if inp[0].type == "tensor(int32)" else \
            np.int64 if inp[0].type == "tensor(int64)" else np.float32
        out = self._session.get_outputs()[0]
        self.output_dim = out.shape[-1] if out.shape and isinstance(out.shape[-1], int) else None
        self.precision = precision
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        with self._lock:  # ONNX Runtime sessions are thread-safe, but one batch at a time uses the cores best
            return np.asarray(self._session.run(None, {self.input_name: x})[0], np.float32)


def quantize_available() -> bool:
    from importlib.util import find_spec

    try:
        return available() and find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def quantize_dynamic_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic int8 (int8 weights, activations quantised per batch; VNNI kernels
    where the CPU has them), written to ``dst``; needs ``onnx``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser suggests a pre-processing step on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
