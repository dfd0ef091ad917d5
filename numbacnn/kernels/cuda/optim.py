"""Optimizer updates: CUDA kernels (numba.cuda), twins of numbacnn.kernels.cpu.optim (same
names, same argument order, the same element formulas: kernels/common.py's sgd_element,
adam_element and rmsprop_element, compiled here as device functions).

Thread mapping: a grid-stride loop over the flat parameter; thread t owns elements t,
t + G, t + 2G, ... and updates p, its gradient's moments and buffers there. One writer per
element, consecutive threads on consecutive elements (coalesced), no atomics.
The hyper-parameters are rounded to the parameter's dtype on the host, so float32 updates
stay float32 on the device.
"""

from numba import cuda

from .. import common
from ._launch import TPB, stride_blocks

sgd_element = cuda.jit(device=True)(common.sgd_element)
adam_element = cuda.jit(device=True)(common.adam_element)
rmsprop_element = cuda.jit(device=True)(common.rmsprop_element)


@cuda.jit
def _sgd_kernel(p, g, buf, first, lr, mu, decay, nesterov, keep_buf):
    # p, g, buf: (n,)
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):  # owns p[i], buf[i]
        new_p, new_buf = sgd_element(p[i], g[i], buf[i], first, lr, mu, decay, nesterov)
        p[i] = new_p
        if keep_buf:
            buf[i] = new_buf


def sgd_step(p, g, buf, first, lr, momentum, weight_decay, nesterov):
    """One SGD update of p (and buf when momentum > 0) in place. numbacnn.optim.SGD calls it
    once for all the parameters of a model moved with Module.to("cuda"), whose parameters,
    gradients and momentum buffers are views of one flat array each: the fused update."""
    if p.shape[0] == 0:
        return
    dt = p.dtype.type
    _sgd_kernel[stride_blocks(p.shape[0]), TPB](
        p, g, buf, bool(first), dt(lr), dt(momentum), dt(weight_decay), bool(nesterov), momentum != 0.0
    )


@cuda.jit
def _adam_kernel(p, g, m, v, decoupled, decay, keep, w1, w2, b2, neg_step, bc2, eps):
    # p, g, m, v: (n,)
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):  # owns p[i], m[i], v[i]
        p[i], m[i], v[i] = adam_element(p[i], g[i], m[i], v[i], decoupled, decay, keep, w1, w2, b2,
                                        neg_step, bc2, eps)  # fmt: skip


@cuda.jit
def _rmsprop_kernel(p, g, s, a, b, centered, use_momentum, decay, w, alpha, eps, mu, neg_lr):
    # p, g, s, a, b: (n,)
    for i in range(cuda.grid(1), p.shape[0], cuda.gridsize(1)):  # owns element i of p, s, a, b
        p[i], s[i], a[i], b[i] = rmsprop_element(p[i], g[i], s[i], a[i], b[i], centered, use_momentum,
                                                 decay, w, alpha, eps, mu, neg_lr)  # fmt: skip


def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bias_correction2_sqrt):
    """One Adam (decoupled=False) or AdamW (decoupled=True) update of p, m, v in place."""
    if p.shape[0] == 0:
        return
    dt = p.dtype.type
    decay = dt(0.0) if decoupled else dt(weight_decay)
    _adam_kernel[stride_blocks(p.shape[0]), TPB](
        p, g, m, v, bool(decoupled), decay, dt(1.0 - lr * weight_decay), dt(1.0 - beta1), dt(1.0 - beta2),
        dt(beta2), dt(-step_size), dt(bias_correction2_sqrt), dt(eps),
    )  # fmt: skip


def rmsprop_step(p, g, s, a, b, lr, alpha, eps, weight_decay, momentum, centered):
    """One RMSprop update of p and its state in place (see numbacnn.kernels.cpu.optim)."""
    if p.shape[0] == 0:
        return
    dt = p.dtype.type
    _rmsprop_kernel[stride_blocks(p.shape[0]), TPB](
        p, g, s, a, b, bool(centered), momentum > 0.0, dt(weight_decay), dt(1.0 - alpha), dt(alpha), dt(eps),
        dt(momentum), dt(-lr),
    )  # fmt: skip
