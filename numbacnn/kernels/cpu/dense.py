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
    linear_backward_input    dx = dy @ w   = linear_forward(dy, w.T, 0)      } the forward's kernel
    linear_backward_weight   dw = dy.T @ x = linear_forward(dy.T, x.T, 0)    } on contiguous copies
    linear_backward_bias:    for o in range(OUT): db[o] = sum_n dy[n, o]   (serial: tiny)

Optimisation contract
---------------------
* Every innermost loop walks a contiguous row (x[n, :], w[o, :]) through
  a 1-D row view (`xr = x[n]`) indexed from 0: Numba/LLVM vectorises these loops; the same
  loop written as `x[n, i]` over `range(i0, i1)` is not vectorised (measured much slower).
* Register / cache blocking: the forward computes a 2 x 4 tile of y, so each x value is
  loaded once for 4 weight rows and each w value once for 2 batch rows, with 8 running sums
  in registers; consecutive tiles share the same 4 weight rows (tile index runs over n
  fastest), so w is streamed from memory about once.
* One kernel for the three products: the gradients are the forward's product on transposed
  copies (dy @ w = dy @ (w.T).T), so a cold start compiles one kernel where it compiled two:
  the backward's own kernel (4 rows x 4 terms of axpy updates, the conv's `_taps_4ch`) took
  2.0 s of one core's JIT, and LeNet-5's first batch from an empty cache came down from
  7.7-8.8 to 7.2-7.5 s (interleaved cold runs, AMD EPYC Zen 5 VM).  It was faster: LeNet-5's
  dense gradients at batch 64, 2 threads, dx + dw of C5 (400 -> 120) 60 -> 112 us, F6
  (120 -> 84) 19 -> 32 us, the output layer 6.5 -> 11 us, about 70 us of a 2.9 ms step.
* The dot products are sums, so the forward is compiled with fastmath={'reassoc',
  'contract'}: LLVM may reorder the sum to vectorise it (SIMD lanes hold partial sums) and
  fuse multiply-adds.  Only the summation order changes (rounding at the 1-ulp-per-term
  level, as any BLAS); NaN/inf semantics are kept (no 'nnan'/'ninf').  The gradients share
  it: each of their sums is one dot product, in the forward's order.
* Parallel axes are flattened tiles, so both large batches and N = 1 (inference) give every
  core work; each tile writes a disjoint block of its output, so no races and no atomics.
* Sums are carried in the array dtype (float32 or float64), as PyTorch/BLAS do, except the
  bias gradient, which is summed in float64 and cast on store.
* All outputs are fully overwritten (np.empty outputs are fine).
"""

import numpy as np
from numba import njit, prange

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
# Both gradients of the weights' product are products of the same form as the forward's,
# y = a @ b.T, on transposed copies (small: at most the layer's weights or its batch of
# inputs), so the forward's kernel computes them (with a zero bias) and a cold start compiles
# one kernel for all three:
#     dx = dy @ w   = dy @ (w.T).T:     linear_forward(dy, w.T, 0, dx)
#     dw = dy.T @ x = dy.T @ (x.T).T:   linear_forward(dy.T, x.T, 0, dw)
def linear_backward_input(dy, w, dx):
    """dx = dy @ w (fully overwrites dx): dx[n, i] = sum_o dy[n, o] * w[o, i], as the forward's
    dot products over a contiguous copy of w.T."""
    # dy: (N, OUT)   w: (OUT, IN)   dx: (N, IN)
    linear_forward(np.ascontiguousarray(dy), np.ascontiguousarray(w.T), np.zeros(w.shape[1], dx.dtype), dx)


def linear_backward_weight(dy, x, dw):
    """dw = dy.T @ x (fully overwrites dw): dw[o, i] = sum_n dy[n, o] * x[n, i], as the
    forward's dot products over contiguous copies of dy.T and x.T."""
    # dy: (N, OUT)   x: (N, IN)   dw: (OUT, IN)
    linear_forward(np.ascontiguousarray(dy.T), np.ascontiguousarray(x.T), np.zeros(x.shape[1], dw.dtype), dw)


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
