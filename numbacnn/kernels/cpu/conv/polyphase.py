"""The gradients of a 2-D convolution with stride > 1 as sums of stride-1 ones (its
polyphase decomposition), run on the fast stride-1 kernels (direct.py's, or those the dispatch
passes).  (The forward does not need it: outer.py packs a row per phase and direct.py splits
its padded planes into the same phases, one kernel call instead of one per phase, 1.7-2.4x
faster than this decomposition's sum.)

Formula.  Write each tap as kh = a + stride_h*i (a = kh mod stride_h, the phase) and likewise
kw = b + stride_w*j.  With xp the zero-padded input,

    y[n, co, oh, ow] = sum_{a, b} sum_{ci_l, i, j} w[co, ci_l, a + stride_h*i, b + stride_w*j]
                                                 * xp[n, ci, stride_h*(oh + i) + a, stride_w*(ow + j) + b]
                     = sum_{a, b} conv_stride1(x_ab, w_ab)[n, co, oh, ow]

with the phase input  x_ab = xp[:, :, a::stride_h, b::stride_w]  and the phase kernel
w_ab = w[:, :, a::stride_h, b::stride_w]  (ceil((kH - a)/stride_h) x ceil((kW - b)/stride_w)
taps).  Every multiply-add of the strided conv is in exactly one phase, so the work is the
same, but it runs on the stride-1 kernels (the README's table and benchmarks/bench_conv.py
measure the gain).  The gradients decompose the same way (their phases' stride-1 convs run on
whichever kernel the dispatch's forward picks for them, outer.py's tiles included):
dw[:, :, a::stride_h, b::stride_w] is the stride-1 weight gradient of phase (a, b), and
its stride-1 input gradient is that of the padded input's positions (a + stride_h*i,
b + stride_w*j) (the phases own disjoint positions of xp, so nothing overlaps).

Loop nest: for each phase (a, b) in order: one stride-1 kernel call over the whole batch
(parallel inside); the input gradient then puts every phase's positions into dx with
`_put_phases` (one parallel copy).  Only data movement (padding, phase slices) happens here in NumPy; every
multiply-add is in the kernels.  Dilation 1 only (`use_polyphase`).
"""

import numpy as np
from numba import njit, prange

from ..workspace import scratch
from . import direct
from .planes import uidx


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


