"""The host machine as the CPU backend sees it: its processor (name, the target
Numba compiles for, its vector instruction sets, the BLAS kernels NumPy picked),
and the C allocator's handling of freed memory.

Benchmark figures depend on the kind of processor far more than on its clock:
the same kernels beat PyTorch on an AVX-512 Xeon and lost on an AVX2-only
EPYC. :func:`cpu_description` is printed by ``xraynet info`` and stored in every
``xraynet bench --json`` row, so rows from different machine kinds are never
compared by mistake; :func:`machine_kind` names the file under
``benchmarks/results/`` that a machine's figures go to."""
from __future__ import annotations

import platform


def cpu_model_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Vector instruction sets that decide kernel speed, as LLVM names them (x86: SSE4 to
# AVX-512 and AMX; Arm: NEON, SVE). Others (aes, bmi, ...) do not matter here.
_SIMD_PREFIXES = ("sse4", "avx", "fma", "amx", "neon", "sve")


def cpu_simd_flags() -> list[str]:
    """The vector instruction sets of this processor that Numba may use, sorted
    (LLVM's names: ``avx2``, ``fma``, ``avx512f``, ...). Empty when LLVM cannot tell.

    Numba's ``NUMBA_CPU_FEATURES`` (e.g. ``-avx512f,-avx512bw``, to run the
    kernels as an AVX2-only machine would) adds or removes flags as it does
    for the compiler."""
    try:
        from llvmlite import binding
        features = dict(binding.get_host_cpu_features())
    except Exception:  # llvmlite missing, or a platform it cannot query
        return []
    for item in _numba_config("CPU_FEATURES").split(","):
        item = item.strip()
        if item[:1] in "+-" and len(item) > 1:
            features[item[1:]] = item[0] == "+"
    return sorted(name for name, on in features.items() if on and name.startswith(_SIMD_PREFIXES))


def _numba_config(name: str) -> str:
    """Numba's ``config.<name>`` (set from ``NUMBA_<name>``) as a string, "" when unset."""
    try:
        from numba.core import config
    except ImportError:
        return ""
    return str(getattr(config, name, "") or "")


def _numba_target() -> str:
    """The CPU name LLVM compiles Numba kernels for (``znver4``, ``skylake-avx512``, ...):
    ``NUMBA_CPU_NAME`` where it is set, else the host's."""
    chosen = _numba_config("CPU_NAME")
    if chosen and chosen != "host":
        return chosen
    try:
        from llvmlite import binding
        return binding.get_host_cpu_name()
    except Exception:
        return "unknown"


def _blas() -> str:
    """The BLAS behind numpy.matmul and the kernel set it chose, e.g. ``openblas 0.3.31 (SkylakeX)``."""
    from threadpoolctl import threadpool_info

    pools = [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]
    if not pools:
        return "none found"
    # Other libraries can load a BLAS of their own; numpy.matmul runs on the one numpy ships or links.
    pool = min(pools, key=lambda pool: "numpy" not in str(pool.get("filepath", "")))
    kernels = f" ({pool['architecture']})" if pool.get("architecture") else ""
    return f"{pool.get('internal_api', 'blas')} {pool.get('version', '')}".strip() + kernels


def cpu_description() -> dict:
    """This machine's processor as benchmark rows and ``xraynet info`` record it.

    Keys: ``cpu_model`` (/proc/cpuinfo's model name), ``cpu_target`` (what
    Numba compiles for), ``cpu_simd`` (list of str, :func:`cpu_simd_flags`),
    ``cpu_cores`` (cores this process may run on), ``blas`` (library, version,
    kernel set), ``machine_kind`` (:func:`machine_kind`)."""
    import os

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    simd = cpu_simd_flags()
    model = cpu_model_name()
    return {"cpu_model": model, "cpu_target": _numba_target(), "cpu_simd": simd, "cpu_cores": cores,
            "blas": _blas(), "machine_kind": machine_kind(model, simd)}


def machine_kind(model: str, simd: list[str]) -> str:
    """A short file-name-safe name of the machine kind: vendor family plus the widest
    vector set, e.g. ``amd-epyc-avx512`` or ``intel-xeon-avx2``. Two machines of one
    kind run xraynet's kernels alike; figures of different kinds are not comparable."""
    import re

    words = re.sub(r"\(r\)|\(tm\)|processor|cpu|@.*", " ", model.lower())
    family = "-".join(re.findall(r"[a-z]+", words)[:2]) or "cpu"
    if "avx512f" in simd:
        width = "avx512"
    elif "avx2" in simd:
        width = "avx2"
    elif any(f.startswith(("neon", "sve")) for f in simd):
        width = "sve" if any(f.startswith("sve") for f in simd) else "neon"
    else:
        width = "sse" if any(f.startswith("sse4") for f in simd) else "scalar"
    return f"{family}-{width}"


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large temporaries (im2col
    matrices, gradient maps: hundreds of MB for `wide`). By default glibc serves
    each from a fresh mmap and unmaps it on free, so every step pays page
    faults and kernel zeroing on first touch: about a third of a `seed`
    training step (347 vs 503 images/s). With mmap off and trimming raised,
    the heap keeps those pages and the next step reuses them. No effect
    outside glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)
