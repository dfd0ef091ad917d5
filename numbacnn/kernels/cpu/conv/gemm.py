"""The weight gradient of a convolution with small output planes, as one matrix product of
packed panels (GEMM), with a register-blocked 4 x 4 micro-kernel.

Formula.  With P = N*H_out*W_out positions p = (n, oh, ow) and K = C_in*kH*kW taps
k = (ci, kh, kw) (groups 1),

    dw[co, k] = sum_p dY[co, p] * X[k, p],   dY[co, p] = dy[n, co, oh, ow],
                                              X[k, p] = x[n, ci, oh*stride_h - pad_top + kh*dil_h,
                                                                 ow*stride_w - pad_left + kw*dil_w]

(0 outside the input): the weight gradient is dY (C_out x P) times X^T (P x K).  The lecture's
sum over (n, oh, ow) for each weight is one dot product of two rows of length P.

Why a second kernel: direct.conv2d_backward_weight sums along the padded planes of one image
at a time; on a small plane (ResNet's 8 x 8 at 64 channels) its rows are short and each
multiply-add costs loads and stores of partial sums (about 25 GFLOP/s, 0.12x PyTorch in
`numbacnn bench`).  Here the batch is folded into the reduction (P = N*64 = 4096 terms at
batch 64), and each task computes a 4 x 4 tile of dw (4 output channels x 4 taps) in 16
running sums kept in registers across the whole reduction: 8 loads feed 16 multiply-adds.

Loop nest:
    pack     parallel over the rows of both panels:
               X[k, :] (im2col, zeros for the padding)                     X: (K, P)
               dY[co, :]                                                   dY: (C_out, P)
    tiles    parallel over k tiles (4 rows of X), each passing every co tile: _tile_4x4
             over p, SIMD over p
             (edge tiles of fewer than 4 rows: one _dot per element)

Optimizations:
    * the batch is part of the reduction (long rows even for 8 x 8 planes);
    * 16 independent running sums per task (register blocking; no partial sums in memory);
    * fastmath=True on the two reductions only, so LLVM may reassociate each running sum
      into SIMD lanes; the order is fixed by the compiled code, not by the thread count, and
      every dw element is summed by one task, so results are the same for any number of
      threads (they differ from the naive order by rounding).
"""

import numpy as np
from numba import njit, prange

from .planes import uidx

# A weight gradient takes this path (groups 1) when its output planes have at most MAX_PLANE
# positions, or it is strided, or its reduction rows are long (C_in*kH*kW >= MIN_K), and its
# packed X fits in MAX_PANEL bytes.  Measured against direct.py (and polyphase.py for strides)
# at batch 64, float32, 2 threads: 64->64 3x3 on 8x8 3.8x faster, 32->32 on 10x10 1.6x, LeNet
# C3 (plane 100) 1.4x; stride 1, larger planes: 64->64 on 11x11 1.9x, 128->128 on 12x12 1.5x,
# 32->32 on 16x16 1.14x, 64->64 on 32x32 (batch 16) 1.05x, but 16->16 (C_in*kH*kW = 144) on
# 12x12 0.85x and on 32x32 0.6x: direct.py keeps those; strided: 16->32 3x3 s2 on 32x32 1.8x,
# 32->64 4.6x, 1x1 s2 2.6-5.5x, 64->128 3x3 s2 on 56x56 (batch 8) 3.2x.
MAX_PLANE = 100
MIN_K = 288
ROW_PAD = 16  # elements between packed rows beyond P (see conv2d_backward_weight)
MAX_PANEL = 1 << 26  # 64 MB for X (K x P): ResNet-50's layers at batch 256 would need GBs


def use_gemm(dy_shape, w_shape, stride_h, stride_w, groups, itemsize):
    """True when the weight gradient of dy: (N, C_out, H_out, W_out) for w: (C_out, C_in, kH,
    kW) should take this path."""
    N, _, H_out, W_out = dy_shape
    panel = w_shape[1] * w_shape[2] * w_shape[3] * N * H_out * W_out * itemsize
    K = w_shape[1] * w_shape[2] * w_shape[3]
    wins = H_out * W_out <= MAX_PLANE or stride_h > 1 or stride_w > 1 or K >= MIN_K
    return groups == 1 and N > 0 and wins and panel <= MAX_PANEL


