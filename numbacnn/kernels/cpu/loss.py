"""Softmax cross-entropy loss: CPU kernels (explicit Numba loop nests).

Formula (PyTorch F.cross_entropy with integer labels, reduction='mean')
-----------------------------------------------------------------------
For logits z (N, K) and labels t (N,):

    softmax(z_n)_k = exp(z_nk) / sum_j exp(z_nj)
    loss           = 1/N * sum_n ( logsumexp(z_n) - z_{n, t_n} )
    logsumexp(z_n) = m_n + log sum_j exp(z_nj - m_n),   m_n = max_j z_nj   (stable form)

    backward:  dz[n, k] = (softmax(z_n)_k - [k == t_n]) / N

Subtracting the row maximum makes every exponent <= 0, so exp never overflows (logits of
1e4 or more are fine) and at least one term of the sum is exactly 1 (no log(0)).

Loop nest
---------
    for n in prange(N):                    # one row per iteration  <- parallel axis (forward;
                                           # the backward and loss_and_hits are serial: tiny)
        m = max_k z[n, k]                  # pass 1
        s = sum_k exp(z[n, k] - m)         # pass 2
        loss_n = m + log(s) - z[n, t_n]    # forward
        dz[n, k] = (exp(z[n,k] - m)/s - [k == t_n]) / N    # backward, pass 3

Optimisation contract
---------------------
* Parallel over rows in the forward: the per-row loss belongs to one thread.
* Sums and logs are in float64 whatever the logits dtype; dz is cast on store.
* The forward stores per-row losses and sums them serially afterwards, so the float result
  is deterministic (independent of the thread count), unlike a parallel reduction.
* Labels are trusted (functional checks 0 <= t_n < K); N == 0 returns NaN (mean of nothing).
"""

import math

import numpy as np
from numba import njit, prange

from .. import common

# (m, log sum_k exp(z[n,k] - m)) of one row, in float64 (written once, in kernels/common.py).
row_max_logsumexp = njit(inline="always")(common.row_max_logsumexp)
row_hit = njit(inline="always")(common.row_hit)


# ------------------------------------------------------------------------------- forward
@njit(parallel=True, cache=True)
def cross_entropy_forward(logits, labels):
    """mean over n of logsumexp(logits[n]) - logits[n, labels[n]] (a Python float)."""
    # logits: (N, K)   labels: (N,) int64
    N = logits.shape[0]
    if N == 0:
        return np.nan
    row = np.empty(N, np.float64)  # row: (N,) per-sample losses
    for n in prange(N):
        m, lse = row_max_logsumexp(logits, n)
        row[n] = (m + lse) - np.float64(logits[n, labels[n]])
    total = 0.0
    for n in range(N):  # serial: a deterministic sum
        total += row[n]
    return total / N


@njit(cache=True)
def loss_and_hits(logits, labels, totals):
    """totals[0] += sum_n loss_n, totals[1] += #{n: argmax_k logits[n, k] == labels[n]}, in
    place: a training loop's running sums (a serial, deterministic sum)."""
    # logits: (N, K)   labels: (N,) int64   totals: (2,) float64
    loss, hits = 0.0, 0.0
    for n in range(logits.shape[0]):
        m, lse = row_max_logsumexp(logits, n)
        loss += (m + lse) - np.float64(logits[n, labels[n]])
        hits += row_hit(logits, labels, n)
    totals[0] += loss
    totals[1] += hits


# ------------------------------------------------------------------------------ backward
# Serial: a batch's logits are small (64 x 10: 7.5 us serial, 5.3 us on 2 threads), and a
# parallel kernel costs 0.5 s more of JIT on a run's first batch.
@njit(cache=True)
def cross_entropy_backward(logits, labels, dlogits):
    """dlogits[n, k] = (softmax(logits[n])_k - [k == labels[n]]) / N."""
    # logits, dlogits: (N, K)   labels: (N,) int64
    N, K = logits.shape
    for n in range(N):
        m, lse = row_max_logsumexp(logits, n)
        shift = m + lse  # softmax_k = exp(z_k - m - lse)
        t = labels[n]
        for k in range(K):
            p = math.exp(logits[n, k] - shift)
            if k == t:
                p -= 1.0
            dlogits[n, k] = p / N
