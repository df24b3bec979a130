"""The model-folder reader: checks every file of a model folder before anything is loaded.

Model files are untrusted input: JSON files are read with a size bound, ONNX files must be regular
files of a plausible size that start like an ONNX protobuf, the embedding width must agree across
``config.json`` and both graphs, and the tokenizer's vocabulary must fit the text graph. Any
problem is one :class:`ModelError` naming the file and what is wrong; nothing is loaded half-way.
"""
from __future__ import annotations

import json
import stat
from dataclasses import dataclass
from pathlib import Path

from clipdesk.errors import ModelError
from clipdesk.runtime.preprocess import Preprocessing
from clipdesk.runtime.spec import META_FILE, folder_model_name

MAX_JSON_BYTES = 1 << 20
MAX_ONNX_BYTES = 8 << 30  # the largest CLIP towers (ViT-bigG) are ~7 GB in fp32
DEFAULT_LOGIT_SCALE = 100.0  # CLIP's trained temperature, for folders that do not say theirs
REQUIRED = ("config.json", "visual/model.onnx", "visual/preprocess_cfg.json", "textual/model.onnx",
            "textual/tokenizer.json")


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> dict:
    """A JSON object from ``path``, read with a size bound; ModelError naming the file otherwise."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{path} is not a regular file")
        if st.st_size > limit:
            raise ModelError(f"{path} is {st.st_size:,} bytes, more than a model's JSON file can be ({limit:,})")
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
        data = json.loads(raw)
    except OSError as e:
        raise ModelError(f"{path} cannot be read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelError(f"{path} is not valid JSON ({str(e)[:200]})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return data


def check_onnx_file(path: Path) -> None:
    """A regular file of plausible size whose first field is ONNX's ``ir_version`` (protobuf field 1)."""
    try:
        st = path.stat()
    except OSError as e:
        raise ModelError(f"{path} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelError(f"{path} is not a regular file")
    if st.st_size < 64:
        raise ModelError(f"{path} is {st.st_size} bytes: not an ONNX model (truncated or empty)")
    if st.st_size > MAX_ONNX_BYTES:
        raise ModelError(f"{path} is {st.st_size / 2**30:.1f} GB, larger than any CLIP tower: refusing to load it")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] != b"\x08":
        raise ModelError(f"{path} is not an ONNX model (it does not start like one)")


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder (see :mod:`clipdesk.runtime.export` for the layout)."""

    path: Path
    name: str
    dim: int
    context_length: int
    vocab_size: int | None
    preprocess: Preprocessing
    logit_scale: float

    @property
    def visual(self) -> Path:
        return self.path / "visual" / "model.onnx"

    @property
    def textual(self) -> Path:
        return self.path / "textual" / "model.onnx"

    @property
    def tokenizer_files(self) -> tuple[Path, Path]:
        return self.path / "textual" / "tokenizer.json", self.path / "textual" / "tokenizer_config.json"

    @classmethod
    def open(cls, path: Path, name: str | None = None) -> ModelFolder:
        path = Path(path)
        if not path.is_dir():
            raise ModelError(f"Model folder {path} does not exist (or is not a folder)")
        missing = [r for r in REQUIRED if not (path / r).exists()]
        if missing:
            raise ModelError(f"Model folder {path} is incomplete: {', '.join(missing)} missing")
        cfg = read_json(path / "config.json")
        dim = cfg.get("embed_dim")
        vision, text = cfg.get("vision_cfg"), cfg.get("text_cfg")
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 16384:
            raise ModelError(f"{path / 'config.json'}: embed_dim must be a whole number from 1 to 16384, not {dim!r}")
        if not isinstance(vision, dict) or not isinstance(text, dict):
            raise ModelError(f"{path / 'config.json'}: vision_cfg and text_cfg must be objects")
        ctx = text.get("context_length", 77)
        vocab = text.get("vocab_size")
        if not isinstance(ctx, int) or not 2 <= ctx <= 4096:
            raise ModelError(f"{path / 'config.json'}: text_cfg.context_length {ctx!r} is out of range")
        if vocab is not None and (not isinstance(vocab, int) or not 2 <= vocab <= 10_000_000):
            raise ModelError(f"{path / 'config.json'}: text_cfg.vocab_size {vocab!r} is out of range")
        try:
            pre = Preprocessing.from_cfg(read_json(path / "visual" / "preprocess_cfg.json"))
        except ModelError as e:
            raise ModelError(f"{path / 'visual' / 'preprocess_cfg.json'}: {e}") from None
        for onnx in (path / "visual" / "model.onnx", path / "textual" / "model.onnx"):
            check_onnx_file(onnx)
        meta = read_json(path / META_FILE) if (path / META_FILE).exists() else {}
        scale = meta.get("logit_scale", DEFAULT_LOGIT_SCALE)
        scale = float(scale) if isinstance(scale, (int, float)) and 0 < scale < 1e4 else DEFAULT_LOGIT_SCALE
        return cls(path, name or folder_model_name(path), dim, ctx, vocab, pre, scale)
