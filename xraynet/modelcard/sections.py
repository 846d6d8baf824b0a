"""The parts of the model card, one function each, from what training and
evaluation produce: ``training_data``, ``split``, ``preprocessing``,
``validation`` (and its leave-one-source-out part), ``threshold``,
``training`` and ``intended_use`` (layouts in :mod:`xraynet.modelcard`)."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import numpy as np

from ..metrics import evaluate_predictions, finite_or_none
from ..source_metrics import within_source_aucs
from .layout import BOOT_SEED, N_BOOT, NOT_A_DEVICE, POOLED_NOTE, SIDES, UNKNOWN, WITHIN_NOTE


# ------------------------------------------------------------- training data
def _count(items, classes) -> dict:
    """Images and patients per class name among ``items`` (each with ``label``, ``patient_id``)."""
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
def _interval(value, ci) -> dict:
    """``{"value", "ci": [lo, hi]}`` with None for undefined numbers."""
    return {"value": finite_or_none(value), "ci": [finite_or_none(v) for v in ci]}


def _rate(r: dict | None) -> dict | None:
    """A metrics RATE for the card (None stays None)."""
    if not r:
        return None
    return {**_interval(r["value"], r["ci"]), "k": int(r["k"]), "n": int(r["n"])}


def _auc(entry: dict) -> dict:
    """A within-source AUC entry of the evaluation document, for the card."""
    return {**_interval(entry["auc"]["value"], entry["auc"]["ci"]),
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
        within["combined"][c] = {**_interval(e["auc"]["value"], e["auc"]["ci"]),
                                 "n_pairs": int(e["n_pairs"]), "sources": list(e["sources"]), "reason": e["reason"]}
    pooled = {"note": POOLED_NOTE, "accuracy": _rate(doc["accuracy"]),
              "balanced_accuracy": finite_or_none(doc["balanced_accuracy"]),
              "macro_auc": finite_or_none(doc["macro_auc"]),
              "auc": {c: _interval(m["auc"]["value"], m["auc"]["ci"]) for c, m in doc["per_class"].items()}}
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
            "auc": {c: {**_interval(m["auc"], m["ci"]), "reason": m["reason"]}
                    for c, m in (f.get("per_class") or {}).items()},
            "screening": None if not s else {"class": s["class"], "threshold": finite_or_none(s["threshold"]),
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
    return {"class": thr["class"], "value": finite_or_none(thr["value"]),
            "target_sensitivity": thr.get("target_sensitivity"),
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
    """``training`` from the epoch history (:class:`xraynet.training.EpochRecord` dicts)."""
    secs = [float(h.get("seconds") or 0.0) for h in history]
    selected = ("within-source AUC" if any(h.get("val_within_source_auc") is not None for h in history)
                else "macro AUC")
    return {"epochs_run": len(history), "best_epoch": int(best_epoch), "selected_by": selected, "device": device,
            "machine": machine_info,
            "epoch_seconds": {"total": sum(secs), "median": float(np.median(secs)) if secs else None,
                              "min": min(secs) if secs else None, "max": max(secs) if secs else None},
            "wall_seconds": finite_or_none(wall_seconds), "resumed": bool(resumed), "finished_utc": finished_utc,
            "recipe": dict(recipe),
            "history": [{"epoch": h["epoch"], "val_auc": finite_or_none(h.get("val_auc")),
                         "val_within_source_auc": finite_or_none(h.get("val_within_source_auc")),
                         "val_loss": finite_or_none(h.get("val_loss"))} for h in history]}


# ------------------------------------------------------------- intended use
def intended_use_section(classes, screening: str) -> dict:
    """``intended_use``: what the model is for and not for, in general words."""
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
