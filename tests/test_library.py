"""Core behaviour with the tiny model: incremental indexing, search, labels, zero-shot, status."""
import os
import shutil

import numpy as np
import pytest

from clipdesk.errors import ModelMismatchError, QueryError
from clipdesk.library import Library
from conftest import make_photo


def counts(report):
    return {k: v for k, v in report.as_dict().items() if k != "seconds"}


def test_incremental_counts_add_delete_rename(library, photos):
    first = library.index([str(photos)])
    assert counts(first) == dict(added=8, updated=0, moved=0, removed=0, unchanged=0, failed=0)
    assert library.catalog.counts() == (8, 0)

    make_photo(photos / "home" / "new_a.jpg", (10, 100, 200), pattern=11)
    make_photo(photos / "home" / "new_b.jpg", (200, 100, 10), pattern=12)
    for name in ("img_4.jpg", "img_5.jpg", "img_6.jpg"):
        os.unlink(photos / "home" / name)
    os.rename(photos / "trip 2019" / "img_0.jpg", photos / "trip 2019" / "renamed.jpg")
    library.add_to_label("red", [])  # an empty label must survive a rescan
    second = library.index()
    assert counts(second) == dict(added=2, updated=0, moved=1, removed=3, unchanged=4, failed=0)
    assert library.catalog.counts() == (7, 0)
    assert len(library.vectors) == 7


def test_moved_file_keeps_its_row_and_labels(library, photos):
    library.index([str(photos)])
    src = photos / "trip 2019" / "img_1.jpg"
    library.add_to_label("green", [str(src)])
    old_id = library.catalog.id_for_path(str(src))
    dst = photos / "home" / "moved.jpg"
    shutil.move(src, dst)
    report = library.index()
    assert report.moved == 1 and report.added == 0
    assert library.catalog.id_for_path(str(dst)) == old_id
    assert library.labels()["green"] == [str(dst)]


def test_changed_file_is_reembedded(library, photos):
    library.index([str(photos)])
    target = photos / "home" / "img_4.jpg"
    before = library.embed_image_file(str(target))
    make_photo(target, (0, 0, 0), pattern=40)
    os.utime(target, (1, 1))  # a different mtime, whatever the clock resolution
    report = library.index()
    assert (report.updated, report.unchanged) == (1, 7)
    after = library.embed_image_file(str(target))
    assert not np.allclose(before, after)
    assert len(library.vectors) == 8


def test_similar_ranks_an_identical_copy_first(library, photos):
    src = photos / "trip 2019" / "img_2.jpg"
    shutil.copy(src, photos / "home" / "copy of img_2.jpg")
    library.index([str(photos)])
    results = library.similar(str(src), k=3)
    assert results[0].path == str(photos / "home" / "copy of img_2.jpg")
    assert results[0].score == pytest.approx(1.0, abs=1e-2)
    assert str(src) not in [r.path for r in results]  # the query image itself is excluded
    assert [r.score for r in results] == sorted([r.score for r in results], reverse=True)


def test_search_by_outside_image_equals_its_in_library_twin(library, photos, tmp_path):
    library.index([str(photos)])
    outside = tmp_path / "outside.jpg"
    shutil.copy(photos / "home" / "img_5.jpg", outside)
    res = library.search(f'"{outside}"', k=1)
    assert res[0].path == str(photos / "home" / "img_5.jpg")


def test_text_search_filters_and_ordering(library, photos):
    library.index([str(photos)])
    all_hits = library.search("a red car", k=20)
    assert len(all_hits) == 8
    assert [r.score for r in all_hits] == sorted((r.score for r in all_hits), reverse=True)
    in_home = library.search("a red car", k=20, folder=str(photos / "home"))
    assert {r.path for r in in_home} == {str(p) for p in (photos / "home").iterdir()}
    floor = all_hits[3].score
    assert len(library.search("a red car", k=20, min_score=floor)) >= 4
    assert all(r.score >= floor for r in library.search("a red car", k=20, min_score=floor))
    # Dates: file times when there is no EXIF date.
    for i, p in enumerate(sorted((photos / "home").iterdir())):
        os.utime(p, (1_600_000_000 + i * 86400,) * 2)
    library.index()
    by_date = library.search("anything", k=20, folder=str(photos / "home"), sort="date")
    assert [r.path for r in by_date] == sorted(str(p) for p in (photos / "home").iterdir())
    window = library.search("anything", k=20, after=1_600_000_000 + 86400, before=1_600_000_000 + 3 * 86400)
    assert len(window) == 2


