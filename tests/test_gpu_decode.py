"""GPU JPEG decoding beside the CPU decoders (indexer/gpu_decode.py).

Everywhere: the routing and fallback logic, with the GPU's decoder mocked at its boundary (the
batched ``decode(list_of_uint8_tensors, device)`` call) and the "GPU" being this CPU; the
orientation and resize/crop/normalise code, which is the same code on any device, against the
CPU path's Pillow preprocessing. Where CUDA is present: agreement with the CPU path on the shared
photos, and throughput. Without CUDA those are skipped with a loud reason.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdesk.indexer import gpu_decode
from clipdesk.indexer.catalog import Catalog
from clipdesk.indexer.decode import decode_image, file_hash, read_plain_jpeg
from clipdesk.indexer.gpu_decode import GpuJpegDecoder, GpuPreprocess, HybridDecoder, orient
from clipdesk.indexer.pipeline import index_files
from clipdesk.indexer.vectors import VectorStore
from clipdesk.runtime import ModelSpec, Preprocessing, load_encoder

from conftest import SHARED_DATA, make_photo

CUDA = torch.cuda.is_available()
NO_CUDA = ("NO CUDA ON THIS MACHINE: the GPU decode path's agreement with the CPU path and its "
           "throughput are NOT tested here (run tests/test_gpu_decode.py or benchmarks/bench_gpu.py "
           "on a CUDA machine)")


def cpu_decode(datas, device):
    """The mocked GPU decoder: torchvision's CPU JPEG decoder, same inputs and outputs."""
    import warnings

    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in datas]


def jpeg(path: Path, size=(160, 120), seed: int = 0, **save) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[:] = rng.integers(0, 255, 3)
    arr[:, : size[0] // 3] = rng.integers(0, 255, 3)
    arr += rng.integers(0, 30, arr.shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, "JPEG", quality=92, **save)
    return path


def exif_jpeg(path: Path, orientation: int, date: str = "2021:06:05 10:11:12", size=(120, 80)) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x0132] = date
    return jpeg(path, size, seed=orientation, exif=exif.tobytes())


# ---------------------------------------------------------------------- device-independent maths
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pillows_transposes(orientation):
    from clipdesk.indexer.decode import _TRANSPOSE

    arr = np.random.default_rng(orientation).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    for op in _TRANSPOSE.get(orientation, ()):
        img = img.transpose(op)
    got = orient(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, np.asarray(img))


