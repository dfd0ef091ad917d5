"""The naive CPU conv kernels (kernels/cpu/conv/naive.py), which the docs tell students to
read first, against the readable oracle (numbacnn.reference), and every fast strategy
(direct, gather, polyphase, gemm, dense, and the dispatch) against the naive kernels.

The strategies are called directly with the kernel interface (outputs preallocated, top/left
padding only), so each one is tested on every configuration it accepts, not only on the
ones the dispatch happens to send it.
"""

import platform

import numpy as np
import pytest
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn import reference as R
from numbacnn.kernels.cpu import conv
from numbacnn.kernels.cpu.conv import direct, gemm, lastc, naive, outer, polyphase


def close(actual, expected, what):
    """Sums of many terms of either sign, in another order: the suite's "conv" tolerance."""
    assert_close(actual, expected, dtype=expected.dtype, kind="conv", what=what)


@st.composite
def kernel_cases(draw):
    """A valid kernel-level conv: arrays and (stride_h, stride_w, pad_top, pad_left, dil_h,
    dil_w, groups) with the output size implied by a bottom/right padding of its own."""
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    C_in_g, C_out_g = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    N = draw(st.integers(1, 5))
    kH, kW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride_h, stride_w = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dil_h, dil_w = draw(st.sampled_from([1, 1, 2])), draw(st.sampled_from([1, 1, 2]))
    # paddings up to one wider than the kernel's reach (exercises the scatter fallback)
    pad_top, pad_bottom = draw(st.integers(0, (kH - 1) * dil_h + 1)), draw(st.integers(0, 2))
    pad_left, pad_right = draw(st.integers(0, (kW - 1) * dil_w + 1)), draw(st.integers(0, 2))
    reach_h, reach_w = (kH - 1) * dil_h + 1, (kW - 1) * dil_w + 1
    H = draw(st.integers(max(1, reach_h - pad_top - pad_bottom), 9))
    W = draw(st.integers(max(1, reach_w - pad_left - pad_right), 9))
    H_out = (H + pad_top + pad_bottom - reach_h) // stride_h + 1
    W_out = (W + pad_left + pad_right - reach_w) // stride_w + 1
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((N, groups * C_in_g, H, W)).astype(dtype)  # x: (N, C_in, H, W)
    w = rng.standard_normal((groups * C_out_g, C_in_g, kH, kW)).astype(dtype)
    b = rng.standard_normal(groups * C_out_g).astype(dtype)  # b: (C_out,)
    dy = rng.standard_normal((N, groups * C_out_g, H_out, W_out)).astype(dtype)
    geo = (stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    pads = (pad_top, pad_bottom, pad_left, pad_right)
    return x, w, b, dy, geo, pads


def _naive(x, w, b, dy, geo):
    """(y, dx, dw, db) from the naive kernels."""
    y, dx, dw, db = np.empty_like(dy), np.empty_like(x), np.empty_like(w), np.empty_like(b)
    naive.conv2d_forward(x, w, b, y, *geo)
    naive.conv2d_backward_input(dy, w, dx, *geo)
    naive.conv2d_backward_weight(dy, x, dw, *geo)
    naive.conv2d_backward_bias(dy, db)
    return y, dx, dw, db


def _reference(x, w, b, dy, geo, pads):
    """The same four arrays from numbacnn.reference (which pads symmetrically: pad the input
    by hand for the asymmetric part, then cut the gradient back)."""
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups = geo
    pad_top, pad_bottom, pad_left, pad_right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (pad_top, pad_bottom), (pad_left, pad_right)))
    kw = dict(stride=(stride_h, stride_w), padding=0, dilation=(dil_h, dil_w), groups=groups)
    y = R.conv2d(xp, w, b, **kw)
    dxp, dw, db = R.conv2d_backward(dy, xp, w, **kw)
    H, W = x.shape[2:]
    return y, dxp[:, :, pad_top : pad_top + H, pad_left : pad_left + W], dw, db


@settings(max_examples=60)
@given(case=kernel_cases())
def test_naive_kernels_match_reference(case):
    x, w, b, dy, geo, pads = case
    for name, got, want in zip(
        ("y", "dx", "dw", "db"), _naive(x, w, b, dy, geo), _reference(*case), strict=True
    ):
        close(got, want, f"naive {name}, geometry {geo}, pads {pads}")


@settings(max_examples=60)
@given(case=kernel_cases())
def test_every_fast_strategy_matches_naive(case):
    x, w, b, dy, geo, pads = case
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups = geo
    y0, dx0, dw0, db0 = _naive(x, w, b, dy, geo)
    out = np.empty_like
    checks = []

    y = out(y0)
    direct.conv2d_forward(x, w, b, y, *geo)
    checks.append(("direct forward", y, y0))
    dx = out(dx0)
    direct.conv2d_backward_input(dy, w, dx, *geo)
    checks.append(("direct (scatter) backward_input", dx, dx0))
    dw = out(dw0)
    direct.conv2d_backward_weight(dy, x, dw, *geo)
    checks.append(("direct backward_weight", dw, dw0))
    db = out(db0)
    direct.conv2d_backward_bias(dy, db)
    checks.append(("direct backward_bias", db, db0))
    if direct.can_gather(w.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
        dx = out(dx0)
        direct.conv2d_backward_input_gather(dy, w, dx, pad_top, pad_left, dil_h, dil_w, groups)
        checks.append(("gather backward_input", dx, dx0))
    if groups == 1:  # the packed-GEMM weight gradient applies to every groups-1 conv (called directly)
        dw = out(dw0)
        gemm.conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
        checks.append(("gemm backward_weight", dw, dw0))
    if (stride_h > 1 or stride_w > 1) and dil_h == 1 and dil_w == 1:  # polyphase applies (called directly)
        dx, dw = out(dx0), out(dw0)
        polyphase.conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups)
        polyphase.conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, groups)
        checks += [("polyphase backward_input", dx, dx0), ("polyphase backward_weight", dw, dw0)]
    y, dx, dw, db = out(y0), out(dx0), out(dw0), out(db0)
    conv.conv2d_forward(x, w, b, y, *geo)
    conv.conv2d_backward_input(dy, w, dx, *geo)
    conv.conv2d_backward_weight(dy, x, dw, *geo)
    conv.conv2d_backward_bias(dy, db)
    checks += [
        ("dispatch forward", y, y0),
        ("dispatch backward_input", dx, dx0),
        ("dispatch backward_weight", dw, dw0),
        ("dispatch backward_bias", db, db0),
    ]
    for what, got, want in checks:
        close(got, want, f"{what}, geometry {geo}, pads {pads}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_direct_forward_is_the_naive_order_bit_for_bit(dtype):
    """The direct forward adds the taps in the naive order (ci_l, kh, kw): identical bits."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 6, 11, 10)).astype(dtype)
    w = rng.standard_normal((16, 6, 5, 5)).astype(dtype)  # LeNet's C3 shape
    b = rng.standard_normal(16).astype(dtype)
    geo = (1, 1, 2, 2, 1, 1, 1)
    y_naive, y_direct = np.empty((3, 16, 11, 10), dtype), np.empty((3, 16, 11, 10), dtype)
    naive.conv2d_forward(x, w, b, y_naive, *geo)
    direct.conv2d_forward(x, w, b, y_direct, *geo)
    np.testing.assert_array_equal(y_direct, y_naive)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_path_matches_naive(dtype):
    """LeNet's C5 (16x5x5 -> 120x1x1) runs on the dense kernels; same values as naive."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 16, 5, 5)).astype(dtype)
    w = rng.standard_normal((120, 16, 5, 5)).astype(dtype)
    b = rng.standard_normal(120).astype(dtype)
    dy = rng.standard_normal((7, 120, 1, 1)).astype(dtype)
    geo = (1, 1, 0, 0, 1, 1, 1)
    assert conv._is_dense(x.shape, w.shape, dy.shape, 0, 0, 1, 1, 1)
    y0, dx0, dw0, db0 = _naive(x, w, b, dy, geo)
    y, dx, dw = np.empty_like(y0), np.empty_like(dx0), np.empty_like(dw0)
    conv.conv2d_forward(x, w, b, y, *geo)
    conv.conv2d_backward_input(dy, w, dx, *geo)
    conv.conv2d_backward_weight(dy, x, dw, *geo)
    for what, got, want in (("y", y, y0), ("dx", dx, dx0), ("dw", dw, dw0)):
        close(got, want, f"dense {what}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "N,C_in,C_out,H,k,stride,pad,dil",
    [(3, 5, 6, 8, 3, 1, 1, 1), (2, 4, 9, 16, 3, 2, 1, 1), (2, 3, 4, 9, 1, 2, 0, 1), (1, 7, 5, 7, 3, 1, 2, 2),
     (2, 5, 6, 16, 3, 1, 1, 1), (1, 3, 5, 34, 3, 1, 2, 2), (1, 2, 3, 40, 5, 1, 2, 1)],  # rows shifted too
    ids=str,
)  # fmt: skip
def test_gemm_weight_gradient_tiles_and_edges_match_naive(N, C_in, C_out, H, k, stride, pad, dil, dtype):
    """gemm.py's 4 x 4 tiles and its edge tiles (C_out, C_in*k*k not multiples of 4), strides,
    dilation and padding wider than the kernel's reach, against the naive weight gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    H_out = (H + 2 * pad - dil * (k - 1) - 1) // stride + 1
    dy = rng.standard_normal((N, C_out, H_out, H_out)).astype(dtype)
    dw, dw0 = np.empty((C_out, C_in, k, k), dtype), np.empty((C_out, C_in, k, k), dtype)
    naive.conv2d_backward_weight(dy, x, dw0, stride, stride, pad, pad, dil, dil, 1)
    gemm.conv2d_backward_weight(dy, x, dw, stride, stride, pad, pad, dil, dil)
    close(dw, dw0, f"gemm backward_weight {N, C_in, C_out, H, k, stride, pad, dil}")
    geo = (x.shape, stride, stride, pad, pad, dil, dil)
    assert gemm.use_gemm(dy.shape, dw.shape, *geo, 1, dw.itemsize)
    assert not gemm.use_gemm(dy.shape, dw.shape, *geo, 2, dw.itemsize)  # groups: direct.py


@pytest.mark.parametrize(
    "H,W,k,pad_top,pad_left,H_out,W_out",
    [(9, 11, 4, 1, 2, 9, 10), (9, 11, 4, 2, 0, 9, 10), (20, 17, 3, 0, 2, 18, 17), (24, 9, 3, 3, 1, 26, 9)],
    ids=str,
)
def test_gemm_weight_gradient_with_uneven_padding_matches_naive(H, W, k, pad_top, pad_left, H_out, W_out):
    """Rows (and images) that share their zero padding: the grid is W + the wider padding
    wide (Hq = H + the wider one, for shifted kernel rows), whichever side is wider, against
    the naive weight gradient (the panels filled with NaN first: every element read is packed)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, H, W))
    dy = rng.standard_normal((2, 4, H_out, W_out))
    dw, dw0 = np.empty((4, 3, k, k)), np.empty((4, 3, k, k))
    naive.conv2d_backward_weight(dy, x, dw0, 1, 1, pad_top, pad_left, 1, 1, 1)
    g = gemm.geometry(dy.shape, dw.shape, x.shape, 1, 1, pad_top, pad_left, 1, 1)
    pad_right, pad_bottom = W_out + k - 1 - pad_left - W, H_out + k - 1 - pad_top - H
    assert g.Wq == max(W_out, W + max(pad_left, pad_right))
    assert g.kH_packed == k or g.Hq == max(H_out, H + max(pad_top, pad_bottom))
    for name, rows in (("conv_gemm_X", 3 * g.kH_packed), ("conv_gemm_D", 4)):
        gemm.scratch(name, (rows, g.P_row), np.float64)[...] = np.nan
    gemm.conv2d_backward_weight(dy, x, dw, 1, 1, pad_top, pad_left, 1, 1)
    close(dw, dw0, f"uneven padding {H, W, k, pad_top, pad_left}")


