"""The memory-mapped vector file (indexer/vecfile.py), the compressed index (IVF-PQ) and the
FAISS GPU branch (mocked at its boundary; a real GPU test runs only where FAISS sees one).

Libraries here are synthetic: rows written through the real catalog code with seeded vectors, so
no model loads; a probe is built from fixed vectors. Whole-library predict must give exactly the
same answers whether it reads the vector file or the catalog's rows.
"""
import os
import types

import faiss
import numpy as np
import pytest

from clipdesk.indexer import vecfile
from clipdesk.indexer import vectors as vectors_mod
from clipdesk.indexer.catalog import Catalog, Failure, ImageRecord
from clipdesk.indexer.lock import LibraryLock
from clipdesk.indexer.vecfile import VecFileError, VectorFile
from clipdesk.indexer.vectors import VectorStore
from clipdesk.library import Library
from clipdesk.teach.probe import Probe

DIM = 32
MODEL = "test-tiny"


def unit(rng, n, dim=DIM, centres=None):
    if centres is None:
        x = rng.standard_normal((n, dim))
    else:  # clustered, like photo collections
        x = centres[rng.integers(0, len(centres), n)] + 0.35 / np.sqrt(dim) * rng.standard_normal((n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(rng, start, n):
    vecs = unit(rng, n)
    return [ImageRecord(f"/photos/img_{k:06d}.jpg", 100 + k, 10**18 + k, f"h{k}", 40, 30, None, vecs[k - start])
            for k in range(start, start + n)]


@pytest.fixture
def synthetic(tmp_path):
    """A library folder holding 2,500 embedded rows (ids 1..2500) and a saved 3-class probe."""
    folder = tmp_path / "lib"
    rng = np.random.default_rng(0)
    cat = Catalog.open(str(folder))
    cat.set_meta("model", MODEL)
    cat.set_meta("dim", str(DIM))
    for s in range(0, 2500, 1000):
        cat.write_batch(records(rng, s, min(1000, 2500 - s)))
    cat.close()
    lib = Library(str(folder))
    probe = Probe(["a", "b", "c"], unit(rng, 3), unit(rng, 30), np.repeat(np.arange(3), 10),
                  meta={"model": lib.model_name})
    lib._save_probe("p", probe, types.SimpleNamespace(cv_accuracy=0.0, zeroshot_accuracy=0.0, examples=30))
    lib.close()
    return folder


def open_library(folder):
    return Library(str(folder))


def write(lib):
    """What every indexing run does at its end (and every minute): save the caches."""
    with lib.writing():
        lib.vectors  # noqa: B018
        lib._save_store()


def rows(out):
    return [(c.id, c.path, c.label, c.probability) for c in out]


def same(got, want) -> bool:
    """The same photos with the same labels, probabilities equal to float32 rounding (the matrix
    products sum in an order that depends on how the rows were chunked)."""
    return len(got) == len(want) and all(g[:3] == w[:3] and abs(g[3] - w[3]) <= 1e-5 for g, w in zip(got, want))


def from_catalog(lib):
    """predict's answers read from the catalog's rows only (the reference)."""
    real = lib._vector_file
    lib._vector_file = lambda rebuild=False: None
    try:
        return rows(lib.predict("p"))
    finally:
        lib._vector_file = real


def forbid_catalog_pass(lib, monkeypatch):
    """Make a whole-library pass over the catalog's rows fail the test: the vector file must serve it."""
    def boom(*a, **k):
        raise AssertionError("read the catalog's rows instead of the vector file")
    monkeypatch.setattr(lib.catalog, "iter_embedded", boom)


def test_predict_reads_the_vector_file_and_agrees_with_the_catalog(synthetic, monkeypatch):
    lib = open_library(synthetic)
    write(lib)
    path = synthetic / vecfile.FILENAME
    with VectorFile.open(str(path)) as vf:
        assert (vf.header.live, vf.header.generation) == (2500, lib.catalog.generation)
    want = from_catalog(lib)
    forbid_catalog_pass(lib, monkeypatch)
    got = rows(lib.predict("p"))
    assert len(want) == 2500 and same(got, want)
    assert [i for i, *_ in got] == sorted(i for i, *_ in got)  # id order, as before
    lib.close()


def test_a_reader_overlays_changes_made_since_the_file_was_written(synthetic, monkeypatch):
    lib = open_library(synthetic)
    write(lib)
    path = synthetic / vecfile.FILENAME
    before = path.read_bytes()
    # Another process writes the catalog and holds the lock: this reader cannot update the file.
    other = Catalog.open(str(synthetic))
    rng = np.random.default_rng(5)
    other.write_batch(records(rng, 10, 3))  # ids 11..13 re-embedded (new vectors, same paths)
    other.write_batch(records(rng, 2500, 20))  # new ids 2501..2520
    other.delete_images([5, 6, 2000])
    other.write_batch(failures=[Failure("/photos/img_000100.jpg", "unreadable")])  # id 101 loses its vector
    holder = LibraryLock(str(synthetic))
    holder.acquire()
    try:
        want = from_catalog(lib)
        forbid_catalog_pass(lib, monkeypatch)
        got = rows(lib.predict("p"))
    finally:
        holder.release()
        other.close()
    assert same(got, want) and len(got) == 2500 + 20 - 3 - 1
    assert path.read_bytes() == before  # readers never write it


def test_incremental_update_patches_the_file_in_place(synthetic, monkeypatch):
    lib = open_library(synthetic)
    write(lib)
    path = synthetic / vecfile.FILENAME
    ino = os.stat(path).st_ino
    rng = np.random.default_rng(6)
    lib.catalog.write_batch(records(rng, 2500, 50))  # appended
    lib.catalog.write_batch(records(rng, 40, 2))  # patched over their slots
    lib.catalog.delete_images([1, 2, 3])  # marked dead
    write(lib)
    assert os.stat(path).st_ino == ino  # the same file, not a rewritten one
    with VectorFile.open(str(path)) as vf:
        assert (vf.header.live, vf.header.rows) == (2547, 2550)
        assert vf.header.generation == lib.catalog.generation
        np.testing.assert_array_equal(vf.rows_for(np.array([41, 42, 2550])),
                                      lib.catalog.vectors_for([41, 42, 2550]))
    want = from_catalog(lib)
    forbid_catalog_pass(lib, monkeypatch)
    assert same(rows(lib.predict("p")), want)
    # Tombstones are pruned only once both caches have seen them.
    assert lib.catalog.pruned_generation == lib.catalog.generation
    lib.close()


def test_an_id_inserted_in_the_middle_rewrites_the_file(synthetic):
    lib = open_library(synthetic)
    lib.catalog.write_batch(failures=[Failure("/photos/img_000007.jpg", "unreadable")])  # id 8 has no vector
    write(lib)
    path = synthetic / vecfile.FILENAME
    ino = os.stat(path).st_ino
    lib.catalog.write_batch(records(np.random.default_rng(7), 7, 1))  # id 8 readable again
    write(lib)
    assert os.stat(path).st_ino != ino  # rewritten (atomically, a new file)
    with VectorFile.open(str(path)) as vf:
        assert vf.header.live == 2500 and 8 in vf.ids
    lib.close()


def damage_truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)


def damage_header(path):
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"\xff")


