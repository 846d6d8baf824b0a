"""Training that streams its films from the decode cache (xraynet.training.films).

* a streamed run gives the weights of the in-memory reference bit for bit, with
  augmentation, with balanced batches and a source adversary, and when stopped
  after an epoch and resumed;
* the prefetching reader yields the batches in order, raises a reader's error at
  that batch, and ends its thread when the consumer stops early;
* a cache entry that goes bad during a run is rebuilt from its image file (same
  weights), or, when the file changed meanwhile, stops the run with a CacheError.
"""
from __future__ import annotations

import shutil
import threading
import time

import h5py
import numpy as np
import pytest

from xraynet.decodecache import CacheRecoveredWarning, DecodeCache, file_sha256
from xraynet.errors import CacheError
from xraynet.modelfile import load_model
from xraynet.training import Callbacks, checkpoint_path_for, train
from xraynet.training.films import ArrayFilms, Prefetch

from helpers import train_options


def same_weights(a_path, b_path):
    a, b = load_model(a_path), load_model(b_path)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        np.testing.assert_array_equal(sa[name], sb[name], err_msg=name)
    return a, b


def run(root, folder, opts, **kw):
    folder.mkdir(exist_ok=True)
    out = folder / "m.h5"
    summary = train(root, out, opts, **kw)
    return out, summary


@pytest.mark.parametrize("recipe", [dict(augment=True, epochs=3),
                                    dict(augment=True, epochs=2, balance="source-class", adversarial_source=0.3)],
                         ids=["augment", "balanced-adversary"])
def test_streaming_gives_the_in_memory_weights(dataset, tmp_path, recipe):
    root, spec = dataset
    mem, mem_summary = run(root, tmp_path / "mem", train_options(spec, **recipe), in_memory=True)
    stream, stream_summary = run(root, tmp_path / "stream", train_options(spec, **recipe))
    a, b = same_weights(mem, stream)
    same_weights(checkpoint_path_for(mem), checkpoint_path_for(stream))
    assert a.metadata["threshold"] == b.metadata["threshold"]
    for ra, rb in zip(a.history, b.history):
        assert (ra["train_loss"], ra["val_loss"], ra["val_auc"]) == (rb["train_loss"], rb["val_loss"], rb["val_auc"])
    assert mem_summary["best_epoch"] == stream_summary["best_epoch"]


def test_streamed_resume_gives_the_uninterrupted_in_memory_weights(dataset, tmp_path):
    root, spec = dataset
    mem, _ = run(root, tmp_path / "mem", train_options(spec, epochs=3, augment=True), in_memory=True)
    part, _ = run(root, tmp_path / "part", train_options(spec, epochs=1, augment=True))  # as if killed
    train(root, part, train_options(spec, epochs=3, augment=True), resume=str(checkpoint_path_for(part)))
    same_weights(checkpoint_path_for(mem), checkpoint_path_for(part))
    same_weights(mem, part)


# ------------------------------------------------------------------ the prefetching reader
class SlowFilms:
    """Film ``k`` is an (2, 2) array of ``k``; reading batch ``fail_at`` raises."""

    def __init__(self, fail_at=None, delay=0.0):
        self.fail_at, self.delay, self.reads = fail_at, delay, 0

    def read(self, idx):
        time.sleep(self.delay)
        if self.reads == self.fail_at:
            raise CacheError(f"batch {self.reads}: cannot be read. Expected a readable entry, got damage. Test.")
        self.reads += 1
        return np.repeat(np.asarray(idx, np.float32), 4).reshape(len(idx), 2, 2)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "xraynet-prefetch"]


def test_prefetch_yields_the_batches_in_order():
    x = np.random.default_rng(0).standard_normal((10, 3, 3)).astype(np.float32)
    batches = [np.array([3, 1, 3]), np.array([0]), np.arange(10)]
    with Prefetch(ArrayFilms(x), batches, depth=1) as reader:
        got = list(reader)
        assert list(reader) == []  # iterated once; a second pass ends at once
    assert list(reader) == []  # so does a closed one
    assert len(got) == 3
    for idx, xb in zip(batches, got):
        np.testing.assert_array_equal(xb, x[idx])
    assert not prefetch_threads()


