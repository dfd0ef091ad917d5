"""Flattened, zero-padded planes: the data layout of the direct conv kernels (direct.py).

A plane x[n, ci] (H, W) is copied into a zero-padded plane of Hp x Wp, flattened to 1-D, and
laid end to end with the other channels of its group (channel ci_l at offset ci_l*Hp*Wp).
A tap (ci_l, kh, kw) is then one offset o = ci_l*Hp*Wp + kh*dil_h*Wp + kw*dil_w, and an output
(oh, ow) a position j = oh*Wp + ow of the "output grid" (H_out rows of width Wp; the Wp - W_out
columns past each row's end are garbage, computed and never read back).  For stride 1 the
input output j sees through tap o is xp[j + o]: a whole plane is one contiguous loop over j.
See docs/kernels/conv_cpu.md.
"""

import numpy as np
from numba import njit

# Index cast for the innermost loops.  Numba supports Python's negative indices, so an index
# of a signed type costs a test `if i < 0: i += len` on every access, and that branch stops
# LLVM from vectorising the loop.  Our indices are never negative (the
# padded planes guarantee it), so we say so by making them unsigned.
uidx = np.uint64

# Fused multiply-adds.  The conv kernels whose sums keep an order (naive.py, the direct
# forward's tiles and memory sums, its scatter input gradient and plane weight gradient, the
# dense backward of layers above dense.SMALL_LAYER_BYTES) compile their terms s += w * x
# with fastmath {"contract"}: LLVM may fuse the multiply and the add into one FMA instruction
# (one rounding instead of two), and nothing else (no reassociation: every sum keeps its
# order; gemm.py's reductions have fastmath=True).
# On an Intel core the FP units are FMA units, so a separate multiply and add take two of
# them: the direct forward's register tiles ran 1.75-1.9x faster with FMA (Xeon, Emerald
# Rapids; on AMD Zen 4, with separate add pipes, the two forms measured alike).  The naive
# kernels are compiled the same way, so the fast forward still equals the naive sum bit for
# bit.  Numba's cache keys a kernel on its own file only: after changing FMA, delete the
# __pycache__ folders.
FMA = {"contract"}


