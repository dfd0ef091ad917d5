"""linear, relu/tanh/sigmoid, dropout, add, cross_entropy: the oracle, finite differences,
PyTorch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_close, tolerance
from numba import njit

from numbacnn import functional as F
from numbacnn import random as nrandom
from numbacnn import reference as R
from numbacnn.kernels.cpu.conv.planes import FMA

DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------------------
# linear


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,IN,OUT", [(1, 1, 1), (4, 7, 3), (5, 16, 10), (7, 300, 9), (3, 513, 6)])
def test_linear_matches_reference_and_torch(N, IN, OUT, dtype):
    """Odd N, OUT not a multiple of 4 and IN beyond one 256-wide tile exercise the kernels'
    register/cache tiles and their remainders."""
    rng = np.random.default_rng(N * 100 + IN)
    x = rng.standard_normal((N, IN)).astype(dtype)
    w = rng.standard_normal((OUT, IN)).astype(dtype)
    b = rng.standard_normal(OUT).astype(dtype)
    y = F.linear(x, w, b)
    assert y.dtype == dtype and y.shape == (N, OUT)
    assert_close(y, R.linear(x, w, b), dtype=dtype, kind="short_sum")
    assert_close(F.linear(x, w), R.linear(x, w), dtype=dtype, kind="short_sum", what="no bias")
    dy = rng.standard_normal((N, OUT)).astype(dtype)
    got = F.linear_backward(dy, x, w)
    want = R.linear_backward(dy, x, w)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = TF.linear(xt, wt, bt)
    assert_close(y, yt.detach().numpy(), dtype=dtype, kind="short_sum", what="vs torch")
    yt.backward(torch.tensor(dy))
    for g, r, t, name in zip(got, want, (xt.grad, wt.grad, bt.grad), ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == dtype
        assert_close(g, r, dtype=dtype, kind="short_sum", what=name + " vs reference")
        assert_close(g, t.numpy(), dtype=dtype, kind="short_sum", what=name + " vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("R_,K,IN", [(4, 4, 1), (8, 7, 300), (6, 9, 513), (5, 120, 400), (3, 2, 5)])
def test_linear_backward_rows_sum_in_k_order(R_, K, IN, dtype):
    """The backward kernel's 4 x 4 register blocks (4 output rows, 4 terms k per pass) add each
    element's terms one by one in k order: the same bits as a plain loop over k, compiled with
    the kernels' flags (planes.FMA: one fused multiply-add per term), remainders (R % 4 rows,
    K % 4 terms, IN past one 256-wide tile) included."""
    from numbacnn.kernels.cpu import dense

    rng = np.random.default_rng(R_ * 1000 + K)
    coef = rng.standard_normal((R_, K)).astype(dtype)
    rows = rng.standard_normal((K, IN)).astype(dtype)
    out = np.full((R_, IN), np.nan, dtype)
    dense._combine_rows(coef, rows, out)
    want = np.empty((R_, IN), dtype)
    _rows_in_k_order(coef, rows, want)
    np.testing.assert_array_equal(out, want)


@njit(fastmath=FMA)
def _rows_in_k_order(coef, rows, out):
    """out[r, i] = sum over k, one term at a time in k order, of coef[r, k] * rows[k, i]."""
    for r in range(coef.shape[0]):
        for i in range(rows.shape[1]):
            s = out.dtype.type(0.0)
            for k in range(coef.shape[1]):
                s += coef[r, k] * rows[k, i]
            out[r, i] = s


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,OUT,IN", [(64, 120, 400), (64, 84, 120), (64, 10, 84), (3, 5, 513), (1, 1, 1)])
@pytest.mark.parametrize("small", [True, False], ids=["small", "large"])
def test_linear_backward_takes_the_forward_kernel_for_small_layers(N, OUT, IN, dtype, small, monkeypatch):
    """Where the weights take at most SMALL_LAYER_BYTES (LeNet-5's dense layers), dx = dy @ w
    and dw = dy.T @ x are the forward's product (with a zero bias) on contiguous copies of the
    transposes, bit for bit; above it, `_combine_rows`' sums in k order (each path forced here
    by the bound). LeNet-5's dense shapes and ragged ones, from non-contiguous inputs (a transposed
    dy, a column slice of x) too."""
    from numbacnn.kernels.cpu import dense

    assert 120 * 400 * 4 <= dense.SMALL_LAYER_BYTES  # LeNet-5's largest, float32: C5's w
    monkeypatch.setattr(dense, "SMALL_LAYER_BYTES", 1 << 62 if small else 0)

    rng = np.random.default_rng(N * 1000 + IN)
    x = rng.standard_normal((N, 2 * IN)).astype(dtype)[:, ::2]  # x: (N, IN), strided
    w = rng.standard_normal((OUT, IN)).astype(dtype)
    dy = np.asfortranarray(rng.standard_normal((N, OUT)).astype(dtype))
    dx = np.full((N, IN), np.nan, dtype)
    dw = np.full((OUT, IN), np.nan, dtype)
    dense.linear_backward_input(dy, w, dx)
    dense.linear_backward_weight(dy, x, dw)
    want_dx = np.empty((N, IN), dtype)
    want_dw = np.empty((OUT, IN), dtype)
    if small:
        zeros = np.zeros(IN, dtype)
        dense.linear_forward(np.ascontiguousarray(dy), np.ascontiguousarray(w.T), zeros, want_dx)
        dense.linear_forward(np.ascontiguousarray(dy.T), np.ascontiguousarray(x.T), zeros, want_dw)
    else:
        _rows_in_k_order(np.ascontiguousarray(dy), w, want_dx)
        _rows_in_k_order(np.ascontiguousarray(dy.T), np.ascontiguousarray(x), want_dw)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dw, want_dw)
    d64 = dy.astype(np.float64)
    assert_close(dx, d64 @ w.astype(np.float64), dtype=dtype, kind="short_sum", what="dx")
    assert_close(dw, d64.T @ x.astype(np.float64), dtype=dtype, kind="short_sum", what="dw")


def test_linear_backward_matches_finite_differences(gradcheck):
    rng = np.random.default_rng(0)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    Rm = rng.standard_normal((3, 4))
    dx, dw, db = F.linear_backward(Rm, x, w)

    def L():
        return np.sum(F.linear(x, w, b) * Rm)

    gradcheck.check(L, x, dx, "linear dx")
    gradcheck.check(L, w, dw, "linear dweight")
    gradcheck.check(L, b, db, "linear dbias")


# ----------------------------------------------------------------------------------------
# activations

ACTIVATIONS = {
    # name: (forward, backward, backward takes the forward OUTPUT?, torch forward)
    "relu": (F.relu, F.relu_backward, False, torch.relu),
    "tanh": (F.tanh, F.tanh_backward, True, torch.tanh),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, True, torch.sigmoid),
}


def _act_input(shape, dtype, seed=0):
    """Values spread over [-4, 4] but at least 1e-2 away from relu's kink at 0."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-4, 4, shape)
    x[np.abs(x) < 1e-2] = 0.5
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4, 5), (3, 17)], ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_reference_and_torch(name, shape, dtype):
    fwd, bwd, uses_output, tfwd = ACTIVATIONS[name]
    x = _act_input(shape, dtype)
    y = fwd(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, getattr(R, name)(x), dtype=dtype, kind="elementwise", what="vs reference")
    xt = torch.tensor(x, requires_grad=True)
    yt = tfwd(xt)
    assert_close(y, yt.detach().numpy(), dtype=dtype, kind="elementwise", what="vs torch")
    dy = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    dx = bwd(dy, y if uses_output else x)
    assert dx.dtype == dtype
    assert_close(
        dx,
        getattr(R, name + "_backward")(dy, y if uses_output else x),
        dtype=dtype,
        kind="elementwise",
        what="backward vs reference",
    )
    yt.backward(torch.tensor(dy))
    assert_close(dx, xt.grad.numpy(), dtype=dtype, kind="elementwise", what="backward vs torch")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_matches_finite_differences(name, gradcheck):
    fwd, bwd, uses_output, _ = ACTIVATIONS[name]
    x = _act_input((2, 3, 4), np.float64, seed=2)
    Rm = np.random.default_rng(3).standard_normal(x.shape)
    y = fwd(x)
    dx = bwd(Rm, y if uses_output else x)
    gradcheck.check(lambda: np.sum(fwd(x) * Rm), x, dx, f"{name} dx")


