"""`xraynet evaluate`: metrics of a trained model on a labelled folder of X-rays.

The folder has the layout `xraynet train` reads (one subfolder per class,
optional metadata.csv). Every number comes with its uncertainty (Wilson
intervals for proportions, stratified bootstrap for ROC AUC), and when the
metadata names each image's source collection or view, the metrics are
repeated per source and per view, so a reader can see whether the model tells
diseases apart or only where the films came from. The screening threshold is
the one stored in the model, chosen on validation data at training time.

A pooled AUC over mixed sources flatters a model that recognises where a film
comes from, so the document leads with ``within_source``: AUCs among films of
one source only (:func:`xraynet.source_metrics.within_source_aucs`).

``shortcut_check=True`` (``--shortcut-check``) scores the same films three
ways -- as they are, with the central chest region blanked, and with only
that region kept -- and says whether the model still separates the classes
without seeing the lungs (:func:`xraynet.source_metrics.shortcut_verdict`). The
masking is done on the preprocessed network input, where "blank" is
:data:`BLANK_VALUE`; the region is :func:`centre_box`. The verdict rests on
the blanked variant. With per-image normalisation the pixels each variant
keeps are standardised again on their own before blanking, so the lungs'
brightness cannot reach the border (or the border's the lungs) through the
film's mean and spread.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, EvaluationError


SUBSETS = ("all", "val")

# The shortcut check's central chest region: a centred box covering this share of each side of
# the (square) network input, i.e. a 15% margin on every side. On a frontal film it holds the
# lungs, heart and mediastinum; the margin holds what shortcuts live on: collimator borders,
# burned-in text, side markers, padding.
CENTRE_FRACTION = 0.70
# Blanked pixels get this value of the preprocessed input. With per-image normalisation (mean 0,
# std 1 over the film) 0 is the film's own mean grey, so a blanked area adds no brightness or
# contrast cue of its own; with "fixed" normalisation it is mid grey (0.5 before normalising).
BLANK_VALUE = 0.0


def centre_box(image_size: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the central chest region in an
    ``image_size`` square input: rows ``top:bottom``, columns ``left:right``,
    a margin of round(image_size * (1 - CENTRE_FRACTION) / 2) pixels on each
    side (5 of 32, 34 of 224)."""
    margin = int(round(image_size * (1.0 - CENTRE_FRACTION) / 2.0))
    return margin, image_size - margin, margin, image_size - margin


def _restandardise(xb: np.ndarray, kept: np.ndarray) -> None:
    """Give the ``kept`` pixels (a (S, S) bool mask) of each image in ``xb`` (N, S, S)
    zero mean and unit standard deviation again, in place. Per-image normalisation
    used the whole film: without this, a bright lesion in the centre would lower
    every border pixel, and the blanked film would still carry the class."""
    values = xb[:, kept]
    mean = values.mean(axis=1, dtype=np.float64)[:, None]
    std = np.maximum(values.std(axis=1, dtype=np.float64), 1e-6)[:, None]
    xb[:, kept] = ((values - mean) / std).astype(xb.dtype)


def masked_variants(image_size: int, per_image: bool) -> dict:
    """The shortcut check's two variants of a batch of preprocessed films (B, S, S) float32,
    as functions returning new arrays: ``centre_blanked`` (the :func:`centre_box` region set
    to :data:`BLANK_VALUE`) and ``centre_only`` (everything else set to it). ``per_image``:
    the model normalises each image, so the kept pixels are standardised again on their own
    first (:func:`_restandardise`)."""
    top, bottom, left, right = centre_box(image_size)
    inside = np.zeros((image_size, image_size), bool)
    inside[top:bottom, left:right] = True

    def blanked(xb):
        xb = xb.copy()
        if per_image:
            _restandardise(xb, ~inside)
        xb[:, inside] = BLANK_VALUE
        return xb

    def only(xb):
        xb = xb.copy()
        if per_image:
            _restandardise(xb, inside)
        xb[:, ~inside] = BLANK_VALUE
        return xb

    return {"centre_blanked": blanked, "centre_only": only}


