"""The weight gradient of a convolution (groups 1) as one matrix product of packed panels
(GEMM), with a register-blocked 4 x 4 micro-kernel.

Formula.  With P = N*H_out*W_out positions p = (n, oh, ow) and K = C_in*kH*kW taps
k = (ci, kh, kw),

    dw[co, k] = sum_p dY[co, p] * X[k, p],   dY[co, p] = dy[n, co, oh, ow],
                                              X[k, p] = x[n, ci, oh*stride_h - pad_top + kh*dil_h,
                                                                 ow*stride_w - pad_left + kw*dil_w]

(0 outside the input): the weight gradient is dY (C_out x P) times X^T (P x K).  The lecture's
sum over (n, oh, ow) for each weight is one dot product of two rows of length P.

Why not the plane kernel (direct.conv2d_backward_weight, kept for grouped convs): it sums
along the padded planes of one image at a time; on a small plane (ResNet's 8 x 8 at 64
channels) its rows are short and each multiply-add costs loads and stores of partial sums
(0.12x PyTorch).  Here the batch is folded into the reduction (P = N*64 = 4096 terms at batch
64), and each task computes 4 x 4 tiles of dw (4 output channels x 4 taps) in 16 running sums
kept in registers across the reduction: 8 loads feed 16 multiply-adds.

Shifted rows (`geometry`).  For stride_w 1 the taps kw of a kernel row read one input row at
kw*dil_w further along, so X keeps ONE packed row per (ci, kh), laid on a grid of
Wq = W + max(pad_left, pad_right) columns per output row (the rows share their zero padding),
and tap kw is that row viewed from kw*dil_w on; dY is 0 in the Wq - W_out extra columns, which
adds (Wq/W_out - 1) of work and cuts the pack kW-fold.  For stride 1 both ways on planes of at
least 8*(kH-1)*dil_h rows the same holds for the rows: X keeps ONE row per ci, the padded
input plane on Hq = H + max(pad_top, pad_bottom) rows of Wq columns, tap (kh, kw) is it viewed
from kh*dil_h*Wq + kw*dil_w on, and dY is 0 in the extra rows too (16->16 on 32x32: 2.96 ->
2.42 ms, 32->32 on 16x16: 2.54 -> 2.32; on 8x8 the extra work lost: 2.40 -> 2.64, so those
keep a row per (ci, kh); measured with the padding on both sides, Wq = W_out + (kW-1)*dil_w,
before the rows shared it).  Those zeros meet real
inputs (0 x inf is NaN), so a dw holding a NaN or an inf is computed again by the naive kernel
(conv/__init__.py's dispatch: with a finite x those products are zeros, and a NaN or inf in x
that a true sum reads puts one in dw too).

Loop nest:
    pack     parallel over the rows of both panels (copies in strided runs, zeros outside):
               X[(ci[, kh][, kw]), :]                                      X: (rows, P_row)
               dY[co, :]                                                   dY: (C_out, P_row)
    tiles    parallel over (4 taps, one of S slices of P): every 4 x 4 tile of (co, tap) over
             the slice (_tile_4x4, SIMD over p; edges by _tile_1x4 and _dot); then the S partial
             sums of each dw element added in slice order

Optimizations:
    * the batch is part of the reduction (long rows even for 8 x 8 planes);
    * 16 independent running sums per tile (register blocking; no partial sums in memory);
    * the panels are scratch (workspace.py), reused across calls: a fresh 38 MB np.empty
      page-faulted 3 ms a call at ResNet-20's first stage, as much as the packing;
    * S slices of the reduction when there are few tap tiles (LeNet's C1: 7), so both threads
      have work; S comes from the shape (TASKS, MIN_SLICE), never from the thread count;
    * fastmath=True on the reductions only, so LLVM may reassociate each running sum into
      SIMD lanes; the order is fixed by the compiled code and the shape, and every dw element
      is summed by one task per slice, so results are the same for any number of threads
      (they differ from the naive order by rounding).
"""

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..registers import RUN, copy_run
from ..workspace import scratch
from .direct import TILE, plane_tiles
from .planes import inside, uidx

