"""2-D convolution (cross-correlation, PyTorch semantics): CPU kernels (explicit Numba loop nests).

Formula (lecture, "Convolution"; PyTorch's conv2d)
--------------------------------------------------
Input x (N, C_in, H, W), weight w (C_out, C_in/G, kH, kW), bias b (C_out,), G groups.
Output channel co belongs to group g = co // (C_out/G) and sees only the input channels
ci = g*(C_in/G) + ci_l, ci_l < C_in/G.  With stride (sh, sw), top/left padding (pt, pl) and
dilation (dh, dw) the output is

    y[n,co,oh,ow] = b[co] + sum_{ci_l, kh, kw} w[co,ci_l,kh,kw] * x[n, ci, ih, iw]
                    ih = oh*sh - pt + kh*dh,   iw = ow*sw - pl + kw*dw

where x outside [0, H) x [0, W) counts as 0 (implicit padding; it is never materialised).
Only the top/left padding is an argument: the output size (Ho, Wo), and with it the
bottom/right padding, is fixed by the caller's y, so asymmetric ("same" with an even kernel)
padding needs nothing special: every kernel only bounds-checks.

Backward (dy = dL/dy, same shape as y): every term of the sum above sends its gradient back
to the two factors, and the bias gets the sum of dy over its channel:

    dx[n,ci,ih,iw]     = sum_{co in group(ci), oh, ow, kh, kw : ih, iw as above} w[co,ci_l,kh,kw] * dy[n,co,oh,ow]
    dw[co,ci_l,kh,kw]  = sum_{n, oh, ow}                                          dy[n,co,oh,ow] * x[n,ci,ih,iw]
    db[co]             = sum_{n, oh, ow}                                          dy[n,co,oh,ow]

(dx is the "transposed convolution" of dy with the same weights: a scatter of each dy value
back through the window that produced it.)

File layout
-----------
1. The NAIVE kernels `conv2d_forward_naive`, `conv2d_backward_input_naive`,
   `conv2d_backward_weight_naive`: the formulas above written out literally, one
   output element at a time, with a bounds test on every tap.  Read these first.
2. The FAST kernels `_conv2d_*_direct`, each documented against its naive twin, and the
   contract names `conv2d_forward`, `conv2d_backward_input`, `conv2d_backward_weight`
   (thin Python dispatchers: a conv whose 1x1 output sees the whole unpadded input, e.g.
   LeNet's C5, goes to the dense kernels of dense.py; everything else to the direct
   kernels) and `conv2d_backward_bias`.

Loop nests and parallel axes (fast kernels; the naive ones use the same parallel axes)
--------------------------------------------------------------------------------------
The fast kernels work on FLATTENED, ZERO-PADDED planes (see the block comment before
`_padded_extent`): tap (kh, kw) is an offset o = kh*dh*Wp + kw*dw, output (oh, ow) a
position j = oh*Wp + ow, and for stride 1 a whole output plane is one loop over j.

    forward          for (n, g, co-block) in prange:          # owns y[n, co0:co0+cb]
                         xp[ci_l] = padded x[n, ci]            (Hp*Wp each)
                         acc[cb, Ho*Wp] = b
                         for ci_l, kh, kw, co in block:
                             for j:  acc[co, j] += w[co, ci_l, kh, kw] * xp[ci_l, j + o]
                         y[n, co0:co0+cb] = acc at the real positions
    backward_input   for (n, ci) in prange:                   # owns the plane dx[n, ci]
                         dxp[Hp*Wp] = 0
                         for co in group:  dyg = dy[n, co] on the grid (0 in garbage columns)
                             for kh, kw:
                                 for j:  dxp[j + o] += w[co, ci_l, kh, kw] * dyg[j]
                         dx[n, ci] = interior of dxp
    backward_weight  (pre-passes in prange: xp[n, ci] padded, dyg[n, co] on the grid)
                     for co in prange:                        # owns dw[co]
                         for ci_l, kh, kw:
                             buf[Ho*Wp] = 0
                             for n:  for j:  buf[j] += dyg[n, co, j] * xp[n, ci, j + o]
                             dw[co, ci_l, kh, kw] = sum of buf over the real positions
    backward_bias    for co in prange:  db[co] = sum of dy[:, co]   (row buffer, then one sum)
For stride > 1 the j loops run one segment per output row instead (ow in [0, Wo), input
position oh*sh*Wp + ow*sw + o).

Every output element is written by exactly one thread: no atomics, no races, and the
result does not depend on the number of threads (each sum is taken in a fixed order).

Optimisation contract
---------------------
* Outputs are fully overwritten (never accumulated into): the caller may pass np.empty.
* All arrays C-contiguous and of one dtype (float32 or float64); arithmetic and
  accumulation happen in that dtype.  No BLAS, no np.dot: every FLOP is in these loops
  (the dense path too: dense.py is our own loops).
* fastmath=False: LLVM may not reorder a floating-point sum, so a sum written as a scalar
  running total (`s += a*b` over a loop) cannot be vectorised and is bound by the add
  latency.  The fast kernels therefore keep the innermost loop ELEMENTWISE: it runs over
  the contiguous flattened output positions j and accumulates into a buffer indexed by j
  (acc / dxp / buf), which LLVM vectorises with SIMD without changing any rounding order.
  The only true reductions (over j, once per tap in backward_weight, and in bias) use
  8 interleaved partial sums in a fixed order.
* Flattening matters for small images: LeNet's C3 has 10-wide output rows, but a
  140-long flattened plane; short inner loops are dominated by loop/alias-check overhead.
  The price is computing Wp - Wo garbage columns per row (40% for C3, 14% for C1).
* No bounds test anywhere: the padding is materialised once per task (or per call, for
  backward_weight) in a thread-local zero-padded copy.
* Innermost indices are cast to unsigned (`u(...)`, see its comment): a signed index
  makes Numba test for negative (wrap-around) indices on every access, which blocks SIMD.
* forward blocks CO_BLOCK output channels per task: the padded input planes are built
  once and serve cb channels, and consecutive updates go to different acc rows (no
  store-to-load dependency between them).
* Non-finite values: a garbage column computes with zeros; a finite weight times 0 adds
  exactly 0, but an inf/NaN WEIGHT can spread NaN into dx positions that PyTorch leaves
  finite (backward_input only).  x/dy NaN/inf propagate as in PyTorch.
"""
import numpy as np
from numba import njit, prange