@dataclass
class EvaluationOptions:
    """How :func:`evaluate` works. ``subset``: ``"all"``, or ``"val"`` for only the validation
    patients of the model's own training split (re-derived from the seed and fraction stored in
    the model file). ``n_boot`` and ``seed``: the bootstrap of the AUC intervals.
    ``plots_dir``: write ``roc.png`` and ``reliability.png`` there (None: no plots).
    ``workers``: decoding threads; ``cache``: a decode cache file, or None; ``batch_size``:
    images per network pass; ``device``: where the network runs ('auto', 'cpu' or 'gpu'; see
    :mod:`xraynet.devices`). ``sources``: keep only the images of these ``source_repo``
    values (the held-out source of a leave-one-source-out run). ``shortcut_check``: add the
    shortcut check (see the module docstring), which costs two more network passes."""

    subset: str = "all"
    n_boot: int = 1000
    seed: int = 0
    plots_dir: str | Path | None = None
    workers: int = 2
    cache: str | None = None
    batch_size: int = 32
    device: str = "cpu"
    sources: list[str] | None = None
    shortcut_check: bool = False


def evaluate(model_path, data_dir, options: EvaluationOptions | None = None) -> dict:
    """Evaluate the model file ``model_path`` on the labelled folder ``data_dir``; returns the
    JSON-able metrics document of :func:`xraynet.metrics.evaluate_predictions` plus
    ``within_source``, ``model``, ``data`` and ``skipped`` (and ``shortcut_check`` and
    ``plots`` when asked; see :class:`EvaluationOptions`).

    ``subset="val"`` gives figures on patients the weights never saw, when DATA_DIR is the
    folder the model was trained on. Raises EvaluationError (class folders the model does
    not know, an unknown subset, no stored split for ``"val"``, a plots folder that cannot be
    used: :func:`check_outputs`), DataError (an unusable folder, no readable image),
    ModelFileError, BackendError."""
    from .data import scan_dataset
    from .inference import predict_items
    from .imaging import Preprocessing
    from .metrics import evaluate_predictions
    from .source_metrics import within_source_aucs
    from .modelfile import load_model

    opts = options or EvaluationOptions()
    check_outputs(model_path, data_dir, plots_dir=opts.plots_dir)
    loaded = load_model(model_path, device=opts.device)
    ds = scan_dataset(data_dir)
    classes = list(loaded.classes)
    unknown = sorted(set(ds.classes) - set(classes))
    if unknown:
        raise EvaluationError(f"{data_dir}: class folders {unknown} are not classes of the model. Expected "
                              f"folders among {classes}, got {ds.classes}. Rename or remove those folders.")
    remap = np.array([classes.index(c) for c in ds.classes])
    items = [ds.items[i] for i in _chosen(model_path, loaded.metadata, ds, opts)]
    prep = Preprocessing.from_dict(loaded.preprocessing)
    # the shortcut check's variants are scored in the same pass, batch by batch: no film is kept
    variants = masked_variants(prep.image_size, prep.normalize == "per_image") if opts.shortcut_check else None
    scored, ok, skipped = predict_items(loaded.model, items, prep, opts.cache, opts.workers, opts.batch_size,
                                        variants)
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        raise DataError(f"{data_dir}: no readable images. Expected at least one, got 0 of {len(ds.items)}. "
                        "See the skipped files for reasons.")
    y = remap[np.array([items[i].label for i in keep])]
    proba = scored["full"][keep]
    groups = {}
    for name, attr in (("source", "source"), ("view", "view")):
        vals = [getattr(items[i], attr) for i in keep]
        if any(v for v in vals):
            groups[name] = vals
    thr = loaded.metadata.get("threshold") or {}
    doc = evaluate_predictions(y, proba, classes, screening_class=thr.get("class"), threshold=thr.get("value"),
                               groups=groups or None, n_boot=opts.n_boot, seed=opts.seed)
    doc["within_source"] = within_source_aucs(y, proba, classes, groups.get("source"),
                                              screening_class=thr.get("class"), n_boot=opts.n_boot, seed=opts.seed)
    doc["model"] = {"path": str(model_path), "arch": loaded.model.spec.get("name"), "threshold": thr or None}
    doc["data"] = {"root": str(Path(data_dir).resolve()), "images": len(ds.items), "subset": opts.subset,
                   "sources": None if opts.sources is None else sorted(opts.sources), "evaluated": int(len(keep))}
    doc["skipped"] = [{"file": rel, "reason": reason, "message": msg} for rel, reason, msg in skipped]
    if opts.shortcut_check:
        films = _Scored(probas={name: p[keep] for name, p in scored.items()}, y=y, sources=groups.get("source"))
        doc["shortcut_check"] = _shortcut_check(prep, films, classes, thr.get("class"), opts)
    if opts.plots_dir:
        doc["plots"] = _write_plots(Path(opts.plots_dir), y, proba, classes, doc)
    return doc


