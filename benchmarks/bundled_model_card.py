"""Write the model card into the bundled model (xraynet/models/default.h5),
keeping its weights and weights_sha256 unchanged, and say where each number
came from.

    python benchmarks/bundled_model_card.py [--data ../shared/data/cxr] [--check]

What it computes again and what it reads:

* training data and split: ../shared/data/cxr scanned and split again with
  the seed and fraction stored in the model; the result must equal the
  confound report the model file stored at training time (same films, same
  patients, same split), or the script stops;
* validation figures: ``xraynet evaluate MODEL DATA --subset val
  --shortcut-check`` run again (1,000 bootstrap resamples, seed 0; about
  30 s on 2 cores), compared number by number with
  benchmarks/results/2026-11-29-bundled-model-evaluate-val.json (the README's
  source); any difference stops the script unless --allow-drift;
* threshold: the model file's metadata (the rule and what it gave on the
  films that chose it), and what it gives per source from the evaluation;
* leave-one-source-out: benchmarks/results/2026-11-29-bundled-model-crossval.json
  (three retrainings, about 20 minutes alone; not rerun here), after checking
  that its recipe is the model's;
* training time and machine: the model's epoch history, and the README for
  the machine (the model file does not record it);
* intended use and the data-specific limits: the README's "The bundled
  model" section, in its words; the other limits are worked out from the
  figures by xraynet.modelcard.

Re-runnable: a rerun rebuilds the card from the same inputs and rewrites the
file only when the card changed (its ``written_utc`` aside). ``--check``
writes nothing and exits 1 when the stored card is missing or differs from the
rebuilt one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from xraynet.confounds import confound_report
from xraynet.data import scan_dataset, split_dataset
from xraynet.errors import XraynetError
from xraynet.evaluate import EvaluationOptions, evaluate
from xraynet.modelcard import (CARD_KEY, N_BOOT, BOOT_SEED, CardParts, build_card, crossval_section,
                               data_section, preprocessing_section, split_section, threshold_section,
                               training_section, validation_section)
from xraynet.modelfile import load_model, read_info, save_model

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "xraynet" / "models" / "default.h5"
DATA = REPO.parent / "shared" / "data" / "cxr"
RESULTS = REPO / "benchmarks" / "results"
EVAL_REF = RESULTS / "2026-11-29-bundled-model-evaluate-val.json"
CROSSVAL = RESULTS / "2026-11-29-bundled-model-crossval.json"
README = "README.md, \"The bundled model\""

#: The collections behind the source_repo values (../shared/data/cxr/README.md, "Sources").
SOURCE_DESCRIPTIONS = {
    "vikasb512/Capstone-Project": "SIIM-FISABIO-RSNA: covid and normal from the same hospitals",
    "hida6/covid-chestxray-dataset": "ieee8023 collection: covid, some pneumonia, a few normal",
    "muhammedtalo/COVID-19": "NIH ChestX-ray8: normal and pneumonia",
}
#: The development machine, as the README names it; the model file records only the device.
MACHINE = {"description": "the development machine", "cpu": "AMD EPYC", "cpu_count": 2, "system": "Linux",
           "gpu": None}
TRAINING_NOTE = ("About 9 minutes alone on this machine with the decode cache, 42-47 s per epoch (README); the "
                 "recorded epoch times add up to more because the first epochs shared the machine with other runs "
                 "(benchmarks/results/2026-11-29-source-robust-recipes.md)")

INTENDED_USE = {
    "summary": ("A research and triage aid, not a diagnosis, and not a diagnostic device. It ranks frontal chest "
                "films by how much they look like COVID-19 pneumonia, so that a person can look at the flagged "
                "ones first."),
    "not_for": ["diagnosis, or telling a patient they do or do not have COVID-19",
                "treatment or triage decisions without a clinician reading the film",
                "lateral views, CT, or anything but frontal chest radiographs"],
    "before_use": ("It has been measured only on the public collections of its training data, never prospectively "
                   "and never at a hospital of its own; the figures say what to expect, not what it will do at "
                   "yours. Run `xraynet evaluate` on labelled films of your own before trusting its threshold."),
}
README_LIMITS = [
    {"topic": "labels",
     "text": ("The labels are radiological appearance (\"typical appearance of COVID-19 pneumonia\", \"negative for "
              "pneumonia\" as read by radiologists, and collection labels for the rest), not test results: a film "
              "it calls normal is not a patient without COVID-19.")},
    {"topic": "pneumonia and ieee8023",
     "text": ("pneumonia has no source where it sits beside the other classes from the same hospitals, so its "
              "figures stay confounded; inside the ieee8023 collection the model barely tells COVID-19 from other "
              "pneumonias.")},
]


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def _diff(a, b, path="", tol=0.0) -> list[str]:
    """Where two JSON documents differ (numbers beyond ``tol``)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}/{k}: only in one" for k in sorted(set(a) ^ set(b))]
        for k in sorted(set(a) & set(b)):
            out += _diff(a[k], b[k], f"{path}/{k}", tol)
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _diff(x, y, f"{path}[{i}]", tol)]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return [] if abs(a - b) <= tol else [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


def _fmt(value, ci) -> str:
    return "-" if value is None else f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"


def shortcut_limit(sc: dict, k: str) -> dict:
    """The shortcut check's figures for class ``k``, as a limit."""
    v = sc["verdict"]["per_class"][k]
    within = {name: (sc["variants"][name].get("within_source") or {}).get(k) for name in sc["variants"]}
    margin = v["margin_kept"]
    return {"topic": "shortcut check",
            "text": (f"With the central {sc['region']['centre_fraction']:.0%} of each side blanked, the pooled {k} "
                     f"AUC is {_fmt(v['auc_centre_blanked']['value'], v['auc_centre_blanked']['ci'])} against "
                     f"{_fmt(v['auc_full']['value'], v['auc_full']['ci'])} on full films"
                     + (f" ({margin:.0%} of the margin above chance kept)" if margin is not None else "")
                     + ": the check says the model uses cues outside that box (borders, markers, lines and tubes, "
                       "and the outer lung fields the box leaves out). With only the centre kept the within-source "
                       f"figure is {_fmt(within['centre_only']['auc']['value'], within['centre_only']['auc']['ci'])} "
                       f"of {_fmt(within['full']['auc']['value'], within['full']['auc']['ci'])}: most of what it "
                       "uses is in the chest.")}


def build(model: Path, data: Path, evaluation: Path | None, allow_drift: bool, device: str) -> tuple[dict, dict]:
    """The card, and a report of the checks made on the way."""
    checks = {}
    loaded = load_model(model)
    info = read_info(model)
    meta = loaded.metadata
    old = meta.get(CARD_KEY) or {}

    ds = scan_dataset(data)
    split = split_dataset(ds, val_fraction=meta["split"]["val_fraction"], seed=meta["split"]["seed"])
    report = confound_report(ds, split)
    stored = meta["data"]["confounds"]
    d = _diff(json.loads(json.dumps(report)), stored)
    if d:
        _fail(f"{data}: not the data the model was trained on. Expected the stored confound report, got "
              f"{len(d)} differences ({'; '.join(d[:3])}). Pass --data the folder it was trained on.")
    checks["data"] = f"{data}: scanned and split again (seed {split.seed}, {split.val_fraction:.0%}); equals the " \
                     "confound report stored at training time"

    if evaluation is None:
        doc = evaluate(model, data, EvaluationOptions(subset="val", n_boot=N_BOOT, seed=BOOT_SEED, device=device,
                                                      shortcut_check=True))
        how = (f"recomputed: xraynet.evaluate.evaluate(MODEL, {data}, EvaluationOptions(subset='val', "
               f"n_boot={N_BOOT}, seed={BOOT_SEED}, shortcut_check=True))")
    else:
        doc = json.loads(Path(evaluation).read_text())
        how = f"read from {evaluation}"
    ref = json.loads(EVAL_REF.read_text())
    keys = ("n", "accuracy", "balanced_accuracy", "per_class", "macro_auc", "screening", "by_group", "within_source",
            "shortcut_check", "bootstrap")
    d = _diff({k: doc.get(k) for k in keys}, {k: ref.get(k) for k in keys})
    if d and not allow_drift:
        _fail(f"{EVAL_REF.name}: the figures recomputed now differ from it. Expected equal numbers, got "
              f"{len(d)} differences ({'; '.join(d[:3])}). Find out why, or pass --allow-drift to card the new ones.")
    checks["validation"] = how + ("; every number equals " if not d else f"; {len(d)} numbers differ from ") + \
        f"benchmarks/results/{EVAL_REF.name}"

    cv = json.loads(CROSSVAL.read_text())
    recipe = {k: v for k, v in meta["options"].items() if k in cv["recipe"]}
    d = _diff(recipe, cv["recipe"])
    if d or cv["data"]["images"] != len(ds.items) or not cv.get("complete"):
        _fail(f"{CROSSVAL.name}: not the leave-one-source-out run of this model's recipe on this data. Expected "
              f"the recipe {recipe} on {len(ds.items)} images, complete, got {len(d)} recipe differences, "
              f"{cv['data']['images']} images, complete={cv.get('complete')}. Run `xraynet crossval {data} "
              "--out-dir cv/` and pass its crossval.json.")
    checks["leave_one_source_out"] = f"read from benchmarks/results/{CROSSVAL.name}; its recipe is the model's"

    validation = validation_section(doc, subset=f"the {doc['n']} validation films of the stored split (patients "
                                                "never trained on)")
    validation["leave_one_source_out"] = crossval_section(cv)
    training_data = data_section(ds, split, report, skipped=meta["data"]["skipped"])
    training_data["source_descriptions"] = SOURCE_DESCRIPTIONS
    # created_utc is rewritten with the card, so a rerun takes the time from the card written before.
    finished = (old.get("training") or {}).get("finished_utc") or info["created_utc"]
    training = training_section(loaded.history, best_epoch=meta["best_epoch"], device=meta["device"],
                                recipe=meta["options"], machine_info=MACHINE, wall_seconds=None, resumed=False,
                                finished_utc=finished)
    training["note"] = TRAINING_NOTE
    thr = meta["threshold"]
    card = build_card(CardParts(
        classes=loaded.classes, screening_class=thr["class"], training_data=training_data,
        split=split_section(split, report), preprocessing=preprocessing_section(loaded.preprocessing),
        validation=validation, threshold=threshold_section(thr, doc), training=training,
        weights_sha256=info["weights_sha256"], intended_use=INTENDED_USE,
        extra_limits=README_LIMITS + [shortcut_limit(doc["shortcut_check"], thr["class"])],
        provenance={
            "training_data": checks["data"] + "; source descriptions from ../shared/data/cxr/README.md",
            "split": "xraynet.data.split_dataset with the seed and fraction stored in the model file",
            "validation": checks["validation"],
            "validation.leave_one_source_out": checks["leave_one_source_out"],
            "threshold": ("value, rule and the figures on the films that chose it: the model file's metadata "
                          "(written by xraynet train); per source and pooled: the validation figures above"),
            "training": ("epochs, best epoch, device and recipe: the model file's metadata and history; machine: "
                         f"{README}; finished_utc: the model file's created_utc before the card was added"),
            "intended_use": f"{README}, \"Intended use\"",
            "limits": (f"labels, pneumonia and ieee8023: {README}; shortcut check: the validation figures above; "
                       "the rest worked out from this card's figures (xraynet.modelcard.limits_section)"),
            "script": "benchmarks/bundled_model_card.py",
        }))
    return card, checks


def _state(model: Path) -> dict:
    return {n: np.asarray(a) for n, a in load_model(model).model.state_dict().items()}


def write(model: Path, out: Path, card: dict) -> str:
    """Save the model again with the card in its metadata; the weights must come
    back bit for bit with the same checksum. Returns the checksum."""
    loaded = load_model(model)
    before = read_info(model)["weights_sha256"]
    original = _state(model)
    meta = {k: v for k, v in loaded.metadata.items() if k != CARD_KEY}
    save_model(out, loaded.model, classes=loaded.classes, preprocessing=loaded.preprocessing, history=loaded.history,
               metadata={**meta, CARD_KEY: card})
    after = read_info(out)
    again = _state(out)   # load_model verifies the stored checksum against the weights read
    same = set(again) == set(original) and all(
        again[n].dtype == original[n].dtype and np.array_equal(again[n], original[n]) for n in original)
    if after["weights_sha256"] != before or not same:
        _fail(f"{out}: the weights changed while the card was written. Expected weights_sha256 {before}, got "
              f"{after['weights_sha256']} (arrays identical: {same}). Restore the model file from git.")
    if {k: v for k, v in after["metadata"].items() if k != CARD_KEY} != meta:
        _fail(f"{out}: the metadata besides the card changed. Expected it as before, got another. Restore the model "
              "file from git.")
    return before


def summary(card: dict) -> list[str]:
    """The README's figures as the card states them, each with where it came from."""
    v, t, p = card["validation"], card["threshold"], card["provenance"]
    k = t["class"]
    siim = "vikasb512/Capstone-Project"
    ws = v["within_source"]["sources"][siim]["auc"][k]
    pairs = v["within_source"]["combined"][k]
    lines = [f"within-SIIM {k} AUC           {_fmt(ws['value'], ws['ci'])}   [{p['validation']}]",
             f"same-source pairs {k} AUC     {_fmt(pairs['value'], pairs['ci'])}",
             f"pooled {k} AUC (mixes sources) {_fmt(v['pooled']['auc'][k]['value'], v['pooled']['auc'][k]['ci'])}",
             f"threshold                      {t['value']:.4f} (target sensitivity {t['target_sensitivity']})   "
             f"[{p['threshold']}]"]
    s = t["by_source"][siim]
    lines.append(f"SIIM sensitivity / specificity {_fmt(s['sensitivity']['value'], s['sensitivity']['ci'])} / "
                 f"{_fmt(s['specificity']['value'], s['specificity']['ci'])}")
    lines.append(f"pooled sensitivity / specificity {t['pooled']['sensitivity']['value']:.3f} / "
                 f"{t['pooled']['specificity']['value']:.3f}")
    for f in v["leave_one_source_out"]["folds"]:
        aucs = ", ".join(f"{c} {_fmt(a['value'], a['ci'])}" for c, a in f["auc"].items() if a["value"] is not None)
        lines.append(f"held out {f['held_out']}: {aucs}   [{p['validation.leave_one_source_out']}]")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=MODEL, help="the model to card (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=None, help="where to write (default: --model, in place)")
    ap.add_argument("--data", type=Path, default=DATA, help="the folder it was trained on (../shared/data/cxr)")
    ap.add_argument("--evaluation", type=Path, default=None,
                    help="an `xraynet evaluate MODEL DATA --subset val --shortcut-check --json` document to use "
                         "instead of evaluating again")
    ap.add_argument("--allow-drift", action="store_true",
                    help="card the recomputed figures even where they differ from the result file")
    ap.add_argument("--device", default="cpu", help="where the evaluation runs (cpu, gpu, auto)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 unless the stored card is current")
    args = ap.parse_args(argv)
    try:
        card, checks = build(args.model, args.data, args.evaluation, args.allow_drift, args.device)
    except XraynetError as e:
        _fail(str(e))
    for name, text in checks.items():
        print(f"{name}: {text}")
    for line in summary(card):
        print(line)
    old = read_info(args.model)["metadata"].get(CARD_KEY)
    current = old is not None and _diff({**old, "written_utc": None}, {**card, "written_utc": None}) == []
    if args.check:
        print("the stored card is current" if current else "the stored card is missing or out of date")
        return 0 if current else 1
    out = args.out or args.model
    if current and out == args.model:
        print(f"{out}: card unchanged, file not rewritten")
        return 0
    digest = write(args.model, out, card)
    print(f"{out}: card written; weights_sha256 {digest} unchanged, weights identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
