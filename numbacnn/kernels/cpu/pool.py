"""2-D max and average pooling: CPU kernels (explicit Numba loop nests).

Formula (lecture, "2-D Max Pooling" / "Average Pooling"; PyTorch semantics)
--------------------------------------------------------------------------
Each channel is pooled on its own (#output channels = #input channels). With window
(kH, kW), stride (stride_h, stride_w) and padding (pad_top, pad_left) (symmetric: the same
at the bottom/right) the window of output (oh, ow) starts at input row h0 = oh*stride_h -
pad_top and column w0 = ow*stride_w - pad_left:

    max:  y[n,c,oh,ow] = max_{kh<kH, kw<kW} x[n,c,h0+kh,w0+kw]           (outside the input: -inf)
    avg:  y[n,c,oh,ow] = 1/(kH*kW) * sum_{kh<kH, kw<kW} x[n,c,h0+kh,w0+kw]  (outside: 0)

The average always divides by kH*kW, padded positions included (PyTorch's default
count_include_pad=True).

Backward (the gradient of a pooled value goes back to the inputs that made it):

    max:  dx[n,c,ih,iw] = sum over windows whose FIRST maximum (row-major order inside the
          window; ties: first wins, as PyTorch) is at (ih, iw) of dy[n,c,oh,ow]
    avg:  dx[n,c,ih,iw] = sum over windows that contain (ih, iw) of dy[n,c,oh,ow] / (kH*kW)

Overlapping windows (stride < kernel) add up in dx.  The max backward recomputes the
argmax from x instead of storing indices in the forward, so the forward stays one output
array and the contract stays (dy, x) -> dx.  NaN behaves as in PyTorch: a NaN in the
window wins (the last NaN, as PyTorch's `val > max || isnan(val)` test).  A window whose
values are all -inf sends its gradient to its first in-range position, as PyTorch.

Loop nests
----------
    max (and the *_naive average kernels, the formula as written):
    for p in prange(N*C):                # one (n, c) plane per iteration  <- parallel axis
        for oh in range(H_out):
            for ow in range(W_out):
                for kh in window rows clipped to [0, H):
                    for kw in window cols clipped to [0, W):
                        ...
    average (a row at a time, see "average pooling" below; windows that tile the input,
    stride = kernel and no padding, take `_avg_pool2d_forward_tiles` (no clipping) and
    `_avg_pool2d_backward_tiles` (one share per element)):
    for p in prange(N*C):
        for oh in range(H_out):
            for kh in window rows clipped to [0, H):
                clipped border columns, then  for kw: for ow in interior: y_row[ow] += x_row[...]

Optimisation contract
---------------------
* Parallel over the N*C planes: a plane of dx/y is written by exactly one thread, so the
  scatter-add of the backward (overlapping windows) is race-free without atomics.
* The window is clipped to the input once per output (no per-element bounds test); the
  padding is never materialised.
* The forward max is written as a branch-free select (`best = v if v > best else best`):
  on random data the branchy `if v > best:` mispredicts about half the time (measured
  slower).  The backward keeps the readable `if` (its cost is dominated by the scatter,
  and the select version measured no faster).
* The kernels zero dx themselves (plane by plane, inside the owning thread), and fully
  overwrite y, so the caller may pass np.empty outputs.
* Arithmetic is in the array dtype (float32 or float64); the average multiplies by the
  precomputed 1/(kH*kW) of that dtype.
"""

import numpy as np
from numba import njit, prange

from .. import common
from .conv.planes import uidx  # an index known to be >= 0: no wrap-around test, so loops vectorise

# The clipped window of one output index (written once, in kernels/common.py).
window = njit(inline="always")(common.window)


