// A CPU emulator for xraynet's CUDA C kernels, for tests on machines with no GPU.
//
// The kernel sources compile as C++ with this header in front. A launch runs
// the blocks one after another; inside a block every CUDA thread is a fiber
// (ucontext) with its own stack, so locals are per thread, `__shared__`
// variables (made `static`) are per block, and __syncthreads() switches to
// the next fiber until every thread of the block has reached the barrier.
// A block where some threads finish while others wait at a barrier is a
// divergent __syncthreads, undefined on a GPU: the emulator reports it.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <vector>
#include <ucontext.h>

using std::exp;
using std::fabs;
using std::log;
using std::log1p;
using std::sqrt;

struct dim3 {
    unsigned x, y, z;
};

namespace cudaemu {

struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    dim3 tid;
    bool done;
};

inline dim3 g_thread, g_block, g_block_dim, g_grid_dim;
inline ucontext_t g_scheduler;
inline std::vector<Fiber> g_fibers;
inline size_t g_current;
inline const std::function<void()>* g_body;
inline int g_error;

inline void fiber_main()
{
    (*g_body)();
    g_fibers[g_current].done = true;
    swapcontext(&g_fibers[g_current].ctx, &g_scheduler);
}

inline void syncthreads() { swapcontext(&g_fibers[g_current].ctx, &g_scheduler); }

// Runs body for every thread of every block; returns 0, or 1 on a divergent barrier.
inline int run(dim3 grid, dim3 block, const std::function<void()>& body)
{
    const size_t n = (size_t)block.x * block.y * block.z;
    const size_t stack_size = 64 * 1024;
    if (g_fibers.size() < n) g_fibers.resize(n);
    g_body = &body;
    g_grid_dim = grid;
    g_block_dim = block;
    for (unsigned bz = 0; bz < grid.z; ++bz)
        for (unsigned by = 0; by < grid.y; ++by)
            for (unsigned bx = 0; bx < grid.x; ++bx) {
                g_block = dim3{bx, by, bz};
                for (size_t t = 0; t < n; ++t) {
                    Fiber& f = g_fibers[t];
                    if (f.stack.size() < stack_size) f.stack.resize(stack_size);
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = f.stack.data();
                    f.ctx.uc_stack.ss_size = f.stack.size();
                    f.ctx.uc_link = nullptr;
                    makecontext(&f.ctx, fiber_main, 0);
                    f.tid = dim3{(unsigned)(t % block.x), (unsigned)(t / block.x % block.y),
                                 (unsigned)(t / ((size_t)block.x * block.y))};
                    f.done = false;
                }
                for (;;) {  // one round: every live thread runs to its next barrier or its end
                    size_t finished = 0;
                    for (size_t t = 0; t < n; ++t) {
                        if (g_fibers[t].done) {
                            ++finished;
                            continue;
                        }
                        g_current = t;
                        g_thread = g_fibers[t].tid;
                        swapcontext(&g_scheduler, &g_fibers[t].ctx);
                        if (g_fibers[t].done) ++finished;
                    }
                    if (finished == n) break;
                    if (finished != 0) {
                        std::fprintf(stderr, "cudaemu: divergent __syncthreads in block (%u, %u, %u): "
                                     "%zu of %zu threads finished while the others wait at a barrier\n",
                                     bx, by, bz, finished, n);
                        return 1;
                    }
                }
            }
    return 0;
}

}  // namespace cudaemu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() cudaemu::syncthreads()
#define threadIdx (cudaemu::g_thread)
#define blockIdx (cudaemu::g_block)
#define blockDim (cudaemu::g_block_dim)
#define gridDim (cudaemu::g_grid_dim)
