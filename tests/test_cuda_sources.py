"""The CUDA C sources without a GPU: every ``.cu`` file compiles with nvcc for
the GPUs we run on (sm_80, sm_90) in both precisions, the joined module the
GPU backend loads compiles too, a compiler error names file and line, the
sources stay NVRTC-clean, and the launcher and the CPU emulator behave.

nvcc ships with the CUDA toolkit, which needs no GPU; where it is missing
the compile tests skip with the reason.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xraynet.backends.cudakernels import (COMMON, SOURCES, KernelSet, compile_options, module_source,
                                          parse_signatures, source_dir)
from xraynet.errors import KernelError

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = source_dir()
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc (CUDA toolkit) not on PATH: cannot compile the .cu files")


def nvcc_ptx(src: Path, arch: str, dtype, tmp_path: Path, include: Path | None = None):
    """Compile ``src`` to PTX; fail with nvcc's own file:line messages."""
    cmd = [NVCC, "--ptx", f"-arch={arch}", *compile_options(dtype), str(src), "-o", str(tmp_path / "out.ptx")]
    if include is not None:
        cmd[1:1] = ["-I", str(include)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"nvcc {arch} {np.dtype(dtype).name} failed on {src.name}:\n{r.stderr.strip()}", pytrace=False)
    return (tmp_path / "out.ptx").read_text()


def test_the_kernel_folder_holds_exactly_the_listed_sources():
    assert CUDA_DIR.is_dir(), f"{CUDA_DIR}: missing; the .cu files ship as package data of xraynet.kernels"
    found = sorted(p.name for p in CUDA_DIR.glob("*.cu"))
    assert found == sorted(SOURCES), \
        f"kernels/cuda holds {found}; xraynet.backends.cudakernels.SOURCES lists {sorted(SOURCES)}"


@needs_nvcc
@pytest.mark.parametrize("arch,dtype", [("sm_80", np.float32), ("sm_90", np.float64)], ids=["sm80-f32", "sm90-f64"])
@pytest.mark.parametrize("name", SOURCES)
def test_each_cu_file_compiles_on_its_own(name, arch, dtype, tmp_path):
    ptx = nvcc_ptx(CUDA_DIR / name, arch, dtype, tmp_path, include=CUDA_DIR)
    suffix = "_f32" if dtype == np.float32 else "_f64"
    for kernel in parse_signatures((CUDA_DIR / name).read_text()):
        assert f".entry {kernel}{suffix}(" in ptx, f"{name}: entry point {kernel}{suffix} missing from the PTX"


@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_the_joined_module_compiles(arch, dtype, tmp_path):
    """What cupy.RawModule compiles on a GPU: all files as one source."""
    src = tmp_path / "module.cu"
    src.write_text(module_source())
    nvcc_ptx(src, arch, dtype, tmp_path)


@needs_nvcc
def test_a_compile_error_names_the_file_and_line(tmp_path):
    broken = tmp_path / "cuda"
    shutil.copytree(CUDA_DIR, broken)
    text = (broken / "pool.cu").read_text().splitlines()
    line = next(i for i, l in enumerate(text) if l.strip() == "*arg = 0;")
    text[line] = text[line].replace(";", "")
    (broken / "pool.cu").write_text("\n".join(text) + "\n")
    src = tmp_path / "module.cu"
    src.write_text(module_source(broken))
    r = subprocess.run([NVCC, "--ptx", "-arch=sm_80", *compile_options(np.float32), str(src), "-o",
                        str(tmp_path / "out.ptx")], capture_output=True, text=True)
    assert r.returncode != 0
    assert f"pool.cu({line + 1})" in r.stderr, f"expected pool.cu({line + 1}) in nvcc's message:\n{r.stderr}"


def test_sources_are_nvrtc_clean():
    """NVRTC (CuPy's compiler) has no system headers: the only include is common.cuh."""
    for path in [CUDA_DIR / COMMON, *(CUDA_DIR / s for s in SOURCES)]:
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.match(r"\s*#\s*include", line):
                assert '"common.cuh"' in line, f"{path.name}:{i}: {line.strip()!r}: only common.cuh may be included"


