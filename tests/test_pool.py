"""max_pool2d / avg_pool2d and their backwards: the oracle, finite differences, PyTorch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_close
from hypothesis import given, settings

from numbacnn import functional as F
from numbacnn import reference as R
from numbacnn.testing import pool2d_configs


def pool_cases(**kwargs):
    """numbacnn.testing's pool2d_configs as (x, the keyword arguments)."""
    return pool2d_configs(**kwargs).map(
        lambda c: (c["x"], {k: c[k] for k in ("kernel_size", "stride", "padding")})
    )


def _torch_kw(kw):
    k = kw["kernel_size"]
    return dict(kernel_size=k, stride=k if kw["stride"] is None else kw["stride"], padding=kw["padding"])


# ----------------------------------------------------------------------------------------
# against the oracle and PyTorch, random configs (ties included)


@settings(max_examples=40)
@given(case=pool_cases())
def test_max_pool2d_matches_reference_and_torch(case):
    x, kw = case
    y = F.max_pool2d(x, **kw)
    assert y.dtype == x.dtype
    np.testing.assert_array_equal(y, R.max_pool2d(x, **kw))  # a max is exact
    xt = torch.tensor(x, requires_grad=True)
    yt = TF.max_pool2d(xt, **_torch_kw(kw))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    dx = F.max_pool2d_backward(dy, x, **kw)
    assert dx.dtype == x.dtype
    assert_close(dx, R.max_pool2d_backward(dy, x, **kw), dtype=x.dtype, kind="short_sum", what="vs reference")
    yt.backward(torch.tensor(dy))
    # with ties, both send the gradient to the FIRST maximum of the window (row-major)
    assert_close(dx, xt.grad.numpy(), dtype=x.dtype, kind="short_sum", what="vs torch")


@settings(max_examples=40)
@given(case=pool_cases())
def test_avg_pool2d_matches_reference_and_torch_count_include_pad(case):
    x, kw = case
    y = F.avg_pool2d(x, **kw)
    assert y.dtype == x.dtype
    assert_close(y, R.avg_pool2d(x, **kw), dtype=x.dtype, kind="short_sum")
    xt = torch.tensor(x, requires_grad=True)
    yt = TF.avg_pool2d(xt, **_torch_kw(kw), count_include_pad=True)
    assert_close(y, yt.detach().numpy(), dtype=x.dtype, kind="short_sum", what="vs torch")
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(x.dtype)
    dx = F.avg_pool2d_backward(dy, x, **kw)
    assert dx.dtype == x.dtype
    assert_close(dx, R.avg_pool2d_backward(dy, x, **kw), dtype=x.dtype, kind="short_sum", what="vs reference")
    yt.backward(torch.tensor(dy))
    assert_close(dx, xt.grad.numpy(), dtype=x.dtype, kind="short_sum", what="vs torch")


def test_max_pool2d_ties_go_to_first_max_like_torch():
    """A window full of equal values sends all of dy to its top-left element."""
    x = np.ones((1, 1, 4, 4))
    dy = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    dx = F.max_pool2d_backward(dy, x, 2)
    expected = np.zeros((1, 1, 4, 4))
    expected[0, 0, ::2, ::2] = dy[0, 0]
    np.testing.assert_array_equal(dx, expected)
    xt = torch.tensor(x, requires_grad=True)
    TF.max_pool2d(xt, 2).backward(torch.tensor(dy))
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    # overlapping windows (stride 1) with a tie: gradients accumulate on the first max
    x = np.array([[[[5.0, 5.0, 5.0], [1.0, 5.0, 0.0]]]])
    dy = np.array([[[[1.0, 10.0]]]])
    dx = F.max_pool2d_backward(dy, x, 2, stride=1)
    np.testing.assert_array_equal(dx, [[[[1.0, 10.0, 0.0], [0.0, 0.0, 0.0]]]])


def test_max_pool2d_padding_is_minus_infinity():
    """Padding never wins a max: an all-negative input gives negative outputs."""
    x = -1.0 - np.arange(16.0).reshape(1, 1, 4, 4)
    y = F.max_pool2d(x, 3, stride=2, padding=1)
    assert (y < 0).all()
    np.testing.assert_array_equal(y, TF.max_pool2d(torch.tensor(x), 3, 2, 1).numpy())


def test_avg_pool2d_divisor_counts_padding():
    x = np.ones((1, 1, 2, 2))
    y = F.avg_pool2d(x, 2, stride=1, padding=1)
    # corner windows see one real 1 and three zero pads: 1/4; the centre sees all four
    np.testing.assert_allclose(y[0, 0], [[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])


def test_pool_default_stride_is_kernel_size():
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 9))
    for fn in (F.max_pool2d, F.avg_pool2d):
        np.testing.assert_array_equal(fn(x, (2, 3)), fn(x, (2, 3), stride=(2, 3)))
        assert fn(x, (2, 3)).shape == (2, 3, 3, 3)


