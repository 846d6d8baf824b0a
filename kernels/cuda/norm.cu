// Batch normalisation over the channel (last) axis of an (M, C) matrix; the
// per-channel sums come from reduce.cu. Formulas as the CPU backend's
// (PyTorch's: biased variance to normalise, unbiased for the running
// estimate).
#include "common.cuh"

// Reference: kernels/reference.py batchnorm_forward_train (mean, biased variance)
// and batchnorm_running_stats.
// Training statistics: mean, inverse std, and the running estimates updated
// in place with `momentum`.
XR_KERNEL(batchnorm_stats)(double* __restrict__ mean, real* __restrict__ inv_std,
                           real* __restrict__ running_mean, real* __restrict__ running_var,
                           const double* __restrict__ sum, const double* __restrict__ sqdev,
                           long long m, int c, double momentum, double eps)
{
    XR_GRID_STRIDE(ch, (long long)c) {
        double mu = sum[ch] / m;
        double var = sqdev[ch] / m;
        mean[ch] = mu;
        double unbiased = var * m / (m > 1 ? m - 1 : 1);
        running_mean[ch] = running_mean[ch] * (real)(1 - momentum) + (real)(momentum * mu);
        running_var[ch] = running_var[ch] * (real)(1 - momentum) + (real)(momentum * unbiased);
        inv_std[ch] = (real)(1.0 / sqrt(var + eps));
    }
}

// Reference: kernels/reference.py batchnorm_forward_train.
// xhat = (x - mean) * inv_std, y = xhat * gamma + beta.
XR_KERNEL(batchnorm_forward_train)(real* __restrict__ y, real* __restrict__ xhat, const real* __restrict__ x,
                                   const double* __restrict__ mean, const real* __restrict__ inv_std,
                                   const real* __restrict__ gamma, const real* __restrict__ beta, int c,
                                   long long total)
{
    XR_GRID_STRIDE(i, total) {
        int ch = (int)(i % c);
        real xh = (x[i] - (real)mean[ch]) * inv_std[ch];
        xhat[i] = xh;
        y[i] = xh * gamma[ch] + beta[ch];
    }
}

// Reference: kernels/reference.py batchnorm_forward_eval.
// Evaluation: the affine map with the running statistics. With keep != 0
// also xhat (for a backward pass in evaluation mode, as Grad-CAM needs) and
// scale = gamma * inv_std per channel.
XR_KERNEL(batchnorm_forward_eval)(real* __restrict__ y, real* __restrict__ xhat, real* __restrict__ scale,
                                  const real* __restrict__ x, const real* __restrict__ gamma,
                                  const real* __restrict__ beta, const real* __restrict__ running_mean,
                                  const real* __restrict__ running_var, double eps, int keep, int c,
                                  long long total)
{
    XR_GRID_STRIDE(i, total) {
        int ch = (int)(i % c);
        real inv = (real)(1.0 / sqrt((double)running_var[ch] + eps));
        real s = gamma[ch] * inv;
        y[i] = x[i] * s + (beta[ch] - running_mean[ch] * s);
        if (keep) {
            xhat[i] = (x[i] - running_mean[ch]) * inv;
            if (i < c) scale[i] = s;
        }
    }
}

// Reference: kernels/reference.py batchnorm_backward_train (its dx).
// dx = gamma * inv_std * (dy - dbeta/m - xhat * dgamma/m); in evaluation
// mode (train == 0) dx = dy * scale, where `inv_std` holds scale.
XR_KERNEL(batchnorm_backward)(real* __restrict__ dx, const real* __restrict__ dy, const real* __restrict__ xhat,
                              const real* __restrict__ gamma, const real* __restrict__ inv_std,
                              const double* __restrict__ dbeta, const double* __restrict__ dgamma,
                              int train, long long m, int c, long long total)
{
    XR_GRID_STRIDE(i, total) {
        int ch = (int)(i % c);
        if (train)
            dx[i] = (gamma[ch] * inv_std[ch]) *
                    (dy[i] - (real)(dbeta[ch] / m) - xhat[i] * (real)(dgamma[ch] / m));
        else
            dx[i] = dy[i] * inv_std[ch];
    }
}
