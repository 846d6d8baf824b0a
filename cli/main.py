"""The ``xraynet`` command: a thin typer layer over the library.

Only typer is imported at module load; each command imports what it needs,
so ``xraynet --help`` does not pay for NumPy kernels or Numba.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

app = typer.Typer(
    name="xraynet",
    help="Train a hand-built CNN on chest X-rays and screen folders of X-rays into a CSV report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Arch(str, Enum):
    seed = "seed"
    wide = "wide"
    xraynet = "xraynet"


class Mode(str, Enum):
    train = "train"
    infer = "infer"


def _version(value: bool) -> None:
    if value:
        from xraynet import __version__

        typer.echo(f"xraynet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train a hand-built CNN on chest X-rays and screen folders of X-rays into a CSV report."""


def _console(stderr: bool = False):
    """Every rich Console of the CLI. When the stream is not a terminal (cron, a pipe, a file),
    text is printed as plain unwrapped lines: one message stays one line for mail and grep,
    never cut at 80 columns mid-word (tables keep their width; rich drops colour by itself)."""
    from rich.console import Console

    console = Console(stderr=stderr)
    if not console.is_terminal:
        console.soft_wrap = True
    return console


def _fail(err: Exception, code: int = 2) -> None:
    from rich.markup import escape

    # escape: messages hold install commands ("xraynet[gpu]") and file names that rich would take
    # for markup and drop. soft_wrap: the message stays one line (cron mail, grep).
    text = " ".join(str(err).splitlines())  # one line whatever a message embeds
    _console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


_DEVICE_HELP = ("Compute device: auto (the GPU when CuPy and a CUDA device are present, else the CPU), "
                "cpu or gpu.")


def _check_device(value: str) -> str:
    """Option callback: 'auto', 'cpu' or 'gpu' ('cuda' is taken as 'gpu'); anything else is a usage error."""
    from xraynet.devices import normalise
    from xraynet.errors import BackendError

    try:
        return normalise(value)
    except BackendError:
        raise typer.BadParameter(f"unknown device. Expected auto, cpu or gpu, got {value!r}.") from None


def _device_option():
    return typer.Option("auto", "--device", metavar="[auto|cpu|gpu]", callback=_check_device, help=_DEVICE_HELP)


def _use_device(device: str, notice: bool = True) -> str:
    """Make the backend for ``device`` before any work starts: a GPU that cannot be used ends the
    command here (exit 2, with the install command), not after decoding or scanning. With
    ``notice``, 'auto' falling back to the CPU says so in one line on stderr. Returns the device
    the work runs on, 'cpu' or 'gpu' (the name reports record)."""
    from xraynet.backend import get_backend
    from xraynet.devices import auto_notice, resolve_device
    from xraynet.errors import XraynetError

    try:
        get_backend(device)
    except XraynetError as e:
        _fail(e)
    text = auto_notice(device) if notice else None
    if text:
        _console(stderr=True).print(text, markup=False, highlight=False, soft_wrap=True)
    return resolve_device(device)


