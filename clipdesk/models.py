"""One factory for CLIP models over open_clip, and the encoder the rest of clipdesk uses.

A model is named ``ARCH/PRETRAINED`` (any open_clip pair, e.g. ``ViT-B-32-256/datacomp_s34b_b86k``),
``ARCH`` plus a local checkpoint (``--weights PATH``), ``ARCH/random`` (seeded random weights of
a real architecture: meaningless rankings, real costs; for benchmarks) or ``test-tiny`` (a tiny
architecture registered by clipdesk with seeded random weights, for tests and demos without
weights: it embeds in milliseconds and its rankings mean nothing).

Weights download once through open_clip / huggingface_hub, which shows a progress bar. Weights
already in the cache load without touching the network. Otherwise the download host is probed
first (a TCP connection, ``NETWORK_PROBE_SECONDS`` at most; none at all when ``HF_HUB_OFFLINE`` is
set): offline, loading fails within seconds with one :class:`ModelDownloadError` naming the model,
the ``--weights`` way out and the demo model ``test-tiny``, instead of the hub's minute of retries.

On CPUs the precision is chosen by measuring: a short timing of fp32 against bfloat16 at load
(cached per machine), kept only if bf16 is faster and its embeddings agree with fp32's. Where
OpenVINO and NNCF (``clipdesk[int8]``: static int8, calibrated) or else ONNX Runtime (dynamic
int8) are installed, an int8 image tower is measured too and used only if it is ≥ ``INT8_GAIN``
times faster than the better of the two and agrees with fp32 as well; the text tower then stays
in fp32.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import socket
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipdesk.errors import ModelDownloadError, ModelError
from clipdesk.indexer.decode import file_hash

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32-256/datacomp_s34b_b86k"
TEST_MODEL = "test-tiny"
RANDOM_TAG = "random"
_CONFIG_DIR = Path(__file__).with_name("model_configs")
_PROJECT_MODELS = {p.stem for p in _CONFIG_DIR.glob("*.json")}
_TEXT_CACHE_SIZE = 4096
# bf16 must agree with fp32 at least this well (mean cosine) to be used.
MIN_AGREEMENT = 0.99
# int8 must be this much faster than the better of fp32/bf16 to be worth its own code path.
INT8_GAIN = 1.3
NETWORK_PROBE_SECONDS = 2.0


@dataclass(frozen=True)
class Preprocessing:
    """open_clip's evaluation transform, as data: resize, centre-crop, scale to [0, 1], normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def of(cls, model) -> Preprocessing:
        cfg = model.visual.preprocess_cfg
        size = cfg.get("size", model.visual.image_size)
        size = size[0] if isinstance(size, (tuple, list)) else size
        return cls(int(size), tuple(cfg["mean"]), tuple(cfg["std"]), cfg.get("interpolation", "bicubic"),
                   cfg.get("resize_mode", "shortest"))

    def __call__(self, image) -> np.ndarray:
        """PIL RGB image → (3, size, size) float32, as torchvision's Resize/CenterCrop/ToTensor/Normalize
        compute it (same output sizes, crop offsets and resampling), without importing torch."""
        from PIL import Image

        resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}.get(
            self.interpolation, Image.Resampling.BICUBIC)
        if image.mode != "RGB":
            image = image.convert("RGB")
        w, h = image.size
        s = self.size
        if self.resize_mode == "squash":
            image = image.resize((s, s), resample)
        elif self.resize_mode == "shortest":
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample)
            top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
            image = image.crop((left, top, left + s, top + s))
        else:
            raise ModelError(f"Resize mode '{self.resize_mode}' of this model is not supported yet.")
        arr = np.asarray(image, dtype=np.float32) * (1.0 / 255.0)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


