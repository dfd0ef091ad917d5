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

Fused with the ReLU after it (training mode; numbacnn.fusion), as the CPU kernels:
batch_norm_relu_forward_train writes y = max(x scale + shift, 0) and batch_norm_relu_backward
reads dy only where the fused output y > 0 (the ReLU mask), in the split kernels' own loops
(a `relu` flag of _affine / _dy_sums / _affine_backward).

Two versions
------------
The exported batch_norm_forward_train / batch_norm_backward / batch_norm_backward_eval split
each channel over S blocks (a two-level reduction, below); the *_naive versions give a
channel one block (64 channels leave half of an H100 idle) and stay as their reference.

Split versions: grid (S, C), S = splits(N, C) so that about TARGET_BLOCKS blocks run.
    Block (s, c) owns the images n = s*lanes + tid // L, stepping by S*lanes, of channel c,
    with lanes = max(1, RED_TPB // L) images side by side when a plane is smaller than the
    block; its threads stride over l. One division per thread, none per element.
    Level 1: every block writes its float64 partial sum to part[c, s] (block_sum).
    Level 2: the next kernel adds part[c, 0..S) in order (deterministic), per channel.
    forward (training):  _sum (x) -> _centered (sum (x - mean)^2, mean from level 2)
                         -> _finish (one thread per channel: mean, var, scale, shift and
                         the running statistics) -> _affine (y = x scale + shift)
    backward (training): _sum, _centered as above -> _dy_sums (sum dy, sum dy (x - mean))
                         -> _finish_backward (dgamma, dbeta and dx's coefficients)
                         -> _affine_backward (dx = k (dy - mean_dy - (x - mean) coef))
    backward (eval):     _dy_sums -> _finish_backward_eval -> _affine_backward

Naive versions:
    batch_norm_forward_train_naive:  one BLOCK per channel c (grid = C blocks of RED_TPB threads).
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

import numpy as np
from numba import config, cuda, float64

from ._launch import RED_TPB, TPB, block_sum, blocks_for

_SIM = bool(config.ENABLE_CUDASIM)
# The split versions give each channel SPLITS blocks, so that this many blocks run at once
# (four per SM of a 132-SM H100); under the simulator a few, to exercise the splits.
TARGET_BLOCKS = 4 if _SIM else 528


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


def batch_norm_forward_train_naive(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
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


def batch_norm_backward_naive(dy3, x3, gamma, eps, dx3, dgamma, dbeta):
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


def batch_norm_backward_eval_naive(dy3, x3, gamma, running_mean, running_var, eps, dx3, dgamma, dbeta):
    """Eval-mode gradient (fixed running statistics): one block per channel."""
    C = x3.shape[1]
    if C == 0:
        return
    _bn_backward_eval_kernel[C, RED_TPB](
        dy3, x3, gamma, running_mean, running_var, float(eps), dx3, dgamma, dbeta
    )


# ====================================================================== split versions
def splits(N, C):
    """Blocks per channel: enough for TARGET_BLOCKS blocks in all, at most one per image."""
    return max(1, min(N, -(-TARGET_BLOCKS // max(C, 1))))


@cuda.jit(device=True, inline=True)
def _slice(N, L, s, S):
    """This thread's part of channel slice s of S: (n0, n_step, l0, l_step). A plane smaller
    than the block takes `lanes` images side by side; threads left over get n0 = N."""
    tid = cuda.threadIdx.x
    if L >= RED_TPB:
        return s, S, tid, RED_TPB
    lanes = RED_TPB // L
    lane = tid // L
    n0 = s * lanes + lane if lane < lanes else N
    return n0, S * lanes, tid - lane * L, L


@cuda.jit
def _sum_kernel(x3, part):
    # x3: (N, C, L)   part: (C, S) float64 partial sums of x
    N, C, L = x3.shape
    S = part.shape[1]
    s, c = cuda.blockIdx.x, cuda.blockIdx.y  # block (s, c) owns slice s of channel c
    buf = cuda.shared.array(RED_TPB, float64)
    n0, n_step, l0, l_step = _slice(N, L, s, S)
    acc = float64(0.0)
    for n in range(n0, N, n_step):
        for l in range(l0, L, l_step):
            acc += x3[n, c, l]
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        part[c, s] = total


@cuda.jit(device=True, inline=True)
def _sum_of(part, c):
    """Channel c's total from its level-1 partial sums, added in split order."""
    acc = float64(0.0)
    for s in range(part.shape[1]):
        acc += part[c, s]
    return acc


@cuda.jit(device=True, inline=True)
def _mean_of(part, c, cnt):
    """The channel's mean from its partial sums."""
    return _sum_of(part, c) / cnt


@cuda.jit
def _centered_kernel(x3, part_sum, part_q):
    # x3: (N, C, L)   part_sum, part_q: (C, S) float64; part_q = partial sums of (x - mean)^2
    N, C, L = x3.shape
    S = part_q.shape[1]
    s, c = cuda.blockIdx.x, cuda.blockIdx.y
    buf = cuda.shared.array(RED_TPB, float64)
    mean = _mean_of(part_sum, c, N * L)
    n0, n_step, l0, l_step = _slice(N, L, s, S)
    acc = float64(0.0)
    for n in range(n0, N, n_step):
        for l in range(l0, L, l_step):
            d = x3[n, c, l] - mean
            acc += d * d
    total = block_sum(buf, acc)
    if cuda.threadIdx.x == 0:
        part_q[c, s] = total


@cuda.jit
def _finish_kernel(part_sum, part_q, cnt, gamma, beta, running_mean, running_var, momentum, eps, coef):
    # part_sum, part_q: (C, S)   gamma, beta, running_*: (C,)   coef: (C, 4) float64 <- (mean, scale,
    # shift, 0); one thread per channel
    c = cuda.grid(1)  # one thread per channel
    if c >= coef.shape[0]:
        return
    mean = _mean_of(part_sum, c, cnt)
    var = _mean_of(part_q, c, cnt)
    scale = float64(gamma[c]) / math.sqrt(var + eps)
    coef[c, 0] = mean
    coef[c, 1] = scale
    coef[c, 2] = float64(beta[c]) - mean * scale
    coef[c, 3] = 0.0
    unbiased = var * cnt / (cnt - 1) if cnt > 1 else var
    running_mean[c] = (1.0 - momentum) * float64(running_mean[c]) + momentum * mean
    running_var[c] = (1.0 - momentum) * float64(running_var[c]) + momentum * unbiased


@cuda.jit
def _affine_kernel(x3, coef, y3, relu):
    # x3, y3: (N, C, L)   coef: (C, 4): y = x * coef[c, 1] + coef[c, 2], then max(y, 0) if relu
    N, C, L = x3.shape
    S = cuda.gridDim.x
    s, c = cuda.blockIdx.x, cuda.blockIdx.y
    scale, shift = coef[c, 1], coef[c, 2]
    n0, n_step, l0, l_step = _slice(N, L, s, S)
    for n in range(n0, N, n_step):
        for l in range(l0, L, l_step):
            v = x3[n, c, l] * scale + shift
            if relu and v <= 0.0:
                v = 0.0
            y3[n, c, l] = v


@cuda.jit
def _dy_sums_kernel(dy3, y3, x3, mean_of, part_a, part_b, relu):
    # dy3, y3, x3: (N, C, L)   mean_of: (C, 4) float64, column 0 the mean   part_a, part_b: (C, S)
    # with relu, dy counts only where y3 (the fused BN -> ReLU output) > 0
    N, C, L = x3.shape
    S = part_a.shape[1]
    s, c = cuda.blockIdx.x, cuda.blockIdx.y
    buf = cuda.shared.array(RED_TPB, float64)
    mean = mean_of[c, 0]
    n0, n_step, l0, l_step = _slice(N, L, s, S)
    a = float64(0.0)  # sum dy
    b = float64(0.0)  # sum dy * (x - mean)
    for n in range(n0, N, n_step):
        for l in range(l0, L, l_step):
            g = float64(dy3[n, c, l])
            if relu and y3[n, c, l] <= 0:
                g = 0.0
            a += g
            b += g * (x3[n, c, l] - mean)
    a = block_sum(buf, a)
    b = block_sum(buf, b)
    if cuda.threadIdx.x == 0:
        part_a[c, s] = a
        part_b[c, s] = b


@cuda.jit
def _stats_kernel(part_sum, part_q, cnt, eps, coef):
    # coef: (C, 4) float64 <- (mean, 1/sqrt(var + eps), 0, 0): the batch statistics
    c = cuda.grid(1)
    if c >= coef.shape[0]:
        return
    coef[c, 0] = _mean_of(part_sum, c, cnt)
    coef[c, 1] = 1.0 / math.sqrt(_mean_of(part_q, c, cnt) + eps)
    coef[c, 2] = 0.0
    coef[c, 3] = 0.0


@cuda.jit
def _eval_stats_kernel(running_mean, running_var, eps, coef):
    # coef: (C, 4) float64 <- (running_mean, 1/sqrt(running_var + eps), 0, 0)
    c = cuda.grid(1)
    if c >= coef.shape[0]:
        return
    coef[c, 0] = float64(running_mean[c])
    coef[c, 1] = 1.0 / math.sqrt(float64(running_var[c]) + eps)
    coef[c, 2] = 0.0
    coef[c, 3] = 0.0


@cuda.jit
def _finish_backward_kernel(part_a, part_b, cnt, gamma, train, coef, dgamma, dbeta):
    # part_a, part_b: (C, S) partial sums of dy and dy (x - mean)   gamma, dgamma, dbeta: (C,)
    # coef: (C, 4) float64, in (mean, sd, 0, 0), out (mean, k, mean_dy, c3) so that
    # dx = k (dy - mean_dy - (x - mean) c3); eval mode (fixed statistics): dx = k dy
    c = cuda.grid(1)
    if c >= coef.shape[0]:
        return
    sd = coef[c, 1]
    sum_dy = _sum_of(part_a, c)
    sum_dy_xhat = _sum_of(part_b, c) * sd
    dbeta[c] = sum_dy
    dgamma[c] = sum_dy_xhat
    coef[c, 1] = float64(gamma[c]) * sd
    if train:
        coef[c, 2] = sum_dy / cnt
        coef[c, 3] = sd * sum_dy_xhat / cnt


@cuda.jit
def _affine_backward_kernel(dy3, y3, x3, coef, dx3, relu, train):
    # dy3, y3, x3, dx3: (N, C, L)   coef: (C, 4): dx = k (dy - mean_dy - (x - mean) c3), with
    # relu dy only where y3 > 0; eval mode (fixed statistics): dx = k dy, x unread (a NaN in x
    # must not reach dx through (x - mean) * 0, as on the CPU)
    N, C, L = x3.shape
    S = cuda.gridDim.x
    s, c = cuda.blockIdx.x, cuda.blockIdx.y
    mean, k, mean_dy, c3 = coef[c, 0], coef[c, 1], coef[c, 2], coef[c, 3]
    n0, n_step, l0, l_step = _slice(N, L, s, S)
    for n in range(n0, N, n_step):
        for l in range(l0, L, l_step):
            g = float64(dy3[n, c, l])
            if relu and y3[n, c, l] <= 0:
                g = 0.0
            dx3[n, c, l] = k * (g - mean_dy - (x3[n, c, l] - mean) * c3) if train else k * g


def _statistics(x3):
    """(S, part_sum, part_q, coef): the splits per channel, the level-1 partial sums of x and
    of (x - mean)^2, (C, S) each, and the (C, 4) float64 coefficients for the next kernels."""
    N, C, L = x3.shape
    S = splits(N, C)
    part_sum = cuda.device_array((C, S), np.float64)
    part_q = cuda.device_array((C, S), np.float64)
    _sum_kernel[(S, C), RED_TPB](x3, part_sum)
    _centered_kernel[(S, C), RED_TPB](x3, part_sum, part_q)
    return S, part_sum, part_q, cuda.device_array((C, 4), np.float64)


def batch_norm_forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    """y3 = batch-normalised x3; updates running_mean/running_var in place. Each channel is
    split over S blocks (a two-level reduction, fixed order: deterministic)."""
    _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, False)


def batch_norm_relu_forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    """y3 = max(batch_norm(x3), 0), the fused BN -> ReLU; updates the running stats in place."""
    _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, True)


def _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, relu):
    N, C, L = x3.shape
    if C == 0:
        return
    S, part_sum, part_q, coef = _statistics(x3)
    _finish_kernel[blocks_for(C), TPB](part_sum, part_q, N * L, gamma, beta, running_mean, running_var,
                                       float(momentum), float(eps), coef)  # fmt: skip
    _affine_kernel[(S, C), RED_TPB](x3, coef, y3, relu)


def _backward(dy3, y3, x3, gamma, coef, train, dx3, dgamma, dbeta, S, relu):
    N, C, L = x3.shape
    part_a = cuda.device_array((C, S), np.float64)
    part_b = cuda.device_array((C, S), np.float64)
    _dy_sums_kernel[(S, C), RED_TPB](dy3, y3, x3, coef, part_a, part_b, relu)
    _finish_backward_kernel[blocks_for(C), TPB](part_a, part_b, N * L, gamma, train, coef, dgamma, dbeta)
    _affine_backward_kernel[(S, C), RED_TPB](dy3, y3, x3, coef, dx3, relu, train)


def batch_norm_backward(dy3, x3, gamma, eps, dx3, dgamma, dbeta):
    """Training-mode gradient (batch statistics recomputed), each channel over S blocks."""
    _backward_train(dy3, x3, x3, gamma, eps, dx3, dgamma, dbeta, False)  # (y3 unused)


def batch_norm_relu_backward(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta):
    """Gradient of the fused BN -> ReLU: dy3 is the gradient of its output y3, gated by the
    ReLU mask y3 > 0 on the fly; then as batch_norm_backward."""
    _backward_train(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta, True)


def _backward_train(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta, relu):
    N, C, L = x3.shape
    if C == 0:
        return
    S, part_sum, part_q, coef = _statistics(x3)
    _stats_kernel[blocks_for(C), TPB](part_sum, part_q, N * L, float(eps), coef)
    _backward(dy3, y3, x3, gamma, coef, True, dx3, dgamma, dbeta, S, relu)


def batch_norm_backward_eval(dy3, x3, gamma, running_mean, running_var, eps, dx3, dgamma, dbeta):
    """Eval-mode gradient (fixed running statistics), each channel over S blocks."""
    N, C, L = x3.shape
    if C == 0:
        return
    S = splits(N, C)
    coef = cuda.device_array((C, 4), np.float64)
    _eval_stats_kernel[blocks_for(C), TPB](running_mean, running_var, float(eps), coef)
    _backward(dy3, x3, x3, gamma, coef, False, dx3, dgamma, dbeta, S, False)


# ------------------------------------------------------- eval: folded into the conv before it
@cuda.jit
def _fuse_conv_bn_kernel(weight2, bias, gamma, beta, running_mean, running_var, eps, w_out, b_out):
    # weight2, w_out: (C_out, K)   bias, gamma, beta, running_*, b_out: (C_out,)
    C_out, K = weight2.shape
    t = cuda.grid(1)  # owns w_out[co, k] (and b_out[co] when k == 0)
    if t >= C_out * K:
        return
    co = t // K
    k = t - co * K
    scale = float64(gamma[co]) / math.sqrt(float64(running_var[co]) + eps)
    w_out[co, k] = weight2[co, k] * scale
    if k == 0:
        b_out[co] = (float64(bias[co]) - float64(running_mean[co])) * scale + float64(beta[co])


def fuse_conv_bn_weights(weight2, bias, gamma, beta, running_mean, running_var, eps, w_out, b_out):
    """w_out = weight2 * scale, b_out = (bias - running_mean) * scale + beta per output channel,
    scale = gamma / sqrt(running_var + eps) (the CPU kernel's formula): one thread per weight."""
    total = w_out.size
    if total == 0:
        return
    _fuse_conv_bn_kernel[blocks_for(total), TPB](
        weight2, bias, gamma, beta, running_mean, running_var, float(eps), w_out, b_out
    )


@cuda.jit
def _fuse_conv_bn_backward_kernel(dw_fused2, db_fused, weight2, bias, gamma, running_mean, running_var, eps,
                                  dweight2, dbias, dgamma, dbeta):  # fmt: skip
    # dw_fused2, weight2, dweight2: (C_out, K)   the rest: (C_out,)
    C_out, K = weight2.shape
    co = cuda.grid(1)  # owns output channel co
    if co >= C_out:
        return
    sigma = math.sqrt(float64(running_var[co]) + eps)
    scale = float64(gamma[co]) / sigma
    dot = float64(0.0)
    for k in range(K):
        g = float64(dw_fused2[co, k])
        dweight2[co, k] = g * scale
        dot += g * float64(weight2[co, k])
    db = float64(db_fused[co])
    dbias[co] = db * scale
    dgamma[co] = (dot + db * (float64(bias[co]) - float64(running_mean[co]))) / sigma
    dbeta[co] = db


def fuse_conv_bn_weights_backward(dw_fused2, db_fused, weight2, bias, gamma, running_mean, running_var, eps,
                                  dweight2, dbias, dgamma, dbeta):  # fmt: skip
    """The CPU kernel's formulas (parameter gradients of a folded conv): one thread per
    output channel."""
    C_out = weight2.shape[0]
    if C_out == 0:
        return
    _fuse_conv_bn_backward_kernel[blocks_for(C_out), TPB](dw_fused2, db_fused, weight2, bias, gamma,
                                                         running_mean, running_var, float(eps), dweight2,
                                                         dbias, dgamma, dbeta)  # fmt: skip
