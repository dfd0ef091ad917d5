"""2-D max and average pooling: CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.pool)
-------------------------------------------
The window of output (oh, ow) starts at input row h0 = oh*sh - ph and column w0 = ow*sw - pw:

    max:  y[n,c,oh,ow] = max_{i<kh, j<kw} x[n,c,h0+i,w0+j]              (outside: -inf)
    avg:  y[n,c,oh,ow] = 1/(kh*kw) * sum_{i<kh, j<kw} x[n,c,h0+i,w0+j]  (outside: 0;
                                                          count_include_pad=True)
Backward:

    max:  dx[n,c,h,w] = sum over the windows whose FIRST maximum (row-major in the window;
          NaN wins, the last NaN, as PyTorch; an all -inf window picks its first in-range
          position) is (h, w) of dy[n,c,oh,ow]
    avg:  dx[n,c,h,w] = sum over the windows containing (h, w) of dy[n,c,oh,ow] / (kh*kw)

Thread mapping
--------------
    max_pool2d_forward, avg_pool2d_forward:   one thread per y[n,c,oh,ow] (flat C index).
    max_pool2d_backward, avg_pool2d_backward: one thread per dx[n,c,h,w]: a GATHER over the
        windows that contain (h, w):  oh in [ceil((h+ph-kh+1)/sh), floor((h+ph)/sh)] clipped
        to [0, Ho), likewise ow.  The max backward recomputes each such window's first argmax
        from x (exactly the CPU test) and takes dy only if the argmax is (h, w).

Optimisation contract
---------------------
* One writer per element, written once: no atomics, no races, no zeroing pass (outputs may
  be uninitialised).  The CPU kernels scatter window by window inside a thread that owns the
  plane; the gather adds the same terms in the same (oh, ow) order, so results are
  bit-identical to the CPU.
* The window is clipped to the input once per window (no per-tap bounds test).
* Consecutive threads own consecutive w / ow: coalesced loads and stores.
* The max backward re-reads each covering window (kh*kw windows of kh*kw values per dx
  element): arithmetic is traded for no extra memory (no argmax indices stored by the
  forward), which keeps the contract (dy, x) -> dx.
* Arithmetic in the array dtype; the typed constants (-inf, 1/(kh*kw), 0) are passed in by
  the host function in that dtype.
"""
from numba import cuda

from ._launch import TPB, blocks_for, unravel4


@cuda.jit(device=True)
def _window(o, s, p, k, n):
    """The window of output o starts at input index o*s - p; return that start and the
    in-range tap range [lo, hi) (taps outside [0, n) are padding)."""
    start = o * s - p
    return start, max(0, -start), min(k, n - start)


# ================================================================================ forward
@cuda.jit
def _max_pool2d_forward_kernel(x, y, kh, kw, sh, sw, ph, pw, neg_inf):
    # x: (N, C, H, W)   y: (N, C, Ho, Wo)
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    t = cuda.grid(1)                                   # owns y[n, c, oh, ow]
    if t >= N * C * Ho * Wo:
        return
    n, c, oh, ow = unravel4(t, C, Ho, Wo)
    h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
    w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
    best = neg_inf
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            v = x[n, c, h0 + i, w0 + j]
            if v > best or v != v:                     # NaN wins, as PyTorch
                best = v
    y[n, c, oh, ow] = best


def max_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw):
    """y = max over each (kh, kw) window of x: one thread per output element."""
    total = y.size
    if total == 0:
        return
    _max_pool2d_forward_kernel[blocks_for(total), TPB](
        x, y, kh, kw, sh, sw, ph, pw, x.dtype.type(-float("inf")))


@cuda.jit
def _avg_pool2d_forward_kernel(x, y, kh, kw, sh, sw, ph, pw, inv, zero):
    # x: (N, C, H, W)   y: (N, C, Ho, Wo)
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    t = cuda.grid(1)                                   # owns y[n, c, oh, ow]
    if t >= N * C * Ho * Wo:
        return
    n, c, oh, ow = unravel4(t, C, Ho, Wo)
    h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
    w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
    s = zero
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            s += x[n, c, h0 + i, w0 + j]
    y[n, c, oh, ow] = s * inv


