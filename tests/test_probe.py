"""Probes: learning, leave-one-out correctness, calibration, persistence (no pickle)."""
import numpy as np
import pytest

from clipdesk.probe import BACKGROUND, Probe, ProbeData, fit_probe, loo_scores, uncertainty
from clipdesk.zeroshot import normalise


def toy(n_per=6, dim=16, seed=0, text_quality=1.0, noise=0.25):
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(3, dim)))
    X = normalise(np.repeat(centres, n_per, 0) + noise * rng.normal(size=(3 * n_per, dim)))
    y = np.repeat(np.arange(3), n_per)
    text = normalise(text_quality * centres + (1 - text_quality) * rng.normal(size=centres.shape))
    return X.astype(np.float32), y, text.astype(np.float32), centres


def test_learns_a_separable_problem_even_with_useless_text():
    X, y, text, centres = toy(n_per=8, text_quality=0.0, noise=0.15)  # text vectors are pure noise
    rng = np.random.default_rng(1)
    test = normalise(np.repeat(centres, 20, 0) + 0.15 * rng.normal(size=(60, 16)))
    probe, fit = fit_probe(ProbeData(["a", "b", "c"], text, X, y))
    acc = np.mean(probe.scores(test).argmax(1) == np.repeat(np.arange(3), 20))
    assert acc > 0.95 and fit.cv_accuracy > 0.9


def test_zero_examples_of_a_class_means_zero_shot():
    X, y, text, _ = toy()
    keep = y != 2  # class c has text but no example
    probe, _ = fit_probe(ProbeData(["a", "b", "c"], text, X[keep], y[keep]))
    np.testing.assert_allclose(probe._prototypes[2], text[2], rtol=1e-5)


def test_loo_scores_match_brute_force():
    X, y, text, _ = toy(n_per=3)
    data = ProbeData(["a", "b", "c"], text, X, y)
    fast = loo_scores(data)
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        p = Probe(["a", "b", "c"], text, X[keep], y[keep])
        np.testing.assert_allclose(fast[i], p.scores(X[i:i + 1])[0], rtol=1e-4, atol=1e-5)


def test_probabilities_are_calibrated_distributions():
    X, y, text, _ = toy()
    probe, _ = fit_probe(ProbeData(["a", "b", "c"], text, X, y))
    p = probe.probabilities(X)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-5)
    assert 1.0 <= probe.temperature <= 300.0


def test_one_concept_against_background_is_balanced():
    X, y, text, _ = toy(n_per=30)
    pos = X[y == 0][:2]
    bg = X[y != 0]
    data = ProbeData(["mine", BACKGROUND], np.vstack([text[:1], np.zeros_like(text[:1])]),
                     np.vstack([pos, bg]), np.array([0, 0] + [1] * len(bg)))
    probe, fit = fit_probe(data)
    held_out = X[y == 0][2:]
    assert np.mean(probe.probabilities(held_out)[:, 0] > 0.5) > 0.9
    assert np.mean(probe.probabilities(bg)[:, 0] < 0.5) > 0.9


def test_saved_probe_reloads_to_the_same_predictions(tmp_path):
    X, y, text, _ = toy()
    probe, _ = fit_probe(ProbeData(["a", "b", "c"], text, X, y), meta={"labels": ["a", "b", "c"]})
    path = tmp_path / "p.npz"
    np.savez(path, **probe.to_arrays())
    with np.load(path, allow_pickle=False) as arrays:
        again = Probe.from_arrays(arrays)
    np.testing.assert_array_equal(again.probabilities(X), probe.probabilities(X))
    assert again.meta["labels"] == ["a", "b", "c"] and again.classes == ["a", "b", "c"]


def test_uncertainty_prefers_close_calls():
    u = uncertainty(np.array([[0.9, 0.1], [0.55, 0.45]]))
    assert u[1] > u[0]


def test_library_train_predict_suggest(library, photos):
    library.index([str(photos)])
    reds = [str(photos / "trip 2019" / "img_0.jpg")]
    greens = [str(photos / "trip 2019" / "img_1.jpg"), str(photos / "home" / "img_4.jpg")]
    library.add_to_label("red", reds)
    library.add_to_label("green", greens)
    r = library.train("colours")
    assert r.labels == ["green", "red"] and r.examples == 3
    assert 0.0 <= r.cv_accuracy <= 1.0 and 0.0 <= r.zeroshot_accuracy <= 1.0
    pred = {p.path: p for p in library.predict("colours")}
    assert len(pred) == 8
    assert all(0.0 <= p.probability <= 1.0 for p in pred.values())
    for path in reds:
        assert pred[path].label == "red"  # prototypes contain the examples themselves
    assert [p.name for p in library.probes()] == ["colours"]
    sugg = library.suggest("colours", k=3)
    assert len(sugg) == 3 and not {s.path for s in sugg} & set(reds + greens)
    single = library.train("just red", labels=["red"])
    assert single.labels == ["red"] and single.examples == 1
    concept = {p.path: p for p in library.predict("just red")}
    assert concept[reds[0]].label == "red"
    library.delete_probe("colours")
    assert [p.name for p in library.probes()] == ["just red"]


def test_training_without_labels_is_a_clear_error(library, photos):
    from clipdesk.errors import ProbeError

    library.index([str(photos)])
    with pytest.raises(ProbeError, match="No labelled"):
        library.train("p")
    with pytest.raises(ProbeError, match="No label named"):
        library.train("p", labels=["nope"])


@pytest.mark.parametrize("onehot_limit", [0, 1 << 20])  # the sorted-keys path and the one-hot path
def test_blockwise_scores_equal_the_plain_formula(monkeypatch, onehot_limit):
    from clipdesk import probe as probe_module

    monkeypatch.setattr(probe_module, "_ONEHOT_LIMIT", onehot_limit)
    rng = np.random.default_rng(3)
    keys = normalise(rng.normal(size=(50, 16))).astype(np.float32)
    labels = rng.integers(0, 4, 50)
    labels[labels == 2] = 1  # a class without examples
    probe = Probe(list("abcd"), normalise(rng.normal(size=(4, 16))), keys, labels)
    f = normalise(rng.normal(size=(37, 16))).astype(np.float32)
    onehot = np.eye(4, dtype=np.float32)[labels]
    counts = np.maximum(np.bincount(labels, minlength=4), 1)
    expected = f @ probe._prototypes.T + probe.alpha * (np.exp(-probe.beta * (1 - f @ keys.T)) @ onehot) / counts
    np.testing.assert_allclose(probe.scores(f, chunk=5), expected, rtol=1e-5, atol=1e-6)
