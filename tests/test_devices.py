"""--device auto|cpu|gpu and `xraynet info`, without a GPU.

"No GPU here" is made by replacing ``xraynet.devices.gpu_unavailable_reason``
(the functions that use it look it up at call time), so these tests hold on a
GPU machine too; the one test of the real check needs CuPy to be absent.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import types

import numpy as np
import pytest
from typer.testing import CliRunner

from xraynet import devices
from xraynet.backends import get_backend
from xraynet.cli.main import app
from xraynet.errors import BackendError

from helpers import random_png

runner = CliRunner()
NO_GPU = "CuPy is not installed"
NOTICE = "--device auto: running on the CPU (CuPy is not installed)."
INSTALL = ('pip install "xraynet[gpu]" (CUDA 12)', 'pip install "xraynet[gpu-cuda13]" (CUDA 13)')

def _flat(text: str) -> str:
    """CLI output with rich's line wrapping and error-box borders undone."""
    return " ".join(t for t in text.split() if t.strip("│╭╮╰╯─"))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(devices, "gpu_unavailable_reason", lambda: NO_GPU)
    try:
        get_backend("gpu")
    except BackendError:
        return
    pytest.skip("a GPU backend was already made in this process (get_backend caches it): no GPU cannot be "
                "simulated here")


@pytest.fixture
def with_gpu(monkeypatch):
    monkeypatch.setattr(devices, "gpu_unavailable_reason", lambda: None)


# --- the library: names, resolution, the notice -------------------------------------------------------------

def test_normalise_accepts_the_three_names_and_cuda():
    assert [devices.normalise(d) for d in ("auto", "cpu", "gpu", "cuda", " GPU ", "Cpu")] == \
        ["auto", "cpu", "gpu", "gpu", "gpu", "cpu"]


def test_normalise_rejects_other_names_naming_the_choices():
    with pytest.raises(BackendError) as e:
        devices.normalise("tpu")
    assert "device 'tpu': unknown" in str(e.value) and "auto, cpu, gpu" in str(e.value)


def test_without_a_gpu_auto_is_the_cpu_with_a_notice(no_gpu):
    assert devices.resolve_device("auto") == "cpu"
    assert devices.auto_notice("auto") == NOTICE
    assert devices.auto_notice("cpu") is None and devices.auto_notice("gpu") is None
    # 'gpu' is only checked when the backend is made.
    assert devices.resolve_device("gpu") == devices.resolve_device("cuda") == "gpu"
    assert get_backend("auto") is get_backend("cpu")


def test_with_a_gpu_auto_is_the_gpu_and_says_nothing(with_gpu):
    assert devices.resolve_device("auto") == "gpu"
    assert devices.auto_notice("auto") is None
    assert devices.resolve_device("cpu") == "cpu"


def test_gpu_without_cupy_fails_with_the_install_commands(no_gpu):
    for name in ("gpu", "cuda"):
        with pytest.raises(BackendError) as e:
            get_backend(name)
        msg = str(e.value)
        assert msg.startswith("device 'gpu': CuPy is not installed.")
        assert all(cmd in msg for cmd in INSTALL) and "--device cpu" in msg


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_the_real_check_finds_no_cupy():
    devices.gpu_unavailable_reason.cache_clear()
    try:
        assert devices.gpu_unavailable_reason() == NO_GPU
        assert devices.resolve_device("auto") == "cpu" and devices.auto_notice("auto") == NOTICE
        with pytest.raises(BackendError, match="CuPy is not installed"):
            get_backend("gpu")
    finally:
        devices.gpu_unavailable_reason.cache_clear()


# --- xraynet info ---------------------------------------------------------------------------------------------

def test_info_without_a_gpu_gives_the_reason_and_the_install_hint(no_gpu):
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    lines = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in res.stdout.splitlines())
    from xraynet import __version__

    assert lines["xraynet"] == __version__ and lines["numpy"] == np.__version__
    assert lines["backend (auto)"] == "cpu"
    assert lines["gpu"] == f"none: {NO_GPU}"
    assert all(cmd in lines["to use a GPU"] for cmd in INSTALL)


def test_info_json_without_a_gpu(no_gpu):
    res = runner.invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["auto_device"] == "cpu" and doc["gpu_available"] is False
    assert doc["gpu_unavailable_reason"] == NO_GPU and all(cmd in doc["install_hint"] for cmd in INSTALL)
    assert doc["numpy"] == np.__version__ and "device_name" not in doc


def _fake_cupy():
    """Just the corner of CuPy's API that device_info reads, with an H200's answers."""
    props = {"name": b"NVIDIA H200", "major": 9, "minor": 0, "totalGlobalMem": 150 * 2**30}
    runtime = types.SimpleNamespace(getDeviceProperties=lambda i: props, runtimeGetVersion=lambda: 12080,
                                    driverGetVersion=lambda: 13000, getDeviceCount=lambda: 1)
    cuda = types.SimpleNamespace(runtime=runtime, Device=lambda: types.SimpleNamespace(id=0))
    return types.SimpleNamespace(__version__="14.2.0", cuda=cuda)


