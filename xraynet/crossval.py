"""`xraynet crossval`: leave-one-source-out estimate of how a training recipe
transfers to a hospital it never saw.

A pooled validation AUC flatters a model that recognises where a film comes
from: when one collection supplies most of a class, the source's look
(scanner, burnt-in text, a corner stamp) predicts the label inside the pooled
data and nowhere else. Here each fold trains the recipe with one source
(``source_repo`` in metadata.csv) left out of training and validation
entirely, then evaluates that model on the held-out source alone, at the
screening threshold the fold chose on its own validation data. The figures
describe the recipe on unseen hospitals, not any one model file.

Per fold, in ``OUT_DIR``: ``holdout-<k>-<slug>.h5`` (the model, with its
history and checkpoint files beside it; ``k`` is the source's position among
the sorted sources of the data, so a fold keeps its file name whichever
sources a run holds out). The document goes to ``OUT_DIR/crossval.json``,
rewritten atomically after every fold, so a killed run leaves the folds done
so far. A rerun evaluates, without retraining, every fold whose model file
holds the same recipe (its ``metadata["options"]``, ignoring ``device``,
``cache`` and ``workers``, which do not change the weights), the same number
of training images and a chosen threshold.

Within a held-out source a class's AUC (one against the rest) is defined
only when the source has images of that class and of some other class; it is
None otherwise, with the reason. A fold whose source holds the only images of
a class still runs when training allows; its notes say that class was never
seen in training. When training is impossible (nothing left to train on, no
image of the screening class in validation, ...) the fold is recorded as not
possible, with the reason, and the other folds go on.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .errors import (BackendError, CacheError, CrossvalError, DataError, MissingDependencyError, ModelFileError,
                     SpecError, XraynetError)
from .training import Callbacks

SUPPORTED_BY = ("source_repo",)
RESULT_FILE = "crossval.json"
CACHE_FILE = "crossval.decode-cache.h5"
SPEC_FILE = "recipe-arch.json"       # a recipe's own architecture, when it is not a built-in one
# Options that say where and how fast a run computes, not what it learns.
NOT_RECIPE = ("cache", "device", "workers")
NOTE = ("Each fold trains the recipe without one source and evaluates on that source alone: an estimate of "
        "how the recipe transfers to a hospital it never saw, not a validation of any one model.")
# Errors about the machine, the files or the recipe itself: every fold would hit them, so the run stops.
_GLOBAL_ERRORS = (BackendError, CacheError, MissingDependencyError, ModelFileError, SpecError)


class CrossvalCallbacks(Callbacks):
    """Training hooks (:class:`xraynet.training.Callbacks`) plus one before and one after each fold."""

    def on_fold_start(self, index: int, total: int, source: str, reuse: bool) -> None: ...
    def on_fold_end(self, fold: dict) -> None: ...


def recipe_from_model(path) -> dict:
    """The training recipe stored by `xraynet train` in a model file (``metadata["options"]``).

    A recipe whose ``arch`` was a spec file names a path that may have moved or
    changed since: its ``arch`` becomes the architecture stored in the model (a
    dict), which :func:`crossval` writes beside the folds as ``recipe-arch.json``,
    so the folds train the network the model has."""
    from .archs import BUILTIN
    from .modelfile import read_info

    info = read_info(path)
    options = info["metadata"].get("options")
    if not isinstance(options, dict):
        raise CrossvalError(f"{path}: holds no training recipe. Expected a model written by `xraynet train` of this "
                            "xraynet version (metadata 'options'), got a model without one. Pass --recipe with a "
                            "model trained by this xraynet version.")
    options = dict(options)
    if options.get("arch") not in BUILTIN:
        options["arch"] = info["architecture"]
    return options


def _slug(source: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", source.lower()).strip("-")[:40] or "source"


def _comparable(options: dict) -> dict:
    """Options as stored in a model file, less the keys that do not change the weights; JSON round trip so
    tuples and lists compare equal."""
    return json.loads(json.dumps({k: v for k, v in options.items() if k not in NOT_RECIPE}))


def _train_options(recipe: dict, source: str, device: str, workers: int, cache: str):
    from .training import TrainOptions

    try:
        return TrainOptions(**{**recipe, "holdout_sources": [source], "device": device, "workers": workers,
                               "cache": cache})
    except TypeError:
        known = {f.name for f in fields(TrainOptions)}
        unknown = sorted(set(recipe) - known)
        raise CrossvalError(f"recipe: fields {unknown} are not training options of this xraynet version. Expected "
                            f"fields among {sorted(known)}, got {sorted(recipe)}. Pass a model trained by this "
                            "xraynet version, or drop those fields from the recipe.") from None


def _reusable(model_path: Path, opts, n_train_images: int, spec: dict) -> bool:
    """True when ``model_path`` is a finished fold of the same recipe on the same number of
    images. Architectures compare by the spec (``spec``, what the recipe builds), not by the
    name or path in ``arch``: a spec file may move, or be edited after the folds were trained."""
    from .modelfile import read_info
    from .training import TrainOptions

    if not model_path.is_file():
        return False
    try:
        info = read_info(model_path)
    except ModelFileError:
        return False        # damaged or foreign: trained again, written atomically over it
    meta = info["metadata"]
    if info["architecture"] != spec:
        return False
    stored = meta.get("options")
    if not isinstance(stored, dict):
        return False
    try:
        # Through TrainOptions, so a field added since the model was written counts as its default (the
        # behaviour the model was trained with); a field this version lacks means another recipe.
        stored = asdict(TrainOptions(**{k: v for k, v in stored.items() if k not in NOT_RECIPE}))
    except (TypeError, XraynetError):
        return False
    same = {k: v for k, v in _comparable(stored).items() if k != "arch"} == \
        {k: v for k, v in _comparable(asdict(opts)).items() if k != "arch"}
    return (same and bool(meta.get("threshold"))
            and (meta.get("data") or {}).get("images") == n_train_images)


def _count(items, classes) -> dict:
    counts = {c: 0 for c in classes}
    for it in items:
        counts[classes[it.label]] += 1
    return counts


def _fold_figures(doc: dict, source: str, classes: list) -> dict:
    """Per-class AUC and screening figures of an evaluate() document, with the reason for each None."""
    per_class = {}
    for c in classes:
        m = doc["per_class"][c]
        n_pos = m["support"]
        reason = None
        if n_pos == 0:
            reason = f"no {c} images in {source}"
        elif n_pos == doc["n"]:
            reason = f"only {c} images in {source}, nothing to rank them against"
        per_class[c] = {"n": n_pos, "auc": m["auc"]["value"], "ci": m["auc"]["ci"], "reason": reason}
    s = doc.get("screening")
    screening = None
    if s is not None:
        reason = None
        if s["sensitivity"]["value"] is None:
            reason = f"no {s['class']} images in {source}: sensitivity undefined"
        elif s["specificity"]["value"] is None:
            reason = f"only {s['class']} images in {source}: specificity undefined"
        screening = {"class": s["class"], "threshold": s["threshold"], "sensitivity": s["sensitivity"],
                     "specificity": s["specificity"], "tp": s["tp"], "fp": s["fp"], "tn": s["tn"], "fn": s["fn"],
                     "reason": reason}
    return {"evaluated": doc["n"], "per_class": per_class, "macro_auc": doc["macro_auc"],
            "accuracy": doc["accuracy"], "screening": screening}


def _summary(folds: list, classes: list) -> dict:
    ok = [f for f in folds if f["status"] == "ok"]
    per_class = {}
    for c in classes:
        aucs = [f["per_class"][c]["auc"] for f in ok if f["per_class"][c]["auc"] is not None]
        per_class[c] = {"mean_auc": sum(aucs) / len(aucs) if aucs else None, "folds": len(aucs)}
    return {"folds": len(folds), "ok": len(ok), "not_possible": len(folds) - len(ok), "per_class_auc": per_class}


def _write(out_dir: Path, doc: dict) -> None:
    from .atomic import atomic_open

    text = json.dumps(doc, allow_nan=False, indent=2)
    with atomic_open(out_dir / RESULT_FILE, "w") as fh:
        fh.write(text + "\n")


@dataclass
class CrossvalOptions:
    """How :func:`crossval` runs. ``by``: the metadata column held out (only ``source_repo``);
    ``hold_out``: the sources to hold out, in that order (None: every source of DATA_DIR);
    ``epochs``: overrides the recipe's; ``device``: 'auto', 'cpu' or 'gpu', for training and
    evaluation; ``workers``: decoding threads; ``n_boot`` and ``seed``: the bootstrap of the
    AUC intervals (training seeds come from the recipe)."""

    by: str = "source_repo"
    hold_out: list[str] | None = None
    epochs: int | None = None
    device: str = "cpu"
    workers: int = 2
    n_boot: int = 1000
    seed: int = 0


@dataclass
class _Plan:
    """What every fold shares: the scanned dataset, its sorted sources and those to hold out;
    the recipe as TrainOptions fields (holdout, device, cache and workers still to set per
    fold), every option the folds share (``shared``, defaults included), the architecture
    the recipe builds; the decode cache; the options, with the device resolved."""

    data_dir: object
    out_dir: Path
    ds: object
    sources: list
    hold_out: list
    recipe: dict
    shared: dict
    spec: dict
    cache: str
    opts: CrossvalOptions


def crossval(data_dir, out_dir, recipe: dict, options: CrossvalOptions | None = None,
             callbacks: CrossvalCallbacks | None = None) -> dict:
    """Run one leave-one-source-out fold per source of ``options.hold_out`` (default: every
    source of DATA_DIR); returns the document also written to ``OUT_DIR/crossval.json``.

    ``recipe``: TrainOptions fields as a dict (e.g. :func:`recipe_from_model`); ``holdout_sources``,
    ``device``, ``cache`` and ``workers`` in it are replaced per fold. Raises CrossvalError
    (unsupported ``by``, unusable recipe), DataError (fewer than two sources, unknown
    ``hold_out`` names), and the errors every fold would hit (BackendError, CacheError,
    MissingDependencyError, ModelFileError, SpecError); a fold that cannot train is recorded
    as not possible instead."""
    opts = options or CrossvalOptions()
    cb = callbacks or CrossvalCallbacks()
    if opts.by not in SUPPORTED_BY:
        raise CrossvalError(f"--by {opts.by!r}: not a supported grouping. Expected one of {list(SUPPORTED_BY)}, "
                            f"got {opts.by!r}. Pass --by source_repo (the metadata.csv column naming each image's "
                            "collection or hospital).")
    if not isinstance(recipe, dict):
        raise CrossvalError(f"recipe: not a dict of training options. Expected a dict such as a model's "
                            f"metadata['options'], got {type(recipe).__name__}. Pass a dict.")
    recipe = {k: v for k, v in recipe.items() if k not in NOT_RECIPE + ("holdout_sources",)}
    if opts.epochs is not None:
        recipe["epochs"] = int(opts.epochs)
    plan = _plan(data_dir, Path(out_dir), recipe, opts)
    doc = _document(plan)
    for n, source in enumerate(plan.hold_out, 1):
        fold = _fold(plan, source, n, cb)
        doc["folds"].append(fold)
        doc["summary"] = _summary(doc["folds"], plan.ds.classes)
        _write(plan.out_dir, doc)
        cb.on_fold_end(fold)
    doc["complete"] = True
    _write(plan.out_dir, doc)
    return doc


def _plan(data_dir, out_dir: Path, recipe: dict, opts: CrossvalOptions) -> _Plan:
    """Check the data, the device and the recipe once, before any fold. Writes the recipe's
    own architecture beside the folds (``recipe-arch.json``) when it has one."""
    from .archs import resolve_arch, validate_spec
    from .atomic import atomic_open
    from .backends import get_backend
    from .data import scan_dataset
    from .devices import resolve_device
    from .training.places import check_outputs

    ds = scan_dataset(data_dir)
    sources = sorted({it.source for it in ds.items if it.source})
    if len(sources) < 2:
        raise DataError(f"{data_dir}: too few sources to hold one out. Expected at least 2 distinct values in "
                        f"metadata.csv's source_repo column, got {sources}. Add a source_repo column naming each "
                        "image's collection or hospital.")
    hold_out = sources if opts.hold_out is None else list(dict.fromkeys(opts.hold_out))
    unknown = [s for s in hold_out if s not in sources]
    if unknown or not hold_out:
        raise DataError(f"--hold-out {unknown or hold_out}: not sources of {data_dir}. Expected values of "
                        f"metadata.csv's source_repo column, got names that match none; the sources here are "
                        f"{sources}. Pass one of those, or leave --hold-out out to hold out each in turn.")
    check_outputs(data_dir, out_dir, what="--out-dir")  # folds written among the films would be scanned as films
    opts = replace(opts, device=resolve_device(opts.device))
    get_backend(opts.device)  # a GPU that cannot be used fails before the first fold
    cache = str(out_dir / CACHE_FILE)
    # A recipe this version cannot build is the same error in every fold: said once, before any training.
    stored_spec = recipe.get("arch") if isinstance(recipe.get("arch"), dict) else None
    if stored_spec is not None:
        validate_spec(stored_spec, "the recipe's architecture")
        recipe["arch"] = str((out_dir / SPEC_FILE).resolve())
    probe = _train_options(recipe, hold_out[0], opts.device, opts.workers, cache)
    spec = stored_spec or resolve_arch(probe.arch, num_classes=len(ds.classes), image_size=probe.input_size())
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CrossvalError(f"{out_dir}: cannot be the output folder ({e.strerror or e}). Expected a folder, or a "
                            f"path where one can be made, got {'a file' if out_dir.exists() else 'neither'}. Pick "
                            "another --out-dir.") from None
    if stored_spec is not None:
        with atomic_open(out_dir / SPEC_FILE, "w") as fh:
            fh.write(json.dumps(stored_spec, indent=1) + "\n")
    # Every training option the folds share, defaults included, so the document stands on its own.
    shared = {k: v for k, v in asdict(probe).items() if k not in NOT_RECIPE + ("holdout_sources",)}
    return _Plan(data_dir=data_dir, out_dir=out_dir, ds=ds, sources=sources, hold_out=hold_out, recipe=recipe,
                 shared=shared, spec=spec, cache=cache, opts=opts)


def _document(plan: _Plan) -> dict:
    """The document before the first fold (``complete`` false, no folds)."""
    ds, classes = plan.ds, list(plan.ds.classes)
    by_source = {s: _count([it for it in ds.items if it.source == s], classes) for s in plan.sources}
    doc = {"command": "xraynet crossval", "by": plan.opts.by, "complete": False, "note": NOTE,
           "data": {"root": str(Path(plan.data_dir).resolve()), "images": len(ds.items), "classes": classes,
                    "sources": by_source,
                    "images_without_source": sum(1 for it in ds.items if not it.source)},
           "recipe": plan.shared,
           "hold_out": plan.hold_out,
           "evaluation": {"n_boot": int(plan.opts.n_boot), "seed": int(plan.opts.seed), "device": plan.opts.device},
           "folds": []}
    if doc["data"]["images_without_source"]:
        doc["data"]["note"] = (f"{doc['data']['images_without_source']} images have no source_repo: they are "
                               "never held out and take part in the training of every fold.")
    return doc


def _fold(plan: _Plan, source: str, n: int, cb: CrossvalCallbacks) -> dict:
    """Train (or reuse) and evaluate the fold that holds out ``source``, the ``n``-th of the
    run; returns its entry of the document's ``folds``."""
    from .evaluate import EvaluationOptions, evaluate
    from .modelfile import read_info
    from .training import train

    t0 = time.perf_counter()
    ds, classes, opts = plan.ds, list(plan.ds.classes), plan.opts
    k = plan.sources.index(source) + 1
    model_path = plan.out_dir / f"holdout-{k}-{_slug(source)}.h5"
    held = _count([it for it in ds.items if it.source == source], classes)
    rest = _count([it for it in ds.items if it.source != source], classes)
    fold = {"index": k, "source": source, "model": str(model_path), "status": "ok", "reason": None,
            "trained": False, "images": held, "images_total": sum(held.values()), "notes": []}
    for c in classes:
        if held[c] and not rest[c]:
            fold["notes"].append(f"class {c!r} was never seen in training: all {held[c]} of its images are "
                                 f"from {source}, so its figures here measure a class the model never learnt.")
    train_opts = _train_options(plan.recipe, source, opts.device, opts.workers, plan.cache)
    rest_sources = {it.source for it in ds.items if it.source != source}
    if train_opts.adversarial_source > 0 and len(rest_sources) < 2:
        train_opts = replace(train_opts, adversarial_source=0.0)
        fold["notes"].append(f"the recipe's source adversary needs two training sources; without {source} "
                             "there is one, so this fold trained without it.")
    reuse = _reusable(model_path, train_opts, sum(rest.values()), plan.spec)
    cb.on_fold_start(n, len(plan.hold_out), source, reuse)
    try:
        if not reuse:
            train(plan.data_dir, model_path, train_opts, callbacks=cb)
            fold["trained"] = True
        meta = read_info(model_path)["metadata"]
        fold.update({"train_images": meta["data"]["train_images"], "val_images": meta["data"]["val_images"],
                     "best_epoch": meta.get("best_epoch")})
        ev = evaluate(model_path, plan.data_dir, EvaluationOptions(
            sources=[source], n_boot=opts.n_boot, seed=opts.seed, workers=opts.workers, cache=plan.cache,
            device=opts.device))
        fold.update(_fold_figures(ev, source, classes))
        fold["skipped"] = ev["skipped"]
    except _GLOBAL_ERRORS:
        raise
    except XraynetError as e:
        fold.update({"status": "not_possible", "reason": str(e)})
    fold["seconds"] = time.perf_counter() - t0
    return fold
