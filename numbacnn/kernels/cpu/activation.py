"""Element-wise layers: ReLU, tanh, sigmoid, dropout, add. CPU kernels (explicit Numba loops).

Formulas (lecture: "ReLU Activation", "Dropout Layer"; PyTorch semantics)
-------------------------------------------------------------------------
    ReLU(x)    = max(x, 0)             dReLU:    dx = dy if x > 0 else 0   (x from the forward input;
                                                  NaN propagates as in PyTorch)
    tanh(x)                            dtanh:    dx = dy * (1 - y^2)       (y = tanh(x), the forward OUTPUT)
    sigmoid(x) = 1 / (1 + exp(-x))     dsigmoid: dx = dy * y * (1 - y)     (y = sigmoid(x), forward OUTPUT)

    dropout:   x'_i = 0 with probability p, x_i / (1-p) otherwise (inverted dropout)
               mask_i = 1 if u(seed, i) >= p else 0,  y_i = x_i * mask_i / (1-p)   (p == 1: y = 0)
               dx_i   = dy_i * mask_i / (1-p)
    add:       y = a + b                (backward: (dy, dy), nothing to compute)
    add_relu:  y = max(a + b, 0)        (backward: relu_backward with x = y, the fused OUTPUT)

u(seed, i) is a uniform number in [0, 1) from a counter-based generator (kernels/common.py):
the 64-bit splitmix64 finaliser applied to key(seed) + (i + 1) * golden, keeping the top 53
bits (key(seed) is itself splitmix64 of the seed, so nearby seeds give unrelated streams).
It is a pure function of (seed, i): no generator state, so the mask is reproducible,
independent of the thread count, the same on the GPU, and every element can be drawn in
parallel.

Loop nest (every kernel; arrays are flat 1-D views of any shape)
----------------------------------------------------------------
    for c in prange(ceil(n / CHUNK)):      # contiguous chunks of CHUNK elements <- parallel axis
        xs = x[c*CHUNK : min((c+1)*CHUNK, n)]   # 1-D views of the chunk
        ys = y[c*CHUNK : min((c+1)*CHUNK, n)]
        for i in range(len(xs)):
            ys[i] = f(xs[i])

Optimisation contract
---------------------
* Parallel over fixed-size contiguous chunks: a thread writes only its chunk of y / dx /
  mask (no races, no false sharing except at chunk edges).  The inner loop runs from 0 over
  1-D chunk views, the form LLVM vectorises (indexing x[i] over range(i0, i1) is not
  vectorised: measured slower).
* Arithmetic stays in the array dtype: constants are made with x.dtype.type(...), so a
  float32 array is never promoted to float64.
* Outputs are fully overwritten (np.empty outputs are fine).
"""

import numpy as np
from numba import njit, prange

from .. import common

_CHUNK = 16384  # elements per parallel task (64 KiB of float32)

# The dropout hash (written once, in kernels/common.py): u(seed, i) =
# unit_uniform(mix64(mix64(seed) + (i + 1) * GOLDEN)).
mix64 = njit(inline="always")(common.mix64)
unit_uniform = njit(inline="always")(common.unit_uniform)


# ----------------------------------------------------------------------------------- ReLU
@njit(parallel=True, cache=True)
def relu_forward(x, y):
    """y = max(x, 0)  (NaN stays NaN, as PyTorch)."""
    # x, y: (n,)
    n = x.shape[0]
    zero = x.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        xs = x[i0:i1]  # xs, ys: (i1-i0,) chunk views
        ys = y[i0:i1]
        for i in range(i1 - i0):
            v = xs[i]
            ys[i] = zero if v <= zero else v


@njit(parallel=True, cache=True)
def relu_backward(dy, x, dx):
    """dx = dy where x > 0, else 0  (x is the forward INPUT)."""
    # dy, x, dx: (n,)
    n = x.shape[0]
    zero = x.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        gs = dy[i0:i1]
        xs = x[i0:i1]
        ds = dx[i0:i1]
        for i in range(i1 - i0):
            ds[i] = zero if xs[i] <= zero else gs[i]


