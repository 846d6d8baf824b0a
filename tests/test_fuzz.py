"""Fuzzing the readers of untrusted files: a short, seeded run of benchmarks/fuzz.py.

``xraynet.imaging.decode`` and ``xraynet.modelfile.load_model`` must return a
result or raise an ``XraynetError`` on mutated valid files: no other exception,
no crash, no hang, no memory blow-up. The long run is
``python benchmarks/fuzz.py --per-format 10000 --seed 0`` (results in
benchmarks/results/); this one reads a few hundred inputs per format in one
worker process, and checks that the harness itself tells the outcomes apart.
"""
from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"


def _load_fuzz():
    spec = importlib.util.spec_from_file_location("xraynet_bench_fuzz", FUZZ)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


fuzz = _load_fuzz()
# The oracle watches the worker's RSS and CPU time in /proc.
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fuzz oracle needs Linux's /proc")

SEED = 0
PER_FORMAT = {"png": 500, "jpeg": 500, "tiff": 500, "dicom": 500, "model": 300}


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    """The seed files of every format and one worker that has read them all."""
    work = tmp_path_factory.mktemp("fuzz")
    corpus = fuzz.Corpus(work)
    fuzz.write_warmup(corpus, fuzz.FORMATS, work / "seeds")
    oracle = fuzz.Oracle(work / "seeds", work)
    yield corpus, oracle, work
    oracle.close()


def _report(stats: dict) -> str:
    lines = [f"{stats['format']}: {stats['findings']} findings in {stats['inputs']} inputs (seed {SEED}):"]
    for ex in stats["examples"]:
        lines += [f"- {ex['signature']} x{stats['by_signature'][ex['signature']]['count']} "
                  f"(inputs {stats['by_signature'][ex['signature']]['indexes']}); replay with "
                  f"python benchmarks/fuzz.py --replay {ex['format']}:{ex['index']} --seed {SEED}; "
                  f"mutations: {'; '.join(ex['ops'])}", ex["tail"].rstrip()[-600:]]
    return "\n".join(lines)


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_mutated_files_give_a_result_or_an_own_error(harness, fmt):
    corpus, oracle, work = harness
    stats = fuzz.fuzz_format(fmt, PER_FORMAT[fmt], SEED, corpus, oracle, work)
    assert stats["inputs"] == PER_FORMAT[fmt]
    assert stats["results"] + stats["own_errors"] + stats["findings"] == stats["inputs"]
    # Mutations that never decode would test only the first header check.
    assert stats["results"] > 0 and stats["own_errors"] > 0, stats
    assert stats["findings"] == 0, _report(stats)


# Inputs of the long run (seed 0) behind findings that the short run above does
# not reach: each must now give a result or an own error too.
LONG_RUN_CASES = [("jpeg", 858),    # SOF height 0 (DNL): the libjpeg fallback allocates gigabytes
                  ("tiff", 693), ("tiff", 772), ("tiff", 982), ("tiff", 1264),  # odd TIFF tag types
                  ("model", 1053)]  # a global heap that made HDF5 loop forever


@pytest.fixture(scope="module")
def lean_oracle(harness):
    """Like the harness's worker, with a 512 MB RSS bound: a blow-up stops early."""
    corpus, _, work = harness
    oracle = fuzz.Oracle(work / "seeds", work, memory_limit_mb=512)
    yield corpus, oracle, work
    oracle.close()


@pytest.mark.parametrize("fmt,index", LONG_RUN_CASES, ids=[f"{f}-{i}" for f, i in LONG_RUN_CASES])
def test_long_run_findings(lean_oracle, fmt, index):
    corpus, oracle, work = lean_oracle
    stats = fuzz.fuzz_format(fmt, 1, SEED, corpus, oracle, work, start=index)
    assert stats["findings"] == 0, _report(stats)


@pytest.mark.parametrize("fmt", fuzz.FORMATS)
def test_seed_files_are_read(harness, fmt):
    """Mutations start from valid files: every seed file must give a result."""
    corpus, oracle, work = harness
    for seed in corpus.seeds(fmt):
        path = work / f"seed-check{fuzz.SUFFIX[fmt]}"
        path.write_bytes(seed.data)
        reply = oracle.run(fuzz.TARGET[fmt], path)
        assert reply["outcome"] == "ok", (seed.name, reply)


