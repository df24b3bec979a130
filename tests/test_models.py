"""The model factory: the tiny model, the local-checkpoint path and the offline error."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from clipdesk.errors import ModelError
from clipdesk.models import DEFAULT_MODEL, ModelSpec, load_encoder


def test_tiny_model_is_deterministic_across_loads():
    a = load_encoder(ModelSpec.parse("test-tiny"))
    b = load_encoder(ModelSpec.parse("test-tiny"))
    img = Image.new("RGB", (80, 60), (10, 200, 30))
    np.testing.assert_array_equal(a.encode_images([img]), b.encode_images([img]))
    t = a.encode_texts(["a dog", "a cat"])
    assert t.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)
    assert a.precision == "fp32" and a.device == "cpu"


def test_text_cache_returns_identical_vectors():
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    first = enc.encode_texts(["snow"])
    assert "snow" in enc._text_cache
    np.testing.assert_array_equal(enc.encode_texts(["x", "snow"])[1], first[0])


def test_weights_file_is_loaded(tmp_path):
    import open_clip

    from clipdesk.models import register_project_models

    register_project_models()
    torch.manual_seed(123)  # different from the seeded random init
    model = open_clip.create_model("test-tiny")
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    enc = load_encoder(ModelSpec.parse("test-tiny", weights=str(ckpt)))
    tokens = open_clip.get_tokenizer("test-tiny")(["a photo"])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(["a photo"]), expected, rtol=1e-4, atol=1e-5)
    assert enc.name.startswith("test-tiny+file:")
    random_enc = load_encoder(ModelSpec.parse("test-tiny"))
    assert not np.allclose(random_enc.encode_texts(["a photo"]), expected, atol=1e-3)


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"not": torch.zeros(3)}, bad)
    with pytest.raises(ModelError, match="bad.pt"):
        load_encoder(ModelSpec.parse("test-tiny", weights=str(bad)))
    with pytest.raises(ModelError, match="not found"):
        load_encoder(ModelSpec.parse("test-tiny", weights=str(tmp_path / "missing.pt")))


def test_unknown_names_are_clear_errors():
    with pytest.raises(ModelError, match="Unknown model architecture"):
        load_encoder(ModelSpec.parse("NoSuchArch/x"))
    with pytest.raises(ModelError, match="Unknown pretrained tag"):
        load_encoder(ModelSpec.parse("ViT-B-32-256/no-such-tag"))


def test_offline_download_fails_with_a_typed_helpful_error(tmp_path):
    # A fresh process with an empty HF cache and the hub switched offline: no network is touched.
    code = (
        "from clipdesk.models import ModelSpec, load_encoder\n"
        "from clipdesk.errors import ModelDownloadError\n"
        f"try:\n    load_encoder(ModelSpec.parse({DEFAULT_MODEL!r}))\n"
        "except ModelDownloadError as e:\n    print('TYPED', e)\n"
    )
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "CLIPDESK_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "TYPED" in out.stdout, out.stderr
    assert DEFAULT_MODEL in out.stdout and "--weights" in out.stdout and "unreachable" in out.stdout


@pytest.mark.parametrize("arch", ["test-tiny", "ViT-B-32-256"])
def test_numpy_preprocessing_matches_open_clip(arch):
    import open_clip

    from clipdesk.models import Preprocessing, register_project_models

    register_project_models()
    model, _, transform = open_clip.create_model_and_transforms(arch)
    ours = Preprocessing.of(model)
    rng = np.random.default_rng(0)
    for w, h in [(300, 200), (200, 333), (64, 64), (17, 900), (1, 1)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        np.testing.assert_allclose(ours(img), transform(img).numpy(), atol=1e-5)


def test_model_process_gives_the_same_embeddings():
    from clipdesk.errors import ModelError
    from clipdesk.model_host import RemoteEncoder

    local = load_encoder(ModelSpec.parse("test-tiny"))
    remote = RemoteEncoder(ModelSpec.parse("test-tiny"))
    try:
        assert (remote.name, remote.dim, remote.min_side) == (local.name, local.dim, local.min_side)
        assert remote.logit_scale == pytest.approx(local.logit_scale)
        np.testing.assert_allclose(remote.encode_texts(["a dog", "snow"]), local.encode_texts(["a dog", "snow"]),
                                   atol=1e-6)
        imgs = [Image.new("RGB", (90, 60), (200, 10, 10)), Image.new("RGB", (50, 80), (10, 10, 200))]
        np.testing.assert_allclose(remote.encode_images(imgs), local.encode_images(imgs), atol=1e-6)
        assert remote.embed([]).shape == (0, 64)
    finally:
        remote.close()
    assert remote._proc.poll() == 0
    with pytest.raises(ModelError, match="Unknown pretrained tag"):
        RemoteEncoder(ModelSpec.parse("ViT-B-32-256/no-such-tag"))


def test_trimmed_text_encoding_equals_the_full_pass():
    import open_clip

    from clipdesk.models import encode_text_trimmed

    enc = load_encoder(ModelSpec.parse("test-tiny"))
    tokens = open_clip.get_tokenizer("test-tiny")(["dog", "a dog in the snow on a sunny winter day", ""])
    with torch.no_grad():
        full = enc.model.encode_text(tokens)
        trimmed = encode_text_trimmed(enc.model, tokens)
    np.testing.assert_allclose(trimmed.numpy(), full.numpy(), atol=1e-5)


def test_embed_takes_inputs_prepared_on_the_device_beside_arrays():
    """The GPU decode path hands the encoder tensors already on its device, mixed with arrays
    the CPU decoders prepared; both give the vectors the arrays alone give."""
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    imgs = [Image.new("RGB", (80, 60), (10 * i, 200 - 20 * i, 30)) for i in range(4)]
    arrays = [enc.prepare(im) for im in imgs]
    mixed = [torch.from_numpy(a) if i % 2 else a for i, a in enumerate(arrays)]
    np.testing.assert_allclose(enc.embed(mixed), enc.embed(arrays), atol=1e-6)
    np.testing.assert_allclose(enc.embed([torch.from_numpy(a) for a in arrays]), enc.embed(arrays), atol=1e-6)


def test_int8_is_chosen_only_when_faster_and_in_agreement():
    """measure_precision's rule, with the int8 tower replaced by instant answers: right ones win,
    wrong ones (agreement < 0.99) never do, whatever their speed."""
    from clipdesk.models import measure_precision

    enc = load_encoder(ModelSpec.parse("test-tiny"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # measure_precision's input
    with torch.inference_mode():
        right = enc.model.encode_image(x).numpy()
    wrong = np.random.default_rng(0).standard_normal(right.shape).astype(np.float32)
    won = measure_precision(enc.model, batch=2, repeats=1, int8=lambda _x: right)
    assert won["precision"] == "int8" and won["int8_agreement"] > 0.999 and won["int8_img_s"] > won["fp32_img_s"]
    lost = measure_precision(enc.model, batch=2, repeats=1, int8=lambda _x: wrong)
    assert lost["precision"] in ("fp32", "bf16") and lost["int8_agreement"] < 0.5

    def broken(_x):
        raise RuntimeError("ONNX Runtime: no kernel (mock)")

    assert measure_precision(enc.model, batch=2, repeats=1, int8=broken)["precision"] in ("fp32", "bf16")


def test_int8_without_onnxruntime_is_fp32_and_with_it_agrees_with_fp32():
    from clipdesk.models import Int8Visual

    img = [Image.new("RGB", (80, 60), (10 * i, 200 - 20 * i, 30 + 9 * i)) for i in range(6)]
    ref = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32").encode_images(img)
    enc = load_encoder(ModelSpec.parse("test-tiny"), precision="int8")
    if not Int8Visual.available():
        assert enc.precision == "fp32" and enc.int8 is None  # the next best, no error
        np.testing.assert_allclose(enc.encode_images(img), ref, atol=1e-6)
        return
    assert enc.precision == "int8" and enc.int8 is not None and enc.int8.path.is_file()
    got = enc.encode_images(img)
    assert got.shape == ref.shape and (got * ref).sum(1).mean() >= 0.99
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(["a dog"]), load_encoder(
        ModelSpec.parse("test-tiny"), precision="fp32").encode_texts(["a dog"]), atol=1e-6)  # texts: fp32


def test_int8_is_neither_measured_nor_cached_on_a_loaded_machine(monkeypatch, tmp_path):
    """Under load int8 looks far better than it is; there the verdict is bf16/fp32 for now and
    nothing is cached, so a quiet load measures again."""
    import clipdesk.models as models

    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(tmp_path))
    built = []
    monkeypatch.setattr(models.Int8Visual, "available", staticmethod(lambda: True))
    monkeypatch.setattr(models.Int8Visual, "build", classmethod(lambda cls, *a: built.append(a)))
    monkeypatch.setattr(models, "_machine_key", lambda spec: "key")
    monkeypatch.setattr(models, "_busy_cpu_seconds", lambda: None)  # other test processes: not load here
    model = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32").model
    spec = ModelSpec("ViT-B-32", "random")  # a real architecture's rule, on the tiny model's weights
    monkeypatch.setattr(models, "_machine_loaded", lambda: True)
    assert models.choose_precision(spec, model, "cpu") in ("fp32", "bf16")
    assert built == [] and not (tmp_path / "precision.json").exists()
    monkeypatch.setattr(models, "_machine_loaded", lambda: False)
    models.choose_precision(spec, model, "cpu")
    assert len(built) == 1 and "key" in json.loads((tmp_path / "precision.json").read_text())


# ---------------------------------------------------------------- int8: OpenVINO static (issue 12.6)
def _openvino_or_skip():
    from clipdesk.models import Int8Visual

    if Int8Visual.backend_available() != "openvino":
        pytest.skip("OpenVINO + NNCF are not installed (pip install 'clipdesk[int8]'): "
                    "the static int8 image model is NOT tested here")


@pytest.fixture(scope="module")
def tiny_openvino_int8(tmp_path_factory):
    """test-tiny's static int8 image tower, built once for this module's tests."""
    _openvino_or_skip()
    from clipdesk.models import Int8Visual

    cache = tmp_path_factory.getbasetemp() / "cache"  # conftest's: the int8 test above built it there
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPDESK_CACHE_DIR", str(cache))
    model = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32").model
    built = Int8Visual.build(ModelSpec.parse("test-tiny"), model)
    mp.undo()
    assert built is not None and built.backend == "openvino"
    return cache, model, built


def test_openvino_int8_agrees_with_fp32_on_photo_like_inputs(tiny_openvino_int8):
    _cache, model, int8 = tiny_openvino_int8
    rng = np.random.default_rng(3)
    imgs = [Image.fromarray((np.linspace(0, 1, 80)[None, :, None] * rng.uniform(60, 255, 3)
                             + rng.integers(0, 40, (60, 80, 3))).astype(np.uint8)) for _ in range(5)]
    ref = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32")
    x = np.stack([ref.prepare(im) for im in imgs])
    with torch.inference_mode():
        want = torch.nn.functional.normalize(model.encode_image(torch.from_numpy(x)), dim=-1).numpy()
    got = int8(x)
    assert got.shape == want.shape and got.dtype == np.float32
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    cos = (got * want).sum(1)
    assert cos.mean() >= 0.99 and not np.allclose(got, want, atol=1e-7)  # quantised, not a copy of fp32


def test_openvino_int8_is_built_once_and_loaded_from_the_cache(tiny_openvino_int8, monkeypatch):
    from clipdesk import models

    cache, _model, first = tiny_openvino_int8
    assert first.path.suffix == ".xml" and first.path.is_file() and first.path.with_suffix(".bin").is_file()
    assert first.path.parent == cache / "int8" and not list(cache.glob("int8/*.tmp*"))
    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(cache))

    def no_rebuild(*_a):
        raise AssertionError("rebuilt although the cached model was there")

    monkeypatch.setattr(models, "_build_openvino_int8", no_rebuild)
    enc = load_encoder(ModelSpec.parse("test-tiny"), precision="int8")
    assert enc.precision == "int8" and enc.int8.backend == "openvino" and enc.int8.path == first.path
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(enc.int8(x), first(x), rtol=1e-5, atol=1e-6)


def test_openvino_int8_one_call_at_a_time_from_many_threads(tiny_openvino_int8):
    from concurrent.futures import ThreadPoolExecutor

    _cache, _model, int8 = tiny_openvino_int8
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((n, 3, 64, 64)).astype(np.float32) for n in (1, 2, 3, 4, 5, 6, 7, 8)]
    alone = [int8(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(int8, batches * 2))
    for want, got in zip(alone * 2, together):
        np.testing.assert_array_equal(got, want)


def test_a_damaged_cached_int8_model_is_dropped_and_fp32_used(tmp_path, monkeypatch):
    """A half-written or corrupt cached model: one warning, fp32 for this load, the file deleted
    so that the next load builds it again."""
    _openvino_or_skip()
    from clipdesk import models

    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "_build_openvino_int8", lambda model, pre, path: (
        path.write_text("<net>not a model"), path.with_suffix(".bin").write_bytes(b"\0" * 10)))
    enc = load_encoder(ModelSpec.parse("test-tiny"), precision="int8")
    assert enc.precision == "fp32" and enc.int8 is None
    assert not list((tmp_path / "int8").iterdir())
    img = Image.new("RGB", (80, 60), (10, 200, 30))
    np.testing.assert_allclose(enc.encode_images([img]), load_encoder(ModelSpec.parse("test-tiny")).encode_images([img]),
                               atol=1e-6)


def test_a_failed_int8_build_leaves_nothing_and_falls_back(tmp_path, monkeypatch):
    """Mechanics without OpenVINO: a build that fails halfway leaves no file behind, the caller
    gets None (load_encoder: fp32), and discard() removes both files of a built model."""
    from clipdesk import models

    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models.Int8Visual, "backend_available", staticmethod(lambda: "openvino"))
    monkeypatch.setattr(models.Int8Visual, "backend_version", staticmethod(lambda b: "openvino 0 (mock)"))

    def half_then_fail(model, pre, path):
        path.with_suffix(".bin").write_bytes(b"partial")
        raise RuntimeError("NNCF: out of memory (mock)")

    monkeypatch.setattr(models, "_build_openvino_int8", half_then_fail)
    enc = load_encoder(ModelSpec.parse("test-tiny"), precision="int8")
    assert enc.precision == "fp32" and enc.int8 is None and not list((tmp_path / "int8").iterdir())

    def whole(model, pre, path):
        path.write_text("xml")
        path.with_suffix(".bin").write_bytes(b"weights")

    monkeypatch.setattr(models, "_build_openvino_int8", whole)
    monkeypatch.setattr(models, "_openvino_runner", lambda path, threads: lambda x: x.reshape(len(x), -1)[:, :4])
    built = models.Int8Visual.build(ModelSpec.parse("test-tiny"), enc.model)
    assert built.backend == "openvino" and built(np.ones((2, 3, 4, 4))).shape == (2, 4)
    built.discard()
    assert not list((tmp_path / "int8").iterdir())
    with pytest.raises(ModelError, match="discarded"):
        built(np.ones((1, 3, 4, 4)))


def test_int8_backend_order_and_machine_key(monkeypatch):
    """OpenVINO (static int8) is preferred to ONNX Runtime (dynamic); installing or upgrading either
    changes the machine key, so precision "auto" measures again."""
    import importlib.util

    from clipdesk import models

    installed: set[str] = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name in installed else None)
    assert models.Int8Visual.backend_available() is None and not models.Int8Visual.available()
    spec = ModelSpec("ViT-B-32", "random")
    bare = models._machine_key(spec)
    installed |= {"onnxruntime", "onnx"}
    assert models.Int8Visual.backend_available() == "onnxruntime"
    installed |= {"openvino"}
    assert models.Int8Visual.backend_available() == "onnxruntime"  # OpenVINO alone cannot quantise
    installed |= {"nncf"}
    assert models.Int8Visual.backend_available() == "openvino"
    monkeypatch.setattr(models.Int8Visual, "backend_version", staticmethod(lambda b: f"{b} 1.0"))
    with_ov = models._machine_key(spec)
    assert with_ov != bare and with_ov.endswith("|int8 openvino 1.0")


def test_calibration_images_are_photo_like_and_repeatable():
    from clipdesk.models import Preprocessing, calibration_images

    pre = Preprocessing(32, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    a, b = calibration_images(6, pre), calibration_images(6, pre)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (6, 3, 32, 32) and a.dtype == np.float32
    pixels = a * np.asarray(pre.std, np.float32)[:, None, None] + np.asarray(pre.mean, np.float32)[:, None, None]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # photos' range after normalising
    assert len({round(float(p.mean()), 3) for p in pixels}) == 6  # different brightness per image
    # natural images' spectrum: far more energy in low spatial frequencies than in high ones
    power = np.abs(np.fft.fft2(pixels - pixels.mean(axis=(2, 3), keepdims=True))) ** 2
    assert power[..., 1:3, 1:3].mean() > 20 * power[..., 14:18, 14:18].mean()


def test_a_precision_timed_while_others_kept_the_cores_busy_is_not_cached(monkeypatch, tmp_path):
    """The load average lags: it can read quiet while another program starts. Other processes'
    CPU time during the timing decides too: busy, the verdict serves this session only, and the
    int8 model built for it is kept for the next (quiet) measurement."""
    from clipdesk import models

    monkeypatch.setenv("CLIPDESK_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "_machine_key", lambda spec: "key")
    monkeypatch.setattr(models, "_machine_loaded", lambda: False)
    discarded = []

    class Built:
        def discard(self):
            discarded.append(True)

    monkeypatch.setattr(models.Int8Visual, "build", classmethod(lambda cls, *a: Built()))
    monkeypatch.setattr(models, "measure_precision", lambda model, int8=None: {"precision": "bf16", "int8_img_s": 1.0})
    clock = iter([100.0, 100.0 + 2 * models._cores()])  # others: busy on every core during the timing
    monkeypatch.setattr(models, "_busy_cpu_seconds", lambda: next(clock))
    spec = ModelSpec("ViT-B-32", "random")
    assert models.choose_precision(spec, None, "cpu") == "bf16"
    assert not (tmp_path / "precision.json").exists() and discarded == []
    clock = iter([100.0, 100.0])  # quiet: cached, and the unused int8 model's file removed
    monkeypatch.setattr(models, "_busy_cpu_seconds", lambda: next(clock))
    assert models.choose_precision(spec, None, "cpu") == "bf16"
    assert json.loads((tmp_path / "precision.json").read_text())["key"]["precision"] == "bf16"
    assert discarded == [True]
