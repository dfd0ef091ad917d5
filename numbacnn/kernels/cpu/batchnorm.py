"""Batch normalisation: CPU kernels (explicit Numba loop nests).

Formula (lecture, "Batch Normalization"; PyTorch semantics)
-----------------------------------------------------------
The input is viewed as x3 (N, C, L): L = H*W for a (N, C, H, W) tensor, L = 1 for (N, C).
Per channel c the batch B is the n = N*L values x3[:, c, :]:

    mu_B      = 1/n * sum_{i in B} x_i
    sigma_B^2 = 1/n * sum_{i in B} (x_i - mu_B)^2                  (biased variance)
    xhat_i    = (x_i - mu_B) / sqrt(sigma_B^2 + eps)
    y_i       = gamma * xhat_i + beta

(the slide folds eps into sigma_B^2; here, as in PyTorch, eps sits under the square root).

Training also updates the running statistics IN PLACE (momentum m, PyTorch convention):

    running_mean = (1-m) * running_mean + m * mu_B
    running_var  = (1-m) * running_var  + m * sigma_B^2 * n/(n-1)   (unbiased; n == 1: sigma_B^2)

Evaluation normalises with running_mean / running_var instead of the batch statistics.

Fused with the ReLU that follows (ResNet's bn1 -> relu1; numbacnn.fusion), training mode:

    forward:   y_i  = max(gamma * xhat_i + beta, 0)            (NaN stays NaN, as ReLU)
    backward:  dy'_i = dy_i if y_i > 0 else 0                   (the mask of ReLU's backward,
               read from the fused output: y > 0 exactly where the BN output was > 0)
               then the three formulas below with dy' in place of dy.

One pass over y instead of three (BN's y, ReLU's read and write), and one over dy instead
of two; the `relu` flag is an argument of one compiled kernel, so the plain and the fused
forms cost one compilation.

Backward (training mode: the batch statistics depend on x), with s = 1/sqrt(sigma_B^2 + eps):

    dbeta  = sum_i dy_i
    dgamma = sum_i dy_i * xhat_i
    dx_i   = gamma * s * (dy_i - dbeta/n - xhat_i * dgamma/n)

Loop nest (all three kernels)
-----------------------------
    for c in prange(C):                     # one channel per iteration  <- parallel axis
        for n in range(N):                  # pass 1: mean and variance (backward: and
            for l in range(L):              #         the dy sums); pass 2: y or dx
                ...

Optimisation contract
---------------------
* Parallel over channels: a channel's statistics, its running_mean[c]/running_var[c],
  dgamma[c], dbeta[c] and its slice y3[:, c, :] / dx3[:, c, :] belong to one thread, so
  nothing is shared and no reduction crosses threads.  The innermost loop runs over the
  contiguous L axis through a 1-D row view x3[n, c] (the form LLVM vectorises best).
* Statistics and gradient sums are accumulated in float64 whatever the array dtype, in one
  pass over x: the sums of d = x - K and d^2 with K the mean of the channel's first 64
  values (`_shift`), so var = E[d^2] - E[d]^2 does not cancel the way E[x^2] - E[x]^2
  would far from zero (1e-15 relative in float64 with a 300-sigma outlier among them); the
  backward takes its statistics and its two sums in that same pass (2 passes over x and dy
  in all, not 4 over x); results are cast to the array dtype on store.
* The channel sums are compiled with fastmath={'reassoc', 'contract'} so LLVM can split
  them over SIMD lanes; only the (float64) summation order changes, NaN/inf are kept.
* The per-element work is folded into one multiply-add: y = x*scale + shift with
  scale = gamma*s and shift = beta - mu*scale computed once per channel.
* Backward recomputes mu_B and sigma_B^2 from x (nothing cached by the forward), so the
  contract is (dy, x, gamma) -> (dx, dgamma, dbeta).
* y3, dx3, dgamma, dbeta are fully overwritten (np.empty outputs are fine).
"""

import math

from numba import njit, prange

_FAST = {"reassoc", "contract"}  # lets LLVM vectorise the float64 sums (order changes only)


SHIFT_SAMPLES = 64  # values of a channel averaged for its shift K (see _shift)


