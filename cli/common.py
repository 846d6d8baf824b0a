"""What every ``xraynet`` command shares: the consoles, the one error line, ``--device``,
and the Ctrl-C hint.

Only typer (and rich inside functions) is imported here: ``xraynet --help``
must not pay for NumPy, Numba or a backend.
"""
from __future__ import annotations

from contextlib import contextmanager

import typer

DEVICE_HELP = ("Compute device: auto (the GPU when CuPy and a CUDA device are present, else the CPU), "
               "cpu or gpu.")


# Width of a console that is not a terminal: tables are drawn at the width their cells need up to
# this, so output sent to a file or a pipe keeps every figure whole (rich's default there is 80
# columns, which cut cells to "0.9..."). Wider tables still fold their cells (see :func:`table`).
PIPE_WIDTH = 10_000


def console(stderr: bool = False):
    """Every rich Console of the CLI. When the stream is not a terminal (cron, a pipe, a file),
    text is printed as plain unwrapped lines: one message stays one line for mail and grep,
    never cut at 80 columns mid-word, and tables take the width their cells need
    (:data:`PIPE_WIDTH`), so no figure is cut (rich drops colour by itself)."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if not out.is_terminal:
        out.soft_wrap = True
        out.width = PIPE_WIDTH
    return out


def terminal_text(text) -> str:
    """``text`` safe to print: every character Python does not call printable (escape sequences,
    carriage returns, tabs, bidirectional overrides, zero-width characters) shown as a ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN`` escape, and a byte that was not UTF-8 (a surrogate from
    ``surrogateescape``) as ``\\xNN``; newlines are kept. File names, folder names, model cards
    and report or metadata cells reach the terminal through here, so no file can move the
    cursor, retitle the window or hide text."""
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if ch == "\n" or ch.isprintable():
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                       else f"\\U{code:08x}")
    return "".join(out)


def table(title: str, columns, rows, justify: dict | None = None, **kw):
    """A rich Table of plain text: ``title``, ``columns`` (names), ``rows`` (lists of cells, any
    type; ``str()`` of each). Cells are never markup (a source named ``[red]`` stays as it is) and
    pass :func:`terminal_text`; a cell too wide for the screen folds onto more lines instead of
    ending in an ellipsis, so no figure is ever cut. ``justify``: {column: "right"...}; ``kw``
    goes to ``Table``."""
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(terminal_text(title)), **kw)
    for col in columns:
        t.add_column(Text(terminal_text(col)), overflow="fold", justify=(justify or {}).get(col, "left"))
    for row in rows:
        t.add_row(*(Text(terminal_text(c)) for c in row))
    return t


def print_error(err: Exception) -> None:
    """``error: <message>`` on stderr, on one line (control characters escaped: messages quote
    file names and file contents)."""
    from rich.markup import escape

    # escape: messages hold install commands ("xraynet[gpu]") and file names that rich would take
    # for markup and drop. soft_wrap: the message stays one line (cron mail, grep).
    text = " ".join(terminal_text(str(err)).splitlines())  # one line whatever a message embeds
    console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


def check_output_file(value: str | None) -> str | None:
    """Option callback of an output file (``evaluate --out``, ``bench --json-out``): refused with
    a usage error (exit 2) before any work when it names a folder or a device, FIFO or socket,
    when its folder is missing (never created: a typo would scatter files) or not writable."""
    import os

    from xraynet.atomic import special_file_kind

    if value is None:
        return None
    if value == "":
        raise typer.BadParameter("empty path. Expected a file path such as metrics.json. Give a file name.")
    kind = "a directory" if os.path.isdir(value) else special_file_kind(value)
    if kind is not None:
        raise typer.BadParameter(f"{terminal_text(value)}: cannot write the file there. Expected a regular file or "
                                 f"no file, got {kind}. Give a file name.")
    _check_parent(value)
    if os.path.exists(value) and not os.access(value, os.W_OK):
        raise typer.BadParameter(f"{terminal_text(value)}: cannot write the file. Expected a writable file, got "
                                 "one without write permission. Give another path or fix its permissions.")
    return value


def check_output_folder(value: str | None) -> str | None:
    """Option callback of an output folder (``evaluate --plots``): made when missing, but refused
    with a usage error (exit 2) before any work when a file stands there or its parent folder is
    missing or not writable."""
    import os

    if value is None:
        return None
    if value == "":
        raise typer.BadParameter("empty path. Expected a folder path such as plots/. Give a folder name.")
    if os.path.exists(value):
        if not os.path.isdir(value):
            raise typer.BadParameter(f"{terminal_text(value)}: not a folder. Expected a folder (made when missing), "
                                     "got a file. Give another folder.")
        if not os.access(value, os.W_OK | os.X_OK):
            raise typer.BadParameter(f"{terminal_text(value)}: cannot write into the folder. Expected a writable "
                                     "folder, got one without write permission. Give another folder.")
        return value
    _check_parent(value)
    return value


def _check_parent(value: str) -> None:
    import os

    parent = os.path.dirname(os.path.abspath(value))
    if not os.path.isdir(parent):
        got = "a file" if os.path.exists(parent) else "nothing"
        raise typer.BadParameter(f"{terminal_text(value)}: its folder {terminal_text(parent)} does not exist. "
                                 f"Expected an existing folder, got {got} there. Create it first or give "
                                 "another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise typer.BadParameter(f"{terminal_text(value)}: cannot write into {terminal_text(parent)}. Expected a "
                                 "writable folder, got one without write permission. Give another path.")


def positive_finite(value: float | None) -> float | None:
    """Option callback of a positive amount (``bench --min-time``): nan, inf, 0 and negatives are
    a usage error (exit 2) before any work."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a finite number > 0, got {value!r}. Pass e.g. 3.")
    return value


def _check_device(value: str) -> str:
    """Option callback: 'auto', 'cpu' or 'gpu' ('cuda' is taken as 'gpu'); anything else is a usage error."""
    from xraynet.devices import normalise
    from xraynet.errors import BackendError

    try:
        return normalise(value)
    except BackendError:
        raise typer.BadParameter(f"unknown device. Expected auto, cpu or gpu, got {value!r}.") from None


def device_option(default: str = "auto"):
    """The ``--device`` option of every command."""
    return typer.Option(default, "--device", metavar="[auto|cpu|gpu]", callback=_check_device, help=DEVICE_HELP)


def use_device(device: str, notice: bool = True) -> str:
    """Make the backend for ``device`` before any work starts: a GPU that cannot be used ends the
    command here (BackendError or MissingDependencyError, exit 2, with the install command), not
    after decoding or scanning. With ``notice``, 'auto' falling back to the CPU says so in one
    line on stderr. Returns the device the work runs on, 'cpu' or 'gpu' (the name reports record)."""
    from xraynet.backends import get_backend
    from xraynet.devices import auto_notice, resolve_device

    get_backend(device)
    text = auto_notice(device) if notice else None
    if text:
        console(stderr=True).print(text, markup=False, highlight=False, soft_wrap=True)
    return resolve_device(device)


@contextmanager
def interrupt_hint(text: str):
    """A Ctrl-C inside the block ends the command with ``text`` on stderr and exit status 130."""
    try:
        yield
    except KeyboardInterrupt:
        typer.echo(text, err=True)
        raise typer.Exit(code=130) from None
