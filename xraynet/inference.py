"""Films in, probabilities out, for a whole list of dataset images at once.

Training (validation each epoch, the threshold) and evaluation both decode a
list of :class:`xraynet.data.Item` once, through the on-disk decode cache,
and run the network over the stack. Screening works file by file instead
(:mod:`xraynet.screening`): its report must survive a kill at any moment.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

from .errors import ImageError


def decode_all(items, prep, cache_path, workers: int, progress: Callable[[int, int], None] | None = None):
    """Decode and preprocess every item's image.

    ``items``: objects with ``path`` and ``rel`` (:class:`xraynet.data.Item`);
    ``prep``: a :class:`xraynet.imaging.Preprocessing`; ``cache_path``: the decode
    cache file, or None for no cache; ``workers``: decoding threads (at least 1 is
    used); ``progress(done, total)`` is called as files finish.

    Returns ``(x, ok, skipped)``: ``x`` (N, S, S) float32 with S =
    ``prep.image_size`` (zeros where a file could not be read), ``ok`` (N,) bool,
    and ``skipped`` a list of ``(rel, reason, message)`` for each unreadable file
    (``reason`` an :class:`~xraynet.errors.ImageError` code). Raises
    :class:`~xraynet.errors.CacheError` when the cache file cannot be used."""
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


def predict(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) float64 of preprocessed images ``x`` (N, S, S) float32,
    ``batch_size`` images per network pass (the model's :meth:`~xraynet.model.Model.predict_proba`)."""
    return model.predict_proba(x[:, None, :, :], batch_size=batch_size)
