"""batch_norm / batch_norm_backward: the oracle, finite differences and PyTorch
(running statistics use the UNBIASED batch variance, normalisation the biased one)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_close

from numbacnn import functional as F
from numbacnn import reference as R

SHAPES = [(4, 3, 5, 6), (3, 2, 1, 1), (6, 4), (1, 2, 3, 3)]
BIG_SHAPES = [(3, 5, 33, 35), (257, 3)]


def _case(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = (rng.standard_normal(shape) * 2.0 + 0.5).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    rm = rng.standard_normal(C).astype(dtype)
    rv = rng.uniform(0.5, 2.0, C).astype(dtype)
    return x, gamma, beta, rm, rv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + BIG_SHAPES, ids=str)
def test_batch_norm_train_matches_reference_and_torch(shape, dtype):
    x, gamma, beta, rm, rv = _case(shape, dtype)
    rm_ours, rv_ours = rm.copy(), rv.copy()
    rm_ref, rv_ref = rm.copy(), rv.copy()
    y = F.batch_norm(x, gamma, beta, rm_ours, rv_ours, True, momentum=0.2, eps=1e-4)
    y_ref = R.batch_norm(x, gamma, beta, rm_ref, rv_ref, True, momentum=0.2, eps=1e-4)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, y_ref, dtype=dtype, kind="reduction", what="y vs reference")
    assert_close(rm_ours, rm_ref, dtype=dtype, kind="reduction", what="running_mean vs reference")
    assert_close(rv_ours, rv_ref, dtype=dtype, kind="reduction", what="running_var vs reference")
    rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
    yt = TF.batch_norm(
        torch.tensor(x),
        rm_t,
        rv_t,
        torch.tensor(gamma),
        torch.tensor(beta),
        training=True,
        momentum=0.2,
        eps=1e-4,
    )
    assert_close(y, yt.numpy(), dtype=dtype, kind="reduction", what="y vs torch")
    assert_close(rm_ours, rm_t.numpy(), dtype=dtype, kind="reduction", what="running_mean vs torch")
    assert_close(rv_ours, rv_t.numpy(), dtype=dtype, kind="reduction", what="running_var vs torch (unbiased)")


def test_batch_norm_running_var_uses_unbiased_batch_variance():
    x, gamma, beta, rm, rv = _case((3, 2, 2, 2), np.float64)
    rm0, rv0 = rm.copy(), rv.copy()
    F.batch_norm(x, gamma, beta, rm, rv, True, momentum=0.1)
    n = 3 * 2 * 2
    per_channel = x.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(rm, 0.9 * rm0 + 0.1 * per_channel.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(rv, 0.9 * rv0 + 0.1 * per_channel.var(axis=1) * n / (n - 1), rtol=1e-12)
    # while the output is normalised with the biased variance
    y = F.batch_norm(x, None, None, rm.copy(), rv.copy(), True, eps=0.0 + 1e-12)
    yc = y.transpose(1, 0, 2, 3).reshape(2, -1)
    np.testing.assert_allclose(yc.var(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(yc.mean(axis=1), 0.0, atol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_eval_uses_running_stats_and_leaves_them(shape, dtype):
    x, gamma, beta, rm, rv = _case(shape, dtype, seed=3)
    rm0, rv0 = rm.copy(), rv.copy()
    y = F.batch_norm(x, gamma, beta, rm, rv, False, eps=1e-5)
    np.testing.assert_array_equal(rm, rm0)
    np.testing.assert_array_equal(rv, rv0)
    assert_close(
        y, R.batch_norm(x, gamma, beta, rm0, rv0, False), dtype=dtype, kind="reduction", what="vs reference"
    )
    yt = TF.batch_norm(
        torch.tensor(x),
        torch.tensor(rm0),
        torch.tensor(rv0),
        torch.tensor(gamma),
        torch.tensor(beta),
        training=False,
        eps=1e-5,
    )
    assert_close(y, yt.numpy(), dtype=dtype, kind="reduction", what="vs torch")


def test_batch_norm_weight_bias_none_mean_identity_affine():
    x, gamma, beta, rm, rv = _case((2, 3, 4, 4), np.float64)
    ones, zeros = np.ones(3), np.zeros(3)
    np.testing.assert_allclose(
        F.batch_norm(x, None, None, rm.copy(), rv.copy(), True),
        F.batch_norm(x, ones, zeros, rm.copy(), rv.copy(), True),
        rtol=1e-14,
    )


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_backward_matches_finite_differences(shape, gradcheck):
    x, gamma, beta, rm, rv = _case(shape, np.float64, seed=5)
    eps = 1e-5
    y = F.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), True, eps=eps)
    Rm = np.random.default_rng(6).standard_normal(y.shape)

    def L():
        # fresh copies: the running statistics must not drift between evaluations
        return np.sum(F.batch_norm(x, gamma, beta, rm.copy(), rv.copy(), True, eps=eps) * Rm)

    dx, dgamma, dbeta = F.batch_norm_backward(Rm, x, gamma, eps=eps)
    assert dx.shape == x.shape and dgamma.shape == gamma.shape and dbeta.shape == beta.shape
    gradcheck.check(L, x, dx, "batch_norm dx")
    gradcheck.check(L, gamma, dgamma, "batch_norm dweight")
    gradcheck.check(L, beta, dbeta, "batch_norm dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + BIG_SHAPES, ids=str)
def test_batch_norm_backward_matches_reference_and_torch(shape, dtype):
    x, gamma, beta, rm, rv = _case(shape, dtype, seed=9)
    dy = np.random.default_rng(10).standard_normal(x.shape).astype(dtype)
    got = F.batch_norm_backward(dy, x, gamma, eps=1e-3)
    want = R.batch_norm_backward(dy, x, gamma, eps=1e-3)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = TF.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3)
    yt.backward(torch.tensor(dy))
    for g, r, t, name in zip(got, want, (xt.grad, gt.grad, bt.grad), ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == dtype, name
        assert_close(g, r, dtype=dtype, kind="reduction", what=name + " vs reference")
        assert_close(g, t.numpy(), dtype=dtype, kind="reduction", what=name + " vs torch")


def test_batch_norm_float64_outlier_first_value_keeps_float64_accuracy():
    """The one-pass sums are centred on K, the mean of the channel's first 64 values: an
    outlier among them (300 standard deviations) must not cost float64 its digits (a single
    value as K gave 1e-10 relative errors; found by a cold review)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 1, 32, 32))
    x[0, 0, 0, 0] = 300.0
    g, b = np.ones(1), np.zeros(1)
    rm, rv = np.zeros(1), np.ones(1)
    y = F.batch_norm(x, g, b, rm, rv, True)
    flat = x.ravel()
    np.testing.assert_allclose(rm, 0.1 * flat.mean(), rtol=0, atol=1e-15)  # (a mean near 0; data of std 1)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * flat.var() * flat.size / (flat.size - 1), rtol=1e-13)
    np.testing.assert_allclose(
        y, R.batch_norm(x, g, b, np.zeros(1), np.ones(1), True), rtol=1e-12, atol=1e-12
    )
    dy = rng.standard_normal(x.shape)
    for got, want in zip(F.batch_norm_backward(dy, x, g), R.batch_norm_backward(dy, x, g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


def test_batch_norm_float32_large_mean_has_no_cancellation():
    """float32 input far from zero (mean 1000, std 1): the variance must not be computed as
    E[x^2] - E[x]^2 in float32 (that would lose every digit); compare with the float64 oracle."""
    rng = np.random.default_rng(0)
    x = (1000.0 + rng.standard_normal((8, 3, 16, 16))).astype(np.float32)
    g, b = np.ones(3, np.float32), np.zeros(3, np.float32)
    y = F.batch_norm(x, g, b, np.zeros(3, np.float32), np.ones(3, np.float32), True)
    y_ref = R.batch_norm(x, g, b, np.zeros(3, np.float32), np.ones(3, np.float32), True)
    np.testing.assert_allclose(y, y_ref, atol=1e-4)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    for got, want in zip(F.batch_norm_backward(dy, x, g), R.batch_norm_backward(dy, x, g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_batch_norm_eval_backward_matches_finite_differences(shape, gradcheck):
    x, gamma, beta, rm, rv = _case(shape, np.float64, seed=15)
    eps = 1e-5
    Rm = np.random.default_rng(16).standard_normal(x.shape)

    def L():
        return np.sum(F.batch_norm(x, gamma, beta, rm, rv, False, eps=eps) * Rm)

    dx, dgamma, dbeta = F.batch_norm_backward(Rm, x, gamma, eps=eps, running_mean=rm, running_var=rv)
    gradcheck.check(L, x, dx, "eval batch_norm dx")
    gradcheck.check(L, gamma, dgamma, "eval batch_norm dweight")
    gradcheck.check(L, beta, dbeta, "eval batch_norm dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES + BIG_SHAPES, ids=str)
def test_batch_norm_eval_backward_matches_reference_and_torch(shape, dtype):
    x, gamma, beta, rm, rv = _case(shape, dtype, seed=19)
    dy = np.random.default_rng(20).standard_normal(x.shape).astype(dtype)
    got = F.batch_norm_backward(dy, x, gamma, eps=1e-3, running_mean=rm, running_var=rv)
    want = R.batch_norm_backward(dy, x, gamma, eps=1e-3, running_mean=rm, running_var=rv)
    xt = torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = TF.batch_norm(xt, torch.tensor(rm), torch.tensor(rv), gt, bt, training=False, eps=1e-3)
    yt.backward(torch.tensor(dy))
    for g, r, t, name in zip(got, want, (xt.grad, gt.grad, bt.grad), ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == dtype, name
        assert_close(g, r, dtype=dtype, kind="reduction", what=name + " vs reference")
        assert_close(g, t.numpy(), dtype=dtype, kind="reduction", what=name + " vs torch")


def test_batch_norm_backward_needs_both_running_stats():
    x, gamma, beta, rm, rv = _case((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        F.batch_norm_backward(x, x, gamma, running_mean=rm)


# --------------------------------------------------------------- batch norm across ranks
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sync_pieces_compose_to_batch_norm(dtype):
    """stats -> elemt and backward_reduce -> backward_elemt (numbacnn.distributed's
    SyncBatchNorm on one rank) equal batch_norm and its training-mode backward, and each
    piece equals numbacnn.reference."""
    from numbacnn import reference as R

    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 3, 4, 4)).astype(dtype) * 2 + 1
    w, b = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    n, mean, m2 = F.batch_norm_stats(x)
    rn, rmean, rm2 = R.batch_norm_stats(x)
    assert n == rn == 80
    np.testing.assert_allclose(mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(m2, rm2, rtol=1e-12)
    var = m2 / n
    y = F.batch_norm_elemt(x, w, b, mean, var)
    np.testing.assert_array_equal(y, F.batch_norm(x, w, b, None, None, True))
    sdy, sdx = F.batch_norm_backward_reduce(dy, x, mean, var)
    rsdy, rsdx = R.batch_norm_backward_reduce(dy, x, mean, var)
    np.testing.assert_allclose(sdy, rsdy, rtol=1e-10)
    np.testing.assert_allclose(sdx, rsdx, rtol=1e-10)
    dx = F.batch_norm_backward_elemt(dy, x, w, mean, var, 1e-5, sdy, sdx, n)
    dx_ref, dg_ref, db_ref = F.batch_norm_backward(dy, x, w)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=tol)  # the sums' order may differ (fastmath)
    np.testing.assert_allclose(sdx, dg_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(R.batch_norm_backward_elemt(dy, x, w, mean, var, 1e-5, sdy, sdx, n), dx,
                               rtol=tol, atol=tol)  # fmt: skip
    assert F.batch_norm_stats(x[:0])[0] == 0 and not F.batch_norm_stats(x[:0])[2].any()
    with pytest.raises(ValueError, match=r"batch_norm_elemt: mean must have shape \(3,\)"):
        F.batch_norm_elemt(x, w, b, mean[:2], var)
    other = np.float32 if dtype == np.float64 else np.float64  # the backward pieces check dtypes as
    for call in (  # batch_norm_backward does
        lambda: F.batch_norm_backward_reduce(dy.astype(other), x, mean, var),
        lambda: F.batch_norm_backward_elemt(dy, x, w.astype(other), mean, var, 1e-5, sdy, sdx, n),
    ):
        with pytest.raises(TypeError, match="arguments must share one dtype"):
            call()