from numbacnn.kernels.cpu import dense as _dense

# Output channels computed together by one forward task (see the optimisation contract).
CO_BLOCK = 8

# Index cast for the innermost loops.  Numba supports Python's negative indices, so an
# index of a signed type costs a test `if i < 0: i += len` on every access, and that
# branch stops LLVM from vectorising the loop (measured: ~10x slower).  Our indices are
# never negative (the padded planes guarantee it), so we say so by making them unsigned.
u = np.uint64


# =========================================================================== naive kernels
@njit(cache=True, parallel=True, fastmath=False)
def conv2d_forward_naive(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b, literally: one output element at a time, bounds test per tap."""
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, Ho, Wo)
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = w.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    C_out_g = C_out // groups
    for t in prange(N * C_out):                       # parallel over (n, co)
        n = t // C_out
        co = t - n * C_out
        g = co // C_out_g
        for oh in range(Ho):
            for ow in range(Wo):
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


@njit(cache=True, parallel=True, fastmath=False)
def conv2d_backward_input_naive(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = transposed conv of dy: each dy value scattered back through its window."""
    # dy: (N, C_out, Ho, Wo)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    N, C_out, Ho, Wo = dy.shape
    C_in_g = w.shape[1]
    kH = w.shape[2]
    kW = w.shape[3]
    C_in = dx.shape[1]
    H = dx.shape[2]
    W = dx.shape[3]
    C_out_g = C_out // groups
    for t in prange(N * C_in):                        # parallel over (n, ci): owns dx[n, ci]
        n = t // C_in
        ci = t - n * C_in
        g = ci // C_in_g
        ci_l = ci - g * C_in_g
        for ih in range(H):
            for iw in range(W):
                dx[n, ci, ih, iw] = 0.0
        for co in range(g * C_out_g, (g + 1) * C_out_g):
            for oh in range(Ho):
                for ow in range(Wo):
                    for kh in range(kH):
                        ih = oh * stride_h - pad_top + kh * dil_h
                        for kw in range(kW):
                            iw = ow * stride_w - pad_left + kw * dil_w
                            if 0 <= ih < H and 0 <= iw < W:
                                dx[n, ci, ih, iw] += w[co, ci_l, kh, kw] * dy[n, co, oh, ow]


@njit(cache=True, parallel=True, fastmath=False)
def conv2d_backward_weight_naive(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw[co, ci_l, kh, kw] = sum over n, oh, ow of dy * (the x value that tap saw)."""
    # dy: (N, C_out, Ho, Wo)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    N, C_out, Ho, Wo = dy.shape
    H = x.shape[2]
    W = x.shape[3]
    C_in_g = dw.shape[1]
    kH = dw.shape[2]
    kW = dw.shape[3]
    C_out_g = C_out // groups
    for co in prange(C_out):                          # parallel over co: owns dw[co]
        g = co // C_out_g
        for ci_l in range(C_in_g):
            ci = g * C_in_g + ci_l
            for kh in range(kH):
                for kw in range(kW):
                    s = dw.dtype.type(0.0)
                    for n in range(N):
                        for oh in range(Ho):
                            ih = oh * stride_h - pad_top + kh * dil_h
                            for ow in range(Wo):
                                iw = ow * stride_w - pad_left + kw * dil_w
                                if 0 <= ih < H and 0 <= iw < W:
                                    s += dy[n, co, oh, ow] * x[n, ci, ih, iw]
                    dw[co, ci_l, kh, kw] = s


# =========================================================================== fast kernels
#
# The flattened-plane ("extended row") formulation used by all three fast kernels.
#
# Copy the input plane into a zero-padded plane xp of Hp x Wp (padding materialised once
# per task, so no bounds tests remain) and flatten it to 1-D.  A tap (kh, kw) is then just
# an offset  o = kh*dh*Wp + kw*dw  into xp, and an output (oh, ow) a position
#     j = oh*Wp + ow          on an "output grid" of Ho rows of width Wp.
# For stride 1 the input that output j sees through tap o is simply xp[j + o], so a whole
# plane of outputs is ONE contiguous 1-D loop over j in [0, L), L = (Ho-1)*Wp + Wo:
#     y_grid[j] += w[o] * xp[j + o]
# (the Wp - Wo grid columns past the right edge are wrapped-around garbage: computed,
# never read back).  This turns LeNet's 10-wide rows into 140-long loops, which is what
# makes SIMD pay off.  For stride > 1 the same code runs one "segment" per output row:
#     y_grid[oh*Wp + ow] += w[o] * xp[oh*sh*Wp + ow*sw + o],   ow in [0, Wo).
# `_segments` returns (n_seg, seg_len) for the two cases; segment s starts at grid
# position s*Wp and at xp position s*sh*Wp.

@njit(cache=True)
def _padded_extent(H, W, Ho, Wo, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Size (Hp, Wp) of the zero-padded plane: holds the input at (pad_top, pad_left) and
    every position any tap of any output (incl. the garbage grid columns) reads."""
    Hp = max(H + pad_top, (Ho - 1) * stride_h + (kH - 1) * dil_h + 1)
    Wp = max(W + pad_left, (Wo - 1) * stride_w + (kW - 1) * dil_w + 1)
    return Hp, Wp


@njit(cache=True)
def _segments(Ho, Wo, Wp, stride_h, stride_w):
    """(n_seg, seg_len): one flat segment for stride 1, else one segment per output row."""
    if stride_h == 1 and stride_w == 1:
        return 1, (Ho - 1) * Wp + Wo
    return Ho, Wo


@njit(cache=True)
def _pad_plane(src, dst, pad_top, pad_left, Wp):
    """dst[:] = 0, then src (H, W) copied into the flat padded plane dst (>= Hp*Wp,)."""
    for i in range(dst.shape[0]):
        dst[i] = 0.0
    H, W = src.shape
    for ih in range(H):
        base = (ih + pad_top) * Wp + pad_left
        srow = src[ih]
        for iw in range(W):
            dst[base + iw] = srow[iw]


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_forward_direct(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b on flattened padded planes (see the block comment above).

    Against conv2d_forward_naive:
    * task = (n, group, block of up to CO_BLOCK output channels of that group): the padded
      input planes of (n, group) are built once per task and serve cb output channels;
    * no bounds test: taps reading the padding read the zeros of xp;
    * innermost loop = contiguous positions j of the flattened output grid, elementwise into
      the local accumulator acc[c] -> SIMD, without reordering any sum (fastmath=False):
      each y element is still b + sum over (ci_l, kh, kw) in that order (padding taps add 0).
    """
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, Ho, Wo)
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = w.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    C_out_g = C_out // groups
    Hp, Wp = _padded_extent(H, W, Ho, Wo, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    n_seg, seg_len = _segments(Ho, Wo, Wp, stride_h, stride_w)
    n_blk = (C_out_g + CO_BLOCK - 1) // CO_BLOCK     # channel blocks per group
    tasks_per_n = groups * n_blk
    for t in prange(N * tasks_per_n):                 # parallel over (n, g, block): owns y[n, co0:co0+cb]
        n = t // tasks_per_n
        r = t - n * tasks_per_n
        g = r // n_blk
        co0 = g * C_out_g + (r - g * n_blk) * CO_BLOCK
        cb = min(CO_BLOCK, (g + 1) * C_out_g - co0)   # channels in this block
        xp = np.empty((C_in_g, Hp * Wp), x.dtype)     # xp: (C_in_g, Hp*Wp) padded input planes
        for ci_l in range(C_in_g):
            _pad_plane(x[n, g * C_in_g + ci_l], xp[ci_l], pad_top, pad_left, Wp)
        acc = np.empty((cb, Ho * Wp), y.dtype)        # acc: (cb, Ho*Wp) output grids
        for c in range(cb):
            bc = b[co0 + c]
            for j in range(Ho * Wp):
                acc[c, j] = bc
        for ci_l in range(C_in_g):
            xpl = xp[ci_l]                            # xpl: (Hp*Wp,)
            for kh in range(kH):
                for kw in range(kW):
                    o = kh * dil_h * Wp + kw * dil_w  # tap offset in the flat plane
                    for c in range(cb):
                        wv = w[co0 + c, ci_l, kh, kw]
                        arow = acc[c]                 # arow: (Ho*Wp,)
                        for s in range(n_seg):
                            ab = s * Wp
                            xb = s * stride_h * Wp + o
                            for j in range(seg_len):
                                arow[u(ab + j)] += wv * xpl[u(xb + j * stride_w)]
        for c in range(cb):
            for oh in range(Ho):
                yrow = y[n, co0 + c, oh]              # yrow: (Wo,)
                for ow in range(Wo):
                    yrow[ow] = acc[c, oh * Wp + ow]


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_backward_input_direct(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = transposed conv of dy on a flattened padded plane.

    Against conv2d_backward_input_naive (same scatter, same parallel axis):
    * task = one (n, ci) plane; it scatters into a thread-local zero-padded flat plane
      dxp (Hp*Wp) and finally copies the interior (the real inputs) to dx[n, ci];
    * dy[n, co] is first laid out on the output grid (Ho rows of width Wp, zeros in the
      garbage columns, so they scatter 0); then one tap is one contiguous loop
          dxp[j + o] += w[co, ci_l, kh, kw] * dy_grid[j]       -> SIMD;
    * no bounds test: contributions to padding positions land in dxp's border and are
      dropped by the final copy.
    """
    # dy: (N, C_out, Ho, Wo)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    N, C_out, Ho, Wo = dy.shape
    C_in_g = w.shape[1]
    kH = w.shape[2]
    kW = w.shape[3]
    C_in = dx.shape[1]
    H = dx.shape[2]
    W = dx.shape[3]
    C_out_g = C_out // groups
    Hp, Wp = _padded_extent(H, W, Ho, Wo, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    n_seg, seg_len = _segments(Ho, Wo, Wp, stride_h, stride_w)
    for t in prange(N * C_in):                        # parallel over (n, ci): owns dx[n, ci]
        n = t // C_in
        ci = t - n * C_in
        g = ci // C_in_g
        ci_l = ci - g * C_in_g
        dxp = np.zeros(Hp * Wp, dx.dtype)             # dxp: (Hp*Wp,) padded gradient plane
        dyg = np.zeros(Ho * Wp, dx.dtype)             # dyg: (Ho*Wp,) dy[n, co] on the output grid
        for co in range(g * C_out_g, (g + 1) * C_out_g):
            for oh in range(Ho):
                dyrow = dy[n, co, oh]                 # dyrow: (Wo,)
                for ow in range(Wo):
                    dyg[oh * Wp + ow] = dyrow[ow]     # garbage columns stay 0
            for kh in range(kH):
                for kw in range(kW):
                    o = kh * dil_h * Wp + kw * dil_w
                    wv = w[co, ci_l, kh, kw]
                    for s in range(n_seg):
                        gb = s * Wp
                        xb = s * stride_h * Wp + o
                        for j in range(seg_len):
                            dxp[u(xb + j * stride_w)] += wv * dyg[u(gb + j)]
        for ih in range(H):
            dxrow = dx[n, ci, ih]                     # dxrow: (W,)
            base = (ih + pad_top) * Wp + pad_left
            for iw in range(W):
                dxrow[iw] = dxp[base + iw]


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_backward_weight_direct(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = correlation of x with dy on flattened padded planes.

    Against conv2d_backward_weight_naive (same parallel axis: co, each thread owns dw[co]):
    * two parallel pre-passes lay out every padded input plane xp[n, ci] (Hp*Wp) and every
      dy[n, co] on the output grid dyg[n, co] (Ho*Wp, zeros in the garbage columns);
    * the naive scalar running sum per tap (latency-bound, and not vectorisable without
      fastmath) becomes a buffer buf[j] with one partial sum per grid position: the
      innermost loop  buf[j] += dyg[n, co, j] * xp[n, ci, j + o]  is elementwise -> SIMD;
      the partial sums of the real output positions are added up once per tap at the end
      (garbage columns zeroed first; 8 interleaved running sums, `_sum8`).
    """
    # dy: (N, C_out, Ho, Wo)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    N, C_out, Ho, Wo = dy.shape
    C_in = x.shape[1]
    H = x.shape[2]
    W = x.shape[3]
    C_in_g = dw.shape[1]
    kH = dw.shape[2]
    kW = dw.shape[3]
    C_out_g = C_out // groups
    Hp, Wp = _padded_extent(H, W, Ho, Wo, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    n_seg, seg_len = _segments(Ho, Wo, Wp, stride_h, stride_w)
    xp = np.empty((N, C_in, Hp * Wp), x.dtype)        # xp: (N, C_in, Hp*Wp) padded input planes
    for t in prange(N * C_in):
        n = t // C_in
        ci = t - n * C_in
        _pad_plane(x[n, ci], xp[n, ci], pad_top, pad_left, Wp)
    dyg = np.zeros((N, C_out, Ho * Wp), dy.dtype)     # dyg: (N, C_out, Ho*Wp) dy on the output grid
    for t in prange(N * C_out):
        n = t // C_out
        co = t - n * C_out
        for oh in range(Ho):
            for ow in range(Wo):
                dyg[n, co, oh * Wp + ow] = dy[n, co, oh, ow]
    for co in prange(C_out):                          # parallel over co: owns dw[co]
        g = co // C_out_g
        buf = np.empty(Ho * Wp, dw.dtype)             # buf: (Ho*Wp,) partial sums per grid position
        for ci_l in range(C_in_g):
            ci = g * C_in_g + ci_l
            for kh in range(kH):
                for kw in range(kW):
                    o = kh * dil_h * Wp + kw * dil_w
                    for j in range(Ho * Wp):
                        buf[j] = 0.0
                    for n in range(N):
                        dgl = dyg[n, co]              # dgl: (Ho*Wp,)
                        xpl = xp[n, ci]               # xpl: (Hp*Wp,)
                        for s in range(n_seg):
                            gb = s * Wp
                            xb = s * stride_h * Wp + o
                            for j in range(seg_len):
                                buf[u(gb + j)] += dgl[u(gb + j)] * xpl[u(xb + j * stride_w)]
                    for oh in range(Ho):              # drop the garbage columns (exactly)
                        for ow in range(Wo, Wp):
                            buf[oh * Wp + ow] = 0.0
                    dw[co, ci_l, kh, kw] = _sum8(buf)


@njit(cache=True)
def _sum8(a):
    """sum(a) with 8 interleaved partial sums (fixed order, so still deterministic).

    A single running sum waits ~4 cycles per add; 8 independent ones keep the adder busy.
    Used for the long per-tap reductions of backward_weight (Ho*Wp terms per tap).
    """
    # a: (L,)
    L = a.shape[0]
    z = a.dtype.type(0.0)
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = z
    nb = L // 8
    for i in range(nb):
        j = u(8 * i)
        s0 += a[j]
        s1 += a[j + u(1)]
        s2 += a[j + u(2)]
        s3 += a[j + u(3)]
        s4 += a[j + u(4)]
        s5 += a[j + u(5)]
        s6 += a[j + u(6)]
        s7 += a[j + u(7)]
    for j in range(8 * nb, L):
        s0 += a[j]
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# --------------------------------------------------------------------------- dispatch
# A convolution whose single output sees the whole (unpadded) input, as LeNet's C5
# (16x5x5 -> 120x1x1), is exactly a fully connected layer on the flattened input:
#     y[n, co] = b[co] + sum_k w[co, k] * x[n, k],   k = (ci, kh, kw) flattened.
# Its output grid has one position, so the flat loops above would be 1 element long;
# the dense kernels (kernels/cpu/dense.py) tile over (n, co) instead and are ~10x faster.

def _is_dense(x_shape, w_shape, y_shape, pad_top, pad_left, dil_h, dil_w, groups):
    return (groups == 1 and y_shape[2] == 1 and y_shape[3] == 1 and pad_top == 0
            and pad_left == 0 and dil_h == 1 and dil_w == 1
            and w_shape[2] == x_shape[2] and w_shape[3] == x_shape[3])


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b (fully overwrites y).  Fast path: flattened-plane direct conv."""
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, Ho, Wo)
    if _is_dense(x.shape, w.shape, y.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out = y.shape[0], y.shape[1]
        _dense.linear_forward(x.reshape(N, -1), w.reshape(C_out, -1), b, y.reshape(N, C_out))
        return
    _conv2d_forward_direct(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = dL/dx (fully overwrites dx)."""
    # dy: (N, C_out, Ho, Wo)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    if _is_dense(dx.shape, w.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out = dy.shape[0], dy.shape[1]
        _dense.linear_backward_input(dy.reshape(N, C_out), w.reshape(C_out, -1), dx.reshape(N, -1))
        return
    _conv2d_backward_input_direct(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = dL/dw (fully overwrites dw)."""
    # dy: (N, C_out, Ho, Wo)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    if _is_dense(x.shape, dw.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out = dy.shape[0], dy.shape[1]
        _dense.linear_backward_weight(dy.reshape(N, C_out), x.reshape(N, -1), dw.reshape(C_out, -1))
        return
    _conv2d_backward_weight_direct(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


@njit(cache=True, parallel=True, fastmath=False)
def conv2d_backward_bias(dy, db):
    """db[co] = sum of dy[:, co] over batch and positions (row buffer, then one short sum)."""
    # dy: (N, C_out, Ho, Wo)   db: (C_out,)
    N, C_out, Ho, Wo = dy.shape
    for co in prange(C_out):                          # parallel over co: owns db[co]
        buf = np.zeros(Wo, dtype=db.dtype)            # buf: (Wo,) one partial sum per column
        for n in range(N):
            for oh in range(Ho):
                dyrow = dy[n, co, oh]                 # dyrow: (Wo,)
                for ow in range(Wo):
                    buf[u(ow)] += dyrow[u(ow)]
        s = db.dtype.type(0.0)
        for ow in range(Wo):
            s += buf[ow]
        db[co] = s