@njit(cache=True)
def _shift(x3, c):
    """K, the value the one-pass sums of channel c are centred on: the mean of its first
    SHIFT_SAMPLES values (in (n, l) order), in float64; 0 for an empty batch or a non-finite
    mean (whose sums are not finite either way: inf stays inf in the mean).

    With d = x - K, var = E[d^2] - E[d]^2 loses about log2(((mean - K)/std)^2) bits to
    cancellation: none for K near the mean.  A single value as K loses many if it is an
    outlier (one at 300 standard deviations: float64 results to 1e-10 instead of 1e-15); the
    mean of 64 moves 64 times less (found by a cold review)."""
    # x3: (N, C, L)
    N, _, L = x3.shape
    s = 0.0
    m = 0
    for n in range(N):
        take = min(L, SHIFT_SAMPLES - m)
        xr = x3[n, c]  # xr: (L,)
        for l in range(take):
            s += xr[l]
        m += take
        if m == SHIFT_SAMPLES:
            break
    if m == 0:
        return 0.0
    k = s / m
    return k if math.isfinite(k) else 0.0


@njit(cache=True, fastmath=_FAST)
def _channel_mean_var(x3, c):
    """Mean and biased variance of x3[:, c, :] in float64, in ONE pass over the data: the sums
    of d = x - K and d^2 for K = _shift(x3, c), then mean = K + E[d], var = E[d^2] - E[d]^2
    (at least 0).  (The two-pass form, mean then centred squares, read x once more: 1.3x the
    forward's time on ResNet-20's layers.)"""
    # x3: (N, C, L)
    N, _, L = x3.shape
    k = _shift(x3, c)
    s1 = 0.0
    s2 = 0.0
    for n in range(N):
        xr = x3[n, c]  # xr: (L,) contiguous row view
        for l in range(L):
            d = xr[l] - k
            s1 += d
            s2 += d * d
    m1 = s1 / (N * L)
    return k + m1, max(s2 / (N * L) - m1 * m1, 0.0)


# ------------------------------------------------------------------------------- forward
def batch_norm_forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    """y3 = gamma * (x3 - mu_B)/sqrt(var_B + eps) + beta; updates the running stats in place."""
    _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, False)


def batch_norm_relu_forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3):
    """y3 = max(batch_norm(x3), 0), the fused BN -> ReLU; updates the running stats in place."""
    _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, True)


@njit(parallel=True, cache=True)
def _forward_train(x3, gamma, beta, running_mean, running_var, momentum, eps, y3, relu):
    # x3: (N, C, L)   gamma, beta, running_mean, running_var: (C,)   y3: (N, C, L)
    N, C, L = x3.shape
    cnt = N * L
    for c in prange(C):
        mean, var = _channel_mean_var(x3, c)
        scale = gamma[c] / math.sqrt(var + eps)  # float64
        shift = beta[c] - mean * scale
        for n in range(N):
            xr = x3[n, c]  # xr, yr: (L,)
            yr = y3[n, c]
            for l in range(L):
                v = xr[l] * scale + shift
                if relu and v <= 0.0:
                    v = 0.0
                yr[l] = v
        unbiased = var * cnt / (cnt - 1) if cnt > 1 else var
        running_mean[c] = (1.0 - momentum) * running_mean[c] + momentum * mean
        running_var[c] = (1.0 - momentum) * running_var[c] + momentum * unbiased


@njit(parallel=True, cache=True)
def batch_norm_forward_eval(x3, gamma, beta, running_mean, running_var, eps, y3):
    """y3 = gamma * (x3 - running_mean)/sqrt(running_var + eps) + beta."""
    # x3: (N, C, L)   gamma, beta, running_mean, running_var: (C,)   y3: (N, C, L)
    N, C, L = x3.shape
    for c in prange(C):
        scale = gamma[c] / math.sqrt(running_var[c] + eps)
        shift = beta[c] - running_mean[c] * scale
        for n in range(N):
            xr = x3[n, c]  # xr, yr: (L,)
            yr = y3[n, c]
            for l in range(L):
                yr[l] = xr[l] * scale + shift


# ------------------------------------------------------------------------------ backward
def batch_norm_backward(dy3, x3, gamma, eps, dx3, dgamma, dbeta):
    """Training-mode gradient: dx3, dgamma = sum dy*xhat, dbeta = sum dy (batch stats recomputed)."""
    _backward_train(dy3, x3, x3, gamma, eps, dx3, dgamma, dbeta, False)  # (y3 unused)


def batch_norm_relu_backward(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta):
    """Gradient of the fused BN -> ReLU: dy3 is the gradient of its output y3; the ReLU mask
    (y3 > 0) gates dy3 on the fly, then as batch_norm_backward."""
    _backward_train(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta, True)


@njit(parallel=True, cache=True, fastmath=_FAST)
def _backward_train(dy3, y3, x3, gamma, eps, dx3, dgamma, dbeta, relu):
    # dy3, y3, x3, dx3: (N, C, L)   gamma, dgamma, dbeta: (C,); y3 is read only when relu
    N, C, L = x3.shape
    cnt = N * L
    for c in prange(C):
        mean, var, sum_dy, sum_dy_xc = _channel_stats_dy_sums(dy3, y3, x3, c, relu)
        s = 1.0 / math.sqrt(var + eps)
        sum_dy_xhat = sum_dy_xc * s
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xhat
        _channel_dx(dy3, y3, x3, dx3, c, mean, s, gamma[c], sum_dy / cnt, sum_dy_xhat / cnt, relu)


