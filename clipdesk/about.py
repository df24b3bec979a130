"""What this install is: clipdesk's version, the model runtime, the model (``clipdesk --version``
and the app's About box). Cheap: package metadata only, no backend is imported or loaded."""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

from clipdesk import __version__
from clipdesk.runtime.spec import DEFAULT_MODEL, TEST_MODEL


def _installed(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def runtime_line() -> str:
    """The backends that can run models here, with their versions."""
    found = [f"{name} {v}" for name, v in (("onnxruntime", _installed("onnxruntime")),
                                            ("openvino", _installed("openvino"))) if v]
    torch = _installed("torch") if find_spec("torch") is not None else None
    return (", ".join(found) or "no backend installed") + f"; torch: {torch or 'not installed'}"


def build_line() -> str:
    """How this clipdesk runs: the self-contained app's folder, or the Python it is installed in."""
    if getattr(sys, "frozen", False):
        return f"self-contained app in {os.path.dirname(os.path.realpath(sys.executable))}"
    return f"Python {sys.version.split()[0]} at {sys.executable}"


def encoder_line(encoder) -> str:
    """The loaded model's backend, precision and device (image tower; measured on first use)."""
    backend = getattr(encoder, "backend", None)
    parts = [p for p in (backend, getattr(encoder, "precision", None), getattr(encoder, "device", None)) if p]
    return f"{getattr(encoder, 'name', '?')} ({', '.join(parts)})"


def report(model: str | None = None, encoder=None) -> list[str]:
    """Lines saying the version, the runtime and the model (the library's, when one is given)."""
    lines = [f"clipdesk {__version__}", f"runtime: {runtime_line()}"]
    if encoder is not None:
        lines.append(f"model: {encoder_line(encoder)}")
    elif model:
        lines.append(f"model: {model} (not loaded yet)")
    else:
        lines.append(f"model: {DEFAULT_MODEL} by default; {TEST_MODEL} (demo, random weights) built in")
    lines.append(build_line())
    return lines