@njit(cache=True)
def padded_extent(H, W, H_out, W_out, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Size (Hp, Wp) of the zero-padded plane: holds the input at (pad_top, pad_left) and
    every position any tap of any output (incl. the garbage grid columns) reads."""
    Hp = max(H + pad_top, (H_out - 1) * stride_h + (kH - 1) * dil_h + 1)
    Wp = max(W + pad_left, (W_out - 1) * stride_w + (kW - 1) * dil_w + 1)
    return Hp, Wp


@njit(cache=True)
def segments(H_out, W_out, Wp, stride_h, stride_w):
    """(n_seg, seg_len): one flat segment for stride 1, else one segment per output row."""
    if stride_h == 1 and stride_w == 1:
        return 1, (H_out - 1) * Wp + W_out
    return H_out, W_out


@njit(cache=True)
def tap_offsets(C_in_g, kH, kW, P, Wp, dil_h, dil_w):
    """Offset of every tap (ci_l, kh, kw), in that order, into C_in_g padded planes of P."""
    offs = np.empty(C_in_g * kH * kW, np.int64)  # offs: (C_in_g*kH*kW,)
    t = 0
    for ci_l in range(C_in_g):
        for kh in range(kH):
            for kw in range(kW):
                offs[t] = ci_l * P + kh * dil_h * Wp + kw * dil_w
                t += 1
    return offs


@njit(cache=True)
def pad_plane(src, dst, pad_top, pad_left, Wp):
    """dst[:] = 0, then src (H, W) copied into the flat padded plane dst (>= Hp*Wp,)."""
    # (unsigned indices here too: these copies are ~10% of a LeNet layer otherwise)
    for i in range(dst.shape[0]):
        dst[uidx(i)] = 0.0
    H, W = src.shape
    for ih in range(H):
        base = (ih + pad_top) * Wp + pad_left
        srow = src[ih]  # srow: (W,)
        for iw in range(W):
            dst[uidx(base + iw)] = srow[uidx(iw)]


@njit(cache=True)
def to_grid(src, dst, Wp):
    """dst (H_out*Wp,) = src (H_out, W_out) laid out on the output grid, 0 in the garbage columns."""
    for i in range(dst.shape[0]):
        dst[uidx(i)] = 0.0
    H_out, W_out = src.shape
    for oh in range(H_out):
        srow = src[oh]  # srow: (W_out,)
        for ow in range(W_out):
            dst[uidx(oh * Wp + ow)] = srow[uidx(ow)]


@njit(cache=True)
def from_grid(src, base, Wp, dst):
    """dst (R, C) = the R x C window of the flat plane src whose top-left is src[base]."""
    R, C = dst.shape
    for r in range(R):
        drow = dst[r]  # drow: (C,)
        for c in range(C):
            drow[uidx(c)] = src[uidx(base + r * Wp + c)]


# ------------------------------------------------------------------ phase planes (stride > 1)
# A strided conv reads every stride-th input position.  Splitting each padded plane into its
# stride_h x stride_w PHASES, plane (a, b) holding xpad[a::stride_h, b::stride_w], makes it a
# stride-1 conv again: tap (kh, kw) reads phase ((kh*dil_h) % stride_h, (kw*dil_w) % stride_w)
# at offset ((kh*dil_h) // stride_h, (kw*dil_w) // stride_w), so an output plane is once more
# ONE contiguous loop over the grid j = oh*Wq + ow.  For stride 1 there is one phase: the
# padded plane itself.  Only the phases some tap reads are built (a 1x1 stride-2 conv: one).


@njit(cache=True)
def phase_index(k, dil, stride):
    """(index, count): index[a] = the position of phase a among the phases the taps
    kh*dil (kh < k) read, -1 for a phase none reads; count = how many are read."""
    index = np.full(stride, -1, np.int64)  # index: (stride,)
    for kh in range(k):
        index[(kh * dil) % stride] = 0
    count = 0
    for a in range(stride):
        if index[a] >= 0:
            index[a] = count
            count += 1
    return index, count


@njit(cache=True)
def phase_tap_offsets(C_in_g, kH, kW, dil_h, dil_w, stride_h, stride_w, idx_h, idx_w, n_w, Wq, chan, phase):
    """Offset of every tap (ci_l, kh, kw), in that order, into C_in_g channels `chan` elements
    apart, each holding the read phases (a, b) `phase` elements apart, in the order
    idx_h[a]*n_w + idx_w[b]; a phase plane has rows of Wq."""
    offs = np.empty(C_in_g * kH * kW, np.int64)  # offs: (C_in_g*kH*kW,)
    t = 0
    for ci_l in range(C_in_g):
        for kh in range(kH):
            rh = kh * dil_h
            for kw in range(kW):
                rw = kw * dil_w
                plane = idx_h[rh % stride_h] * n_w + idx_w[rw % stride_w]
                offs[t] = ci_l * chan + plane * phase + (rh // stride_h) * Wq + rw // stride_w
                t += 1
    return offs


@njit(cache=True)
def inside(off, stride, n, n_out):
    """The outputs [lo, hi) whose input index o*stride + off lies in [0, n); lo <= hi."""
    lo = min(n_out, max(0, (-off + stride - 1) // stride))
    hi = max(lo, min(n_out, (n - 1 - off) // stride + 1 if n - 1 - off >= 0 else 0))
    return lo, hi


# Inlined at Numba's IR level into its two callers: called per plane (per column copy: 3 per
# input channel of a 3x3 conv), a compiled call measured 3-4% of the forward on 8x8 planes.
@njit(cache=True, inline="always")
def _strided_plane(src, dst, base, row0, col0, pad_top, pad_left, stride_h, stride_w, Hq, Wq):
    """dst[base + r*Wq + c] = the zero-padded src (H, W) at padded row row0 + r*stride_h and
    column col0 + c*stride_w, for r < Hq, c < Wq (0 in the padding)."""
    # src: (H, W)   dst: (>= base + Hq*Wq,)
    H, W = src.shape
    off = col0 - pad_left  # iw = c*stride_w + off
    c_lo, c_hi = inside(off, stride_w, W, Wq)
    for r in range(Hq):
        row = base + r * Wq
        ih = r * stride_h + row0 - pad_top
        if ih < 0 or ih >= H:
            for c in range(Wq):
                dst[uidx(row + c)] = 0.0
            continue
        srow = src[ih]  # srow: (W,)
        for c in range(c_lo):
            dst[uidx(row + c)] = 0.0
        for c in range(c_lo, c_hi):
            dst[uidx(row + c)] = srow[uidx(c * stride_w + off)]
        for c in range(c_hi, Wq):
            dst[uidx(row + c)] = 0.0


@njit(cache=True)
def split_plane(src, dst, pad_top, pad_left, stride_h, stride_w, idx_h, idx_w, Hq, Wq, phase):
    """dst[plane (a, b)] (Hq x Wq, flat, at (idx_h[a]*n_w + idx_w[b])*phase) = the zero-padded
    src (H, W) at rows a, a + stride_h, ... and columns b, b + stride_w, ... for every read
    phase (a, b) (idx_h[a], idx_w[b] >= 0)."""
    # src: (H, W)   dst: (>= (n_planes-1)*phase + Hq*Wq,)
    n_w = np.max(idx_w) + 1
    for a in range(stride_h):
        if idx_h[a] < 0:
            continue
        for b in range(stride_w):
            if idx_w[b] < 0:
                continue
            base = (idx_h[a] * n_w + idx_w[b]) * phase
            _strided_plane(src, dst, base, a, b, pad_top, pad_left, stride_h, stride_w, Hq, Wq)


# ---------------------------------------------------------------- column copies (small planes)
# A grid row of Wq = W_out + (kW-1)*dil_w // stride_w positions holds Wq - W_out garbage
# columns; on small planes they are many (8x8: 78 grid positions for 64 outputs, 80 or 96 in
# whole register tiles of 16 or 32).  Copying each (phase) plane once per kernel column kw, shifted by
# kw, removes them: copy (kw, a)[i, ow] = xpad[a + stride_h*i, stride_w*ow + kw*dil_w], and
# tap (kh, kw) reads copy (kw, kh*dil_h % stride_h) from row kh*dil_h // stride_h on, so the
# grid is exactly H_out x W_out (rows of Wq = W_out).  kW times the copying, for fewer tiles.


@njit(cache=True)
def column_tap_offsets(C_in_g, kH, kW, dil_h, stride_h, idx_h, n_h, Wq, chan, plane):
    """Offset of every tap (ci_l, kh, kw), in that order, into C_in_g channels `chan`
    elements apart, each holding kW x n_h column copies `plane` elements apart (copy (kw, a)
    at kw*n_h + idx_h[a]), rows of Wq."""
    offs = np.empty(C_in_g * kH * kW, np.int64)  # offs: (C_in_g*kH*kW,)
    t = 0
    for ci_l in range(C_in_g):
        for kh in range(kH):
            rh = kh * dil_h
            for kw in range(kW):
                offs[t] = ci_l * chan + (kw * n_h + idx_h[rh % stride_h]) * plane + (rh // stride_h) * Wq
                t += 1
    return offs


@njit(cache=True)
def split_columns(src, dst, pad_top, pad_left, stride_h, stride_w, dil_w, kW, idx_h, n_h, Hq, Wq, plane):
    """dst[copy (kw, a)] (Hq x Wq, flat, at (kw*n_h + idx_h[a])*plane) = the zero-padded src
    (H, W) at rows a, a + stride_h, ... and columns kw*dil_w, kw*dil_w + stride_w, ...
    (Wq of them) for every kernel column kw and read row phase a (idx_h[a] >= 0)."""
    # src: (H, W)   dst: (>= kW*n_h*plane,)
    for kw in range(kW):
        for a in range(stride_h):
            if idx_h[a] >= 0:
                base = (kw * n_h + idx_h[a]) * plane
                _strided_plane(src, dst, base, a, kw * dil_w, pad_top, pad_left, stride_h, stride_w, Hq, Wq)
