// Max pooling (no padding, floor mode) with the argmax kept as a uint8 window
// position ky*KW + kx, ties to the first maximum as in PyTorch; and the fused
// conv epilogue bias + ReLU + max pool. Backward passes are gathers: each
// input element collects, in a fixed order, the gradient of every window
// whose recorded maximum it is.
#include "common.cuh"

XR_KERNEL(maxpool_fwd)(const real* __restrict__ x, real* __restrict__ y,
                                       unsigned char* __restrict__ idx, int h, int w, int c,
                                       int kh, int kw, int sh, int sw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int ci = (int)(i % c);
        long long t = i / c;
        int ox = (int)(t % ow);
        t /= ow;
        int oy = (int)(t % oh);
        long long b = t / oh;
        const real* base = x + ((b * h + (long long)oy * sh) * w + (long long)ox * sw) * c + ci;
        real best = base[0];
        int arg = 0;
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                real v = base[((long long)ky * w + kx) * c];
                if (v > best) {
                    best = v;
                    arg = ky * kw + kx;
                }
            }
        y[i] = best;
        idx[i] = (unsigned char)arg;
    }
}

// dx (N, H, W, C) from dy, idx (N, OH, OW, C). With relu_mask != 0 the
// gradient passes only where the pooled output y > 0 (the fused ReLU).
__device__ __forceinline__ real pool_gather(const real* __restrict__ dy, const real* __restrict__ y,
                                            const unsigned char* __restrict__ idx, int relu_mask, long long i,
                                            int h, int w, int c, int kh, int kw, int sh, int sw, int oh, int ow)
{
    int ci = (int)(i % c);
    long long t = i / c;
    int x = (int)(t % w);
    t /= w;
    int yy = (int)(t % h);
    long long b = t / h;
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

XR_KERNEL(maxpool_bwd)(const real* __restrict__ dy, const unsigned char* __restrict__ idx,
                                       real* __restrict__ dx, int h, int w, int c, int kh, int kw,
                                       int sh, int sw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = pool_gather(dy, dy, idx, 0, i, h, w, c, kh, kw, sh, sw, oh, ow);
    }
}

// y = relu(maxpool(pre + b)), idx as maxpool_fwd of pre + b. The bias is
// added before comparing, so ties that rounding creates go to the first
// element exactly as in the unfused chain (see kernels/cpu.py).
XR_KERNEL(bias_maxpool_relu)(const real* __restrict__ pre, const real* __restrict__ bias,
                                             real* __restrict__ y, unsigned char* __restrict__ idx,
                                             int h, int w, int c, int kh, int kw, int sh, int sw,
                                             int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int ci = (int)(i % c);
        long long t = i / c;
        int ox = (int)(t % ow);
        t /= ow;
        int oy = (int)(t % oh);
        long long b = t / oh;
        const real* base = pre + ((b * h + (long long)oy * sh) * w + (long long)ox * sw) * c + ci;
        real bc = bias[ci];
        real best = base[0] + bc;
        int arg = 0;
        for (int ky = 0; ky < kh; ++ky)
            for (int kx = 0; kx < kw; ++kx) {
                real v = base[((long long)ky * w + kx) * c] + bc;
                if (v > best) {
                    best = v;
                    arg = ky * kw + kx;
                }
            }
        y[i] = best < (real)0 ? (real)0 : best;
        idx[i] = (unsigned char)arg;
    }
}

XR_KERNEL(maxpool_relu_bwd)(const real* __restrict__ dy, const real* __restrict__ y,
                                            const unsigned char* __restrict__ idx, real* __restrict__ dx,
                                            int h, int w, int c, int kh, int kw, int sh, int sw,
                                            int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        dx[i] = pool_gather(dy, y, idx, 1, i, h, w, c, kh, kw, sh, sw, oh, ow);
    }
}