# ----------------------------------------------------------------------------------- tanh
def tanh_forward(x, y):
    """y = tanh(x). float32: the branch-free rational kernel (vectorised, unlike a libm call
    per element; within 7 ulp); float64: the exact exp/expm1 kernel. benchmarks/bench_kernels.py
    times both against PyTorch."""
    # x, y: (n,)
    if x.dtype == np.float32:
        _tanh_forward_rational_f32(x, y)
    else:
        _tanh_forward_exp(x, y)


@njit(parallel=True, cache=True)
def _tanh_forward_exp(x, y):
    """y = tanh(x), through exp: tanh|x| = (1 - e) / (1 + e) with e = exp(-2|x|).

    For |x| < 1/2 the numerator 1 - e cancels, so there it is -expm1(-2|x|) and the
    denominator 2 + expm1(-2|x|): full relative accuracy everywhere (as np.tanh, within
    1 ulp), and faster than calling libm's tanh per element (benchmarks/bench_kernels.py).
    """
    # x, y: (n,)
    n = x.shape[0]
    one, two, half = x.dtype.type(1), x.dtype.type(2), x.dtype.type(0.5)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        xs = x[i0:i1]
        ys = y[i0:i1]
        for i in range(i1 - i0):
            v = xs[i]
            a = abs(v)
            if a < half:
                em = np.expm1(-two * a)
                t = -em / (two + em)
            else:
                e = np.exp(-two * a)
                t = (one - e) / (one + e)
            ys[i] = np.copysign(t, v)


@njit(parallel=True, cache=True)
def _tanh_forward_rational_f32(x, y):
    """y = tanh(x) for float32 as p(z)/q(z), z = x clamped to +-7.9053 (where tanh rounds to
    +-1 in float32): p odd of degree 13, q even of degree 6, the minimax coefficients of
    Eigen's float32 tanh (generic_fast_tanh_float). |x| < 4e-4 returns x (tanh x = x to
    float32 precision). No branch and no libm call in the loop, so LLVM vectorises it.
    Measured against float64 tanh over [-10, 10] and 1e-30..10: at most 6.6 ulp (4e-7 relative).
    NaN stays NaN, -0.0 stays -0.0."""
    # x, y: (n,)
    f = np.float32
    a1, a3, a5 = f(4.89352455891786e-03), f(6.37261928875436e-04), f(1.48572235717979e-05)
    a7, a9 = f(5.12229709037114e-08), f(-8.60467152213735e-11)
    a11, a13 = f(2.00018790482477e-13), f(-2.76076847742355e-16)
    b0, b2 = f(4.89352518554385e-03), f(2.26843463243900e-03)
    b4, b6 = f(1.18534705686654e-04), f(1.19825839466702e-06)
    clamp, tiny = f(7.90531110763549805), f(0.0004)
    n = x.shape[0]
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        xs = x[i0:i1]
        ys = y[i0:i1]
        for i in range(i1 - i0):
            v = xs[i]
            z = min(max(v, -clamp), clamp)
            z2 = z * z
            p = z * (a1 + z2 * (a3 + z2 * (a5 + z2 * (a7 + z2 * (a9 + z2 * (a11 + z2 * a13))))))
            q = b0 + z2 * (b2 + z2 * (b4 + z2 * b6))
            ys[i] = v if abs(v) < tiny else p / q


@njit(parallel=True, cache=True)
def tanh_backward(dy, y, dx):
    """dx = dy * (1 - y^2)  (y is the forward OUTPUT)."""
    # dy, y, dx: (n,)
    n = y.shape[0]
    one = y.dtype.type(1)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        gs = dy[i0:i1]
        ys = y[i0:i1]
        ds = dx[i0:i1]
        for i in range(i1 - i0):
            v = ys[i]
            ds[i] = gs[i] * (one - v * v)


