"""The model card: what a model is for, what it was trained on and how well it
did, stored inside the model file and printed by ``xraynet info MODEL.h5``.

The card lives in the model file's ``metadata`` JSON object under the key
``"model_card"`` (:data:`CARD_KEY`); no new HDF5 layout is involved, so a
file with a card is an ordinary format-1 model file and a file without one
(written before cards existed) still loads everywhere. ``xraynet train``
writes it at the end of training (:func:`training_card`);
``benchmarks/bundled_model_card.py`` wrote the bundled model's.

Card layout, ``card_version`` 1
-------------------------------
A JSON object. Undefined numbers are ``null``, never NaN. ``CI`` is a 95%
interval ``[lo, hi]``; ``RATE`` is ``{"value", "ci" (Wilson), "k", "n"}``;
``AUC`` is ``{"value", "ci" (stratified bootstrap), "n_pos", "n_neg",
"reason"}`` (value null, with the reason, where it is not defined)::

    card_version     1 (CARD_VERSION); a reader refuses a larger one
    written_utc      ISO 8601 UTC time the card was made
    xraynet_version  version of the xraynet that wrote the card
    weights_sha256   the weights the card describes (the model file's own
                     checksum; `info` warns when the file's differs)
    classes          [str], label order; screening_class: the class the
                     threshold screens for
    training_data    {"root", "images", "skipped", "patients", "has_metadata",
                      "excluded_sources": [source_repo values held out],
                      "per_class": {"images"|"patients": {"train"|"val"|"all":
                                    {cls: n}}},
                      "sources": {source: {"images"|"patients": {"train"|"val"|"all":
                                  {cls: n}}}}   ("(unknown)" without a source),
                      "source_descriptions": {source: str} (optional),
                      "multi_class_patients", "warnings": [str]}
    split            {"level": "patient" | "image", "rule": str, "seed",
                      "val_fraction", "stratified_by": "class",
                      "images": {"train", "val"}, "patients": {"train", "val"},
                      "patient_overlap"}
    preprocessing    the model's preprocessing dict plus "steps": [str]
    validation       {"films", "subset": str, "bootstrap": {"n_boot", "seed", "level"},
                      "screening_class",
                      "within_source": {"available", "reason", "note",
                          "sources": {source: {"films", "class_counts",
                                      "auc": {cls: AUC}}},
                          "combined": {cls: {"value", "ci", "n_pairs",
                                      "sources", "reason"}}},
                      "pooled": {"note", "accuracy": RATE, "balanced_accuracy",
                                 "macro_auc", "auc": {cls: {"value", "ci"}}},
                      "leave_one_source_out": null | {"note", "by", "recipe", "bootstrap",
                          "folds": [{"held_out", "status", "reason", "films",
                                     "class_counts", "train_images",
                                     "val_images", "best_epoch",
                                     "auc": {cls: {"value", "ci", "reason"}},
                                     "screening": null | {"class", "threshold",
                                         "sensitivity": RATE,
                                         "specificity": RATE, "reason"}}]}}
    threshold        {"class", "value", "target_sensitivity", "rule": str,
                      "chosen_on", "sources": null | [str],
                      "at_choice": {"sensitivity", "specificity", "ppv",
                                    "npv": RATE, "tp", "fp", "tn", "fn"}
                                   (on the films that chose it),
                      "by_source": {source: {"sensitivity", "specificity": RATE}},
                      "pooled": {"sensitivity", "specificity": RATE, "note"}}
    training         {"epochs_run", "best_epoch", "selected_by", "device",
                      "machine": {"cpu", "cpu_count", "system", "gpu", "description" (optional)},
                      "epoch_seconds": {"total", "median", "min", "max"},
                      "wall_seconds": null | float (the last run, decode included),
                      "resumed": bool, "finished_utc", "recipe": {option: value},
                      "history": [{"epoch", "val_auc",
                                   "val_within_source_auc", "val_loss"}],
                      "note": str (optional)}
    intended_use     {"summary": str, "not_for": [str], "before_use": str}
    limits           [{"topic": str, "text": str}]
    provenance       {section: str}: where each part's numbers came from

:func:`info_document` turns a model file into what ``xraynet info MODEL``
prints (``--json``): the card's keys plus ``model_file``, ``path``,
``weights_sha256`` (the file's), ``card_present``, ``architecture`` and
``notes``; for a file without a card, ``card_present`` is false and the keys
the file can fill (classes, preprocessing, threshold, training basics) are
filled, the others null. :func:`format_card` is the readable text.
"""
from __future__ import annotations

import datetime
import math
import os
import platform
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ModelFileError

CARD_VERSION = 1
CARD_KEY = "model_card"
#: The keys every card has (and ``xraynet info --json`` prints).
CARD_KEYS = ("card_version", "classes", "training_data", "split", "preprocessing", "validation", "threshold",
             "training", "xraynet_version", "intended_use", "limits")