def test_gemm_shifts_rows_on_planes_of_8_rows_per_extra_row():
    """Stride 1 both ways: one packed row per ci (taps are views shifted along rows and
    columns) when H_out >= 8 * (kH-1) * dil_h; else one per (ci, kh); strided: one per phase
    of the stride (kernels longer than the stride, no dilation), else one per tap."""
    g = gemm.geometry((64, 16, 32, 32), (16, 16, 3, 3), (64, 16, 32, 32), 1, 1, 1, 1, 1, 1)
    assert (g.kH_packed, g.kW_packed, g.Hq, g.Wq) == (1, 1, 33, 33) and g.P == 64 * 33 * 33  # shared padding
    assert g.P_row == g.P + gemm.ROW_PAD + 2 * 33 + 2  # the views' reach past P
    same = (1, 1, 1, 1, 1, 1)  # stride 1, padding 1, dilation 1
    assert gemm.geometry((64, 32, 16, 16), (32, 32, 3, 3), (64, 32, 16, 16), *same)[:4] == (1, 1, 17, 17)
    assert gemm.geometry((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8), *same)[:4] == (3, 1, 8, 9)
    assert gemm.geometry((64, 6, 28, 28), (6, 1, 5, 5), (64, 1, 32, 32), 1, 1, 0, 0, 1, 1)[:4] == (
        5,
        1,
        28,
        32,
    )  # C1
    x = (64, 16, 32, 32)
    assert gemm.geometry((64, 32, 16, 16), (32, 16, 3, 3), x, 2, 2, 1, 1, 1, 1)[:4] == (2, 2, 17, 17)
    assert gemm.geometry((64, 32, 16, 32), (32, 16, 3, 3), x, 2, 1, 1, 1, 1, 1)[:4] == (2, 1, 17, 33)
    assert gemm.geometry((64, 32, 4, 4), (32, 16, 3, 3), x, 2, 2, 1, 1, 1, 1)[:4] == (
        3,
        2,
        4,
        5,
    )  # 4 rows < 8
    assert gemm.geometry((64, 32, 16, 16), (32, 16, 3, 3), x, 2, 2, 1, 1, 2, 2)[:4] == (
        3,
        3,
        16,
        16,
    )  # dilated
    assert gemm.geometry((64, 32, 16, 16), (32, 16, 2, 2), x, 2, 2, 0, 0, 1, 1)[:4] == (2, 2, 16, 16)  # k = s
    g = gemm.geometry((2, 8, 32, 32), (8, 3, 7, 7), (2, 3, 64, 64), 2, 2, 3, 3, 1, 1)  # a 7x7 stem
    assert g[:4] == (2, 2, 35, 35) and g.P_row == g.P + gemm.ROW_PAD + 3 * 35 + 3
    g = gemm.geometry((2, 8, 16, 16), (8, 3, 7, 7), (2, 3, 32, 32), 2, 2, 3, 3, 1, 1)  # 16 rows < 8 x 3
    assert g[:4] == (7, 2, 16, 19) and g.P_row == g.P + gemm.ROW_PAD + 3


def test_gemm_dispatch_rule():
    """Every groups-1 weight gradient takes the packed path unless its panel is over 64 MB
    (X's rows: one per (ci, kh) for stride 1, shifted per kw; one per tap otherwise)."""

    def use(dy_shape, w_shape, x_shape, stride, pad, groups=1):
        return gemm.use_gemm(dy_shape, w_shape, x_shape, stride, stride, pad, pad, 1, 1, groups, 4)

    assert use((64, 16, 32, 32), (16, 16, 3, 3), (64, 16, 32, 32), 1, 1)  # ResNet-20's 16-channel stage
    assert use((64, 6, 28, 28), (6, 1, 5, 5), (64, 1, 32, 32), 1, 0)  # LeNet's C1
    assert use((64, 32, 16, 16), (32, 16, 3, 3), (64, 16, 32, 32), 2, 1)  # strided
    assert use((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8), 1, 1)  # a small plane: 4 MB
    assert not use((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8), 1, 1, groups=2)  # groups: direct.py
    # 64 x 3 rows of N*8*9 + 18: 63.99 MB at N = 1213, 64.04 MB at 1214
    assert use((1213, 64, 8, 8), (64, 64, 3, 3), (1213, 64, 8, 8), 1, 1)
    assert not use((1214, 64, 8, 8), (64, 64, 3, 3), (1214, 64, 8, 8), 1, 1)
    assert not use((0, 64, 8, 8), (64, 64, 3, 3), (0, 64, 8, 8), 1, 1)  # no images


def _on_1_and_2_threads(kernel, shape):
    """kernel(out) run with 1 and (where Numba has 2) 2 threads, each into a fresh float32 out
    of `shape`: the outs, in that order; the thread count restored after."""
    import numba

    results = []
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(n)
            out = np.empty(shape, np.float32)
            kernel(out)
            results.append(out)
    finally:
        numba.set_num_threads(threads)
    return results


