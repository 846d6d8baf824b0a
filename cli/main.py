"""The ``xraynet`` command: a thin typer layer over the library.

Only typer is imported at module load; each command imports what it needs,
so ``xraynet --help`` does not pay for NumPy kernels or Numba.
"""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

app = typer.Typer(
    name="xraynet",
    help="Train a hand-built CNN on chest X-rays and screen folders of X-rays into a CSV report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class Arch(str, Enum):
    seed = "seed"
    wide = "wide"
    xraynet = "xraynet"


class Mode(str, Enum):
    train = "train"
    infer = "infer"


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


def _fail(err: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False)
    raise typer.Exit(code=2)


@app.command()
def bench(
    arch: Arch = typer.Option(Arch.seed, help="Architecture to time (ARCHS.md)."),
    mode: Mode = typer.Option(Mode.train, help="train: forward + loss + backward + Adam; infer: forward only."),
    batch: int = typer.Option(32, min=1, help="Images per batch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for kernels and BLAS (default: all)."),
    device: str = typer.Option("cpu", help="Compute backend."),
    iters: Optional[int] = typer.Option(None, min=1, help="Timed steps (default: enough for --min-time)."),
    warmup: int = typer.Option(3, min=1, help="Untimed warm-up steps (JIT compilation happens here)."),
    min_time: float = typer.Option(3.0, help="Seconds of timed steps to aim for when --iters is not given."),
    min_iters: int = typer.Option(5, min=1, help="Fewest timed steps when --iters is not given."),
    seed: int = typer.Option(0, help="Seed for weights and synthetic data."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    json_out: Optional[str] = typer.Option(None, help="Append the JSON object as one line to this file."),
    profile: bool = typer.Option(False, help="Also print median time per layer stage (forward/backward)."),
) -> None:
    """Time a training step or inference on random data (median of repeated steps).

    Flags and meaning match ../shared/bench/torch_reference.py, so results
    compare directly with PyTorch on the same machine.
    """
    from xraynet.bench import profile_layers, run_bench
    from xraynet.errors import XraynetError

    try:
        row = run_bench(arch.value, mode.value, batch, device=device, threads=threads, iters=iters,
                        warmup=warmup, min_time=min_time, min_iters=min_iters, seed=seed)
        prof = profile_layers(arch.value, mode.value, batch, device=device, threads=threads) if profile else None
    except XraynetError as e:
        _fail(e)
    if json_out:
        with open(json_out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    if as_json:
        if prof is not None:
            row = {**row, "profile": prof}
        sys.stdout.write(json.dumps(row) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"xraynet bench ({row['device_name']})")
    for col in ("arch", "mode", "batch", "device", "threads", "images/s", "ms/batch", "p10-p90 ms", "GFLOP/s",
                "iters"):
        t.add_column(col, justify="right")
    gf = f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else "-"
    t.add_row(row["arch"], row["mode"], str(row["batch"]), row["device"], str(row["threads"]),
              f"{row['images_per_s']:.1f}", f"{row['ms_per_batch']:.2f}",
              f"{row['ms_p10']:.2f}-{row['ms_p90']:.2f}", gf, str(row["iters"]))
    console.print(t)
    if prof is not None:
        p = Table(title="per-stage median ms")
        for col in ("stage", "forward", "backward"):
            p.add_column(col, justify="right" if col != "stage" else "left")
        for r in prof:
            p.add_row(r["stage"], f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}")
        console.print(p)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
