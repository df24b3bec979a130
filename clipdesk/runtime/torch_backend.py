"""The torch backend (the ``[torch]`` extra): open_clip models in PyTorch.

Used for CUDA (with nvJPEG decoding, indexer/gpu_decode.py), for local checkpoints
(``--weights``), for ``ARCH/random`` models in benchmarks, to export model folders, and as the
reference the ONNX path is tested against. Weights download once through open_clip /
huggingface_hub; offline, loading fails within seconds with one :class:`ModelDownloadError`.
On CPUs bf16 is used where a short timing at load shows it faster and in agreement with fp32.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelDownloadError, ModelError
from clipdesk.runtime.choose import OTHERS_BUSY_SHARE, _cpu_name, cache_dir, cores, machine_loaded, others_cpu
from clipdesk.runtime.download import network_reachable
from clipdesk.runtime.preprocess import Preprocessing
from clipdesk.runtime.spec import RANDOM_TAG, TEST_MODEL, ModelSpec

log = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent.parent / "model_configs"
_PROJECT_MODELS = {p.stem for p in _CONFIG_DIR.glob("*.json")}
_TEXT_CACHE_SIZE = 4096
MIN_AGREEMENT = 0.99


def available() -> bool:
    from importlib.util import find_spec

    try:
        return find_spec("torch") is not None and find_spec("open_clip") is not None
    except (ImportError, ValueError):
        return False


def register_project_models() -> None:
    """Make the project's model configs (``test-tiny``) known to open_clip. Idempotent."""
    import open_clip

    if not _PROJECT_MODELS <= set(open_clip.list_models()):
        open_clip.add_model_config(_CONFIG_DIR)


def available_models() -> list[str]:
    """Every ``ARCH/TAG`` open_clip knows, plus the project's models."""
    import open_clip

    return sorted(_PROJECT_MODELS) + [f"{a}/{t}" for a, t in open_clip.list_pretrained()]


def resolve_device(requested: str | None = None) -> str:
    """``cuda`` if available, then Apple ``mps``, else ``cpu`` (or the requested one)."""
    import torch

    if requested and requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


