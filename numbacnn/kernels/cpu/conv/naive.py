"""2-D convolution, NAIVE CPU kernels: the formulas written out literally.  Read these first.

Formula (lecture, "2-D Convolution Layer" / "Multiple Input/Output Channels"; PyTorch's conv2d)
-----------------------------------------------------------------------------------------------
x (N, C_in, H, W), w (C_out, C_in_g, kH, kW) with C_in_g = C_in / groups, b (C_out,).
Output channel co is in group g = co // C_out_g and sees the input channels
ci = g*C_in_g + ci_l.  With stride (stride_h, stride_w), top/left padding (pad_top, pad_left)
and dilation (dil_h, dil_w):

    y[n,co,oh,ow] = b[co] + sum_{ci_l, kh, kw} w[co,ci_l,kh,kw] * x[n,ci,ih,iw]
                    ih = oh*stride_h - pad_top + kh*dil_h,   iw = ow*stride_w - pad_left + kw*dil_w

x outside [0, H) x [0, W) counts as 0 (implicit padding).  The output size (H_out, W_out), and
with it the bottom/right padding, is fixed by the caller's y.  Backward, dy = dL/dy:

    dx[n,ci,ih,iw]    = sum_{co in group(ci); oh, ow, kh, kw hitting (ih, iw)}
                            w[co,ci_l,kh,kw] * dy[n,co,oh,ow]
    dw[co,ci_l,kh,kw] = sum_{n, oh, ow} dy[n,co,oh,ow] * x[n,ci,ih,iw]
    db[co]            = sum_{n, oh, ow} dy[n,co,oh,ow]

Loop nests: one output element at a time, a bounds test on every tap.

    forward          for (n, co) in prange:  for oh, ow:  s = b[co]; for ci_l, kh, kw: s += w*x
    backward_input   for (n, ci) in prange:  dx[n, ci] = 0; for co, oh, ow, kh, kw: dx[...] += w*dy
    backward_weight  for co in prange:  for ci_l, kh, kw:  s = 0; for n, oh, ow: s += dy*x
    backward_bias    for co in prange:  s = 0; for n, oh, ow: s += dy

Each `s += w*x` is one fused multiply-add (fastmath {"contract"}, planes.FMA: one rounding,
the order unchanged), as in the fast kernels, so the fast forward equals this one bit for bit.
Each thread owns whole output planes (or rows of dw), so there are no races.  These are the
"before" of `direct.py`; tests/test_naive_kernels.py checks them against numbacnn.reference
and against the fast kernels.
"""

from numba import njit, prange

from .planes import FMA


@njit(cache=True, parallel=True, fastmath=FMA)
def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b, literally: one output element at a time, bounds test per tap."""
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = w.shape
    H_out, W_out = y.shape[2], y.shape[3]
    C_out_g = C_out // groups
    for t in prange(N * C_out):  # parallel over (n, co): owns y[n, co]
        n = t // C_out
        co = t - n * C_out
        g = co // C_out_g
        for oh in range(H_out):
            for ow in range(W_out):
                s = b[co]
                for ci_l in range(C_in_g):
                    ci = g * C_in_g + ci_l
                    for kh in range(kH):
                        ih = oh * stride_h - pad_top + kh * dil_h
                        for kw in range(kW):
                            iw = ow * stride_w - pad_left + kw * dil_w
                            if 0 <= ih < H and 0 <= iw < W:
                                s += w[co, ci_l, kh, kw] * x[n, ci, ih, iw]
                y[n, co, oh, ow] = s


@njit(cache=True, parallel=True, fastmath=FMA)
def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = transposed conv of dy: each dy value scattered back through its window."""
    # dy: (N, C_out, H_out, W_out)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    N, C_out, H_out, W_out = dy.shape
    _, C_in_g, kH, kW = w.shape
    _, C_in, H, W = dx.shape
    C_out_g = C_out // groups
    for t in prange(N * C_in):  # parallel over (n, ci): owns dx[n, ci]
        n = t // C_in
        ci = t - n * C_in
        g = ci // C_in_g
        ci_l = ci - g * C_in_g
        for ih in range(H):
            for iw in range(W):
                dx[n, ci, ih, iw] = 0.0
        for co in range(g * C_out_g, (g + 1) * C_out_g):
            for oh in range(H_out):
                for ow in range(W_out):
                    for kh in range(kH):
                        ih = oh * stride_h - pad_top + kh * dil_h
                        for kw in range(kW):
                            iw = ow * stride_w - pad_left + kw * dil_w
                            if 0 <= ih < H and 0 <= iw < W:
                                dx[n, ci, ih, iw] += w[co, ci_l, kh, kw] * dy[n, co, oh, ow]


@njit(cache=True, parallel=True, fastmath=FMA)
def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw[co, ci_l, kh, kw] = sum over n, oh, ow of dy * (the x value that tap saw)."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    N, C_out, H_out, W_out = dy.shape
    H, W = x.shape[2], x.shape[3]
    _, C_in_g, kH, kW = dw.shape
    C_out_g = C_out // groups
    for co in prange(C_out):  # parallel over co: owns dw[co]
        g = co // C_out_g
        for ci_l in range(C_in_g):
            ci = g * C_in_g + ci_l
            for kh in range(kH):
                for kw in range(kW):
                    s = dw.dtype.type(0.0)
                    for n in range(N):
                        for oh in range(H_out):
                            ih = oh * stride_h - pad_top + kh * dil_h
                            for ow in range(W_out):
                                iw = ow * stride_w - pad_left + kw * dil_w
                                if 0 <= ih < H and 0 <= iw < W:
                                    s += dy[n, co, oh, ow] * x[n, ci, ih, iw]
                    dw[co, ci_l, kh, kw] = s


@njit(cache=True, parallel=True, fastmath=False)
def conv2d_backward_bias(dy, db):
    """db[co] = sum of dy[:, co] over the batch and every output position."""
    # dy: (N, C_out, H_out, W_out)   db: (C_out,)
    N, C_out, H_out, W_out = dy.shape
    for co in prange(C_out):  # parallel over co: owns db[co]
        s = db.dtype.type(0.0)
        for n in range(N):
            for oh in range(H_out):
                for ow in range(W_out):
                    s += dy[n, co, oh, ow]
        db[co] = s
