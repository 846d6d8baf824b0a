"""Within-source AUCs and the shortcut check of `xraynet evaluate`.

The within-source block is checked on hand-made predictions (the arithmetic
is in the comments). The shortcut check is checked end to end on generated
32x32 films where the answer is known: in one dataset a bright "source stamp"
in a corner, outside the central box, gives the label away and the centre is
the same noise for both classes; in the control the only signal is the
orientation of stripes in the centre, which leaves each film's mean and
standard deviation (hence its per-image normalisation) unchanged, so the
margin carries nothing.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xraynet.errors import EvaluationError
from xraynet.evaluate import EvaluationOptions, centre_box, evaluate
from xraynet.metrics import evaluate_predictions
from xraynet.source_metrics import shortcut_verdict, within_source_aucs
from xraynet.training import TrainOptions, train

from helpers import TRAIN_SPEC

CLASSES = ["covid", "normal", "pneumonia"]
# p(covid) per film; the other two columns share the rest.
ROWS = [  # (source, label, p_covid)
    ("A", 0, 0.9), ("A", 0, 0.6), ("A", 1, 0.7), ("A", 1, 0.2), ("A", 2, 0.1),
    ("B", 1, 0.3), ("B", 1, 0.15),
    ("C", 0, 0.3), ("C", 1, 0.4), ("C", 1, 0.2),
    (None, 0, 0.8), (None, 1, 0.05),
]


def _hand_made():
    sources = [r[0] for r in ROWS]
    y = np.array([r[1] for r in ROWS])
    pc = np.array([r[2] for r in ROWS])
    proba = np.column_stack([pc, (1 - pc) * 0.6, (1 - pc) * 0.4])
    return y, proba, sources


def test_within_source_by_hand():
    y, proba, sources = _hand_made()
    ws = within_source_aucs(y, proba, CLASSES, sources, screening_class="covid", n_boot=200, seed=1)
    assert ws["available"] and ws["reason"] is None
    assert set(ws["sources"]) == {"A", "B", "C", "(unknown)"}
    a = ws["sources"]["A"]
    assert a["n"] == 5 and a["class_counts"] == {"covid": 2, "normal": 2, "pneumonia": 1}
    # Source A, covid vs rest: positives 0.9, 0.6; negatives 0.7, 0.2, 0.1. 0.9 beats all three,
    # 0.6 beats 0.2 and 0.1: U = 5 of 2 * 3 pairs.
    cov = a["per_class"]["covid"]
    assert cov["auc"]["value"] == pytest.approx(5 / 6)
    assert (cov["n_pos"], cov["n_neg"], cov["reason"]) == (2, 3, None)
    lo, hi = cov["auc"]["ci"]
    assert lo <= 5 / 6 <= hi
    # Pairwise in A: covid vs normal alone: 0.9 > 0.7, 0.2; 0.6 > 0.2 -> 3/4. Against pneumonia: 2/2.
    assert a["pairwise"]["normal"]["auc"]["value"] == pytest.approx(3 / 4)
    assert a["pairwise"]["pneumonia"]["auc"]["value"] == 1.0
    # Source B has normal films only: no covid AUC, and the reason says so.
    b = ws["sources"]["B"]["per_class"]
    assert b["covid"]["auc"] == {"value": None, "ci": [None, None]}
    assert b["covid"]["reason"] == "no covid films in this source"
    assert (b["covid"]["n_pos"], b["covid"]["n_neg"]) == (0, 2)
    assert b["normal"]["auc"]["value"] is None and "other-class" in b["normal"]["reason"]
    assert ws["sources"]["C"]["pairwise"]["pneumonia"]["reason"] == "no pneumonia films in this source"
    # Unknown source: may mix sources, so no AUC even though both classes are there.
    unk = ws["sources"]["(unknown)"]["per_class"]["covid"]
    assert unk["auc"]["value"] is None and unk["reason"].startswith("source unknown")
    # Combined over same-source pairs: A gives U = 5 of 6 pairs; C: covid 0.3 vs normal 0.4, 0.2
    # gives U = 1 of 2. (5 + 1) / (6 + 2) = 0.75, while the pooled covid AUC mixes in B and unknown.
    comb = ws["combined"]["covid"]
    assert comb["auc"]["value"] == pytest.approx(0.75)
    assert comb["n_pairs"] == 8 and comb["sources"] == ["A", "C"]
    assert comb["auc"]["ci"][0] <= 0.75 <= comb["auc"]["ci"][1]
    assert ws["combined"]["pneumonia"]["sources"] == ["A"]
    # The per-source AUC is the by_group one of evaluate_predictions (same bootstrap seed).
    doc = evaluate_predictions(y, proba, CLASSES, groups={"source": sources}, n_boot=200, seed=1)
    assert doc["by_group"]["source"]["A"]["per_class"]["covid"]["auc"] == cov["auc"]
    json.dumps(ws, allow_nan=False)


def test_within_source_unavailable_without_sources():
    y, proba, _ = _hand_made()
    ws = within_source_aucs(y, proba, CLASSES, None, n_boot=0)
    assert ws["available"] is False and "no source metadata" in ws["reason"] and ws["sources"] == {}
    only_unknown = within_source_aucs(y, proba, CLASSES, [None] * len(y), n_boot=0)
    assert only_unknown["available"] is False
    with pytest.raises(EvaluationError, match=r"sources: wrong length\. Expected one source per sample \(12\)"):
        within_source_aucs(y, proba, CLASSES, ["A"], n_boot=0)
    with pytest.raises(EvaluationError, match=r"screening_class: unknown class"):
        within_source_aucs(y, proba, CLASSES, ["A"] * len(y), screening_class="flu", n_boot=0)
    json.dumps(ws, allow_nan=False)


def _variant(auc, lo, hi):
    return {"per_class": {c: {"auc": {"value": auc, "ci": [lo, hi]}} for c in ("covid", "normal")}}


def test_verdict_margin_kept_and_undecided():
    v = {"full": _variant(0.9, 0.85, 0.95), "centre_blanked": _variant(0.8, 0.7, 0.88),
         "centre_only": _variant(0.6, 0.5, 0.7)}
    out = shortcut_verdict(v, ["covid", "normal"], "covid")
    # (0.8 - 0.5) / (0.9 - 0.5) = 0.75 of the margin survives blanking the lungs.
    assert out["uses_shortcuts"] is True and out["classes"] == ["covid"]
    assert out["per_class"]["covid"]["margin_kept"] == pytest.approx(0.75)
    assert "using shortcuts" in out["text"] and "75%" in out["text"]
    v["centre_blanked"] = _variant(0.8, None, None)   # n_boot = 0: no interval, no decision
    out = shortcut_verdict(v, ["covid", "normal"], None)
    assert out["uses_shortcuts"] is None and out["classes"] == ["covid", "normal"]
    assert "undecided" in out["text"]


def test_verdict_below_chance_says_inverted_not_above_chance():
    """Blanked AUC 0.222 (0.042-0.486): the interval lies wholly below 0.5. The model's scores still
    follow the class without the lungs, but inverted: never "above chance" or a negative margin."""
    v = {"full": _variant(0.9, 0.85, 0.95), "centre_blanked": _variant(0.222, 0.042, 0.486),
         "centre_only": _variant(0.7, 0.6, 0.8)}
    out = shortcut_verdict(v, ["covid", "normal"], "covid")
    text = out["text"]
    assert out["uses_shortcuts"] is True
    assert "below chance" in text and "inverted" in text and "0.222 (95% CI 0.042-0.486)" in text
    assert "above chance" not in text and "margin" not in text and "-" + "56%" not in text
    # Above chance and further from it than on full films: no "keeps 150% of its margin".
    v["centre_blanked"] = _variant(0.95, 0.9, 0.99)
    v["full"] = _variant(0.8, 0.7, 0.9)
    text = shortcut_verdict(v, ["covid", "normal"], "covid")["text"]
    assert "above chance" in text and "even further from chance" in text and "keeps" not in text


# ------------------------------------------------------------ generated films
SIZE = 32       # the model input size too: no resize, so the masks fall where the films were drawn
N_PER_CLASS = 40


def _film(rng, covid: bool, kind: str) -> np.ndarray:
    img = 0.5 + 0.08 * rng.standard_normal((SIZE, SIZE))
    if kind == "stamp" and covid:
        img[0:4, 0:4] = 1.0                       # outside the central box (rows/columns 5:27)
    elif kind == "centre":
        # Stripes of period 4 over 12 x 16 pixels: as many +0.2 as -0.2 pixels whichever the
        # orientation, so each film's mean and spread (its normalisation) do not depend on the class.
        r, c = np.mgrid[10:22, 8:24]
        stripes = np.where(((r if covid else c) // 2) % 2 == 0, 0.2, -0.2)
        img[10:22, 8:24] += stripes
    elif kind == "disc" and covid:
        # A bright lesion in the middle raises the film's mean, so per-image normalisation lowers
        # every border pixel: the check must standardise what it keeps again, or it would call
        # the border a shortcut.
        r, c = np.mgrid[0:SIZE, 0:SIZE]
        img[(r - 16) ** 2 + (c - 16) ** 2 < 36] += 0.35
    return np.clip(img, 0.0, 1.0)


def _dataset(root, kind: str, seed: int):
    rng = np.random.default_rng(seed)
    rows = []
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for i in range(N_PER_CLASS):
            Image.fromarray((_film(rng, label == "covid", kind) * 255).astype(np.uint8)).save(
                root / label / f"f{i:02d}.png")
            rows.append({"file": f"{label}/f{i:02d}.png", "patient_id": f"{label}-{i}",
                         "source_repo": "site-a" if i % 2 else "site-b"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo"])
        w.writeheader()
        w.writerows(rows)
    return root


def _trained(tmp_path_factory, kind: str, seed: int):
    base = tmp_path_factory.mktemp(kind)
    root = _dataset(base / "data", kind, seed)
    spec = base / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    out = base / "m.h5"
    train(root, out, TrainOptions(arch=str(spec), image_size=SIZE, epochs=4, batch_size=16, lr=3e-3, seed=3,
                                  patience=10, workers=1, augment=False))
    return out, root


@pytest.fixture(scope="module")
def stamp_model(tmp_path_factory):
    return _trained(tmp_path_factory, "stamp", 11)


@pytest.fixture(scope="module", params=["centre", "disc"])
def centre_model(request, tmp_path_factory):
    return _trained(tmp_path_factory, request.param, 12)


def test_centre_box_is_the_documented_region():
    assert centre_box(32) == (5, 27, 5, 27)
    assert centre_box(224) == (34, 190, 34, 190)


def test_shortcut_check_catches_the_stamp(stamp_model):
    model, root = stamp_model
    doc = evaluate(model, root, EvaluationOptions(n_boot=200, workers=1, shortcut_check=True))
    sc = doc["shortcut_check"]
    assert sc["region"]["rows"] == [5, 27] and sc["region"]["fill"] == 0.0
    assert set(sc["variants"]) == {"full", "centre_blanked", "centre_only"}
    verdict = sc["verdict"]
    assert verdict["classes"] == ["covid"]          # the model's threshold class
    blanked = verdict["per_class"]["covid"]["auc_centre_blanked"]
    assert blanked["ci"][0] > 0.5, blanked
    assert verdict["uses_shortcuts"] is True
    assert "using shortcuts" in verdict["text"] and "outside the central region" in verdict["text"]
    assert sc["variants"]["full"]["within_source"]["covid"]["sources"] == ["site-a", "site-b"]
    json.dumps(doc, allow_nan=False)


def test_shortcut_check_clears_a_centre_signal(centre_model):
    model, root = centre_model
    doc = evaluate(model, root, EvaluationOptions(n_boot=200, workers=1, shortcut_check=True))
    verdict = doc["shortcut_check"]["verdict"]
    full = verdict["per_class"]["covid"]["auc_full"]
    assert full["value"] > 0.9, full                # the model did learn the stripes
    assert verdict["uses_shortcuts"] is False, verdict["text"]
    assert "falls to chance" in verdict["text"]


def test_cli_shortcut_check(stamp_model):
    from xraynet.cli.main import app

    model, root = stamp_model
    runner = CliRunner()
    args = ["evaluate", str(model), str(root), "--shortcut-check", "--n-boot", "50", "--device", "cpu",
            "--workers", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "verdict: covid: the model is using shortcuts" in res.output
    assert "Within-source AUC" in res.output and "mixes sources" in res.output
    # The within-source block comes before the pooled table.
    assert res.output.index("Within-source AUC") < res.output.index("pooled over all sources")
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert set(doc["shortcut_check"]) == {"region", "variants", "verdict"}
    assert isinstance(doc["shortcut_check"]["verdict"]["uses_shortcuts"], bool)
    assert doc["within_source"]["available"] is True


def test_cli_says_why_within_source_is_unavailable(stamp_model, tmp_path):
    import shutil

    from xraynet.cli.main import app

    model, root = stamp_model
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("metadata.csv"))
    res = CliRunner().invoke(app, ["evaluate", str(model), str(bare), "--n-boot", "20", "--device", "cpu",
                                   "--workers", "1"], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "within-source AUCs: unavailable: no source metadata" in res.output
    doc = evaluate(model, bare, EvaluationOptions(n_boot=0, workers=1))
    assert doc["within_source"]["available"] is False and "shortcut_check" not in doc
