"""`xraynet train`: fit a network on a folder of X-rays, one subfolder per class.

The run, in order:

1. scan DATA_DIR and its metadata.csv; split train/validation by patient,
   stratified by class, seeded (:mod:`xraynet.data`); report confounds;
2. decode and preprocess every image once (:mod:`xraynet.imaging`), through
   the on-disk decode cache; unreadable files are listed and skipped;
3. each epoch: shuffle, augment (:mod:`xraynet.augment`), train with Adam
   and class-weighted loss; evaluate on validation; keep the best model by
   validation macro ROC AUC (ties: lower validation loss); stop early after ``patience`` epochs without
   improvement; write a checkpoint atomically;
4. choose the screening threshold on validation data only and store it in
   the model file with the history and the model card
   (:mod:`xraynet.modelcard`, from the chosen epoch's validation predictions).

Determinism and resume: everything random in epoch ``e`` (shuffle,
augmentation, dropout masks) is drawn from generators seeded with
``(seed, e)``, and a checkpoint holds weights, batch-norm statistics, Adam
state, history and early-stopping state, so ``--resume`` after an
interruption finishes with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import csv
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .archs import resolve_arch
from .augment import Augmentation, augment_batch
from .errors import ImageError, XraynetError
from .layers import Dropout
from .model import Model
from .optim import Adam
from .sampling import balanced_batches, cell_ids, cell_shares
from .adversarial import dann_scale

DEFAULT_IMAGE_SIZE = {"seed": 64, "wide": 224, "xraynet": 224}
LR_SCHEDULES = ("constant", "cosine")
BALANCE_MODES = ("none", "source-class")
#: Epochs over which the source adversary's reversal scale ramps up to its peak
#: (xraynet.adversarial.dann_scale). A fixed count rather than a share of
#: --epochs, so that extending a run with --resume keeps the same schedule.
ADVERSARY_RAMP_EPOCHS = 4


@dataclass
class TrainOptions:
    arch: str = "xraynet"
    epochs: int = 30
    batch_size: int = 32
    image_size: int | None = None      # default: the architecture's own
    lr: float = 1e-3
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    patience: int = 8
    device: str = "cpu"
    workers: int = 2
    augment: bool = True
    fit: str = "pad"
    border_crop: float = 0.0
    equalize: bool = False
    working_size: int | None = None
    screening_class: str | None = None  # default: 'covid' if present, else the last class
    target_sensitivity: float = 0.95
    cache: str | None = None            # decode cache file; default beside the output model
    holdout_sources: list[str] = field(default_factory=list)  # source_repo values left out of train and val
    balance: str = "none"               # "none" or "source-class": batches drawn by (source, class) cell
    balance_power: float = 0.5          # cell share ~ images ** power (see xraynet.sampling)
    adversarial_source: float = 0.0     # peak gradient-reversal scale of the source head; 0 = no head
    lr_schedule: str = "constant"       # "constant" or "cosine" (see epoch_lr)

    def __post_init__(self):
        """The choices that are cheap to check, checked before any image is decoded."""
        if self.balance not in BALANCE_MODES:
            raise XraynetError(f"balance {self.balance!r}: unknown. Expected one of {', '.join(BALANCE_MODES)}, "
                               f"got {self.balance!r}. Pick one of those.")
        if self.lr_schedule not in LR_SCHEDULES:
            raise XraynetError(f"lr schedule {self.lr_schedule!r}: unknown. Expected one of "
                               f"{', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}. Pick one of those.")
        for name in ("lr", "adversarial_source", "balance_power"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0:
                raise XraynetError(f"{name.replace('_', '-')}: not usable. Expected a finite number >= 0, got "
                                   f"{value!r}. Pass e.g. --adversarial-source 0.3, --lr 1e-3.")


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_auc: float
    val_within_source_auc: float | None = None
    per_class: dict = field(default_factory=dict)
    seconds: float = 0.0
    lr: float = 0.0
    source_loss: float | None = None    # the source adversary's mean loss (None without one)
    source_scale: float | None = None   # its gradient-reversal scale at the end of the epoch


class Callbacks:
    """Hooks for the command line's progress display; all optional."""

    def on_report(self, report: dict, skipped: list) -> None: ...
    def on_decode(self, done: int, total: int) -> None: ...
    def on_batch(self, epoch: int, done: int, total: int, loss: float) -> None: ...
    def on_epoch(self, record: dict, is_best: bool) -> None: ...