class Encoder:
    """A loaded CLIP model: prepares and embeds images, embeds texts (with a cache).

    Implements the indexer's ``ImageEmbedder`` protocol. Outputs are float32 numpy arrays,
    L2-normalised, shape (n, dim).
    """

    def __init__(self, spec: ModelSpec, model, tokenizer, device: str, precision: str, text_only: bool = False):
        import torch

        self.spec = spec
        self.model = model
        self.preprocess = Preprocessing.of(model)
        if text_only:  # the image tower is ~60% of the weights: not kept when only texts are needed
            model.visual = None
        self.text_only = text_only
        self.tokenizer = tokenizer
        self.device = device
        self.precision = precision
        self._dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._lock = threading.Lock()
        self._text_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.image_size = self.min_side = self.preprocess.size
        self.dim = int(model.text_projection.shape[1] if hasattr(model, "text_projection")
                       and model.text_projection is not None else self._probe_dim())
        self.logit_scale = float(model.logit_scale.exp().item())

    @property
    def name(self) -> str:
        return self.spec.name

    def _probe_dim(self) -> int:
        return int(self.encode_texts(["a"]).shape[1])

    # ------------------------------------------------------------------ images
    def prepare(self, image) -> np.ndarray:
        """PIL RGB image → model input (3, H, W) float32. Thread-safe; runs in decoder threads."""
        return self.preprocess(image)

    def embed(self, prepared: Sequence) -> np.ndarray:
        """Embed prepared images: (n, dim) float32, L2-normalised."""
        import torch

        if self.text_only:
            raise ModelError("this encoder was loaded for texts only")
        if not len(prepared):
            return np.zeros((0, self.dim), np.float32)
        if all(isinstance(p, np.ndarray) for p in prepared):
            batch = torch.from_numpy(np.stack(list(prepared))).to(self.device, self._dtype)
        else:  # some prepared on the GPU already (indexer/gpu_decode.py), the rest as arrays
            batch = torch.stack([torch.as_tensor(p).to(self.device) for p in prepared]).to(self._dtype)
        with self._lock, torch.inference_mode():
            feats = self.model.encode_image(batch)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
        return feats.cpu().numpy()

    def encode_images(self, images: Sequence) -> np.ndarray:
        return self.embed([self.prepare(im) for im in images])

    # ------------------------------------------------------------------ texts
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts: (n, dim) float32, L2-normalised. Repeated texts hit an LRU cache."""
        import torch

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.tokenizer(missing).to(self.device)
            with self._lock, torch.inference_mode():
                feats = encode_text_trimmed(self.model, tokens)
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            for t, f in zip(missing, feats):
                self._text_cache[t] = f
        out = np.stack([self._text_cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)
        for t in texts:
            self._text_cache.move_to_end(t)
        while len(self._text_cache) > _TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return out


def encode_text_trimmed(model, tokens):
    """``model.encode_text`` without the padding: a query of 5 tokens runs 5 positions, not 77.

    Exact for CLIP text towers with a causal mask and end-of-text pooling: no position attends to
    a later one, so padding after the last end-of-text token cannot change the pooled feature.
    Other towers take the full path.
    """
    if not trimmable(model):
        return model.encode_text(tokens)
    pad = getattr(model, "pad_id", 0) or 0
    length = int((tokens != pad).long().cumsum(1).argmax(1).max()) + 1
    return text_forward(model, tokens[:, :length])


def trimmable(model) -> bool:
    """Whether padding can be cut off ``model``'s text input: a CLIP text tower with a causal mask
    and end-of-text pooling (no position attends to a later one)."""
    import open_clip

    return type(model) is open_clip.CLIP and getattr(model, "text_pool_type", None) in ("argmax", "eos") \
        and model.attn_mask is not None


def text_forward(model, t):
    """A CLIP text tower on token ids ``t`` (n, L) of any length L up to its context: only L
    positions run (the exporter traces this with L dynamic)."""
    import torch
    from open_clip.transformer import text_global_pool

    n = t.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, t, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def load_encoder(
    spec: ModelSpec,
    device: str | None = None,
    precision: str = "auto",
    status: Callable[[str], None] | None = None,
    text_only: bool = False,
) -> Encoder:
    """Create the model of ``spec`` on ``device`` (auto-selected), downloading weights if needed.

    ``text_only`` drops the image tower right after loading (searching by text needs ~40% of the
    memory then); its precision is the one measured for the full model on this machine.
    """
    import open_clip
    import torch

    say = status or (lambda _m: None)
    register_project_models()
    if spec.arch not in open_clip.list_models():
        raise ModelError(f"Unknown model architecture '{spec.arch}'. 'clipdesk models' lists the known ones.")
    device = resolve_device(device)
    pretrained: str | None
    if spec.weights:
        if not os.path.isfile(spec.weights):
            raise ModelError(f"Checkpoint file not found: {spec.weights}")
        pretrained = spec.weights
    elif spec.pretrained == RANDOM_TAG:
        pretrained = None
    else:
        if not open_clip.get_pretrained_cfg(spec.arch, spec.pretrained):
            tags = ", ".join(open_clip.list_pretrained_tags_by_model(spec.arch)) or "none"
            raise ModelError(f"Unknown pretrained tag '{spec.pretrained}' for {spec.arch} (known: {tags}).")
        cached = _cached_weights(spec)
        if not cached:
            say(f"Fetching weights of {spec.name} (downloaded once, then cached)…")
            _download(spec)
        pretrained = spec.pretrained
    say(f"Loading {spec.name} on {device}…")
    try:
        # Weights in the cache load with the hub switched off: no network round trip (and no
        # minute of retries when there is no network).
        offline = _hub_offline() if pretrained and not spec.weights else _no_change()
        with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(), offline:
            torch.manual_seed(0)  # random-weight models are the same in every process
            model = open_clip.create_model(spec.arch, pretrained=pretrained, device=device, weights_only=True)
    except ModelDownloadError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        what = f"checkpoint {spec.weights}" if spec.weights else spec.name
        raise ModelError(f"Cannot load {what} as {spec.arch}: {str(e).splitlines()[0][:300]}") from None
    model.eval()
    tokenizer = open_clip.get_tokenizer(spec.arch)
    if precision == "auto":
        precision = choose_precision(spec, model, device, say)
    if precision not in ("fp32", "bf16", "fp16"):
        raise ModelError(f"Precision '{precision}' is not one the torch backend runs (fp32, bf16, fp16)")
    encoder = Encoder(spec, model, tokenizer, device, precision, text_only)
    if precision != "fp32":
        encoder.model = model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    return encoder


@contextmanager
def _quiet_random_init_warning():
    """open_clip warns on the root logger when it initialises randomly; for our random-weight
    models that is the point, and the model name already says so."""
    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()
    f = _Filter()
    root.addFilter(f)
    try:
        yield
    finally:
        root.removeFilter(f)


@contextmanager
def _no_change():
    yield


@contextmanager
def _hub_offline():
    """huggingface_hub's offline mode for a block (it reads the flag at each request)."""
    try:
        from huggingface_hub import constants
    except ImportError:
        yield
        return
    old = getattr(constants, "HF_HUB_OFFLINE", False)
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _cached_weights(spec: ModelSpec) -> str | None:
    """The local file of ``spec``'s pretrained weights if they are already downloaded."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    if not cfg.get("hf_hub"):  # a plain URL: open_clip keeps it under ~/.cache/clip by its name
        url = cfg.get("url", "")
        path = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)) if url else ""
        return path if path and os.path.isfile(path) else None
    try:
        with _hub_offline(), _quiet_hub_logs():
            path = open_clip.download_pretrained(cfg)
    except Exception:  # noqa: BLE001 - not cached (or no hub): the download path decides
        return None
    return path if path and os.path.isfile(path) else None


@contextmanager
def _quiet_hub_logs():
    """Silence the hub's and open_clip's error logs for a lookup whose failure is expected."""
    loggers = [logging.getLogger(n) for n in ("huggingface_hub", "")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _download_host(spec: ModelSpec) -> tuple[str, int]:
    """The host and port the weights of ``spec`` come from (the hub, or a URL of open_clip's)."""
    from urllib.parse import urlsplit

    import open_clip

    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained) or {}
    url = cfg.get("url", "")
    if cfg.get("hf_hub") or not url:
        try:
            from huggingface_hub import constants

            url = constants.ENDPOINT
        except ImportError:
            url = "https://huggingface.co"
    parts = urlsplit(url)
    return parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)


def _download_error(spec: ModelSpec, why: str) -> ModelDownloadError:
    return ModelDownloadError(
        f"Cannot download the weights of {spec.name}: {why}. Download the checkpoint on a machine "
        f"with internet access and pass it with --model {spec.arch} --weights FILE (a .safetensors, "
        f".bin or .pt file), or try the app with the demo model: --model {TEST_MODEL} (random "
        f"weights, meaningless rankings).")


def _download(spec: ModelSpec) -> str:
    import open_clip

    host, port = _download_host(spec)
    offline_env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")
    if offline_env:
        raise _download_error(spec, "HF_HUB_OFFLINE is set, so the network is unreachable by choice")
    if not network_reachable(host, port):
        raise _download_error(spec, f"{host} is unreachable (no network?)")
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
    try:
        return open_clip.download_pretrained(cfg)
    except Exception as e:  # noqa: BLE001 - hub, HTTP and OS errors all mean "could not fetch"
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        detail = detail if len(detail) <= 200 else detail[:199] + "…"
        raise _download_error(spec, f"the download failed ({detail})") from None


# ---------------------------------------------------------------------- precision
def _machine_key(spec: ModelSpec) -> str:
    import torch

    return f"{spec.arch}|torch {torch.__version__}|{_cpu_name()}|threads {torch.get_num_threads()}"


def choose_precision(spec: ModelSpec, model, device: str, say: Callable[[str], None] | None = None) -> str:
    """fp16 on CUDA; fp32 on MPS; on CPUs bf16 only where a measurement shows it faster and the
    embeddings agree with fp32 (mean cosine ≥ MIN_AGREEMENT). The verdict is cached per machine."""
    if device.startswith("cuda"):
        return "fp16"
    if device != "cpu" or spec.arch in _PROJECT_MODELS:
        return "fp32"  # the tiny test model gains nothing from bf16
    path = cache_dir() / "precision-torch.json"
    key = _machine_key(spec)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]["precision"]
    if say:
        say("Measuring the fastest precision on this machine (once)…")
    others: dict = {}
    with others_cpu(others):
        result = measure_precision(model)
    busy = others["cores"] is not None and others["cores"] > OTHERS_BUSY_SHARE * cores()
    if machine_loaded() or busy:  # for this session; measured again at the next load
        log.info("precision measured under load (other processes: %s cores): not cached", others["cores"])
        return result["precision"]
    cached[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return result["precision"]


def measure_precision(model, batch: int = 8, repeats: int = 2) -> dict:
    """Time fp32 and bf16 image encoding on one batch and compare their embeddings."""
    import copy

    import torch

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=gen)

    def run(m, dtype) -> tuple[float, torch.Tensor]:
        with torch.inference_mode():
            out = m.encode_image(x.to(dtype))  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                out = m.encode_image(x.to(dtype))
                best = min(best, time.perf_counter() - t)
        return batch / best, torch.nn.functional.normalize(out.float(), dim=-1)

    fp32_rate, ref = run(model, torch.float32)
    try:
        bf16_model = copy.deepcopy(model).to(torch.bfloat16)
        bf16_rate, out = run(bf16_model, torch.bfloat16)
        agreement = float((ref * out).sum(-1).mean())
        del bf16_model
    except (RuntimeError, TypeError) as e:  # no bf16 kernels on this CPU/torch
        log.info("bf16 unavailable: %s", e)
        result = {"precision": "fp32", "fp32_img_s": round(fp32_rate, 1), "bf16_img_s": None, "agreement": None}
    else:
        use_bf16 = bf16_rate > 1.2 * fp32_rate and agreement >= MIN_AGREEMENT
        result = {"precision": "bf16" if use_bf16 else "fp32", "fp32_img_s": round(fp32_rate, 1),
                  "bf16_img_s": round(bf16_rate, 1), "agreement": round(agreement, 5)}
    return result


