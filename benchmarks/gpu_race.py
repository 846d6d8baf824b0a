"""xraynet's GPU backend against PyTorch + cuDNN on the ARCHS.md matrix.

    python benchmarks/gpu_race.py --torch-ref PATH/torch_reference.py [--rounds 3] [--min-time 0.5]

Both sides run in this one process (no start-up cost per configuration), in
interleaved rounds: for every round, every configuration, xraynet and then
PyTorch. Each measurement is the median step time over CUDA events placed
between steps (torch_reference.py's own method, used for both sides), TF32
off on both (PyTorch: allow_tf32 False; CuPy: CUPY_TF32 unset, and
xraynet's kernels never use it). The report gives, per configuration, the
median images/s over the rounds and the ratio xraynet / torch.

``--device cpu`` runs the same race on the CPU backends (a plumbing check for
machines without a GPU; the CPU race proper is benchmarks/race.py).

``--ab-direct-conv`` races xraynet against itself instead: the one-channel
first convolution as a direct kernel (the default) against im2col + GEMM
(XRAYNET_GPU_DIRECT_CONV=0), interleaved the same way, on the wide rows
(default configurations: wide train b128, wide infer b256, seed train b32).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

MATRIX = [  # ARCHS.md, plus the two large-batch rows of the GPU issue
    ("seed", "train", 32), ("seed", "infer", 32), ("seed", "infer", 256),
    ("wide", "train", 32), ("wide", "infer", 32), ("wide", "infer", 64),
    ("wide", "train", 128), ("wide", "infer", 256),
]
#: images/s measured for us on an H200 with torch 2.11 + cuDNN, fp32, TF32 off (the issue's figures).
ISSUE_TORCH = {("seed", "train", 32): 15_900, ("wide", "train", 32): 9_100, ("wide", "train", 128): 11_600,
               ("wide", "infer", 256): 37_900}
#: Goals: seed train at least torch's speed (launch-bound: few, fused launches win); wide at least 0.8x.
GOALS = {("seed", "train", 32): 1.0}
DEFAULT_GOAL = 0.8


def load_torch_reference(path: Path):
    spec = importlib.util.spec_from_file_location("torch_reference", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--torch-ref", type=Path, default=None, help="path of ../shared/bench/torch_reference.py")
    ap.add_argument("--ab-direct-conv", action="store_true",
                    help="race the direct first-layer conv against im2col + GEMM (xraynet only)")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.5, help="seconds of timed steps per measurement")
    ap.add_argument("--configs", default=None, help="subset, e.g. 'seed:train:32,wide:infer:256'")
    ap.add_argument("--jsonl", type=Path, default=None, help="append every measurement as one JSON line")
    ap.add_argument("--report", type=Path, default=None, help="also write the ratio table (markdown) here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("CUPY_TF32", "0")
    from xraynet.bench import Timing, run_bench

    cuda = args.device == "cuda"
    if cuda:
        from xraynet.devices import gpu_unavailable_reason

        reason = gpu_unavailable_reason()
        if reason is not None:
            print(f"gpu_race: no GPU for xraynet: {reason}. Run on a CUDA machine, or --device cpu.",
                  file=sys.stderr)
            return 2
    if args.ab_direct_conv:
        return ab_direct_conv(args, cuda)
    if args.torch_ref is None:
        print("gpu_race: --torch-ref PATH is needed (../shared/bench/torch_reference.py)", file=sys.stderr)
        return 2
    tref = load_torch_reference(args.torch_ref)
    import torch

    if cuda:
        if not torch.cuda.is_available():
            print("gpu_race: torch sees no CUDA device", file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        tref.set_tf32(False)
    configs = MATRIX
    if args.configs:
        configs = [(a, m, int(b)) for a, m, b in (c.split(":") for c in args.configs.split(","))]
    xdev = "gpu" if cuda else "cpu"
    rows: list[dict] = []
    jsonl = open(args.jsonl, "a") if args.jsonl else None
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for arch, mode, batch in configs:
            for impl in ("xraynet", "torch"):
                if impl == "xraynet":
                    row = run_bench(arch, mode, batch, device=xdev, timing=Timing(
                        warmup=10 if cuda else 2, min_time=args.min_time, min_iters=20 if cuda else 3))
                else:
                    row = tref.bench_one(arch, mode, batch, args.device, iters=None, warmup=20 if cuda else 2,
                                         min_time=args.min_time, min_iters=20 if cuda else 3, max_iters=5000,
                                         seed=0, tf32=False if cuda else None)
                row = {**row, "impl": impl, "round": r}
                rows.append(row)
                if jsonl:
                    jsonl.write(json.dumps(row) + "\n")
                    jsonl.flush()
                print(f"round {r + 1}/{args.rounds} {arch} {mode} b{batch} {impl}: "
                      f"{row['images_per_s']:.0f} images/s ({time.perf_counter() - t0:.0f} s)", flush=True)
    report = ratio_table(rows, configs, args.device)
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    return 0


AB_CONFIGS = [("wide", "train", 128), ("wide", "infer", 256), ("seed", "train", 32)]


def ab_direct_conv(args, cuda: bool) -> int:
    """Direct one-channel conv vs im2col + GEMM, same process, interleaved rounds."""
    from xraynet.bench import Timing, run_bench

    if cuda:
        from xraynet.backends.gpu import CUDABackend

        backends = {"direct": CUDABackend(direct_first_conv=True), "gemm": CUDABackend(direct_first_conv=False)}
    else:  # plumbing check: the emulator is far too slow to time, so the CPU backend stands in twice
        from xraynet.backends import get_backend

        backends = {"direct": get_backend("cpu"), "gemm": get_backend("cpu")}
    configs = AB_CONFIGS
    if args.configs:
        configs = [(a, m, int(b)) for a, m, b in (c.split(":") for c in args.configs.split(","))]
    rows = []
    for r in range(args.rounds):
        for arch, mode, batch in configs:
            for variant, bk in backends.items():
                row = run_bench(arch, mode, batch, device=bk, timing=Timing(
                    warmup=10 if cuda else 2, min_time=args.min_time, min_iters=20 if cuda else 3))
                rows.append({**row, "variant": variant, "round": r})
                print(f"round {r + 1}/{args.rounds} {arch} {mode} b{batch} {variant}: "
                      f"{row['images_per_s']:.0f} images/s", flush=True)
    lines = [f"direct one-channel conv vs im2col + GEMM (median images/s over {args.rounds} interleaved rounds)", "",
             "| arch | mode | batch | direct | im2col + GEMM | direct / GEMM |", "|---|---|---:|---:|---:|---:|"]
    for arch, mode, batch in configs:
        med = {v: statistics.median(x["images_per_s"] for x in rows if (x["variant"], x["arch"], x["mode"],
                                                                          x["batch"]) == (v, arch, mode, batch))
               for v in backends}
        lines.append(f"| {arch} | {mode} | {batch} | {med['direct']:.0f} | {med['gemm']:.0f} | "
                     f"{med['direct'] / med['gemm']:.2f} |")
    report = "\n".join(lines)
    print(report)
    if args.report:
        args.report.write_text(report + "\n")
    if args.jsonl:
        with open(args.jsonl, "a") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    return 0


def ratio_table(rows, configs, device) -> str:
    name = next((r.get("device_name") for r in rows if r["impl"] == "torch"), device)
    lines = [f"xraynet vs PyTorch on {name} (fp32, TF32 off; median images/s over "
             f"{max(r['round'] for r in rows) + 1} interleaved rounds)", "",
             "| arch | mode | batch | xraynet | torch | xraynet / torch | goal | issue's torch |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for arch, mode, batch in configs:
        med = {}
        for impl in ("xraynet", "torch"):
            vals = [r["images_per_s"] for r in rows
                    if (r["impl"], r["arch"], r["mode"], r["batch"]) == (impl, arch, mode, batch)]
            med[impl] = statistics.median(vals) if vals else float("nan")
        ratio = med["xraynet"] / med["torch"]
        goal = GOALS.get((arch, mode, batch), DEFAULT_GOAL)
        mark = "met" if ratio >= goal else "MISSED"
        ref = ISSUE_TORCH.get((arch, mode, batch))
        lines.append(f"| {arch} | {mode} | {batch} | {med['xraynet']:.0f} | {med['torch']:.0f} | {ratio:.2f} | "
                     f">= {goal:.1f} {mark} | {ref if ref else '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
