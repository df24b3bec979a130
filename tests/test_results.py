"""Whole-library answers as columns (clipdesk/results.py): rows made on demand agree with the
columns, counting and filtering work on the columns, bad columns are refused."""
from __future__ import annotations

import numpy as np
import pytest

from clipdesk.results import Classification, Classifications


def answers() -> Classifications:
    names = ["beach", "snow", "city"]
    ids = np.array([3, 5, 8, 9, 12, 20])
    paths = [f"/p/{i}.jpg" for i in ids]
    label = np.array([0, -1, 2, 0, 0, 1], np.int32)
    prob = np.array([0.9, 0.3, 0.6, 0.5, 0.9, 0.7], np.float32)
    return Classifications(names, ids, paths, label, prob)


def test_rows_read_the_columns():
    a = answers()
    assert len(a) == 6 and bool(a)
    assert a[0] == Classification("/p/3.jpg", "beach", pytest.approx(0.9), 3)
    assert a[1].label is None and a[-1].label == "snow" and a[-1].id == 20
    assert list(a) == [a[i] for i in range(len(a))]  # iteration and indexing agree
    assert [r.as_dict()["label"] for r in a] == ["beach", None, "city", "beach", "beach", "snow"]
    with pytest.raises(IndexError):
        a[6]
    assert [r.id for r in a[1:3]] == [5, 8]


def test_counting_filtering_and_ordering_use_the_columns():
    a = answers()
    assert a.counts() == {"beach": 3, None: 1, "city": 1, "snow": 1}
    assert a.rows_with(["beach"]).tolist() == [0, 3, 4]
    assert a.rows_with([None, "city"]).tolist() == [1, 2]
    assert a.rows_with(["not a category"]).tolist() == []
    assert a.rows_with(["beach"], max_probability=0.6).tolist() == [3]
    assert a.rows_with(["beach", "snow"], min_probability=0.7).tolist() == [0, 4, 5]
    beach = a.rows_with(["beach"])
    assert a.by_probability(beach).tolist() == [3, 0, 4]  # ties keep catalog order
    assert a.by_probability(beach, descending=True).tolist() == [0, 4, 3]
    picked = a.take([4, 1])
    assert [(r.id, r.label) for r in picked] == [(12, "beach"), (5, None)]
    assert picked.counts() == {"beach": 1, None: 1}


def test_an_empty_answer_and_bad_columns():
    empty = Classifications.concatenate(["x"], [])
    assert len(empty) == 0 and not empty and list(empty) == [] and empty.counts() == {}
    with pytest.raises(ValueError, match="lengths"):
        Classifications(["x"], np.array([1, 2]), ["/a"], np.array([0, 0]), np.array([0.5, 0.5]))
    with pytest.raises(ValueError, match="out of range"):
        Classifications(["x"], np.array([1]), ["/a"], np.array([1]), np.array([0.5]))


def test_chunks_concatenate_in_order():
    parts = [(np.array([1, 2]), ["/a", "/b"], np.array([0, 1], np.int32), np.array([0.5, 0.6], np.float32)),
             (np.array([7]), ["/c"], np.array([-1], np.int32), np.array([0.2], np.float32))]
    a = Classifications.concatenate(["x", "y"], parts)
    assert [(r.id, r.path, r.label) for r in a] == [(1, "/a", "x"), (2, "/b", "y"), (7, "/c", None)]