def test_every_kernel_is_parsed_and_used_by_the_backend():
    sigs = parse_signatures(module_source())
    assert len(sigs) >= 20, f"only {len(sigs)} kernels found: {sorted(sigs)}"
    backend_src = (ROOT / "xraynet" / "backends" / "gpu.py").read_text()
    unused = [k for k in sigs if not re.search(rf"\.{k}(\.launch)?\(", backend_src)]
    assert not unused, f"kernels never launched by xraynet/backends/gpu.py: {unused}"


def test_every_entry_point_names_its_reference():
    """One op, one name: the comment block right above each entry point says
    `// Reference: kernels/reference.py <function>`, and that function exists."""
    from xraynet.kernels import reference

    for name in SOURCES:
        text = (CUDA_DIR / name).read_text()
        for m in re.finditer(r"XR_KERNEL\((\w+)\)", text):
            above = text[:m.start()].rstrip().rsplit("\n\n", 1)[-1]
            ref = re.search(r"// Reference: kernels/reference\.py (\w+)", above)
            assert ref, f"{name}: kernel {m.group(1)} has no '// Reference: kernels/reference.py ...' comment above it"
            assert hasattr(reference, ref.group(1)), \
                f"{name}: kernel {m.group(1)} names reference {ref.group(1)}, which kernels/reference.py lacks"


def test_cupy_is_imported_in_two_modules_only_and_inside_functions():
    """STYLE.md: cupy lives in xraynet/devices.py and xraynet/backends/cuda_runtime.py, imported lazily."""
    where = {}
    for path in [*ROOT.glob("xraynet/**/*.py"), *ROOT.glob("cli/**/*.py"), *ROOT.glob("kernels/**/*.py")]:
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "cupy" or n.startswith("cupy.") for n in names):
                rel = str(path.relative_to(ROOT))
                assert id(node) not in top, f"{rel}:{node.lineno}: cupy imported at module level"
                where.setdefault(rel, []).append(node.lineno)
    assert sorted(where) == ["xraynet/backends/cuda_runtime.py", "xraynet/devices.py"], f"cupy imported in {where}"


