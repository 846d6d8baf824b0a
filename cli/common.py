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


def console(stderr: bool = False):
    """Every rich Console of the CLI. When the stream is not a terminal (cron, a pipe, a file),
    text is printed as plain unwrapped lines: one message stays one line for mail and grep,
    never cut at 80 columns mid-word (tables keep their width; rich drops colour by itself)."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if not out.is_terminal:
        out.soft_wrap = True
    return out


def print_error(err: Exception) -> None:
    """``error: <message>`` on stderr, on one line."""
    from rich.markup import escape

    # escape: messages hold install commands ("xraynet[gpu]") and file names that rich would take
    # for markup and drop. soft_wrap: the message stays one line (cron mail, grep).
    text = " ".join(str(err).splitlines())  # one line whatever a message embeds
    console(stderr=True).print(f"[bold red]error:[/] {escape(text)}", highlight=False, soft_wrap=True)


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
