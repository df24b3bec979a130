"""`clipdesk index --engine ray`: the same library as a local index, on a local Ray cluster.

One Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down at its end. The
checks: the library from the cluster equals the local one (same paths, vectors within float16,
same failures, same rescan) though a worker dies mid-batch (Ray retries its task, no row twice);
a driver killed mid-run (SIGKILL) or stopped with Ctrl+C leaves a library the same command
completes (slow); a model the workers cannot load, a missing Ray, a bad or silent address and
GPUs asked of a cluster without any are each one clear error.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import ray

from clipdesk.cluster import RayEngine
from clipdesk.errors import ClusterError
from clipdesk.indexer.scan import ScannedFile
from clipdesk.library import Library
from conftest import catalog_rows, make_photo

N_PHOTOS = 30


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The address of a Ray instance on this machine (started here, stopped after the module)."""
    cache = tmp_path_factory.mktemp("ray-cache")
    # Ray starts its workers at niceness 15: beside any other busy process they get ~1/28 of a
    # core (measured: this module's worker-death test took 563 s instead of 13 s next to two busy
    # loops), so a loaded CI machine timed the test out. These tests check results, not priority.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": {"CLIPDESK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Photos in two folders, a truncated JPEG, a text file named .jpg and a non-UTF-8 name."""
    root = tmp_path_factory.mktemp("ray-photos")
    for i in range(N_PHOTOS):
        make_photo(root / f"d{i % 2}" / f"p{i:02d}.jpg", ((i * 37) % 255, (i * 91) % 255, 60), size=(64, 48),
                   pattern=i)
    whole = (root / "d0" / "p00.jpg").read_bytes()
    (root / "d1" / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "d1" / "notes.jpg").write_text("not a photo\n")
    odd = os.path.join(os.fsencode(root / "d0"), b"caf\xe9.jpg")  # Latin-1 name: not UTF-8
    with open(odd, "wb") as f:
        f.write((root / "d0" / "p02.jpg").read_bytes())
    return root


def library_state(folder: str) -> tuple[dict, dict, dict]:
    """(path → vector, path → (hash, width, height, taken), path → failure) as the catalog holds them."""
    conn = sqlite3.connect(f"file:{folder}/catalog.sqlite?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT path, vector, hash, width, height, taken, error FROM images").fetchall()
    finally:
        conn.close()
    paths = [os.fsdecode(p) if isinstance(p, bytes) else p for p, *_ in rows]
    assert len(paths) == len(set(paths)), "a path has two rows"
    vectors = {p: np.frombuffer(r[1], np.float16).astype(np.float32) for p, r in zip(paths, rows) if r[1]}
    fields = {p: tuple(r[2:6]) for p, r in zip(paths, rows) if r[1]}
    failures = {p: r[6] for p, r in zip(paths, rows) if r[6] is not None}
    return vectors, fields, failures


@pytest.fixture(scope="module")
def local_state(folder, tmp_path_factory):
    lib_dir = tmp_path_factory.mktemp("local") / "lib"
    with Library(str(lib_dir), model="test-tiny") as lib:
        report = lib.index([str(folder)])
    assert (report.added, report.failed) == (N_PHOTOS + 1, 2)
    return library_state(str(lib_dir))


def assert_same_library(state, expected) -> None:
    vectors, fields, failures = state
    want_vectors, want_fields, want_failures = expected
    assert sorted(vectors) == sorted(want_vectors)
    assert fields == want_fields
    assert failures == want_failures
    for p, v in want_vectors.items():
        np.testing.assert_allclose(vectors[p], v, atol=2e-3, err_msg=p)  # float16 storage


class _DiesOnce:
    """An embedder whose process exits in the middle of one batch (the first to get there), as a
    worker killed by the OOM killer or a lost node does. Ray ships it to the workers by value."""

    def __init__(self, factory, marker: str):
        self.inner = factory()
        self.marker = marker
        self.min_side = self.inner.min_side

    def prepare(self, image):
        return self.inner.prepare(image)

    def embed(self, prepared):
        if len(prepared) > 1:  # not the one-image probe at start-up
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os._exit(1)
        return self.inner.embed(prepared)


