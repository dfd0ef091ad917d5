"""Convolutions (groups 1) as outer products on blocks packed into cache: the weight gradient
of ResNet- and VGG-sized layers, vectorised over output channels, and the forward (with it
the gather input gradient) of convs with at least 6 output channels, stride 1 or undilated
(strided: a packed row per phase of the stride, gemm.geometry), vectorised over
positions (the forward's section below), over output channels on small planes with many
channels (the next section), or over pieces of output rows where the rows are whole vectors
or the grid is as wide as them (the last section).

Formula (as gemm.py's).  With positions p = (n, oh, ow) and taps k = (ci, kh, kw),

    dw[co, k] = sum_p dY[co, p] * X[k, p],   dY[co, p] = dy[n, co, oh, ow],
                                              X[k, p] = x[n, ci, oh*stride_h - pad_top + kh*dil_h,
                                                                 ow*stride_w - pad_left + kw*dil_w]

Why another form.  gemm.py computes each dw element as a dot product of two rows of length
P, 16 of them at a time, SIMD along p: every task streams all of dY's rows past its four X
rows, from L2 or L3 (44-61 GFLOP/s on one Xeon core, bound by those streams, not by its
FMAs).  Here the sum over p is a sequence of OUTER products: at each position, the column
dY^T[p, c0:c0+LANES] (one vector: dY transposed so that the output channels are contiguous)
times TAPS inputs X[k0:k0+TAPS, p] (broadcast scalars) adds into TAPS x LANES sums held in
registers.  Each SIMD lane is one dw element, summed over p in order: no horizontal sums, no
reordering (FMA contraction only, planes.FMA), so the result does not depend on the threads.

Blocks.  The reduction is cut into blocks of about BLOCK positions (m whole images on planes
of up to 2*BLOCK grid positions, else a band of grid rows of one image).  A task owns a slice
of the blocks (and one group of output channels where there are few slices); per block it
packs X's rows (gemm.py's grid: one row per (ci[, kh][, kw]), taps of a kernel row are views
of one row shifted along it) and dY^T into its own buffers, which stay in L2, and passes every
(TAPS taps, LANES channels) tile over them, the block's LANES columns of dY^T in L1.  The
slices' partial sums are added in slice order.

Loop nest:
    for (slice, channel group) in prange:            part[slice]: (Kp, Cp) partial sums
        for block in slice:                          L <= ~BLOCK positions
            pack X rows (rows + 1, LB), dY^T (L, Cp)  (the last X row: zeros, for Kp - K taps)
            for LANES channels c0 of the group:
                for TAPS taps k0:  s[TAPS, LANES] (registers) over p < L
    dw[co, k] = sum over slices of part[slice, k, co]

Optimizations:
    * TAPS x LANES = 16 x 16 float32 sums in 16 zmm registers (AVX-512; 16 x 8 in ymm with
      AVX2), each FMA takes its broadcast input straight from memory;
    * a 3x3 kernel on shifted rows: 18 taps (two input channels) x 1 vector from 2 row
      addresses (`_outer_tile_3x3`, `use_3x3_tile`), each input broadcast from memory into its
      FMA, no general-register spill;
    * where a task has two vectors of channels left (AVX-512), TAPS_2 x 2 vectors = 8 x 32
      sums instead (`_outer_tile_2`): each input broadcast once into a register for two
      multiply-adds, 11 loads for 16 of them where the 16 x 16 tile takes 17 (and 16 input
      addresses, more than the 16 general registers hold: 6 reloaded at every position).
      Interleaved in one process, 2 threads, Xeon (Sapphire Rapids class) VM (ms): 32->32 on
      16x16 1.72 -> 1.47, VGG 64->64 on 32x32 (batch 32) 11.9 -> 9.9; 1 thread 3.30 -> 2.76
      and 23.6 -> 19.7.  The same bits: each sum still runs over the positions in order;
    * the packed block stays in cache (for moderate C_in): x and dy are read once per channel
      group, the packed panels never go to memory;
    * dY^T is packed a grid row at a time, so its rows stay in L1 while the channels scatter;
    * stride_w 1 rows are contiguous copies (vectorised);
    * slices and channel groups come from the shape alone (results independent of threads).

Measured against gemm.py at batch 64, float32, Xeon (Emerald Rapids) VM, 2 threads / 1
thread, same process, interleaved (ms): 3->16 3x3 on 32x32 1.05 / 2.01 -> 0.72 / 1.40;
16->16 on 32x32 3.34 / 6.98 -> 1.97 / 4.00 (PyTorch 2.19 on 2 threads); 32->32 on 16x16
2.50 / 5.36 -> 1.70 / 3.98; 16->32 3x3 stride 2 2.44 / 4.89 -> 1.62 / 3.28; 16->32 1x1
stride 2 0.49 / 0.72 -> 0.34 / 0.69; VGG 64->64 on 32x32 (batch 16) 10.40 / 25.29 -> 7.18 /
14.18 (PyTorch 9.0).  Small output planes lose (the pack's short rows): 64->64 on 8x8 2.69 ->
2.86, 32->64 stride 2 to 8x8 1.79 -> 2.14, LeNet's C3 (10x10) 0.39 -> 0.52; so does LeNet's
C1 (6 channels in a 16-lane vector) 0.33 -> 0.44.  Those stay on gemm.py (`use_outer`).
"""

import functools
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..registers import VECTOR_BITS, prefer_vector_width, prefetch, stack_array
from ..workspace import scratch
from .gemm import MAX_PANEL, ROW_PAD, Grid, _pack_x_rows, _tap_rows, geometry
from .planes import FMA, uidx

LANES = VECTOR_BITS // 32  # float32 lanes per vector (16 with AVX-512): dw's channels per tile
TAPS = 16  # taps per tile (the 16 x_t in _outer_tile)
TAPS_2 = 8  # taps per two-vector tile (_outer_tile_2: 8 x 2 vectors of sums)
TWO_VECTOR_TILES = VECTOR_BITS >= 512  # 16 sums + 2 + 1 vectors: 32 zmm (AVX2's 16 ymm would spill)
DW_SUMS = TAPS * LANES  # the tile's stack array (a compile-time constant)
TAPS_3X3 = 18  # taps per 3x3 tile (_outer_tile_3x3: two input channels' 9)
SUMS_3X3 = TAPS_3X3 * LANES
TAPS_ANY = 144  # taps in whole tiles of 16, of 8 and of 18 (a 3x3 kernel's: `use_3x3_tile`)
BLOCK = 1024  # positions per block, about
SLICES = 8  # slices of the blocks (a fixed number: results must not depend on the threads)
MIN_TASKS = 8  # tasks (slices x channel groups) wanted at least
PART_BYTES = 1 << 24  # the slices' partial sums of dw (S copies of it), at most (16 MB)
MIN_PLANE = 256  # output positions per image, at least (16x16: measured faster; 10x10 slower)


def use_outer(dy_shape, w_shape, groups):
    """True when the weight gradient of dy: (N, C_out, H_out, W_out) for w: (C_out, C_in, kH,
    kW) should take this path: groups 1, at least one image, at least LANES output channels
    and MIN_PLANE output positions per image (see the module docstring for the figures)."""
    N, C_out, H_out, W_out = dy_shape
    return groups == 1 and N > 0 and C_out >= LANES and H_out * W_out >= MIN_PLANE


@njit(cache=True, inline="always")
def _pack_dy_rows(dy, Dt, at, n, q0, q1, Wq):
    """Dt[at + (q - q0)*Wq + c, co] = dy[n, co, q, c] for the grid rows q0 <= q < q1 of image n
    and c < Wq: 0 in the Wq - W_out extra columns, in the extra rows q >= H_out and in the
    channels co >= C_out that round Dt's rows up to whole vectors."""
    # dy: (N, C_out, H_out, W_out)   Dt: (>= at + (q1 - q0)*Wq, Cp), a row per grid position
    C_out, H_out, W_out = dy.shape[1], dy.shape[2], dy.shape[3]
    Cp = Dt.shape[1]
    dst = Dt.reshape(Dt.shape[0] * Cp)  # dst: (rows*Cp,) Dt flat
    for i in range(at * Cp, (at + (q1 - q0) * Wq) * Cp):
        dst[uidx(i)] = 0.0
    for q in range(q0, min(q1, H_out)):  # a grid row at a time: its Wq rows of Dt stay in L1
        for co in range(C_out):
            dy_row = dy[n, co, q]  # dy_row: (W_out,)
            d = (at + (q - q0) * Wq) * Cp + co  # Dt[position (q, 0), co]
            for c in range(W_out):
                dst[uidx(d + c * Cp)] = dy_row[uidx(c)]