@njit(inline="always")
def interior(n_out, stride, pad, k, n):
    """The outputs [lo, hi) along one axis whose windows lie wholly inside the input (no tap
    in the padding): o*stride - pad >= 0 and o*stride - pad + k <= n; lo <= hi, both in
    [0, n_out]."""
    lo = min(n_out, (pad + stride - 1) // stride)
    hi = max(lo, min(n_out, (n - k + pad) // stride + 1 if n - k + pad >= 0 else 0))
    return lo, hi


# --------------------------------------------------------------------------- max pooling
@njit(parallel=True, cache=True)
def max_pool2d_forward(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = max over each (kH, kW) window of x; padding counts as -inf."""
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    N, C, H, W = x.shape
    H_out, W_out = y.shape[2], y.shape[3]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        x_nc = x[n, c]  # x_nc: (H, W) plane view
        y_nc = y[n, c]  # y_nc: (H_out, W_out)
        for oh in range(H_out):
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)  # window rows clipped to the input
            for ow in range(W_out):
                w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
                best = neg_inf
                for kh in range(kh_lo, kh_hi):
                    x_row = x_nc[h0 + kh]  # x_row: (W,) input row
                    for kw in range(kw_lo, kw_hi):
                        v = x_row[w0 + kw]
                        # a select, not an if: no branch to mispredict on random data.
                        # v != v: a NaN wins, as PyTorch
                        best = v if (v > best) | (v != v) else best
                y_nc[oh, ow] = best


@njit(parallel=True, cache=True)
def max_pool2d_backward(dy, x, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx[first argmax of each window] += dy[window]; argmax recomputed from x."""
    # dy: (N, C, H_out, W_out)   x: (N, C, H, W)   dx: (N, C, H, W)
    N, C, H, W = x.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        x_nc = x[n, c]  # x_nc: (H, W)
        dx_nc = dx[n, c]  # dx_nc: (H, W), owned by this thread
        dy_nc = dy[n, c]  # dy_nc: (H_out, W_out)
        dx_nc[:, :] = 0
        for oh in range(H_out):
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
            for ow in range(W_out):
                w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
                best = neg_inf
                bh = h0 + kh_lo  # first in-range position (PyTorch's
                bw = w0 + kw_lo  # choice when every value is -inf)
                for kh in range(kh_lo, kh_hi):
                    for kw in range(kw_lo, kw_hi):
                        v = x_nc[h0 + kh, w0 + kw]
                        if v > best or v != v:  # strict '>': the first maximum wins
                            best = v
                            bh = h0 + kh
                            bw = w0 + kw
                if kh_lo < kh_hi and kw_lo < kw_hi:
                    dx_nc[bh, bw] += dy_nc[oh, ow]


# ----------------------------------------------------------------------- average pooling
# The fast kernels work a ROW at a time: for each output row oh and each window row kh, and
# each window column kw, one loop over the output columns ow whose windows lie wholly inside
# the input (`interior`), with no clipping and unsigned indices, so LLVM vectorises it (a
# strided load, a contiguous store); the few border columns take the clipped loop.  Each
# output still adds its taps in the order (kh, kw), so the forward equals the naive kernel
# bit for bit; the backward adds overlapping windows' shares to a dx element in another
# order (the same sum up to rounding), and exactly when windows do not overlap.
# avg pool 2x2 on 64x6x28x28 float32, 2 threads (an earlier VM): forward 121 us (naive 285), backward 121 us
# (naive 366); 3x3 on 16x64x32x32: 341 / 340 us (naive 549 / 682).


def tiles_plane(in_shape, out_shape, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """True when the windows of an output plane of out_shape's (..., H_out, W_out) tile the
    input plane of in_shape's (..., H, W): stride = kernel, no padding (LeNet's 2x2, stride 2)
    and every window inside (H_out*kH <= H, W_out*kW <= W, as the output size rule gives; the
    kernels take the output's size from its array, and a larger one has clipped windows), so
    every input position is in at most one window and no window is clipped."""
    H, W = in_shape[-2:]
    H_out, W_out = out_shape[-2:]
    return (
        stride_h == kH
        and stride_w == kW
        and pad_top == 0
        and pad_left == 0
        and H_out * kH <= H
        and W_out * kW <= W
    )


def avg_pool2d_backward(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx[every in-range position of a window] += dy[window] / (kH*kW) (fully overwrites dx);
    windows that tile the input take `_avg_pool2d_backward_tiles`."""
    # dy: (N, C, H_out, W_out)   dx: (N, C, H, W)
    if tiles_plane(dx.shape, dy.shape, kH, kW, stride_h, stride_w, pad_top, pad_left):
        _avg_pool2d_backward_tiles(dy, dx, kH, kW)
    else:
        _avg_pool2d_backward_rows(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left)


# Windows that tile the input (stride = kernel, no padding) need no clipping and no zeroing
# pass in the backward: each dx element gets its one window's share, written once (0 + share:
# the row kernel's zeroed dx plus one share, bit for bit, -0.0 included).  On LeNet-5's pools
# (batch 64, 2 threads) 137 -> 86 us on 6x28x28 and 78 -> 37 us on 16x10x10 alone, 0.21 ->
# 0.13-0.15 s per epoch.  The same one-pass form of the forward (one sum per output) timed
# faster alone (193 -> 142 us) but slower inside an epoch (0.19-0.20 -> 0.21-0.24 s per
# epoch; why was not found), so the forward keeps its row passes; for tiling windows it has
# its own kernel of them (`_avg_pool2d_forward_tiles`, the same bits) without the clipped
# border code, which a cold start compiles in 0.8-1.0 s instead of 1.3-1.9 (LeNet-5's first
# batch), and which runs in 0.66-0.68x the row kernel's time (LeNet-5's pools at batch 64, 2
# threads, interleaved, AMD EPYC Zen 5 VM: 177 -> 121 us on 6x28x28, 111 -> 74 on 16x10x10).
@njit(parallel=True, cache=True)
def _avg_pool2d_backward_tiles(dy, dx, kH, kW):
    """dx[oh*kH + kh, ow*kW + kw] = 0 + dy[oh, ow] / (kH*kW); 0 in the rows and columns past
    the last window."""
    # dy: (N, C, H_out, W_out)   dx: (N, C, H, W), H_out*kH <= H, W_out*kW <= W
    N, C, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    inv = dx.dtype.type(1.0 / (kH * kW))
    zero = dx.dtype.type(0.0)
    for p in prange(N * C):  # one (n, c) plane per iteration: owns dx[n, c]
        n = p // C
        c = p - n * C
        for oh in range(H_out):
            dy_row = dy[n, c, oh]  # dy_row: (W_out,)
            for kh in range(kH):
                dx_row = dx[n, c, oh * kH + kh]  # dx_row: (W,)
                for ow in range(W_out):
                    g = zero + dy_row[uidx(ow)] * inv
                    for kw in range(kW):
                        dx_row[uidx(ow * kW + kw)] = g
                for iw in range(W_out * kW, W):
                    dx_row[iw] = zero
        for ih in range(H_out * kH, H):
            dx_row = dx[n, c, ih]
            for iw in range(W):
                dx_row[iw] = zero


def avg_pool2d_forward(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = sum over each (kH, kW) window of x / (kH*kW); padding counts as 0 (fully overwrites
    y); windows that tile the input take `_avg_pool2d_forward_tiles`."""
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    if tiles_plane(x.shape, y.shape, kH, kW, stride_h, stride_w, pad_top, pad_left):
        _avg_pool2d_forward_tiles(x, y, kH, kW)
    else:
        _avg_pool2d_forward_rows(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left)


@njit(parallel=True, cache=True)
def _avg_pool2d_forward_tiles(x, y, kH, kW):
    """`_avg_pool2d_forward_rows` where the windows tile the input: the same row passes and
    the same sums, added in the same order (the same bits), without the clipped border
    columns' code."""
    # x: (N, C, H, W), H >= H_out*kH, W >= W_out*kW   y: (N, C, H_out, W_out)
    N, C = x.shape[0], x.shape[1]
    H_out, W_out = y.shape[2], y.shape[3]
    inv = x.dtype.type(1.0 / (kH * kW))
    for p in prange(N * C):  # one (n, c) plane per iteration: owns y[n, c]
        n = p // C
        c = p - n * C
        for oh in range(H_out):
            y_row = y[n, c, oh]  # y_row: (W_out,) the sums, then the averages
            for ow in range(W_out):
                y_row[uidx(ow)] = 0.0
            for kh in range(kH):
                x_row = x[n, c, oh * kH + kh]  # x_row: (W,) one input row of the windows
                for kw in range(kW):
                    for ow in range(W_out):
                        y_row[uidx(ow)] += x_row[uidx(ow * kW + kw)]
            for ow in range(W_out):
                y_row[uidx(ow)] *= inv


@njit(parallel=True, cache=True)
def _avg_pool2d_forward_rows(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = sum over each (kH, kW) window of x / (kH*kW); padding counts as 0."""
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    N, C, H, W = x.shape
    H_out, W_out = y.shape[2], y.shape[3]
    inv = x.dtype.type(1.0 / (kH * kW))  # count_include_pad=True: always kH*kW
    ow_lo, ow_hi = interior(W_out, stride_w, pad_left, kW, W)  # columns needing no clipping
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        for oh in range(H_out):
            y_row = y[n, c, oh]  # y_row: (W_out,) the sums, then the averages
            for ow in range(W_out):
                y_row[uidx(ow)] = 0.0
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
            for kh in range(kh_lo, kh_hi):
                x_row = x[n, c, h0 + kh]  # x_row: (W,) one input row of the windows
                for ow in range(ow_lo):  # border columns: windows clipped
                    y_row[ow] = _add_row_taps(y_row[ow], x_row, ow, stride_w, pad_left, kW, W)
                for ow in range(ow_hi, W_out):
                    y_row[ow] = _add_row_taps(y_row[ow], x_row, ow, stride_w, pad_left, kW, W)
                for kw in range(kW):  # interior columns: every tap inside
                    for ow in range(ow_lo, ow_hi):
                        y_row[uidx(ow)] += x_row[uidx(ow * stride_w - pad_left + kw)]
            for ow in range(W_out):
                y_row[uidx(ow)] *= inv


@njit(parallel=True, cache=True)
def _avg_pool2d_backward_rows(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx[every in-range position of a window] += dy[window] / (kH*kW)."""
    # dy: (N, C, H_out, W_out)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    inv = dx.dtype.type(1.0 / (kH * kW))
    ow_lo, ow_hi = interior(W_out, stride_w, pad_left, kW, W)
    g = np.empty((N * C, W_out), dx.dtype)  # g: (N*C, W_out) one row of dy / (kH*kW) per task
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        dx_nc = dx[n, c].reshape(H * W)  # dx_nc: (H*W,) owned by this thread
        for i in range(H * W):
            dx_nc[uidx(i)] = 0.0
        g_row = g[p]  # g_row: (W_out,)
        for oh in range(H_out):
            dy_row = dy[n, c, oh]  # dy_row: (W_out,)
            for ow in range(W_out):
                g_row[uidx(ow)] = dy_row[uidx(ow)] * inv
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
            for kh in range(kh_lo, kh_hi):
                dx_row = dx[n, c, h0 + kh]  # dx_row: (W,)
                for ow in range(ow_lo):
                    _row_scatter(dx_row, g_row[ow], ow, stride_w, pad_left, kW, W)
                for ow in range(ow_hi, W_out):
                    _row_scatter(dx_row, g_row[ow], ow, stride_w, pad_left, kW, W)
                for kw in range(kW):
                    for ow in range(ow_lo, ow_hi):
                        dx_row[uidx(ow * stride_w - pad_left + kw)] += g_row[uidx(ow)]


@njit(cache=True)
def _add_row_taps(s, x_row, ow, stride_w, pad_left, kW, W):
    """s + the in-range taps of output column ow's window in one input row, added in order."""
    # x_row: (W,)
    w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
    for kw in range(kw_lo, kw_hi):
        s += x_row[w0 + kw]
    return s


@njit(cache=True)
def _row_scatter(dx_row, g, ow, stride_w, pad_left, kW, W):
    """dx_row[in-range taps of output column ow's window] += g."""
    # dx_row: (W,)
    w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
    for kw in range(kw_lo, kw_hi):
        dx_row[w0 + kw] += g


# ----------------------------------------------------------------------- average pooling
@njit(parallel=True, cache=True)
def avg_pool2d_forward_naive(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = sum over each (kH, kW) window of x / (kH*kW); padding counts as 0 (the loop nest of
    the formula: one output at a time, its window clipped; `avg_pool2d_forward` is the fast
    twin, tested against this one)."""
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    N, C, H, W = x.shape
    H_out, W_out = y.shape[2], y.shape[3]
    inv = x.dtype.type(1.0 / (kH * kW))  # count_include_pad=True: always kH*kW
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        x_nc = x[n, c]  # x_nc: (H, W) plane view
        y_nc = y[n, c]  # y_nc: (H_out, W_out)
        for oh in range(H_out):
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
            for ow in range(W_out):
                w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
                s = x.dtype.type(0)
                for kh in range(kh_lo, kh_hi):
                    for kw in range(kw_lo, kw_hi):
                        s += x_nc[h0 + kh, w0 + kw]
                y_nc[oh, ow] = s * inv


@njit(parallel=True, cache=True)
def avg_pool2d_backward_naive(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx[every in-range position of a window] += dy[window] / (kH*kW) (one window at a time;
    `avg_pool2d_backward` is the fast twin, tested against this one)."""
    # dy: (N, C, H_out, W_out)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    inv = dx.dtype.type(1.0 / (kH * kW))
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        dx_nc = dx[n, c]  # dx_nc: (H, W), owned by this thread
        dy_nc = dy[n, c]  # dy_nc: (H_out, W_out)
        dx_nc[:, :] = 0
        for oh in range(H_out):
            h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
            for ow in range(W_out):
                w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
                g = dy_nc[oh, ow] * inv
                for kh in range(kh_lo, kh_hi):
                    for kw in range(kw_lo, kw_hi):
                        dx_nc[h0 + kh, w0 + kw] += g
