"""The one exception hierarchy of xraynet.

Every message follows one pattern so that a user reading it in a cron mail
knows what to do:

    <file or thing>: <what happened>. Expected <X>, got <Y>. <What to do>.
"""
from __future__ import annotations


class XraynetError(Exception):
    """Base class of every error xraynet raises on purpose."""


class SpecError(XraynetError, ValueError):
    """An architecture spec (built-in or JSON file) is malformed."""


class ShapeError(XraynetError, ValueError):
    """An array handed to a layer or kernel has the wrong shape or dtype."""


class ModelFileError(XraynetError):
    """A model file cannot be read, or is not a valid xraynet model."""


class BackendError(XraynetError, RuntimeError):
    """A compute backend is unknown or cannot be used on this machine."""


class MissingDependencyError(XraynetError, ImportError):
    """An optional dependency is needed for what was asked but not installed."""


def missing_dependency(package: str, extra: str, purpose: str) -> MissingDependencyError:
    """The error for an optional dependency, naming the install command."""
    return MissingDependencyError(
        f"{package}: not installed, but it is needed {purpose}. "
        f'Install it with: pip install "xraynet[{extra}]"'
    )


class DataError(XraynetError, ValueError):
    """A dataset folder, its metadata.csv, or a split request is unusable."""


class EvaluationError(XraynetError, ValueError):
    """Labels, probabilities or options handed to the metrics do not fit together."""


class ImageError(XraynetError):
    """An image file cannot be decoded (see xraynet.imaging).

    ``reason`` is one stable code that reports and scripts can match on:

    ``"empty"``               the file has zero bytes
    ``"truncated"``           the data really ends early: the file is shorter than its own headers say
    ``"damaged"``             the file is complete but its data is corrupt or its headers disagree
    ``"not_an_image"``        no supported image format recognises the file
    ``"unsupported_mode"``    an image whose pixel layout xraynet cannot turn into grayscale
    ``"too_large"``           more pixels than the decompression-bomb limit allows
    ``"unreadable"``          the operating system cannot read the file (missing, permissions, I/O)
    ``"dicom_unsupported"``   a DICOM file without pixel data, or one pydicom cannot decode
    ``"dicom_needs_pydicom"`` a DICOM file, but pydicom is not installed
    ``"unsupported_codec"``   a valid file whose compression or sample format no installed
                              decoder reads; the message names what to install

    ``path`` is the file (a str), or None.
    """

    REASONS = ("empty", "truncated", "damaged", "not_an_image", "unsupported_mode", "too_large", "unreadable",
               "dicom_unsupported", "dicom_needs_pydicom", "unsupported_codec")

    def __init__(self, message: str, reason: str, path=None):
        if reason not in self.REASONS:
            raise ValueError(f"ImageError reason {reason!r} is not one of {self.REASONS}")
        super().__init__(message)
        self.reason = reason
        self.path = None if path is None else str(path)

    def __reduce__(self):
        # Screening may decode in worker processes; the default reduce would
        # rebuild the error from the message alone and lose the reason.
        return (type(self), (str(self), self.reason, self.path))


class CacheError(XraynetError):
    """A decode cache file cannot be used (in use elsewhere, or not an xraynet cache)."""


class ScreenError(XraynetError, ValueError):
    """Screening cannot start: the folder, an option, or the report file cannot be used."""


class ReportLockedError(ScreenError):
    """Another ``xraynet screen`` run holds the lock of the same report (``<report>.lock``)."""


class ReportWriteError(ScreenError):
    """A screening output cannot be written: the report, its ``.lock`` or ``.tmp`` file, or a
    heatmap PNG (read-only folder, disk full, I/O error). Rows that were durable before stay in
    the report; running the same command again once the cause is fixed screens the rest."""