def test_activations_saturate_without_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    for dtype in DTYPES:
        xs = x.astype(dtype)
        s = F.sigmoid(xs)
        t = F.tanh(xs)
        assert np.isfinite(s).all() and np.isfinite(t).all()
        np.testing.assert_allclose(s, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
        np.testing.assert_allclose(t, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-7)
    np.testing.assert_array_equal(F.relu(x), [0.0, 0.0, 0.0, 50.0, 1000.0])
    # relu's derivative at exactly 0 is 0 (as PyTorch)
    np.testing.assert_array_equal(F.relu_backward(np.ones(5), x), [0, 0, 0, 1, 1])


# ----------------------------------------------------------------------------------------
# dropout


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_is_reproducible_and_matches_reference(dtype):
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7)).astype(dtype)
    y1, m1 = F.dropout(x, 0.3, training=True, seed=42)
    y2, m2 = F.dropout(x, 0.3, training=True, seed=42)
    _, m3 = F.dropout(x, 0.3, training=True, seed=43)
    assert m1.dtype == np.uint8 and m1.shape == x.shape and y1.dtype == dtype
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(m1, m3)
    assert set(np.unique(m1)) <= {0, 1}
    # y = x * mask / (1 - p), the lecture's inverted dropout
    assert_close(y1, x * m1 / dtype(0.7), dtype=dtype, kind="elementwise")
    # the readable oracle draws the same counter-based mask
    yr, mr = R.dropout(x, 0.3, training=True, seed=42)
    np.testing.assert_array_equal(m1, mr)
    assert_close(y1, yr, dtype=dtype, kind="elementwise")
    # offset: rows [1, 2) of the batch, given their flat offset, draw the whole batch's rows
    _, part = F.dropout(x[1:], 0.3, training=True, seed=42, offset=x[0].size)
    np.testing.assert_array_equal(part, m1[1:])
    np.testing.assert_array_equal(R.dropout(x[1:], 0.3, True, 42, offset=x[0].size)[1], m1[1:])


