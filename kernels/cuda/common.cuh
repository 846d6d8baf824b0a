// Shared definitions of the xraynet CUDA kernels.
//
// Every kernel is written once for `real`, which the loader defines as float
// or double (-DXR_REAL=... -DXR_SUFFIX=_f32 or _f64), and compiled once per
// precision. Sources are
// self-contained CUDA C: no standard headers, so NVRTC (what CuPy's
// RawModule compiles with) and nvcc both take them as they are.
//
// Layout: activations NHWC, as in the CPU kernels. Conv weights stay as
// stored, (O, C, KH, KW), and the patch matrices order their columns to match,
// (c, ky, kx) (im2col_cyx), where the CPU kernels order them (ky, kx, c) and
// transpose the weights instead. Flat indices are long long: a batch of 256
// `wide` patch matrices has more than 2^31 elements.
//
// Names and arguments: an entry point has the name of its NumPy reference in
// kernels/reference.py (named in a comment above it) and takes its arrays
// first, outputs before inputs, then its scalars; the loader checks the order.
//
// Determinism: no kernel uses float atomics. Every gradient that sums over
// several sources (col2im, pool backward, channel reductions) gathers them in
// a fixed order, so two runs give bit-identical results.
#pragma once

#ifndef XR_REAL
#define XR_REAL float
#define XR_SUFFIX _f32
#endif
typedef XR_REAL real;

// Entry points are extern "C" and carry their precision in the name
// (im2col_cyx_f32, im2col_cyx_f64), so profiler traces say which one ran.
#define XR_CAT2(a, b) a##b
#define XR_CAT(a, b) XR_CAT2(a, b)
#define XR_KERNEL(name) extern "C" __global__ void XR_CAT(name, XR_SUFFIX)

// A grid-stride loop over [0, n): correct for any grid size, so the host may
// cap the grid (see xraynet/backends/cudakernels.py).
#define XR_GRID_STRIDE(i, n)                                                     \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

// Where flat index i lies in an NHWC array of H x W pixels of C channels.
struct NhwcPos {
    long long b;
    int y, x, c;
};

__device__ __forceinline__ NhwcPos nhwc_pos(long long i, int h, int w, int c)
{
    NhwcPos p;
    p.c = (int)(i % c);
    long long t = i / c;
    p.x = (int)(t % w);
    t /= w;
    p.y = (int)(t % h);
    p.b = t / h;
    return p;
}
