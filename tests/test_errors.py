"""Bad input gets a clear ValueError/TypeError whose message names the argument and the
shapes (or dtypes/values) involved; no Numba error type ever reaches the user.
Non-contiguous inputs are accepted and give the same result as contiguous copies."""

import re

import numpy as np
import pytest

from numbacnn import functional as F


def _assert_not_numba(exc):
    leaked = [c for c in type(exc).__mro__ if c.__module__.split(".")[0] == "numba"]
    assert not leaked, f"a numba error type leaked: {type(exc).__mro__}"


def check_raises(exc_type, fn, *args, names=(), shapes=(), words=(), **kwargs):
    """Call fn(*args, **kwargs) and require exc_type with a message that contains every
    argument name (as a whole word), every shape (as Python prints the tuple) and every
    extra word. One regex of look-aheads checks them all."""
    parts = [rf"\b{re.escape(n)}\b" for n in names]
    parts += [re.escape(str(tuple(s))) for s in shapes]
    parts += [re.escape(str(w)) for w in words]
    pattern = "(?s)^" + "".join(f"(?=.*{p})" for p in parts)
    with pytest.raises(exc_type, match=pattern) as info:
        fn(*args, **kwargs)
    assert type(info.value) in (ValueError, TypeError), type(info.value)
    _assert_not_numba(info.value)
    return info.value


def _x(*shape, dtype=np.float64):
    return np.random.default_rng(0).standard_normal(shape).astype(dtype)


# ----------------------------------------------------------------------------------------
# conv2d


def test_conv2d_wrong_ndim():
    check_raises(ValueError, F.conv2d, _x(3, 8, 8), _x(4, 3, 3, 3), names=["x"], shapes=[(3, 8, 8)])
    check_raises(ValueError, F.conv2d, _x(1, 3, 8, 8), _x(4, 3, 3), names=["weight"], shapes=[(4, 3, 3)])
    check_raises(
        ValueError, F.conv2d, _x(1, 3, 8, 8), _x(4, 3, 3, 3), _x(4, 1), names=["bias"], shapes=[(4, 1)]
    )


def test_conv2d_channel_mismatch():
    e = check_raises(
        ValueError,
        F.conv2d,
        _x(2, 3, 8, 8),
        _x(8, 4, 3, 3),
        names=["weight", "x"],
        shapes=[(2, 3, 8, 8), (8, 4, 3, 3)],
    )
    assert "C_in" in str(e) or "channel" in str(e)
    # with groups: weight must have C_in/groups input channels
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 4, 5, 5),
        _x(4, 4, 3, 3),
        groups=2,
        names=["weight", "groups"],
        shapes=[(1, 4, 5, 5), (4, 4, 3, 3)],
    )


def test_conv2d_groups_must_divide_channels():
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 4, 5, 5),
        _x(6, 2, 3, 3),
        groups=3,
        names=["groups"],
        shapes=[(1, 4, 5, 5), (6, 2, 3, 3)],
    )
    # out_channels not divisible by groups
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 4, 5, 5),
        _x(3, 2, 3, 3),
        groups=2,
        names=["groups"],
        shapes=[(3, 2, 3, 3)],
    )
    check_raises(ValueError, F.conv2d, _x(1, 4, 5, 5), _x(4, 4, 3, 3), groups=0, names=["groups"])


def test_conv2d_kernel_larger_than_padded_input():
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 1, 3, 3),
        _x(1, 1, 5, 5),
        names=["kernel"],
        shapes=[(1, 1, 3, 3), (1, 1, 5, 5)],
    )
    # padding 1 makes a 3x3 input 5x5: a 5x5 kernel fits, a 6x6 does not
    assert F.conv2d(_x(1, 1, 3, 3), _x(1, 1, 5, 5), padding=1).shape == (1, 1, 1, 1)
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 1, 3, 3),
        _x(1, 1, 6, 6),
        padding=1,
        names=["kernel"],
        shapes=[(1, 1, 3, 3), (1, 1, 6, 6)],
    )
    # dilation 2 turns a 3x3 kernel into a 5x5 extent
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 1, 4, 9),
        _x(1, 1, 3, 3),
        dilation=2,
        names=["kernel"],
        shapes=[(1, 1, 4, 9)],
    )


