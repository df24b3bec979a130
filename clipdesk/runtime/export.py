"""open_clip model → a model folder (needs the ``[torch]`` extra: torch, open-clip-torch, onnx).

The folder is the layout Immich publishes its CLIP exports in, so either can be used by the other::

    config.json                    open_clip's model config (embed_dim, vision_cfg, text_cfg)
    clipdesk.json                  the model's name, and what made the folder
    visual/model.onnx              image (n, 3, S, S) float32 → (n, embed_dim) features
    visual/preprocess_cfg.json     size, mean, std, interpolation, resize mode
    textual/model.onnx             token ids (n, L) int64 → (n, embed_dim) features; L ≤ context length
    textual/tokenizer.json         byte-level BPE (``tokenizers``), CLIP's vocabulary
    textual/tokenizer_config.json  context length, pad token

The text graph runs only as many positions as the longest text in the batch needs (exact for
CLIP's causal text tower with end-of-text pooling), so a five-word query costs five positions.
Every file is written into a temporary folder beside ``out`` which is renamed into place last:
a folder that exists is a whole model.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import warnings
from pathlib import Path

from clipdesk.errors import ModelError
from clipdesk.runtime.preprocess import Preprocessing
from clipdesk.runtime.spec import ModelSpec
from clipdesk.runtime.tokenizer import build_clip_tokenizer, tokenizer_config

OPSET = 17


def _text_module(model):
    """A torch module: ids (n, L) → text features, trimmed to L positions."""
    import torch

    from clipdesk.runtime.torch_backend import text_forward, trimmable

    if not trimmable(model):
        raise ModelError(f"{type(model).__name__} text towers ({getattr(model, 'text_pool_type', '?')} pooling) "
                         "cannot be exported yet; CLIP towers with a causal mask can")

    class Text(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return text_forward(self.m, ids)

    return Text(model)


def export_model(model, spec: ModelSpec, out: Path, arch_config: dict | None = None) -> Path:
    """Write ``model`` (an fp32 open_clip CLIP on the CPU) as a model folder at ``out``."""
    import open_clip
    import torch

    out = Path(out)
    if out.exists():
        raise ModelError(f"{out} already exists: choose another --out or remove it first")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        (tmp / "visual").mkdir(parents=True)
        (tmp / "textual").mkdir()
        model = model.float().eval()
        pre = Preprocessing.of(model)
        size = pre.size
        ctx = int(model.positional_embedding.shape[0])
        # With gradients on, PyTorch's attention takes its plain path (its fused inference kernel has
        # no ONNX form); the export computes no gradient.
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter
            torch.onnx.export(model.visual, (torch.zeros(2, 3, size, size),), str(tmp / "visual" / "model.onnx"),
                              input_names=["image"], output_names=["embedding"], opset_version=OPSET,
                              dynamic_axes={"image": {0: "n"}, "embedding": {0: "n"}}, dynamo=False)
            # The text graph keeps its length dynamic, which the TorchScript exporter cannot do
            # through attention (it fixes the traced length): torch.export can (needs onnxscript).
            ids = torch.ones(2, 7, dtype=torch.long)
            ids[:, -1] = int(model.vocab_size) - 1  # pooling takes the largest id: end of text
            length, n = torch.export.Dim("length", min=2, max=ctx), torch.export.Dim("n", min=1, max=65536)
            with contextlib.redirect_stdout(io.StringIO()):  # the exporter's progress lines
                torch.onnx.export(_text_module(model), (ids,), str(tmp / "textual" / "model.onnx"),
                                  input_names=["text"], dynamo=True, dynamic_shapes=({0: n, 1: length},),
                                  opset_version=18, external_data=False)
        (tmp / "visual" / "preprocess_cfg.json").write_text(json.dumps(pre.to_cfg(), indent=1))
        build_clip_tokenizer(open_clip.tokenizer.default_bpe()).save(str(tmp / "textual" / "tokenizer.json"),
                                                                     pretty=False)
        (tmp / "textual" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(ctx), indent=1))
        cfg = arch_config or open_clip.get_model_config(spec.arch) or {}
        dim = int(model.text_projection.shape[1]) if model.text_projection is not None else int(cfg["embed_dim"])
        cfg = dict(cfg, embed_dim=dim)
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
        meta = {"name": spec.name, "format": 1, "logit_scale": float(model.logit_scale.exp().item()),
                "exported_by": f"clipdesk, open_clip {open_clip.__version__}, torch {torch.__version__}"}
        (tmp / "clipdesk.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
    return out
