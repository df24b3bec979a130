"""The model runtime: model folders run by ONNX Runtime/OpenVINO, compared with open_clip/torch;
the folder reader's checks; the measured choice of backend; the torch extra's paths."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clipdesk.errors import ModelDownloadError, ModelError
from clipdesk.runtime import DEFAULT_MODEL, ModelSpec, load_encoder
from clipdesk.runtime import torch_backend
from clipdesk.runtime.folder import ModelFolder
from clipdesk.runtime.spec import PACKAGED

TINY = PACKAGED / "test-tiny"
TEXTS = ["a dog", "a photo of a cat in the snow", "", "Ünïcödé café 日本語 Привет 🐶", "&amp;amp; <b>html</b>",
         "don't you'll we've", "word " * 100, "x" * 500, "a\tb\nc  d", "3.14 numbers 42"]


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(300, 200), (64, 64), (17, 900), (1, 1), (640, 480), (90, 60)]
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in sizes[:n]]


def _cos(a, b):
    return (a * b).sum(1)


def test_demo_model_ships_as_onnx_and_loads_without_torch_code():
    sizes = {p.name: p.stat().st_size for p in (TINY / "visual" / "model.onnx", TINY / "textual" / "model.onnx")}
    assert sum(sizes.values()) <= 2 * 1024 * 1024, sizes
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    assert type(enc).__name__ == "FolderEncoder" and enc.name == "test-tiny" and enc.dim == 64
    t = enc.encode_texts(["a dog", "a cat"])
    assert t.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-5)
    again = load_encoder(ModelSpec.parse("test-tiny"))
    img = Image.new("RGB", (80, 60), (10, 200, 30))
    np.testing.assert_array_equal(enc.encode_images([img]), again.encode_images([img]))
    assert enc.embed([]).shape == (0, 64) and enc.encode_texts([]).shape == (0, 64)


def test_text_cache_returns_identical_vectors():
    enc = load_encoder(ModelSpec.parse("test-tiny"))
    first = enc.encode_texts(["snow"])
    assert "snow" in enc._text_cache
    np.testing.assert_array_equal(enc.encode_texts(["x", "snow"])[1], first[0])


def test_tokenizer_gives_open_clips_ids():
    import open_clip

    from clipdesk.runtime.tokenizer import TextTokenizer

    ours = TextTokenizer(TINY / "textual" / "tokenizer.json", TINY / "textual" / "tokenizer_config.json", 77)
    ref = open_clip.get_tokenizer("ViT-B-32")
    rng = np.random.default_rng(1)
    alphabet = list("abcdefghij KLMNO,.!?'&;#0123456789") + ["é", "ß", "日", "🐶", "\u200b", "ﬁ", "\t"]
    texts = TEXTS + ["".join(rng.choice(alphabet, rng.integers(0, 120))) for _ in range(300)]
    for text in texts:
        a, b = ref([text]).numpy()[0], ours([text])[0]
        assert np.array_equal(a[:len(b)], b) and not a[len(b):].any(), text


def test_exported_folder_agrees_with_open_clip_in_torch(tmp_path):
    """The demo model, exported again from open_clip's seeded random init, through ONNX Runtime:
    the same vectors as torch in fp32 for texts (trimmed graph, any length) and images."""
    from clipdesk.runtime import export_to_folder

    folder = export_to_folder(ModelSpec("test-tiny", "random"), tmp_path / "tiny")
    ours = load_encoder(ModelSpec.parse(None, model_dir=str(folder)), precision="fp32")
    ref = torch_backend.load_encoder(ModelSpec("test-tiny", "random"), "cpu", "fp32")
    assert ours.name == "test-tiny" and ours.logit_scale == pytest.approx(ref.logit_scale)
    assert _cos(ours.encode_texts(TEXTS), ref.encode_texts(TEXTS)).min() > 0.99999
    imgs = _images()
    assert _cos(ours.encode_images(imgs), ref.encode_images(imgs)).min() > 0.99999
    # the packaged demo model is that same export
    shipped = load_encoder(ModelSpec.parse("test-tiny"))
    np.testing.assert_allclose(shipped.encode_texts(TEXTS), ours.encode_texts(TEXTS), atol=1e-6)
    with pytest.raises(ModelError, match="already exists"):
        export_to_folder(ModelSpec("test-tiny", "random"), folder)


def test_openvino_agrees_with_onnx_runtime():
    fp32 = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32")
    ov = load_encoder(ModelSpec.parse("test-tiny"), precision="bf16")
    imgs = _images()
    assert _cos(fp32.encode_images(imgs), ov.encode_images(imgs)).min() > 0.99
    assert fp32.backend == "onnxruntime" and ov.backend == "openvino"  # chosen at the first image


def test_an_immich_style_folder_with_a_fixed_length_int32_text_graph(tmp_path):
    """Immich's exports take (n, 77) int32 ids and have no clipdesk.json: the folder's name
    (ARCH__TAG) names the model, and texts are padded to the graph's length."""
    import open_clip

    ref = torch_backend.load_encoder(ModelSpec("test-tiny", "random"), "cpu", "fp32")
    folder = tmp_path / "test-tiny__immich"
    shutil.copytree(TINY, folder)
    (folder / "clipdesk.json").unlink()

    class Fixed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m.encode_text(ids.long())

    with torch.inference_mode(False), torch.enable_grad():
        torch.onnx.export(Fixed(ref.model), (torch.ones(1, 77, dtype=torch.int32),),
                          str(folder / "textual" / "model.onnx"), input_names=["text"], output_names=["embedding"],
                          opset_version=17, dynamic_axes={"text": {0: "n"}}, dynamo=False)
    enc = load_encoder(ModelSpec.parse(None, model_dir=str(folder)))
    assert enc.name == "test-tiny/immich" and enc.logit_scale == 100.0
    tokens = open_clip.get_tokenizer("test-tiny")(TEXTS[:4])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(ref.model.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(enc.encode_texts(TEXTS[:4]), expected, atol=1e-5)


def _broken_folder(tmp_path, name="bad"):
    folder = tmp_path / name
    shutil.copytree(TINY, folder)
    return folder


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "textual" / "model.onnx").unlink(), "incomplete: textual/model.onnx missing"),
    (lambda f: (f / "config.json").write_text('{"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}'),
     "do not belong together"),
    (lambda f: (f / "config.json").write_text('{"embed_dim": 64, "vision_cfg": {}, "text_cfg": {"vocab_size": 1000}}'),
     "tokenizer does not match"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json does not hold a JSON object"),
    (lambda f: (f / "config.json").write_text('{"embed_dim": ' + "[" * 100000 + "]" * 100000 + "}"),
     "config.json"),
    (lambda f: (f / "config.json").write_bytes(b" " * (2 << 20)), "more than a model's JSON file"),
    (lambda f: (f / "visual" / "preprocess_cfg.json").write_text('{"size": 64, "mean": [0.5], "std": [0.5]}'),
     "preprocess_cfg.json"),
    (lambda f: (f / "visual" / "model.onnx").write_bytes((f / "visual" / "model.onnx").read_bytes()[:5000]),
     "visual/model.onnx cannot be loaded"),
    (lambda f: (f / "textual" / "model.onnx").write_bytes(b"<html>not a model</html>" * 10),
     "textual/model.onnx is not an ONNX model"),
    (lambda f: (f / "textual" / "model.onnx").write_bytes(b""), "textual/model.onnx is 0 bytes"),
    (lambda f: (f / "textual" / "tokenizer.json").write_text('{"model": 1}'), "tokenizer.json is not a tokenizers file"),
])
def test_a_broken_model_folder_is_one_clear_error_naming_the_file(tmp_path, damage, message):
    folder = _broken_folder(tmp_path)
    damage(folder)
    with pytest.raises(ModelError, match=message.replace("(", r"\(")) as e:
        enc = load_encoder(ModelSpec.parse(None, model_dir=str(folder)))
        enc.encode_images(_images(2))  # the image graph is loaded on first use
    assert str(folder) in str(e.value) or message in str(e.value)


