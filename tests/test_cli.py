"""The typer command line: help, bench JSON, train/evaluate round trip, error exits."""
import json

from typer.testing import CliRunner

from xraynet import __version__
from xraynet.cli.main import app
from xraynet.devices import auto_notice, resolve_device
from xraynet.modelfile import read_info

from helpers import TRAIN_SPEC, synthetic_film, write_film

runner = CliRunner()


def test_help_lists_the_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("bench", "train", "evaluate", "screen", "info"):
        assert cmd in res.output


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_bench_json_has_the_keys_torch_reference_has():
    res = runner.invoke(app, ["bench", "--arch", "seed", "--mode", "infer", "--batch", "2", "--threads", "1",
                              "--iters", "2", "--warmup", "1", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output.strip().splitlines()[-1])
    for key in ("arch", "mode", "batch", "device", "threads", "images_per_s", "ms_per_batch"):
        assert key in row
    assert (row["arch"], row["mode"], row["batch"], row["threads"]) == ("seed", "infer", 2, 1)
    assert row["images_per_s"] > 0 and row["iters"] == 2


def test_bench_profile_names_every_stage():
    res = runner.invoke(app, ["bench", "--arch", "seed", "--mode", "train", "--batch", "2", "--iters", "1",
                              "--warmup", "1", "--json", "--profile"])
    assert res.exit_code == 0, res.output
    stages = [p["stage"] for p in json.loads(res.output.strip().splitlines()[-1])["profile"]]
    assert stages[0].startswith("conv2d + relu + maxpool2d") and stages[-1] == "optimizer (adam)"


def test_train_and_evaluate_commands(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    for label in ("normal", "opacity"):
        (root / label).mkdir(parents=True)
        for i in range(24):
            write_film(root / label / f"f{i}", synthetic_film(rng, label == "opacity"), "png")
    spec = tmp_path / "tiny.json"
    spec.write_text(json.dumps(TRAIN_SPEC))
    out = tmp_path / "m.h5"
    res = runner.invoke(app, ["train", str(root), "--out", str(out), "--arch", str(spec), "--epochs", "2",
                              "--batch-size", "8", "--no-augment", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "best epoch" in res.output and out.exists()
    # The default device is auto: said once on stderr when it falls back to the CPU (--quiet or not),
    # and the model records where it really ran.
    notice = auto_notice("auto")
    assert notice is None or res.stderr.count(notice) == 1
    assert read_info(out)["metadata"]["device"] == resolve_device("auto")
    res = runner.invoke(app, ["evaluate", str(out), str(root), "--json", "--n-boot", "20", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["n"] == 48 and set(doc["per_class"]) == {"normal", "opacity"}


def test_errors_exit_2_with_the_file_named(tmp_path):
    missing = tmp_path / "nope.h5"
    res = runner.invoke(app, ["evaluate", str(missing), str(tmp_path)])
    assert res.exit_code == 2
    assert "nope.h5" in res.output


def test_train_options_default_from_train_options():
    """Every option of `xraynet train` that is a TrainOptions field has that field's default (one source)."""
    from dataclasses import fields

    import typer.main

    from xraynet.training import TrainOptions

    command = typer.main.get_command(app).commands["train"]
    defaults = {p.name: p.default for p in command.params}
    shared = [f for f in fields(TrainOptions) if f.name in defaults]
    assert len(shared) >= 20
    for f in shared:
        assert defaults[f.name] == getattr(TrainOptions(), f.name), f.name
    assert TrainOptions().device == "auto"


def test_each_error_class_carries_its_exit_code():
    from xraynet import errors

    assert errors.XraynetError.exit_code == errors.ScreenError.exit_code == errors.TrainingError.exit_code == 2
    assert errors.ReportLockedError.exit_code == 3 and errors.ReportWriteError.exit_code == 4
    assert issubclass(errors.CheckpointError, errors.TrainingError)
    assert issubclass(errors.BenchError, ValueError) and issubclass(errors.CrossvalError, errors.XraynetError)
    assert errors.message("m.h5", "damaged", "an HDF5 file", "text", "Copy it again") == \
        "m.h5: damaged. Expected an HDF5 file, got text. Copy it again."


def test_an_error_raised_in_a_command_exits_with_its_code(tmp_path, monkeypatch):
    """The group catches once: the class's exit code and one 'error:' line, whatever the command."""
    import xraynet.modelcard
    from xraynet.errors import ReportWriteError

    def fail(path):
        raise ReportWriteError(f"{path}: cannot be written. Expected a writable folder, got a read-only one. "
                               "Fix it.")

    monkeypatch.setattr(xraynet.modelcard, "info_document", fail)
    res = runner.invoke(app, ["info", str(tmp_path / "m.h5")])
    assert res.exit_code == 4
    assert "error:" in res.stderr and "m.h5: cannot be written" in res.stderr
