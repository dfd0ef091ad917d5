"""Batch normalisation: CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.batchnorm)
------------------------------------------------
x is viewed as x3 (N, C, L) (L = H*W, or 1 for (N, C) input); per channel c the batch is
the n = N*L values x3[:, c, :]:

    mu     = 1/n sum x_i                 var = 1/n sum (x_i - mu)^2   (biased, two passes)
    y_i    = gamma * (x_i - mu) / sqrt(var + eps) + beta  =  x_i * scale + shift
    running_mean = (1-m) running_mean + m mu,   running_var = (1-m) running_var + m var n/(n-1)

    backward (training mode), s = 1/sqrt(var + eps), xhat = (x - mu) s:
    dbeta = sum dy,  dgamma = sum dy xhat,  dx = gamma s (dy - dbeta/n - xhat dgamma/n)

Thread mapping
--------------
    batch_norm_forward_train:  one BLOCK per channel c (grid = C blocks of RED_TPB threads).
        The threads stride over the channel's n values (j = n*L + l, consecutive threads ->
        consecutive l: coalesced), each keeps a float64 partial sum, and the block combines
        them with a shared-memory tree reduction (`block_sum`): mean, then the centred
        variance; then every thread writes its y3 elements; thread 0 updates
        running_mean[c] and running_var[c].
    batch_norm_forward_eval:   one thread per y3 element (flat C index); scale and shift are
        recomputed per element from running_var[c] (cheaper than a second launch).
    batch_norm_backward:       one block per channel: four block reductions (mean, variance,
        sum dy, sum dy*(x - mean)), then each thread writes its dx3 elements; thread 0
        writes dgamma[c], dbeta[c].

Optimisation contract
---------------------
* A channel belongs to one block: its statistics, running stats, dgamma[c], dbeta[c] and
  its slice of y3 / dx3 are written by that block only, so there are no atomics and no
  cross-block communication; the tree reduction order is fixed (deterministic results).
* Statistics and gradient sums accumulate in float64 whatever the array dtype (two-pass
  variance, no E[x^2]-E[x]^2 cancellation), as the CPU kernels; results are cast on store.
  Array elements entering float64 arithmetic are cast explicitly (float64(gamma[c])): on the
  GPU numba would promote them anyway, but the simulator follows NumPy's rules, where
  float32 (op) Python float stays float32.
* Backward recomputes mu and var from x (nothing cached by the forward).
* All outputs are fully overwritten.
"""

import math

from numba import cuda, float64

from ._launch import RED_TPB, TPB, block_sum, blocks_for


@cuda.jit(device=True)
def _channel_mean_var(x3, c, tid, buf):
    """Batch mean and biased variance of channel c (two passes, float64), computed by the
    whole block: each thread strides over the N*L values, block_sum combines the partials."""
    # x3: (N, C, L)   buf: (RED_TPB,) shared scratch
    N, C, L = x3.shape
    cnt = N * L
    s = float64(0.0)
    for j in range(tid, cnt, RED_TPB):
        n = j // L
        s += x3[n, c, j - n * L]
    mean = block_sum(buf, s) / cnt
    q = float64(0.0)
    for j in range(tid, cnt, RED_TPB):
        n = j // L
        d = x3[n, c, j - n * L] - mean
        q += d * d
    return mean, block_sum(buf, q) / cnt


@cuda.jit(device=True)
def _channel_dy_sums(dy3, x3, c, mean, tid, buf):
    """(sum dy, sum dy * (x - mean)) over channel c in float64, computed by the whole block
    (the two sums of both backward formulas)."""
    # dy3, x3: (N, C, L)   buf: (RED_TPB,) shared scratch
    N, C, L = x3.shape
    a = float64(0.0)  # sum dy
    b = float64(0.0)  # sum dy * (x - mean)
    for j in range(tid, N * L, RED_TPB):
        n = j // L
        l = j - n * L
        g = dy3[n, c, l]
        a += g
        b += g * (x3[n, c, l] - mean)
    return block_sum(buf, a), block_sum(buf, b)


