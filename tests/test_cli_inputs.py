"""Command-line inputs refused before any work (exit 2, the option named), and what the commands
print when stdout is not a terminal: every figure whole, nothing from a file echoed raw."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

import xraynet.bench
import xraynet.evaluate
from xraynet.cli.common import PIPE_WIDTH, console, terminal_text
from xraynet.cli.main import app
from xraynet.metrics import evaluate_predictions
from xraynet.source_metrics import within_source_aucs

runner = CliRunner()


@pytest.fixture
def no_work(monkeypatch):
    """Evaluating or benchmarking fails the test: a refused option must stop the command first."""
    def boom(*args, **kwargs):
        raise AssertionError("the command started working on an option it should have refused")

    monkeypatch.setattr(xraynet.evaluate, "evaluate", boom)
    monkeypatch.setattr(xraynet.bench, "run_bench", boom)


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    (root / "covid").mkdir(parents=True)
    (root / "normal").mkdir()
    return root


def _refused(args, option: str, *words):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    # typer draws usage errors in a box under CliRunner: read the words, not the frame
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", res.output).split())
    assert "Traceback" not in text
    assert option in text, res.output
    for w in words:
        assert w in text, res.output
    return res


@pytest.mark.parametrize("seed", ["-1", "-5", str(2**32)])
def test_a_seed_numpy_refuses_is_a_usage_error(no_work, data, tmp_path, seed):
    _refused(["evaluate", str(tmp_path / "m.h5"), str(data), "--seed", seed], "--seed")
    _refused(["bench", "--iters", "1", "--seed", seed], "--seed")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "-0.5"])
def test_bench_min_time_must_be_a_finite_positive_number(no_work, value):
    _refused(["bench", "--min-time", value], "--min-time", "finite number > 0")


def test_bench_timing_refuses_unusable_values_from_python():
    from xraynet.bench import Timing
    from xraynet.errors import BenchError

    for kw in ({"min_time": float("nan")}, {"min_time": float("inf")}, {"min_time": 0.0}, {"warmup": 0},
               {"iters": 0}, {"min_iters": -1}):
        with pytest.raises(BenchError, match="Expected"):
            Timing(**kw)
    with pytest.raises(BenchError, match="seed: unusable"):
        xraynet.bench.make_step("seed", "infer", 1, seed=-1)


def test_bench_json_out_is_checked_before_the_benchmark(no_work, tmp_path):
    _refused(["bench", "--json-out", str(tmp_path / "missing" / "rows.jsonl")], "--json-out", "does not exist")
    assert not (tmp_path / "missing").exists()
    _refused(["bench", "--json-out", str(tmp_path)], "--json-out", "a directory")
    (tmp_path / "afile").write_text("x")
    _refused(["bench", "--json-out", str(tmp_path / "afile" / "rows.jsonl")], "--json-out", "does not exist")


def test_bench_appends_rows_and_prints_every_figure(monkeypatch, tmp_path):
    row = {"arch": "seed", "mode": "train", "batch": 32, "device": "cpu", "threads": 2,
           "device_name": "a processor with a very long name " * 3, "images_per_s": 123456.789,
           "ms_per_batch": 987654.321, "ms_p10": 111111.11, "ms_p90": 999999.99, "gflop_per_s": 4321.5,
           "iters": 123456}
    monkeypatch.setattr(xraynet.bench, "run_bench", lambda *a, **k: dict(row))
    out = tmp_path / "rows.jsonl"
    for _ in range(2):
        res = runner.invoke(app, ["bench", "--json-out", str(out), "--device", "cpu"])
        assert res.exit_code == 0, res.output
    assert [json.loads(x)["iters"] for x in out.read_text().splitlines()] == [123456, 123456]
    assert "…" not in res.stdout
    for figure in ("123456.8", "987654.32", "111111.11-999999.99", "4321.5", "123456"):
        assert figure in res.stdout


def test_evaluate_outputs_are_checked_before_evaluating(no_work, data, tmp_path):
    model = tmp_path / "m.h5"
    model.write_bytes(b"not looked at")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    base = ["evaluate", str(model), str(data)]
    _refused(base + ["--plots", str(a_file)], "--plots", "not a folder")
    _refused(base + ["--plots", str(tmp_path / "no" / "plots")], "--plots", "does not exist")
    _refused(base + ["--out", str(tmp_path / "no" / "m.json")], "--out", "does not exist")
    _refused(base + ["--out", str(tmp_path)], "--out", "a directory")
    assert not (tmp_path / "no").exists()  # never created, as train --out never creates its folder
    _refused(base + ["--out", str(model)], "--out", "model file")
    _refused(base + ["--plots", str(data / "covid" / "plots")], "--plots", "inside the evaluated folder")
    _refused(base + ["--out", str(data / "m.json")], "--out", "inside the evaluated folder")
    assert not (data / "covid" / "plots").exists() and model.read_bytes() == b"not looked at"


def test_library_evaluate_refuses_a_plots_folder_it_cannot_make(data, tmp_path):
    from xraynet.errors import EvaluationError
    from xraynet.evaluate import EvaluationOptions, evaluate

    for plots, words in ((tmp_path / "no" / "plots", "no parent folder"), (data / "plots", "inside the evaluated")):
        with pytest.raises(EvaluationError, match=words):
            evaluate(tmp_path / "m.h5", data, EvaluationOptions(plots_dir=plots))
    assert not (tmp_path / "no").exists()


def _metrics_doc() -> dict:
    """An evaluate document of three classes with long names over two sources, one named like markup."""
    rng = np.random.default_rng(3)
    classes = ["covid-19 pneumonia", "normal chest film", "bacterial pneumonia"]
    y = np.repeat(np.arange(3), 20)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sources = ["[bold]site-a", "hospital-b\x1b[31m"] * 30
    doc = evaluate_predictions(y, proba, classes, screening_class=classes[0], threshold=0.9999998,
                               groups={"source": sources}, n_boot=50, seed=0)
    doc["within_source"] = within_source_aucs(y, proba, classes, sources, screening_class=classes[0], n_boot=50,
                                              seed=0)
    return doc


def test_evaluate_text_piped_keeps_every_figure(capsys):
    from xraynet.cli.evaluate_cmd import _print_metrics

    assert console().width == PIPE_WIDTH  # not a terminal here, as under `| less` or `> file`
    doc = _metrics_doc()
    _print_metrics(doc)
    text = capsys.readouterr().out
    assert "…" not in text and "\x1b" not in text
    for c, m in doc["per_class"].items():
        lo, hi = m["sensitivity"]["ci"]
        assert f"{m['sensitivity']['value']:.3f} ({lo:.3f}-{hi:.3f})" in text
        lo, hi = m["auc"]["ci"]
        assert f"{m['auc']['value']:.3f} ({lo:.3f}-{hi:.3f})" in text
    assert "[bold]site-a" in text and "hospital-b\\x1b[31m" in text  # shown as written, never as markup
    # The confusion matrix and the calibration error, as the README says evaluate reports them.
    assert "Confusion matrix" in text and f"{doc['ece']:.3f}" in text and "expected calibration error" in text
    for c, row in zip(doc["classes"], doc["confusion_matrix"]):
        line = next(x for x in text.splitlines() if x.startswith(f"│ {c} ") and x.count("│") == 5)
        assert [int(v) for v in line.split("│")[2:5]] == row
    assert "threshold 0.9999998 " in text


def test_crossval_table_piped_keeps_every_figure(capsys):
    from xraynet.cli.train_cmd import _print_crossval

    fold = {"source": "a source with a long name", "images_total": 1234, "images": {"covid": 600, "normal": 634},
            "status": "ok", "notes": [],
            "per_class": {c: {"auc": 0.8766, "ci": [0.81234, 0.93456], "reason": None} for c in ("covid", "normal")},
            "screening": {"class": "covid", "sensitivity": {"value": 0.9123, "ci": [0.8812, 0.9456]},
                          "specificity": {"value": 0.7654, "ci": [0.7012, 0.8234]}, "reason": None}}
    doc = {"by": "source_repo", "data": {"classes": ["covid", "normal"]}, "folds": [fold] * 3, "note": "a note"}
    _print_crossval(doc)
    text = capsys.readouterr().out
    assert "…" not in text
    for figure in ("0.877", "(0.81-0.93)", "0.912", "(0.88-0.95)", "0.765", "(0.70-0.82)", "a source with a long name"):
        assert figure in text


def test_nothing_from_a_file_reaches_the_terminal_raw(tmp_path):
    assert terminal_text("a\x1b[2Jb\x07\u202ec\udcff\n") == "a\\x1b[2Jb\\x07\\u202ec\\xff\n"
    assert terminal_text("plain é → text") == "plain é → text"
    res = runner.invoke(app, ["evaluate", str(tmp_path / "m\x1b]0;owned\x07.h5"), str(tmp_path)])
    assert res.exit_code == 2
    assert "\x1b" not in res.stderr and "\x07" not in res.stderr and "m\\x1b]0;owned\\x07.h5" in res.stderr
