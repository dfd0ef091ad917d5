"""Verify your own kernel: a student's conv2d with a padding off-by-one, caught and shrunk.

    python examples/verify_your_kernel.py
    numbacnn verify examples/verify_your_kernel.py:conv2d_fixed --op conv2d   (the same, from the shell)

conv2d_student below is the lecture's loop nest ("2-D Convolution Layer", "Padding",
"Stride", "Multiple Input/Output Channels") written the way a student might, with one bug:
it offsets the rows by the padding BELOW the input instead of the padding above it. The two
are equal for every int padding, so a handful of hand-made tests pass; they differ by one
row for padding="same" with an even kernel (the lecture puts the odd row on top).
numbacnn.testing.check_op draws 200 calls, finds one that fails, and Hypothesis shrinks it to
a small case that shows the bug. conv2d_fixed, the one-word fix, passes.
"""

import numpy as np

from numbacnn.testing import check_op


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _conv2d(x, weight, bias, stride, padding, dilation, groups, *, top_pad_is_bottom):
    """x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = weight.shape
    stride_h, stride_w = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    if padding == "valid":
        top = bottom = left = right = 0
    elif padding == "same":  # dilation*(k-1) in total, the odd one on top/left
        total_h, total_w = dil_h * (kH - 1), dil_w * (kW - 1)
        top, bottom = total_h - total_h // 2, total_h // 2
        left, right = total_w - total_w // 2, total_w // 2
    else:
        top, left = _pair(padding)
        bottom, right = top, left
    H_out = (H + top + bottom - dil_h * (kH - 1) - 1) // stride_h + 1
    W_out = (W + left + right - dil_w * (kW - 1) - 1) // stride_w + 1
    row_offset = bottom if top_pad_is_bottom else top  # THE BUG: bottom instead of top
    C_out_g = C_out // groups
    y = np.zeros((N, C_out, H_out, W_out), dtype=x.dtype)  # y: (N, C_out, H_out, W_out)
    for n in range(N):
        for co in range(C_out):
            g = co // C_out_g  # the group of this output channel
            for oh in range(H_out):
                for ow in range(W_out):
                    acc = 0.0 if bias is None else float(bias[co])
                    for ci in range(C_in_g):
                        for kh in range(kH):
                            for kw in range(kW):
                                ih = oh * stride_h + kh * dil_h - row_offset
                                iw = ow * stride_w + kw * dil_w - left
                                if 0 <= ih < H and 0 <= iw < W:  # outside: a zero of the padding
                                    acc += weight[co, ci, kh, kw] * x[n, g * C_in_g + ci, ih, iw]
                    y[n, co, oh, ow] = acc
    return y


def conv2d_student(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv2d(x, weight, bias, stride, padding, dilation, groups, top_pad_is_bottom=True)


def conv2d_fixed(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return _conv2d(x, weight, bias, stride, padding, dilation, groups, top_pad_is_bottom=False)


if __name__ == "__main__":
    # The hand-made tests a student would write pass:
    x = np.arange(9.0).reshape(1, 1, 3, 3)  # the lecture's input 0..8
    k = np.arange(4.0).reshape(1, 1, 2, 2)  # and kernel 0..3
    assert conv2d_student(x, k).ravel().tolist() == [19.0, 25.0, 37.0, 43.0]
    assert conv2d_student(x, k, padding=1).shape == (1, 1, 4, 4)
    print("hand-made tests: pass")
    try:
        check_op("conv2d", conv2d_student)
    except AssertionError as e:
        print(f"check_op caught the bug:\n{e}\n")
    else:
        raise SystemExit("check_op missed the bug")
    print(check_op("conv2d", conv2d_fixed))
