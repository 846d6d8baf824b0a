"""`xraynet train` / `evaluate` end to end on a generated dataset.

The images are textured "lungs" (two dark ellipses on a brighter field);
the `opacity` class adds a bright blob inside a lung. Files come as 8-bit
and 16-bit PNG, RGB JPEG and DICOM, with one corrupt file, and a
metadata.csv groups them into patients (two films each) and two sources
(``helpers.write_film_dataset``, the ``dataset`` fixture of conftest.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xraynet.modelfile import load_model
from xraynet.training import checkpoint_path_for, train

from helpers import random_png
from helpers import train_options as _opts


def test_train_then_evaluate(dataset, tmp_path):
    from xraynet.evaluate import EvaluationOptions, evaluate

    root, spec = dataset
    out = tmp_path / "m.h5"
    summary = train(root, out, _opts(spec))
    assert [s[0] for s in summary["skipped"]] == ["normal/broken.png"]
    loaded = load_model(out)
    assert loaded.classes == ["normal", "opacity"]
    assert loaded.metadata["threshold"]["class"] == "opacity"
    assert len(loaded.history) == 6 and (tmp_path / "m.history.csv").exists()
    assert Image.open(tmp_path / "m.history.png").size[0] > 100
    doc = evaluate(out, root, EvaluationOptions(n_boot=50, plots_dir=tmp_path / "plots"))
    assert doc["accuracy"]["value"] > 0.85, doc["accuracy"]
    assert set(doc["by_group"]["source"]) == {"site-a", "site-b"}
    assert (tmp_path / "plots" / "roc.png").exists()
    json.dumps(doc, allow_nan=False)
    held_out = evaluate(out, root, EvaluationOptions(subset="val", n_boot=0))
    assert held_out["data"]["subset"] == "val"
    assert held_out["n"] == summary["val_images"] < doc["n"]
    # The folder grown by one film splits otherwise: training patients would be scored as held out.
    import shutil

    from xraynet.errors import EvaluationError
    from xraynet.evaluate import _check_same_folder
    from xraynet.data import scan_dataset

    grown = tmp_path / "grown"
    shutil.copytree(root, grown)
    random_png(grown / "normal" / "zz_new.png", 5)
    with pytest.raises(EvaluationError, match="not the folder"):
        evaluate(out, grown, EvaluationOptions(subset="val", n_boot=0))
    # A model written before the fingerprint: the films per class are compared instead.
    meta = load_model(out).metadata
    del meta["split"]["files_sha256"]
    # ... whose confound counts took in the unreadable files too (now they count the films trained on).
    assert meta["data"]["confounds"]["images"]["all"] == {"normal": 120, "opacity": 120}
    meta["data"]["confounds"]["images"]["all"] = {"normal": 121, "opacity": 120}
    _check_same_folder(out, meta, scan_dataset(root))
    with pytest.raises(EvaluationError, match="not the folder"):
        _check_same_folder(out, meta, scan_dataset(grown))


def test_split_keeps_patients_apart(dataset):
    from xraynet.data import scan_dataset, split_dataset

    root, _ = dataset
    ds = scan_dataset(root)
    split = split_dataset(ds, val_fraction=0.25, seed=3)
    tr = {ds.items[i].patient_id for i in split.train}
    va = {ds.items[i].patient_id for i in split.val}
    assert tr and va and not (tr & va)


def test_resume_gives_the_same_weights(dataset, tmp_path):
    root, spec = dataset
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = tmp_path / "a" / "m.h5"
    train(root, full, _opts(spec, epochs=3, augment=True))
    part = tmp_path / "b" / "m.h5"
    train(root, part, _opts(spec, epochs=2, augment=True))  # as if killed after epoch 2
    train(root, part, _opts(spec, epochs=3, augment=True), resume=str(checkpoint_path_for(part)))
    a = load_model(checkpoint_path_for(full)).model.state_dict()
    b = load_model(checkpoint_path_for(part)).model.state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
