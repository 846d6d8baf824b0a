// Per-channel sums of an (M, C) matrix in double, deterministic.
//
// Pass 1 (channel_reduce_partial): block (32, 8), grid (ceil(C/32), parts).
// Each block owns 32 channels and one slab of rows_per_part rows; thread
// (tx, ty) sums rows ty, ty+8, ... of its slab, then the 8 partial sums are
// added in a fixed order. Pass 2 (channel_reduce_final*) adds the slabs in
// order. The split depends only on M and C, never on timing, so results are
// bit-identical run to run. With a single slab (direct != 0) pass 1 writes
// the result itself, as `real` into out_real: small reductions (a dense
// layer's bias over a batch) take one launch.
//
// mode 0: sum x                       (bias and beta gradients)
// mode 1: sum x where y > 0           (bias gradient through a fused ReLU)
// mode 2: sum (x - mean[c])^2         (batch-norm variance)
// mode 3: sum x * y                   (gamma gradient)
#include "common.cuh"

// Reference: kernels/reference.py channel_sum (modes 0 and 1, y the mask), and
// the sums of batchnorm_forward_train (mode 2) and batchnorm_backward_train (mode 3).
XR_KERNEL(channel_reduce_partial)(double* __restrict__ partial, real* __restrict__ out_real,
                                  const real* __restrict__ x, const real* __restrict__ y,
                                  const double* __restrict__ mean, int mode, long long m, int c,
                                  long long rows_per_part, int direct)
{
    __shared__ double lanes[8][32];
    int tx = threadIdx.x, ty = threadIdx.y;
    int ch = blockIdx.x * 32 + tx;
    long long r0 = (long long)blockIdx.y * rows_per_part;
    long long r1 = r0 + rows_per_part < m ? r0 + rows_per_part : m;
    double acc = 0;
    if (ch < c) {
        double mu = mode == 2 ? mean[ch] : 0.0;
        for (long long r = r0 + ty; r < r1; r += 8) {
            double v = (double)x[r * c + ch];
            if (mode == 1) {
                if (!(y[r * c + ch] > (real)0)) v = 0;
            } else if (mode == 2) {
                v -= mu;
                v *= v;
            } else if (mode == 3) {
                v *= (double)y[r * c + ch];
            }
            acc += v;
        }
    }
    lanes[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && ch < c) {
        double s = 0;
        for (int k = 0; k < 8; ++k) s += lanes[k][tx];
        if (direct) out_real[ch] = (real)s;
        else partial[(long long)blockIdx.y * c + ch] = s;
    }
}

// Reference: kernels/reference.py channel_sum (pass 2: adds the slabs of channel_reduce_partial).
XR_KERNEL(channel_reduce_final)(double* __restrict__ out, const double* __restrict__ partial, int parts, int c)
{
    XR_GRID_STRIDE(ch, (long long)c) {
        double s = 0;
        for (int k = 0; k < parts; ++k) s += partial[(long long)k * c + ch];
        out[ch] = s;
    }
}

// Reference: kernels/reference.py channel_sum (pass 2, the result rounded to `real`).
XR_KERNEL(channel_reduce_final_real)(real* __restrict__ out, const double* __restrict__ partial, int parts,
                                     int c)
{
    XR_GRID_STRIDE(ch, (long long)c) {
        double s = 0;
        for (int k = 0; k < parts; ++k) s += partial[(long long)k * c + ch];
        out[ch] = (real)s;
    }
}
