// Max pooling (no padding, floor mode) with the argmax kept as a uint8 window
// position ky*KW + kx, ties to the first maximum as in PyTorch; and the fused
// conv epilogue bias + ReLU + max pool. Backward passes are gathers: each
// input element collects, in a fixed order, the gradient of every window
// whose recorded maximum it is.
#include "common.cuh"

// The first maximum of the pooling window at `base` (of values + bias with
// HasBias): its value, and its position ky*KW + kx in *arg. Ties keep the
// earlier element, as PyTorch does.
template <bool HasBias>
__device__ __forceinline__ real window_max(const real* __restrict__ base, real bias, int w, int c, int kh, int kw,
                                           int* arg)
{
    real best = HasBias ? base[0] + bias : base[0];
    *arg = 0;
    for (int ky = 0; ky < kh; ++ky)
        for (int kx = 0; kx < kw; ++kx) {
            real v = base[((long long)ky * w + kx) * c];
            if (HasBias) v += bias;
            if (v > best) {
                best = v;
                *arg = ky * kw + kx;
            }
        }
    return best;
}

// The window of pooled output i (N, OH, OW, C) in an input of H x W x C.
__device__ __forceinline__ long long window_start(long long i, int h, int w, int c, int sh, int sw, int oh, int ow)
{
    NhwcPos p = nhwc_pos(i, oh, ow, c);
    return ((p.b * h + (long long)p.y * sh) * w + (long long)p.x * sw) * c + p.c;
}

// Reference: kernels/reference.py maxpool2d_forward.
XR_KERNEL(maxpool2d_forward)(real* __restrict__ y, unsigned char* __restrict__ idx, const real* __restrict__ x,
                             int h, int w, int c, int kh, int kw, int sh, int sw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int arg;
        y[i] = window_max<false>(x + window_start(i, h, w, c, sh, sw, oh, ow), (real)0, w, c, kh, kw, &arg);
        idx[i] = (unsigned char)arg;
    }
}

// dx (N, H, W, C) from dy, idx (N, OH, OW, C). With relu_mask != 0 the
// gradient passes only where the pooled output y > 0 (the fused ReLU).
__device__ __forceinline__ real pool_gather(const real* __restrict__ dy, const real* __restrict__ y,
                                            const unsigned char* __restrict__ idx, int relu_mask, long long i,
                                            int h, int w, int c, int kh, int kw, int sh, int sw, int oh, int ow)
{
    NhwcPos p = nhwc_pos(i, h, w, c);
    long long b = p.b;
    int yy = p.y, x = p.x, ci = p.c;
    int oy0 = yy >= kh ? (yy - kh) / sh + 1 : 0;
    int ox0 = x >= kw ? (x - kw) / sw + 1 : 0;
    int oy1 = yy / sh < oh - 1 ? yy / sh : oh - 1;
    int ox1 = x / sw < ow - 1 ? x / sw : ow - 1;
    real acc = 0;
    for (int oy = oy0; oy <= oy1; ++oy)
        for (int ox = ox0; ox <= ox1; ++ox) {
            long long o = ((b * oh + oy) * ow + ox) * c + ci;
            if (idx[o] == (yy - oy * sh) * kw + (x - ox * sw) && (!relu_mask || y[o] > (real)0)) acc += dy[o];
        }
    return acc;
}

// Reference: kernels/reference.py maxpool2d_backward.
XR_KERNEL(maxpool2d_backward)(real* __restrict__ dx, const real* __restrict__ dy,
                              const unsigned char* __restrict__ idx, int h, int w, int c, int kh, int kw,
                              int sh, int sw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = pool_gather(dy, dy, idx, 0, i, h, w, c, kh, kw, sh, sw, oh, ow);
    }
}

// Reference: kernels/reference.py bias_maxpool_relu.
// y = relu(maxpool(pre + b)), idx as maxpool2d_forward of pre + b. The bias
// is added before comparing, so ties that rounding creates go to the first
// element exactly as in the unfused chain (see kernels/cpu.py).
XR_KERNEL(bias_maxpool_relu)(real* __restrict__ y, unsigned char* __restrict__ idx, const real* __restrict__ pre,
                             const real* __restrict__ bias, int h, int w, int c, int kh, int kw, int sh, int sw,
                             int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int arg;
        real best = window_max<true>(pre + window_start(i, h, w, c, sh, sw, oh, ow), bias[i % c], w, c, kh, kw,
                                     &arg);
        y[i] = best < (real)0 ? (real)0 : best;
        idx[i] = (unsigned char)arg;
    }
}

// Reference: kernels/reference.py maxpool_relu_backward.
XR_KERNEL(maxpool_relu_backward)(real* __restrict__ dx, const real* __restrict__ dy, const real* __restrict__ y,
                                 const unsigned char* __restrict__ idx, int h, int w, int c, int kh, int kw,
                                 int sh, int sw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = pool_gather(dy, y, idx, 1, i, h, w, c, kh, kw, sh, sw, oh, ow);
    }
}
