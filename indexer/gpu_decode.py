"""JPEG decoding on the GPU (nvJPEG through torchvision) beside the CPU decoders, for CUDA models.

On a GPU the model embeds thousands of images a second while the CPU decodes a few hundred
camera JPEGs: decoding is the limit. When the model runs on CUDA, :class:`HybridDecoder` splits
the work: the CPU decoder threads stay busy with whatever they can take (every non-JPEG file,
and JPEGs while a thread is free), and the rest of the JPEGs are read whole by a few reader
threads and decoded on the GPU in batches, then oriented, resized, cropped and normalised there
as the model's own preprocessing does. What crosses to the GPU for those is the compressed file
(uint8, from pinned memory), not 786 KB of float32 pixels.

Any file the GPU path does not take or cannot decode (CMYK, progressive, truncated-looking, a
decoder error) goes to the CPU path, file by file, so nothing is lost and failures are worded
exactly as the CPU path words them. Results come back as futures in submission order.

Without CUDA, :func:`for_embedder` returns None and the pipeline's CPU path runs unchanged.
torch is imported only here, and only once a CUDA model asked for it.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from .decode import MAX_PIXELS, JpegBytes, read_plain_jpeg

log = logging.getLogger(__name__)

JPEG_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe"})
GPU_BATCH = 64  # JPEGs per nvJPEG call (torchvision decodes a list in one batched call)
GPU_BATCH_PIXELS = 64 * 12_000_000  # ~2.3 GB of decoded uint8 per batch at most
MAX_JPEG_BYTES = 64 * 1024 * 1024  # larger files are read in pieces by the CPU path
MAX_GPU_PIXELS = 100_000_000  # larger images are decoded (reduced) on the CPU
LINGER_S = 0.01  # a batch waits this long for one more JPEG before it is decoded as it is


@dataclass(frozen=True)
class GpuPreprocess:
    """The model's evaluation transform (see clipdesk's ``Preprocessing``) on a device tensor:
    resize the shorter side (antialiased, as Pillow does), centre-crop, scale, normalise."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def of(cls, preprocess: Any) -> GpuPreprocess | None:
        """From any object with the fields of clipdesk's ``Preprocessing``; None if it lacks them
        or asks for a resize this module does not reproduce."""
        try:
            out = cls(int(preprocess.size), tuple(preprocess.mean), tuple(preprocess.std),
                      str(preprocess.interpolation), str(preprocess.resize_mode))
        except (AttributeError, TypeError, ValueError):
            return None
        ok = out.resize_mode in ("shortest", "squash") and out.interpolation in ("bicubic", "bilinear")
        return out if ok and len(out.mean) == len(out.std) == 3 else None

    def __call__(self, image, orientation: int = 1):
        """(C, H, W) uint8 tensor (C = 1 or 3) → (3, size, size) float32 on the same device."""
        import torch
        import torch.nn.functional as F

        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        image = orient(image, orientation)
        _, h, w = image.shape
        s = self.size
        x = image.unsqueeze(0).float()
        if self.resize_mode == "squash":
            new_w, new_h = s, s
        else:  # "shortest": the same sizes and crop offsets as the CPU path
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            x = F.interpolate(x, size=(new_h, new_w), mode=self.interpolation, antialias=True,
                              align_corners=False)
            x = x.round_().clamp_(0, 255)  # Pillow resizes to 8 bits; so do we
        top, left = int(round((new_h - s) / 2.0)), int(round((new_w - s) / 2.0))
        x = x[0, :, top:top + s, left:left + s]
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return ((x * (1.0 / 255.0) - mean) / std).contiguous()


def orient(image, orientation: int):
    """Apply an EXIF orientation (1..8) to a (C, H, W) tensor, as Pillow's transposes do."""
    import torch

    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1).flip(-2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1).flip(-2)
    if orientation == 8:
        return torch.rot90(image, 1, (-2, -1))
    return image