def test_a_huge_onnx_file_is_refused_before_reading(tmp_path, monkeypatch):
    from clipdesk.runtime import folder as folder_mod

    folder = _broken_folder(tmp_path)
    monkeypatch.setattr(folder_mod, "MAX_ONNX_BYTES", 100_000)  # a sparse 8 GB file would do the same
    with pytest.raises(ModelError, match="larger than any CLIP tower"):
        ModelFolder.open(folder)
    assert not (tmp_path / "lib").exists()


def test_a_broken_model_leaves_the_library_untouched(tmp_path, photos):
    from clipdesk.library import Library

    lib_dir = tmp_path / "lib"
    with Library(str(lib_dir), model="test-tiny") as lib:
        lib.index([str(photos)])
        before = lib.search("a dog", k=5)
    folder = _broken_folder(tmp_path)
    (folder / "visual" / "model.onnx").write_bytes(b"\x08" + b"\0" * 200)
    from conftest import make_photo

    make_photo(photos / "new.jpg", color=(1, 2, 250), pattern=5)  # something to embed
    with Library(str(lib_dir)) as lib, pytest.raises(ModelError, match="visual/model.onnx cannot be loaded"):
        lib.use_model(None, model_dir=str(folder))
        lib.index([str(photos)])
    with Library(str(lib_dir)) as lib:
        assert lib.model_name == "test-tiny" and [r.path for r in lib.search("a dog", k=5)] == [r.path for r in before]