def decode_all(items, prep, cache_path, workers: int, progress: Callable[[int, int], None] | None = None):
    """Preprocess every item's image: returns (array (N, S, S), ok mask, [(rel, reason, message)]).

    ``cache_path`` names the decode cache file, or None for no cache."""
    from .decodecache import DecodeCache, file_sha256
    from .imaging import load

    n, size = len(items), prep.image_size
    out = np.zeros((n, size, size), np.float32)
    ok = np.zeros(n, bool)
    skipped = []

    def work(i):
        try:
            return i, load(items[i].path, prep)[0], None
        except ImageError as e:
            return i, None, e

    with (DecodeCache(cache_path, prep) if cache_path else _NoCache()) as cache:
        # Each file is hashed once, for the look-up and the store (none without a cache);
        # an unreadable file gets no digest and is left to load() to report.
        def digest(path):
            try:
                return file_sha256(path) if cache_path else None
            except OSError:
                return None

        digests = [digest(it.path) for it in items]
        todo = []
        for i, it in enumerate(items):
            hit = cache.get(it.path, digests[i]) if digests[i] else None
            if hit is not None:
                out[i], ok[i] = hit, True
            else:
                todo.append(i)
        done = n - len(todo)
        if progress:
            progress(done, n)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for i, arr, err in pool.map(work, todo):
                if err is None:
                    out[i], ok[i] = arr, True
                    if digests[i]:
                        cache.put(items[i].path, arr, digests[i])
                else:
                    skipped.append((items[i].rel, err.reason, str(err)))
                done += 1
                if progress:
                    progress(done, n)
    return out, ok, skipped


class _NoCache:
    """Stands in for DecodeCache when no cache file is wanted."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get(self, path, digest=None):
        return None

    def put(self, path, array, digest=None):
        pass


def class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights, mean 1 over the training images."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, len(labels) / (n_classes * np.maximum(counts, 1)), 0.0)
    return w




def epoch_lr(opts: TrainOptions, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (1-based). ``cosine``: half a cosine from
    ``lr`` at epoch 1 down to ``lr / 100`` at epoch ``epochs`` (Loshchilov & Hutter
    2017, "SGDR", without restarts), so it depends on --epochs: extending a run
    with --resume bends the rest of the curve."""
    if opts.lr_schedule == "constant" or opts.epochs <= 1:
        return opts.lr
    floor = opts.lr / 100
    return floor + 0.5 * (opts.lr - floor) * (1 + math.cos(math.pi * (epoch - 1) / (opts.epochs - 1)))


def class_weights_for_shares(cell_labels: np.ndarray, shares: np.ndarray, n_classes: int) -> np.ndarray:
    """Class weights for batches drawn by cell: inverse of each class's expected
    share of a batch (the sum of its cells' shares), mean 1 over the drawn images.
    ``cell_labels`` (K,) the class of each cell, ``shares`` (K,) summing to 1."""
    class_share = np.bincount(cell_labels, weights=shares, minlength=n_classes)
    return np.where(class_share > 0, 1.0 / (n_classes * np.maximum(class_share, 1e-12)), 0.0)


def make_adversary(model: Model, sources: list, labels: np.ndarray, n_classes: int, opts: TrainOptions,
                   shares=None, cells=None):
    """The source adversary for ``--adversarial-source`` and the (N,) source label of each training image.

    Sources are the training images' ``source_repo`` values (None is one
    unknown source). The source loss weights each source by the inverse of its
    expected share of a batch, so the head cannot do well by always naming the
    largest collection."""
    from .adversarial import SourceAdversary

    names = sorted({"" if s is None else str(s) for s in sources})
    index = {n: k for k, n in enumerate(names)}
    s_labels = np.array([index["" if s is None else str(s)] for s in sources], np.int64)
    if shares is None:
        share = np.bincount(s_labels, minlength=len(names)) / len(s_labels)
    else:
        # A cell's share goes to its source.
        cell_source = np.zeros(len(shares), np.int64)
        cell_source[cells] = s_labels
        share = np.bincount(cell_source, weights=shares, minlength=len(names))
    weights = 1.0 / (len(names) * np.maximum(share, 1e-12))
    feature = model.layers[model.feature_layer()].out_shape[0]
    adversary = SourceAdversary(feature, n_classes, names, model.bk, scale=0.0, seed=opts.seed,
                                dtype=model.dtype, source_weights=weights, lr=opts.lr)
    return adversary, s_labels