@app.command()
def bench(
    arch: Arch = typer.Option(Arch.seed, help="Architecture to time (ARCHS.md)."),
    mode: Mode = typer.Option(Mode.train, help="train: forward + loss + backward + Adam; infer: forward only."),
    batch: int = typer.Option(32, min=1, help="Images per batch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for kernels and BLAS (default: all)."),
    device: str = _device_option(),
    iters: Optional[int] = typer.Option(None, min=1, help="Timed steps (default: enough for --min-time)."),
    warmup: int = typer.Option(3, min=1, help="Untimed warm-up steps (JIT compilation happens here)."),
    min_time: float = typer.Option(3.0, help="Seconds of timed steps to aim for when --iters is not given."),
    min_iters: int = typer.Option(5, min=1, help="Fewest timed steps when --iters is not given."),
    seed: int = typer.Option(0, help="Seed for weights and synthetic data."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    json_out: Optional[str] = typer.Option(None, help="Append the JSON object as one line to this file."),
    profile: bool = typer.Option(False, help="Also print median time per layer stage (forward/backward)."),
    kernels: bool = typer.Option(False, "--kernels",
                                 help="Also print device ms per step of every CUDA kernel and GEMM (GPU only)."),
) -> None:
    """Time a training step or inference on random data (median of repeated steps).

    Flags and meaning match ../shared/bench/torch_reference.py, so results
    compare directly with PyTorch on the same machine.
    """
    from xraynet.bench import profile_kernels, profile_layers, run_bench
    from xraynet.errors import XraynetError

    # The resolved name ('cpu' or 'gpu'), so the row says where it ran, never 'auto'.
    device = _use_device(device)
    try:
        row = run_bench(arch.value, mode.value, batch, device=device, threads=threads, iters=iters,
                        warmup=warmup, min_time=min_time, min_iters=min_iters, seed=seed)
        prof = profile_layers(arch.value, mode.value, batch, device=device, threads=threads) if profile else None
        kern = profile_kernels(arch.value, mode.value, batch, device=device, seed=seed) if kernels else None
    except XraynetError as e:
        _fail(e)
    if json_out:
        with open(json_out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    if as_json:
        if prof is not None:
            row = {**row, "profile": prof}
        if kern is not None:
            row = {**row, "kernels": kern}
        sys.stdout.write(json.dumps(row) + "\n")
        return
    from rich.table import Table

    console = _console()
    t = Table(title=f"xraynet bench ({row['device_name']})")
    for col in ("arch", "mode", "batch", "device", "threads", "images/s", "ms/batch", "p10-p90 ms", "GFLOP/s",
                "iters"):
        t.add_column(col, justify="right")
    gf = f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else "-"
    t.add_row(row["arch"], row["mode"], str(row["batch"]), row["device"], str(row["threads"]),
              f"{row['images_per_s']:.1f}", f"{row['ms_per_batch']:.2f}",
              f"{row['ms_p10']:.2f}-{row['ms_p90']:.2f}", gf, str(row["iters"]))
    console.print(t)
    if prof is not None:
        p = Table(title="per-stage median ms")
        for col in ("stage", "forward", "backward"):
            p.add_column(col, justify="right" if col != "stage" else "left")
        for r in prof:
            p.add_row(r["stage"], f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}")
        console.print(p)
    if kern is not None:
        k = Table(title="device time per step, by kernel")
        for col in ("kernel", "ms/step", "launches/step", "share"):
            k.add_column(col, justify="right" if col != "kernel" else "left")
        for r in kern:
            k.add_row(r["kernel"], f"{r['ms_per_step']:.3f}", f"{r['launches_per_step']:g}", f"{r['share']:.0%}")
        console.print(k)


class _TrainUI:
    """Rich progress and tables for `xraynet train` (stderr for progress, stdout for tables)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.out = _console()
        self.err = _console(stderr=True)
        self.progress = None
        self.task = None

    def _bar(self, description, total):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        if self.quiet:
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
        if self.quiet:
            return
        if self.task is None or self.progress.tasks[0].description != "decoding":
            self._bar("decoding", total)
        self.progress.update(self.task, completed=done)

    def on_report(self, report, skipped):
        from rich.markup import escape

        from xraynet.data import confound_tables

        self.stop()
        self.task = None
        if not self.quiet:
            for t in confound_tables(report):
                self.out.print(t)
        for w in report.get("warnings", []):
            self.err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        for rel, reason, msg in skipped:
            self.err.print(f"[yellow]skipped[/] {escape(f'{rel}: {msg}')}", highlight=False)

    def on_batch(self, epoch, done, total, loss):
        if self.quiet:
            return
        if done == 1:
            self._bar(f"epoch {epoch}", total)
        self.progress.update(self.task, completed=done, info=f"loss {loss:.4f}")

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


@app.command()
def train(
    data_dir: str = typer.Argument(..., help="Folder with one subfolder of images per class (and metadata.csv)."),
    out: str = typer.Option("model.h5", help="Where to write the best model (HDF5)."),
    arch: str = typer.Option("xraynet", help="seed, wide, xraynet or a .json architecture spec."),
    epochs: int = typer.Option(30, min=1, help="Most epochs to train."),
    batch_size: int = typer.Option(32, min=1, help="Images per training step."),
    image_size: Optional[int] = typer.Option(None, min=16, help="Input size (default: the architecture's)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate."),
    lr_schedule: str = typer.Option("constant", help="constant, or cosine: from --lr down to --lr/100 at the "
                                                     "last epoch."),
    weight_decay: float = typer.Option(1e-4, help="Adam weight decay (L2 added to the gradient)."),
    val_fraction: float = typer.Option(0.2, help="Share of patients held out for validation."),
    seed: int = typer.Option(0, help="Seed of the split, initialisation, shuffling and augmentation."),
    patience: int = typer.Option(8, min=1, help="Stop after this many epochs without a better validation AUC."),
    resume: Optional[str] = typer.Option(None, help="Continue from a checkpoint (OUT.checkpoint.h5)."),
    device: str = _device_option(),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    augment: bool = typer.Option(True, help="Random rotation, shift, zoom, brightness and contrast."),
    fit: str = typer.Option("pad", help="pad: keep the whole film; crop: centre crop to a square; stretch: "
                                        "resize to the square, aspect not kept (the same geometry for every "
                                        "source when some films were already squashed)."),
    border_crop: float = typer.Option(0.0, help="Fraction cut from each edge before resizing (text, markers)."),
    equalize: bool = typer.Option(False, help="Histogram equalisation before resizing."),
    working_size: Optional[int] = typer.Option(None, min=16, help="First resize every film so its short side has "
                                                                  "this many pixels (one resolution for all "
                                                                  "sources)."),
    balance: str = typer.Option("none", help="none: batches mirror the folder; source-class: batches drawn by "
                                             "(source_repo, class) cell, so no collection dominates."),
    balance_power: float = typer.Option(0.5, min=0.0, max=1.0,
                                        help="With --balance source-class: a cell's share of a batch grows as "
                                             "its images ** power (0 equal shares, 1 the plain mix)."),
    adversarial_source: float = typer.Option(0.0, min=0.0, help="Peak scale lambda of a gradient-reversal head "
                                                                "that predicts source_repo from the pooled "
                                                                "features (0: no head)."),
    screening_class: Optional[str] = typer.Option(None, help="Class the threshold is chosen for (default covid)."),
    target_sensitivity: float = typer.Option(0.95, help="Validation sensitivity the threshold must reach."),
    quiet: bool = typer.Option(False, help="Print only warnings, errors and the final summary."),
) -> None:
    """Train a network on DATA_DIR; the best model by validation AUC goes to --out."""
    from xraynet.errors import XraynetError
    from xraynet.train import TrainOptions, train as run_train

    _use_device(device)
    try:
        opts = TrainOptions(arch=arch, epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
                            weight_decay=weight_decay, val_fraction=val_fraction, seed=seed, patience=patience,
                            device=device, workers=workers, augment=augment, fit=fit, border_crop=border_crop,
                            equalize=equalize, working_size=working_size, balance=balance,
                            balance_power=balance_power, adversarial_source=adversarial_source,
                            lr_schedule=lr_schedule, screening_class=screening_class,
                            target_sensitivity=target_sensitivity)
    except XraynetError as e:
        _fail(e)
    ui = _TrainUI(quiet)
    try:
        summary = run_train(data_dir, out, opts, resume=resume, callbacks=ui)
    except XraynetError as e:
        ui.stop()
        _fail(e)
    except KeyboardInterrupt:
        ui.stop()
        from xraynet.train import checkpoint_path_for

        typer.echo(f"interrupted: continue with --resume {checkpoint_path_for(out)}", err=True)
        raise typer.Exit(code=130)
    t = summary["threshold"]
    typer.echo(f"best epoch {summary['best_epoch']} (validation {summary['selected_by']} "
               f"{summary['best_val_auc']:.3f}); "
               f"model: {summary['out']}; threshold for {t['class']!r}: {t['value']:.4f} "
               f"(validation sensitivity >= {t['target_sensitivity']})")


@app.command()
def evaluate(
    paths: list[str] = typer.Argument(..., metavar="[MODEL] DATA_DIR",
                                      help="Model file (HDF5, default: the bundled model) and a folder with "
                                           "one subfolder of images per class."),
    subset: str = typer.Option("all", help="all: every image; val: only the validation patients of the "
                                           "model's own training split (when DATA_DIR is its training folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    out: Optional[str] = typer.Option(None, help="Also write the JSON document to this file."),
    plots: Optional[str] = typer.Option(None, help="Write roc.png and reliability.png to this folder."),
    n_boot: int = typer.Option(1000, min=0, help="Bootstrap resamples for the AUC intervals."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    device: str = _device_option(),
    shortcut_check: bool = typer.Option(False, "--shortcut-check",
                                        help="Also score the films with the central chest region (70% of each "
                                             "side) blanked and with only it kept, and say whether the model "
                                             "still separates the classes without seeing the lungs."),
) -> None:
    """Metrics with 95% intervals, within each source first, then pooled and per source/view, at the model's
    threshold."""
    from xraynet.errors import XraynetError
    from xraynet.evaluate import evaluate as run_eval
    from xraynet.modelfile import bundled_model_path

    if len(paths) > 2:
        raise typer.BadParameter(f"expected [MODEL] DATA_DIR, got {len(paths)} paths")
    _use_device(device)
    try:
        model, data_dir = (paths[0], paths[1]) if len(paths) == 2 else (str(bundled_model_path()), paths[0])
        doc = run_eval(model, data_dir, subset=subset, n_boot=n_boot, seed=seed, plots_dir=plots, workers=workers,
                       device=device, shortcut_check=shortcut_check)
    except XraynetError as e:
        _fail(e)
    text = json.dumps(doc, allow_nan=False, indent=None if as_json else 2)
    if out:
        from xraynet.atomic import atomic_open

        with atomic_open(out, "w") as fh:
            fh.write(text + "\n")
    if as_json:
        sys.stdout.write(text + "\n")
        return
    _print_metrics(doc)


def _print_metrics(doc: dict) -> None:
    from rich.table import Table

    def fmt(m):
        if not m or m.get("value") is None:
            return "-"
        lo, hi = m.get("ci") or (None, None)
        return f"{m['value']:.3f}" + (f" ({lo:.3f}-{hi:.3f})" if lo is not None else "")

    console = _console()
    _print_within_source(console, doc, fmt)
    t = Table(title=f"{doc['n']} images: accuracy {fmt(doc['accuracy'])}, pooled over all sources (mixes sources: "
                    "flatters a model that recognises the source)")
    for col in ("class", "sensitivity", "specificity", "PPV", "NPV", "AUC"):
        t.add_column(col)
    for c, m in doc["per_class"].items():
        t.add_row(c, fmt(m["sensitivity"]), fmt(m["specificity"]), fmt(m["ppv"]), fmt(m["npv"]), fmt(m["auc"]))
    console.print(t)
    scr = doc.get("screening")
    if scr:
        origin = "chosen on these films" if scr["threshold_chosen_here"] else "the model's"
        console.print(f"screening {scr['class']} at threshold {scr['threshold']:.4g} ({origin}), pooled: "
                      f"{scr['flagged']} flagged, sensitivity {fmt(scr['sensitivity'])}, specificity "
                      f"{fmt(scr['specificity'])}", highlight=False)
    for group, values in (doc.get("by_group") or {}).items():
        # Per-class AUC inside one source is the figure that a source shortcut cannot inflate.
        g = Table(title=f"by {group} (AUC of each class against the rest, within the {group}"
                        + (f"; sensitivity/specificity for {scr['class']} at the threshold)" if scr else ")"))
        cols = ["value", "n", "accuracy", "balanced accuracy"] + [f"AUC {c}" for c in doc["classes"]]
        for col in cols + (["sens/spec"] if scr else []):
            g.add_column(col)
        for name, m in values.items():
            bal = m["balanced_accuracy"]
            aucs = [m["per_class"][c]["auc"]["value"] for c in doc["classes"]]
            at = []
            if scr:
                sens, spec = m["screening"]["sensitivity"]["value"], m["screening"]["specificity"]["value"]
                at = [f"{'-' if sens is None else f'{sens:.2f}'}/{'-' if spec is None else f'{spec:.2f}'}"]
            g.add_row(str(name), str(m["n"]), fmt(m["accuracy"]), "-" if bal is None else f"{bal:.3f}",
                      *("-" if a is None else f"{a:.3f}" for a in aucs), *at)
        console.print(g)
    if doc.get("shortcut_check"):
        _print_shortcut_check(console, doc["shortcut_check"], doc["classes"], fmt)


def _print_within_source(console, doc: dict, fmt) -> None:
    """The within-source AUCs, printed first: the figures a source shortcut cannot inflate."""
    from rich.table import Table

    ws = doc.get("within_source") or {}
    if not ws.get("available"):
        console.print(f"within-source AUCs: unavailable: {ws.get('reason') or 'no source metadata'}",
                      markup=False, highlight=False)
        return

    def cell(e):
        return fmt(e["auc"]) + f" n={e['n_pos']}/{e['n_neg']}" if e["reason"] is None else f"- ({e['reason']})"

    classes = doc["classes"]
    t = Table(title="Within-source AUC: each class against the rest, films compared only with films of the same "
                    "source (the figures a source shortcut cannot inflate); n=positives/negatives")
    for col in ["source", "n"] + [f"AUC {c}" for c in classes]:
        t.add_column(col)
    for name, s in ws["sources"].items():
        t.add_row(name, str(s["n"]), *(cell(s["per_class"][c]) for c in classes))
    comb = ws["combined"]
    t.add_row("all sources (same-source pairs)", str(sum(s["n"] for s in ws["sources"].values())),
              *(fmt(comb[c]["auc"]) if comb[c]["reason"] is None else f"- ({comb[c]['reason']})" for c in classes))
    console.print(t)
    k = ws.get("screening_class")
    if k is not None and len(classes) > 2:
        others = [c for c in classes if c != k]
        pw = Table(title=f"Within-source AUC of {k} against each other class alone; n={k}/other")
        for col in ["source"] + [f"{k} vs {c}" for c in others]:
            pw.add_column(col)
        for name, s in ws["sources"].items():
            pw.add_row(name, *(cell(s["pairwise"][c]) for c in others))
        console.print(pw)


def _print_shortcut_check(console, sc: dict, classes, fmt) -> None:
    from rich.table import Table

    r = sc["region"]
    shown = sc["verdict"]["classes"]
    t = Table(title=f"Shortcut check: central {r['centre_fraction']:.0%} of each side (rows {r['rows'][0]}:"
                    f"{r['rows'][1]}, columns {r['columns'][0]}:{r['columns'][1]} of {r['image_size']}), "
                    f"blanked = {'the film mean grey' if r['normalize'] == 'per_image' else 'mid grey'}")
    t.add_column("variant")
    for c in shown:
        t.add_column(f"AUC {c} pooled")
        t.add_column(f"AUC {c} within source")
    for name, v in sc["variants"].items():
        row = [name.replace("_", " ")]
        for c in shown:
            ws = (v.get("within_source") or {}).get(c)
            row += [fmt(v["per_class"][c]["auc"]), fmt(ws["auc"]) if ws else "-"]
        t.add_row(*row)
    console.print(t)
    console.print(f"verdict: {sc['verdict']['text']}", markup=False, highlight=False)


class _CrossvalUI(_TrainUI):
    """Progress of `xraynet crossval` on stderr: one line per fold and epoch, bars while training; stdout is
    left to the final table or the JSON document."""

    def __init__(self):
        super().__init__(quiet=False)
        self.out = _console(stderr=True)

    def on_report(self, report, skipped):
        # The confound tables of every fold would bury the result; warnings and skipped files still show.
        from rich.markup import escape

        self.stop()
        self.task = None
        for w in report.get("warnings", []):
            self.err.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
        for rel, reason, msg in skipped:
            self.err.print(f"[yellow]skipped[/] {escape(f'{rel}: {msg}')}", highlight=False)

    def on_fold_start(self, index, total, source, reuse):
        what = "evaluating the model already trained" if reuse else "training"
        self.err.print(f"fold {index}/{total}: holding out {source} ({what})", markup=False, highlight=False)

    def on_fold_end(self, fold):
        self.stop()
        self.task = None
        if fold["status"] != "ok":
            self.err.print(f"fold {fold['source']}: not possible: {fold['reason']}", markup=False, highlight=False)


@app.command()
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
    device: str = _device_option(),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    n_boot: int = typer.Option(1000, min=0, help="Bootstrap resamples for the AUC intervals."),
    seed: int = typer.Option(0, help="Bootstrap seed (training seeds come from the recipe)."),
    as_json: bool = typer.Option(False, "--json", help="Print the document (also in OUT_DIR/crossval.json)."),
) -> None:
    """Leave-one-source-out: train the recipe without each source, evaluate on that source alone."""
    from xraynet.crossval import crossval as run_crossval, recipe_from_model
    from xraynet.errors import XraynetError
    from xraynet.modelfile import bundled_model_path

    device = _use_device(device)
    ui = _CrossvalUI()
    try:
        options = recipe_from_model(recipe or bundled_model_path())
        doc = run_crossval(data_dir, out_dir, options, by=by, hold_out=hold_out or None, epochs=epochs,
                           device=device, workers=workers, n_boot=n_boot, seed=seed, callbacks=ui)
    except XraynetError as e:
        ui.stop()
        _fail(e)
    except KeyboardInterrupt:
        ui.stop()
        typer.echo(f"interrupted: the same command reuses the folds already finished in {out_dir}", err=True)
        raise typer.Exit(code=130)
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
    console = _console()
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
    console.print(t)
    for n in notes:
        console.print(n, markup=False, highlight=False, soft_wrap=True)
    console.print(f"Reminder: {doc['note']}", markup=False, highlight=False, soft_wrap=True)


class OnLock(str, Enum):
    fail = "fail"
    wait = "wait"


_SCREEN_HELP = """Screen every X-ray under FOLDER into the CSV report --out (cron-safe, incremental).

Re-runs with the same --out screen only new or changed files; a kill at any
moment leaves a valid report. Columns and the crash-safety design are in the
docstring of xraynet/screen.py.

Exit codes (the table in xraynet/screen.py):

0  every file of FOLDER has an ok row

1  some files are error rows in the report (the run completed)

2  usage error: bad option, missing folder, unusable model or report

3  another run holds the report's lock (--on-lock fail)

4  the report, its lock or a heatmap could not be written (read-only folder,
disk full): rows written before are kept; fix it and run again; also when
the --html page or a thumbnail could not be written (the report is complete)

5  a folder under FOLDER could not be listed: its old rows are kept unchanged
(takes precedence over 1)

130  interrupted
"""


@app.command(help=_SCREEN_HELP)
def screen(
    folder: str = typer.Argument(..., help="Folder of images (PNG, JPEG, BMP, TIFF, GIF, WebP, DICOM)."),
    out: str = typer.Option(..., "--out", help="CSV report to create or bring up to date."),
    model: Optional[str] = typer.Option(None, help="Model file (HDF5); default: the bundled model."),
    threshold: Optional[float] = typer.Option(None, min=0.0, max=1.0,
                                              help="Flag when p(screening class) >= this (default: the model's)."),
    batch_size: int = typer.Option(32, min=1, help="Images per network batch."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Descend into subfolders."),
    on_lock: OnLock = typer.Option(OnLock.fail, "--on-lock",
                                   help="When another run holds the report: fail (exit 3) or wait."),
    quiet: bool = typer.Option(False, help="No progress bar and no summary table."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be screened; write nothing."),
    heatmaps: Optional[str] = typer.Option(None, help="Write a Grad-CAM overlay PNG for each flagged image into "
                                                      "this folder (named after the input; path in the CSV)."),
    device: str = _device_option(),
    cluster: Optional[str] = typer.Option(None, help="Run the batches on a Dask cluster: a scheduler address "
                                                     "(tcp://host:8786) or local:N (N worker processes here). "
                                                     "Workers must see FOLDER and the model at the same paths. "
                                                     'Needs pip install "xraynet\\[cluster]".'),
    cluster_timeout: float = typer.Option(30.0, min=0.001, help="Seconds to wait for the Dask scheduler."),
    html: Optional[str] = typer.Option(None, "--html", help="Also write a self-contained HTML review page of the "
                                                            "report here (thumbnails in <name>_files/ beside it), "
                                                            "refreshed after every run."),
    allow_empty: bool = typer.Option(False, "--allow-empty", help="Let a FOLDER with no images at all clear the "
                                                                  "report's rows. Without it such a run keeps them "
                                                                  "and exits 5 (an unmounted share looks empty)."),
) -> None:
    from rich.markup import escape

    from xraynet.errors import XraynetError
    from xraynet.screen import exit_code_for, screen as run_screen

    err = _console(stderr=True)
    if html is not None and not dry_run:
        from xraynet.review import check_page_path

        try:
            check_page_path(html, out, folder)  # a page that cannot work is a usage error before any screening
        except XraynetError as e:
            _fail(e)
    if cluster is None:
        # With --cluster each worker makes its own backend from the device name: this machine may
        # have no GPU while the workers do. The auto notice shows where the progress bar would:
        # from cron (stderr not a terminal) nothing but errors is printed.
        _use_device(device, notice=not quiet and err.is_terminal)
    bar = None
    if not quiet and not dry_run and err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("screening"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=err, transient=True)
    task = None

    def on_progress(done, total):
        nonlocal task
        if bar is None:
            return
        if task is None:
            bar.start()
            task = bar.add_task("screening", total=total)
        bar.update(task, completed=done)

    try:
        summary = run_screen(folder, out, model_path=model, threshold=threshold, batch_size=batch_size,
                             workers=workers, recursive=recursive, on_lock=on_lock.value, dry_run=dry_run,
                             progress=on_progress, heatmaps=heatmaps, device=device, cluster=cluster,
                             cluster_timeout=cluster_timeout, allow_empty=allow_empty)
    except XraynetError as e:
        _fail(e, exit_code_for(e))  # 3 locked, 4 an output could not be written, 2 the rest
    except KeyboardInterrupt:
        # Rows already written are whole and synced; the next run continues from them.
        err.print("interrupted: the report holds every row written so far; run the same command again to "
                  "screen the rest", highlight=False)
        raise typer.Exit(code=130)
    finally:
        if bar is not None:
            bar.stop()
    for note in summary.warnings:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(summary.to_dict()) + "\n")
    elif dry_run:
        for rel in summary.would_screen:
            typer.echo(rel)
        if not quiet:
            err.print(f"dry run: {summary.files} files, {len(summary.would_screen)} would be screened, "
                      f"{summary.skipped_unchanged} unchanged; nothing written", highlight=False)
    elif not quiet and sys.stdout.isatty():
        # From cron (stdout not a terminal) only errors are printed; --json gives the summary.
        _print_screen_summary(summary)
    if summary.errors_new and not as_json:
        # Only new error rows are news: rows kept from earlier nights still give exit 1, but a
        # nightly job must not mail the same line every night.
        err.print(f"{summary.errors_new} new file(s) are error rows in {summary.out} ({summary.errors} in all; "
                  "status 'error', reason in column 'error')", markup=False, highlight=False)
    if html is not None and not dry_run:
        # Also when nothing new was screened; silent from cron, one line and exit 4 if it cannot be written.
        _write_page(out, html, model, folder, workers, summary.screening_class,
                    progress=not quiet and not as_json and err.is_terminal)
    raise typer.Exit(code=summary.exit_code)


def _write_page(report, html, model, folder, workers, screening_class, progress: bool):
    """Write the HTML review page (:func:`xraynet.review.write_review`) and return its ReviewResult.
    A page or thumbnail that cannot be written ends the command with one line and exit 4 (the
    report is complete and unchanged); an unusable report or model with exit 2."""
    from xraynet.errors import XraynetError
    from xraynet.review import write_review
    from xraynet.screen import exit_code_for

    bar, task = None, None
    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar = Progress(TextColumn("thumbnails"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                       console=_console(stderr=True), transient=True)

    def on_progress(done, total):
        nonlocal task
        if task is None:
            bar.start()
            task = bar.add_task("thumbnails", total=total)
        bar.update(task, completed=done)

    try:
        return write_review(report, html, model_path=model, folder=folder, screening_class=screening_class,
                            workers=workers, progress=on_progress if bar is not None else None)
    except XraynetError as e:
        _fail(e, exit_code_for(e))
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {html} was not updated (the report is complete); run the command again", err=True)
        raise typer.Exit(code=130)
    finally:
        if bar is not None:
            bar.stop()


@app.command()
def review(
    report: str = typer.Argument(..., help="CSV report written by xraynet screen --out."),
    html: str = typer.Option(..., "--html", help="Where to write the page (thumbnails in <name>_files/ beside it)."),
    model: Optional[str] = typer.Option(None, help="Model file that screened the report (default: the bundled "
                                                   "model); another one is named as such on the page."),
    folder: Optional[str] = typer.Option(None, help="The screened folder, to make missing thumbnails (default: "
                                                    "reuse those already made, a placeholder for the rest)."),
    workers: int = typer.Option(2, min=1, help="Threads decoding films for thumbnails."),
    quiet: bool = typer.Option(False, help="No progress bar and no closing line."),
) -> None:
    """Write the self-contained HTML review page of an existing report (screens nothing).

    Exit codes: 0 written; 2 unusable report, model or option; 4 the page or a thumbnail could not be
    written (the report is never changed).
    """
    from rich.markup import escape

    from xraynet.errors import XraynetError
    from xraynet.review import check_page_path

    err = _console(stderr=True)
    try:
        check_page_path(html, report, folder)
    except XraynetError as e:
        _fail(e)
    res = _write_page(report, html, model, folder, workers, None, progress=not quiet and err.is_terminal)
    for note in res.warnings:
        err.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if not quiet and sys.stdout.isatty():
        typer.echo(f"{res.html}: {res.rows} rows, {res.bytes / 1e6:.2f} MB; thumbnails {res.thumbnails_made} made, "
                   f"{res.thumbnails_reused} reused, {res.thumbnails_removed} removed")


def _print_screen_summary(s) -> None:
    from rich.table import Table

    t = Table(title=f"xraynet screen -> {s.out}")
    t.add_column("", justify="left")
    t.add_column("value", justify="right")
    net_share = s.network_seconds / max(s.decode_seconds + s.network_seconds, 1e-12)
    for name, value in (
        ("files in folder", s.files), ("screened now", s.screened), ("unchanged, kept", s.skipped_unchanged),
        ("old rows dropped", s.dropped_rows), ("error rows", s.errors),
        ("not listable: folders (their rows kept)", f"{len(s.unlisted)} ({s.kept_unlisted})"),
        (f"flagged {s.screening_class} (p >= {s.threshold:.4g})", s.flagged),
        ("flagged among screened now", s.flagged_new),
        ("images/s", f"{s.images_per_s:.1f}"), ("seconds", f"{s.seconds:.2f}"),
        ("decode seconds (all threads)", f"{s.decode_seconds:.2f}"),
        ("network seconds", f"{s.network_seconds:.2f} ({net_share:.0%} of decode + network)"),
        ("model", f"{s.model} {s.model_sha256[:12]}"),
    ):
        t.add_row(name, str(value))
    _console().print(t)


@app.command()
def info(
    model: Optional[str] = typer.Argument(None, metavar="[MODEL]",
                                          help="A model file (HDF5): print its model card instead."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the lines."),
) -> None:
    """Versions, the backend --device auto picks here, and the GPU: name, compute capability, memory,
    CUDA runtime and driver (or why there is none, and what to install). With MODEL: its model card
    (intended use, training data, validation figures within each source first, threshold, limits)."""
    if model is not None:
        from xraynet.errors import XraynetError
        from xraynet.modelcard import format_card, info_document

        try:
            doc = info_document(model)
            text = json.dumps(doc, allow_nan=False) + "\n" if as_json else format_card(doc)
        except XraynetError as e:
            _fail(e)
        sys.stdout.write(text)
        return
    from xraynet.devices import device_info

    d = device_info()
    if as_json:
        sys.stdout.write(json.dumps(d) + "\n")
        return
    reason = d.get("gpu_unavailable_reason")
    cupy = d["cupy"] or ("not installed" if reason == "CuPy is not installed" else "does not import")
    rows = [("xraynet", d["xraynet"]), ("python", d["python"]), ("numpy", d["numpy"]), ("numba", d["numba"]),
            ("cupy", cupy), ("backend (auto)", d["auto_device"])]
    if d["gpu_available"]:
        rows += [("gpu", f"{d['device_name']} (device {d['device_id']})"),
                 ("compute capability", d["compute_capability"]), ("gpu memory", f"{d['memory_gib']} GiB"),
                 ("CUDA runtime", d["cuda_runtime"]), ("CUDA driver", d["cuda_driver"])]
    else:
        rows += [("gpu", f"none: {reason}"), ("to use a GPU", d["install_hint"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")


def main() -> None:
    if not sys.stderr.isatty():
        # Under cron, click's plain "Error: No such option: --x" line instead of a box that
        # rich draws at 80 columns, wrapping the message mid-word.
        import typer.core

        typer.core.HAS_RICH = False
    app()


if __name__ == "__main__":
    main()
