"""Optimizer updates: CPU kernels (explicit Numba loops), one pass over a parameter.

Formulas (PyTorch's torch.optim single-tensor implementations, term for term, in the
parameter's dtype; t is the step count after this step, g the gradient), written once in
kernels/common.py (sgd_element, adam_element, rmsprop_element) and compiled here and in
kernels/cuda:

    SGD (dampening 0)
        g = g + weight_decay * p;  buf = g (first step) or momentum * buf + g
        g = g + momentum * buf (nesterov) or buf;  p = p - lr * g

    Adam / AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019 for AdamW's decoupled decay)
        AdamW:  p = p * (1 - lr * weight_decay)          Adam: g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m)                    (torch's lerp: m.lerp_(g, 1 - beta1))
        v = v * beta2 + (1 - beta2) * g * g
        p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)

    RMSprop (Hinton's lecture 6e; torch.optim.RMSprop)
        g = g + weight_decay * p
        s = s * alpha + (1 - alpha) * g * g
        centered:  a = a + (1 - alpha) * (g - a);  avg = sqrt(s - a * a) + eps   else avg = sqrt(s) + eps
        momentum > 0:  b = b * momentum + g / avg;  p = p - lr * b        else  p = p - lr * g / avg

Loop nest: for c in prange(chunks of CHUNK elements): for i in the chunk: the element update.
Each element is independent: no races, the result does not depend on the thread count. The
hyper-parameters are rounded to the parameter's dtype once (torch's Python floats meet its
tensors the same way); the bias corrections (Python floats, as in torch) come from the caller.
"""

from numba import njit, prange

from .. import common

_CHUNK = 16384  # elements per parallel task
sgd_element = njit(inline="always")(common.sgd_element)
adam_element = njit(inline="always")(common.adam_element)
rmsprop_element = njit(inline="always")(common.rmsprop_element)


@njit(cache=True)
def sgd_step(p, g, buf, first, lr, momentum, weight_decay, nesterov):
    """One SGD update of p (and of its momentum buffer buf, when momentum > 0) in place;
    first: the buffer's first step (buf = g). The CPU twin of the CUDA fused update. Serial on
    purpose: the update is bound by memory (a few microseconds for LeNet-5, ~10 ms for
    ResNet-50's 25M parameters), and a parallel kernel costs 1.4 s more to compile cold."""
    # p, g, buf: (n,) flat views of parameters, their gradients and momentum buffers
    dt = p.dtype.type
    lr_, mu, decay = dt(lr), dt(momentum), dt(weight_decay)
    keep_buf = momentum != 0.0
    for i in range(p.shape[0]):
        new_p, new_buf = sgd_element(p[i], g[i], buf[i], first, lr_, mu, decay, nesterov)
        p[i] = new_p
        if keep_buf:
            buf[i] = new_buf


@njit(parallel=True, cache=True)
def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bias_correction2_sqrt):
    """One Adam (decoupled=False) or AdamW (decoupled=True) update of p, m, v in place."""
    # p, g, m, v: (n,) flat views of one parameter, its gradient and its two moments
    n = p.shape[0]
    dt = p.dtype.type
    decay = dt(0.0) if decoupled else dt(weight_decay)
    keep, w1, w2, b2 = dt(1.0 - lr * weight_decay), dt(1.0 - beta1), dt(1.0 - beta2), dt(beta2)
    neg_step, bc2, e = dt(-step_size), dt(bias_correction2_sqrt), dt(eps)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, c * _CHUNK + _CHUNK)):
            p[i], m[i], v[i] = adam_element(p[i], g[i], m[i], v[i], decoupled, decay, keep, w1, w2, b2,
                                            neg_step, bc2, e)  # fmt: skip


@njit(parallel=True, cache=True)
def rmsprop_step(p, g, s, a, b, lr, alpha, eps, weight_decay, momentum, centered):
    """One RMSprop update of p and its state in place: s the square average, a the gradient
    average (used when centered), b the momentum buffer (used when momentum > 0)."""
    # p, g, s, a, b: (n,) flat views
    n = p.shape[0]
    dt = p.dtype.type
    decay, w, al, e, mu, neg_lr = dt(weight_decay), dt(1.0 - alpha), dt(alpha), dt(eps), dt(momentum), dt(-lr)
    use_momentum = momentum > 0.0
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, c * _CHUNK + _CHUNK)):
            p[i], s[i], a[i], b[i] = rmsprop_element(p[i], g[i], s[i], a[i], b[i], centered, use_momentum,
                                                     decay, w, al, e, mu, neg_lr)  # fmt: skip
