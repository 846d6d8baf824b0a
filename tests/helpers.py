"""Plain helpers shared by several test modules (fixtures live in conftest.py, built from these).

* the tiny model specs, one place, one name each;
* generated films and the labelled film dataset that training tests use;
* random PNGs, the tiny screening model and reading a screening report;
* the review page's test case: films with hostile names and the report screen would write;
* the compute backends that the ``backend`` fixture runs one test body on.

Test modules import from here (``from helpers import ...``: pytest puts tests/ on ``sys.path``),
never from one another or from conftest.py.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xraynet.backends import get_backend
from xraynet.decodecache import file_sha256
from xraynet.discovery import encode_path
from xraynet.imaging import Preprocessing
from xraynet.model import Model
from xraynet.modelfile import read_info, save_model
from xraynet.screening import report_columns
from xraynet.training import TrainOptions

# ------------------------------------------------------------------ model specs
# Training end to end (train, evaluate, crossval, the CLI, the GPU run): two conv blocks with batch
# norm and dropout on 32x32 films, two classes; learns the generated films in a few epochs.
TRAIN_SPEC = {
    "name": "tiny", "input_shape": [1, 32, 32], "output": "softmax",
    "layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
        {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
        {"type": "global_avg_pool2d"}, {"type": "dropout", "p": 0.1}, {"type": "dense", "out_features": 2},
    ],
}
# Screening and the review page: the smallest net a model file can hold (one valid conv, GAP,
# dense), 32x32, classes covid/normal; never trained, its outputs only need to be deterministic.
SCREEN_SPEC = {
    "name": "tiny", "input_shape": [1, 32, 32], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "valid"}, {"type": "relu"},
               {"type": "global_avg_pool2d"}, {"type": "dense", "out_features": 2}],
}
# The model card: one conv block on 24x24 films, two classes; two epochs take about a second.
CARD_SPEC = {
    "name": "tiny", "input_shape": [1, 24, 24], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
               {"type": "maxpool2d", "kernel_size": 2}, {"type": "global_avg_pool2d"},
               {"type": "dense", "out_features": 2}],
}
# Model files: every layer with state beyond its weights (batch-norm running statistics, dropout),
# 16x16, three classes.
BN_SPEC = {
    "name": "bn-tiny", "input_shape": [1, 16, 16], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
               {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2}, {"type": "global_avg_pool2d"},
               {"type": "dropout", "p": 0.5}, {"type": "dense", "out_features": 3}],
}
# CPU against GPU: two conv blocks (integer and "same" padding), batch norm, dropout, 16x16, three classes.
GPU_SPEC = {
    "name": "small", "input_shape": [1, 16, 16], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1}, {"type": "batchnorm2d"},
               {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
               {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
               {"type": "maxpool2d", "kernel_size": 2},
               {"type": "global_avg_pool2d"}, {"type": "dropout", "p": 0.25}, {"type": "dense", "out_features": 3}],
}
# Grad-CAM: a non-square input (12x10) so that rows and columns cannot be swapped unnoticed.
CAM_SPEC = {
    "name": "cam", "input_shape": [1, 12, 10], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
               {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
               {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": 1}, {"type": "relu"},
               {"type": "global_avg_pool2d"}, {"type": "dropout", "p": 0.5}, {"type": "dense", "out_features": 3}],
}
# Source-robust training (balanced sampling, adversarial source head): two conv blocks with batch
# norm on 24x24 films, two classes.
SOURCES_SPEC = {
    "name": "tiny", "input_shape": [1, 24, 24], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
               {"type": "maxpool2d", "kernel_size": 2},
               {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": "same"},
               {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
               {"type": "global_avg_pool2d"}, {"type": "dense", "out_features": 2}],
}
# The execution plan and its kept weights (test_model_stages, test_derived_weights): the bundled
# model's pattern, small: a strided 5x5 conv, blocks of conv + batch norm + ReLU with and without a
# pool, a conv + ReLU without batch norm, GAP and a softmax head.
STAGES_SPEC = {
    "name": "stages", "input_shape": [1, 24, 20], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 4, "kernel_size": 5, "stride": 2, "padding": 2},
               {"type": "batchnorm2d"}, {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2, "stride": 2},
               {"type": "conv2d", "out_channels": 6, "kernel_size": 3, "padding": "same"}, {"type": "batchnorm2d"},
               {"type": "relu"}, {"type": "conv2d", "out_channels": 5, "kernel_size": 3, "padding": "same"},
               {"type": "relu"}, {"type": "global_avg_pool2d"}, {"type": "dense", "out_features": 3}],
}
# The feature tap's gradient check: 8x8, small enough for float64 finite differences.
TAP_SPEC = {
    "name": "t", "input_shape": [1, 8, 8], "output": "softmax",
    "layers": [{"type": "conv2d", "out_channels": 3, "kernel_size": 3, "padding": "same"}, {"type": "relu"},
               {"type": "maxpool2d", "kernel_size": 2}, {"type": "global_avg_pool2d"},
               {"type": "dropout", "p": 0.0}, {"type": "dense", "out_features": 2}],
}


# ------------------------------------------------------------------ generated films
FILM_SIZE = 40   # pixels; the training specs resize to 32


def synthetic_film(rng: np.random.Generator, opacity: bool) -> np.ndarray:
    """A (FILM_SIZE, FILM_SIZE) float64 "film" in [0, 1]: two dark lungs on a brighter textured
    field; ``opacity`` adds a bright blob inside one lung."""
    yy, xx = np.mgrid[0:FILM_SIZE, 0:FILM_SIZE] / FILM_SIZE
    img = 0.7 + 0.05 * rng.standard_normal((FILM_SIZE, FILM_SIZE))
    for cx in (0.3, 0.7):
        lung = ((xx - cx) / 0.15) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1
        img[lung] -= 0.45
    if opacity:
        cx, cy = rng.choice([0.3, 0.7]) + rng.uniform(-0.05, 0.05), rng.uniform(0.35, 0.65)
        img += 0.5 * np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06 ** 2)))
    return np.clip(img, 0, 1)


def _write_dicom(out: Path, img: np.ndarray) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = img.shape[0], img.shape[1], 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (img * 4095).astype(np.uint16).tobytes()
    ds.save_as(str(out), enforce_file_format=True)
    return out


def write_film(path: Path, img: np.ndarray, kind: str) -> Path:
    """Save ``img`` (float in [0, 1]) at ``path`` with the suffix of ``kind``: "png" (8-bit),
    "png16", "rgb" (JPEG, three equal channels) or "dicom" (12 bits stored); returns the file."""
    if kind == "png16":
        Image.fromarray((img * 65535).astype(np.uint16)).save(path.with_suffix(".png"))
        return path.with_suffix(".png")
    if kind == "rgb":
        g = (img * 255).astype(np.uint8)
        Image.fromarray(np.stack([g, g, g], -1)).save(path.with_suffix(".jpg"), quality=95)
        return path.with_suffix(".jpg")
    if kind == "dicom":
        return _write_dicom(path.with_suffix(".dcm"), img)
    Image.fromarray((img * 255).astype(np.uint8)).save(path.with_suffix(".png"))
    return path.with_suffix(".png")


def write_film_dataset(root: Path) -> Path:
    """Fill the empty folder ``root``: classes normal/opacity, 60 patients each with two films in
    turn 8-bit PNG, 16-bit PNG, RGB JPEG and DICOM, one corrupt PNG, and a metadata.csv giving
    patients and two sources. Writes TRAIN_SPEC to ``root.parent / "tiny.json"`` and returns it."""
    rng = np.random.default_rng(7)
    kinds = ["png", "png16", "rgb", "dicom"]
    rows = []
    for label in ("normal", "opacity"):
        (root / label).mkdir()
        for p in range(60):
            for film in range(2):
                kind = kinds[(p + film) % 4]
                path = write_film(root / label / f"p{p:03d}_{film}", synthetic_film(rng, label == "opacity"), kind)
                rows.append({"file": f"{label}/{path.name}", "patient_id": f"{label}-{p}",
                             "source_repo": "site-a" if p % 2 else "site-b", "view": "PA"})
    (root / "normal" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with open(root / "metadata.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["file", "patient_id", "source_repo", "view"])
        w.writeheader()
        w.writerows(rows)
    spec = root.parent / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    return spec


def train_options(spec, **kw) -> TrainOptions:
    """Options that learn the generated films in a few epochs; ``kw`` overrides any of them."""
    # Augmentation slows learning on 32-pixel films; the resume test turns it on.
    base = dict(arch=str(spec), epochs=6, batch_size=16, lr=3e-3, seed=3, patience=10, workers=2, augment=False)
    return TrainOptions(**{**base, **kw})


def random_png(path, seed: int, size: int | tuple[int, int] = 48):
    """An 8-bit gray PNG of seeded uniform noise, ``size`` pixels square or (rows, columns); parent
    folders are created. ``path`` may be str, bytes or Path; returns it."""
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    shape = (size, size) if isinstance(size, int) else tuple(size)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format="PNG")
    return path


# ------------------------------------------------------------------ screening reports
CLASSES = ["covid", "normal"]
REPORT_COLUMNS = report_columns(CLASSES)
# The operating point of the review's model card: a screening threshold chosen on validation films.
THRESHOLD = {"class": "covid", "value": 0.5, "target_sensitivity": 0.9, "chosen_on": "validation",
             "sources": ["siim", "ieee8023"],
             "validation": {"threshold": 0.5, "flagged": 30, "tp": 27, "fp": 3, "tn": 60, "fn": 3,
                            "sensitivity": {"value": 0.9, "ci": [0.74, 0.97], "k": 27, "n": 30},
                            "specificity": {"value": 0.952, "ci": [0.87, 0.98], "k": 60, "n": 63}}}


def make_model(path: Path, seed: int = 1, metadata=None) -> Path:
    """Save the untrained SCREEN_SPEC model (classes covid/normal, 32-pixel preprocessing) at
    ``path``; ``metadata`` defaults to ``{"threshold": THRESHOLD}``. Returns ``path``."""
    save_model(path, Model(SCREEN_SPEC, seed=seed), classes=CLASSES,
               preprocessing=Preprocessing(image_size=32).to_dict(),
               metadata=metadata if metadata is not None else {"threshold": THRESHOLD})
    return path


def read_report_rows(report: Path) -> list[dict]:
    """The data rows of a covid/normal screening report as dicts; asserts the header and that
    every row has every column."""
    with open(report, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh, strict=True)
        header = next(reader)
        assert header == REPORT_COLUMNS
        rows = [dict(zip(header, r)) for r in reader]
    assert all(len(r) == len(REPORT_COLUMNS) for r in rows)
    return rows


def check_whole_report(report: Path) -> list[dict]:
    """A report that a kill may have left: whole records only, no path twice. Returns its rows."""
    data = report.read_bytes()
    assert data.endswith(b"\r\n"), f"partial last record: {data[-80:]!r}"
    rows = read_report_rows(report)
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)), "a path appears twice"
    return rows


def screen_command(folder, report, model_file, *extra) -> list[str]:
    """``xraynet screen`` as cron runs it, in a process of its own (for kill -9 tests)."""
    return [sys.executable, "-m", "xraynet.cli.main", "screen", str(folder), "--out", str(report), "--model",
            str(model_file), "--quiet", *extra]


# ------------------------------------------------------------------ the review page's case
XSS = "<img src=x onerror=alert(1)>.png"
REVIEW_FILM_SHAPE = (60, 80)   # rows, columns: the report's height and width cells say 60 and 80
# (name, status, p_covid or error cell, warnings, heatmap: None / "abs" / "rel"); p_normal = 1 - p_covid.
CASES = [
    (XSS, "ok", 0.91, "", "abs"),
    ('q"uo\'te.png', "ok", 0.75, "tiny", "abs"),
    ("a #b?c%d.png", "ok", 0.30, "likely_inverted;decoder_warning (pillow: <b>odd</b> & text)", None),
    ("sp ace.png", "ok", 0.10, "", None),
    ("ünï 画像.png", "ok", 0.55, "", "rel"),
    ("=cmd.png", "ok", 0.20, "", None),
    ("'quoted.png", "ok", 0.65, "", "abs"),
    ("sub/deep.png", "ok", 0.05, "", None),
    (b"bad\xff name.png", "ok", 0.80, "", "abs"),
    ("back\\slash.png", "ok", 0.40, "nearly_uniform", None),
    ("missing.png", "ok", 0.30, "", None),          # in the report, gone from the folder
    ("empty.png", "error", "empty: empty.png: the file is empty. Expected an image file, got 0 bytes. Copy the "
                           "file again from its source, or remove it from the folder.", "", None),
    ("<script>alert(2)</script>.png", "error",
     "not_an_image: <script>alert(2)</script>.png: no image format recognises it. Expected PNG, JPEG, ..., got "
     "'\"<>&' bytes. Remove it from the folder.", "", None),
]
FLAGGED = {c[0] for c in CASES if c[1] == "ok" and c[2] >= 0.5}
ERRORS = {c[0] for c in CASES if c[1] == "error"}
WARNED = {c[0] for c in CASES if c[3]}
NORMAL = {c[0] for c in CASES if c[1] == "ok" and c[2] < 0.5}


def _cell(text: str) -> str:
    """The report's spreadsheet guard, as xraynet.screening documents it."""
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r", "'")) else text


