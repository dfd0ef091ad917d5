"""numbacnn.reference: the readable oracle.

Every function of ``numbacnn.functional`` (docs/CONTRACT.md, section 1) with the same name
and signature, written as plain Python/NumPy loops straight from the lecture's formulas
(Lecture 6, "Convolutional Neural Networks"). No JIT, no cleverness: it is meant to be read
next to the slides and to be obviously right, and it is only used on small inputs by the
tests. It does not validate its arguments.

Conventions (as in ``functional``): NCHW arrays, float32 or float64; the output has the
input's dtype, but sums are accumulated in float64 so that the oracle is at least as
accurate as the kernels it checks.

The padding arithmetic, the dropout hash and the log-sum-exp are written out here again (not
imported from ``numbacnn.shapes`` or ``numbacnn.kernels.common``) on purpose: the oracle must
stay independent of the code it checks. Names follow the index legend of docs/CONTRACT.md.
"""

import math

import numpy as np

# ----------------------------------------------------------------------------------------
# shape arithmetic (lecture: "Padding", "Stride")


def _pair(v):
    """An int or a pair -> (h, w)."""
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _conv_pads(padding, kH, kW, dil_h, dil_w):
    """(pad_top, pad_bottom, pad_left, pad_right).

    Lecture, "Padding": a common choice is p_h = k_h - 1 in total; for odd k_h pad p_h/2 on
    both sides, for even k_h pad ceil(p_h/2) on top and floor(p_h/2) on bottom. With dilation
    d the kernel covers d*(k-1)+1 pixels, so "same" pads d*(k-1) in total.
    """
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        total_h, total_w = dil_h * (kH - 1), dil_w * (kW - 1)
        return math.ceil(total_h / 2), total_h // 2, math.ceil(total_w / 2), total_w // 2
    pad_h, pad_w = _pair(padding)
    return pad_h, pad_h, pad_w, pad_w


def _out_size(n, k, pad_total, stride, dilation=1):
    """Lecture, "Stride": floor((n - k + p + s) / s), with k the dilated extent d*(k-1)+1."""
    return (n - (dilation * (k - 1) + 1) + pad_total + stride) // stride


def _zero_pad(x, top, bottom, left, right, value=0.0):
    """Lecture, "Padding adds rows/columns around input" (of zeros; -inf for max pooling)."""
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode="constant", constant_values=value)