def test_gemm_weight_gradient_is_the_same_for_any_thread_count():
    """LeNet C1's shape at batch 8 splits the reduction into slices (few tap tiles); the
    slices and their order come from the shape, so 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1, 32, 32)).astype(np.float32)
    dy = rng.standard_normal((8, 6, 28, 28)).astype(np.float32)
    assert gemm.slices(25, gemm.geometry(dy.shape, (6, 1, 5, 5), x.shape, 1, 1, 0, 0, 1, 1).P) > 1
    results = _on_1_and_2_threads(
        lambda dw: gemm.conv2d_backward_weight(dy, x, dw, 1, 1, 0, 0, 1, 1), (6, 1, 5, 5)
    )
    assert all(np.array_equal(results[0], r) for r in results)
    dw0 = np.empty_like(results[0])
    naive.conv2d_backward_weight(dy, x, dw0, 1, 1, 0, 0, 1, 1, 1)
    close(results[0], dw0, "gemm backward_weight with slices")


OUTER_CASES = [  # N, C_in, C_out, H, W, k, stride, pad, dil
    (3, 3, 16, 16, 16, 3, 1, 1, 1),  # one vector of channels; 16x16: 4 images a block (3 here)
    (5, 4, 17, 18, 18, 3, 1, 1, 1),  # a channel past a vector; K = 36: taps of zeros to 48
    (2, 2, 40, 40, 52, 3, 1, 1, 1),  # 3 vectors: a 2-vector tile and a 1-vector one; 41 x 53 grid: bands
    (2, 3, 16, 50, 47, 5, 1, 2, 2),  # dilation 2, bands; a row per (ci, kh): one row of reach
    (3, 5, 16, 34, 33, 3, 2, 1, 1),  # stride 2: a row per phase
    (2, 3, 16, 37, 40, 5, 3, 2, 1),  # stride 3: 3 phases, 5 taps
    (3, 4, 16, 14, 14, 3, 2, 1, 1),  # stride 2 to 7 x 7: a row per tap along h (7 < 8 rows a shift)
    (4, 6, 32, 32, 32, 1, 2, 0, 1),  # 1x1 stride 2
    (2, 2, 16, 17, 19, 3, 1, 3, 1),  # padding wider than the kernel's reach
    (1, 3, 16, 20, 20, 4, 1, 1, 1),  # an even kernel (17 x 17 outputs)
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C_in,C_out,H,W,k,stride,pad,dil", OUTER_CASES, ids=str)
def test_outer_weight_gradient_matches_naive(N, C_in, C_out, H, W, k, stride, pad, dil, dtype):
    """outer.py's outer-product tiles, blocks (whole images, several per block; bands of rows
    with the rows their shifted taps read below), channel and tap edges, strides, dilation and
    padding, against the naive weight gradient; the tasks' buffers are filled with NaN first,
    so every element the tiles read was packed."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    H_out = (H + 2 * pad - dil * (k - 1) - 1) // stride + 1
    W_out = (W + 2 * pad - dil * (k - 1) - 1) // stride + 1
    dy = rng.standard_normal((N, C_out, H_out, W_out)).astype(dtype)
    dw, dw0 = np.empty((C_out, C_in, k, k), dtype), np.empty((C_out, C_in, k, k), dtype)
    naive.conv2d_backward_weight(dy, x, dw0, stride, stride, pad, pad, dil, dil, 1)
    g = gemm.geometry(dy.shape, dw.shape, x.shape, stride, stride, pad, pad, dil, dil)
    b = outer.blocking(g, N, C_out, C_in * k * k, k, k, dil, dil, dw.itemsize)
    for name in ("conv_outer_X", "conv_outer_Dt", "conv_outer_part"):
        outer.scratch(name, (1 << 22,), dtype)[...] = np.nan
    outer.conv2d_backward_weight(dy, x, dw, stride, stride, pad, pad, dil, dil)
    close(dw, dw0, f"outer backward_weight {N, C_in, C_out, H, W, k, stride, pad, dil} {b}")


LASTC_CASES = [  # N, C_in, C_out, H, W, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w
    (16, 64, 64, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1),  # ResNet's 8x8 layers: 8 slices of 2 images
    (9, 40, 13, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1),  # channels past a tile (13 of 16, 40 of 64); 9 images
    (8, 32, 64, 16, 16, 3, 3, 2, 2, 1, 1, 1, 1),  # stride 2 to 8x8 (ResNet's downsampling conv)
    (10, 33, 9, 6, 5, 5, 3, 1, 2, 2, 0, 1, 1),  # axes differ: kernel, stride, padding
    (8, 32, 8, 9, 9, 3, 3, 1, 1, 2, 2, 2, 2),  # dilation 2, padding wider than the kernel's reach
    (3, 32, 8, 5, 5, 3, 3, 1, 1, 1, 1, 1, 1),  # fewer images than slices: empty slices add 0
    (40, 32, 8, 12, 12, 1, 1, 1, 1, 0, 0, 1, 1),  # 1x1; several blocks a slice
]


