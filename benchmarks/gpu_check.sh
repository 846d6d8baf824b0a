#!/usr/bin/env bash
# The GPU path, checked and raced on a CUDA machine in one call (no network needed).
#
#   mkdir -p .device && cp ../shared/bench/torch_reference.py .device/   # .device/ is git-ignored
#   bash benchmarks/gpu_check.sh            # writes logs and results under $OUT (default: a temp folder)
#
# 1. installs xraynet from this tree without touching dependencies (the
#    machine already has CuPy, NumPy, Numba, h5py, typer, rich, pillow,
#    pytest, hypothesis and torch), or, failing that, puts it on PYTHONPATH;
# 2. prints `xraynet info` and nvidia-smi;
# 3. runs the GPU tests (pytest -m gpu): every CUDA kernel against its NumPy
#    reference, float64 finite-difference gradients of every layer on the
#    GPU, the whole network against PyTorch, determinism, CPU<->GPU model files,
#    the backend contract on the real device;
# 4. the race against torch_reference.py --device cuda on the ARCHS.md matrix
#    plus wide train b128 and wide infer b256 (its ratio table is printed last);
# 5. per-kernel device times (`xraynet bench --kernels`) of the main configurations;
# 6. the direct one-channel first conv against im2col + GEMM (xraynet vs itself).
#
# Budget: BUDGET seconds in all (default 450, under the 8 minutes one device
# call should take). Each step's timeout is its share of what is left, the race
# runs right after the tests so a slow step cannot starve it, and a step that
# would start with too little time left is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
TORCH_REF=${TORCH_REF:-.device/torch_reference.py}
[ -f "$TORCH_REF" ] || TORCH_REF=../shared/bench/torch_reference.py
ROUNDS=${ROUNDS:-3}
MIN_TIME=${MIN_TIME:-0.5}
BUDGET=${BUDGET:-450}
export CUPY_TF32=0
START=$SECONDS
step() { echo; echo "== $* ($(( SECONDS - START )) s of $BUDGET)"; }
# left RESERVE: seconds left for this step once RESERVE is kept for the steps after it (0 if none).
left() { local l=$(( BUDGET - (SECONDS - START) - $1 )); [ "$l" -gt 0 ] && echo "$l" || echo 0; }
# within MAX RESERVE: a timeout for this step, at most MAX; empty (skip) under 20 s.
within() { local l; l=$(left "$2"); [ "$l" -ge 20 ] && echo $(( l < $1 ? l : $1 )); }

step "install"
if python -m pip install --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 \
        && (cd / && python -c "import xraynet.kernels, xraynet.cli") 2>>"$OUT/install.log"; then
    echo "installed (editable, no dependencies)"
else
    # The package maps kernels/ and cli/ into xraynet.kernels / xraynet.cli: rebuild that layout.
    PKG="$OUT/pythonpath"
    rm -rf "$PKG" && mkdir -p "$PKG"
    cp -r xraynet "$PKG/xraynet" && cp -r kernels "$PKG/xraynet/kernels" && cp -r cli "$PKG/xraynet/cli"
    export PYTHONPATH="$PKG${PYTHONPATH:+:$PYTHONPATH}"
    echo "pip install failed (see install.log); using PYTHONPATH=$PKG"
fi
XRAYNET=(python -m xraynet.cli.main)

step "xraynet info"
"${XRAYNET[@]}" info | tee "$OUT/info.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$OUT/info.txt"

NO_GPU=$(python -c "from xraynet.devices import gpu_unavailable_reason as r; print(r() or '')")
if [ -n "$NO_GPU" ]; then
    echo "NO GPU FOR XRAYNET: $NO_GPU. The GPU tests below will all skip and the race cannot run."
fi

step "GPU tests (pytest -m gpu)"
T=$(within 200 200)
[ -n "$T" ] || T=$(within 200 0)
if [ -z "$T" ]; then echo "skipped: out of time" | tee "$OUT/gpu-tests.txt"; TESTS_RC=9; else
timeout "$T" python -m pytest -m gpu -q -p no:cacheprovider -o addopts="" --benchmark-disable \
    --junitxml="$OUT/gpu-tests.xml" \
    tests/test_kernels.py tests/test_gradcheck.py tests/test_torch_crosscheck.py tests/test_gpu_backend.py \
    tests/test_backend_contract.py >"$OUT/gpu-tests.txt" 2>&1
TESTS_RC=$?
fi
tail -n 40 "$OUT/gpu-tests.txt"
echo "pytest exit code: $TESTS_RC"

step "race against PyTorch + cuDNN ($ROUNDS interleaved rounds)"
T=$(within 240 60)
if [ -z "$T" ]; then echo "skipped: out of time"; RACE_RC=9; else
timeout "$T" python benchmarks/gpu_race.py --torch-ref "$TORCH_REF" --rounds "$ROUNDS" --min-time "$MIN_TIME" \
    --jsonl "$OUT/race.jsonl" --report "$OUT/race.md" >"$OUT/race.log" 2>&1
RACE_RC=$?
fi
grep -E "^round" "$OUT/race.log" | tail -n 3 || true

step "per-kernel device times (ms per step)"
for cfg in "seed train 32" "wide train 32" "wide train 128" "wide infer 256"; do
    set -- $cfg
    T=$(within 45 40)
    if [ -z "$T" ]; then echo "skipped $cfg: out of time"; continue; fi
    timeout "$T" "${XRAYNET[@]}" bench --device gpu --arch "$1" --mode "$2" --batch "$3" --min-time 0.3 --kernels \
        >"$OUT/kernels-$1-$2-$3.txt" 2>&1
    cat "$OUT/kernels-$1-$2-$3.txt"
done

step "direct one-channel conv vs im2col + GEMM ($ROUNDS interleaved rounds)"
T=$(within 120 0)
if [ -z "$T" ]; then echo "skipped: out of time"; AB_RC=9; else
timeout "$T" python benchmarks/gpu_race.py --ab-direct-conv --rounds "$ROUNDS" --min-time "$MIN_TIME" \
    --jsonl "$OUT/ab-direct-conv.jsonl" --report "$OUT/ab-direct-conv.md" >"$OUT/ab-direct-conv.log" 2>&1
AB_RC=$?
fi
if [ -s "$OUT/ab-direct-conv.md" ]; then cat "$OUT/ab-direct-conv.md"; else tail -n 20 "$OUT/ab-direct-conv.log"; fi

step "results (tests rc=$TESTS_RC, direct-conv A/B rc=$AB_RC, race rc=$RACE_RC; files in $OUT)"
grep -E "passed|failed|error" "$OUT/gpu-tests.txt" | tail -n 1
if [ -s "$OUT/race.md" ]; then cat "$OUT/race.md"; else tail -n 20 "$OUT/race.log"; fi
[ -n "$NO_GPU" ] && echo "NO GPU: nothing above ran on a GPU ($NO_GPU)"
[ -z "$NO_GPU" ] && [ "$TESTS_RC" -eq 0 ] && [ "$RACE_RC" -eq 0 ]