def shown_name(name) -> str:
    """How a case's name appears on the page: the report's path text."""
    return encode_path(name if isinstance(name, bytes) else os.fsencode(name))


def _case_row(i: int, case: tuple, root: Path, folder: Path, heat: Path, weights_sha: str) -> list[str]:
    """Create case ``i``'s film (and heatmap) and return its report row."""
    name, status, p, warns, heatmap = case
    raw = name if isinstance(name, bytes) else os.fsencode(name)
    key = encode_path(raw)
    src = os.path.join(os.fsencode(folder), raw)
    sha = ""
    if status == "ok" and name != "missing.png":
        random_png(src, i, REVIEW_FILM_SHAPE)
        sha = file_sha256(src)
    elif name == "missing.png":
        sha = hashlib.sha256(b"gone").hexdigest()
    elif name == "empty.png":
        os.makedirs(folder, exist_ok=True)
        open(src, "wb").close()
        sha = file_sha256(src)
    heat_cell = ""
    if heatmap:
        target = heat / (key + ".png")  # screen names the overlay after the path text
        random_png(target, 100 + i, (32, 32))
        heat_cell = str(target) if heatmap == "abs" else os.path.relpath(target, root)
    if status != "ok":
        return [_cell(key), sha, "error", _cell(p), "", "", "", "", "0.5", "", "", "", "tiny (model.h5)",
                weights_sha, "0.1.0", "2026-11-29T01:30:00Z", ""]
    flagged = p >= 0.5
    label = "covid" if p >= 0.5 else "normal"
    return [_cell(key), sha, "ok", "", label, repr(p), repr(round(1 - p, 6)), str(int(flagged)), "0.5",
            _cell(warns), "80", "60", "tiny (model.h5)", weights_sha, "0.1.0",
            f"2026-11-29T0{i % 10}:00:00Z", _cell(heat_cell)]