def damage_vectors(path):
    with open(path, "r+b") as f:  # a flipped byte in the vector data: the block's CRC catches it
        f.seek(vecfile.HEADER + 1000 * DIM * 2 + 7)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x40]))


def damage_ids(path):
    with VectorFile.open(path) as vf:
        off = vecfile._ids_offset(vf.header)
    with open(path, "r+b") as f:
        f.seek(off + 8 * 10)
        f.write(np.int64(999_999).tobytes())


def damage_symlink(path, tmp_path=None):
    target = os.path.join(os.path.dirname(os.path.dirname(path)), "elsewhere.f16")
    os.replace(path, target)
    os.symlink(target, path)
    return target


def damage_foreign(path):
    """A valid file of another library (copied in) at the same generation."""
    with VectorFile.open(path) as vf:
        h = vf.header
    vecfile.build(path, [(np.arange(1, 2501), np.zeros((2500, DIM), np.float16))], DIM, h.generation,
                  "another-library", h.model, 2500)


@pytest.mark.parametrize("damage", [damage_truncate, damage_header, damage_vectors, damage_ids,
                                    damage_symlink, damage_foreign])
def test_a_damaged_or_foreign_file_is_never_trusted_and_is_rebuilt(synthetic, damage):
    lib = open_library(synthetic)
    write(lib)
    want = from_catalog(lib)
    path = str(synthetic / vecfile.FILENAME)
    target = damage(path)
    kept = open(target, "rb").read() if target else None
    assert same(rows(lib.predict("p")), want)
    assert not os.path.islink(path)  # replaced by a real file; the link's target is untouched
    if target:
        assert open(target, "rb").read() == kept
    with VectorFile.open(path) as vf:  # rebuilt, intact
        assert vf.header.live == 2500 and vf.header.library == lib.catalog.library_id()
        np.testing.assert_array_equal(vf.rows_for(np.array([11, 1001])), lib.catalog.vectors_for([11, 1001]))
        list(vf.blocks())  # every block's checksum holds
    lib.close()


