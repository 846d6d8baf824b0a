// Optimiser steps as one launch over every parameter of the model.
//
// The parameters, gradients and state stay separate arrays; the kernel gets
// tables of their device addresses and the running offsets of each tensor in
// the concatenation (offsets has ntensors + 1 entries, offsets[0] = 0), and
// each thread finds its tensor by binary search. Formulas as PyTorch's (see
// kernels/reference.py); the arithmetic is in double like the CPU kernels'.
#include "common.cuh"

__device__ __forceinline__ int tensor_of(const long long* __restrict__ offsets, int ntensors, long long i)
{
    int lo = 0, hi = ntensors - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Reference: kernels/reference.py adam_update, on every tensor of the tables.
// Tables: the parameters p, first and second moments m, v (all updated in
// place), then the gradients g.
XR_KERNEL(adam_update_many)(const unsigned long long* __restrict__ p_ptr,
                            const unsigned long long* __restrict__ m_ptr,
                            const unsigned long long* __restrict__ v_ptr,
                            const unsigned long long* __restrict__ g_ptr,
                            const long long* __restrict__ offsets, int ntensors, long long total,
                            double lr, double beta1, double beta2, double eps, double weight_decay,
                            double bias_c1, double bias_c2_sqrt)
{
    double step_size = lr / bias_c1;
    XR_GRID_STRIDE(i, total) {
        int t = tensor_of(offsets, ntensors, i);
        long long j = i - offsets[t];
        real* p = (real*)p_ptr[t];
        const real* g = (const real*)g_ptr[t];
        real* m = (real*)m_ptr[t];
        real* v = (real*)v_ptr[t];
        double pj = (double)p[j];
        double gj = (double)g[j] + weight_decay * pj;
        double mj = (double)m[j] + (1 - beta1) * (gj - (double)m[j]);
        double vj = beta2 * (double)v[j] + (1 - beta2) * gj * gj;
        m[j] = (real)mj;
        v[j] = (real)vj;
        p[j] = (real)(pj - step_size * mj / (sqrt(vj) / bias_c2_sqrt + eps));
    }
}

// Reference: kernels/reference.py sgd_update, on every tensor of the tables.
// SGD with momentum (dampening 0); `first` marks step 1, where buf starts as g.
XR_KERNEL(sgd_update_many)(const unsigned long long* __restrict__ p_ptr,
                           const unsigned long long* __restrict__ buf_ptr,
                           const unsigned long long* __restrict__ g_ptr,
                           const long long* __restrict__ offsets, int ntensors, long long total,
                           double lr, double momentum, double weight_decay, int nesterov, int first)
{
    XR_GRID_STRIDE(i, total) {
        int t = tensor_of(offsets, ntensors, i);
        long long j = i - offsets[t];
        real* p = (real*)p_ptr[t];
        const real* g = (const real*)g_ptr[t];
        real* buf = (real*)buf_ptr[t];
        double gj = (double)g[j] + weight_decay * (double)p[j];
        if (momentum != 0) {
            double bj = first ? gj : momentum * (double)buf[j] + gj;
            buf[j] = (real)bj;
            gj = nesterov ? gj + momentum * bj : bj;
        }
        p[j] = (real)((double)p[j] - lr * gj);
    }
}
