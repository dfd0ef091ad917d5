"""2-D max and average pooling: CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.pool)
-------------------------------------------
The window of output (oh, ow) starts at input row h0 = oh*stride_h - pad_top and column
w0 = ow*stride_w - pad_left:

    max:  y[n,c,oh,ow] = max_{kh<kH, kw<kW} x[n,c,h0+kh,w0+kw]              (outside: -inf)
    avg:  y[n,c,oh,ow] = 1/(kH*kW) * sum_{kh<kH, kw<kW} x[n,c,h0+kh,w0+kw]  (outside: 0;
                                                              count_include_pad=True)
Backward:

    max:  dx[n,c,ih,iw] = sum over the windows whose FIRST maximum (row-major in the window;
          NaN wins, the last NaN, as PyTorch; an all -inf window picks its first in-range
          position) is (ih, iw) of dy[n,c,oh,ow]
    avg:  dx[n,c,ih,iw] = sum over the windows containing (ih, iw) of dy[n,c,oh,ow] / (kH*kW)

Thread mapping
--------------
    max_pool2d_forward, avg_pool2d_forward:   one thread per y[n,c,oh,ow] (flat C index).
    max_pool2d_backward, avg_pool2d_backward: one thread per dx[n,c,h,w]: a GATHER over the
        windows that contain (h, w):  oh in [ceil((h+pad_top-kH+1)/stride_h), floor((h+pad_top)/stride_h)]
        clipped to [0, H_out), likewise ow.  The max backward recomputes each such window's first argmax
        from x (exactly the CPU test) and takes dy only if the argmax is (h, w).

Optimisation contract
---------------------
* One writer per element, written once: no atomics, no races, no zeroing pass (outputs may
  be uninitialised).  The CPU kernels scatter window by window inside a thread that owns the
  plane; the gather adds the same terms in the same (oh, ow) order, so results are
  bit-identical to the CPU.
* The window is clipped to the input once per window (no per-tap bounds test).
* Consecutive threads own consecutive w / ow: coalesced loads and stores.
* The max backward re-reads each covering window (kH*kW windows of kH*kW values per dx
  element): arithmetic is traded for no extra memory (no argmax indices stored by the
  forward), which keeps the contract (dy, x) -> dx.
* Arithmetic in the array dtype; the typed constants (-inf, 1/(kH*kW), 0) are passed in by
  the host function in that dtype.
"""

from numba import cuda

from .. import common
from ._launch import TPB, blocks_for, owned_element

# The clipped window of one output index (written once, in kernels/common.py).
window = cuda.jit(device=True)(common.window)


# ================================================================================ forward
@cuda.jit
def _max_pool2d_forward_kernel(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left, neg_inf):
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    N, C, H, W = x.shape
    inside, n, c, oh, ow = owned_element(y.shape)  # owns y[n, c, oh, ow]
    if not inside:
        return
    h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
    w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
    best = neg_inf
    for kh in range(kh_lo, kh_hi):
        for kw in range(kw_lo, kw_hi):
            v = x[n, c, h0 + kh, w0 + kw]
            if v > best or v != v:  # NaN wins, as PyTorch
                best = v
    y[n, c, oh, ow] = best


