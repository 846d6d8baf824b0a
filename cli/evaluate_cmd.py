"""``xraynet evaluate``: metrics of a model on a labelled folder (:mod:`xraynet.evaluate`), as tables or JSON."""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer

from .common import console, device_option, use_device


def evaluate(
    paths: list[str] = typer.Argument(..., metavar="[MODEL] DATA_DIR",
                                      help="Model file (HDF5, default: the bundled model) and a folder with "
                                           "one subfolder of images per class."),
    subset: str = typer.Option("all", help="all: every image; val: only the validation patients of the "
                                           "model's own training split (DATA_DIR must be its training folder, unchanged)."),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as one JSON document."),
    out: Optional[str] = typer.Option(None, help="Also write the JSON document to this file."),
    plots: Optional[str] = typer.Option(None, help="Write roc.png and reliability.png to this folder."),
    n_boot: int = typer.Option(1000, min=0, help="Bootstrap resamples for the AUC intervals."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    workers: int = typer.Option(2, min=1, help="Threads decoding images."),
    device: str = device_option(),
    shortcut_check: bool = typer.Option(False, "--shortcut-check",
                                        help="Also score the films with the central chest region (70% of each "
                                             "side) blanked and with only it kept, and say whether the model "
                                             "still separates the classes without seeing the lungs."),
) -> None:
    """Metrics with 95% intervals, within each source first, then pooled and per source/view, at the model's
    threshold."""
    from xraynet.evaluate import EvaluationOptions, evaluate as run_eval
    from xraynet.modelfile import bundled_model_path

    if len(paths) > 2:
        raise typer.BadParameter(f"expected [MODEL] DATA_DIR, got {len(paths)} paths")
    use_device(device)
    model, data_dir = (paths[0], paths[1]) if len(paths) == 2 else (str(bundled_model_path()), paths[0])
    doc = run_eval(model, data_dir, EvaluationOptions(subset=subset, n_boot=n_boot, seed=seed, plots_dir=plots,
                                                      workers=workers, device=device, shortcut_check=shortcut_check))
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

    out = console()
    _print_within_source(out, doc, fmt)
    t = Table(title=f"{doc['n']} images: accuracy {fmt(doc['accuracy'])}, pooled over all sources (mixes sources: "
                    "flatters a model that recognises the source)")
    for col in ("class", "sensitivity", "specificity", "PPV", "NPV", "AUC"):
        t.add_column(col)
    for c, m in doc["per_class"].items():
        t.add_row(c, fmt(m["sensitivity"]), fmt(m["specificity"]), fmt(m["ppv"]), fmt(m["npv"]), fmt(m["auc"]))
    out.print(t)
    scr = doc.get("screening")
    if scr:
        origin = "chosen on these films" if scr["threshold_chosen_here"] else "the model's"
        out.print(f"screening {scr['class']} at threshold {scr['threshold']:.4g} ({origin}), pooled: "
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
        out.print(g)
    if doc.get("shortcut_check"):
        _print_shortcut_check(out, doc["shortcut_check"], doc["classes"], fmt)


def _print_within_source(out, doc: dict, fmt) -> None:
    """The within-source AUCs, printed first: the figures a source shortcut cannot inflate."""
    from rich.table import Table

    ws = doc.get("within_source") or {}
    if not ws.get("available"):
        out.print(f"within-source AUCs: unavailable: {ws.get('reason') or 'no source metadata'}",
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
    out.print(t)
    k = ws.get("screening_class")
    if k is not None and len(classes) > 2:
        others = [c for c in classes if c != k]
        pw = Table(title=f"Within-source AUC of {k} against each other class alone; n={k}/other")
        for col in ["source"] + [f"{k} vs {c}" for c in others]:
            pw.add_column(col)
        for name, s in ws["sources"].items():
            pw.add_row(name, *(cell(s["pairwise"][c]) for c in others))
        out.print(pw)


def _print_shortcut_check(out, sc: dict, classes, fmt) -> None:
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
    out.print(t)
    out.print(f"verdict: {sc['verdict']['text']}", markup=False, highlight=False)