def test_dropout_keep_rate_and_expectation():
    x = np.ones(200_000)
    for p in (0.1, 0.5, 0.8):
        y, m = F.dropout(x, p, seed=7)
        keep = m.mean()
        assert abs(keep - (1 - p)) < 5 * np.sqrt(p * (1 - p) / x.size), (p, keep)
        assert abs(y.mean() - 1.0) < 0.02  # E[x'] = x
    y, m = F.dropout(x[:1000], 0.0, seed=1)
    assert m.all() and np.array_equal(y, x[:1000])
    y, m = F.dropout(x[:1000], 1.0, seed=1)
    assert not m.any() and not y.any()


def test_dropout_eval_and_none_seed():
    x = np.random.default_rng(0).standard_normal((4, 5))
    y, m = F.dropout(x, 0.5, training=False)
    assert m is None and np.array_equal(y, x)
    np.testing.assert_array_equal(F.dropout_backward(x, None, 0.5), x)
    # seed=None draws from numbacnn.random: reproducible after numbacnn.random.seed
    nrandom.seed(3)
    _, a = F.dropout(x, 0.5)
    nrandom.seed(3)
    _, b = F.dropout(x, 0.5)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_backward_matches_reference(dtype):
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(dtype)
    _, mask = F.dropout(x, 0.4, seed=5)
    dy = np.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    dx = F.dropout_backward(dy, mask, 0.4)
    assert dx.dtype == dtype
    assert_close(dx, R.dropout_backward(dy, mask, 0.4), dtype=dtype, kind="elementwise")


def test_dropout_backward_matches_finite_differences_with_fixed_mask(gradcheck):
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    p, seed = 0.4, 11
    y, mask = F.dropout(x, p, seed=seed)
    assert 0 < mask.sum() < mask.size
    Rm = np.random.default_rng(1).standard_normal(x.shape)
    dx = F.dropout_backward(Rm, mask, p)
    # a fixed seed gives a fixed mask, so x -> dropout(x)[0] is a fixed linear map
    gradcheck.check(lambda: np.sum(F.dropout(x, p, seed=seed)[0] * Rm), x, dx, "dropout dx")


# ----------------------------------------------------------------------------------------
# add (the residual join)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_matches_reference_and_backward_fd(dtype, gradcheck):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    b = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    y = F.add(a, b)
    assert y.dtype == dtype
    assert_close(y, R.add(a, b), dtype=dtype, kind="elementwise")
    if dtype == np.float64:
        Rm = rng.standard_normal(a.shape)
        da, db = F.add_backward(Rm)
        gradcheck.check(lambda: np.sum(F.add(a, b) * Rm), a, da, "add da")
        gradcheck.check(lambda: np.sum(F.add(a, b) * Rm), b, db, "add db")


