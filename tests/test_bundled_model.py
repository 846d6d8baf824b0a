"""The model shipped inside the package: loads, is what the README says, and
is the default of `xraynet evaluate`."""
import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from xraynet.cli.main import app
from xraynet.modelfile import bundled_model_path, load_model


def test_bundled_model_loads_with_its_threshold_preprocessing_and_recipe():
    loaded = load_model(bundled_model_path())
    assert loaded.classes == ["covid", "normal", "pneumonia"]
    assert loaded.model.spec["name"] == "xraynet"
    assert loaded.preprocessing["image_size"] == loaded.model.input_shape[1]
    assert loaded.preprocessing["fit"] == "stretch"   # one geometry for every source (README)
    thr = loaded.metadata["threshold"]
    assert thr["class"] == "covid" and 0 < thr["value"] < 1 and thr["chosen_on"] == "validation"
    # Chosen on the validation films of sources holding covid and other films, not on a
    # covid-only collection.
    assert thr["sources"] and "vikasb512/Capstone-Project" in thr["sources"]
    recipe = loaded.metadata["options"]    # what `xraynet crossval` retrains by default
    assert recipe["balance"] == "source-class" and recipe["adversarial_source"] > 0
    assert loaded.optimizer_state is None and not loaded.aux  # shipped lean: no Adam moments, no adversary
    assert bundled_model_path().stat().st_size < 4_000_000


def test_evaluate_defaults_to_the_bundled_model(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("covid", "normal", "pneumonia"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (150, 140), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path), "--json", "--n-boot", "10"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.strip().splitlines()[-1])
    assert doc["n"] == 9 and doc["model"]["path"] == str(bundled_model_path())
    assert doc["screening"]["class"] == "covid"