def test_import_and_cli_work_without_cupy():
    code = ("import sys; sys.modules['cupy'] = None\n"
            "import xraynet, xraynet.backends.gpu, xraynet.backends.cudakernels, xraynet.cli.main\n"
            "from xraynet.backends import get_backend\n"
            "from xraynet.errors import BackendError\n"
            "assert get_backend('auto').name == 'cpu'\n"
            "try:\n    get_backend('gpu')\nexcept BackendError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "CuPy" in r.stdout and "xraynet[gpu]" in r.stdout, r.stdout


# --------------------------------------------------- launcher and emulator
@pytest.fixture(scope="module")
def emu():
    from helpers import emulated_gpu_backend

    return emulated_gpu_backend()


@pytest.fixture(scope="module")
def emu_kernels(emu):
    """The float32 kernels on the emulator, every launch checked."""
    from cudaemu import compile_module

    return KernelSet(np.float32, compile_module, checked=True)


def test_checked_launches_reject_wrong_arguments(emu_kernels):
    k = emu_kernels.relu_forward
    x = np.ones(8, np.float32)
    with pytest.raises(KernelError, match="2 arguments. Expected 3"):
        k.launch(8, x, x)
    with pytest.raises(KernelError, match="dtype float64. Expected float32"):
        k.launch(8, np.empty(8, np.float32), x.astype(np.float64), 8)
    with pytest.raises(KernelError, match="not C-contiguous"):
        k.launch(4, np.empty(4, np.float32), np.ones(8, np.float32)[::2], 4)
    with pytest.raises(KernelError, match="Expected an array"):
        k.launch(8, np.empty(8, np.float32), [1.0] * 8, 8)


def test_a_kernel_with_an_array_after_a_scalar_is_refused():
    """Arrays first (outputs, then inputs), then scalars: the launcher joins them by slicing."""
    src = "XR_KERNEL(late)(real* y, int n, const real* x) {}"
    with pytest.raises(KernelError, match="array parameter x follows a scalar"):
        parse_signatures(src)


def test_scalars_are_converted_to_the_declared_types(emu_kernels):
    """A Python int for a `long long`, a float for a `double`, an int for `real`:
    each reaches the kernel as declared (the emulator's ctypes would reject
    a wrong width)."""
    ks = emu_kernels
    y = np.arange(6, dtype=np.float32).reshape(2, 3) - 2
    b = np.array([1.0, -1.0, 0.5], np.float32)
    ks.bias_act.launch(y.size, y, b, 3, True, y.size)
    assert np.array_equal(y, np.maximum(np.arange(6).reshape(2, 3) - 2 + b, 0).astype(np.float32))


def test_emulator_reports_a_divergent_syncthreads(tmp_path):
    from cudaemu import EmulatorError, compile_module

    src = ((CUDA_DIR / COMMON).read_text().replace("#pragma once", "") +
           "XR_KERNEL(diverge)(real* x) {\n"
           "    if (threadIdx.x == 0) return;\n"
           "    __syncthreads();\n"
           "    x[threadIdx.x] = 1;\n"
           "}\n")
    ks = KernelSet(np.float32, compile_module, checked=True, source=src)
    with pytest.raises(EmulatorError, match="divergent __syncthreads"):
        ks.diverge((1,), (4,), np.zeros(4, np.float32))


def test_emulator_runs_shared_memory_blocks_like_a_gpu(emu):
    """The two-pass channel reduction (shared memory + barriers) over many
    slabs and a channel count that is not a multiple of 32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5000, 37)).astype(np.float32)
    y = rng.standard_normal((5000, 37)).astype(np.float32)
    got = emu._channel_reduce(x)
    assert np.allclose(got, x.astype(np.float64).sum(0), rtol=1e-12, atol=1e-9)
    masked = emu._channel_reduce(x, mode=1, y=y)
    assert np.allclose(masked, np.where(y > 0, x, 0).astype(np.float64).sum(0), rtol=1e-12, atol=1e-9)
    mean = x.astype(np.float64).mean(0)
    sq = emu._channel_reduce(x, mode=2, mean=mean)
    assert np.allclose(sq, ((x - mean) ** 2).sum(0), rtol=1e-9)


# ------------------------------------------------ NVRTC, as CuPy compiles
def _find_nvrtc():
    """libnvrtc from the CUDA toolkit or from the nvidia-cuda-nvrtc wheel, if any."""
    import ctypes.util
    import glob

    candidates = [ctypes.util.find_library("nvrtc")]
    try:
        import nvidia.cuda_nvrtc as pkg  # the pip wheel (e.g. nvidia-cuda-nvrtc-cu12)

        for base in pkg.__path__:
            candidates += sorted(glob.glob(str(Path(base) / "lib" / "libnvrtc.so*")))
    except ImportError:
        pass
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    return next((c for c in candidates if c and "builtins" not in c and ".alt." not in c), None)


def nvrtc_compile(source: str, options) -> tuple[int, str]:
    import ctypes

    lib = ctypes.CDLL(_find_nvrtc())
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), b"xraynet.cu", 0, None, None) == 0
    opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
    rc = lib.nvrtcCompileProgram(prog, len(options), opts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace")


@pytest.mark.skipif(_find_nvrtc() is None, reason="libnvrtc not found (CUDA toolkit or nvidia-cuda-nvrtc wheel): "
                                                  "the nvcc tests above cover compilation")
@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_the_joined_module_compiles_with_nvrtc(arch, dtype):
    """Exactly what cupy.RawModule does with the backend's source and options."""
    rc, log = nvrtc_compile(module_source(), [*compile_options(dtype), f"-arch={arch}"])
    assert rc == 0, f"NVRTC {arch} {np.dtype(dtype).name} failed:\n{log}"