def build_case(root: Path, model_file: Path) -> dict:
    """A folder of films with odd names, heatmap PNGs, and the report screen would have written for
    them (written here so that flagged / warnings / errors are known exactly). Returns the paths:
    ``folder``, ``report``, ``page`` (not yet written) and ``heat``."""
    folder, heat = root / "films", root / "heat"
    weights_sha = read_info(model_file)["weights_sha256"]
    rows = [_case_row(i, case, root, folder, heat, weights_sha) for i, case in enumerate(CASES)]
    rows.sort(key=lambda r: r[0][1:] if r[0].startswith("'") else r[0])
    report = root / "report.csv"
    with open(report, "w", newline="", encoding="utf-8", errors="surrogateescape") as fh:
        w = csv.writer(fh, lineterminator="\r\n")
        w.writerow(report_columns(CLASSES))
        w.writerows(rows)
    return {"folder": folder, "report": report, "page": root / "review.html", "heat": heat}


# ------------------------------------------------------------------ compute backends
@functools.lru_cache(maxsize=None)
def emulated_gpu_backend():
    """The GPU backend on NumPy arrays with emulated kernels; grids capped at 4
    blocks (the kernels loop grid-stride) so emulation stays quick."""
    from cudaemu import compiler
    from xraynet.backends.gpu import CUDABackend

    if compiler() is None:
        pytest.skip("backend 'gpu-emu' needs a C++ compiler (g++) on PATH to build the CUDA emulator")
    from cudaemu import compile_module

    return CUDABackend(xp=np, compile_fn=compile_module, checked=True, max_blocks=4)