@pytest.mark.parametrize("bad", [0, -1, (1, 0), (-2, 1)])
def test_conv2d_stride_and_dilation_must_be_positive(bad):
    check_raises(
        ValueError, F.conv2d, _x(1, 1, 5, 5), _x(1, 1, 3, 3), stride=bad, names=["stride"], words=[repr(bad)]
    )
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 1, 5, 5),
        _x(1, 1, 3, 3),
        dilation=bad,
        names=["dilation"],
        words=[repr(bad)],
    )
    dy = _x(1, 1, 3, 3)
    check_raises(
        ValueError, F.conv2d_backward, dy, _x(1, 1, 5, 5), _x(1, 1, 3, 3), stride=bad, names=["stride"]
    )


def test_conv2d_bad_padding():
    check_raises(
        ValueError,
        F.conv2d,
        _x(1, 1, 5, 5),
        _x(1, 1, 3, 3),
        padding="full",
        names=["padding"],
        words=["'full'"],
    )
    check_raises(ValueError, F.conv2d, _x(1, 1, 5, 5), _x(1, 1, 3, 3), padding=-1, names=["padding"])
    check_raises(ValueError, F.conv2d, _x(1, 1, 5, 5), _x(1, 1, 3, 3), padding=(1, 2, 3), names=["padding"])


def test_conv2d_mixed_and_integer_dtypes():
    check_raises(
        TypeError,
        F.conv2d,
        _x(1, 1, 4, 4, dtype=np.float32),
        _x(1, 1, 3, 3),
        names=["x", "weight"],
        shapes=[(1, 1, 4, 4)],
        words=["float32", "float64"],
    )
    check_raises(
        TypeError,
        F.conv2d,
        _x(1, 1, 4, 4),
        _x(1, 1, 3, 3),
        _x(1, dtype=np.float32),
        names=["bias"],
        words=["float32", "float64"],
    )
    check_raises(
        TypeError,
        F.conv2d,
        np.ones((1, 1, 4, 4), dtype=np.int64),
        _x(1, 1, 3, 3),
        names=["x"],
        shapes=[(1, 1, 4, 4)],
        words=["int64"],
    )
    check_raises(
        TypeError,
        F.conv2d,
        _x(1, 1, 4, 4),
        np.ones((1, 1, 3, 3), dtype=np.int32),
        names=["weight"],
        shapes=[(1, 1, 3, 3)],
        words=["int32"],
    )
    check_raises(
        TypeError, F.conv2d, _x(1, 1, 4, 4, dtype=np.float16), _x(1, 1, 3, 3), names=["x"], words=["float16"]
    )
    check_raises(TypeError, F.conv2d, [[[[1.0]]]], _x(1, 1, 1, 1), names=["x"])


def test_conv2d_bias_wrong_length():
    check_raises(
        ValueError, F.conv2d, _x(1, 2, 4, 4), _x(3, 2, 3, 3), _x(2), names=["bias"], shapes=[(3, 2, 3, 3)]
    )


def test_conv2d_backward_dy_wrong_shape():
    check_raises(
        ValueError,
        F.conv2d_backward,
        _x(1, 3, 3, 3),
        _x(1, 2, 5, 5),
        _x(3, 2, 3, 3),
        stride=2,
        names=["dy"],
        shapes=[(1, 3, 3, 3), (1, 3, 2, 2)],
    )
    check_raises(
        TypeError,
        F.conv2d_backward,
        _x(1, 3, 3, 3, dtype=np.float32),
        _x(1, 2, 5, 5),
        _x(3, 2, 3, 3),
        names=["dy"],
        words=["float32", "float64"],
    )


# ----------------------------------------------------------------------------------------
# pooling


@pytest.mark.parametrize("fn", [F.max_pool2d, F.avg_pool2d], ids=["max", "avg"])
def test_pool_bad_kernel(fn):
    x = _x(1, 2, 4, 4)
    check_raises(ValueError, fn, x, 0, names=["kernel_size"], words=["0"])
    check_raises(ValueError, fn, x, (2, -1), names=["kernel_size"])
    check_raises(ValueError, fn, x, 5, names=["kernel_size"], shapes=[(1, 2, 4, 4)])
    check_raises(ValueError, fn, x, 2, stride=0, names=["stride"])
    check_raises(ValueError, fn, x, 2, padding=2, names=["padding"])  # > kernel/2
    check_raises(ValueError, fn, _x(2, 4, 4), 2, names=["x"], shapes=[(2, 4, 4)])
    check_raises(TypeError, fn, np.ones((1, 1, 4, 4), dtype=np.int32), 2, names=["x"], words=["int32"])
    check_raises(TypeError, fn, x, 2.5, names=["kernel_size"])


