"""`xraynet crossval` on generated films from three sources.

site-a and site-b carry the disease as it should be: every `opacity` film
has a bright blob in a lung, no `normal` film has one. site-c is
confounded: blobs appear in exactly half of the films of each class, so they
say nothing about the label there, and the classes differ only by where a
corner stamp sits (top left on `normal`, top right on `opacity`). A model
trained without site-c has never seen the stamps and ranks site-c's films by
blob, which splits each class in half: however the stamps move the scores
within a half, the held-out AUC lies between 0.25 and 0.75. Held out, site-a
and site-b are ranked by the blob the other sources taught, AUC near 1.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xraynet.cli.main import app
from xraynet.crossval import RESULT_FILE, CrossvalOptions, crossval, recipe_from_model
from xraynet.errors import XraynetError

from helpers import TRAIN_SPEC

SIZE = 32
SOURCES = ("site-a", "site-b", "site-c")
runner = CliRunner()


def _film(rng, blob: bool, stamp: str | None) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = 0.7 + 0.05 * rng.standard_normal((SIZE, SIZE))
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] -= 0.45
    if blob:
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
        img += 0.5 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.07 ** 2)))
    if stamp == "left":
        img[1:5, 1:5] = 1.0
    elif stamp == "right":
        img[1:5, -5:-1] = 1.0
    return np.clip(img, 0, 1)


def _dataset(root, plan, seed=1):
    """``plan``: {(source, label): [(blob, stamp), ...]}; writes the PNGs and metadata.csv."""
    rng = np.random.default_rng(seed)
    rows = []
    for (source, label), films in plan.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, (blob, stamp) in enumerate(films):
            name = f"{label}/{source}-{i:02d}.png"
            Image.fromarray((_film(rng, blob, stamp) * 255).astype(np.uint8)).save(root / name)
            rows.append({"file": name, "patient_id": f"{source}-{label}-{i}", "source_repo": source, "view": "PA"})
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo", "view"])
        w.writeheader()
        w.writerows(rows)
    return root


def _recipe(spec, **kw):
    # Augmentation slows learning on 32-pixel films (see test_train).
    return {"arch": str(spec), "epochs": 6, "batch_size": 16, "lr": 3e-3, "seed": 0, "patience": 10,
            "augment": False, **kw}


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("crossval")
    n = 24
    plan = {}
    for label in ("normal", "opacity"):
        for source in ("site-a", "site-b"):
            plan[source, label] = [(label == "opacity", None)] * n
        plan["site-c", label] = [(i % 2 == 0, "right" if label == "opacity" else "left") for i in range(n)]
    root = _dataset(base / "data", plan)
    spec = base / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    out = base / "out"
    doc = crossval(root, out, _recipe(spec), CrossvalOptions(n_boot=50, workers=1))
    return root, spec, out, doc


def _fold(doc, source):
    return next(f for f in doc["folds"] if f["source"] == source)


def test_confounded_source_is_near_chance_when_held_out(three_sources):
    root, _, out, doc = three_sources
    assert doc["complete"] and [f["source"] for f in doc["folds"]] == list(SOURCES)
    for source in ("site-a", "site-b"):
        f = _fold(doc, source)
        assert f["status"] == "ok" and f["trained"], f
        assert f["images"] == {"normal": 24, "opacity": 24} and f["train_images"] + f["val_images"] == 96
        assert f["per_class"]["opacity"]["auc"] > 0.9, f["per_class"]
        assert f["screening"]["class"] == "opacity" and f["screening"]["sensitivity"]["ci"][0] is not None
    c = _fold(doc, "site-c")
    assert 0.25 <= c["per_class"]["opacity"]["auc"] <= 0.75, c["per_class"]
    lo, hi = c["per_class"]["opacity"]["ci"]
    assert lo < 0.5 < hi
    assert all(f["per_class"][k]["reason"] is None and not f["notes"] for f in doc["folds"] for k in f["per_class"])
    assert (out / "holdout-3-site-c.h5").is_file()
    on_disk = json.loads((out / RESULT_FILE).read_text())
    json.dumps(on_disk, allow_nan=False)
    assert [f["per_class"] for f in on_disk["folds"]] == [f["per_class"] for f in doc["folds"]]


def test_a_second_run_reuses_the_fold_models(three_sources):
    root, spec, out, doc = three_sources
    models = sorted(out.glob("holdout-*.h5"))
    models = [p for p in models if not p.name.endswith(".checkpoint.h5")]
    assert len(models) == 3
    before = {p: p.stat().st_mtime_ns for p in models}
    # workers does not change the weights, so it is not part of the recipe compared.
    again = crossval(root, out, _recipe(spec),
                     CrossvalOptions(n_boot=50, workers=2, hold_out=["site-c", "site-a"]))
    assert {p: p.stat().st_mtime_ns for p in models} == before
    assert [f["source"] for f in again["folds"]] == ["site-c", "site-a"]
    assert not any(f["trained"] for f in again["folds"])
    assert _fold(again, "site-c")["per_class"] == _fold(doc, "site-c")["per_class"]


def test_another_recipe_trains_again(three_sources, tmp_path):
    import shutil

    root, spec, out, _ = three_sources
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    model = copy / "holdout-1-site-a.h5"
    before = model.stat().st_mtime_ns
    again = crossval(root, copy, _recipe(spec), CrossvalOptions(epochs=1, n_boot=0, workers=1, hold_out=["site-a"]))
    assert again["folds"][0]["trained"] and again["recipe"]["epochs"] == 1
    assert model.stat().st_mtime_ns != before and again["folds"][0]["best_epoch"] == 1


def test_cli_prints_the_table(three_sources):
    root, _, out, doc = three_sources
    # A fold model's recipe is the recipe of the run (its held-out source is replaced per fold): nothing retrains.
    recipe = out / "holdout-1-site-a.h5"
    res = runner.invoke(app, ["crossval", str(root), "--by", "source_repo", "--out-dir", str(out),
                              "--recipe", str(recipe), "--n-boot", "50", "--device", "cpu", "--workers", "1"])
    assert res.exit_code == 0, res.output
    for text in ("held-out", "AUC", "sensitivity", "specificity", "24 opacity", "(0.", "site-a", "site-b",
                 "site-c", "transfers to a hospital it never saw"):
        assert text in res.stdout, text
    row = next(line for line in res.stdout.splitlines() if "site-c" in line)
    assert f"{_fold(doc, 'site-c')['per_class']['opacity']['auc']:.3f}" in row
    assert "fold 3/3: holding out site-c (evaluating the model already trained)" in res.stderr
    res = runner.invoke(app, ["crossval", str(root), "--out-dir", str(out), "--recipe", str(recipe), "--n-boot",
                              "50", "--device", "cpu", "--hold-out", "site-b", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert [f["source"] for f in got["folds"]] == ["site-b"] and not got["folds"][0]["trained"]


def test_unknown_by_and_unknown_source_exit_2(three_sources, tmp_path):
    root, _, out, _ = three_sources
    recipe = str(out / "holdout-1-site-a.h5")
    res = runner.invoke(app, ["crossval", str(root), "--by", "view", "--out-dir", str(tmp_path / "o"),
                              "--recipe", recipe, "--device", "cpu"])
    assert res.exit_code == 2
    assert "--by 'view': not a supported grouping" in res.output and "source_repo" in res.output
    res = runner.invoke(app, ["crossval", str(root), "--out-dir", str(tmp_path / "o"), "--recipe", recipe,
                              "--hold-out", "site-z", "--device", "cpu"])
    assert res.exit_code == 2
    assert "site-z" in res.output and "site-a" in res.output
    assert not (tmp_path / "o").exists()


def test_recipe_without_options_exits_2(three_sources, tmp_path):
    # A model written before recipes were stored: --recipe says what to pass instead.
    from xraynet.modelfile import load_model, save_model

    root, _, out, _ = three_sources
    old = load_model(out / "holdout-2-site-b.h5")
    meta = {k: v for k, v in old.metadata.items() if k != "options"}
    save_model(tmp_path / "old.h5", old.model, classes=old.classes, preprocessing=old.preprocessing, metadata=meta)
    res = runner.invoke(app, ["crossval", str(root), "--out-dir", str(tmp_path / "o"), "--device", "cpu",
                              "--recipe", str(tmp_path / "old.h5")])
    assert res.exit_code == 2
    assert "holds no training recipe" in res.output and "trained by this xraynet version" in res.output
    assert not (tmp_path / "o").exists()


def test_the_bundled_model_is_the_default_recipe():
    from xraynet.modelfile import bundled_model_path

    recipe = recipe_from_model(bundled_model_path())
    assert recipe["arch"] == "xraynet" and recipe["balance"] == "source-class" and recipe["holdout_sources"] == []


def test_unknown_recipe_fields_are_an_error(three_sources, tmp_path):
    root, spec, _, _ = three_sources
    with pytest.raises(XraynetError, match=r"fields \['balanced_sampling'\] are not training options"):
        crossval(root, tmp_path / "o", _recipe(spec, balanced_sampling=True), CrossvalOptions(n_boot=0))


def test_recipe_from_model_reads_the_stored_options(three_sources):
    _, spec, out, doc = three_sources
    recipe = recipe_from_model(out / "holdout-2-site-b.h5")
    # A spec-file architecture comes back as the network the model has, not as a path that may
    # have moved or been edited since.
    assert recipe["arch"] == json.loads(spec.read_text())
    assert recipe["holdout_sources"] == ["site-b"] and "device" not in recipe
    assert {k: v for k, v in doc["recipe"].items() if k != "arch"} == \
        {k: v for k, v in recipe.items() if k not in ("holdout_sources", "workers", "arch")}


def test_a_class_only_one_source_has(tmp_path):
    """site-y holds every opacity film: without it the model never sees opacity."""
    plan = {("site-x", "normal"): [(False, None)] * 8, ("site-y", "normal"): [(False, None)] * 8,
            ("site-y", "opacity"): [(True, None)] * 8}
    root = _dataset(tmp_path / "data", plan)
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    # The screening threshold is chosen on validation opacity films; there are none, so that fold cannot train.
    doc = crossval(root, tmp_path / "a", _recipe(spec, epochs=1, batch_size=8), CrossvalOptions(n_boot=0))
    x, y = _fold(doc, "site-x"), _fold(doc, "site-y")
    assert x["status"] == "ok" and x["images"] == {"normal": 8, "opacity": 0}
    assert x["per_class"]["opacity"] == {"n": 0, "auc": None, "ci": [None, None],
                                         "reason": "no opacity images in site-x"}
    assert x["per_class"]["normal"]["reason"].startswith("only normal images in site-x")
    assert x["screening"]["sensitivity"]["value"] is None and "sensitivity undefined" in x["screening"]["reason"]
    assert y["status"] == "not_possible" and "no positive samples" in y["reason"]
    assert any("'opacity' was never seen in training" in n for n in y["notes"])
    assert doc["summary"]["not_possible"] == 1
    json.dumps(json.loads((tmp_path / "a" / RESULT_FILE).read_text()), allow_nan=False)
    # Screening for normal instead, the fold trains; its note still says opacity was never learnt.
    doc = crossval(root, tmp_path / "b", _recipe(spec, epochs=1, batch_size=8, screening_class="normal"),
                   CrossvalOptions(hold_out=["site-y"], n_boot=0))
    y = doc["folds"][0]
    assert y["status"] == "ok" and y["trained"] and y["per_class"]["opacity"]["auc"] is not None
    assert any("'opacity' was never seen in training" in n for n in y["notes"])


def test_a_recipe_with_the_source_adversary_on_two_sources(tmp_path):
    """Holding out one of two sources leaves one to train on: the adversary has nothing to
    tell apart, so that fold trains without it and says so, instead of ending the run."""
    plan = {(site, label): [(label == "opacity", None)] * 8
            for site in ("site-x", "site-y") for label in ("normal", "opacity")}
    root = _dataset(tmp_path / "data", plan)
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    doc = crossval(root, tmp_path / "a", _recipe(spec, epochs=1, batch_size=8, adversarial_source=0.5),
                   CrossvalOptions(n_boot=0))
    assert [f["status"] for f in doc["folds"]] == ["ok", "ok"]
    for fold in doc["folds"]:
        assert any("trained without it" in n for n in fold["notes"])
        assert recipe_from_model(fold["model"])["adversarial_source"] == 0.0