@njit(cache=True, fastmath=_FAST)
def _channel_stats_dy_sums(dy3, y3, x3, c, relu):
    """(mean, biased variance, sum dy, sum dy * (x - mean)) of channel c in ONE pass over x and
    dy (with relu, dy where y3 > 0): the sums of d = x - K, d^2, dy and dy * d for K =
    _shift(x3, c), then sum dy * (x - mean) = sum dy * d - E[d] * sum dy.  float64."""
    # dy3, y3, x3: (N, C, L)
    N, _, L = x3.shape
    zero = dy3.dtype.type(0)
    k = _shift(x3, c)
    s1 = 0.0
    s2 = 0.0
    sum_dy = 0.0
    sum_dy_d = 0.0
    for n in range(N):
        gr = dy3[n, c]  # gr, yr, xr: (L,)
        yr = y3[n, c]
        xr = x3[n, c]
        for l in range(L):
            g = gr[l]
            if relu and yr[l] <= zero:
                g = zero
            d = xr[l] - k
            s1 += d
            s2 += d * d
            sum_dy += g
            sum_dy_d += g * d
    m1 = s1 / (N * L)
    return k + m1, max(s2 / (N * L) - m1 * m1, 0.0), sum_dy, sum_dy_d - m1 * sum_dy


@njit(cache=True, fastmath=_FAST)
def _channel_dx(dy3, y3, x3, dx3, c, mean, s, gamma_c, mean_dy, mean_dy_xhat, relu):
    """Channel c of dx = gamma*s*(dy - mean(dy) - xhat*mean(dy*xhat)), xhat = (x - mean)*s
    (with relu, dy where y3 > 0)."""
    # dy3, y3, x3, dx3: (N, C, L)
    N, _, L = x3.shape
    zero = dy3.dtype.type(0)
    k = gamma_c * s
    coef = s * mean_dy_xhat  # xhat * mean_dy_xhat = (x - mean) * coef
    for n in range(N):
        gr = dy3[n, c]  # gr, yr, xr, dr: (L,)
        yr = y3[n, c]
        xr = x3[n, c]
        dr = dx3[n, c]
        for l in range(L):
            g = gr[l]
            if relu and yr[l] <= zero:
                g = zero
            dr[l] = k * (g - mean_dy - (xr[l] - mean) * coef)


@njit(parallel=True, cache=True, fastmath=_FAST)
def batch_norm_backward_eval(dy3, x3, gamma, running_mean, running_var, eps, dx3, dgamma, dbeta):
    """Eval-mode gradient: y = gamma * xhat + beta with xhat = (x - running_mean) * s and the
    FIXED s = 1/sqrt(running_var + eps), so dx = gamma * s * dy, dgamma = sum dy * xhat,
    dbeta = sum dy (no batch-statistics terms)."""
    # dy3, x3, dx3: (N, C, L)   gamma, running_mean, running_var, dgamma, dbeta: (C,)
    N, C, L = x3.shape
    for c in prange(C):
        s = 1.0 / math.sqrt(running_var[c] + eps)
        mean = running_mean[c]
        k = gamma[c] * s
        sum_dy = 0.0
        sum_dy_xc = 0.0  # sum dy * (x - running_mean)
        for n in range(N):
            gr = dy3[n, c]  # gr, xr, dr: (L,)
            xr = x3[n, c]
            dr = dx3[n, c]
            for l in range(L):
                g = gr[l]
                sum_dy += g
                sum_dy_xc += g * (xr[l] - mean)
                dr[l] = k * g
        dbeta[c] = sum_dy
        dgamma[c] = sum_dy_xc * s


# ------------------------------------------------------------- across ranks (SyncBatchNorm)
# The training-mode formulas above, cut where the statistics and the two gradient sums can
# be combined over ranks (numbacnn.distributed): stats -> (Allgather, combine) -> normalise
# with batch_norm_forward_eval given the global mean and variance; backward_reduce ->
# (Allreduce) -> backward_elemt. With one rank the pieces compose to the kernels above.
@njit(parallel=True, cache=True, fastmath=_FAST)
def batch_norm_stats(x3, mean, m2):
    """Per channel: mean and centred sum of squares M2 = sum (x - mean)^2 of x3[:, c, :],
    float64 (one pass of shifted sums, _channel_mean_var); an empty batch gives 0 and 0."""
    # x3: (N, C, L)   mean, m2: (C,) float64
    N, C, L = x3.shape
    for c in prange(C):
        if N * L == 0:
            mean[c], m2[c] = 0.0, 0.0
        else:
            mu, var = _channel_mean_var(x3, c)
            mean[c], m2[c] = mu, var * (N * L)