def test_prefetch_raises_the_readers_error_at_its_batch():
    batches = [np.array([k]) for k in range(6)]
    seen = []
    with pytest.raises(CacheError, match="batch 3: cannot be read"):
        with Prefetch(SlowFilms(fail_at=3), batches) as reader:
            for xb in reader:
                seen.append(int(xb[0, 0, 0]))
    assert seen == [0, 1, 2]
    assert not prefetch_threads()


def test_prefetch_stops_when_the_consumer_stops():
    films = SlowFilms(delay=0.01)
    with Prefetch(films, [np.array([k]) for k in range(1000)], depth=2) as reader:
        for _ in reader:
            break
        t0 = time.perf_counter()
    assert time.perf_counter() - t0 < 1.0 and not prefetch_threads()
    assert films.reads <= 5  # it read ahead by its depth, not the whole list
    with pytest.raises(RuntimeError, match="training stopped"):
        with Prefetch(films, [np.array([k]) for k in range(1000)]) as reader:
            next(iter(reader))
            raise RuntimeError("training stopped")
    assert not prefetch_threads()


# ------------------------------------------------------------------ a cache entry that goes bad mid-run
def entry_offsets(cache_path, opts):
    """{sha256 of the image file: (byte offset, byte size)} of every entry's image (its chunk)."""
    with h5py.File(cache_path, "r") as f:
        group = f[opts.preprocessing(32).key()]
        images = group["images"].id
        offsets = {}
        for row, name in enumerate(group["files"][()].tolist()):
            if name:
                info = images.get_chunk_info_by_coord((row, 0, 0))
                offsets[name.decode()] = (info.byte_offset, info.size)
        return offsets


class Spoil(Callbacks):
    """At the first batch of epoch ``epoch``: overwrite every cache entry's bytes with zeros
    (behind HDF5's back, as a failing disk would), then ``also()``."""

    def __init__(self, cache_path, offsets, epoch, also=lambda: None):
        self.cache_path, self.offsets, self.epoch, self.also, self.done = cache_path, offsets, epoch, also, False

    def on_batch(self, epoch, done, total, loss):
        if epoch == self.epoch and not self.done:
            self.done = True
            with open(self.cache_path, "r+b") as fh:
                for offset, size in self.offsets.values():
                    fh.seek(offset)
                    fh.write(bytes(size))
            self.also()


def test_entry_gone_bad_is_rebuilt_with_the_same_film(dataset, tmp_path):
    root, spec = dataset
    opts = train_options(spec, epochs=3, augment=True, cache=str(tmp_path / "cache.h5"))
    mem, _ = run(root, tmp_path / "mem", opts, in_memory=True)  # fills the cache, too
    offsets = entry_offsets(opts.cache, opts)
    spoil = Spoil(opts.cache, offsets, epoch=2)
    with pytest.warns(CacheRecoveredWarning, match="checksum does not match"):
        stream, _ = run(root, tmp_path / "stream", opts, callbacks=spoil)
    assert spoil.done
    same_weights(mem, stream)
    with DecodeCache(opts.cache, opts.preprocessing(32)) as cache:  # every entry whole again
        assert len(cache) == len(offsets)
        assert all(cache.read_into(k, np.empty((32, 32), np.float32)) for k in offsets)


