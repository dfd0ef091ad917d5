"""The gradients of a 2-D convolution with stride > 1 as sums of stride-1 ones (its
polyphase decomposition), run on the fast stride-1 kernels of direct.py.  (The forward,
direct.conv2d_forward, splits its padded planes into the same phases itself: one kernel call
instead of one per phase, 1.7-2.4x faster than this decomposition's sum.)

Formula.  Write each tap as kh = a + stride_h*i (a = kh mod stride_h, the phase) and likewise
kw = b + stride_w*j.  With xp the zero-padded input,

    y[n, co, oh, ow] = sum_{a, b} sum_{ci_l, i, j} w[co, ci_l, a + stride_h*i, b + stride_w*j]
                                                 * xp[n, ci, stride_h*(oh + i) + a, stride_w*(ow + j) + b]
                     = sum_{a, b} conv_stride1(x_ab, w_ab)[n, co, oh, ow]

with the phase input  x_ab = xp[:, :, a::stride_h, b::stride_w]  and the phase kernel
w_ab = w[:, :, a::stride_h, b::stride_w]  (ceil((kH - a)/stride_h) x ceil((kW - b)/stride_w)
taps).  Every multiply-add of the strided conv is in exactly one phase, so the work is the
same, but it runs on the stride-1 kernels (the README's table and benchmarks/bench_conv.py
measure the gain).  The gradients decompose the same way:
dw[:, :, a::stride_h, b::stride_w] is the stride-1 weight gradient of phase (a, b), and
its stride-1 input gradient is that of the padded input's positions (a + stride_h*i,
b + stride_w*j) (the phases own disjoint positions of xp, so nothing overlaps).

Loop nest: for each phase (a, b) in order: one stride-1 kernel call over the whole batch
(parallel inside).  Only data movement (padding, phase slices) happens here in NumPy; every multiply-add is in
the kernels.  Dilation 1 only (`use_polyphase`).
"""

import numpy as np

from . import direct


def use_polyphase(x_shape, w_shape, y_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Strided, undilated convolutions go through the polyphase decomposition, unless the
    padded input the phases need is far larger than the real one (a stride longer than the
    input: the direct kernel reads only what the few outputs see)."""
    if not ((stride_h > 1 or stride_w > 1) and dil_h == 1 and dil_w == 1):
        return False
    _, Hp, Wp = _phases(x_shape, w_shape, y_shape, stride_h, stride_w)
    return Hp <= 2 * (x_shape[2] + pad_top + w_shape[2]) and Wp <= 2 * (x_shape[3] + pad_left + w_shape[3])


def _phases(x_shape, w_shape, y_shape, stride_h, stride_w):
    """The phases (a, b, taps_h, taps_w) and the padded-input extent (Hp, Wp) they need."""
    kH, kW = w_shape[2], w_shape[3]
    H_out, W_out = y_shape[2], y_shape[3]
    phases = [
        (a, b, -(-(kH - a) // stride_h), -(-(kW - b) // stride_w))
        for a in range(min(stride_h, kH))
        for b in range(min(stride_w, kW))
    ]
    Hp = stride_h * (H_out - 1 + -(-kH // stride_h))
    Wp = stride_w * (W_out - 1 + -(-kW // stride_w))
    return phases, Hp, Wp


def _padded(x, Hp, Wp, pad_top, pad_left):
    """xp: (N, C, Hp, Wp) = x placed at (pad_top, pad_left) in zeros, cropped to Hp x Wp."""
    N, C, H, W = x.shape
    xp = np.zeros((N, C, Hp, Wp), x.dtype)
    h1, w1 = min(H, Hp - pad_top), min(W, Wp - pad_left)
    xp[:, :, pad_top : pad_top + h1, pad_left : pad_left + w1] = x[:, :, :h1, :w1]
    return xp


def _phase_input(xp, a, b, stride_h, stride_w, rows, cols):
    """x_ab: (N, C, rows, cols), the contiguous phase (a, b) of the padded input."""
    return np.ascontiguousarray(xp[:, :, a::stride_h, b::stride_w][:, :, :rows, :cols])


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, groups):
    """dw of a strided conv: phase (a, b)'s stride-1 weight gradient fills dw[:, :, a::s_h, b::s_w]."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    phases, Hp, Wp = _phases(x.shape, dw.shape, dy.shape, stride_h, stride_w)
    xp = _padded(x, Hp, Wp, pad_top, pad_left)  # xp: (N, C_in, Hp, Wp)
    H_out, W_out = dy.shape[2], dy.shape[3]
    for a, b, taps_h, taps_w in phases:
        x_ab = _phase_input(xp, a, b, stride_h, stride_w, H_out + taps_h - 1, W_out + taps_w - 1)
        dw_ab = np.empty(dw.shape[:2] + (taps_h, taps_w), dw.dtype)  # dw_ab: (C_out, C_in_g, taps_h, taps_w)
        direct.conv2d_backward_weight(dy, x_ab, dw_ab, 1, 1, 0, 0, 1, 1, groups)
        dw[:, :, a::stride_h, b::stride_w] = dw_ab


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups):
    """dx of a strided conv: phase (a, b)'s stride-1 input gradient (gather form) is the
    gradient of the padded input's positions (a + s_h*i, b + s_w*j); those inside x are written
    straight into dx[:, :, a - pad_top + s_h*i, b - pad_left + s_w*j] (rows and columns no
    window reaches get 0)."""
    # dy: (N, C_out, H_out, W_out)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    phases, _, _ = _phases(dx.shape, w.shape, dy.shape, stride_h, stride_w)
    N, C_in, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    if len(phases) < stride_h * stride_w:  # a kernel shorter than the stride: some never reached
        dx[...] = 0
    for a, b, taps_h, taps_w in phases:
        w_ab = np.ascontiguousarray(w[:, :, a::stride_h, b::stride_w])  # (C_out, C_in_g, taps_h, taps_w)
        dx_ab = np.empty((N, C_in, H_out + taps_h - 1, W_out + taps_w - 1), dx.dtype)
        # an unpadded stride-1 phase always has the gather form (padding 0 <= the kernel's reach)
        direct.conv2d_backward_input_gather(dy, w_ab, dx_ab, 0, 0, 1, 1, groups)
        # phase row i is padded row a + stride_h*i, dx row a + stride_h*i - pad_top: from i0 on
        i0, j0 = -(-(pad_top - a) // stride_h), -(-(pad_left - b) // stride_w)
        r0, c0 = a + stride_h * i0 - pad_top, b + stride_w * j0 - pad_left
        rows = dx[:, :, r0::stride_h, c0::stride_w]  # rows: this phase's positions of dx
        h1, w1 = min(rows.shape[2], dx_ab.shape[2] - i0), min(rows.shape[3], dx_ab.shape[3] - j0)
        rows[:, :, :h1, :w1] = dx_ab[:, :, i0 : i0 + h1, j0 : j0 + w1]
        rows[:, :, h1:, :] = 0  # positions past the last window of this phase
        rows[:, :, :h1, w1:] = 0
