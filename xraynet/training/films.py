"""The films a run trains on, read a batch at a time.

Training reads its films from the decode cache on disk (:class:`CachedFilms`)
rather than holding them all in memory, so its memory does not grow with the
dataset: a batch is read when it is needed, by a background thread one or two
batches ahead of the network (:class:`Prefetch`). :class:`ArrayFilms` holds
every film in memory behind the same ``read``: the films as training decoded
them before it streamed (``train(..., in_memory=True)``), the reference the
streaming path is checked against.

Bit-identical batches. ``read(idx)`` returns exactly ``x[idx]`` of the stack
the films would make in memory: the cache stores the decoder's float32 arrays
bit for bit and checks each entry's SHA-256 on every read. Batch order and
every random draw are made on the training thread as before; the reader only
fetches. So a streamed run and an in-memory run give the same weights.

Why a thread is enough. Reading one 128 px film costs about 0.1 ms, a third
of it the checksum (h5py drops the GIL in ``H5Dread``, hashlib while hashing),
against some 300 ms for a training step of 32 films on two cores, during which
the Numba kernels run without the GIL. Memory: the reader holds at most
``PREFETCH_DEPTH`` + 1 batches, and the cache file's HDF5 objects do not grow
with the number of films (:mod:`xraynet.decodecache`).

A damaged entry. The cache's crash rules promise a damaged entry costs a
recomputation, never a wrong array: :class:`CachedFilms` decodes the image
file again, after checking that its bytes are still those the run started
with, and stores it again. An image file that changed or vanished since then
cannot give the same film back, so that raises a CacheError.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterable

import numpy as np

from ..errors import CacheError, message

#: Batches the reader thread may hold ready ahead of the one being trained on.
PREFETCH_DEPTH = 2


class ArrayFilms:
    """Films held in memory: ``x`` (N, S, S) float32. Memory grows with N; the reference
    for :class:`CachedFilms`."""

    def __init__(self, x: np.ndarray):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def read(self, idx) -> np.ndarray:
        """The films ``idx`` (ints, repeats allowed) as a new (len(idx), S, S) float32 array."""
        return self.x[np.asarray(idx, np.int64)]


class CachedFilms:
    """Films read from an open :class:`~xraynet.decodecache.DecodeCache` ``cache``: film
    ``k`` is ``items[k]``'s image (objects with ``path`` and ``rel``), stored under
    ``keys[k]``, its file's :func:`~xraynet.decodecache.file_sha256`
    (:func:`xraynet.inference.fill_cache` gives them). Holds no film between reads; the
    caller closes ``cache`` (the training and validation films share one)."""

    def __init__(self, cache, items: list, keys: list):
        if len(items) != len(keys) or any(k is None for k in keys):
            raise ValueError("CachedFilms: one cache key per item expected, and no None")
        self.cache, self.items, self.keys = cache, list(items), list(keys)

    def __len__(self) -> int:
        return len(self.items)

    def read(self, idx) -> np.ndarray:
        """The films ``idx`` (ints, repeats allowed) as a new (len(idx), S, S) float32 array.
        CacheError when a damaged entry cannot be rebuilt (:meth:`_rebuild`)."""
        size = self.cache.prep.image_size
        idx = np.asarray(idx, np.int64)
        out = np.empty((len(idx), size, size), np.float32)
        for row, k in enumerate(idx.tolist()):
            if not self.cache.read_into(self.keys[k], out[row]):
                out[row] = self._rebuild(k)
        return out

    def _rebuild(self, k: int) -> np.ndarray:
        """Film ``k`` decoded again and stored again, after its entry went missing or bad
        (the cache has warned). CacheError when the image file no longer has the bytes the
        run started with: a different film would change the run."""
        from ..decodecache import file_sha256
        from ..errors import ImageError
        from ..imaging import load

        item, key = self.items[k], self.keys[k]
        try:
            now = file_sha256(item.path)
        except OSError as e:
            now = f"unreadable ({e.strerror or e})"
        if now == key:
            try:
                film = load(item.path, self.cache.prep)[0]
            except ImageError as e:
                now = f"undecodable ({e})"
            else:
                self.cache.put(item.path, film, key)
                return film
        raise CacheError(message(item.rel, "its decode cache entry went bad during training and the image file "
                                 "cannot give the same film back", f"file SHA-256 {key}", now,
                                 "Keep image files unchanged while a run trains on them; run again to start "
                                 "from the files as they are now"))


class Prefetch:
    """``films.read(idx)`` for each ``idx`` of ``batches``, in order, read by a background
    thread up to ``depth`` batches ahead. Iterate once (a second pass, or one after
    :meth:`close`, yields nothing); use as a context manager (or call :meth:`close`) so the
    thread ends when the consumer stops early.

    An exception in ``read`` is raised by the iteration at that batch, as it was raised
    (type, message, traceback through the reader thread); the thread has then ended."""

    _END = object()

    def __init__(self, films, batches: Iterable, depth: int = PREFETCH_DEPTH):
        #: Seconds the consumer waited for a batch that was not ready (benchmarks read it).
        self.waited = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(films, list(batches)),
                                        name="xraynet-prefetch", daemon=True)
        self._thread.start()

    def _run(self, films, batches: list) -> None:
        try:
            for idx in batches:
                if not self._offer((films.read(idx), None)):
                    return
        except BaseException as e:  # noqa: BLE001 -- whatever it is, the consumer raises it
            self._offer((None, e))
            return
        self._offer(self._END)

    def _offer(self, item) -> bool:
        """Queue ``item``, waiting while the queue is full; False once :meth:`close` asked
        the thread to stop."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        while True:
            t0 = time.perf_counter()
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                self.waited += time.perf_counter() - t0
                if self._thread.is_alive() or not self._queue.empty():
                    continue
                return  # closed, or iterated a second time: nothing more will come
            self.waited += time.perf_counter() - t0
            if item is self._END:
                return
            batch, error = item
            if error is not None:
                raise error
            yield batch

    def close(self) -> None:
        """Stop the thread (it finishes the read in progress) and wait for it; safe twice."""
        self._stop.set()
        while True:  # a full queue would keep the thread waiting in _offer until its timeout
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def predict_films(model, films, batch_size: int) -> np.ndarray:
    """Class probabilities (N, C) float64 of ``films`` (:class:`ArrayFilms` or
    :class:`CachedFilms`), ``batch_size`` films per network pass."""
    from ..inference import predict

    if isinstance(films, ArrayFilms):
        # The whole stack at once, as training did before it streamed: the reference path.
        return predict(model, films.x, batch_size)
    n = len(films)
    batches = [np.arange(b, min(b + batch_size, n)) for b in range(0, n, batch_size)]
    with Prefetch(films, batches) as reader:
        parts = [predict(model, x, batch_size) for x in reader]
    return np.concatenate(parts) if parts else np.zeros((0, model.num_classes))