def max_pool2d_forward(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = max over each (kH, kW) window of x: one thread per output element."""
    total = y.size
    if total == 0:
        return
    _max_pool2d_forward_kernel[blocks_for(total), TPB](
        x, y, kH, kW, stride_h, stride_w, pad_top, pad_left, x.dtype.type(-float("inf"))
    )


@cuda.jit
def _avg_pool2d_forward_kernel(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left, inv, zero):
    # x: (N, C, H, W)   y: (N, C, H_out, W_out)
    N, C, H, W = x.shape
    inside, n, c, oh, ow = owned_element(y.shape)  # owns y[n, c, oh, ow]
    if not inside:
        return
    h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
    w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
    s = zero
    for kh in range(kh_lo, kh_hi):
        for kw in range(kw_lo, kw_hi):
            s += x[n, c, h0 + kh, w0 + kw]
    y[n, c, oh, ow] = s * inv


def avg_pool2d_forward(x, y, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """y = mean over each (kH, kW) window (divisor kH*kW): one thread per output element."""
    total = y.size
    if total == 0:
        return
    dt = x.dtype.type
    _avg_pool2d_forward_kernel[blocks_for(total), TPB](
        x, y, kH, kW, stride_h, stride_w, pad_top, pad_left, dt(1.0 / (kH * kW)), dt(0)
    )


# =============================================================================== backward
@cuda.jit(device=True)
def _covering(h, pad_top, kH, stride_h, H_out):
    """Outputs oh in [lo, hi) whose window (rows oh*stride_h - pad_top + [0, kH)) contains row h."""
    lo = -((kH - 1 - h - pad_top) // stride_h)  # ceil((h + pad_top - kH + 1) / stride_h)
    hi = (h + pad_top) // stride_h + 1
    if lo < 0:
        lo = 0
    if hi > H_out:
        hi = H_out
    return lo, hi


@cuda.jit
def _max_pool2d_backward_kernel(dy, x, dx, kH, kW, stride_h, stride_w, pad_top, pad_left, neg_inf, zero):
    # dy: (N, C, H_out, W_out)   x: (N, C, H, W)   dx: (N, C, H, W)
    N, C, H, W = x.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    inside, n, c, h, w = owned_element(dx.shape)  # owns dx[n, c, h, w]
    if not inside:
        return
    oh_lo, oh_hi = _covering(h, pad_top, kH, stride_h, H_out)
    ow_lo, ow_hi = _covering(w, pad_left, kW, stride_w, W_out)
    acc = zero
    for oh in range(oh_lo, oh_hi):
        h0, kh_lo, kh_hi = window(oh, stride_h, pad_top, kH, H)
        for ow in range(ow_lo, ow_hi):
            w0, kw_lo, kw_hi = window(ow, stride_w, pad_left, kW, W)
            best = neg_inf  # the CPU kernel's first-argmax test
            bh = h0 + kh_lo
            bw = w0 + kw_lo
            for kh in range(kh_lo, kh_hi):
                for kw in range(kw_lo, kw_hi):
                    v = x[n, c, h0 + kh, w0 + kw]
                    if v > best or v != v:  # strict '>': the first maximum wins
                        best = v
                        bh = h0 + kh
                        bw = w0 + kw
            if bh == h and bw == w:
                acc += dy[n, c, oh, ow]
    dx[n, c, h, w] = acc


def max_pool2d_backward(dy, x, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx[first argmax of each window] += dy: one thread per dx element (gather)."""
    total = dx.size
    if total == 0:
        return
    dt = x.dtype.type
    _max_pool2d_backward_kernel[blocks_for(total), TPB](
        dy, x, dx, kH, kW, stride_h, stride_w, pad_top, pad_left, dt(-float("inf")), dt(0)
    )


@cuda.jit
def _avg_pool2d_backward_kernel(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left, inv, zero):
    # dy: (N, C, H_out, W_out)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    inside, n, c, h, w = owned_element(dx.shape)  # owns dx[n, c, h, w]
    if not inside:
        return
    oh_lo, oh_hi = _covering(h, pad_top, kH, stride_h, H_out)
    ow_lo, ow_hi = _covering(w, pad_left, kW, stride_w, W_out)
    acc = zero
    for oh in range(oh_lo, oh_hi):
        for ow in range(ow_lo, ow_hi):
            acc += dy[n, c, oh, ow] * inv
    dx[n, c, h, w] = acc


def avg_pool2d_backward(dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left):
    """dx = sum over covering windows of dy / (kH*kW): one thread per dx element (gather)."""
    total = dx.size
    if total == 0:
        return
    dt = dx.dtype.type
    _avg_pool2d_backward_kernel[blocks_for(total), TPB](
        dy, dx, kH, kW, stride_h, stride_w, pad_top, pad_left, dt(1.0 / (kH * kW)), dt(0)
    )
