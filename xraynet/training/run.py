"""`xraynet train` from start to finish: :func:`train`.

Setup or resume (:mod:`~xraynet.training.setup`,
:mod:`~xraynet.training.state`), the epochs (:mod:`~xraynet.training.epoch`),
then the screening threshold, chosen on validation films only with the best
model, and the outputs: the model file with its threshold and model card, the
history as CSV and PNG.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import TrainingError
from .epoch import Callbacks, train_epochs
from .options import TrainOptions
from .places import check_outputs, remove_leftover_temps
from .resume import carry_best_model, check_same_data, merge_options, stored_options
from .setup import TrainingData, prepare_data, start_state
from .state import TrainingState, checkpoint_path_for, read_checkpoint, write_model


def train(data_dir, out, opts: TrainOptions | None = None, resume: str | None = None,
          callbacks: Callbacks | None = None, *, in_memory: bool = False) -> dict:
    """Train on DATA_DIR and write the best model to ``out``; returns a summary dict.

    With ``resume`` (a checkpoint written by an earlier run), ``opts`` None takes the
    options stored in it; given ``opts`` must equal them except those a resumed run may
    change (:data:`xraynet.training.resume.CHANGEABLE`: ``epochs``, ``patience``, ``device``,
    ``workers``, ``cache``, ``screening_class``, ``target_sensitivity``), each change said
    through ``callbacks.on_notice``; DATA_DIR must hold the classes and films the checkpoint
    trained on. ``opts.device``: 'auto', 'cpu' or
    'gpu' (see :mod:`xraynet.devices`); the model file's metadata records the
    device the run used. The epochs read their films from the decode cache a batch at a
    time, so memory does not grow with the dataset; ``in_memory=True`` holds every film in
    memory instead, the reference the streaming path is tested and benchmarked against
    (the same weights, bit for bit; memory N * S * S * 4 bytes). Hidden temporary files a
    killed run left beside the outputs are removed first
    (:func:`xraynet.training.places.remove_leftover_temps`).

    Summary keys: ``out``, ``checkpoint``, ``best_epoch``, ``best_val_auc``,
    ``selected_by``, ``threshold`` (the model's ``metadata["threshold"]``),
    ``history_csv``, ``history_png``, ``skipped`` ((rel, reason, message) of the
    unreadable files), ``epochs_run``, ``train_images``, ``val_images``.

    Raises TrainingError (missing output folder, outputs inside DATA_DIR, unusable options,
    divergence), CheckpointError (``resume`` is no usable checkpoint, or one of other data
    or of another recipe: the message names both values), DataError, SpecError,
    ModelFileError, CacheError, BackendError, all :class:`~xraynet.errors.XraynetError`."""
    t_start = time.perf_counter()
    callbacks = callbacks or Callbacks()
    out = Path(out)
    if not out.parent.is_dir():
        raise TrainingError(f"{out}: the output folder does not exist. Expected an existing folder, got "
                            f"{out.parent}. Create it or pick another --out.")
    check_outputs(data_dir, out)
    checkpoint, opts = _start(resume, opts, callbacks)
    check_outputs(data_dir, out, opts.cache)
    remove_leftover_temps(out)
    if checkpoint is not None:
        note = carry_best_model(resume, out, checkpoint.state.best_epoch)
        if note:
            callbacks.on_notice(note)
    data = prepare_data(data_dir, out, opts, callbacks, in_memory=in_memory,
                        check=_same_data_check(resume, checkpoint, callbacks),
                        spec=checkpoint.state.model.spec if checkpoint else None)
    try:
        state = start_state(data_dir, data, opts, checkpoint)
        screening = screening_class_of(opts, data.classes)
        ckpt_path = checkpoint_path_for(out)
        train_epochs(state, data, out, ckpt_path, callbacks)
        # The checkpoint holds the optimiser and adversary state now. Letting them go before
        # the best model is loaded beside the last one keeps the end of the run from being
        # the run's memory peak (Adam's moments are twice the weights).
        state.optimizer = state.adversary = None
        threshold = _finish(out, state, data, screening, t_start, resumed=bool(resume))
    finally:
        data.close()
    history = state.history
    return {"out": str(out), "checkpoint": str(ckpt_path), "best_epoch": state.best_epoch,
            "best_val_auc": state.best_auc,
            "selected_by": "within-source AUC" if data.sources_val is not None and any(
                r.get("val_within_source_auc") is not None for r in history) else "macro AUC",
            "threshold": threshold, "history_csv": str(_history_path(out, "csv")),
            "history_png": str(_history_path(out, "png")), "skipped": data.skipped, "epochs_run": len(history),
            "train_images": int(len(data.y_train)), "val_images": int(len(data.y_val))}


def _start(resume, opts: TrainOptions | None, callbacks: Callbacks) -> tuple:
    """``(checkpoint or None, the run's options)``; the backend of the run's device is made
    first, so that a GPU that cannot be used fails before any decoding."""
    from ..backends import get_backend

    if not resume:
        opts = opts or TrainOptions()
        get_backend(opts.device)
        return None, opts
    stored = stored_options(resume)
    device = (opts or stored).device
    get_backend(device)
    checkpoint = read_checkpoint(resume, device)
    st = checkpoint.state
    # Against the options as stored (read_checkpoint puts this run's device in), so a change of device is said.
    st.options, notes = merge_options(resume, stored, opts, spec=st.model.spec, n_classes=len(st.classes),
                                      ran_on=st.metadata.get("device"))
    for note in notes:
        callbacks.on_notice(note)
    return checkpoint, st.options


def _same_data_check(resume, checkpoint, callbacks: Callbacks):
    """For :func:`prepare_data`: a resumed run's check of the scanned data (None without a
    checkpoint); its notes go to ``callbacks.on_notice``."""
    if checkpoint is None:
        return None

    def check(ds):
        for note in check_same_data(resume, checkpoint.state.metadata, checkpoint.state.classes, ds):
            callbacks.on_notice(note)
    return check


def screening_class_of(opts: TrainOptions, classes: list) -> str:
    """The class the threshold is chosen for: ``opts.screening_class``, else ``covid`` when
    there is one, else the last class. TrainingError when it is not among ``classes``."""
    screening = opts.screening_class or ("covid" if "covid" in classes else classes[-1])
    if screening not in classes:
        raise TrainingError(f"screening class {screening!r}: not among the classes. Expected one of {classes}, "
                            f"got {screening!r}. Pick one of those.")
    return screening


def threshold_sources(sources: list | None, positives: np.ndarray) -> list[str]:
    """The sources (sorted) among ``sources`` (one per image, or None) that hold both
    positives and negatives of ``positives`` (N,) bool; [] when none do."""
    if sources is None:
        return []
    keys = np.array(sources, dtype=object)
    return sorted(str(name) for name in set(sources) if name is not None
                  and positives[keys == name].any() and (~positives[keys == name]).any())


def choose_screening_threshold(proba: np.ndarray, y: np.ndarray, sources: list | None, k: int, screening: str,
                               target_sensitivity: float) -> dict:
    """The model's ``metadata["threshold"]`` for class ``k`` (named ``screening``), from
    validation probabilities ``proba`` (N, C), labels ``y`` (N,) and ``sources`` (or None):
    the highest threshold whose sensitivity reaches ``target_sensitivity``
    (:func:`xraynet.metrics.choose_threshold`), with its figures.

    Chosen on the validation films of sources that hold both screening-class films and
    others, when there are such: where the source alone gives a film's class away, its
    films are easy positives that would set the threshold for a hospital where it does not."""
    from ..metrics import binary_metrics_at, choose_threshold

    positives = y == k
    mixed = threshold_sources(sources, positives)
    use = np.ones(len(y), bool) if not mixed else np.isin(np.array(sources, dtype=object), mixed)
    value = float(choose_threshold(proba[use, k], positives[use], target_sensitivity))
    at = binary_metrics_at(proba[use, k], positives[use], value)
    return {"class": screening, "value": value, "target_sensitivity": target_sensitivity,
            "chosen_on": "validation", "sources": mixed or None, "validation": at}


def _finish(out: Path, state: TrainingState, data: TrainingData, screening: str, t_start: float,
            resumed: bool) -> dict:
    """Choose the threshold with the best model, write the model file with it and the model
    card (``t_start``: the run's start on the perf_counter clock), and the history CSV and
    PNG; returns the threshold."""
    from ..modelcard import CARD_KEY, FinishedTraining, training_card
    from ..modelfile import load_model
    from ..plots import write_history_png
    from .films import predict_films

    opts = state.options
    best = load_model(out, device=opts.device)
    proba = predict_films(best.model, data.films_val, opts.batch_size)
    threshold = choose_screening_threshold(proba, data.y_val, data.sources_val, data.classes.index(screening),
                                           screening, opts.target_sensitivity)
    # The model card, from the chosen epoch's validation probabilities already at hand (no network pass).
    card = training_card(FinishedTraining(
        ds=data.trained_ds, split=data.trained_split, report=data.report, opts=opts, prep=state.preprocessing,
        classes=data.classes, y_val=data.y_val, proba_val=proba, sources_val=data.sources_val, threshold=threshold,
        history=state.history, best_epoch=state.best_epoch, device=state.metadata["device"], model=best.model,
        skipped=len(data.skipped), wall_seconds=time.perf_counter() - t_start, resumed=resumed))
    write_model(out, state, {"best_epoch": state.best_epoch, "threshold": threshold, CARD_KEY: card},
                model=best.model)
    _write_history_csv(_history_path(out, "csv"), state.history)
    write_history_png(_history_path(out, "png"), state.history)
    return threshold


def _history_path(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.stem}.history.{suffix}")


def _write_history_csv(path: Path, rows: list[dict]) -> None:
    """One row per epoch record, without the nested ``per_class``; written atomically."""
    import csv

    from ..atomic import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        if rows:
            keys = [k for k in rows[0] if k != "per_class"]
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