def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw):
    """y = mean over each (kh, kw) window (divisor kh*kw): one thread per output element."""
    total = y.size
    if total == 0:
        return
    dt = x.dtype.type
    _avg_pool2d_forward_kernel[blocks_for(total), TPB](
        x, y, kh, kw, sh, sw, ph, pw, dt(1.0 / (kh * kw)), dt(0))


# =============================================================================== backward
@cuda.jit(device=True)
def _covering(h, ph, kh, sh, Ho):
    """Outputs oh in [lo, hi) whose window (rows oh*sh-ph .. oh*sh-ph+kh-1) contains row h."""
    lo = -((kh - 1 - h - ph) // sh)                    # ceil((h + ph - kh + 1) / sh)
    hi = (h + ph) // sh + 1
    if lo < 0:
        lo = 0
    if hi > Ho:
        hi = Ho
    return lo, hi


@cuda.jit
def _max_pool2d_backward_kernel(dy, x, dx, kh, kw, sh, sw, ph, pw, neg_inf, zero):
    # dy: (N, C, Ho, Wo)   x: (N, C, H, W)   dx: (N, C, H, W)
    N, C, H, W = x.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    t = cuda.grid(1)                                   # owns dx[n, c, h, w]
    if t >= N * C * H * W:
        return
    n, c, h, w = unravel4(t, C, H, W)
    oh_lo, oh_hi = _covering(h, ph, kh, sh, Ho)
    ow_lo, ow_hi = _covering(w, pw, kw, sw, Wo)
    acc = zero
    for oh in range(oh_lo, oh_hi):
        h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
        for ow in range(ow_lo, ow_hi):
            w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
            best = neg_inf                             # the CPU kernel's first-argmax test
            bh = h0 + i_lo
            bw = w0 + j_lo
            for i in range(i_lo, i_hi):
                for j in range(j_lo, j_hi):
                    v = x[n, c, h0 + i, w0 + j]
                    if v > best or v != v:             # strict '>': the first maximum wins
                        best = v
                        bh = h0 + i
                        bw = w0 + j
            if bh == h and bw == w:
                acc += dy[n, c, oh, ow]
    dx[n, c, h, w] = acc


def max_pool2d_backward(dy, x, dx, kh, kw, sh, sw, ph, pw):
    """dx[first argmax of each window] += dy: one thread per dx element (gather)."""
    total = dx.size
    if total == 0:
        return
    dt = x.dtype.type
    _max_pool2d_backward_kernel[blocks_for(total), TPB](
        dy, x, dx, kh, kw, sh, sw, ph, pw, dt(-float("inf")), dt(0))


@cuda.jit
def _avg_pool2d_backward_kernel(dy, dx, kh, kw, sh, sw, ph, pw, inv, zero):
    # dy: (N, C, Ho, Wo)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    t = cuda.grid(1)                                   # owns dx[n, c, h, w]
    if t >= N * C * H * W:
        return
    n, c, h, w = unravel4(t, C, H, W)
    oh_lo, oh_hi = _covering(h, ph, kh, sh, Ho)
    ow_lo, ow_hi = _covering(w, pw, kw, sw, Wo)
    acc = zero
    for oh in range(oh_lo, oh_hi):
        for ow in range(ow_lo, ow_hi):
            acc += dy[n, c, oh, ow] * inv
    dx[n, c, h, w] = acc


def avg_pool2d_backward(dy, dx, kh, kw, sh, sw, ph, pw):
    """dx = sum over covering windows of dy / (kh*kw): one thread per dx element (gather)."""
    total = dx.size
    if total == 0:
        return
    dt = dx.dtype.type
    _avg_pool2d_backward_kernel[blocks_for(total), TPB](
        dy, dx, kh, kw, sh, sw, ph, pw, dt(1.0 / (kh * kw)), dt(0))
