// ReLU and global average pooling.
#include "common.cuh"

// Reference: kernels/reference.py relu_forward.
XR_KERNEL(relu_forward)(real* __restrict__ y, const real* __restrict__ x, long long total)
{
    XR_GRID_STRIDE(i, total) {
        real v = x[i];
        y[i] = v > (real)0 ? v : (real)0;
    }
}

// Reference: kernels/reference.py relu_backward.
// ReLU gradient from the ReLU output y (PyTorch's convention: 0 at y == 0).
XR_KERNEL(relu_backward)(real* __restrict__ dx, const real* __restrict__ dy, const real* __restrict__ y,
                         long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = y[i] > (real)0 ? dy[i] : (real)0;
    }
}

// Reference: kernels/reference.py global_avg_pool_forward.
// y (N, C) = mean of x (N, HW, C) over HW, summed in double.
XR_KERNEL(global_avg_pool_forward)(real* __restrict__ y, const real* __restrict__ x, int hw, int c,
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

// Reference: kernels/reference.py global_avg_pool_backward.
XR_KERNEL(global_avg_pool_backward)(real* __restrict__ dx, const real* __restrict__ dy, int hw, int c,
                                    long long total)
{
    XR_GRID_STRIDE(i, total) {
        long long b = i / ((long long)hw * c);
        dx[i] = dy[b * c + i % c] / (real)hw;
    }
}
