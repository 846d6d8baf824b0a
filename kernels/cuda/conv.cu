// Convolution as patch matrix + GEMM (the GEMM is cuBLAS, through cupy.matmul).
//
// The patch columns here are ordered (c, ky, kx), hence the _cyx names: the
// order of the weights' own (O, C, KH, KW) layout, so every GEMM takes the
// weights, and gives their gradient, as they are (a transpose flag to cuBLAS,
// never a copy). The CPU kernels order them (ky, kx, c) (im2col_yxc).
#include "common.cuh"

// Reference: kernels/reference.py im2col_cyx.
// cols (N*OH*OW, C*KH*KW) from x (N, H, W, C); row (n*OH + oy)*OW + ox holds
// the window of output pixel (oy, ox). Taps in the zero padding are 0.
XR_KERNEL(im2col_cyx)(real* __restrict__ cols, const real* __restrict__ x,
                      int h, int w, int c, int kh, int kw, int sh, int sw,
                      int ph, int pw, int oh, int ow, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int kx = (int)(i % kw);
        long long t = i / kw;
        int ky = (int)(t % kh);
        t /= kh;
        int ci = (int)(t % c);
        t /= c;
        int ox = (int)(t % ow);
        t /= ow;
        int oy = (int)(t % oh);
        long long b = t / oh;
        int iy = oy * sh - ph + ky;
        int ix = ox * sw - pw + kx;
        cols[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((b * h + iy) * w + ix) * c + ci] : (real)0;
    }
}

// Reference: kernels/reference.py col2im_cyx.
// The adjoint of im2col_cyx, written as a gather: each input element sums, in
// a fixed order, the patch entries that read it. No atomics.
XR_KERNEL(col2im_cyx)(real* __restrict__ dx, const real* __restrict__ dcols,
                      int h, int w, int c, int kh, int kw, int sh, int sw,
                      int ph, int pw, int oh, int ow, long long total)
{
    long long row_len = (long long)kh * kw * c;
    XR_GRID_STRIDE(i, total) {
        NhwcPos p = nhwc_pos(i, h, w, c);
        long long b = p.b;
        int y = p.y, x = p.x, ci = p.c;
        real acc = 0;
        for (int ky = 0; ky < kh; ++ky) {
            int ty = y + ph - ky;
            if (ty < 0 || ty % sh != 0) continue;
            int oy = ty / sh;
            if (oy >= oh) continue;
            for (int kx = 0; kx < kw; ++kx) {
                int tx = x + pw - kx;
                if (tx < 0 || tx % sw != 0) continue;
                int ox = tx / sw;
                if (ox >= ow) continue;
                acc += dcols[((b * oh + oy) * ow + ox) * row_len + ((long long)ci * kh + ky) * kw + kx];
            }
        }
        dx[i] = acc;
    }
}

// Reference: kernels/reference.py add_bias (relu == 0), bias_relu (relu != 0).
// Conv and dense epilogue, in place: y (M, C) <- y + b, or max(y + b, 0).
XR_KERNEL(bias_act)(real* __restrict__ y, const real* __restrict__ b, int c, int relu,
                    long long total)
{
    XR_GRID_STRIDE(i, total) {
        real v = y[i] + b[i % c];
        y[i] = (relu && !(v > (real)0)) ? (real)0 : v;
    }
}

// ---------------------------------------------------------------------------
// Direct convolution of a one-channel (grayscale) input: the first layer of
// every xraynet network. Its patch matrix would be KH*KW times the image and
// its GEMM has K = KH*KW (9 for 3x3), far too thin for cuBLAS to pay off, so
// these kernels read the image directly: no patch matrix, and with the fused
// pool no full-size pre-activation either. Weights (O, 1, KH, KW) as stored.

// Sum over the taps of one output pixel; taps in the zero padding skipped.
__device__ __forceinline__ real conv1_at(const real* __restrict__ img, const real* __restrict__ wo, int h, int w,
                                         int kh, int kw, int iy0, int ix0)
{
    real acc = 0;
    for (int ky = 0; ky < kh; ++ky) {
        int iy = iy0 + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < kw; ++kx) {
            int ix = ix0 + kx;
            if (ix >= 0 && ix < w) acc += img[(long long)iy * w + ix] * wo[ky * kw + kx];
        }
    }
    return acc;
}

