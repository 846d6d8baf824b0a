"""Before the first epoch: the data a run trains on, and the state it starts from.

:func:`prepare_data` scans DATA_DIR and its metadata.csv, splits it by
patient (:mod:`xraynet.data`), reports confounds (:mod:`xraynet.confounds`)
and makes sure the decode cache holds every image, decoded once
(:func:`xraynet.inference.fill_cache`); the epochs read their films from
there (:mod:`xraynet.training.films`). :func:`start_state` builds a new
network, or joins a checkpoint's state (:mod:`xraynet.training.state`) to
that data.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DataError, TrainingError
from .options import TrainOptions
from .state import Checkpoint, TrainingState


@dataclass
class TrainingData:
    """The films of one run, split. ``films_train``: the N preprocessed training films
    (:class:`~xraynet.training.films.CachedFilms`, read from the decode cache, or
    :class:`~xraynet.training.films.ArrayFilms` in memory), ``y_train`` (N,) int64 labels, ``sources_train`` one ``source_repo`` (or None) per film; the
    same for validation, where ``sources_val`` is None when no image has a source.
    ``source_names`` and ``source_labels`` (N,) int64: the training films' sources as
    :func:`xraynet.adversarial.source_index` numbers them. ``cells``
    (N,) and ``shares`` (K,): the (source, class) cells of the training films and their batch
    shares with ``--balance source-class``, else None. ``class_weights`` (C,) float64 of the
    loss. ``ds``, ``split``: the scan and its split (every file found: what a later
    ``evaluate --subset val`` splits again); ``trained_ds``, ``trained_split``: the same
    without the unreadable files, which ``report`` (the confound report) and the model card
    count; ``skipped``: ``(rel, reason, message)`` of the unreadable files; ``spec``: the
    architecture; ``prep``: the Preprocessing. :meth:`close` closes the decode cache the
    films are read from."""

    ds: object
    split: object
    report: dict
    skipped: list
    spec: dict
    prep: object
    films_train: object
    y_train: np.ndarray
    sources_train: list
    films_val: object
    y_val: np.ndarray
    sources_val: list | None
    source_names: list
    source_labels: np.ndarray
    class_weights: np.ndarray
    cells: np.ndarray | None = None
    shares: np.ndarray | None = None

    cache: object | None = None
    trained_ds: object | None = None
    trained_split: object | None = None

    @property
    def classes(self) -> list:
        return list(self.ds.classes)

    def close(self) -> None:
        """Close the decode cache (safe twice; nothing to do for films in memory)."""
        if self.cache is not None:
            self.cache.close()


def prepare_data(data_dir, out: Path, opts: TrainOptions, callbacks, in_memory: bool = False, *,
                 spec: dict | None = None, check=None) -> TrainingData:
    """Scan, split, report and decode DATA_DIR for ``opts``; the decode cache defaults to
    ``NAME.decode-cache.h5`` beside ``out`` and stays open for the epochs to read from
    (close it with :meth:`TrainingData.close`). ``in_memory``: decode every film into memory
    instead, as training did before it streamed (the reference; memory grows with the dataset).
    ``spec``: the architecture to use (a resumed run's, from its checkpoint), else
    ``opts.arch``'s. ``check(ds)``: called with the scan before anything is decoded (a
    resumed run refuses other data there). ``callbacks.on_decode`` follows the decoding,
    ``callbacks.on_report`` gets the confound report of the readable films and the skipped
    files. Raises DataError (unusable folder, a class without a readable film, or without one
    to train on, no readable film on one side of the split), SpecError (unusable
    architecture), CacheError."""
    from ..adversarial import source_index
    from ..archs import resolve_arch
    from ..confounds import confound_report
    from ..data import scan_dataset, split_dataset

    ds = scan_dataset(data_dir)
    if opts.holdout_sources:
        ds = ds.without_sources(opts.holdout_sources)
    if check is not None:
        check(ds)
    split = split_dataset(ds, val_fraction=opts.val_fraction, seed=opts.seed)
    spec = spec or resolve_arch(opts.arch, num_classes=len(ds.classes), image_size=opts.input_size())
    prep = opts.preprocessing(spec["input_shape"][1])
    cache_path = opts.cache or str(out.with_name(out.stem + ".decode-cache.h5"))
    loaded = (_in_memory if in_memory else _streamed)(ds.items, prep, cache_path, opts.workers, callbacks.on_decode)
    films, keep, skipped, cache = loaded
    try:
        _check_classes_readable(ds, split, keep, skipped)
        trained_ds, trained_split = readable_part(ds, split, keep)
        report = confound_report(trained_ds, trained_split)
        callbacks.on_report(report, skipped)
        tr = np.array([i for i in split.train if keep[i]], np.int64)
        va = np.array([i for i in split.val if keep[i]], np.int64)
        if len(tr) == 0 or len(va) == 0:
            raise DataError(f"{data_dir}: no readable images on one side of the split. Expected images in both "
                            f"train and validation, got {len(tr)} and {len(va)}. Add images or check the skipped "
                            "files listed above.")
    except BaseException:
        if cache is not None:
            cache.close()
        raise
    labels = ds.labels
    sources_train = [ds.items[i].source for i in tr]
    names, source_labels = source_index(sources_train)
    cells, shares, weights = _batch_mix(sources_train, labels[tr], len(ds.classes), opts)
    return TrainingData(ds=ds, split=split, report=report, skipped=skipped, spec=spec, prep=prep,
                        films_train=films(tr), y_train=labels[tr], sources_train=sources_train,
                        films_val=films(va), y_val=labels[va],
                        sources_val=[ds.items[i].source for i in va] if any(it.source for it in ds.items) else None,
                        source_names=names, source_labels=source_labels, class_weights=weights, cells=cells,
                        shares=shares, cache=cache, trained_ds=trained_ds, trained_split=trained_split)


def _check_classes_readable(ds, split, keep: np.ndarray, skipped: list) -> None:
    """DataError for a class folder none of whose films could be read (as for a class folder
    with no image at all), naming the folder and why each of its files was skipped; and for a
    class whose readable films all fell to validation, so that training would never see one.
    A class with no film left at all (its source held out) is not checked here."""
    why = {rel: reason for rel, reason, _msg in skipped}
    train_side = np.zeros(len(ds.items), bool)
    train_side[np.asarray(split.train, np.int64)] = True
    for label, name in enumerate(ds.classes):
        mine = [i for i, it in enumerate(ds.items) if it.label == label]
        if not mine:
            continue    # a leave-one-source-out fold without the source that holds the class: a note of crossval's
        if not any(keep[i] for i in mine):
            reasons = ", ".join(f"{ds.items[i].rel} ({why.get(ds.items[i].rel, 'unreadable')})" for i in mine[:5])
            more = f" and {len(mine) - 5} more" if len(mine) > 5 else ""
            raise DataError(f"{Path(ds.root) / name}: class folder holds no readable images. Expected at least one "
                            f"image that decodes, got {len(mine)} file(s), all skipped as unreadable: "
                            f"{reasons}{more}. Replace them with readable images, or "
                            "move the folder out of the data folder.")
        if not any(keep[i] and train_side[i] for i in mine):
            raise DataError(f"{Path(ds.root) / name}: no readable image of class {name!r} on the training side of "
                            f"the split. Expected at least one to train on, got {sum(bool(keep[i]) for i in mine)} "
                            "readable image(s), all in validation. Add images of this class (more patients), or "
                            "replace its unreadable files.")


def readable_part(ds, split, keep: np.ndarray) -> tuple:
    """``(ds, split)`` without the items ``keep`` (N,) bool marks unreadable: the films a run
    really trains and validates on, which the confound report and the model card count.
    Indices are renumbered; the patient counts of the split are those of the films left."""
    new_index = np.cumsum(keep) - 1
    items = [it for it, k in zip(ds.items, keep) if k]
    part = replace(ds, items=items, n_images_without_metadata=sum(it.patient_id.startswith("file:") for it in items))
    train = np.array([new_index[i] for i in split.train if keep[i]], np.int64)
    val = np.array([new_index[i] for i in split.val if keep[i]], np.int64)
    return part, replace(split, train=train, val=val,
                          n_train_patients=len({items[i].patient_id for i in train}),
                          n_val_patients=len({items[i].patient_id for i in val}))


def _streamed(items: list, prep, cache_path: str, workers: int, on_decode) -> tuple:
    """Fill the decode cache ``cache_path`` and leave it open for the epochs to read from:
    ``(films, keep, skipped, cache)``, where ``films(side)`` gives the
    :class:`~xraynet.training.films.CachedFilms` of ``items[side]``, ``keep`` (N,) marks the
    readable items, and ``skipped`` is :func:`xraynet.inference.fill_cache`'s."""
    from ..decodecache import DecodeCache
    from ..inference import fill_cache
    from .films import CachedFilms

    cache = DecodeCache(cache_path, prep)
    try:
        keys, skipped = fill_cache(items, cache, workers, on_decode)
    except BaseException:
        cache.close()
        raise

    def films(side):
        return CachedFilms(cache, [items[i] for i in side], [keys[i] for i in side])

    return films, np.array([k is not None for k in keys], bool), skipped, cache


