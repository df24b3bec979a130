"""Reliability round 2, the input half: probe files as untrusted input (zip bombs, bad content,
FIFOs), clear errors instead of internal errors or silent success in the CLI, signals, strict
JSON, and offline model loads that fail within seconds.

Real files and real processes: the CLI runs in subprocesses wherever exit codes, messages or
signals matter. Property tests (hypothesis) feed the probe loader and the query parser random and
mutated input: each gives a result or one ClipdeskError, never another exception, a hang or
unbounded memory.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from clipdesk.teach import probe as probe_module
from clipdesk.errors import ProbeError, QueryError
from clipdesk.teach.probe import Probe, ProbeData, fit_probe
from clipdesk.query import combine, parse_query, query_vector
from clipdesk.zeroshot import normalise
from conftest import SUBPROCESS_TIMEOUT, catalog_rows, make_photo

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clipdesk.cli"]
DIM = 64  # test-tiny's embedding size


def cli(library, *args, env=None, timeout=120, input=None):
    e = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    lib = ["--library", str(library)] if library is not None else []
    return subprocess.run([*CLI, *lib, *args], capture_output=True, env=e, timeout=timeout, input=input)


def out(p) -> str:
    return p.stdout.decode("utf-8", "surrogateescape")


def err(p) -> str:
    return p.stderr.decode("utf-8", "replace")


def strict_json(p):
    """Exactly one strict JSON document (NaN/Infinity refused) on stdout."""
    def refuse(c):
        raise ValueError(f"non-standard JSON constant {c}")

    return json.loads(p.stdout.decode("utf-8"), parse_constant=refuse)


def one_error_line(p, code=1) -> str:
    """The failure contract: exit code, one line on stderr, no traceback, nothing on stdout."""
    text = err(p)
    assert p.returncode == code, (p.returncode, text)
    assert "Traceback" not in text and "internal error" not in text, text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert p.stdout == b""
    return lines[0]


# ====================================================================== probe files (2, 3)
def valid_probe(dim=DIM, model="test-tiny") -> Probe:
    rng = np.random.default_rng(0)
    X = normalise(rng.normal(size=(6, dim))).astype(np.float32)
    text = normalise(rng.normal(size=(2, dim))).astype(np.float32)
    probe, fit = fit_probe(ProbeData(["a", "b"], text, X, np.array([0, 0, 0, 1, 1, 1])),
                           meta={"labels": ["a", "b"], "negatives": [], "model": model, "created": 1.0})
    probe.meta.update(cv_accuracy=fit.cv_accuracy, zeroshot_accuracy=fit.zeroshot_accuracy, examples=6)
    return probe


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def with_meta(**changes) -> dict:
    arrays = valid_probe().to_arrays()
    meta = json.loads(str(arrays["meta"]))
    meta.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def npy_header(shape, descr="<f4") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def zip_bomb(path: Path, rows: int) -> None:
    """A valid probe whose 'keys' member is a deflated run of zeros declaring ``rows`` × 1024 float32
    (rows=80_000: 328 MB that compress to about 0.3 MB)."""
    arrays = valid_probe().to_arrays()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, a in arrays.items():
            if name == "keys":
                continue
            b = io.BytesIO()
            np.save(b, a)
            z.writestr(f"{name}.npy", b.getvalue())
        with z.open("keys.npy", "w", force_zip64=True) as f:
            f.write(npy_header((rows, 1024)))
            zeros = bytes(16 << 20)
            left = rows * 1024 * 4
            while left:
                f.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))


def bad_probes(tmp: Path) -> dict[str, bytes | None]:
    """name → file content of a broken probe (None: made specially in place)."""
    good = valid_probe().to_arrays()
    cases: dict[str, bytes | None] = {
        "wrong dimensions": npz_bytes(dict(good, keys=normalise(np.ones((6, DIM // 2), np.float32)))),
        "label out of range": npz_bytes(dict(good, key_labels=np.array([0, 0, 0, 1, 1, 2]))),
        "negative label": npz_bytes(dict(good, key_labels=np.array([0, 0, 0, 1, 1, -1]))),
        "float labels": npz_bytes(dict(good, key_labels=np.array([0, 0, 0, 1, 1, 1.5]))),
        "class names not strings": npz_bytes(with_meta(classes=[1, 2])),
        "meta a list": npz_bytes(dict(good, meta=np.array(json.dumps([1, 2])))),
        "meta not json": npz_bytes(dict(good, meta=np.array("{not json"))),
        "temperature NaN": npz_bytes(with_meta(temperature=float("nan"))),
        "temperature infinite": npz_bytes(with_meta(temperature=float("inf"))),
        "negative sharpness": npz_bytes(with_meta(beta=-50.0)),
        "bias infinite": npz_bytes(dict(good, bias=np.array([np.inf, 0], np.float32))),
        "keys NaN": npz_bytes(dict(good, keys=np.full((6, DIM), np.nan, np.float32))),
        "keys not unit": npz_bytes(dict(good, keys=np.full((6, DIM), 1e30, np.float32))),
        "labels not a list": npz_bytes(with_meta(labels="a")),
        "examples not a number": npz_bytes(with_meta(examples="many")),
        "newer format": npz_bytes(with_meta(format=99)),
        "missing member": npz_bytes({k: v for k, v in good.items() if k != "bias"}),
        "pickled meta": npz_bytes(dict(good, meta=np.array([{"x": 1}], dtype=object))),
        "truncated": npz_bytes(good)[:300],
        "random bytes": os.urandom(2000),
        "empty file": b"",
        "fifo": None,
        "folder": None,
        "symlink": None,
        "zip bomb": None,
    }
    return cases


def place_bad_probe(probes: Path, name: str, content: bytes | None) -> Path:
    path = probes / f"{name}.npz"
    if content is not None:
        path.write_bytes(content)
    elif name == "fifo":
        os.mkfifo(path)
    elif name == "folder":
        path.mkdir()
    elif name == "symlink":
        target = probes.parent / "elsewhere.npz"
        target.write_bytes(npz_bytes(valid_probe().to_arrays()))
        os.symlink(target, path)
    elif name == "zip bomb":
        zip_bomb(path, 80_000)
    return path


@pytest.fixture
def probe_library(tmp_path, photos):
    """A test-tiny library of 8 photos with one good probe 'good' (trained for real)."""
    from clipdesk.library import Library

    lib = Library(str(tmp_path / "lib"), model="test-tiny")
    lib.index([str(photos)])
    lib.add_to_label("red", [str(photos / "trip 2019" / "img_0.jpg")])
    lib.add_to_label("green", [str(photos / "trip 2019" / "img_1.jpg")])
    lib.train("good")
    yield lib
    lib.close()


def test_every_bad_probe_file_is_one_clear_error_and_spares_the_others(probe_library, tmp_path):
    lib = probe_library
    probes = Path(lib.folder) / "probes"
    cases = bad_probes(tmp_path)
    for name, content in cases.items():
        place_bad_probe(probes, name, content)
    for name in cases:
        t = time.monotonic()
        with pytest.raises(ProbeError) as e:
            lib.predict(name)
        assert time.monotonic() - t < 5, name  # a FIFO never blocks
        msg = str(e.value)
        assert f"{name}.npz" in msg and "\n" not in msg, (name, msg)
    listed = {p.name: p for p in lib.probes()}
    assert set(listed) == set(cases) | {"good"}
    assert listed["good"].damaged is None and listed["good"].classes == ["green", "red"]
    for name in cases:
        assert listed[name].damaged and f"{name}.npz" in listed[name].damaged, name
    st_ = lib.status()
    assert st_["probes"] == ["good"]
    assert {d["name"] for d in st_["damaged_probes"]} == set(cases)
    assert len(lib.predict("good")) == 8  # the good probe still works


def test_bad_probe_cli_messages_and_json(probe_library, tmp_path):
    lib_dir = probe_library.folder
    probes = Path(lib_dir) / "probes"
    place_bad_probe(probes, "nan", npz_bytes(with_meta(temperature=float("nan"))))
    place_bad_probe(probes, "fifo", None)
    probe_library.close()
    for name in ("nan", "fifo"):
        p = cli(lib_dir, "predict", name, "--json", timeout=60)
        line = one_error_line(p)
        assert f"{name}.npz" in line and "damaged" in line
    listing = cli(lib_dir, "probe", "list", "--json", timeout=60)
    assert listing.returncode == 0, err(listing)
    rows = {r["name"]: r for r in strict_json(listing)}
    assert rows["good"]["damaged"] is None and rows["good"]["classes"] == ["green", "red"]
    assert "fifo.npz" in rows["fifo"]["damaged"] and "nan.npz" in rows["nan"]["damaged"]
    status = cli(lib_dir, "status", "--json", timeout=60)
    assert status.returncode == 0 and strict_json(status)["probes"] == ["good"]
    text = cli(lib_dir, "status", timeout=60)
    assert text.returncode == 0 and "damaged" in out(text) and "fifo.npz" in out(text)
    good = cli(lib_dir, "predict", "good", "--json", timeout=60)
    assert good.returncode == 0 and len(strict_json(good)) == 8


MEMORY_DRIVER = r"""
import resource, sys, time
import numpy as np
from clipdesk.errors import ProbeError
from clipdesk.teach.probe import load_probe_file
def peak_mb():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024
before = peak_mb()
t = time.monotonic()
try:
    probe = load_probe_file(sys.argv[1])
    probe.probabilities(np.ones((3000, probe.text.shape[1]), np.float32) / np.sqrt(probe.text.shape[1]))
    result = "loaded"