#: Bootstrap resamples and seed of the card's intervals: those of `xraynet evaluate`'s defaults, so the
#: card of a fresh model and `xraynet evaluate MODEL DATA --subset val` give the same figures.
N_BOOT = 1000
BOOT_SEED = 0
UNKNOWN = "(unknown)"
SIDES = ("train", "val", "all")

POOLED_NOTE = ("pooled over every validation film: mixes sources, so it flatters a model that recognises "
               "where a film comes from; read the within-source figures first")
WITHIN_NOTE = ("AUCs among films of one source only: the figures a model that recognises the source, not the "
               "disease, cannot earn")
NOT_A_DEVICE = ("A research tool, not a diagnostic device: it has not been cleared or validated for clinical "
                "use, and its output is not a diagnosis.")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _num(x):
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


# ------------------------------------------------------------- training data
def _count(items, classes) -> dict:
    images = {c: 0 for c in classes}
    patients = {c: set() for c in classes}
    for it in items:
        images[classes[it.label]] += 1
        patients[classes[it.label]].add(it.patient_id)
    return images, {c: len(s) for c, s in patients.items()}


def data_section(ds, split, report: dict, *, skipped: int = 0, excluded_sources=()) -> dict:
    """``training_data`` from a scanned dataset (:func:`xraynet.data.scan_dataset`),
    its split and its confound report: images and patients per class, and per
    source and class, for train, validation and all."""
    classes = list(ds.classes)
    parts = {"train": [ds.items[i] for i in split.train], "val": [ds.items[i] for i in split.val],
             "all": list(ds.items)}
    names = sorted({UNKNOWN if it.source is None else str(it.source) for it in ds.items})
    sources = {}
    for name in names:
        entry = {"images": {}, "patients": {}}
        for side in SIDES:
            mine = [it for it in parts[side] if (UNKNOWN if it.source is None else str(it.source)) == name]
            entry["images"][side], entry["patients"][side] = _count(mine, classes)
        sources[name] = entry
    return {
        "root": str(Path(ds.root).resolve()),
        "images": len(ds.items),
        "skipped": int(skipped),
        "patients": int(report["totals"]["patients"]["all"]),
        "has_metadata": bool(ds.has_metadata),
        "excluded_sources": sorted(str(s) for s in excluded_sources),
        "per_class": {"images": report["images"], "patients": report["patients"]},
        "sources": sources,
        "multi_class_patients": int(report["multi_class_patients"]),
        "warnings": list(report.get("warnings", [])),
    }


def split_section(split, report: dict) -> dict:
    """``split``: the rule of :func:`xraynet.data.split_dataset`, its seed and
    fraction, and what it gave."""
    level = "image" if split.per_image else "patient"
    rule = (f"by {level}: {split.val_fraction:.0%} of the {level}s go to validation, stratified by class (a "
            f"{level}'s class is that of most of their images), in a seeded random order (seed {split.seed}); "
            + ("no patient has images on both sides" if level == "patient"
               else "there are no patient ids, so films of one patient may sit on both sides"))
    return {"level": level, "rule": rule, "seed": int(split.seed), "val_fraction": float(split.val_fraction),
            "stratified_by": "class",
            "images": {s: int(report["totals"]["images"][s]) for s in ("train", "val")},
            "patients": {s: int(report["totals"]["patients"][s]) for s in ("train", "val")},
            "patient_overlap": int(report["patient_overlap"])}


# ------------------------------------------------------------ preprocessing
def preprocessing_section(prep: dict) -> dict:
    """The stored preprocessing dict plus its steps in words, in pipeline order
    (:mod:`xraynet.imaging`)."""
    size = prep.get("image_size")
    steps = ["decode to grayscale in [0, 1] (DICOM: modality and VOI LUT; MONOCHROME1 inverted)"]
    if prep.get("border_crop"):
        steps.append(f"cut {prep['border_crop']:.0%} of each edge (burned-in text and markers)")
    if prep.get("working_size"):
        steps.append(f"resize so the short side has {prep['working_size']} pixels")
    if prep.get("equalize"):
        steps.append("histogram equalisation")
    fit = {"pad": "scale the long side and pad with black to", "crop": "scale the short side and keep the centre of",
           "stretch": "stretch (aspect ratio not kept) to"}.get(prep.get("fit"), f"fit ({prep.get('fit')}) to")
    steps.append(f"{fit} {size}x{size}")
    norm = prep.get("normalize", "per_image")
    steps.append("normalise each image to mean 0, standard deviation 1" if norm == "per_image"
                 else f"normalise ({norm})")
    return {**prep, "steps": steps}


