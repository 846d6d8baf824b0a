"""What a model could learn besides the disease: the confound report of a split dataset.

:func:`confound_report` counts images and patients per class and side of a
split (:func:`xraynet.data.split_dataset`), and which source collection and
which view each class comes from, with warnings where the source or view
alone would tell a class apart. :func:`confound_tables` prints it.
"""
from __future__ import annotations

import numpy as np

from .data import METADATA_FILE, Dataset, Split
from .errors import DataError

UNKNOWN = "(unknown)"   # report key for an image whose source or view is not given
SIDES = ("train", "val", "all")


def _count_by(items, classes, attr):
    table = {c: {} for c in classes}
    for it in items:
        key = getattr(it, attr) or UNKNOWN
        row = table[classes[it.label]]
        row[key] = row.get(key, 0) + 1
    return {c: dict(sorted(row.items())) for c, row in table.items()}


def _single_value_warnings(ds: Dataset, attr: str, what: str) -> list[str]:
    """Warnings where a class has one value of ``attr`` while the dataset has
    several: the value alone then tells that class apart (or a value holds one
    class only)."""
    if not any(getattr(it, attr) for it in ds.items):
        return []
    by_class = _count_by(ds.items, ds.classes, attr)
    values = sorted({v for row in by_class.values() for v in row if v != UNKNOWN})
    if len(values) < 2:
        return []
    out = []
    for cls, row in by_class.items():
        if len(row) == 1 and UNKNOWN not in row:
            (val,) = row
            out.append(f"class {cls!r} comes from a single {what} ({val}): "
                       f"a model can tell it apart by {what} alone")
    for val in values:
        holding = [cls for cls, row in by_class.items() if row.get(val)]
        if len(holding) == 1:
            out.append(f"{what} {val!r} holds only class {holding[0]!r}: "
                       f"a model can recognise the {what} instead of the disease")
    return out


def _sides(ds: Dataset, split: Split) -> dict:
    """The items of each side, ``{"train", "val", "all": [Item]}``; DataError for
    indices outside ``ds``."""
    n = len(ds.items)
    idx = {"train": np.asarray(split.train, dtype=np.int64), "val": np.asarray(split.val, dtype=np.int64)}
    for side, a in idx.items():
        if a.size and (a.min() < 0 or a.max() >= n):
            raise DataError(f"split.{side}: index out of range. Expected item indices in [0, {n}), "
                            f"got {int(a.min())}..{int(a.max())}. Split this dataset, not another one.")
    return {"train": [ds.items[i] for i in idx["train"]], "val": [ds.items[i] for i in idx["val"]],
            "all": list(ds.items)}


def _per_class_images(items, classes) -> dict:
    counts = {c: 0 for c in classes}
    for it in items:
        counts[classes[it.label]] += 1
    return counts


def _per_class_patients(items, classes) -> dict:
    sets = {c: set() for c in classes}
    for it in items:
        sets[classes[it.label]].add(it.patient_id)
    return {c: len(s) for c, s in sets.items()}