# -------------------------------------------------------------------------------- sigmoid
@njit(parallel=True, cache=True)
def sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x))  (exp overflow gives 1/inf = 0, the right limit)."""
    # x, y: (n,)
    n = x.shape[0]
    one = x.dtype.type(1)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        xs = x[i0:i1]
        ys = y[i0:i1]
        for i in range(i1 - i0):
            ys[i] = one / (one + np.exp(-xs[i]))


@njit(parallel=True, cache=True)
def sigmoid_backward(dy, y, dx):
    """dx = dy * y * (1 - y)  (y is the forward OUTPUT)."""
    # dy, y, dx: (n,)
    n = y.shape[0]
    one = y.dtype.type(1)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        gs = dy[i0:i1]
        ys = y[i0:i1]
        ds = dx[i0:i1]
        for i in range(i1 - i0):
            v = ys[i]
            ds[i] = gs[i] * v * (one - v)


# -------------------------------------------------------------------------------- dropout
@njit(parallel=True, cache=True)
def dropout_forward(x, y, mask, p, seed, offset):
    """mask[i] = u(seed, offset + i) >= p;  y = x * mask / (1-p)  (p == 1: mask = 0, y = x*0).
    offset: x[0]'s flat index in the whole batch (a rank's share starts past 0)."""
    # x, y: (n,)   mask: (n,) uint8
    n = x.shape[0]
    key = mix64(np.uint64(seed))
    scale = x.dtype.type(1.0 / (1.0 - p)) if p < 1.0 else x.dtype.type(0)
    zero = x.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        xs = x[i0:i1]
        ys = y[i0:i1]
        ms = mask[i0:i1]
        for i in range(i1 - i0):
            u = unit_uniform(mix64(key + (np.uint64(offset + i0 + i) + np.uint64(1)) * common.GOLDEN))
            if u >= p:  # the hash sees the GLOBAL flat index
                ms[i] = 1
                ys[i] = xs[i] * scale
            else:
                ms[i] = 0
                ys[i] = xs[i] * zero  # x*0, not 0: inf/NaN give NaN, as PyTorch


@njit(parallel=True, cache=True)
def dropout_backward(dy, mask, p, dx):
    """dx = dy * mask / (1-p)."""
    # dy, dx: (n,)   mask: (n,) uint8
    n = dy.shape[0]
    scale = dy.dtype.type(1.0 / (1.0 - p)) if p < 1.0 else dy.dtype.type(0)
    zero = dy.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        gs = dy[i0:i1]
        ms = mask[i0:i1]
        ds = dx[i0:i1]
        for i in range(i1 - i0):
            ds[i] = gs[i] * (scale if ms[i] != 0 else zero)


# ------------------------------------------------------------------------------------ add
def add_forward(a, b, y):
    """y = a + b  (the residual connection; its backward just passes dy to both inputs)."""
    _add(a, b, y, False)


def add_relu_forward(a, b, y):
    """y = max(a + b, 0): the residual join fused with the ReLU after it (numbacnn.fusion).
    Its backward is relu_backward(dy, y, dx) with y this OUTPUT: y > 0 exactly where a + b > 0
    (and NaN where a + b is NaN), so the mask is the same as ReLU's on its input."""
    _add(a, b, y, True)


@njit(parallel=True, cache=True)
def _add(a, b, y, relu):
    # a, b, y: (n,)
    n = a.shape[0]
    zero = a.dtype.type(0)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        i0 = c * _CHUNK
        i1 = min(i0 + _CHUNK, n)
        as_ = a[i0:i1]
        bs = b[i0:i1]
        ys = y[i0:i1]
        for i in range(i1 - i0):
            v = as_[i] + bs[i]
            if relu and v <= zero:
                v = zero
            ys[i] = v
