"""xraynet.decodecache: hits and misses, persistence, and recovery from
damaged cache files and entries."""
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
        assert f.attrs["format"] == "xraynet-decode-cache" and f.attrs["format_version"] == 1


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


def test_damaged_entry_is_dropped(tmp_path, images):
    path = tmp_path / "cache.h5"
    fill(path, images)
    with h5py.File(path, "a") as f:
        ds = f[f"{PREP.key()}/{file_sha256(images[1])}"]
        ds[0, 0] = ds[0, 0] + 1.0  # bytes no longer match the stored checksum
    with DecodeCache(path, PREP) as cache:
        with pytest.warns(CacheRecoveredWarning, match="checksum"):
            assert cache.get(images[1]) is None
        assert len(cache) == 2
        np.testing.assert_array_equal(cache.get(images[0]), compute(images[0]))


def test_interrupted_put_leaves_no_entry(tmp_path, images):
    path = tmp_path / "cache.h5"
    fill(path, images[:1])
    digest = file_sha256(images[1])
    with h5py.File(path, "a") as f:  # what a crash between write and link leaves behind
        f[PREP.key()].create_dataset(f".tmp-{digest}", data=np.zeros((32, 32), np.float32))
    with DecodeCache(path, PREP) as cache:
        assert cache.get(images[1]) is None and len(cache) == 1
    with h5py.File(path, "r") as f:
        assert f".tmp-{digest}" not in f[PREP.key()]  # cleaned up on open


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
    with pytest.raises(CacheError, match="Expected decode cache format 1, got format 99"):
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