@njit(cache=True)
def _pack_x_row(x, row, k, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, H_out, W_out):
    """row[p] = X[k, p] = x[n, ci, ih, iw] for k = (ci, kh, kw), p = (n, oh, ow); 0 in the padding.

    Per output row, the columns whose tap is inside the input, [ow_lo, ow_hi), are one strided
    copy (unsigned indices: vectorised); the columns left and right of them are zeros."""
    # x: (N, C_in, H, W)   row: (>= N*H_out*W_out,)
    N, _, H, W = x.shape
    plane = H_out * W_out
    ci = k // (kH * kW)
    kh = (k // kW) % kH
    kw = k % kW
    off = kw * dil_w - pad_left  # iw = ow*stride_w + off
    ow_lo, ow_hi = _inside(off, stride_w, W, W_out)
    for n in range(N):
        for oh in range(H_out):
            ih = oh * stride_h - pad_top + kh * dil_h
            base = n * plane + oh * W_out
            if ih < 0 or ih >= H:
                for ow in range(W_out):
                    row[uidx(base + ow)] = 0.0
                continue
            x_row = x[n, ci, ih]  # x_row: (W,)
            for ow in range(ow_lo):
                row[uidx(base + ow)] = 0.0
            for ow in range(ow_lo, ow_hi):
                row[uidx(base + ow)] = x_row[uidx(ow * stride_w + off)]
            for ow in range(ow_hi, W_out):
                row[uidx(base + ow)] = 0.0


@njit(cache=True)
def _inside(off, stride, n, n_out):
    """The outputs [lo, hi) whose input index o*stride + off lies in [0, n); lo <= hi."""
    lo = min(n_out, max(0, (-off + stride - 1) // stride))
    hi = max(lo, min(n_out, (n - 1 - off) // stride + 1 if n - 1 - off >= 0 else 0))
    return lo, hi


@njit(cache=True)
def _pack_dy_row(dy, row, co):
    """row[p] = D[co, p] = dy[n, co, oh, ow]."""
    # dy: (N, C_out, H_out, W_out)   row: (>= N*H_out*W_out,)
    N, _, H_out, W_out = dy.shape
    plane = H_out * W_out
    for n in range(N):
        for oh in range(H_out):
            dy_row = dy[n, co, oh]  # dy_row: (W_out,)
            base = n * plane + oh * W_out
            for ow in range(W_out):
                row[uidx(base + ow)] = dy_row[uidx(ow)]


@njit(cache=True, parallel=True)
def _pack(x, dy, X, D, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """Both panels in one parallel loop (one parallel kernel: less JIT), a row per task."""
    # x: (N, C_in, H, W)   dy: (N, C_out, H_out, W_out)   X: (C_in*kH*kW, P_row)   D: (C_out, P_row)
    K, C_out = X.shape[0], D.shape[0]
    H_out, W_out = dy.shape[2], dy.shape[3]
    for r in prange(K + C_out):
        if r < K:
            _pack_x_row(x, X[r], r, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, H_out, W_out)
        else:
            _pack_dy_row(dy, D[r - K], r - K)


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
def _dot(a, b, P):
    """a . b over the first P elements of two rows (an edge tile's element)."""
    # a, b: (P_row,), P <= P_row
    s = a.dtype.type(0.0)
    for p in range(P):
        s += a[p] * b[p]
    return s


@njit(cache=True, parallel=True)
def _tiles(D, X, out, P):
    """out[co, k] = D[co, :P] . X[k, :P] in 4 x 4 tiles: one task per 4 rows of X (they stay
    in cache while every tile of D's rows passes them), so X is read from memory once."""
    # D: (C_out, P_row)   X: (K, P_row)   out: (C_out, K)
    C_out, K = out.shape
    for kt in prange((K + 3) // 4):
        k0 = kt * 4
        for c0 in range(0, C_out, 4):
            if c0 + 4 <= C_out and k0 + 4 <= K:
                s = _tile_4x4(
                    D[c0], D[c0 + 1], D[c0 + 2], D[c0 + 3], X[k0], X[k0 + 1], X[k0 + 2], X[k0 + 3], P
                )
                for i in range(4):
                    for j in range(4):
                        out[c0 + i, k0 + j] = s[i * 4 + j]
            else:
                for co in range(c0, min(c0 + 4, C_out)):
                    for k in range(k0, min(k0 + 4, K)):
                        out[co, k] = _dot(D[co], X[k], P)


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """dw = dL/dw for groups 1 (fully overwrites dw), through the packed panels above."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in, kH, kW)
    N, C_out, H_out, W_out = dy.shape
    C_in, kH, kW = dw.shape[1:]
    P = N * H_out * W_out
    # Rows P_row = P + ROW_PAD elements apart: 8 rows a power of two apart (P = 64 x 64 = 4096)
    # would fall into the same L1 sets and thrash them (2 threads on sibling cores: 2x slower
    # than one); one cache line more per row spreads them.
    P_row = P + ROW_PAD
    X = np.empty((C_in * kH * kW, P_row), x.dtype)  # X: (K, P_row), columns P.. unused
    D = np.empty((C_out, P_row), dy.dtype)  # D: (C_out, P_row)
    _pack(x, dy, X, D, kH, kW, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    _tiles(D, X, dw.reshape(C_out, C_in * kH * kW), P)
