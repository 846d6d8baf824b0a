"""The ``xraynet`` command: a thin typer layer over the library.

The commands live in ``bench_cmd``, ``train_cmd`` (train, crossval),
``evaluate_cmd`` and ``screen_cmd`` (screen, review); ``info`` is here. Each
parses its options, calls one library function and prints the result.

Errors are handled in one place, the command group's ``invoke``: an
:class:`~xraynet.errors.XraynetError` from any command becomes one
``error: ...`` line on stderr and the exit status its class carries
(``exit_code``: 2, or 3 and 4 for screening's locked and unwritable report).
It is the group rather than :func:`main` so that typer's ``CliRunner`` (which
calls the app, not ``main``) sees the same exit codes as a shell.

Only typer is imported at module load; each command imports what it needs,
so ``xraynet --help`` does not pay for NumPy kernels or Numba.
"""
from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from typer.core import TyperGroup

from .bench_cmd import bench
from .common import print_error
from .evaluate_cmd import evaluate
from .screen_cmd import SCREEN_HELP, review, screen
from .train_cmd import crossval, train


class _Commands(TyperGroup):
    """The ``xraynet`` command group: the one place where a library error ends a command."""

    def invoke(self, ctx):
        from xraynet.errors import XraynetError

        try:
            return super().invoke(ctx)
        except XraynetError as e:
            print_error(e)
            raise typer.Exit(code=e.exit_code) from None


app = typer.Typer(
    name="xraynet",
    help="Train a hand-built CNN on chest X-rays and screen folders of X-rays into a CSV report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Commands,
)


def _version(value: bool) -> None:
    if value:
        from xraynet import __version__

        typer.echo(f"xraynet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Train a hand-built CNN on chest X-rays and screen folders of X-rays into a CSV report."""


app.command()(bench)
app.command()(train)
app.command()(evaluate)
app.command()(crossval)
app.command(help=SCREEN_HELP)(screen)
app.command()(review)


@app.command()
def info(
    model: Optional[str] = typer.Argument(None, metavar="[MODEL]",
                                          help="A model file (HDF5): print its model card instead."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the lines."),
) -> None:
    """Versions, the processor (model, SIMD sets, BLAS), the backend --device auto picks here, and the GPU: name, compute capability, memory,
    CUDA runtime and driver (or why there is none, and what to install). With MODEL: its model card
    (intended use, training data, validation figures within each source first, threshold, limits), after
    checking the weights against their stored SHA-256 (exit 2 when they fail)."""
    if model is not None:
        from xraynet.modelcard import format_card, info_document

        from .common import terminal_text

        doc = info_document(model)  # ModelFileError (exit 2) when the weights fail their checksum
        # terminal_text: the card quotes folder, source and class names, which may hold escape sequences.
        sys.stdout.write(json.dumps(doc, allow_nan=False) + "\n" if as_json else terminal_text(format_card(doc)))
        return
    from xraynet.devices import device_info

    d = device_info()
    if as_json:
        sys.stdout.write(json.dumps(d) + "\n")
        return
    reason = d.get("gpu_unavailable_reason")
    cupy = d["cupy"] or ("not installed" if reason == "CuPy is not installed" else "does not import")
    rows = [("xraynet", d["xraynet"]), ("python", d["python"]), ("numpy", d["numpy"]), ("numba", d["numba"]),
            ("cupy", cupy), ("cpu", f"{d['cpu_model']} ({d['cpu_cores']} cores; Numba target {d['cpu_target']})"),
            ("cpu simd", " ".join(d["cpu_simd"]) or "unknown"), ("blas", d["blas"]),
            ("machine kind", d["machine_kind"]), ("backend (auto)", d["auto_device"])]
    if d["gpu_available"]:
        rows += [("gpu", f"{d['device_name']} (device {d['device_id']})"),
                 ("compute capability", d["compute_capability"]), ("gpu memory", f"{d['memory_gib']} GiB"),
                 ("CUDA runtime", d["cuda_runtime"]), ("CUDA driver", d["cuda_driver"])]
    else:
        rows += [("gpu", f"none: {reason}"), ("to use a GPU", d["install_hint"])]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        typer.echo(f"{k:<{width}}  {v}")


def main() -> None:
    if not sys.stderr.isatty():
        # Under cron, click's plain "Error: No such option: --x" line instead of a box that
        # rich draws at 80 columns, wrapping the message mid-word.
        import typer.core

        typer.core.HAS_RICH = False
    app()


if __name__ == "__main__":
    main()
