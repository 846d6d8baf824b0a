"""Datasets on disk: find the images, join their metadata, split by patient.

A dataset is a folder with one subfolder per class::

    DATA_DIR/
        covid/      a.png  b.jpg  patient7/c.dcm ...
        normal/     ...
        metadata.csv   (optional)

:func:`scan_dataset` lists the images (class subfolders are searched
recursively by :func:`xraynet.discovery.find_images`, the rules screening
uses too) and :func:`split_dataset`
splits them into train and validation sets with no patient on both sides;
:func:`xraynet.confounds.confound_report` counts what a model could learn
besides the disease: which source and which view each class comes from.

Which files are images (:mod:`xraynet.discovery`): regular files only --
FIFOs, sockets and devices are never opened; hidden names (starting with
``.``) are skipped; directory symlinks are followed once (a loop or a second
link to one folder is not entered again). A file is an image by its ending
(``.png .jpg .jpeg .jpe .jfif .jls .jp2 .j2k .j2c .jpc .jpx .bmp .tif .tiff
.gif .webp .dcm .dicom``, any case), or,
for any other name, when :func:`xraynet.imaging.is_dicom_file` says its
content is DICOM: DICOM files are often named without an extension or after
their UID (``1.2.840.113619.2.55``), whose last dot looks like one. A folder
(or file) under DATA_DIR that cannot be listed is a
:class:`~xraynet.errors.DataError` naming it: a silently smaller training or
evaluation set would be wrong.

``metadata.csv``, when present, must have the columns ``file`` (the image's
path relative to DATA_DIR, with ``/``, e.g. ``covid/x.png``) and
``patient_id``; ``source_repo`` and ``view`` are read when present, other
columns are ignored. Images without a row (or with an empty ``patient_id``)
become their own patient, ``"file:" + rel``. Without metadata every image is
its own patient, and images of one patient may then land on both sides of a
split: the split says so (``Split.per_image``) and the report warns.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .discovery import IMAGE_SUFFIXES, display_path, find_images
from .errors import DataError

METADATA_FILE = "metadata.csv"


@dataclass(frozen=True)
class Item:
    """One image: its path, path relative to the dataset root (posix), class
    label (index into ``Dataset.classes``), patient and, from the metadata,
    source collection and view (None when not given)."""

    path: Path
    rel: str
    label: int
    patient_id: str
    source: str | None = None
    view: str | None = None


@dataclass
class Dataset:
    """What :func:`scan_dataset` found. ``items`` are ordered by label, then by
    ``rel``. ``n_images_without_metadata`` counts images with no usable
    metadata row (all of them when there is no metadata.csv);
    ``n_metadata_without_images`` counts rows naming no image found here."""

    root: Path
    classes: list[str]
    items: list[Item]
    has_metadata: bool
    n_images_without_metadata: int
    n_metadata_without_images: int
    n_ignored_files: int = 0

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 class labels, in item order."""
        return np.array([it.label for it in self.items], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def check_sources(self, sources) -> set:
        """``sources`` as a set, after checking that each names the ``source_repo`` of
        some image here; DataError naming the sources there are otherwise."""
        wanted = set(sources)
        known = {it.source for it in self.items}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(f"{self.root}: no images of source(s) {unknown}. Expected values of the "
                            f"metadata's source_repo column, got names that match none; the sources here are "
                            f"{sorted(s for s in known if s)}.")
        return wanted

    def without_sources(self, sources) -> "Dataset":
        """The same dataset without the images whose ``source`` is in ``sources``
        (what a leave-one-source-out run trains on). Classes stay as they are,
        so labels keep their meaning. Raises DataError when a name matches no
        image, or when nothing is left."""
        drop = self.check_sources(sources)
        items = [it for it in self.items if it.source not in drop]
        if not items:
            raise DataError(f"{self.root}: leaving out {sorted(drop)} leaves no images. Keep at least one "
                            "source to train on.")
        return replace(self, items=items,
                       n_images_without_metadata=sum(it.patient_id.startswith("file:") for it in items))


@dataclass(frozen=True)
class Split:
    """A patient-level train/validation split: ``train`` and ``val`` are sorted
    int64 item indices into ``Dataset.items``. ``per_image`` is True when the
    dataset had no patient ids, so each image counted as its own patient."""

    train: np.ndarray
    val: np.ndarray
    per_image: bool
    n_train_patients: int
    n_val_patients: int
    val_fraction: float
    seed: int


# ------------------------------------------------------------------ scanning
def _unlisted_error(path, e: OSError) -> DataError:
    return DataError(f"{display_path(path)}: cannot be listed ({e.strerror or e}). Expected a folder (and files) "
                     f"this user can read, got {type(e).__name__}. Fix its permissions or mount; training or "
                     "evaluating without its images would silently use a smaller dataset.")


def _walk_images(folder: Path) -> tuple[list[Path], int]:
    """Images under ``folder`` (:func:`xraynet.discovery.find_images`), and the
    number of other entries seen. DataError when something cannot be listed."""
    listing = find_images(folder)
    if listing.unlisted:
        u = listing.unlisted[0]
        raise _unlisted_error(u.path, u.error)
    return [Path(path) for _, path in listing.files], listing.others


def _norm_key(s: str) -> str:
    s = s.strip().replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def _read_metadata(csv_path: Path) -> dict[str, dict]:
    """``{file: {"patient_id", "source", "view"}}`` from metadata.csv."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in ("file", "patient_id") if c not in columns]
            if missing:
                raise DataError(
                    f"{csv_path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}. "
                    f"Expected a header with 'file' and 'patient_id' (optional 'source_repo', 'view'), "
                    f"got {columns}. Rename the columns, or move metadata.csv out of the data folder "
                    "to treat every image as its own patient.")
            reader.fieldnames = columns
            rows: dict[str, dict] = {}
            for line, row in enumerate(reader, start=2):
                key = _norm_key(row.get("file") or "")
                if not key:
                    continue
                entry = {"patient_id": (row.get("patient_id") or "").strip(),
                         "source": (row.get("source_repo") or "").strip() or None,
                         "view": (row.get("view") or "").strip() or None}
                old = rows.get(key)
                if old is not None and old["patient_id"] != entry["patient_id"]:
                    raise DataError(
                        f"{csv_path}: line {line} names {key!r} again with another patient. "
                        f"Expected one patient_id per file, got {old['patient_id']!r} and "
                        f"{entry['patient_id']!r}. Keep one row per file.")
                rows[key] = entry
            return rows
    except UnicodeDecodeError as e:
        raise DataError(f"{csv_path}: cannot be read as text ({e.reason}). Expected a UTF-8 CSV file, "
                        "got other bytes. Save it as UTF-8 CSV.") from None
    except csv.Error as e:
        raise DataError(f"{csv_path}: malformed CSV ({e}). Expected comma-separated rows with a header, "
                        "got text the csv module cannot parse. Fix or remove the file.") from None
    except OSError as e:
        raise DataError(f"{csv_path}: cannot be read ({e.strerror or e}). Expected a readable metadata.csv, "
                        f"got {type(e).__name__}. Check its permissions, or move it out of the data folder "
                        "to treat every image as its own patient.") from None


def scan_dataset(data_dir) -> Dataset:
    """List the images of ``data_dir`` (one subfolder per class, at least two).

    Class names are the subfolder names, sorted; label = index. Raises
    :class:`~xraynet.errors.DataError` when the folder is missing or not a
    folder, has fewer than two class folders, a class folder holds no image,
    or metadata.csv is unusable (see the module docstring).
    """
    root = Path(data_dir)
    if not root.exists():
        raise DataError(f"{root}: no such folder. Expected a folder with one subfolder per class, "
                        "got nothing at that path. Check the path.")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder. Expected a folder with one subfolder per class, "
                        "got a file. Pass the folder that holds the class subfolders.")
    try:
        with os.scandir(root) as it:
            # is_dir follows symlinks; it raises only for an entry that exists but cannot be examined.
            class_dirs = sorted((Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()),
                                key=lambda p: p.name)
    except OSError as e:
        raise _unlisted_error(getattr(e, "filename", None) or root, e) from None
    if len(class_dirs) < 2:
        raise DataError(f"{root}: too few class folders. Expected at least 2 subfolders, one per class "
                        f"(e.g. covid/ and normal/), got {len(class_dirs)} "
                        f"{[p.name for p in class_dirs]}. Put each class's images in its own subfolder.")

    meta_path = root / METADATA_FILE
    meta = _read_metadata(meta_path) if meta_path.is_file() else None

    classes = [p.name for p in class_dirs]
    items: list[Item] = []
    ignored = without = 0
    for label, cdir in enumerate(class_dirs):
        images, others = _walk_images(cdir)
        ignored += others
        if not images:
            raise DataError(
                f"{cdir}: class folder holds no images. Expected at least one image "
                f"({' '.join(sorted(IMAGE_SUFFIXES))} or DICOM), got none ({others} other files). "
                "Add images, or move the folder out of the data folder.")
        for p in sorted(images, key=lambda q: q.relative_to(root).as_posix()):
            rel = p.relative_to(root).as_posix()
            row = (meta or {}).get(rel) or {"patient_id": "", "source": None, "view": None}
            if not row["patient_id"]:
                without += 1
            items.append(Item(p, rel, label, row["patient_id"] or "file:" + rel, row["source"], row["view"]))

    found = {it.rel for it in items}
    orphans = 0 if meta is None else sum(1 for k in meta if k not in found)
    return Dataset(root=root, classes=classes, items=items, has_metadata=meta is not None,
                   n_images_without_metadata=without, n_metadata_without_images=orphans,
                   n_ignored_files=ignored)


# ------------------------------------------------------------------ splitting
def _patient_table(ds: Dataset):
    """Patient ids (sorted), item -> patient index, and (P, C) image counts."""
    pids = sorted({it.patient_id for it in ds.items})
    index = {p: i for i, p in enumerate(pids)}
    of_item = np.array([index[it.patient_id] for it in ds.items], dtype=np.int64)
    counts = np.zeros((len(pids), len(ds.classes)), dtype=np.int64)
    np.add.at(counts, (of_item, ds.labels), 1)
    return pids, of_item, counts


def split_fingerprint(ds: Dataset) -> str:
    """SHA-256 hex digest of what :func:`split_dataset` splits: each item's class name,
    relative path and patient id, in ``ds.items`` order. Equal digests give equal splits
    (same seed and fraction); any film added, removed, moved or given another patient
    changes it."""
    import hashlib

    h = hashlib.sha256()
    for item in ds.items:
        h.update(f"{ds.classes[item.label]}\t{item.rel}\t{item.patient_id}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def split_dataset(ds: Dataset, val_fraction: float = 0.2, seed: int = 0) -> Split:
    """Split ``ds`` into train and validation by patient, stratified by class.

    Every patient goes whole to one side. A patient's stratum is the class of
    most of their images (ties: the lowest label), so a patient with images in
    several classes is placed once, as a member of that class. Within each
    stratum, in label order, patients are visited in a seeded random order and
    moved to validation whenever that lowers the cost: the sum over classes of
    |validation images of the class - val_fraction * its images| / its images
    (so a patient's images in other classes count too). A second pass moves
    single patients either way while that lowers the same cost (the greedy
    pass can overshoot one class for another's sake). The cost is L1, not
    squared: a squared cost would overfill one class to shave a large deficit
    elsewhere. Patients have different numbers of images, so shares are close
    to, not exactly, ``val_fraction`` (within 1% on ../shared/data/cxr).

    Then, as far as patients allow: each class keeps at least one image in
    train, and at least one in validation when two or more patients have
    images of it. Same dataset and seed, same split; the result does not
    depend on the order of ``ds.items``. DataError when ``val_fraction`` is not
    strictly between 0 and 1.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) \
            or not 0.0 < float(val_fraction) < 1.0:
        raise DataError(f"val_fraction: out of range. Expected a number strictly between 0 and 1, "
                        f"got {val_fraction!r}. Pass e.g. 0.2 for a 20% validation set.")
    val_fraction = float(val_fraction)
    _, of_item, counts = _patient_table(ds)
    # One generator for every random choice, drawn from in a fixed order: the greedy
    # pass, the rebalancing passes, then the tie-break keys of the coverage fixes.
    rng = np.random.default_rng(seed)
    in_val = _balanced_assignment(counts, val_fraction, rng)
    _cover_classes(counts, in_val, rng.random(len(counts)))
    val_mask = in_val[of_item]
    return Split(train=np.flatnonzero(~val_mask).astype(np.int64), val=np.flatnonzero(val_mask).astype(np.int64),
                 per_image=ds.n_images_without_metadata == len(ds.items),
                 n_train_patients=int((~in_val).sum()), n_val_patients=int(in_val.sum()),
                 val_fraction=val_fraction, seed=int(seed))


def _balanced_assignment(counts: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """(P,) bool: which patients go to validation, by the greedy pass and the
    single-patient moves of :func:`split_dataset`, for image counts ``counts`` (P, C)."""
    n_pat, n_cls = counts.shape
    n_c = counts.sum(axis=0)
    target = val_fraction * n_c
    scale = 1.0 / np.maximum(n_c, 1)
    primary = counts.argmax(axis=1)     # argmax takes the first maximum: ties -> lowest label

    def cost(v):
        return float((np.abs(v - target) * scale).sum())

    in_val = np.zeros(n_pat, dtype=bool)
    v = np.zeros(n_cls)
    for c in range(n_cls):
        for p in rng.permutation(np.flatnonzero(primary == c)):
            new = v + counts[p]
            if cost(new) < cost(v):
                v, in_val[p] = new, True
    # Greedy order can leave a class over its target (a patient added for the
    # images it brings to another class); single-patient moves either way,
    # while they lower the cost, take such excess back. The cost strictly
    # decreases, so this settles; the pass cap only bounds the time.
    for _ in range(20):
        moved = False
        for p in rng.permutation(n_pat):
            new = v - counts[p] if in_val[p] else v + counts[p]
            if cost(new) < cost(v) - 1e-12:
                v, in_val[p], moved = new, not in_val[p], True
        if not moved:
            break
    return in_val


def _cover_classes(counts: np.ndarray, in_val: np.ndarray, tiebreak: np.ndarray) -> None:
    """Move patients (``in_val`` (P,) bool, in place) so that each class keeps an image in
    train, and one in validation when two or more patients have it, as far as patients
    allow. ``tiebreak`` (P,) random keys order equally small patients."""
    n_cls = counts.shape[1]
    primary = counts.argmax(axis=1)
    has = counts > 0
    n_holders = has.sum(axis=0)

    def unmet() -> set:
        """Requirements not met now: ("train", c) or ("val", c)."""
        in_train = has[~in_val].any(axis=0)
        in_v = has[in_val].any(axis=0)
        return ({("train", c) for c in range(n_cls) if not in_train[c]}
                | {("val", c) for c in range(n_cls) if n_holders[c] >= 2 and not in_v[c]})

    def fix(need: tuple) -> None:
        side, c = need
        to_val = side == "val"
        before = unmet()
        cands = sorted((p for p in np.flatnonzero(has[:, c]) if in_val[p] != to_val),
                       key=lambda p: (primary[p] != c, counts[p].sum(), tiebreak[p]))
        for p in cands:
            in_val[p] = to_val
            if unmet() < before:    # fixed this need and broke no other
                return
            in_val[p] = not to_val
        if side == "train" and cands:
            # Train coverage wins over validation coverage: a class the model
            # never sees cannot be learnt, one missing from validation only
            # goes unmeasured.
            in_val[cands[0]] = False

    # Validation needs first, so that the train fixes (which may override
    # them) come last.
    for need in sorted(unmet(), key=lambda x: (x[0] != "val", x[1])):
        if need in unmet():
            fix(need)