@pytest.mark.parametrize("case", LASTC_CASES, ids=str)
def test_lastc_weight_gradient_matches_naive(case):
    """lastc.py's channels-last tiles against the naive weight gradient: channel edges, images
    not a multiple of the slices (and fewer), strides, dilation and padding that differ along
    the axes; the buffers are filled with NaN first, so every element read was packed; the
    same bits on 1 and 2 threads."""
    N, C_in, C_out, H, W, kH, kW, sh, sw, pt, pl, dh, dw_ = case
    rng = np.random.default_rng(8)
    x = rng.standard_normal((N, C_in, H, W)).astype(np.float32)
    H_out = (H + 2 * pt - dh * (kH - 1) - 1) // sh + 1
    W_out = (W + 2 * pl - dw_ * (kW - 1) - 1) // sw + 1
    dy = rng.standard_normal((N, C_out, H_out, W_out)).astype(np.float32)
    dw0 = np.empty((C_out, C_in, kH, kW), np.float32)
    naive.conv2d_backward_weight(dy, x, dw0, sh, sw, pt, pl, dh, dw_, 1)
    for name in ("conv_lastc_X", "conv_lastc_D", "conv_lastc_part"):
        lastc.scratch(name, (1 << 22,), np.float32)[...] = np.nan
    results = _on_1_and_2_threads(
        lambda dw: lastc.conv2d_backward_weight(dy, x, dw, sh, sw, pt, pl, dh, dw_), dw0.shape
    )
    assert all(np.array_equal(results[0], r) for r in results)
    close(results[0], dw0, f"lastc backward_weight {case}")
    dw = np.empty_like(dw0)  # any layout of x and dy at kernel level (a cold review's Fortran-ordered dy)
    lastc.conv2d_backward_weight(np.asfortranarray(dy), np.asfortranarray(x), dw, sh, sw, pt, pl, dh, dw_)
    assert np.array_equal(dw, results[0])
    x[0, 0, H // 2, W - 1] = np.inf  # reaches only the taps whose sums read it, as naive's
    naive.conv2d_backward_weight(dy, x, dw0, sh, sw, pt, pl, dh, dw_, 1)
    lastc.conv2d_backward_weight(dy, x, results[0], sh, sw, pt, pl, dh, dw_)
    np.testing.assert_array_equal(np.isfinite(results[0]), np.isfinite(dw0))


def test_lastc_dispatch_rule():
    """ResNet's small planes with many channels take lastc.py (with AVX-512); 16x16 and more,
    few channels (LeNet's C1, C3), groups, float64, too few images do not, nor (found by a
    cold review) 1x1 and 2x2 kernels, strides past 2 and paddings far wider than the input,
    whose copies the taps do not amortise (1.6-20x slower) or which would copy gigabytes."""

    def use(dy_shape, w_shape, x_shape, geo=(1, 1, 1, 1, 1, 1), groups=1, itemsize=4):
        return lastc.use_lastc(dy_shape, w_shape, x_shape, *geo, groups, itemsize)

    resnet = ((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8))
    if lastc.VECTOR_BITS < 512:
        assert not use(*resnet)
        return
    assert use(*resnet)
    assert use((64, 64, 8, 8), (64, 32, 3, 3), (64, 32, 16, 16), (2, 2, 1, 1, 1, 1))  # 32->64 stride 2
    assert not use((64, 32, 16, 16), (32, 32, 3, 3), (64, 32, 16, 16))  # 16x16: outer.py
    assert not use((64, 16, 10, 10), (16, 6, 5, 5), (64, 6, 14, 14), (1, 1, 0, 0, 1, 1))  # C3: 6 inputs
    assert not use(*resnet, groups=2)
    assert not use(*resnet, itemsize=8)  # float64
    assert not use((4, 64, 8, 8), (64, 64, 3, 3), (4, 64, 8, 8))  # fewer images than slices
    assert not use((64, 512, 7, 7), (512, 512, 3, 3), (64, 512, 7, 7))  # partial sums past 16 MB
    assert not use((8, 512, 7, 7), (512, 256, 1, 1), (8, 256, 14, 14), (2, 2, 0, 0, 1, 1))  # 1x1 s2
    assert not use((16, 64, 14, 14), (64, 32, 2, 2), (16, 32, 28, 28), (2, 2, 0, 0, 1, 1))  # 2x2 s2
    assert not use((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 32, 32), (4, 4, 1, 1, 1, 1))  # stride 4
    assert not use((8, 8, 9, 9), (8, 32, 3, 3), (8, 32, 1, 1), (150, 150, 600, 600, 1, 1))  # padding 600
    dy, x = np.ones((64, 64, 8, 8), np.float32), np.ones((64, 64, 8, 8), np.float32)
    dw = np.empty((64, 64, 3, 3), np.float32)
    conv.conv2d_backward_weight(dy, x, dw, 1, 1, 1, 1, 1, 1, 1)  # through the dispatch
    assert dw[0, 0, 1, 1] == 64 * 64 and dw[0, 0, 0, 0] == 64 * 49  # ones: the positions read


@pytest.mark.parametrize(
    "sh,sw,pt,pl,dh,dw_,kH,kW",
    [(1, 1, 2, 1, 1, 1, 5, 3), (1, 2, 1, 0, 1, 1, 3, 3), (2, 1, 0, 2, 1, 2, 3, 5), (1, 1, 1, 3, 2, 1, 3, 4)],
    ids=str,
)
def test_outer_weight_gradient_with_different_axes_matches_naive(sh, sw, pt, pl, dh, dw_, kH, kW):
    """Stride, padding, dilation and kernel size different along the two axes (a swap of h and
    w anywhere would show), on a plane with shifted rows and on bands, against naive."""
    rng = np.random.default_rng(6)
    for N, H, W in ((3, 20, 27), (1, 60, 50)):
        x = rng.standard_normal((N, 3, H, W))
        H_out = (H + 2 * pt - dh * (kH - 1) - 1) // sh + 1
        W_out = (W + 2 * pl - dw_ * (kW - 1) - 1) // sw + 1
        dy = rng.standard_normal((N, 16, H_out, W_out))
        dw, dw0 = np.empty((16, 3, kH, kW)), np.empty((16, 3, kH, kW))
        naive.conv2d_backward_weight(dy, x, dw0, sh, sw, pt, pl, dh, dw_, 1)
        outer.conv2d_backward_weight(dy, x, dw, sh, sw, pt, pl, dh, dw_)
        close(dw, dw0, f"outer, axes differ {N, H, W, sh, sw, pt, pl, dh, dw_, kH, kW}")


def test_outer_3x3_tile_gives_the_16_tap_tiles_bits(monkeypatch):
    """outer.py's 18-tap tile for 3x3 kernels on shifted rows (two input channels' taps from
    two addresses) sums each dw element over the same positions in the same order as the
    16-tap tile: the same bits, with an odd input channel count (the last tile's second
    channel is the zero row) and a vector and a half of output channels."""
    rng = np.random.default_rng(9)
    for N, C_in, C_out, H in ((3, 5, 16, 20), (2, 4, 24, 18), (1, 3, 16, 70)):
        x = rng.standard_normal((N, C_in, H, H)).astype(np.float32)
        dy = rng.standard_normal((N, C_out, H, H)).astype(np.float32)
        g = gemm.geometry(dy.shape, (C_out, C_in, 3, 3), x.shape, 1, 1, 1, 1, 1, 1)
        assert outer.use_3x3_tile(3, 3, 1, 1, g) and not outer.use_3x3_tile(3, 3, 2, 2, g)
        dw, dw16 = np.empty((C_out, C_in, 3, 3), np.float32), np.empty((C_out, C_in, 3, 3), np.float32)
        outer.conv2d_backward_weight(dy, x, dw, 1, 1, 1, 1, 1, 1)
        with monkeypatch.context() as m:
            m.setattr(outer, "use_3x3_tile", lambda *args: False)
            outer.conv2d_backward_weight(dy, x, dw16, 1, 1, 1, 1, 1, 1)
        assert np.array_equal(dw, dw16), (N, C_in, C_out, H)


def test_outer_blocking():
    """Blocks of about BLOCK positions: several small images, one image, or a band of rows
    (with the rows its shifted taps read below it); S slices, never more than the blocks;
    channel groups where the slices are few; S bounded by the partial sums' size."""
    same = (1, 1, 1, 1, 1, 1)  # stride 1, padding 1, dilation 1

    def block(N, C_in, C_out, H, k=3, geo=same):
        g = gemm.geometry((N, C_out, H, H), (C_out, C_in, k, k), (N, C_in, H, H), *geo)
        return g, outer.blocking(g, N, C_out, C_in * k * k, k, k, geo[4], geo[5], 4)

    g, b = block(64, 16, 16, 32)  # ResNet-20's first stage: a 33 x 33 grid, an image a block
    assert (b.m, b.nq, b.bands, b.reach_rows, b.S, b.G) == (1, 33, 1, 3, 8, 1)
    assert b.LB == (33 + 3) * 33 + gemm.ROW_PAD  # 2 rows and 2 columns of reach: 3 more rows
    g, b = block(64, 32, 32, 16)  # 17 x 17 = 289 positions: 4 images a block, 16 blocks
    assert (b.m, b.bands, b.S, b.G) == (4, 1, 8, 1)  # 8 slices, enough tasks: one channel group
    g, b = block(2, 16, 16, 64)  # 65 x 65 = 4225 positions: 5 bands of 13 rows a plane
    assert (b.m, b.nq, b.bands, b.S, b.G) == (1, 13, 5, 8, 1)
    g, b = block(1, 16, 64, 32)  # one image: one block, one slice, 4 channel groups
    assert (b.S, b.G) == (1, 4)
    g, b = block(64, 512, 512, 32)  # dw is 4608 x 512: 9.4 MB a slice, so one slice fits 16 MB
    assert b.S == 1 and b.G == 8


def test_outer_dispatch_rule():
    """ResNet- and VGG-sized weight gradients take outer.py; fewer than a vector of output
    channels (LeNet's C1) or small output planes (8x8, LeNet's C3 10x10) stay on gemm.py."""
    assert outer.use_outer((64, 16, 32, 32), (16, 16, 3, 3), 1)
    assert outer.use_outer((16, 64, 32, 32), (64, 64, 3, 3), 1)
    assert outer.use_outer((64, 32, 16, 16), (32, 16, 3, 3), 1)  # 16x16, stride 2 included
    assert not outer.use_outer((64, 64, 8, 8), (64, 64, 3, 3), 1)
    assert not outer.use_outer((64, 16, 10, 10), (16, 6, 5, 5), 1)  # C3
    assert not outer.use_outer((64, 6, 28, 28), (6, 1, 5, 5), 1) or outer.LANES <= 6  # C1
    assert not outer.use_outer((64, 64, 32, 32), (64, 32, 3, 3), 2)  # groups: direct.py
    assert not outer.use_outer((0, 64, 32, 32), (64, 64, 3, 3), 1)  # no images


def test_outer_weight_gradient_is_the_same_for_any_thread_count():
    """4 slices x 2 channel groups of tasks, set by the shape: 1 and 2 threads give the same
    bits."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((16, 8, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((16, 32, 16, 16)).astype(np.float32)
    g = gemm.geometry(dy.shape, (32, 8, 3, 3), x.shape, 1, 1, 1, 1, 1, 1)
    b = outer.blocking(g, 16, 32, 72, 3, 3, 1, 1, 4)
    assert b.S > 1 and (b.G > 1 or outer.LANES < 16)
    results = _on_1_and_2_threads(
        lambda dw: outer.conv2d_backward_weight(dy, x, dw, 1, 1, 1, 1, 1, 1), (32, 8, 3, 3)
    )
    assert all(np.array_equal(results[0], r) for r in results)


OUTER_FORWARD_CASES = [  # N, C_in, C_out, H, W, kH, kW, stride, pad_top, pad_left, pad_bottom, pad_right, dil
    (3, 3, 6, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1),  # one tile of channels; 9 x 9 grid: 3 images a block
    (5, 4, 7, 10, 12, 3, 3, 1, 1, 1, 1, 1, 1),  # a channel past a tile
    (2, 2, 40, 40, 52, 3, 3, 1, 1, 1, 1, 1, 1),  # 7 channel tiles; 41 x 53 grid: bands of rows
    (4, 6, 16, 14, 14, 5, 5, 1, 0, 0, 0, 0, 1),  # LeNet's C3: a valid conv, a row per (ci, kh)
    (3, 16, 6, 10, 10, 5, 5, 1, 4, 4, 4, 4, 1),  # its input gradient's gather: rows shared
    (2, 3, 16, 50, 47, 5, 5, 1, 4, 4, 4, 4, 2),  # dilation 2, bands
    (4, 6, 32, 32, 32, 1, 1, 2, 0, 0, 0, 0, 1),  # 1x1 stride 2: strided rows
    (2, 2, 12, 17, 19, 3, 3, 1, 3, 3, 3, 3, 1),  # padding wider than the kernel's reach
    (1, 3, 8, 20, 20, 4, 4, 1, 1, 1, 2, 2, 1),  # an even kernel, more padding bottom/right
    (2, 3, 9, 13, 21, 5, 3, 1, 2, 0, 1, 2, 1),  # kernel, padding different along the two axes
    (1, 1, 6, 70, 3, 1, 3, 1, 0, 1, 0, 1, 1),  # a 1 x 3 kernel on a tall thin plane
    (3, 32, 17, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1),  # channel tiles by the rule: a channel past a vector
    (5, 32, 40, 7, 13, 3, 3, 1, 1, 1, 1, 1, 1),  # runs of 8 and 5 along a row, a channel tile and 8
    (1, 5, 19, 15, 16, 3, 3, 1, 1, 1, 1, 1, 1),  # row tiles by the rule: 15 rows of a vector, 19 channels
    (2, 3, 16, 70, 64, 3, 3, 1, 1, 1, 1, 1, 1),  # row tiles by the rule, bands of rows
    (3, 5, 16, 33, 32, 3, 3, 2, 1, 1, 1, 1, 1),  # stride 2: a row per phase (17 x 16 outputs)
    (2, 4, 9, 31, 29, 5, 5, 2, 2, 1, 2, 1, 1),  # stride 2, 5x5, uneven padding
    (2, 3, 12, 40, 37, 7, 7, 3, 3, 3, 3, 3, 1),  # stride 3, 7x7: 3 phases of 3, 3, 1 taps
    (4, 6, 8, 14, 14, 3, 3, 2, 1, 1, 1, 1, 1),  # stride 2 to 7 x 7: a row per (ci, kh), phases along w
    (2, 4, 8, 16, 16, 2, 2, 2, 0, 0, 0, 0, 1),  # 2x2 stride 2: a row per tap
    (2, 16, 16, 24, 158, 5, 3, 1, 2, 2, 2, 2, 1),  # bands, the last one all below the outputs
]


@pytest.mark.parametrize("tiles", ["grid", "channels", "rows"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C_in,C_out,H,W,kH,kW,stride,pt,pl,pb,pr,dil", OUTER_FORWARD_CASES, ids=str)
def test_outer_forward_equals_naive(N, C_in, C_out, H, W, kH, kW, stride, pt, pl, pb, pr, dil, dtype, tiles,
                                    monkeypatch):  # fmt: skip
    """outer.py's forward equals the naive forward bit for bit: the same taps in the same
    order, one fused multiply-add each, with each tile forced (channels x position vectors
    on the blocks' grid, the real outputs copied out; runs of real positions x channel
    vectors, written straight to y; or channels x pieces of output rows, written straight to
    y; test_channel_tiles_rule and test_row_tiles_rule check which one the rule picks).
    Blocks of whole images and bands, shared and per-(ci, kh) rows, channel edges, runs cut by
    a row's end, strides, dilation, asymmetric padding; the tasks' buffers are filled with NaN
    first, so every element the tiles read was packed."""
    monkeypatch.setattr(outer, "forward_tiles", lambda *args: tiles)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C_in, kH, kW)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    H_out = (H + pt + pb - dil * (kH - 1) - 1) // stride + 1
    W_out = (W + pl + pr - dil * (kW - 1) - 1) // stride + 1
    y, y0 = np.full((N, C_out, H_out, W_out), np.nan, dtype), np.empty((N, C_out, H_out, W_out), dtype)
    naive.conv2d_forward(x, w, b, y0, stride, stride, pt, pl, dil, dil, 1)
    for name in ("conv_outer_X", "conv_outer_Y"):
        outer.scratch(name, (1 << 22,), dtype)[...] = np.nan
    outer.conv2d_forward(x, w, b, y, stride, stride, pt, pl, dil, dil)
    plan = outer.forward_plan(x.shape, w.shape, y.shape, stride, stride, pt, pl, dil, dil)
    assert np.array_equal(y, y0), f"outer forward {N, C_in, C_out, H, W, kH, kW, stride, pt, pl, dil} {plan}"


def test_outer_forward_plan():
    """Rows shared between kernel rows unless that adds more than an eighth to the output
    rows; blocks of whole images or bands, at least TASKS_FORWARD of them where the images
    allow; tiles whole; tasks at most TASKS_FORWARD."""
    p = outer.forward_plan((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8), 1, 1, 1, 1, 1, 1)
    assert (p.grid.kH_packed, p.grid.Hq, p.grid.Wq) == (1, 9, 9)  # ResNet 8x8: one row per ci
    assert p.LY % outer.POSITIONS == 0 and p.LY >= p.blocks.m * p.blocks.nq * 9 and p.Cp == 66
    assert p.T == min(outer.TASKS_FORWARD, -(-64 // p.blocks.m))  # a task per block, at most 16
    assert p.blocks.m == 4 and p.T == outer.TASKS_FORWARD  # 16 blocks of 4 images: 11 of 6 shared badly
    p = outer.forward_plan((64, 6, 14, 14), (16, 6, 5, 5), (64, 16, 10, 10), 1, 1, 0, 0, 1, 1)
    if outer.ROW_TILES:  # C3: a row per tap column (5 per ci, 14 rows of 10), the rows shared
        assert (p.grid.kH_packed, p.grid.kW_packed, p.grid.Hq, p.grid.Wq) == (1, 5, 14, 10)
    else:  # 14 shared rows for 10 would waste: a row per (ci, kh) of 14 columns
        assert (p.grid.kH_packed, p.grid.kW_packed, p.grid.Hq, p.grid.Wq) == (5, 1, 10, 14)
    p = outer.forward_plan((64, 16, 28, 28), (16, 16, 5, 5), (64, 16, 28, 28), 1, 1, 2, 2, 1, 1)
    assert (p.grid.kH_packed, p.grid.kW_packed, p.grid.Wq) == (1, 1, 30)  # tap columns would pack 5x
    p = outer.forward_plan((64, 16, 10, 10), (6, 16, 5, 5), (64, 6, 14, 14), 1, 1, 4, 4, 1, 1)
    assert (p.grid.kH_packed, p.grid.Hq, p.grid.Wq) == (1, 14, 14)  # C3's gather: no extra rows
    p = outer.forward_plan((1, 3, 200, 200), (16, 3, 3, 3), (1, 16, 200, 200), 1, 1, 1, 1, 1, 1)
    assert p.blocks.bands > 1 and p.T == min(outer.TASKS_FORWARD, p.blocks.bands)


def test_outer_forward_dispatch_rule():
    """The forward (and the gather input gradient) of groups-1 convs with at least CH output
    channels, stride 1 or a 1x1 kernel, take outer.py; the rest stay on direct.py."""
    same = (1, 1, 1, 1, 1, 1)

    def use(x_shape, w_shape, y_shape, geo=same, groups=1):
        return outer.use_outer_forward(x_shape, w_shape, y_shape, *geo, groups, 4)

    assert use((64, 16, 8, 8), (64, 16, 3, 3), (64, 64, 8, 8))
    assert use((64, 16, 10, 10), (6, 16, 5, 5), (64, 6, 14, 14), (1, 1, 4, 4, 1, 1))  # C3's dx
    assert use((64, 16, 32, 32), (32, 16, 1, 1), (64, 32, 16, 16), (2, 2, 0, 0, 1, 1))  # 1x1 s2
    assert use((64, 16, 32, 32), (32, 16, 3, 3), (64, 32, 16, 16), (2, 2, 1, 1, 1, 1))  # 3x3 s2: phases
    assert not use((64, 16, 32, 32), (32, 16, 3, 3), (64, 32, 15, 15), (2, 2, 1, 1, 2, 2))  # and dilated
    assert not use((64, 6, 28, 28), (5, 6, 3, 3), (64, 5, 28, 28))  # fewer than CH channels
    assert not use((64, 16, 8, 8), (64, 8, 3, 3), (64, 64, 8, 8), groups=2)
    assert not use((0, 16, 8, 8), (64, 16, 3, 3), (0, 64, 8, 8))  # no images
    assert not use((64, 0, 8, 8), (64, 0, 3, 3), (64, 64, 8, 8))  # no input channels
    assert not use((256, 512, 7, 7), (512, 512, 3, 3), (256, 512, 7, 7))  # buffers past MAX_PANEL
    # float64: the tile's POSITIONS are float32 lanes (6 x 64 doubles would spill)
    assert not outer.use_outer_forward((64, 16, 8, 8), (64, 16, 3, 3), (64, 64, 8, 8), *same, 1, 8)


def test_channel_tiles_rule():
    """The forward's channel tiles (runs of real outputs x channel vectors) where the grid's
    tiles would do 1.25x their multiply-adds or more, with reductions of 64 taps or more and
    a vector of channels: ResNet's 8x8 and 16x16 layers; the 32x32 ones, LeNet and narrow
    layers keep the grid."""

    def use(N, C_in, C_out, H, k, pad):
        H_out = H + 2 * pad - k + 1
        y = (N, C_out, H_out, H_out)
        plan = outer.forward_plan((N, C_in, H, H), (C_out, C_in, k, k), y, 1, 1, pad, pad, 1, 1)
        return outer.use_channel_tiles(y, C_in * k * k, plan)

    assert use(64, 64, 64, 8, 3, 1) and use(64, 32, 32, 16, 3, 1) and use(64, 32, 64, 8, 3, 1)
    assert not use(64, 16, 16, 32, 3, 1)  # 16 channels: half the tile's 32 idle
    assert use(64, 16, 32, 8, 3, 1) and not use(64, 3, 32, 8, 3, 1)  # 144 taps; 27 too few for the stores
    assert not use(32, 64, 64, 32, 3, 1)  # the grid wastes 10%
    assert not use(64, 6, 16, 14, 5, 0) and not use(64, 1, 6, 32, 5, 0)  # LeNet's C3 and C1
    assert not use(64, 64, 8, 8, 3, 1)  # fewer channels than a vector


def test_row_tiles_rule():
    """The forward's row tiles (channels x pieces of output rows) where the rows are whole
    vectors or the grid is as wide as them, and the tiles do no more multiply-adds than the
    grid's (AVX-512 only): ResNet's 32x32 and 16x16 layers and VGG's, before the channel
    tiles; LeNet's C1, C3 and C3's gather, and 1x1 convs to 8x8, on pieces across the rows;
    not 8x8 planes with 3x3 kernels (the channel tiles); 6 and 12 channels in tiles of 6."""

    def tiles(N, C_in, C_out, H, k, pad):
        H_out = H + 2 * pad - k + 1
        y = (N, C_out, H_out, H_out)
        plan = outer.forward_plan((N, C_in, H, H), (C_out, C_in, k, k), y, 1, 1, pad, pad, 1, 1)
        return outer.forward_tiles(y, C_in * k * k, plan)

    rows = "rows" if outer.ROW_TILES else "grid"  # AVX2's 16 registers cannot hold the tile
    assert tiles(64, 16, 16, 32, 3, 1) == rows and tiles(64, 3, 16, 32, 3, 1) == rows
    assert tiles(32, 64, 64, 32, 3, 1) == rows
    assert tiles(64, 32, 32, 16, 3, 1) == (rows if outer.ROW_TILES else "channels")
    assert tiles(64, 64, 64, 8, 3, 1) == "channels"  # rows of 8: half a vector
    assert tiles(64, 6, 16, 14, 5, 0) == rows and tiles(64, 1, 6, 32, 5, 0) == rows  # LeNet's C3, C1
    assert tiles(64, 16, 6, 10, 5, 4) == rows  # C3's gather: padding 4, rows of 14 shared
    assert tiles(64, 32, 64, 8, 1, 0) == rows  # 1x1: rows of 8 are the grid's
    assert tiles(64, 16, 12, 32, 3, 1) == rows  # 12 channels: two tiles of 6
    assert [outer.row_width(c) for c in (6, 7, 8, 12, 16, 18, 20, 64)] == [6, 8, 8, 6, 8, 6, 8, 8]


def test_a_tap_column_plan_always_runs_the_row_tiles():
    """forward_plan packs a row per tap column (kW_packed > 1 at stride 1) only for the row
    tiles: never for the channel or grid tiles, which that larger pack only slows (a cold
    review's x (44, 35, 7, 29), w (20, 35, 4, 2) had taken the channel tiles on it, 15% slower
    than on the shared rows); over the review's shapes and 300 random ones."""
    rng = np.random.default_rng(11)
    cases = [
        (44, 35, 20, 7, 29, 4, 2, 0),
        (3, 38, 32, 17, 8, 5, 5, 1),
        (26, 10, 51, 8, 8, 5, 5, 1),
        (2, 14, 61, 12, 24, 4, 3, 0),
        (64, 6, 16, 14, 14, 5, 5, 0),
        (64, 1, 6, 32, 32, 5, 5, 0),
    ]
    for _ in range(300):
        k_h, k_w = rng.integers(1, 6, 2)
        cases.append(
            (*rng.integers(1, 70, 3), *rng.integers(max(k_h, k_w), 40, 2), k_h, k_w, rng.integers(0, 3))
        )
    taken = 0
    for N, C_in, C_out, H, W, kH, kW, pad in cases:
        y = (N, C_out, H + 2 * pad - kH + 1, W + 2 * pad - kW + 1)
        plan = outer.forward_plan((N, C_in, H, W), (C_out, C_in, kH, kW), y, 1, 1, pad, pad, 1, 1)
        if plan.grid.kW_packed > 1:
            taken += 1
            assert outer.forward_tiles(y, C_in * kH * kW, plan) == "rows", (N, C_in, C_out, H, W, kH, kW, pad)
    assert taken > 0 or not outer.ROW_TILES


def test_outer_forward_and_gather_through_the_dispatch():
    """conv2d_forward and conv2d_backward_input (its gather: the forward of dy with the flipped
    weights) reach outer.py for LeNet's C3 and agree with the naive kernels; 1 and 2 threads
    give the same bits."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 6, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 6, 5, 5)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dy = rng.standard_normal((8, 16, 10, 10)).astype(np.float32)
    y0, dx0 = np.empty_like(dy), np.empty_like(x)
    naive.conv2d_forward(x, w, b, y0, 1, 1, 0, 0, 1, 1, 1)
    naive.conv2d_backward_input(dy, w, dx0, 1, 1, 0, 0, 1, 1, 1)
    ys = _on_1_and_2_threads(lambda y: conv.conv2d_forward(x, w, b, y, 1, 1, 0, 0, 1, 1, 1), y0.shape)
    dxs = _on_1_and_2_threads(lambda dx: conv.conv2d_backward_input(dy, w, dx, 1, 1, 0, 0, 1, 1, 1), x.shape)
    assert all(np.array_equal(y0, y) for y in ys)
    assert all(np.array_equal(dxs[0], dx) for dx in dxs)
    close(dxs[0], dx0, "gather input gradient through outer.py")


def test_scratch_blocks_are_reused_grown_and_released():
    from numbacnn.kernels.cpu import workspace

    workspace.release()
    a = workspace.scratch("t", (4, 8), np.float32)
    a[:] = 1
    b = workspace.scratch("t", (2, 3), np.float64)  # smaller: the same memory again
    assert b.shape == (2, 3) and b.dtype == np.float64 and np.shares_memory(a, b)
    c = workspace.scratch("t", (100,), np.float32)  # larger: a new block
    assert not np.shares_memory(a, c) and workspace.held_bytes() == 400 + workspace.ALIGN
    assert all(v.ctypes.data % workspace.ALIGN == 0 for v in (a, b, c))  # on a cache line
    assert workspace.scratch("t", (0, 5), np.float32).shape == (0, 5)
    workspace.release()
    assert workspace.held_bytes() == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "C_in,C_out,H,W,k,stride,pad,dil,groups",
    [
        (3, 5, 6, 6, 3, 1, 1, 1, 1),  # no register tile (5 channels): 4 + 1 in memory
        (3, 16, 6, 6, 3, 1, 1, 1, 1),  # two tiles
        (5, 27, 9, 7, 3, 1, 2, 1, 1),  # 3 tiles + 2 + 1, a wide padding, a plane not square
        (4, 18, 7, 7, 3, 2, 1, 1, 2),  # groups of 9: 1 tile + 1, strided (phase planes)
        (2, 12, 9, 9, 2, 3, 0, 2, 1),  # dilated, stride 3
        (8, 8, 5, 5, 1, 2, 0, 1, 4),  # 1x1, stride 2, groups of 2
        (3, 24, 4, 4, 5, 1, 2, 1, 1),  # the grid shorter than one tile of positions
        (16, 8, 11, 11, 3, 1, 1, 1, 1),  # a grid of 11*13 - 2: the last tile partly past it
    ],
    ids=str,
)
def test_direct_forward_register_tiles_are_the_naive_sum_bit_for_bit(
    C_in, C_out, H, W, k, stride, pad, dil, groups, dtype
):
    """direct._forward (8-channel register tiles for each 8 channels of a block, the rest in
    memory; every block size; on phase planes or column copies), strided, dilated and
    grouped, equals the naive kernel exactly:
    each sum is the bias + the taps in the naive order, one fused multiply-add per tap."""
    rng = np.random.default_rng(4)
    N = 3
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C_in // groups, k, k)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    H_out = (H + 2 * pad - dil * (k - 1) - 1) // stride + 1
    W_out = (W + 2 * pad - dil * (k - 1) - 1) // stride + 1
    y0 = np.empty((N, C_out, H_out, W_out), dtype)
    naive.conv2d_forward(x, w, b, y0, stride, stride, pad, pad, dil, dil, groups)
    C_out_g = C_out // groups
    blocks = {direct.channel_block(N, C_out, groups), C_out_g, 8, 9, 16, 64}
    for co_block in sorted(bl for bl in blocks if bl <= max(C_out_g, 8)):
        for columns in (False, True):  # phase planes, or column copies without garbage columns
            y = np.full_like(y0, np.nan)
            direct._forward(x, w, b, y, stride, stride, pad, pad, dil, dil, groups, co_block, columns)
            np.testing.assert_array_equal(y, y0, err_msg=f"co_block {co_block}, columns {columns}")


def test_polyphase_input_gradient_writes_every_position_of_dx():
    """The strided input gradient writes each phase straight into dx (no padded copy): over
    random strides 2-4, kernels 1-5 (shorter than the stride too), paddings and planes, a dx
    filled with NaN first ends equal to the naive scatter (every position written, by one
    phase or as a 0 no window reaches)."""
    rng = np.random.default_rng(1)
    cases = 0
    while cases < 60:
        s_h, s_w = (int(v) for v in rng.integers(2, 5, 2))
        kH, kW = (int(v) for v in rng.integers(1, 6, 2))
        pt, pl = int(rng.integers(0, kH // 2 + 2)), int(rng.integers(0, kW // 2 + 2))
        H, W = (int(v) for v in rng.integers(1, 14, 2))
        H_out, W_out = (H + 2 * pt - kH) // s_h + 1, (W + 2 * pl - kW) // s_w + 1
        if H_out < 1 or W_out < 1:
            continue
        if not polyphase.use_polyphase(
            (2, 2, H, W), (3, 2, kH, kW), (2, 3, H_out, W_out), s_h, s_w, pt, pl, 1, 1
        ):
            continue
        w = rng.standard_normal((3, 2, kH, kW))
        dy = rng.standard_normal((2, 3, H_out, W_out))
        dx0 = np.empty((2, 2, H, W))
        naive.conv2d_backward_input(dy, w, dx0, s_h, s_w, pt, pl, 1, 1, 1)
        dx = np.full_like(dx0, np.nan)
        polyphase.conv2d_backward_input(dy, w, dx, s_h, s_w, pt, pl, 1)
        close(dx, dx0, f"polyphase dx {s_h, s_w, kH, kW, pt, pl, H, W}")
        cases += 1


def test_column_copies_rule():
    """Column copies where the channels fill register tiles and the phase planes' garbage
    columns would cost 1.2 times the tiles or more: 8x8 (tiles of 32 positions: 3 against 2;
    of 16: 5 against 4), LeNet's C3 output (5 against 4; 9 against 7); not 16x16 (9 against 8;
    18 against 16), nor 6 channels (no tiles)."""
    assert direct.use_columns((64, 64, 3, 3), (64, 64, 8, 8), 1, 1, 1)
    assert direct.use_columns((64, 32, 3, 3), (64, 64, 8, 8), 2, 1, 1)  # strided to 8x8
    assert direct.use_columns((16, 6, 5, 5), (64, 16, 10, 10), 1, 1, 1)
    assert not direct.use_columns((32, 32, 3, 3), (64, 32, 16, 16), 1, 1, 1)
    assert not direct.use_columns((6, 1, 5, 5), (64, 6, 28, 28), 1, 1, 1)
    assert direct.use_columns((64, 8, 3, 3), (64, 64, 8, 8), 1, 1, 8)  # groups of 8 channels: a tile
    assert not direct.use_columns((64, 4, 3, 3), (64, 64, 8, 8), 1, 1, 16)  # groups of 4: in memory


def test_channel_block_rule():
    """CO_BLOCK channels per task, fewer (multiples of 8) only where the batch leaves too few
    tasks; at least one."""
    assert direct.channel_block(64, 64, 1) == 64
    assert direct.channel_block(64, 16, 1) == 16
    assert direct.channel_block(1, 64, 1) == 8  # one image: 8 tasks of 8 channels
    assert direct.channel_block(2, 64, 1) == 16  # 2 images x 4 blocks
    assert direct.channel_block(1, 6, 1) == 6  # fewer than 8 channels: one block
    assert direct.channel_block(1, 128, 2) == 16  # 2 groups x 4 blocks of 16
    assert direct.channel_block(1, 10, 1) == 8  # 10 -> 8 (a tile), not 2
    assert direct.channel_block(1, 20, 1) == 8
    assert direct.channel_block(2, 0, 1) == 1  # no channels: still a valid block


def test_a_conv_with_no_channels_gives_empty_or_zero_gradients():
    """No input channels: y is the bias, dx is empty, dw is empty (the gather input gradient
    runs a forward with no output channels; a found regression: ZeroDivisionError)."""
    from numbacnn import functional as F

    x = np.ones((2, 0, 6, 6), np.float32)
    w = np.ones((8, 0, 3, 3), np.float32)
    b = np.arange(8, dtype=np.float32)
    y = F.conv2d(x, w, b, padding=1)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None, None], (2, 8, 6, 6)))
    dx, dw, db = F.conv2d_backward(
        np.ones((2, 8, 6, 6), np.float32), x, w, padding=1, output_mask=(True, False, True)
    )
    assert dx.shape == (2, 0, 6, 6) and dw is None and db.shape == (8,)
    dx, dw, db = F.conv2d_backward(np.ones((2, 8, 6, 6), np.float32), x, w, padding=1)
    assert dx.shape == (2, 0, 6, 6) and dw.shape == (8, 0, 3, 3)  # found: ZeroDivisionError
    np.testing.assert_array_equal(db, np.full(8, 72, np.float32))


def test_a_conv_on_an_empty_plane_gives_empty_dx_and_zero_dw():
    """An input with no rows, padded: every tap reads padding, so y = b, dx is empty and dw is
    0 (found by a review: ZeroDivisionError in the fast forms' plans, through the gather's
    forward into the empty dx and the weight gradient's slices)."""
    from numbacnn import functional as F

    x = np.ones((2, 8, 0, 5), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    y = F.conv2d(x, w, padding=2)
    assert y.shape == (2, 8, 2, 7) and not y.any()
    dx, dw, db = F.conv2d_backward(np.ones(y.shape, np.float32), x, w, padding=2)
    assert dx.shape == x.shape and dw.shape == w.shape and not dw.any()
    np.testing.assert_array_equal(db, np.full(8, 28, np.float32))
    for dtype in (np.float32, np.float64):  # the dispatch itself, on an empty output plane
        y = np.empty((2, 8, 0, 4), dtype)
        conv.conv2d_forward(np.ones((2, 3, 0, 4), dtype), np.ones((8, 3, 1, 1), dtype), np.zeros(8, dtype), y,
                            1, 1, 0, 0, 1, 1, 1)  # fmt: skip


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "N,C_in,C_out,H,W,k,stride,pad",
    [(3, 5, 6, 7, 5, 3, 1, 1), (1, 2, 9, 6, 9, 3, 2, 0), (2, 4, 4, 5, 5, 2, 1, 2), (2, 8, 7, 4, 4, 3, 3, 1)],
    ids=str,
)
def test_gemm_forward_matches_naive(N, C_in, C_out, H, W, k, stride, pad, dtype):
    """gemm.conv2d_forward (channels-last receptive fields, 4 x 4 tiles; edges: C_out and
    W_out not multiples of 4), strided and padded (even wider than the kernel), against naive."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C_in, k, k)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    H_out, W_out = (H + 2 * pad - k) // stride + 1, (W + 2 * pad - k) // stride + 1
    y, y0 = np.full((N, C_out, H_out, W_out), np.nan, dtype), np.empty((N, C_out, H_out, W_out), dtype)
    naive.conv2d_forward(x, w, b, y0, stride, stride, pad, pad, 1, 1, 1)
    gemm.conv2d_forward(x, w, b, y, stride, stride, pad, pad)
    close(y, y0, f"gemm forward {N, C_in, C_out, H, W, k, stride, pad}")


def test_gemm_forward_dispatch_rule():
    """Long reductions (C_in*kH*kW >= 256) on planes so small that direct.py's register tiles
    would mostly compute garbage positions (grid use < 0.55), groups 1 and no dilation, take
    the gemm forward; the gather input gradient follows the same rule."""
    use = gemm.use_gemm_forward
    assert use((64, 128, 4, 4), (128, 128, 3, 3), (64, 128, 4, 4), 1, 1, 1, 1)  # 16 of 32: ResNet-18's 4 x 4
    assert use((64, 64, 8, 8), (128, 64, 3, 3), (64, 128, 4, 4), 2, 1, 1, 1)  # strided to 4 x 4
    assert not use((64, 64, 8, 8), (64, 64, 3, 3), (64, 64, 8, 8), 1, 1, 1, 1)  # 64 of 80: direct
    assert not use((64, 32, 16, 16), (64, 32, 3, 3), (64, 64, 8, 8), 2, 1, 1, 1)  # strided to 8 x 8
    assert not use((64, 8, 4, 4), (8, 8, 3, 3), (64, 8, 4, 4), 1, 1, 1, 1)  # K = 72
    assert not use((64, 128, 4, 4), (128, 128, 3, 3), (64, 128, 4, 4), 1, 2, 2, 1)  # dilated
    assert not use((64, 128, 4, 4), (128, 64, 3, 3), (64, 128, 4, 4), 1, 1, 1, 2)  # grouped
    T = direct.TILE  # 32 positions with AVX-512, 16 with AVX2
    assert gemm.grid_use((64, 64, 8, 8), 3, 1, 1) == 64 / (-(-78 // T) * T)  # rows of 10, 78 positions
    assert gemm.grid_use((64, 16, 32, 32), 3, 1, 1) == 1024 / (-(-1086 // T) * T)  # 31*34 + 32 = 1086
    assert gemm.grid_use((64, 128, 4, 4), 3, 1, 1) < gemm.MIN_GRID_USE  # 3*6 + 4 = 22 positions
    assert not use((64, 64, 6, 6), (64, 64, 3, 3), (64, 64, 6, 6), 1, 1, 1, 1)  # 36 of 48 or 64: direct


def test_register_tile_uses_the_widest_vectors():
    """The tile asks LLVM for the CPU's widest vectors (registers.prefer_vector_width): with
    AVX-512 its multiply-adds are 512-bit (zmm) FMAs, which LLVM would otherwise not emit on an
    Intel CPU; a float32 tile of 8 x 32 sums is then 16 zmm registers."""
    from numba import njit

    from numbacnn.kernels.cpu.conv.planes import FMA
    from numbacnn.kernels.cpu.registers import VECTOR_BITS

    tile = njit(fastmath=FMA)(direct._taps_8ch_tile.py_func)  # uncached: its assembly can be read
    acc, xp = np.zeros((8, 2 * direct.TILE), np.float32), np.ones(4 * direct.TILE, np.float32)
    tile(acc, 0, 0, np.zeros(8, np.float32), np.ones((8, 9), np.float32), 0, xp, np.arange(9))
    assert (acc[:, : direct.TILE] == 9).all()
    asm = tile.inspect_asm(tile.signatures[0])
    if VECTOR_BITS == 512:
        fmas = [line for line in asm.splitlines() if "vfmadd" in line]
        assert fmas and all("zmm" in line for line in fmas), fmas[:4]
    else:  # AVX2 (ymm FMAs), AVX or a generic CPU: no 512-bit register at all
        assert "zmm" not in asm


@pytest.mark.parametrize("where", ["x", "dy"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize(
    "N,C_in,C_out,H,k,pad,stride,dtype",
    [
        (1, 1, 1, 5, 3, 0, 1, np.float64),
        (2, 3, 4, 9, 3, 1, 1, np.float64),
        (2, 16, 8, 8, 3, 1, 1, np.float64),
        (2, 3, 4, 18, 3, 1, 1, np.float64),  # shared shifted rows (gemm.py)
        (8, 16, 16, 16, 3, 1, 1, np.float32),  # outer.py
        (8, 32, 8, 8, 3, 1, 1, np.float32),  # lastc.py (with AVX-512)
        (2, 3, 4, 9, 3, 1, 2, np.float64),  # polyphase
    ],
    ids=str,
)
def test_weight_gradient_with_a_non_finite_input_matches_naive(
    N, C_in, C_out, H, k, pad, stride, dtype, value, where
):
    """A NaN or inf in x or dy reaches only the weights whose sums read it, with the naive
    kernel's NaN and +-inf (the true sums; PyTorch's float32 kernels mostly agree, its float64
    path multiplies the padding too and gives NaN there): the fast forms multiply their grid's zeros by x
    (gemm's shifted rows: found by a cold review, a NaN at the right edge made dw[..., 0] NaN)
    and the padding's zeros by dy (0 x inf is NaN where the truth is +-inf: found by another),
    so a dw they leave with a NaN or an inf is computed again by the naive kernel."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((N, C_in, H, H)).astype(dtype)
    w = rng.standard_normal((C_out, C_in, k, k)).astype(dtype)
    H_out = (H + 2 * pad - k) // stride + 1
    dy = rng.standard_normal((N, C_out, H_out, H_out)).astype(dtype)
    if where == "x":
        x[0, 0, H // 2, H - 1] = value  # the right edge: tap kw = 0 of an unpadded conv never reads it
    else:
        dy[-1, 0, 0, 0] = value  # a corner: with padding, some taps read the padding there
    dw0 = np.empty_like(w)
    naive.conv2d_backward_weight(dy, x, dw0, stride, stride, pad, pad, 1, 1, 1)
    if stride == 1 and where == "x" and dtype == np.float64:  # the fast form alone spreads NaN further
        shared = np.empty_like(w)
        gemm.conv2d_backward_weight(dy, x, shared, 1, 1, pad, pad, 1, 1)
        assert np.isnan(shared).sum() > np.isnan(dw0).sum()
    dw = np.empty_like(w)
    conv.conv2d_backward_weight(dy, x, dw, stride, stride, pad, pad, 1, 1, 1)
    np.testing.assert_array_equal(np.isnan(dw), np.isnan(dw0))
    np.testing.assert_array_equal(np.isinf(dw), np.isinf(dw0))
    np.testing.assert_array_equal(np.sign(dw[np.isinf(dw)]), np.sign(dw0[np.isinf(dw0)]))
    finite = np.isfinite(dw0)
    tol = 1e-10 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(dw[finite], dw0[finite], rtol=tol, atol=tol)


@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), ((1, 3), 0, 2), (2, 1, 3), (1, 0, 5)], ids=str)
def test_input_gradient_with_a_non_finite_weight_matches_naive(stride, pad, k):
    """An inf in the weight reaches only the dx entries whose sums use it (as PyTorch): the
    fast forms, which multiply every weight by zeros of dy's padding, are not used then."""
    rng = np.random.default_rng(7)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    x = rng.standard_normal((2, 3, 8, 9))
    w = rng.standard_normal((4, 3, k, k))
    w[1, 2, 0, 0] = np.inf
    H_out, W_out = (8 + 2 * pad - k) // sh + 1, (9 + 2 * pad - k) // sw + 1
    dy = rng.standard_normal((2, 4, H_out, W_out))
    dx0, dx = np.empty_like(x), np.empty_like(x)
    naive.conv2d_backward_input(dy, w, dx0, sh, sw, pad, pad, 1, 1, 1)
    conv.conv2d_backward_input(dy, w, dx, sh, sw, pad, pad, 1, 1, 1)
    assert np.isfinite(dx0).any()
    np.testing.assert_array_equal(dx, dx0)


