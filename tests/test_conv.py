"""conv2d / conv2d_backward: against scipy.signal.correlate (hypothesis), finite differences,
the readable oracle (numbacnn.reference) and PyTorch.

The strategy (conv2d_configs) and the SciPy oracle (scipy_conv2d, built independently of
numbacnn) are the public ones of numbacnn.testing, which learners point at their own kernels.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from conftest import assert_close
from hypothesis import given, settings

from numbacnn import functional as F
from numbacnn import reference as R
from numbacnn.testing import conv2d_configs, scipy_conv2d
from numbacnn.testing.strategies import same_pads

# ----------------------------------------------------------------------------------------
# padding for PyTorch, applied explicitly


def _pads(padding, kH, kW, dil_h, dil_w):
    """(pad_top, pad_bottom, pad_left, pad_right); "same" pads d*(k-1), the odd one on
    top/left (lecture)."""
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        return (*same_pads(kH, dil_h), *same_pads(kW, dil_w))
    pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
    return pad_h, pad_h, pad_w, pad_w


# ----------------------------------------------------------------------------------------
# forward against scipy: at least 200 examples per run

_FORWARD_EXAMPLES = [0]


@settings(max_examples=250)
@given(case=conv2d_configs())
def _conv2d_forward_matches_scipy(case):
    x, w, b = case["x"], case["weight"], case["bias"]
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    y = F.conv2d(x, w, b, **kw)
    expected = scipy_conv2d(x, w, b, **kw)
    assert y.dtype == x.dtype
    assert y.shape == expected.shape, (y.shape, expected.shape, case)
    assert_close(y, expected, dtype=x.dtype, kind="conv", what=str(kw))
    _FORWARD_EXAMPLES[0] += 1


def test_conv2d_forward_matches_scipy_correlate_250_examples():
    before = _FORWARD_EXAMPLES[0]
    _conv2d_forward_matches_scipy()
    ran = _FORWARD_EXAMPLES[0] - before
    assert ran >= 200, f"only {ran} conv2d examples ran"


def test_conv2d_strategy_covers_the_interesting_cases():
    """The strategy is built valid (no filtering) and reaches every named corner."""
    seen = set()

    @settings(max_examples=300, derandomize=True, database=None)
    @given(case=conv2d_configs())
    def collect(case):
        x, w = case["x"], case["weight"]
        kh, kw = w.shape[2:]
        if kh == kw == 1:
            seen.add("1x1")
        if kh != kw:
            seen.add("non-square")
        if case["groups"] > 1 and w.shape[1] == 1 and x.shape[1] == case["groups"]:
            seen.add("depthwise")
        if (
            case["padding"] in ("valid", 0, (0, 0))
            and (kh, kw) == x.shape[2:]
            and case["dilation"] in (1, (1, 1))
        ):
            seen.add("kernel=input")
        if case["padding"] == "same":
            seen.add("same")
            if case["stride"] not in (1, (1, 1)):
                seen.add("same+stride")
        if isinstance(case["padding"], tuple):
            seen.add("pair padding")
        if case["dilation"] not in (1, (1, 1)):
            seen.add("dilation")

    collect()
    assert seen >= {
        "1x1",
        "non-square",
        "depthwise",
        "kernel=input",
        "same",
        "same+stride",
        "pair padding",
        "dilation",
    }, seen


# ----------------------------------------------------------------------------------------
# backward against central finite differences (float64, every element)

BACKWARD_CONFIGS = [
    # (N, C_in, C_out, H, W, kH, kW, stride, padding, dilation, groups)
    (2, 2, 3, 4, 5, 3, 3, 1, 0, 1, 1),
    (1, 2, 2, 5, 6, 3, 2, 2, 1, 1, 1),  # stride 2, non-square kernel, pad 1
    (1, 1, 2, 6, 6, 2, 2, 1, (1, 2), 2, 1),  # dilation 2, pair padding
    (2, 4, 4, 4, 4, 2, 2, 1, "same", 1, 2),  # groups 2, "same" with an even kernel
    (1, 3, 6, 5, 4, 3, 3, (2, 1), "same", (1, 2), 3),  # depthwise x2, "same" + stride + dilation
    (2, 3, 2, 5, 5, 1, 1, 2, 0, 1, 1),  # 1x1 kernel, stride 2
    (2, 2, 2, 3, 4, 3, 4, 1, "valid", 1, 1),  # kernel = input size -> 1x1 output
    (1, 2, 2, 7, 6, 2, 3, 3, "valid", 1, 2),  # stride 3 leaves rows/cols unused
]


def _conv_case(cfg, dtype=np.float64, seed=0):
    N, C_in, C_out, H, W, kh, kw, stride, padding, dilation, groups = cfg
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C_in, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C_in // groups, kh, kw)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype)
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def _fd_check_conv(gradcheck, x, w, b, kw, seed=1):
    y = F.conv2d(x, w, b, **kw)
    Rm = np.random.default_rng(seed).standard_normal(y.shape)

    def L():
        return np.sum(F.conv2d(x, w, b, **kw) * Rm)

    dx, dw, db = F.conv2d_backward(Rm, x, w, **kw)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape
    gradcheck.check(L, x, dx, "conv2d dx")
    gradcheck.check(L, w, dw, "conv2d dweight")
    gradcheck.check(L, b, db, "conv2d dbias")


@pytest.mark.parametrize("cfg", BACKWARD_CONFIGS, ids=[str(i) for i in range(len(BACKWARD_CONFIGS))])
def test_conv2d_backward_matches_finite_differences(cfg, gradcheck):
    x, w, b, kw = _conv_case(cfg)
    _fd_check_conv(gradcheck, x, w, b, kw)


@settings(max_examples=20)
@given(case=conv2d_configs(small=True, dtypes=(np.float64,)))
def test_conv2d_backward_matches_finite_differences_hypothesis(case, gradcheck):
    b = case["bias"]
    if b is None:
        b = np.zeros(case["weight"].shape[0])
    kw = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    x = np.ascontiguousarray(case["x"])  # perturbed in place, element by element
    _fd_check_conv(gradcheck, x, case["weight"], b, kw)


# ----------------------------------------------------------------------------------------
# against the readable oracle (numbacnn.reference), float32 and float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", BACKWARD_CONFIGS[:6], ids=[str(i) for i in range(6)])
def test_conv2d_forward_backward_match_reference(cfg, dtype):
    x, w, b, kw = _conv_case(cfg, dtype, seed=7)
    y = F.conv2d(x, w, b, **kw)
    assert y.dtype == dtype
    assert_close(y, R.conv2d(x, w, b, **kw), dtype=dtype, kind="conv")
    dy = np.random.default_rng(8).standard_normal(y.shape).astype(dtype)
    got = F.conv2d_backward(dy, x, w, **kw)
    want = R.conv2d_backward(dy, x, w, **kw)
    for g, r, name in zip(got, want, ("dx", "dweight", "dbias"), strict=True):
        assert g.dtype == dtype, name
        assert_close(g, r, dtype=dtype, kind="conv", what=name)


def test_conv2d_bias_none_equals_zero_bias_and_dbias_always_returned():
    x, w, b, kw = _conv_case(BACKWARD_CONFIGS[1])
    np.testing.assert_array_equal(F.conv2d(x, w, None, **kw), F.conv2d(x, w, np.zeros_like(b), **kw))
    y = F.conv2d(x, w, None, **kw)
    dy = np.ones_like(y)
    _, _, db = F.conv2d_backward(dy, x, w, **kw)
    np.testing.assert_allclose(db, np.full(w.shape[0], y.shape[0] * y.shape[2] * y.shape[3]))


def test_conv2d_backward_output_mask_skips_what_is_not_wanted():
    """PyTorch's output_mask: a masked gradient is not computed and comes back None; the
    others are bit for bit the unmasked ones. A Conv2d without a bias asks for no dbias."""
    from numbacnn.layers import Conv2d

    x, w, _, kw = _conv_case(BACKWARD_CONFIGS[3])
    dy = np.random.default_rng(2).standard_normal(F.conv2d(x, w, **kw).shape)
    full = F.conv2d_backward(dy, x, w, **kw)
    for mask in [(True, True, False), (False, True, False), (True, False, True), (False, False, False)]:
        for got, ref, want, name in zip(
            F.conv2d_backward(dy, x, w, **kw, output_mask=mask), full, mask, "xwb", strict=True
        ):
            if want:
                np.testing.assert_array_equal(got, ref, err_msg=name)
            else:
                assert got is None, (mask, name)
        ref = R.conv2d_backward(dy, x, w, **kw, output_mask=mask)
        assert [g is None for g in ref] == [not m for m in mask]
    for bad in [(True, True), (1, 1, 1), "yes"]:
        with pytest.raises(TypeError, match="output_mask must be"):
            F.conv2d_backward(dy, x, w, **kw, output_mask=bad)
    layer = Conv2d(4, 4, 2, padding="same", groups=2, bias=False).astype(np.float64)
    layer.weight.data[...] = w
    layer.weight.grad[...] = 0
    np.testing.assert_array_equal(layer(x), F.conv2d(x, w, **kw))
    np.testing.assert_array_equal(layer.backward(dy), full[0])
    np.testing.assert_array_equal(layer.weight.grad, full[1])


# ----------------------------------------------------------------------------------------
# against PyTorch (CPU)

TORCH_CONFIGS = BACKWARD_CONFIGS + [(2, 6, 4, 9, 8, 3, 3, 2, 1, 1, 2), (1, 4, 4, 8, 8, 3, 3, 1, 2, 2, 4)]


def _matches_torch(x, w, b, kw, dtype, seed):
    """F.conv2d and conv2d_backward against torch's conv2d and autograd, with the padding
    applied explicitly (possibly asymmetric: "same" with an even kernel) before an unpadded
    torch convolution."""
    dilation = kw["dilation"]
    dil_h, dil_w = (dilation, dilation) if isinstance(dilation, int) else dilation
    pad_top, pad_bottom, pad_left, pad_right = _pads(kw["padding"], w.shape[2], w.shape[3], dil_h, dil_w)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    xt_padded = TF.pad(xt, (pad_left, pad_right, pad_top, pad_bottom))
    yt = TF.conv2d(xt_padded, wt, bt, stride=kw["stride"], dilation=dilation, groups=kw["groups"])
    y = F.conv2d(x, w, b, **kw)
    assert_close(y, yt.detach().numpy(), dtype=dtype, kind="conv")
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dy))
    dx, dweight, dbias = F.conv2d_backward(dy, x, w, **kw)
    assert_close(dx, xt.grad.numpy(), dtype=dtype, kind="conv", what="dx")
    assert_close(dweight, wt.grad.numpy(), dtype=dtype, kind="conv", what="dweight")
    assert_close(dbias, bt.grad.numpy(), dtype=dtype, kind="conv", what="dbias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", TORCH_CONFIGS, ids=[str(i) for i in range(len(TORCH_CONFIGS))])
def test_conv2d_matches_torch_forward_and_autograd(cfg, dtype):
    _matches_torch(*_conv_case(cfg, dtype, seed=3), dtype, seed=4)


@pytest.mark.parametrize("k,dilation", [(3, 1), (5, 1), (3, 2), ((3, 5), (2, 1))])
def test_conv2d_same_odd_kernel_matches_torch_same(k, dilation):
    rng = np.random.default_rng(0)
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, kh, kw))
    y = F.conv2d(x, w, padding="same", dilation=dilation)
    yt = TF.conv2d(torch.tensor(x), torch.tensor(w), padding="same", dilation=dilation).numpy()
    assert y.shape == x.shape[:1] + (4,) + x.shape[2:]
    assert_close(y, yt, dtype=np.float64, kind="conv")


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d_same_even_kernel_differs_from_torch_on_purpose():
    """Documented difference: for an even kernel "same" pads d*(k-1) (odd) in total; numbacnn
    follows the lecture (ceil on top/left, floor on bottom/right) while PyTorch's
    padding="same" puts the extra row/column bottom/right. Same shape, shifted window."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 5))
    w = rng.standard_normal((3, 2, 2, 4))  # kH=2 -> total 1 (top 1, bottom 0); kW=4 -> 3 (2, 1)
    y = F.conv2d(x, w, padding="same")
    xt, wt = torch.tensor(x), torch.tensor(w)
    ours = TF.conv2d(TF.pad(xt, (2, 1, 1, 0)), wt).numpy()  # (left, right, top, bottom)
    torch_same = TF.conv2d(xt, wt, padding="same").numpy()
    torch_side = TF.conv2d(TF.pad(xt, (1, 2, 0, 1)), wt).numpy()
    assert y.shape == torch_same.shape == (1, 3, 6, 5)
    assert_close(y, ours, dtype=np.float64, kind="conv")
    assert_close(torch_same, torch_side, dtype=np.float64, kind="conv")  # PyTorch: extra bottom/right
    assert not np.allclose(y, torch_same)
    # the two differ by a one-pixel shift: our row i is PyTorch's row i-1 (interior rows)
    np.testing.assert_allclose(y[:, :, 1:, 1:-1], torch_same[:, :, :-1, :-2], rtol=1e-12, atol=1e-12)