# Every groups-1 weight gradient takes this path while its packed X fits in MAX_PANEL bytes
# (direct.py and polyphase.py keep grouped convs and larger panels).  Measured against them at
# batch 64, float32, 2 threads (scratch panels, shifted rows for stride 1): LeNet C1 0.31 vs
# 0.33 ms, C3 0.38 vs 1.0, 3->16 3x3 on 32x32 0.70 vs 1.21, 16->16 on 32x32 2.7 vs 6.1,
# 32->32 on 16x16 2.3 vs 6.3, 64->64 on 8x8 2.3 vs 11.9, 64->64 on 32x32 (batch 16) 7.2 vs
# 25.4; strided (vs polyphase): 16->32 3x3 s2 on 32x32 2.0 vs 5.6, 1x1 s2 0.37 vs 1.03,
# 3->64 7x7 s2 on 224x224 (batch 8) 30 vs 40.
ROW_PAD = 16  # elements between packed rows beyond P and the shifted views' reach (see geometry)
MAX_PANEL = 1 << 26  # 64 MB for X (K x P): ResNet-50's layers at batch 256 would need GBs
TASKS = 32  # parallel tasks wanted at least (a fixed number: results must not depend on threads)
MIN_SLICE = 2048  # positions per slice of the reduction, at least
ROW_SHIFT_PLANE = 8  # rows of output plane per (kH-1)*dil_h extra grid row, at least (see geometry)


