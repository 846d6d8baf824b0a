"""The one exception hierarchy of xraynet.

Every message follows one pattern so that a user reading it in a cron mail
knows what to do:

    <file or thing>: <what happened>. Expected <X>, got <Y>. <What to do>.

:func:`message` writes that sentence from its five parts. Each class carries
the exit status the command line ends with when it catches one
(``exit_code``): 2 for every error (a usage error in the sense of the
commands: an option, a file or a folder that cannot be used), 3 when another
``xraynet screen`` run holds the report's lock, 4 when a screening output
cannot be written. ``xraynet.cli`` catches :class:`XraynetError` in one place
and exits with the error's ``exit_code``.
"""
from __future__ import annotations


def message(where, what: str, expected: str, got: str, todo: str) -> str:
    """``"<where>: <what>. Expected <expected>, got <got>. <todo>."``: the house pattern.

    ``where`` is the file or thing concerned (any object; formatted with str),
    ``todo`` what the user should do, without its closing full stop."""
    return f"{where}: {what}. Expected {expected}, got {got}. {todo}."


class XraynetError(Exception):
    """Base class of every error xraynet raises on purpose."""

    #: The command line's exit status for this error (2: a usage error).
    exit_code = 2


class SpecError(XraynetError, ValueError):
    """An architecture spec (built-in or JSON file) is malformed."""


class ShapeError(XraynetError, ValueError):
    """An array handed to a layer or kernel has the wrong shape or dtype."""


class ModelFileError(XraynetError):
    """A model file cannot be read, or is not a valid xraynet model."""


class BackendError(XraynetError, RuntimeError):
    """A compute backend is unknown or cannot be used on this machine."""


class KernelError(BackendError):
    """A CUDA kernel cannot be loaded or launched as asked: its source declares a
    parameter the loader cannot pass, or a launch's arguments do not match the
    declared signature (count, dtype, contiguity). See xraynet.backends.cudakernels."""


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


class TrainingError(XraynetError):
    """A training run cannot start or go on: its options do not fit together or the data, the output
    folder is missing, or the loss diverged (see xraynet.training)."""


class CheckpointError(TrainingError):
    """``--resume`` was given a file that is not a training checkpoint, or not one of a run like this."""


class CrossvalError(XraynetError, ValueError):
    """A leave-one-source-out run cannot start: an unsupported grouping or an unusable recipe."""


class BenchError(XraynetError, ValueError):
    """``xraynet bench`` was asked for something it cannot time."""


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
               "dicom_unsupported", "dicom_needs_pydicom", "unsupported_codec", "changed")

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

    exit_code = 3


class ReportWriteError(ScreenError):
    """A screening output cannot be written: the report, its ``.lock`` or ``.tmp`` file, or a
    heatmap PNG (read-only folder, disk full, I/O error). Rows that were durable before stay in
    the report; running the same command again once the cause is fixed screens the rest."""

    exit_code = 4
