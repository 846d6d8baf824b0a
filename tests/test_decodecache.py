"""xraynet.decodecache: hits and misses, persistence, recovery from damaged
cache files and entries, and the conversion of format-1 files."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings

import h5py
import numpy as np
import pytest
from PIL import Image

from xraynet.decodecache import CacheRecoveredWarning, DecodeCache, file_sha256
from xraynet.errors import CacheError, ShapeError
from xraynet.imaging import Preprocessing, load

PREP = Preprocessing(image_size=32)


@pytest.fixture
def images(tmp_path):
    """Three small distinct PNGs."""
    paths = []
    for i in range(3):
        a = ((np.arange(40 * 48).reshape(40, 48) * (i + 1)) % 256).astype(np.uint8)
        p = tmp_path / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def compute(path):
    return load(path, PREP)[0]


def test_file_sha256_matches_hashlib(tmp_path):
    p = tmp_path / "blob.bin"
    data = np.random.default_rng(0).bytes(3 * 1024 + 17)
    p.write_bytes(data)
    assert file_sha256(p, chunk_size=1000) == hashlib.sha256(data).hexdigest()
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()


def test_miss_then_hit(tmp_path, images):
    with DecodeCache(tmp_path / "cache.h5", PREP) as cache:
        assert cache.get(images[0]) is None
        cache.put(images[0], compute(images[0]))
        again = cache.get(images[0], file_sha256(images[0]))  # the caller's digest, as training passes it
        assert again.dtype == np.float32 and again.shape == (32, 32)
        np.testing.assert_array_equal(again, compute(images[0]))
        np.testing.assert_array_equal(cache.get(images[0]), compute(images[0]))
        assert cache.get(images[1]) is None
        assert len(cache) == 1 and (cache.hits, cache.misses) == (2, 2)


def test_key_is_content_not_name(tmp_path, images):
    with DecodeCache(tmp_path / "cache.h5", PREP) as cache:
        cache.put(images[0], compute(images[0]))
        copy = tmp_path / "renamed.png"
        copy.write_bytes(images[0].read_bytes())
        np.testing.assert_array_equal(cache.get(copy), compute(images[0]))  # same bytes: hit
        # Same name, new content: miss.
        Image.fromarray(np.full((40, 48), 7, np.uint8)).save(images[0])
        assert cache.get(images[0]) is None


def test_other_preprocessing_misses(tmp_path, images):
    path = tmp_path / "cache.h5"
    with DecodeCache(path, PREP) as cache:
        cache.put(images[0], compute(images[0]))
    other = Preprocessing(image_size=32, fit="crop")
    with DecodeCache(path, other) as cache:
        assert cache.get(images[0]) is None and len(cache) == 0
        cache.put(images[0], load(images[0], other)[0])
    with DecodeCache(path, PREP) as cache:  # both settings live side by side
        np.testing.assert_array_equal(cache.get(images[0]), compute(images[0]))


def test_persists_across_reopen(tmp_path, images):
    path = tmp_path / "sub" / "cache.h5"  # folder created on demand
    with DecodeCache(path, PREP) as cache:
        for p in images:
            cache.put(p, compute(p))
    with DecodeCache(path, PREP) as cache:
        assert len(cache) == 3
        for p in images:
            np.testing.assert_array_equal(cache.get(p), compute(p))
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "xraynet-decode-cache" and f.attrs["format_version"] == 2
        group = f[PREP.key()]
        assert group["images"].shape[1:] == (32, 32) and group["images"].chunks == (1, 32, 32)
        assert sorted(n for n in group["files"][()].tolist() if n) == sorted(file_sha256(p).encode() for p in images)


def test_put_checks_shape(tmp_path, images):
    with DecodeCache(tmp_path / "cache.h5", PREP) as cache:
        with pytest.raises(ShapeError, match=r"Expected a numeric \(32, 32\) array"):
            cache.put(images[0], np.zeros((64, 64), np.float32))
        assert len(cache) == 0  # a refused array stores nothing
        cache.put(images[0], np.ones((32, 32), np.float64))  # stored as float32
        assert cache.get(images[0]).dtype == np.float32


def test_closed_cache_raises(tmp_path, images):
    cache = DecodeCache(tmp_path / "cache.h5", PREP)
    cache.close()
    cache.close()  # twice is fine
    with pytest.raises(CacheError, match="closed"):
        cache.get(images[0])


def fill(path, images):
    with DecodeCache(path, PREP) as cache:
        for p in images:
            cache.put(p, compute(p))


@pytest.mark.parametrize("damage", ["truncate", "garble", "empty"])
def test_corrupt_file_is_moved_aside_and_rebuilt(tmp_path, images, damage):
    path = tmp_path / "cache.h5"
    fill(path, images)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 3])
    elif damage == "garble":  # keep the signature, destroy the superblock and metadata after it
        path.write_bytes(raw[:8] + bytes(len(raw) - 8))
    else:
        path.write_bytes(b"")
    damaged = path.read_bytes()
    with pytest.warns(CacheRecoveredWarning, match="moved to cache.h5.corrupt-"):
        cache = DecodeCache(path, PREP)
    with cache:
        assert len(cache) == 0 and cache.get(images[0]) is None
        cache.put(images[0], compute(images[0]))
    aside = list(tmp_path.glob("cache.h5.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == damaged  # kept as found, for a post-mortem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache opens cleanly
        with DecodeCache(path, PREP) as cache:
            np.testing.assert_array_equal(cache.get(images[0]), compute(images[0]))


def row_of(f, path) -> int:
    return f[PREP.key()]["files"][()].tolist().index(file_sha256(path).encode())


def test_damaged_entry_is_dropped(tmp_path, images):
    path = tmp_path / "cache.h5"
    fill(path, images)
    with h5py.File(path, "a") as f:
        ds, row = f[PREP.key()]["images"], row_of(f, images[1])
        ds[row, 0, 0] = ds[row, 0, 0] + 1.0  # bytes no longer match the stored checksum
    with DecodeCache(path, PREP) as cache:
        with pytest.warns(CacheRecoveredWarning, match="checksum"):
            assert cache.get(images[1]) is None
        assert len(cache) == 2
        np.testing.assert_array_equal(cache.get(images[0]), compute(images[0]))
        cache.put(images[1], compute(images[1]))  # stored again, in the row it freed
        assert len(cache) == 3
    with DecodeCache(path, PREP) as cache:
        np.testing.assert_array_equal(cache.get(images[1]), compute(images[1]))
    with h5py.File(path, "r") as f:
        assert f[PREP.key()]["images"].shape[0] == 64  # no row lost


def test_interrupted_put_leaves_no_entry(tmp_path, images):
    path = tmp_path / "cache.h5"
    fill(path, images[:1])
    with h5py.File(path, "a") as f:  # a crash after the image and its checksum, before its file name
        group = f[PREP.key()]
        group["images"][1] = compute(images[1])
        group["sha256"][1] = hashlib.sha256(compute(images[1]).astype("<f4").tobytes()).hexdigest().encode()
    with DecodeCache(path, PREP) as cache:
        assert cache.get(images[1]) is None and len(cache) == 1
        cache.put(images[2], compute(images[2]))  # the orphan row is free again
    with h5py.File(path, "r") as f:
        assert row_of(f, images[2]) == 1


def test_foreign_files_are_left_alone(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("not a cache")
    with pytest.raises(CacheError, match="not an xraynet decode cache. Expected an HDF5 file"):
        DecodeCache(text, PREP)
    assert text.read_text() == "not a cache"
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as f:
        f.attrs["format"] = "xraynet-model"
        f.create_dataset("w", data=np.ones(3))
    with pytest.raises(CacheError, match="is this a model file"):
        DecodeCache(model, PREP)
    with h5py.File(model, "r") as f:
        assert f.attrs["format"] == "xraynet-model"
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "cache.h5"
    DecodeCache(path, PREP).close()
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(CacheError, match=r"Expected decode cache format 2 \(or 1, converted\), got format 99"):
        DecodeCache(path, PREP)


def test_directory_path_refused(tmp_path):
    with pytest.raises(CacheError, match="a directory"):
        DecodeCache(tmp_path, PREP)


def test_second_process_is_refused(tmp_path):
    path = tmp_path / "cache.h5"
    script = ("from xraynet.decodecache import DecodeCache\n"
              "from xraynet.imaging import Preprocessing\n"
              "from xraynet.errors import CacheError\n"
              "try:\n"
              f"    DecodeCache({str(path)!r}, Preprocessing(image_size=32))\n"
              "except CacheError as e:\n"
              "    print(e)\n")
    with DecodeCache(path, PREP):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "in use by another process" in out.stdout, out.stdout + out.stderr
    assert not list(tmp_path.glob("*.corrupt-*"))  # a locked cache is not mistaken for a damaged one


def test_read_into_fills_a_batch_row(tmp_path, images):
    with DecodeCache(tmp_path / "cache.h5", PREP) as cache:
        cache.put(images[1], compute(images[1]))
        batch = np.full((3, 32, 32), np.nan, np.float32)
        assert cache.read_into(file_sha256(images[1]), batch[1])
        np.testing.assert_array_equal(batch[1], compute(images[1]))
        assert np.isnan(batch[0]).all() and np.isnan(batch[2]).all()  # only its row written
        assert not cache.read_into(file_sha256(images[0]), batch[0])  # a miss
        assert (cache.hits, cache.misses) == (1, 1)
        with pytest.raises(ShapeError, match=r"Expected a C-contiguous float32 \(32, 32\) array, got shape "
                                             r"\(32, 16\) dtype float32"):
            cache.read_into(file_sha256(images[1]), batch[1][:, ::2])
        with pytest.raises(ShapeError, match="dtype float64"):
            cache.read_into(file_sha256(images[1]), np.zeros((32, 32)))


def write_format_1(path, entries: dict, extra=()):
    """A format-1 cache (one dataset per image, its checksum in an attribute) holding
    ``entries`` {file sha256: array}; ``extra``: (name, array, checksum) written as they are."""
    with h5py.File(path, "w") as f:
        f.attrs["format"], f.attrs["format_version"] = "xraynet-decode-cache", np.int64(1)
        group = f.create_group(PREP.key())
        group.attrs["preprocessing"] = "{}"
        rows = [(k, a, hashlib.sha256(a.astype("<f4").tobytes()).hexdigest()) for k, a in entries.items()]
        for name, a, checksum in [*rows, *extra]:
            group.create_dataset(name, data=a).attrs["sha256"] = checksum


def test_format_1_file_is_converted(tmp_path, images):
    path = tmp_path / "cache.h5"
    good = {file_sha256(p): compute(p) for p in images[:2]}
    spoilt = compute(images[2])
    write_format_1(path, good, extra=[(file_sha256(images[2]), spoilt, "0" * 64),            # checksum fails
                                      (".tmp-" + "1" * 64, spoilt, "x")])                     # half-written
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a conversion is no damage
        with DecodeCache(path, PREP) as cache:
            assert len(cache) == 2 and cache.get(images[2]) is None
            for p in images[:2]:
                np.testing.assert_array_equal(cache.get(p), compute(p))
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 2 and set(f[PREP.key()]) == {"images", "files", "sha256"}
    assert sorted(q.name for q in tmp_path.iterdir()) == ["cache.h5", "img0.png", "img1.png", "img2.png"]


def test_format_1_conversion_that_fails_keeps_the_old_file(tmp_path, images, monkeypatch):
    import xraynet.decodecache as dc

    path = tmp_path / "cache.h5"
    write_format_1(path, {file_sha256(images[0]): compute(images[0])})
    before = path.read_bytes()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dc, "_copy_format_1_group", fail)
    with pytest.warns(CacheRecoveredWarning, match="No space left on device"):
        with DecodeCache(path, PREP) as cache:
            assert len(cache) == 0
    aside = list(tmp_path.glob("cache.h5.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == before  # untouched, set aside
    assert not list(tmp_path.glob(".cache.h5.converting-*"))  # no half-written copy left
