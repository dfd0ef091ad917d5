"""Softmax cross-entropy loss: CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.loss; PyTorch F.cross_entropy, reduction='mean')
---------------------------------------------------------------------------------------
    m_n  = max_k z[n, k],   lse_n = m_n + log sum_k exp(z[n, k] - m_n)   (stable log-sum-exp)
    loss = 1/N sum_n (lse_n - z[n, t_n])
    dz[n, k] = (exp(z[n, k] - lse_n) - [k == t_n]) / N

Thread mapping
--------------
    cross_entropy_forward:  one thread per row n writes the per-row loss rows[n] (float64),
                            then ONE block of RED_TPB threads sums rows with a shared-memory
                            tree reduction; the 8-byte total is copied to the host and
                            divided by N (a Python float is returned).
    cross_entropy_backward: one thread per row n writes dz[n, :].
    loss_and_hits:          ONE block: thread j takes rows j, j + RED_TPB, ... and the
                            block's tree sums add the loss and the hits into totals (2,).

Optimisation contract
---------------------
* Row-parallel: each row's max, sum and outputs belong to one thread (no races).  K (the
  number of classes) is small in this project, so a thread per row is enough; a block per
  row would be the next step for large K.
* float64 for max/exp/log/sums whatever the logits dtype (as the CPU); dz is cast on store.
* The reduction tree has a fixed shape: the loss is deterministic (it may differ from the
  CPU's serial sum in the last bits).
* Labels are trusted (functional checks 0 <= t_n < K); N == 0 returns NaN.
"""

import math

import numpy as np
from numba import cuda, float64

from .. import common
from ._launch import RED_TPB, TPB, block_sum, blocks_for, sum_rows_kernel

# (m, log sum_k exp(z[n,k] - m)) of one row, in float64 (written once, in kernels/common.py).
row_max_logsumexp = cuda.jit(device=True)(common.row_max_logsumexp)
row_hit = cuda.jit(device=True)(common.row_hit)


@cuda.jit
def _ce_rows_kernel(logits, labels, rows):
    # logits: (N, K)   labels: (N,) int64   rows: (N,) float64
    n = cuda.grid(1)  # owns rows[n]
    if n >= logits.shape[0]:
        return
    m, lse = row_max_logsumexp(logits, n)
    rows[n] = (m + lse) - float64(logits[n, labels[n]])


def cross_entropy_forward(logits, labels):
    """mean over n of logsumexp(logits[n]) - logits[n, labels[n]], as a Python float."""
    N = logits.shape[0]
    if N == 0:
        return float("nan")
    rows = cuda.device_array(N, dtype=np.float64)  # rows: (N,) per-sample losses
    _ce_rows_kernel[blocks_for(N), TPB](logits, labels, rows)
    total = cuda.device_array(1, dtype=np.float64)  # total: (1,)
    sum_rows_kernel[1, RED_TPB](rows, total)
    return float(total.copy_to_host()[0]) / N


@cuda.jit
def _loss_and_hits_kernel(logits, labels, totals):
    # logits: (N, K)   labels: (N,) int64   totals: (2,) float64; ONE block of RED_TPB threads
    buf = cuda.shared.array(RED_TPB, float64)
    loss, hits = float64(0.0), float64(0.0)
    for n in range(cuda.threadIdx.x, logits.shape[0], RED_TPB):  # rows n, n + RED_TPB, ...
        m, lse = row_max_logsumexp(logits, n)
        loss += (m + lse) - float64(logits[n, labels[n]])
        hits += row_hit(logits, labels, n)
    loss = block_sum(buf, loss)
    hits = block_sum(buf, hits)
    if cuda.threadIdx.x == 0:
        totals[0] += loss
        totals[1] += hits


def loss_and_hits(logits, labels, totals):
    """totals[0] += the batch's summed cross-entropy, totals[1] += its correct predictions,
    in place on the device: one block, a fixed-order tree (deterministic), nothing copied to
    the host (a training loop reads totals once per logging interval)."""
    if logits.shape[0]:
        _loss_and_hits_kernel[1, RED_TPB](logits, labels, totals)


@cuda.jit
def _ce_backward_kernel(logits, labels, dlogits):
    # logits, dlogits: (N, K)   labels: (N,) int64
    N, K = logits.shape
    n = cuda.grid(1)  # owns dlogits[n, :]
    if n >= N:
        return
    m, lse = row_max_logsumexp(logits, n)
    shift = m + lse
    t = labels[n]
    for k in range(K):
        p = math.exp(float64(logits[n, k]) - shift)
        if k == t:
            p -= 1.0
        dlogits[n, k] = p / N


def cross_entropy_backward(logits, labels, dlogits):
    """dlogits[n, k] = (softmax(logits[n])_k - [k == labels[n]]) / N: one thread per row."""
    N = logits.shape[0]
    if N == 0:
        return
    _ce_backward_kernel[blocks_for(N), TPB](logits, labels, dlogits)