@njit(cache=True, parallel=True)
def _put_phases(buf, phases, dx, stride_h, stride_w):
    """Every phase's positions of dx from its stride-1 input gradient: for each row p of
    phases = (start in buf, rows, cols, i0, j0, r0, c0), dx[n, c, r0 + stride_h*i, c0 + stride_w*j]
    = G_p[n, c, i0 + i, j0 + j] where that is inside G_p, else 0, G_p: (N, C, rows, cols) the
    phase's gradient at buf[start:] (no rows: a phase no tap reaches is all zeros; phases with
    no position in dx are not listed).  Parallel over (image, channel): each thread puts all
    the phases of its planes while a plane stays in cache (one phase a call wrote across all
    of dx each time: 4 passes for stride 2); flat indices (a view per row cost more than its 16
    copies)."""
    # buf: (>= the phases' sizes,)   phases: (P, 7)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    dst = dx.reshape(N * C * H * W)  # dst: (N*C*H*W,)
    for t in prange(N * C):
        for p in range(phases.shape[0]):
            start, rows, cols, i0, j0, r0, c0 = phases[p]
            n_i = (H - r0 + stride_h - 1) // stride_h  # this phase's rows and columns of dx
            n_j = (W - c0 + stride_w - 1) // stride_w
            h1, w1 = max(0, min(n_i, rows - i0)), max(0, min(n_j, cols - j0))  # those inside G_p
            for i in range(n_i):
                d = (t * H + r0 + stride_h * i) * W + c0  # dx's place of (t, row, c0)
                if i < h1:
                    a = start + (t * rows + i0 + i) * cols + j0
                    for j in range(w1):
                        dst[uidx(d + stride_w * j)] = buf[uidx(a + j)]
                    for j in range(w1, n_j):
                        dst[uidx(d + stride_w * j)] = 0.0
                else:
                    for j in range(n_j):
                        dst[uidx(d + stride_w * j)] = 0.0


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups, forward=None):
    """dx of a strided conv: phase (a, b)'s stride-1 input gradient (gather form) is the
    gradient of the padded input's positions (a + s_h*i, b + s_w*j); those inside x are written
    into dx[:, :, a - pad_top + s_h*i, b - pad_left + s_w*j] by `_put_phases` (rows and columns
    no window reaches get 0; a phase no tap reaches, all 0).  forward: the forward kernel the
    phases' gathers run (conv2d_forward's arguments; default direct.py's).

    Where the padding allows (i0 below the phase's taps), a phase's gather computes dx's
    positions only, as the input gradient of a stride-1 conv padded by (i0, j0), and computes
    no row or column it would drop; the others compute the whole stride-1 gradient, put from
    (i0, j0) on.  The phases' gradients are one scratch buffer (no page faults), put into dx by
    one parallel pass.  Alternating processes, batch 64 (ms):
    - a kernel per phase instead of NumPy's strided copies and zero fills: 16->32 3x3 stride 2
      on 32x32, 0.8 ms of copies of its 2.5;
    - one pass for all the phases: 16->32 1x1 stride 2 0.51-0.52 -> 0.47-0.49, 3x3 2.07-2.11
      -> 2.00-2.08;
    - the dispatch's forward (outer.py's tiles): 32->64 3x3 stride 2 to 8x8 2.52-2.55 ->
      2.06-2.13, 16->32 1x1 stride 2 0.59-0.63 -> 0.50-0.53;
    - dx's positions only (16->32 3x3 stride 2 on 32x32: 16 x 16 phases on the row tiles, not
      17 x 17): 2.13-2.22 -> 1.81-1.85."""
    # dy: (N, C_out, H_out, W_out)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    phases, _, _ = _phases(dx.shape, w.shape, dy.shape, stride_h, stride_w)
    N, C_in, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    taps = {(a, b): (taps_h, taps_w) for a, b, taps_h, taps_w in phases}  # the phases taps reach
    put = []  # per phase with positions in dx: (start in buf, rows, cols, i0, j0, r0, c0) to put it,
    gather = []  # and (a, b, the gather's padding) to compute it
    size = 0
    for a in range(stride_h):
        for b in range(stride_w):
            # phase row i is padded row a + stride_h*i, dx row a + stride_h*i - pad_top: from i0 on
            i0, j0 = -(-(pad_top - a) // stride_h), -(-(pad_left - b) // stride_w)
            r0, c0 = a + stride_h * i0 - pad_top, b + stride_w * j0 - pad_left
            if r0 >= H or c0 >= W:  # no position of dx in this phase
                continue
            rows, cols = 0, 0  # a kernel shorter than the stride: never reached, all zeros
            if (a, b) in taps:
                taps_h, taps_w = taps[a, b]
                if i0 < taps_h and j0 < taps_w:  # dx's positions only: the input gradient of
                    # the phase's stride-1 conv padded by (i0, j0), row i of which is row i0 + i of
                    # the unpadded one
                    rows, cols = -(-(H - r0) // stride_h), -(-(W - c0) // stride_w)
                    gather.append((size, rows, cols, a, b, i0, j0))
                    i0, j0 = 0, 0
                else:  # the whole (unpadded) stride-1 input gradient, put from (i0, j0) on
                    rows, cols = H_out + taps_h - 1, W_out + taps_w - 1
                    gather.append((size, rows, cols, a, b, 0, 0))
            put.append((size, rows, cols, i0, j0, r0, c0))
            size += N * C_in * rows * cols
    buf = scratch("conv_polyphase_dx", (size,), dx.dtype)  # buf: the phases' gradients, one after another
    for start, rows, cols, a, b, pad_i, pad_j in gather:
        w_ab = np.ascontiguousarray(w[:, :, a::stride_h, b::stride_w])  # (C_out, C_in_g, taps_h, taps_w)
        dx_ab = buf[start : start + N * C_in * rows * cols].reshape(N, C_in, rows, cols)
        direct.conv2d_backward_input_gather(dy, w_ab, dx_ab, pad_i, pad_j, 1, 1, groups, forward)
    _put_phases(buf, np.array(put, np.int64).reshape(-1, 7), dx, stride_h, stride_w)
