"""The Dask side of ``xraynet screen --cluster``: batches run on workers, the client writes.

Only the per-batch work of :mod:`xraynet.screening.batch` -- decode,
preprocess, run the network (and draw the heatmaps of flagged images) --
moves to the workers. The calling process stays the one writer of the report
and keeps every guarantee of :mod:`xraynet.screening` (lock, repair,
compaction, skip rule, one write()+fsync per batch, sorted rewrite, exit
codes): :func:`screen_batches` hands each completed batch to the same
:class:`~xraynet.screening.writer.BatchWriter` the local path uses.

Over the wire: a task is one batch of :class:`~xraynet.screening.batch.ImageFile`
(relative path, absolute path to open) plus the run's
:class:`~xraynet.screening.batch.BatchSettings` with absolute paths (the model
file, its ``weights_sha256``, the device, the screening class and threshold,
the heatmap folder). No pixels travel: **workers must see the folder, the
model file (and the heatmap folder) at the same absolute paths** (a shared
file system, or ``local:N``). A worker checks the model file's
``weights_sha256`` against the client's, and its own xraynet version and
decode pipeline (``row_version``) against the client's, and fails the run
when either differs.
The answer is a small :class:`~xraynet.screening.batch.BatchResult`
(probabilities, width/height/warnings or the error text, decode and network
seconds, indices with a heatmap); the SHA-256 of each file is computed by the
client and never leaves it.

Each worker process loads the model once and caches it (``_MODELS``, keyed by
model path, weights SHA-256 and device).

Failures: a worker that dies mid-task has its task re-run elsewhere by the
scheduler; since a batch's rows are written only when its future completes,
and only by the client, each file still gets exactly one row. A batch that
fails for good (an exception on the worker, ``KilledWorker`` after repeated
worker deaths, a lost scheduler) stops the run with a
:class:`~xraynet.errors.ScreenError` (exit 2); a worker that cannot write a
heatmap PNG (read-only folder, full disk) raises
:class:`~xraynet.errors.ReportWriteError` (exit 4), which reaches the client
as it is. Either way the rows of completed batches are already in the report
and the next run screens the rest.

``import xraynet.screening.cluster`` does not import Dask; it is imported on first use.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, replace

from ..errors import ScreenError, XraynetError, missing_dependency
from .batch import BatchSettings, ImageFile, load_screening_model, screen_batch

__all__ = ["ClusterSpec", "screen_batches", "run_batch_on_worker"]

_MODELS: dict = {}  # in each worker process: (model path, weights sha256, device) -> (model, preprocessing)


def _require_distributed():
    try:
        import distributed
    except ImportError:
        raise missing_dependency("dask[distributed]", "cluster", "to screen on a Dask cluster (--cluster)") from None
    return distributed


@dataclass(frozen=True)
class ClusterSpec:
    """``--cluster``: a scheduler ``address``, or ``local_workers`` > 0 for ``local:N``;
    ``timeout``: seconds to wait for the scheduler."""

    address: str | None
    local_workers: int
    timeout: float

    @classmethod
    def parse(cls, text, timeout=30.0, check_installed: bool = True) -> "ClusterSpec":
        """The spec of ``--cluster text``; :class:`ScreenError` for a bad address or timeout,
        :class:`~xraynet.errors.MissingDependencyError` without Dask (``check_installed``)."""
        if not isinstance(text, str) or not text.strip():
            raise ScreenError(f"cluster: invalid. Expected a Dask scheduler address such as tcp://host:8786 or "
                              f"local:N, got {text!r}. Pass --cluster tcp://host:8786 or --cluster local:2.")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ScreenError(f"cluster_timeout: invalid. Expected a number of seconds > 0, got {timeout!r}. "
                              f"Pass --cluster-timeout 30.")
        text = text.strip()
        if text.startswith("local:"):
            n = text[len("local:"):]
            if not (n.isdigit() and int(n) >= 1):
                raise ScreenError(f"cluster: invalid local cluster {text!r}. Expected local:N with N >= 1 worker "
                                  f"processes, got {n!r}. Pass e.g. --cluster local:2.")
            spec = cls(None, int(n), float(timeout))
        else:
            spec = cls(text, 0, float(timeout))
        if check_installed:
            _require_distributed()
        return spec


@contextmanager
def _connect(spec: ClusterSpec):
    """A connected ``distributed.Client``; for ``local:N`` a LocalCluster started here and closed after."""
    _require_distributed()
    from distributed import Client, LocalCluster

    if spec.local_workers:
        n = spec.local_workers
        threads = max(1, (os.cpu_count() or 1) // n)  # Numba threads per worker process: share the cores
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                               env={"NUMBA_NUM_THREADS": str(threads)})
        try:
            with Client(cluster, timeout=spec.timeout) as client:
                yield client
        finally:
            cluster.close()
        return
    try:
        client = Client(spec.address, timeout=spec.timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ScreenError(f"{spec.address}: cannot reach the Dask scheduler ({type(e).__name__}: {e}). Expected a "
                          f"running scheduler at this address, got no connection within {spec.timeout:g} s. "
                          f"Check the address and that `dask scheduler` runs there, raise --cluster-timeout, "
                          f"or use --cluster local:N.") from None
    try:
        yield client
    finally:
        client.close()


def _abs(path) -> str:
    """Absolute path without resolving symlinks (workers open the same path the client listed)."""
    path = os.fspath(path)
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def _load(settings: BatchSettings):
    """(model, preprocessing) for this worker, loaded once per process; :class:`ScreenError`
    when the file here is another model than the client's."""
    key = (settings.model_path, settings.model_sha256, settings.device)
    got = _MODELS.get(key)
    if got is None:
        from ..modelfile import read_info

        found = read_info(settings.model_path)["weights_sha256"]
        if found != settings.model_sha256:
            raise ScreenError(f"{settings.model_path}: on this worker the model file is another model. Expected "
                              f"weights SHA-256 {settings.model_sha256} (the client's), got {found}. Workers must "
                              f"see the same files at the same paths (shared file system).")
        got = load_screening_model(settings)
        _MODELS[key] = got
    return got


