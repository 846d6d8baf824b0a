"""The per-batch work of screening: decode -> preprocess -> network -> heatmaps, as a small result.

The same functions run on the calling process (decoding in a thread pool a
batch ahead of the network) and on Dask workers (:mod:`xraynet.screening.cluster`).
Nothing here touches the report: a batch's :class:`BatchResult` goes back to
the one writer (:class:`xraynet.screening.writer.BatchWriter`), which turns it
into rows. Everything that crosses to a worker and back -- :class:`ImageFile`,
:class:`BatchSettings`, :class:`BatchResult` -- is small and picklable; no
pixels travel.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import ImageError
from .report import write_error

__all__ = ["ImageFile", "BatchSettings", "Decoded", "BatchResult", "decode_image", "infer_batch", "screen_batch",
           "load_screening_model", "heatmap_path"]


@dataclass(frozen=True)
class ImageFile:
    """One image to screen. ``key``: its path relative to the folder as
    :func:`xraynet.discovery.encode_path` text (the report's ``path`` before the
    spreadsheet guard); ``path``: where to open it; ``version``: the
    :func:`~xraynet.decodecache.file_version` its row's ``sha256`` was read at (None:
    not checked), which :func:`decode_image` holds the decoded file to."""

    key: str
    path: str
    version: tuple | None = None


@dataclass(frozen=True)
class BatchSettings:
    """What every batch of one run shares. ``model_path``: the model file;
    ``model_sha256``: its ``weights_sha256``; ``model_name``: the report's
    ``model`` text, ``<architecture> (<file name>)``; ``classes``: the model's
    class names in output order; ``screening_class`` and ``threshold``: a file
    is flagged when ``p[screening_class] >= threshold``; ``device``: where the
    network runs ('auto', 'cpu', 'gpu'); ``heatmaps``: the absolute folder for
    the Grad-CAM overlays of flagged images, or None; ``row_version``: the
    report's ``xraynet_version`` for the rows (:data:`~.writer.ROW_VERSION` of
    the process that writes them), which a Dask worker must share."""

    model_path: Path | str
    model_sha256: str
    model_name: str
    classes: tuple
    screening_class: str
    threshold: float
    device: str = "cpu"
    heatmaps: str | None = None
    row_version: str = ""

    @property
    def class_index(self) -> int:
        """Index of the screening class in the model's output."""
        return self.classes.index(self.screening_class)


class Decoded(NamedTuple):
    """One file after :func:`decode_image`: ``pixels`` (float32 (size, size), the network's
    input) and ``meta`` ((width, height, warning codes) of the decoded film), or ``error`` (the
    report's error text, ``<reason>: <message>``); ``seconds`` spent decoding."""

    pixels: np.ndarray | None
    meta: tuple | None
    error: str | None
    seconds: float


@dataclass
class BatchResult:
    """What running the network on one batch gives, per file in batch order: ``proba`` (array
    of class probabilities, or None), ``meta`` ((width, height, warnings) or None), ``error``
    (error text or None), ``decode_seconds``; plus ``heat``, the indices in the batch whose
    heatmap was written, and the batch's ``network_seconds``."""

    proba: list
    meta: list
    error: list
    decode_seconds: list
    heat: set
    network_seconds: float


def decode_image(f: ImageFile, prep) -> Decoded:
    """Decode and preprocess one file (``prep``: :class:`xraynet.imaging.Preprocessing`).
    Never raises for a bad file (but ``MemoryError``): an :class:`ImageError` becomes its
    reason and message (with the file's ``key`` for its path), anything else
    ``internal_error``: one odd file must not stop the night's screening. The file must be
    the version it was hashed at (``f.version``, when set; :func:`xraynet.imaging.decode`):
    one written, replaced or removed since gives the error ``changed``, since its row's
    ``sha256`` would name bytes other than the ones screened."""
    from ..imaging import load

    t0 = time.perf_counter()
    try:
        x, d = load(f.path, prep, version=f.version)
        return Decoded(x, (d.width, d.height, d.warnings), None, time.perf_counter() - t0)
    except ImageError as e:
        # Messages start with the path the decoder was given; the report shows the relative one.
        msg = str(e).replace(str(Path(f.path)), f.key)
        return Decoded(None, None, f"{e.reason}: {msg}", time.perf_counter() - t0)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 -- one odd file must not stop the night's screening
        return Decoded(None, None, (f"internal_error: {f.key}: decoding failed unexpectedly "
                                    f"({type(e).__name__}: {e}). Expected a decodable image or an ImageError, "
                                    f"got an exception. Report this file to the xraynet maintainers."),
                       time.perf_counter() - t0)


