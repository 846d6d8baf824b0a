"""``xraynet bench``: time a training step or inference on random data (:mod:`xraynet.bench`)."""
from __future__ import annotations

import json
import sys
from enum import Enum
from typing import Optional

import typer

from .common import check_output_file, console, device_option, positive_finite, table, use_device


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
    batch: int = typer.Option(32, min=1, max=1_000_000, help="Images per batch."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for kernels and BLAS (default: all)."),
    device: str = device_option(),
    iters: Optional[int] = typer.Option(None, min=1, help="Timed steps (default: enough for --min-time)."),
    warmup: int = typer.Option(3, min=1, help="Untimed warm-up steps (JIT compilation happens here)."),
    min_time: float = typer.Option(3.0, callback=positive_finite,
                                   help="Seconds of timed steps to aim for when --iters is not given (> 0)."),
    min_iters: int = typer.Option(5, min=1, help="Fewest timed steps when --iters is not given."),
    seed: int = typer.Option(0, min=0, max=2**32 - 1, help="Seed for weights and synthetic data (0 to 2**32-1)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    json_out: Optional[str] = typer.Option(None, callback=check_output_file,
                                           help="Append the JSON object as one line to this file (its folder "
                                                "must exist)."),
    profile: bool = typer.Option(False, help="Also print median time per layer stage (forward/backward)."),
    kernels: bool = typer.Option(False, "--kernels",
                                 help="Also print device ms per step of every CUDA kernel and GEMM (GPU only)."),
) -> None:
    """Time a training step or inference on random data (median of repeated steps).

    Flags and meaning match ../shared/bench/torch_reference.py, so results
    compare directly with PyTorch on the same machine.
    """
    from xraynet.bench import Timing, append_row, profile_kernels, profile_layers, run_bench

    # The resolved name ('cpu' or 'gpu'), so the row says where it ran, never 'auto'.
    device = use_device(device)
    timing = Timing(iters=iters, warmup=warmup, min_time=min_time, min_iters=min_iters)
    row = run_bench(arch.value, mode.value, batch, device=device, threads=threads, timing=timing, seed=seed)
    prof = profile_layers(arch.value, mode.value, batch, device=device, threads=threads) if profile else None
    kern = profile_kernels(arch.value, mode.value, batch, device=device, seed=seed) if kernels else None
    if json_out:
        append_row(json_out, row)
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
    out = console()
    cols = ("arch", "mode", "batch", "device", "threads", "images/s", "ms/batch", "p10-p90 ms", "GFLOP/s", "iters")
    gf = f"{row['gflop_per_s']:.1f}" if row["gflop_per_s"] else "-"
    out.print(table(f"xraynet bench ({row['device_name']})", cols,
                    [[row["arch"], row["mode"], row["batch"], row["device"], row["threads"],
                      f"{row['images_per_s']:.1f}", f"{row['ms_per_batch']:.2f}",
                      f"{row['ms_p10']:.2f}-{row['ms_p90']:.2f}", gf, row["iters"]]],
                    justify={c: "right" for c in cols}))
    if prof is not None:
        out.print(table("per-stage median ms", ("stage", "forward", "backward"),
                        [[r["stage"], f"{r['forward_ms']:.2f}", f"{r['backward_ms']:.2f}"] for r in prof],
                        justify={"forward": "right", "backward": "right"}))
    if kern is not None:
        out.print(table("device time per step, by kernel", ("kernel", "ms/step", "launches/step", "share"),
                        [[r["kernel"], f"{r['ms_per_step']:.3f}", f"{r['launches_per_step']:g}", f"{r['share']:.0%}"]
                         for r in kern],
                        justify={"ms/step": "right", "launches/step": "right", "share": "right"}))
