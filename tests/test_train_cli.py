"""`xraynet train` and `crossval` at their edges, on the generated film dataset (conftest's ``dataset``).

* ``--resume`` as the README writes it (no options) takes the checkpoint's options, ``--epochs``
  included, and gives the uninterrupted run's weights; an option given that differs is refused
  naming both values, unless it may change mid-run, which is said; other data is refused
  naming the checkpoint's folder;
* outputs inside the data folder, out-of-range options (--seed -1, --weight-decay -5, --lr 0,
  --image-size past its range) and a crossval --out-dir that is a file end with exit 2 before
  any training;
* a class folder whose every file is unreadable is refused like an empty one; the confound
  report and the model card count only the films trained on;
* no blank progress lines on a non-terminal stderr; the hidden temporary files a killed run
  left beside its outputs are removed by the next run, and nothing else is.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from xraynet.cli.main import app
from xraynet.errors import CheckpointError, DataError, TrainingError
from xraynet.modelfile import load_model
from xraynet.training import Callbacks, TrainOptions, checkpoint_path_for, train

from helpers import random_png, train_options

runner = CliRunner()


class KillAfter(Callbacks):
    """Ends the run like Ctrl-C right after epoch ``n``'s checkpoint is written."""

    def __init__(self, n):
        self.n = n

    def on_epoch(self, record, is_best):
        if record["epoch"] == self.n:
            raise KeyboardInterrupt


def cli_args(spec, **kw):
    """The command-line options of helpers.train_options, ``kw`` replacing any."""
    opts = {"--arch": str(spec), "--epochs": "3", "--batch-size": "16", "--lr": "3e-3", "--seed": "3",
            "--patience": "10", **kw}
    return [a for k, v in opts.items() for a in (k, v)]


def interrupted(root, spec, folder, epochs=3, after=2):
    """A run of ``epochs`` with augmentation, killed after epoch ``after``; its model path."""
    folder.mkdir()
    out = folder / "m.h5"
    with pytest.raises(KeyboardInterrupt):
        train(root, out, train_options(spec, epochs=epochs, augment=True), callbacks=KillAfter(after))
    return out


def weights(path):
    return load_model(path).model.state_dict()