except ProbeError as e:
    result = "ProbeError " + str(e)
print(result)
print(peak_mb() - before, time.monotonic() - t)
"""


def test_zip_bomb_probe_is_refused_before_allocating(tmp_path):
    bomb = tmp_path / "bomb.npz"
    zip_bomb(bomb, 80_000)  # declares 328 MB of keys
    assert bomb.stat().st_size < 2 << 20
    p = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, str(bomb)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    result, stats = p.stdout.strip().splitlines()
    grown_mb, seconds = map(float, stats.split())
    assert result.startswith("ProbeError") and "bomb.npz" in result
    assert grown_mb < 50 and seconds < 5, (grown_mb, seconds)


def test_probe_with_many_examples_predicts_in_bounded_memory(tmp_path):
    """200k examples of 8 dimensions is a small file (6 MB), but scoring 3000 photos against them
    in one (photos × examples) kernel takes 2.4 GB."""
    rng = np.random.default_rng(0)
    n, dim = 200_000, 8
    keys = normalise(rng.normal(size=(n, dim))).astype(np.float32)
    probe = Probe(["a", "b", "c"], normalise(rng.normal(size=(3, dim))), keys, rng.integers(0, 3, n),
                  meta={"model": "x"})
    path = tmp_path / "many.npz"
    path.write_bytes(npz_bytes(probe.to_arrays()))
    p = subprocess.run([sys.executable, "-c", MEMORY_DRIVER, str(path)], capture_output=True, text=True,
                       timeout=SUBPROCESS_TIMEOUT)
    assert p.returncode == 0, p.stderr
    result, stats = p.stdout.strip().splitlines()
    grown_mb, _seconds = map(float, stats.split())
    assert result == "loaded" and grown_mb < 400, (result, grown_mb)


# ---------------------------------------------------------------------- property: probe loader
VALID_NPZ = npz_bytes(valid_probe().to_arrays())


def load_bytes(tmp_path: Path, data: bytes):
    """load_probe_file on ``data``: a Probe or a ProbeError (anything else fails the test), with the
    bytes it allocates bounded (tracemalloc sees numpy's and zlib's buffers)."""
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data)
    tracemalloc.start()
    try:
        probe = probe_module.load_probe_file(str(path))
    except ProbeError as e:
        assert "fuzz.npz" in str(e)
        probe = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 4 * len(data) + (8 << 20), peak
    if probe is not None:
        dim = probe.text.shape[1]
        f = normalise(np.random.default_rng(0).normal(size=(5, dim)))
        p = probe.probabilities(f)
        assert np.isfinite(p).all() and np.allclose(p.sum(1), 1, atol=1e-4)
    return probe


FUZZ = settings(max_examples=60, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID_NPZ) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(VALID_NPZ)))
def test_property_mutated_probe_bytes(tmp_path, flips, cut):
    data = bytearray(VALID_NPZ)
    for at, value in flips:
        data[at] = value
    load_bytes(tmp_path, bytes(data[:cut] if cut > 10 else data))


MEMBER = {
    "text": hnp.arrays(st.sampled_from([np.float32, np.float64, np.float16, np.int32]),
                       hnp.array_shapes(min_dims=0, max_dims=3, max_side=70)),
    "keys": hnp.arrays(st.sampled_from([np.float32, np.float64, np.int64, np.bool_]),
                       hnp.array_shapes(min_dims=0, max_dims=3, max_side=70)),
    "key_labels": hnp.arrays(st.sampled_from([np.int64, np.int8, np.float32]),
                             hnp.array_shapes(min_dims=0, max_dims=2, max_side=10),
                             elements=st.integers(-3, 5)),
    "bias": hnp.arrays(st.sampled_from([np.float32, np.float64]), hnp.array_shapes(min_dims=0, max_dims=2, max_side=4)),
}
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                       lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                       max_leaves=12)


@FUZZ
@given(st.sampled_from(sorted(MEMBER) + ["meta"]), st.data())
def test_property_random_member_arrays_and_meta(tmp_path, name, data):
    arrays = valid_probe().to_arrays()
    if name == "meta":
        meta = json.loads(str(arrays["meta"]))
        key = data.draw(st.sampled_from(sorted(meta) + ["extra"]))
        meta[key] = data.draw(JSONISH)
        arrays["meta"] = np.array(json.dumps(meta))
    else:
        arrays[name] = data.draw(MEMBER[name])
    load_bytes(tmp_path, npz_bytes(arrays))


def test_valid_probe_round_trips_through_the_checked_loader(tmp_path):
    probe = valid_probe()
    again = load_bytes(tmp_path, npz_bytes(probe.to_arrays()))
    f = normalise(np.random.default_rng(1).normal(size=(9, DIM)))
    np.testing.assert_array_equal(again.probabilities(f), probe.probabilities(f))
    assert again.meta["labels"] == ["a", "b"]


# ====================================================================== query parser (7)
@pytest.mark.parametrize("query", ['1e999*"dog"', "9" * 400 + '*"dog"', '"cat" + 1e400*"dog"', '5000*"dog"',
                                   '0.0000001*"dog"'])
def test_absurd_query_weights_are_refused(query):
    with pytest.raises(QueryError, match="weight"):
        parse_query(query)


def test_exponent_weights_and_zero_are_accepted():
    assert [t.weight for t in parse_query('2e-1*"a" + 1E2*"b" - 0*"c"')] == [0.2, 100.0, -0.0]


def fake_texts(texts):
    out = np.zeros((len(texts), 8), np.float32)
    for i, t in enumerate(texts):
        out[i, zlib.crc32(t.encode("utf-8", "surrogatepass")) % 8] = 1.0
    return out


def fake_image(path):
    return np.eye(8, dtype=np.float32)[3]


QUERY_PIECES = st.sampled_from(['"', "'", "+", "-", "*", " ", "1e999", "0.5", "2", ".", "dog", "a.jpg",
                                "~/x.png", "\x00", "é", "\udcff", "e", "9" * 30, "1" + "0" * 45 + '*"a"',
                                ' + 3.5*"b"', " - 0*dog"])


@settings(max_examples=200, deadline=5000)
@given(st.one_of(st.text(max_size=60), st.lists(QUERY_PIECES, max_size=12).map("".join)))
def test_property_query_parser(query):
    try:
        terms = parse_query(query)
    except QueryError:
        return
    assert terms and all(np.isfinite(t.weight) and abs(t.weight) <= 1000 for t in terms)
    try:
        q = query_vector(terms, fake_texts, fake_image)
    except QueryError:
        return
    assert np.isfinite(q).all() and abs(float(np.linalg.norm(q)) - 1) < 1e-4


@settings(max_examples=100, deadline=5000)
@given(st.lists(st.tuples(st.sampled_from(["+", "-"]),
                          st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(lambda w: repr(abs(w))),
                                    st.floats(0, 1e308).map(lambda w: f"{w:f}"),
                                    st.integers(0, 10 ** 400).map(str)),
                          st.sampled_from(["dog", "cat", "snow"])), min_size=1, max_size=5))
def test_property_weighted_queries_give_a_unit_vector_or_an_error(parts):
    query = " ".join(f'{s} {w}*"{t}"' for s, w, t in parts)
    try:
        q = query_vector(parse_query(query), fake_texts, fake_image)
    except QueryError:
        return
    assert np.isfinite(q).all()


def test_combine_refuses_non_finite():
    with pytest.raises(QueryError):
        combine(np.array([np.inf, 1.0]), np.eye(2, dtype=np.float32))


# ====================================================================== CLI: clear errors (7)
def index_in_process(lib: Path, photos: Path) -> Path:
    from clipdesk.library import Library

    with Library(str(lib), model="test-tiny") as library:
        assert library.index([str(photos)]).added == len(list(photos.rglob("*.jpg")))
    return lib


@pytest.fixture
def tiny_library(tmp_path, photos):
    return index_in_process(tmp_path / "lib", photos)


def test_library_that_is_a_file_or_under_a_file(tmp_path, photos):
    f = tmp_path / "afile"
    f.write_text("keep me")
    for lib in (f, f / "sub" / "lib"):
        for args in (["status"], ["search", "dog"], ["index", str(photos), "--model", "test-tiny"]):
            line = one_error_line(cli(lib, *args))
            assert str(f) in line and "is a file" in line, line
    assert f.read_text() == "keep me"


def test_home_that_is_a_file(tmp_path, photos):
    home = tmp_path / "home"
    home.write_text("not a folder")
    env = {"HOME": str(home), "CLIPDESK_LIBRARY": "", "XDG_DATA_HOME": "", "XDG_CACHE_HOME": ""}
    line = one_error_line(cli(None, "status", env=env))
    assert "No library" in line and str(home) in line
    line = one_error_line(cli(None, "index", str(photos), "--model", "test-tiny", env=env))
    assert str(home) in line and "is a file" in line
    ok = cli(tmp_path / "lib", "index", str(photos), "--model", "test-tiny", "--json", env=env)
    assert ok.returncode == 0 and strict_json(ok)["added"] == 8, err(ok)


def test_empty_catalog_is_refused_not_replaced(tiny_library):
    catalog = tiny_library / "catalog.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{catalog}{suffix}").unlink(missing_ok=True)
    catalog.write_bytes(b"")
    for args in (["status"], ["index", "--model", "test-tiny"], ["search", "dog"]):
        line = one_error_line(cli(tiny_library, *args))
        assert "empty (0 bytes)" in line and "repair" in line
    assert catalog.stat().st_size == 0  # not silently turned into a new empty library
    fixed = cli(tiny_library, "repair", "--json")
    assert fixed.returncode == 0 and strict_json(fixed)["status"] == "repaired", err(fixed)
    assert cli(tiny_library, "status").returncode == 0


def test_empty_catalog_of_a_library_being_created_starts_afresh(tmp_path, photos):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "catalog.sqlite").write_bytes(b"")  # a crash between creating the file and its header
    index_in_process(lib, photos)


def test_foreign_sqlite_is_refused_and_repair_leaves_it(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    db = lib / "catalog.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes(body) VALUES ('precious')")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    for args in (["status"], ["index", "--model", "test-tiny"], ["repair"]):
        line = one_error_line(cli(lib, *args))
        assert "not a clipdesk catalog" in line and "notes" in line, line
    assert db.read_bytes() == before and sorted(os.listdir(lib)) == ["catalog.sqlite"]


@pytest.mark.parametrize("args", [["status"], ["folder", "list"], ["search", "dog"], ["probe", "list"],
                                  ["label", "list"], ["predict", "p"], ["classify", "--labels", "a,b"],
                                  ["folder", "remove", "/x"], ["label", "add", "x", "/etc/hostname"]])
def test_commands_other_than_index_create_no_library(tmp_path, args):
    missing = tmp_path / "mistyped"
    line = one_error_line(cli(missing, *args))
    assert "No library at" in line and str(missing) in line
    assert not missing.exists()
    existing = tmp_path / "pictures"
    existing.mkdir()
    line = one_error_line(cli(existing, *args))
    assert "No library at" in line and os.listdir(existing) == []


def test_search_of_an_empty_library_loads_no_model(tmp_path):
    from clipdesk.library import Library

    Library(str(tmp_path / "lib")).close()  # a new library on the default model, nothing indexed
    env = {"HF_ENDPOINT": "http://192.0.2.1", "HF_HOME": str(tmp_path / "hf")}
    p = cli(tmp_path / "lib", "search", "dog", "--json", env=env)
    assert p.returncode == 0 and strict_json(p) == [], err(p)
    assert "no indexed photos" in err(p) and "Fetching" not in err(p) and "Loading" not in err(p)
    assert "Unclosed quote" in one_error_line(cli(tmp_path / "lib", "search", '"dog', env=env))


def test_index_of_a_mistyped_path_is_an_error_but_an_unplugged_folder_is_not(tmp_path, photos):
    lib = tmp_path / "lib"
    line = one_error_line(cli(lib, "index", str(tmp_path / "nope"), "--model", "test-tiny"))
    assert "No such file or folder" in line and str(tmp_path / "nope") in line
    assert not lib.exists()
    line = one_error_line(cli(lib, "index", "--model", "test-tiny"))  # a rescan needs a library
    assert "No library at" in line and not lib.exists()
    index_in_process(lib, photos)
    line = one_error_line(cli(lib, "index", str(tmp_path / "typo"), str(photos)))
    assert str(tmp_path / "typo") in line
    moved = tmp_path / "unplugged"
    photos.rename(moved)
    p = cli(lib, "index", str(photos), "--json")  # a known folder that is gone: kept, exit 0
    assert p.returncode == 0 and "stay in the library" in err(p), err(p)
    assert strict_json(cli(lib, "status", "--json"))["images"] == 8


@pytest.mark.parametrize("args", [["index", ".", "--batch-size", "0"], ["index", ".", "--batch-size", "-3"],
                                  ["search", "dog", "-k", "0"], ["search", "dog", "--min-score", "nan"],
                                  ["suggest", "p", "-k", "-1"], ["eval", "fewshot", "--features", "f", "--seeds", "0"]])
def test_nonsense_numbers_are_usage_errors(tmp_path, args):
    p = cli(tmp_path / "lib", *args)
    assert p.returncode == 2 and "usage:" in err(p) and "Traceback" not in err(p)
    assert not (tmp_path / "lib").exists()


def test_label_add_of_files_that_are_not_library_images(tiny_library, tmp_path, photos):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    good = photos / "home" / "img_4.jpg"
    for paths in ([str(text)], [str(good), str(tmp_path / "missing.jpg")]):
        line = one_error_line(cli(tiny_library, "label", "add", "x", *paths))
        assert paths[-1] in line
    labels = strict_json(cli(tiny_library, "label", "list", "--json"))
    assert labels == {}  # nothing was half-added
    assert cli(tiny_library, "label", "add", "x", str(good)).returncode == 0
    line = one_error_line(cli(tiny_library, "label", "remove", "x", str(text)))
    assert str(text) in line
    assert "No label named 'y'" in one_error_line(cli(tiny_library, "label", "delete", "y"))
    assert strict_json(cli(tiny_library, "label", "list", "--json")) == {"x": [str(good)]}


def test_absurd_weight_on_the_command_line(tiny_library):
    line = one_error_line(cli(tiny_library, "search", '"red" + 1e999*"dog"'))
    assert "weight" in line and "1e999" in line


def _command_exists(words: list[str]) -> bool:
    """Whether ``clipdesk WORDS...`` names a real command (options and their values skipped)."""
    from clipdesk.cli import build_parser

    parser = build_parser()
    if words in (["--version"], ["--help"]):  # the program's own options are a whole command too
        return True
    rest = list(words)
    while rest:
        w = rest.pop(0)
        if w.startswith("-"):
            if rest and not rest[0].startswith("-") and w in ("--library", "--model", "--weights", "--device"):
                rest.pop(0)
            continue
        subs = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
        if not subs:
            return True  # a positional argument of a leaf command
        if w not in subs[0].choices:
            return False
        parser = subs[0].choices[w]
    return not [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]


def test_every_hint_names_a_real_command():
    hints = []
    for folder in ("clipdesk", "indexer", "ui"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            hints += [(path.name, m.group(2)) for m in re.finditer(r"(['`])clipdesk ([^'`\n]+)\1", text)]
    assert len(hints) >= 8
    bad = [(f, h) for f, h in hints if not _command_exists([w for w in h.split() if w != "..."])]
    assert bad == []
    assert not _command_exists(["probes"]) and _command_exists(["probe", "list"])


# ---------------------------------------------------------------------- signals
def start_index(library, folder, *extra):
    return subprocess.Popen([*CLI, "--library", str(library), "index", str(folder), "--model", "test-tiny",
                             "--batch-size", "4", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_rows(library, n: int, proc, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while catalog_rows(library) < n:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.shared_data
@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"),
                                           pytest.param(signal.SIGINT, 130, "cancelled", marks=pytest.mark.slow)])
def test_sigterm_and_ctrl_c_stop_a_real_index_cleanly(tmp_path, shared_data, sig, code, word):
    photos = shared_data / "photos" / "labelled"
    lib = tmp_path / "lib"
    proc = start_index(lib, photos, "--json")
    wait_for_rows(lib, 20, proc)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    text = stderr.decode()
    assert proc.returncode == code, text
    assert word in text and "Traceback" not in text and stdout == b""
    kept = catalog_rows(lib)
    assert 20 <= kept < 359
    status = cli(lib, "status", "--json")
    assert status.returncode == 0 and strict_json(status)["images"] == kept, err(status)
    again = cli(lib, "index", "--json", timeout=SUBPROCESS_TIMEOUT)
    report = strict_json(again)
    assert report["added"] + report["unchanged"] == 359 and report["unchanged"] == kept and report["failed"] == 0


SHUTDOWN_DRIVER = r"""
import os, sys, threading, time
from clipdesk.cli import main
from clipdesk.runtime.encoder import FolderEncoder
# Each batch a little slow, so the index is still running when the first Ctrl+C lands however
# busy the machine is (40 tiny photos could be done before the signal arrived: nothing to stop).
embed = FolderEncoder.embed
FolderEncoder.embed = lambda self, prepared: (time.sleep(0.25), embed(self, prepared))[1]
code = main(sys.argv[1:])
# Still finishing at exit, as decoder threads can be: the interpreter waits for this thread.
threading.Thread(target=time.sleep, args=(5,)).start()
open(os.environ["CLIPDESK_TEST_MARK"], "w").close()
sys.exit(code)
"""


def test_second_ctrl_c_while_exiting_prints_no_traceback(tmp_path):
    photos = tmp_path / "photos"
    for i in range(40):
        make_photo(photos / f"p{i:03d}.jpg", ((i * 37) % 255, (i * 91) % 255, 40), size=(48, 40), pattern=i)
    lib, mark = tmp_path / "lib", tmp_path / "main-returned"
    proc = subprocess.Popen([sys.executable, "-c", SHUTDOWN_DRIVER, "--library", str(lib), "index", str(photos),
                             "--model", "test-tiny", "--batch-size", "4"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, CLIPDESK_TEST_MARK=str(mark)))
    wait_for_rows(lib, 1, proc)
    proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 60
    while not mark.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.01)
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)  # the user presses Ctrl+C again while it is still exiting
    _, stderr = proc.communicate(timeout=60)
    text = stderr.decode()
    assert proc.returncode == 130 and time.monotonic() - t < 3, (proc.returncode, text)
    assert "cancelled" in text and "Traceback" not in text and "Exception ignored" not in text, text
    final = cli(lib, "index", "--json", timeout=SUBPROCESS_TIMEOUT)
    assert final.returncode == 0, err(final)
    report = strict_json(final)
    assert report["added"] + report["unchanged"] == 40 and report["failed"] == 0


# ---------------------------------------------------------------------- strict JSON, any file name
def test_non_utf8_file_names_are_lossless_in_json_and_text(tmp_path, photos):
    raw_name = b"caf\xe9 \xff.jpg"  # Latin-1 bytes: not valid UTF-8
    folder = os.fsencode(str(photos / "home"))
    src = photos / "home" / "img_4.jpg"
    with open(folder + b"/" + raw_name, "wb") as f:
        f.write(src.read_bytes()[:-2] + b"\xff\xd9")
    lib = index_in_process(tmp_path / "lib", photos)
    # 'similar' of a library photo reads its vector from the catalog: JSON and text output without
    # a model load (search prints through the same code).
    probe = str(photos / "home" / "img_5.jpg")
    hits = cli(lib, "similar", probe, "-k", "9", "--json")
    assert hits.returncode == 0, err(hits)
    rows = strict_json(hits)
    odd = [r for r in rows if "path_bytes" in r]
    assert len(odd) == 1 and "\ufffd" in odd[0]["path"]
    exact = base64.b64decode(odd[0]["path_bytes"])
    assert exact == folder + b"/" + raw_name and os.path.exists(exact)
    assert all("path_bytes" not in r and os.path.exists(r["path"]) for r in rows if r is not odd[0])
    text = cli(lib, "similar", probe, "-k", "9")
    assert text.returncode == 0 and folder + b"/" + raw_name in text.stdout, err(text)
    labels_add = cli(lib, "label", "add", "odd", os.fsdecode(folder + b"/" + raw_name))
    assert labels_add.returncode == 0, err(labels_add)
    listed = strict_json(cli(lib, "label", "list", "--json"))
    assert base64.b64decode(listed["odd"][0]["path_bytes"]) == exact


def test_non_utf8_library_folder(tmp_path, photos):
    lib = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/lib \xe9?#"))
    index_in_process(lib, photos)
    st_ = strict_json(cli(lib, "status", "--json"))
    assert base64.b64decode(st_["library_bytes"]) == os.fsencode(str(lib)) and st_["images"] == 8
    assert os.fsencode(str(lib)) in cli(lib, "status").stdout


def test_json_output_never_holds_nan(probe_library):
    """Even a probe file crafted to give NaN cannot reach the JSON output (refused on load)."""
    from clipdesk.cli import json_safe

    with pytest.raises(ValueError):
        json.dumps(json_safe({"probability": float("nan")}), allow_nan=False)
    probes = Path(probe_library.folder) / "probes"
    place_bad_probe(probes, "nan", npz_bytes(with_meta(temperature=float("nan"))))
    with pytest.raises(ProbeError):
        probe_library.predict("nan")


# ====================================================================== offline (8)
def test_offline_model_load_fails_within_seconds_with_one_clear_message(tmp_path):
    # 192.0.2.1 (TEST-NET-1) never answers: a connection to it can only time out, like a network
    # that is down. Before any download the host is probed for about 2 s.
    photos = tmp_path / "photos"
    make_photo(photos / "a.jpg")
    env = {"HF_ENDPOINT": "http://192.0.2.1", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    t = time.monotonic()
    p = cli(tmp_path / "lib", "index", str(photos), env=env, timeout=120)
    seconds = time.monotonic() - t
    line = err(p).strip().splitlines()[-1]
    assert p.returncode == 1 and seconds < 30, (seconds, err(p))  # process start and imports included
    assert "ViT-B-32-256/datacomp_s34b_b86k" in line and "--weights" in line and "test-tiny" in line
    assert "192.0.2.1" in line and err(p).count("Cannot download") == 1 and "Retrying" not in err(p)
    assert "Traceback" not in err(p) and "internal error" not in err(p)
    # The model load itself gives up within a few seconds (the probe waits 2 s).
    code = ("import time\nimport open_clip, torch\nfrom clipdesk.runtime import ModelSpec, load_encoder\n"
            "from clipdesk.errors import ModelDownloadError\nt = time.monotonic()\n"
            "try:\n    load_encoder(ModelSpec.parse(None))\nexcept ModelDownloadError:\n"
            "    print(time.monotonic() - t)\n")
    timed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, **env))
    assert timed.stdout.strip() and float(timed.stdout) < 5, (timed.stdout, timed.stderr)


CACHED_DRIVER = r"""
import os, sys, time
import numpy as np, open_clip, torch
from clipdesk.runtime import ModelSpec
from clipdesk.runtime.torch_backend import load_encoder, register_project_models
register_project_models()
open_clip.pretrained._PRETRAINED["test-tiny"] = {"cached": open_clip.pretrained._pcfg(hf_hub="clipdesk-test/tiny/")}
torch.manual_seed(7)
model = open_clip.create_model("test-tiny")
snap = os.path.join(os.environ["HF_HOME"], "hub", "models--clipdesk-test--tiny")
os.makedirs(os.path.join(snap, "refs"))
os.makedirs(os.path.join(snap, "snapshots", "0" * 40))
open(os.path.join(snap, "refs", "main"), "w").write("0" * 40)
torch.save(model.state_dict(), os.path.join(snap, "snapshots", "0" * 40, "open_clip_pytorch_model.bin"))
t = time.monotonic()
enc = load_encoder(ModelSpec.parse("test-tiny/cached"))
seconds = time.monotonic() - t
tokens = open_clip.get_tokenizer("test-tiny")(["a photo"])
with torch.no_grad():
    expected = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1).numpy()
