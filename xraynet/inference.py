"""Films in, probabilities out, for a whole list of dataset images at once.

Training fills the on-disk decode cache once (:func:`fill_cache`) and then
reads its films from there a batch at a time (:mod:`xraynet.training.films`),
so its memory does not grow with the dataset. Evaluation runs the network on
batches as their films decode (:func:`predict_items`, cache optional), keeping
only the probabilities. :func:`decode_all` still makes one stack in memory
(the in-memory training path the tests compare with). Screening works file by
file instead (:mod:`xraynet.screening`): its report must survive a kill at any
moment.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Callable, Iterator

import numpy as np

from .errors import ImageError, message

#: Files a decoding worker may run ahead of the one being stored, per worker: enough to keep
#: every worker busy, few enough that decoded arrays waiting to be stored stay a handful.
_AHEAD_PER_WORKER = 4


def decode_all(items, prep, cache_path, workers: int, progress: Callable[[int, int], None] | None = None):
    """Decode and preprocess every item's image into one stack in memory.

    ``items``: objects with ``path`` and ``rel`` (:class:`xraynet.data.Item`);
    ``prep``: a :class:`xraynet.imaging.Preprocessing`; ``cache_path``: the decode
    cache file, or None for no cache; ``workers``: decoding threads (at least 1 is
    used); ``progress(done, total)`` is called as files finish.

    Returns ``(x, ok, skipped)``: ``x`` (N, S, S) float32 with S =
    ``prep.image_size`` (zeros where a file could not be read), ``ok`` (N,) bool,
    and ``skipped`` a list of ``(rel, reason, message)`` for each unreadable file
    (``reason`` an :class:`~xraynet.errors.ImageError` code). Memory grows with N
    (N * S * S * 4 bytes); training uses :func:`fill_cache` instead. Raises
    :class:`~xraynet.errors.CacheError` when the cache file cannot be used."""
    from .decodecache import DecodeCache

    n, size = len(items), prep.image_size
    out = np.zeros((n, size, size), np.float32)
    ok = np.zeros(n, bool)
    skipped = []
    with (DecodeCache(cache_path, prep) if cache_path else _NoCache(prep)) as cache:
        digests = _digests(items, hashed=bool(cache_path))
        for i, arr, err in _through_cache(items, cache, digests, workers, progress):
            if err is None:
                out[i], ok[i] = arr, True
            else:
                skipped.append((items[i].rel, err.reason, str(err)))
    return out, ok, skipped


def predict_items(model, items, prep, cache_path, workers: int, batch_size: int, variants: dict | None = None,
                  progress: Callable[[int, int], None] | None = None):
    """Class probabilities of every item's image, a batch at a time as the films decode: the
    films themselves are never held together, so memory does not grow with the number of items.

    ``model``: a :class:`~xraynet.model.Model`; ``items``, ``prep``, ``cache_path``, ``workers``
    and ``progress`` as in :func:`decode_all`; ``batch_size``: images per network pass;
    ``variants``: ``{name: f}`` with ``f`` taking a batch of preprocessed films (B, S, S)
    float32 and returning another (e.g. with a region blanked), each also scored.

    Returns ``(proba, ok, skipped)``: ``proba`` ``{"full": (N, C) float64, name: ...}``
    (NaN rows where a file could not be read), ``ok`` (N,) bool and ``skipped`` as in
    :func:`decode_all`. Raises :class:`~xraynet.errors.CacheError` when the cache file
    cannot be used."""
    from .decodecache import DecodeCache

    n = len(items)
    variants = {"full": None, **(variants or {})}
    proba = {name: np.full((n, model.num_classes), np.nan) for name in variants}
    ok = np.zeros(n, bool)
    skipped = []
    batch, where = [], []

    def flush():
        xb = np.stack(batch)
        for name, vary in variants.items():
            proba[name][where] = predict(model, xb if vary is None else vary(xb), batch_size)
        batch.clear()
        where.clear()

    with (DecodeCache(cache_path, prep) if cache_path else _NoCache(prep)) as cache:
        digests = _digests(items, hashed=bool(cache_path))
        for i, arr, err in _through_cache(items, cache, digests, workers, progress):
            if err is not None:
                skipped.append((items[i].rel, err.reason, str(err)))
                continue
            ok[i] = True
            batch.append(arr)
            where.append(i)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return proba, ok, skipped


def fill_cache(items, cache, workers: int, progress: Callable[[int, int], None] | None = None):
    """Make sure the open :class:`~xraynet.decodecache.DecodeCache` ``cache`` holds every
    readable item's image preprocessed with ``cache.prep``, decoding those it lacks; a
    damaged entry is decoded again. At most a few decoded arrays are held at any time,
    however many items there are. Arguments as in :func:`decode_all`.

    Returns ``(keys, skipped)``: ``keys`` one entry per item, the
    :func:`~xraynet.decodecache.file_sha256` its image is stored under, None for a file
    that could not be read; ``skipped`` as in :func:`decode_all`. Raises CacheError when
    the cache cannot be used."""
    digests = _digests(items, hashed=True)
    keys: list = [None] * len(items)
    skipped = []
    for i, _, err in _through_cache(items, cache, digests, workers, progress):
        if err is None and digests[i] is None:
            # Decoded, yet the checksum read failed: the file changed under us. Without a key
            # the image cannot be stored, so training cannot read it back.
            err = ImageError(message(items[i].path, "could not be read for its checksum (the decode cache key)",
                                     "a readable regular file", "a read error",
                                     "Check its permissions and that nothing replaces it during the run"),
                             "unreadable", items[i].path)
        if err is None:
            keys[i] = digests[i]
        else:
            skipped.append((items[i].rel, err.reason, str(err)))
    return keys, skipped


def _digests(items, hashed: bool) -> list:
    """Each file's SHA-256, the cache key; None without a cache, and where the file cannot
    be read (the decoder then says why)."""
    from .decodecache import file_sha256

    def digest(path):
        try:
            return file_sha256(path) if hashed else None
        except OSError:
            return None

    return [digest(it.path) for it in items]


def _through_cache(items, cache, digests: list, workers: int, progress) -> Iterator[tuple]:
    """``(i, array, None)`` for each item whose image ``cache`` holds under ``digests[i]`` or
    that decodes (then stored there), ``(i, None, ImageError)`` for the others; cache hits
    first, then the decoded items in index order. ``progress(done, total)`` as they finish."""
    from .imaging import load

    n, todo = len(items), []
    for i in range(n):
        hit = cache.get(items[i].path, digests[i]) if digests[i] else None
        if hit is None:
            todo.append(i)
        else:
            yield i, hit, None
    done = n - len(todo)
    if progress:
        progress(done, n)

    def work(i):
        try:
            return i, load(items[i].path, cache.prep)[0], None
        except ImageError as e:
            return i, None, e

    for i, arr, err in _in_order(work, todo, workers):
        if err is None and digests[i]:
            cache.put(items[i].path, arr, digests[i])
        done += 1
        if progress:
            progress(done, n)
        yield i, arr, err


def _in_order(work, todo: list, workers: int) -> Iterator:
    """``work(i)`` for each ``i`` of ``todo``, in that order, on ``workers`` threads with at
    most ``_AHEAD_PER_WORKER * workers`` results waiting (``Executor.map`` would queue all)."""
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        rest = iter(todo)
        pending = deque(pool.submit(work, i) for i in islice(rest, _AHEAD_PER_WORKER * workers))
        while pending:
            result = pending.popleft().result()
            pending.extend(pool.submit(work, i) for i in islice(rest, 1))
            yield result


class _NoCache:
    """Stands in for DecodeCache when no cache file is wanted."""

    def __init__(self, prep):
        self.prep = prep

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def get(self, path, digest=None):
        return None

    def put(self, path, array, digest=None):
        pass


def predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) float64 of preprocessed images ``x`` (N, S, S) float32,
    ``batch_size`` images per network pass (the model's :meth:`~xraynet.model.Model.predict_proba`)."""
    return model.predict_proba(x[:, None, :, :], batch_size=batch_size)
