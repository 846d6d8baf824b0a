"""``xraynet evaluate``: metrics of a model on a labelled folder (:mod:`xraynet.evaluate`), as tables or JSON."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from .common import (check_output_file, check_output_folder, console, device_option, table, terminal_text,
                     use_device)


def evaluate(
    paths: list[str] = typer.Argument(..., metavar="[MODEL] DATA_DIR",
                                      help="Model file (HDF5, default: the bundled model) and a folder with "
                                           "one subfolder of images per class."),
    subset: str = typer.Option("all", help="all: every image; val: only the validation patients of the "
                                           "model's own training split (DATA_DIR must be its training "
                                           "folder, unchanged)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    out: Optional[str] = typer.Option(None, callback=check_output_file,
                                      help="Also write the JSON document to this file (its folder must exist; "
                                           "not inside DATA_DIR)."),
    plots: Optional[str] = typer.Option(None, callback=check_output_folder,
                                        help="Write roc.png and reliability.png to this folder (made when "
                                             "missing, in an existing folder; not inside DATA_DIR)."),
    n_boot: int = typer.Option(1000, min=0, max=1_000_000, help="Bootstrap resamples for the AUC intervals."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Bootstrap seed (0 to 2**32-1)."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    device: str = device_option(),
    shortcut_check: bool = typer.Option(False, "--shortcut-check",
                                        help="Also score the films with the central chest region (70% of each "
                                             "side) blanked and with only it kept, and say whether the model "
                                             "still separates the classes without seeing the lungs."),
) -> None:
    """Metrics with 95% intervals, within each source first, then pooled and per source/view, at the model's
    threshold; then the confusion matrix and the calibration error."""
    from xraynet.evaluate import EvaluationOptions, check_outputs, evaluate as run_eval
    from xraynet.modelfile import bundled_model_path

    if len(paths) > 2:
        raise typer.BadParameter(f"expected [MODEL] DATA_DIR, got {len(paths)} paths")
    model, data_dir = (paths[0], paths[1]) if len(paths) == 2 else (str(bundled_model_path()), paths[0])
    check_outputs(model, data_dir, out=out, plots_dir=plots)
    use_device(device)
    doc = run_eval(model, data_dir, EvaluationOptions(subset=subset, n_boot=n_boot, seed=seed, plots_dir=plots,
                                                      workers=workers, device=device, shortcut_check=shortcut_check))
    text = json.dumps(doc, allow_nan=False, indent=None if as_json else 2)
    if out:
        from xraynet.atomic import write_atomic
        from xraynet.errors import EvaluationError

        try:
            write_atomic(out, (text + "\n").encode("utf-8"))  # never makes folders: checked above
        except OSError as e:
            raise EvaluationError(f"{out}: the metrics cannot be written ({e.strerror or e}). Expected a writable "
                                  f"file, got {type(e).__name__}. Give another --out.") from None
    if as_json:
        sys.stdout.write(text + "\n")
        return
    _print_metrics(doc)


def _fmt(m) -> str:
    """A RATE or AUC entry as ``0.921 (0.895-0.940)``; ``-`` when undefined."""
    if not m or m.get("value") is None:
        return "-"
    lo, hi = m.get("ci") or (None, None)
    return f"{m['value']:.3f}" + (f" ({lo:.3f}-{hi:.3f})" if lo is not None else "")


def _print_metrics(doc: dict) -> None:
    """The text of ``evaluate``: within-source AUCs, the pooled table, the screening line, the
    tables by source and view, the confusion matrix and calibration error, the shortcut check."""
    from xraynet.modelcard.layout import threshold_text

    out = console()
    _print_within_source(out, doc)
    out.print(table(f"{doc['n']} images: accuracy {_fmt(doc['accuracy'])}, pooled over all sources (mixes "
                    "sources: flatters a model that recognises the source)",
                    ("class", "sensitivity", "specificity", "PPV", "NPV", "AUC"),
                    [(c, _fmt(m["sensitivity"]), _fmt(m["specificity"]), _fmt(m["ppv"]), _fmt(m["npv"]),
                      _fmt(m["auc"])) for c, m in doc["per_class"].items()]))
    scr = doc.get("screening")
    if scr:
        origin = "chosen on these films" if scr["threshold_chosen_here"] else "the model's"
        out.print(terminal_text(f"screening {scr['class']} at threshold {threshold_text(scr['threshold'])} "
                                f"({origin}), pooled: {scr['flagged']} flagged, sensitivity "
                                f"{_fmt(scr['sensitivity'])}, specificity {_fmt(scr['specificity'])}"),
                  markup=False, highlight=False)
    for group, values in (doc.get("by_group") or {}).items():
        out.print(_group_table(doc, group, values, scr))
    _print_confusion(out, doc)
    if doc.get("shortcut_check"):
        _print_shortcut_check(out, doc["shortcut_check"])


def _group_table(doc: dict, group: str, values: dict, scr):
    """One ``by_group`` table: per value of ``group`` its accuracy and each class's AUC within it."""
    # Per-class AUC inside one source is the figure that a source shortcut cannot inflate.
    title = (f"by {group} (AUC of each class against the rest, within the {group}"
             + (f"; sensitivity/specificity for {scr['class']} at the threshold)" if scr else ")"))
    cols = ["value", "n", "accuracy", "balanced accuracy"] + [f"AUC {c}" for c in doc["classes"]]
    rows = []
    for name, m in values.items():
        bal = m["balanced_accuracy"]
        aucs = [m["per_class"][c]["auc"]["value"] for c in doc["classes"]]
        at = []
        if scr:
            sens, spec = m["screening"]["sensitivity"]["value"], m["screening"]["specificity"]["value"]
            at = [f"{'-' if sens is None else f'{sens:.2f}'}/{'-' if spec is None else f'{spec:.2f}'}"]
        rows.append([name, m["n"], _fmt(m["accuracy"]), "-" if bal is None else f"{bal:.3f}",
                     *("-" if a is None else f"{a:.3f}" for a in aucs), *at])
    return table(title, cols + (["sens/spec"] if scr else []), rows)