def _in_memory(items: list, prep, cache_path: str, workers: int, on_decode) -> tuple:
    """As :func:`_streamed`, but every film decoded into one array in memory, the way
    training worked before it streamed (:func:`xraynet.inference.decode_all`): the reference
    the streamed films are checked against. ``cache`` is None (closed already)."""
    from ..inference import decode_all
    from .films import ArrayFilms

    x_all, ok, skipped = decode_all(items, prep, cache_path, workers, on_decode)
    return (lambda side: ArrayFilms(x_all[side])), ok, skipped, None


def _batch_mix(sources: list, labels: np.ndarray, n_classes: int, opts: TrainOptions) -> tuple:
    """``(cells, shares, class_weights)`` of the training films for ``--balance``: the
    (source, class) cell of each film and the cells' batch shares (None, None without
    balancing), and the loss's (C,) class weights."""
    from ..sampling import cell_ids, cell_shares, class_weights, class_weights_for_shares

    if opts.balance != "source-class":
        return None, None, class_weights(labels, n_classes)
    cells, cell_keys = cell_ids(sources, labels)
    shares = cell_shares(cells, opts.balance_power)
    return cells, shares, class_weights_for_shares(np.array([k[1] for k in cell_keys]), shares, n_classes)


def run_metadata(data_dir, data: TrainingData, opts: TrainOptions) -> dict:
    """The run's description, stored in every model file it writes (``metadata``)."""
    from ..data import split_fingerprint
    from ..devices import resolve_device

    return {
        "data": {"root": str(Path(data_dir).resolve()), "images": len(data.ds.items), "skipped": len(data.skipped),
                 "train_images": int(len(data.y_train)), "val_images": int(len(data.y_val)),
                 "per_image_split": bool(data.split.per_image), "confounds": data.report},
        # The fingerprint lets `xraynet evaluate --subset val` refuse a folder that is not this one.
        "split": {"seed": opts.seed, "val_fraction": opts.val_fraction, "files_sha256": split_fingerprint(data.ds)},
        "command": "xraynet train", "arch": opts.arch, "device": resolve_device(opts.device),
        # The recipe: what `xraynet crossval --recipe` retrains with (cache and device are not part of it).
        "options": {k: v for k, v in asdict(opts).items() if k not in ("cache", "device")},
    }