def check_outputs(model_path, data_dir, out=None, plots_dir=None) -> None:
    """Refuse, before anything is read, outputs of an evaluation that cannot be written or would do
    harm: an ``out`` JSON file that is the model file or lies inside ``data_dir``; a ``plots_dir``
    where a file stands, whose parent folder is missing (it is made, its parents never: a typo
    would scatter folders), or inside ``data_dir`` (roc.png in a class folder is a film to the
    next training run). EvaluationError naming the path and the option."""
    import os

    data = os.path.realpath(data_dir)

    def inside(path) -> bool:
        real = os.path.realpath(path)
        return real == data or real.startswith(data.rstrip(os.sep) + os.sep)

    if out is not None:
        if os.path.realpath(out) == os.path.realpath(model_path):
            raise EvaluationError(f"{out}: --out names the model file. Expected another file for the metrics "
                                  f"JSON, got the model {model_path} (it would be overwritten). Pass e.g. "
                                  "--out metrics.json.")
        if inside(out):
            raise EvaluationError(f"{out}: --out lies inside the evaluated folder {data_dir}. Expected a path "
                                  "outside it, got one inside (outputs there mix with the films and their "
                                  "metadata). Write the JSON beside the folder.")
    if plots_dir is None:
        return
    plots = Path(plots_dir)
    if plots.exists() and not plots.is_dir():
        raise EvaluationError(f"{plots_dir}: --plots is not a folder. Expected a folder (made when missing), "
                              "got a file. Give another folder.")
    if not plots.absolute().parent.is_dir():
        raise EvaluationError(f"{plots_dir}: the folder for --plots has no parent folder. Expected an existing "
                              f"folder {plots.absolute().parent}, got none. Create it first or give another "
                              "folder.")
    if inside(plots):
        raise EvaluationError(f"{plots_dir}: --plots lies inside the evaluated folder {data_dir}. Expected a "
                              "folder outside it, got one inside (roc.png in a class folder would be read as "
                              "a film). Write the plots beside the folder.")


def _chosen(model_path, metadata: dict, ds, opts: EvaluationOptions) -> np.ndarray:
    """Indices into ``ds.items`` of the images ``opts.subset`` and ``opts.sources`` select."""
    from .data import split_dataset

    if opts.subset not in SUBSETS:
        raise EvaluationError(f"subset {opts.subset!r}: unknown. Expected one of {SUBSETS}, got {opts.subset!r}.")
    chosen = np.arange(len(ds.items))
    if opts.subset == "val":
        split_info = metadata.get("split")
        if not split_info:
            raise EvaluationError(f"{model_path}: has no stored training split. Expected a model written by "
                                  "`xraynet train`, got one without split metadata. Evaluate with --subset all "
                                  "on data the model never saw.")
        _check_same_folder(model_path, metadata, ds)
        chosen = split_dataset(ds, val_fraction=split_info["val_fraction"], seed=split_info["seed"]).val
    if opts.sources is not None:
        wanted = ds.check_sources(opts.sources)
        chosen = np.array([i for i in chosen if ds.items[i].source in wanted], np.int64)
    return chosen