def adversarial_step(model: Model, adversary, x, labels, sources, optimizer, class_weights=None) -> tuple:
    """One training step with the source adversary on the pooled features.

    The label loss's gradient and the adversary's reversed gradient meet at the
    pooled features and flow back together through the shared layers. Returns
    (label loss, source loss), floats."""
    tap = model.feature_layer()
    logits, features = model.forward(x, training=True, tap=tap)
    loss, dlogits = model.loss(logits, labels, class_weights)
    source_loss, dfeatures = adversary.step(features, labels, sources)
    model.backward(dlogits, tap_grad=(tap, dfeatures))
    optimizer.step(model.named_grads())
    return loss, float(source_loss)


def _reseed_dropout(model: Model, seed: int, epoch: int) -> None:
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            layer.rng = model.bk.rng([seed, epoch, i])


def predict(model: Model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) of preprocessed images (N, S, S)."""
    return model.predict_proba(x[:, None, :, :], batch_size=batch_size)


def threshold_sources(sources: list | None, positives: np.ndarray) -> list[str]:
    """The sources (sorted) among ``sources`` (one per image, or None) that hold both
    positives and negatives of ``positives`` (N,) bool; [] when none do."""
    if sources is None:
        return []
    keys = np.array(sources, dtype=object)
    return sorted(str(name) for name in set(sources) if name is not None
                  and positives[keys == name].any() and (~positives[keys == name]).any())


def within_source_auc(y: np.ndarray, proba: np.ndarray, sources: list) -> float | None:
    """The validation figure a source shortcut cannot inflate: inside each source,
    the mean one-vs-rest ROC AUC over the classes that source has both positives
    and negatives of; then the mean over those sources, weighted by their images.
    ``y`` (N,) labels, ``proba`` (N, C), ``sources`` one name (or None) per image.
    None when no source has two classes."""
    from .metrics import roc_auc

    keys = np.array(["" if s is None else str(s) for s in sources], dtype=object)
    total, weight = 0.0, 0
    for name in sorted(set(keys.tolist())):
        mask = keys == name
        aucs = [roc_auc(proba[mask, c], y[mask] == c) for c in range(proba.shape[1])
                if (y[mask] == c).any() and (y[mask] != c).any()]
        if aucs:
            total += float(np.mean(aucs)) * int(mask.sum())
            weight += int(mask.sum())
    return total / weight if weight else None


def epoch_metrics(model: Model, x, y, batch_size, classes, sources=None) -> dict:
    """Validation figures of one epoch; ``val_within_source_auc`` (see
    :func:`within_source_auc`) is None without sources."""
    from .metrics import evaluate_predictions

    proba = predict(model, x, batch_size)
    eps = 1e-12
    val_loss = float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))))
    doc = evaluate_predictions(y, proba, classes, n_boot=0)
    per_class = {c: {"sensitivity": doc["per_class"][c]["sensitivity"]["value"],
                     "specificity": doc["per_class"][c]["specificity"]["value"]} for c in classes}
    return {"val_loss": val_loss, "val_accuracy": doc["accuracy"]["value"],
            "val_balanced_accuracy": doc["balanced_accuracy"], "val_auc": doc["macro_auc"],
            "per_class": per_class, "proba": proba,
            "val_within_source_auc": None if sources is None else within_source_auc(y, proba, sources)}


def _atomic_csv(path: Path, rows: list[dict]) -> None:
    from .atomic import atomic_open

    with atomic_open(path, "w", newline="") as fh:
        if rows:
            keys = [k for k in rows[0] if k != "per_class"]
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


def _prep_from(opts: TrainOptions, image_size: int):
    from .imaging import Preprocessing

    return Preprocessing(image_size=image_size, fit=opts.fit, border_crop=opts.border_crop, equalize=opts.equalize,
                         working_size=opts.working_size)


def checkpoint_path_for(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".checkpoint.h5")


def train(data_dir, out, opts: TrainOptions | None = None, resume: str | None = None,
          callbacks: Callbacks | None = None) -> dict:
    """Train on DATA_DIR and write the best model to ``out``; returns a summary dict.

    With ``resume`` (a checkpoint written by an earlier run), the options
    stored in it are used, except ``epochs`` (which may extend the run) and
    ``device``, both taken from ``opts``. ``opts.device``: 'auto', 'cpu' or
    'gpu' (see :mod:`xraynet.devices`); the model file's metadata records the
    device the run used."""
    from .backend import get_backend
    from .data import confound_report, scan_dataset, split_dataset
    from .devices import resolve_device
    from .metrics import binary_metrics_at, choose_threshold
    from .modelfile import load_model, restore_optimizer, save_model
    from .plots import write_history_png

    t_start = time.perf_counter()
    cb = callbacks or Callbacks()
    out = Path(out)
    if not out.parent.is_dir():
        raise XraynetError(f"{out}: the output folder does not exist. Expected an existing folder, got "
                           f"{out.parent}. Create it or pick another --out.")
    ckpt_path = checkpoint_path_for(out)
    get_backend((opts or TrainOptions()).device)  # a GPU that cannot be used fails before any decoding
    state = None
    if resume:
        # The device is where this run computes, not part of the training recipe: a checkpoint
        # written on a GPU resumes on the CPU and the other way round.
        device = (opts or TrainOptions()).device
        loaded = load_model(resume, device=device)
        state = loaded.metadata.get("training_state")
        if not state:
            raise XraynetError(f"{resume}: not a training checkpoint. Expected a file written during "
                               "`xraynet train` (NAME.checkpoint.h5), got a model without training state. "
                               "Pass the checkpoint file, or train without --resume.")
        epochs = opts.epochs if opts else state["options"]["epochs"]
        opts = TrainOptions(**{**state["options"], "epochs": epochs, "device": device})
    opts = opts or TrainOptions()

    ds = scan_dataset(data_dir)
    if opts.holdout_sources:
        ds = ds.without_sources(opts.holdout_sources)
    split = split_dataset(ds, val_fraction=opts.val_fraction, seed=opts.seed)
    report = confound_report(ds, split)
    classes = list(ds.classes)
    n_classes = len(classes)
    image_size = opts.image_size or DEFAULT_IMAGE_SIZE.get(opts.arch, 224)
    spec = resolve_arch(opts.arch, num_classes=n_classes, image_size=image_size)
    image_size = spec["input_shape"][1]
    prep = _prep_from(opts, image_size)

    cache_path = opts.cache or str(out.with_name(out.stem + ".decode-cache.h5"))
    x_all, ok, skipped = decode_all(ds.items, prep, cache_path, opts.workers, cb.on_decode)
    cb.on_report(report, skipped)
    labels = np.array([it.label for it in ds.items], np.int64)
    tr = np.array([i for i in split.train if ok[i]], np.int64)
    va = np.array([i for i in split.val if ok[i]], np.int64)
    if len(tr) == 0 or len(va) == 0:
        raise XraynetError(f"{data_dir}: no readable images on one side of the split. Expected images in both "
                           f"train and validation, got {len(tr)} and {len(va)}. Add images or check the skipped "
                           "files listed above.")
    x_tr, y_tr, x_va, y_va = x_all[tr], labels[tr], x_all[va], labels[va]
    sources_tr = [ds.items[i].source for i in tr]
    sources_va = [ds.items[i].source for i in va] if any(it.source for it in ds.items) else None
    cells, shares = None, None
    if opts.balance == "source-class":
        cells, cell_keys = cell_ids(sources_tr, y_tr)
        shares = cell_shares(cells, opts.balance_power)
        # The loss weights classes by how often batches hold them, not how often the folder does.
        cw = class_weights_for_shares(np.array([k[1] for k in cell_keys]), shares, n_classes)
    else:
        cw = class_weights(y_tr, n_classes)

    if resume:
        model = loaded.model
        opt = restore_optimizer(loaded, Adam(model.named_parameters(), model.bk, lr=opts.lr,
                                             weight_decay=opts.weight_decay))
        history = list(loaded.history)
        start, best_auc, best_loss, best_epoch, bad = (state["epoch"] + 1, state["best_auc"], state["best_loss"],
                                                       state["best_epoch"], state["bad_epochs"])
    else:
        model = Model(spec, device=opts.device, seed=opts.seed)
        opt = Adam(model.named_parameters(), model.bk, lr=opts.lr, weight_decay=opts.weight_decay)
        history, start, best_auc, best_loss, best_epoch, bad = [], 1, -np.inf, np.inf, 0, 0
    if model.num_classes != n_classes:
        raise XraynetError(f"architecture {opts.arch}: gives {model.num_classes} classes. Expected {n_classes} "
                           f"(the class folders {classes}), got {model.num_classes}. Fix the spec's last layer.")
    adversary, s_tr = None, None
    if opts.adversarial_source > 0:
        adversary, s_tr = make_adversary(model, sources_tr, y_tr, n_classes, opts, shares, cells)
        if resume:
            if not loaded.aux:
                raise XraynetError(f"{resume}: the checkpoint holds no source adversary, but this run has "
                                   "--adversarial-source. Expected a checkpoint of a run with the adversary. "
                                   "Resume with the options of the original run.")
            adversary.load_state_arrays(loaded.aux)
    aug = Augmentation() if opts.augment else Augmentation.off()
    screening = opts.screening_class or ("covid" if "covid" in classes else classes[-1])
    if screening not in classes:
        raise XraynetError(f"screening class {screening!r}: not among the classes. Expected one of {classes}, "
                           f"got {screening!r}. Pick one of those.")
    metadata = {
        "data": {"root": str(Path(data_dir).resolve()), "images": len(ds.items), "skipped": len(skipped),
                 "train_images": int(len(tr)), "val_images": int(len(va)), "per_image_split": bool(split.per_image),
                 "confounds": report},
        "split": {"seed": opts.seed, "val_fraction": opts.val_fraction},
        "command": "xraynet train", "arch": opts.arch, "device": resolve_device(opts.device),
        # The recipe: what `xraynet crossval --recipe` retrains with (cache and device are not part of it).
        "options": {k: v for k, v in asdict(opts).items() if k not in ("cache", "device")},
    }

    for epoch in range(start, opts.epochs + 1):
        if bad >= opts.patience:
            break
        t0 = time.perf_counter()
        opt.lr = epoch_lr(opts, epoch)
        if adversary is not None:
            adversary.optimizer.lr = opt.lr
        rng = np.random.default_rng([opts.seed, epoch])
        _reseed_dropout(model, opts.seed, epoch)
        if cells is None:
            order = rng.permutation(len(tr))
            batches = [order[b:b + opts.batch_size] for b in range(0, len(order), opts.batch_size)]
        else:
            batches = balanced_batches(cells, shares, len(tr), opts.batch_size, rng)
        losses, source_losses = [], []
        nb = len(batches)
        for b, idx in enumerate(batches):
            xb = augment_batch(x_tr[idx], rng, aug) if opts.augment else x_tr[idx]
            if adversary is None:
                losses.append(model.train_step(xb[:, None], y_tr[idx], opt, class_weights=cw))
            else:
                adversary.set_scale(dann_scale((epoch - 1 + b / nb) / ADVERSARY_RAMP_EPOCHS, opts.adversarial_source))
                loss, source_loss = adversarial_step(model, adversary, xb[:, None], y_tr[idx], s_tr[idx], opt, cw)
                losses.append(loss)
                source_losses.append(source_loss)
            cb.on_batch(epoch, b + 1, nb, losses[-1])
        broken = [n for n, p in model.named_parameters() if not np.isfinite(model.bk.to_numpy(p)).all()]
        if not np.isfinite(np.mean(losses)) or broken:
            what = f"the loss is {np.mean(losses)}" if not broken else f"{len(broken)} weight arrays hold inf or NaN"
            raise XraynetError(f"training diverged in epoch {epoch}: {what}. Expected finite losses and weights, "
                               f"got non-finite ones at learning rate {opt.lr:g}. Train again with a "
                               "lower --lr (or a lower --adversarial-source); the best model so far, if any, is "
                               f"in {out}.")
        m = epoch_metrics(model, x_va, y_va, opts.batch_size, classes, sources_va)
        rec = asdict(EpochRecord(epoch=epoch, train_loss=float(np.mean(losses)), val_loss=m["val_loss"],
                                 val_accuracy=m["val_accuracy"], val_balanced_accuracy=m["val_balanced_accuracy"],
                                 val_auc=m["val_auc"], val_within_source_auc=m["val_within_source_auc"],
                                 per_class=m["per_class"],
                                 seconds=time.perf_counter() - t0, lr=opt.lr,
                                 source_loss=float(np.mean(source_losses)) if source_losses else None,
                                 source_scale=None if adversary is None else adversary.reverse.scale))
        history.append(rec)
        # Best by the within-source AUC where sources with two classes exist (a pooled AUC
        # rewards recognising the source), else by the macro AUC; at equal AUC (it
        # saturates at 1 on easy data) the lower validation loss, the better calibrated model.
        score = m["val_within_source_auc"] if m["val_within_source_auc"] is not None else m["val_auc"]
        auc = -np.inf if score is None else score
        is_best = auc > best_auc or (auc == best_auc and m["val_loss"] < best_loss)
        if is_best:
            best_auc, best_loss, best_epoch, bad = auc, m["val_loss"], epoch, 0
            save_model(out, model, classes=classes, preprocessing=prep.to_dict(), history=history,
                       metadata={**metadata, "best_epoch": epoch})
        else:
            bad += 1
        state = {"epoch": epoch, "best_auc": best_auc, "best_loss": best_loss, "best_epoch": best_epoch,
                 "bad_epochs": bad, "options": asdict(opts)}
        save_model(ckpt_path, model, classes=classes, preprocessing=prep.to_dict(), optimizer=opt,
                   history=history, metadata={**metadata, "training_state": state},
                   aux=None if adversary is None else adversary.state_arrays())
        cb.on_epoch(rec, is_best)

    # The operating threshold, chosen on validation data only, with the best model.
    best = load_model(out, device=opts.device)
    proba = predict(best.model, x_va, opts.batch_size)
    k = classes.index(screening)
    positives = y_va == k
    # Chosen on the validation films of sources that hold both screening-class films and
    # others, when there are such: where the source alone gives a film's class away, its
    # films are easy positives that would set the threshold for a hospital where it does not.
    mixed = threshold_sources(sources_va, positives)
    use = np.ones(len(y_va), bool) if not mixed else np.isin(np.array(sources_va, dtype=object), mixed)
    thr = float(choose_threshold(proba[use, k], positives[use], opts.target_sensitivity))
    at = binary_metrics_at(proba[use, k], positives[use], thr)
    threshold = {"class": screening, "value": thr, "target_sensitivity": opts.target_sensitivity,
                 "chosen_on": "validation", "sources": mixed or None, "validation": at}
    # The model card, from the chosen epoch's validation probabilities already at hand (no network pass).
    from .modelcard import CARD_KEY, training_card

    card = training_card(ds=ds, split=split, report=report, opts=opts, prep=prep.to_dict(), classes=classes,
                         y_val=y_va, proba_val=proba, sources_val=sources_va, threshold=threshold, history=history,
                         best_epoch=best_epoch, device=metadata["device"], model=best.model, skipped=len(skipped),
                         wall_seconds=time.perf_counter() - t_start, resumed=bool(resume))
    save_model(out, best.model, classes=classes, preprocessing=prep.to_dict(), history=history,
               metadata={**metadata, "best_epoch": best_epoch, "threshold": threshold, CARD_KEY: card})
    history_csv = out.with_name(out.stem + ".history.csv")
    _atomic_csv(history_csv, history)
    history_png = out.with_name(out.stem + ".history.png")
    write_history_png(history_png, history)
    return {"out": str(out), "checkpoint": str(ckpt_path), "best_epoch": best_epoch, "best_val_auc": best_auc,
            "selected_by": "within-source AUC" if sources_va is not None and any(
                r.get("val_within_source_auc") is not None for r in history) else "macro AUC",
            "threshold": threshold, "history_csv": str(history_csv), "history_png": str(history_png),
            "skipped": skipped, "epochs_run": len(history), "train_images": int(len(tr)),
            "val_images": int(len(va))}
