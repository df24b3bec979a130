"""Evaluation commands: mechanics on synthetic data, protocol on the shared proxy file."""
import json
import subprocess
import sys

import numpy as np
import pytest

from clipdesk.evaluation import eval_fewshot, fewshot_splits, logistic_regression
from clipdesk.zeroshot import normalise


def synthetic_npz(path, classes=5, per=12, dim=24, seed=0):
    rng = np.random.default_rng(seed)
    centres = normalise(rng.normal(size=(classes, dim)))
    y = np.repeat(np.arange(classes), per)
    X = normalise(centres[y] + 0.4 * rng.normal(size=(len(y), dim)))
    class_text = normalise(centres[:, None, :] + 0.6 * rng.normal(size=(classes, 3, dim)))
    np.savez(path, X=X.astype(np.float32), y=y, class_names=np.array([f"c{i}" for i in range(classes)]),
             templates=np.array(["a {}", "the {}", "{}"]), class_text=class_text.astype(np.float32))
    return path


def test_protocol_splits():
    y = np.array([0] * 3 + [1] * 10 + [2] * 6)
    keep, train, test = fewshot_splits(y, 3, K=4, seed=0)
    assert list(keep) == [1, 2]  # class 0 has fewer than K + 2 items
    assert len(train) == 8 and not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(np.where(y > 0)[0])


def test_logistic_regression_fits_separable_data():
    X = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
    W, b = logistic_regression(X, np.array([0, 0, 1, 1]), 2)
    assert ((X @ W.T + b).argmax(1) == [0, 0, 1, 1]).all()


def test_fewshot_eval_on_synthetic_file(tmp_path):
    res = eval_fewshot(str(synthetic_npz(tmp_path / "f.npz")), seeds=3)
    assert res["seeds"] == 3 and set(res["K"]) == {"1", "2", "4", "8"}
    for k, row in res["K"].items():
        assert set(row) == {"zeroshot", "logreg", "probe", "classes"} and row["classes"] == 5
        assert all(0 <= row[m] <= 1 for m in ("zeroshot", "logreg", "probe"))
    # more shots help the probe on well-separated data
    assert res["K"]["8"]["probe"] >= res["K"]["1"]["probe"]


@pytest.mark.shared_data
def test_fewshot_cli_reproduces_the_published_baselines(shared_data):
    out = subprocess.run([sys.executable, "-m", "clipdesk.cli", "eval", "fewshot", "--features",
                          str(shared_data / "fewshot-proxy.npz"), "--seeds", "50", "--json"],
                         capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    published = {"1": (0.751, 0.516), "2": (0.760, 0.615), "4": (0.803, 0.743), "8": (0.841, 0.840)}
    for k, (zs, lr) in published.items():
        assert res["K"][k]["zeroshot"] == pytest.approx(zs, abs=0.0015)
        assert res["K"][k]["logreg"] == pytest.approx(lr, abs=0.005)
    assert [res["K"][k]["classes"] for k in "1248"] == [26, 26, 19, 11]


@pytest.mark.shared_data
def test_zeroshot_and_retrieval_evals_on_shared_photos(tmp_path, shared_data):
    from clipdesk.evaluation import eval_retrieval, eval_zeroshot
    from clipdesk.library import Library

    with Library(str(tmp_path / "lib"), model="test-tiny") as lib:
        zs = eval_zeroshot(lib, str(shared_data / "photos" / "labelled"))
        assert (zs["images"], zs["classes"]) == (359, 14)
        assert 0 <= zs["top1"] <= zs["top5"] <= 1
        assert all(set(c) == {"true", "predicted", "count"} and c["true"] != c["predicted"]
                   for c in zs["most_confused"])
        ret = eval_retrieval(lib, str(shared_data / "photos" / "captioned" / "captions.jsonl"))
        assert ret["pairs"] == 453
        for side in ("text_to_image", "image_to_text"):
            r = ret[side]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