# ----------------------------------------------------------------------------------------
# backward against central finite differences (float64, every element)

POOL_CONFIGS = [
    dict(kernel_size=2),  # the LeNet/VGG pool
    dict(kernel_size=3, stride=2, padding=1),  # overlapping, padded
    dict(kernel_size=(2, 3), stride=1),  # non-square, stride 1
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(kernel_size=3, stride=3),  # stride leaves the last rows unused
]


def _distinct_input(shape, seed=0):
    """A random permutation of distinct values 0.05 apart: no ties, so max is differentiable."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) * 0.05 - n * 0.025).reshape(shape)


@pytest.mark.parametrize("kw", POOL_CONFIGS, ids=[str(i) for i in range(len(POOL_CONFIGS))])
def test_max_pool2d_backward_matches_finite_differences(kw, gradcheck):
    x = _distinct_input((2, 2, 5, 7))
    y = F.max_pool2d(x, **kw)
    Rm = np.random.default_rng(1).standard_normal(y.shape)
    dx = F.max_pool2d_backward(Rm, x, **kw)
    gradcheck.check(lambda: np.sum(F.max_pool2d(x, **kw) * Rm), x, dx, "max_pool2d dx")


@pytest.mark.parametrize("kw", POOL_CONFIGS, ids=[str(i) for i in range(len(POOL_CONFIGS))])
def test_avg_pool2d_backward_matches_finite_differences(kw, gradcheck):
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 7))
    y = F.avg_pool2d(x, **kw)
    Rm = np.random.default_rng(1).standard_normal(y.shape)
    dx = F.avg_pool2d_backward(Rm, x, **kw)
    gradcheck.check(lambda: np.sum(F.avg_pool2d(x, **kw) * Rm), x, dx, "avg_pool2d dx")


# ----------------------------------------------------------------------------------------
# edge values and larger planes


def test_max_pool2d_nan_and_all_minus_inf_windows_like_torch():
    """A NaN wins its window (forward NaN; gradient to the last NaN, as PyTorch's
    `v > max || isnan(v)`); an all -inf window sends its gradient to its first input cell."""
    cases = [
        (np.array([[[[1.0, np.nan], [np.nan, 2.0]]]]), dict(kernel_size=2)),
        (np.full((1, 1, 3, 3), -np.inf), dict(kernel_size=2, stride=2, padding=1)),
    ]
    for x, kw in cases:
        y = F.max_pool2d(x, **kw)
        xt = torch.tensor(x, requires_grad=True)
        yt = TF.max_pool2d(xt, **_torch_kw(dict(stride=None, padding=0) | kw))
        np.testing.assert_array_equal(y, yt.detach().numpy())
        dy = np.arange(1.0, y.size + 1).reshape(y.shape)
        yt.backward(torch.tensor(dy))
        dx = F.max_pool2d_backward(dy, x, **kw)
        np.testing.assert_array_equal(dx, xt.grad.numpy())
        np.testing.assert_array_equal(dx, R.max_pool2d_backward(dy, x, **kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pools_on_larger_planes_match_torch(dtype):
    x = np.random.default_rng(0).standard_normal((3, 5, 17, 23)).astype(dtype)
    for kw in (
        dict(kernel_size=2),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)),
    ):
        for ours, bwd, theirs in (
            (F.max_pool2d, F.max_pool2d_backward, TF.max_pool2d),
            (F.avg_pool2d, F.avg_pool2d_backward, TF.avg_pool2d),
        ):
            xt = torch.tensor(x, requires_grad=True)
            yt = theirs(xt, **_torch_kw(dict(stride=None, padding=0) | kw))
            y = ours(x, **kw)
            assert_close(y, yt.detach().numpy(), dtype=dtype, kind="short_sum", what=ours.__name__)
            dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
            yt.backward(torch.tensor(dy))
            assert_close(bwd(dy, x, **kw), xt.grad.numpy(), dtype=dtype, kind="short_sum", what=bwd.__name__)


# ----------------------------------------------------------------------------------------
# the fast average-pooling kernels against their naive twins (kept beside them)


@settings(max_examples=60)
@given(case=pool_cases())
def test_avg_pool2d_row_kernels_match_the_naive_ones(case):
    from numbacnn.kernels.cpu import pool as P
    from numbacnn.shapes import pool2d_geometry

    x, kw = case
    geo = pool2d_geometry("avg_pool2d", x.shape, kw["kernel_size"], kw["stride"], kw["padding"])
    out_shape = x.shape[:2] + (geo.H_out, geo.W_out)
    y, y_naive = np.empty(out_shape, x.dtype), np.full(out_shape, 7, x.dtype)
    P.avg_pool2d_forward(x, y, *geo.kernel_args)
    P.avg_pool2d_forward_naive(x, y_naive, *geo.kernel_args)
    np.testing.assert_array_equal(y, y_naive)  # each output adds its taps in the same order
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(x.dtype)
    dx, dx_naive = np.full_like(x, 5), np.full_like(x, 3)  # both kernels overwrite dx
    P.avg_pool2d_backward(dy, dx, *geo.kernel_args)
    P.avg_pool2d_backward_naive(dy, dx_naive, *geo.kernel_args)
    if geo.stride_h >= geo.kH and geo.stride_w >= geo.kW:  # windows do not overlap: one share per element
        np.testing.assert_array_equal(dx, dx_naive)
    else:  # overlapping windows' shares are added in another order
        assert_close(dx, dx_naive, dtype=x.dtype, kind="short_sum")


def _tiling_case(k, dtype):
    """The tile kernels' tests' input: x (3, 2, 9, 11) with signed zeros, NaN and inf, windows
    k = (kH, kW) that tile it (stride = kernel, no padding), its last rows and columns past
    every window; returns rng, x, the kernels' geometry arguments and (H_out, W_out)."""
    from numbacnn.kernels.cpu import pool as P

    kH, kW = k
    rng = np.random.default_rng(kH * 10 + kW)
    x = rng.standard_normal((3, 2, 9, 11)).astype(dtype)
    x.flat[::7] = -0.0
    x.flat[5::13] = np.nan
    x.flat[3::17] = np.inf
    args = (kH, kW, kH, kW, 0, 0)
    out = (9 // kH, 11 // kW)
    assert P.tiles_plane(x.shape, out, *args)
    return rng, x, args, out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [(1, 1), (2, 2), (3, 2), (1, 4), (4, 3)])
