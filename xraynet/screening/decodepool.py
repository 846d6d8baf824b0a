"""The local screening path: files decoded by worker threads or worker processes, a batch
ahead of the network.

:class:`DecodePool` runs :func:`~xraynet.screening.batch.decode_image` on
``workers`` threads or ``workers`` processes; :func:`screen_local` submits a
batch ahead while the network runs on the current one (``--cluster`` runs
batches on Dask instead, :mod:`~xraynet.screening.cluster`). :func:`pool_kind`
picks the kind for ``"auto"``.

Why processes. Decoding a film holds the GIL for part of its time (pydicom
parses datasets in Python; the decoders' checks, the per-block conversions and
the small NumPy steps of preprocessing run in the interpreter), and the
network's thread holds it between its kernels, so decoding threads stop
scaling long before the cores run out. Worker processes share no GIL.

How. Processes are started with ``spawn``: never ``fork``, because by the time
a run decodes, this process may have Numba and BLAS thread pools (a forked
child inherits their locks in whatever state they were) and holds the report's
lock file open. Start-up costs about 0.3-0.5 s (a fresh interpreter imports
NumPy, Pillow and xraynet), paid in the workers while the calling process
loads the model. Each worker limits BLAS/OpenMP to one thread (N workers on N
cores, not N x N threads), ignores SIGINT (Ctrl-C is the calling process's to
handle; a worker would print a traceback), and exits when the calling
process dies (``kill -9`` included: otherwise spawned workers would wait on
their task queue forever). What crosses the process boundary is small: an
:class:`~xraynet.screening.batch.ImageFile` and the
:class:`~xraynet.imaging.Preprocessing` in, a
:class:`~xraynet.screening.batch.Decoded` out (the float32 network input,
(width, height, warnings) or the report's error text). Library warnings are
collected inside the worker, per file, exactly as in a thread.

A worker that dies (the OOM killer, a codec that crashes the interpreter)
breaks a process pool: the files not yet decoded are then decoded in threads,
and :attr:`DecodePool.warnings` says so (the run puts it in its Summary).

A script that calls :func:`~xraynet.screening.screen` with the process pool
must guard its top level with ``if __name__ == "__main__":`` (``spawn``
imports the main module in each worker). Without the guard, the call the
import makes in a starting worker fails at once (:func:`refuse_in_starting_worker`:
it must not wait for the report's lock the calling process holds), that
worker stops, and the run falls back to threads with that warning.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..errors import ScreenError
from .batch import BatchSettings, Decoded, ImageFile, decode_image, infer_batch, load_screening_model

__all__ = ["DecodePool", "NetworkThreads", "POOL_KINDS", "pool_kind", "screen_local", "usable_cores",
           "refuse_in_starting_worker", "MIN_PROCESS_FILES", "MIN_PROCESS_WORKERS"]

#: What ``ScreenJob.pool`` accepts.
POOL_KINDS = ("auto", "threads", "processes")

#: ``"auto"`` uses processes only for at least this many files: below it, starting the
#: workers (0.4-0.8 s measured) costs more than a GIL-bound thread pool loses.
MIN_PROCESS_FILES = 64

#: ``"auto"`` uses processes only with at least this many workers and usable cores. On the
#: 2-core machine measured (AMD EPYC, shared), decoding PNG and JPEG films spent 1-10% of
#: each thread's time waiting for the GIL, and 2 threads were as fast as 2 processes, which
#: pay their start-up; the share of the GIL grows with the number of threads (and is most of
#: the time for pydicom's pure-Python RLE decoder), so from 3 workers on processes win.
MIN_PROCESS_WORKERS = 3


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def pool_kind(kind: str, workers: int, n_files: int) -> str:
    """``"threads"`` or ``"processes"`` for a run that decodes ``n_files`` files on ``workers``
    workers. ``kind`` ``"threads"`` / ``"processes"`` is taken as it is; ``"auto"`` gives processes
    when there are at least :data:`MIN_PROCESS_WORKERS` workers and usable cores and
    :data:`MIN_PROCESS_FILES` files."""
    if kind != "auto":
        return kind
    many = min(workers, usable_cores()) >= MIN_PROCESS_WORKERS and n_files >= MIN_PROCESS_FILES
    return "processes" if many else "threads"


def refuse_in_starting_worker() -> None:
    """Raise :class:`ScreenError` when called while this process is a worker that is still
    starting (importing the main module of the process that started it): a screening run
    there would wait for the lock of the run that is starting it, which waits for the worker."""
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):  # set by spawn while it imports main
        raise ScreenError("screen: called while a worker process starts (its import of the main script ran the "
                          "call). Expected the calling script's top level under if __name__ == '__main__':, got "
                          "a screening call at import. Guard the script's top level.")


def _watch_parent() -> None:
    """In a worker: exit as soon as the process that started it is gone."""
    import multiprocessing
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is not None:
        wait([parent.sentinel])  # readable (EOF) when the parent's end closes: it exited or was killed
        os._exit(0)


def _init_worker() -> None:
    """Runs once in each worker process before its first file."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, name="xraynet-parent-watch", daemon=True).start()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=1)  # kept for the process's life (not used as a context manager)
    except ImportError:  # a dependency, but decoding does not need it to be right
        pass