def _check_same_folder(model_path, metadata: dict, ds) -> None:
    """EvaluationError unless ``ds`` is the folder the model was trained on, as its split
    fingerprint (:func:`~xraynet.data.split_fingerprint`) says, or for models written before
    the fingerprint, its number of films per class: the split recomputed on another folder
    puts training patients on the validation side, and the figures would flatter the model."""
    from .data import split_fingerprint

    stored = metadata["split"].get("files_sha256")
    if stored is not None:
        same = stored == split_fingerprint(ds)
    else:
        counts = ((metadata.get("data") or {}).get("confounds") or {}).get("images", {}).get("all")
        now = {c: sum(1 for it in ds.items if it.label == k) for k, c in enumerate(ds.classes)}
        same = counts is None or counts == now
    if not same:
        trained = (metadata.get("data") or {}).get("root", "its training folder")
        raise EvaluationError(f"{ds.root}: not the folder {model_path} was trained on as it was then (films added, "
                              f"removed, moved or given other patients; trained on {trained}). Expected the "
                              f"training folder unchanged for --subset val, got another: its split would put "
                              f"training patients on the validation side. Evaluate with --subset all on films "
                              f"the model never saw.")


@dataclass
class _Scored:
    """The films evaluated, readable ones only: ``probas`` ``{"full": (N, C), variant: (N, C)}``,
    their labels ``y`` (N,) and ``sources`` (one per film, or None)."""

    probas: dict
    y: np.ndarray
    sources: list | None


def _shortcut_check(prep, films: _Scored, classes, screening_class, opts: EvaluationOptions) -> dict:
    """The document's ``shortcut_check``: AUCs of the films as they are, with the central
    chest region blanked and with only it kept (scored with the films, :func:`masked_variants`),
    and the verdict."""
    from .source_metrics import SHORTCUT_VARIANTS, shortcut_verdict, variant_aucs

    box = centre_box(prep.image_size)
    variants = {name: variant_aucs(films.y, films.probas[name], classes, films.sources, n_boot=opts.n_boot,
                                   seed=opts.seed)
                for name in SHORTCUT_VARIANTS}
    return {
        "region": {"centre_fraction": CENTRE_FRACTION, "margin_fraction": round((1.0 - CENTRE_FRACTION) / 2.0, 6),
                   "image_size": int(prep.image_size), "rows": [box[0], box[1]], "columns": [box[2], box[3]],
                   "fill": BLANK_VALUE, "normalize": prep.normalize},
        "variants": variants,
        "verdict": shortcut_verdict(variants, classes, screening_class),
    }


def _write_plots(plots: Path, y, proba, classes, doc: dict) -> dict:
    """Write ``roc.png`` and ``reliability.png`` into ``plots`` (made if missing, in an existing parent:
    :func:`check_outputs`); the document's ``plots``. EvaluationError when they cannot be written."""
    from .metrics import roc_curve
    from .plots import write_reliability_png, write_roc_png

    curves = {}
    for k, c in enumerate(classes):
        pos = y == k
        if pos.any() and (~pos).any():
            fpr, tpr, _ = roc_curve(proba[:, k], pos)
            curves[c] = (fpr, tpr, doc["per_class"][c]["auc"]["value"])
    try:
        plots.mkdir(exist_ok=True)
        write_roc_png(plots / "roc.png", curves)
        write_reliability_png(plots / "reliability.png", doc["reliability"], ece=doc["ece"])
    except OSError as e:
        raise EvaluationError(f"{plots}: the plots cannot be written ({e.strerror or e}). Expected a writable "
                              f"folder, got {type(e).__name__}. Give another --plots folder.") from None
    return {"roc": str(plots / "roc.png"), "reliability": str(plots / "reliability.png")}
