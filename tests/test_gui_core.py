"""Core logic the app needs (no Qt): the relevance cut, the diverse sample, rejected examples,
browsing by date, searching by terms, folders left empty by a failed run, switching model."""
import numpy as np
import pytest

from clipdesk.relevance import describe_cut, relevance_cut
from clipdesk.sampling import farthest_point_sample
from clipdesk.teaching import NONE_CLASS, is_negative, negative_label, positive_of


def test_relevance_cut_keeps_the_scores_that_stand_out():
    rng = np.random.default_rng(0)
    background = rng.normal(0.20, 0.01, 336)
    matches = rng.normal(0.32, 0.01, 23)
    scores = np.concatenate([background, matches])
    assert relevance_cut(scores) == 23
    # a query that matches nothing: no score stands out
    assert relevance_cut(rng.normal(0.2, 0.01, 359)) <= 3
    # too few scores to judge: all kept; empty: none
    assert relevance_cut([0.3, 0.1, 0.2]) == 3
    assert relevance_cut([]) == 0
    # identical scores (spread 0) do not divide by zero and keep nothing special
    assert relevance_cut([0.25] * 50) == 0


def test_relevance_cut_moves_to_a_clear_gap_below_the_z_line():
    top = [0.300, 0.299, 0.298, 0.297]  # one tight group far above the rest
    scores = np.r_[np.linspace(0.200, 0.210, 300), top]
    # a z line that cuts the group after its second photo: the cut moves down to the gap
    med = np.median(scores)
    spread = 1.4826 * np.median(np.abs(scores - med))
    z = (0.2985 - med) / spread
    assert np.count_nonzero((scores - med) / spread >= z) == 2
    assert relevance_cut(scores, z=z) == 4
    assert relevance_cut(scores) == 4


def test_describe_cut():
    assert describe_cut(23, 359) == "23 good matches · show all 359"
    assert describe_cut(359, 359) == "359 matches"
    assert describe_cut(1, 1) == "1 match"
    assert describe_cut(0, 1200) == "No clear match · show all 1,200"


def test_farthest_point_sample_covers_every_cluster():
    rng = np.random.default_rng(1)
    centres = np.eye(8, 32, dtype=np.float32)
    sizes = [300, 100, 50, 20, 10, 5, 3, 2]  # very unequal: a random sample misses the small ones
    X = np.vstack([c + 0.05 * rng.normal(size=(n, 32)) for c, n in zip(centres, sizes)]).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    cluster = np.repeat(np.arange(8), sizes)
    picked = farthest_point_sample(X, 8, seed=3)
    assert len(set(picked)) == 8 and set(cluster[picked]) == set(range(8))
    assert farthest_point_sample(X, 8, seed=3) == picked  # deterministic
    assert farthest_point_sample(X[:3], 10) and len(farthest_point_sample(X[:3], 10)) == 3
    assert farthest_point_sample(X, 0) == []


def test_negative_label_names():
    n = negative_label("Anna")
    assert is_negative(n) and positive_of(n) == "Anna" and not is_negative("Anna")
    assert NONE_CLASS != n


@pytest.fixture
def indexed(library, photos):
    library.index([str(photos)])
    return library


def test_photos_rejected_from_every_bucket_form_a_none_class_in_a_multiclass_probe(indexed, photos):
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    lib = indexed
    lib.add_to_label("A", paths[:2])
    lib.add_to_label("B", paths[2:4])
    lib.add_to_label(negative_label("A"), paths[4:7])
    lib.add_to_label(negative_label("B"), paths[4:6])
    r = lib.train("teach", ["A", "B"], negatives=[negative_label("A"), negative_label("B")])
    assert r.labels == ["A", "B"]
    probe = lib.load_probe("teach")
    assert probe.classes == ["A", "B", NONE_CLASS]
    preds = {p.path: p.label for p in lib.predict("teach")}
    assert set(preds.values()) <= {"A", "B", NONE_CLASS}
    assert preds[paths[4]] == NONE_CLASS and preds[paths[5]] == NONE_CLASS  # its own examples
    assert preds[paths[6]] == "B"  # rejected from A only: "not A" (a negative), not "none of these"
    # rejected from one bucket only: a negative of it, no "none" class (issue 26)
    lib.train("one-not", ["A", "B"], negatives=[negative_label("A")])
    assert lib.load_probe("one-not").classes == ["A", "B"]
    # without negatives the probe is the plain two-class one
    lib.train("plain", ["A", "B"])
    assert lib.load_probe("plain").classes == ["A", "B"]


def test_suggest_before_training_is_a_diverse_unlabelled_sample(indexed, photos):
    lib = indexed
    paths = sorted(str(p) for p in photos.rglob("*.jpg"))
    lib.add_to_label("A", paths[:1])
    s = lib.suggest("never-trained", k=5)
    assert len(s) == 5 and len({x.path for x in s}) == 5 and paths[0] not in {x.path for x in s}
    assert all(x.label is None for x in s)
    assert [x.path for x in lib.suggest("never-trained", k=5)] == [x.path for x in s]
    lib.add_to_label("B", paths[1:3])
    lib.train("t", ["A", "B"])
    after = lib.suggest("t", k=3)
    assert len(after) == 3 and not {x.path for x in after} & set(paths[:3])


def test_browse_newest_first_and_bounded(indexed):
    rows, total = indexed.browse(limit=5)
    assert total == 8 and len(rows) == 5
    all_rows, _ = indexed.browse()
    taken = [r.taken for r in all_rows if r.taken is not None]
    assert taken == sorted(taken, reverse=True)
    assert len({r.path for r in all_rows}) == 8


def test_search_terms_excludes_the_example_image(indexed, photos):
    from clipdesk.query import Term

    p = sorted(str(x) for x in photos.rglob("*.jpg"))[0]
    res = indexed.search_terms([Term(1.0, text="red"), Term(0.5, image=p)], k=8)
    assert p not in {r.path for r in res} and len(res) == 7
    with pytest.raises(Exception, match="empty"):
        indexed.search_terms([], k=3)


def test_empty_folders_and_use_model(library, photos, tmp_path):
    from clipdesk.errors import ModelMismatchError

    empty = tmp_path / "registered-but-never-scanned"
    empty.mkdir()
    library.catalog.add_folder(str(empty))
    assert library.empty_folders() == [str(empty)]
    library.use_model("test-tiny")  # no vectors yet: any model may be chosen
    library.index([str(photos)])
    assert str(photos) not in library.empty_folders()
    with pytest.raises(ModelMismatchError, match="re-embed"):
        library.use_model("ViT-B-32-256/datacomp_s34b_b86k")