// Reference: kernels/reference.py conv2d_forward (C = 1), then relu_forward with relu != 0.
// y (N, OH, OW, O) = conv(x (N, H, W, 1)) + b, then ReLU with relu != 0.
XR_KERNEL(conv1_direct)(real* __restrict__ y, const real* __restrict__ x, const real* __restrict__ wt,
                        const real* __restrict__ b, int h, int w, int o, int kh, int kw, int sh, int sw, int ph,
                        int pw, int oh, int ow, int relu, long long total)
{
    XR_GRID_STRIDE(i, total) {
        NhwcPos p = nhwc_pos(i, oh, ow, o);
        real v = conv1_at(x + p.b * h * w, wt + (long long)p.c * kh * kw, h, w, kh, kw, p.y * sh - ph,
                          p.x * sw - pw) + b[p.c];
        y[i] = (relu && !(v > (real)0)) ? (real)0 : v;
    }
}

// Reference: kernels/reference.py conv2d_forward (C = 1, no bias), then bias_maxpool_relu.
// Fused: pooled (N, QH, QW, O) = relu(maxpool(conv(x) + b)), idx the window
// position of the first maximum, as bias_maxpool_relu; each conv output is
// computed by conv1_at exactly as in conv1_direct, so the fused and the
// unfused stage agree bit for bit.
XR_KERNEL(conv1_direct_pool)(real* __restrict__ pooled, unsigned char* __restrict__ idx,
                             const real* __restrict__ x, const real* __restrict__ wt, const real* __restrict__ b,
                             int h, int w, int o, int kh, int kw, int sh, int sw, int ph, int pw, int pkh, int pkw,
                             int psh, int psw, int qh, int qw, long long total)
{
    XR_GRID_STRIDE(i, total) {
        NhwcPos p = nhwc_pos(i, qh, qw, o);
        const real* img = x + p.b * h * w;
        const real* wo = wt + (long long)p.c * kh * kw;
        real bc = b[p.c];
        real best = 0;
        int arg = 0;
        for (int wy = 0; wy < pkh; ++wy)
            for (int wx = 0; wx < pkw; ++wx) {
                int oy = p.y * psh + wy, ox = p.x * psw + wx;
                real v = conv1_at(img, wo, h, w, kh, kw, oy * sh - ph, ox * sw - pw) + bc;
                if ((wy == 0 && wx == 0) || v > best) {
                    best = v;
                    arg = wy * pkw + wx;
                }
            }
        pooled[i] = best < (real)0 ? (real)0 : best;
        idx[i] = (unsigned char)arg;
    }
}

// Reference: kernels/reference.py conv2d_backward (its dw, C = 1).
// Weight gradient of conv1_direct, pass 1: dw[o, ky, kx] = sum over output
// pixels m of g[m, o] * x[tap (ky, kx) of m]. Block `blockIdx.x` sums its
// slab of rows_per_part rows, in order, into partial[part, pair] (double)
// for every pair (o, ky*KW + kx); channel_reduce_final_real adds the slabs.
// Deterministic, like every reduction here.
XR_KERNEL(conv1_dw_partial)(double* __restrict__ partial, const real* __restrict__ g, const real* __restrict__ x,
                            int h, int w, int o, int kh, int kw, int sh, int sw, int ph, int pw, int oh, int ow,
                            long long m, long long rows_per_part)
{
    int pairs = o * kh * kw;
    long long r0 = (long long)blockIdx.x * rows_per_part;
    long long r1 = r0 + rows_per_part < m ? r0 + rows_per_part : m;
    for (int t = threadIdx.x; t < pairs; t += blockDim.x) {
        int oc = t / (kh * kw), k = t % (kh * kw);
        int ky = k / kw, kx = k % kw;
        double acc = 0;
        if (r0 < r1) {
            int ox = (int)(r0 % ow), oy = (int)(r0 / ow % oh);
            long long n = r0 / ((long long)ow * oh);
            for (long long r = r0; r < r1; ++r) {
                int iy = oy * sh - ph + ky, ix = ox * sw - pw + kx;
                if (iy >= 0 && iy < h && ix >= 0 && ix < w)
                    acc += (double)g[r * o + oc] * (double)x[(n * h + iy) * w + ix];
                if (++ox == ow) {
                    ox = 0;
                    if (++oy == oh) {
                        oy = 0;
                        ++n;
                    }
                }
            }
        }
        partial[(long long)blockIdx.x * pairs + t] = acc;
    }
}