@dataclass(frozen=True)
class ModelSpec:
    """Which model: architecture, pretrained tag and/or a local checkpoint file."""

    arch: str
    pretrained: str | None = None  # an open_clip tag, "random", or None with ``weights``
    weights: str | None = None  # absolute path of a local checkpoint

    @classmethod
    def parse(cls, name: str | None, weights: str | None = None) -> ModelSpec:
        name = (name or DEFAULT_MODEL).strip()
        arch, _, tag = name.partition("/")
        if weights:
            return cls(arch, None, os.path.abspath(os.path.expanduser(weights)))
        if arch in _PROJECT_MODELS:
            return cls(arch, tag or RANDOM_TAG)
        if not tag:
            default_arch, _, default_tag = DEFAULT_MODEL.partition("/")
            tag = default_tag if arch == default_arch else None
            if tag is None:
                raise ModelError(
                    f"Model '{name}' needs a pretrained tag, e.g. '{arch}/<tag>'; "
                    f"'clipdesk models' lists them, or pass --weights PATH.")
        return cls(arch, tag)

    @property
    def name(self) -> str:
        """The identity stored with a library's vectors."""
        if self.weights:
            try:
                digest = file_hash(self.weights)[:12]
            except OSError:
                digest = "missing"
            return f"{self.arch}+file:{digest}"
        if self.arch in _PROJECT_MODELS and self.pretrained == RANDOM_TAG:
            return self.arch
        return f"{self.arch}/{self.pretrained}"

    @property
    def random_weights(self) -> bool:
        return self.weights is None and self.pretrained == RANDOM_TAG


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
        # int8 runs the image tower in OpenVINO/ONNX Runtime (``self.int8``); the text tower stays fp32
        self._dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                       "int8": torch.float32}[precision]
        self.int8: Int8Visual | None = None
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
        if self.int8 is not None:
            feats = self.int8(np.stack([np.asarray(p, np.float32) for p in prepared]))
            return feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
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
    import open_clip
    import torch

    pool = getattr(model, "text_pool_type", None)
    if type(model) is not open_clip.CLIP or pool not in ("argmax", "eos") or model.attn_mask is None:
        return model.encode_text(tokens)
    pad = getattr(model, "pad_id", 0) or 0
    length = int((tokens != pad).long().cumsum(1).argmax(1).max()) + 1
    t = tokens[:, :length]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(t).to(cast) + model.positional_embedding[:length].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    from open_clip.transformer import text_global_pool

    x = text_global_pool(x, t, pool, eos_token_id=getattr(model, "text_eos_id", None))
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
    elif spec.random_weights:
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
    if precision == "int8" and not text_only:
        int8 = Int8Visual.build(spec, model, say)
        if int8 is None:  # no int8 backend installed, or its build failed: fp32 always works
            precision = "fp32"
    encoder = Encoder(spec, model, tokenizer, device, precision, text_only)
    if precision == "int8" and not text_only:
        encoder.int8 = int8
    elif precision not in ("fp32", "int8"):
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


def network_reachable(host: str, port: int, timeout: float = NETWORK_PROBE_SECONDS) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds, name lookup
    included (the lookup has no timeout of its own, so it runs in a daemon thread)."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except (OSError, ValueError):
            result.append(False)

    t = threading.Thread(target=attempt, name="clipdesk-network-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


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
def _precision_cache_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("CLIPDESK_CACHE_DIR") or user_cache_dir("clipdesk")) / "precision.json"


def _machine_key(spec: ModelSpec) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    key = f"{spec.arch}|torch {torch.__version__}|{cpu}|threads {torch.get_num_threads()}"
    backend = Int8Visual.backend_available()
    if backend:  # installing OpenVINO or ONNX Runtime brings int8 into the measurement
        key += f"|int8 {Int8Visual.backend_version(backend)}"
    return key


def _machine_loaded() -> bool:
    """Whether the 1-minute load average is above the number of cores this process may use."""
    try:
        return os.getloadavg()[0] > len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return False


