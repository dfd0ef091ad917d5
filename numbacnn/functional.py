"""numbacnn.functional: the one seam between model code and kernels.

Every function here takes NumPy arrays (NCHW, float32 or float64) with PyTorch's argument
names and semantics, and returns new NumPy arrays of the same dtype. Each one

1. validates its arguments and raises ``ValueError`` (shapes, values) or ``TypeError``
   (dtypes) with a message that names the argument and the shapes involved, so that a
   user's mistake never surfaces as a Numba typing error;
2. computes the output shape (``numbacnn.shapes``) and allocates the output;
3. dispatches to the kernels of the array's backend (``numbacnn.kernels.cpu`` for NumPy
   arrays), which are explicit loop nests that know nothing about layers.

The readable oracle for every function is ``numbacnn.reference`` (same names, plain loops).
"""
import numpy as np

from . import random as _random
from .shapes import conv_output_size, conv_padding, pair

__all__ = [
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
    "batch_norm", "batch_norm_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "tanh", "tanh_backward", "sigmoid", "sigmoid_backward",
    "dropout", "dropout_backward",
    "cross_entropy", "cross_entropy_backward",
    "add", "add_backward",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# ----------------------------------------------------------------------------------------
# backend dispatch


def _is_device_array(a):
    """numba.cuda device arrays (and the CUDA simulator's, which set only __cuda_ndarray__)."""
    if isinstance(a, np.ndarray):
        return False
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def _backend(x):
    """The kernel package for the array's device.

    NumPy arrays run on ``numbacnn.kernels.cpu``; numba.cuda device arrays on
    ``numbacnn.kernels.cuda``. Both packages expose the same kernel names plus the
    allocation helpers ``empty``, ``full``, ``ascontiguous``, ``is_contiguous``, ``to_host``.
    """
    if isinstance(x, np.ndarray):
        from .kernels import cpu
        return cpu
    if _is_device_array(x):
        from .kernels import cuda
        return cuda
    raise TypeError(f"expected a numpy.ndarray or a numba.cuda device array, got {type(x).__name__}")


def _empty(like, shape=None, dtype=None):
    """An uninitialised array on the device of `like` (default: like's shape and dtype)."""
    return _backend(like).empty(like.shape if shape is None else tuple(shape),
                                like.dtype if dtype is None else np.dtype(dtype))


def _full(like, shape, value):
    """An array of `value` with like's dtype, on like's device."""
    return _backend(like).full(tuple(shape), value, like.dtype)


# ----------------------------------------------------------------------------------------
# argument validation


def _float_array(op, name, a, ndims):
    """Check that `a` is a float32/float64 array with ndim in `ndims`; return it C-contiguous."""
    if not (isinstance(a, np.ndarray) or _is_device_array(a)):
        raise TypeError(f"{op}: {name} must be a numpy.ndarray (or a numba.cuda device array), "
                        f"got {type(a).__name__}")
    if a.dtype not in _FLOATS:
        raise TypeError(f"{op}: {name} must be float32 or float64, got dtype {a.dtype} "
                        f"({name}.shape={a.shape})")
    if a.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{op}: {name} must be {want}, got {a.ndim}-D {name}.shape={a.shape}")
    return _backend(a).ascontiguous(a)


def _same_dtype(op, **arrays):
    """All given (non-None) arrays share one dtype and one device; mixing is a user error."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    if len({v.dtype for _, v in items}) > 1:
        desc = ", ".join(f"{k}: {v.dtype} {v.shape}" for k, v in items)
        raise TypeError(f"{op}: arguments must share one dtype, got {desc}")
    if len({_is_device_array(v) for _, v in items}) > 1:
        desc = ", ".join(f"{k}: {'cuda' if _is_device_array(v) else 'numpy'} {v.shape}"
                         for k, v in items)
        raise TypeError(f"{op}: arguments must all be on one device, got {desc}")


def _same_shape(op, name, a, shape, why=""):
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{why}, "
                         f"got {name}.shape={a.shape}")


def _positive_pair(value, name, op):
    a, b = pair(value, name, op)
    if a <= 0 or b <= 0:
        raise ValueError(f"{op}: {name} must be > 0, got {value!r}")
    return a, b


# ----------------------------------------------------------------------------------------
# convolution


def _conv_geometry(op, x, weight, stride, padding, dilation, groups):
    """Validate a conv2d call; return (sh, sw, pt, pl, dh, dw, groups, H_out, W_out)."""
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = weight.shape
    sh, sw = _positive_pair(stride, "stride", op)
    dh, dw = _positive_pair(dilation, "dilation", op)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups <= 0:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    groups = int(groups)
    if C_in % groups or C_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide both in_channels and out_channels "
                         f"(x.shape={x.shape}, weight.shape={weight.shape})")
    if C_in_g != C_in // groups:
        raise ValueError(f"{op}: weight has C_in/groups={C_in_g} but x has C_in={C_in} with "
                         f"groups={groups} (x.shape={x.shape}, weight.shape={weight.shape})")
    if kH == 0 or kW == 0 or C_out == 0:
        raise ValueError(f"{op}: weight must be non-empty, got weight.shape={weight.shape}")
    pt, pb, pl, pr = conv_padding(padding, (kH, kW), (dh, dw), op)
    ext_h, ext_w = dh * (kH - 1) + 1, dw * (kW - 1) + 1
    if H + pt + pb < ext_h or W + pl + pr < ext_w:
        raise ValueError(
            f"{op}: kernel (extent {ext_h}x{ext_w} with dilation {(dh, dw)}) is larger than the "
            f"padded input {H + pt + pb}x{W + pl + pr} (x.shape={x.shape}, "
            f"weight.shape={weight.shape}, padding={padding!r})")
    H_out = conv_output_size(H, kH, sh, pt + pb, dh)
    W_out = conv_output_size(W, kW, sw, pl + pr, dw)
    return sh, sw, pt, pl, dh, dw, groups, H_out, W_out


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation), PyTorch semantics.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None
    -> y: (N, C_out, H_out, W_out), H_out = floor((H + p - d(kH-1) - 1)/s) + 1.
    padding is an int, a pair, "valid" or "same" (extra row/column of an even kernel goes on
    top/left, as in the lecture; PyTorch puts it bottom/right).
    """
    op = "conv2d"
    x = _float_array(op, "x", x, (4,))
    weight = _float_array(op, "weight", weight, (4,))
    if bias is not None:
        bias = _float_array(op, "bias", bias, (1,))
    _same_dtype(op, x=x, weight=weight, bias=bias)
    sh, sw, pt, pl, dh, dw, groups, H_out, W_out = _conv_geometry(
        op, x, weight, stride, padding, dilation, groups)
    C_out = weight.shape[0]
    if bias is None:
        bias = _full(x, (C_out,), 0.0)
    else:
        _same_shape(op, "bias", bias, (C_out,), f" (weight.shape={weight.shape})")
    y = _empty(x, (x.shape[0], C_out, H_out, W_out))
    _backend(x).conv.conv2d_forward(x, weight, bias, y, sh, sw, pt, pl, dh, dw, groups)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of conv2d: dy (N, C_out, H_out, W_out) -> (dx, dweight, dbias)."""
    op = "conv2d_backward"
    dy = _float_array(op, "dy", dy, (4,))
    x = _float_array(op, "x", x, (4,))
    weight = _float_array(op, "weight", weight, (4,))
    _same_dtype(op, dy=dy, x=x, weight=weight)
    sh, sw, pt, pl, dh, dw, groups, H_out, W_out = _conv_geometry(
        op, x, weight, stride, padding, dilation, groups)
    _same_shape(op, "dy", dy, (x.shape[0], weight.shape[0], H_out, W_out),
                f" (the conv2d output for x.shape={x.shape}, weight.shape={weight.shape})")
    k = _backend(x).conv
    dx = _empty(x)
    dweight = _empty(weight)
    dbias = _empty(x, (weight.shape[0],))
    k.conv2d_backward_input(dy, weight, dx, sh, sw, pt, pl, dh, dw, groups)
    k.conv2d_backward_weight(dy, x, dweight, sh, sw, pt, pl, dh, dw, groups)
    k.conv2d_backward_bias(dy, dbias)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------
# pooling


def _pool_geometry(op, x, kernel_size, stride, padding):
    """Validate a pooling call; return (kh, kw, sh, sw, ph, pw, H_out, W_out)."""
    kh, kw = _positive_pair(kernel_size, "kernel_size", op)
    sh, sw = (kh, kw) if stride is None else _positive_pair(stride, "stride", op)
    ph, pw = pair(padding, "padding", op)
    if ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"{op}: padding must be >= 0 and at most half the kernel_size, got "
                         f"padding={padding!r}, kernel_size={kernel_size!r}")
    H, W = x.shape[2], x.shape[3]
    if H + 2 * ph < kh or W + 2 * pw < kw:
        raise ValueError(f"{op}: kernel_size {(kh, kw)} is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (x.shape={x.shape}, padding={padding!r})")
    H_out = conv_output_size(H, kh, sh, 2 * ph)
    W_out = conv_output_size(W, kw, sw, 2 * pw)
    return kh, kw, sh, sw, ph, pw, H_out, W_out


def _pool_forward(op, kernel_name, x, kernel_size, stride, padding):
    x = _float_array(op, "x", x, (4,))
    kh, kw, sh, sw, ph, pw, H_out, W_out = _pool_geometry(op, x, kernel_size, stride, padding)
    y = _empty(x, x.shape[:2] + (H_out, W_out))
    getattr(_backend(x).pool, kernel_name)(x, y, kh, kw, sh, sw, ph, pw)
    return y


def _pool_backward_args(op, dy, x, kernel_size, stride, padding):
    dy = _float_array(op, "dy", dy, (4,))
    x = _float_array(op, "x", x, (4,))
    _same_dtype(op, dy=dy, x=x)
    kh, kw, sh, sw, ph, pw, H_out, W_out = _pool_geometry(op, x, kernel_size, stride, padding)
    _same_shape(op, "dy", dy, x.shape[:2] + (H_out, W_out),
                f" (the pooling output for x.shape={x.shape})")
    return dy, x, (kh, kw, sh, sw, ph, pw)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling: x (N, C, H, W) -> (N, C, H_out, W_out); padding counts as -inf."""
    return _pool_forward("max_pool2d", "max_pool2d_forward", x, kernel_size, stride, padding)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max pooling: each dy goes to the first maximum of its window."""
    dy, x, geo = _pool_backward_args("max_pool2d_backward", dy, x, kernel_size, stride, padding)
    dx = _empty(x)
    _backend(x).pool.max_pool2d_backward(dy, x, dx, *geo)
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling: x (N, C, H, W) -> (N, C, H_out, W_out); divisor kH*kW (padding counts)."""
    return _pool_forward("avg_pool2d", "avg_pool2d_forward", x, kernel_size, stride, padding)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of average pooling: each dy spread evenly (1/(kH*kW)) over its window."""
    dy, x, geo = _pool_backward_args("avg_pool2d_backward", dy, x, kernel_size, stride, padding)
    dx = _empty(x)
    _backend(x).pool.avg_pool2d_backward(dy, dx, *geo)
    return dx


# ----------------------------------------------------------------------------------------
# batch normalisation


def _bn_view(op, x):
    """x: (N, C, H, W) or (N, C) -> x3: (N, C, L) view."""
    x = _float_array(op, "x", x, (2, 4))
    N, C = x.shape[:2]
    return x, x.reshape(N, C, -1)


def _bn_param(op, name, a, C, x, fill):
    if a is None:
        return _full(x, (C,), fill)
    a = _float_array(op, name, a, (1,))
    _same_shape(op, name, a, (C,), f" (one per channel of x.shape={x.shape})")
    return a


def _bn_running(op, name, a, C, x):
    """Running statistics are updated in place: they must be contiguous arrays of x's dtype."""
    if not (isinstance(a, np.ndarray) or _is_device_array(a)) or a.dtype != x.dtype or a.ndim != 1:
        got = f"{type(a).__name__} {getattr(a, 'dtype', '')} {getattr(a, 'shape', '')}"
        raise TypeError(f"{op}: {name} must be a 1-D numpy array of dtype {x.dtype} "
                        f"(x.shape={x.shape}), got {got}")
    _same_shape(op, name, a, (C,), f" (one per channel of x.shape={x.shape})")
    _same_dtype(op, x=x, **{name: a})
    if not _backend(a).is_contiguous(a):
        raise ValueError(f"{op}: {name} is updated in place and must be a contiguous, writeable array")
    return a


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch norm over (N, H, W) per channel, PyTorch semantics.

    training: normalise with the batch mean and biased variance, and update running_mean and
    running_var in place (r <- (1 - momentum) r + momentum * stat, unbiased variance).
    eval: normalise with running_mean and running_var.
    """
    op = "batch_norm"
    x, x3 = _bn_view(op, x)
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    bias = _bn_param(op, "bias", bias, C, x, 0.0)
    _same_dtype(op, x=x, weight=weight, bias=bias)
    if not eps > 0:
        raise ValueError(f"{op}: eps must be > 0, got {eps!r}")
    k = _backend(x).batchnorm
    y = _empty(x)
    y3 = y.reshape(N, C, L)
    if training:
        if N * L <= 1:
            raise ValueError(f"{op}: expected more than 1 value per channel when training, "
                             f"got x.shape={x.shape}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{op}: momentum must be in [0, 1], got {momentum!r}")
        if running_mean is None or running_var is None:
            # No running statistics tracked: update throw-away buffers.
            running_mean = _full(x, (C,), 0.0)
            running_var = _full(x, (C,), 1.0)
        else:
            running_mean = _bn_running(op, "running_mean", running_mean, C, x)
            running_var = _bn_running(op, "running_var", running_var, C, x)
        k.batch_norm_forward_train(x3, weight, bias, running_mean, running_var,
                                   float(momentum), float(eps), y3)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: eval mode needs running_mean and running_var")
        running_mean = _bn_running(op, "running_mean", running_mean, C, x)
        running_var = _bn_running(op, "running_var", running_var, C, x)
        k.batch_norm_forward_eval(x3, weight, bias, running_mean, running_var, float(eps), y3)
    return y


def batch_norm_backward(dy, x, weight, eps=1e-5, running_mean=None, running_var=None):
    """Gradient of batch_norm: -> (dx, dweight, dbias).

    By default the training-mode gradient (batch statistics recomputed from x, including
    their dependence on x). Given running_mean and running_var, the eval-mode gradient of the
    fixed affine map: dx = weight * dy / sqrt(running_var + eps).
    """
    op = "batch_norm_backward"
    x, x3 = _bn_view(op, x)
    dy = _float_array(op, "dy", dy, (2, 4))
    _same_shape(op, "dy", dy, x.shape, " (same as x)")
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    _same_dtype(op, dy=dy, x=x, weight=weight)
    dx = _empty(x)
    dweight = _empty(x, (C,))
    dbias = _empty(x, (C,))
    k = _backend(x).batchnorm
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var (eval mode) or neither")
    if running_mean is None:
        k.batch_norm_backward(dy.reshape(N, C, L), x3, weight, float(eps),
                              dx.reshape(N, C, L), dweight, dbias)
    else:
        running_mean = _bn_running(op, "running_mean", running_mean, C, x)
        running_var = _bn_running(op, "running_var", running_var, C, x)
        k.batch_norm_backward_eval(dy.reshape(N, C, L), x3, weight, running_mean, running_var,
                                   float(eps), dx.reshape(N, C, L), dweight, dbias)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------
# dense


def linear(x, weight, bias=None):
    """y = x W^T + b: x (N, IN), weight (OUT, IN), bias (OUT,) -> y (N, OUT)."""
    op = "linear"
    x = _float_array(op, "x", x, (2,))
    weight = _float_array(op, "weight", weight, (2,))
    if bias is not None:
        bias = _float_array(op, "bias", bias, (1,))
    _same_dtype(op, x=x, weight=weight, bias=bias)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} features but weight expects {weight.shape[1]} "
                         f"(x.shape={x.shape}, weight.shape={weight.shape})")
    OUT = weight.shape[0]
    if bias is None:
        bias = _full(x, (OUT,), 0.0)
    else:
        _same_shape(op, "bias", bias, (OUT,), f" (weight.shape={weight.shape})")
    y = _empty(x, (x.shape[0], OUT))
    _backend(x).dense.linear_forward(x, weight, bias, y)
    return y


def linear_backward(dy, x, weight):
    """Gradients of linear: dy (N, OUT) -> (dx (N, IN), dweight (OUT, IN), dbias (OUT,))."""
    op = "linear_backward"
    dy = _float_array(op, "dy", dy, (2,))
    x = _float_array(op, "x", x, (2,))
    weight = _float_array(op, "weight", weight, (2,))
    _same_dtype(op, dy=dy, x=x, weight=weight)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{op}: x has {x.shape[1]} features but weight expects {weight.shape[1]} "
                         f"(x.shape={x.shape}, weight.shape={weight.shape})")
    _same_shape(op, "dy", dy, (x.shape[0], weight.shape[0]),
                f" (x.shape={x.shape}, weight.shape={weight.shape})")
    k = _backend(x).dense
    dx = _empty(x)
    dweight = _empty(weight)
    dbias = _empty(x, (weight.shape[0],))
    k.linear_backward_input(dy, weight, dx)
    k.linear_backward_weight(dy, x, dweight)
    k.linear_backward_bias(dy, dbias)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------
# element-wise: activations, dropout, add (kernels see flat 1-D views)


def _elementwise(op, kernel_name, **arrays):
    """Validate same-shape, same-dtype arrays, run a flat kernel, return the output."""
    names = list(arrays)
    flat = []
    first = None
    for name in names:
        a = _float_array(op, name, arrays[name], range(0, 33))
        if first is None:
            first = (name, a)
        elif a.shape != first[1].shape:
            raise ValueError(f"{op}: {name} must have the same shape as {first[0]}, got "
                             f"{name}.shape={a.shape}, {first[0]}.shape={first[1].shape}")
        flat.append(a)
    _same_dtype(op, **dict(zip(names, flat)))
    out = _empty(flat[0])
    getattr(_backend(flat[0]).activation, kernel_name)(*(a.reshape(-1) for a in flat),
                                                       out.reshape(-1))
    return out


def relu(x):
    """max(x, 0)."""
    return _elementwise("relu", "relu_forward", x=x)


def relu_backward(dy, x):
    """dy where x > 0, else 0."""
    return _elementwise("relu_backward", "relu_backward", dy=dy, x=x)


def tanh(x):
    """tanh(x)."""
    return _elementwise("tanh", "tanh_forward", x=x)


def tanh_backward(dy, y):
    """dy * (1 - y^2), with y = tanh(x) the forward output."""
    return _elementwise("tanh_backward", "tanh_backward", dy=dy, y=y)


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _elementwise("sigmoid", "sigmoid_forward", x=x)


def sigmoid_backward(dy, y):
    """dy * y (1 - y), with y = sigmoid(x) the forward output."""
    return _elementwise("sigmoid_backward", "sigmoid_backward", dy=dy, y=y)


def add(a, b):
    """a + b (the residual join)."""
    return _elementwise("add", "add_forward", a=a, b=b)


def add_backward(dy):
    """Both inputs of add receive dy."""
    return dy, dy


def _check_p(op, p):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: p must be a probability in [0, 1], got {p!r}")
    return float(p)


def dropout(x, p=0.5, training=True, seed=None):
    """Inverted dropout (lecture): x_i -> 0 with probability p, else x_i / (1 - p).

    Returns (y, mask) with mask uint8 (1 = kept), a pure function of (seed, index), so it is
    reproducible. seed=None draws one from numbacnn.random. In eval returns (x, None).
    """
    op = "dropout"
    x = _float_array(op, "x", x, range(0, 33))
    p = _check_p(op, p)
    if not training:
        return x, None
    if seed is None:
        seed = int(_random.rng().integers(0, 2**62))
    y = _empty(x)
    mask = _empty(x, x.shape, np.uint8)
    seed = int(seed) % 2**63  # the kernel hashes a signed 64-bit counter
    _backend(x).activation.dropout_forward(x.reshape(-1), y.reshape(-1), mask.reshape(-1),
                                           p, seed)
    return y, mask


def dropout_backward(dy, mask, p):
    """dx = dy * mask / (1 - p); mask None (eval) passes dy through."""
    op = "dropout_backward"
    dy = _float_array(op, "dy", dy, range(0, 33))
    p = _check_p(op, p)
    if mask is None:
        return dy
    if not hasattr(mask, "dtype") or mask.dtype != np.uint8 or mask.shape != dy.shape:
        raise ValueError(f"{op}: mask must be the uint8 mask returned by dropout with dy's shape "
                         f"{dy.shape}, got {getattr(mask, 'dtype', type(mask).__name__)} "
                         f"{getattr(mask, 'shape', '')}")
    mask = _backend(mask).ascontiguous(mask)
    dx = _empty(dy)
    _backend(dy).activation.dropout_backward(dy.reshape(-1), mask.reshape(-1), p, dx.reshape(-1))
    return dx


# ----------------------------------------------------------------------------------------
# loss


def _ce_args(op, logits, labels):
    logits = _float_array(op, "logits", logits, (2,))
    if not (isinstance(labels, np.ndarray) or _is_device_array(labels)):
        labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{op}: labels must be integers, got dtype {labels.dtype} "
                        f"(labels.shape={labels.shape})")
    N, K = logits.shape
    if labels.shape != (N,):
        raise ValueError(f"{op}: labels must have shape ({N},) to match logits.shape="
                         f"{logits.shape}, got labels.shape={labels.shape}")
    if N == 0:
        raise ValueError(f"{op}: empty batch (logits.shape={logits.shape})")
    host_labels = _backend(labels).to_host(labels)
    lo, hi = int(host_labels.min()), int(host_labels.max())
    if lo < 0 or hi >= K:
        raise ValueError(f"{op}: labels must be in [0, {K - 1}] for logits.shape={logits.shape}, "
                         f"got values in [{lo}, {hi}]")
    if _is_device_array(labels) != _is_device_array(logits):
        raise TypeError(f"{op}: logits and labels must be on one device")
    return logits, _backend(logits).as_int64(labels)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy: logits (N, K), labels (N,) -> float (stable log-sum-exp)."""
    logits, labels = _ce_args("cross_entropy", logits, labels)
    return float(_backend(logits).loss.cross_entropy_forward(logits, labels))


def cross_entropy_backward(logits, labels):
    """d loss / d logits = (softmax(logits) - onehot(labels)) / N."""
    logits, labels = _ce_args("cross_entropy_backward", logits, labels)
    dlogits = _empty(logits)
    _backend(logits).loss.cross_entropy_backward(logits, labels, dlogits)
    return dlogits