def test_info_with_a_gpu_names_device_memory_and_cuda_versions(with_gpu, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy())
    doc = json.loads(runner.invoke(app, ["info", "--json"]).stdout)
    assert doc["auto_device"] == "gpu" and doc["gpu_available"] is True and doc["cupy"] == "14.2.0"
    assert (doc["device_name"], doc["compute_capability"], doc["memory_gib"]) == ("NVIDIA H200", "9.0", 150.0)
    assert (doc["cuda_runtime"], doc["cuda_driver"]) == ("12.8", "13.0")
    res = runner.invoke(app, ["info"])
    assert res.exit_code == 0, res.output
    text = res.stdout
    for line in ("backend (auto)      gpu", "cupy                14.2.0", "gpu                 NVIDIA H200 (device 0)",
                 "compute capability  9.0", "gpu memory          150.0 GiB", "CUDA runtime        12.8",
                 "CUDA driver         13.0"):
        assert line in text.splitlines(), text
    assert "to use a GPU" not in text


# --- --device on the commands ---------------------------------------------------------------------------------

def _commands(tmp_path, model):
    """Each command that takes --device, with inputs that would let it run, and what it would write."""
    data = tmp_path / "data"
    for label in ("covid", "normal"):
        random_png(data / label / "a.png", 1)
    return {
        "bench": ["bench", "--arch", "seed", "--mode", "infer", "--batch", "2", "--iters", "1", "--warmup", "1"],
        "train": ["train", str(data), "--out", str(tmp_path / "m.h5"), "--arch", "seed", "--epochs", "1"],
        "evaluate": ["evaluate", str(model), str(data), "--out", str(tmp_path / "metrics.json"), "--n-boot", "0"],
        "screen": ["screen", str(data), "--out", str(tmp_path / "report.csv"), "--model", str(model)],
    }


@pytest.mark.parametrize("command", ["bench", "train", "evaluate", "screen"])
def test_device_gpu_without_one_exits_2_with_the_install_command_and_writes_nothing(no_gpu, tmp_path,
                                                                                     model_file, command):
    args = _commands(tmp_path, model_file)[command]
    before = sorted(os.listdir(tmp_path))
    res = runner.invoke(app, args + ["--device", "gpu"])
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr  # one line, whatever the terminal width
    assert lines[0].startswith("error: device 'gpu': CuPy is not installed.")
    assert all(cmd in lines[0] for cmd in INSTALL) and "--device cpu" in lines[0]
    assert sorted(os.listdir(tmp_path)) == before  # no model, metrics, decode cache, report or lock


@pytest.mark.parametrize("command", ["bench", "train", "evaluate", "screen"])
def test_unknown_device_is_a_usage_error(tmp_path, model_file, command):
    res = runner.invoke(app, _commands(tmp_path, model_file)[command] + ["--device", "tpu"])
    assert res.exit_code == 2
    assert "Invalid value for '--device': unknown device. Expected auto, cpu or gpu, got 'tpu'." in _flat(res.output)


def test_cuda_is_taken_as_gpu(no_gpu):
    res = runner.invoke(app, ["bench", "--device", "cuda"])
    assert res.exit_code == 2 and "device 'gpu': CuPy is not installed" in res.stderr


def test_bench_auto_runs_on_the_cpu_and_says_so_once_on_stderr(no_gpu):
    res = runner.invoke(app, ["bench", "--arch", "seed", "--mode", "infer", "--batch", "2", "--iters", "1",
                              "--warmup", "1", "--device", "auto", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)  # stdout is the JSON object alone
    assert row["device"] == "cpu" and row["device_name"] != "auto"
    assert res.stderr.count("--device auto:") == 1 and NOTICE in res.stderr


def test_bench_default_device_is_auto(no_gpu):
    res = runner.invoke(app, ["bench", "--arch", "seed", "--mode", "infer", "--batch", "2", "--iters", "1",
                              "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["device"] == "cpu" and NOTICE in res.stderr


def test_bench_cpu_prints_no_notice():
    res = runner.invoke(app, ["bench", "--arch", "seed", "--mode", "infer", "--batch", "2", "--iters", "1",
                              "--warmup", "1", "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["device"] == "cpu" and res.stderr == ""


def test_screen_auto_screens_on_the_cpu_and_stays_quiet_off_a_terminal(no_gpu, tmp_path, model_file):
    """From cron (stderr not a terminal) screen prints nothing but errors: no notice either."""
    random_png(tmp_path / "in" / "a.png", 1)
    report = tmp_path / "r.csv"
    res = runner.invoke(app, ["screen", str(tmp_path / "in"), "--out", str(report), "--model", str(model_file),
                              "--device", "auto"])
    assert res.exit_code == 0, res.output
    assert res.stdout == "" and res.stderr == ""
    assert len(report.read_text().splitlines()) == 2


def test_screen_library_refuses_a_gpu_before_writing(no_gpu, tmp_path, model_file):
    from xraynet.screening import screen

    random_png(tmp_path / "in" / "a.png", 1)
    with pytest.raises(BackendError, match="CuPy is not installed"):
        screen(tmp_path / "in", tmp_path / "r.csv", model_path=model_file, device="gpu")
    with pytest.raises(BackendError, match="device 'tpu': unknown"):
        screen(tmp_path / "in", tmp_path / "r.csv", model_path=model_file, device="tpu")
    assert sorted(os.listdir(tmp_path)) == ["in"]
