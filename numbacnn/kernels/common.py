"""Helpers that both backends compile: written once here as plain Python, compiled per target.

    kernels/cpu:   window = njit(inline="always")(common.window)
    kernels/cuda:  window = cuda.jit(device=True)(common.window)

(MiniTorch's `to_index` pattern.)  Each helper is a leaf: it calls no other helper of this
module, because a function compiled for one target cannot call a plain-Python one.  Typed
arithmetic only: np.uint64 for the hash, float64 for the log-sum-exp, plain ints for indices,
so the same source means the same thing on both targets (and under the CUDA simulator).

numbacnn.reference keeps its own copies of the dropout hash and the log-sum-exp on purpose:
the oracle must not share code with what it checks.
"""

import math

import numpy as np

__all__ = [
    "window",
    "GOLDEN",
    "mix64",
    "unit_uniform",
    "row_max_logsumexp",
    "adam_element",
    "rmsprop_element",
]


# ------------------------------------------------------------------------------- pooling
def window(o, stride, pad, k, n):
    """The window of output index o along one axis (window size k, input size n) starts at
    input index o*stride - pad; return that start and the in-range tap range [lo, hi) (taps
    outside [0, n) are padding)."""
    start = o * stride - pad
    return start, max(0, -start), min(k, n - start)


# ------------------------------------------------------------------------- dropout hash
# u(seed, i), the uniform number in [0, 1) that decides whether element i is kept, is a
# counter-based generator: no state, a pure function of (seed, i), so the mask is
# reproducible, independent of the thread count, and the same on CPU and GPU:
#
#     key      = mix64(seed)                                (nearby seeds: unrelated streams)
#     u(seed, i) = unit_uniform(mix64(key + (i + 1) * GOLDEN))
#
# mix64 is the splitmix64 finaliser, GOLDEN the 64-bit golden ratio (splitmix64's step).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(z):
    """The splitmix64 finaliser: a bijective avalanche of a uint64 (wraps mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def unit_uniform(z):
    """A uint64 hash -> a float64 in [0, 1): its top 53 bits times 2**-53."""
    return np.float64(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


# ---------------------------------------------------------------------------- loss
def row_max_logsumexp(logits, n):
    """(m, log sum_k exp(logits[n, k] - m)) for row n, m = max_k logits[n, k], in float64.

    Subtracting the row maximum makes every exponent <= 0: exp never overflows and one term
    of the sum is exactly 1 (no log(0)).  A NaN in the row wins the max, as in PyTorch."""
    # logits: (N, K)
    K = logits.shape[1]
    m = -math.inf
    for k in range(K):
        v = np.float64(logits[n, k])
        if v > m or v != v:
            m = v
    s = 0.0
    for k in range(K):
        s += math.exp(np.float64(logits[n, k]) - m)
    return m, math.log(s)


def row_hit(logits, labels, n):
    """1.0 if row n's first maximum (NumPy's argmax; a NaN wins, the first NaN) is at
    labels[n], else 0.0: one term of a batch's number of correct predictions."""
    # logits: (N, K)   labels: (N,) int64
    best = 0
    for k in range(1, logits.shape[1]):
        v = logits[n, k]
        b = logits[n, best]
        if (v > b or v != v) and b == b:
            best = k
    return 1.0 if best == labels[n] else 0.0


# ---------------------------------------------------------------------------- optimizers
# One element of an optimizer update (kernels/cpu/optim.py and kernels/cuda/optim.py loop
# over the elements and call these). Every scalar arrives already in the parameter's dtype
# (the callers round torch's Python-float hyper-parameters once), so float32 stays float32.
def sgd_element(p, g, buf, first, lr, mu, decay, nesterov):
    """SGD with momentum, weight decay and Nesterov momentum (torch.optim.SGD, dampening 0),
    term for term; returns the new (p, buf):
    g += decay * p;  buf = g (first step) or mu * buf + g;  g = g + mu * buf (nesterov) or
    buf;  p -= lr * g. mu = 0 leaves buf alone (the caller does not store it)."""
    if decay != 0:
        g = g + decay * p
    if mu != 0:
        if first:
            buf = g
        else:
            buf = mu * buf + g
        if nesterov:
            g = g + mu * buf
        else:
            g = buf
    return p - lr * g, buf


def adam_element(p, g, m, v, decoupled, decay, keep, w1, w2, b2, neg_step, bc2, eps):
    """Adam (decoupled=False: L2 decay folded into g) or AdamW (decoupled: p *= keep first);
    returns the new (p, m, v). torch.optim.Adam's single-tensor step, term for term:
    m += (1 - beta1) * (g - m);  v = v * beta2 + (1 - beta2) * g * g;
    p += -step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)."""
    if decoupled:
        p = p * keep
    else:
        g = g + decay * p  # decay is 0 without weight decay: g unchanged
    m = m + w1 * (g - m)
    v = v * b2 + w2 * g * g
    return p + neg_step * (m / (math.sqrt(v) / bc2 + eps)), m, v


def rmsprop_element(p, g, s, a, b, centered, use_momentum, decay, w, alpha, eps, mu, neg_lr):
    """RMSprop (torch.optim.RMSprop): returns the new (p, s, a, b) with s the square average,
    a the gradient average (centered), b the momentum buffer (use_momentum)."""
    g = g + decay * p
    s = s * alpha + w * g * g
    if centered:
        a = a + w * (g - a)
        avg = math.sqrt(s - a * a) + eps
    else:
        avg = math.sqrt(s) + eps
    if use_momentum:
        b = b * mu + g / avg
        return p + neg_lr * b, s, a, b
    return p + neg_lr * (g / avg), s, a, b