@pytest.mark.parametrize("fn", [F.max_pool2d_backward, F.avg_pool2d_backward], ids=["max", "avg"])
def test_pool_backward_bad_dy(fn):
    x = _x(1, 2, 4, 4)
    check_raises(ValueError, fn, _x(1, 2, 3, 3), x, 2, names=["dy"], shapes=[(1, 2, 3, 3), (1, 2, 2, 2)])
    check_raises(
        TypeError, fn, _x(1, 2, 2, 2, dtype=np.float32), x, 2, names=["dy"], words=["float32", "float64"]
    )


# ----------------------------------------------------------------------------------------
# batch_norm


def _bn_args(C=3, dtype=np.float64):
    return (np.ones(C, dtype), np.zeros(C, dtype), np.zeros(C, dtype), np.ones(C, dtype))


def test_batch_norm_wrong_weight_shape():
    x = _x(2, 3, 4, 4)
    g, b, rm, rv = _bn_args()
    check_raises(
        ValueError,
        F.batch_norm,
        x,
        np.ones(4),
        b,
        rm,
        rv,
        True,
        names=["weight"],
        shapes=[(4,), (2, 3, 4, 4)],
    )
    check_raises(
        ValueError, F.batch_norm, x, g, np.zeros((3, 1)), rm, rv, True, names=["bias"], shapes=[(3, 1)]
    )
    check_raises(
        ValueError, F.batch_norm, x, g, b, np.zeros(2), rv, True, names=["running_mean"], shapes=[(2,)]
    )
    check_raises(
        ValueError, F.batch_norm, x, g, b, rm, np.ones(5), False, names=["running_var"], shapes=[(5,)]
    )
    check_raises(
        ValueError, F.batch_norm_backward, x, x, np.ones(2), names=["weight"], shapes=[(2,), (2, 3, 4, 4)]
    )


def test_batch_norm_bad_ndim_dtype_and_batch():
    g, b, rm, rv = _bn_args()
    check_raises(ValueError, F.batch_norm, _x(2, 3, 4), g, b, rm, rv, True, names=["x"], shapes=[(2, 3, 4)])
    check_raises(
        TypeError,
        F.batch_norm,
        _x(2, 3, 4, 4, dtype=np.float32),
        g,
        b,
        rm,
        rv,
        True,
        names=["weight"],
        words=["float32", "float64"],
    )
    check_raises(
        TypeError,
        F.batch_norm,
        _x(2, 3, 4, 4),
        g,
        b,
        rm.astype(np.float32),
        rv,
        True,
        names=["running_mean"],
        words=["float32"],
    )
    # one value per channel cannot be normalised with batch statistics
    check_raises(ValueError, F.batch_norm, _x(1, 3), g, b, rm, rv, True, names=["x"], shapes=[(1, 3)])
    check_raises(
        ValueError,
        F.batch_norm_backward,
        _x(2, 3, 4, 5),
        _x(2, 3, 4, 4),
        g,
        names=["dy"],
        shapes=[(2, 3, 4, 5), (2, 3, 4, 4)],
    )


# ----------------------------------------------------------------------------------------
# dense, element-wise, dropout


def test_linear_errors():
    check_raises(ValueError, F.linear, _x(4, 5), _x(3, 6), names=["x", "weight"], shapes=[(4, 5), (3, 6)])
    check_raises(ValueError, F.linear, _x(4, 5, 1), _x(3, 5), names=["x"], shapes=[(4, 5, 1)])
    check_raises(ValueError, F.linear, _x(4, 5), _x(3, 5), _x(4), names=["bias"], shapes=[(4,)])
    check_raises(
        TypeError,
        F.linear,
        _x(4, 5, dtype=np.float32),
        _x(3, 5),
        names=["x", "weight"],
        words=["float32", "float64"],
    )
    check_raises(
        ValueError, F.linear_backward, _x(4, 2), _x(4, 5), _x(3, 5), names=["dy"], shapes=[(4, 2), (4, 3)]
    )


def test_elementwise_errors():
    check_raises(ValueError, F.add, _x(2, 3), _x(3, 2), names=["a", "b"], shapes=[(2, 3), (3, 2)])
    check_raises(
        TypeError, F.add, _x(2, 3), _x(2, 3, dtype=np.float32), names=["a", "b"], words=["float32", "float64"]
    )
    check_raises(TypeError, F.relu, np.arange(4), names=["x"], shapes=[(4,)], words=["int64"])
    check_raises(ValueError, F.tanh_backward, _x(2, 3), _x(2, 4), names=["y", "dy"], shapes=[(2, 3), (2, 4)])
    check_raises(ValueError, F.sigmoid_backward, _x(5), _x(4), names=["y"], shapes=[(4,)])
    check_raises(ValueError, F.relu_backward, _x(5), _x(4), names=["x"], shapes=[(4,)])


