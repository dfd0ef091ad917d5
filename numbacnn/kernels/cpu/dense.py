"""Fully connected (dense / linear) layer: CPU kernels (explicit Numba loop nests).

Formula (lecture, "Forward Pass" / "Backward Pass" of the FFN; PyTorch nn.Linear layout)
-----------------------------------------------------------------------------------------
With x (N, IN), weight w (OUT, IN) and bias b (OUT,):

    forward:  y[n, o]  = sum_i x[n, i] * w[o, i] + b[o]          (y = x @ w.T + b)
    backward: dx[n, i] = sum_o dy[n, o] * w[o, i]                 (dx = dy @ w)
              dw[o, i] = sum_n dy[n, o] * x[n, i]                 (dw = dy.T @ x)
              db[o]    = sum_n dy[n, o]

(the slide's z_j = sum_i w_ij y_i, dl/dy_i = sum_j w_ij dl/dz_j, dl/dw_ij = y_i dl/dz_j,
one row n of the batch at a time; the bias is the slide's w_0j with y_0 = 1).

Loop nests
----------
    linear_forward:          for t in prange(ceil(OUT/4) * ceil(N/2)):  # tile: 2 rows n x 4 outputs o
                                 for i in range(IN):                    # 8 dot products at once
                                     acc[r][k] += x[n+r, i] * w[o+k, i]
    linear_backward_input    dx = dy @ w    } small layers: linear_forward(dy, w.T, 0), (dy.T, x.T, 0);
    linear_backward_weight   dw = dy.T @ x  } else one kernel, out[r, :] = sum_k coef[r, k] * rows[k, :]:
                                                for t in prange(ceil(R/4) * ceil(IN/BI)):  # 4 rows x BI cols
                                                    for k in range(0, K, 4):      # 4 x 4 block
                                                        for i in tile:
                                                            out[r0:r0+4, i] += 4 terms coef * rows
    linear_backward_bias:    for o in range(OUT): db[o] = sum_n dy[n, o]   (serial: tiny)

Optimisation contract
---------------------
* Every innermost loop walks a contiguous row (x[n, :], w[o, :], dx[n, :], dw[o, :]) through
  a 1-D row view (`xr = x[n]`) indexed from 0: Numba/LLVM vectorises these loops; the same
  loop written as `x[n, i]` over `range(i0, i1)` is not vectorised (measured much slower).
* Register / cache blocking: the forward computes a 2 x 4 tile of y, so each x value is
  loaded once for 4 weight rows and each w value once for 2 batch rows, with 8 running sums
  in registers; consecutive tiles share the same 4 weight rows (tile index runs over n
  fastest), so w is streamed from memory about once.
* `_combine_rows` updates a 4-row tile of BI = 256 columns (4 KiB of float32, in L1), 4 terms
  k per pass (the conv's `_taps_4ch` register block: 4 + 4 loads and 4 stores per 16
  multiply-adds instead of 2 loads and a store per one, each sum still in k order, bit for bit
  the one-row loop's), so every w (or x) value loaded serves 4 rows and every store 4 terms.
  On LeNet-5's dense layers (batch 64, 2 threads, Intel VM): C5's dx + dw 252-260 -> 103-113
  us, F6's 73-78 -> 39-40 us.
* Small layers' gradients (weights of at most SMALL_LAYER_BYTES) run on the forward's
  kernel instead, so that LeNet-5 compiles one kernel for its three products: 2.0 s less of
  one core's JIT on a cold start (its first batch from an empty cache 7.7-8.8 -> 7.2-7.5 s,
  interleaved cold runs, AMD EPYC Zen 5 VM), for about 80 us of a 2.9 ms step (C5's dx + dw
  0.077 -> 0.157 ms, F6's 0.019 -> 0.032, the output layer's 0.007 -> 0.011).
* The dot products are sums, so the forward is compiled with fastmath={'reassoc',
  'contract'}: LLVM may reorder the sum to vectorise it (SIMD lanes hold partial sums) and
  fuse multiply-adds.  Only the summation order changes (rounding at the 1-ulp-per-term
  level, as any BLAS); NaN/inf semantics are kept (no 'nnan'/'ninf').  Small layers'
  gradients share it (each of their sums one dot product, in the forward's order); the
  `_combine_rows` updates are axpy loops (no reduction in the inner loop) and vectorise
  without it (FMA: contraction only).
* Parallel axes are flattened tiles, so both large batches and N = 1 (inference) give every
  core work; each tile writes a disjoint block of its output, so no races and no atomics.
* Sums are carried in the array dtype (float32 or float64), as PyTorch/BLAS do, except the
  bias gradient, which is summed in float64 and cast on store.
* All outputs are fully overwritten (np.empty outputs are fine).
"""

