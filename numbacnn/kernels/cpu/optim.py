"""Optimizer updates: CPU kernels (explicit Numba loops), one pass over a parameter.

Formulas (PyTorch's torch.optim single-tensor implementations, term for term, in the
parameter's dtype; t is the step count after this step, g the gradient):

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

Loop nest: for c in prange(chunks of CHUNK elements): for i in the chunk: the formulas above
on element i. Each element is independent: no races, the result does not depend on the
thread count. The bias corrections (Python floats, as in torch) are computed by the caller.
"""

import math

from numba import njit, prange

_CHUNK = 16384  # elements per parallel task


@njit(parallel=True, cache=True)
def adam_step(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step_size, bias_correction2_sqrt):
    """One Adam (decoupled=False) or AdamW (decoupled=True) update of p, m, v in place."""
    # p, g, m, v: (n,) flat views of one parameter, its gradient and its two moments
    n = p.shape[0]
    dt = p.dtype.type
    # scalars computed in float64 and rounded to p's dtype once, as torch's Python floats are
    decay, keep = dt(weight_decay), dt(1.0 - lr * weight_decay)
    w1, w2, b2 = dt(1.0 - beta1), dt(1.0 - beta2), dt(beta2)
    neg_step, bc2, e = dt(-step_size), dt(bias_correction2_sqrt), dt(eps)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, c * _CHUNK + _CHUNK)):
            gi = g[i]
            if decoupled:
                p[i] = p[i] * keep
            elif weight_decay != 0.0:
                gi = gi + decay * p[i]
            m[i] = m[i] + w1 * (gi - m[i])
            v[i] = v[i] * b2 + w2 * gi * gi
            p[i] = p[i] + neg_step * (m[i] / (math.sqrt(v[i]) / bc2 + e))


@njit(parallel=True, cache=True)
def rmsprop_step(p, g, s, a, b, lr, alpha, eps, weight_decay, momentum, centered):
    """One RMSprop update of p and its state in place: s the square average, a the gradient
    average (used when centered), b the momentum buffer (used when momentum > 0)."""
    # p, g, s, a, b: (n,) flat views
    n = p.shape[0]
    dt = p.dtype.type
    decay, w, al, e, mu, neg_lr = dt(weight_decay), dt(1.0 - alpha), dt(alpha), dt(eps), dt(momentum), dt(-lr)
    for c in prange((n + _CHUNK - 1) // _CHUNK):
        for i in range(c * _CHUNK, min(n, c * _CHUNK + _CHUNK)):
            gi = g[i]
            if weight_decay != 0.0:
                gi = gi + decay * p[i]
            s[i] = s[i] * al + w * gi * gi
            if centered:
                a[i] = a[i] + w * (gi - a[i])
                avg = math.sqrt(s[i] - a[i] * a[i]) + e
            else:
                avg = math.sqrt(s[i]) + e
            if momentum > 0.0:
                b[i] = b[i] * mu + gi / avg
                p[i] = p[i] + neg_lr * b[i]
            else:
                p[i] = p[i] + neg_lr * (gi / avg)