def test_readme_resume_takes_the_checkpoints_options_and_weights(dataset, tmp_path):
    root, spec = dataset
    (tmp_path / "full").mkdir()
    full = tmp_path / "full" / "m.h5"
    train(root, full, train_options(spec, epochs=3, augment=True))
    part = interrupted(root, spec, tmp_path / "part")
    ckpt = checkpoint_path_for(part)
    assert len(load_model(ckpt).history) == 2
    # Exactly the README's command: no --epochs (its default, 30, must not replace the checkpoint's 3).
    res = runner.invoke(app, ["train", str(root), "--out", str(part), "--resume", str(ckpt), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "note:" not in res.stderr
    a, b = weights(full), weights(part)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert load_model(part).metadata["options"]["epochs"] == 3 and len(load_model(ckpt).history) == 3


def test_resume_into_another_out_carries_the_best_model(dataset, tmp_path):
    # A tester's finished checkpoint resumed with another --out: "other.h5: no such file ... train
    # a model first" (the run's end reads the best model back from --out), and a decode cache left.
    root, spec = dataset
    (tmp_path / "done").mkdir()
    done = tmp_path / "done" / "m.h5"
    train(root, done, train_options(spec, epochs=2))
    (tmp_path / "other").mkdir()
    other = tmp_path / "other" / "o.h5"
    res = runner.invoke(app, ["train", str(root), "--out", str(other), "--resume", str(checkpoint_path_for(done)),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"note: --out {other}: the best model so far" in res.stderr
    a, b = weights(done), weights(other)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    done.unlink()  # the model beside the checkpoint gone: refused, naming where it should be
    res = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "other" / "p.h5"), "--resume",
                              str(checkpoint_path_for(done)), "--quiet"])
    assert res.exit_code == 2 and str(done) in res.stderr and "Traceback" not in res.output


def test_resume_refuses_options_that_cannot_change_and_says_those_that_can(dataset, tmp_path):
    root, spec = dataset
    part = interrupted(root, spec, tmp_path / "part", epochs=2, after=1)
    ckpt = str(checkpoint_path_for(part))
    base = ["train", str(root), "--out", str(part), "--resume", ckpt, "--quiet"]
    res = runner.invoke(app, base + ["--lr", "0.01", "--image-size", "48", "--arch", "seed", "--no-augment"])
    assert res.exit_code == 2, res.output
    for part_of_message in ("--lr 0.01 (the checkpoint's: 0.003)", "--image-size 48", "--arch 'seed'",
                            "--augment False (the checkpoint's: True)"):
        assert part_of_message in res.stderr, part_of_message
    assert "Traceback" not in res.output
    # The same values given again are no change; a new --epochs and --patience are taken and said.
    res = runner.invoke(app, base + ["--lr", "3e-3", "--arch", str(spec), "--seed", "3", "--epochs", "3",
                                     "--patience", "5"])
    assert res.exit_code == 0, res.output
    assert "note: --epochs 3: the run now ends after epoch 3 instead of 2 (at once" in res.stderr
    assert "note: --patience 5" in res.stderr
    assert len(load_model(ckpt).history) == 3 and load_model(ckpt).metadata["options"]["patience"] == 5


def test_resume_refuses_other_data_naming_the_checkpoints_folder(dataset, tmp_path):
    root, spec = dataset
    part = interrupted(root, spec, tmp_path / "part", epochs=2, after=1)
    ckpt = str(checkpoint_path_for(part))
    grown = tmp_path / "grown"
    shutil.copytree(root, grown)
    random_png(grown / "opacity" / "zz_new.png", 5)
    three = tmp_path / "three"
    shutil.copytree(root, three)
    shutil.copytree(root / "opacity", three / "other")
    for folder, expected in ((grown, "not the films the checkpoint"), (three, "Expected the class folders")):
        res = runner.invoke(app, ["train", str(folder), "--out", str(part), "--resume", ckpt, "--quiet"])
        assert res.exit_code == 2, res.output
        assert expected in res.stderr and f"({root.resolve()})" in res.stderr, res.stderr
        assert "spec's last layer" not in res.stderr
    # The same films in another folder: the run goes on, and says where it trained before.
    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    notes = []

    class Notes(Callbacks):
        def on_notice(self, text):
            notes.append(text)

    train(moved, part, None, resume=ckpt, callbacks=Notes())
    assert any(str(root.resolve()) in n and "same films" in n for n in notes), notes


def test_library_resume_with_other_options_names_both_values(dataset, tmp_path):
    root, spec = dataset
    part = interrupted(root, spec, tmp_path / "part", epochs=2, after=1)
    with pytest.raises(CheckpointError, match=r"--batch-size 8 \(the checkpoint's: 16\)"):
        train(root, part, train_options(spec, epochs=2, augment=True, batch_size=8),
              resume=str(checkpoint_path_for(part)))


@pytest.mark.parametrize("where", ["class", "root"])
def test_out_inside_the_data_folder_is_refused(dataset, tmp_path, where):
    root, spec = dataset
    data = tmp_path / "data"
    shutil.copytree(root, data)
    out = data / "opacity" / "m.h5" if where == "class" else data / "m.h5"
    res = runner.invoke(app, ["train", str(data), "--out", str(out), "--quiet"] + cli_args(spec))
    assert res.exit_code == 2, res.output
    assert "inside the data folder" in res.stderr
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith("m.")) == []
    with pytest.raises(TrainingError, match="inside the data folder"):
        train(data, tmp_path / "m.h5", train_options(spec, cache=str(data / "normal" / "c.h5")))


@pytest.mark.parametrize("option, value, expected", [
    ("--seed", "-1", "--seed"), ("--weight-decay", "-5", "--weight-decay"), ("--lr", "0", "> 0"),
    ("--lr", "-1", "> 0"), ("--lr", "nan", "> 0"), ("--image-size", "5000", "4096"),
    ("--border-crop", "0.5", "0.4"), ("--val-fraction", "1", "< 1")])
def test_out_of_range_options_exit_2_before_any_work(dataset, tmp_path, option, value, expected):
    root, spec = dataset
    out = tmp_path / "m.h5"
    res = runner.invoke(app, ["train", str(root), "--out", str(out), "--quiet"] + cli_args(spec, **{option: value}))
    assert res.exit_code == 2, res.output
    assert expected in res.output and "Traceback" not in res.output
    assert "adversarial" not in res.output
    assert list(tmp_path.iterdir()) == []


def test_options_ranges_in_the_library_match_the_help():
    from xraynet.training.options import range_text

    with pytest.raises(TrainingError, match=r"--image-size: not usable. Expected an integer from 16 to 4096"):
        TrainOptions(image_size=8)
    with pytest.raises(TrainingError, match=r"--seed: not usable.*Pass e.g. --seed 0"):
        TrainOptions(seed=-1)
    with pytest.raises(TrainingError, match=r"--lr: .*> 0, got 0"):
        TrainOptions(lr=0)
    help_text = " ".join(runner.invoke(app, ["train", "--help"]).output.split())
    assert "16<=x<=4096" in help_text and range_text("image_size") == "an integer from 16 to 4096"


