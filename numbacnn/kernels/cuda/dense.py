"""Fully connected (linear) layer: CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.dense)
--------------------------------------------
x (N, IN), weight w (OUT, IN), bias b (OUT,):

    forward:  y[n, o]  = sum_i x[n, i] * w[o, i] + b[o]     (y = x @ w.T + b)
    backward: dx[n, i] = sum_o dy[n, o] * w[o, i]            (dx = dy @ w)
              dw[o, i] = sum_n dy[n, o] * x[n, i]            (dw = dy.T @ x)
              db[o]    = sum_n dy[n, o]

Thread mapping
--------------
    linear_forward_naive    one thread per y[n, o] (flat C index): a dot product of two rows.
    linear_forward          (the exported forward) shared-memory tiled: a 16x16 block owns
                            the 16x16 tile y[n0:n0+16, o0:o0+16]; thread (ty, tx) owns
                            y[n0+ty, o0+tx].  The block walks IN in steps of 16, staging
                            x[n0:n0+16, i:i+16] and w[o0:o0+16, i:i+16] in shared memory.
    linear_backward_input   one thread per dx[n, i], summing over o   } one kernel:
    linear_backward_weight  one thread per dw[o, i], summing over n   } out = coef @ rows
    linear_backward_bias    one thread per db[o], summing over n in float64.

Optimisation contract
---------------------
* One writer per output element, written once (no atomics, outputs may be uninitialised).
* Naive forward: every thread reads a whole x row and w row from global memory, i.e. each
  input is read OUT (x) or N (w) times.  Tiled forward: each global value is read once per
  16-wide tile (16x fewer global loads); the loads are coalesced (consecutive tx read
  consecutive i); the w tile is stored transposed-padded (16 x 17) so the inner product
  loop reads shared memory without bank conflicts.  The sum runs over i in the same
  increasing order as the naive kernel, so both give the same result.
* Backward kernels: consecutive threads own consecutive i, so loads of w[o, i] / x[n, i]
  and stores are coalesced; dy[n, o] is a warp-wide broadcast.
* Arithmetic in the array dtype (float32 or float64, shared tiles of that dtype: one
  compiled tiled kernel per dtype); the bias gradient accumulates in float64.
"""

import numpy as np
from numba import config, cuda, float32, float64

from ._launch import TPB, blocks_for

_T = 8 if config.ENABLE_CUDASIM else 16  # tile edge of the tiled forward (the simulator: fewer threads)
_T1 = _T + 1  # padded row length of the shared tiles (no bank conflicts)


# ================================================================================ forward
@cuda.jit
def _linear_forward_naive_kernel(x, w, b, y, zero):
    # x: (N, IN)   w: (OUT, IN)   b: (OUT,)   y: (N, OUT)
    N, IN = x.shape
    OUT = w.shape[0]
    t = cuda.grid(1)  # owns y[n, o]
    if t >= N * OUT:
        return
    o = t % OUT
    n = t // OUT
    acc = zero
    for i in range(IN):
        acc += x[n, i] * w[o, i]
    y[n, o] = acc + b[o]


def linear_forward_naive(x, w, b, y):
    """y = x @ w.T + b: one thread per output element."""
    total = y.size
    if total == 0:
        return
    _linear_forward_naive_kernel[blocks_for(total), TPB](x, w, b, y, x.dtype.type(0))


def _make_tiled_forward(dtype):
    """The tiled forward kernel for one numba float type (shared tiles need a fixed dtype)."""

    @cuda.jit
    def kernel(x, w, b, y, zero):
        # x: (N, IN)   w: (OUT, IN)   b: (OUT,)   y: (N, OUT); block (T, T), grid over tiles of y
        N, IN = x.shape
        OUT = w.shape[0]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        n0 = cuda.blockIdx.y * _T
        o0 = cuda.blockIdx.x * _T
        xs = cuda.shared.array((_T, _T1), dtype)  # xs[r, k] = x[n0 + r, i0 + k]
        ws = cuda.shared.array((_T, _T1), dtype)  # ws[r, k] = w[o0 + r, i0 + k]
        acc = zero
        for i0 in range(0, IN, _T):
            i = i0 + tx
            n = n0 + ty
            o = o0 + ty
            xs[ty, tx] = x[n, i] if (n < N and i < IN) else zero
            ws[ty, tx] = w[o, i] if (o < OUT and i < IN) else zero
            cuda.syncthreads()
            for k in range(_T):  # padded columns add exact zeros
                acc += xs[ty, k] * ws[tx, k]
            cuda.syncthreads()
        n = n0 + ty  # this thread owns y[n, o]
        o = o0 + tx
        if n < N and o < OUT:
            y[n, o] = acc + b[o]

    return kernel


_TILED = {
    np.dtype(np.float32): _make_tiled_forward(float32),
    np.dtype(np.float64): _make_tiled_forward(float64),
}


def linear_forward(x, w, b, y):
    """y = x @ w.T + b: 16x16 shared-memory tiles (same sums as linear_forward_naive)."""
    N, OUT = y.shape
    if N == 0 or OUT == 0:
        return
    grid = ((OUT + _T - 1) // _T, (N + _T - 1) // _T)
    _TILED[np.dtype(x.dtype)][grid, (_T, _T)](x, w, b, y, x.dtype.type(0))


# =============================================================================== backward
# Both gradients of the weights' product are one form (as in the CPU twin):
#     out[r, i] = sum_k coef[r, k] * rows[k, i]
#     dx = dy @ w    (coef = dy,   rows = w)      dw = dy.T @ x   (coef = dy.T, rows = x)
@cuda.jit
def _combine_rows_kernel(coef, rows, out, zero):
    # coef: (R, K)   rows: (K, IN)   out: (R, IN)
    R, K = coef.shape
    IN = rows.shape[1]
    t = cuda.grid(1)  # owns out[r, i]
    if t >= R * IN:
        return
    i = t % IN
    r = t // IN
    acc = zero
    for k in range(K):
        acc += coef[r, k] * rows[k, i]
    out[r, i] = acc


def _combine_rows(coef, rows, out):
    total = out.size
    if total == 0:
        return
    _combine_rows_kernel[blocks_for(total), TPB](coef, rows, out, out.dtype.type(0))


def linear_backward_input(dy, w, dx):
    """dx = dy @ w: one thread per dx element, summing over o."""
    _combine_rows(dy, w, dx)


def linear_backward_weight(dy, x, dw):
    """dw = dy.T @ x: one thread per dw element, summing over n (dy.T: a transposed copy)."""
    if dw.size:
        _combine_rows(dy.T, x, dw)


@cuda.jit
def _linear_backward_bias_kernel(dy, db):
    # dy: (N, OUT)   db: (OUT,)
    N, OUT = dy.shape
    o = cuda.grid(1)  # owns db[o]
    if o >= OUT:
        return
    s = float64(0.0)
    for n in range(N):
        s += dy[n, o]
    db[o] = s


def linear_backward_bias(dy, db):
    """db = sum over the batch of dy: one thread per output feature (float64 sum)."""
    OUT = db.shape[0]
    if OUT == 0:
        return
    _linear_backward_bias_kernel[blocks_for(OUT), TPB](dy, db)
