"""2-D max and average pooling: CPU kernels (explicit Numba loop nests).

Formula (lecture, "2-D Max Pooling" / "Average Pooling"; PyTorch semantics)
--------------------------------------------------------------------------
Each channel is pooled on its own (#output channels = #input channels). With window
(kh, kw), stride (sh, sw) and padding (ph, pw) the window of output (oh, ow) starts at
input row h0 = oh*sh - ph and column w0 = ow*sw - pw:

    max:  y[n,c,oh,ow] = max_{i<kh, j<kw} x[n,c,h0+i,w0+j]          (outside the input: -inf)
    avg:  y[n,c,oh,ow] = 1/(kh*kw) * sum_{i<kh, j<kw} x[n,c,h0+i,w0+j]   (outside: 0)

The average always divides by kh*kw, padded positions included (PyTorch's default
count_include_pad=True).

Backward (the gradient of a pooled value goes back to the inputs that made it):

    max:  dx[n,c,h,w] = sum over windows whose FIRST maximum (row-major order inside the
          window; ties: first wins, as PyTorch) is at (h, w) of dy[n,c,oh,ow]
    avg:  dx[n,c,h,w] = sum over windows that contain (h, w) of dy[n,c,oh,ow] / (kh*kw)

Overlapping windows (stride < kernel) add up in dx.  The max backward recomputes the
argmax from x instead of storing indices in the forward, so the forward stays one output
array and the contract stays (dy, x) -> dx.  NaN behaves as in PyTorch: a NaN in the
window wins (the last NaN, as PyTorch's `val > max || isnan(val)` test).  A window whose
values are all -inf sends its gradient to its first in-range position, as PyTorch.

Loop nest (all four kernels)
----------------------------
    for p in prange(N*C):                # one (n, c) plane per iteration  <- parallel axis
        for oh in range(Ho):
            for ow in range(Wo):
                for i in window rows clipped to [0, H):
                    for j in window cols clipped to [0, W):
                        ...

Optimisation contract
---------------------
* Parallel over the N*C planes: a plane of dx/y is written by exactly one thread, so the
  scatter-add of the backward (overlapping windows) is race-free without atomics.
* The window is clipped to the input once per output (no per-element bounds test); the
  padding is never materialised.
* The forward max is written as a branch-free select (`best = v if v > best else best`):
  on random data the branchy `if v > best:` mispredicts about half the time and measured
  ~3x slower.  The backward keeps the readable `if` (its cost is dominated by the scatter,
  and the select version measured no faster).
* The kernels zero dx themselves (plane by plane, inside the owning thread), and fully
  overwrite y, so the caller may pass np.empty outputs.
* Arithmetic is in the array dtype (float32 or float64); the average multiplies by the
  precomputed 1/(kh*kw) of that dtype.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def _window(o, s, p, k, n):
    """The window of output o starts at input index o*s - p; return that start and the
    in-range tap range [lo, hi) (taps outside [0, n) are padding)."""
    start = o * s - p
    return start, max(0, -start), min(k, n - start)


# --------------------------------------------------------------------------- max pooling
@njit(parallel=True, cache=True)
def max_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw):
    """y = max over each (kh, kw) window of x; padding counts as -inf."""
    # x: (N, C, H, W)   y: (N, C, Ho, Wo)
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        xp = x[n, c]                        # xp: (H, W) plane view
        yp = y[n, c]                        # yp: (Ho, Wo)
        for oh in range(Ho):
            h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)   # window rows clipped to the input
            for ow in range(Wo):
                w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
                best = neg_inf
                for i in range(i_lo, i_hi):
                    xr = xp[h0 + i]             # xr: (W,) input row
                    for j in range(j_lo, j_hi):
                        v = xr[w0 + j]
                        # a select, not an if: no branch to mispredict on random data.
                        # v != v: a NaN wins, as PyTorch
                        best = v if (v > best) | (v != v) else best
                yp[oh, ow] = best


@njit(parallel=True, cache=True)
def max_pool2d_backward(dy, x, dx, kh, kw, sh, sw, ph, pw):
    """dx[first argmax of each window] += dy[window]; argmax recomputed from x."""
    # dy: (N, C, Ho, Wo)   x: (N, C, H, W)   dx: (N, C, H, W)
    N, C, H, W = x.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    neg_inf = x.dtype.type(-np.inf)
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        xp = x[n, c]                        # xp: (H, W)
        dxp = dx[n, c]                      # dxp: (H, W), owned by this thread
        dyp = dy[n, c]                      # dyp: (Ho, Wo)
        dxp[:, :] = 0
        for oh in range(Ho):
            h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
            for ow in range(Wo):
                w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
                best = neg_inf
                bh = h0 + i_lo                  # first in-range position (PyTorch's
                bw = w0 + j_lo                  # choice when every value is -inf)
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        v = xp[h0 + i, w0 + j]
                        if v > best or v != v:  # strict '>': the first maximum wins
                            best = v
                            bh = h0 + i
                            bw = w0 + j
                if i_lo < i_hi and j_lo < j_hi:
                    dxp[bh, bw] += dyp[oh, ow]


# ----------------------------------------------------------------------- average pooling
@njit(parallel=True, cache=True)
def avg_pool2d_forward(x, y, kh, kw, sh, sw, ph, pw):
    """y = sum over each (kh, kw) window of x / (kh*kw); padding counts as 0."""
    # x: (N, C, H, W)   y: (N, C, Ho, Wo)
    N, C, H, W = x.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    inv = x.dtype.type(1.0 / (kh * kw))     # count_include_pad=True: always kh*kw
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        xp = x[n, c]                        # xp: (H, W) plane view
        yp = y[n, c]                        # yp: (Ho, Wo)
        for oh in range(Ho):
            h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
            for ow in range(Wo):
                w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
                s = x.dtype.type(0)
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        s += xp[h0 + i, w0 + j]
                yp[oh, ow] = s * inv


@njit(parallel=True, cache=True)
def avg_pool2d_backward(dy, dx, kh, kw, sh, sw, ph, pw):
    """dx[every in-range position of a window] += dy[window] / (kh*kw)."""
    # dy: (N, C, Ho, Wo)   dx: (N, C, H, W)
    N, C, H, W = dx.shape
    Ho = dy.shape[2]
    Wo = dy.shape[3]
    inv = dx.dtype.type(1.0 / (kh * kw))
    for p in prange(N * C):
        n = p // C
        c = p - n * C
        dxp = dx[n, c]                      # dxp: (H, W), owned by this thread
        dyp = dy[n, c]                      # dyp: (Ho, Wo)
        dxp[:, :] = 0
        for oh in range(Ho):
            h0, i_lo, i_hi = _window(oh, sh, ph, kh, H)
            for ow in range(Wo):
                w0, j_lo, j_hi = _window(ow, sw, pw, kw, W)
                g = dyp[oh, ow] * inv
                for i in range(i_lo, i_hi):
                    for j in range(j_lo, j_hi):
                        dxp[h0 + i, w0 + j] += g