def test_dropout_errors():
    check_raises(ValueError, F.dropout, _x(2, 3), 1.5, names=["p"], words=["1.5"])
    check_raises(ValueError, F.dropout, _x(2, 3), -0.1, names=["p"])
    check_raises(TypeError, F.dropout, np.ones((2, 3), dtype=np.int8), names=["x"], words=["int8"])
    _, mask = F.dropout(_x(2, 3), 0.5, seed=0)
    check_raises(ValueError, F.dropout_backward, _x(3, 2), mask, 0.5, names=["mask"], shapes=[(3, 2)])


# ----------------------------------------------------------------------------------------
# cross_entropy


@pytest.mark.parametrize("fn", [F.cross_entropy, F.cross_entropy_backward], ids=["fwd", "bwd"])
def test_cross_entropy_label_errors(fn):
    logits = _x(4, 3)
    check_raises(
        ValueError, fn, logits, np.array([0, 1, 2, 3]), names=["labels"], shapes=[(4, 3)], words=["3"]
    )
    check_raises(
        ValueError, fn, logits, np.array([0, -1, 2, 0]), names=["labels"], shapes=[(4, 3)], words=["-1"]
    )
    check_raises(ValueError, fn, logits, np.array([0, 1, 2]), names=["labels"], shapes=[(3,), (4, 3)])
    check_raises(ValueError, fn, logits, np.zeros((4, 1), dtype=np.int64), names=["labels"], shapes=[(4, 1)])
    check_raises(TypeError, fn, logits, np.array([0.0, 1.0, 2.0, 0.0]), names=["labels"], words=["float64"])
    check_raises(ValueError, fn, _x(4), np.array([0, 1, 2, 0]), names=["logits"], shapes=[(4,)])
    check_raises(
        TypeError,
        fn,
        np.ones((4, 3), dtype=np.int64),
        np.array([0, 1, 2, 0]),
        names=["logits"],
        words=["int64"],
    )


# ----------------------------------------------------------------------------------------
# no numba error on odd-but-legal or odd-and-illegal input