# --------------------------------------------------------------- validation
def _rate(r: dict | None) -> dict | None:
    if not r:
        return None
    return {"value": _num(r["value"]), "ci": [_num(v) for v in r["ci"]], "k": int(r["k"]), "n": int(r["n"])}


def _auc(entry: dict) -> dict:
    return {"value": _num(entry["auc"]["value"]), "ci": [_num(v) for v in entry["auc"]["ci"]],
            "n_pos": int(entry["n_pos"]), "n_neg": int(entry["n_neg"]), "reason": entry["reason"]}


def validation_section(doc: dict, *, subset: str) -> dict:
    """``validation`` from an evaluation document (what
    :func:`xraynet.evaluate.evaluate` returns, or :func:`evaluation_document`):
    within-source AUCs first, then the pooled figures. ``subset`` says which
    films these are, in words."""
    ws = doc["within_source"]
    within = {"available": bool(ws["available"]), "reason": ws["reason"], "note": WITHIN_NOTE, "sources": {},
              "combined": {}}
    for name, s in ws["sources"].items():
        within["sources"][name] = {"films": int(s["n"]), "class_counts": dict(s["class_counts"]),
                                   "auc": {c: _auc(e) for c, e in s["per_class"].items()}}
    for c, e in ws["combined"].items():
        within["combined"][c] = {"value": _num(e["auc"]["value"]), "ci": [_num(v) for v in e["auc"]["ci"]],
                                 "n_pairs": int(e["n_pairs"]), "sources": list(e["sources"]), "reason": e["reason"]}
    pooled = {"note": POOLED_NOTE, "accuracy": _rate(doc["accuracy"]),
              "balanced_accuracy": _num(doc["balanced_accuracy"]), "macro_auc": _num(doc["macro_auc"]),
              "auc": {c: {"value": _num(m["auc"]["value"]), "ci": [_num(v) for v in m["auc"]["ci"]]}
                      for c, m in doc["per_class"].items()}}
    boot = doc.get("bootstrap") or {}
    return {"films": int(doc["n"]), "subset": subset,
            "bootstrap": {"n_boot": boot.get("n_boot"), "seed": boot.get("seed"), "level": boot.get("level", 0.95)},
            "screening_class": ws.get("screening_class"), "within_source": within, "pooled": pooled,
            "leave_one_source_out": None}


def evaluation_document(y, proba, classes, sources, threshold: dict, *, n_boot: int = N_BOOT,
                        seed: int = BOOT_SEED) -> dict:
    """The parts of an `xraynet evaluate` document the card uses, from labels
    ``y`` (N,), probabilities ``proba`` (N, C) and ``sources`` (one per film,
    or None), at the stored ``threshold``: the same calls, seeds and intervals
    as ``xraynet evaluate``, so the figures agree with it."""
    from .metrics import evaluate_predictions, within_source_aucs

    groups = {"source": list(sources)} if sources is not None and any(s for s in sources) else None
    doc = evaluate_predictions(y, proba, classes, screening_class=threshold["class"], threshold=threshold["value"],
                               groups=groups, n_boot=n_boot, seed=seed)
    doc["within_source"] = within_source_aucs(y, proba, classes, None if groups is None else groups["source"],
                                              screening_class=threshold["class"], n_boot=n_boot, seed=seed)
    return doc


def crossval_section(cv: dict) -> dict:
    """``validation.leave_one_source_out`` from a ``crossval.json`` document
    (:func:`xraynet.crossval.crossval`)."""
    folds = []
    for f in cv["folds"]:
        s = f.get("screening")
        folds.append({
            "held_out": f["source"], "status": f["status"], "reason": f.get("reason"),
            "films": f.get("images_total"), "class_counts": f.get("images"),
            "train_images": f.get("train_images"), "val_images": f.get("val_images"),
            "best_epoch": f.get("best_epoch"),
            "auc": {c: {"value": _num(m["auc"]), "ci": [_num(v) for v in m["ci"]], "reason": m["reason"]}
                    for c, m in (f.get("per_class") or {}).items()},
            "screening": None if not s else {"class": s["class"], "threshold": _num(s["threshold"]),
                                             "sensitivity": _rate(s["sensitivity"]),
                                             "specificity": _rate(s["specificity"]), "reason": s.get("reason")},
        })
    return {"note": cv.get("note"), "by": cv.get("by"), "recipe": cv.get("recipe"),
            "bootstrap": cv.get("evaluation"), "folds": folds}