def test_zero_shot_probabilities_sum_to_one_and_threshold(library, photos):
    from clipdesk.zeroshot import assign, class_weights, zeroshot_probabilities

    library.index([str(photos)])
    out = library.classify(["red", "green", "blue"])
    assert len(out) == 8 and {o.label for o in out} <= {"red", "green", "blue"}
    ids, vecs = next(library.catalog.iter_vectors())
    W = class_weights(library.encoder.encode_texts, ["red", "green", "blue"])
    probs = zeroshot_probabilities(vecs, W, library.encoder.logit_scale)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    none = library.classify(["red", "green", "blue"], threshold=0.999)
    assert all(o.label is None for o in none)
    assert [a.index for a in assign(np.array([[0.6, 0.4], [0.2, 0.8]]), threshold=0.7)] == [-1, 1]


def test_broken_files_are_recorded_and_skipped(library, photos):
    (photos / "home" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "home" / "empty.png").write_bytes(b"")
    report = library.index([str(photos)])
    assert (report.added, report.failed) == (8, 2)
    failures = dict(library.catalog.failures())
    assert "empty" in failures[str(photos / "home" / "empty.png")]
    assert library.index().unchanged == 10  # not retried while unchanged


def test_library_remembers_model_and_refuses_another(tmp_path, photos):
    folder = str(tmp_path / "lib")
    with Library(folder, model="test-tiny") as lib:
        lib.index([str(photos)])
    with Library(folder) as lib:  # no --model: the library's own
        assert lib.model_name == "test-tiny"
        assert len(lib.search("anything", k=3)) == 3
    with Library(folder, model="ViT-B-32-256/random") as lib:
        with pytest.raises(ModelMismatchError, match="test-tiny"):
            lib.search("anything")


def test_vectors_file_is_caught_up_and_rebuilt(tmp_path, photos):
    folder = tmp_path / "lib"
    with Library(str(folder), model="test-tiny") as lib:
        lib.index([str(photos)])
        expected = [r.path for r in lib.search("x", k=8)]
    (folder / "vectors.faiss").write_bytes(b"garbage")
    with Library(str(folder)) as lib:
        assert [r.path for r in lib.search("x", k=8)] == expected


def test_query_errors(library, photos):
    library.index([str(photos)])
    with pytest.raises(QueryError):
        library.similar(str(photos / "nope.jpg"))
    with pytest.raises(QueryError):
        library.search("x", sort="size")


def test_status(library, photos):
    library.index([str(photos)])
    st = library.status()
    assert st["images"] == 8 and st["failed"] == 0 and st["model"] == "test-tiny" and st["dim"] == 64
    assert st["folders"] == [str(photos)]


def test_text_search_loads_only_the_text_graph_and_the_image_graph_when_images_need_it(tmp_path, photos):
    folder = str(tmp_path / "lib")
    with Library(folder, model="test-tiny") as lib:
        lib.index([str(photos)])
    outside = tmp_path / "outside.jpg"
    make_photo(outside, (90, 90, 10), pattern=5)
    with Library(folder) as lib:
        assert len(lib.search("a dog", k=3)) == 3
        assert lib._encoder._visual is None
        assert len(lib.similar(str(outside), k=3)) == 3
        assert lib._encoder._visual is not None


def test_approximate_index_search_is_reranked_exactly(tmp_path):
    """Above the exact-search limit the library uses IVF-SQ8; results must still come back
    complete, best first, scored with the catalog's exact vectors."""
    from clipdesk.indexer.catalog import Catalog, ImageRecord
    from clipdesk.indexer.vectors import VectorStore, catch_up

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 16)).astype(np.float32)
    X = centres[rng.integers(0, 40, 6000)] + 0.3 * rng.standard_normal((6000, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    folder = tmp_path / "lib"
    cat = Catalog.open(str(folder))
    cat.set_meta("model", "test-tiny")
    cat.set_meta("dim", "16")
    cat.write_batch([ImageRecord(f"/p/{i}.jpg", 1, 1, "h", 1, 1, float(i), X[i]) for i in range(len(X))])
    cat.close()
    with Library(str(folder)) as lib:
        store = VectorStore.build(16, lib.catalog.iter_vectors(), 6000, exact_limit=1000)
        catch_up(store, lib.catalog)
        assert store.is_approximate
        lib._store = store
        stored = lib.catalog.vectors_for(list(range(1, 6001)))  # float16 round trip, as searched
        for q in X[:20]:
            res = lib.search(q, k=10)
            exact = np.sort(stored @ q)[::-1][:10]
            assert len(res) == 10
            np.testing.assert_allclose([r.score for r in res], exact, atol=2e-3)
