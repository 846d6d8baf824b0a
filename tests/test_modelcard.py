"""The model card (xraynet.modelcard): written by `train`, stored in the model
file's metadata, printed by `xraynet info MODEL [--json]`; the bundled model's
card states the README's figures."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xraynet import __version__
from xraynet.cli.main import app
from xraynet.model import Model
from xraynet.modelcard import CARD_KEY, CARD_KEYS, CARD_VERSION, read_card
from xraynet.modelfile import bundled_model_path, load_model, read_info, save_model
from xraynet.training import TrainOptions, train

from helpers import CARD_SPEC

runner = CliRunner()
README = Path(__file__).resolve().parents[1] / "README.md"
INFO_KEYS = set(CARD_KEYS) | {"model_file", "weights_sha256"}
# site-a and site-b hold both classes; site-c only normal films, so its opacity AUC is undefined.
SITES = {"site-a": ("normal", "opacity"), "site-b": ("normal", "opacity"), "site-c": ("normal",)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for two epochs on generated films from three sources."""
    root = tmp_path_factory.mktemp("cardfilms")
    rng = np.random.default_rng(11)
    rows = []
    for label in ("normal", "opacity"):
        (root / label).mkdir()
    for site, labels in SITES.items():
        for label in labels:
            for p in range(10):
                img = 0.5 + 0.1 * rng.standard_normal((28, 28))
                if label == "opacity":
                    img[8:18, 8:18] += 0.4
                name = f"{label}/{site}-{p}.png"
                Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(root / name)
                rows.append({"file": name, "patient_id": f"{site}-{label}-{p}", "source_repo": site})
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo"])
        w.writeheader()
        w.writerows(rows)
    spec = root.parent / "tiny-card.json"
    spec.write_text(json.dumps(CARD_SPEC))
    out = root.parent / "m.h5"
    opts = TrainOptions(arch=str(spec), epochs=2, batch_size=16, lr=3e-3, seed=1, patience=5, workers=1,
                        augment=False, val_fraction=0.3)
    summary = train(root, out, opts)
    return root, out, summary, len(rows)


def _plain_model(tmp_path, metadata: dict) -> Path:
    path = tmp_path / "plain.h5"
    save_model(path, Model(CARD_SPEC, seed=0), classes=["normal", "opacity"],
               preprocessing={"image_size": 24, "fit": "pad", "border_crop": 0.0, "equalize": False,
                              "normalize": "per_image", "working_size": None},
               metadata=metadata)
    return path


def _in_ci(a: dict) -> bool:
    lo, hi = a["ci"]
    return 0.0 <= lo <= a["value"] <= hi <= 1.0


