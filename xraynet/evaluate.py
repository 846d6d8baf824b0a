"""`xraynet evaluate`: metrics of a trained model on a labelled folder of X-rays.

The folder has the layout `xraynet train` reads (one subfolder per class,
optional metadata.csv). Every number comes with its uncertainty (Wilson
intervals for proportions, stratified bootstrap for ROC AUC), and when the
metadata names each image's source collection or view, the metrics are
repeated per source and per view, so a reader can see whether the model tells
diseases apart or only where the films came from. The screening threshold is
the one stored in the model, chosen on validation data at training time.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import XraynetError


SUBSETS = ("all", "val")


def evaluate(model_path, data_dir, *, subset: str = "all", n_boot: int = 1000, seed: int = 0, plots_dir=None,
             workers: int = 2, cache: str | None = None, batch_size: int = 32, device: str = "cpu") -> dict:
    """Evaluate; returns the JSON-able metrics document of
    :func:`xraynet.metrics.evaluate_predictions` plus ``model``, ``data`` and ``skipped``.

    ``subset="val"`` evaluates only the validation patients of the model's own
    training split (re-derived from the seed and fraction stored in the model
    file), so the figures are on patients the weights never saw, when
    DATA_DIR is the folder the model was trained on. ``device``: where the
    network runs ('auto', 'cpu' or 'gpu'; see :mod:`xraynet.devices`)."""
    from .data import scan_dataset, split_dataset
    from .imaging import Preprocessing
    from .metrics import evaluate_predictions, roc_curve
    from .modelfile import load_model
    from .train import decode_all, predict

    loaded = load_model(model_path, device=device)
    ds = scan_dataset(data_dir)
    classes = list(loaded.classes)
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise XraynetError(f"{data_dir}: class folders {unknown} are not classes of the model. Expected folders "
                           f"among {classes}, got {ds.classes}. Rename or remove those folders.")
    remap = np.array([classes.index(c) for c in ds.classes])
    if subset not in SUBSETS:
        raise XraynetError(f"subset {subset!r}: unknown. Expected one of {SUBSETS}, got {subset!r}.")
    chosen = np.arange(len(ds.items))
    if subset == "val":
        split_info = loaded.metadata.get("split")
        if not split_info:
            raise XraynetError(f"{model_path}: has no stored training split. Expected a model written by "
                               "`xraynet train`, got one without split metadata. Evaluate with --subset all "
                               "on data the model never saw.")
        chosen = split_dataset(ds, val_fraction=split_info["val_fraction"], seed=split_info["seed"]).val
    prep = Preprocessing.from_dict(loaded.preprocessing)
    items = [ds.items[i] for i in chosen]
    x, ok, skipped = decode_all(items, prep, cache, workers)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise XraynetError(f"{data_dir}: no readable images. Expected at least one, got 0 of {len(ds.items)}. "
                           "See the skipped files for reasons.")
    y = remap[np.array([items[i].label for i in keep])]
    proba = predict(loaded.model, x[keep], batch_size)
    groups = {}
    for name, attr in (("source", "source"), ("view", "view")):
        vals = [getattr(items[i], attr) for i in keep]
        if any(v for v in vals):
            groups[name] = vals
    thr = loaded.metadata.get("threshold") or {}
    doc = evaluate_predictions(y, proba, classes, screening_class=thr.get("class"), threshold=thr.get("value"),
                               groups=groups or None, n_boot=n_boot, seed=seed)
    doc["model"] = {"path": str(model_path), "arch": loaded.model.spec.get("name"),
                    "threshold": thr or None}
    doc["data"] = {"root": str(Path(data_dir).resolve()), "images": len(ds.items), "subset": subset,
                   "evaluated": int(len(keep))}
    doc["skipped"] = [{"file": rel, "reason": reason, "message": msg} for rel, reason, msg in skipped]
    if plots_dir:
        from .plots import write_reliability_png, write_roc_png

        plots = Path(plots_dir)
        plots.mkdir(parents=True, exist_ok=True)
        curves = {}
        for k, c in enumerate(classes):
            pos = y == k
            if pos.any() and (~pos).any():
                fpr, tpr, _ = roc_curve(proba[:, k], pos)
                curves[c] = (fpr, tpr, doc["per_class"][c]["auc"]["value"])
        write_roc_png(plots / "roc.png", curves)
        write_reliability_png(plots / "reliability.png", doc["reliability"], ece=doc["ece"])
        doc["plots"] = {"roc": str(plots / "roc.png"), "reliability": str(plots / "reliability.png")}
    return doc