def _print_confusion(out, doc: dict) -> None:
    """The pooled confusion matrix (rows the true class, columns the predicted one, argmax) and the
    expected calibration error of the top-class confidence."""
    classes = doc["classes"]
    cm = doc["confusion_matrix"]
    out.print(table("Confusion matrix, pooled: rows = true class, columns = predicted class (highest "
                    "probability)", ["true \\ predicted", *classes],
                    [[c, *row] for c, row in zip(classes, cm)], justify={c: "right" for c in classes}))
    used = [b for b in doc.get("reliability") or [] if b["n"]]
    ece = doc.get("ece")
    out.print(f"expected calibration error (top-class confidence, {len(doc.get('reliability') or [])} bins, "
              f"{len(used)} used): {'-' if ece is None else f'{ece:.3f}'}", markup=False, highlight=False)


def _print_within_source(out, doc: dict) -> None:
    """The within-source AUCs, printed first: the figures a source shortcut cannot inflate."""
    ws = doc.get("within_source") or {}
    if not ws.get("available"):
        out.print(terminal_text(f"within-source AUCs: unavailable: {ws.get('reason') or 'no source metadata'}"),
                  markup=False, highlight=False)
        return

    def cell(e):
        return _fmt(e["auc"]) + f" n={e['n_pos']}/{e['n_neg']}" if e["reason"] is None else f"- ({e['reason']})"

    classes = doc["classes"]
    rows = [[name, s["n"], *(cell(s["per_class"][c]) for c in classes)] for name, s in ws["sources"].items()]
    comb = ws["combined"]
    rows.append(["all sources (same-source pairs)", sum(s["n"] for s in ws["sources"].values()),
                 *(_fmt(comb[c]["auc"]) if comb[c]["reason"] is None else f"- ({comb[c]['reason']})"
                   for c in classes)])
    out.print(table("Within-source AUC: each class against the rest, films compared only with films of the same "
                    "source (the figures a source shortcut cannot inflate); n=positives/negatives",
                    ["source", "n"] + [f"AUC {c}" for c in classes], rows))
    k = ws.get("screening_class")
    if k is not None and len(classes) > 2:
        others = [c for c in classes if c != k]
        out.print(table(f"Within-source AUC of {k} against each other class alone; n={k}/other",
                        ["source"] + [f"{k} vs {c}" for c in others],
                        [[name, *(cell(s["pairwise"][c]) for c in others)] for name, s in ws["sources"].items()]))


def _print_shortcut_check(out, sc: dict) -> None:
    """The shortcut check's table (pooled and within-source AUC of each variant) and its verdict."""
    r = sc["region"]
    shown = sc["verdict"]["classes"]
    cols = ["variant"] + [f"AUC {c} {where}" for c in shown for where in ("pooled", "within source")]
    rows = []
    for name, v in sc["variants"].items():
        row = [name.replace("_", " ")]
        for c in shown:
            ws = (v.get("within_source") or {}).get(c)
            row += [_fmt(v["per_class"][c]["auc"]), _fmt(ws["auc"]) if ws else "-"]
        rows.append(row)
    out.print(table(f"Shortcut check: central {r['centre_fraction']:.0%} of each side (rows {r['rows'][0]}:"
                    f"{r['rows'][1]}, columns {r['columns'][0]}:{r['columns'][1]} of {r['image_size']}), "
                    f"blanked = {'the film mean grey' if r['normalize'] == 'per_image' else 'mid grey'}",
                    cols, rows))
    out.print(f"verdict: {terminal_text(sc['verdict']['text'])}", markup=False, highlight=False)
