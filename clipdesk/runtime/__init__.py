"""CLIP models for clipdesk: one encoder interface over model folders and backends.

- :mod:`spec` — which model (names, checkpoints, model folders) and where folders are installed;
- :mod:`folder` — the model-folder reader (Immich's layout), every file checked before loading;
- :mod:`tokenizer` — CLIP's tokenizer through ``tokenizers``, with open_clip's cleaning;
- :mod:`encoder` — the encoder over a folder: ONNX Runtime for texts, the measured backend for images;
- :mod:`onnx`, :mod:`openvino` — the default backends; :mod:`choose` — the measured choice;
- :mod:`torch_backend` — PyTorch (the ``[torch]`` extra: CUDA with nvJPEG, checkpoints, reference);
- :mod:`export` — open_clip → model folder (``[torch]``); :mod:`download` — fetch a folder by name.

Nothing outside this package imports a backend. Every encoder has ``name``, ``dim``, ``device``,
``precision``, ``logit_scale``, ``preprocess``, ``min_side``, ``prepare(image)``,
``embed(prepared)``, ``encode_images(images)``, ``encode_texts(texts)`` and ``close()``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipdesk.errors import ModelError
from clipdesk.runtime.preprocess import Preprocessing
from clipdesk.runtime.spec import DEFAULT_MODEL, PACKAGED, RANDOM_TAG, TEST_MODEL, ModelSpec, folder_name, models_dir

__all__ = ["DEFAULT_MODEL", "TEST_MODEL", "RANDOM_TAG", "ModelSpec", "Preprocessing", "load_encoder",
           "installed_models", "fetchable_models", "needs_torch", "export_to_folder"]

Encoder = Any  # FolderEncoder or the torch backend's Encoder: the interface above

# CLIP exports Immich publishes that are open_clip pairs (fetched as immich-app/ARCH__TAG)
FETCHABLE = ("ViT-B-32/openai", "ViT-B-16/openai", "ViT-L-14/openai", "ViT-B-32/laion2b_s34b_b79k",
             "ViT-B-32/laion2b_e16", "ViT-L-14/laion2b_s32b_b82k")
TORCH_DEVICES = ("cuda", "mps")


def torch_available() -> bool:
    from clipdesk.runtime import torch_backend

    return torch_backend.available()


def _nvidia_present() -> bool:
    """An NVIDIA driver is loaded (checked without importing torch: that alone takes seconds)."""
    return os.path.exists("/proc/driver/nvidia/version")


def needs_torch(spec: ModelSpec, device: str | None = None) -> bool:
    """Whether ``spec`` on ``device`` runs in PyTorch: checkpoints, random architectures, a GPU."""
    if spec.weights or spec.random_weights:
        return True
    if device and device.split(":")[0] in TORCH_DEVICES:
        return True
    return (device in (None, "auto") and spec.folder is None and _nvidia_present() and torch_available())


def threads() -> int:
    from clipdesk.runtime.choose import cores

    return cores()


def load_encoder(spec: ModelSpec, device: str | None = None, precision: str = "auto",
                 status: Callable[[str], None] | None = None, text_only: bool = False) -> Encoder:
    """The encoder of ``spec``: a model folder run by ONNX Runtime/OpenVINO, or PyTorch where
    :func:`needs_torch`. A named model with no folder installed is exported from open_clip where
    the torch extra is installed, else fetched by name."""
    from clipdesk.runtime.encoder import FolderEncoder
    from clipdesk.runtime.folder import ModelFolder

    say = status or (lambda _m: None)
    if device not in (None, "auto", "cpu") and not needs_torch(spec, device):
        raise ModelError(f"Device '{device}' is not one clipdesk knows (cpu, cuda, mps)")
    if needs_torch(spec, device):
        if not torch_available():
            what = "a checkpoint file (--weights)" if spec.weights else \
                f"device {device}" if device not in (None, "auto") else f"the random-weight model {spec.name}"
            raise ModelError(f"Running {what} needs PyTorch: pip install 'clipdesk[torch]'. The default install "
                             f"runs model folders (--model-dir DIR, or a model name) without it.")
        from clipdesk.runtime import torch_backend

        return torch_backend.load_encoder(spec, device, "auto" if precision in ("auto", "int8") else precision,
                                          say, text_only)
    folder = spec.installed_folder()
    if folder is None:
        dest = models_dir() / folder_name(spec.name)
        folder = export_to_folder(spec, dest, say) if torch_available() else _fetch(spec, dest, say)
    return FolderEncoder(ModelFolder.open(folder, spec.name if not spec.folder else None), spec, precision,
                         threads(), say)


def _fetch(spec: ModelSpec, dest: Path, say: Callable[[str], None]) -> Path:
    from clipdesk.runtime.download import download_folder

    say(f"Fetching the model {spec.name} (downloaded once, then kept)…")
    return download_folder(spec, dest, say)


def export_to_folder(spec: ModelSpec, dest: Path, status: Callable[[str], None] | None = None) -> Path:
    """open_clip's ``spec`` (its weights downloaded through open_clip where needed) → a model
    folder at ``dest``. Needs the torch extra."""
    if not torch_available():
        raise ModelError("Exporting a model needs PyTorch and open_clip: pip install 'clipdesk[torch]'")
    from clipdesk.runtime import torch_backend
    from clipdesk.runtime.export import export_model

    say = status or (lambda _m: None)
    enc = torch_backend.load_encoder(spec, "cpu", "fp32", say)
    say(f"Converting {spec.name} for the default runtime (once)…")
    return export_model(enc.model, spec, dest)


def installed_models() -> list[tuple[str, Path]]:
    """(name, folder) of the demo model and every folder under :func:`models_dir`."""
    from clipdesk.runtime.spec import folder_model_name

    out = [(TEST_MODEL, PACKAGED / TEST_MODEL)]
    root = models_dir()
    if root.is_dir():
        out += sorted((folder_model_name(p), p) for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file())
    return out


def fetchable_models() -> list[str]:
    """Names that can be fetched, plus every open_clip pair where the torch extra can export it."""
    names = list(FETCHABLE)
    if torch_available():
        from clipdesk.runtime import torch_backend

        names += [n for n in torch_backend.available_models() if n not in names]
    return names
