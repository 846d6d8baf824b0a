"""A short training and evaluation run on the real chest X-rays in ../shared/data/cxr.

Skipped, with a message, on a clone without that folder beside it; CI has it.
"""
import json
from pathlib import Path

import pytest

from xraynet.evaluate import evaluate
from xraynet.train import TrainOptions, train

CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"

pytestmark = pytest.mark.skipif(not (CXR / "metadata.csv").exists(),
                                reason=f"{CXR} not found: the real-data smoke run needs ../shared/data/cxr")


def test_real_data_smoke_run(tmp_path):
    out = tmp_path / "real.h5"
    summary = train(CXR, out, TrainOptions(arch="xraynet", image_size=48, epochs=1, batch_size=32, workers=2))
    assert summary["train_images"] + summary["val_images"] == 609 and not summary["skipped"]
    doc = evaluate(out, CXR, subset="val", n_boot=50)
    assert doc["n"] == summary["val_images"]
    assert set(doc["by_group"]["source"]) == {"hida6/covid-chestxray-dataset", "muhammedtalo/COVID-19"}
    assert {"AP", "PA"} <= set(doc["by_group"]["view"])
    assert doc["per_class"]["covid"]["auc"]["value"] is not None
    json.dumps(doc, allow_nan=False)
