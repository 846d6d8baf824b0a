"""Dataset scanning, metadata join, patient-level splitting and the confound
report, on small generated folder trees (tiny PNGs made here) and, when it is
present, on the real ../shared/data/cxr."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from xraynet.confounds import confound_report, confound_tables
from xraynet.data import Dataset, Item, scan_dataset, split_dataset
from xraynet.errors import DataError, XraynetError

CXR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr"


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), value).save(path)


def _dicom_bytes() -> bytes:
    return b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00"


def _metadata(root: Path, rows: list[dict], columns=("file", "patient_id", "source_repo", "view")) -> None:
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def _patients_tree(root: Path, spec: dict[str, list[int]], *, source=None, view=None) -> list[dict]:
    """Class -> images per patient; writes PNGs and returns metadata rows.
    Patient ids are "<class>-<i>"; source/view: class -> value."""
    rows = []
    for cls, sizes in spec.items():
        for i, k in enumerate(sizes):
            for j in range(k):
                rel = f"{cls}/p{i}_{j}.png"
                _png(root / rel)
                rows.append({"file": rel, "patient_id": f"{cls}-{i}",
                             "source_repo": (source or {}).get(cls, ""), "view": (view or {}).get(cls, "")})
    return rows


def _val_patients(ds: Dataset, split) -> set[str]:
    return {ds.items[i].patient_id for i in split.val}


# ------------------------------------------------------------------- scanning
def test_scan_finds_images_by_extension_and_dicom_magic(tmp_path):
    _png(tmp_path / "normal" / "a.png")
    _png(tmp_path / "normal" / "B.PNG")
    (tmp_path / "normal" / "c.JpG").write_bytes(b"not really a jpeg")   # extension decides
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    (tmp_path / "normal" / ".hidden.png").write_bytes(b"x")
    _png(tmp_path / "normal" / ".cache" / "x.png")                     # hidden folder
    (tmp_path / "covid").mkdir()
    (tmp_path / "covid" / "IM0001").write_bytes(_dicom_bytes())        # extension-less DICOM
    (tmp_path / "covid" / "1.2.840.5").write_bytes(_dicom_bytes())     # UID-named DICOM
    (tmp_path / "covid" / "README").write_bytes(b"\0" * 200)            # no magic: not an image
    _png(tmp_path / "covid" / "patient7" / "d.tif")                     # nested folders are searched
    _png(tmp_path / ".trash" / "e.png")                                 # hidden class folder

    ds = scan_dataset(tmp_path)
    assert ds.classes == ["covid", "normal"]
    assert [(it.rel, it.label) for it in ds.items] == [
        ("covid/1.2.840.5", 0), ("covid/IM0001", 0), ("covid/patient7/d.tif", 0),
        ("normal/B.PNG", 1), ("normal/a.png", 1), ("normal/c.JpG", 1)]
    assert ds.items[0].path == tmp_path / "covid" / "1.2.840.5"
    assert not ds.has_metadata
    assert ds.n_images_without_metadata == 6 and ds.n_metadata_without_images == 0
    assert ds.n_ignored_files == 2   # notes.txt, README
    assert all(it.patient_id == "file:" + it.rel and it.source is None and it.view is None for it in ds.items)
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 1])


def test_scan_joins_metadata(tmp_path):
    for rel in ("covid/x.png", "covid/y.png", "normal/z.png", "normal/w.png"):
        _png(tmp_path / rel)
    _metadata(tmp_path, [
        {"file": "covid/x.png", "patient_id": "P1", "source_repo": "srcA", "view": "PA"},
        {"file": "./covid/y.png", "patient_id": "P1", "source_repo": "srcA", "view": "AP"},
        {"file": "normal\\z.png", "patient_id": "P2", "source_repo": "srcB", "view": ""},
        {"file": "normal/gone.png", "patient_id": "P3"},
    ])
    ds = scan_dataset(tmp_path)
    by_rel = {it.rel: it for it in ds.items}
    assert ds.has_metadata
    assert by_rel["covid/x.png"] == Item(tmp_path / "covid/x.png", "covid/x.png", 0, "P1", "srcA", "PA")
    assert by_rel["covid/y.png"].patient_id == "P1" and by_rel["covid/y.png"].view == "AP"
    assert by_rel["normal/z.png"].patient_id == "P2" and by_rel["normal/z.png"].view is None
    assert by_rel["normal/w.png"].patient_id == "file:normal/w.png"
    assert ds.n_images_without_metadata == 1
    assert ds.n_metadata_without_images == 1


def test_metadata_with_empty_patient_id_falls_back_to_the_file(tmp_path):
    _png(tmp_path / "a" / "1.png")
    _png(tmp_path / "b" / "2.png")
    _metadata(tmp_path, [{"file": "a/1.png", "patient_id": "", "source_repo": "s"},
                         {"file": "b/2.png", "patient_id": "Q"}])
    ds = scan_dataset(tmp_path)
    assert [it.patient_id for it in ds.items] == ["file:a/1.png", "Q"]
    assert ds.items[0].source == "s"
    assert ds.n_images_without_metadata == 1


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such folder"),
    ("file", "not a folder"),
    ("one_class", "too few class folders. Expected at least 2 subfolders"),
    ("empty_class", "class folder holds no images"),
    ("bad_columns", "missing column patient_id"),
    ("conflict", "again with another patient"),
])
def test_scan_errors(tmp_path, case, needle):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("x")
    elif case == "one_class":
        _png(root / "covid" / "a.png")
    elif case == "empty_class":
        _png(root / "covid" / "a.png")
        (root / "normal").mkdir()
        (root / "normal" / "notes.txt").write_text("x")
        (root / "normal" / ".DS_Store").write_text("x")
    elif case in ("bad_columns", "conflict"):
        _png(root / "covid" / "a.png")
        _png(root / "normal" / "b.png")
        if case == "bad_columns":
            _metadata(root, [{"file": "covid/a.png", "patient": "P"}], columns=("file", "patient"))
        else:
            _metadata(root, [{"file": "covid/a.png", "patient_id": "P"}, {"file": "covid/a.png", "patient_id": "Q"}])
    with pytest.raises(DataError) as e:
        scan_dataset(root)
    msg = str(e.value)
    assert needle in msg
    assert "Expected" in msg and "got" in msg and str(root) in msg
    assert isinstance(e.value, XraynetError) and isinstance(e.value, ValueError)
    if case == "empty_class":
        assert str(root / "normal") in msg and "2 other files" not in msg   # .DS_Store is hidden
        assert "1 other files" in msg


# ------------------------------------------------------------------ splitting
def _stratify_tree(tmp_path: Path) -> Dataset:
    rng = np.random.default_rng(123)
    spec = {"covid": rng.integers(1, 4, 60).tolist(), "normal": rng.integers(1, 3, 45).tolist(),
            "pneumonia": rng.integers(1, 5, 30).tolist()}
    rows = _patients_tree(tmp_path, spec, source={"covid": "A", "normal": "B", "pneumonia": "B"},
                          view={"covid": "PA", "normal": "AP", "pneumonia": "PA"})
    _metadata(tmp_path, rows)
    return scan_dataset(tmp_path)


def test_split_is_patient_level_stratified_and_seeded(tmp_path):
    ds = _stratify_tree(tmp_path)
    labels = ds.labels
    splits = [split_dataset(ds, 0.2, seed) for seed in (0, 0, 1)]
    a, a2, b = splits
    for s in splits:
        assert not s.per_image
        assert np.array_equal(np.sort(np.r_[s.train, s.val]), np.arange(len(ds)))   # a partition
        assert list(s.train) == sorted(s.train) and list(s.val) == sorted(s.val)
        assert s.train.dtype == np.int64 and s.val.dtype == np.int64
        train_p = {ds.items[i].patient_id for i in s.train}
        assert not train_p & _val_patients(ds, s)
        assert s.n_train_patients == len(train_p) and s.n_val_patients == len(_val_patients(ds, s))
        for c in range(3):
            share = np.isin(np.flatnonzero(labels == c), s.val).mean()
            assert abs(share - 0.2) <= 0.03, (c, share)
    assert np.array_equal(a.val, a2.val) and np.array_equal(a.train, a2.train)
    assert not np.array_equal(a.val, b.val)


def test_split_does_not_depend_on_item_order(tmp_path):
    ds = _stratify_tree(tmp_path)
    shuffled = Dataset(ds.root, ds.classes, ds.items[::-1], ds.has_metadata,
                       ds.n_images_without_metadata, ds.n_metadata_without_images)
    rels = lambda d, s: {d.items[i].rel for i in s.val}   # noqa: E731
    assert rels(ds, split_dataset(ds, 0.25, 7)) == rels(shuffled, split_dataset(shuffled, 0.25, 7))


def test_multi_class_patients_stay_whole(tmp_path):
    rows = _patients_tree(tmp_path, {"covid": [1] * 20, "normal": [1] * 20})
    # Patients M0..M5 have images in both classes; M0..M2 mostly covid.
    for m in range(6):
        for j, cls in enumerate(["covid", "covid", "normal"] if m < 3 else ["normal", "normal", "covid"]):
            rel = f"{cls}/m{m}_{j}.png"
            _png(tmp_path / rel)
            rows.append({"file": rel, "patient_id": f"M{m}"})
    _metadata(tmp_path, rows)
    ds = scan_dataset(tmp_path)
    for seed in range(8):
        s = split_dataset(ds, 0.3, seed)
        val = set(s.val.tolist())
        for m in range(6):
            sides = {i in val for i, it in enumerate(ds.items) if it.patient_id == f"M{m}"}
            assert len(sides) == 1, (seed, m)
        report = confound_report(ds, s)
        assert report["patient_overlap"] == 0 and report["multi_class_patients"] == 6


def test_per_image_split_without_metadata(tmp_path):
    for cls in ("a", "b"):
        for i in range(10):
            _png(tmp_path / cls / f"{i}.png")
    ds = scan_dataset(tmp_path)
    s = split_dataset(ds, 0.2, 0)
    assert s.per_image
    assert len(s.val) == 4 and s.n_val_patients == 4 and s.n_train_patients == 16
    report = confound_report(ds, s)
    assert report["per_image_split"]
    assert any("each image counts as its own patient" in w for w in report["warnings"])


def test_split_keeps_each_class_on_both_sides_when_it_can(tmp_path):
    # b: two single-image patients (0.2 * 2 rounds to zero); c: one patient.
    rows = _patients_tree(tmp_path, {"a": [1] * 30, "b": [1, 1], "c": [3]})
    _metadata(tmp_path, rows)
    ds = scan_dataset(tmp_path)
    labels = ds.labels
    for vf in (0.05, 0.2, 0.9):
        s = split_dataset(ds, vf, 3)
        assert set(labels[s.train]) == {0, 1, 2}
        assert {0, 1} <= set(labels[s.val]) and 2 not in set(labels[s.val])


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.2, True, "0.2", float("nan")])
def test_split_rejects_bad_val_fraction(tmp_path, bad):
    rows = _patients_tree(tmp_path, {"a": [1, 1], "b": [1, 1]})
    _metadata(tmp_path, rows)
    with pytest.raises(DataError, match=r"val_fraction: out of range\. Expected a number strictly between 0 and 1"):
        split_dataset(scan_dataset(tmp_path), bad)


# ------------------------------------------------------------ confound report
def test_confound_report_counts_and_warnings(tmp_path):
    ds = _stratify_tree(tmp_path)
    s = split_dataset(ds, 0.2, 0)
    r = confound_report(ds, s)
    json.dumps(r, allow_nan=False)
    labels = ds.labels
    for side, idx in (("train", s.train), ("val", s.val)):
        for c, name in enumerate(ds.classes):
            sel = idx[labels[idx] == c]
            assert r["images"][side][name] == sel.size
            assert r["patients"][side][name] == len({ds.items[i].patient_id for i in sel})
            # Every image of this toy set has one source/view per class.
            assert sum(r["sources"][side][name].values()) == sel.size
    assert r["images"]["all"] == {"covid": int((labels == 0).sum()), "normal": int((labels == 1).sum()),
                                  "pneumonia": int((labels == 2).sum())}
    assert r["totals"]["images"] == {"train": len(s.train), "val": len(s.val), "all": len(ds)}
    assert r["totals"]["patients"]["all"] == 135
    assert r["patient_overlap"] == 0 and r["multi_class_patients"] == 0
    assert r["sources"]["all"]["normal"] == {"B": r["images"]["all"]["normal"]}
    assert r["views"]["all"]["covid"] == {"PA": r["images"]["all"]["covid"]}
    w = r["warnings"]
    assert "class 'covid' comes from a single source (A): a model can tell it apart by source alone" in w
    assert "source 'A' holds only class 'covid': a model can recognise the source instead of the disease" in w
    assert "class 'normal' comes from a single view (AP): a model can tell it apart by view alone" in w
    assert "class 'pneumonia' comes from a single source (B): a model can tell it apart by source alone" in w
    assert not any("source 'B' holds only" in x for x in w)   # B is shared by normal and pneumonia

    tables = confound_tables(r)
    assert len(tables) == 3
    console = Console(record=True, width=200)
    for t in tables:
        console.print(t)
    text = console.export_text()
    n_cov = r["images"]["all"]["covid"]
    assert f"{n_cov} ({r['images']['train']['covid']}/{r['images']['val']['covid']})" in text
    assert "patients on both sides: 0" in text


def test_confound_report_flags_overlap_and_missing_val_class(tmp_path):
    rows = _patients_tree(tmp_path, {"a": [2, 1, 1], "b": [1, 1]})
    _metadata(tmp_path, rows)
    ds = scan_dataset(tmp_path)
    s = split_dataset(ds, 0.3, 0)
    # A hand-made split: patient a-0's two images on both sides, no b in val.
    a0 = [i for i, it in enumerate(ds.items) if it.patient_id == "a-0"]
    from xraynet.data import Split
    bad = Split(train=np.array([a0[0], 2, 3, 4, 5]), val=np.array([a0[1]]), per_image=False,
                n_train_patients=4, n_val_patients=1, val_fraction=0.3, seed=0)
    r = confound_report(ds, bad)
    assert r["patient_overlap"] == 1
    assert r["sources"] is None and r["views"] is None
    assert any("1 patients have images in both train and validation" in x for x in r["warnings"])
    assert "class 'b' has no validation images: its sensitivity cannot be measured on this split" in r["warnings"]
    assert confound_report(ds, s)["patient_overlap"] == 0
    with pytest.raises(DataError, match="index out of range"):
        confound_report(ds, Split(np.array([0, 99]), np.array([1]), False, 1, 1, 0.3, 0))


# --------------------------------------------------------- the real data set
def test_real_cxr_dataset():
    """Properties, not counts: the folder grows (609 films once, 4,398 now)."""
    if not (CXR / "metadata.csv").is_file():
        pytest.skip(f"real data set not present at {CXR} (it lives in ../shared/data/cxr next to the repo)")
    import csv

    with open(CXR / "metadata.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    ds = scan_dataset(CXR)
    assert len(ds) == len(rows) and ds.classes == sorted({r["label"] for r in rows})
    assert ds.has_metadata and ds.n_images_without_metadata == 0 and ds.n_metadata_without_images == 0
    s = split_dataset(ds, 0.2, 0)
    assert not s.per_image
    train_p = {ds.items[i].patient_id for i in s.train}
    assert not train_p & _val_patients(ds, s)
    assert len(train_p) + len(_val_patients(ds, s)) == len({r["patient_id"] for r in rows})
    labels_of = {}
    for r in rows:
        labels_of.setdefault(r["patient_id"], set()).add(r["label"])
    r = confound_report(ds, s)
    assert r["patient_overlap"] == 0
    assert r["multi_class_patients"] == sum(len(v) > 1 for v in labels_of.values())
    for c in ds.classes:
        assert abs(r["images"]["val"][c] / r["images"]["all"][c] - 0.2) < 0.03
    # A class drawn from one source only is named in a warning, and only such a class.
    sources_of = {}
    for row in rows:
        sources_of.setdefault(row["label"], set()).add(row["source_repo"])
    for c, found in sources_of.items():
        warned = any(w.startswith(f"class {c!r} comes from a single source") for w in r["warnings"])
        assert warned == (len(found) == 1), (c, found)