@njit(cache=True, inline="always")
def _block(blk, N, m, nq, bands, Hq, reach_rows):
    """Block blk's images n0 <= n < n1 and grid rows q0 <= q < q1 (m whole images, or band
    blk % bands of nq rows of one image), and qx: X's rows end there (the block's rows and the
    reach_rows below them that its shifted taps read)."""
    n0 = blk // bands * m
    q0 = (blk - blk // bands * bands) * nq
    q1 = min(Hq, q0 + nq)
    return n0, min(N, n0 + m), q0, q1, min(Hq, q1 + reach_rows)


@njit(cache=True, inline="always")
def _pack_block(x, X, rows, n0, n1, q0, q1, qx, kH_packed, kW_packed, Wq, stride_h, stride_w, pad_top,
                pad_left, dil_h, dil_w):  # fmt: skip
    """X[r] = packed row r = (ci[, kh][, kw]) of X for the block (r < rows): the grid rows q0 <=
    q < q1 of images n0 <= n < n1, one image's rows after the other's, and the qx - q1 grid
    rows below the last image's band (its shifted taps read them); zeros to the row's end."""
    # x: (N, C_in, H, W)   X: (>= rows, LB) a task's buffer
    LB = X.shape[1]
    for r in range(rows):
        ci = r // (kH_packed * kW_packed)
        kh = (r // kW_packed) % kH_packed
        kw = r % kW_packed
        row = X[r]  # row: (LB,)
        for j in range(n1 - n0):  # image j's rows below its band are image j + 1's first rows
            _pack_x_rows(x, row, j * (q1 - q0) * Wq, n0 + j, q0, qx, ci, kh, kw, Wq,
                         stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
        for i in range((n1 - n0 - 1) * (q1 - q0) * Wq + (qx - q0) * Wq, LB):
            row[i] = 0.0  # past the block: its shifted taps read into it


@njit(cache=True, inline="always")
def _outer_16(s, row, c0, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15):
    """s[i*LANES + v] += x_i * row[c0 + v] for the 16 scalars x_i and the LANES elements v of
    row from c0: one step of `_outer_tile`'s 16 x LANES outer-product tile (inlined: its
    fastmath=FMA fuses each multiply-add)."""
    # s: (16*LANES,) the tile's sums   row: (>= c0 + LANES,)
    for v in range(LANES):
        r = row[uidx(c0 + v)]
        s[v] += x0 * r
        s[LANES + v] += x1 * r
        s[2 * LANES + v] += x2 * r
        s[3 * LANES + v] += x3 * r
        s[4 * LANES + v] += x4 * r
        s[5 * LANES + v] += x5 * r
        s[6 * LANES + v] += x6 * r
        s[7 * LANES + v] += x7 * r
        s[8 * LANES + v] += x8 * r
        s[9 * LANES + v] += x9 * r
        s[10 * LANES + v] += x10 * r
        s[11 * LANES + v] += x11 * r
        s[12 * LANES + v] += x12 * r
        s[13 * LANES + v] += x13 * r
        s[14 * LANES + v] += x14 * r
        s[15 * LANES + v] += x15 * r


@njit(cache=True, fastmath=FMA)
def _outer_tile(part, k0, c0, Dt, Xf, base, p0, p1, first):
    """part[k0 + t, c0 + v] (+)= sum over p0 <= p < p1 (in order) of Xf[base[k0 + t] + p] *
    Dt[p, c0 + v], for the TAPS taps t and LANES channels v; `first`: = rather than +=."""
    # part: (Kp, Cp)   Dt: (m*nq*Wq, Cp)   Xf: ((rows+1)*LB,) X flat   base: (Kp,) tap t's start in Xf
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(DW_SUMS, part.dtype)  # s: (TAPS*LANES,) tap t's sums at t*LANES (registers)
    for t in range(TAPS):
        for v in range(LANES):
            s[t * LANES + v] = 0.0 if first else part[k0 + t, c0 + v]
    b0, b1, b2, b3 = base[k0], base[k0 + 1], base[k0 + 2], base[k0 + 3]
    b4, b5, b6, b7 = base[k0 + 4], base[k0 + 5], base[k0 + 6], base[k0 + 7]
    b8, b9, b10, b11 = base[k0 + 8], base[k0 + 9], base[k0 + 10], base[k0 + 11]
    b12, b13, b14, b15 = base[k0 + 12], base[k0 + 13], base[k0 + 14], base[k0 + 15]
    for p in range(p0, p1):
        d = Dt[p]  # d: (Cp,) dY^T at position p
        x0, x1, x2, x3 = Xf[uidx(b0 + p)], Xf[uidx(b1 + p)], Xf[uidx(b2 + p)], Xf[uidx(b3 + p)]
        x4, x5, x6, x7 = Xf[uidx(b4 + p)], Xf[uidx(b5 + p)], Xf[uidx(b6 + p)], Xf[uidx(b7 + p)]
        x8, x9, x10, x11 = Xf[uidx(b8 + p)], Xf[uidx(b9 + p)], Xf[uidx(b10 + p)], Xf[uidx(b11 + p)]
        x12, x13, x14, x15 = Xf[uidx(b12 + p)], Xf[uidx(b13 + p)], Xf[uidx(b14 + p)], Xf[uidx(b15 + p)]
        _outer_16(s, d, c0, x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)
    for t in range(TAPS):
        for v in range(LANES):
            part[k0 + t, c0 + v] = s[t * LANES + v]


@njit(cache=True, fastmath=FMA)
def _outer_tile_2(part, k0, c0, Dt, Xf, base, p0, p1, first):
    """As `_outer_tile` for 8 taps x 2 vectors of channels (2*LANES from c0): each input,
    broadcast once, multiplies two vectors of dY^T (9 + 2 loads for 16 multiply-adds, where
    the 16 x 1 tile takes 17, its inputs broadcast from memory for one use each, and keeps 16
    input addresses in 16 general registers)."""
    # part: (Kp, Cp)   Dt: (m*nq*Wq, Cp)   Xf: ((rows+1)*LB,) X flat   base: (Kp,) tap t's start in Xf
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(DW_SUMS, part.dtype)  # s: (TAPS_2*2*LANES,) tap t's sums at t*2*LANES (registers)
    C2 = 2 * LANES
    for t in range(TAPS_2):
        for v in range(C2):
            s[t * C2 + v] = 0.0 if first else part[k0 + t, c0 + v]
    b0 = base[k0 + 0]
    b1 = base[k0 + 1]
    b2 = base[k0 + 2]
    b3 = base[k0 + 3]
    b4 = base[k0 + 4]
    b5 = base[k0 + 5]
    b6 = base[k0 + 6]
    b7 = base[k0 + 7]
    for p in range(p0, p1):
        d = Dt[p]  # d: (Cp,) dY^T at position p
        x0 = Xf[uidx(b0 + p)]
        x1 = Xf[uidx(b1 + p)]
        x2 = Xf[uidx(b2 + p)]
        x3 = Xf[uidx(b3 + p)]
        x4 = Xf[uidx(b4 + p)]
        x5 = Xf[uidx(b5 + p)]
        x6 = Xf[uidx(b6 + p)]
        x7 = Xf[uidx(b7 + p)]
        for v in range(C2):
            r = d[uidx(c0 + v)]
            s[v] += x0 * r
            s[1 * C2 + v] += x1 * r
            s[2 * C2 + v] += x2 * r
            s[3 * C2 + v] += x3 * r
            s[4 * C2 + v] += x4 * r
            s[5 * C2 + v] += x5 * r
            s[6 * C2 + v] += x6 * r
            s[7 * C2 + v] += x7 * r
    for t in range(TAPS_2):
        for v in range(C2):
            part[k0 + t, c0 + v] = s[t * C2 + v]


@njit(cache=True, fastmath=FMA)
def _outer_tile_3x3(part, k0, c0, Dt, Xf, base, Wq, p0, p1, first):
    """As `_outer_tile` for the TAPS_3X3 = 18 taps of two input channels of a 3x3 kernel on
    shifted rows (tap (ci, kh, kw) at its channel's row start + kh*Wq + kw): 2 row addresses
    and Wq, not 18 addresses (the 16-tap tile keeps 16, more than the 16 general registers
    hold, and reloads 6 from the stack at every position), each input broadcast straight from
    memory into its FMA; the same sums in the same order."""
    # part: (Kp, Cp)   Dt: (m*nq*Wq, Cp)   Xf: ((rows+1)*LB,) X flat   base: (Kp,) tap t's start in Xf
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(SUMS_3X3, part.dtype)  # s: (18*LANES,) tap t's sums at t*LANES (registers)
    V = LANES
    for t in range(TAPS_3X3):
        for v in range(V):
            s[t * V + v] = 0.0 if first else part[k0 + t, c0 + v]
    r0, r1 = base[k0], base[k0 + 9]  # the two channels' rows (their tap (0, 0))
    W2 = 2 * Wq
    for p in range(p0, p1):
        d = Dt[p]  # d: (Cp,) dY^T at position p
        a, b = r0 + p, r1 + p
        x0, x1, x2 = Xf[uidx(a)], Xf[uidx(a + 1)], Xf[uidx(a + 2)]
        x3, x4, x5 = Xf[uidx(a + Wq)], Xf[uidx(a + Wq + 1)], Xf[uidx(a + Wq + 2)]
        x6, x7, x8 = Xf[uidx(a + W2)], Xf[uidx(a + W2 + 1)], Xf[uidx(a + W2 + 2)]
        y0, y1, y2 = Xf[uidx(b)], Xf[uidx(b + 1)], Xf[uidx(b + 2)]
        y3, y4, y5 = Xf[uidx(b + Wq)], Xf[uidx(b + Wq + 1)], Xf[uidx(b + Wq + 2)]
        y6, y7, y8 = Xf[uidx(b + W2)], Xf[uidx(b + W2 + 1)], Xf[uidx(b + W2 + 2)]
        for v in range(V):
            r = d[uidx(c0 + v)]
            s[v] += x0 * r
            s[V + v] += x1 * r
            s[2 * V + v] += x2 * r
            s[3 * V + v] += x3 * r
            s[4 * V + v] += x4 * r
            s[5 * V + v] += x5 * r
            s[6 * V + v] += x6 * r
            s[7 * V + v] += x7 * r
            s[8 * V + v] += x8 * r
            s[9 * V + v] += y0 * r
            s[10 * V + v] += y1 * r
            s[11 * V + v] += y2 * r
            s[12 * V + v] += y3 * r
            s[13 * V + v] += y4 * r
            s[14 * V + v] += y5 * r
            s[15 * V + v] += y6 * r
            s[16 * V + v] += y7 * r
            s[17 * V + v] += y8 * r
    for t in range(TAPS_3X3):
        for v in range(V):
            part[k0 + t, c0 + v] = s[t * V + v]


@njit(cache=True, inline="always")
def _add_slices(part):
    """part[0] += part[1] + ... + part[S - 1], added in slice order (a fixed order: the sums do
    not depend on the threads): the slices' partial sums of a weight gradient (lastc.py's too)."""
    # part: (S, ...) C-contiguous
    n = part[0].size
    total = part[0].reshape(n)  # total: (n,)
    for sl in range(1, part.shape[0]):
        add = part[sl].reshape(n)  # add: (n,)
        for i in range(n):
            total[uidx(i)] += add[uidx(i)]


@njit(cache=True, inline="always")
def _next_images(flat, blk, N, m, bands, plane):
    """The elements [lo, hi) of flat, N images of `plane` elements each (x or dy flattened),
    that block blk + 1 reads, when there is one and it is made of whole images (bands 1);
    else an empty range (a band reads a part of each channel: not prefetched; nor is an array
    that was not contiguous, passed as an empty flat).  Block blk + 1 may be another task's
    first: with the tasks handed out in order it is this thread's next, and else its lines
    still reach the shared L3 before the other thread asks for them."""
    if bands != 1 or (blk + 1) * m >= N or flat.size < N * plane:
        return 0, 0
    n0 = (blk + 1) * m
    return n0 * plane, min(N, n0 + m) * plane


@njit(cache=True, inline="always")
def _prefetch_run(flat, at, last, lines):
    """Prefetch `lines` 64-byte lines of flat from element `at` on, into L2 (none past element
    `last`: that line again, a hint that costs nothing, where a branch in the loop would have
    LLVM copy the tile loop around it: +1-2 s of compile); returns where the next run
    starts.  Called before each tile with the next block's images, so their loads overlap
    the multiply-adds instead of stalling that block's pack."""
    step = 64 // flat.itemsize  # elements per line
    for _ in range(lines):
        prefetch(flat, min(at, last))
        at += step
    return at


@njit(cache=True, inline="always")
def _prefetch_share(a, a_lo, a_hi, b, b_lo, b_hi, j, shares):
    """Share j of `shares` of the cache lines of a[a_lo:a_hi] then b[b_lo:b_hi] (1-D arrays),
    prefetched into L2: the next block's inputs, while this block's tiles run (each share a
    tile's worth, so the loads overlap the multiply-adds instead of stalling the next pack)."""
    step = 64 // a.itemsize  # elements per 64-byte line
    na = (a_hi - a_lo + step - 1) // step
    n = na + (b_hi - b_lo + step - 1) // step
    per = (n + shares - 1) // shares
    for line in range(j * per, min(n, (j + 1) * per)):
        if line < na:
            prefetch(a, a_lo + line * step)
        else:
            prefetch(b, b_lo + (line - na) * step)


@njit(cache=True, parallel=True)
def _tiles(x, dy, xf, dyf, out, base, Xb, Dtb, part, m, nq, bands, reach_rows, kH_packed, kW_packed, Hq, Wq,
           stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, k3x3):  # fmt: skip
    """out[co, k] = sum_p dY[co, p] * X[k, p], blocked (`blocking`): a block is m whole images
    or a band of nq grid rows of one image (bands per image); a task is (one of S slices of
    the blocks, as even as can be, one of G groups of LANES-channel columns).  Per block it
    packs X's rows for the block (and reach_rows grid rows below a band, which its shifted
    taps read) and dY^T into its own buffers, which stay in cache, and passes every (TAPS
    taps, LANES channels) tile of its group over them; the S partial sums of each element are
    then added in slice order (S and G are set by the shape alone, so results do not depend
    on the thread count)."""
    # x: (N, C_in, H, W)   dy: (N, C_out, H_out, W_out)   xf, dyf: x and dy flat (or empty)
    # out: (C_out, K)   base: (Kp,) (_tap_starts)   Xb: (S*G, rows + 1, LB)   Dtb: (S*G, m*nq*Wq, Cp)
    # part: (S, Kp, Cp)
    N = x.shape[0]
    C_out, K = out.shape
    S, _, Cp = part.shape
    T, R1, LB = Xb.shape
    G = T // S
    per_group = (Cp // LANES + G - 1) // G  # channel tiles per group
    n_blocks = (N + m - 1) // m * bands
    for t in prange(T):  # parallel over (slice, channel group): owns part[sl, :, its columns]
        sl = t // G
        c_lo = (t - sl * G) * per_group * LANES
        c_hi = min(Cp, c_lo + per_group * LANES)
        X, Dt = Xb[t], Dtb[t]  # X: (rows + 1, LB)   Dt: (m*nq*Wq, Cp) this task's buffers
        Xf = X.reshape(R1 * LB)
        for i in range(LB):
            X[R1 - 1, i] = 0.0  # the zero row: the taps that round K up to whole tiles read it
        # tile calls per block (the loop below: two-vector tiles while two vectors are left,
        # then one-vector ones); each prefetches a share of the next block's x and dy
        twos = (c_hi - c_lo) // (2 * LANES) if TWO_VECTOR_TILES else 0
        ones = (c_hi - c_lo) // LANES - 2 * twos
        per = TAPS_3X3 if k3x3 else TAPS
        shares = twos * ((K + TAPS_2 - 1) // TAPS_2) + ones * ((K + per - 1) // per)
        first = True
        for blk in range(sl * n_blocks // S, (sl + 1) * n_blocks // S):  # S <= n_blocks: never empty
            n0, n1, q0, q1, qx = _block(blk, N, m, nq, bands, Hq, reach_rows)
            L = (n1 - n0) * (q1 - q0) * Wq  # positions in this block
            _pack_block(x, X, R1 - 1, n0, n1, q0, q1, qx, kH_packed, kW_packed, Wq,
                        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
            for j in range(n1 - n0):
                _pack_dy_rows(dy, Dt, j * (q1 - q0) * Wq, n0 + j, q0, q1, Wq)
            x_lo, x_hi = _next_images(xf, blk, N, m, bands, x[0].size)
            dy_lo, dy_hi = _next_images(dyf, blk, N, m, bands, dy[0].size)
            share = 0
            c0 = c_lo
            while c0 < c_hi:  # the block's columns of Dt for the tiles stay in L1
                if TWO_VECTOR_TILES and c0 + 2 * LANES <= c_hi:  # two vectors of channels where two
                    for k0 in range(0, K, TAPS_2):  # (part's Kp rows, a multiple of 8, hold the last tile)
                        _prefetch_share(xf, x_lo, x_hi, dyf, dy_lo, dy_hi, share, shares)
                        share += 1
                        _outer_tile_2(part[sl], k0, c0, Dt, Xf, base, 0, L, first)
                    c0 += 2 * LANES
                elif k3x3:  # a 3x3 kernel on shifted rows: two channels' taps from two addresses
                    for k0 in range(0, K, TAPS_3X3):
                        _prefetch_share(xf, x_lo, x_hi, dyf, dy_lo, dy_hi, share, shares)
                        share += 1
                        _outer_tile_3x3(part[sl], k0, c0, Dt, Xf, base, Wq, 0, L, first)
                    c0 += LANES
                else:
                    for k0 in range(0, K, TAPS):
                        _prefetch_share(xf, x_lo, x_hi, dyf, dy_lo, dy_hi, share, shares)
                        share += 1
                        _outer_tile(part[sl], k0, c0, Dt, Xf, base, 0, L, first)
                    c0 += LANES
            first = False
    _add_slices(part)
    for co in range(C_out):
        for k in range(K):
            out[co, k] = part[0, k, co]


class Blocking(NamedTuple):
    """How _tiles cuts the reduction: blocks of m images (nq = Hq grid rows each) or of one
    image's band of nq grid rows (bands per image), reach_rows more grid rows of X packed
    below a band, rows LB elements apart in X's buffer; S slices of the blocks x G channel
    groups of tasks."""

    m: int
    nq: int
    bands: int
    reach_rows: int
    LB: int
    S: int
    G: int


@functools.lru_cache(maxsize=1024)
def blocking(grid, N, C_out, K, kH, kW, dil_h, dil_w, itemsize, block=BLOCK):
    """The Blocking of a weight gradient on `grid` (geometry's) with N images, C_out output
    channels, K = C_in*kH*kW taps and itemsize-byte numbers: blocks of about BLOCK positions
    (whole images on planes of up to 2*BLOCK positions, else bands of rows); S = SLICES slices
    of them, fewer where there are fewer blocks or the partial sums would pass PART_BYTES;
    channel groups where that leaves fewer than MIN_TASKS tasks."""
    plane = grid.Hq * grid.Wq
    reach_h = (kH - 1) // grid.kH_packed * dil_h  # how far the shifted taps read below a
    reach_w = (kW - 1) // grid.kW_packed * dil_w  # position (grid rows), and to its right
    reach_rows = reach_h + (reach_w > 0)
    if plane <= 2 * block:
        m, nq, bands = max(1, (block + plane // 2) // plane), grid.Hq, 1
    else:
        bands = -(-plane // block)
        m, nq = 1, -(-grid.Hq // bands)
        bands = -(-grid.Hq // nq)
    LB = (m * nq + reach_rows) * grid.Wq + ROW_PAD
    n_blocks = -(-N // m) * bands
    Kp, Cp = -(-K // TAPS) * TAPS, -(-C_out // LANES) * LANES
    S = max(1, min(SLICES, n_blocks, PART_BYTES // (Kp * Cp * itemsize)))
    G = min(Cp // LANES, -(-MIN_TASKS // S))
    return Blocking(m, nq, bands, reach_rows, LB, S, G)


@functools.lru_cache(maxsize=256)
def _tap_starts(C_in, kH, kW, grid, dil_h, dil_w, LB, per_tile=TAPS):
    """base: tap k = (ci, kh, kw)'s start in a task's X buffer flattened, rows LB apart (its
    packed row, plus its shift along that row: packed rows are shared by the taps of a kernel
    row), for Kp = K rounded up to a multiple of per_tile (whole tap tiles: TAPS, or TAPS_ANY
    where the 3x3 tile runs too); the Kp - K extra taps read the last row, zeros.  Remembered
    per geometry (building it cost more than a small layer's pack)."""
    K = C_in * kH * kW
    krow, kshift = _tap_rows(C_in, kH, kW, grid, dil_h, dil_w)  # krow, kshift: (K,)
    base = np.full(-(-K // per_tile) * per_tile, C_in * grid.kH_packed * grid.kW_packed * LB, np.int64)
    base[:K] = krow * LB + kshift
    return base


# The next block's inputs are prefetched while a block's tiles run (`_prefetch_run`) where
# the arrays a kernel streams (x and dy, or x and y) pass PREFETCH_MIN_BYTES together: below
# that they stay in the 32 MB L3 between calls and the prefetches only crowd L2.  Interleaved
# in one process, 2 threads, AMD EPYC (Zen 5) VM, ratios of the medians over 16-24 rounds:
# weight gradient VGG 64->64 on 32x32 (batch 32, 16 MB) 0.91-0.94, 16->16 on 32x32 (batch 64,
# 8 MB) 0.85-0.98, but 16->32 stride 2 (6 MB) 1.03-1.04 and 32->32 on 16x16 (4 MB) 0.98-1.01;
# forward VGG 0.93-0.99, 16->16 0.87-0.88.
PREFETCH_MIN_BYTES = 8 << 20
PREFETCH_LINES = 16  # lines a forward row tile prefetches (a constant: unrolled; VGG's 256 tiles
# of an image: the next image's 256 KB)


def flat(a, *streamed):
    """a's elements as a 1-D view for the kernels' prefetches where a is C-contiguous and a and
    the other `streamed` arrays pass PREFETCH_MIN_BYTES together, else an empty array (then
    nothing is prefetched) of the same Numba type (a view of a, or as writeable as a): a
    batch crossing the bound compiles no second specialisation of the kernel."""
    if a.flags.c_contiguous:
        view = a.reshape(-1)
        return view if a.nbytes + sum(b.nbytes for b in streamed) >= PREFETCH_MIN_BYTES else view[:0]
    empty = np.empty(0, a.dtype)
    empty.flags.writeable = a.flags.writeable
    return empty


def use_3x3_tile(kH, kW, dil_h, dil_w, grid):
    """True when the one-vector channel tiles take `_outer_tile_3x3`: an undilated 3x3 kernel on
    a grid of shifted rows (one packed row per input channel).  The same bits as the 16-tap
    tile; interleaved in one process, batch 64, 2 threads (ms): 16->16 on 32x32 1.71-1.79 ->
    1.62-1.67 (one core, in L1: 135 -> 157 GFLOP/s)."""
    return kH == kW == 3 and dil_h == dil_w == 1 and grid.kH_packed == grid.kW_packed == 1


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """dw = dL/dw for groups 1 (fully overwrites dw), through the blocked panels above."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in, kH, kW)
    N, C_out = dy.shape[:2]
    C_in, kH, kW = dw.shape[1:]
    if N == 0:  # no positions: no blocks to sum
        dw[...] = 0.0
        return
    g = geometry(dy.shape, dw.shape, x.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    K = C_in * kH * kW
    b = blocking(g, N, C_out, K, kH, kW, dil_h, dil_w, dw.itemsize)
    k3x3 = use_3x3_tile(kH, kW, dil_h, dil_w, g)
    base = _tap_starts(C_in, kH, kW, g, dil_h, dil_w, b.LB, TAPS_ANY if k3x3 else TAPS)  # base: (Kp,)
    rows = C_in * g.kH_packed * g.kW_packed
    Cp = -(-C_out // LANES) * LANES  # dY^T's rows: C_out rounded up to whole vectors
    # the tasks' buffers are scratch (workspace.py): reused across calls, not fresh pages
    Xb = scratch("conv_outer_X", (b.S * b.G, rows + 1, b.LB), x.dtype)  # Xb: (tasks, rows + 1, LB)
    Dtb = scratch("conv_outer_Dt", (b.S * b.G, b.m * b.nq * g.Wq, Cp), dy.dtype)  # Dtb: (tasks, L, Cp)
    part = scratch("conv_outer_part", (b.S, base.shape[0], Cp), dw.dtype)  # part: (S, Kp, Cp)
    _tiles(x, dy, flat(x, dy), flat(dy, x), dw.reshape(C_out, K), base, Xb, Dtb, part, b.m, b.nq, b.bands,
           b.reach_rows, g.kH_packed, g.kW_packed, g.Hq, g.Wq, stride_h, stride_w, pad_top, pad_left, dil_h,
           dil_w, k3x3)  # fmt: skip


# --------------------------------------------------------------------------- forward
# The forward is the same product the other way round, an outer product per tap:
#
#     y[co, p] = b[co] + sum_k W^T[k, co] * X[k, p]
#
# A tile holds CH output channels x POSITIONS positions of sums in registers; at each tap k
# (in the naive order ci, kh, kw) the POSITIONS inputs X[k, p0:p0+POSITIONS] (VECS vectors,
# consecutive in X's packed row) times the CH weights W^T[k, c0:c0+CH] (broadcast scalars,
# consecutive: the weights transposed) add into them, one fused multiply-add per term from
# b[co] on: the naive loop's order, so the result equals naive.conv2d_forward bit for bit
# (with the padding's zeros multiplied in, as direct.py's).  Unlike direct.py's tiles, which
# run along one image's padded plane in rows of 8 channels, a tile runs along the block's
# grid, images one after another in whole tiles (a "same" 3x3 conv on 8x8: 81 grid positions
# per image, where direct.py's 32-position tiles along each 10-wide plane compute 96), and 6
# channels fill its rows (LeNet's C3 input gradient has 6: direct.py sums those in memory).
# The tiles write a block's outputs on its grid (Yb, a task's buffer, tile-major: a tile's CH
# x POSITIONS sums are one contiguous run, stored as whole vectors); the real outputs are
# then copied to y a row at a time.  The grid shares the kernel rows (one packed row per
# input channel) unless that adds more than an eighth to the rows.
#
# What LLVM makes of the tile decides its speed (Numba leaves SLP vectorisation off, so only
# loops it does not unroll first become vector code): a loop over the POSITIONS positions
# with 6 channels in it, 6 x 4 vectors of sums, kept 34 values live (24 sums, 6 weights, 4
# input vectors) in 32 zmm registers: 45-72 register moves and a spill in the loop over the
# taps; the sums' start (bias) and their store into rows LY apart were fully unrolled into
# 288 scalar stores each.  Now VECS = 3 (18 sums, 27 live), the positions written as VECS
# named vectors in a loop over LANES, the sums started from 6 named biases, stored as one
# contiguous run, the weights packed per channel tile (Wp: a tap's CH weights adjacent): the
# loop over the taps is 1 index load, 6 broadcasts, 3 vector loads and 18 FMAs.  Interleaved
# in one process, 2 threads, on this Xeon VM (ms, before -> after): VGG 64->64 on 32x32
# (batch 32) 13.9 -> 10.7, 16->16 on 32x32 2.00 -> 1.73, LeNet's C3 forward 0.295 -> 0.279
# and its gather input gradient 0.316 -> 0.278, C1 (25 taps: more tiles for as few taps)
# 0.134 -> 0.146; 32->32 on 16x16 and 64->64 on 8x8 take the channel tiles below.
#
# Measured against direct.py at batch 64, float32, Xeon (Emerald Rapids) VM, same process,
# interleaved, min / median of 21 (ms), 2 threads; 1 thread where it differs:
#   LeNet C3's input gradient (the gather: 16 -> 6 channels, 5x5 on 14x14)  0.63 / 0.74 ->
#       0.30 / 0.37 (1 thread 1.40 -> 0.65): 6 channels in registers, not in memory
#   LeNet C3 forward (6 -> 16, 5x5 valid on 14x14)      0.40 / 0.50 -> 0.29 / 0.44 (in a quieter
#       run a tie: 0.19-0.30 ms both; its gather input gradient 0.46 / 0.50 -> 0.24 / 0.26)
#   LeNet C1 forward (1 -> 6, 5x5 valid on 32x32)       0.17 / 0.19 -> 0.14 / 0.18
#   16->32 1x1 stride 2 on 32x32                        0.42 / 0.58 -> 0.31 / 0.44
#   3x3 "same" convs tie: 16->16 on 32x32 1.71 / 2.06 -> 1.75 / 1.98, 64->64 on 8x8 1.59 /
#       1.79 -> 1.72 / 1.83, VGG 64->64 on 32x32 (batch 16) 5.12 / 6.26 -> 5.10 / 5.49, and
#       their gather input gradients alike; 32->32 on 16x16 loses 5-10% (1.57 / 1.86 -> 1.66 /
#       1.98; 6-channel rows leave 4 of 36 idle, the 17 x 17 grid 13% extra positions).
# LeNet-5's training step no longer compiles direct.py's forward (its largest kernel): the
# README command's first batch 35.8-38.7 s -> 24.3-26.9 s of JIT.  Strided convs had stayed on
# direct.py's phase planes (with a packed row per tap, 9x the pack, 16->32 3x3 stride 2 on
# 32x32 went 1.98-2.22 -> 2.52-3.17 ms); with a packed row per phase of the stride (gemm's
# `geometry`: 4 rows per ci for 3x3 stride 2, taps shifted along them), undilated strided
# convs take these tiles too.  Against direct.py, each in its own process, alternating, batch
# 64 (ms): 16->32 3x3 stride 2 on 32x32 1.22-1.28 -> 1.09-1.14 (its weight gradient, outer.py
# too, 1.32-1.44 -> 1.09-1.13), 32->64 stride 2 to 8x8 1.06-1.11 -> 0.93-0.98, a 3->64 7x7
# stride 2 stem on 224x224 (batch 8) 10.2 -> 8.4 (dw 12.4-12.7 -> 9.9-10.1).  A third of the
# 16->32 forward is the pack (0.39 ms: the phases' strided copies, rows of 17).
CH = 6  # output channels per forward tile (rows of the tile)
VECS = 3 if VECTOR_BITS >= 512 else 2  # vectors of positions per tile: float32 sums in 24 of 32 zmm
POSITIONS = VECS * LANES  # positions per forward tile                 (12 of 16 ymm with AVX2)
BLOCK_FORWARD = 512  # positions per block of the forward, about (blocks are its tasks' work)
TASKS_FORWARD = 16  # tasks of the forward at most (each packs its blocks into its own buffer)
MIN_C_FORWARD = 6  # output channels, at least
FORWARD_SUMS = CH * POSITIONS  # the tile's stack array (a compile-time constant)


def use_outer_forward(x_shape, w_shape, y_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups,
                      itemsize):  # fmt: skip
    """True when the forward of x: (N, C_in, H, W) for w: (C_out, C_in, kH, kW) into y: (N,
    C_out, H_out, W_out) (and the gather input gradient, the same conv on dy) should take this
    path: groups 1, at least one image, at least MIN_C_FORWARD output channels, stride 1, or a
    1x1 kernel (its rows are strided copies, no larger than y), or no dilation (a packed row
    per phase of the stride, gemm's `geometry`), float32 (itemsize 4), and the
    tasks' buffers within gemm's MAX_PANEL.  float64 stays on direct.py: the tile's POSITIONS
    are float32 lanes, and 6 x 64 doubles would need 48 zmm (the float64 tile spills: LeNet
    C3's forward 0.42 -> 0.70 ms, its gather 0.54 -> 0.92, 16->16 on 32x32 3.27 -> 5.46).
    (Measured: see the comment that opens the forward's section.)"""
    if groups != 1 or itemsize != 4 or x_shape[0] == 0 or w_shape[0] < MIN_C_FORWARD or 0 in w_shape[1:]:
        return False
    if 0 in y_shape[2:]:  # no output positions (the dispatch returns before)
        return False
    if not (stride_h == stride_w == 1 or w_shape[2] == w_shape[3] == 1 or dil_h == dil_w == 1):
        return False  # a strided, dilated conv: direct.py
    plan = forward_plan(x_shape, w_shape, y_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    rows = w_shape[1] * plan.grid.kH_packed * plan.grid.kW_packed
    return plan.T * ((rows + 1) * plan.LB + plan.Cp * plan.LY) * itemsize <= MAX_PANEL


class ForwardPlan(NamedTuple):
    """How the forward cuts its work: the grid (geometry's), its blocks (the weight gradient's
    Blocking, for float32; the forward uses its m, nq, bands and reach_rows, not its LB, S or
    G), a block's outputs on LY grid positions (whole tiles), X's rows LB elements apart (LB
    here: the forward's), T tasks, C_out rounded up to Cp (whole tiles of CH channels)."""

    grid: Grid
    blocks: Blocking
    LY: int
    LB: int
    T: int
    Cp: int


@functools.lru_cache(maxsize=1024)
def forward_plan(x_shape, w_shape, y_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """The ForwardPlan of a forward.  The grid shares rows between the kernel rows too (one
    packed row per input channel) unless that adds more than an eighth to the output rows (a
    valid conv's grid keeps the input's H rows: LeNet's C3 would compute 14 rows for 10).
    Blocks of about BLOCK_FORWARD positions, but at least TASKS_FORWARD of them where there
    are images enough: 64 images on 8x8 made 11 blocks of 6, 6 on one thread and 5 on the
    other (64->64 3x3 forward 1.26 -> 1.16 ms in 16 blocks of 4, interleaved).  A plane of up
    to 4 x BLOCK_FORWARD grid positions is one block, not bands (each band packs the taps'
    reach rows again: 16->16 on 32x32, 33 x 33 grid, 1.48 -> 1.34 ms in whole images).  With
    AVX-512, a stride-1 conv whose output rows are not whole vectors and narrower than the
    grid's takes a packed row per tap column instead (`geometry`'s tap_columns: Wq = W_out),
    where that packs no more and the row tiles on it do fewer multiply-adds than the tiles the
    grid would take (see the row tiles' section: LeNet's C3 and C1)."""
    N, C_in = x_shape[:2]
    C_out, _, kH, kW = w_shape
    geo = (y_shape, w_shape, x_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    g = geometry(*geo, 0)
    if (g.Hq - y_shape[2]) * 8 > y_shape[2]:
        g = geometry(*geo, 1 << 30)  # a packed row per (ci, kh)
    plan = _plan_on(g, N, C_in, C_out, kH, kW, dil_h, dil_w)
    if ROW_TILES and stride_w == 1 and kW > 1 and y_shape[3] % LANES and g.Wq != y_shape[3]:
        # a packed row per tap column (Wq = W_out): the row tiles' pieces run over whole planes
        cg = geometry(*geo, 0, True)
        cols = _plan_on(cg, N, C_in, C_out, kH, kW, dil_h, dil_w)
        K = C_in * kH * kW
        no_bigger = cg.kW_packed * cg.kH_packed * cg.Hq * cg.Wq <= g.kW_packed * g.kH_packed * g.Hq * g.Wq
        if (
            no_bigger
            and forward_tiles(y_shape, K, cols) == "rows"  # (not the channel tiles, on a larger pack)
            and _row_macs(y_shape, cols) < _tile_macs(y_shape, K, plan)
        ):
            return cols
    return plan


def _plan_on(g, N, C_in, C_out, kH, kW, dil_h, dil_w):
    """forward_plan's blocks, buffers and tasks on the grid g."""
    block = min(max(BLOCK_FORWARD, -(-g.Hq * g.Wq // 2)), 2 * BLOCK_FORWARD)  # blocking: whole
    # images on planes of up to 2 x block positions
    blk = blocking(g, N, C_out, C_in * kH * kW, kH, kW, dil_h, dil_w, 4, block)
    if blk.bands == 1 and blk.m > 1 and -(-N // blk.m) < TASKS_FORWARD:  # too few blocks to share
        m = max(1, N // TASKS_FORWARD)  # out evenly: fewer images a block (the bits do not change)
        blk = blocking(g, N, C_out, C_in * kH * kW, kH, kW, dil_h, dil_w, 4, m * g.Hq * g.Wq)
    LY = -(-blk.m * blk.nq * g.Wq // POSITIONS) * POSITIONS  # a block's grid, whole tiles
    LY += POSITIONS * (LY % 1024 == 0)  # rows 4 KB apart (float32) would share L1 sets
    LB = LY + blk.reach_rows * g.Wq + ROW_PAD  # X's rows: whole tiles and the taps' reach
    T = min(TASKS_FORWARD, -(-N // blk.m) * blk.bands)
    return ForwardPlan(g, blk, LY, LB, T, -(-C_out // CH) * CH)


@njit(cache=True, fastmath=FMA)
def _forward_tile(Yf, at, Wp, bias, Xf, base, c0, p0):
    """Yf[at + i*POSITIONS + j] = bias[c0 + i] + sum over the taps k, in order, of Wp[c0 // CH, k,
    i] * Xf[base[k] + p0 + j], for the CH channels i and the POSITIONS positions j.

    Written as VECS groups of LANES positions (x0..x2: one vector each) times CH broadcast
    weights, the CH x VECS sums named one by one: LLVM then keeps the 18 sums in registers
    and loads each weight once per tap (see the section's comment: a loop over the
    POSITIONS positions, with 4 vectors, compiled with 45-72 register moves and a spill in
    its loop)."""
    # Yf: (LY*Cp,) the block's outputs on its grid, tile-major (Y: (LY // P, Cp, P)), this tile's from at
    # Wp: (Cp // CH, K, CH) W^T per channel tile
    # bias: (Cp,)   Xf: ((rows+1)*LB,) X flat   base: (>= K,) tap k's start in Xf
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(FORWARD_SUMS, Yf.dtype)  # s: (CH*POSITIONS,) channel i's sums at i*POSITIONS
    P = POSITIONS
    b0, b1, b2, b3, b4, b5 = bias[c0], bias[c0 + 1], bias[c0 + 2], bias[c0 + 3], bias[c0 + 4], bias[c0 + 5]
    for j in range(P):  # whole vectors: one value per row (a row at a time: 16 scalar stores a vector)
        s[j] = b0
        s[P + j] = b1
        s[2 * P + j] = b2
        s[3 * P + j] = b3
        s[4 * P + j] = b4
        s[5 * P + j] = b5
    W = Wp[c0 // CH]  # W: (K, CH) this tile's weights, a tap's CH in a row
    L2 = 2 * LANES
    for k in range(W.shape[0]):
        a = base[k] + p0
        w0, w1, w2, w3, w4, w5 = W[k, 0], W[k, 1], W[k, 2], W[k, 3], W[k, 4], W[k, 5]
        for v in range(LANES):
            x0, x1 = Xf[uidx(a + v)], Xf[uidx(a + LANES + v)]
            s[v] += x0 * w0
            s[LANES + v] += x1 * w0
            s[P + v] += x0 * w1
            s[P + LANES + v] += x1 * w1
            s[2 * P + v] += x0 * w2
            s[2 * P + LANES + v] += x1 * w2
            s[3 * P + v] += x0 * w3
            s[3 * P + LANES + v] += x1 * w3
            s[4 * P + v] += x0 * w4
            s[4 * P + LANES + v] += x1 * w4
            s[5 * P + v] += x0 * w5
            s[5 * P + LANES + v] += x1 * w5
            if VECS == 3:  # a compile-time constant: AVX2's tile has 2 vectors (12 of 16 ymm)
                x2 = Xf[uidx(a + L2 + v)]
                s[L2 + v] += x2 * w0
                s[P + L2 + v] += x2 * w1
                s[2 * P + L2 + v] += x2 * w2
                s[3 * P + L2 + v] += x2 * w3
                s[4 * P + L2 + v] += x2 * w4
                s[5 * P + L2 + v] += x2 * w5
    for j in range(CH * P):  # one contiguous run: vector stores (into rows LY apart, a scalar
        Yf[uidx(at + j)] = s[j]  # store each, 288 a tile: LLVM fully unrolled the rows' loops)


@njit(cache=True, parallel=True)
def _forward_blocks(x, Wp, bias, y, base, Xb, Yb, m, nq, bands, reach_rows, kH_packed, kW_packed, Hq, Wq,
                    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):  # fmt: skip
    """y = conv2d(x, w) + b, blocked as the weight gradient (`blocking`: m whole images or a
    band of nq grid rows per block); a task owns a run of the blocks (and so their outputs):
    per block it packs X's rows into its own buffer, which stays in cache, passes the (CH
    channels, POSITIONS positions) tiles over it, positions outside and channels inside (the
    tile's X columns stay in L1 while W^T's columns pass), and copies the real outputs from
    the block's grid to y.  X's last row (rows + 1) is never written: the grid's unused
    positions past a block's real ones may read into it (a row's taps can reach past Wq +
    ROW_PAD, e.g. W = 1 with a 1x7 kernel of dilation 8); their sums are never copied."""
    # x: (N, C_in, H, W)   Wp: (Cp // CH, K, CH) W^T per channel tile   bias: (Cp,)
    # y: (N, C_out, H_out, W_out)   base: (>= K,)
    # Xb: (T, rows + 1, LB)   Yb: (T, LY // P, Cp, P) the tasks' buffers (outputs tile-major)
    N, C_out, H_out, W_out = y.shape
    Cp = Wp.shape[0] * CH
    P = POSITIONS
    T, R1, LB = Xb.shape
    n_blocks = (N + m - 1) // m * bands
    for t in prange(T):  # parallel over runs of blocks: owns their outputs
        X, Y = Xb[t], Yb[t]  # X: (rows + 1, LB)   Y: (LY // P, Cp, P)
        Yf = Y.reshape(Y.size)  # Yf: (LY*Cp,)
        Xf = X.reshape(R1 * LB)
        for blk in range(t * n_blocks // T, (t + 1) * n_blocks // T):
            n0, n1, q0, q1, qx = _block(blk, N, m, nq, bands, Hq, reach_rows)
            L = (n1 - n0) * (q1 - q0) * Wq  # positions in this block
            _pack_block(x, X, R1 - 1, n0, n1, q0, q1, qx, kH_packed, kW_packed, Wq,
                        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
            for c0 in range(0, Cp, CH):  # the tile's weights stay in L1 across the positions
                for p0 in range(0, L, POSITIONS):
                    _forward_tile(Yf, (p0 // P * Cp + c0) * P, Wp, bias, Xf, base, c0, p0)
            for co in range(C_out):  # the real outputs, a grid row at a time
                for j in range(n1 - n0):
                    dst = y[n0 + j, co].reshape(H_out * W_out)  # dst: (H_out*W_out,)
                    for q in range(q0, min(q1, H_out)):
                        at, to = (j * (q1 - q0) + q - q0) * Wq, q * W_out
                        c = 0
                        while c < W_out:  # the row's pieces in the tiles it crosses
                            tile, off = (at + c) // P, (at + c) % P
                            src = Y[tile, co]  # src: (P,)
                            n = min(W_out - c, P - off)
                            for e in range(n):
                                dst[uidx(to + c + e)] = src[uidx(off + e)]
                            c += n


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """y = conv2d(x, w) + b for groups 1 (fully overwrites y), through the blocked panels
    above.  Equal to naive.conv2d_forward bit for bit when w and b are finite (NaN or inf in
    x too), but for the sign of a zero: the padding's zeros are multiplied in, so a border
    sum of -0.0 terms comes out +0.0; and with an inf or NaN weight the padding's 0 * inf
    gives NaN where naive skips the tap (both as direct.py's)."""
    # x: (N, C_in, H, W)   w: (C_out, C_in, kH, kW)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    C_out, C_in, kH, kW = w.shape
    K = C_in * kH * kW
    plan = forward_plan(x.shape, w.shape, y.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    g, blk = plan.grid, plan.blocks
    tiles = forward_tiles(y.shape, K, plan)
    width = {"rows": row_width(C_out), "channels": CV_CHANNELS, "grid": CH}[tiles]  # a tile's channels
    Cp = -(-C_out // width) * width  # whole tiles of channels
    base = _tap_starts(C_in, kH, kW, g, dil_h, dil_w, plan.LB)  # base: (Kp,), the first K used
    # W^T per tile of `width` channels, 0 in the channels past C_out, in one strided copy
    # (a zeroed W^T, then copied per tile: 64->64 3x3, 42 -> 11 us of each call's Python)
    wf = w.reshape(C_out, K)  # wf: (C_out, K)
    full = C_out // width  # tiles of real channels only
    Wk = scratch("conv_outer_W", (Cp // width, K, width), y.dtype)  # Wk: (Cp // width, K, width)
    Wk[:full] = wf[: full * width].reshape(full, width, K).transpose(0, 2, 1)
    if full < Cp // width:
        Wk[full] = 0.0
        Wk[full, :, : C_out - full * width] = wf[full * width :].T
    bias = np.zeros(Cp, y.dtype)  # bias: (Cp,)
    bias[:C_out] = b
    rows = C_in * g.kH_packed * g.kW_packed
    Xb = scratch("conv_outer_X", (plan.T, rows + 1, plan.LB), x.dtype)  # Xb: (T, rows + 1, LB)
    if tiles == "rows":
        LQ = blk.m * blk.nq * -(-y.shape[3] // LANES) + 2  # pieces per block, at most (and partners)
        Qb = scratch("conv_outer_Q", (plan.T, 3, LQ), np.int64)  # Qb: (T, 3, LQ)
        _forward_row_blocks(x, flat(x, y), Wk, bias, y, base, Xb, Qb, blk.m, blk.nq, blk.bands,
                            blk.reach_rows, g.kH_packed, g.kW_packed, g.Hq, g.Wq, stride_h, stride_w, pad_top,
                            pad_left, dil_h, dil_w)  # fmt: skip
        return
    if tiles == "channels":
        LQ = blk.m * blk.nq * -(-y.shape[3] // RUN) + 1  # runs per block, at most (and a spare)
        Qb = scratch("conv_outer_Q", (plan.T, 3, LQ), np.int64)  # Qb: (T, 3, LQ)
        _forward_cv_blocks(x, Wk, bias, y, base, Xb, Qb, blk.m, blk.nq, blk.bands, blk.reach_rows,
                           g.kH_packed, g.kW_packed, g.Hq, g.Wq, stride_h, stride_w, pad_top, pad_left,
                           dil_h, dil_w)  # fmt: skip
        return
    Yb = scratch(
        "conv_outer_Y", (plan.T, plan.LY // POSITIONS, plan.Cp, POSITIONS), y.dtype
    )  # (T, LY // P, Cp, P)
    _forward_blocks(x, Wk, bias, y, base, Xb, Yb, blk.m, blk.nq, blk.bands, blk.reach_rows, g.kH_packed,
                    g.kW_packed, g.Hq, g.Wq, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip


# ----------------------------------------------------------- forward, channels vectorised
# The forward's tiles above run along the block's grid: on small planes much of it is not an
# output (a "same" 3x3 conv on 8x8 at batch 64: blocks of 6 images, 6 x 81 = 486 grid
# positions in whole tiles of 64 = 512 for 384 outputs, and 66 channels for 64: 1.375x the
# multiply-adds).  Here the product is turned round, as the weight gradient's tile is: a tile
# holds a run of RUN real outputs along a grid row x CV_CHANNELS (two vectors of) output
# channels of sums, vectorised over the channels; at each tap k it loads W^T[k, c0:c0+32]
# (two vectors, from Wc: a tile's weights adjacent) and the RUN inputs X[k, r + i] (broadcast
# scalars from one base address), 16 fused multiply-adds for 11 loads.  A run ends at its
# row's end, so only real outputs are computed (a run of fewer than RUN computes spare
# positions it does not write).  The sums run over the taps in the naive order from b[co],
# one fused multiply-add each, as `_forward_tile`'s: the same bits.  The tile had been two
# runs x one vector of channels (18 loads for its 16 multiply-adds, each input broadcast
# from memory for one use); interleaved in one process, 2 threads, Xeon VM (ms): 32->32 on
# 16x16 1.61 -> 1.39, 64->64 on 8x8 1.48 -> 1.41 (the grid tiles: 1.52 and 1.70).  (16
# separate input addresses would not stay in the 16 general registers: 1.4x slower.)
RUN = 8  # positions per run along a grid row, a tile's (RUN x 2 vectors of sums: 16 zmm)
CV_CHANNELS = 2 * LANES  # output channels per tile (two vectors)
CV_SUMS = RUN * CV_CHANNELS  # the tile's stack array (a compile-time constant)
MIN_K_CHANNEL_TILES = 64  # taps, at least: each tile's RUN x 32 scattered stores amortised (it
# was 288: on 8x8 planes shorter reductions gain too, interleaved, batch 64 (ms): 16->32 3x3
# 0.31 -> 0.19, 64->32 1x1 0.25 -> 0.18, a 32->64 stride-2 input gradient's phases 2.0 -> 1.7)
MIN_CHANNEL_TILE_SAVING = 1.25  # the grid tiles' multiply-adds over these tiles', at least


def use_channel_tiles(y_shape, K, plan):
    """True when the forward into y: (N, C_out, H_out, W_out) with K = C_in*kH*kW taps, cut
    by `plan` (forward_plan's), should take `_forward_cv_blocks`: at least LANES output
    channels and MIN_K_CHANNEL_TILES taps, and the grid tiles would do at least
    MIN_CHANNEL_TILE_SAVING times the multiply-adds (their positions past the outputs and
    channels past C_out; these tiles' runs of RUN and channels past C_out counted too)."""
    N, C_out, H_out, W_out = y_shape
    if C_out < LANES or K < MIN_K_CHANNEL_TILES:
        return False
    return _grid_macs(y_shape, plan) >= MIN_CHANNEL_TILE_SAVING * _run_macs(y_shape)


def _grid_macs(y_shape, plan):
    """The grid tiles' multiply-adds per tap: every block's LY grid positions x Cp channels."""
    blk = plan.blocks
    return -(-y_shape[0] // blk.m) * blk.bands * plan.LY * plan.Cp


def _run_macs(y_shape):
    """The channel tiles' multiply-adds per tap: runs of RUN x channels in vectors of CV_CHANNELS."""
    N, C_out, H_out, W_out = y_shape
    return N * H_out * -(-W_out // RUN) * RUN * -(-C_out // CV_CHANNELS) * CV_CHANNELS


def _tile_macs(y_shape, K, plan):
    """The multiply-adds per tap of the grid or channel tiles, whichever `plan` would take."""
    return _run_macs(y_shape) if use_channel_tiles(y_shape, K, plan) else _grid_macs(y_shape, plan)


@njit(cache=True, fastmath=FMA)
def _forward_cv_tile(y, Wc, bias, Xf, base, r0, d0, n0, c0, C_out, plane):
    """One run of RUN positions along a grid row from grid position r0 (outputs at flat place
    d0 of y's channel 0; n0 <= RUN of them real) x CV_CHANNELS channels from c0: y[d0 + i +
    co*plane] = bias[co] + sum over the taps k, in order, of W^T[k, co] * Xf[base[k] + r0 + i]
    (those co below C_out are written)."""
    # y: (N*C_out*plane,) y flat, plane = H_out*W_out   Wc: (Cp // CV_CHANNELS, K, CV_CHANNELS)
    # bias: (Cp,)   Xf: ((rows+1)*LB,) X flat   base: (>= K,) tap k's start in Xf
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(CV_SUMS, Wc.dtype)  # s: (RUN*CV_CHANNELS,) position i's sums at i*CV_CHANNELS
    C2 = CV_CHANNELS
    for v in range(C2):
        bv = bias[c0 + v]
        s[v] = bv
        s[C2 + v] = bv
        s[2 * C2 + v] = bv
        s[3 * C2 + v] = bv
        s[4 * C2 + v] = bv
        s[5 * C2 + v] = bv
        s[6 * C2 + v] = bv
        s[7 * C2 + v] = bv
    W = Wc[c0 // C2]  # W: (K, CV_CHANNELS) this tile's weights, a tap's channels in a row
    for k in range(W.shape[0]):
        wk = W[k]  # wk: (CV_CHANNELS,) W^T at tap k, this tile's channels
        a = base[k] + r0
        x0, x1, x2, x3 = Xf[uidx(a)], Xf[uidx(a + 1)], Xf[uidx(a + 2)], Xf[uidx(a + 3)]
        x4, x5, x6, x7 = Xf[uidx(a + 4)], Xf[uidx(a + 5)], Xf[uidx(a + 6)], Xf[uidx(a + 7)]
        for v in range(C2):
            w = wk[uidx(v)]
            s[v] += x0 * w
            s[C2 + v] += x1 * w
            s[2 * C2 + v] += x2 * w
            s[3 * C2 + v] += x3 * w
            s[4 * C2 + v] += x4 * w
            s[5 * C2 + v] += x5 * w
            s[6 * C2 + v] += x6 * w
            s[7 * C2 + v] += x7 * w
    nv = min(C2, C_out - c0)
    for i in range(n0):
        for v in range(nv):
            y[uidx(d0 + i + (c0 + v) * plane)] = s[i * C2 + v]


@njit(cache=True, parallel=True)
def _forward_cv_blocks(x, Wc, bias, y, base, Xb, Qb, m, nq, bands, reach_rows, kH_packed, kW_packed, Hq, Wq,
                       stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):  # fmt: skip
    """y = conv2d(x, w) + b as `_forward_blocks` cuts it (blocks of m images or bands of nq
    grid rows, a run of blocks per task, X packed per block into the task's buffer), with the
    (a run of RUN positions, CV_CHANNELS channels) tiles of `_forward_cv_tile` over the block's
    real outputs only, written straight to y."""
    # x: (N, C_in, H, W)   Wc: (Cp // CV_CHANNELS, K, CV_CHANNELS) W^T per channel tile   bias: (Cp,)
    # y: (N, C_out, H_out, W_out)   base: (>= K,)
    # Xb: (T, rows + 1, LB)   Qb: (T, 3, LQ) the tasks' runs of outputs
    N, C_out, H_out, W_out = y.shape
    Cp = Wc.shape[0] * CV_CHANNELS
    T, R1, LB = Xb.shape
    plane = H_out * W_out
    yf = y.reshape(N * C_out * plane)  # yf: (N*C_out*H_out*W_out,)
    n_blocks = (N + m - 1) // m * bands
    for t in prange(T):  # parallel over runs of blocks: owns their outputs
        X = Xb[t]  # X: (rows + 1, LB)
        Xf = X.reshape(R1 * LB)
        runs = Qb[t]  # runs: (3, LQ) a run's grid position, place in y, real positions
        for blk in range(t * n_blocks // T, (t + 1) * n_blocks // T):
            n0, n1, q0, q1, qx = _block(blk, N, m, nq, bands, Hq, reach_rows)
            _pack_block(x, X, R1 - 1, n0, n1, q0, q1, qx, kH_packed, kW_packed, Wq,
                        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
            L = 0  # the block's runs of real outputs: their grid positions, places in y, lengths
            for j in range(n1 - n0):
                for q in range(q0, min(q1, H_out)):
                    for c in range(0, W_out, RUN):
                        runs[0, L] = (j * (q1 - q0) + q - q0) * Wq + c
                        runs[1, L] = (n0 + j) * C_out * plane + q * W_out + c
                        runs[2, L] = min(RUN, W_out - c)
                        L += 1
            for i in range(L):  # the run's X columns stay in L1 across the channel tiles
                for c0 in range(0, Cp, CV_CHANNELS):
                    _forward_cv_tile(
                        yf, Wc, bias, Xf, base, runs[0, i], runs[1, i], runs[2, i], c0, C_out, plane
                    )


# ----------------------------------------------------------- forward, along output rows
# On planes whose output rows are whole vectors (W_out a multiple of LANES: ResNet's 32x32
# and 16x16, VGG's), a third tile: ROW_CH output channels (broadcast weights, as the grid
# tile's CH) x two pieces of LANES positions of the output rows (a row's next piece, or the
# next row's first; pieces[:, i] holds a piece's grid position, its place in y and its real
# positions), on the grid tiles' packed X.  The pieces are real outputs only (the grid tiles
# also compute the grid's padding columns and rows: 33 x 33 for 32 x 32) and 16 channels fill
# two tiles exactly (three grid tiles hold 18), and each piece is stored straight to y, a
# vector per channel (no tile-major buffer, no copy pass).  At each tap: 8 broadcasts, 2
# vector loads, 16 fused multiply-adds (the grid tile: 6, 3 and 18); the sums run over the
# taps in the naive order from b[co], as `_forward_tile`'s: the same bits.  Interleaved in
# one process, batch 64, 2 threads, Xeon VM (ms, grid or channel tiles -> row tiles): 16->16
# on 32x32 1.67 -> 1.37, 3->16 on 32x32 0.48 -> 0.40, 32->32 on 16x16 1.27 -> 1.18 (channel
# tiles), VGG 64->64 on 32x32 (batch 32) 10.1 -> 9.0, 16->32 1x1 0.76 -> 0.72.  AVX2 keeps
# the grid tiles: its 16 ymm cannot hold the 16 sums, 8 weights and 2 inputs.
#
# Rows that are not whole vectors.  Where the grid is as wide as y's rows (Wq = W_out) the
# pieces run across the rows, over a whole plane (or band) at a time, and only its last
# piece has spare positions.  That holds for a 1x1 kernel (ResNet's 32->64 stride-2
# downsample to 8x8: 0.27 -> 0.14 ms on the row tiles) and for a padding as wide as the
# kernel's reach (LeNet C3's gather input gradient, 14 x 14); and forward_plan makes it hold
# for a valid conv on a small plane (LeNet's C3 and C1) by packing a row per tap column, kW
# rows per (ci[, kh]) of W_out columns (`geometry`'s tap_columns, the rows still shared:
# for C3 6 x 5 rows of 14 x 10, as large as the 6 x 5 rows of 10 x 14 that the grid tiles
# took) where the grid's rows would be wider.  6 or 12 channels (and others `row_width`
# names, where it leaves fewer idle) take a second tile, 6 channels x three pieces
# (`_forward_row_tile_3`: 6 broadcasts, 3 loads, 18 multiply-adds a tap, as the grid
# tile).  In alternating processes, batch 64 (ms, grid tiles -> row tiles): C3 forward
# 0.29-0.30 -> 0.19-0.21, C3's gather 0.29 -> 0.23-0.25 (6 channels), C1 0.145 -> 0.123-0.13
# (6 channels), and LeNet-5 no longer compiles the grid tiles' kernel.  Ties on 32x32 (6
# channels a tile): 16->12 1.12 vs 1.11, 16->6 0.646 vs 0.64, 3->6 0.18 vs 0.19.  Not taken:
# 64->64 on 8x8 (rows of 8: the channel tiles do as few multiply-adds; on tap columns
# 1.15-1.20 -> 1.30-1.38), and tap columns where the grid's shared rows would pack less (3x
# or 5x the pack: 16->16 5x5 on 28x28 2.85-2.93 -> 3.2-3.4, AlexNet's 64->192 5x5 on 27x27
# at batch 32 54 -> 59).
ROW_CH = 8  # output channels per row tile (broadcast weights), pieces in pairs
ROW_SUMS = ROW_CH * 2 * LANES  # the tile's stack array (a compile-time constant)
ROW_CH_3 = 6  # output channels per row tile of three pieces (`_forward_row_tile_3`)
ROW_SUMS_3 = ROW_CH_3 * 3 * LANES
ROW_TILES = VECTOR_BITS >= 512  # 16 sums + 8 weights + 2 inputs: 26 of 32 zmm (AVX2 would spill)


def row_width(C_out):
    """The row tiles' channels for C_out output channels: ROW_CH (8, pieces in pairs) or
    ROW_CH_3 (6, pieces in threes) where that leaves fewer channels idle (6, 12 or 18: none,
    and 9-11, 17, 25-30, 33-35, 41-42; 16, 24 or 32: the 8-channel tile's none)."""
    return ROW_CH_3 if -(-C_out // ROW_CH_3) * ROW_CH_3 < -(-C_out // ROW_CH) * ROW_CH else ROW_CH


def _row_macs(y_shape, plan):
    """The row tiles' multiply-adds per tap: each block's pieces of LANES positions (a row's
    or, on a grid as wide as y's rows, a whole plane's or band's run of them), in whole
    groups of 2 or 3, x channels in tiles of row_width."""
    N, C_out, H_out, W_out = y_shape
    blk, g = plan.blocks, plan.grid
    width = row_width(C_out)
    group = 2 if width == ROW_CH else 3

    def pieces(rows):  # one image's pieces over `rows` output rows
        return -(-rows * W_out // LANES) if g.Wq == W_out else rows * -(-W_out // LANES)

    if blk.bands == 1:
        full, last = divmod(N, blk.m)
        per_image = pieces(H_out)
        groups = full * -(-blk.m * per_image // group) + (-(-last * per_image // group) if last else 0)
    else:
        bands = [min(H_out, (b + 1) * blk.nq) - b * blk.nq for b in range(blk.bands)]
        groups = N * sum(-(-pieces(r) // group) for r in bands if r > 0)
    return groups * group * LANES * -(-C_out // width) * width


def use_row_tiles(y_shape, plan):
    """True when the forward into y: (N, C_out, H_out, W_out), cut by `plan` (forward_plan's),
    may take `_forward_row_blocks`: AVX-512, at least MIN_C_FORWARD output channels, output
    rows of whole vectors (W_out a multiple of LANES) or a grid as wide as them (Wq = W_out:
    pieces run across the rows), and no more multiply-adds than the grid's tiles would do
    (channels rounded up to row_width's, pieces to whole groups)."""
    N, C_out, H_out, W_out = y_shape
    if not ROW_TILES or C_out < MIN_C_FORWARD or (W_out % LANES and plan.grid.Wq != W_out):
        return False
    return _row_macs(y_shape, plan) <= _grid_macs(y_shape, plan)


def forward_tiles(y_shape, K, plan):
    """The forward's tiles for y: (N, C_out, H_out, W_out) with K = C_in*kH*kW taps, cut by
    `plan`: "rows" (use_row_tiles; on rows that are not whole vectors only where the channel
    tiles would not be taken), "channels" (use_channel_tiles) or "grid"."""
    rows = use_row_tiles(y_shape, plan)
    if rows and y_shape[3] % LANES == 0:
        return "rows"
    if use_channel_tiles(y_shape, K, plan):
        return "channels"
    return "rows" if rows else "grid"


@njit(cache=True, inline="always")
def _store_pieces(yf, s, pieces, i, group, c0, nc, plane):
    """A row tile's sums to y: piece i + h's n real positions of channel c0 + o, for the group
    pieces h and the nc channels o below C_out (channel o's sums at o*group*LANES, piece h's
    from h*LANES on)."""
    # yf: (N*C_out*plane,) y flat   s: (channels*group*LANES,) the tile's sums   pieces: (3, LQ)
    R = group * LANES
    for h in range(group):
        d0, n = pieces[1, i + h], pieces[2, i + h]
        for o in range(nc):
            d = d0 + (c0 + o) * plane
            for v in range(n):
                yf[uidx(d + v)] = s[o * R + h * LANES + v]


@njit(cache=True, fastmath=FMA)
def _forward_row_tile(yf, Wr, bias, Xf, base, pieces, i, c0, C_out, plane):
    """Pieces i and i + 1 (pieces[:, i]: grid position r, place d in y's channel 0, real
    positions n) x ROW_CH channels from c0: y[d + (c0 + o)*plane + v] = bias[c0 + o] + sum over
    the taps k, in order, of Wr[c0 // ROW_CH, k, o] * Xf[base[k] + r + v], for v < n and the
    channels c0 + o below C_out."""
    # yf: (N*C_out*plane,) y flat   Wr: (Cp // ROW_CH, K, ROW_CH) W^T per channel tile
    # bias: (Cp,)   Xf: ((rows+1)*LB,) X flat   base: (>= K,) tap k's start in Xf   pieces: (3, LQ)
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(ROW_SUMS, Wr.dtype)  # s: (ROW_CH*2*LANES,) channel o's sums at o*2*LANES
    R = 2 * LANES
    L = LANES
    b0, b1, b2, b3 = bias[c0], bias[c0 + 1], bias[c0 + 2], bias[c0 + 3]
    b4, b5, b6, b7 = bias[c0 + 4], bias[c0 + 5], bias[c0 + 6], bias[c0 + 7]
    for j in range(R):
        s[j] = b0
        s[R + j] = b1
        s[2 * R + j] = b2
        s[3 * R + j] = b3
        s[4 * R + j] = b4
        s[5 * R + j] = b5
        s[6 * R + j] = b6
        s[7 * R + j] = b7
    r0 = pieces[0, i]
    gap = pieces[0, i + 1] - r0
    W = Wr[c0 // ROW_CH]  # W: (K, ROW_CH) this tile's weights, a tap's channels in a row
    for k in range(W.shape[0]):
        a = base[k] + r0
        w0, w1, w2, w3 = W[k, 0], W[k, 1], W[k, 2], W[k, 3]
        w4, w5, w6, w7 = W[k, 4], W[k, 5], W[k, 6], W[k, 7]
        for v in range(L):
            x0, x1 = Xf[uidx(a + v)], Xf[uidx(a + gap + v)]
            s[v] += x0 * w0
            s[L + v] += x1 * w0
            s[R + v] += x0 * w1
            s[R + L + v] += x1 * w1
            s[2 * R + v] += x0 * w2
            s[2 * R + L + v] += x1 * w2
            s[3 * R + v] += x0 * w3
            s[3 * R + L + v] += x1 * w3
            s[4 * R + v] += x0 * w4
            s[4 * R + L + v] += x1 * w4
            s[5 * R + v] += x0 * w5
            s[5 * R + L + v] += x1 * w5
            s[6 * R + v] += x0 * w6
            s[6 * R + L + v] += x1 * w6
            s[7 * R + v] += x0 * w7
            s[7 * R + L + v] += x1 * w7
    _store_pieces(yf, s, pieces, i, 2, c0, min(ROW_CH, C_out - c0), plane)


@njit(cache=True, fastmath=FMA)
def _forward_row_tile_3(yf, Wr, bias, Xf, base, pieces, i, c0, C_out, plane):
    """As `_forward_row_tile` for pieces i, i + 1 and i + 2 x ROW_CH_3 channels from c0 (6
    broadcasts, 3 loads, 18 fused multiply-adds a tap: the grid tile's, 18 sums in registers),
    for layers of 6 or 12 channels, which the 8-channel tile would leave a quarter idle."""
    # yf: (N*C_out*plane,) y flat   Wr: (Cp // ROW_CH_3, K, ROW_CH_3) W^T per channel tile
    # bias: (Cp,)   Xf: ((rows+1)*LB,) X flat   base: (>= K,) tap k's start in Xf   pieces: (3, LQ)
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(ROW_SUMS_3, Wr.dtype)  # s: (ROW_CH_3*3*LANES,) channel o's sums at o*3*LANES
    R = 3 * LANES
    L = LANES
    L2 = 2 * LANES
    b0, b1, b2 = bias[c0], bias[c0 + 1], bias[c0 + 2]
    b3, b4, b5 = bias[c0 + 3], bias[c0 + 4], bias[c0 + 5]
    for j in range(R):
        s[j] = b0
        s[R + j] = b1
        s[2 * R + j] = b2
        s[3 * R + j] = b3
        s[4 * R + j] = b4
        s[5 * R + j] = b5
    r0 = pieces[0, i]
    gap1 = pieces[0, i + 1] - r0
    gap2 = pieces[0, i + 2] - r0
    W = Wr[c0 // ROW_CH_3]  # W: (K, ROW_CH_3) this tile's weights, a tap's channels in a row
    for k in range(W.shape[0]):
        a = base[k] + r0
        w0, w1, w2 = W[k, 0], W[k, 1], W[k, 2]
        w3, w4, w5 = W[k, 3], W[k, 4], W[k, 5]
        for v in range(L):
            x0, x1, x2 = Xf[uidx(a + v)], Xf[uidx(a + gap1 + v)], Xf[uidx(a + gap2 + v)]
            s[v] += x0 * w0
            s[L + v] += x1 * w0
            s[L2 + v] += x2 * w0
            s[R + v] += x0 * w1
            s[R + L + v] += x1 * w1
            s[R + L2 + v] += x2 * w1
            s[2 * R + v] += x0 * w2
            s[2 * R + L + v] += x1 * w2
            s[2 * R + L2 + v] += x2 * w2
            s[3 * R + v] += x0 * w3
            s[3 * R + L + v] += x1 * w3
            s[3 * R + L2 + v] += x2 * w3
            s[4 * R + v] += x0 * w4
            s[4 * R + L + v] += x1 * w4
            s[4 * R + L2 + v] += x2 * w4
            s[5 * R + v] += x0 * w5
            s[5 * R + L + v] += x1 * w5
            s[5 * R + L2 + v] += x2 * w5
    _store_pieces(yf, s, pieces, i, 3, c0, min(ROW_CH_3, C_out - c0), plane)


@njit(cache=True, parallel=True)
def _forward_row_blocks(x, xf, Wr, bias, y, base, Xb, Qb, m, nq, bands, reach_rows, kH_packed, kW_packed, Hq,
                        Wq, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):  # fmt: skip
    """y = conv2d(x, w) + b as `_forward_blocks` cuts it (a run of blocks per task, X packed
    per block into the task's buffer), with `_forward_row_tile`'s tiles (8 channels, pieces in
    pairs) or `_forward_row_tile_3`'s (6, in threes; Wr's last axis says which) over the
    block's output rows in pieces of LANES (rows as long as the grid's, Wq == W_out, in one
    flat run per image of the block: its whole plane, or its band's rows; a band of the
    grid's rows below the outputs is skipped), written straight to y."""
    # x: (N, C_in, H, W)   xf: x flat (or empty: not prefetched)
    # Wr: (Cp // width, K, width), width ROW_CH or ROW_CH_3   bias: (Cp,)
    # y: (N, C_out, H_out, W_out)   base: (>= K,)   Xb: (T, rows + 1, LB)   Qb: (T, 3, LQ)
    N, C_out, H_out, W_out = y.shape
    width = Wr.shape[2]  # ROW_CH (pieces in pairs) or ROW_CH_3 (in threes)
    group = 2 if width == ROW_CH else 3
    Cp = Wr.shape[0] * width
    T, R1, LB = Xb.shape
    plane = H_out * W_out
    yf = y.reshape(N * C_out * plane)  # yf: (N*C_out*H_out*W_out,)
    n_blocks = (N + m - 1) // m * bands
    for t in prange(T):  # parallel over runs of blocks: owns their outputs
        X = Xb[t]  # X: (rows + 1, LB)
        Xf = X.reshape(R1 * LB)
        pieces = Qb[t]  # pieces: (3, LQ) a piece's grid position, place in y, real positions
        for blk in range(t * n_blocks // T, (t + 1) * n_blocks // T):
            n0, n1, q0, q1, qx = _block(blk, N, m, nq, bands, Hq, reach_rows)
            qe = min(q1, H_out)
            if qe <= q0:  # a band of the grid's rows below the outputs: nothing to write
                continue
            _pack_block(x, X, R1 - 1, n0, n1, q0, q1, qx, kH_packed, kW_packed, Wq,
                        stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)  # fmt: skip
            L = 0  # the block's pieces of LANES positions
            run_rows = qe - q0 if Wq == W_out else 1  # rows as long as y's: one flat run a block
            for j in range(n1 - n0):
                for q in range(q0, qe, run_rows):
                    length = min(run_rows, qe - q) * W_out
                    for c in range(0, length, LANES):
                        pieces[0, L] = (j * (q1 - q0) + q - q0) * Wq + c
                        pieces[1, L] = (n0 + j) * C_out * plane + q * W_out + c
                        pieces[2, L] = min(LANES, length - c)
                        L += 1
            for e in range(L, L + group - 1):  # the last group's missing pieces: computed, never written
                pieces[0, e] = pieces[0, L - 1]
                pieces[1, e] = 0
                pieces[2, e] = 0
            x_at, x_end = _next_images(xf, blk, N, m, bands, x[0].size)
            x_last = max(x_at, x_end - 64 // xf.itemsize)  # its last 64-byte line's first element
            for c0 in range(0, Cp, width):  # the tile's weights stay in L1 across the rows
                if group == 2:
                    for i in range(0, L, 2):
                        x_at = _prefetch_run(xf, x_at, x_last, PREFETCH_LINES)
                        _forward_row_tile(yf, Wr, bias, Xf, base, pieces, i, c0, C_out, plane)
                else:  # (not prefetched: each copy costs compile time; these serve layers of <= 42 channels)
                    for i in range(0, L, 3):
                        _forward_row_tile_3(yf, Wr, bias, Xf, base, pieces, i, c0, C_out, plane)