# ----------------------------------------------------------------------------------------
# convolution


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation, lecture "2-D Convolution Layer" / "Multiple Input/Output Channels".

        y[n, co, oh, ow] = b[co] + sum_{ci_l, kh, kw} w[co, ci_l, kh, kw]
                                   * xpad[n, g*C_in_g + ci_l, oh*stride_h + kh*dil_h, ow*stride_w + kw*dil_w]

    i.e. Y = X (star) W + b with the kernel summed over the input channels of its group
    (g = co // C_out_g, C_in_g = C_in / groups), and the input padded with zeros (xpad).
    Output size floor((n - k + p + s) / s) per axis.
    """
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = weight.shape
    stride_h, stride_w = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    pad_top, pad_bottom, pad_left, pad_right = _conv_pads(padding, kH, kW, dil_h, dil_w)
    H_out = _out_size(H, kH, pad_top + pad_bottom, stride_h, dil_h)
    W_out = _out_size(W, kW, pad_left + pad_right, stride_w, dil_w)
    xpad = _zero_pad(x.astype(np.float64), pad_top, pad_bottom, pad_left, pad_right)
    w = weight.astype(np.float64)
    C_out_g = C_out // groups
    y = np.zeros((N, C_out, H_out, W_out), dtype=np.float64)
    for n in range(N):
        for co in range(C_out):
            g = co // C_out_g
            for oh in range(H_out):
                for ow in range(W_out):
                    acc = 0.0 if bias is None else float(bias[co])
                    for ci_l in range(C_in_g):
                        ci = g * C_in_g + ci_l
                        for kh in range(kH):
                            for kw in range(kW):
                                ih, iw = oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w
                                acc += w[co, ci_l, kh, kw] * xpad[n, ci, ih, iw]
                    y[n, co, oh, ow] = acc
    return y.astype(x.dtype)


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, output_mask=(True, True, True)):
    """Gradients of conv2d by the chain rule (lecture, "Backward Pass"), written as a scatter.

    Every term  w[co, ci_l, kh, kw] * xpad[n, ci, ih, iw]  of y[n, co, oh, ow] (ih = oh*stride_h
    + kh*dil_h, iw = ow*stride_w + kw*dil_w in the padded input) sends
    dy[n, co, oh, ow] * w[co, ci_l, kh, kw]  to dxpad[n, ci, ih, iw] and
    dy[n, co, oh, ow] * xpad[n, ci, ih, iw]  to dw[co, ci_l, kh, kw];
    db[co] = sum_{n, oh, ow} dy[n, co, oh, ow]. dx is dxpad with the padding cut off.
    Returns (dx, dweight, dbias), None where output_mask is False.
    """
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = weight.shape
    stride_h, stride_w = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    pad_top, pad_bottom, pad_left, pad_right = _conv_pads(padding, kH, kW, dil_h, dil_w)
    _, _, H_out, W_out = dy.shape
    xpad = _zero_pad(x.astype(np.float64), pad_top, pad_bottom, pad_left, pad_right)
    w = weight.astype(np.float64)
    g_dy = dy.astype(np.float64)
    dxpad = np.zeros_like(xpad)
    dweight = np.zeros_like(w)
    C_out_g = C_out // groups
    for n in range(N):
        for co in range(C_out):
            g = co // C_out_g
            for oh in range(H_out):
                for ow in range(W_out):
                    d = g_dy[n, co, oh, ow]
                    for ci_l in range(C_in_g):
                        ci = g * C_in_g + ci_l
                        for kh in range(kH):
                            for kw in range(kW):
                                ih, iw = oh * stride_h + kh * dil_h, ow * stride_w + kw * dil_w
                                dxpad[n, ci, ih, iw] += d * w[co, ci_l, kh, kw]
                                dweight[co, ci_l, kh, kw] += d * xpad[n, ci, ih, iw]
    dx = dxpad[:, :, pad_top : pad_top + H, pad_left : pad_left + W]
    dbias = g_dy.sum(axis=(0, 2, 3))
    grads = (dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype))
    return tuple(g if wanted else None for g, wanted in zip(grads, output_mask, strict=True))


# ----------------------------------------------------------------------------------------
# pooling (lecture, "Pooling Layer": same padding and stride as conv, one output channel
# per input channel, no parameters)


def _pool_setup(x, kernel_size, stride, padding):
    kH, kW = _pair(kernel_size)
    stride_h, stride_w = (kH, kW) if stride is None else _pair(stride)
    pad_h, pad_w = _pair(padding)
    H_out = _out_size(x.shape[2], kH, 2 * pad_h, stride_h)
    W_out = _out_size(x.shape[3], kW, 2 * pad_w, stride_w)
    return kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out


def _windows(xpad, kH, kW, stride_h, stride_w, H_out, W_out):
    """Every pooling window, in order: (n, c, oh, ow, view of xpad[n, c] under the window)."""
    N, C = xpad.shape[:2]
    for n in range(N):
        for c in range(C):
            for oh in range(H_out):
                for ow in range(W_out):
                    h0, w0 = oh * stride_h, ow * stride_w
                    yield n, c, oh, ow, xpad[n, c, h0 : h0 + kH, w0 : w0 + kW]


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D max pooling (lecture, "2-D Max Pooling": the maximal value in the sliding window).

        y[n, c, oh, ow] = max_{kh, kw} xpad[n, c, oh*stride_h + kh, ow*stride_w + kw],
    xpad padded with -inf. stride=None means stride = kernel_size.
    """
    kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out = _pool_setup(x, kernel_size, stride, padding)
    xpad = _zero_pad(x, pad_h, pad_h, pad_w, pad_w, value=-np.inf)
    y = np.empty(x.shape[:2] + (H_out, W_out), dtype=x.dtype)
    for n, c, oh, ow, window in _windows(xpad, kH, kW, stride_h, stride_w, H_out, W_out):
        y[n, c, oh, ow] = window.max()
    return y


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max pooling: dy[n, c, oh, ow] goes to the FIRST maximum of its window in
    row-major order (PyTorch's CPU tie-break); overlapping windows accumulate.

    The window is scanned over its input positions (padding never receives gradient) with
    PyTorch's test `v > best or isnan(v)`: ties keep the first maximum, a NaN wins (the
    last NaN), and an all -inf window sends its gradient to its first input position.
    """
    kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out = _pool_setup(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H, W), dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for oh in range(H_out):
                for ow in range(W_out):
                    best, where = -np.inf, None
                    for kh in range(kH):
                        for kw in range(kW):
                            ih, iw = oh * stride_h - pad_h + kh, ow * stride_w - pad_w + kw
                            if not (0 <= ih < H and 0 <= iw < W):
                                continue  # padding
                            v = float(x[n, c, ih, iw])
                            if where is None:
                                where = (ih, iw)
                            if v > best or math.isnan(v):
                                best, where = v, (ih, iw)
                    dx[n, c, where[0], where[1]] += dy[n, c, oh, ow]
    return dx.astype(x.dtype)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """2-D average pooling (lecture, "Average Pooling": replace max with mean).

        y[n, c, oh, ow] = (1 / (kH kW)) sum_{kh, kw} xpad[n, c, oh*stride_h + kh, ow*stride_w + kw]
    with zero padding counted in the divisor (PyTorch's count_include_pad=True).
    """
    kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out = _pool_setup(x, kernel_size, stride, padding)
    xpad = _zero_pad(x.astype(np.float64), pad_h, pad_h, pad_w, pad_w)
    y = np.empty(x.shape[:2] + (H_out, W_out), dtype=np.float64)
    for n, c, oh, ow, window in _windows(xpad, kH, kW, stride_h, stride_w, H_out, W_out):
        y[n, c, oh, ow] = window.sum() / (kH * kW)
    return y.astype(x.dtype)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of average pooling: each dy[n, c, oh, ow] / (kH kW) to every cell of its window."""
    kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out = _pool_setup(x, kernel_size, stride, padding)
    N, C, H, W = x.shape
    dxpad = np.zeros((N, C, H + 2 * pad_h, W + 2 * pad_w), dtype=np.float64)
    for n, c, oh, ow, window in _windows(dxpad, kH, kW, stride_h, stride_w, H_out, W_out):
        window += dy[n, c, oh, ow] / (kH * kW)  # a view of dxpad
    return dxpad[:, :, pad_h : pad_h + H, pad_w : pad_w + W].astype(x.dtype)


# ----------------------------------------------------------------------------------------
# batch normalisation (lecture, "Batch Normalization")


def _batch_stats(x, c):
    """(mu_B, sigma_B^2), the biased variance, of channel c over the lecture's set B = all
    (n, h, w), in float64."""
    values = x[:, c].reshape(-1).astype(np.float64)
    mu = values.sum() / values.size
    return mu, ((values - mu) ** 2).sum() / values.size


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Lecture, "Batch Normalization", per channel c over B = all (n, h, w):

        mu_B = (1/|B|) sum_i x_i,   sigma_B^2 = (1/|B|) sum_i (x_i - mu_B)^2
        y_i = gamma (x_i - mu_B) / sqrt(sigma_B^2 + eps) + beta

    (the lecture folds eps into sigma_B^2.) In training mode, the running statistics are
    updated in place: r <- (1 - momentum) r + momentum * stat, with the UNBIASED variance
    sigma_B^2 |B| / (|B| - 1) for running_var (PyTorch). In eval mode, mu and sigma^2 are
    the running statistics. weight/bias None mean gamma = 1, beta = 0. An empty batch has
    no statistics: y is empty and the running statistics stay (PyTorch).
    """
    C = x.shape[1]
    y = np.empty(x.shape, dtype=np.float64)
    if training and x.size == 0:
        return y.astype(x.dtype)
    for c in range(C):
        gamma = 1.0 if weight is None else float(weight[c])
        beta = 0.0 if bias is None else float(bias[c])
        if training:
            mu, var = _batch_stats(x, c)
            m = x.size // C  # |B|
            if running_mean is not None and running_var is not None:
                running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mu
                running_var[c] = (1 - momentum) * running_var[c] + momentum * var * m / (m - 1)
        else:
            mu, var = float(running_mean[c]), float(running_var[c])
        y[:, c] = gamma * (x[:, c].astype(np.float64) - mu) / math.sqrt(var + eps) + beta
    return y.astype(x.dtype)


def batch_norm_backward(dy, x, weight, eps=1e-5, running_mean=None, running_var=None):
    """Gradient of batch_norm, per channel over the m = |B| values.

    Training mode (mu_B and sigma_B depend on x), xhat = (x - mu_B) / sqrt(sigma_B^2 + eps):

        dbeta  = sum_i dy_i
        dgamma = sum_i dy_i xhat_i
        dx_i   = gamma / sqrt(sigma_B^2 + eps) * (dy_i - dbeta/m - xhat_i * dgamma/m)

    Eval mode (running_mean and running_var given, fixed): the same dbeta and dgamma with
    xhat = (x - running_mean) / sqrt(running_var + eps), and dx_i = gamma dy_i / sqrt(running_var + eps).
    Returns (dx, dweight, dbias); an empty batch gives an empty dx and zero dweight, dbias.
    """
    C = x.shape[1]
    if x.size == 0:
        return np.empty(x.shape, x.dtype), np.zeros(C, x.dtype), np.zeros(C, x.dtype)
    dx = np.empty(x.shape, dtype=np.float64)
    dweight = np.empty(C, dtype=np.float64)
    dbias = np.empty(C, dtype=np.float64)
    for c in range(C):
        gamma = 1.0 if weight is None else float(weight[c])
        xc = x[:, c].astype(np.float64)
        dyc = dy[:, c].astype(np.float64)
        m = xc.size
        if running_mean is None:
            mu, var = _batch_stats(x, c)
        else:
            mu, var = float(running_mean[c]), float(running_var[c])
        inv_std = 1.0 / math.sqrt(var + eps)
        xhat = (xc - mu) * inv_std
        dbias[c] = dyc.sum()
        dweight[c] = (dyc * xhat).sum()
        if running_mean is None:
            dx[:, c] = gamma * inv_std * (dyc - dbias[c] / m - xhat * dweight[c] / m)
        else:
            dx[:, c] = gamma * inv_std * dyc
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """relu(batch_norm(x, ...)): the composition, written as the two layers it fuses."""
    return relu(batch_norm(x, weight, bias, running_mean, running_var, training, momentum, eps))


def batch_norm_relu_backward(dy, y, x, weight, eps=1e-5, running_mean=None, running_var=None):
    """Gradient of batch_norm_relu: ReLU's backward (its mask y > 0 read from the fused output
    y, which is > 0 exactly where batch_norm(x) is), then batch_norm_backward."""
    return batch_norm_backward(relu_backward(dy, y), x, weight, eps, running_mean, running_var)


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """An eval-mode batch norm y = gamma (z - mean) / sqrt(var + eps) + beta of a conv's
    output z = w * x + b is itself a conv: w' = w gamma / sqrt(var + eps) per output channel,
    b' = (b - mean) gamma / sqrt(var + eps) + beta (torch.nn.utils.fusion)."""
    C = conv_w.shape[0]
    w = np.empty(conv_w.shape, np.float64)
    b = np.empty(C, np.float64)
    for co in range(C):
        gamma = 1.0 if bn_w is None else float(bn_w[co])
        beta = 0.0 if bn_b is None else float(bn_b[co])
        bias = 0.0 if conv_b is None else float(conv_b[co])
        scale = gamma / math.sqrt(float(bn_rv[co]) + bn_eps)
        w[co] = conv_w[co].astype(np.float64) * scale
        b[co] = (bias - float(bn_rm[co])) * scale + beta
    return w.astype(conv_w.dtype), b.astype(conv_w.dtype)


def fuse_conv_bn_weights_backward(dw, db, conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w):
    """The chain rule through w = conv_w * s, b = (conv_b - bn_rm) * s + bn_b, with
    s = bn_w / sigma and sigma = sqrt(bn_rv + bn_eps): dconv_w = dw s, dconv_b = db s,
    dbn_b = db, dbn_w = (sum dw * conv_w + db (conv_b - bn_rm)) / sigma."""
    C = conv_w.shape[0]
    out = [np.empty(conv_w.shape, np.float64)] + [np.empty(C, np.float64) for _ in range(3)]
    for co in range(C):
        sigma = math.sqrt(float(bn_rv[co]) + bn_eps)
        s = (1.0 if bn_w is None else float(bn_w[co])) / sigma
        bias = 0.0 if conv_b is None else float(conv_b[co])
        g, d = dw[co].astype(np.float64), float(db[co])
        out[0][co] = g * s
        out[1][co] = d * s
        out[2][co] = ((g * conv_w[co].astype(np.float64)).sum() + d * (bias - float(bn_rm[co]))) / sigma
        out[3][co] = d
    return tuple(a.astype(conv_w.dtype) for a in out)


def batch_norm_stats(x):
    """(count, mean, m2) per channel: count = |B|, mean = mu_B, m2 = sum_i (x_i - mu_B)^2
    (the pieces K ranks combine into the whole batch's statistics)."""
    C = x.shape[1]
    count = x.size // C
    mean, m2 = np.zeros(C), np.zeros(C)
    for c in range(C):
        if count:
            mean[c], var = _batch_stats(x, c)
            m2[c] = var * count
    return count, mean, m2


def batch_norm_elemt(x, weight, bias, mean, var, eps=1e-5):
    """y = gamma (x - mean) / sqrt(var + eps) + beta with the given statistics."""
    return batch_norm(x, weight, bias, np.asarray(mean), np.asarray(var), False, 0.0, eps)


def batch_norm_backward_reduce(dy, x, mean, var, eps=1e-5):
    """(sum_i dy_i, sum_i dy_i xhat_i) per channel, xhat = (x - mean) / sqrt(var + eps)."""
    _, dweight, dbias = batch_norm_backward(dy.astype(np.float64), x.astype(np.float64), None, eps,
                                            np.asarray(mean), np.asarray(var))  # fmt: skip
    return dbias, dweight


def batch_norm_backward_elemt(dy, x, weight, mean, var, eps, sum_dy, sum_dy_xhat, count):
    """dx_i = gamma / sqrt(var + eps) * (dy_i - sum_dy/count - xhat_i * sum_dy_xhat/count)."""
    dx = np.empty(x.shape, dtype=np.float64)
    for c in range(x.shape[1]):
        gamma = 1.0 if weight is None else float(weight[c])
        inv_std = 1.0 / math.sqrt(float(var[c]) + eps)
        xhat = (x[:, c].astype(np.float64) - float(mean[c])) * inv_std
        dx[:, c] = gamma * inv_std * (dy[:, c] - sum_dy[c] / count - xhat * sum_dy_xhat[c] / count)
    return dx.astype(x.dtype)


# ----------------------------------------------------------------------------------------
# dense (lecture, "Forward Pass" / "Backward Pass" of the FFN)


def linear(x, weight, bias=None):
    """Lecture, "Forward Pass": z_j = sum_i w_{j,i} y_i + b_j for every row of x, i.e.
    y[n, o] = b[o] + sum_i w[o, i] x[n, i]: x (N, IN), weight (OUT, IN), bias (OUT,) -> (N, OUT)."""
    N, IN = x.shape
    OUT = weight.shape[0]
    y = np.empty((N, OUT), dtype=np.float64)
    for n in range(N):
        for o in range(OUT):
            acc = 0.0 if bias is None else float(bias[o])
            for i in range(IN):
                acc += float(weight[o, i]) * float(x[n, i])
            y[n, o] = acc
    return y.astype(x.dtype)


def linear_backward(dy, x, weight):
    """Lecture, "Backward Pass":  dl/dy_i = sum_j w_{j,i} dl/dz_j,  dl/dw_{j,i} = y_i dl/dz_j
    (summed over the batch), dl/db_j = sum_n dl/dz_j. Returns (dx, dweight, dbias)."""
    N, IN = x.shape
    OUT = weight.shape[0]
    dx = np.zeros((N, IN), dtype=np.float64)
    dweight = np.zeros((OUT, IN), dtype=np.float64)
    dbias = np.zeros(OUT, dtype=np.float64)
    for n in range(N):
        for o in range(OUT):
            d = float(dy[n, o])
            dbias[o] += d
            for i in range(IN):
                dx[n, i] += float(weight[o, i]) * d
                dweight[o, i] += float(x[n, i]) * d
    return dx.astype(x.dtype), dweight.astype(x.dtype), dbias.astype(x.dtype)


# ----------------------------------------------------------------------------------------
# element-wise


def _map(f, *arrays):
    """Apply the scalar function f element by element (output: the first array's dtype)."""
    out = np.empty(np.shape(arrays[0]), dtype=arrays[0].dtype)
    flat = [np.ravel(a) for a in arrays]
    out_flat = out.reshape(-1)
    for k in range(out_flat.size):
        out_flat[k] = f(*(float(a[k]) for a in flat))
    return out


def relu(x, inplace=False):
    """Lecture, "ReLU Activation": ReLU(x) = max(x, 0); inplace writes the result into x."""
    y = _map(lambda v: max(v, 0.0), x)
    if inplace:
        x[...] = y
        return x
    return y


def relu_backward(dy, x):
    """d ReLU / dx = 0 for x <= 0 (0 at x = 0, as PyTorch), else 1: a NaN x passes dy on, as
    PyTorch's threshold_backward."""
    return _map(lambda d, v: 0.0 if v <= 0 else d, dy, x)


def tanh(x):
    """tanh(x) (LeNet's activation)."""
    return _map(math.tanh, x)


def tanh_backward(dy, y):
    """d tanh / dx = 1 - tanh(x)^2 = 1 - y^2, with y the forward output."""
    return _map(lambda d, v: d * (1.0 - v * v), dy, y)


def _sigmoid_scalar(v):
    """1 / (1 + exp(-v)), written so that neither branch overflows."""
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x))."""
    return _map(_sigmoid_scalar, x)


def sigmoid_backward(dy, y):
    """d sigmoid / dx = sigmoid(x) (1 - sigmoid(x)) = y (1 - y), with y the forward output."""
    return _map(lambda d, v: d * v * (1.0 - v), dy, y)


def add(a, b):
    """a + b (the residual join f(x) = x + g(x), lecture "Residual Networks")."""
    return _map(lambda u, v: u + v, a, b)


def add_relu(a, b):
    """relu(a + b): the residual join and the ReLU after it."""
    return relu(add(a, b))


def add_backward(dy):
    """Both summands receive dy."""
    return dy, dy


_MASK64 = (1 << 64) - 1


def _mix64(z):
    """The splitmix64 finaliser on a 64-bit integer (plain Python ints, wrapped to 64 bits)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _uniform_hash(seed, index):
    """The counter-based uniform number u(seed, i) in [0, 1) documented by the dropout
    kernel: key = mix64(seed), u = top 53 bits of mix64(key + (i + 1) * golden) / 2^53,
    golden = 0x9E3779B97F4A7C15. A pure function of (seed, i), so the mask is reproducible."""
    key = _mix64(int(seed) & _MASK64)
    z = _mix64((key + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64)
    return (z >> 11) / float(1 << 53)


def dropout(x, p=0.5, training=True, seed=None, offset=0):
    """Lecture, "Dropout Layer" (inverted dropout):

        x'_i = 0 with probability p, x_i / (1 - p) otherwise.

    Returns (y, mask), mask uint8 (1 = kept) a pure function of (seed, offset + flat index).
    seed=None draws a seed from numbacnn.random.rng(). training=False -> (x, None).
    """
    if not training:
        return x, None
    if seed is None:
        from . import random as _random

        seed = int(_random.rng().integers(0, 2**62))
    x = np.asarray(x)  # (np.ascontiguousarray would make a 0-D x 1-D)
    mask = np.empty(x.shape, dtype=np.uint8)
    mflat = mask.reshape(-1)
    for k in range(mflat.size):
        mflat[k] = 1 if _uniform_hash(int(seed), offset + k) >= p else 0
    y = dropout_backward(x, mask, p)
    return y, mask


def dropout_backward(dy, mask, p):
    """dx_i = dy_i * mask_i / (1 - p) (0 where dropped; p = 1 drops everything); mask None -> dy."""
    if mask is None:
        return dy
    scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    return _map(lambda d, m: d * m * scale, dy, mask)


# ----------------------------------------------------------------------------------------
# loss


def _row_exp(row):
    """(z, e): the row as floats and exp(z_k - max z), every exponent <= 0 (no overflow)."""
    z = [float(v) for v in row]
    m = max(z)
    return z, [math.exp(v - m) for v in z]


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy over the batch, with the stable log-sum-exp:

    loss_n = log sum_k exp(z_nk) - z_{n, y_n} = m_n + log sum_k exp(z_nk - m_n) - z_{n, y_n},
    m_n = max_k z_nk;   loss = (1/N) sum_n loss_n.    Returns a Python float.
    """
    N, K = logits.shape
    total = 0.0
    for n in range(N):
        z, e = _row_exp(logits[n])
        total += max(z) + math.log(sum(e)) - z[int(labels[n])]
    return total / N if N else math.nan  # the mean of no losses (PyTorch: NaN)


def cross_entropy_backward(logits, labels):
    """d loss / d z_nk = (softmax(z_n)_k - [k == y_n]) / N."""
    N, K = logits.shape
    d = np.empty((N, K), dtype=np.float64)
    for n in range(N):
        z, e = _row_exp(logits[n])
        s = sum(e)
        for k in range(K):
            d[n, k] = (e[k] / s - (1.0 if k == int(labels[n]) else 0.0)) / N
    return d.astype(logits.dtype)


def loss_and_hits(logits, labels, totals):
    """totals[0] += sum_n (logsumexp(z_n) - z_{n, y_n}); totals[1] += #{n: argmax z_n == y_n}
    (the first maximum; a NaN wins). In place, as numbacnn.functional.loss_and_hits."""
    N, K = logits.shape
    for n in range(N):
        z, e = _row_exp(logits[n])
        totals[0] += max(z) + math.log(sum(e)) - z[int(labels[n])]
        best = 0
        for k in range(1, K):
            if (z[k] > z[best] or z[k] != z[k]) and z[best] == z[best]:
                best = k
        totals[1] += 1.0 if best == int(labels[n]) else 0.0


def _defined_here(value):
    return callable(value) and getattr(value, "__module__", "") == __name__


# The public names: every function above without a leading underscore, which are exactly the
# names of numbacnn.functional (tests/test_ops_one_line.py checks that the two lists agree).
__all__ = sorted(n for n, v in dict(globals()).items() if not n.startswith("_") and _defined_here(v))