class DecodePool:
    """Decode files on ``workers`` threads (``kind="threads"``) or processes (``"processes"``).

    ``submit(f, prep)`` starts one :class:`~xraynet.screening.batch.ImageFile`;
    ``result(pending)`` gives its :class:`~xraynet.screening.batch.Decoded` (never
    raises for a bad file, see :func:`~xraynet.screening.batch.decode_image`). Use as a
    context manager, or call :meth:`close`. ``warnings``: notes for the run's Summary
    (a broken process pool)."""

    def __init__(self, workers: int, kind: str = "threads"):
        if kind not in ("threads", "processes"):
            raise ScreenError(f"DecodePool: invalid kind. Expected 'threads' or 'processes', got {kind!r}. "
                              f"Resolve 'auto' with pool_kind() first.")
        self.workers = max(1, int(workers))
        self.kind = kind
        self.warnings: list[str] = []
        if kind == "processes":
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        else:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="xraynet-decode")

    def submit(self, f: ImageFile, prep) -> tuple[Future, ImageFile, object]:
        """Start decoding ``f`` for ``prep``; pass what it returns to :meth:`result`."""
        try:
            return self._executor.submit(decode_image, f, prep), f, prep
        except BrokenProcessPool as e:
            self._fall_back(e)
            return self._executor.submit(decode_image, f, prep), f, prep

    def result(self, pending: tuple[Future, ImageFile, object]) -> Decoded:
        """The :class:`~xraynet.screening.batch.Decoded` of a :meth:`submit`; waits for it."""
        future, f, prep = pending
        try:
            return future.result()
        except BrokenProcessPool as e:
            self._fall_back(e)
            return self._executor.submit(decode_image, f, prep).result()

    def _fall_back(self, error: BaseException) -> None:
        """Replace a broken process pool by threads, with a note for the Summary. Files
        submitted before the switch fail one by one afterwards: the switch happens once."""
        if self.kind == "threads":
            return
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.kind = "threads"
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="xraynet-decode")
        self.warnings.append(f"decoding processes: a worker process stopped ({type(error).__name__}: {error}). "
                             f"Expected {self.workers} worker processes to the end of the run, got a broken "
                             f"process pool. The remaining files were decoded in threads; every file has its row. "
                             f"If this repeats: a script that calls screen() must keep its top level under "
                             f"if __name__ == '__main__':, else look for a file that crashes a decoder, or pass "
                             f"--pool threads.")

    def close(self) -> None:
        """Stop the workers (files not started are dropped; running ones finish first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NetworkThreads:
    """The host threads the network runs on while the decoders share the cores with it: the
    cores in proportion to the network's share of the CPU work so far, at least one.

    Why. Decoding and the network run on the same cores, so a run's throughput is set by
    their CPU time together; threads beyond the network's share only add the cost of
    splitting its batches (on the 2-core EPYC, 2 threads instead of 1 took 0.4-0.5 ms more
    CPU a film, 5% of the run: 122 against 128 films/s with decoding threads). With many
    cores the share gives the network more (16 cores, a network at a tenth of the work: 2).
    Decoding time is what the workers measured per file (wall time, close to CPU time when
    each has its core); the network's is its batches' time times its threads. The backend's
    thread count is put back when the run ends."""

    def __init__(self, backend, cores: int):
        self.backend, self.cores = backend, max(1, int(cores))
        self.threads = 1
        self.before = backend.set_threads(1)
        self.network_s = self.decode_s = 0.0

    def update(self, result) -> None:
        """Count one batch's :class:`~xraynet.screening.batch.BatchResult` and set the threads."""
        self.network_s += result.network_seconds * self.threads
        self.decode_s += sum(result.decode_seconds)
        total = self.network_s + self.decode_s
        threads = min(self.cores, max(1, round(self.cores * self.network_s / total))) if total > 0 else 1
        if threads != self.threads:
            self.backend.set_threads(threads)
            self.threads = threads

    def restore(self) -> None:
        self.backend.set_threads(self.before)


def screen_local(batches, decoders: DecodePool, writer, settings: BatchSettings) -> None:
    """The local screening loop: decode a batch ahead in ``decoders`` while this thread runs the
    network on the current one (on :class:`NetworkThreads`), and hand each batch's result to
    ``writer`` (a :class:`~xraynet.screening.writer.BatchWriter`). ``batches``: [[(ImageFile, sha256)]]."""
    model, prep = load_screening_model(settings)

    def submit(batch):
        return [decoders.submit(f, prep) for f, _ in batch]

    threads = NetworkThreads(model.bk, usable_cores())
    try:
        ahead = submit(batches[0])
        for k, batch in enumerate(batches):
            current = ahead
            ahead = submit(batches[k + 1]) if k + 1 < len(batches) else None  # decoded while the net runs
            decoded = [decoders.result(p) for p in current]
            result = infer_batch(model, settings, [f.key for f, _ in batch], decoded)
            threads.update(result)
            writer.append(batch, result)
    finally:
        threads.restore()