# ----------------------------------------------------------------- threshold
def threshold_section(thr: dict, doc: dict) -> dict:
    """``threshold`` from the model's ``metadata["threshold"]`` and the
    evaluation document: the rule that chose it, what it gave on the films that
    chose it, in each source, and pooled."""
    chosen_on = thr.get("sources")
    where = (f"the validation films of the sources that hold {thr['class']} films and others "
             f"({', '.join(chosen_on)})" if chosen_on else "all validation films")
    rule = (f"the highest threshold whose sensitivity for {thr['class']} reaches {thr['target_sensitivity']:g} on "
            f"{where}; flagged when p({thr['class']}) >= threshold. The same films chose the epoch, so expect "
            "somewhat less on new films")
    at = thr.get("validation") or {}
    by_source = {}
    for name, m in ((doc.get("by_group") or {}).get("source") or {}).items():
        scr = m.get("screening") or {}
        by_source[name] = {"sensitivity": _rate(scr.get("sensitivity")), "specificity": _rate(scr.get("specificity"))}
    scr = doc.get("screening") or {}
    return {"class": thr["class"], "value": _num(thr["value"]), "target_sensitivity": thr.get("target_sensitivity"),
            "rule": rule, "chosen_on": thr.get("chosen_on"), "sources": chosen_on,
            "at_choice": {**{k: _rate(at.get(k)) for k in ("sensitivity", "specificity", "ppv", "npv")},
                          **{k: at.get(k) for k in ("tp", "fp", "tn", "fn")}},
            "by_source": by_source,
            "pooled": {"sensitivity": _rate(scr.get("sensitivity")), "specificity": _rate(scr.get("specificity")),
                       "note": "over every validation film: mixes sources"}}


# ------------------------------------------------------------------ training
def machine() -> dict:
    """This machine, as far as the standard library knows it."""
    cpu = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "system": platform.system(), "gpu": None}


def training_section(history: list, *, best_epoch: int, device: str, recipe: dict, machine_info: dict | None,
                     wall_seconds: float | None, resumed: bool, finished_utc: str) -> dict:
    """``training`` from the epoch history (:class:`xraynet.train.EpochRecord` dicts)."""
    secs = [float(h.get("seconds") or 0.0) for h in history]
    selected = ("within-source AUC" if any(h.get("val_within_source_auc") is not None for h in history)
                else "macro AUC")
    return {"epochs_run": len(history), "best_epoch": int(best_epoch), "selected_by": selected, "device": device,
            "machine": machine_info,
            "epoch_seconds": {"total": sum(secs), "median": float(np.median(secs)) if secs else None,
                              "min": min(secs) if secs else None, "max": max(secs) if secs else None},
            "wall_seconds": _num(wall_seconds), "resumed": bool(resumed), "finished_utc": finished_utc,
            "recipe": dict(recipe),
            "history": [{"epoch": h["epoch"], "val_auc": _num(h.get("val_auc")),
                         "val_within_source_auc": _num(h.get("val_within_source_auc")),
                         "val_loss": _num(h.get("val_loss"))} for h in history]}


# ------------------------------------------------------ intended use, limits
def intended_use_section(classes, screening: str) -> dict:
    return {
        "summary": (f"{NOT_A_DEVICE} It ranks frontal chest X-rays by how much they look like {screening} "
                    f"(classes: {', '.join(classes)}), so that a person can look at the flagged films first."),
        "not_for": ["diagnosis, or ruling a disease in or out for a patient",
                    "treatment or triage decisions without a clinician reading the film",
                    "films other than frontal chest radiographs (lateral views, CT, children's films "
                    "unless the training data held them)"],
        "before_use": ("Measure it on labelled films of your own site with `xraynet evaluate MODEL DATA` before "
                       "trusting its threshold: the figures below say what to expect on data like the training "
                       "data, not what it will do at your site."),
    }


def _fmt_ci(value, ci, digits=3) -> str:
    if value is None:
        return "-"
    lo, hi = ci if ci else (None, None)
    return f"{value:.{digits}f}" + (f" ({lo:.{digits}f}-{hi:.{digits}f})" if lo is not None else "")