import numpy as np
from numba import njit, prange

# The conv's register block (4 output rows x 4 terms per pass, the terms added in order) is
# the backward's: out[r, i] += sum_k coef[r, k] * rows[k, i] is its tap sum with row k at
# "tap offset" k*IN of the flattened rows.
from .conv.direct import _taps_4ch
from .conv.planes import FMA

_BI = 256  # tile width along IN for `_combine_rows` (4 rows x 1 KiB in L1)
_FAST = {"reassoc", "contract"}


# ------------------------------------------------------------------------------- forward
@njit(parallel=True, cache=True, fastmath=_FAST)
def linear_forward(x, w, b, y):
    """y = x @ w.T + b, computed in tiles of 2 batch rows x 4 output columns."""
    # x: (N, IN)   w: (OUT, IN)   b: (OUT,)   y: (N, OUT)
    N, IN = x.shape
    OUT = w.shape[0]
    n_ob = (OUT + 3) // 4  # blocks of 4 output columns
    n_nb = (N + 1) // 2  # blocks of 2 batch rows
    for t in prange(n_ob * n_nb):
        ob = t // n_nb  # n runs fastest: neighbours share w rows
        n = (t - ob * n_nb) * 2
        o = ob * 4
        if o + 4 <= OUT and n + 2 <= N:
            x0 = x[n]  # x0, x1: (IN,) row views
            x1 = x[n + 1]
            w0 = w[o]  # w0..w3: (IN,) row views
            w1 = w[o + 1]
            w2 = w[o + 2]
            w3 = w[o + 3]
            a0 = x.dtype.type(0)  # row n
            a1 = x.dtype.type(0)
            a2 = x.dtype.type(0)
            a3 = x.dtype.type(0)
            c0 = x.dtype.type(0)  # row n + 1
            c1 = x.dtype.type(0)
            c2 = x.dtype.type(0)
            c3 = x.dtype.type(0)
            for i in range(IN):
                u = x0[i]
                v = x1[i]
                a0 += u * w0[i]
                a1 += u * w1[i]
                a2 += u * w2[i]
                a3 += u * w3[i]
                c0 += v * w0[i]
                c1 += v * w1[i]
                c2 += v * w2[i]
                c3 += v * w3[i]
            y[n, o] = a0 + b[o]
            y[n, o + 1] = a1 + b[o + 1]
            y[n, o + 2] = a2 + b[o + 2]
            y[n, o + 3] = a3 + b[o + 3]
            y[n + 1, o] = c0 + b[o]
            y[n + 1, o + 1] = c1 + b[o + 1]
            y[n + 1, o + 2] = c2 + b[o + 2]
            y[n + 1, o + 3] = c3 + b[o + 3]
        else:  # ragged edge tile: one dot product at a time
            for nn in range(n, min(n + 2, N)):
                xr = x[nn]
                for oo in range(o, min(o + 4, OUT)):
                    wr = w[oo]
                    a = x.dtype.type(0)
                    for i in range(IN):
                        a += xr[i] * wr[i]
                    y[nn, oo] = a + b[oo]


# ------------------------------------------------------------------------------ backward
# Both gradients of the weights' product are one form: a row of the output is a combination
# of the rows of a matrix,  out[r, :] = sum_k coef[r, k] * rows[k, :]:
#     dx = dy @ w:    dx[n, :] = sum_o dy[n, o] * w[o, :]      (coef = dy,   rows = w)
#     dw = dy.T @ x:  dw[o, :] = sum_n dy[n, o] * x[n, :]      (coef = dy.T, rows = x)
# and also the forward's product on transposed copies, dy @ w = dy @ (w.T).T:
#     dx = linear_forward(dy, w.T, 0)      dw = linear_forward(dy.T, x.T, 0)
# Small layers (weights of at most SMALL_LAYER_BYTES) take the second form, so that a network
# of them compiles one kernel for its three products: `_combine_rows` takes 2.0 s of one
# core's JIT, and LeNet-5's cold start does without it.  Larger layers take `_combine_rows`,
# 2-10x faster there (no copies, no short dot products with horizontal sums); measured with
# the forward's kernel for all (2 threads, dx + dw, ms): LeNet-5's C5 (64 x 400 -> 120) 0.077
# against 0.157; 512 -> 512 at batch 64 0.50 against 0.88, at batch 16 0.15 against 0.65;
# 2048 -> 2048 at batch 16 3.8 against 30.
SMALL_LAYER_BYTES = 1 << 18  # weights of at most 256 KB (LeNet-5's largest layer: C5's, 188 KB)


