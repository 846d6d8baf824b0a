#!/usr/bin/env python3
"""Race xraynet against PyTorch on the ARCHS.md benchmark matrix.

Runs every configuration as separate processes, interleaved round by round
(xraynet, torch NCHW, torch channels-last, then the next configuration), so
that machine noise hits all three alike; then prints the medians and the
ratios against each torch layout with ../shared/bench/summarize_runs.py.

    python benchmarks/race.py --rounds 5 --threads 2 --out runs/race.jsonl
    python benchmarks/race.py --only seed:train:32 --rounds 3
    python benchmarks/race.py --before /tmp/beforevenv/bin/python   # an older install in the same rounds
    python benchmarks/race.py --isa avx2 --out runs/race-avx2.jsonl  # both sides limited to AVX2

``--isa avx2`` runs every contestant as an AVX2-only machine would on a
processor that has AVX-512: Numba compiles without AVX-512
(``NUMBA_CPU_FEATURES``), OpenBLAS takes its Haswell kernels
(``OPENBLAS_CORETYPE``), PyTorch its AVX2 kernels (``ATEN_CPU_CAPABILITY``)
and oneDNN / MKL stop at AVX2 (``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``). The instruction set is then an AVX2 machine's;
caches, clock and core are still this one's, so it stands in for an AVX2-only
machine, it is not one. xraynet's rows record the target (``machine_kind``
ends in ``-avx2``).

``--before PYTHON`` adds a fourth contestant, ``xraynet-before``: the xraynet
installed in that interpreter's environment (run from /tmp, so that this
checkout does not shadow it), raced in the same rounds, so that a change is
measured as a ratio of interleaved runs.

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


def isa_environment(isa: str | None) -> dict:
    """The environment of every contestant: this one's, limited to ``isa`` (None or "avx2")."""
    env = dict(os.environ)
    if isa is None:
        return env
    from xraynet.backends.host import cpu_simd_flags

    drop = [f for f in cpu_simd_flags() if f.startswith(("avx512", "amx"))]
    env.update({"NUMBA_CPU_FEATURES": ",".join("-" + f for f in drop) or "+avx2",
                "OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
                "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"})
    return env


def commands(arch, mode, batch, threads, out, min_time, before=None):
    """{contestant: (argv, cwd)} of one configuration."""
    common = ["--arch", arch, "--mode", mode, "--batch", str(batch), "--threads", str(threads),
              "--min-time", str(min_time)]
    torch_ref = [sys.executable, str(BENCH / "torch_reference.py"), *common, "--json-out", out]
    ours = ["-m", "xraynet.cli.main", "bench", *common, "--device", "cpu", "--json", "--json-out", out]
    cmds = {"xraynet": ([sys.executable, *ours], None)}
    if before:
        cmds["xraynet-before"] = ([before, *ours], "/tmp")
    cmds.update({"torch": (torch_ref, None), "torch+cl": (torch_ref + ["--channels-last"], None)})
    return cmds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--only", action="append", help="arch:mode:batch, repeatable (default: whole matrix)")
    ap.add_argument("--out", default="runs/race.jsonl")
    ap.add_argument("--before", metavar="PYTHON", help="also race the xraynet installed for this interpreter")
    ap.add_argument("--isa", choices=["avx2"], help="limit every contestant to this instruction set (see above)")
    args = ap.parse_args(argv)
    if not (BENCH / "torch_reference.py").exists():
        print(f"{BENCH}: torch_reference.py not found; this script needs the shared bench folder.", file=sys.stderr)
        return 2
    configs = [tuple(int(v) if v.isdigit() else v for v in o.split(":")) for o in args.only] if args.only else MATRIX
    out = Path(args.out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    env = isa_environment(args.isa)
    fd, one = tempfile.mkstemp(suffix=".jsonl")  # each run's line; torch_reference overwrites its file
    os.close(fd)
    for r in range(args.rounds):
        for arch, mode, batch in configs:
            for impl, (cmd, cwd) in commands(arch, mode, batch, args.threads, one, args.min_time,
                                             args.before).items():
                print(f"[race] round {r + 1}/{args.rounds} {impl} {arch} {mode} b{batch}", file=sys.stderr,
                      flush=True)
                Path(one).write_text("")
                res = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                     env=env)
                if res.returncode:
                    print(res.stderr[-2000:], file=sys.stderr)
                    return res.returncode
                lines = [json.loads(line) for line in Path(one).read_text().splitlines() if line.startswith("{")]
                with open(out, "a") as fh:
                    for row in lines:
                        row["impl"] = impl if impl.startswith("xraynet") else row["impl"]
                        fh.write(json.dumps(row) + "\n")
    os.unlink(one)
    subprocess.run([sys.executable, str(BENCH / "summarize_runs.py"), str(out), "--baseline", "torch"], check=False)
    # Ratio against the better torch layout, configuration by configuration.
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.startswith("{")]
    med = {}
    for row in rows:
        impl = row["impl"] + ("+cl" if row.get("memory_format") == "channels_last" else "")
        med.setdefault((row["arch"], row["mode"], row["batch"], impl), []).append(row["images_per_s"])
    before = " before  b/best  new/b" if args.before else ""
    print(f"\n{'arch':<5} {'mode':<5} {'batch':>5} {'xraynet':>9} {'torch':>9} {'torch+cl':>9} {'vs best':>8}{before}")
    for arch, mode, batch in configs:
        m = {i: statistics.median(med.get((arch, mode, batch, i), [float("nan")]))
             for i in ("xraynet", "xraynet-before", "torch", "torch+cl")}
        best = max(m["torch"], m["torch+cl"])
        tail = (f" {m['xraynet-before']:>7.1f} {m['xraynet-before'] / best:>7.2f} "
                f"{m['xraynet'] / m['xraynet-before']:>6.2f}") if args.before else ""
        print(f"{arch:<5} {mode:<5} {batch:>5} {m['xraynet']:>9.1f} {m['torch']:>9.1f} {m['torch+cl']:>9.1f} "
              f"{m['xraynet'] / best:>8.2f}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