def limits_section(card: dict) -> list[dict]:
    """Known limits, in words, worked out from the card's own figures: the
    source confounding of the training data, how far the within-source and
    pooled figures can be trusted, and what the leave-one-source-out figures
    (or their absence) say."""
    out = [{"topic": "not a diagnostic device", "text": NOT_A_DEVICE}]
    data, val, classes = card["training_data"], card["validation"], card["classes"]
    sources = data["sources"]
    combined = val["within_source"]["combined"]
    unmeasured = [c for c in classes if (combined.get(c) or {}).get("reason")]
    if not val["within_source"]["available"]:
        out.append({"topic": "source confounding",
                    "text": "The training data names no source for its films, so whether the model recognises "
                            "the collection instead of the disease cannot be measured; treat every figure as "
                            "possibly inflated."})
    else:
        # Each source's class mix: where it differs from source to source, the source alone predicts the
        # label, and a network can learn to recognise the collection instead of the disease.
        mixes = []
        for s, e in sources.items():
            n = sum(e["images"]["all"].values())
            if n:
                mixes.append(f"{s}: " + ", ".join(f"{e['images']['all'][c] / n:.0%} {c}" for c in classes))
        text = (f"The sources hold the classes in different proportions ({'; '.join(mixes)}), so a network can "
                "score by recognising where a film comes from instead of the disease. The within-source figures "
                "are the ones such a shortcut cannot earn; the pooled ones mix sources.")
        if unmeasured:
            text += (f" {', '.join(unmeasured)}: no source holds these films beside films of another class, so "
                     "their figures stay confounded by source.")
        out.append({"topic": "source confounding", "text": text})
    small = []
    for s, e in val["within_source"]["sources"].items():
        for c, a in e["auc"].items():
            if a["value"] is not None and a["ci"][0] is not None and a["ci"][1] - a["ci"][0] > 0.3:
                small.append(f"{s} {c} {_fmt_ci(a['value'], a['ci'])} on {e['films']} films")
    if small:
        out.append({"topic": "small sources",
                    "text": "Some within-source figures rest on few films and say little: " + "; ".join(small) + "."})
    out.append({"topic": "optimistic validation",
                "text": "The validation films chose both the epoch and the threshold, so the figures here are "
                        "somewhat optimistic for new films from the same sources."})
    loso = val.get("leave_one_source_out")
    k = card["threshold"]["class"]
    if loso:
        parts = []
        for f in loso["folds"]:
            if f["status"] != "ok":
                parts.append(f"{f['held_out']}: not possible ({f['reason']})")
                continue
            aucs = ", ".join(f"{c} AUC {_fmt_ci(a['value'], a['ci'])}" for c, a in f["auc"].items()
                             if a["value"] is not None)
            scr = f.get("screening") or {}
            sens = (scr.get("sensitivity") or {}).get("value")
            spec = (scr.get("specificity") or {}).get("value")
            at = (f"; {k} sensitivity {'-' if sens is None else f'{sens:.2f}'} / specificity "
                  f"{'-' if spec is None else f'{spec:.2f}'} at the fold's threshold" if scr else "")
            parts.append(f"held-out {f['held_out']} ({f['films']:,} films): {aucs}{at}")
        best = [e["auc"][k]["value"] for e in val["within_source"]["sources"].values()
                if k in e["auc"] and e["auc"][k]["value"] is not None]
        held_k = [f["auc"][k]["value"] for f in loso["folds"] if f["status"] == "ok" and k in f["auc"]
                  and f["auc"][k]["value"] is not None]
        verdict = ""
        if best and held_k:
            verdict = (f" The best held-out {k} AUC, {max(held_k):.3f}, is "
                       + ("far " if max(best) - max(held_k) > 0.1 else "")
                       + f"below the best within-source validation figure, {max(best):.3f}: at a site whose "
                         "films look like none of the training sources, expect figures nearer the held-out ones.")
        out.append({"topic": "unseen sources",
                    "text": "Leave one source out (the same recipe retrained with each source left out of "
                            "training and validation, then scored on that source alone): " + "; ".join(parts)
                            + "." + verdict})
    else:
        out.append({"topic": "unseen sources",
                    "text": "No leave-one-source-out figures in this card: how the recipe transfers to a source "
                            "it never saw is unmeasured. Run `xraynet crossval DATA --recipe MODEL --out-dir cv/` "
                            "to estimate it."})
    return out


# ----------------------------------------------------------------- the card
def build_card(*, classes, screening_class: str, training_data: dict, split: dict, preprocessing: dict,
               validation: dict, threshold: dict, training: dict, weights_sha256: str | None,
               provenance: dict, intended_use: dict | None = None, extra_limits=()) -> dict:
    """A complete card (layout in the module docstring); ``limits`` are worked
    out from the figures, then ``extra_limits`` ({"topic", "text"}) appended."""
    card = {
        "card_version": CARD_VERSION, "written_utc": _now(), "xraynet_version": __version__,
        "weights_sha256": weights_sha256, "classes": list(classes), "screening_class": screening_class,
        "training_data": training_data, "split": split, "preprocessing": preprocessing, "validation": validation,
        "threshold": threshold, "training": training,
        "intended_use": intended_use or intended_use_section(classes, screening_class),
    }
    card["limits"] = limits_section(card) + [dict(x) for x in extra_limits]
    card["provenance"] = dict(provenance)
    return card