def test_offline_without_torch_names_the_ways_out(tmp_path, monkeypatch):
    from clipdesk import runtime

    monkeypatch.setattr(runtime, "torch_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelDownloadError) as e:
        load_encoder(ModelSpec.parse(DEFAULT_MODEL))
    assert DEFAULT_MODEL in str(e.value) and "--model-dir" in str(e.value) and "test-tiny" in str(e.value)
    assert not any(Path(runtime.models_dir()).glob("*")) if runtime.models_dir().exists() else True
    with pytest.raises(ModelError, match=r"clipdesk\[torch\]"):
        load_encoder(ModelSpec.parse("test-tiny", weights=str(tmp_path / "x.pt")))


def test_offline_with_torch_fails_within_seconds_with_a_typed_error(tmp_path):
    code = ("from clipdesk.runtime import ModelSpec, load_encoder\n"
            "from clipdesk.errors import ModelDownloadError\n"
            f"try:\n    load_encoder(ModelSpec.parse({DEFAULT_MODEL!r}))\n"
            "except ModelDownloadError as e:\n    print('TYPED', e)\n")
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin",
           "CLIPDESK_CACHE_DIR": str(tmp_path / "cache"), "CLIPDESK_MODELS": str(tmp_path / "models")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "TYPED" in out.stdout, out.stderr
    assert DEFAULT_MODEL in out.stdout and "--weights" in out.stdout
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_weights_file_runs_in_torch(tmp_path):
    import open_clip

    torch_backend.register_project_models()
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
    assert not np.allclose(load_encoder(ModelSpec.parse("test-tiny")).encode_texts(["a photo"]), expected, atol=1e-3)
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
    with pytest.raises(ModelError, match="needs a pretrained tag"):
        ModelSpec.parse("ViT-B-16")
    with pytest.raises(ModelError, match="Unknown precision"):
        load_encoder(ModelSpec.parse("test-tiny"), precision="fp8").encode_images(_images(1))


@pytest.mark.parametrize("arch", ["test-tiny", "ViT-B-32-256"])
def test_numpy_preprocessing_matches_open_clip(arch):
    import open_clip

    from clipdesk.runtime import Preprocessing

    torch_backend.register_project_models()
    model, _, transform = open_clip.create_model_and_transforms(arch)
    ours = Preprocessing.of(model)
    assert Preprocessing.from_cfg(ours.to_cfg()) == ours
    rng = np.random.default_rng(0)
    for w, h in [(300, 200), (200, 333), (64, 64), (17, 900), (1, 1)]:
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        np.testing.assert_allclose(ours(img), transform(img).numpy(), atol=1e-5)


def test_model_process_gives_the_same_embeddings():
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


def test_onnx_runtime_dynamic_int8_agrees_with_fp32_and_is_built_once(monkeypatch):
    from clipdesk.runtime import choose

    monkeypatch.setattr(choose.openvino, "nncf_available", lambda: False)  # the default install's int8
    fp32 = load_encoder(ModelSpec.parse("test-tiny"), precision="fp32")
    int8 = load_encoder(ModelSpec.parse("test-tiny"), precision="int8")
    imgs = _images()
    assert _cos(fp32.encode_images(imgs), int8.encode_images(imgs)).mean() > 0.99
    assert int8.backend == "onnxruntime" and int8.precision == "int8"
    built = list((choose.cache_dir() / "int8").glob("test-tiny-*.onnx"))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    load_encoder(ModelSpec.parse("test-tiny"), precision="int8").encode_images(imgs[:1])
    assert built[0].stat().st_mtime_ns == mtime and not list((choose.cache_dir() / "int8").glob("*.tmp*"))


def test_backend_choice_rule():
    from clipdesk.runtime.choose import pick

    fast_ov = {"fp32": {"img_s": 20, "agreement": 1.0}, "openvino": {"img_s": 60, "agreement": 0.999}}
    assert pick(fast_ov) == "openvino"
    assert pick(dict(fast_ov, openvino={"img_s": 60, "agreement": 0.9})) == "fp32"  # wrong answers never win
    assert pick(dict(fast_ov, openvino={"img_s": 21, "agreement": 1.0})) == "fp32"  # within noise
    assert pick(dict(fast_ov, int8={"img_s": 90, "agreement": 0.995})) == "int8"
    assert pick(dict(fast_ov, int8={"img_s": 70, "agreement": 0.995})) == "openvino"  # < 1.3x the better


def _auto_encoder(folder):
    enc = load_encoder(ModelSpec.parse(None, model_dir=str(folder)), precision="auto")
    enc.encode_images(_images(1))
    return enc


def test_auto_is_measured_once_per_machine_and_not_cached_under_load(tmp_path, monkeypatch):
    from clipdesk.runtime import choose

    folder = shutil.copytree(TINY, tmp_path / "tiny-copy")
    (folder / "clipdesk.json").write_text(json.dumps({"name": "tiny-copy/x"}))  # not the demo model: measured
    timed = []
    real = choose.measure
    monkeypatch.setattr(choose, "measure", lambda c, x, **k: timed.append(1) or real(c, x, **k))
    monkeypatch.setattr(choose, "int8_backend", lambda: None)  # int8 has its own test
    monkeypatch.setattr(choose, "machine_loaded", lambda: True)
    _auto_encoder(folder)
    _auto_encoder(folder)
    assert len(timed) == 2 and not (choose.cache_dir() / "precision.json").exists()
    monkeypatch.setattr(choose, "machine_loaded", lambda: False)

    @__import__("contextlib").contextmanager
    def quiet(out):
        out["cores"] = 0.0
        yield out

    monkeypatch.setattr(choose, "others_cpu", quiet)
    enc = _auto_encoder(folder)
    again = _auto_encoder(folder)
    assert len(timed) == 3 and again.precision == enc.precision
    cached = json.loads((choose.cache_dir() / "precision.json").read_text())
    (entry,) = [v for k, v in cached.items() if k.startswith("tiny-copy/x|")]
    assert entry["precision"] in ("fp32", "openvino") and entry["fp32_img_s"] > 0


def test_cli_models_export_and_model_dir(tmp_path, photos):
    env_models = tmp_path / "models"
    run = lambda *a: subprocess.run([sys.executable, "-m", "clipdesk.cli", *a], capture_output=True, text=True,
                                    timeout=240, env={**__import__("os").environ, "CLIPDESK_MODELS": str(env_models)})
    out = run("model", "export", "test-tiny/random", "--out", str(tmp_path / "exported"), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["folder"] == str(tmp_path / "exported")
    listed = json.loads(run("models", "--json").stdout)
    assert [m["name"] for m in listed["installed"]] == ["test-tiny"] and "ViT-B-32/openai" in listed["fetchable"]
    lib = str(tmp_path / "lib")
    out = run("--library", lib, "--model-dir", str(tmp_path / "exported"), "index", str(photos), "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["added"] > 0, out.stderr
    status = json.loads(run("--library", lib, "status", "--json").stdout)
    assert status["model"] == "test-tiny"
    found = run("--library", lib, "search", "a red photo", "-k", "3", "--json")  # the folder is remembered
    assert found.returncode == 0 and len(json.loads(found.stdout)) == 3, found.stderr
    bad = run("--library", lib, "--model-dir", str(tmp_path / "nope"), "search", "x")
    assert bad.returncode == 1 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr
