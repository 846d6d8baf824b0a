"""``xraynet bench``: time a training step or inference on random data (:mod:`xraynet.bench`)."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

from .common import console, device_option, use_device


class Arch(str, Enum):
    seed = "seed"
    wide = "wide"
    xraynet = "xraynet"


class Mode(str, Enum):
    train = "train"
    infer = "infer"


def bench(
    arch: Arch = typer.Option(Arch.seed, help="Architecture to time (ARCHS.md)."),
    mode: Mode = typer.Option(Mode.train, help="train: forward + loss + backward + Adam; infer: forward only."),
    batch: int = typer.Option(32, min=1, help="Images per batch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for kernels and BLAS (default: all)."),
    device: str = device_option(),
    iters: Optional[int] = typer.Option(None, min=1, help="Timed steps (default: enough for --min-time)."),
    warmup: int = typer.Option(3, min=1, help="Untimed warm-up steps (JIT compilation happens here)."),
    min_time: float = typer.Option(3.0, help="Seconds of timed steps to aim for when --iters is not given."),
    min_iters: int = typer.Option(5, min=1, help="Fewest timed steps when --iters is not given."),
    seed: int = typer.Option(0, help="Seed for weights and synthetic data."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    json_out: Optional[str] = typer.Option(None, help="Append the JSON object as one line to this file."),
    profile: bool = typer.Option(False, help="Also print median time per layer stage (forward/backward)."),
    kernels: bool = typer.Option(False, "--kernels",
                                 help="Also print device ms per step of every CUDA kernel and GEMM (GPU only)."),
) -> None:
    """Time a training step or inference on random data (median of repeated steps).

    Flags and meaning match ../shared/bench/torch_reference.py, so results
    compare directly with PyTorch on the same machine.
    """
    from xraynet.bench import Timing, profile_kernels, profile_layers, run_bench

    # The resolved name ('cpu' or 'gpu'), so the row says where it ran, never 'auto'.
    device = use_device(device)
    timing = Timing(iters=iters, warmup=warmup, min_time=min_time, min_iters=min_iters)
    row = run_bench(arch.value, mode.value, batch, device=device, threads=threads, timing=timing, seed=seed)
    prof = profile_layers(arch.value, mode.value, batch, device=device, threads=threads) if profile else None
    kern = profile_kernels(arch.value, mode.value, batch, device=device, seed=seed) if kernels else None
    if json_out:
        with open(json_out, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    if as_json:
        if prof is not None:
            row = {**row, "profile": prof}
        if kern is not None:
            row = {**row, "kernels": kern}
        sys.stdout.write(json.dumps(row) + "\n")
        return
    _print_bench(row, prof, kern)


def _print_bench(row: dict, prof: list | None, kern: list | None) -> None:
    """The timing table, then the per-stage and per-kernel tables when asked for."""
    from rich.table import Table

    out = console()
    t = Table(title=f"xraynet bench ({row['device_name']})")
    for col in ("arch", "mode", "batch", "device", "threads", "images/s", "ms/batch", "p10-p90 ms", "GFLOP/s",
                "iters"):
        t.add_column(col, justify="right")
    gf = f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else "-"
    t.add_row(row["arch"], row["mode"], str(row["batch"]), row["device"], str(row["threads"]),
              f"{row['images_per_s']:.1f}", f"{row['ms_per_batch']:.2f}",
              f"{row['ms_p10']:.2f}-{row['ms_p90']:.2f}", gf, str(row["iters"]))
    out.print(t)
    if prof is not None:
        p = Table(title="per-stage median ms")
        for col in ("stage", "forward", "backward"):
            p.add_column(col, justify="right" if col != "stage" else "left")
        for r in prof:
            p.add_row(r["stage"], f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}")
        out.print(p)
    if kern is not None:
        k = Table(title="device time per step, by kernel")
        for col in ("kernel", "ms/step", "launches/step", "share"):
            k.add_column(col, justify="right" if col != "kernel" else "left")
        for r in kern:
            k.add_row(r["kernel"], f"{r['ms_per_step']:.3f}", f"{r['launches_per_step']:g}", f"{r['share']:.0%}")
        out.print(k)
