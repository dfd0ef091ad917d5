"""CUDA backend == CPU backend, op by op, through numbacnn.functional.

Every functional op (forward and backward) runs twice: on NumPy arrays (CPU kernels) and on
numba.cuda device arrays (CUDA kernels, numbacnn.kernels.cuda), with the same inputs; the
results must agree within the "backend" tolerance of tests/conftest.py (rtol 1e-5 for
float32, 1e-12 for float64, atol scaled by max|expected|).  The dropout mask must be
identical (same counter-based hash).

Runs on a real GPU, or anywhere under Numba's CUDA simulator:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/cuda

Without either it skips at import (a plain `pytest` run has neither).  The simulator runs
each CUDA thread as a Python thread: shapes are tiny on purpose.
"""

import os

import numpy as np
import pytest

_SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
if _SIM:
    from numba import config as _config

    if not _config.ENABLE_CUDASIM:
        pytest.skip(
            "NUMBA_ENABLE_CUDASIM=1 was set after numba was imported; set it in the "
            "environment before starting pytest",
            allow_module_level=True,
        )
else:
    try:
        from numba import cuda as _cuda

        _gpu = _cuda.is_available()
    except Exception:  # pragma: no cover
        _gpu = False
    if not _gpu:
        pytest.skip(
            "no CUDA GPU and the CUDA simulator is off (run with "
            "NUMBA_ENABLE_CUDASIM=1 to test the CUDA kernels without a GPU)",
            allow_module_level=True,
        )

from conftest import assert_close as assert_close_host  # noqa: E402
from conftest import tolerance  # noqa: E402
from numba import cuda  # noqa: E402

import numbacnn.functional as F  # noqa: E402
import numbacnn.kernels.cuda as K  # noqa: E402

# The simulator evaluates the dropout hash with NumPy uint64 scalars, whose intended
# wrap-around multiplication warns "overflow encountered".
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")

DTYPES = [np.float32, np.float64]
IDS = ["f32", "f64"]


# ----------------------------------------------------------------------------- helpers
def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(a):
    return a if isinstance(a, np.ndarray) else a.copy_to_host()


def assert_close(got, want, dtype=None, name=""):
    """`got` is a device array equal to the CPU result `want` within the "backend" tolerance
    (of `dtype`, by default want's dtype), with want's shape and dtype."""
    assert K.is_device_array(got), f"{name}: expected a device array, got {type(got).__name__}"
    got = host(got)
    want = np.asarray(want)
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype} != {want.dtype}"
    assert_close_host(got, want, dtype=dtype or want.dtype, kind="backend", what=name)


def both(fn, *arrays, **kw):
    """fn on the NumPy arrays and on device copies of them: (cpu_result, cuda_result)."""
    cpu_res = fn(*arrays, **kw)
    gpu_res = fn(*(dev(a) if isinstance(a, np.ndarray) else a for a in arrays), **kw)
    return cpu_res, gpu_res


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------- the helpers
def test_allocation_helpers():
    a = K.full((2, 3), 1.5, np.float32)
    assert host(a).dtype == np.float32 and np.all(host(a) == 1.5)
    assert K.empty((4,), np.uint8).shape == (4,)
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)
    d = dev(x)
    assert K.is_contiguous(d)
    for view, ref in [
        (d[:, :, :, ::2], x[:, :, :, ::2]),
        (d[:, 1], x[:, 1]),
        (d[::2, :, 1:3], x[::2, :, 1:3]),
        (d[0, 0, :, 1], x[0, 0, :, 1]),
    ]:
        assert not K.is_contiguous(view) or view.ndim == 1
        c = K.ascontiguous(view)
        assert K.is_contiguous(c)
        np.testing.assert_array_equal(K.to_host(c), ref)
    lab = K.as_int64(dev(np.array([2, 0, 1], np.int32)))
    assert host(lab).dtype == np.int64 and list(host(lab)) == [2, 0, 1]
    assert K.is_device_array(d) and not K.is_device_array(x)