# ----------------------------------------------------------------- training
def test_train_writes_a_card_with_the_listed_keys_and_sane_values(trained):
    root, out, summary, n_images = trained
    meta = load_model(out).metadata
    card = meta[CARD_KEY]
    assert set(CARD_KEYS) <= set(card) and card["card_version"] == CARD_VERSION
    json.dumps(card, allow_nan=False)
    assert card["classes"] == ["normal", "opacity"] and card["xraynet_version"] == __version__
    assert card["weights_sha256"] == read_info(out)["weights_sha256"]

    data = card["training_data"]
    assert data["root"] == str(root.resolve()) and data["images"] == n_images and data["has_metadata"]
    assert set(data["sources"]) == set(SITES)
    for site, labels in SITES.items():
        e = data["sources"][site]
        assert e["images"]["all"] == {c: (10 if c in labels else 0) for c in ("normal", "opacity")}
        assert e["patients"]["all"] == e["images"]["all"]      # one film per patient here
        for c in ("normal", "opacity"):
            assert e["images"]["train"][c] + e["images"]["val"][c] == e["images"]["all"][c]

    split = card["split"]
    assert split["level"] == "patient" and split["seed"] == 1 and split["val_fraction"] == 0.3
    assert split["patient_overlap"] == 0 and split["images"]["val"] == summary["val_images"]
    assert card["preprocessing"]["image_size"] == 24 and card["preprocessing"]["steps"]

    val = card["validation"]
    assert val["films"] == summary["val_images"] and val["bootstrap"]["n_boot"] == 1000
    ws = val["within_source"]
    assert ws["available"] and set(ws["sources"]) == set(SITES)
    for site in ("site-a", "site-b"):
        assert _in_ci(ws["sources"][site]["auc"]["opacity"])
    c = ws["sources"]["site-c"]["auc"]["opacity"]
    assert c["value"] is None and c["reason"] == "no opacity films in this source"
    assert ws["combined"]["opacity"]["sources"] == ["site-a", "site-b"] and _in_ci(ws["combined"]["opacity"])
    assert "mixes sources" in val["pooled"]["note"] and _in_ci(val["pooled"]["auc"]["opacity"])
    assert val["leave_one_source_out"] is None

    thr = card["threshold"]
    assert thr["class"] == "opacity" and thr["value"] == meta["threshold"]["value"]
    assert thr["sources"] == ["site-a", "site-b"] and "highest threshold" in thr["rule"]
    assert thr["at_choice"]["sensitivity"]["value"] >= 0.95
    assert set(thr["by_source"]) == set(SITES)

    tr = card["training"]
    assert tr["epochs_run"] == 2 and tr["best_epoch"] == summary["best_epoch"] and tr["device"] == "cpu"
    assert tr["recipe"]["seed"] == 1 and tr["epoch_seconds"]["total"] > 0 and tr["wall_seconds"] > 0
    assert not tr["resumed"] and tr["machine"]["cpu_count"]
    assert "not a diagnostic device" in card["intended_use"]["summary"]
    topics = [x["topic"] for x in card["limits"]]
    assert {"not a diagnostic device", "source confounding", "unseen sources"} <= set(topics)
    unseen = next(x["text"] for x in card["limits"] if x["topic"] == "unseen sources")
    assert "No leave-one-source-out figures" in unseen and "xraynet crossval" in unseen


def test_card_figures_equal_evaluate_subset_val(trained):
    # The card is made from training's own validation pass; `xraynet evaluate --subset val`
    # must give the same figures, or one of them is wrong.
    from xraynet.evaluate import EvaluationOptions, evaluate

    root, out, _, _ = trained
    card = read_card(out)
    doc = evaluate(out, root, EvaluationOptions(subset="val", n_boot=1000, seed=0))
    for site, s in doc["within_source"]["sources"].items():
        for cls, e in s["per_class"].items():
            got = card["validation"]["within_source"]["sources"][site]["auc"][cls]
            assert got["value"] == pytest.approx(e["auc"]["value"], abs=1e-9) if e["auc"]["value"] is not None \
                else got["value"] is None
            assert got["n_pos"] == e["n_pos"] and got["n_neg"] == e["n_neg"]
    assert card["validation"]["pooled"]["auc"]["opacity"]["value"] == pytest.approx(
        doc["per_class"]["opacity"]["auc"]["value"], abs=1e-9)
    assert card["threshold"]["pooled"]["sensitivity"]["k"] == doc["screening"]["sensitivity"]["k"]


def test_card_round_trips_through_save_and_load(trained, tmp_path):
    _, out, _, _ = trained
    card = read_card(out)
    path = _plain_model(tmp_path, {"note": "copy", CARD_KEY: card})
    loaded = load_model(path)
    assert loaded.metadata[CARD_KEY] == card and loaded.metadata["note"] == "copy"
    assert read_card(path) == card
    assert read_card(_plain_model(tmp_path, {})) is None


