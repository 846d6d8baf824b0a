#!/usr/bin/env python3
"""Race xraynet against PyTorch on the ARCHS.md benchmark matrix.

Runs every configuration as separate processes, interleaved round by round
(xraynet, torch NCHW, torch channels-last, then the next configuration), so
that machine noise hits all three alike; then prints the medians and the
ratios against each torch layout with ../shared/bench/summarize_runs.py.

    python benchmarks/race.py --rounds 5 --threads 2 --out runs/race.jsonl
    python benchmarks/race.py --only seed:train:32 --rounds 3

Needs torch (the dev extra) and the shared bench folder beside the project.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MATRIX = [("seed", "train", 32), ("seed", "infer", 32), ("seed", "infer", 256),
          ("wide", "train", 32), ("wide", "infer", 32), ("wide", "infer", 64)]
ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "bench"


def commands(arch, mode, batch, threads, out, min_time):
    common = ["--arch", arch, "--mode", mode, "--batch", str(batch), "--threads", str(threads),
              "--min-time", str(min_time)]
    torch_ref = [sys.executable, str(BENCH / "torch_reference.py"), *common, "--json-out", out]
    return {
        "xraynet": [sys.executable, "-m", "xraynet.cli.main", "bench", *common, "--device", "cpu", "--json",
                    "--json-out", out],
        "torch": torch_ref,
        "torch+cl": torch_ref + ["--channels-last"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--only", action="append", help="arch:mode:batch, repeatable (default: whole matrix)")
    ap.add_argument("--out", default="runs/race.jsonl")
    args = ap.parse_args(argv)
    if not (BENCH / "torch_reference.py").exists():
        print(f"{BENCH}: torch_reference.py not found; this script needs the shared bench folder.", file=sys.stderr)
        return 2
    configs = [tuple(int(v) if v.isdigit() else v for v in o.split(":")) for o in args.only] if args.only else MATRIX
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, one = tempfile.mkstemp(suffix=".jsonl")  # each run's line; torch_reference overwrites its file
    os.close(fd)
    for r in range(args.rounds):
        for arch, mode, batch in configs:
            for impl, cmd in commands(arch, mode, batch, args.threads, one, args.min_time).items():
                print(f"[race] round {r + 1}/{args.rounds} {impl} {arch} {mode} b{batch}", file=sys.stderr,
                      flush=True)
                Path(one).write_text("")
                res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    return res.returncode
                with open(out, "a") as fh:
                    fh.write(Path(one).read_text())
    os.unlink(one)
    subprocess.run([sys.executable, str(BENCH / "summarize_runs.py"), str(out), "--baseline", "torch"], check=False)
    # Ratio against the better torch layout, configuration by configuration.
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    med = {}
    for row in rows:
        impl = row["impl"] + ("+cl" if row.get("memory_format") == "channels_last" else "")
        med.setdefault((row["arch"], row["mode"], row["batch"], impl), []).append(row["images_per_s"])
    print(f"\n{'arch':<5} {'mode':<5} {'batch':>5} {'xraynet':>9} {'torch':>9} {'torch+cl':>9} {'vs best':>8}")
    for arch, mode, batch in configs:
        m = {i: statistics.median(med.get((arch, mode, batch, i), [float("nan")]))
             for i in ("xraynet", "torch", "torch+cl")}
        best = max(m["torch"], m["torch+cl"])
        print(f"{arch:<5} {mode:<5} {batch:>5} {m['xraynet']:>9.1f} {m['torch']:>9.1f} {m['torch+cl']:>9.1f} "
              f"{m['xraynet'] / best:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