def test_cluster_library_is_the_local_library_though_a_worker_died(cluster, folder, local_state, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = tmp_path / "died"
    seen = []
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        engine = lib.ray_engine(cluster, cpus_per_worker=1)
        engine.embedder_factory = partial(_DiesOnce, engine.embedder_factory, str(marker))
        report = lib.index([str(folder)], engine=engine, batch_size=4, progress=seen.append)
        assert marker.exists()  # a worker did die mid-batch; Ray retried its task on a new one
        assert (report.added, report.failed, report.cancelled) == (N_PHOTOS + 1, 2, False)
        assert sorted(f.path for f in report.failures) == sorted(local_state[2])
        embed = [p for p in seen if p.stage == "embed"]
        assert embed[-1].done == embed[-1].total == N_PHOTOS + 3 and embed[-1].rate > 0
        assert len(embed) > 3 and [p.done for p in embed] == sorted(p.done for p in embed)
        # The incremental diff is the driver's: a rescan sends nothing to the cluster.
        again = lib.index(engine=engine)
        assert (again.added, again.unchanged) == (0, N_PHOTOS + 3)
        assert len(lib.search("red", k=50)) == N_PHOTOS + 1
    assert_same_library(library_state(str(tmp_path / "lib")), local_state)


DRIVER = r"""
import os, sys, time
from clipdesk import cluster as ray_engine

class Slow:  # defined in __main__, so Ray ships it by value
    def __init__(self, factory):
        self.inner = factory()
        self.min_side = self.inner.min_side
    def prepare(self, image):
        return self.inner.prepare(image)
    def embed(self, prepared):
        time.sleep(0.3)
        return self.inner.embed(prepared)

def slow_factory(factory):
    return Slow(factory)

real_init = ray_engine.RayEngine.__init__
def init(self, factory, *a, **kw):
    from functools import partial
    kw["files_per_task"] = 4
    real_init(self, partial(slow_factory, factory), *a, **kw)
ray_engine.RayEngine.__init__ = init
from clipdesk.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _no_model():
    from clipdesk.errors import ModelError

    raise ModelError("Checkpoint file not found: /mnt/share/model.safetensors")


def test_a_model_the_workers_cannot_load_is_one_clear_error(cluster, folder, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        engine = lib.ray_engine(cluster)
        engine.embedder_factory = _no_model
        t = time.monotonic()
        with pytest.raises(ClusterError, match="cannot load the model: Checkpoint file not found: /mnt/share"):
            lib.index([str(folder)], engine=engine)
        assert time.monotonic() - t < 60  # not Ray's endless actor restarts
        assert lib.catalog.counts() == (0, 0)


@pytest.mark.slow  # ~25 s each on 2 cores: a second Python with Ray, stopped, then the command again
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_a_stopped_driver_resumes(cluster, folder, local_state, tmp_path, sig):
    lib_dir = tmp_path / "lib"
    command = ["--library", str(lib_dir), "index", str(folder), "--model", "test-tiny", "--batch-size", "2",
               "--engine", "ray", "--address", cluster, "--json"]
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while catalog_rows(lib_dir) < 4 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, err
    else:  # Ctrl+C: the job stops cleanly, with the command's own message and status
        assert proc.returncode == 130 and "cancelled; what was done so far is kept" in err, err
        assert "Traceback" not in err
    committed = catalog_rows(lib_dir)
    assert 4 <= committed < N_PHOTOS + 3
    # The same command again finishes the job: nothing twice, nothing lost, failures as locally.
    again = subprocess.run([sys.executable, "-m", "clipdesk.cli", *command], capture_output=True, text=True,
                           timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["unchanged"] == committed
    assert report["added"] + report["failed"] + committed == N_PHOTOS + 3
    assert_same_library(library_state(str(lib_dir)), local_state)


# ---------------------------------------------------------------------- without a cluster
def test_ray_missing_is_one_clear_error(monkeypatch, tmp_path, folder):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        with pytest.raises(ClusterError, match=r"clipdesk\[cluster\]"):
            lib.index([str(folder)], engine=lib.ray_engine())
        assert lib.catalog.counts() == (0, 0)  # nothing half-done


def test_cluster_options_need_the_ray_engine(tmp_path, capsys):
    from clipdesk.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--library", str(tmp_path / "lib"), "index", str(tmp_path), "--address", "auto"])
    assert e.value.code == 2 and "--engine ray" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--library", str(tmp_path / "lib"), "index", str(tmp_path), "--engine", "ray", "--gpus-per-worker", "-1"])
    assert e.value.code == 2


def test_workers_fit_the_cluster_and_gpus_are_asked_only_of_a_cluster_with_them():
    def fake_ray(**resources):
        return SimpleNamespace(cluster_resources=lambda: resources)

    engine = RayEngine(lambda: None, gpus_per_worker=0.5, cpus_per_worker=2)
    assert engine._pool_size(fake_ray(CPU=16.0, GPU=2.0)) == 4  # 2 GPUs / 0.5
    assert engine._pool_size(fake_ray(CPU=6.0, GPU=8.0)) == 3  # 6 CPUs / 2
    assert RayEngine(lambda: None, cpus_per_worker=4)._pool_size(fake_ray(CPU=2.0)) == 1  # at least one
    assert RayEngine(lambda: None, workers=3)._pool_size(fake_ray(CPU=64.0)) == 3
    with pytest.raises(ClusterError, match="no GPU"):
        engine._pool_size(fake_ray(CPU=16.0))
    with pytest.raises(ClusterError, match="GPUs per worker"):
        RayEngine(lambda: None, gpus_per_worker=-1)


class _Stop(Exception):
    pass


def test_gpu_workers_reserve_their_gpus(cluster, monkeypatch, tmp_path):
    """The GPU path up to Ray, on a cluster without GPUs: Ray's resources and the dataset's
    map_batches are mocked at their boundary (no GPU is available to these tests)."""
    asked = {}

    def map_batches(self, fn, **kwargs):
        asked.update(kwargs, fn=fn)
        raise _Stop

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})
    monkeypatch.setattr(ray.data.Dataset, "map_batches", map_batches)
    engine = RayEngine(lambda: None, cluster, gpus_per_worker=1, cpus_per_worker=4)
    with pytest.raises(_Stop):
        next(engine([ScannedFile(str(tmp_path / f"{i}.jpg"), 1, 0) for i in range(10)], 4))
    assert (asked["num_gpus"], asked["num_cpus"]) == (1, 4)  # each model worker holds a GPU
    assert asked["compute"].max_size == 2  # one worker per GPU, though the CPUs fit four
    assert asked["fn_constructor_args"][1:] == (4, 4)  # batch size, decoding threads


def test_a_bad_or_silent_address_is_one_clear_error(tmp_path):
    with pytest.raises(ClusterError, match="not auto, HOST:PORT"):
        RayEngine(lambda: None, "nonsense")
    engine = RayEngine(lambda: None, "127.0.0.1:1")  # nothing listens on port 1
    t = time.monotonic()
    with pytest.raises(ClusterError, match="No Ray cluster answers at 127.0.0.1:1"):
        next(engine([ScannedFile(str(tmp_path / "a.jpg"), 1, 0)], 4))
    assert time.monotonic() - t < 10  # Ray alone would retry for minutes