def test_conv2d_same_with_stride_output_size():
    """'same' with stride s gives floor((n + s - 1) / s) outputs (lecture, "Stride")."""
    rng = np.random.default_rng(0)
    for n in range(1, 10):
        for s in range(1, 4):
            for k in range(1, 5):
                x = rng.standard_normal((1, 1, n, n + 1))
                w = rng.standard_normal((1, 1, k, k))
                y = F.conv2d(x, w, padding="same", stride=s)
                assert y.shape[2:] == ((n + s - 1) // s, (n + 1 + s - 1) // s), (n, s, k)
                assert_close(y, scipy_conv2d(x, w, None, s, "same", 1, 1), dtype=np.float64, kind="conv")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "cfg",
    [
        (2, 3, 19, 9, 11, 3, 3, 1, 1, 1, 1),  # 19 output channels: two full blocks of 8 + 3
        (1, 4, 22, 8, 7, 3, 2, 2, "same", 1, 2),  # 11 per group
        (2, 16, 120, 5, 5, 5, 5, 1, 0, 1, 1),  # LeNet's C5: 1x1 output, many channels
        (1, 9, 27, 10, 9, 3, 3, 1, 1, (2, 1), 9),  # depthwise x3 multiplier, dilated
    ],
    ids=["co19", "groups2x11", "lenet_c5", "depthwise27"],
)
def test_conv2d_channel_blocks_match_torch(cfg, dtype):
    """Larger channel counts than the hypothesis cases, so every channel block (and its
    remainder) of the kernels is exercised."""
    _matches_torch(*_conv_case(cfg, dtype, seed=11), dtype, seed=12)


