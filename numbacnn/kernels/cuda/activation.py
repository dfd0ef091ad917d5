"""Element-wise layers: ReLU, tanh, sigmoid, dropout, add.  CUDA kernels (numba.cuda).

Formulas (same as numbacnn.kernels.cpu.activation)
--------------------------------------------------
    relu:     y = max(x, 0) (NaN stays NaN)      backward: dx = dy if x > 0 else 0 (x = INPUT)
    tanh:     y = tanh(x)                        backward: dx = dy * (1 - y^2)     (y = OUTPUT)
    sigmoid:  y = 1 / (1 + exp(-x))              backward: dx = dy * y * (1 - y)   (y = OUTPUT)
    dropout:  mask_i = u(seed, i) >= p,  y_i = x_i * mask_i / (1-p)   (p == 1: y = x*0)
              backward: dx_i = dy_i * mask_i / (1-p)
    add:      y = a + b

u(seed, i) is the CPU kernel's counter-based generator, compiled from the same source
(kernels/common.py): splitmix64's finaliser of key + (i+1)*golden (uint64 wrap-around), top
53 bits, with key = mix64(seed).  So the CUDA mask equals the CPU mask for the same seed.

Thread mapping
--------------
Every kernel is a grid-stride loop over the flat 1-D arrays: thread t = cuda.grid(1) owns
elements t, t + G, t + 2G, ... (G = cuda.gridsize(1)), so a capped grid covers any size.

Optimisation contract
---------------------
* One writer per element, no races; consecutive threads touch consecutive elements
  (coalesced loads and stores).
* Arithmetic stays in the array dtype: the constants (0, 1, 1/(1-p)) are passed in by the
  host function as scalars of the array dtype, because a Python literal inside a kernel
  would promote float32 arithmetic to float64.  math.tanh / math.exp on float32 compile to
  the single-precision device functions.
* Outputs are fully overwritten.
"""

import math

import numpy as np
from numba import cuda

from .. import common
from ._launch import TPB, stride_blocks

# The dropout hash (written once, in kernels/common.py): u(seed, i) =
# unit_uniform(mix64(mix64(seed) + (i + 1) * GOLDEN)), bit for bit the CPU kernel's.
mix64 = cuda.jit(device=True)(common.mix64)
unit_uniform = cuda.jit(device=True)(common.unit_uniform)


def _launch(kernel, n, *args):
    if n:
        kernel[stride_blocks(n), TPB](*args)


# ----------------------------------------------------------------------------------- ReLU
@cuda.jit
def _relu_forward_kernel(x, y, zero):
    # x, y: (n,)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):  # owns y[i]
        v = x[i]
        y[i] = zero if v <= zero else v


@cuda.jit
def _relu_backward_kernel(dy, x, dx, zero):
    # dy, x, dx: (n,)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):  # owns dx[i]
        dx[i] = zero if x[i] <= zero else dy[i]


def relu_forward(x, y):
    """y = max(x, 0)."""
    _launch(_relu_forward_kernel, x.shape[0], x, y, x.dtype.type(0))


def relu_backward(dy, x, dx):
    """dx = dy where x > 0, else 0 (x is the forward INPUT)."""
    _launch(_relu_backward_kernel, x.shape[0], dy, x, dx, x.dtype.type(0))


# ----------------------------------------------------------------------------------- tanh
@cuda.jit
def _tanh_forward_kernel(x, y):
    # x, y: (n,)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):  # owns y[i]
        y[i] = math.tanh(x[i])


@cuda.jit
def _tanh_backward_kernel(dy, y, dx, one):
    # dy, y, dx: (n,)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):  # owns dx[i]
        v = y[i]
        dx[i] = dy[i] * (one - v * v)


def tanh_forward(x, y):
    """y = tanh(x)."""
    _launch(_tanh_forward_kernel, x.shape[0], x, y)


def tanh_backward(dy, y, dx):
    """dx = dy * (1 - y^2) (y is the forward OUTPUT)."""
    _launch(_tanh_backward_kernel, y.shape[0], dy, y, dx, y.dtype.type(1))


# -------------------------------------------------------------------------------- sigmoid
@cuda.jit
def _sigmoid_forward_kernel(x, y, one):
    # x, y: (n,)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):  # owns y[i]
        y[i] = one / (one + math.exp(-x[i]))


@cuda.jit
def _sigmoid_backward_kernel(dy, y, dx, one):
    # dy, y, dx: (n,)
    for i in range(cuda.grid(1), y.shape[0], cuda.gridsize(1)):  # owns dx[i]
        v = y[i]
        dx[i] = dy[i] * v * (one - v)


def sigmoid_forward(x, y):
    """y = 1 / (1 + exp(-x))."""
    _launch(_sigmoid_forward_kernel, x.shape[0], x, y, x.dtype.type(1))


def sigmoid_backward(dy, y, dx):
    """dx = dy * y * (1 - y) (y is the forward OUTPUT)."""
    _launch(_sigmoid_backward_kernel, y.shape[0], dy, y, dx, y.dtype.type(1))


# -------------------------------------------------------------------------------- dropout
@cuda.jit
def _dropout_forward_kernel(x, y, mask, p, seed, offset, scale, zero):
    # x, y: (n,)   mask: (n,) uint8
    key = mix64(np.uint64(seed))
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):  # owns y[i], mask[i]
        if unit_uniform(mix64(key + (np.uint64(offset + i) + np.uint64(1)) * common.GOLDEN)) >= p:
            mask[i] = 1
            y[i] = x[i] * scale
        else:
            mask[i] = 0
            y[i] = x[i] * zero  # x*0, not 0: inf/NaN give NaN, as PyTorch


@cuda.jit
def _dropout_backward_kernel(dy, mask, dx, scale, zero):
    # dy, dx: (n,)   mask: (n,) uint8
    for i in range(cuda.grid(1), dy.shape[0], cuda.gridsize(1)):  # owns dx[i]
        dx[i] = dy[i] * (scale if mask[i] != 0 else zero)


def _scale(p, dt):
    return dt(1.0 / (1.0 - p)) if p < 1.0 else dt(0)


def dropout_forward(x, y, mask, p, seed, offset):
    """mask[i] = u(seed, offset + i) >= p;  y = x * mask / (1-p)  (the CPU kernel's mask, bit
    for bit)."""
    dt = x.dtype.type
    _launch(_dropout_forward_kernel, x.shape[0], x, y, mask, float(p), int(seed), int(offset), _scale(p, dt),
            dt(0))  # fmt: skip


def dropout_backward(dy, mask, p, dx):
    """dx = dy * mask / (1-p)."""
    dt = dy.dtype.type
    _launch(_dropout_backward_kernel, dy.shape[0], dy, mask, dx, _scale(p, dt), dt(0))


# ------------------------------------------------------------------------------------ add
@cuda.jit
def _add_forward_kernel(a, b, y):
    # a, b, y: (n,)
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):  # owns y[i]
        y[i] = a[i] + b[i]


def add_forward(a, b, y):
    """y = a + b."""
    _launch(_add_forward_kernel, a.shape[0], a, b, y)


@cuda.jit
def _add_relu_forward_kernel(a, b, y, zero):
    # a, b, y: (n,)
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):  # owns y[i]
        v = a[i] + b[i]
        y[i] = zero if v <= zero else v


def add_relu_forward(a, b, y):
    """y = max(a + b, 0), the residual join fused with its ReLU (backward: relu_backward with
    x = y, the fused output)."""
    _launch(_add_relu_forward_kernel, a.shape[0], a, b, y, a.dtype.type(0))
