"""``xraynet train`` and ``xraynet crossval``, with their progress display.

The defaults of ``train``'s options are :class:`xraynet.training.TrainOptions`'s
own, read from that one place (the package imports NumPy only when a run starts).
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from xraynet.training import TrainOptions

from .common import console, device_option, interrupt_hint, use_device

_D = TrainOptions()


class TrainProgress:
    """Rich progress and tables for `xraynet train` (stderr for progress, stdout for tables); the
    :class:`xraynet.training.Callbacks` of the run. As a context manager it stops the bars on
    the way out, before an error or the Ctrl-C hint is printed."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.out = console()
        self.err = console(stderr=True)
        # Bars only on a terminal: elsewhere (a log, a pipe) rich leaves one blank line per bar stopped.
        self.bars = not quiet and self.err.is_terminal
        self.progress = None
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def _bar(self, description, total):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if not self.bars:
            return
        if self.progress is None:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                     console=self.err, transient=True)
            self.progress.start()
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total, info="")

    def stop(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_decode(self, done, total):
        if not self.bars:
            return
        if self.task is None or self.progress.tasks[0].description != "decoding":
            self._bar("decoding", total)
        self.progress.update(self.task, completed=done)

    def on_report(self, report, skipped):
        from xraynet.confounds import confound_tables

        self.stop()
        self.task = None
        if not self.quiet:
            for t in confound_tables(report):
                self.out.print(t)
        self._warn(report, skipped)

    def _warn(self, report, skipped):
        from rich.markup import escape

        for w in report.get("warnings", []):
            self.err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        for rel, reason, msg in skipped:
            self.err.print(f"[yellow]skipped[/] {escape(f'{rel}: {msg}')}", highlight=False)

    def on_batch(self, epoch, done, total, loss):
        if not self.bars:
            return
        if done == 1:
            self._bar(f"epoch {epoch}", total)
        self.progress.update(self.task, completed=done, info=f"loss {loss:.4f}")

    def on_notice(self, text):
        """Said even with --quiet: what a resumed run changes, or where it goes on."""
        self.stop()
        self.task = None
        self.err.print(f"note: {text}", markup=False, highlight=False)

    def on_epoch(self, rec, is_best):
        self.stop()
        self.task = None
        if self.quiet:
            return
        sens = " ".join(f"{c}:{v['sensitivity']:.2f}/{v['specificity']:.2f}" for c, v in rec["per_class"].items()
                        if v["sensitivity"] is not None and v["specificity"] is not None)
        auc = "-" if rec["val_auc"] is None else f"{rec['val_auc']:.3f}"
        if rec.get("val_within_source_auc") is not None:
            auc += f" (within source {rec['val_within_source_auc']:.3f})"
        self.out.print(f"epoch {rec['epoch']:>3}  train loss {rec['train_loss']:.4f}  val loss {rec['val_loss']:.4f}"
                       f"  acc {rec['val_accuracy']:.3f}  bal.acc {rec['val_balanced_accuracy']:.3f}  AUC {auc}"
                       f"  sens/spec {sens}  {rec['seconds']:.0f}s{'  best' if is_best else ''}", highlight=False)


def _range(name: str) -> dict:
    """typer's ``min``/``max`` for TrainOptions field ``name``: its closed ends (an open end, as
    --lr > 0, is left to TrainOptions, whose message gives the whole range)."""
    from xraynet.training.options import NUMBER_RANGES

    low, high, open_, _kind, _ = NUMBER_RANGES[name]
    out = {} if open_ in ("low", "both") else {"min": low}
    if high is not None and open_ not in ("high", "both"):
        out["max"] = high
    return out


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not left at its default)."""
    # By name: typer vendors its own click, whose ParameterSource is not click.core's.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


RESUME_HELP = ("Continue from a checkpoint (OUT.checkpoint.h5) with the options and data it was started with: "
               "options left out take the checkpoint's values; one given that differs is refused, except "
               "--epochs, --patience, --device, --workers, --screening-class and --target-sensitivity, whose "
               "change is said.")


def train(
    ctx: typer.Context,
    data_dir: str = typer.Argument(..., help="Folder with one subfolder of images per class (and metadata.csv)."),
    out: str = typer.Option("model.h5", help="Where to write the best model (HDF5), outside DATA_DIR."),
    arch: str = typer.Option(_D.arch, help="seed, wide, xraynet or a .json architecture spec."),
    epochs: int = typer.Option(_D.epochs, **_range("epochs"), help="Most epochs to train."),
    batch_size: int = typer.Option(_D.batch_size, **_range("batch_size"), help="Images per training step."),
    image_size: Optional[int] = typer.Option(_D.image_size, **_range("image_size"),
                                             help="Input size (default: the architecture's)."),
    lr: float = typer.Option(_D.lr, help="Adam learning rate (> 0)."),
    lr_schedule: str = typer.Option(_D.lr_schedule, help="constant, or cosine: from --lr down to --lr/100 at the "
                                                         "last epoch."),
    weight_decay: float = typer.Option(_D.weight_decay, **_range("weight_decay"),
                                       help="Adam weight decay (L2 added to the gradient)."),
    val_fraction: float = typer.Option(_D.val_fraction, help="Share of patients held out for validation (0 to 1, "
                                                             "both excluded)."),
    seed: int = typer.Option(_D.seed, **_range("seed"),
                             help="Seed of the split, initialisation, shuffling and augmentation."),
    patience: int = typer.Option(_D.patience, **_range("patience"),
                                 help="Stop after this many epochs without a better validation AUC."),
    resume: Optional[str] = typer.Option(None, help=RESUME_HELP),
    device: str = device_option(_D.device),
    workers: int = typer.Option(_D.workers, **_range("workers"), help="Threads decoding images."),
    augment: bool = typer.Option(_D.augment, help="Random rotation, shift, zoom, brightness and contrast."),
    fit: str = typer.Option(_D.fit, help="pad: keep the whole film; crop: centre crop to a square; stretch: "
                                         "resize to the square, aspect not kept (the same geometry for every "
                                         "source when some films were already squashed)."),
    border_crop: float = typer.Option(_D.border_crop, **_range("border_crop"),
                                      help="Fraction cut from each edge before resizing (text, markers)."),
    equalize: bool = typer.Option(_D.equalize, help="Histogram equalisation before resizing."),
    working_size: Optional[int] = typer.Option(_D.working_size, **_range("working_size"),
                                               help="First resize every film so its short side has this many "
                                                    "pixels (one resolution for all sources)."),
    balance: str = typer.Option(_D.balance, help="none: batches mirror the folder; source-class: batches drawn by "
                                                 "(source_repo, class) cell, so no collection dominates."),
    balance_power: float = typer.Option(_D.balance_power, **_range("balance_power"),
                                        help="With --balance source-class: a cell's share of a batch grows as "
                                             "its images ** power (0 equal shares, 1 the plain mix)."),
    adversarial_source: float = typer.Option(_D.adversarial_source, **_range("adversarial_source"),
                                             help="Peak scale lambda of a gradient-reversal head that predicts "
                                                  "source_repo from the pooled features (0: no head)."),
    screening_class: Optional[str] = typer.Option(_D.screening_class,
                                                  help="Class the threshold is chosen for (default covid)."),
    target_sensitivity: float = typer.Option(_D.target_sensitivity,
                                             help="Validation sensitivity the threshold must reach "
                                                  "(above 0, at most 1)."),
    quiet: bool = typer.Option(False, help="Print only warnings, errors, notes and the final summary."),
) -> None:
    """Train a network on DATA_DIR; the best model by validation AUC goes to --out."""
    from xraynet.training import checkpoint_path_for, resume_options, train as run_train

    values = dict(arch=arch, epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
                  weight_decay=weight_decay, val_fraction=val_fraction, seed=seed, patience=patience,
                  device=device, workers=workers, augment=augment, fit=fit, border_crop=border_crop,
                  equalize=equalize, working_size=working_size, balance=balance, balance_power=balance_power,
                  adversarial_source=adversarial_source, lr_schedule=lr_schedule,
                  screening_class=screening_class, target_sensitivity=target_sensitivity)
    if resume:
        opts = resume_options(resume, {k: v for k, v in values.items() if _given(ctx, k)})
    else:
        opts = TrainOptions(**values)
    use_device(opts.device)
    with interrupt_hint(f"interrupted: continue with --resume {checkpoint_path_for(out)}"), \
            TrainProgress(quiet) as ui:
        summary = run_train(data_dir, out, opts, resume=resume, callbacks=ui)
    from xraynet.modelcard.layout import threshold_text

    t = summary["threshold"]
    typer.echo(f"best epoch {summary['best_epoch']} (validation {summary['selected_by']} "
               f"{summary['best_val_auc']:.3f}); "
               f"model: {summary['out']}; threshold for {t['class']!r}: {threshold_text(t['value'])} "
               f"(validation sensitivity >= {t['target_sensitivity']})")


class CrossvalProgress(TrainProgress):
    """Progress of `xraynet crossval` on stderr: one line per fold and epoch, bars while training; stdout is
    left to the final table or the JSON document."""

    def __init__(self):
        super().__init__(quiet=False)
        self.out = console(stderr=True)

    def on_report(self, report, skipped):
        # The confound tables of every fold would bury the result; warnings and skipped files still show.
        self.stop()
        self.task = None
        self._warn(report, skipped)

    def on_fold_start(self, index, total, source, reuse):
        what = "evaluating the model already trained" if reuse else "training"
        self.err.print(f"fold {index}/{total}: holding out {source} ({what})", markup=False, highlight=False)

    def on_fold_end(self, fold):
        self.stop()
        self.task = None
        if fold["status"] != "ok":
            self.err.print(f"fold {fold['source']}: not possible: {fold['reason']}", markup=False, highlight=False)


def crossval(
    data_dir: str = typer.Argument(..., help="Folder with one subfolder of images per class and a metadata.csv "
                                             "with a source_repo column."),
    by: str = typer.Option("source_repo", help="The metadata column whose values are held out one at a time "
                                               "(only source_repo for now)."),
    out_dir: str = typer.Option(..., "--out-dir", help="Folder for the fold models and crossval.json; a rerun "
                                                       "reuses the folds already trained with the same recipe."),
    recipe: Optional[str] = typer.Option(None, help="Model file whose training options are the recipe "
                                                    "(default: the bundled model)."),
    epochs: Optional[int] = typer.Option(None, min=1, help="Most epochs per fold (default: the recipe's)."),
    hold_out: Optional[list[str]] = typer.Option(None, "--hold-out", metavar="SOURCE",
                                                 help="Source to hold out; repeat for more (default: every "
                                                      "source in turn)."),
    device: str = device_option(),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    n_boot: int = typer.Option(1000, min=0, help="Bootstrap resamples for the AUC intervals."),
    seed: int = typer.Option(0, **_range("seed"), help="Bootstrap seed (training seeds come from the recipe)."),
    as_json: bool = typer.Option(False, "--json", help="Print the document (also in OUT_DIR/crossval.json)."),
) -> None:
    """Leave-one-source-out: train the recipe without each source, evaluate on that source alone."""
    from xraynet.crossval import CrossvalOptions, crossval as run_crossval, recipe_from_model
    from xraynet.modelfile import bundled_model_path

    device = use_device(device)
    with interrupt_hint(f"interrupted: the same command reuses the folds already finished in {out_dir}"), \
            CrossvalProgress() as ui:
        options = recipe_from_model(recipe or bundled_model_path())
        doc = run_crossval(data_dir, out_dir, options, CrossvalOptions(
            by=by, hold_out=hold_out or None, epochs=epochs, device=device, workers=workers, n_boot=n_boot,
            seed=seed), callbacks=ui)
    if as_json:
        sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n")
        return
    _print_crossval(doc)


def _print_crossval(doc: dict) -> None:
    from rich.table import Table

    def fmt(value, ci):
        # Value over its interval: two short lines keep six columns inside 80 characters.
        if value is None:
            return "-"
        lo, hi = ci or (None, None)
        return f"{value:.3f}" + (f"\n({lo:.2f}-{hi:.2f})" if lo is not None else "")

    classes = doc["data"]["classes"]
    screen = next((f["screening"]["class"] for f in doc["folds"] if f.get("screening")), None)
    out = console()
    t = Table(title=f"leave-one-{doc['by']}-out ({len(doc['folds'])} folds)", show_edge=False)
    suffix = f"\n{screen}" if screen else ""
    for col in ["held-out\nsource", "images", *(f"AUC\n{c}" for c in classes), f"sensitivity{suffix}",
                f"specificity{suffix}"]:
        t.add_column(col)
    notes = []
    for f in doc["folds"]:
        images = "\n".join([str(f["images_total"])] + [f"{n} {c}" for c, n in f["images"].items()])
        if f["status"] != "ok":
            t.add_row(f["source"], images, *["-"] * (len(classes) + 2))
            notes.append(f"{f['source']}: not possible: {f['reason']}")
        else:
            s = f["screening"] or {}
            t.add_row(f["source"], images, *(fmt(f["per_class"][c]["auc"], f["per_class"][c]["ci"]) for c in classes),
                      *(fmt(s[k]["value"], s[k]["ci"]) if s else "-" for k in ("sensitivity", "specificity")))
            notes += [f"{f['source']}: AUC {c}: {m['reason']}" for c, m in f["per_class"].items() if m["reason"]]
            if s.get("reason"):
                notes.append(f"{f['source']}: screening: {s['reason']}")
        notes += [f"{f['source']}: {n}" for n in f["notes"]]
    out.print(t)
    for n in notes:
        out.print(n, markup=False, highlight=False, soft_wrap=True)
    out.print(f"Reminder: {doc['note']}", markup=False, highlight=False, soft_wrap=True)