@njit(parallel=True, cache=True, fastmath=FMA)  # FMA: one fused multiply-add per term, as _taps_4ch
def _combine_rows(coef, rows, out):
    """out[r, :] = sum_k coef[r, k] * rows[k, :] (k in order), in tiles of 4 rows r x BI columns."""
    # coef: (R, K)   rows: (K, IN)   out: (R, IN)
    R, K = coef.shape
    IN = rows.shape[1]
    n_ib = (IN + _BI - 1) // _BI
    n_rb = (R + 3) // 4
    flat = rows.reshape(-1)  # flat: (K*IN,) rows[k, i] at k*IN + i
    offs = np.empty(K, np.int64)  # offs: (K,) where row k starts: the conv's "tap offsets"
    for k in range(K):  # loops, not array expressions: each of those is one more parallel
        offs[k] = k * IN  # loop to compile (measured: this kernel's JIT 2.0-2.4 -> 1.4-1.9 s)
    one = min(IN, 1)  # 1 (a variable, as direct._forward passes it to _taps_4ch)
    for t in prange(n_rb * n_ib):  # parallel over tiles: owns out[r0:r1, i0:i1]
        rb = t // n_ib
        i0 = (t - rb * n_ib) * _BI
        i1 = min(i0 + _BI, IN)
        r0 = rb * 4
        r1 = min(r0 + 4, R)
        for r in range(r0, r1):
            out_r = out[r]  # out_r: (IN,)
            for i in range(i0, i1):
                out_r[i] = 0.0
        if r1 - r0 == 4:  # out[r0 + c, i0 + j] += sum_k coef[r0 + c, k] * flat[i0 + j + offs[k]]
            _taps_4ch(out[r0, i0:i1], out[r0 + 1, i0:i1], out[r0 + 2, i0:i1], out[r0 + 3, i0:i1],
                      coef[r0], coef[r0 + 1], coef[r0 + 2], coef[r0 + 3], flat[i0:], offs, one, i1 - i0, IN,
                      one, one)  # fmt: skip
            continue
        for k in range(K):
            row = rows[k, i0:i1]  # row: (i1-i0,) the last tile's R % 4 rows, one term at a time
            for r in range(r0, r1):
                c = coef[r, k]
                out_r = out[r, i0:i1]  # out_r: (i1-i0,)
                for i in range(i1 - i0):
                    out_r[i] += c * row[i]


def _times_transpose(a, b, out):
    """out = a @ b.T (fully overwrites out) through the forward's kernel with no bias, on
    contiguous copies of a and b where they are not contiguous already."""
    # a: (R, K)   b: (C, K)   out: (R, C)
    zero = np.zeros(b.shape[0], out.dtype)  # zero: (C,) no bias
    linear_forward(np.ascontiguousarray(a), np.ascontiguousarray(b), zero, out)


def linear_backward_input(dy, w, dx):
    """dx = dy @ w (fully overwrites dx): dx[n, i] = sum_o dy[n, o] * w[o, i]; the forward's
    dot products over a copy of w.T where w takes at most SMALL_LAYER_BYTES, else the rows of
    w scaled by dy[n, o] and summed over o (`_combine_rows`)."""
    # dy: (N, OUT)   w: (OUT, IN)   dx: (N, IN)
    if w.nbytes <= SMALL_LAYER_BYTES:
        _times_transpose(dy, w.T, dx)
    else:
        _combine_rows(np.ascontiguousarray(dy), np.ascontiguousarray(w), dx)


def linear_backward_weight(dy, x, dw):
    """dw = dy.T @ x (fully overwrites dw): dw[o, i] = sum_n dy[n, o] * x[n, i]; the forward's
    dot products over copies of dy.T and x.T where dw takes at most SMALL_LAYER_BYTES, else
    the rows of x scaled by dy[n, o] and summed over n (`_combine_rows`)."""
    # dy: (N, OUT)   x: (N, IN)   dw: (OUT, IN)
    dyt = np.ascontiguousarray(dy.T)  # dyt: (OUT, N), a small copy
    if dw.nbytes <= SMALL_LAYER_BYTES:
        _times_transpose(dyt, x.T, dw)
    else:
        _combine_rows(dyt, np.ascontiguousarray(x), dw)


@njit(cache=True)
def linear_backward_bias(dy, db):
    """db = sum over the batch of dy (float64 accumulator).  Serial: 64 x 120 takes 4.0 us
    (3.4 us on 2 threads), and a parallel kernel costs 0.3 s more of JIT."""
    # dy: (N, OUT)   db: (OUT,)
    N, OUT = dy.shape
    for o in range(OUT):
        s = 0.0
        for n in range(N):
            s += dy[n, o]
        db[o] = s
