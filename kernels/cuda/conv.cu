// Convolution as patch matrix + GEMM (the GEMM is cuBLAS, through cupy.matmul).
//
// im2col:  cols (N*OH*OW, C*KH*KW) from x (N, H, W, C); row (n*OH + oy)*OW + ox
//          holds the window of output pixel (oy, ox), ordered (c, ky, kx): the
//          order of the weights' own (O, C, KH, KW) layout, so every GEMM takes
//          the weights, and gives their gradient, as they are (a transpose
//          flag to cuBLAS, never a copy). Taps in the zero padding are 0.
// col2im:  its adjoint, written as a gather: each input element sums, in a
//          fixed order, the patch entries that read it. No atomics.
#include "common.cuh"

XR_KERNEL(im2col)(const real* __restrict__ x, real* __restrict__ cols,
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

XR_KERNEL(col2im)(const real* __restrict__ dcols, real* __restrict__ dx,
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

// Conv epilogue: y (M, C) <- y + b, or max(y + b, 0) with relu != 0.
XR_KERNEL(bias_act)(real* __restrict__ y, const real* __restrict__ b, int c, int relu,
                                    long long total)
{
    XR_GRID_STRIDE(i, total) {
        real v = y[i] + b[i % c];
        y[i] = (relu && !(v > (real)0)) ? (real)0 : v;
    }
}