def test_copy_run_copies_exactly_n_elements():
    """registers.copy_run (a masked vector load and store of up to RUN elements in a kernel)
    writes dst[at:at + n] and nothing else, for n = 0..RUN, runs that end at the arrays' last
    element, float32 and float64, contiguous rows and strided ones (a loop), and from Python."""
    from numba import njit

    from numbacnn.kernels.cpu.registers import RUN, copy_run

    @njit
    def copy_rows(dst, src, dst_at, src_at, n):
        for r in range(src.shape[0]):
            copy_run(dst[r], dst_at, src[r], src_at, n)

    for dtype in (np.float32, np.float64):
        src = np.arange(3 * 40, dtype=dtype).reshape(3, 40) + 1
        for rows in (
            np.ascontiguousarray(src[:, 20:]),
            src[:, ::2],
        ):  # C rows of 20 (masked); strided (a loop)
            for n in range(RUN + 1):
                for dst_at, src_at in ((0, 0), (20 - n, 20 - n), (3, 20 - n)):
                    dst = np.zeros((3, 20), dtype)
                    copy_rows(dst, rows, dst_at, src_at, n)
                    want = np.zeros((3, 20), dtype)
                    want[:, dst_at : dst_at + n] = rows[:, src_at : src_at + n]
                    assert np.array_equal(dst, want), (dtype, rows.flags.c_contiguous, n, dst_at, src_at)
    dst = np.zeros(5)
    copy_run(dst, 1, np.arange(5.0), 2, 3)
    assert dst.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]