@pytest.mark.parametrize("wh", [(640, 480), (480, 640), (300, 64), (64, 64), (50, 40)])
def test_gpu_preprocess_matches_the_cpu_preprocessing(wh):
    """Same output size and crop window as the Pillow path; pixels within a few levels (the two
    bicubic resamplers differ slightly)."""
    pre = Preprocessing(size=64, mean=(0.48, 0.46, 0.41), std=(0.27, 0.26, 0.28))
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:wh[1], 0:wh[0]]
    arr = np.stack([xx * 255 // wh[0], yy * 255 // wh[1], (xx + yy) % 256], -1).astype(np.uint8)
    arr[wh[1] // 3: wh[1] // 2] = rng.integers(0, 255, 3)  # an edge the crop must place right
    want = pre(Image.fromarray(arr))
    got = GpuPreprocess.of(pre)(torch.from_numpy(arr).permute(2, 0, 1)).numpy()
    assert got.shape == want.shape == (3, 64, 64) and got.dtype == np.float32
    levels = np.abs(got - want) * np.asarray(pre.std, np.float32)[:, None, None] * 255
    assert np.median(levels) <= 1.0 and np.mean(levels) < 2.0, (np.median(levels), np.mean(levels))


def test_gpu_preprocess_refuses_transforms_it_does_not_reproduce():
    pre = Preprocessing(size=64, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="longest")
    assert GpuPreprocess.of(pre) is None
    assert GpuPreprocess.of(object()) is None
    assert GpuPreprocess.of(Preprocessing(64, (0.5,) * 3, (0.5,) * 3)) is not None


# ---------------------------------------------------------------------- which files the GPU gets
def test_read_plain_jpeg_takes_plain_jpegs_only(tmp_path):
    plain = jpeg(tmp_path / "plain.jpg", (200, 100))
    got = read_plain_jpeg(str(plain), 1 << 20)
    assert got is not None and (got.width, got.height, got.orientation) == (200, 100, 1)
    assert got.content_hash == file_hash(str(plain)) and bytes(got.data) == plain.read_bytes()

    rotated = read_plain_jpeg(str(exif_jpeg(tmp_path / "rot.jpg", 6, size=(120, 80))), 1 << 20)
    assert (rotated.width, rotated.height, rotated.orientation) == (80, 120, 6)
    cpu = decode_image(str(tmp_path / "rot.jpg"))
    assert (cpu.width, cpu.height, cpu.taken) == (rotated.width, rotated.height, rotated.taken)
    assert rotated.taken is not None

    Image.new("CMYK", (64, 48), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg", "JPEG")
    jpeg(tmp_path / "progressive.jpg", progressive=True)
    whole = plain.read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(whole[: len(whole) * 2 // 3])
    make_photo(tmp_path / "png_named.jpg", fmt="PNG")
    (tmp_path / "text.jpg").write_text("not an image at all")
    (tmp_path / "empty.jpg").write_bytes(b"")
    for name in ("cmyk.jpg", "progressive.jpg", "truncated.jpg", "png_named.jpg", "text.jpg", "empty.jpg",
                 "missing.jpg"):
        assert read_plain_jpeg(str(tmp_path / name), 1 << 20) is None, name
    assert read_plain_jpeg(str(plain), max_bytes=len(whole) - 1) is None  # too big to read whole
    assert read_plain_jpeg(str(plain), 1 << 20, max_pixels=200 * 100 - 1) is None


class _File:
    def __init__(self, path: Path):
        st = path.stat() if path.exists() else None
        self.path, self.size, self.mtime = str(path), st.st_size if st else 0, st.st_mtime if st else 0.0


class _Recorder:
    """The mocked decoder boundary: records each call's batch; refuses files it is told to."""

    def __init__(self, refuse: set[bytes] = frozenset()):
        self.calls: list[int] = []
        self.refuse = refuse
        self.lock = threading.Lock()

    def __call__(self, datas, device):
        with self.lock:
            self.calls.append(len(datas))
        for d in datas:
            if bytes(d[-64:].numpy()) in self.refuse:
                raise RuntimeError("nvjpeg: unsupported JPEG (mock)")
        return cpu_decode(datas, device)


def _hybrid(decode, slots: int = 0, **kw) -> HybridDecoder:
    pre = GpuPreprocess(size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    return HybridDecoder(GpuJpegDecoder("cpu", pre, decode=decode), cpu_jpeg_slots=slots, **kw)


def test_routing_and_per_file_fallback_keep_order_and_lose_nothing(tmp_path):
    files = []
    for i in range(12):
        files.append(jpeg(tmp_path / f"a{i:02d}.jpg", seed=i))
        if i % 4 == 1:
            files.append(make_photo(tmp_path / f"b{i:02d}.png", fmt="PNG"))
    odd = files[5]
    decoder = _Recorder(refuse={odd.read_bytes()[-64:]})
    cpu_seen: list[str] = []

    with ThreadPoolExecutor(2) as pool:
        def cpu_submit(f):
            cpu_seen.append(os.path.basename(f.path))
            return pool.submit(lambda: ("cpu", f.path, None, None))

        hybrid = _hybrid(decoder, gpu_batch=4, linger=0.05)
        with hybrid.bind(cpu_submit, lambda f, prepared, record: ("gpu", f.path, prepared, record)):
            futures = [hybrid.submit(_File(p)) for p in files]
            results = [fut.result(timeout=30) for fut in futures]

    assert [r[1] for r in results] == [str(p) for p in files]  # submission order, every file once
    where = {os.path.basename(r[1]): r[0] for r in results}
    assert {n for n, w in where.items() if w == "cpu"} == {p.name for p in files if p.suffix == ".png"} | {odd.name}
    assert sorted(cpu_seen) == sorted(n for n, w in where.items() if w == "cpu")
    assert (hybrid.counts.cpu, hybrid.counts.gpu, hybrid.counts.fallback) == (3, 11, 1)
    assert max(decoder.calls) > 1 and max(decoder.calls) <= 4  # batched, within the batch size
    assert 1 in decoder.calls  # the refused batch was retried file by file
    gpu_one = next(r for r in results if r[0] == "gpu")
    p = Path(gpu_one[1])
    assert gpu_one[2].shape == (3, 32, 32) and gpu_one[2].dtype == torch.float32
    assert gpu_one[3] == dict(hash=file_hash(str(p)), width=160, height=120, taken=p.stat().st_mtime)


def test_cpu_threads_take_jpegs_while_they_have_room(tmp_path):
    files = [jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(10)]
    gate = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        def cpu_submit(f):
            return pool.submit(lambda: (gate.wait(10), ("cpu", f.path))[1])

        hybrid = _hybrid(cpu_decode, slots=3, gpu_batch=8, linger=0.02)
        with hybrid.bind(cpu_submit, lambda f, prepared, record: ("gpu", f.path)):
            futures = [hybrid.submit(_File(p)) for p in files]
            gpu_done = [f.result(timeout=30) for f in futures[3:]]  # the GPU side does not wait for the CPU
            gate.set()
            cpu_done = [f.result(timeout=30) for f in futures[:3]]
    assert [w for w, _ in cpu_done] == ["cpu"] * 3 and [w for w, _ in gpu_done] == ["gpu"] * 7


def test_a_failing_gpu_side_hands_everything_to_the_cpu(tmp_path):
    files = [jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(5)]

    def broken(datas, device):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (mock)")

    class BrokenPrepare(GpuPreprocess):
        def __call__(self, image, orientation=1):
            raise torch.cuda.OutOfMemoryError("mock OOM")

    with ThreadPoolExecutor(2) as pool:
        for gpu in (GpuJpegDecoder("cpu", GpuPreprocess(32, (0.5,) * 3, (0.5,) * 3), decode=broken),
                    GpuJpegDecoder("cpu", BrokenPrepare(32, (0.5,) * 3, (0.5,) * 3), decode=cpu_decode)):
            hybrid = HybridDecoder(gpu, cpu_jpeg_slots=0, gpu_batch=4, linger=0.02)
            with hybrid.bind(lambda f: pool.submit(lambda: ("cpu", f.path)), lambda *a: ("gpu",)):
                results = [f.result(timeout=30) for f in [hybrid.submit(_File(p)) for p in files]]
            assert results == [("cpu", str(p)) for p in files]
            assert hybrid.counts.fallback == 5 and hybrid.counts.gpu == 0


def test_leaving_early_answers_or_cancels_every_future(tmp_path):
    files = [jpeg(tmp_path / f"{i}.jpg", seed=i) for i in range(40)]

    def slow(datas, device):
        time.sleep(0.05)
        return cpu_decode(datas, device)

    with ThreadPoolExecutor(2) as pool:
        hybrid = _hybrid(slow, gpu_batch=4, linger=0.01)
        with hybrid.bind(lambda f: pool.submit(lambda: "cpu"), lambda *a: "gpu"):
            futures = [hybrid.submit(_File(p)) for p in files]
            futures[0].result(timeout=30)
            for f in futures[10:]:
                f.cancel()
        t = time.perf_counter()
        for f in futures:  # nothing hangs: each is answered or cancelled
            assert f.done() or f.cancelled() or (f.result(timeout=5) and False) is False
        assert time.perf_counter() - t < 5


def test_no_cuda_means_the_cpu_path(monkeypatch):
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    assert enc.device == "cpu" and gpu_decode.for_embedder(enc, 2) is None

    class CudaLooking:
        device = "cuda"
        preprocess = enc.preprocess

    if not CUDA:  # a CUDA model where torch sees no GPU: still the CPU path, no error
        assert gpu_decode.for_embedder(CudaLooking(), 2) is None
    monkeypatch.setattr(gpu_decode, "nvjpeg_available", lambda device: True)
    hybrid = gpu_decode.for_embedder(CudaLooking(), 8)
    assert isinstance(hybrid, HybridDecoder) and hybrid.gpu.device == "cuda"
    assert hybrid.cpu_jpeg_slots == 8 and hybrid.gpu.preprocess.size == enc.preprocess.size
    assert gpu_decode.for_embedder(object(), 8) is None  # an embedder that names no device


# ---------------------------------------------------------------------- through the pipeline
def _odd_library(root: Path) -> None:
    for i in range(14):
        jpeg(root / "jpeg" / f"p{i:02d}.jpg", (200 + 8 * i, 150), seed=i)
    exif_jpeg(root / "jpeg" / "rotated.jpg", 6)
    (root / "odd").mkdir(parents=True)
    Image.new("CMYK", (90, 60), (0, 50, 100, 0)).save(root / "odd" / "cmyk.jpg", "JPEG")
    jpeg(root / "odd" / "progressive.jpg", progressive=True)
    whole = (root / "jpeg" / "p00.jpg").read_bytes()
    (root / "odd" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "odd" / "text.jpg").write_text("hello, not a photo")
    make_photo(root / "odd" / "png.png", fmt="PNG")
    jpeg(root / "odd" / "refused.jpg", seed=99)  # the mock decoder refuses this one


def _index(folder: Path, roots, enc) -> Catalog:
    cat = Catalog.open(str(folder))
    store = VectorStore(enc.dim)
    rep = index_files(cat, store, enc, roots, batch_size=4, workers=2)
    assert not rep.cancelled
    return cat


def test_the_gpu_path_gives_the_cpu_paths_library(tmp_path, monkeypatch):
    """Same files, same ids in the same order, same failures with the same reasons, same
    metadata; vectors as close as two resamplers allow (here with the tiny random model)."""
    root = tmp_path / "photos"
    _odd_library(root)
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    cpu_cat = _index(tmp_path / "cpu", [str(root)], enc)

    refused = (root / "odd" / "refused.jpg").read_bytes()[-64:]
    decoder = _Recorder(refuse={refused})
    made: list[HybridDecoder] = []

    def on_gpu(embedder, workers):
        made.append(HybridDecoder(GpuJpegDecoder("cpu", GpuPreprocess.of(enc.preprocess), decode=decoder),
                                  cpu_jpeg_slots=0, gpu_batch=4, linger=0.02))
        return made[-1]

    monkeypatch.setattr(gpu_decode, "for_embedder", on_gpu)
    gpu_cat = _index(tmp_path / "gpu", [str(root)], enc)

    counts = made[0].counts
    assert counts.gpu == 15 and counts.cpu == 1  # 14 + rotated on the GPU; the PNG on the CPU
    assert counts.fallback == 5  # cmyk, progressive, truncated, text: not taken; refused: failed there
    a, b = cpu_cat.all_images(), gpu_cat.all_images()
    assert [(i.id, i.path, i.size, i.width, i.height, i.taken) for i in a] == \
           [(i.id, i.path, i.size, i.width, i.height, i.taken) for i in b]
    assert len(a) == 19  # 15 plain JPEGs, CMYK, progressive, PNG, refused
    assert cpu_cat.failures() == gpu_cat.failures() and len(cpu_cat.failures()) == 2
    assert cpu_cat.file_states() == gpu_cat.file_states()  # hashes, sizes, stamps
    ids = [i.id for i in a]
    va, vb = cpu_cat.vectors_for(ids), gpu_cat.vectors_for(ids)
    cos = (va * vb).sum(1)
    assert cos.mean() >= 0.99, cos
    cpu_only = [k for k, i in enumerate(a) if "odd" in i.path]  # decoded by the CPU in both runs
    assert np.all(cos[cpu_only] > 0.999)  # float16 storage and another batch composition only
    cpu_cat.close()
    gpu_cat.close()


def test_the_gpu_path_is_idle_without_work(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(gpu_decode, "for_embedder", lambda *a: calls.append(a))
    cat = Catalog.open(str(tmp_path / "lib"))
    rep = index_files(cat, VectorStore(8), None, [str(tmp_path)])  # nothing to embed: no model
    assert rep.added == 0 and calls == []
    cat.close()


# ---------------------------------------------------------------------- on a real GPU only
def _shared_photos(n: int) -> list[Path]:
    photos = sorted((SHARED_DATA / "photos" / "labelled").rglob("*.jpg"))
    if not photos:
        pytest.fail(f"shared photos missing at {SHARED_DATA}")
    return photos[:: max(1, len(photos) // n)][:n]


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_gpu_embeddings_agree_with_the_cpu_path_on_the_shared_photos():
    enc = load_encoder(ModelSpec.parse("ViT-B-32-256/random"), device="cuda")
    paths = _shared_photos(128)
    cpu = enc.embed([enc.prepare(decode_image(str(p), enc.min_side).image) for p in paths])
    gpu = GpuJpegDecoder("cuda", GpuPreprocess.of(enc.preprocess))
    jpegs = [read_plain_jpeg(str(p), 1 << 26) for p in paths]
    keep = [k for k, j in enumerate(jpegs) if j is not None]
    prepared = gpu.decode([jpegs[k] for k in keep])
    assert not any(isinstance(x, Exception) for x in prepared)
    vec = enc.embed(prepared)
    cos = (cpu[keep] * vec).sum(1)
    print(f"GPU vs CPU path: mean cosine {cos.mean():.5f}, min {cos.min():.5f} over {len(keep)} photos")
    assert len(keep) >= 0.9 * len(paths) and cos.mean() >= 0.995


@pytest.mark.skipif(not CUDA, reason=NO_CUDA)
def test_gpu_decoding_is_faster_than_one_cpu_thread():
    paths = _shared_photos(256)
    gpu = GpuJpegDecoder("cuda", GpuPreprocess(256, (0.5,) * 3, (0.5,) * 3))
    jpegs = [j for j in (read_plain_jpeg(str(p), 1 << 26) for p in paths) if j is not None]
    gpu.decode(jpegs[:8])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(jpegs), 64):
        gpu.decode(jpegs[i:i + 64])
    gpu_rate = len(jpegs) / (time.perf_counter() - t)
    t = time.perf_counter()
    for p in paths[:32]:
        decode_image(str(p), 256)
    cpu_rate = 32 / (time.perf_counter() - t)
    print(f"GPU decode+prepare {gpu_rate:.0f} img/s vs one CPU thread {cpu_rate:.0f} img/s")
    assert gpu_rate > cpu_rate
