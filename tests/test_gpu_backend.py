"""What the GPU backend adds beyond the shared op tests (test_kernels,
test_gradcheck, test_torch_crosscheck run every op and the whole network on
it too): bit-reproducible training, the one-launch optimiser over many
tensors, losses over batches larger than one thread block, the same network
on CPU and GPU (weights, predictions, Grad-CAM, model files both ways), and
the kernel profiler.

Each test runs on the emulated GPU backend (CUDA C kernels on the CPU) and,
where there is a CUDA device, on the real one.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import GPU_SPEC as SPEC
from helpers import make_backend
from xraynet.archs import builtin_spec
from xraynet.backends import AdamHyper, SGDHyper
from xraynet.backends.geometry import output_hw
from xraynet.kernels import reference as ref
from xraynet.model import Model
from xraynet.modelfile import load_model, save_model
from xraynet.optim import SGD, Adam


@pytest.fixture(params=["gpu-emu", pytest.param("gpu", marks=pytest.mark.gpu)])
def gpu(request):
    return make_backend(request.param)


def _batch(n=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 16, 16)).astype(np.float32), rng.integers(0, 3, n)


def _train(device, steps=3, seed=0):
    model = Model(SPEC, device=device, seed=seed)
    for layer in model.layers:
        if hasattr(layer, "rng") and layer.type == "dropout":
            layer.rng = model.bk.rng(99)
    opt = Adam(model.named_parameters(), model.bk, lr=1e-2)
    losses = [model.train_step(*_batch(seed=s), opt) for s in range(steps)]
    return model, losses


def test_training_is_bit_reproducible(gpu):
    """No float atomics anywhere: the same seed gives the same bits, run to run."""
    a, la = _train(gpu)
    b, lb = _train(gpu)
    assert la == lb, f"losses differ between identical runs: {la} vs {lb}"
    for name, arr in a.state_dict().items():
        assert np.array_equal(arr, b.state_dict()[name]), f"{name} differs between identical runs"


def test_same_seed_same_network_on_cpu_and_gpu(gpu):
    cpu = Model(SPEC, device="cpu", seed=5)
    dev = Model(SPEC, device=gpu, seed=5)
    for name, arr in cpu.state_dict().items():
        assert np.array_equal(arr, dev.state_dict()[name]), f"initial {name} differs between CPU and GPU"
    x, _ = _batch()
    assert np.allclose(cpu.predict_proba(x), dev.predict_proba(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["gpu->cpu", "cpu->gpu"])
def test_model_files_move_between_cpu_and_gpu(gpu, direction, tmp_path):
    src_device, dst_device = (gpu, "cpu") if direction == "gpu->cpu" else ("cpu", gpu)
    model, _ = _train(src_device, steps=2)
    path = tmp_path / "m.h5"
    save_model(path, model, classes=["a", "b", "c"], preprocessing={"image_size": 16})
    loaded = load_model(path, device=dst_device).model
    x, _ = _batch(n=5, seed=7)
    p_src, p_dst = model.predict_proba(x), loaded.predict_proba(x)
    assert np.allclose(p_src, p_dst, rtol=1e-5, atol=1e-6), \
        f"{direction}: predictions differ by up to {np.abs(p_src - p_dst).max():.3e}"
    assert (p_src.argmax(1) == p_dst.argmax(1)).all()


def test_gradcam_matches_the_cpu(gpu):
    cpu = Model(SPEC, device="cpu", dtype=np.float64, seed=2)
    dev = Model(SPEC, device=gpu, dtype=np.float64, seed=2)
    x, _ = _batch(n=3)
    for c in range(3):
        a, b = cpu.gradcam(x, c), dev.gradcam(x, c)
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12), f"class {c}: Grad-CAM differs by {np.abs(a - b).max():.3e}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_one_launch_optimisers_update_every_tensor(gpu, dtype):
    """adam_update_many / sgd_update_many over tensors of mixed sizes (1 to
    several thousand elements) equal the per-tensor reference formulas."""
    rng = np.random.default_rng(4)
    shapes = [(1,), (7,), (3, 5), (64, 9, 3), (2, 1, 3, 3), (300,)]
    ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    tol = 1e-6 if dtype == np.float32 else 1e-13
    dev = lambda a: gpu.asarray(a.copy())  # noqa: E731 (a copy even where asarray would alias, as under the emulator)
    for step in (1, 2):
        dp, dg = [dev(p) for p in ps], [dev(g) for g in gs]
        m0 = [rng.standard_normal(s).astype(dtype) * 0.1 for s in shapes]
        v0 = [rng.random(s).astype(dtype) * 0.1 for s in shapes]
        dm, dv = [dev(m) for m in m0], [dev(v) for v in v0]
        adam = AdamHyper(1e-2, 0.9, 0.999, 1e-8, 1e-3)
        gpu.adam_update_many(dp, dm, dv, dg, step, adam)
        for i in range(len(shapes)):
            p, m, v = ref.adam_update(ps[i].astype(np.float64), m0[i], v0[i], gs[i], step, adam)
            for what, got, want in (("p", dp[i], p), ("m", dm[i], m), ("v", dv[i], v)):
                err = np.abs(gpu.to_numpy(got) - want).max() / max(np.abs(want).max(), 1e-30)
                assert err < tol, f"adam step {step} tensor {shapes[i]} {what}: max rel err {err:.3e}"
        dp, db = [dev(p) for p in ps], [dev(g * 0.5) for g in gs]
        sgd = SGDHyper(0.05, 0.9, 1e-3, True)
        gpu.sgd_update_many(dp, db, [dev(g) for g in gs], step, sgd)
        for i in range(len(shapes)):
            p, b = ref.sgd_update(ps[i].astype(np.float64), gs[i] * 0.5, gs[i], step, sgd)
            assert np.allclose(gpu.to_numpy(dp[i]), p, rtol=tol, atol=tol), f"sgd step {step} tensor {shapes[i]}"
            assert np.allclose(gpu.to_numpy(db[i]), b, rtol=tol, atol=tol), f"sgd buffer step {step} {shapes[i]}"


def test_optimiser_rejects_mismatched_state(gpu):
    from xraynet.errors import ShapeError

    p = gpu.asarray(np.ones(4, np.float32))
    with pytest.raises(ShapeError, match="does not match its parameter"):
        gpu.adam_update_many([p], [p.copy()], [p.copy()], [gpu.asarray(np.ones(5, np.float32))], 1, AdamHyper(1e-3))


@pytest.mark.parametrize("n", [1, 257, 600])
def test_losses_over_batches_larger_than_a_block(gpu, n):
    """The loss kernels are one block of 256 threads striding over the batch."""
    rng = np.random.default_rng(n)
    cpu = make_backend("cpu")
    z = rng.standard_normal((n, 3)) * 3
    y = rng.integers(0, 3, n)
    w = (0.5, 2.0, 1.25)
    for weights in (None, w):
        l_cpu, d_cpu = cpu.softmax_cross_entropy(z, y, weights)
        l_gpu, d_gpu = gpu.softmax_cross_entropy(gpu.asarray(z), y, weights)
        assert abs(l_gpu - l_cpu) <= 1e-12 * abs(l_cpu) and np.allclose(gpu.to_numpy(d_gpu), d_cpu, rtol=1e-12)
        z1, y1 = z[:, :1], (y > 0).astype(np.int64)
        l_cpu, d_cpu = cpu.sigmoid_bce(z1, y1, None if weights is None else weights[:2])
        l_gpu, d_gpu = gpu.sigmoid_bce(gpu.asarray(z1), y1, None if weights is None else weights[:2])
        assert abs(l_gpu - l_cpu) <= 1e-12 * abs(l_cpu) and np.allclose(gpu.to_numpy(d_gpu), d_cpu, rtol=1e-12)


def test_kernel_profiler_records_every_launch(gpu):
    model = Model(builtin_spec("seed"), device=gpu, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 64, 64)).astype(np.float32)
    prof = gpu.profile_kernels(True)
    try:
        opt = Adam(model.named_parameters(), model.bk)
        model.train_step(x, np.array([0, 1]), opt)
        totals = prof.totals()
    finally:
        gpu.profile_kernels(False)
    for name in ("conv1_direct_pool_f32", "conv1_dw_partial_f32", "im2col_cyx_f32", "bias_maxpool_relu_f32",
                 "maxpool_relu_backward_f32", "col2im_cyx_f32", "sigmoid_bce_f32", "adam_update_many_f32",
                 "gemm (cuBLAS)"):
        assert name in totals, f"profiler saw {sorted(totals)}; {name} missing"
    assert totals["adam_update_many_f32"][1] == 1, "Adam must be one launch over all parameters"
    assert all(ms >= 0 for ms, _ in totals.values())


def test_sgd_through_the_optimiser_class(gpu):
    model = Model(SPEC, device=gpu, seed=3)
    ref_model = Model(SPEC, device="cpu", seed=3)
    for m in (model, ref_model):
        m.layers[8].p = 0.0  # no dropout: both sides see the same network
    opts = [SGD(m.named_parameters(), m.bk, lr=0.05, momentum=0.9, nesterov=True) for m in (model, ref_model)]
    for s in range(2):
        x, y = _batch(seed=10 + s)
        la = model.train_step(x, y, opts[0])
        lb = ref_model.train_step(x, y, opts[1])
        assert abs(la - lb) < 1e-5 * abs(lb)
    for name, arr in ref_model.state_dict().items():
        assert np.allclose(model.state_dict()[name], arr, rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("mode", ["train", "infer"])
def test_bench_and_kernel_profile_run_on_the_gpu_backend(gpu, mode):
    from xraynet.bench import Timing, profile_kernels, run_bench

    row = run_bench("seed", mode, 2, device=gpu, timing=Timing(iters=2, warmup=1))
    assert row["device"] == "gpu" and row["images_per_s"] > 0 and row["iters"] == 2
    assert row["tf32"] is False, "TF32 must be off unless CUPY_TF32=1 is set"
    rows = profile_kernels("seed", mode, 2, device=gpu, steps=1)
    names = {r["kernel"] for r in rows}
    assert "gemm (cuBLAS)" in names and "bias_maxpool_relu_f32" in names, names
    assert ("adam_update_many_f32" in names) == (mode == "train")
    assert abs(sum(r["share"] for r in rows) - 1) < 1e-9
    assert rows == sorted(rows, key=lambda r: -r["ms_per_step"])


DIRECT_CASES = [  # (N, H, W), O, kernel, stride, pad, pool (kernel, stride) or None
    ((2, 11, 9), 3, (3, 3), (1, 1), (1, 1), ((2, 2), (2, 2))),
    ((1, 12, 13), 4, (5, 5), (2, 2), (2, 2), ((2, 2), (2, 2))),
    ((2, 9, 10), 2, (3, 2), (1, 2), (0, 1), ((3, 3), (2, 2))),   # overlapping pool windows
    ((3, 7, 7), 5, (3, 3), (1, 1), (0, 0), None),
    ((1, 6, 5), 2, (1, 1), (1, 1), (0, 0), None),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", DIRECT_CASES, ids=str)
def test_direct_one_channel_conv_equals_the_gemm_path(case, dtype):
    """conv1_direct / conv1_direct_pool / conv1_dw_partial against im2col + GEMM
    on the same emulated kernels: outputs, argmax, and every gradient."""
    from cudaemu import compile_module
    from xraynet.backends.gpu import CUDABackend

    (n, h, w), o, k, s, p, pool = case
    direct = CUDABackend(xp=np, compile_fn=compile_module, checked=True, max_blocks=4, direct_first_conv=True)
    gemm = CUDABackend(xp=np, compile_fn=compile_module, checked=True, max_blocks=4, direct_first_conv=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, h, w, 1)).astype(dtype)
    wt = rng.standard_normal((o, 1, *k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype) * 0.1
    tol = 1e-5 if dtype == np.float32 else 1e-12
    out = {}
    for name, bk in (("direct", direct), ("gemm", gemm)):
        if pool is None:
            y, ctx = bk.conv2d_forward(x.copy(), wt, b, s, p, relu=True)
            dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
            grads = bk.conv2d_backward(dy, ctx, wt)
            out[name] = (y, None, *grads)
        else:
            y, ctx = bk.conv2d_relu_pool_forward(x.copy(), wt, b, s, p, *pool)
            dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
            grads = bk.conv2d_relu_pool_backward(dy, ctx, wt)
            out[name] = (y, ctx[5], *grads)  # ctx[5]: the argmax
        assert (ctx[1] is None) == (name == "direct"), f"{name}: patch matrix kept {ctx[1] is not None}"
    (y_d, i_d, dx_d, dw_d, db_d), (y_g, i_g, dx_g, dw_g, db_g) = out["direct"], out["gemm"]
    for what, a, e in (("output", y_d, y_g), ("dx", dx_d, dx_g), ("dw", dw_d, dw_g), ("db", db_d, db_g)):
        assert np.allclose(a, e, rtol=tol, atol=tol), f"{case} {what}: max |diff| {np.abs(a - e).max():.3e}"
    if i_d is not None:
        live = y_g > 0  # where the pooled value is 0 the argmax carries no gradient
        assert (i_d[live] == i_g[live]).all(), f"{case}: argmax differs on live windows"


@pytest.mark.parametrize("geom", [(2, 7, 9, 3, 3, 3, 2, 2, 1, 1), (1, 5, 4, 2, 5, 3, 1, 2, 2, 0)], ids=str)
def test_cuda_patch_matrix_is_the_cyx_reference(gpu, geom):
    """im2col_cyx / col2im_cyx against their references: patch columns in (c, ky, kx) order, the
    weights' own, where the CPU's im2col_yxc orders them (ky, kx, c)."""
    n, h, w, c, kh, kw, sh, sw, ph, pw = geom
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, h, w, c))
    oh, ow = output_hw(h, w, (kh, kw), (sh, sw), (ph, pw))
    ks = gpu._k(np.float64)
    cols = gpu.empty((n * oh * ow, c * kh * kw), np.float64)
    ks.im2col_cyx.launch(cols.size, cols, gpu.asarray(x), h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, cols.size)
    assert np.array_equal(gpu.to_numpy(cols), ref.im2col_cyx(x, kh, kw, sh, sw, ph, pw)), f"im2col_cyx {geom}"
    dcols = rng.standard_normal((n * oh * ow, c * kh * kw))
    dx = gpu.empty(x.shape, np.float64)
    ks.col2im_cyx.launch(dx.size, dx, gpu.asarray(dcols), h, w, c, kh, kw, sh, sw, ph, pw, oh, ow, dx.size)
    expected = ref.col2im_cyx(dcols, x.shape, kh, kw, sh, sw, ph, pw)
    assert np.allclose(gpu.to_numpy(dx), expected, rtol=1e-12, atol=1e-12), f"col2im_cyx {geom}"