def test_prefetch_is_a_hint_that_changes_no_result():
    """registers.prefetch(arr, i) compiles to a software prefetch (x86: prefetcht1) for a
    contiguous 1-D array, to nothing for other arrays, and does nothing from Python; indices
    past the array's end are not errors (a hint touches no memory)."""
    from numba import njit

    from numbacnn.kernels.cpu.registers import prefetch

    @njit
    def total(a, ahead):
        s = 0.0
        for i in range(a.size):
            prefetch(a, i + ahead)
            s += a[i]
        return s

    a = np.arange(1000, dtype=np.float32)
    assert total(a, 64) == total(a, 10**6) == a.sum()
    if platform.machine() in ("x86_64", "AMD64"):
        assert "prefetcht1" in total.inspect_asm(total.signatures[0])
    assert total(np.arange(12.0).reshape(3, 4)[:, 1], 8) == 1 + 5 + 9  # a strided view: no prefetch
    assert prefetch(a, 3) is None

    @njit
    def mixed(a, b, c):  # one declaration of the intrinsic serves every dtype in a function
        prefetch(a, 1)
        prefetch(b, 1)
        prefetch(c, 1)
        return a[0] + b[0] + c[0]

    assert mixed(np.ones(4, np.float32), np.ones(4), np.ones(4, np.int8)) == 3
    with pytest.raises(Exception, match="prefetch"):  # an index that is not an integer: a TypingError
        njit(lambda a: prefetch(a, 2.5))(a)


