"""What a screening run did (:class:`Summary`) and the exit codes of ``xraynet screen``.

The exit-code table is in the :mod:`xraynet.screening` docstring.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ReportLockedError, ReportWriteError

__all__ = ["Summary", "exit_code_for", "EXIT_OK", "EXIT_ERRORS", "EXIT_USAGE", "EXIT_LOCKED", "EXIT_WRITE",
           "EXIT_UNLISTED"]

#: Exit codes of ``xraynet screen`` (the table is in the :mod:`xraynet.screening` docstring).
EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_LOCKED, EXIT_WRITE, EXIT_UNLISTED = 0, 1, 2, 3, 4, 5


def exit_code_for(error: BaseException) -> int:
    """The exit code for an error a screening run raised: 3 locked, 4 an output could not be
    written, 2 any other (usage) error."""
    if isinstance(error, ReportWriteError):
        return EXIT_WRITE
    if isinstance(error, ReportLockedError):
        return EXIT_LOCKED
    return EXIT_USAGE


@dataclass
class Summary:
    """What one screening run did. ``files``: images in the folder now;
    ``screened``: rows written this run; ``skipped_unchanged``: files whose row
    was kept; ``errors`` / ``flagged``: error rows / flagged rows among the
    folder's files in the report after the run (``*_new``: among this run's
    rows; ``errors_new`` leaves out a retried error row that failed again with the
    same reason on the same bytes); ``labels_new``: predicted label counts of this run's ok rows;
    ``dropped_rows``: old rows removed (changed, deleted or duplicate files);
    ``unlisted``: folders or entries that could not be listed (their ``path`` text,
    ``""`` for the folder itself), whose ``kept_unlisted`` old rows were kept unchanged;
    ``repaired_bytes``: bytes of an incomplete last record cut off the report;
    times in seconds (``decode_seconds`` sums the decoding workers' time,
    ``network_seconds`` is the model on the calling thread); ``decode_pool``: where files
    were decoded, ``"threads"`` or ``"processes"`` (``""`` when none was, or on a cluster)."""

    folder: str
    out: str
    model: str
    model_sha256: str
    screening_class: str
    threshold: float
    files: int = 0
    screened: int = 0
    skipped_unchanged: int = 0
    errors: int = 0
    errors_new: int = 0
    flagged: int = 0
    flagged_new: int = 0
    labels_new: dict = field(default_factory=dict)
    dropped_rows: int = 0
    unlisted: list = field(default_factory=list)
    kept_unlisted: int = 0
    repaired_bytes: int = 0
    seconds: float = 0.0
    hash_seconds: float = 0.0
    decode_seconds: float = 0.0
    network_seconds: float = 0.0
    images_per_s: float = 0.0
    decode_pool: str = ""
    dry_run: bool = False
    would_screen: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """5 when something could not be listed, else 1 when some files have error rows, else 0."""
        if self.unlisted:
            return EXIT_UNLISTED
        return EXIT_ERRORS if self.errors else EXIT_OK

    def to_dict(self) -> dict:
        """The fields and ``exit_code``, as ``--json`` prints them."""
        return {**asdict(self), "exit_code": self.exit_code}