def test_no_numba_error_types_leak_for_assorted_bad_calls():
    bad_calls = [
        lambda: F.conv2d(_x(1, 1, 4, 4), _x(1, 1, 3, 3), stride="2"),
        lambda: F.conv2d(_x(1, 1, 4, 4), _x(1, 1, 3, 3), groups=1.5),
        lambda: F.conv2d(_x(1, 1, 4, 4), _x(1, 1, 3, 3), dilation=(1,)),
        lambda: F.conv2d(_x(1, 1, 4, 4), np.ones((1, 1, 3, 3), dtype=bool)),
        lambda: F.conv2d(_x(1, 1, 4, 4), _x(1, 1, 3, 3), np.ones(1, dtype=np.complex128)),
        lambda: F.max_pool2d(_x(1, 1, 4, 4), None),
        lambda: F.avg_pool2d(_x(1, 1, 4, 4), (2, 2, 2)),
        lambda: F.batch_norm(_x(2, 3, 4, 4), None, None, [0.0, 0.0, 0.0], np.ones(3), True),
        lambda: F.linear(_x(2, 3), None),
        lambda: F.cross_entropy(_x(2, 3), [0, 7]),
        lambda: F.dropout_backward(_x(2, 3), np.ones((2, 3), dtype=np.float64), 0.5),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        _assert_not_numba(info.value)
        assert info.type in (ValueError, TypeError), (i, info.type)


# ----------------------------------------------------------------------------------------
# non-contiguous inputs give the same result as contiguous copies


def _views(a):
    """A few non-contiguous views holding the same values as `a` (C order values equal)."""
    c = np.ascontiguousarray
    big = np.zeros(tuple(2 * s for s in a.shape), dtype=a.dtype)
    big[tuple(slice(None, None, 2) for _ in a.shape)] = a
    strided = big[tuple(slice(None, None, 2) for _ in a.shape)]
    fortran = np.asfortranarray(a)
    flipped = c(a[..., ::-1])[..., ::-1]
    out = [strided, fortran, flipped]
    for v in out:
        assert np.array_equal(v, a)
    assert not strided.flags.c_contiguous and not flipped.flags.c_contiguous
    if a.ndim > 1:
        assert not fortran.flags.c_contiguous
    return out


def test_noncontiguous_inputs_match_contiguous_copies():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 6, 5))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    kw = dict(stride=(2, 1), padding="same", dilation=(1, 2), groups=2)
    y = F.conv2d(x, w, b, **kw)
    dy = rng.standard_normal(y.shape)
    g_ref = F.conv2d_backward(dy, x, w, **kw)
    for xv, wv, bv, dyv in zip(_views(x), _views(w), _views(b), _views(dy), strict=True):
        np.testing.assert_array_equal(F.conv2d(xv, wv, bv, **kw), y)
        for got, want in zip(F.conv2d_backward(dyv, xv, wv, **kw), g_ref, strict=True):
            np.testing.assert_array_equal(got, want)

    # a transposed view: NHWC storage read as NCHW
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    x_t = x_nhwc.transpose(0, 3, 1, 2)
    assert not x_t.flags.c_contiguous
    np.testing.assert_array_equal(F.conv2d(x_t, w, b, **kw), y)

    for fwd, bwd in ((F.max_pool2d, F.max_pool2d_backward), (F.avg_pool2d, F.avg_pool2d_backward)):
        yp = fwd(x, 3, stride=2, padding=1)
        dyp = rng.standard_normal(yp.shape)
        dxp = bwd(dyp, x, 3, stride=2, padding=1)
        for xv, dyv in zip(_views(x), _views(dyp), strict=True):
            np.testing.assert_array_equal(fwd(xv, 3, stride=2, padding=1), yp)
            np.testing.assert_array_equal(bwd(dyv, xv, 3, stride=2, padding=1), dxp)

    g, be = rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    rm, rv = np.zeros(4), np.ones(4)
    ybn = F.batch_norm(x, g, be, rm.copy(), rv.copy(), True)
    dybn = rng.standard_normal(x.shape)
    dbn = F.batch_norm_backward(dybn, x, g)
    for xv, gv, bv, dyv in zip(_views(x), _views(g), _views(be), _views(dybn), strict=True):
        rm2, rv2 = rm.copy(), rv.copy()
        np.testing.assert_array_equal(F.batch_norm(xv, gv, bv, rm2, rv2, True), ybn)
        for got, want in zip(F.batch_norm_backward(dyv, xv, gv), dbn, strict=True):
            np.testing.assert_array_equal(got, want)

    xl, wl, bl = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    yl = F.linear(xl, wl, bl)
    dyl = rng.standard_normal(yl.shape)
    gl = F.linear_backward(dyl, xl, wl)
    for xv, wv, bv, dyv in zip(_views(xl), _views(wl), _views(bl), _views(dyl), strict=True):
        np.testing.assert_array_equal(F.linear(xv, wv, bv), yl)
        for got, want in zip(F.linear_backward(dyv, xv, wv), gl, strict=True):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(F.linear(np.ascontiguousarray(xl.T).T, wl, bl), yl)

    for fwd, bwd, uses_out in (
        (F.relu, F.relu_backward, False),
        (F.tanh, F.tanh_backward, True),
        (F.sigmoid, F.sigmoid_backward, True),
    ):
        ya = fwd(x)
        dya = rng.standard_normal(x.shape)
        da = bwd(dya, ya if uses_out else x)
        for xv, yv, dyv in zip(_views(x), _views(ya), _views(dya), strict=True):
            np.testing.assert_array_equal(fwd(xv), ya)
            np.testing.assert_array_equal(bwd(dyv, yv if uses_out else xv), da)

    ya = F.add(x, 2 * x)
    for xv in _views(x):
        np.testing.assert_array_equal(F.add(xv, 2 * x), ya)
        np.testing.assert_array_equal(F.add(x, _views(2 * x)[2]), ya)

    yd, md = F.dropout(x, 0.5, seed=3)
    for xv in _views(x):
        yv, mv = F.dropout(xv, 0.5, seed=3)
        np.testing.assert_array_equal(mv, md)
        np.testing.assert_array_equal(yv, yd)
        np.testing.assert_array_equal(
            F.dropout_backward(xv, _views(md)[0], 0.5), F.dropout_backward(x, md, 0.5)
        )

    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    loss = F.cross_entropy(logits, labels)
    dl = F.cross_entropy_backward(logits, labels)
    for lv, yv in zip(_views(logits), _views(labels), strict=True):
        assert F.cross_entropy(lv, yv) == loss
        np.testing.assert_array_equal(F.cross_entropy_backward(lv, yv), dl)
