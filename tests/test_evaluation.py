"""Evaluation commands: mechanics on synthetic data, protocol on the shared proxy file."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipdesk.errors import ClipdeskError
from clipdesk.teach.evaluation import (
    class_half,
    ece_floor,
    eval_fewshot,
    expected_calibration_error,
    fewshot_splits,
    load_fewshot,
    logistic_regression,
    reliability,
    targets,
)
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
    res = eval_fewshot(str(synthetic_npz(tmp_path / "f.npz")), seeds=3, corrections=4, negatives=3)
    # 12 items per class: K = 16 and 32 have no class with K + 2 items and are left out
    assert res["seeds"] == 3 and list(res["K"]) == ["1", "2", "4", "8"]
    for k, row in res["K"].items():
        assert row["classes"] == 5
        assert all(0 <= row[m] <= 1 for m in ("zeroshot", "logreg", "probe"))
        assert all(0 <= row["ece"][m] <= 1 for m in ("probe", "logreg", "floor"))
        assert 1 / row["classes"] <= row["confidence"] <= 1
        c = row["corrections"]
        assert all(0 <= c[m] <= 1 for m in ("before", "after", "random")) and 0 <= c["corrected"] <= 4
        if "negatives" in row:  # a seed whose pool holds no false positive has nothing to give
            n = row["negatives"]
            assert 1 <= n["seeds"] <= 3 and 0 < n["given"] <= 3
            for m in ("before", "after", "random", "none_class"):
                assert 0 <= n[m]["accuracy"] <= 1 and n[m]["false_pos"] >= 0 and n[m]["true_pos"] >= 0
        assert row["target"] == pytest.approx(targets(int(k), row["zeroshot"], row["logreg"]), abs=1e-4)
        # every test item of every seed sits in one band of the reliability table: 5 classes of
        # 12 items, K of each for training, the rest tested
        bands = row["reliability"]
        assert sum(b["n"] for b in bands) == 3 * 5 * (12 - int(k))
        assert sum(b["n"] * b["accuracy"] for b in bands if b["n"]) == pytest.approx(3 * 5 * (12 - int(k)) * row["probe"], abs=0.02)
        assert all(b["band"][0] <= b["confidence"] <= b["band"][1] for b in bands if b["n"])
        assert all(0 <= row["cv_accuracy"][m] <= 1 for m in ("reported", "balanced"))
        # every class has the same number of test items here, so both accuracies agree
        assert row["cv_accuracy"]["balanced"] == pytest.approx(row["probe"], abs=1e-3)
        assert row["meets_target"] == (row["probe"] >= row["target"])
    # more shots help the probe on well-separated data
    assert res["K"]["8"]["probe"] >= res["K"]["1"]["probe"]


def test_targets_follow_the_issue():
    assert targets(1, 0.7, 0.5) == pytest.approx(0.695) and targets(2, 0.7, 0.9) == pytest.approx(0.695)
    assert targets(4, 0.7, 0.9) == pytest.approx(0.73) and targets(8, 0.7, 0.9) == pytest.approx(0.74)
    assert targets(16, 0.7, 0.9) == pytest.approx(0.91) and targets(32, 0.8, 0.6) == pytest.approx(0.81)


def test_expected_calibration_error():
    y = np.zeros(10, int)
    sure_and_right = np.tile([1.0, 0.0], (10, 1))
    assert expected_calibration_error(sure_and_right, y) == pytest.approx(0.0)
    # 0.8 confident, right 6 times in 10: ECE 0.2; half at 0.6 (all right), half at 0.9 (all wrong)
    p = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(p, np.array([0] * 6 + [1] * 4)) == pytest.approx(0.2)
    p = np.array([[0.6, 0.4]] * 5 + [[0.9, 0.1]] * 5)
    assert expected_calibration_error(p, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.5 * 0.4 + 0.5 * 0.9)


def test_ece_floor_is_what_perfect_calibration_shows_on_so_many_items():
    # certain probabilities: perfectly calibrated items are all right, so nothing is left over
    assert ece_floor(np.tile([1.0, 0.0], (50, 1))) == 0.0
    # one bin at 0.7: the floor is E|mean of n Bernoulli(0.7) − 0.7| ≈ sqrt(0.21·2/(π·n))
    for n in (100, 1600):
        expected = np.sqrt(0.21 * 2 / (np.pi * n))
        assert ece_floor(np.tile([0.7, 0.3], (n, 1)), draws=400) == pytest.approx(expected, rel=0.15)
    # it shrinks as items grow, and probabilities that are right as often as they say sit near it
    rng = np.random.default_rng(3)
    conf = rng.uniform(0.5, 1.0, 3000)
    p = np.stack([conf, 1 - conf], 1)
    honest = np.where(rng.random(3000) < conf, 0, 1)
    assert expected_calibration_error(p, honest) < 2 * ece_floor(p)
    overconfident = np.where(rng.random(3000) < conf - 0.2, 0, 1)
    assert expected_calibration_error(p, overconfident) > 5 * ece_floor(p)


def test_reliability_table_counts_each_item_in_the_band_it_was_shown_at():
    conf = np.array([0.3, 0.55, 0.59, 0.6, 0.85, 0.85, 0.85, 0.85, 0.95, 1.0])
    right = np.array([0, 1, 0, 1, 1, 1, 1, 0, 1, 1], bool)
    bands = {tuple(b["band"]): b for b in reliability(conf, right)}
    assert [b["n"] for b in bands.values()] == [1, 2, 1, 0, 4, 2]
    assert bands[(0.5, 0.6)]["accuracy"] == 0.5 and bands[(0.5, 0.6)]["confidence"] == pytest.approx(0.57)
    assert bands[(0.6, 0.7)]["accuracy"] == 1.0  # 0.6 opens its band
    assert bands[(0.7, 0.8)]["accuracy"] is None and bands[(0.7, 0.8)]["confidence"] is None
    assert bands[(0.8, 0.9)]["accuracy"] == 0.75
    assert bands[(0.9, 1.0)]["n"] == 2  # 1.0 closes the last band


def test_class_halves_split_every_file_the_same_way(tmp_path):
    dev, check = class_half(26, "dev"), class_half(26, "check")
    assert not set(dev) & set(check) and sorted(set(dev) | set(check)) == list(range(26))
    assert list(class_half(26, "dev")) == list(dev)  # fixed, not drawn anew
    X, y, names, text = load_fewshot(str(synthetic_npz(tmp_path / "f.npz")), "check")
    assert names == [f"c{i}" for i in class_half(5, "check")] and sorted(set(y)) == list(range(len(names)))
    assert text.shape == (len(names), X.shape[1])


def test_unreadable_or_inconsistent_fewshot_files_are_one_clear_error(tmp_path):
    good = dict(np.load(synthetic_npz(tmp_path / "f.npz")))
    cases = {"missing.npz": None,
             "no_y.npz": {k: v for k, v in good.items() if k != "y"},
             "short_y.npz": dict(good, y=good["y"][:-1]),
             "label.npz": dict(good, y=good["y"] + 5),
             "dims.npz": dict(good, class_text=good["class_text"][:, :, :-1]),
             "nan.npz": dict(good, X=np.full_like(good["X"], np.nan))}
    for name, arrays in cases.items():
        if arrays is not None:
            np.savez(tmp_path / name, **arrays)
        with pytest.raises(ClipdeskError, match="Cannot read few-shot features"):
            eval_fewshot(str(tmp_path / name), seeds=1)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ClipdeskError, match="Cannot read few-shot features"):
        eval_fewshot(str(tmp_path / "text.npz"), seeds=1)


def test_correcting_confident_mistakes_fixes_a_misleading_text(tmp_path):
    # the text of class 0 points at class 1's cluster: zero-shot and the 1-shot probe confidently
    # call class-0 items "1"; correcting those mistakes teaches the probe class 0
    path = synthetic_npz(tmp_path / "f.npz", classes=4, per=30)
    d = dict(np.load(path))
    d["class_text"][0] = d["class_text"][1]
    np.savez(path, **d)
    res = eval_fewshot(str(path), seeds=3, shots=(1,), corrections=10)
    c = res["K"]["1"]["corrections"]
    assert c["corrected"] > 5 and c["after"] > c["before"] + 0.05


def test_negatives_protocol_on_a_misleading_text(tmp_path):
    # class 0's text is class 1's: the 1-shot probe calls many class-1 items "0"; the k most
    # confident of them given as negatives of 0 must cut its false positives, more than k random
    # negatives do, without costing accuracy; as a text-less "none" class they cost accuracy
    path = synthetic_npz(tmp_path / "f.npz", classes=4, per=30)
    d = dict(np.load(path))
    d["class_text"][0] = d["class_text"][1]
    np.savez(path, **d)
    res = eval_fewshot(str(path), seeds=3, shots=(1,), corrections=0, negatives=10)
    assert res["negatives"] == 10 and "corrections" not in res["K"]["1"]
    n = res["K"]["1"]["negatives"]
    assert n["seeds"] == 3 and 5 < n["given"] <= 10
    assert set(n) >= {"before", "after", "random", "none_class", "gain_sd"}
    assert n["after"]["false_pos"] < 0.5 * n["before"]["false_pos"]
    assert n["after"]["false_pos"] < n["random"]["false_pos"]
    assert n["after"]["accuracy"] >= n["before"]["accuracy"]
    assert n["none_class"]["accuracy"] < n["after"]["accuracy"]


# The full protocol (benchmarks/bench_fewshot.py: 50 seeds, `make bench`; the table is in
# benchmarks/RESULTS.md): per set and K, the 50-seed means of zero-shot (zs), logistic regression
# (lr) and the probe's margin over what its target compares with (zs for K ≤ 8, max(zs, lr) from
# K = 16), each with its seed-to-seed standard deviation. The tests run SEEDS seeds (0..SEEDS-1):
# the mean of n seeds strays from the 50-seed mean by about sd/√n, so each check allows
# TOLERANCE_SE = 3 standard errors, 3·sd/√n. The probe must reach its target margin, or — where
# the full protocol itself falls short of the target (marked below) — not fall below what the
# full protocol measured: those shortfalls are reported in RESULTS.md, not hidden. The proxy's
# zero-shot and logistic-regression means reproduce the baselines published in
# shared/data/README.md (0.751/0.516, 0.760/0.615, 0.803/0.743, 0.841/0.840 at K = 1, 2, 4, 8).
SEEDS = 6
TOLERANCE_SE = 3.0
# Measured 2026-11-28, 05:22 UTC run (benchmarks/RESULTS.md, "Few-shot teaching"):
FULL = {
    "fewshot-proxy.npz": {
        1: {"classes": 26, "zs": 0.7509, "zs_sd": 0.0062, "lr": 0.5159, "lr_sd": 0.0418, "margin": 0.0128, "margin_sd": 0.012},
        2: {"classes": 26, "zs": 0.7603, "zs_sd": 0.0104, "lr": 0.6149, "lr_sd": 0.0352, "margin": 0.0262, "margin_sd": 0.0163},
        4: {"classes": 19, "zs": 0.8026, "zs_sd": 0.0143, "lr": 0.7442, "lr_sd": 0.0313, "margin": 0.0287, "margin_sd": 0.0207},  # short of the target
        8: {"classes": 11, "zs": 0.8415, "zs_sd": 0.0217, "lr": 0.8389, "lr_sd": 0.0355, "margin": 0.0404, "margin_sd": 0.0231},
        16: {"classes": 3, "zs": 0.9149, "zs_sd": 0.0265, "lr": 0.9051, "lr_sd": 0.0519, "margin": 0.024, "margin_sd": 0.054},
    },
    "debian-sections.npz": {
        1: {"classes": 25, "zs": 0.4354, "zs_sd": 0.0012, "lr": 0.2925, "lr_sd": 0.0283, "margin": 0.0343, "margin_sd": 0.0164},
        2: {"classes": 25, "zs": 0.4356, "zs_sd": 0.002, "lr": 0.3756, "lr_sd": 0.0275, "margin": 0.0592, "margin_sd": 0.0152},
        4: {"classes": 25, "zs": 0.4351, "zs_sd": 0.0027, "lr": 0.4506, "lr_sd": 0.0188, "margin": 0.0879, "margin_sd": 0.0143},
        8: {"classes": 25, "zs": 0.4363, "zs_sd": 0.0041, "lr": 0.5237, "lr_sd": 0.0138, "margin": 0.1312, "margin_sd": 0.0121},
        16: {"classes": 25, "zs": 0.4358, "zs_sd": 0.0069, "lr": 0.5837, "lr_sd": 0.0125, "margin": 0.0251, "margin_sd": 0.011},
        32: {"classes": 25, "zs": 0.434, "zs_sd": 0.011, "lr": 0.6263, "lr_sd": 0.014, "margin": 0.0236, "margin_sd": 0.0105},
    },
    "debian-tags.npz": {
        1: {"classes": 21, "zs": 0.519, "zs_sd": 0.0017, "lr": 0.326, "lr_sd": 0.0346, "margin": 0.0559, "margin_sd": 0.0131},
        2: {"classes": 21, "zs": 0.5185, "zs_sd": 0.0024, "lr": 0.4334, "lr_sd": 0.0324, "margin": 0.0806, "margin_sd": 0.0126},
        4: {"classes": 21, "zs": 0.5197, "zs_sd": 0.0036, "lr": 0.5381, "lr_sd": 0.0194, "margin": 0.1108, "margin_sd": 0.0102},
        8: {"classes": 21, "zs": 0.5173, "zs_sd": 0.0041, "lr": 0.6213, "lr_sd": 0.015, "margin": 0.1454, "margin_sd": 0.0097},
        16: {"classes": 21, "zs": 0.517, "zs_sd": 0.0068, "lr": 0.6799, "lr_sd": 0.0126, "margin": 0.016, "margin_sd": 0.0099},
        32: {"classes": 21, "zs": 0.5172, "zs_sd": 0.0112, "lr": 0.7259, "lr_sd": 0.0165, "margin": 0.0127, "margin_sd": 0.008},
    },
}


def _margin(row: dict, K: int) -> float:
    return row["probe"] - (row["zeroshot"] if K <= 8 else max(row["zeroshot"], row["logreg"]))


def _target_margin(K: int) -> float:
    return {1: -0.005, 2: -0.005, 4: 0.03, 8: 0.04}.get(K, 0.01)


def _check_against_full_protocol(res: dict, full: dict) -> None:
    assert [int(k) for k in res["K"]] == list(full)
    for K, f in full.items():
        row = res["K"][str(K)]
        se = TOLERANCE_SE / np.sqrt(res["seeds"])
        assert row["classes"] == f["classes"]
        assert row["zeroshot"] == pytest.approx(f["zs"], abs=se * f["zs_sd"] + 1e-4), K
        assert row["logreg"] == pytest.approx(f["lr"], abs=se * f["lr_sd"] + 1e-4), K
        need = min(_target_margin(K), f["margin"])
        assert _margin(row, K) >= need - se * f["margin_sd"], (K, _margin(row, K), need)
        _check_honest_confidence(row, K)


# Honest confidence (issue 14): in the full protocol (every set, half and K; bands of 300 items or
# more) the photos the probe showed at 50–60 %, …, 90–100 % were right at worst 2.3 points below
# the band's lower edge, and the cross-validated accuracy the app reports after Train was at
# most 0.012 above the probe's class-balanced accuracy on the test items (it is modest at K = 1,
# by up to 0.095). Checked here with room for a few seeds.
BAND_MIN_ITEMS = 300
BAND_SLACK = 0.05
CV_SLACK = 0.03


def _check_honest_confidence(row: dict, K: int) -> None:
    for b in row["reliability"]:
        if b["band"][0] >= 0.5 and b["n"] >= BAND_MIN_ITEMS:
            assert b["accuracy"] >= b["band"][0] - BAND_SLACK, (K, b)
    assert row["cv_accuracy"]["reported"] <= row["cv_accuracy"]["balanced"] + CV_SLACK, (K, row["cv_accuracy"])


def _eval_cli(path) -> dict:
    # one BLAS thread: these fits are small products that OpenBLAS threads slow down many times
    # over on two shared cores (see benchmarks/bench_fewshot.py)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "clipdesk.cli", "eval", "fewshot", "--features", str(path),
                          "--seeds", str(SEEDS), "--corrections", "0", "--negatives", "0", "--json"],
                         capture_output=True, text=True, timeout=100, env=env, check=False)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["seeds"] == SEEDS and res["file"] == Path(path).name
    return res


@pytest.mark.shared_data
def test_fewshot_cli_learning_curves_on_the_proxy_set(shared_data):
    _check_against_full_protocol(_eval_cli(shared_data / "fewshot-proxy.npz"), FULL["fewshot-proxy.npz"])


@pytest.mark.parametrize("name", ["debian-sections.npz", "debian-tags.npz"])
def test_fewshot_targets_on_the_sets_built_here(name):
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "data" / name
    _check_against_full_protocol(_eval_cli(path), FULL[name])


@pytest.mark.shared_data
def test_zeroshot_and_retrieval_evals_on_shared_photos(tmp_path, shared_data):
    from clipdesk.teach.evaluation import eval_retrieval, eval_zeroshot
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


@pytest.mark.shared_data
def test_one_rejection_does_not_take_over_the_library(shared_data):
    # issue 26 trap 3: 3 + 3 examples, one Reject of a wrong prediction, refit. Before the fix
    # (a text-less "none" class weighed like a whole bucket) this protocol measured, for 2
    # buckets: accuracy 0.974 → 0.578 and 34 % of the library put into "none" (20 seeds).
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "clipdesk.cli", "eval", "fewshot", "--features",
                          str(shared_data / "fewshot-proxy.npz"), "--seeds", "12", "--shots", "1", "--corrections", "0",
                          "--negatives", "0", "--rejection", "--json"],
                         capture_output=True, text=True, timeout=100, env=env, check=False)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["rejection"]["rows"]
    assert set(rows) == {"all", "2"} and rows["2"]["classes"] == 2 and rows["all"]["classes"] > 10
    for row in rows.values():
        assert row["seeds"] >= 3
        assert row["after"] >= row["before"] - 0.01, row
        assert row["none"] <= 0.01 and row["takeover"] <= 0.01, row
        assert row["changed"] <= 0.05, row
        assert row["meets_goal"]
