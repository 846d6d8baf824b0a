"""`train`, `evaluate` and `screen` with `--device gpu`, end to end, on the
emulated GPU backend: the commands' own code paths (device checks, training
loop, class weights, dropout, checkpoints, model files, screening batches)
with the CUDA kernels doing the arithmetic. ``xraynet.devices`` is told a GPU
is present and the backend factory hands out the emulator for 'gpu'.

The emulator draws dropout masks from NumPy like the CPU backend, so a GPU
run and a CPU run with the same seed see the same masks and must agree to
float32 rounding, epoch by epoch.
"""
from __future__ import annotations

import csv

import numpy as np
import pytest

import xraynet.backends as backends
from xraynet import devices
from xraynet.modelfile import load_model
from xraynet.training import train

from helpers import TRAIN_SPEC, emulated_gpu_backend, train_options as _opts


@pytest.fixture
def gpu_here(monkeypatch):
    """'gpu' resolves to the emulated GPU backend for the length of a test."""
    emu = emulated_gpu_backend()
    original = backends._make_backend
    monkeypatch.setattr(devices, "gpu_unavailable_reason", lambda: None)
    monkeypatch.setattr(backends, "_make_backend", lambda d: emu if d == "gpu" else original(d))
    return emu


def _compare_weights(a: dict, b: dict, spec: dict, what: str) -> None:
    """Weights equal to float32 rounding, except a conv bias feeding batch norm:
    its gradient is exactly 0 in exact arithmetic (BN removes the mean), so it
    holds rounding noise that Adam scales up to lr-sized steps on both sides.

    The same happens, more weakly, to any weight whose gradient is tiny against
    its rounding: Adam divides by the gradient's own scale, so after three
    epochs a few elements differ by about one learning rate (1e-3). The CPU and
    the GPU sum in different orders (the CPU's weight gradient in 16 fixed lanes,
    its 3x3 convolutions by Winograd), so up to 2% of a tensor's elements may
    be off the float32 tolerance (one element of a short vector such as a batch-norm
    running mean, which follows the weights before it), none by more than 5e-3 (five
    Adam steps) plus 2%."""
    kinds = [layer["type"] for layer in spec["layers"]] + [None]
    noise = {f"layers.{i}.bias" for i, t in enumerate(kinds[:-1]) if t == "conv2d" and kinds[i + 1] == "batchnorm2d"}
    assert noise, "the spec has a conv bias feeding batch norm; this check expects one"
    for name, arr in a.items():
        if name not in noise:
            diff = np.abs(b[name] - arr)
            off = diff > 1e-4 + 1e-2 * np.abs(arr)
            worst = np.unravel_index(int(np.argmax(diff)), arr.shape)
            assert off.sum() <= max(1, 0.02 * arr.size) and diff[worst] <= 5e-3 + 2e-2 * abs(float(arr[worst])), (
                f"{what}: {name} differs; worst at {tuple(map(int, worst))}: {float(b[name][worst])} vs "
                f"{float(arr[worst])}, {int(off.sum())} of {arr.size} off the float32 tolerance")


def _history(path):
    return [(h["train_loss"], h["val_loss"]) for h in load_model(path).history]


def test_train_evaluate_screen_on_the_gpu_match_the_cpu(dataset, gpu_here, tmp_path):
    from xraynet.evaluate import EvaluationOptions, evaluate
    from xraynet.screening import screen

    root, spec = dataset
    runs = {}
    for device in ("cpu", "gpu"):
        out = tmp_path / device / "m.h5"
        out.parent.mkdir()
        train(root, out, _opts(spec, epochs=3, device=device))
        runs[device] = out
    assert load_model(runs["gpu"]).metadata["device"] == "gpu"
    h_cpu, h_gpu = _history(runs["cpu"]), _history(runs["gpu"])
    assert np.allclose(h_gpu, h_cpu, rtol=1e-3), f"epoch losses: GPU {h_gpu} vs CPU {h_cpu}"
    _compare_weights(load_model(runs["cpu"]).model.state_dict(), load_model(runs["gpu"]).model.state_dict(),
                     TRAIN_SPEC, "after 3 epochs on CPU and GPU")

    # The GPU-trained model evaluated and screened on the GPU and on the CPU.
    docs = {d: evaluate(runs["gpu"], root, EvaluationOptions(n_boot=0, device=d)) for d in ("cpu", "gpu")}
    assert docs["gpu"]["n"] == docs["cpu"]["n"] > 0
    assert abs(docs["gpu"]["accuracy"]["value"] - docs["cpu"]["accuracy"]["value"]) <= 1 / docs["cpu"]["n"]
    reports = {}
    for d in ("cpu", "gpu"):
        report = tmp_path / f"screen-{d}.csv"
        screen(root / "opacity", report, model_path=runs["gpu"], device=d, batch_size=8)
        with open(report, newline="") as fh:
            reports[d] = {r["path"]: r for r in csv.DictReader(fh)}
    assert reports["gpu"].keys() == reports["cpu"].keys() and len(reports["gpu"]) == 120
    for path, row in reports["gpu"].items():
        other = reports["cpu"][path]
        assert row["status"] == other["status"] == "ok"
        assert abs(float(row["p_opacity"]) - float(other["p_opacity"])) < 1e-5, path


def test_resume_a_cpu_checkpoint_on_the_gpu(dataset, gpu_here, tmp_path):
    """Two epochs on the CPU, interrupted, then the third on the GPU: the same
    model (to float32 rounding) as three epochs on the CPU."""
    from xraynet.training import checkpoint_path_for

    root, spec = dataset
    straight = tmp_path / "straight.h5"
    train(root, straight, _opts(spec, epochs=3, device="cpu"))
    split = tmp_path / "split.h5"
    train(root, split, _opts(spec, epochs=2, device="cpu"))
    ckpt = checkpoint_path_for(split)
    assert ckpt.exists(), "training leaves a checkpoint to resume from"
    train(root, split, _opts(spec, epochs=3, device="gpu"), resume=str(ckpt))
    # The checkpoints hold the last epoch's weights (the best model may be an earlier epoch).
    a = load_model(checkpoint_path_for(straight)).model.state_dict()
    _compare_weights(a, load_model(ckpt).model.state_dict(), TRAIN_SPEC, "resumed on the GPU")