def training_card(*, ds, split, report: dict, opts, prep: dict, classes, y_val, proba_val, sources_val,
                  threshold: dict, history: list, best_epoch: int, device: str, model, skipped: int,
                  wall_seconds: float | None, resumed: bool) -> dict:
    """The card `xraynet train` writes, from what training has at its end: the
    chosen epoch's validation probabilities ``proba_val`` (N, C) with labels
    ``y_val`` and ``sources_val`` (or None). Costs the bootstrap intervals
    (about a second for a thousand films), no network pass."""
    from dataclasses import asdict

    from .modelfile import weights_digest

    doc = evaluation_document(y_val, proba_val, classes, sources_val, threshold)
    info = machine()
    if device == "gpu":
        try:
            from .devices import device_info

            info["gpu"] = device_info().get("device_name")
        except Exception:   # a missing GPU name must not lose a finished training run
            info["gpu"] = "unknown"
    recipe = {k: v for k, v in asdict(opts).items() if k not in ("cache", "device")}
    return build_card(
        classes=classes, screening_class=threshold["class"],
        training_data=data_section(ds, split, report, skipped=skipped, excluded_sources=opts.holdout_sources),
        split=split_section(split, report), preprocessing=preprocessing_section(prep),
        validation=validation_section(doc, subset=f"the {len(y_val)} readable validation films of the split "
                                                  "(patients never trained on)"),
        threshold=threshold_section(threshold, doc),
        training=training_section(history, best_epoch=best_epoch, device=device, recipe=recipe,
                                  machine_info=info, wall_seconds=wall_seconds, resumed=resumed,
                                  finished_utc=_now()),
        weights_sha256=weights_digest(model.state_dict()),
        provenance={
            "training_data": "xraynet train: the scan of the data folder and its metadata.csv at training time",
            "validation": (f"xraynet train: the best epoch's validation probabilities; AUC intervals from "
                           f"{N_BOOT} stratified bootstrap resamples (seed {BOOT_SEED}), as xraynet evaluate "
                           "--subset val computes them"),
            "threshold": "xraynet train: chosen on the validation films at the end of training",
            "training": "xraynet train: the epoch history and this run's clock",
            "limits": "worked out from the figures of this card (xraynet.modelcard.limits_section)",
        })


# ------------------------------------------------------------------- reading
def check_card(card, path) -> dict:
    """``card`` if it is a card this xraynet can read; ModelFileError otherwise."""
    if not isinstance(card, dict):
        raise ModelFileError(f"{path}: the model card is malformed. Expected a JSON object under metadata"
                             f"[{CARD_KEY!r}], got {type(card).__name__}. Write the card again "
                             "(train again, or rerun the script that wrote it).")
    version = card.get("card_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: the model card has no usable card_version. Expected an integer >= 1, got "
                             f"{version!r}. Write the card again (train again, or rerun the script that wrote it).")
    if version > CARD_VERSION:
        raise ModelFileError(f"{path}: the model card is of a newer layout. Expected card_version {CARD_VERSION} or "
                             f"lower (what xraynet {__version__} reads), got {version}. Upgrade xraynet: "
                             "pip install -U xraynet.")
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ModelFileError(f"{path}: the model card is incomplete. Expected the keys {', '.join(CARD_KEYS)}, got "
                             f"none for {', '.join(missing)}. Write the card again (train again, or rerun the "
                             "script that wrote it).")
    return card


def read_card(path) -> dict | None:
    """The card stored in a model file, checked; None when the file has none.
    Raises ModelFileError for a file that is not a model (as
    :func:`xraynet.modelfile.read_info` does) or a malformed card."""
    from .modelfile import read_info

    card = read_info(path)["metadata"].get(CARD_KEY)
    return None if card is None else check_card(card, path)


def info_document(path) -> dict:
    """What ``xraynet info MODEL --json`` prints (see the module docstring).
    Reads the header only: no model is built and no weights are read."""
    from .modelfile import read_info

    info = read_info(path)
    meta = info["metadata"]
    spec = info["architecture"]
    base = {"model_file": Path(path).name, "path": str(path), "weights_sha256": info["weights_sha256"],
            "created_utc": info["created_utc"],
            "architecture": {"name": spec.get("name"), "input_shape": spec.get("input_shape"),
                             "output": spec.get("output"), "num_parameters": info["num_parameters"]},
            "notes": []}
    card = meta.get(CARD_KEY)
    if card is not None:
        card = check_card(card, path)
        doc = {**base, "card_present": True, **card}
        # The file's own checksum wins; a card copied onto other weights describes another model.
        doc["weights_sha256"] = info["weights_sha256"]
        if card.get("weights_sha256") not in (None, info["weights_sha256"]):
            doc["notes"].append(f"the card describes weights {card['weights_sha256'][:12]}..., but this file holds "
                                f"{info['weights_sha256'][:12]}...: the card belongs to another model")
        return doc
    thr = meta.get("threshold")
    doc = {**base, "card_present": False, "card_version": None, "classes": info["classes"],
           "training_data": None, "split": meta.get("split"), "preprocessing": preprocessing_section(
               info["preprocessing"]), "validation": None,
           "threshold": None if not thr else {"class": thr.get("class"), "value": _num(thr.get("value")),
                                              "target_sensitivity": thr.get("target_sensitivity"),
                                              "chosen_on": thr.get("chosen_on"), "sources": thr.get("sources")},
           "training": None if "best_epoch" not in meta and "device" not in meta else {
               "epochs_run": info["epochs"], "best_epoch": meta.get("best_epoch"), "device": meta.get("device"),
               "recipe": meta.get("options")},
           "xraynet_version": info["xraynet_version"], "intended_use": None, "limits": None}
    doc["notes"].append(f"model card missing: this file was written without one (xraynet {info['xraynet_version']}, "
                        f"{info['created_utc']}); shown is what the file holds. `xraynet train` writes a card "
                        "with every model")
    return doc