@pytest.mark.parametrize("op", ["forward", "backward_weight"])
def test_outer_prefetch_of_the_next_block_gives_the_same_bits(op, monkeypatch):
    """outer.py's kernels prefetch the next block's images while a block's tiles run where the
    arrays they stream pass PREFETCH_MIN_BYTES (outer.flat): with the bound at 0 (every block
    prefetched) the results are the bits without it; a non-contiguous array is never flattened."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 8, 16, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    dy = rng.standard_normal((5, 16, 16, 16)).astype(np.float32)
    assert outer.flat(x, dy).size == 0  # 2 x 40 KB: below the bound
    assert outer.flat(x[:, :, ::2], dy).size == 0
    ro = x.copy()
    ro.flags.writeable = False  # below or above the bound, one Numba type: one specialisation
    assert not outer.flat(ro).flags.writeable and not outer.flat(ro[:, :, ::2]).flags.writeable

    def run():
        if op == "forward":
            out = np.empty((5, 16, 16, 16), np.float32)
            outer.conv2d_forward(x, w, b, out, 1, 1, 1, 1, 1, 1)
        else:
            out = np.empty((16, 8, 3, 3), np.float32)
            outer.conv2d_backward_weight(dy, x, out, 1, 1, 1, 1, 1, 1)
        return out

    plain = run()
    monkeypatch.setattr(outer, "PREFETCH_MIN_BYTES", 0)
    assert outer.flat(x, dy).size == x.size and outer.flat(x[:, :, ::2], dy).size == 0
    assert not outer.flat(ro).flags.writeable and outer.flat(ro).size == ro.size
    np.testing.assert_array_equal(run(), plain)