# Strided convolutions run through the polyphase decomposition (a sum of stride-1 convs);
# these cases stress it: kernel smaller than the stride (phases with no taps, input rows no
# window reaches), AlexNet's 11x11/4, uneven strides, groups, truncated bottom/right rows.
STRIDED = [  # (N, C_in, C_out, H, W, kH, kW, stride, padding, groups)
    (2, 3, 4, 19, 17, 11, 11, 4, 2, 1),
    (2, 4, 6, 9, 8, 1, 1, 2, 0, 2),
    (1, 2, 3, 10, 11, 2, 2, 3, (1, 0), 1),
    (2, 6, 6, 12, 9, 3, 3, (2, 3), 1, 6),
    (3, 4, 8, 15, 15, 3, 5, 2, (1, 2), 2),
    (2, 3, 5, 7, 7, 4, 4, 3, 0, 1),
]


@pytest.mark.parametrize("cfg", STRIDED, ids=str)
def test_strided_conv_forward_and_backward_match_torch(cfg):
    import torch

    N, C_in, C_out, H, W, kH, kW, stride, padding, groups = cfg
    rng = np.random.default_rng(11)
    x = rng.standard_normal((N, C_in, H, W))
    w = rng.standard_normal((C_out, C_in // groups, kH, kW))
    b = rng.standard_normal(C_out)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    yt = torch.nn.functional.conv2d(xt, wt, bt, stride=stride, padding=padding, groups=groups)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx, dw, db = F.conv2d_backward(dy, x, w, stride=stride, padding=padding, groups=groups)
    for got, want in ((dx, xt.grad), (dw, wt.grad), (db, bt.grad)):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-10)


def test_strided_same_padding_matches_reference():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 9, 10))
    w = rng.standard_normal((4, 3, 4, 3))
    y = F.conv2d(x, w, stride=2, padding="same")
    np.testing.assert_allclose(y, R.conv2d(x, w, stride=2, padding="same"), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    for got, want in zip(
        F.conv2d_backward(dy, x, w, stride=2, padding="same"),
        R.conv2d_backward(dy, x, w, stride=2, padding="same"),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    "x_shape,w_shape,stride,padding,dilation,naive_path",
    [
        ((2, 3, 8, 8), (4, 3, 3, 3), 10**6, 10**5, 1, True),  # a 2e5 x 2e5 plane (160 GB) for one output
        ((4, 64, 8, 8), (64, 64, 3, 3), 4000, 2040, 1, True),  # 16M-element planes, 256 of them: 100 s
        ((16, 64, 8, 8), (64, 64, 3, 3), 1, 1000, 1000, True),  # planes of 2008 x 2008: 16 GB
        ((1, 32, 8, 8), (1, 32, 3, 3), 10**6, 10**5, 1, True),  # the gemm forward's copy: 1.2 TB
        ((1, 1, 8, 8), (1, 1, 3, 3), 2**31 - 1, 0, 1, True),  # phase tables of 2**31 entries
        ((2, 3, 8, 8), (4, 3, 3, 3), 7, 40, 1, False),  # the fast kernels
    ],
)
def test_conv2d_with_a_padding_or_stride_far_wider_than_the_input(
    x_shape, w_shape, stride, padding, dilation, naive_path
):
    """Paddings and strides far wider than the input (one output per image): the fast kernels'
    padded planes (and a stride's phase tables) would take GBs to TBs, or 100 s of zeroing
    (they had ended in MemoryErrors, some raised as SystemError from inside Numba); the
    dispatch gives such convs to the naive kernels, which add the few real terms.  Forward
    and both gradients in float32 against torch in float64; stride 7 with padding 40 keeps
    the fast kernels."""
    from numbacnn.kernels.cpu import conv

    rng = np.random.default_rng(3)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    geo = dict(stride=stride, padding=padding, dilation=dilation)
    y = F.conv2d(x, w, **geo)
    args = (x.shape, y.shape, w.shape, stride, stride, padding, padding, dilation, dilation)
    assert conv._padding_dominates(*args) == naive_path
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, _ = F.conv2d_backward(dy, x, w, **geo)
    # the oracle in float64 (torch's float32 conv takes minutes on the first case)
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.astype(np.float64), requires_grad=True)
    yt = TF.conv2d(xt, wt, **geo)
    yt.backward(torch.tensor(dy.astype(np.float64)))
    assert_close(y, yt.detach().numpy(), dtype=np.float32, kind="conv", what="y")
    assert_close(dx, xt.grad.numpy(), dtype=np.float32, kind="conv", what="dx")
    assert_close(dw, wt.grad.numpy(), dtype=np.float32, kind="conv", what="dw")