# ------------------------------------------------------------------- printing
def _rate_text(r) -> str:
    return "-" if not r or r["value"] is None else _fmt_ci(r["value"], r["ci"])


def _table(header: list[str], rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: indent + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return [line(header)] + [line(r) for r in rows]


def format_card(doc: dict) -> str:
    """The readable text of :func:`info_document`: identity, intended use,
    validation (within one source first, then pooled, then leave one source
    out), threshold, training data and split, preprocessing, training, limits,
    provenance. ModelFileError when a card passed :func:`check_card` but lacks
    a part the text needs (a card edited by hand or damaged)."""
    try:
        return _format(doc)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise ModelFileError(f"{doc.get('path')}: the model card is malformed ({type(e).__name__}: {e}). Expected "
                             f"the layout of card_version {doc.get('card_version')} (xraynet.modelcard), got a card "
                             "without that part. Write the card again (train again, or rerun the script that "
                             "wrote it); `xraynet info MODEL --json` shows it as stored.") from None


def _format(doc: dict) -> str:
    L = []
    arch = doc["architecture"]
    shape = "x".join(str(d) for d in arch["input_shape"] or [])
    head = f"Model card: {doc['model_file']}"
    L.append(head + (f" (card version {doc['card_version']})" if doc["card_present"] else " (model card missing)"))
    L.append(f"  weights_sha256  {doc['weights_sha256']}")
    L.append(f"  xraynet         {doc['xraynet_version']}" + (f", card written {doc.get('written_utc')}"
                                                              if doc.get("written_utc") else ""))
    L.append(f"  architecture    {arch['name']}, input {shape}, {arch['num_parameters']:,} parameters")
    k = (doc.get("threshold") or {}).get("class")
    L.append(f"  classes         {', '.join(doc['classes'])}" + (f" (screening class: {k})" if k else ""))
    for note in doc["notes"]:
        L.append(f"  note: {note}")
    if not doc["card_present"]:
        thr = doc.get("threshold")
        if thr:
            L.append(f"  threshold       {thr['class']} >= {thr['value']:.4f} (target sensitivity "
                     f"{thr['target_sensitivity']}, chosen on {thr.get('chosen_on')})")
        tr = doc.get("training")
        if tr:
            L.append(f"  training        {tr['epochs_run']} epochs, best epoch {tr['best_epoch']}, device "
                     f"{tr['device']}")
        L.append(f"  preprocessing   {'; '.join(doc['preprocessing']['steps'])}")
        return "\n".join(L) + "\n"

    iu = doc["intended_use"]
    L += ["", "Intended use", f"  {iu['summary']}", f"  Not for: {'; '.join(iu['not_for'])}.", f"  {iu['before_use']}"]

    val = doc["validation"]
    classes = doc["classes"]
    order = ([k] if k in classes else []) + [c for c in classes if c != k]
    boot = val["bootstrap"]
    L += ["", f"Validation: {val['subset']}; 95% intervals from {boot['n_boot']:,} stratified bootstrap resamples "
              f"(seed {boot['seed']})"]
    ws = val["within_source"]
    L.append(f"  Within one source ({ws['note']}):")
    if not ws["available"]:
        L.append(f"    unavailable: {ws['reason']}")
    else:
        desc = (doc.get("training_data") or {}).get("source_descriptions") or {}
        rows = []
        for name, s in sorted(ws["sources"].items(), key=lambda kv: -kv[1]["films"]):
            label = name + (f" ({desc[name]})" if name in desc else "")
            rows.append([label, f"{s['films']:,}"] + [_fmt_ci(s["auc"][c]["value"], s["auc"][c]["ci"]) for c in order])
        comb = ws["combined"]
        rows.append(["same-source pairs of all sources", ""]
                    + [_fmt_ci(comb[c]["value"], comb[c]["ci"]) for c in order])
        L += _table(["source", "films"] + [f"AUC {c}" for c in order], rows, indent="    ")
    p = val["pooled"]
    L.append(f"  Pooled over all sources ({p['note']}):")
    L.append(f"    accuracy {_rate_text(p['accuracy'])}; "
             + "; ".join(f"AUC {c} {_fmt_ci(p['auc'][c]['value'], p['auc'][c]['ci'])}" for c in order))
    loso = val.get("leave_one_source_out")
    if loso:
        L.append("  Leave one source out (the recipe retrained without each source, scored on that source alone; "
                 "the estimate for a site it never saw):")
        rows = []
        for f in loso["folds"]:
            trained = "-" if f.get("train_images") is None else f"{f['train_images']:,} (+{f['val_images']:,} val)"
            if f["status"] != "ok":
                rows.append([f["held_out"], f"{f['films']:,}", trained] + ["-"] * len(order)
                            + [f"not possible: {f['reason']}"])
                continue
            scr = f.get("screening") or {}
            sens = (scr.get("sensitivity") or {}).get("value")
            spec = (scr.get("specificity") or {}).get("value")
            rows.append([f["held_out"], f"{f['films']:,}", trained]
                        + [_fmt_ci(f["auc"][c]["value"], f["auc"][c]["ci"]) for c in order]
                        + [f"{'-' if sens is None else f'{sens:.2f}'} / {'-' if spec is None else f'{spec:.2f}'}"])
        L += _table(["held out", "films", "trained on"] + [f"AUC {c}" for c in order]
                    + [f"{k} sens / spec at the fold's threshold"], rows, indent="    ")

    thr = doc["threshold"]
    L += ["", "Threshold", f"  {thr['class']} >= {thr['value']:.4f}: {thr['rule']}."]
    at = thr["at_choice"]
    L.append(f"  On the films that chose it: sensitivity {_rate_text(at['sensitivity'])}, specificity "
             f"{_rate_text(at['specificity'])}")
    for name, r in thr["by_source"].items():
        L.append(f"  {name}: sensitivity {_rate_text(r['sensitivity'])}, specificity {_rate_text(r['specificity'])}")
    L.append(f"  Pooled ({thr['pooled']['note']}): sensitivity {_rate_text(thr['pooled']['sensitivity'])}, "
             f"specificity {_rate_text(thr['pooled']['specificity'])}")

    data = doc["training_data"]
    L += ["", f"Training data: {data['root']}: {data['images']:,} images ({data['skipped']} skipped), "
              f"{data['patients']:,} patients, {len(data['sources'])} source(s)"
              + (f"; sources left out: {', '.join(data['excluded_sources'])}" if data["excluded_sources"] else "")]
    rows = []
    for name, e in data["sources"].items():
        for side in SIDES:
            rows.append([name if side == "train" else "", side]
                        + [f"{e['images'][side][c]}/{e['patients'][side][c]}" for c in classes])
    for side in SIDES:
        rows.append(["all sources" if side == "train" else "", side]
                    + [f"{data['per_class']['images'][side][c]}/{data['per_class']['patients'][side][c]}"
                       for c in classes])
    L += _table(["source", "split"] + [f"{c} images/patients" for c in classes], rows)
    for w in data["warnings"]:
        L.append(f"  warning: {w}")
    sp = doc["split"]
    L.append(f"  Split {sp['rule']}: train {sp['images']['train']:,} images / {sp['patients']['train']:,} "
             f"{sp['level']}s, validation {sp['images']['val']:,} / {sp['patients']['val']:,}; "
             f"{sp['patient_overlap']} patients on both sides")
    L += ["", "Preprocessing: " + "; ".join(doc["preprocessing"]["steps"])]

    tr = doc["training"]
    es = tr["epoch_seconds"]
    m = tr.get("machine") or {}
    where = ", ".join(str(x) for x in (m.get("description"), m.get("cpu"),
                                       m.get("cpu_count") and f"{m['cpu_count']} cores", m.get("gpu")) if x)
    L += ["", f"Training: {tr['epochs_run']} epochs, best epoch {tr['best_epoch']} by validation "
              f"{tr['selected_by']}; device {tr['device']}" + (f" ({where})" if where else "")]
    if es["total"]:
        L.append(f"  {es['total']:,.0f} s in epochs (median {es['median']:.0f} s, {es['min']:.0f}-{es['max']:.0f})"
                 + (f"; {tr['wall_seconds']:,.0f} s wall for the last run" if tr.get("wall_seconds") else "")
                 + ("; resumed" if tr.get("resumed") else "") + f"; finished {tr['finished_utc']}")
    if tr.get("note"):
        L.append(f"  {tr['note']}")
    L.append("  recipe: " + ", ".join(f"{key}={value}" for key, value in tr["recipe"].items()))

    L += ["", "Limits"] + [f"  - {x['topic']}: {x['text']}" for x in doc["limits"]]
    if doc.get("provenance"):
        L += ["", "Where the numbers come from"] + [f"  {key}: {value}" for key, value in doc["provenance"].items()]
    return "\n".join(L) + "\n"
