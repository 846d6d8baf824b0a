"""The checks a screening run makes before it takes the report's lock: the folder and
``--out`` paths, the heatmap folder, the options, the device (and cluster), and the model
file with its screening class and threshold (:func:`read_model`). ``job`` is a
:class:`~xraynet.screening.run.ScreenJob` throughout. Each raises
:class:`~xraynet.errors.ScreenError` (exit 2) with a message saying what to change."""
from __future__ import annotations

import math
import os
from pathlib import Path

from ..atomic import special_file_kind
from ..discovery import display_path
from ..errors import ScreenError
from .batch import BatchSettings
from .decodepool import POOL_KINDS
from .report import ReportFiles
from .writer import ROW_VERSION

__all__ = ["check_paths", "check_heatmaps", "check_options", "check_device", "read_model"]


def check_paths(job) -> None:
    folder_p, out_p = Path(job.folder), Path(job.out)
    if not folder_p.is_dir():
        got = "a file" if folder_p.exists() else "nothing at that path"
        raise ScreenError(f"{display_path(job.folder)}: cannot screen it. Expected a folder of images, got {got}. "
                          f"Check the path.")
    if out_p.is_dir():
        raise ScreenError(f"{display_path(job.out)}: cannot write the report there. Expected a file path such as "
                          f"report.csv, got a directory. Give a file name.")
    for p, what in ((out_p, "the report"), (ReportFiles.of(out_p).lock, "the report's lock file")):
        if special_file_kind(p) is not None:
            # A device, FIFO or socket: replacing it would destroy it (as root, /dev/null), reading it
            # could block or never end (/dev/zero).
            raise ScreenError(f"{display_path(p)}: cannot use it as {what}. Expected a regular file or no file, got "
                              f"{special_file_kind(p)}. Give another --out.")
    parent = out_p.parent
    if not parent.is_dir():
        got = f"the file {display_path(parent)}" if parent.exists() else f"missing {display_path(parent)}"
        raise ScreenError(f"{display_path(job.out)}: the report's folder does not exist. Expected an existing "
                          f"folder, got {got}. Create it first.")


def check_heatmaps(job) -> str | None:
    """The heatmap folder made absolute (None without one), refused inside the screened folder
    and where a file stands."""
    if job.heatmaps is None:
        return None
    # The heatmap column then names each overlay by an absolute path: a page or a person
    # reading the report from another working folder still finds them.
    heatmaps = os.path.abspath(job.heatmaps)
    if os.path.exists(heatmaps) and not os.path.isdir(heatmaps):
        raise ScreenError(f"{display_path(heatmaps)}: cannot put heatmaps there. Expected a folder (created when "
                          f"missing), got a file. Pass another --heatmaps folder.")
    inside, top = Path(os.path.realpath(heatmaps)), Path(os.path.realpath(job.folder))
    if inside == top or top in inside.parents:
        raise ScreenError(f"{display_path(heatmaps)}: the heatmaps folder lies inside the screened folder "
                          f"{display_path(Path(job.folder))}. Expected a folder outside it, got one inside (the "
                          f"overlays would be screened as films the next night). Pass --heatmaps beside "
                          f"the report.")
    return heatmaps


def check_options(job) -> None:
    n = job.batch_size
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScreenError(f"batch_size: invalid. Expected an integer >= 1, got {n!r}. Pass --batch-size 32.")
    n = job.workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScreenError(f"workers: invalid. Expected an integer >= 1, got {n!r}. Pass --workers 2.")
    if job.pool not in POOL_KINDS:
        raise ScreenError(f"pool: invalid. Expected one of {', '.join(POOL_KINDS)}, got {job.pool!r}. "
                          f"Pass pool='auto'.")
    if job.on_lock not in ("fail", "wait"):
        raise ScreenError(f"on_lock: invalid. Expected 'fail' or 'wait', got {job.on_lock!r}. Pass one of them.")


def check_device(job):
    """(normalised device name, ClusterSpec or None); fails before anything is written."""
    from ..devices import normalise

    device = normalise(job.device)  # 'cuda' -> 'gpu'; an unknown name fails here
    if job.cluster is None:
        from ..backends import get_backend

        # A GPU that cannot be used fails now, not after the report is created and files hashed.
        # With --cluster the workers make their own backend: this machine may have no GPU.
        get_backend(device)
        return device, None
    from .cluster import ClusterSpec

    return device, ClusterSpec.parse(job.cluster, job.cluster_timeout, check_installed=not job.dry_run)


def read_model(job, device: str, heatmaps: str | None) -> BatchSettings:
    from ..modelfile import bundled_model_path, read_info

    model_file = Path(job.model_path) if job.model_path is not None else bundled_model_path()
    info = read_info(model_file)
    classes = tuple(info["classes"])
    cls, thr = _resolve_threshold(info, job.threshold, job.screening_class, model_file)
    name = f"{info['architecture'].get('name', 'model')} ({model_file.name})"
    return BatchSettings(model_file, info["weights_sha256"], name, classes, cls, thr, device, heatmaps,
                         row_version=ROW_VERSION)


def _resolve_threshold(info: dict, threshold, screening_class, model_path) -> tuple[str, float]:
    classes = list(info["classes"])
    stored = info["metadata"].get("threshold") if isinstance(info["metadata"].get("threshold"), dict) else {}
    cls = screening_class or stored.get("class") or ("covid" if "covid" in classes else classes[-1])
    if cls not in classes:
        raise ScreenError(f"{model_path}: screening class {cls!r} is not a class of this model. Expected one of "
                          f"{classes}, got {cls!r}. Pass a class the model predicts.")
    value = threshold if threshold is not None else stored.get("value")
    if value is None:
        raise ScreenError(f"{model_path}: no screening threshold stored in the model. Expected metadata "
                          f"threshold.value or a threshold option, got neither. Pass --threshold.")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value)
                                                                             and 0.0 <= value <= 1.0):
        raise ScreenError(f"threshold: not a probability. Expected a number from 0 to 1, got {value!r}. "
                          f"Pass --threshold between 0 and 1.")
    return cls, float(value)