print(seconds, float(np.abs(enc.encode_texts(["a photo"]) - expected).max()))
"""


def test_cached_weights_load_without_the_network(tmp_path):
    env = dict(os.environ, HF_ENDPOINT="http://192.0.2.1", HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="")
    p = subprocess.run([sys.executable, "-c", CACHED_DRIVER], capture_output=True, text=True, env=env, timeout=180)
    assert p.returncode == 0, p.stderr
    seconds, diff = map(float, p.stdout.split())
    assert seconds < 5 and diff < 1e-4, (seconds, diff)


FINALIZER_DRIVER = r"""
import os, signal, time
from clipdesk.cli import _handle_stop_signals
state, _ = _handle_stop_signals()
class Bar:  # like a progress bar whose __del__ runs when Ctrl+C arrives
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
try:
    bar = Bar()
    del bar
    time.sleep(5)
    print("lost")
except KeyboardInterrupt:
    print("stopped")
"""


def test_ctrl_c_arriving_inside_a_finalizer_is_not_lost():
    """Python drops an exception raised in __del__; the stop must still happen, without a traceback."""
    out = subprocess.run([sys.executable, "-c", FINALIZER_DRIVER], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "stopped", (out.stdout, out.stderr)
    assert "Exception ignored" not in out.stderr and "Traceback" not in out.stderr, out.stderr