# Other programs using more than this share of the cores while precisions are timed make the
# timing unfit to keep (the load average lags: it can read quiet while a neighbour starts).
OTHERS_BUSY_SHARE = 0.25


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
def _others_cpu(out: dict):
    """Sets ``out["cores"]`` to the cores other processes kept busy (on average) during the block,
    from /proc/stat's busy time less this process's own; None where the system does not say."""
    busy, own, t = _busy_cpu_seconds(), time.process_time(), time.monotonic()
    try:
        yield out
    finally:
        end, seconds = _busy_cpu_seconds(), time.monotonic() - t
        out["cores"] = None if busy is None or end is None or seconds <= 0 else \
            max(0.0, (end - busy - (time.process_time() - own)) / seconds)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def choose_precision(spec: ModelSpec, model, device: str, say: Callable[[str], None] | None = None) -> str:
    """fp16 on CUDA; fp32 on MPS; on CPUs bf16 only where a measurement shows it faster and the
    embeddings agree with fp32 (mean cosine ≥ MIN_AGREEMENT). The verdict is cached per machine."""
    if device.startswith("cuda"):
        return "fp16"
    if device != "cpu" or spec.arch in _PROJECT_MODELS:
        return "fp32"  # the tiny test model gains nothing from bf16
    path = _precision_cache_path()
    key = _machine_key(spec)
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if key in cached:
        return cached[key]["precision"]
    if say:
        say("Measuring the fastest precision on this machine (once)…")
    # Other programs sharing the cores slow torch's bf16 far more than int8 (measured: ONNX Runtime
    # int8 1.8x bf16 under load, 1.09x quiet; OpenVINO int8 3.2x under load, 2x quiet), so int8 is
    # only measured, and a verdict only kept, when quiet.
    loaded = Int8Visual.available() and _machine_loaded()
    int8 = None if loaded else Int8Visual.build(spec, model, say)
    others: dict = {}
    with _others_cpu(others):
        result = measure_precision(model, int8=int8)
    busy = others["cores"] is not None and others["cores"] > OTHERS_BUSY_SHARE * _cores()
    if loaded or busy:  # for this session; measured again at the next load (an int8 file is kept for it)
        log.info("precision measured under load (other processes: %s cores): not cached", others["cores"])
        return result["precision"]
    if int8 is not None and result["precision"] != "int8":
        int8.discard()  # its file is not kept where it is not used
    cached[key] = result
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(cached, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return result["precision"]


def measure_precision(model, batch: int = 8, repeats: int = 2, int8: Int8Visual | None = None) -> dict:
    """Time fp32 and bf16 image encoding on one batch and compare their embeddings; with
    ``int8``, time it too: it wins where it is ``INT8_GAIN`` times faster than the better of fp32
    and bf16 and agrees with fp32 (mean cosine ≥ ``MIN_AGREEMENT``)."""
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
    if int8 is not None:
        xn = x.numpy()
        try:
            int8(xn)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                out8 = int8(xn)
                best = min(best, time.perf_counter() - t)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime errors have no common base
            log.info("int8 unavailable: %s", e)
            return result
        int8_rate = batch / best
        out8 = torch.nn.functional.normalize(torch.from_numpy(out8).float(), dim=-1)
        agreement8 = float((ref * out8).sum(-1).mean())
        best_other = result["bf16_img_s"] if result["precision"] == "bf16" else fp32_rate
        result.update(int8_img_s=round(int8_rate, 1), int8_agreement=round(agreement8, 5))
        if int8_rate >= INT8_GAIN * best_other and agreement8 >= MIN_AGREEMENT:
            result["precision"] = "int8"
    return result


# The calibration set of static int8: photo-like images made here (no photos are needed at load).
CALIBRATION_IMAGES = 64


def calibration_images(n: int, pre: Preprocessing, seed: int = 0) -> np.ndarray:
    """``n`` photo-like model inputs (n, 3, size, size), normalised as ``pre`` normalises photos:
    1/f colour noise (the spectrum of natural images) with correlated channels and random
    brightness and contrast. They calibrate the activation ranges of static int8 without photos."""
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


class Int8Visual:
    """A model's image tower in int8, run outside torch (torch keeps the text tower in fp32).

    Built once per model and machine into the user cache folder, by the first of two optional
    backends that is installed:

    - ``openvino``: OpenVINO with NNCF (``pip install clipdesk[int8]``): *static* int8, every
      Linear layer (73 matrix products in ViT-B-32) with int8 weights and int8 activations, their
      scales calibrated once on ``CALIBRATION_IMAGES`` photo-like images
      (:func:`calibration_images`), VNNI/AMX kernels; the attention's own score products stay in
      float (OpenVINO's fused attention). On 2 EPYC cores ~2x torch's bf16 (benchmarks/bench_int8.py).
    - ``onnxruntime``: ONNX Runtime's *dynamic* quantisation (int8 weights, activations quantised
      per batch; ``onnxruntime`` and ``onnx``): ~1.1x bf16 there, so precision "auto" rarely
      picks it.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], path: Path, backend: str = "onnxruntime"):
        self._run: Callable[[np.ndarray], np.ndarray] | None = run
        self.path = path
        self.backend = backend

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(n, 3, size, size) float32 → (n, dim) float32 image features (not normalised)."""
        if self._run is None:
            raise ModelError("this int8 image model was discarded")
        return np.asarray(self._run(np.ascontiguousarray(x, np.float32)), np.float32)

    def discard(self) -> None:
        self._run = None
        for p in (self.path, self.path.with_suffix(".bin")):
            with contextlib.suppress(OSError):
                p.unlink()

    @staticmethod
    def backend_available() -> str | None:
        """The backend :meth:`build` uses here ("openvino" or "onnxruntime"), None where neither is
        installed. Looks the packages up without importing them."""
        from importlib.util import find_spec

        def has(*names: str) -> bool:
            try:
                return all(find_spec(n) is not None for n in names)
            except (ImportError, ValueError):
                return False

        if has("openvino", "nncf"):
            return "openvino"
        if has("onnxruntime", "onnx"):
            return "onnxruntime"
        return None

    @classmethod
    def available(cls) -> bool:
        return cls.backend_available() is not None

    @staticmethod
    def backend_version(backend: str | None) -> str:
        """"openvino 2026.4.1" and the like, for cache keys; "" where none."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            if backend == "openvino":
                return f"openvino {version('openvino')} nncf {version('nncf')}"
            if backend == "onnxruntime":
                return f"ort {version('onnxruntime')}"
        except PackageNotFoundError:
            pass
        return ""

    @classmethod
    def build(cls, spec: ModelSpec, model, say: Callable[[str], None] | None = None,
              backend: str | None = None) -> Int8Visual | None:
        """The int8 image tower of ``model`` (fp32, on the CPU), built once and cached; None where
        no backend is installed or the build fails (the caller keeps torch). ``backend`` picks one
        ("openvino" or "onnxruntime") instead of the first installed."""
        import hashlib

        import torch

        backend = backend or cls.backend_available()
        if backend not in ("openvino", "onnxruntime"):
            return None
        pre = Preprocessing.of(model)
        size = pre.size
        tag = f"{spec.name}|{size}|torch {torch.__version__}|{cls.backend_version(backend)}"
        if backend == "openvino":
            tag += f"|calibration {CALIBRATION_IMAGES} v2"
        digest = hashlib.blake2b(tag.encode(), digest_size=10).hexdigest()
        suffix = ".xml" if backend == "openvino" else ".onnx"
        path = _precision_cache_path().parent / "int8" / f"{spec.arch.replace('/', '_')}-{digest}{suffix}"
        threads = torch.get_num_threads()
        try:
            if not path.is_file():
                if say:
                    say("Preparing an int8 image model for this machine (once)…")
                path.parent.mkdir(parents=True, exist_ok=True)
                if backend == "openvino":
                    _build_openvino_int8(model, pre, path)
                else:
                    _build_onnxruntime_int8(model, size, path)
            run = _openvino_runner(path, threads) if backend == "openvino" else _onnxruntime_runner(path, threads)
        except Exception as e:  # noqa: BLE001 - converter/quantiser/runtime errors have no common base
            log.warning("int8 image model unavailable (%s: %s); staying with torch", type(e).__name__, e)
            for p in (path, path.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    p.unlink()
            return None
        return cls(run, path, backend)


def _build_openvino_int8(model, pre: Preprocessing, path: Path) -> None:
    """OpenVINO model of the image tower, quantised by NNCF (static int8, calibrated on
    :func:`calibration_images`), written as ``path`` (.xml) and its .bin; the .xml last, so an
    .xml on disk is always a whole model."""
    import io

    import nncf
    import openvino as ov
    import torch
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters

    size = pre.size
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.xml")  # processes building at once (Ray workers)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter
            ov_model = ov.convert_model(model.visual, example_input=torch.zeros(1, 3, size, size),
                                        input=[(-1, 3, size, size)])
        calib = calibration_images(CALIBRATION_IMAGES, pre)
        nncf.set_log_level(logging.ERROR)
        # NNCF draws progress bars on stdout/stderr: not this library's to print (a one-off, seconds)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            # SmoothQuant off: on synthetic calibration it lowered the worst photo's agreement
            # (min cosine 0.992 against 0.998 without) and doubles the build time
            quantised = nncf.quantize(ov_model, nncf.Dataset([calib[i:i + 1] for i in range(len(calib))]),
                                      model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib),
                                      preset=nncf.QuantizationPreset.MIXED,
                                      advanced_parameters=AdvancedQuantizationParameters(
                                          smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1)))
        ov.save_model(quantised, str(tmp), compress_to_fp16=False)
        os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
        os.replace(tmp, path)
    finally:
        for t in (tmp, tmp.with_suffix(".bin")):
            with contextlib.suppress(OSError):
                t.unlink()


def _openvino_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
        # the layers NNCF left in float stay fp32 (a bf16 hint gains ~1% and agrees less)
        "INFERENCE_PRECISION_HINT": "f32",
        "ENABLE_CPU_PINNING": False})  # decoder threads share these cores
    request = compiled.create_infer_request()
    lock = threading.Lock()

    def run(x: np.ndarray) -> np.ndarray:
        with lock:  # one infer request: one call at a time
            return np.array(request.infer({0: x})[0], np.float32, copy=True)

    return run


def _build_onnxruntime_int8(model, size: int, path: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_tmp, int8_tmp = path.with_suffix(".fp32.tmp"), path.with_suffix(".int8.tmp")
    try:
        # With gradients on, PyTorch's attention takes its plain path (its fused inference kernel
        # has no ONNX form); the export computes no gradient.
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter and quantiser chatter
            torch.onnx.export(model.visual, (torch.zeros(1, 3, size, size),), str(fp32_tmp),
                              input_names=["x"], output_names=["y"], opset_version=17,
                              dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
            quantize_dynamic(str(fp32_tmp), str(int8_tmp), weight_type=QuantType.QInt8)
        os.replace(int8_tmp, path)
    finally:
        for t in (fp32_tmp, int8_tmp):
            with contextlib.suppress(OSError):
                t.unlink()


def _onnxruntime_runner(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"x": x})[0]