def test_crossval_refuses_a_bad_out_dir_or_seed_before_training(dataset, tmp_path):
    root, spec = dataset
    model = tmp_path / "recipe" / "m.h5"
    model.parent.mkdir()
    train(root, model, train_options(spec, epochs=1))
    afile = tmp_path / "afile"
    afile.write_text("x")
    data = tmp_path / "data"
    shutil.copytree(root, data)
    for out_dir, seed, expected in ((afile, "0", "cannot be the output folder"),
                                    (data / "cv", "0", "inside the data folder"),
                                    (tmp_path / "cv", "-1", "--seed")):
        res = runner.invoke(app, ["crossval", str(data), "--recipe", str(model), "--out-dir", str(out_dir),
                                  "--epochs", "1", "--n-boot", "0", "--seed", seed])
        assert res.exit_code == 2, res.output
        assert expected in res.output and "Traceback" not in res.output
        assert "fold 1/" not in res.output
    assert not (tmp_path / "cv").exists() and not (data / "cv").exists()


def test_a_class_folder_of_unreadable_files_is_refused_like_an_empty_one(dataset, tmp_path):
    root, spec = dataset
    data = tmp_path / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns("metadata.csv"))
    (data / "third").mkdir()
    (data / "third" / "a.png").write_bytes(b"")
    (data / "third" / "b.png").write_text("junk")
    with pytest.raises(DataError, match=r"third: class folder holds no readable images.*"
                                        r"third/a.png \(empty\), third/b.png \(not_an_image\)"):
        train(data, tmp_path / "m.h5", train_options(spec, epochs=1))
    shutil.rmtree(data / "third")
    (data / "third").mkdir()
    res = runner.invoke(app, ["train", str(data), "--out", str(tmp_path / "m.h5"), "--quiet"] + cli_args(spec))
    assert res.exit_code == 2 and "class folder holds no images" in res.stderr   # the same exit as an empty one


def test_counts_are_of_the_films_trained_on(dataset, tmp_path):
    from xraynet.modelcard import CARD_KEY

    root, spec = dataset    # 241 files, normal/broken.png unreadable
    seen = {}

    class Report(Callbacks):
        def on_report(self, report, skipped):
            seen["report"], seen["skipped"] = report, skipped

    summary = train(root, tmp_path / "m.h5", train_options(spec, epochs=1), callbacks=Report())
    report = seen["report"]
    assert [s[0] for s in seen["skipped"]] == ["normal/broken.png"]
    assert report["totals"]["images"] == {"train": summary["train_images"], "val": summary["val_images"],
                                          "all": 240}
    card = load_model(tmp_path / "m.h5").metadata[CARD_KEY]
    assert card["training_data"]["images"] == 240 and card["training_data"]["skipped"] == 1
    assert card["split"]["images"] == {"train": summary["train_images"], "val": summary["val_images"]}


def test_no_blank_progress_lines_when_stderr_is_not_a_terminal(dataset, tmp_path):
    root, spec = dataset
    res = runner.invoke(app, ["train", str(root), "--out", str(tmp_path / "m.h5"), "--device", "cpu"]
                        + cli_args(spec, **{"--epochs": "2"}))
    assert res.exit_code == 0, res.output
    assert "" not in res.stderr.splitlines(), repr(res.stderr)
    assert res.stdout.count("epoch ") >= 2


def test_leftover_temporary_files_of_our_outputs_are_removed(dataset, tmp_path):
    from xraynet.atomic import leftover_temps

    root, spec = dataset
    ours = [tmp_path / ".m.h5.0123456789ab.tmp", tmp_path / ".m.checkpoint.h5.a1b2c3d4e5f6.tmp",
            tmp_path / ".m.history.png.ffffffffffff.tmp"]
    others = [tmp_path / ".other.h5.0123456789ab.tmp", tmp_path / ".m.h5.mine.tmp", tmp_path / "m.h5.0123456789ab.tmp",
              tmp_path / ".m.h5.0123456789ab.tmp.keep"]
    for p in ours + others:
        p.write_bytes(b"half a model")
    assert leftover_temps(tmp_path / "m.h5") == [ours[0]]
    train(root, tmp_path / "m.h5", train_options(spec, epochs=1))
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in others)


def test_a_change_of_device_is_said_only_when_the_computing_device_changes():
    from xraynet.training.resume import merge_options

    stored = TrainOptions(device="auto")
    _, notes = merge_options("c.h5", stored, TrainOptions(device="cpu"), ran_on="cpu")
    assert notes == []
    opts, notes = merge_options("c.h5", stored, TrainOptions(device="cpu"), ran_on="gpu")
    assert opts.device == "cpu" and len(notes) == 1 and "on the CPU (the epochs before on the GPU)" in notes[0]
    opts, notes = merge_options("c.h5", stored, None)
    assert opts is stored and notes == []