# ----------------------------------------------------------------------------------------
# cross-entropy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K", [(1, 2), (5, 10), (8, 3)])
def test_cross_entropy_matches_reference_and_torch(N, K, dtype):
    rng = np.random.default_rng(N * K)
    logits = (rng.standard_normal((N, K)) * 3).astype(dtype)
    labels = rng.integers(0, K, N)
    loss = F.cross_entropy(logits, labels)
    assert isinstance(loss, float)
    tol = tolerance(dtype, "short_sum")
    assert loss == pytest.approx(R.cross_entropy(logits, labels), rel=tol, abs=tol)
    lt = torch.tensor(logits, requires_grad=True)
    loss_t = TF.cross_entropy(lt, torch.tensor(labels))
    assert loss == pytest.approx(loss_t.item(), rel=tol, abs=tol)
    d = F.cross_entropy_backward(logits, labels)
    assert d.dtype == dtype and d.shape == (N, K)
    assert_close(
        d, R.cross_entropy_backward(logits, labels), dtype=dtype, kind="short_sum", what="vs reference"
    )
    loss_t.backward()
    assert_close(d, lt.grad.numpy(), dtype=dtype, kind="short_sum", what="vs torch")


def test_cross_entropy_backward_matches_finite_differences(gradcheck):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 5)) * 2
    labels = np.array([0, 4, 2, 2])
    d = F.cross_entropy_backward(logits, labels)
    gradcheck.check(lambda: F.cross_entropy(logits, labels), logits, d, "cross_entropy dlogits")


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [-5000.0, 5000.0, 0.0]], dtype=dtype)
    labels = np.array([0, 0])
    loss = F.cross_entropy(logits, labels)
    # sample 0 is certain and right (loss 0), sample 1 certain and wrong (loss 10000)
    assert np.isfinite(loss) and loss == pytest.approx(5000.0, rel=1e-6)
    d = F.cross_entropy_backward(logits, labels)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, [[0, 0, 0], [-0.5, 0.5, 0]], atol=1e-7)


def test_cross_entropy_accepts_int32_labels():
    logits = np.random.default_rng(0).standard_normal((3, 4))
    a = F.cross_entropy(logits, np.array([1, 2, 3], dtype=np.int64))
    b = F.cross_entropy(logits, np.array([1, 2, 3], dtype=np.int32))
    assert a == b


def test_tanh_float32_rational_kernel_is_within_8_ulp_everywhere():
    """float32 tanh runs a rational approximation: check it on a dense grid, tiny values,
    the clamp region and the special values."""
    x = np.concatenate(
        [np.linspace(-12, 12, 400_001), np.geomspace(1e-30, 12, 20_000), -np.geomspace(1e-30, 12, 20_000)]
    ).astype(np.float32)
    y = F.tanh(x)
    ref = np.tanh(x.astype(np.float64))
    ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(y - ref) / ulp) <= 8
    special = F.tanh(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32))
    assert np.isnan(special[0]) and list(special[1:3]) == [1.0, -1.0]
    assert np.signbit(special[3]) and not np.signbit(special[4])


@pytest.mark.parametrize("op", [F.relu, F.tanh, F.sigmoid])
def test_elementwise_ops_keep_a_0d_shape(op):
    """A 0-d array stays 0-d (as on the CUDA backend and in NumPy), not (1,)."""
    x = np.array(0.75, np.float32)
    assert op(x).shape == ()
    assert F.add(x, x).shape == () and F.dropout(x, 0.5, seed=3)[0].shape == ()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_and_hits_adds_the_summed_loss_and_the_hits(dtype):
    """functional.loss_and_hits adds (summed cross-entropy, correct argmaxes) into totals,
    as the reference does, and as cross_entropy times N and NumPy's argmax give; ties go to
    the first maximum, a NaN row's argmax is its NaN."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((37, 10)).astype(dtype) * 3
    logits[5, [2, 7]] = 9.0  # a tie: the first (2) is the prediction
    labels = rng.integers(0, 10, 37)
    labels[5] = 2
    totals = np.array([1.5, 2.0])
    F.loss_and_hits(logits, labels, totals)
    expected = np.array([1.5, 2.0])
    R.loss_and_hits(logits, labels, expected)
    assert totals[1] == expected[1] == 2.0 + np.count_nonzero(np.argmax(logits, 1) == labels)
    assert totals[0] == pytest.approx(expected[0], rel=1e-12)
    assert totals[0] == pytest.approx(1.5 + 37 * F.cross_entropy(logits, labels), rel=1e-12)
    logits[0, 4] = np.nan
    labels[0] = 4
    nan_totals = np.zeros(2)
    F.loss_and_hits(logits[:1], labels[:1], nan_totals)
    assert np.isnan(nan_totals[0]) and nan_totals[1] == 1.0
    with pytest.raises(TypeError, match="totals must be a float64 array of shape"):
        F.loss_and_hits(logits, labels, np.zeros(2, np.float32))