def test_a_reader_that_cannot_write_reads_the_catalog(synthetic):
    lib = open_library(synthetic)
    want = from_catalog(lib)
    holder = LibraryLock(str(synthetic))
    holder.acquire()  # another writer: the missing file cannot be built now
    try:
        assert same(rows(lib.predict("p")), want)
    finally:
        holder.release()
    assert not (synthetic / vecfile.FILENAME).exists()
    lib.close()


def test_the_header_is_checked_before_anything_is_mapped(tmp_path):
    path = str(tmp_path / "v.f16")
    vecfile.build(path, [(np.arange(1, 11), np.ones((10, 4), np.float16))], 4, 3, "lib", "m", 10)
    with VectorFile.open(path) as vf:
        assert vf.header.rows == 10 and vf.header.capacity >= 10
    # A file that claims a huge capacity is refused by its size, without allocating anything.
    data = bytearray(open(path, "rb").read())
    data[len(vecfile._MAGIC) + 4:len(vecfile._MAGIC) + 4 + 2] = b"{}"
    open(path, "wb").write(bytes(data))
    with pytest.raises(VecFileError):
        VectorFile.open(path)
    open(path, "wb").write(b"")
    with pytest.raises(VecFileError):
        VectorFile.open(path)
    with pytest.raises(VecFileError):
        VectorFile.open(str(tmp_path / "missing.f16"))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(VecFileError):
        VectorFile.open(str(tmp_path / "fifo"))  # no hang


# ---------------------------------------------------------------------- the compressed index
def clustered(n, dim, seed=0):
    rng = np.random.default_rng(seed)
    centres = unit(rng, 150, dim)
    return unit(rng, n, dim, centres), rng


def exact_top(queries, vecs, k=10):
    return np.argsort(-(queries @ vecs.T), axis=1)[:, :k] + 1


PQ_DIM = 8  # a few one-byte codes per vector: PQ training (256 centroids per code) stays quick


def pq_chunks(vecs):
    return [(np.arange(s + 1, s + 4001), vecs[s:s + 4000]) for s in range(0, len(vecs), 4000)]


@pytest.fixture(scope="module")
def pq_store():
    vecs, rng = clustered(12_000, PQ_DIM)
    store = VectorStore.build(PQ_DIM, pq_chunks(vecs), 12_000, exact_limit=1000, compress_limit=5000)
    return store, vecs, rng