def start_state(data_dir, data: TrainingData, opts: TrainOptions, checkpoint: Checkpoint | None = None
                ) -> TrainingState:
    """The state the first epoch of this run starts from: a new network seeded with
    ``opts.seed``, or ``checkpoint``'s state joined to this run's data. Adds the source
    adversary with ``--adversarial-source``. TrainingError when the network's outputs do
    not fit the classes; CheckpointError when the run has an adversary the checkpoint lacks."""
    from ..adversarial import make_adversary
    from ..model import Model
    from ..optim import Adam

    metadata = run_metadata(data_dir, data, opts)
    if checkpoint is None:
        model = Model(data.spec, device=opts.device, seed=opts.seed)
        optimizer = Adam(model.named_parameters(), model.bk, lr=opts.lr, weight_decay=opts.weight_decay)
        state = TrainingState(options=opts, model=model, optimizer=optimizer, classes=data.classes,
                              preprocessing=data.prep.to_dict(), metadata=metadata)
    else:
        state = replace(checkpoint.state, classes=data.classes, preprocessing=data.prep.to_dict(),
                        metadata=metadata)
    n_classes = len(data.classes)
    if state.model.num_classes != n_classes:
        raise TrainingError(f"architecture {opts.arch}: gives {state.model.num_classes} classes. Expected "
                            f"{n_classes} (the class folders {data.classes}), got {state.model.num_classes}. "
                            "Fix the spec's last layer.")
    if opts.adversarial_source > 0:
        state.adversary = make_adversary(state.model, data.source_names, data.source_labels, n_classes,
                                         seed=opts.seed, lr=opts.lr, shares=data.shares, cells=data.cells)
        if checkpoint is not None:
            if not checkpoint.adversary_arrays:
                raise CheckpointError(f"{checkpoint.path}: the checkpoint holds no source adversary, but this run "
                                      "has --adversarial-source. Expected a checkpoint of a run with the "
                                      "adversary. Resume with the options of the original run.")
            state.adversary.load_state_arrays(checkpoint.adversary_arrays)
    return state