@functools.lru_cache(maxsize=None)
def real_gpu_backend():
    from xraynet.devices import gpu_unavailable_reason
    from xraynet.backends.gpu import CUDABackend

    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend 'gpu' unavailable here: {reason}")
    return CUDABackend(checked=True)


def make_backend(name: str):
    """The backend called ``name`` in BACKENDS; skips the test where it cannot run."""
    if name == "cpu":
        return get_backend("cpu")
    if name == "gpu-emu":
        return emulated_gpu_backend()
    return real_gpu_backend()


BACKENDS = ["cpu", "gpu-emu", pytest.param("gpu", marks=pytest.mark.gpu)]


# ------------------------------------------------------------------ decoding errors
def assert_reason(path, reason):
    """Decode ``path`` expecting an ImageError with ``reason``; checks the message follows the
    house pattern (starts with the file, says what was expected, one line) and names the file.
    Returns the error for further checks."""
    from xraynet.errors import ImageError
    from xraynet.imaging import decode

    with pytest.raises(ImageError) as ei:
        decode(path)
    e = ei.value
    assert e.reason == reason, f"{path}: reason {e.reason!r}, expected {reason!r}: {e}"
    msg = str(e)
    assert msg.startswith(str(path)) and "Expected" in msg and "\n" not in msg, msg
    assert e.path == str(path)
    return e