def test_above_the_threshold_the_index_is_product_quantised_with_exact_reranking(pq_store, tmp_path):
    store, vecs, rng = pq_store
    assert store.kind == "ivf-pq" and store.index.code_size == PQ_DIM // vectors_mod.PQ_DIMS_PER_BYTE
    near = vecs[rng.choice(len(vecs), 60)] + 0.5 / np.sqrt(PQ_DIM) * rng.standard_normal((60, PQ_DIM)).astype(np.float32)
    queries = np.vstack([near, unit(rng, 40, PQ_DIM)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = exact_top(queries, vecs)
    _, cand = store.search(queries, store.shortlist(10))
    # The caller re-ranks the shortlist with exact vectors: recall@10 is the shortlist's coverage.
    reranked = [c[np.argsort(-(vecs[c - 1] @ q))[:10]] for c, q in zip(cand, queries)]
    recall = np.mean([len(set(t) & set(r)) / 10 for t, r in zip(truth.tolist(), [r.tolist() for r in reranked])])
    assert recall >= 0.9
    # Its file passes the validator (new kind) and a damaged one does not.
    path = str(tmp_path / "vectors.faiss")
    store.save(path, "m")
    loaded, header = VectorStore.load(path, max_count=12_000)
    assert header.kind == "ivf-pq" and loaded.kind == "ivf-pq" and header.nprobe == store.nprobe
    np.testing.assert_array_equal(loaded.search(queries[:5], 10)[1], store.search(queries[:5], 10)[1])
    data = open(path, "rb").read()
    for bad in (data[:-5000], data.replace(b"IwPQ", b"IwSq", 1)):
        open(path, "wb").write(bad)
        with pytest.raises(vectors_mod.VectorFileError):
            VectorStore.load(path, max_count=12_000)


def test_library_search_reranks_the_compressed_shortlist_from_the_vector_file(pq_store, tmp_path, monkeypatch):
    store, vecs, rng = pq_store
    cat = Catalog.open(str(tmp_path / "big"))
    cat.set_meta("model", MODEL)
    cat.set_meta("dim", str(PQ_DIM))
    cat.write_batch([ImageRecord(f"/p/{k}.jpg", 1, k, f"h{k}", 4, 3, None, vecs[k - 1]) for k in range(1, 12_001)])
    cat.close()
    lib = Library(str(tmp_path / "big"))
    store.generation = lib.catalog.generation
    lib._store = store  # the module's IVF-PQ index over exactly these vectors
    with lib.writing():
        lib._save_store()  # writes vectors.faiss and vectors.f16
    monkeypatch.setattr(lib.catalog, "vectors_for", lambda ids: pytest.fail("re-ranked from the catalog"))
    queries = vecs[rng.choice(len(vecs), 30)] + 0.5 / np.sqrt(PQ_DIM) * rng.standard_normal((30, PQ_DIM))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth = exact_top(queries, vecs)
    found = [[r.id for r in lib.search(q, k=10)] for q in queries]
    assert np.mean([len(set(t) & set(f)) / 10 for t, f in zip(truth.tolist(), found)]) >= 0.9
    best = lib.search(queries[0], k=3)
    np.testing.assert_allclose([r.score for r in best], np.sort(vecs @ queries[0])[::-1][:3], atol=2e-3)  # exact (float16) scores
    lib.close()


# ---------------------------------------------------------------------- faiss-gpu
class FakeGpu:
    """faiss-gpu's boundary on a faiss-cpu install: the "GPU" index is the CPU index itself, so
    results must be identical; every crossing is recorded."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
        monkeypatch.setattr(faiss, "StandardGpuResources", lambda: "resources", raising=False)
        monkeypatch.setattr(faiss, "GpuClonerOptions", types.SimpleNamespace, raising=False)
        monkeypatch.setattr(faiss, "index_cpu_to_gpu", self.to_gpu, raising=False)
        monkeypatch.setattr(faiss, "index_gpu_to_cpu", self.to_cpu, raising=False)
        monkeypatch.setattr(vectors_mod, "GPU_MIN", 1000)
        monkeypatch.setattr(vectors_mod, "_GPU_RESOURCES", [])

    def to_gpu(self, res, device, index, options=None):
        self.calls.append(("to_gpu", device, type(index).__name__, getattr(options, "useFloat16", None)))
        return index

    def to_cpu(self, index):
        self.calls.append(("to_cpu", type(index).__name__))
        return index


def test_with_a_gpu_large_indexes_are_trained_and_searched_there(pq_store, monkeypatch):
    # The same _build_ivf path serves both approximate kinds; 8-bit codes train in a moment.
    _, vecs, _ = pq_store
    cpu = VectorStore.build(PQ_DIM, pq_chunks(vecs), 12_000, exact_limit=1000)
    gpu = FakeGpu(monkeypatch)
    assert vectors_mod.gpu_count() == 1
    on_gpu = VectorStore.build(PQ_DIM, pq_chunks(vecs), 12_000, exact_limit=1000)
    assert gpu.calls[:2] == [("to_gpu", 0, "IndexIVFScalarQuantizer", True), ("to_cpu", "IndexIVFScalarQuantizer")]
    queries = unit(np.random.default_rng(9), 20, PQ_DIM)
    assert on_gpu.nprobe == cpu.nprobe
    np.testing.assert_array_equal(on_gpu.search(queries, 50)[1], cpu.search(queries, 50)[1])
    # A search with an id subset, or for more than 2,048 results, stays on the CPU.
    on_gpu._gpu = None
    on_gpu.search(queries, 5, subset=np.arange(1, 100))
    on_gpu.search(queries, 3000)
    assert on_gpu._gpu is None
    # After a change the GPU copy is made again before the next search.
    on_gpu.add(np.array([20_000]), vecs[:1])
    on_gpu.search(queries, 5)
    assert gpu.calls[-1][0] == "to_gpu"


def test_without_faiss_gpu_nothing_is_tried(monkeypatch):
    monkeypatch.delattr(faiss, "index_cpu_to_gpu", raising=False)
    assert vectors_mod.gpu_count() == 0
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", lambda *a: 1 / 0, raising=False)
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: (_ for _ in ()).throw(RuntimeError("no CUDA driver")))
    assert vectors_mod.gpu_count() == 0  # a broken CUDA set-up is "no GPU", not a crash


@pytest.mark.skipif(vectors_mod.gpu_count() == 0,
                    reason="NO GPU: the installed FAISS sees no GPU (faiss-cpu, or no CUDA device); "
                           "the real faiss-gpu path is untested here (install clipdesk[gpu] on a CUDA machine)")
def test_real_gpu_gives_the_cpu_results(monkeypatch):
    vecs, rng = clustered(20_000, 64, seed=2)
    chunks = [(np.arange(s + 1, s + 5001), vecs[s:s + 5000]) for s in range(0, 20_000, 5000)]
    monkeypatch.setattr(vectors_mod, "GPU_MIN", 1000)
    store = VectorStore.build(64, chunks, 20_000, exact_limit=1000, compress_limit=5000)
    assert store._gpu is not None
    queries = unit(rng, 50, 64)
    truth = exact_top(queries, vecs)
    _, cand = store.search(queries, store.shortlist(10))
    assert np.mean([len(set(t) & set(c)) / 10 for t, c in zip(truth.tolist(), cand.tolist())]) >= 0.9


def test_float16_conversion_is_exact_for_every_float16():
    """as_float32's integer-pass conversion against numpy's cast, on all 65,536 float16 bit
    patterns (subnormals, ±0, infinities and NaNs included), contiguous and strided, into a
    buffer it reuses."""
    every = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(128, 512)
    want = every.astype(np.float32)
    buf = vecfile.as_float32(every)
    got = buf[:128]
    finite = np.isfinite(want)
    assert np.array_equal(got.view(np.uint32)[finite], want.view(np.uint32)[finite])  # bit for bit, -0.0 too
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(got[np.isinf(want)], want[np.isinf(want)])
    again = vecfile.as_float32(every[::3], buf)  # a strided view, into the same buffer
    assert again is buf and np.array_equal(again[:43], want[::3], equal_nan=True)
    assert np.array_equal(vecfile.as_float32(every[:, 1::2])[:128], want[:, 1::2], equal_nan=True)