def test_avg_pool2d_tile_forward_is_the_row_kernel_bit_for_bit(k, dtype):
    """The forward of windows that tile the input (`_avg_pool2d_forward_tiles`, what
    avg_pool2d_forward takes for them) adds the same taps in the same order as the row kernel:
    its bits, signed zeros, NaN and inf included, on planes whose last rows and columns lie
    past every window."""
    from numbacnn.kernels.cpu import pool as P

    _, x, args, (H_out, W_out) = _tiling_case(k, dtype)
    y_tiles, y_rows, y = (np.full((3, 2, H_out, W_out), v, dtype) for v in (3, 4, 5))
    P._avg_pool2d_forward_tiles(x, y_tiles, *k)
    P._avg_pool2d_forward_rows(x, y_rows, *args)
    P.avg_pool2d_forward(x, y, *args)
    np.testing.assert_array_equal(y_tiles, y_rows)
    np.testing.assert_array_equal(y, y_rows)
    assert np.array_equal(np.signbit(y_tiles), np.signbit(y_rows))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [(1, 1), (2, 2), (3, 2), (1, 4), (4, 3)])
def test_avg_pool2d_tile_backward_is_the_row_kernel_bit_for_bit(k, dtype):
    """The backward of windows that tile the input (stride = kernel, no padding: LeNet's 2x2)
    writes each share once (`_avg_pool2d_backward_tiles`): the row kernel's bits, signed zeros,
    NaN and inf included, on planes whose last rows and columns lie past every window."""
    from numbacnn.kernels.cpu import pool as P

    rng, x, args, (H_out, W_out) = _tiling_case(k, dtype)
    dy = rng.standard_normal((3, 2, H_out, W_out)).astype(dtype)
    dy.flat[::5] = -0.0
    dy.flat[2::9] = np.nan
    dx_tiles, dx_rows = np.full_like(x, 3), np.full_like(x, 4)  # both overwrite dx
    P._avg_pool2d_backward_tiles(dy, dx_tiles, *k)
    P._avg_pool2d_backward_rows(dy, dx_rows, *args)
    np.testing.assert_array_equal(dx_tiles, dx_rows)
    assert np.array_equal(np.signbit(dx_tiles), np.signbit(dx_rows))


def test_avg_pool2d_windows_past_the_input_take_the_clipping_kernels():
    """An output array larger than the output size rule gives (its windows pass the input's
    edge; the kernels take the output's size from its array) goes to the row kernels, which
    clip each window, never to the tile kernels (which would read and write past the
    plane)."""
    from numbacnn.kernels.cpu import pool as P

    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    args = (2, 2, 2, 2, 0, 0)
    assert not P.tiles_plane(x.shape, (3, 3), *args) and P.tiles_plane(x.shape, (2, 2), *args)
    y, want = np.full((1, 1, 3, 3), np.nan, np.float32), np.full((1, 1, 3, 3), 7.0, np.float32)
    P.avg_pool2d_forward(x, y, *args)
    P._avg_pool2d_forward_rows(x, want, *args)
    np.testing.assert_array_equal(y, want)
    dx, want_dx = np.full_like(x, np.nan), np.full_like(x, 7.0)
    dy = np.ones((1, 1, 3, 3), np.float32)
    P.avg_pool2d_backward(dy, dx, *args)
    P._avg_pool2d_backward_rows(dy, want_dx, *args)
    np.testing.assert_array_equal(dx, want_dx)
