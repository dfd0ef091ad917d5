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
   LeNet's C5, goes to the dense kernels of dense.py; a stride-1 backward_input to the
   forward kernel (gather form); a STRIDED conv (dilation 1) to the stride-1 kernels
   through its polyphase decomposition (see `_polyphase`); everything else to the direct
   kernels) and `conv2d_backward_bias`.

Loop nests and parallel axes (fast kernels; the naive ones use the same parallel axes,
except backward_weight: naive over co, fast over (co, ci_l))
------------------------------------------------------------------------------------------
The fast kernels work on FLATTENED, ZERO-PADDED planes (see the block comment before
`_padded_extent`): tap (ci_l, kh, kw) is an offset o = ci_l*Hp*Wp + kh*dh*Wp + kw*dw into
the padded planes laid end to end, output (oh, ow) a position j = oh*Wp + ow, and for
stride 1 a whole output plane is one loop over j.  "4x4" = the register blocks of the
block comments (4 channels x 4 taps, or 4 taps x 4 samples) per pass over j.

    forward          for (n, g, co-block) in prange:          # owns y[n, co0:co0+cb]
                         xp = padded x[n, group's channels]    (C_in_g*Hp*Wp)
                         acc[cb, Ho*Wp] = b
                         for 4 channels co, for 4 taps t (in order):          (4x4)
                             for j:  acc[co, j] += sum_t w[co, t] * xp[j + o_t]
                         y[n, co0:co0+cb] = acc at the real positions
    backward_input   stride 1: GATHER = the forward kernel run on dy with the flipped,
                     in/out-swapped weights and padding (k-1)*d - pad (see
                     `conv2d_backward_input`): each dx element written once.
                     stride > 1: SCATTER, for (n, ci) in prange:      # owns dx[n, ci]
                         dxp[Hp*Wp] = 0
                         for co in group:  dyg = dy[n, co] on the grid (0 in garbage columns)
                             for kh, kw:
                                 for j:  dxp[j + o] += w[co, ci_l, kh, kw] * dyg[j]
                         dx[n, ci] = interior of dxp
    backward_weight  (pre-passes in prange: xp[n, ci] padded, dyg[n, co] on the grid)
                     for (co, ci_l) in prange:                # owns dw[co, ci_l]
                         buf[kH*kW, chunk] = 0
                         for chunk of output rows, for 4 samples n, for 4 taps t:   (4x4)
                             for j:  buf[t, j] += sum_n dyg[n, co, j] * xp[n, ci, j + o_t]
                         dw[co, ci_l, t] = sum of buf[t] over the real positions
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
  8 interleaved partial sums in a fixed order.  forward (and so the gather backward_input)
  adds in exactly the naive order; backward_weight in a different but fixed one.
* Flattening matters for small images: LeNet's C3 has 10-wide output rows, but a
  140-long flattened plane; short inner loops are dominated by loop/alias-check overhead.
  The price is computing Wp - Wo garbage columns per row (40% for C3, 14% for C1).
* No bounds test anywhere: the padding is materialised once per task (or per call, for
  backward_weight) in a thread-local zero-padded copy.
* Innermost indices are cast to unsigned (`u(...)`, see its comment): a signed index
  makes Numba test for negative (wrap-around) indices on every access, which blocks SIMD.
* Register blocking (block comments before `_padded_extent` and `DW_CHUNK`): one
  multiply-add per loaded and stored element is bound by the load/store ports; a pass over
  j does a 4 x 4 block instead, keeping the 4-term partial sum in a register.  Measured
  (AVX-512, 1 thread, L1-resident): ~80 GFLOP/s for the forward block against ~35 for
  one tap at a time.  Blocks of more than 4 stores per pass (8 channels, or 2 channels x 4 taps of
  buffers) stop LLVM from vectorising (too many runtime alias checks): 4 is the limit.
* forward blocks CO_BLOCK output channels per task: the padded input planes are built
  once and serve cb channels.
* The small copy loops (padding, grid layout, copy-out) use unsigned indices too: with
  signed ones they took a quarter to a half of a LeNet forward once the arithmetic got fast.
* Non-finite values: a garbage column computes with zeros; a finite weight times 0 adds
  exactly 0, but an inf/NaN WEIGHT can spread NaN into dx positions that PyTorch leaves
  finite (backward_input only: its gather form multiplies every weight with dy's zero
  padding).  x/dy NaN/inf propagate as in PyTorch.
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
# The flattened-plane ("extended row") formulation used by all the fast kernels.
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
#
# Several input channels are handled by laying their padded planes one after the other
# (ci_l*Hp*Wp + ...), so that a tap of ANY channel is one offset: the taps of an output
# channel are the T = C_in_g*kH*kW pairs (weight, offset) in the naive order (ci_l, kh, kw),
# see `_tap_offsets`.
#
# REGISTER BLOCKING.  The one-tap update  acc[j] += w*xp[j+o]  loads acc[j], loads xp[j+o],
# stores acc[j] for ONE multiply-add: it is bound by the load/store ports, not by the FPU.
# The micro-kernels below therefore do a 4 x 4 block per pass over j:
#     for j:  x0..x3 = xp[j+o0], ..., xp[j+o3]                       4 taps, loaded once
#             acc_c[j] = acc_c[j] + w_c0*x0 + w_c1*x1 + w_c2*x2 + w_c3*x3,   c = 4 channels
# i.e. 8 loads + 4 stores per 16 multiply-adds, and the partial sum of the 4 taps stays in a
# register.  Still elementwise in j (SIMD, fastmath=False), and the additions happen in
# exactly the naive order: acc + t0 + t1 + t2 + t3, left to right.

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
def _tap_offsets(C_in_g, kH, kW, P, Wp, dil_h, dil_w):
    """Offset of every tap (ci_l, kh, kw), in that order, into C_in_g padded planes of P."""
    offs = np.empty(C_in_g * kH * kW, np.int64)       # offs: (C_in_g*kH*kW,)
    t = 0
    for ci_l in range(C_in_g):
        for kh in range(kH):
            for kw in range(kW):
                offs[t] = ci_l * P + kh * dil_h * Wp + kw * dil_w
                t += 1
    return offs


@njit(cache=True)
def _pad_plane(src, dst, pad_top, pad_left, Wp):
    """dst[:] = 0, then src (H, W) copied into the flat padded plane dst (>= Hp*Wp,)."""
    # (unsigned indices here too: these copies are ~10% of a LeNet layer otherwise)
    for i in range(dst.shape[0]):
        dst[u(i)] = 0.0
    H, W = src.shape
    for ih in range(H):
        base = (ih + pad_top) * Wp + pad_left
        srow = src[ih]                                # srow: (W,)
        for iw in range(W):
            dst[u(base + iw)] = srow[u(iw)]


@njit(cache=True)
def _to_grid(src, dst, Wp):
    """dst (Ho*Wp,) = src (Ho, Wo) laid out on the output grid, 0 in the garbage columns."""
    for i in range(dst.shape[0]):
        dst[u(i)] = 0.0
    Ho, Wo = src.shape
    for oh in range(Ho):
        srow = src[oh]                                # srow: (Wo,)
        for ow in range(Wo):
            dst[u(oh * Wp + ow)] = srow[u(ow)]


@njit(cache=True)
def _from_grid(src, base, Wp, dst):
    """dst (R, C) = the R x C window of the flat plane src whose top-left is src[base]."""
    R, C = dst.shape
    for r in range(R):
        drow = dst[r]                                 # drow: (C,)
        for c in range(C):
            drow[u(c)] = src[u(base + r * Wp + c)]


@njit(cache=True)
def _taps_4ch(a0, a1, a2, a3, w0, w1, w2, w3, xp, offs, n_seg, seg_len, Wp, stride_h, stride_w):
    """a_c[grid j] += sum over taps t (in order) of w_c[t] * xp[input(j) + offs[t]], 4 channels.

    4 taps per pass (the 4 x 4 register block above), then the T % 4 leftover taps singly.
    """
    # a0..a3: (Ho*Wp,) output grids   w0..w3: (T,) weights   xp: padded planes   offs: (T,)
    T = offs.shape[0]
    t = 0
    while t + 4 <= T:
        o0 = offs[t]
        o1 = offs[t + 1]
        o2 = offs[t + 2]
        o3 = offs[t + 3]
        w00, w01, w02, w03 = w0[t], w0[t + 1], w0[t + 2], w0[t + 3]
        w10, w11, w12, w13 = w1[t], w1[t + 1], w1[t + 2], w1[t + 3]
        w20, w21, w22, w23 = w2[t], w2[t + 1], w2[t + 2], w2[t + 3]
        w30, w31, w32, w33 = w3[t], w3[t + 1], w3[t + 2], w3[t + 3]
        for s in range(n_seg):
            gb = s * Wp
            xb = s * stride_h * Wp
            for j in range(seg_len):
                g = u(gb + j)
                xi = xb + j * stride_w
                x0 = xp[u(xi + o0)]
                x1 = xp[u(xi + o1)]
                x2 = xp[u(xi + o2)]
                x3 = xp[u(xi + o3)]
                a0[g] = a0[g] + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
                a1[g] = a1[g] + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
                a2[g] = a2[g] + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
                a3[g] = a3[g] + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
        t += 4
    while t < T:
        o0 = offs[t]
        w00, w10, w20, w30 = w0[t], w1[t], w2[t], w3[t]
        for s in range(n_seg):
            gb = s * Wp
            xb = s * stride_h * Wp + o0
            for j in range(seg_len):
                g = u(gb + j)
                x0 = xp[u(xb + j * stride_w)]
                a0[g] += w00 * x0
                a1[g] += w10 * x0
                a2[g] += w20 * x0
                a3[g] += w30 * x0
        t += 1


@njit(cache=True)
def _taps_1ch(a0, w0, xp, offs, n_seg, seg_len, Wp, stride_h, stride_w):
    """_taps_4ch for a single channel (the C_out % 4 leftover ones): 4 taps per pass."""
    # a0: (Ho*Wp,) output grid   w0: (T,) weights   xp: padded planes   offs: (T,)
    T = offs.shape[0]
    t = 0
    while t + 4 <= T:
        o0 = offs[t]
        o1 = offs[t + 1]
        o2 = offs[t + 2]
        o3 = offs[t + 3]
        w00, w01, w02, w03 = w0[t], w0[t + 1], w0[t + 2], w0[t + 3]
        for s in range(n_seg):
            gb = s * Wp
            xb = s * stride_h * Wp
            for j in range(seg_len):
                g = u(gb + j)
                xi = xb + j * stride_w
                a0[g] = (a0[g] + w00 * xp[u(xi + o0)] + w01 * xp[u(xi + o1)]
                         + w02 * xp[u(xi + o2)] + w03 * xp[u(xi + o3)])
        t += 4
    while t < T:
        o0 = offs[t]
        w00 = w0[t]
        for s in range(n_seg):
            gb = s * Wp
            xb = s * stride_h * Wp + o0
            for j in range(seg_len):
                a0[u(gb + j)] += w00 * xp[u(xb + j * stride_w)]
        t += 1


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_forward_direct(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b on flattened padded planes (see the block comments above).

    Against conv2d_forward_naive:
    * task = (n, group, block of up to CO_BLOCK output channels of that group): the padded
      input planes of (n, group) are built once per task (one after the other in xp) and
      serve cb output channels;
    * no bounds test: taps reading the padding read the zeros of xp;
    * innermost loop = contiguous positions j of the flattened output grid, elementwise into
      the local accumulators acc[c] -> SIMD, without reordering any sum (fastmath=False):
      each y element is still b + sum over (ci_l, kh, kw) in that order (padding taps add 0);
    * register blocking: channels 4 at a time x taps 4 at a time (`_taps_4ch`), leftover
      channels one at a time (`_taps_1ch`, still 4 taps per pass).
    """
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, Ho, Wo)
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = w.shape
    Ho = y.shape[2]
    Wo = y.shape[3]
    C_out_g = C_out // groups
    Hp, Wp = _padded_extent(H, W, Ho, Wo, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    n_seg, seg_len = _segments(Ho, Wo, Wp, stride_h, stride_w)
    P = Hp * Wp
    offs = _tap_offsets(C_in_g, kH, kW, P, Wp, dil_h, dil_w)   # offs: (T,)
    wt = w.reshape(C_out, C_in_g * kH * kW)           # wt: (C_out, T) weights in tap order
    n_blk = (C_out_g + CO_BLOCK - 1) // CO_BLOCK     # channel blocks per group
    tasks_per_n = groups * n_blk
    for t in prange(N * tasks_per_n):                 # parallel over (n, g, block): owns y[n, co0:co0+cb]
        n = t // tasks_per_n
        r = t - n * tasks_per_n
        g = r // n_blk
        co0 = g * C_out_g + (r - g * n_blk) * CO_BLOCK
        cb = min(CO_BLOCK, (g + 1) * C_out_g - co0)   # channels in this block
        xp = np.empty(C_in_g * P, x.dtype)            # xp: (C_in_g*Hp*Wp,) padded input planes
        for ci_l in range(C_in_g):
            _pad_plane(x[n, g * C_in_g + ci_l], xp[ci_l * P:(ci_l + 1) * P], pad_top, pad_left, Wp)
        acc = np.empty((cb, Ho * Wp), y.dtype)        # acc: (cb, Ho*Wp) output grids
        for c in range(cb):
            arow = acc[c]                             # arow: (Ho*Wp,)
            bc = b[co0 + c]
            for j in range(Ho * Wp):
                arow[u(j)] = bc
        c = 0
        while c + 4 <= cb:
            _taps_4ch(acc[c], acc[c + 1], acc[c + 2], acc[c + 3],
                      wt[co0 + c], wt[co0 + c + 1], wt[co0 + c + 2], wt[co0 + c + 3],
                      xp, offs, n_seg, seg_len, Wp, stride_h, stride_w)
            c += 4
        while c < cb:
            _taps_1ch(acc[c], wt[co0 + c], xp, offs, n_seg, seg_len, Wp, stride_h, stride_w)
            c += 1
        for c in range(cb):
            _from_grid(acc[c], 0, Wp, y[n, co0 + c])


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_backward_input_direct(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = transposed conv of dy on a flattened padded plane (SCATTER form).

    Only used where the gather form (stride 1: a forward conv of dy, see
    `conv2d_backward_input`) does not apply, i.e. for stride > 1.

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
        dyg = np.empty(Ho * Wp, dx.dtype)             # dyg: (Ho*Wp,) dy[n, co] on the output grid
        for co in range(g * C_out_g, (g + 1) * C_out_g):
            _to_grid(dy[n, co], dyg, Wp)              # garbage columns 0
            for kh in range(kH):
                for kw in range(kW):
                    o = kh * dil_h * Wp + kw * dil_w
                    wv = w[co, ci_l, kh, kw]
                    for s in range(n_seg):
                        gb = s * Wp
                        xb = s * stride_h * Wp + o
                        for j in range(seg_len):
                            dxp[u(xb + j * stride_w)] += wv * dyg[u(gb + j)]
        _from_grid(dxp, pad_top * Wp + pad_left, Wp, dx[n, ci])


# Backward weight.  dw[co, ci_l, kh, kw] is a reduction over (n, oh, ow): a sum into ONE
# number, which fastmath=False will not let LLVM vectorise.  We vectorise it by hand: a
# buffer buf[t, j] keeps one partial sum per output-grid position j (SIMD lanes), and only
# at the end is each buf[t] summed (`_sum8`).  The register block here is 4 taps x 4
# samples: per pass over j,
#     d_i = dy_grid[n0+i, co, j]                                         4 loads (i < 4)
#     buf[t, j] = buf[t, j] + d_0*x_0[j+o_t] + d_1*x_1[j+o_t] + d_2*x_2[j+o_t] + d_3*x_3[j+o_t]
# for 4 taps t: 4 + 16 + 4 loads and 4 stores per 16 multiply-adds, against 3 loads and a
# store per multiply-add for one tap of one sample.  (Taps x output channels would also
# share loads, but needs a buffer per (channel, tap): 16 buffers to load and store.)
#
# Large planes (ResNet's 56x56) would make buf (kH*kW, Ho*Wp) too big for the L1 cache, and
# zeroing + summing it would cost as much as the accumulation (only N terms per element).
# So the output rows are cut into chunks of DW_CHUNK_ROWS rows (about DW_CHUNK positions),
# and every chunk accumulates into the SAME buf (position j of a chunk -> buf[j]): buf is
# (kH*kW, rows*Wp) and each element now sums over n and over the chunks, in a fixed order.
DW_CHUNK = 512


@njit(cache=True)
def _dw_taps_4n(buf, d0, d1, d2, d3, x0, x1, x2, x3, offs, n_seg, seg_len, gb0, xb0, Wp, stride_h, stride_w):
    """buf[t, b(j)] += sum_i d_i[grid j] * x_i[input(j) + offs[t]] over 4 samples i, all taps t.

    One chunk: segment s covers grid positions gb0 + s*Wp + [0, seg_len), buffer positions
    s*Wp + [0, seg_len) and input positions xb0 + s*sh*Wp + [0, seg_len)*sw (+ tap offset).
    """
    # buf: (K, rows*Wp)   d0..d3: (Ho*Wp,) dy grids   x0..x3: (Hp*Wp,) padded planes   offs: (K,)
    K = offs.shape[0]
    t = 0
    while t + 4 <= K:
        b0 = buf[t]                                   # b0..b3: (rows*Wp,)
        b1 = buf[t + 1]
        b2 = buf[t + 2]
        b3 = buf[t + 3]
        o0 = offs[t]
        o1 = offs[t + 1]
        o2 = offs[t + 2]
        o3 = offs[t + 3]
        for s in range(n_seg):
            gb = gb0 + s * Wp
            bb = s * Wp
            xb = xb0 + s * stride_h * Wp
            for j in range(seg_len):
                g = u(gb + j)
                k = u(bb + j)
                xi = xb + j * stride_w
                e0 = d0[g]
                e1 = d1[g]
                e2 = d2[g]
                e3 = d3[g]
                b0[k] = b0[k] + e0 * x0[u(xi + o0)] + e1 * x1[u(xi + o0)] + e2 * x2[u(xi + o0)] + e3 * x3[u(xi + o0)]
                b1[k] = b1[k] + e0 * x0[u(xi + o1)] + e1 * x1[u(xi + o1)] + e2 * x2[u(xi + o1)] + e3 * x3[u(xi + o1)]
                b2[k] = b2[k] + e0 * x0[u(xi + o2)] + e1 * x1[u(xi + o2)] + e2 * x2[u(xi + o2)] + e3 * x3[u(xi + o2)]
                b3[k] = b3[k] + e0 * x0[u(xi + o3)] + e1 * x1[u(xi + o3)] + e2 * x2[u(xi + o3)] + e3 * x3[u(xi + o3)]
        t += 4
    while t < K:
        b0 = buf[t]
        o0 = offs[t]
        for s in range(n_seg):
            gb = gb0 + s * Wp
            bb = s * Wp
            xb = xb0 + s * stride_h * Wp + o0
            for j in range(seg_len):
                g = u(gb + j)
                k = u(bb + j)
                xi = u(xb + j * stride_w)
                b0[k] = b0[k] + d0[g] * x0[xi] + d1[g] * x1[xi] + d2[g] * x2[xi] + d3[g] * x3[xi]
        t += 1


@njit(cache=True)
def _dw_taps_1n(buf, d0, x0, offs, n_seg, seg_len, gb0, xb0, Wp, stride_h, stride_w):
    """_dw_taps_4n for one sample (the N % 4 leftover ones), one tap per pass."""
    # buf: (K, rows*Wp)   d0: (Ho*Wp,) dy grid   x0: (Hp*Wp,) padded plane   offs: (K,)
    for t in range(offs.shape[0]):
        b0 = buf[t]                                   # b0: (rows*Wp,)
        o0 = offs[t]
        for s in range(n_seg):
            gb = gb0 + s * Wp
            bb = s * Wp
            xb = xb0 + s * stride_h * Wp + o0
            for j in range(seg_len):
                b0[u(bb + j)] += d0[u(gb + j)] * x0[u(xb + j * stride_w)]


@njit(cache=True, parallel=True, fastmath=False)
def _conv2d_backward_weight_direct(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = correlation of x with dy on flattened padded planes.

    Against conv2d_backward_weight_naive (which runs over co alone):
    * two parallel pre-passes lay out every padded input plane xp[n, ci] (Hp*Wp) and every
      dy[n, co] on the output grid dyg[n, co] (Ho*Wp, zeros in the garbage columns);
    * task = (co, ci_l): it owns the kH*kW weights dw[co, ci_l] (C_out*C_in_g tasks: more
      parallelism than C_out alone, e.g. 96 instead of 16 for LeNet's C3);
    * the naive scalar running sum per tap (latency-bound, and not vectorisable without
      fastmath) becomes the buffer buf[t, j] of partial sums, one per grid position (see the
      block comment above): innermost loop elementwise in j -> SIMD, 4 taps x 4 samples per
      pass (`_dw_taps_4n`); the output rows are taken in chunks that all fold onto buf;
    * at the end the garbage columns of buf are zeroed (exactly: they hold 0*x) and each
      buf[t] is summed with 8 interleaved running sums (`_sum8`).  Every sum is in a fixed
      order, whatever the number of threads.
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
    K = kH * kW
    offs = _tap_offsets(1, kH, kW, Hp * Wp, Wp, dil_h, dil_w)   # offs: (K,) taps of one plane
    rows = max(1, min(Ho, DW_CHUNK // Wp))            # output rows per chunk
    xp = np.empty((N, C_in, Hp * Wp), x.dtype)        # xp: (N, C_in, Hp*Wp) padded input planes
    for t in prange(N * C_in):
        n = t // C_in
        ci = t - n * C_in
        _pad_plane(x[n, ci], xp[n, ci], pad_top, pad_left, Wp)
    dyg = np.empty((N, C_out, Ho * Wp), dy.dtype)     # dyg: (N, C_out, Ho*Wp) dy on the output grid
    for t in prange(N * C_out):
        n = t // C_out
        co = t - n * C_out
        _to_grid(dy[n, co], dyg[n, co], Wp)
    for t in prange(C_out * C_in_g):                  # parallel over (co, ci_l): owns dw[co, ci_l]
        co = t // C_in_g
        ci_l = t - co * C_in_g
        ci = (co // C_out_g) * C_in_g + ci_l
        buf = np.zeros((K, rows * Wp), dw.dtype)      # buf: (K, rows*Wp) partial sums per position
        for r0 in range(0, Ho, rows):                 # chunk of output rows [r0, r1)
            r1 = min(Ho, r0 + rows)
            if stride_h == 1 and stride_w == 1:
                n_seg, seg_len = 1, (r1 - r0 - 1) * Wp + Wo
            else:
                n_seg, seg_len = r1 - r0, Wo
            gb0 = r0 * Wp                             # first grid position of the chunk
            xb0 = r0 * stride_h * Wp                  # its input position (tap 0)
            n = 0
            while n + 4 <= N:
                _dw_taps_4n(buf, dyg[n, co], dyg[n + 1, co], dyg[n + 2, co], dyg[n + 3, co],
                            xp[n, ci], xp[n + 1, ci], xp[n + 2, ci], xp[n + 3, ci],
                            offs, n_seg, seg_len, gb0, xb0, Wp, stride_h, stride_w)
                n += 4
            while n < N:
                _dw_taps_1n(buf, dyg[n, co], xp[n, ci], offs, n_seg, seg_len, gb0, xb0, Wp,
                            stride_h, stride_w)
                n += 1
        for k in range(K):
            bk = buf[k]                               # bk: (rows*Wp,)
            for r in range(rows):                     # drop the garbage columns (exactly)
                for ow in range(Wo, Wp):
                    bk[r * Wp + ow] = 0.0
            kh = k // kW
            dw[co, ci_l, kh, k - kh * kW] = _sum8(bk)


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

# ------------------------------------------------------------------ strided: polyphase
# A stride-s convolution is a SUM OF s_h*s_w STRIDE-1 CONVOLUTIONS. Write each tap as
# kh = a + s_h*i (a = kh mod s_h, the phase) and likewise kw = b + s_w*j. With xp the
# zero-padded input,
#     y[n, co, oh, ow] = sum_{a, b} sum_{ci, i, j} w[co, ci, a + s_h i, b + s_w j]
#                                              * xp[n, ci, s_h (oh + i) + a, s_w (ow + j) + b]
#                      = sum_{a, b} conv_stride1(x_ab, w_ab)[n, co, oh, ow]
# with the phase input x_ab = xp[:, :, a::s_h, b::s_w] and phase kernel w_ab = w[:, :, a::s_h, b::s_w]
# (ceil((kH - a)/s_h) x ceil((kW - b)/s_w) taps). Every MAC of the strided conv appears in
# exactly one phase, so the work is the same, but it runs on the fast stride-1 kernels. The
# gradients decompose the same way: dw[:, :, a::s_h, b::s_w] is the stride-1 weight gradient
# of phase (a, b), and d(xp)[:, :, a::s_h, b::s_w] its stride-1 input gradient (the phases
# own disjoint positions of xp, so nothing overlaps). Only data movement (padding, phase
# slices) happens outside the kernels.


@njit(cache=True, parallel=True, fastmath=False)
def _accumulate(dst, src):
    """dst += src (same shape, flat views): sums the phases' outputs in phase order."""
    # dst, src: (n,)
    n = dst.shape[0]
    for c in prange((n + 4095) // 4096):
        for i in range(c * 4096, min(n, c * 4096 + 4096)):
            dst[u(i)] += src[u(i)]


def _polyphase(x_shape, w_shape, y_shape, stride_h, stride_w):
    """The phases (a, b, taps_h, taps_w) and the padded-input extent (Hp, Wp) they need."""
    kH, kW = w_shape[2], w_shape[3]
    Ho, Wo = y_shape[2], y_shape[3]
    phases = [(a, b, -(-(kH - a) // stride_h), -(-(kW - b) // stride_w))
              for a in range(min(stride_h, kH)) for b in range(min(stride_w, kW))]
    Hp = stride_h * (Ho - 1 + -(-kH // stride_h))
    Wp = stride_w * (Wo - 1 + -(-kW // stride_w))
    return phases, Hp, Wp


def _padded(x, Hp, Wp, pad_top, pad_left):
    """xp: (N, C, Hp, Wp) = x placed at (pad_top, pad_left) in zeros, cropped to Hp x Wp."""
    N, C, H, W = x.shape
    xp = np.zeros((N, C, Hp, Wp), x.dtype)
    h1, w1 = min(H, Hp - pad_top), min(W, Wp - pad_left)
    xp[:, :, pad_top:pad_top + h1, pad_left:pad_left + w1] = x[:, :, :h1, :w1]
    return xp


def _phase_input(xp, a, b, stride_h, stride_w, rows, cols):
    """x_ab: (N, C, rows, cols), the contiguous phase (a, b) of the padded input."""
    return np.ascontiguousarray(xp[:, :, a::stride_h, b::stride_w][:, :, :rows, :cols])


def _use_polyphase(stride_h, stride_w, dil_h, dil_w):
    return (stride_h > 1 or stride_w > 1) and dil_h == 1 and dil_w == 1


def _forward_polyphase(x, w, b, y, stride_h, stride_w, pad_top, pad_left, groups):
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, Ho, Wo)
    phases, Hp, Wp = _polyphase(x.shape, w.shape, y.shape, stride_h, stride_w)
    xp = _padded(x, Hp, Wp, pad_top, pad_left)                 # xp: (N, C_in, Hp, Wp)
    Ho, Wo = y.shape[2], y.shape[3]
    part = np.empty_like(y) if len(phases) > 1 else y           # part: (N, C_out, Ho, Wo)
    zero_b = np.zeros_like(b)
    for p, (a, bb, th, tw) in enumerate(phases):
        x_ab = _phase_input(xp, a, bb, stride_h, stride_w, Ho + th - 1, Wo + tw - 1)
        w_ab = np.ascontiguousarray(w[:, :, a::stride_h, bb::stride_w])   # (C_out, C_in_g, th, tw)
        _conv2d_forward_direct(x_ab, w_ab, b if p == 0 else zero_b, y if p == 0 else part,
                               1, 1, 0, 0, 1, 1, groups)
        if p > 0:
            _accumulate(y.reshape(-1), part.reshape(-1))


def _backward_weight_polyphase(dy, x, dw, stride_h, stride_w, pad_top, pad_left, groups):
    # dy: (N, C_out, Ho, Wo)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    phases, Hp, Wp = _polyphase(x.shape, dw.shape, dy.shape, stride_h, stride_w)
    xp = _padded(x, Hp, Wp, pad_top, pad_left)                 # xp: (N, C_in, Hp, Wp)
    Ho, Wo = dy.shape[2], dy.shape[3]
    for a, b, th, tw in phases:
        x_ab = _phase_input(xp, a, b, stride_h, stride_w, Ho + th - 1, Wo + tw - 1)
        dw_ab = np.empty(dw.shape[:2] + (th, tw), dw.dtype)    # dw_ab: (C_out, C_in_g, th, tw)
        _conv2d_backward_weight_direct(dy, x_ab, dw_ab, 1, 1, 0, 0, 1, 1, groups)
        dw[:, :, a::stride_h, b::stride_w] = dw_ab


def _backward_input_polyphase(dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups):
    # dy: (N, C_out, Ho, Wo)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    phases, Hp, Wp = _polyphase(dx.shape, w.shape, dy.shape, stride_h, stride_w)
    N, C_in, H, W = dx.shape
    Ho, Wo = dy.shape[2], dy.shape[3]
    dxp = np.zeros((N, C_in, Hp, Wp), dx.dtype)                # dxp: (N, C_in, Hp, Wp)
    for a, b, th, tw in phases:
        w_ab = np.ascontiguousarray(w[:, :, a::stride_h, b::stride_w])   # (C_out, C_in_g, th, tw)
        dx_ab = np.empty((N, C_in, Ho + th - 1, Wo + tw - 1), dx.dtype)
        conv2d_backward_input(dy, w_ab, dx_ab, 1, 1, 0, 0, 1, 1, groups)
        dxp[:, :, a::stride_h, b::stride_w][:, :, :Ho + th - 1, :Wo + tw - 1] = dx_ab
    dx[...] = 0                                    # input rows/cols no window reaches get 0
    h1, w1 = min(H, Hp - pad_top), min(W, Wp - pad_left)
    dx[:, :, :h1, :w1] = dxp[:, :, pad_top:pad_top + h1, pad_left:pad_left + w1]


# ------------------------------------------------------------------ the contract names
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
    if _use_polyphase(stride_h, stride_w, dil_h, dil_w):
        _forward_polyphase(x, w, b, y, stride_h, stride_w, pad_top, pad_left, groups)
        return
    _conv2d_forward_direct(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = dL/dx (fully overwrites dx).  Stride 1: gather form on the forward kernel."""
    # dy: (N, C_out, Ho, Wo)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    if _is_dense(dx.shape, w.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out = dy.shape[0], dy.shape[1]
        _dense.linear_backward_input(dy.reshape(N, C_out), w.reshape(C_out, -1), dx.reshape(N, -1))
        return
    if _use_polyphase(stride_h, stride_w, dil_h, dil_w):
        _backward_input_polyphase(dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups)
        return
    C_out, C_in_g, kH, kW = w.shape
    # GATHER form (stride 1): with kh' = kH-1-kh, kw' = kW-1-kw,
    #     dx[n, ci, ih, iw] = sum_{co, kh', kw'} w[co, ci_l, kH-1-kh', kW-1-kw']
    #                                            * dy[n, co, ih - pt' + kh'*dh, iw - pl' + kw'*dw]
    # with pt' = (kH-1)*dh - pad_top, pl' = (kW-1)*dw - pad_left: a FORWARD conv of dy (C_out
    # input channels, padding pt'/pl', same groups) with the flipped, in/out-swapped weights
    # wf (C_in, C_out_g, kH, kW).  It runs on the register-blocked forward kernel and writes
    # each dx element once, instead of scattering into it C_out_g*kH*kW times.
    pt = (kH - 1) * dil_h - pad_top
    pl = (kW - 1) * dil_w - pad_left
    if stride_h == 1 and stride_w == 1 and pt >= 0 and pl >= 0:
        C_in = dx.shape[1]
        C_out_g = C_out // groups
        wf = np.ascontiguousarray(                    # wf: (C_in, C_out_g, kH, kW)
            w.reshape(groups, C_out_g, C_in_g, kH, kW).transpose(0, 2, 1, 3, 4)[:, :, :, ::-1, ::-1]
        ).reshape(C_in, C_out_g, kH, kW)
        _conv2d_forward_direct(dy, wf, np.zeros(C_in, dx.dtype), dx, 1, 1, pt, pl, dil_h, dil_w, groups)
        return
    _conv2d_backward_input_direct(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = dL/dw (fully overwrites dw)."""
    # dy: (N, C_out, Ho, Wo)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    if _is_dense(x.shape, dw.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out = dy.shape[0], dy.shape[1]
        _dense.linear_backward_weight(dy.reshape(N, C_out), x.reshape(N, -1), dw.reshape(C_out, -1))
        return
    if _use_polyphase(stride_h, stride_w, dil_h, dil_w):
        _backward_weight_polyphase(dy, x, dw, stride_h, stride_w, pad_top, pad_left, groups)
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