def test_whole_library_answers_match_the_probe_row_by_row(library, photos, monkeypatch):
    """predict, classify and suggest over the library (worker threads, slices) against the probe
    and the zero-shot rule applied to every catalog vector directly; one worker gives the same."""
    from clipdesk import library as library_mod
    from clipdesk.teach.probe import uncertainty
    from clipdesk.zeroshot import class_weights, zeroshot_probabilities

    library.index([str(photos)])
    reds = [str(p) for p in sorted(photos.rglob("*.jpg"))[:2]]
    library.add_to_label("red", reds)
    library.add_to_label("other", [str(sorted(photos.rglob("*.jpg"))[-1])])
    library.train("p")
    monkeypatch.setattr(library_mod, "_CACHE_ROWS", 3)  # several slices and workers on 8 photos
    got = library.predict("p")
    ids = got.ids
    vecs = library.catalog.vectors_for(ids.tolist())
    probs = library.load_probe("p").probabilities(vecs)
    assert [r.path for r in got] == [library.catalog.images([int(i)])[int(i)].path for i in ids]
    assert got.label_index.tolist() == probs.argmax(1).tolist()
    assert np.allclose(got.probability, probs.max(1), atol=1e-6)
    names = ["red", "green", "blue"]
    zs = zeroshot_probabilities(vecs, class_weights(library.text_encoder.encode_texts, names),
                                library.text_encoder.logit_scale)
    classified = library.classify(names)
    assert classified.label_index.tolist() == zs.argmax(1).tolist()
    u = uncertainty(probs)
    labelled = set(library.catalog.labels()["red"]) | set(library.catalog.labels()["other"])
    open_rows = [r for r in np.argsort(-u, kind="stable").tolist() if int(ids[r]) not in labelled]
    assert [s.id for s in library.suggest("p", k=3)] == [int(ids[r]) for r in open_rows[:3]]
    monkeypatch.setattr(library_mod, "_PASS_WORKERS", 1)
    one = library.predict("p")
    assert list(one) == list(got)


def test_a_cancelled_pass_stops_and_leaves_no_thread_or_blas_setting_behind(library, photos, monkeypatch):
    import threading

    from threadpoolctl import threadpool_info

    from clipdesk.indexer import vecfile
    from clipdesk.indexer.pipeline import CancelToken, Cancelled

    monkeypatch.setattr(vecfile, "BLOCK", 2)  # the vector file in blocks of 2 photos: 4 blocks
    library.index([str(photos)])
    library.add_to_label("red", [str(sorted(photos.rglob("*.jpg"))[0])])
    library.add_to_label("other", [str(sorted(photos.rglob("*.jpg"))[-1])])
    library.train("p")
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    token, seen = CancelToken(), []

    def progress(p):
        seen.append(p.done)
        token.cancel()  # after the first block

    with pytest.raises(Cancelled):
        library.predict("p", progress=progress, cancel=token)
    assert seen == [2]
    assert not [t for t in threading.enumerate() if t.name.startswith("clipdesk-predict")]
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == blas
    assert len(library.predict("p")) == 8  # and the next pass runs whole


def test_passes_running_at_once_give_the_same_answers(library, photos, monkeypatch):
    """The app's Sort and Teach may run their passes at the same time: answers as when alone,
    and BLAS's thread count restored after the last one."""
    import threading

    from threadpoolctl import threadpool_info

    from clipdesk import library as library_mod

    library.index([str(photos)])
    library.add_to_label("red", [str(sorted(photos.rglob("*.jpg"))[0])])
    library.add_to_label("other", [str(sorted(photos.rglob("*.jpg"))[-1])])
    library.train("p")
    monkeypatch.setattr(library_mod, "_CACHE_ROWS", 1)  # a slice per photo: the passes interleave
    alone = (list(library.predict("p")), list(library.classify(["red", "green"])))
    blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    got, errors = [], []

    def run(kind: str) -> None:
        try:
            for _ in range(5):
                got.append((kind, list(library.predict("p")) if kind == "predict"
                            else list(library.classify(["red", "green"]))))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in ("predict", "classify", "predict")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and len(got) == 15
    assert all(rows == (alone[0] if kind == "predict" else alone[1]) for kind, rows in got)
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == blas


def test_rows_for_an_export():
    a = answers()
    assert a.as_rows() == [(r.path, r.label or "", pytest.approx(r.probability)) for r in a]
    assert [r[1] for r in a.as_rows(blank=("beach",))] == ["", "", "city", "", "", "snow"]


def test_labels_of_catalog_ids_in_sorted_and_unsorted_columns():
    a = answers()
    ids = a.ids.tolist()
    want = [a[i].label for i in range(len(a))]
    assert a.labels_of(ids) == want
    assert a.labels_of([max(ids) + 1, min(ids) - 1]) == [None, None]  # not among the rows
    shuffled = a.take(np.random.default_rng(0).permutation(len(a)))
    assert shuffled.labels_of(ids) == want and shuffled.labels_of(ids[::-1]) == want[::-1]
    empty = Classifications(["x"], np.zeros(0, np.int64), [], np.zeros(0, np.int32), np.zeros(0, np.float32))
    assert empty.labels_of([1, 2]) == [None, None]
