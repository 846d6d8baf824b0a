"""Evaluation metrics against tiny examples worked out by hand (the
arithmetic is in the comments), plus the bootstrap against a plain loop."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from xraynet.errors import EvaluationError
from xraynet.metrics import (binary_metrics_at, bootstrap_auc_ci, calibration, choose_threshold,
                             confusion_matrix, evaluate_predictions, proportion, roc_auc, roc_curve,
                             wilson_interval)

# Seven samples, three classes. y_pred is the argmax of PROBA below.
Y_TRUE = np.array([0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0, 2])
PROBA = np.array([[0.7, 0.2, 0.1],
                  [0.3, 0.6, 0.1],
                  [0.1, 0.8, 0.1],
                  [0.2, 0.5, 0.3],
                  [0.1, 0.1, 0.8],
                  [0.5, 0.1, 0.4],
                  [0.0, 0.3, 0.7]])
CLASSES = ["covid", "normal", "pneumonia"]


def test_confusion_matrix_by_hand():
    # true 0 -> predicted 0, 1; true 1 -> 1, 1; true 2 -> 2, 0, 2.
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, 3), [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    with pytest.raises(EvaluationError, match=r"y_pred out of range\. Expected labels in \[0, 3\)"):
        confusion_matrix(Y_TRUE, Y_PRED + 1, 3)


def test_wilson_interval_by_hand():
    # k=8, n=10, z=1.959964: p=0.8, z^2=3.841459, denominator 1 + z^2/n = 1.384146;
    # centre (0.8 + 0.192073) / 1.384146 = 0.716740;
    # half-width 1.959964 * sqrt(0.016 + 0.009604) / 1.384146 = 0.226578
    # -> (0.490162, 0.943318).
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=5e-5) and hi == pytest.approx(0.9433, abs=5e-5)
    # k=0: lower bound exactly 0, upper z^2/(n+z^2) = 3.841459/13.841459 = 0.277533.
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    assert proportion(0, 0) == {"value": None, "ci": [None, None], "k": 0, "n": 0}


def test_per_class_rates_by_hand():
    doc = evaluate_predictions(Y_TRUE, PROBA, CLASSES, n_boot=50)
    # covid one-vs-rest from the confusion matrix: TP=1, FN=1 (row 0), FP=1 (column 0,
    # from pneumonia), TN=7-3=4. Sensitivity 1/2, specificity 4/5, PPV 1/2, NPV 4/5.
    cov = doc["per_class"]["covid"]
    assert cov["support"] == 2
    assert (cov["sensitivity"]["k"], cov["sensitivity"]["n"], cov["sensitivity"]["value"]) == (1, 2, 0.5)
    assert (cov["specificity"]["k"], cov["specificity"]["n"], cov["specificity"]["value"]) == (4, 5, 0.8)
    assert (cov["ppv"]["k"], cov["ppv"]["n"]) == (1, 2) and (cov["npv"]["k"], cov["npv"]["n"]) == (4, 5)
    assert cov["sensitivity"]["ci"] == pytest.approx(list(wilson_interval(1, 2)))
    # normal: TP=2, FN=0, FP=1 (a covid predicted normal), TN=4. PPV 2/3, NPV 4/4.
    nor = doc["per_class"]["normal"]
    assert nor["sensitivity"]["value"] == 1.0 and nor["ppv"]["value"] == pytest.approx(2 / 3)
    assert nor["npv"]["value"] == 1.0 and nor["specificity"]["value"] == pytest.approx(4 / 5)
    # accuracy 5/7; balanced accuracy mean(1/2, 2/2, 2/3) = 13/18.
    assert (doc["accuracy"]["k"], doc["accuracy"]["n"]) == (5, 7)
    assert doc["balanced_accuracy"] == pytest.approx(13 / 18)
    assert doc["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert doc["n"] == 7 and doc["classes"] == CLASSES


def test_auc_by_hand_with_and_without_ties():
    # Ranks of [0.1, 0.4, 0.35, 0.8] are 1, 3, 2, 4; positives (0.35, 0.8) hold ranks 2 + 4 = 6;
    # U = 6 - 2*3/2 = 3; AUC = 3 / (2*2) = 0.75.
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    # Ties: [0.5, 0.5, 0.5, 0.9] share rank (1+2+3)/3 = 2 for the three 0.5s; positives
    # (0.5, 0.9) hold 2 + 4 = 6 -> U = 3 -> 0.75. Pairwise: (0.5 vs 0.5) counts 1/2 twice,
    # (0.9 vs 0.5) 1 twice: 3/4.
    assert roc_auc([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1]) == 0.75
    assert roc_auc([0.3, 0.3], [0, 1]) == 0.5
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    rng = np.random.default_rng(5)
    s = np.round(rng.random(200), 1)   # many ties
    y = rng.random(200) < 0.4
    pairwise = ((s[y][:, None] > s[~y][None]) + 0.5 * (s[y][:, None] == s[~y][None])).mean()
    assert roc_auc(s, y) == pytest.approx(pairwise, abs=1e-12)


def test_roc_curve_by_hand():
    # Descending thresholds 0.8, 0.4, 0.35, 0.1 flag: {0.8}=TP, +0.4=FP, +0.35=TP, +0.1=FP.
    fpr, tpr, thr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    # Tied scores are one step: both 0.5s flip together.
    fpr, tpr, _ = roc_curve([0.5, 0.5, 0.9], [0, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1])
    # Trapezoids under the points give the rank AUC (a tie is a diagonal step).
    fpr, tpr, _ = roc_curve([0.5, 0.5, 0.5, 0.9], [0, 1, 0, 1])
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(0.75)
    fpr, tpr, _ = roc_curve([0.2, 0.3], [1, 1])
    assert np.isnan(fpr).all() and np.allclose(tpr, [0, 0.5, 1])


def _scores(n=600, seed=1):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    return np.round(rng.random(n) + 0.4 * y, 2), y


def test_bootstrap_ci_matches_a_plain_loop_and_is_seeded():
    s, y = _scores(120)
    lo, hi = bootstrap_auc_ci(s, y, n_boot=200, seed=3)
    # The same resamples drawn one by one (positives block, then negatives block).
    rng = np.random.default_rng(3)
    ip = rng.integers(0, y.sum(), size=(200, y.sum()))
    ineg = rng.integers(0, (~y).sum(), size=(200, (~y).sum()))
    sp, sn = s[y], s[~y]
    loop = [roc_auc(np.r_[sp[a], sn[b]], np.r_[np.ones(a.size, bool), np.zeros(b.size, bool)])
            for a, b in zip(ip, ineg)]
    assert (lo, hi) == pytest.approx(tuple(np.percentile(loop, [2.5, 97.5])), abs=1e-12)
    auc = roc_auc(s, y)
    assert lo < auc < hi
    assert bootstrap_auc_ci(s, y, n_boot=200, seed=3) == (lo, hi)
    assert bootstrap_auc_ci(s, y, n_boot=200, seed=4) != (lo, hi)
    assert all(math.isnan(v) for v in bootstrap_auc_ci([0.1, 0.2], [0, 0]))


def test_bootstrap_is_vectorised():
    s, y = _scores(600)
    bootstrap_auc_ci(s, y, n_boot=10)   # warm-up
    t = time.perf_counter()
    lo, hi = bootstrap_auc_ci(s, y, n_boot=1000, seed=0)
    assert time.perf_counter() - t < 1.0   # about 0.05 s measured; a loop takes seconds
    assert lo < roc_auc(s, y) < hi


def test_ece_by_hand():
    # Top-class confidence / correct: 0.9 yes, 0.9 no, 0.6 yes, 0.6 yes.
    # Bin [0.9, 1.0]: n=2, accuracy 0.5, confidence 0.9, gap 0.4.
    # Bin [0.6, 0.7): n=2, accuracy 1.0, confidence 0.6, gap 0.4.
    # ECE = 2/4 * 0.4 + 2/4 * 0.4 = 0.4.
    proba = np.array([[0.1, 0.9], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([1, 0, 0, 1])
    ece, bins = calibration(y, proba)
    assert ece == pytest.approx(0.4)
    assert len(bins) == 10 and bins[6]["lo"] == 0.6 and bins[6]["hi"] == 0.7
    assert (bins[9]["n"], bins[9]["accuracy"], bins[9]["confidence"]) == (2, 0.5, pytest.approx(0.9))
    assert (bins[6]["n"], bins[6]["accuracy"], bins[6]["confidence"]) == (2, 1.0, pytest.approx(0.6))
    assert bins[0] == {"lo": 0.0, "hi": 0.1, "n": 0, "confidence": None, "accuracy": None}
    # Confidence 1.0 belongs to the last bin.
    assert calibration([0], np.array([[1.0, 0.0]]))[1][9]["n"] == 1


def test_choose_threshold_meets_the_target():
    # 20 positives scoring 0.60, 0.62, ..., 0.98; 0.95 * 20 = 19 must be caught, so t is
    # the 19th highest positive score, 0.62; anything higher catches 18 (0.90).
    pos_scores = 0.60 + 0.02 * np.arange(20)
    neg_scores = np.linspace(0.0, 0.7, 30)
    s = np.r_[pos_scores, neg_scores]
    y = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    t = choose_threshold(s, y, 0.95)
    assert t == pytest.approx(0.62)
    m = binary_metrics_at(s, y, t)
    assert m["sensitivity"]["value"] >= 0.95 and (m["tp"], m["fn"]) == (19, 1)
    assert binary_metrics_at(s, y, np.nextafter(t, 1))["sensitivity"]["value"] < 0.95
    # Negatives >= 0.62: linspace step 0.7/29; 0.6276, 0.6517, ..., 0.7 -> 4 flagged.
    assert (m["fp"], m["tn"], m["flagged"]) == (4, 26, 23)
    assert m["ppv"]["value"] == pytest.approx(19 / 23) and m["npv"]["value"] == pytest.approx(26 / 27)
    # Ties: three positives tied at the threshold are all flagged (sensitivity 1 > 0.5).
    t2 = choose_threshold([0.4, 0.4, 0.4, 0.1], [1, 1, 1, 0], 0.5)
    assert t2 == 0.4 and binary_metrics_at([0.4, 0.4, 0.4, 0.1], [1, 1, 1, 0], t2)["tp"] == 3
    assert choose_threshold(s, y, 1.0) == pytest.approx(0.60)
    with pytest.raises(EvaluationError, match="no positive samples"):
        choose_threshold([0.1, 0.2], [0, 0])
    with pytest.raises(EvaluationError, match=r"target_sensitivity: out of range"):
        choose_threshold(s, y, 0.0)


def test_document_is_strict_json_and_groups_work():
    groups = {"source": ["A", "A", "A", "B", "B", "B", None], "view": ["PA"] * 7}
    doc = evaluate_predictions(Y_TRUE, PROBA, CLASSES, screening_class="covid", threshold=0.5,
                               groups=groups, n_boot=100, seed=1)
    text = json.dumps(doc, allow_nan=False)
    assert json.loads(text) == doc
    assert list(doc) == ["n", "classes", "accuracy", "balanced_accuracy", "per_class", "macro_auc",
                         "confusion_matrix", "ece", "reliability", "screening", "by_group", "bootstrap"]
    # Screening covid at 0.5: covid scores [0.7, 0.3, 0.1, 0.2, 0.1, 0.5, 0.0]; flagged
    # samples 0 (covid) and 5 (pneumonia): TP=1, FP=1, FN=1 (sample 1), TN=4.
    sc = doc["screening"]
    assert (sc["class"], sc["threshold"], sc["threshold_chosen_here"]) == ("covid", 0.5, False)
    assert (sc["tp"], sc["fp"], sc["fn"], sc["tn"]) == (1, 1, 1, 4)
    # Group A = samples 0-2 (covid, covid, normal): predictions 0, 1, 1 -> 2/3 correct;
    # pneumonia absent there, so its sensitivity and AUC are None.
    a = doc["by_group"]["source"]["A"]
    assert a["n"] == 3 and (a["accuracy"]["k"], a["accuracy"]["n"]) == (2, 3)
    assert a["per_class"]["pneumonia"]["sensitivity"]["value"] is None
    assert a["per_class"]["pneumonia"]["auc"] == {"value": None, "ci": [None, None]}
    # balanced accuracy over present classes: covid 1/2, normal 1/1 -> 0.75.
    assert a["balanced_accuracy"] == pytest.approx(0.75)
    assert a["screening"]["tp"] == 1 and a["screening"]["fn"] == 1
    assert set(doc["by_group"]["source"]) == {"A", "B", "(unknown)"}
    assert doc["by_group"]["source"]["(unknown)"]["n"] == 1
    assert doc["by_group"]["view"]["PA"]["accuracy"] == doc["accuracy"]
    # macro AUC is the mean of the defined per-class AUCs.
    aucs = [doc["per_class"][c]["auc"]["value"] for c in CLASSES]
    assert doc["macro_auc"] == pytest.approx(np.mean(aucs))
    assert doc["per_class"]["covid"]["auc"]["value"] == pytest.approx(
        roc_auc(PROBA[:, 0], Y_TRUE == 0))


def test_threshold_chosen_here_when_not_given():
    s, y = _scores(300)
    proba = np.column_stack([1 - np.clip(s, 0, 1), np.clip(s, 0, 1)])
    doc = evaluate_predictions(y.astype(int), proba, ["normal", "covid"], screening_class="covid", n_boot=0)
    sc = doc["screening"]
    assert sc["threshold_chosen_here"] and sc["target_sensitivity"] == 0.95
    assert sc["threshold"] == choose_threshold(proba[:, 1], y, 0.95)
    assert sc["sensitivity"]["value"] >= 0.95
    assert doc["per_class"]["covid"]["auc"]["ci"] == [None, None]   # n_boot=0: no interval
    assert doc["by_group"] == {} and doc["bootstrap"]["n_boot"] == 0


@pytest.mark.parametrize("kwargs, needle", [
    (dict(proba=PROBA[:, :2]), r"proba: wrong shape\. Expected \(N, 3\)"),
    (dict(y_true=Y_TRUE + 1), r"y_true: invalid labels\. Expected integers in \[0, 3\)"),
    (dict(y_true=Y_TRUE[:5]), r"y_true: wrong shape\. Expected \(7,\)"),
    (dict(proba=PROBA * 5 - 1), r"proba: not probabilities\. Expected finite values in \[0, 1\]"),
    (dict(threshold=0.5), r"threshold: given without a screening class"),
    (dict(screening_class="flu"), r"screening_class: unknown class"),
    (dict(groups={"source": ["A"]}), r"groups\['source'\]: wrong length\. Expected one value per sample \(7\)"),
])
def test_evaluate_errors(kwargs, needle):
    args = {"y_true": Y_TRUE, "proba": PROBA}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(EvaluationError, match=needle) as e:
        evaluate_predictions(args["y_true"], args["proba"], CLASSES, n_boot=10, **kwargs)
    assert "got" in str(e.value)