def test_cases_depend_only_on_seed_format_and_index(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = fuzz.Corpus(tmp_path / "a"), fuzz.Corpus(tmp_path / "b")
    for fmt in fuzz.FORMATS:
        for i in (0, 7, 123):
            ca, cb = a.case(fmt, i, SEED), b.case(fmt, i, SEED)
            assert ca.ops == cb.ops, (fmt, i)
            assert hashlib.sha256(ca.data).digest() == hashlib.sha256(cb.data).digest(), (fmt, i, ca.ops)
        assert any(a.case(fmt, i, SEED).data != a.case(fmt, i, SEED + 1).data for i in range(3)), fmt


def test_layouts_find_the_header_fields(tmp_path):
    """The format-aware mutations need the fields they aim at."""
    corpus = fuzz.Corpus(tmp_path)
    names = {fmt: {f.name for s in corpus.seeds(fmt) for f in s.fields} for fmt in fuzz.FORMATS}
    assert {"IHDR width", "IHDR height", "IHDR bit depth"} <= names["png"]
    assert {"SOF height", "SOF width", "SOF components", "DHT class/id", "SOS components"} <= names["jpeg"]
    assert {"ImageWidth[0]", "ImageLength[0]", "BitsPerSample[0]", "StripOffsets[0]",
            "StripByteCounts[0]", "Compression[0]"} <= names["tiff"]
    assert {"Rows", "Columns", "BitsAllocated", "(7FE0,0010) length", "pixel item 1 length",
            "RLE fragment 1 segments"} <= names["dicom"]
    assert {"end-of-file address", "root object header address"} <= names["model"]
    texts = {t.name for s in corpus.seeds("dicom") for t in s.texts}
    assert {"TransferSyntaxUID", "PhotometricInterpretation"} <= texts


@pytest.fixture(scope="module")
def strict_oracle(tmp_path_factory):
    """A worker with small bounds, for the self-tests (no seed files to warm up on)."""
    work = tmp_path_factory.mktemp("oracle")
    (work / "seeds").mkdir()
    oracle = fuzz.Oracle(work / "seeds", work, cpu_limit=2.0, wall_limit=30.0, memory_limit_mb=150)
    yield oracle, work
    oracle.close()


@pytest.mark.parametrize("action,outcome,kind", [
    ("ok", "ok", None),
    ("raise", "finding", "exception"),
    ("bad-result", "finding", "contract"),
    ("alloc-impossible", "finding", "exception"),   # fails on any machine: not the bound's doing
    ("alloc 629145600", "finding", "memory"),        # 600 MB touched, bound 150 MB
    ("spin", "finding", "timeout"),
    ("abort", "finding", "crash"),
    ("ok", "ok", None),                               # the worker came back after the crash
])
def test_oracle_tells_outcomes_apart(strict_oracle, action, outcome, kind):
    oracle, work = strict_oracle
    path = work / "action.txt"
    path.write_text(action)
    reply = oracle.run("selftest", path)
    assert reply["outcome"] == outcome, reply
    assert reply.get("kind") == kind, reply
    if kind == "crash":
        assert "SIGABRT" in reply["signature"]
    if kind == "exception" and action == "raise":
        assert reply["signature"].startswith("exception: ZeroDivisionError in fuzz.py:_selftest")


def test_minimize_keeps_the_failure():
    data = bytes(range(200)) + b"BUG" + bytes(100)
    small = fuzz.minimize(data, lambda d: b"BUG" in d, max_trials=500)
    assert small == b"BUG"


# ------------------------------------------- model-file defences the fuzzer asked for
@pytest.fixture
def model_path(tmp_path):
    """A small valid model file with optimiser state, history and aux arrays."""
    import numpy as np

    from xraynet.model import Model
    from xraynet.modelfile import save_model
    from xraynet.optim import Adam

    model = Model(fuzz.TINY_SPEC, seed=1)
    opt = Adam(model.named_parameters(), model.bk)
    path = tmp_path / "m.h5"
    save_model(path, model, classes=["a", "b"], preprocessing={}, optimizer=opt, history=[{"epoch": 1}],
               aux={"adversary/weight": np.ones((2, 3), np.float32)})
    return path


def _load_error(path) -> str:
    from xraynet.errors import ModelFileError
    from xraynet.modelfile import load_model

    with pytest.raises(ModelFileError) as e:
        load_model(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: ") and ". Expected " in msg, msg
    return msg


def _edit(path, fn):
    import h5py

    with h5py.File(path, "r+") as f:
        fn(f)


@pytest.mark.parametrize("where", ["aux/huge", "weights/layers.0/weight", "optimizer/m/layers.0.weight"])
def test_dataset_declaring_more_than_it_stores(model_path, where):
    def huge(f):
        kind = f[where].attrs.get("kind") if where in f else None
        if where in f:
            del f[where]
        ds = f.create_dataset(where, shape=(2 ** 31,), dtype="f4", chunks=True)  # nothing stored
        if kind is not None:
            ds.attrs["kind"] = kind

    _edit(model_path, huge)
    msg = _load_error(model_path)
    if where == "aux/huge":  # the others fail on their shape first
        assert "dataset 'aux/huge' declares more data than the file holds" in msg
        assert "(8,589,934,592 bytes)" in msg


def test_dataset_stored_outside_the_file(model_path):
    _edit(model_path, lambda f: f.create_dataset("aux/ext", shape=(4,), dtype="f4",
                                                 external=[("/dev/zero", 0, 16)]))
    assert "dataset 'aux/ext' keeps its data outside this file" in _load_error(model_path)


def test_aux_with_variable_length_items(model_path):
    import h5py
    import numpy as np

    _edit(model_path, lambda f: f.create_dataset("aux/v", shape=(2,), dtype=h5py.vlen_dtype(np.int32)))
    assert "dataset 'aux/v' is not a plain array. Expected a fixed-size dtype" in _load_error(model_path)


def test_history_whose_string_length_is_damaged(model_path):
    import h5py

    with h5py.File(model_path, "r") as f:
        offset = f["history"].id.get_offset()
    data = bytearray(model_path.read_bytes())
    data[offset:offset + 4] = (2 ** 31).to_bytes(4, "little")  # HDF5 would allocate 2 GiB for it
    model_path.write_bytes(bytes(data))
    msg = _load_error(model_path)
    assert "the 'history' dataset is damaged. Expected a string of at most the file's" in msg
    assert "got a string claiming 2,147,483,648 bytes" in msg


def test_history_of_a_huge_fixed_length_string(model_path):
    def fixed(f):
        del f["history"]
        f.create_dataset("history", shape=(), dtype="S2000000000")

    _edit(model_path, fixed)
    assert "dataset 'history' declares more data than the file holds" in _load_error(model_path)


@pytest.mark.parametrize("change", [
    lambda spec: spec["layers"].__setitem__(-1, {"type": "dense", "out_features": 2 ** 40}),
    lambda spec: spec.__setitem__("input_shape", [1, 2 ** 20, 2 ** 20]),
    lambda spec: spec.__setitem__("input_shape", [2 ** 40, 8, 8]),
], ids=["dense-2^40", "input-2^20-squared", "channels-2^40"])
def test_architecture_far_larger_than_the_weights(model_path, change):
    import json

    def edit(f):
        spec = json.loads(f.attrs["architecture"])
        change(spec)
        f.attrs["architecture"] = json.dumps(spec)

    _edit(model_path, edit)
    msg = _load_error(model_path)
    assert "the stored architecture is far larger than the stored weights" in msg
    assert "needing about the 61 values /weights holds" in msg  # conv 20, batch norm 8, dense 33


def test_optimizer_slot_that_is_not_a_dataset(model_path):
    import h5py

    def dangling(f):
        del f["optimizer/m/layers.0.weight"]
        f["optimizer/m/layers.0.weight"] = h5py.SoftLink("/nowhere")

    _edit(model_path, dangling)
    assert "layers.0.weight: not a dataset" in _load_error(model_path)


def test_global_heap_that_would_hang_hdf5(model_path):
    """HDF5 2.0 loops forever on a free-space heap object of size 0 (benchmarks/fuzz.py found it)."""
    data = bytearray(model_path.read_bytes())
    pos = data.index(b"GCOL")
    p, end = pos + 16, pos + int.from_bytes(data[pos + 8:pos + 16], "little")
    while int.from_bytes(data[p:p + 2], "little") != 0:  # to the free space at the end
        p += 16 + (int.from_bytes(data[p + 8:p + 16], "little") + 7) // 8 * 8
    assert p < end
    data[p + 8:p + 16] = bytes(8)
    model_path.write_bytes(bytes(data))
    msg = _load_error(model_path)
    assert "the HDF5 file is damaged (a global heap object of impossible size)" in msg
    assert f"got object 0 of size 0 in the heap at byte {pos}" in msg


def test_architecture_whose_sizes_overflow(model_path):
    import json

    def edit(f):
        spec = json.loads(f.attrs["architecture"])
        spec["input_shape"] = [1, 8, 2 ** 63]  # the layers' NumPy shape arithmetic wraps to 0
        f.attrs["architecture"] = json.dumps(spec)

    _edit(model_path, edit)
    msg = _load_error(model_path)
    assert "the stored architecture's sizes cannot be computed" in msg
    assert "got input_shape [1, 8, 9223372036854775808]" in msg