# --------------------------------------------------------------------- info
def test_info_json_has_the_listed_keys(trained):
    _, out, _, _ = trained
    res = runner.invoke(app, ["info", str(out), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert INFO_KEYS <= set(doc)
    assert doc["model_file"] == "m.h5" and doc["card_present"] and doc["card_version"] == CARD_VERSION
    assert doc["weights_sha256"] == read_info(out)["weights_sha256"] and doc["notes"] == []
    assert doc["validation"] == read_card(out)["validation"]


def test_info_text_puts_the_within_source_figures_first(trained):
    _, out, _, _ = trained
    res = runner.invoke(app, ["info", str(out)])
    assert res.exit_code == 0, res.output
    text = res.stdout
    for part in ("Intended use", "Within one source", "Pooled over all sources", "Threshold", "Training data",
                 "Preprocessing", "Training:", "Limits", "not a diagnostic device"):
        assert part in text, part
    assert text.index("Within one source") < text.index("Pooled over all sources") < text.index("Threshold")
    assert "site-c" in text and "missing" not in text


def test_info_on_a_model_without_a_card_says_so_and_exits_0(tmp_path):
    thr = {"class": "opacity", "value": 0.25, "target_sensitivity": 0.95, "chosen_on": "validation", "sources": None}
    path = _plain_model(tmp_path, {"threshold": thr, "best_epoch": 3, "device": "cpu"})
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0, res.output
    assert "model card missing" in res.stdout
    assert "tiny" in res.stdout and "normal, opacity" in res.stdout and "opacity >= 0.25 " in res.stdout
    res = runner.invoke(app, ["info", str(path), "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and INFO_KEYS <= set(doc)
    assert doc["card_present"] is False and doc["card_version"] is None and doc["validation"] is None
    assert doc["classes"] == ["normal", "opacity"] and doc["threshold"]["value"] == 0.25
    assert doc["architecture"]["name"] == "tiny" and "model card missing" in doc["notes"][0]


def test_info_on_a_file_that_is_not_a_model_exits_2(tmp_path):
    bad = tmp_path / "notes.h5"
    bad.write_text("not a model\n")
    res = runner.invoke(app, ["info", str(bad)])
    assert res.exit_code == 2
    assert "not an HDF5 file. Expected an xraynet model" in res.output and "Pass a model file" in res.output
    res = runner.invoke(app, ["info", str(tmp_path / "missing.h5"), "--json"])
    assert res.exit_code == 2 and "no such file" in res.output and res.stdout == ""


@pytest.mark.parametrize("card, message", [
    ("text", "the model card is malformed. Expected a JSON object"),
    ({"card_version": "1"}, "the model card has no usable card_version. Expected an integer >= 1, got '1'"),
    ({"card_version": CARD_VERSION + 1}, f"Expected card_version {CARD_VERSION} or lower"),
    ({"card_version": CARD_VERSION, "classes": []}, "the model card is incomplete"),
    ({**dict.fromkeys(CARD_KEYS, {}), "card_version": CARD_VERSION, "classes": ["normal", "opacity"]},
     "the model card is malformed (KeyError"),
])
def test_info_refuses_a_card_it_cannot_read(tmp_path, card, message):
    # The file is still a usable model (screen and evaluate never read the card); only `info` stops.
    path = _plain_model(tmp_path, {CARD_KEY: card})
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 2 and message in res.output, res.output
    assert str(path) in res.output
    if isinstance(card, dict) and card.get("card_version") == CARD_VERSION + 1:
        assert "pip install -U xraynet" in res.output


def test_info_notes_a_card_that_belongs_to_other_weights(trained, tmp_path):
    _, out, _, _ = trained
    card = {**read_card(out), "weights_sha256": "0" * 64}
    res = runner.invoke(app, ["info", str(_plain_model(tmp_path, {CARD_KEY: card})), "--json"])
    doc = json.loads(res.stdout)
    assert res.exit_code == 0 and "belongs to another model" in doc["notes"][0]
    assert doc["weights_sha256"] != "0" * 64


def test_info_refuses_weights_that_fail_their_checksum(tmp_path):
    """One flipped weight: `info` must not print the stored SHA-256 as if it were the file's."""
    import h5py

    path = _plain_model(tmp_path, {"threshold": {"class": "opacity", "value": 0.25, "target_sensitivity": 0.95}})
    assert runner.invoke(app, ["info", str(path)]).exit_code == 0
    with h5py.File(path, "a") as f:
        ds = f["weights"][sorted(f["weights"])[0]]
        name = sorted(ds)[0]
        ds[name][...] = ds[name][...] + 1.0
    for extra in ([], ["--json"]):
        res = runner.invoke(app, ["info", str(path), *extra])
        assert res.exit_code == 2 and res.stdout == ""
        assert "plain.h5: the weights are corrupted (checksum mismatch)" in res.stderr


def test_threshold_printed_with_the_digits_it_needs(tmp_path):
    from xraynet.modelcard.layout import threshold_text

    for value in (0.9999998, float(np.float32(0.9999998)), 1e-7, 0.4273123, 0.25, 0.999):
        text = threshold_text(value)
        assert text not in ("1", "0", "1.000", "0.000")
        assert abs(float(text) - value) <= 0.01 * min(value, 1 - value)
    assert threshold_text(0.4273123) == "0.4273" and threshold_text(0.25) == "0.25"
    assert threshold_text(None) == "-" and threshold_text(1.0) == "1"
    path = _plain_model(tmp_path, {"threshold": {"class": "opacity", "value": 0.9999998,
                                                 "target_sensitivity": 0.95}})
    res = runner.invoke(app, ["info", str(path)])
    assert res.exit_code == 0 and "opacity >= 0.9999998 " in res.stdout


def _mix_card(mixes: dict) -> dict:
    """The parts of a card that the "source confounding" limit reads: films per source and class."""
    classes = ["covid", "normal"]
    sources = {s: {"images": {"all": dict(zip(classes, counts))}} for s, counts in mixes.items()}
    combined = {c: {"reason": None} for c in classes}
    return {"classes": classes, "training_data": {"sources": sources},
            "validation": {"within_source": {"available": True, "combined": combined}}}


def test_confounding_limit_says_different_proportions_only_when_they_differ():
    from xraynet.modelcard.limits import MIX_GAP, class_mix_gap, confounding_limit

    same = confounding_limit(_mix_card({"a": (15, 15), "b": (30, 30)}))["text"]
    assert "similar proportions" in same and "different proportions" not in same
    near = _mix_card({"a": (50, 50), "b": (55, 45)})            # 5 points apart: within the rule
    assert class_mix_gap(near["training_data"]["sources"], near["classes"])[0] == pytest.approx(0.05)
    assert "similar proportions" in confounding_limit(near)["text"]
    far = confounding_limit(_mix_card({"a": (40, 10), "b": (10, 40)}))["text"]
    assert "different proportions" in far and "60 percentage points" in far and MIX_GAP == 0.10
    one = confounding_limit(_mix_card({"a": (20, 20), "b": (0, 0)}))["text"]
    assert "one source" in one and "proportions" not in one


def test_info_works_the_confounding_limit_out_again(trained, tmp_path):
    """A card written with the old unconditional wording is printed with the rule's wording."""
    _, out, _, _ = trained
    card = read_card(out)
    stale = [dict(x, text="The sources hold the classes in different proportions (stale).")
             if x["topic"] == "source confounding" else x for x in card["limits"]]
    path = _plain_model(tmp_path, {CARD_KEY: {**card, "limits": stale}})
    doc = json.loads(runner.invoke(app, ["info", str(path), "--json"]).stdout)
    text = next(x["text"] for x in doc["limits"] if x["topic"] == "source confounding")
    assert "(stale)" not in text and [x["topic"] for x in doc["limits"]] == [x["topic"] for x in stale]


def test_info_without_a_model_still_prints_the_versions():
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("xraynet ") and "backend (auto)" in res.stdout and "Model card" not in res.stdout
    doc = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    assert doc["xraynet"] == __version__ and "auto_device" in doc


# ------------------------------------------------------------ bundled model
def _readme_section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def _f(value, ci) -> str:
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def test_bundled_models_card_states_the_readme_numbers():
    path = bundled_model_path()
    card = read_card(path)
    assert card is not None, f"{path} has no model card: run python benchmarks/bundled_model_card.py"
    assert card["weights_sha256"] == read_info(path)["weights_sha256"]
    siim, ieee, nih = "vikasb512/Capstone-Project", "hida6/covid-chestxray-dataset", "muhammedtalo/COVID-19"
    val, thr = card["validation"], card["threshold"]
    ws = val["within_source"]["sources"]
    assert ws[siim]["films"] == 750 and ws[siim]["class_counts"] == {"covid": 489, "normal": 261, "pneumonia": 0}

    # The figures, as README.md's "The bundled model" states them.
    within = ws[siim]["auc"]["covid"]
    assert _f(within["value"], within["ci"]) == "0.880 (0.855-0.904)"
    assert _f(ws[siim]["auc"]["normal"]["value"], ws[siim]["auc"]["normal"]["ci"]) == "0.879 (0.854-0.902)"
    assert _f(ws[ieee]["auc"]["covid"]["value"], ws[ieee]["auc"]["covid"]["ci"]) == "0.565 (0.367-0.758)"
    assert _f(val["pooled"]["auc"]["covid"]["value"], val["pooled"]["auc"]["covid"]["ci"]) == "0.854 (0.828-0.879)"
    assert f"{val['pooled']['accuracy']['value']:.3f}" == "0.770"
    assert thr["class"] == "covid" and f"{thr['value']:.4f}" == "0.1765" and thr["target_sensitivity"] == 0.92
    s = thr["by_source"][siim]
    assert _f(s["sensitivity"]["value"], s["sensitivity"]["ci"]) == "0.918 (0.891-0.939)"
    assert _f(s["specificity"]["value"], s["specificity"]["ci"]) == "0.586 (0.526-0.644)"
    pooled = thr["pooled"]
    assert (f"{pooled['sensitivity']['value']:.3f}", f"{pooled['specificity']['value']:.3f}") == ("0.921", "0.541")
    folds = {f["held_out"]: f for f in val["leave_one_source_out"]["folds"]}
    assert set(folds) == {siim, ieee, nih} and all(f["status"] == "ok" for f in folds.values())
    loso = {(src, c): _f(a["value"], a["ci"]) for src, f in folds.items() for c, a in f["auc"].items()
            if a["value"] is not None}
    assert loso == {(siim, "covid"): "0.663 (0.646-0.681)", (siim, "normal"): "0.683 (0.666-0.699)",
                    (ieee, "covid"): "0.619 (0.550-0.685)", (ieee, "normal"): "0.686 (0.494-0.862)",
                    (ieee, "pneumonia"): "0.634 (0.566-0.702)",
                    (nih, "normal"): "0.570 (0.490-0.652)", (nih, "pneumonia"): "0.650 (0.570-0.723)"}
    sens_spec = {src: (f["screening"]["sensitivity"]["value"], f["screening"]["specificity"]["value"])
                 for src, f in folds.items()}
    assert {src: (None if a is None else round(a, 2), round(b, 2)) for src, (a, b) in sens_spec.items()} == {
        siim: (0.73, 0.49), ieee: (0.88, 0.20), nih: (None, 0.33)}
    assert (folds[siim]["films"], folds[siim]["train_images"], folds[siim]["val_images"]) == (3789, 487, 122)

    # The same numbers appear in README.md's section, so the card and the README cannot drift apart.
    section = _readme_section("The bundled model")
    for text in [_f(within["value"], within["ci"]), f"{thr['value']:.4f}",
                 f"sensitivity {s['sensitivity']['value']:.3f} ({s['sensitivity']['ci'][0]:.3f}-",
                 f"specificity {s['specificity']['value']:.3f} ({s['specificity']['ci'][0]:.3f}-",
                 *loso.values()]:
        assert text in section, text

    # Where the numbers came from, the split they rest on, and the limits in words.
    assert "2026-11-29-bundled-model-crossval.json" in card["provenance"]["validation.leave_one_source_out"]
    assert "recomputed" in card["provenance"]["validation"]
    assert card["split"] == {**card["split"], "level": "patient", "seed": 0, "val_fraction": 0.2,
                             "patient_overlap": 0}
    assert card["training_data"]["images"] == 4398 and card["training"]["best_epoch"] == 12
    assert "not a diagnostic device" in card["intended_use"]["summary"]
    limits = " ".join(x["text"] for x in card["limits"])
    assert "0.663" in limits and "far below" in limits and "radiological appearance" in limits