def use_gemm(
    dy_shape, w_shape, x_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, itemsize
):
    """True when the weight gradient of dy: (N, C_out, H_out, W_out) for w: (C_out, C_in, kH,
    kW) and x: (N, C_in, H, W) should take this path: groups 1, at least one image, X's panel
    within MAX_PANEL."""
    g = geometry(dy_shape, w_shape, x_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    panel = w_shape[1] * g.kH_packed * g.kW_packed * g.P_row * itemsize
    return groups == 1 and dy_shape[0] > 0 and panel <= MAX_PANEL


# The row packers are inlined into their parallel kernels at Numba's IR level
# (inline="always"): a parallel kernel's helpers are otherwise compiled on their own and then
# optimised and compiled again inside each layer Numba builds around a prange body.  Measured
# from an empty cache: _pack 4.2 -> 2.5 s alone, the README's first batch 20.6-20.9 -> 19.4 s;
# the packs time the same.
@njit(cache=True, inline="always")
def _pack_x_rows(x, row, at, n, q0, q1, ci, kh, kw, Wq, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """row[at + (q - q0)*Wq + c] = x[n, ci, q*stride_h - pad_top + kh*dil_h, c*stride_w -
    pad_left + kw*dil_w] for the grid rows q0 <= q < q1 of image n and c < Wq, 0 in the padding.

    The rows' span is zeroed in one fill, then per grid row inside the input the columns whose
    input is inside, [c_lo, c_hi), are copied (stride_w 1: masked vector copies of up to 16,
    `registers.copy_run`; else a strided loop, unsigned indices: vectorised).  The fill had
    been four loops per row (a row outside, the columns left and right of the copy): the same
    speed (16->16 3x3 forward 1.21-1.35 vs 1.23-1.26 ms, 16->32 stride 2 0.98-1.05 vs 0.98, in
    alternating processes), less code to compile in every kernel that inlines this
    (outer._forward_blocks 2.61 -> 2.48 s, gemm._pack 1.85 -> 1.70 s).  (planes.split_plane
    copies its rows the same way; a helper shared by both, called per row, measured the packs
    2-3x slower, and planes._strided_plane inlined per image 1.15-1.35x slower (8x8: 0.26 ->
    0.33 ms), so each keeps its loops.)"""
    # x: (N, C_in, H, W)   row: (>= at + (q1 - q0)*Wq,)
    H, W = x.shape[2], x.shape[3]
    off = kw * dil_w - pad_left  # iw = c*stride_w + off
    c_lo, c_hi = inside(off, stride_w, W, Wq)
    for i in range(at, at + (q1 - q0) * Wq):  # zeros first (one fill), then the inside's copies
        row[uidx(i)] = 0.0
    for q in range(q0, q1):
        ih = q * stride_h - pad_top + kh * dil_h
        if ih < 0 or ih >= H:
            continue
        x_row = x[n, ci, ih]  # x_row: (W,)
        base = at + (q - q0) * Wq
        if stride_w == 1:
            for c in range(c_lo, c_hi, RUN):  # masked vector copies: rows of 10 are not scalar
                copy_run(row, base + c, x_row, c + off, min(RUN, c_hi - c))
        else:
            for c in range(c_lo, c_hi):
                row[uidx(base + c)] = x_row[uidx(c * stride_w + off)]


@njit(cache=True, inline="always")
def _pack_dy_row(dy, row, co, Wq, Hq):
    """row[(n, oh, c)] = dy[n, co, oh, c] for oh < H_out, c < W_out; 0 in the Wq - W_out extra
    columns, the Hq - H_out extra rows and to the row's end."""
    # dy: (N, C_out, H_out, W_out)   row: (P_row,) with P_row >= N*Hq*Wq
    N, _, H_out, W_out = dy.shape
    plane = Hq * Wq
    for n in range(N):
        for oh in range(H_out):
            dy_row = dy[n, co, oh]  # dy_row: (W_out,)
            base = n * plane + oh * Wq
            for c in range(0, W_out, RUN):  # masked vector copies (rows of 10 are not scalar)
                copy_run(row, base + c, dy_row, c, min(RUN, W_out - c))
            for c in range(W_out, Wq):
                row[uidx(base + c)] = 0.0
        for i in range(n * plane + H_out * Wq, (n + 1) * plane):
            row[uidx(i)] = 0.0
    for i in range(N * plane, row.shape[0]):
        row[i] = 0.0


@njit(cache=True, parallel=True)
def _pack(x, dy, X, D, kH_packed, kW_packed, Hq, Wq, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Both panels in one parallel loop (one parallel kernel: less JIT), a row per task: X's
    row r = (ci, kh, kw) of the kH_packed x kW_packed packed taps per input channel (kH x kW,
    fewer where taps are shifted views of one row: see geometry), then D's rows."""
    # x: (N, C_in, H, W)   dy: (N, C_out, H_out, W_out)   X: (rows, P_row)   D: (C_out, P_row)
    R, C_out = X.shape[0], D.shape[0]
    for r in prange(R + C_out):
        if r < R:
            ci = r // (kH_packed * kW_packed)
            kh = (r // kW_packed) % kH_packed
            kw = r % kW_packed
            row = X[r]  # row: (P_row,) all the images' grids, then zeros (shifted views read them)
            for n in range(x.shape[0]):
                _pack_x_rows(x, row, n * Hq * Wq, n, 0, Hq, ci, kh, kw, Wq,
                             stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
            for i in range(x.shape[0] * Hq * Wq, row.shape[0]):
                row[i] = 0.0
        else:
            _pack_dy_row(dy, D[r - R], r - R, Wq, Hq)


@njit(cache=True, fastmath=True)
def _tile_4x4(a0, a1, a2, a3, b0, b1, b2, b3, P):
    """The 16 dot products a_i . b_j of four rows of dY and four rows of X, over their first
    P elements."""
    # a0..a3, b0..b3: (P_row,), P <= P_row
    z = a0.dtype.type(0.0)
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = z
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = z
    for p in range(P):
        x0, x1, x2, x3 = b0[p], b1[p], b2[p], b3[p]
        d = a0[p]
        s00 += d * x0
        s01 += d * x1
        s02 += d * x2
        s03 += d * x3
        d = a1[p]
        s10 += d * x0
        s11 += d * x1
        s12 += d * x2
        s13 += d * x3
        d = a2[p]
        s20 += d * x0
        s21 += d * x1
        s22 += d * x2
        s23 += d * x3
        d = a3[p]
        s30 += d * x0
        s31 += d * x1
        s32 += d * x2
        s33 += d * x3
    return (s00, s01, s02, s03, s10, s11, s12, s13, s20, s21, s22, s23, s30, s31, s32, s33)


@njit(cache=True, fastmath=True)
def _tile_1x4(a, b0, b1, b2, b3, P):
    """The 4 dot products a . b_j over the first P elements (an edge tile's row or column)."""
    # a, b0..b3: (P_row,), P <= P_row
    z = a.dtype.type(0.0)
    s0 = s1 = s2 = s3 = z
    for p in range(P):
        d = a[p]
        s0 += d * b0[p]
        s1 += d * b1[p]
        s2 += d * b2[p]
        s3 += d * b3[p]
    return s0, s1, s2, s3


@njit(cache=True, fastmath=True)
def _dot(a, b, P):
    """a . b over the first P elements of two rows (an edge tile's corner element)."""
    # a, b: (P_row,), P <= P_row
    s = a.dtype.type(0.0)
    for p in range(P):
        s += a[p] * b[p]
    return s


@njit(cache=True)
def _tile_task(D, X, part, krow, kshift, k0, p0, p1):
    """part[co, k0:k0+4] = D[co, p0:p1] . Xk[p0:p1] for every co, where tap k's row of X^T is
    Xk = X[krow[k], kshift[k]:] (a view: packed rows are shared by the taps of a kernel row);
    4 x 4 tiles of D's rows past 4 taps, edge tiles by _tile_1x4 and _dot."""
    # D: (C_out, P_row)   X: (rows, P_row)   part: (C_out, K)   krow, kshift: (K,)
    C_out, K = part.shape
    L = p1 - p0
    k1 = min(k0 + 4, K)
    x0 = X[krow[k0], p0 + kshift[k0] :]  # x0..x3: the 4 taps' rows from p0 on
    x1 = X[krow[k0 + 1], p0 + kshift[k0 + 1] :] if k1 - k0 > 1 else x0
    x2 = X[krow[k0 + 2], p0 + kshift[k0 + 2] :] if k1 - k0 > 2 else x0
    x3 = X[krow[k0 + 3], p0 + kshift[k0 + 3] :] if k1 - k0 > 3 else x0
    for c0 in range(0, C_out, 4):
        c1 = min(c0 + 4, C_out)
        if c1 - c0 == 4 and k1 - k0 == 4:
            s = _tile_4x4(D[c0, p0:], D[c0 + 1, p0:], D[c0 + 2, p0:], D[c0 + 3, p0:], x0, x1, x2, x3, L)
            for i in range(4):
                for j in range(4):
                    part[c0 + i, k0 + j] = s[i * 4 + j]
        elif k1 - k0 == 4:  # leftover rows of D: one row past the 4 taps
            for co in range(c0, c1):
                s4 = _tile_1x4(D[co, p0:], x0, x1, x2, x3, L)
                for j in range(4):
                    part[co, k0 + j] = s4[j]
        else:  # leftover taps: one tap past 4 (or fewer) rows of D
            for k in range(k0, k1):
                xk = X[krow[k], p0 + kshift[k] :]
                if c1 - c0 == 4:
                    s4 = _tile_1x4(xk, D[c0, p0:], D[c0 + 1, p0:], D[c0 + 2, p0:], D[c0 + 3, p0:], L)
                    for i in range(4):
                        part[c0 + i, k] = s4[i]
                else:
                    for co in range(c0, c1):
                        part[co, k] = _dot(D[co, p0:], xk, L)


@njit(cache=True, parallel=True)
def _tiles(D, X, out, krow, kshift, P, S):
    """out[co, k] = D[co, :P] . X[k, :P]: a task per (4 rows of X, one of S slices of P) computes
    the 4 x 4 tiles of its slice against every tile of D's rows (its X rows stay in cache while
    they pass, so X is read from memory once); the S partial sums of each element are then added
    in slice order (S is set by the shape alone, so results do not depend on the thread count)."""
    # D: (C_out, P_row)   X: (rows, P_row)   out: (C_out, K)   krow, kshift: (K,) (see _tile_task)
    C_out, K = out.shape
    part = np.empty((S, C_out, K), out.dtype)  # part: (S, C_out, K) partial sums per slice
    chunk = (P + S - 1) // S
    n_kt = (K + 3) // 4
    for t in prange(n_kt * S):
        kt = t // S
        sl = t - kt * S
        p0 = min(P, sl * chunk)
        _tile_task(D, X, part[sl], krow, kshift, kt * 4, p0, min(P, p0 + chunk))
    for co in range(C_out):
        for k in range(K):
            acc = part[0, co, k]
            for sl in range(1, S):
                acc += part[sl, co, k]
            out[co, k] = acc


def slices(K, P):
    """S, the slices of the reduction P per tile of X's rows: enough tasks for TASKS in all
    (small K, such as LeNet's C1 with 7 tiles) while a slice keeps >= MIN_SLICE positions."""
    n_kt = (K + 3) // 4
    return max(1, min(-(-TASKS // n_kt), P // MIN_SLICE))


class Grid(NamedTuple):
    """The packed panels' layout: kH_packed x kW_packed rows of X per input channel, each on a
    grid of Hq x Wq positions per image, P = N*Hq*Wq of them, rows P_row apart.  Along each
    axis, tap kh reads packed row kh % kH_packed from (kh // kH_packed)*dil_h grid rows on
    (`_tap_rows`): one shifted row (kH_packed 1), a row per tap (kH_packed kH) or, for a
    stride s, a row per phase (kH_packed s)."""

    kH_packed: int
    kW_packed: int
    Hq: int
    Wq: int
    P: int
    P_row: int


@functools.lru_cache(maxsize=1024)
def geometry(
    dy_shape,
    w_shape,
    x_shape,
    stride_h,
    stride_w,
    pad_top,
    pad_left,
    dil_h,
    dil_w,
    row_shift_plane=ROW_SHIFT_PLANE,
    tap_columns=False,
):
    """The Grid of the packed panels.

    For stride_w 1 the taps kw of one kernel row read the same input row shifted by kw*dil_w,
    so X packs ONE row per (ci, kh) on a grid of Wq columns per output row, column c holding
    input column c - pad_left (0 in the padding), and tap kw is that row read from kw*dil_w
    on; dY is 0 in the Wq - W_out extra columns.  The pack is kW times smaller for Wq / W_out
    times the multiply-adds (C3: 5x smaller, 1.4x the work; a 3x3 conv on 32x32: 3x, 1.03x).
    Wq = W + the wider of the two paddings: the rows share their zero padding (a tap that
    reads past a row's right padding lands in the next row's left padding, also zeros), so a
    3x3 "same" conv on 8x8 has rows of 9, not 8 + 2 + 2 - 2 = 10 (the work 1.25x -> 1.125x).
    With stride_h 1 too, and a plane of at least ROW_SHIFT_PLANE rows per extra grid row, the
    kernel rows are shifted views as well: ONE row per ci on Hq = H + the wider of the top and
    bottom paddings (the images share theirs likewise), tap (kh, kw) read from kh*dil_h*Wq +
    kw*dil_w on, dY 0 in the extra rows.  Otherwise one row per tap on the H_out x W_out grid,
    except for a stride s shorter than an undilated kernel: then one row per phase (column c
    of phase b holds input column c*s - pad_left + b), on W_out + (kW - 1) // s columns (and
    so for the rows, with the stride-1 rule's plane bound), tap kw read from phase kw % s,
    kw // s along it (3x3 stride 2: 4 rows per ci, not 9).  tap_columns (the forward's row
    tiles, outer.forward_plan): for stride_w 1 a row per tap column kw instead, on Wq = W_out
    columns (column c of row kw holds input column c - pad_left + kw*dil_w), the rows shared
    as for shifted rows: a grid as wide as the output rows."""
    N, _, H_out, W_out = dy_shape
    kH, kW = w_shape[2], w_shape[3]
    H, W = x_shape[2], x_shape[3]
    shifted = stride_w == 1 and kW > 1
    reach_w = (kW - 1) * dil_w  # how far a row's last tap reads past its first
    pad_right = W_out - 1 + reach_w - pad_left - (W - 1)  # the padding the taps read past W
    if shifted and not tap_columns:
        kW_packed, Wq = 1, max(W_out, W + max(pad_left, pad_right))
    elif dil_w == 1 and 1 < stride_w < kW:  # a row per phase
        kW_packed, Wq = stride_w, W_out + (kW - 1) // stride_w
    else:
        kW_packed, Wq = kW, W_out
    reach_h = (kH - 1) * dil_h
    shifted_h = (shifted or tap_columns) and stride_h == 1 and kH > 1 and H_out >= row_shift_plane * reach_h
    pad_bottom = H_out - 1 + reach_h - pad_top - (H - 1)
    if shifted_h:
        kH_packed, Hq = 1, max(H_out, H + max(pad_top, pad_bottom))
    elif dil_h == 1 and 1 < stride_h < kH and H_out >= row_shift_plane * ((kH - 1) // stride_h):
        kH_packed, Hq = stride_h, H_out + (kH - 1) // stride_h
    else:
        kH_packed, Hq = kH, H_out
    P = N * Hq * Wq
    # Rows P_row = P + tail elements apart: the shifted views read up to (their last tap's
    # shift) past P, and 8 rows a power of two apart (P = 64 x 64 = 4096) would fall into the
    # same L1 sets and thrash them (2 threads on sibling cores: 2x slower than one); a cache
    # line more spreads them.
    P_row = P + ROW_PAD + (kH - 1) // kH_packed * dil_h * Wq + (kW - 1) // kW_packed * dil_w
    return Grid(kH_packed, kW_packed, Hq, Wq, P, P_row)


@functools.lru_cache(maxsize=256)
def _tap_rows(C_in, kH, kW, grid, dil_h, dil_w):
    """(krow, kshift): tap k = (ci, kh, kw)'s packed row of X and its shift along it,
    remembered per geometry (building them cost more than a small layer's pack; the kernels
    only read them)."""
    k = np.arange(C_in * kH * kW)
    ci, kh, kw = k // (kH * kW), (k // kW) % kH, k % kW
    kHp, kWp = grid.kH_packed, grid.kW_packed  # 1: shifted rows, kH: a row per tap, s: phases
    krow = (ci * kHp + kh % kHp) * kWp + kw % kWp  # krow: (K,)
    kshift = kh // kHp * dil_h * grid.Wq + kw // kWp * dil_w  # kshift: (K,)
    return krow, kshift


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """dw = dL/dw for groups 1 (fully overwrites dw), through the packed panels above."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in, kH, kW)
    C_out = dy.shape[1]
    C_in, kH, kW = dw.shape[1:]
    g = geometry(dy.shape, dw.shape, x.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    K = C_in * kH * kW
    krow, kshift = _tap_rows(C_in, kH, kW, g, dil_h, dil_w)
    # the panels are scratch (workspace.py): reused across calls, not fresh pages each time
    X = scratch("conv_gemm_X", (C_in * g.kH_packed * g.kW_packed, g.P_row), x.dtype)  # X: (rows, P_row)
    D = scratch("conv_gemm_D", (C_out, g.P_row), dy.dtype)  # D: (C_out, P_row)
    _pack(
        x, dy, X, D, g.kH_packed, g.kW_packed, g.Hq, g.Wq, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w
    )
    _tiles(D, X, dw.reshape(C_out, K), krow, kshift, g.P, slices(K, g.P))


# --------------------------------------------------------------------------- forward
# The forward is the same product the other way round: y[n, co, oh, ow] = b[co] + sum_k
# w[co, k] * x(receptive field of (n, oh, ow))[k], a dot product over the K taps.  The
# micro-kernel wants both rows contiguous along k: the weights reordered to (co, kh, kw, ci)
# and, in the input's channels-last copy xh (N, Hp, Wp, C), row kh of a receptive field is
# ONE run of kW*C values.  A task (an output row) packs the receptive fields of its W_out
# positions from kH runs each (memcpy-like: vectorised) and passes 4 x 4 tiles of (output
# channels, positions) over them.  It pays off when K is long (horizontal sums and packing
# per output are amortised) and the planes are small (the plane kernel's loops are short):
# `use_gemm_forward`.
MIN_K_FORWARD = 256  # taps, at least
MIN_GRID_USE = 0.55  # below this share of real outputs on direct.py's tiled grid, this path


def use_gemm_forward(x_shape, w_shape, y_shape, stride_w, dil_h, dil_w, groups):
    """True when the forward of x for w (and the gather input gradient, the same conv on dy)
    should take this path: long reductions on planes so small that direct.py's register tiles
    would mostly compute garbage positions (`grid_use` < MIN_GRID_USE).

    Measured at batch 64, 2 threads, against direct.py with its 8 x 16 register tiles: 64->64
    3x3 on 4x4 (16 real outputs of 32 computed) 1.87 vs 3.38 ms; but on 8x8 (64 of 80) 2.2 vs
    2.0, 32->64 3x3 stride 2 to 8x8 1.53 vs 1.27, 16->16 5x5 on 10x10 0.45 vs 0.30 (the plane
    kernel without the tiles had lost to it on all three: 0.56x, 0.41x, 0.66x).  With 8 x 32
    tiles (AVX-512; Xeon, one thread / two): 4x4 (16 of 32) 1.62 / 1.17 vs 2.94 / 1.36 ms, but
    6x6 (36 of 64) 4.29 / 3.09 vs 2.69 / 2.21 and 8x8 (64 of 96) 6.77 / 4.06 vs 3.63 / 2.84:
    hence 0.55, between 4x4's 0.5 and 6x6's 0.56 (with 16-position tiles 6x6 uses 0.75)."""
    C_in, kH, kW = w_shape[1], w_shape[2], w_shape[3]
    K = C_in * kH * kW
    small = grid_use(y_shape, kW, stride_w, dil_w) < MIN_GRID_USE
    return groups == 1 and dil_h == 1 and dil_w == 1 and K >= MIN_K_FORWARD and small and x_shape[0] > 0


def grid_use(y_shape, kW, stride_w, dil_w):
    """The share of the positions direct.py's forward computes on its phase planes that are
    real outputs (`direct.plane_tiles` register tiles of direct.TILE positions)."""
    return y_shape[2] * y_shape[3] / (plane_tiles(y_shape, kW, stride_w, dil_w) * TILE)


@njit(cache=True, parallel=True)
def _channels_last(x, xh, pad_top, pad_left):
    """xh[n, r, c, ci] = x[n, ci, r - pad_top, c - pad_left], 0 outside x (the padding)."""
    # x: (N, C, H, W)   xh: (N, Hp, Wp, C)
    N, C, H, W = x.shape
    Hp, Wp = xh.shape[1], xh.shape[2]
    for t in prange(N * Hp):  # parallel over (n, padded row): owns xh[n, r]
        n = t // Hp
        r = t - n * Hp
        row = xh[n, r].reshape(Wp * C)  # row: (Wp*C,)
        for i in range(Wp * C):
            row[uidx(i)] = 0.0
        ih = r - pad_top
        if 0 <= ih < H:
            for ci in range(C):
                x_row = x[n, ci, ih]  # x_row: (W,)
                for iw in range(W):
                    row[uidx((iw + pad_left) * C + ci)] = x_row[uidx(iw)]


@njit(cache=True, parallel=True)
def _forward_rows(xh, wk, b, y, kH, kW, stride_h, stride_w):
    """y[n, :, oh, :] for every (n, oh): a task packs its row's receptive fields (xt) and
    computes 4 x 4 tiles of (output channels, positions) with _tile_4x4 (edges: _tile_1x4)."""
    # xh: (N, Hp, Wp, C)   wk: (C_out, kH*kW*C)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    N, Hp, Wp, C = xh.shape
    C_out = wk.shape[0]
    H_out, W_out = y.shape[2], y.shape[3]
    K = kH * kW * C
    run = kW * C  # one kernel row of a receptive field: contiguous in xh
    for t in prange(N * H_out):  # parallel over output rows (n, oh): owns y[n, :, oh]
        n = t // H_out
        oh = t - n * H_out
        xt = np.zeros((W_out + 3, K), xh.dtype)  # xt: (W_out+3, K) receptive fields (3 rows of 0)
        for ow in range(W_out):
            field = xt[ow]  # field: (K,)
            for kh in range(kH):
                src = xh[n, oh * stride_h + kh].reshape(Wp * C)  # src: (Wp*C,) a padded row
                at = ow * stride_w * C
                for i in range(run):
                    field[uidx(kh * run + i)] = src[uidx(at + i)]
        for c0 in range(0, C_out, 4):
            for p0 in range(0, W_out, 4):
                n_p = min(4, W_out - p0)
                if c0 + 4 <= C_out:
                    s = _tile_4x4(wk[c0], wk[c0 + 1], wk[c0 + 2], wk[c0 + 3],
                                  xt[p0], xt[p0 + 1], xt[p0 + 2], xt[p0 + 3], K)  # fmt: skip
                    for i in range(4):
                        for j in range(n_p):
                            y[n, c0 + i, oh, p0 + j] = b[c0 + i] + s[i * 4 + j]
                else:
                    for co in range(c0, C_out):
                        s4 = _tile_1x4(wk[co], xt[p0], xt[p0 + 1], xt[p0 + 2], xt[p0 + 3], K)
                        for j in range(n_p):
                            y[n, co, oh, p0 + j] = b[co] + s4[j]


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left):
    """y = conv2d(x, w) + b for groups 1 and dilation 1 (fully overwrites y), as dot products
    of the reordered weights with the receptive fields of a channels-last copy of x.  Sums
    in a fixed order (independent of the thread count), not the naive order: results agree
    with it to rounding."""
    # x: (N, C_in, H, W)   w: (C_out, C_in, kH, kW)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    N, C_in = x.shape[:2]
    C_out, _, kH, kW = w.shape
    H_out, W_out = y.shape[2], y.shape[3]
    Hp = max(x.shape[2] + pad_top, (H_out - 1) * stride_h + kH)  # every row a field reads
    Wp = max(x.shape[3] + pad_left, (W_out - 1) * stride_w + kW)
    xh = scratch("conv_gemm_xh", (N, Hp, Wp, C_in), x.dtype)  # xh: (N, Hp, Wp, C_in)
    _channels_last(x, xh, pad_top, pad_left)
    wk = np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(C_out, kH * kW * C_in)  # (co, kh, kw, ci)
    _forward_rows(xh, wk, b, y, kH, kW, stride_h, stride_w)