def confound_report(ds: Dataset, split: Split) -> dict:
    """Counts of images and patients per class and split, class x source and
    class x view counts (when the metadata has them), and warnings. Plain
    JSON-able data::

        {"classes": [...], "has_metadata": bool, "per_image_split": bool,
         "images":   {"train": {cls: n}, "val": {...}, "all": {...}},
         "patients": {"train": {cls: n}, "val": {...}, "all": {...}},
         "totals":   {"images": {"train", "val", "all"}, "patients": {...}},
         "multi_class_patients": int,   patients with images in several classes
         "patient_overlap": int,        patients on both sides; 0 for a valid split
         "sources": null | {"train"|"val"|"all": {cls: {source: n}}},
         "views":   null | the same by view,
         "warnings": [str, ...]}

    A patient counts once per class they have images of, so a class's patient
    counts can add up to more than the total. Missing sources or views are
    counted under ``"(unknown)"``. DataError when ``split`` indexes items ``ds``
    does not have.
    """
    parts = _sides(ds, split)
    classes = ds.classes
    pat_sides = {side: {it.patient_id for it in parts[side]} for side in SIDES}
    labels_of: dict[str, set] = {}
    for it in ds.items:
        labels_of.setdefault(it.patient_id, set()).add(it.label)
    has_sources = any(it.source for it in ds.items)
    has_views = any(it.view for it in ds.items)
    report = {
        "classes": list(classes),
        "has_metadata": ds.has_metadata,
        "per_image_split": bool(split.per_image),
        "images": {s: _per_class_images(parts[s], classes) for s in parts},
        "patients": {s: _per_class_patients(parts[s], classes) for s in parts},
        "totals": {"images": {s: len(parts[s]) for s in parts},
                   "patients": {s: len(pat_sides[s]) for s in parts}},
        "multi_class_patients": sum(1 for s in labels_of.values() if len(s) > 1),
        "patient_overlap": len(pat_sides["train"] & pat_sides["val"]),
        "sources": {s: _count_by(parts[s], classes, "source") for s in parts} if has_sources else None,
        "views": {s: _count_by(parts[s], classes, "view") for s in parts} if has_views else None,
    }
    report["warnings"] = _warnings(ds, report)
    return report


def _warnings(ds: Dataset, report: dict) -> list[str]:
    """The report's warnings, from the dataset and the counts already in ``report``."""
    warnings: list[str] = []
    overlap = report["patient_overlap"]
    if overlap:
        warnings.append(f"{overlap} patients have images in both train and validation: "
                        "validation scores will be optimistic")
    if not ds.has_metadata:
        warnings.append(f"no {METADATA_FILE} with patient_id: each image counts as its own patient, so "
                        "images of one patient may sit on both sides of the split")
    elif ds.n_images_without_metadata:
        warnings.append(f"{ds.n_images_without_metadata} images have no row (or no patient_id) in "
                        f"{METADATA_FILE}: each counts as its own patient")
    if ds.has_metadata and ds.n_metadata_without_images:
        warnings.append(f"{ds.n_metadata_without_images} rows of {METADATA_FILE} name no image found here")
    warnings += _single_value_warnings(ds, "source", "source")
    warnings += _single_value_warnings(ds, "view", "view")
    if report["totals"]["images"]["val"]:
        for c in report["classes"]:
            if report["images"]["val"][c] == 0:
                warnings.append(f"class {c!r} has no validation images: its sensitivity cannot be "
                                "measured on this split")
    return warnings


def confound_tables(report: dict) -> list:
    """rich Tables for a report from :func:`confound_report`: images (patients)
    per class and split, then class x source and class x view when present.
    Cells of the source/view tables read ``all (train/val)``."""
    from rich.table import Table   # rich is only needed when printing

    classes = report["classes"]
    t = Table(title="Images (patients) per class",
              caption=f"patients on both sides: {report['patient_overlap']}"
                      + ("; one patient per image (no metadata)" if report["per_image_split"] else ""))
    t.add_column("class")
    for side in SIDES:
        t.add_column(side, justify="right")
    for c in classes:
        t.add_row(c, *(f"{report['images'][s][c]} ({report['patients'][s][c]})" for s in SIDES))
    t.add_row("total", *(f"{report['totals']['images'][s]} ({report['totals']['patients'][s]})" for s in SIDES),
              style="bold")
    tables = [t]
    for key, title in (("sources", "Source per class"), ("views", "View per class")):
        data = report.get(key)
        if not data:
            continue
        values = sorted({v for row in data["all"].values() for v in row})
        tt = Table(title=f"{title}: all (train/val)")
        tt.add_column("class")
        for v in values:
            tt.add_column(v, justify="right")
        for c in classes:
            tt.add_row(c, *(f"{data['all'][c].get(v, 0)} ({data['train'][c].get(v, 0)}/"
                            f"{data['val'][c].get(v, 0)})" for v in values))
        tables.append(tt)
    return tables