def nvjpeg_decode(datas: list, device: str) -> list:
    """torchvision's batched nvJPEG call: CPU uint8 tensors of JPEG files → (C, H, W) uint8 on
    ``device``. It raises for the whole batch if one file fails."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision points to TorchCodec
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)


class GpuJpegDecoder:
    """Decodes batches of JPEG files on one device and prepares them for the model there.

    ``decode`` is the boundary with the GPU's decoder (:func:`nvjpeg_decode`); tests replace it.
    """

    def __init__(self, device: str, preprocess: GpuPreprocess,
                 decode: Callable[[list, str], list] = nvjpeg_decode):
        self.device = device
        self.preprocess = preprocess
        self._decode = decode
        self._cuda = device.startswith("cuda")
        self._pinned = None  # one growing pinned staging buffer, reused batch after batch
        self._stream = None

    def _stage(self, jpegs: Sequence[JpegBytes]) -> list:
        """The files' bytes as CPU uint8 tensors; on CUDA, views of one pinned buffer, so the
        copy to the device is a DMA transfer of compressed bytes."""
        import torch

        if not self._cuda:
            return [torch.frombuffer(j.data, dtype=torch.uint8) for j in jpegs]
        total = sum(len(j.data) for j in jpegs)
        if self._pinned is None or self._pinned.numel() < total:
            self._pinned = torch.empty(max(total, 1 << 26), dtype=torch.uint8, pin_memory=True)
        out, at = [], 0
        for j in jpegs:
            n = len(j.data)
            view = self._pinned[at:at + n]
            view.copy_(torch.frombuffer(j.data, dtype=torch.uint8))
            out.append(view)
            at += n
        return out

    def decode(self, jpegs: Sequence[JpegBytes]) -> list:
        """One prepared (3, size, size) float32 device tensor per file, or the exception that
        file raised. A batch the decoder refuses is retried file by file, so one odd file costs
        only itself."""
        import torch

        if not jpegs:
            return []
        if self._cuda and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        ctx = torch.cuda.stream(self._stream) if self._cuda else nullcontext()
        with ctx, torch.inference_mode():
            datas = self._stage(jpegs)
            try:
                images: list = list(self._decode(datas, self.device))
                if len(images) != len(datas):
                    raise RuntimeError(f"the decoder returned {len(images)} images for {len(datas)} files")
            except Exception:  # noqa: BLE001 - find the file(s) it refused
                images = []
                for d in datas:
                    try:
                        images.append(self._decode([d], self.device)[0])
                    except Exception as e:  # noqa: BLE001 - that file goes to the CPU path
                        images.append(e)
            out: list = []
            for img, j in zip(images, jpegs):
                if isinstance(img, Exception):
                    out.append(img)
                    continue
                try:
                    out.append(self.preprocess(img, j.orientation))
                except Exception as e:  # noqa: BLE001 - e.g. out of memory on one huge image
                    out.append(e)
            if self._cuda:
                self._stream.synchronize()  # results ready for the model's stream; buffer reusable
                model_stream = torch.cuda.default_stream(self.device)
                for x in out:  # freed later on the model's stream: the allocator must know
                    if not isinstance(x, Exception):
                        x.record_stream(model_stream)
        return out


@dataclass
class RouteCounts:
    """Where files went (for tests and benchmarks)."""

    cpu: int = 0  # decoded by the CPU path from the start
    gpu: int = 0  # decoded on the GPU
    fallback: int = 0  # read for the GPU, then handed to the CPU path (refused or failed there)


class HybridDecoder:
    """Routes each submitted file to the CPU decoders or the GPU's JPEG decoder.

    ``submit(file)`` returns a future of whatever the CPU path returns for a file; the GPU path
    builds the same thing with ``make_result(file, prepared, record)``. A JPEG goes to the CPU
    while fewer than ``cpu_jpeg_slots`` CPU decodes are in flight (so the CPU threads never
    idle), otherwise to the GPU. Use as a context manager around the submissions.
    """

    def __init__(self, gpu: GpuJpegDecoder, *, cpu_jpeg_slots: int, readers: int = 2,
                 gpu_batch: int = GPU_BATCH, batch_pixels: int = GPU_BATCH_PIXELS,
                 max_jpeg_bytes: int = MAX_JPEG_BYTES, max_pixels: int = MAX_GPU_PIXELS,
                 linger: float = LINGER_S):
        self.gpu = gpu
        self.cpu_jpeg_slots = cpu_jpeg_slots
        self.gpu_batch = gpu_batch
        self.batch_pixels = batch_pixels
        self.max_jpeg_bytes = max_jpeg_bytes
        self.max_pixels = min(max_pixels, MAX_PIXELS)
        self.linger = linger
        self.counts = RouteCounts()
        self._readers_n = max(1, readers)
        self._cpu_inflight = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._cpu_submit: Callable[[Any], Future] | None = None
        self._make_result: Callable[[Any, Any, dict], Any] | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    @property
    def window(self) -> int:
        """How many files should be in flight to keep both sides busy."""
        return self.cpu_jpeg_slots + 3 * self.gpu_batch

    def bind(self, cpu_submit: Callable[[Any], Future], make_result: Callable[[Any, Any, dict], Any]
             ) -> HybridDecoder:
        """``cpu_submit(file)``: the CPU path's future for a file (it must never raise through
        the future); ``make_result(file, prepared, record)``: the CPU path's result type.
        Called before the first :meth:`submit`."""
        self._cpu_submit = cpu_submit
        self._make_result = make_result
        return self

    def __enter__(self) -> HybridDecoder:
        self._readers = ThreadPoolExecutor(self._readers_n, thread_name_prefix="clipdesk-jpeg-read")
        self._thread = threading.Thread(target=self._gpu_loop, name="clipdesk-gpu-decode", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
        if self._thread is not None:
            self._thread.join()
        while True:  # anything left unanswered is cancelled, never left hanging
            try:
                _, _, fut = self._queue.get_nowait()
            except queue.Empty:
                break
            fut.cancel()

    # ------------------------------------------------------------------ routing
    def submit(self, file) -> Future:
        ext = os.path.splitext(file.path)[1].lower()
        if ext not in JPEG_EXTENSIONS or getattr(file, "size", 0) > self.max_jpeg_bytes:
            return self._to_cpu(file, "cpu")
        with self._lock:
            cpu_free = self._cpu_inflight < self.cpu_jpeg_slots
        if cpu_free:
            return self._to_cpu(file, "cpu")
        fut: Future = Future()
        self._readers.submit(self._read, file, fut)
        return fut

    def _to_cpu(self, file, why: str) -> Future:
        with self._lock:
            self._cpu_inflight += 1
            setattr(self.counts, why, getattr(self.counts, why) + 1)
        inner = self._cpu_submit(file)
        inner.add_done_callback(self._cpu_done)
        return inner

    def _cpu_done(self, _fut: Future) -> None:
        with self._lock:
            self._cpu_inflight -= 1

    def _fallback(self, file, fut: Future) -> None:
        """Hand ``file`` to the CPU path and answer ``fut`` with its result."""
        if fut.cancelled() or self._stop.is_set():
            fut.cancel()
            return
        try:
            inner = self._to_cpu(file, "fallback")
        except RuntimeError:  # the CPU pool is shutting down: the job is being abandoned
            fut.cancel()
            return

        def done(f: Future) -> None:
            if f.cancelled():
                fut.cancel()
            elif not fut.cancelled():
                _answer(fut, f.result())

        inner.add_done_callback(done)

    def _read(self, file, fut: Future) -> None:
        try:
            jpeg = read_plain_jpeg(file.path, self.max_jpeg_bytes, self.max_pixels)
        except Exception:  # noqa: BLE001 - the CPU path will word it
            jpeg = None
        if jpeg is None:
            self._fallback(file, fut)
        else:
            self._queue.put((file, jpeg, fut))

    # ------------------------------------------------------------------ GPU side
    def _take_batch(self) -> list:
        try:
            first = self._queue.get(timeout=0.05)
        except queue.Empty:
            return []
        batch = [first]
        pixels = first[1].width * first[1].height
        while len(batch) < self.gpu_batch and pixels < self.batch_pixels:
            try:
                item = self._queue.get(timeout=self.linger)
            except queue.Empty:
                break
            batch.append(item)
            pixels += item[1].width * item[1].height
        return batch

    def _gpu_loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if not batch:
                continue
            live = [b for b in batch if not b[2].cancelled()]
            try:
                results = self.gpu.decode([j for _, j, _ in live])
            except Exception as e:  # noqa: BLE001 - the whole batch goes to the CPU path
                log.warning("GPU JPEG decoding failed (%s); these files go to the CPU decoders", e)
                results = [e] * len(live)
            for (file, jpeg, fut), prepared in zip(live, results):
                if isinstance(prepared, Exception):
                    self._fallback(file, fut)
                    continue
                with self._lock:
                    self.counts.gpu += 1
                taken = jpeg.taken if jpeg.taken is not None else file.mtime
                record = dict(hash=jpeg.content_hash, width=jpeg.width, height=jpeg.height, taken=taken)
                try:
                    _answer(fut, self._make_result(file, prepared, record))
                except Exception:  # noqa: BLE001 - never leave a future unanswered
                    self._fallback(file, fut)


def _answer(fut: Future, value: Any) -> None:
    if fut.set_running_or_notify_cancel():
        fut.set_result(value)


def nvjpeg_available(device: str) -> bool:
    """Whether torch sees ``device`` as a CUDA device and torchvision has its GPU JPEG decoder."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import torchvision.io  # noqa: F401 - registers the image ops

        return hasattr(torch.ops.image, "decode_jpegs_cuda")
    except Exception:  # noqa: BLE001 - no torch/torchvision, or a broken CUDA install
        return False


def for_embedder(embedder: Any, workers: int) -> HybridDecoder | None:
    """A hybrid decoder for an embedder whose model runs on CUDA (it has ``device`` "cuda..." and
    a ``preprocess`` with the model's transform) where nvJPEG is available; otherwise None, and
    the caller keeps its CPU path."""
    device = getattr(embedder, "device", None)
    if not (isinstance(device, str) and device.startswith("cuda")):
        return None
    spec = GpuPreprocess.of(getattr(embedder, "preprocess", None))
    if spec is None or not nvjpeg_available(device):
        return None
    return HybridDecoder(GpuJpegDecoder(device, spec), cpu_jpeg_slots=workers,
                         readers=max(2, workers // 4))
