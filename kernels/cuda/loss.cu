// Losses with their gradients, one launch each: a single block of
// XR_LOSS_THREADS threads walks the batch (N is a batch size: small), sums in
// double and reduces in a fixed tree, so the loss is deterministic.
//
// Both return the mean loss over the batch, or with class weights (use_w != 0,
// one weight per class) the weighted mean sum(w_i * l_i) / sum(w_i); dz is
// the gradient of that value.
#include "common.cuh"

#define XR_LOSS_THREADS 256

__device__ double block_sum(double v, double* red)
{
    int t = threadIdx.x;
    red[t] = v;
    __syncthreads();
    for (int s = XR_LOSS_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) red[t] += red[t + s];
        __syncthreads();
    }
    double total = red[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ double weight_of(const long long* __restrict__ labels, const double* __restrict__ class_w,
                                            int use_w, int i)
{
    return use_w ? class_w[labels[i]] : 1.0;
}

// sum of the batch's weights (N when unweighted), in every thread.
__device__ double total_weight(const long long* __restrict__ labels, const double* __restrict__ class_w, int use_w,
                               int n, double* red)
{
    double s = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) s += weight_of(labels, class_w, use_w, i);
    return block_sum(s, red);
}

// Reference: kernels/reference.py softmax_cross_entropy.
// Softmax cross-entropy on logits z (N, K) with integer labels (N,).
XR_KERNEL(softmax_cross_entropy)(real* __restrict__ dz, double* __restrict__ loss, const real* __restrict__ z,
                                 const long long* __restrict__ labels, const double* __restrict__ class_w,
                                 int use_w, int n, int k)
{
    __shared__ double red[XR_LOSS_THREADS];
    double total_w = total_weight(labels, class_w, use_w, n, red);
    double lsum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const real* row = z + (long long)i * k;
        int y = (int)labels[i];
        double zmax = (double)row[0];
        for (int j = 1; j < k; ++j) zmax = (double)row[j] > zmax ? (double)row[j] : zmax;
        double se = 0;
        for (int j = 0; j < k; ++j) se += exp((double)row[j] - zmax);
        double lse = zmax + log(se);
        double wi = weight_of(labels, class_w, use_w, i);
        lsum += wi * (lse - (double)row[y]);
        for (int j = 0; j < k; ++j) {
            double p = exp((double)row[j] - lse) - (j == y ? 1.0 : 0.0);
            dz[(long long)i * k + j] = (real)(p * (wi / total_w));
        }
    }
    double l = block_sum(lsum, red);
    if (threadIdx.x == 0) loss[0] = l / total_w;
}

// Reference: kernels/reference.py sigmoid_bce.
// Binary cross-entropy on one logit per image, z (N,), labels (N,) in {0, 1}.
XR_KERNEL(sigmoid_bce)(real* __restrict__ dz, double* __restrict__ loss, const real* __restrict__ z,
                       const long long* __restrict__ labels, const double* __restrict__ class_w, int use_w,
                       int n)
{
    __shared__ double red[XR_LOSS_THREADS];
    double total_w = total_weight(labels, class_w, use_w, n, red);
    double lsum = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        double zi = (double)z[i];
        double y = (double)labels[i];
        double wi = weight_of(labels, class_w, use_w, i);
        double e = exp(-fabs(zi));
        lsum += wi * ((zi > 0 ? zi : 0.0) - zi * y + log1p(e));
        double sig = zi >= 0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
        dz[i] = (real)(wi * (sig - y) / total_w);
    }
    double l = block_sum(lsum, red);
    if (threadIdx.x == 0) loss[0] = l / total_w;
}