def load_screening_model(settings: BatchSettings):
    """(model, preprocessing) of ``settings.model_path`` on ``settings.device``."""
    from ..imaging import Preprocessing
    from ..modelfile import load_model

    loaded = load_model(settings.model_path, device=settings.device)
    return loaded.model, Preprocessing.from_dict(loaded.preprocessing)


def infer_batch(model, settings: BatchSettings, keys, decoded) -> BatchResult:
    """Run the network on one batch of :func:`decode_image` results (``keys``: the files' keys,
    in the same order) and write the heatmaps of its flagged images."""
    ok = [i for i, d in enumerate(decoded) if d.error is None]
    proba, x, net_s = None, None, 0.0
    if ok:
        x = np.stack([decoded[i].pixels for i in ok])[:, None]
        t0 = time.perf_counter()
        proba = model.predict_proba(x, batch_size=len(ok))
        net_s = time.perf_counter() - t0
    p_of = {i: proba[j] for j, i in enumerate(ok)}
    heat = _write_heatmaps(model, settings, keys, x, ok, p_of)
    return BatchResult([p_of.get(i) for i in range(len(decoded))], [d.meta for d in decoded],
                       [d.error for d in decoded], [d.seconds for d in decoded], heat, net_s)


def screen_batch(model, prep, settings: BatchSettings, files) -> BatchResult:
    """Decode ``files`` ([:class:`ImageFile`]) one after the other, then :func:`infer_batch`."""
    decoded = [decode_image(f, prep) for f in files]
    return infer_batch(model, settings, [f.key for f in files], decoded)


# The longest file name (NAME_MAX, 255 bytes on Linux, macOS and Windows file systems) less the
# 18 bytes the atomic write's temp name adds (xraynet.atomic: ".<name>.<12 hex>.tmp").
_NAME_BYTES = 255 - 18


def heatmap_path(folder, key: str) -> Path:
    """Where the overlay of the file ``key`` goes: ``folder/<key>.png``.

    * A folder of the key whose name ends in ``.png`` (any case) or ``~`` gets a ``~`` more,
      so no folder's name is ever an overlay's (the film ``a`` and the folder ``a.png/``
      would both want ``a.png``), and no two folders share one.
    * A part of the path longer than a file name may be (:data:`_NAME_BYTES` bytes of UTF-8;
      escaped bytes of names that are not UTF-8 take four characters each) is cut to fit and
      ends in ``~`` and 16 hex digits of the SHA-256 of the key up to that part, so two files
      never share one."""
    parts = (key + ".png").split("/")
    parts[:-1] = [p + "~" if p.lower().endswith((".png", "~")) else p for p in parts[:-1]]
    for i, part in enumerate(parts):
        raw = os.fsencode(part)
        if len(raw) > _NAME_BYTES:
            tag = "~" + hashlib.sha256("/".join(parts[:i + 1]).encode("utf-8", "surrogateescape")).hexdigest()[:16]
            end = ".png" if i == len(parts) - 1 else ""
            # cut at a character boundary: "ignore" drops a character the cut split
            parts[i] = raw[:_NAME_BYTES - len(tag) - len(end)].decode("utf-8", "ignore") + tag + end
    return Path(folder, *parts)


def _write_heatmaps(model, settings: BatchSettings, keys, x, ok, p_of) -> set:
    """Grad-CAM overlays for the flagged images of one batch: the set of their indices in the batch.

    The overlay is drawn on the network's own input (the preprocessed film), so
    it shows exactly what the model looked at."""
    if settings.heatmaps is None or x is None:
        return set()
    from ..heatmap import write_overlay_png

    ci = settings.class_index
    flagged = [j for j, i in enumerate(ok) if p_of[i][ci] >= settings.threshold]
    if not flagged:
        return set()
    cams = model.gradcam(x[flagged], ci)
    out = set()
    for j, cam in zip(flagged, cams):
        i = ok[j]
        path = heatmap_path(settings.heatmaps, keys[i])
        try:
            write_overlay_png(path, x[j, 0], cam)
        except OSError as e:
            raise write_error(path, e, "writing the heatmap PNG", "The rows of the batches finished before are "
                              "in the report; this batch's rows were not written.", "--heatmaps folder") from None
        out.add(i)
    return out