def run_batch_on_worker(settings: BatchSettings, files: list[ImageFile]):
    """Worker task: :func:`~xraynet.screening.batch.screen_batch` with this worker's cached model.
    :class:`ScreenError` when this worker runs another xraynet or decode pipeline than the
    client, whose version the rows will carry."""
    from .writer import ROW_VERSION

    if settings.row_version and settings.row_version != ROW_VERSION:
        raise ScreenError(f"a Dask worker runs xraynet {ROW_VERSION}, the client {settings.row_version}. Expected "
                          f"the same version on every worker (the report's xraynet_version says which one "
                          f"decoded each file), got another. Install the client's version on the workers.")
    model, prep = _load(settings)
    return screen_batch(model, prep, settings, files)


def _failed_batch(batch, e: Exception) -> ScreenError:
    return ScreenError(f"{batch[0][0].key} .. {batch[-1][0].key}: the cluster could not screen this batch "
                       f"({type(e).__name__}: {e}). Expected its results from a worker, got an error. The rows "
                       f"of completed batches are in the report; run the same command again to screen the rest.")


def screen_batches(spec: ClusterSpec, batches, writer, settings: BatchSettings) -> None:
    """Run ``batches`` ([[(ImageFile, sha256)]]) on the cluster; ``writer.append(batch, result)``
    each as it completes (``writer``: a :class:`~xraynet.screening.writer.BatchWriter`).

    At most 2 batches per worker are submitted at a time, so memory stays flat
    however large the folder."""
    from distributed import as_completed

    remote = replace(settings, model_path=_abs(settings.model_path),
                     heatmaps=_abs(settings.heatmaps) if settings.heatmaps is not None else None)
    with _connect(spec) as client:
        window = max(2, 2 * len(client.nthreads()))
        pending: dict = {}  # future -> index of its batch
        nxt = 0

        def submit():
            nonlocal nxt
            files = [ImageFile(f.key, _abs(f.path)) for f, _ in batches[nxt]]
            fut = client.submit(run_batch_on_worker, remote, files, pure=False)
            pending[fut] = nxt
            nxt += 1
            return fut

        done = as_completed([submit() for _ in range(min(window, len(batches)))])
        try:
            for fut in done:
                k = pending.pop(fut)
                try:
                    res = fut.result()
                except XraynetError:
                    raise
                except Exception as e:  # noqa: BLE001 -- KilledWorker, lost scheduler, a bug on the worker
                    raise _failed_batch(batches[k], e) from None
                fut.release()
                writer.append(batches[k], res)
                if nxt < len(batches):
                    done.add(submit())
        finally:
            for fut in pending:
                fut.cancel()
