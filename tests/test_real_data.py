"""A short training and evaluation run on the real chest X-rays in ../shared/data/cxr.

Skipped, with a message, on a clone without that folder beside it; CI has it.
The folder grows over time, so these tests check properties of what is there
(every film accounted for, patients kept apart, the sources that hold two
classes measured within themselves), never its counts.
"""
import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest

from xraynet.data import scan_dataset, split_dataset
from xraynet.evaluate import EvaluationOptions, evaluate
from xraynet.training import TrainOptions, train

CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"

pytestmark = pytest.mark.skipif(not (CXR / "metadata.csv").exists(),
                                reason=f"{CXR} not found: the real-data smoke run needs ../shared/data/cxr")


def _metadata():
    with open(CXR / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_every_metadata_row_is_an_image_with_a_patient_and_a_source():
    rows = _metadata()
    ds = scan_dataset(CXR)
    assert len(ds) == len(rows) and ds.n_metadata_without_images == 0 and ds.n_images_without_metadata == 0
    assert all(it.source for it in ds.items)
    assert {r["label"] for r in rows} == set(ds.classes)


def test_split_keeps_patients_apart_and_each_source_class_cell_on_both_sides():
    ds = scan_dataset(CXR)
    split = split_dataset(ds, val_fraction=0.2, seed=0)
    train_ids = {ds.items[i].patient_id for i in split.train}
    val_ids = {ds.items[i].patient_id for i in split.val}
    assert not train_ids & val_ids
    assert abs(len(split.val) / len(ds) - 0.2) < 0.02
    cells = defaultdict(lambda: [0, 0])
    for side, idx in ((0, split.train), (1, split.val)):
        for i in idx:
            cells[(ds.items[i].source, ds.items[i].label)][side] += 1
    # Cells with a few dozen films have some on both sides, so each is measured on validation.
    for cell, (n_train, n_val) in cells.items():
        if n_train + n_val >= 40:
            assert n_train and n_val, cell


def test_real_data_smoke_run(tmp_path):
    out = tmp_path / "real.h5"
    summary = train(CXR, out, TrainOptions(arch="xraynet", image_size=32, epochs=1, batch_size=64, workers=2,
                                           fit="stretch", balance="source-class", adversarial_source=0.3))
    assert summary["train_images"] + summary["val_images"] == len(_metadata()) and not summary["skipped"]
    assert summary["selected_by"] == "within-source AUC"
    doc = evaluate(out, CXR, EvaluationOptions(subset="val", n_boot=20))
    assert doc["n"] == summary["val_images"]
    sources = {r["source_repo"] for r in _metadata()}
    assert set(doc["by_group"]["source"]) == sources
    # Some source holds covid and normal films both: its covid AUC is defined within it.
    two_class = [s for s, m in doc["by_group"]["source"].items()
                 if m["per_class"]["covid"]["auc"]["value"] is not None]
    assert two_class
    threshold = json.loads(json.dumps(summary["threshold"]))
    assert threshold["sources"] and set(threshold["sources"]) <= set(two_class)
    json.dumps(doc, allow_nan=False)