@cuda.jit
def _bn_forward_train_kernel(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    # x3, y3: (N, C, L)   gamma, beta, running_mean, running_var: (C,)
    N, C, L = x3.shape
    c = cuda.blockIdx.x  # block owns channel c
    tid = cuda.threadIdx.x
    cnt = N * L
    buf = cuda.shared.array(RED_TPB, float64)  # buf: (RED_TPB,) partial sums
    mean, var = _channel_mean_var(x3, c, tid, buf)
    scale = float64(gamma[c]) / math.sqrt(var + eps)  # float64 (explicit casts: see contract)
    shift = float64(beta[c]) - mean * scale
    for j in range(tid, cnt, RED_TPB):
        n = j // L
        l = j - n * L
        y3[n, c, l] = x3[n, c, l] * scale + shift
    if tid == 0:
        unbiased = var * cnt / (cnt - 1) if cnt > 1 else var
        running_mean[c] = (1.0 - momentum) * float64(running_mean[c]) + momentum * mean
        running_var[c] = (1.0 - momentum) * float64(running_var[c]) + momentum * unbiased


def batch_norm_forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    """y3 = batch-normalised x3; updates running_mean/running_var in place (one block per channel)."""
    C = x3.shape[1]
    if C == 0:
        return
    _bn_forward_train_kernel[C, RED_TPB](
        x3, gamma, beta, running_mean, running_var, float(momentum), float(eps), y3
    )


@cuda.jit
def _bn_forward_eval_kernel(x3, gamma, beta, running_mean, running_var, eps, y3):
    # x3, y3: (N, C, L)   gamma, beta, running_mean, running_var: (C,)
    N, C, L = x3.shape
    t = cuda.grid(1)  # owns y3[n, c, l]
    if t >= N * C * L:
        return
    l = t % L
    r = t // L
    c = r % C
    n = r // C
    scale = float64(gamma[c]) / math.sqrt(float64(running_var[c]) + eps)
    shift = float64(beta[c]) - float64(running_mean[c]) * scale
    y3[n, c, l] = x3[n, c, l] * scale + shift


def batch_norm_forward_eval(x3, gamma, beta, running_mean, running_var, eps, y3):
    """y3 = gamma (x3 - running_mean)/sqrt(running_var + eps) + beta: one thread per element."""
    total = y3.size
    if total == 0:
        return
    _bn_forward_eval_kernel[blocks_for(total), TPB](
        x3, gamma, beta, running_mean, running_var, float(eps), y3
    )


@cuda.jit
def _bn_backward_kernel(dy3, x3, gamma, eps, dx3, dgamma, dbeta):
    # dy3, x3, dx3: (N, C, L)   gamma, dgamma, dbeta: (C,)
    N, C, L = x3.shape
    c = cuda.blockIdx.x  # block owns channel c
    tid = cuda.threadIdx.x
    cnt = N * L
    buf = cuda.shared.array(RED_TPB, float64)  # buf: (RED_TPB,) partial sums
    mean, var = _channel_mean_var(x3, c, tid, buf)
    sd = 1.0 / math.sqrt(var + eps)
    sum_dy, sum_dy_xc = _channel_dy_sums(dy3, x3, c, mean, tid, buf)
    sum_dy_xhat = sum_dy_xc * sd
    if tid == 0:
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xhat
    k = float64(gamma[c]) * sd
    mean_dy = sum_dy / cnt
    coef = sd * sum_dy_xhat / cnt
    for j in range(tid, cnt, RED_TPB):
        n = j // L
        l = j - n * L
        dx3[n, c, l] = k * (dy3[n, c, l] - mean_dy - (x3[n, c, l] - mean) * coef)


def batch_norm_backward(dy3, x3, gamma, eps, dx3, dgamma, dbeta):
    """Training-mode gradient (batch statistics recomputed): one block per channel."""
    C = x3.shape[1]
    if C == 0:
        return
    _bn_backward_kernel[C, RED_TPB](dy3, x3, gamma, float(eps), dx3, dgamma, dbeta)


@cuda.jit
def _bn_backward_eval_kernel(dy3, x3, gamma, running_mean, running_var, eps, dx3, dgamma, dbeta):
    # dy3, x3, dx3: (N, C, L)   gamma, running_mean, running_var, dgamma, dbeta: (C,)
    N, C, L = x3.shape
    c = cuda.blockIdx.x  # block owns channel c
    tid = cuda.threadIdx.x
    cnt = N * L
    buf = cuda.shared.array(RED_TPB, float64)  # buf: (RED_TPB,) partial sums
    sd = 1.0 / math.sqrt(float64(running_var[c]) + eps)
    mean = float64(running_mean[c])
    k = float64(gamma[c]) * sd
    sum_dy, sum_dy_xc = _channel_dy_sums(dy3, x3, c, mean, tid, buf)
    for j in range(tid, cnt, RED_TPB):
        n = j // L
        dx3[n, c, j - n * L] = k * dy3[n, c, j - n * L]
    if tid == 0:
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xc * sd


def batch_norm_backward_eval(dy3, x3, gamma, running_mean, running_var, eps, dx3, dgamma, dbeta):
    """Eval-mode gradient (fixed running statistics): one block per channel."""
    C = x3.shape[1]
    if C == 0:
        return
    _bn_backward_eval_kernel[C, RED_TPB](
        dy3, x3, gamma, running_mean, running_var, float(eps), dx3, dgamma, dbeta
    )