# -------------------------------------------------------------------------------- conv
CONV_CASES = [
    # (N, C_in, H, W), (C_out, kH, kW), kwargs
    ((2, 3, 6, 6), (4, 3, 3), dict()),
    ((2, 3, 7, 6), (4, 3, 2), dict(stride=2, padding=1)),
    ((1, 2, 6, 5), (3, 2, 2), dict(padding="same")),  # even kernel: asymmetric
    ((1, 2, 7, 7), (2, 3, 3), dict(padding="same", stride=2)),
    ((1, 2, 7, 7), (2, 3, 3), dict(dilation=2, padding=1)),
    ((2, 4, 5, 5), (6, 3, 3), dict(groups=2, padding=(1, 0), stride=(1, 2))),
    ((1, 3, 5, 5), (3, 3, 3), dict(groups=3, padding=1)),  # depthwise
]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", range(len(CONV_CASES)))
def test_conv2d(case, dtype, rng):
    xs, (co, kh, kw), kw_ = CONV_CASES[case]
    groups = kw_.get("groups", 1)
    x = randn(rng, xs, dtype)
    w = randn(rng, (co, xs[1] // groups, kh, kw), dtype)
    b = randn(rng, (co,), dtype)
    y_cpu, y_gpu = both(F.conv2d, x, w, b, **kw_)
    assert_close(y_gpu, y_cpu, name="y")
    dy = randn(rng, y_cpu.shape, dtype)
    g_cpu, g_gpu = both(F.conv2d_backward, dy, x, w, **kw_)
    for name, a, c in zip(("dx", "dw", "db"), g_gpu, g_cpu, strict=True):
        assert_close(a, c, name=name)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_conv2d_no_bias_and_noncontiguous_input(dtype, rng):
    big = randn(rng, (2, 3, 6, 12), dtype)
    x = big[:, :, :, ::2]  # non-contiguous, on both sides
    w = randn(rng, (2, 3, 3, 3), dtype)
    y_cpu = F.conv2d(x, w, None, padding=1)
    y_gpu = F.conv2d(dev(big)[:, :, :, ::2], dev(w), None, padding=1)
    assert_close(y_gpu, y_cpu)


# -------------------------------------------------------------------------------- pool
POOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("case", range(len(POOL_CASES)))
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool(kind, case, dtype, rng):
    kw_ = POOL_CASES[case]
    fwd = F.max_pool2d if kind == "max" else F.avg_pool2d
    bwd = F.max_pool2d_backward if kind == "max" else F.avg_pool2d_backward
    # integers in a small range: many ties, so the first-max rule is exercised
    x = rng.integers(-2, 3, size=(2, 2, 6, 5)).astype(dtype)
    if kind == "max":
        x[0, 0, 0, :] = -np.inf  # an all -inf window on the border
    y_cpu, y_gpu = both(fwd, x, **kw_)
    assert_close(y_gpu, y_cpu, name="y")
    dy = randn(rng, y_cpu.shape, dtype)
    dx_cpu, dx_gpu = both(bwd, dy, x, **kw_)
    assert_close(dx_gpu, dx_cpu, name="dx")


# --------------------------------------------------------------------------- batch norm
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("shape", [(3, 2, 3, 4), (5, 3)], ids=["4d", "2d"])
def test_batch_norm(shape, dtype, rng):
    C = shape[1]
    x = (randn(rng, shape, dtype) * 2 + 1).astype(dtype)
    g = randn(rng, (C,), dtype)
    b = randn(rng, (C,), dtype)
    rm = randn(rng, (C,), dtype)
    rv = rng.uniform(0.5, 2, C).astype(dtype)
    # training: output and the in-place running-statistics update
    rm_c, rv_c = rm.copy(), rv.copy()
    rm_g, rv_g = dev(rm), dev(rv)
    y_cpu = F.batch_norm(x, g, b, rm_c, rv_c, True, momentum=0.3)
    y_gpu = F.batch_norm(dev(x), dev(g), dev(b), rm_g, rv_g, True, momentum=0.3)
    assert_close(y_gpu, y_cpu, name="y train")
    assert_close(rm_g, rm_c, name="running_mean")
    assert_close(rv_g, rv_c, name="running_var")
    # eval
    y_cpu = F.batch_norm(x, g, b, rm_c, rv_c, False)
    y_gpu = F.batch_norm(dev(x), dev(g), dev(b), rm_g, rv_g, False)
    assert_close(y_gpu, y_cpu, name="y eval")
    # no affine parameters, no running stats
    y_cpu, y_gpu = both(F.batch_norm, x, None, None, None, None, True)
    assert_close(y_gpu, y_cpu, name="y plain")
    # backward
    dy = randn(rng, shape, dtype)
    g_cpu, g_gpu = both(F.batch_norm_backward, dy, x, g)
    for name, a, c in zip(("dx", "dgamma", "dbeta"), g_gpu, g_cpu, strict=True):
        assert_close(a, c, name=name)
    # eval-mode backward (fixed running statistics)
    g_cpu = F.batch_norm_backward(dy, x, g, running_mean=rm_c, running_var=rv_c)
    g_gpu = F.batch_norm_backward(dev(dy), dev(x), dev(g), running_mean=rm_g, running_var=rv_g)
    for name, a, c in zip(("eval dx", "eval dgamma", "eval dbeta"), g_gpu, g_cpu, strict=True):
        assert_close(a, c, name=name)


# ------------------------------------------------------------------------------- linear
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_linear(dtype, rng):
    x = randn(rng, (3, 20), dtype)  # IN = 20: two 16-wide tiles
    w = randn(rng, (5, 20), dtype)
    b = randn(rng, (5,), dtype)
    y_cpu, y_gpu = both(F.linear, x, w, b)
    assert_close(y_gpu, y_cpu, name="y")
    y_cpu, y_gpu = both(F.linear, x, w)
    assert_close(y_gpu, y_cpu, name="y no bias")
    y_naive = K.empty(y_cpu.shape, dtype)
    K.dense.linear_forward_naive(dev(x), dev(w), K.full((5,), 0.0, dtype), y_naive)
    assert_close(y_naive, y_cpu, name="y naive")
    dy = randn(rng, (3, 5), dtype)
    g_cpu, g_gpu = both(F.linear_backward, dy, x, w)
    for name, a, c in zip(("dx", "dw", "db"), g_gpu, g_cpu, strict=True):
        assert_close(a, c, name=name)


# ------------------------------------------------------------------- element-wise ops
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_activations(act, dtype, rng):
    x = randn(rng, (2, 3, 5), dtype) * 3
    x[0, 0, :3] = [0.0, -0.0, 40.0]
    fwd = getattr(F, act)
    bwd = getattr(F, act + "_backward")
    y_cpu, y_gpu = both(fwd, x)
    assert_close(y_gpu, y_cpu, name="y")
    dy = randn(rng, x.shape, dtype)
    # relu's backward takes the forward input, tanh's and sigmoid's the forward output
    second = x if act == "relu" else y_cpu
    dx_cpu, dx_gpu = both(bwd, dy, second)
    assert_close(dx_gpu, dx_cpu, name="dx")


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_dropout(p, dtype, rng):
    x = randn(rng, (2, 3, 4, 5), dtype)
    seed = 987654321987
    y_cpu, m_cpu = F.dropout(x, p, True, seed=seed)
    y_gpu, m_gpu = F.dropout(dev(x), p, True, seed=seed)
    np.testing.assert_array_equal(host(m_gpu), m_cpu)  # the same mask, bit for bit
    assert host(m_gpu).dtype == np.uint8
    assert_close(y_gpu, y_cpu, name="y")
    dy = randn(rng, x.shape, dtype)
    dx_cpu = F.dropout_backward(dy, m_cpu, p)
    dx_gpu = F.dropout_backward(dev(dy), m_gpu, p)
    assert_close(dx_gpu, dx_cpu, name="dx")
    # eval mode passes x through untouched
    xd = dev(x)
    y, m = F.dropout(xd, p, False)
    assert m is None and np.array_equal(host(y), x)
    # the mask of rows 1.. with their offset is the whole batch's
    _, part = F.dropout(dev(x[1:]), p, True, seed=seed, offset=x[0].size)
    np.testing.assert_array_equal(host(part), m_cpu[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_add(dtype, rng):
    a = randn(rng, (2, 3, 4), dtype)
    b = randn(rng, (2, 3, 4), dtype)
    y_cpu, y_gpu = both(F.add, a, b)
    assert_close(y_gpu, y_cpu)
    dy = dev(a)
    da, db = F.add_backward(dy)
    assert host(da) is not None and np.array_equal(host(da), a) and np.array_equal(host(db), a)


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
def test_fused_ops(dtype, rng):
    """numbacnn.fusion's ops: batch_norm_relu (train, eval) and its backward, add_relu, relu
    in place, fuse_conv_bn_weights and its backward, CUDA == CPU."""
    shape, C = (3, 4, 3, 5), 4
    x = randn(rng, shape, dtype)
    g, b = randn(rng, C, dtype), randn(rng, C, dtype)
    rm, rv = randn(rng, C, dtype), (rng.random(C) + 0.5).astype(dtype)
    for training in (True, False):
        rm_c, rv_c, rm_g, rv_g = rm.copy(), rv.copy(), dev(rm), dev(rv)
        y_cpu = F.batch_norm_relu(x, g, b, rm_c, rv_c, training)
        y_gpu = F.batch_norm_relu(dev(x), dev(g), dev(b), rm_g, rv_g, training)
        assert_close(y_gpu, y_cpu, name=f"y training={training}")
        assert_close(rm_g, rm_c, name="running_mean")
        assert (host(y_gpu) == 0).any() and (host(y_gpu) > 0).any()
        dy = randn(rng, shape, dtype)
        stats = {} if training else dict(running_mean=rm, running_var=rv)
        g_cpu = F.batch_norm_relu_backward(dy, y_cpu, x, g, **stats)
        stats = {k: dev(v) for k, v in stats.items()}
        g_gpu = F.batch_norm_relu_backward(dev(dy), dev(y_cpu), dev(x), dev(g), **stats)
        for name, a, c in zip(("dx", "dgamma", "dbeta"), g_gpu, g_cpu, strict=True):
            assert_close(a, c, name=f"{name} training={training}")
    y_cpu, y_gpu = both(F.add_relu, x, randn(rng, shape, dtype))
    assert_close(y_gpu, y_cpu, name="add_relu")
    xg = dev(x)
    assert F.relu(xg, inplace=True) is xg
    assert_close(xg, F.relu(x), name="relu inplace")
    w = randn(rng, (C, 2, 3, 3), dtype)
    cb = randn(rng, C, dtype)
    f_cpu, f_gpu = both(F.fuse_conv_bn_weights, w, cb, rm, rv, 1e-3, g, b)
    for name, a, c in zip(("w", "b"), f_gpu, f_cpu, strict=True):
        assert_close(a, c, name=name)
    dw, db = randn(rng, w.shape, dtype), randn(rng, C, dtype)
    f_cpu, f_gpu = both(F.fuse_conv_bn_weights_backward, dw, db, w, cb, rm, rv, 1e-3, g)
    for name, a, c in zip(("dconv_w", "dconv_b", "dbn_w", "dbn_b"), f_gpu, f_cpu, strict=True):
        assert_close(a, c, name=name)


def test_eval_batch_norm_backward_keeps_a_nan_of_x_out_of_dx(rng):
    """Eval mode: dx = gamma dy / sqrt(running_var + eps) does not read x, so a NaN in x stays
    out of dx on the device as on the CPU (and in torch); dgamma, which reads x, is NaN."""
    x = randn(rng, (2, 3, 2, 2), np.float64)
    x[0, 1, 0, 0] = np.nan
    dy, g = randn(rng, x.shape, np.float64), randn(rng, 3, np.float64)
    rm, rv = randn(rng, 3, np.float64), rng.random(3) + 0.5
    stats = dict(running_mean=rm, running_var=rv)
    want = F.batch_norm_backward(dy, x, g, **stats)
    got = F.batch_norm_backward(dev(dy), dev(x), dev(g), running_mean=dev(rm), running_var=dev(rv))
    assert np.isfinite(want[0]).all() and np.isnan(want[1][1])
    for name, a, c in zip(("dx", "dgamma", "dbeta"), got, want, strict=True):
        assert_close(a, c, name=name)


def test_grid_stride_loops_cover_more_than_one_grid(rng):
    """Element-wise kernels use a capped grid: arrays larger than the grid must be covered."""
    from numbacnn.kernels.cuda._launch import MAX_BLOCKS, TPB

    n = MAX_BLOCKS * TPB * 2 + 37
    x = randn(rng, (n,), np.float32)
    y_cpu, y_gpu = both(F.relu, x)
    assert_close(y_gpu, y_cpu)
    f = K.full((n,), 2.5, np.float64)
    assert np.all(host(f) == 2.5)


# --------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("label_dtype", [np.int64, np.int32])
def test_cross_entropy(label_dtype, dtype, rng):
    z = randn(rng, (4, 5), dtype) * 3
    z[1] += 1e4  # the log-sum-exp must stay stable
    t = np.array([0, 4, 2, 2], label_dtype)
    l_cpu = F.cross_entropy(z, t)
    l_gpu = F.cross_entropy(dev(z), dev(t))
    assert isinstance(l_gpu, float)
    assert l_gpu == pytest.approx(l_cpu, rel=tolerance(dtype, "backend"), abs=1e-12)
    d_cpu = F.cross_entropy_backward(z, t)
    d_gpu = F.cross_entropy_backward(dev(z), dev(t))
    assert_close(d_gpu, d_cpu)


def test_float64_accumulation_of_large_batch_norm_offset(rng):
    """Statistics accumulate in float64 for float32 input, as on the CPU (big offset)."""
    x = (rng.standard_normal((4, 2, 3, 3)) + 1000).astype(np.float32)
    y_cpu, y_gpu = both(F.batch_norm, x, None, None, None, None, True)
    assert_close(y_gpu, y_cpu, dtype=np.float32)


# --------------------------------------------------------------------------- empty batches
def test_an_empty_batch_on_the_device():
    """N = 0 through the CUDA twins (issue 7): empty outputs, zero parameter gradients,
    untouched running statistics, NaN mean loss; the same as the CPU."""
    x, w = np.zeros((0, 3, 6, 6)), np.ones((4, 3, 3, 3))
    y_cpu, y_gpu = both(F.conv2d, x, w, padding=1)
    assert host(y_gpu).shape == y_cpu.shape == (0, 4, 6, 6)
    _, (dx, dw, db) = both(F.conv2d_backward, np.zeros((0, 4, 6, 6)), x, w, padding=1)
    assert host(dx).shape == x.shape and not host(dw).any() and not host(db).any()
    assert host(F.max_pool2d(dev(x), 2)).shape == (0, 3, 3, 3)
    rm, rv = dev(np.full(3, 0.5)), dev(np.full(3, 2.0))
    y = F.batch_norm(dev(x), None, None, rm, rv, True)
    assert host(y).shape == x.shape and np.all(host(rm) == 0.5) and np.all(host(rv) == 2.0)
    _, dgamma, dbeta = F.batch_norm_backward(y, dev(x), None)
    assert not host(dgamma).any() and not host(dbeta).any()
    assert np.isnan(F.cross_entropy(dev(np.zeros((0, 4))), dev(np.zeros(0, np.int64))))


# --------------------------------------------------------------------------- optimizers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled, weight_decay", [(False, 0.0), (False, 0.1), (True, 0.05)])
def test_adam_step_twin(dtype, decoupled, weight_decay, rng):
    """kernels.cuda.optim.adam_step == kernels.cpu.optim.adam_step, three steps in a row."""
    from numbacnn.kernels.cpu import optim as cpu
    from numbacnn.kernels.cuda import optim as gpu

    n = 700  # more than one block
    p, m, v = rng.standard_normal(n).astype(dtype), np.zeros(n, dtype), np.zeros(n, dtype)
    dp, dm, dv = dev(p), dev(m), dev(v)
    for t in (1, 2, 3):
        g = rng.standard_normal(n).astype(dtype)
        args = (1e-2, 0.9, 0.999, 1e-8, weight_decay, decoupled, 1e-2 / (1 - 0.9**t), (1 - 0.999**t) ** 0.5)
        cpu.adam_step(p, g, m, v, *args)
        gpu.adam_step(dp, dev(g), dm, dv, *args)
    for ours, ref in ((dp, p), (dm, m), (dv, v)):
        assert_close(ours, ref, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum, centered", [(0.0, False), (0.9, True)])
def test_rmsprop_step_twin(dtype, momentum, centered, rng):
    from numbacnn.kernels.cpu import optim as cpu
    from numbacnn.kernels.cuda import optim as gpu

    n = 300
    p = rng.standard_normal(n).astype(dtype)
    s, a, b = (np.zeros(n, dtype) for _ in range(3))
    dp, ds, da, db = dev(p), dev(s), dev(a), dev(b)
    for _ in range(3):
        g = rng.standard_normal(n).astype(dtype)
        cpu.rmsprop_step(p, g, s, a, b, 1e-3, 0.99, 1e-8, 0.01, momentum, centered)
        gpu.rmsprop_step(dp, dev(g), ds, da, db, 1e-3, 0.99, 1e-8, 0.01, momentum, centered)
    for ours, ref in ((dp, p), (ds, s), (da, a), (db, b)):
        assert_close(ours, ref, dtype=dtype)
