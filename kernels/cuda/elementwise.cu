// ReLU and global average pooling.
#include "common.cuh"

XR_KERNEL(relu_fwd)(const real* __restrict__ x, real* __restrict__ y, long long total)
{
    XR_GRID_STRIDE(i, total) {
        real v = x[i];
        y[i] = v > (real)0 ? v : (real)0;
    }
}

// ReLU gradient from the ReLU output y (PyTorch's convention: 0 at y == 0).
XR_KERNEL(relu_bwd)(const real* __restrict__ dy, const real* __restrict__ y,
                    real* __restrict__ dx, long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = y[i] > (real)0 ? dy[i] : (real)0;
    }
}

// y (N, C) = mean of x (N, HW, C) over HW, summed in double.
XR_KERNEL(gap_fwd)(const real* __restrict__ x, real* __restrict__ y, int hw, int c,
                   long long total)
{
    XR_GRID_STRIDE(i, total) {
        long long b = i / c;
        int ci = (int)(i % c);
        const real* p = x + b * hw * c + ci;
        double acc = 0;
        for (int k = 0; k < hw; ++k) acc += (double)p[(long long)k * c];
        y[i] = (real)(acc / hw);
    }
}

XR_KERNEL(gap_bwd)(const real* __restrict__ dy, real* __restrict__ dx, int hw, int c,
                   long long total)
{
    XR_GRID_STRIDE(i, total) {
        long long b = i / ((long long)hw * c);
        dx[i] = dy[b * c + i % c] / (real)hw;
    }
}