@njit(parallel=True, cache=True, fastmath=_FAST)
def batch_norm_backward_reduce(dy3, x3, mean, var, eps, sum_dy, sum_dy_xhat):
    """Per channel: sum dy and sum dy * xhat, xhat = (x - mean)/sqrt(var + eps) with the
    GIVEN (global) statistics; float64."""
    # dy3, x3: (N, C, L)   mean, var, sum_dy, sum_dy_xhat: (C,) float64
    for c in prange(x3.shape[1]):
        local_mean, _, a, b = _channel_stats_dy_sums(dy3, x3, x3, c, False)  # b: about the local mean
        sum_dy[c] = a
        sum_dy_xhat[c] = (b + (local_mean - mean[c]) * a) * (1.0 / math.sqrt(var[c] + eps))


@njit(parallel=True, cache=True, fastmath=_FAST)
def batch_norm_backward_elemt(dy3, x3, gamma, mean, var, eps, sum_dy, sum_dy_xhat, count, dx3):
    """dx = gamma * s * (dy - sum_dy/count - xhat * sum_dy_xhat/count): the training-mode
    input gradient given the GLOBAL statistics and sums over ``count`` values per channel."""
    # dy3, x3, dx3: (N, C, L)   gamma: (C,)   mean, var, sum_dy, sum_dy_xhat: (C,) float64
    for c in prange(x3.shape[1]):
        s = 1.0 / math.sqrt(var[c] + eps)
        _channel_dx(
            dy3, x3, x3, dx3, c, mean[c], s, gamma[c], sum_dy[c] / count, sum_dy_xhat[c] / count, False
        )


# ------------------------------------------------------- eval: folded into the conv before it
@njit(cache=True)
def fuse_conv_bn_weights(weight2, bias, gamma, beta, running_mean, running_var, eps, w_out, b_out):
    """Fold an eval-mode batch norm into the conv that feeds it (torch.nn.utils.fusion.
    fuse_conv_bn_weights): with scale = gamma / sqrt(running_var + eps),

        w_out[co, :] = weight2[co, :] * scale[co]
        b_out[co]    = (bias[co] - running_mean[co]) * scale[co] + beta[co]

    so that conv(x, w_out, b_out) = batch_norm_eval(conv(x, weight2, bias)) up to rounding.
    Serial: C_out * C_in*kH*kW multiplies, a few microseconds."""
    # weight2, w_out: (C_out, C_in/groups*kH*kW)   bias, gamma, beta, running_*, b_out: (C_out,)
    C_out, K = weight2.shape
    for co in range(C_out):
        scale = gamma[co] / math.sqrt(running_var[co] + eps)  # float64
        for k in range(K):
            w_out[co, k] = weight2[co, k] * scale
        b_out[co] = (bias[co] - running_mean[co]) * scale + beta[co]


@njit(cache=True)
def fuse_conv_bn_weights_backward(dw_fused2, db_fused, weight2, bias, gamma, running_mean, running_var, eps,
                                  dweight2, dbias, dgamma, dbeta):  # fmt: skip
    """Gradients of the conv's and the batch norm's parameters from those of the folded conv
    (fuse_conv_bn_weights): with sigma = sqrt(running_var + eps) and scale = gamma / sigma,

        dweight2[co, :] = dw_fused2[co, :] * scale[co]       dbias[co] = db_fused[co] * scale[co]
        dgamma[co] = (sum_k dw_fused2[co, k] weight2[co, k] + db_fused[co] (bias[co] - running_mean[co]))
                     / sigma[co]                            dbeta[co] = db_fused[co]

    (dgamma is sum dy * xhat of batch_norm_backward_eval: sum dy * conv(x, w) per output
    channel is the dot product of the weight and its gradient). Sums in float64; serial."""
    # dw_fused2, weight2, dweight2: (C_out, K)   the rest: (C_out,)
    C_out, K = weight2.shape
    for co in range(C_out):
        sigma = math.sqrt(running_var[co] + eps)  # float64
        scale = gamma[co] / sigma
        dot = 0.0
        for k in range(K):
            g = dw_fused2[co, k]
            dweight2[co, k] = g * scale
            dot += g * weight2[co, k]
        dbias[co] = db_fused[co] * scale
        dgamma[co] = (dot + db_fused[co] * (bias[co] - running_mean[co])) / sigma
        dbeta[co] = db_fused[co]