def test_entry_gone_bad_of_a_changed_file_stops_the_run(dataset, tmp_path):
    from xraynet.data import scan_dataset, split_dataset

    src, spec = dataset
    root = tmp_path / "films"
    shutil.copytree(src, root)
    opts = train_options(spec, epochs=2, cache=str(tmp_path / "cache.h5"))
    run(root, tmp_path / "first", opts)
    ds = scan_dataset(root)
    film = ds.items[split_dataset(ds, val_fraction=opts.val_fraction, seed=opts.seed).val[0]]
    before = file_sha256(film.path)
    spoil = Spoil(opts.cache, entry_offsets(opts.cache, opts), epoch=1,
                  also=lambda: film.path.write_bytes(film.path.read_bytes() + b"edited"))
    with pytest.warns(CacheRecoveredWarning):
        with pytest.raises(CacheError) as err:
            run(root, tmp_path / "second", opts, callbacks=spoil)
    text = str(err.value)
    assert text.startswith(f"{film.rel}: its decode cache entry went bad during training") and before in text
    assert "Keep image files unchanged while a run trains on them" in text
    assert not prefetch_threads()
    DecodeCache(opts.cache, opts.preprocessing(32)).close()  # the run let go of the cache file


def _count_live_films(monkeypatch) -> list:
    """Make xraynet.imaging.load count the decoded films alive at once; returns a one-element
    list holding the most seen so far."""
    import xraynet.imaging

    real_load, alive, most = xraynet.imaging.load, [0], [0]

    class Film(np.ndarray):
        def __del__(self):
            alive[0] -= 1

    def counting_load(path, p):
        film, decoded = real_load(path, p)
        alive[0] += 1
        most[0] = max(most[0], alive[0])
        return film.view(Film), decoded

    monkeypatch.setattr(xraynet.imaging, "load", counting_load)
    return most


def test_fill_cache_agrees_with_decode_all_and_holds_few_films(dataset, tmp_path, monkeypatch):
    from xraynet.data import scan_dataset
    from xraynet.imaging import Preprocessing
    from xraynet.inference import decode_all, fill_cache

    root, _ = dataset
    items = scan_dataset(root).items
    prep = Preprocessing(image_size=32)
    x, ok, skipped = decode_all(items, prep, None, workers=2)
    most = _count_live_films(monkeypatch)
    with DecodeCache(tmp_path / "cache.h5", prep) as cache:
        real_put = cache.put
        # A store slower than decoding: decoded films would pile up without the window.
        monkeypatch.setattr(cache, "put", lambda *a: (time.sleep(0.003), real_put(*a)))
        keys, skipped_fill = fill_cache(items, cache, workers=2)
        assert skipped_fill == skipped and [k is not None for k in keys] == ok.tolist()
        for i in np.flatnonzero(ok)[::17]:
            row = np.empty((32, 32), np.float32)
            assert cache.read_into(keys[i], row)
            np.testing.assert_array_equal(row, x[i])
    assert 0 < most[0] <= 12, most[0]  # the decode window (4 per worker, plus the two in hand)


def test_predict_items_scores_as_the_stack_does_holding_one_batch(dataset, tmp_path, monkeypatch):
    # Evaluation scores films batch by batch as they decode: the same probabilities as the
    # whole stack through predict(), for each variant, with a batch of films alive at a time.
    from xraynet.data import scan_dataset
    from xraynet.evaluate import masked_variants
    from xraynet.imaging import Preprocessing
    from xraynet.inference import decode_all, predict, predict_items
    from xraynet.model import Model

    from helpers import TRAIN_SPEC

    root, _ = dataset
    items = scan_dataset(root).items
    prep = Preprocessing(image_size=32)
    model = Model(TRAIN_SPEC, seed=0)
    x, ok, skipped = decode_all(items, prep, None, workers=2)
    variants = masked_variants(32, per_image=True)
    most = _count_live_films(monkeypatch)
    proba, ok_items, skipped_items = predict_items(model, items, prep, tmp_path / "cache.h5", 2, 4, variants)
    assert ok_items.tolist() == ok.tolist() and skipped_items == skipped
    keep = np.flatnonzero(ok)
    np.testing.assert_allclose(proba["full"][keep], predict(model, x[keep], 4), rtol=0, atol=1e-6)
    for name, vary in variants.items():
        np.testing.assert_allclose(proba[name][keep], predict(model, vary(x[keep]), 4), rtol=0, atol=1e-6)
    assert np.isnan(proba["full"][~ok]).all()
    assert 0 < most[0] <= 4 + 12, most[0]  # a batch of 4 plus the decode window
