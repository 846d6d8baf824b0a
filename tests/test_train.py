"""`xraynet train` / `evaluate` end to end on a generated dataset.

The images are textured "lungs" (two dark ellipses on a brighter field);
the `opacity` class adds a bright blob inside a lung. Files come as 8-bit
and 16-bit PNG, RGB JPEG and DICOM, with one corrupt file, and a
metadata.csv groups them into patients (two films each) and two sources.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from xraynet.modelfile import load_model
from xraynet.train import TrainOptions, checkpoint_path_for, train

SIZE = 40
TINY_SPEC = {
    "name": "tiny", "input_shape": [1, 32, 32], "output": "softmax",
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
        {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
        {"type": "global_avg_pool2d"}, {"type": "dropout", "p": 0.1}, {"type": "dense", "out_features": 2},
    ],
}


def _film(rng, opacity: bool) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    img = 0.7 + 0.05 * rng.standard_normal((SIZE, SIZE))
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] -= 0.45
    if opacity:
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
        img += 0.5 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06 ** 2)))
    return np.clip(img, 0, 1)


def _write(path, img, kind):
    if kind == "png16":
        Image.fromarray((img * 65535).astype(np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if kind == "rgb":
        g = (img * 255).astype(np.uint8)
        Image.fromarray(np.stack([g, g, g], -1)).save(path.with_suffix(".jpg"), quality=95)
        return path.with_suffix(".jpg")
    if kind == "dicom":
        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out = path.with_suffix(".dcm")
        ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
        ds.Rows, ds.Columns, ds.SamplesPerPixel = SIZE, SIZE, 1
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (img * 4095).astype(np.uint16).tobytes()
        ds.save_as(str(out), enforce_file_format=True)
        return out
    Image.fromarray((img * 255).astype(np.uint8)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("films")
    rng = np.random.default_rng(7)
    kinds = ["png", "png16", "rgb", "dicom"]
    rows = []
    for label in ("normal", "opacity"):
        (root / label).mkdir()
        for p in range(60):
            for film in range(2):
                kind = kinds[(p + film) % 4]
                stem = root / label / f"p{p:03d}_{film}"
                path = _write(stem, _film(rng, label == "opacity"), kind)
                rows.append({"file": f"{label}/{path.name}", "patient_id": f"{label}-{p}",
                             "source_repo": "site-a" if p % 2 else "site-b", "view": "PA"})
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo", "view"])
        w.writeheader()
        w.writerows(rows)
    spec = root.parent / "tiny.json"
    spec.write_text(json.dumps(TINY_SPEC))
    return root, spec


def _opts(spec, **kw):
    # Augmentation slows learning on 32-pixel films; the resume test turns it on.
    base = dict(arch=str(spec), epochs=6, batch_size=16, lr=3e-3, seed=3, patience=10, workers=2, augment=False)
    return TrainOptions(**{**base, **kw})


def test_train_then_evaluate(dataset, tmp_path):
    from xraynet.evaluate import evaluate

    root, spec = dataset
    out = tmp_path / "m.h5"
    summary = train(root, out, _opts(spec))
    assert [s[0] for s in summary["skipped"]] == ["normal/broken.png"]
    loaded = load_model(out)
    assert loaded.classes == ["normal", "opacity"]
    assert loaded.metadata["threshold"]["class"] == "opacity"
    assert len(loaded.history) == 6 and (tmp_path / "m.history.csv").exists()
    assert Image.open(tmp_path / "m.history.png").size[0] > 100
    doc = evaluate(out, root, n_boot=50, plots_dir=tmp_path / "plots")
    assert doc["accuracy"]["value"] > 0.85, doc["accuracy"]
    assert set(doc["by_group"]["source"]) == {"site-a", "site-b"}
    assert (tmp_path / "plots" / "roc.png").exists()
    json.dumps(doc, allow_nan=False)
    held_out = evaluate(out, root, subset="val", n_boot=0)
    assert held_out["data"]["subset"] == "val"
    assert held_out["n"] == summary["val_images"] < doc["n"]


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
