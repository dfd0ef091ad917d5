"""numbacnn.functional: the one seam between model code and kernels.

Every function here takes NumPy arrays or numba.cuda device arrays (NCHW, float32 or
float64) with PyTorch's argument names and semantics, and returns new arrays of the same
dtype on the same device. Each one

1. validates its arguments (``numbacnn._checks``) and raises ``ValueError`` (shapes, values)
   or ``TypeError`` (types, dtypes) with a message that names the argument and the shapes
   involved, so that a user's mistake never surfaces as a Numba typing error;
2. computes the output shape (``numbacnn.shapes``, shared with the layers' shape inference)
   and allocates the output;
3. calls the kernel by name in the array's backend (``numbacnn.kernels.backend``:
   ``kernels.cpu`` for NumPy arrays, ``kernels.cuda`` for device arrays), explicit loop nests
   that know nothing about layers.

The readable oracle for every function is ``numbacnn.reference`` (same names, plain loops).
"""

import math

import numpy as np

from . import random as _random
from ._checks import check_bool as _check_bool
from ._checks import check_int as _check_int
from ._checks import check_number as _check_number
from ._checks import class_labels as _class_labels
from ._checks import float_array as _float_array
from ._checks import inplace_vector as _inplace_vector
from ._checks import same_dtype as _same_dtype
from ._checks import same_shape as _same_shape
from .kernels import backend as _backend
from .kernels import is_device_array as _is_device_array
from .shapes import conv2d_geometry, pool2d_geometry

__all__ = [
    "conv2d",
    "conv2d_backward",
    "max_pool2d",
    "max_pool2d_backward",
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_relu",
    "batch_norm_relu_backward",
    "fuse_conv_bn_weights",
    "fuse_conv_bn_weights_backward",
    "batch_norm_stats",
    "batch_norm_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_backward_elemt",
    "linear",
    "linear_backward",
    "relu",
    "relu_backward",
    "tanh",
    "tanh_backward",
    "sigmoid",
    "sigmoid_backward",
    "dropout",
    "dropout_backward",
    "cross_entropy",
    "cross_entropy_backward",
    "loss_and_hits",
    "add",
    "add_backward",
    "add_relu",
]


def _empty(like, shape=None, dtype=None):
    """An uninitialised array on the device of `like` (default: like's shape and dtype)."""
    return _backend(like).empty(
        like.shape if shape is None else tuple(shape), like.dtype if dtype is None else np.dtype(dtype)
    )


def _full(like, shape, value):
    """An array of `value` with like's dtype, on like's device."""
    return _backend(like).full(tuple(shape), value, like.dtype)


def _x_weight_bias(op, x, weight, bias, ndim):
    """Validate the (x, weight, bias) of conv2d (ndim 4) or linear (ndim 2): float arrays of
    one dtype and device, bias 1-D or None; returned C-contiguous."""
    x = _float_array(op, "x", x, (ndim,))
    weight = _float_array(op, "weight", weight, (ndim,))
    if bias is not None:
        bias = _float_array(op, "bias", bias, (1,))
    _same_dtype(op, x=x, weight=weight, bias=bias)
    return x, weight, bias


def _bias_or_zeros(op, bias, x, weight):
    """The bias to add: (C_out,) zeros when None, else checked to have one value per output
    channel (weight.shape[0])."""
    if bias is None:
        return _full(x, (weight.shape[0],), 0.0)
    _same_shape(op, "bias", bias, (weight.shape[0],), " (weight.shape={w})", w=weight.shape)
    return bias


# ----------------------------------------------------------------------------------------
# convolution


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation), PyTorch's torch.nn.functional.conv2d semantics.

    x: (N, C_in, H, W), weight: (C_out, C_in/groups, kH, kW), bias: (C_out,) or None
    -> y: (N, C_out, H_out, W_out), H_out = floor((H + pad_top + pad_bottom - dil_h*(kH-1) - 1)
    / stride_h) + 1 (lecture, "Padding" and "Stride"). stride, dilation: int or pair; padding:
    int, pair, "valid" or "same" (the extra row/column of an even kernel goes on top/left, as
    in the lecture; PyTorch puts it bottom/right). Raises TypeError (dtypes, types) or
    ValueError (shapes, values) naming the argument and the shapes.
    """
    op = "conv2d"
    x, weight, bias = _x_weight_bias(op, x, weight, bias, 4)
    geo = conv2d_geometry(op, x.shape, weight.shape, stride, padding, dilation, groups)
    bias = _bias_or_zeros(op, bias, x, weight)
    y = _empty(x, (x.shape[0], weight.shape[0], geo.H_out, geo.W_out))
    _backend(x).conv.conv2d_forward(x, weight, bias, y, *geo.kernel_args)
    return y


def conv2d_backward(dy, x, weight, stride=1, padding=0, dilation=1, groups=1, output_mask=(True, True, True)):
    """Gradients of conv2d: dy (N, C_out, H_out, W_out) -> (dx, dweight, dbias) with the
    shapes of x, weight and (C_out,); dbias is dy summed over N, H_out, W_out, returned for
    a conv without a bias too. The chain rule of the lecture's "Backward Pass"; PyTorch's
    convolution_backward, whose output_mask (three bools) it shares: a gradient masked off
    is not computed, and None stands in its place (a conv without a bias skips dbias).
    Raises TypeError for an output_mask that is not three bools."""
    op = "conv2d_backward"
    if not (isinstance(output_mask, (tuple, list)) and len(output_mask) == 3):
        raise TypeError(f"{op}: output_mask must be three bools (dx, dweight, dbias), got {output_mask!r}")
    need_dx, need_dw, need_db = (_check_bool(op, "output_mask", m) for m in output_mask)
    dy = _float_array(op, "dy", dy, (4,))
    x = _float_array(op, "x", x, (4,))
    weight = _float_array(op, "weight", weight, (4,))
    _same_dtype(op, dy=dy, x=x, weight=weight)
    geo = conv2d_geometry(op, x.shape, weight.shape, stride, padding, dilation, groups)
    _same_shape(
        op,
        "dy",
        dy,
        (x.shape[0], weight.shape[0], geo.H_out, geo.W_out),
        " (the conv2d output for x.shape={x}, weight.shape={w})",
        x=x.shape,
        w=weight.shape,
    )
    conv = _backend(x).conv
    dx = dweight = dbias = None
    if need_dx:
        dx = _empty(x)
        conv.conv2d_backward_input(dy, weight, dx, *geo.kernel_args)
    if need_dw:
        dweight = _empty(weight)
        conv.conv2d_backward_weight(dy, x, dweight, *geo.kernel_args)
    if need_db:
        dbias = _empty(x, (weight.shape[0],))
        conv.conv2d_backward_bias(dy, dbias)
    return dx, dweight, dbias


# ----------------------------------------------------------------------------------------
# pooling


def _pool_backward_args(op, dy, x, kernel_size, stride, padding):
    dy = _float_array(op, "dy", dy, (4,))
    x = _float_array(op, "x", x, (4,))
    _same_dtype(op, dy=dy, x=x)
    geo = pool2d_geometry(op, x.shape, kernel_size, stride, padding)
    _same_shape(
        op, "dy", dy, x.shape[:2] + (geo.H_out, geo.W_out), " (the pooling output for x.shape={x})", x=x.shape
    )
    return dy, x, geo


def _pool_forward(op, kernel, x, kernel_size, stride, padding):
    """Validate a pooling call, allocate y, run `kernel(pool)` (the kernel, picked from the
    backend's pool module) on it."""
    x = _float_array(op, "x", x, (4,))
    geo = pool2d_geometry(op, x.shape, kernel_size, stride, padding)
    y = _empty(x, x.shape[:2] + (geo.H_out, geo.W_out))
    kernel(_backend(x).pool)(x, y, *geo.kernel_args)
    return y


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling (lecture, "2-D Max Pooling"; torch.nn.functional.max_pool2d): x (N, C, H, W)
    -> (N, C, H_out, W_out); stride defaults to kernel_size; padding (at most half the
    window) counts as -inf."""
    return _pool_forward("max_pool2d", lambda pool: pool.max_pool2d_forward, x, kernel_size, stride, padding)


def max_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of max pooling: dy (N, C, H_out, W_out) -> dx (N, C, H, W); each dy goes to
    the first maximum of its window (row-major; a NaN wins, as PyTorch)."""
    dy, x, geo = _pool_backward_args("max_pool2d_backward", dy, x, kernel_size, stride, padding)
    dx = _empty(x)
    _backend(x).pool.max_pool2d_backward(dy, x, dx, *geo.kernel_args)
    return dx


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling (lecture, "Average Pooling"; torch.nn.functional.avg_pool2d with
    count_include_pad=True): x (N, C, H, W) -> (N, C, H_out, W_out), divisor kH*kW."""
    return _pool_forward("avg_pool2d", lambda pool: pool.avg_pool2d_forward, x, kernel_size, stride, padding)


def avg_pool2d_backward(dy, x, kernel_size, stride=None, padding=0):
    """Gradient of average pooling: each dy spread evenly (1/(kH*kW)) over its window."""
    dy, x, geo = _pool_backward_args("avg_pool2d_backward", dy, x, kernel_size, stride, padding)
    dx = _empty(x)
    _backend(x).pool.avg_pool2d_backward(dy, dx, *geo.kernel_args)
    return dx


# ----------------------------------------------------------------------------------------
# batch normalisation


def _bn_view(op, x):
    """x: (N, C, H, W) or (N, C) -> (x, x3) with x3: (N, C, L) a view, L = H*W or 1."""
    x = _float_array(op, "x", x, (2, 4))
    N, C = x.shape[:2]
    return x, x.reshape(N, C, math.prod(x.shape[2:]))  # (np.prod: 8 us a call)


def _bn_dy(op, dy, x):
    """dy checked against x: a float array of x's shape and dtype."""
    dy = _float_array(op, "dy", dy, (2, 4))
    _same_shape(op, "dy", dy, x.shape, " (same as x)")
    _same_dtype(op, dy=dy, x=x)
    return dy


def _bn_param(op, name, a, C, x, fill):
    if a is None:
        return _full(x, (C,), fill)
    a = _float_array(op, name, a, (1,))
    _same_shape(op, name, a, (C,), " (one per channel of x.shape={x})", x=x.shape)
    return a


def batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch norm over (N, H, W) per channel (lecture, "Batch Normalization"), PyTorch's
    torch.nn.functional.batch_norm: x (N, C, H, W) or (N, C) -> y of x's shape.

    training: normalise with the batch mean and biased variance, and update running_mean and
    running_var in place (r <- (1 - momentum) r + momentum * stat, unbiased variance); more
    than one value per channel is needed, except that an empty batch (N = 0) returns an
    empty y and leaves the running statistics untouched, as PyTorch. eval: normalise with
    running_mean and running_var. momentum: a number in [0, 1] (the cumulative average of
    momentum=None is BatchNorm1d/2d's, which count their batches); eps > 0; training a bool.
    Raises TypeError / ValueError naming the argument.
    """
    return _batch_norm("batch_norm", x, weight, bias, running_mean, running_var, training, momentum, eps)


def batch_norm_relu(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """relu(batch_norm(x, ...)) in one pass over the output (numbacnn.fusion: a BatchNorm
    followed by a ReLU, ResNet's bn1 -> relu1): the arguments, errors and running-statistics
    update of batch_norm; y = max(batch_norm(x), 0), NaN kept as ReLU keeps it. Training mode
    is one fused kernel; eval mode normalises, then applies ReLU in place. Its gradient is
    batch_norm_relu_backward, which needs this y."""
    return _batch_norm("batch_norm_relu", x, weight, bias, running_mean, running_var, training, momentum,
                       eps, relu=True)  # fmt: skip


def _batch_norm(op, x, weight, bias, running_mean, running_var, training, momentum, eps, relu=False):
    x, x3 = _bn_view(op, x)
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    bias = _bn_param(op, "bias", bias, C, x, 0.0)
    _same_dtype(op, x=x, weight=weight, bias=bias)
    training = _check_bool(op, "training", training)
    eps = _check_number(op, "eps", eps, above=0.0)
    if momentum is None:
        raise TypeError(
            f"{op}: momentum must be a number in [0, 1], got None (the cumulative average of "
            "momentum=None is a BatchNorm1d/BatchNorm2d option: it needs their num_batches_tracked)"
        )
    momentum = _check_number(op, "momentum", momentum, minimum=0.0, maximum=1.0)
    y = _empty(x)
    y3 = y.reshape(N, C, L)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must both be None or neither (as torch)")
    k = _backend(x).batchnorm
    if training:
        if N * L == 1:
            raise ValueError(
                f"{op}: expected more than 1 value per channel when training, got x.shape={x.shape}"
            )
        if running_mean is None or running_var is None:
            # No running statistics tracked: update throw-away buffers.
            running_mean = _full(x, (C,), 0.0)
            running_var = _full(x, (C,), 1.0)
        else:
            running_mean = _inplace_vector(op, "running_mean", running_mean, C, x)
            running_var = _inplace_vector(op, "running_var", running_var, C, x)
        if N * L:  # an empty batch has no statistics: y is empty, the running ones stay
            forward = k.batch_norm_relu_forward_train if relu else k.batch_norm_forward_train
            forward(x3, weight, bias, running_mean, running_var, momentum, eps, y3)
    else:
        if running_mean is None or running_var is None:
            raise ValueError(f"{op}: eval mode needs running_mean and running_var")
        running_mean = _inplace_vector(op, "running_mean", running_mean, C, x)
        running_var = _inplace_vector(op, "running_var", running_var, C, x)
        k.batch_norm_forward_eval(x3, weight, bias, running_mean, running_var, eps, y3)
        if relu:
            _relu_inplace(op, y)
    return y


def batch_norm_backward(dy, x, weight, eps=1e-5, running_mean=None, running_var=None):
    """Gradient of batch_norm: dy of x's shape -> (dx, dweight, dbias), dweight and dbias (C,).

    By default the training-mode gradient (batch statistics recomputed from x, including
    their dependence on x). Given running_mean and running_var, the eval-mode gradient of the
    fixed affine map: dx = weight * dy / sqrt(running_var + eps). An empty batch gives an
    empty dx and zero dweight, dbias. eps > 0.
    """
    return _batch_norm_backward("batch_norm_backward", dy, x, weight, eps, running_mean, running_var)


def batch_norm_relu_backward(dy, y, x, weight, eps=1e-5, running_mean=None, running_var=None):
    """Gradient of batch_norm_relu: dy and y (its output) of x's shape -> (dx, dweight, dbias),
    as batch_norm_backward(relu_backward(dy, batch_norm(x)), x, ...) but with the ReLU mask
    read from y (y > 0 exactly where the normalised x was > 0) inside the batch-norm
    gradient's own passes (training mode: one fused kernel). running_mean and running_var:
    eval mode, as batch_norm_backward."""
    op = "batch_norm_relu_backward"
    return _batch_norm_backward(op, dy, x, weight, eps, running_mean, running_var, relu=True, y=y)


def _batch_norm_backward(op, dy, x, weight, eps, running_mean, running_var, relu=False, y=None):
    """batch_norm_backward; with relu, dy is gated by y > 0, y the output of batch_norm_relu."""
    x, x3 = _bn_view(op, x)
    if relu:
        y = _float_array(op, "y", y, (2, 4))
        _same_shape(op, "y", y, x.shape, " (same as x)")
        _same_dtype(op, y=y, x=x)
    dy = _bn_dy(op, dy, x)
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    _same_dtype(op, x=x, weight=weight)  # dy: _bn_dy
    eps = _check_number(op, "eps", eps, above=0.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var (eval mode) or neither")
    dx = _empty(x)
    if N * L == 0:  # nothing to differentiate: no statistics, no gradient
        return dx, _full(x, (C,), 0.0), _full(x, (C,), 0.0)
    dweight = _empty(x, (C,))
    dbias = _empty(x, (C,))
    k = _backend(x).batchnorm
    if relu and running_mean is not None:  # eval mode: the mask first, then as batch_norm
        dy = relu_backward(dy, y)
    dy3, dx3 = dy.reshape(N, C, L), dx.reshape(N, C, L)
    if running_mean is None and relu:
        k.batch_norm_relu_backward(dy3, y.reshape(N, C, L), x3, weight, eps, dx3, dweight, dbias)
    elif running_mean is None:
        k.batch_norm_backward(dy3, x3, weight, eps, dx3, dweight, dbias)
    else:
        running_mean = _inplace_vector(op, "running_mean", running_mean, C, x)
        running_var = _inplace_vector(op, "running_var", running_var, C, x)
        k.batch_norm_backward_eval(dy3, x3, weight, running_mean, running_var, eps, dx3, dweight, dbias)
    return dx, dweight, dbias


_OPTIONAL = {"conv_b": 0.0, "bn_w": 1.0, "bn_b": 0.0}  # None means this (no bias, no affine)


def _per_output_channel(op, conv_w, **vectors):
    """The (C_out,) vectors of the conv-batch-norm folding, checked against conv_w's output
    channels; conv_b, bn_w and bn_b may be None (_OPTIONAL's value), the others may not."""
    C = conv_w.shape[0]
    out = []
    for name, a in vectors.items():
        if a is None:
            if name not in _OPTIONAL:
                raise TypeError(f"{op}: {name} must be an array of shape ({C},), got None")
            out.append(_full(conv_w, (C,), _OPTIONAL[name]))
            continue
        a = _float_array(op, name, a, (1,))
        _same_shape(op, name, a, (C,), f" (one per output channel of conv_w.shape={conv_w.shape})")
        out.append(a)
    return out


def fuse_conv_bn_weights(conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w, bn_b):
    """Fold an eval-mode batch norm into the conv before it, as
    torch.nn.utils.fusion.fuse_conv_bn_weights (same arguments): with
    scale = bn_w / sqrt(bn_rv + bn_eps) per output channel,

        w = conv_w * scale[co],   b = (conv_b - bn_rm) * scale + bn_b

    so conv2d(x, w, b, ...) equals batch_norm(conv2d(x, conv_w, conv_b, ...), eval) up to
    rounding (numbacnn.fusion runs a Conv2d -> BatchNorm2d pair of an eval-mode model so).
    conv_w (C_out, C_in/groups, kH, kW); conv_b (C_out,) or None (zeros); bn_rm, bn_rv (C_out,);
    bn_w, bn_b (C_out,) or None for 1 and 0 (a BatchNorm without affine). Returns new (w, b)
    of conv_w's dtype and device. Raises TypeError / ValueError naming the argument."""
    op = "fuse_conv_bn_weights"
    conv_w = _float_array(op, "conv_w", conv_w, (4,))
    conv_b, bn_w, bn_b, bn_rm, bn_rv = _per_output_channel(op, conv_w, conv_b=conv_b, bn_w=bn_w, bn_b=bn_b,
                                                           bn_rm=bn_rm, bn_rv=bn_rv)  # fmt: skip
    _same_dtype(op, conv_w=conv_w, conv_b=conv_b, bn_rm=bn_rm, bn_rv=bn_rv, bn_w=bn_w, bn_b=bn_b)
    eps = _check_number(op, "bn_eps", bn_eps, above=0.0)
    C = conv_w.shape[0]
    w, b = _empty(conv_w), _empty(conv_w, (C,))
    shape2 = (C, conv_w.size // C if C else 0)
    _backend(conv_w).batchnorm.fuse_conv_bn_weights(conv_w.reshape(shape2), conv_b, bn_w, bn_b, bn_rm, bn_rv,
                                                    eps, w.reshape(shape2), b)  # fmt: skip
    return w, b


def fuse_conv_bn_weights_backward(dw, db, conv_w, conv_b, bn_rm, bn_rv, bn_eps, bn_w):
    """Gradient of fuse_conv_bn_weights: the gradients dw (C_out, C_in/groups, kH, kW) and db
    (C_out,) of the folded (w, b) -> (dconv_w, dconv_b, dbn_w, dbn_b), with sigma =
    sqrt(bn_rv + bn_eps) and scale = bn_w / sigma per output channel:

        dconv_w = dw * scale,  dconv_b = db * scale,  dbn_b = db,
        dbn_w   = (sum over (ci, kh, kw) of dw * conv_w + db * (conv_b - bn_rm)) / sigma

    the chain rule through w = conv_w * scale, b = (conv_b - bn_rm) * scale + bn_b (bn_rm and
    bn_rv are fixed statistics: eval mode). dbn_w equals batch_norm_backward's eval-mode
    dweight, sum dy * xhat. db, bn_rm, bn_rv (C_out,); conv_b, bn_w (C_out,) or None for
    zeros and ones. Raises TypeError / ValueError naming the argument."""
    op = "fuse_conv_bn_weights_backward"
    conv_w = _float_array(op, "conv_w", conv_w, (4,))
    dw = _float_array(op, "dw", dw, (4,))
    _same_shape(op, "dw", dw, conv_w.shape, " (same as conv_w)")
    vectors = _per_output_channel(op, conv_w, db=db, conv_b=conv_b, bn_w=bn_w, bn_rm=bn_rm, bn_rv=bn_rv)
    db, conv_b, bn_w, bn_rm, bn_rv = vectors
    _same_dtype(op, dw=dw, db=db, conv_w=conv_w, conv_b=conv_b, bn_rm=bn_rm, bn_rv=bn_rv, bn_w=bn_w)
    eps = _check_number(op, "bn_eps", bn_eps, above=0.0)
    C = conv_w.shape[0]
    dconv_w, dconv_b, dbn_w, dbn_b = (
        _empty(conv_w),
        _empty(conv_w, (C,)),
        _empty(conv_w, (C,)),
        _empty(conv_w, (C,)),
    )
    shape2 = (C, conv_w.size // C if C else 0)
    _backend(conv_w).batchnorm.fuse_conv_bn_weights_backward(dw.reshape(shape2), db, conv_w.reshape(shape2),
                                                             conv_b, bn_w, bn_rm, bn_rv, eps,
                                                             dconv_w.reshape(shape2), dconv_b, dbn_w,
                                                             dbn_b)  # fmt: skip
    return dconv_w, dconv_b, dbn_w, dbn_b


def batch_norm_stats(x):
    """This batch's per-channel statistics, the first step of batch norm across ranks
    (torch.batch_norm_stats; numbacnn.distributed.SyncBatchNorm): x (N, C, H, W) or (N, C)
    -> (count, mean, m2), count = N*H*W values per channel, mean and the centred sum of
    squares m2 float64 (C,) (0 and 0 for an empty batch)."""
    op = "batch_norm_stats"
    x, x3 = _bn_view(op, x)
    N, C, L = x3.shape
    mean, m2 = np.empty(C), np.empty(C)
    _cpu_only(op, x).batchnorm.batch_norm_stats(x3, mean, m2)
    return N * L, mean, m2


def batch_norm_elemt(x, weight, bias, mean, var, eps=1e-5):
    """y = weight * (x - mean) / sqrt(var + eps) + bias with GIVEN per-channel statistics
    (float64 (C,), e.g. a whole global batch's): torch.batch_norm_elemt."""
    op = "batch_norm_elemt"
    x, x3 = _bn_view(op, x)
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    bias = _bn_param(op, "bias", bias, C, x, 0.0)
    mean, var = _stat_vectors(op, C, mean=mean, var=var)
    y = _empty(x)
    _cpu_only(op, x).batchnorm.batch_norm_forward_eval(x3, weight, bias, mean, var,
                                                         _check_number(op, "eps", eps, above=0.0),
                                                         y.reshape(N, C, L))  # fmt: skip
    return y


def batch_norm_backward_reduce(dy, x, mean, var, eps=1e-5):
    """Per-channel (sum dy, sum dy * xhat) with xhat normalised by the GIVEN statistics
    (torch.batch_norm_backward_reduce): float64 (C,) each, to be summed over ranks."""
    op = "batch_norm_backward_reduce"
    x, x3 = _bn_view(op, x)
    dy = _bn_dy(op, dy, x)
    N, C, L = x3.shape
    mean, var = _stat_vectors(op, C, mean=mean, var=var)
    sum_dy, sum_dy_xhat = np.empty(C), np.empty(C)
    _cpu_only(op, x).batchnorm.batch_norm_backward_reduce(dy.reshape(N, C, L), x3, mean, var,
                                                            _check_number(op, "eps", eps, above=0.0),
                                                            sum_dy, sum_dy_xhat)  # fmt: skip
    return sum_dy, sum_dy_xhat


def batch_norm_backward_elemt(dy, x, weight, mean, var, eps, sum_dy, sum_dy_xhat, count):
    """The training-mode input gradient of batch norm given the GLOBAL statistics and the
    global sums over ``count`` values per channel (torch.batch_norm_backward_elemt):
    dx = weight * s * (dy - sum_dy/count - xhat * sum_dy_xhat/count), s = 1/sqrt(var + eps)."""
    op = "batch_norm_backward_elemt"
    x, x3 = _bn_view(op, x)
    dy = _bn_dy(op, dy, x)
    N, C, L = x3.shape
    weight = _bn_param(op, "weight", weight, C, x, 1.0)
    _same_dtype(op, x=x, weight=weight)
    mean, var, sum_dy, sum_dy_xhat = _stat_vectors(op, C, mean=mean, var=var, sum_dy=sum_dy,
                                                   sum_dy_xhat=sum_dy_xhat)  # fmt: skip
    count = _check_number(op, "count", count, above=0.0)
    eps = _check_number(op, "eps", eps, above=0.0)
    dx = _empty(x)
    k = _cpu_only(op, x).batchnorm
    k.batch_norm_backward_elemt(dy.reshape(N, C, L), x3, weight, mean, var, eps, sum_dy, sum_dy_xhat, count,
                                dx.reshape(N, C, L))  # fmt: skip
    return dx


def _stat_vectors(op, C, **vectors):
    """Per-channel float64 statistics, each (C,) (ValueError naming it otherwise)."""
    out = {}
    for name, v in vectors.items():
        a = np.ascontiguousarray(v, dtype=np.float64)
        if a.shape != (C,):
            raise ValueError(f"{op}: {name} must have shape ({C},) (one per channel), got {a.shape}")
        out[name] = a
    return tuple(out.values())


def _cpu_only(op, x):
    """The CPU kernels: the across-rank batch norm pieces have no CUDA twins yet."""
    if _is_device_array(x):
        raise TypeError(f"{op}: not implemented for device arrays yet (numbacnn.distributed is CPU-only)")
    return _backend(x)


# ----------------------------------------------------------------------------------------
# dense


def linear(x, weight, bias=None):
    """y = x W^T + b: x (N, IN), weight (OUT, IN), bias (OUT,) -> y (N, OUT)."""
    op = "linear"
    x, weight, bias = _x_weight_bias(op, x, weight, bias, 2)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op}: x has {x.shape[1]} features but weight expects {weight.shape[1]} "
            f"(x.shape={x.shape}, weight.shape={weight.shape})"
        )
    bias = _bias_or_zeros(op, bias, x, weight)
    y = _empty(x, (x.shape[0], weight.shape[0]))
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
        raise ValueError(
            f"{op}: x has {x.shape[1]} features but weight expects {weight.shape[1]} "
            f"(x.shape={x.shape}, weight.shape={weight.shape})"
        )
    _same_shape(
        op,
        "dy",
        dy,
        (x.shape[0], weight.shape[0]),
        " (x.shape={x}, weight.shape={w})",
        x=x.shape,
        w=weight.shape,
    )
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


def _elementwise(op, kernel, **arrays):
    """Validate same-shape, same-dtype arrays, run `kernel(activation)` (the kernel, picked
    from the arrays' backend module `activation`) on their flat 1-D views and a new flat
    output, and return that output in the arrays' shape."""
    flat, first = [], None
    for name, a in arrays.items():
        a = _float_array(op, name, a, range(0, 33))
        if first is None:
            first = (name, a)
        elif a.shape != first[1].shape:
            raise ValueError(
                f"{op}: {name} must have the same shape as {first[0]}, got "
                f"{name}.shape={a.shape}, {first[0]}.shape={first[1].shape}"
            )
        flat.append(a)
    _same_dtype(op, **dict(zip(arrays, flat, strict=True)))
    out = _empty(flat[0])
    kernel(_backend(out).activation)(*(a.reshape(-1) for a in flat), out.reshape(-1))
    return out


def relu(x, inplace=False):
    """max(x, 0) elementwise (lecture, "ReLU Activation"); NaN stays NaN, as PyTorch.
    inplace=True overwrites x and returns it (torch.nn.functional.relu's inplace)."""
    if _check_bool("relu", "inplace", inplace):
        return _relu_inplace("relu", x)
    return _elementwise("relu", lambda activation: activation.relu_forward, x=x)


def _relu_inplace(op, x):
    """max(x, 0) written into x, which is returned (torch.relu_); x must be C-contiguous."""
    y = _float_array(op, "x", x, range(0, 33))  # checks the type; a strided x is copied, so:
    if not _backend(x).is_contiguous(x):
        raise ValueError(f"{op}: x must be C-contiguous and writeable to be overwritten in place, "
                         f"got x.shape={x.shape}")  # fmt: skip
    flat = y.reshape(-1)
    _backend(x).activation.relu_forward(flat, flat)  # element i reads x[i], then writes it
    return x


def relu_backward(dy, x):
    """0 where x <= 0, else dy (x is the forward INPUT; a NaN x passes dy on, as PyTorch)."""
    return _elementwise("relu_backward", lambda activation: activation.relu_backward, dy=dy, x=x)


def tanh(x):
    """tanh(x) elementwise."""
    return _elementwise("tanh", lambda activation: activation.tanh_forward, x=x)


def tanh_backward(dy, y):
    """dy * (1 - y^2), with y = tanh(x) the forward OUTPUT."""
    return _elementwise("tanh_backward", lambda activation: activation.tanh_backward, dy=dy, y=y)


def sigmoid(x):
    """1 / (1 + exp(-x)) elementwise."""
    return _elementwise("sigmoid", lambda activation: activation.sigmoid_forward, x=x)


def sigmoid_backward(dy, y):
    """dy * y (1 - y), with y = sigmoid(x) the forward OUTPUT."""
    return _elementwise("sigmoid_backward", lambda activation: activation.sigmoid_backward, dy=dy, y=y)


def add(a, b):
    """a + b elementwise (the residual join; same shape and dtype)."""
    return _elementwise("add", lambda activation: activation.add_forward, a=a, b=b)


def add_relu(a, b):
    """max(a + b, 0) in one pass (numbacnn.fusion: ResNet's residual join and the ReLU after
    it); the gradient of both inputs is relu_backward(dy, y) with y this output."""
    return _elementwise("add_relu", lambda activation: activation.add_relu_forward, a=a, b=b)


def add_backward(dy):
    """Both inputs of add receive dy."""
    return dy, dy


def dropout(x, p=0.5, training=True, seed=None, offset=0):
    """Inverted dropout (lecture, "Dropout Layer"): x_i -> 0 with probability p, else
    x_i / (1 - p). x: any shape -> (y, mask), mask uint8 of x's shape (1 = kept), a pure
    function of (seed, offset + flat index), so it is reproducible (and the same on CPU and
    GPU). p: a number in [0, 1]; training: a bool (False returns (x, None)); seed: an int or
    None (None draws one from numbacnn.random); offset: x's first element's flat index in a
    larger batch x is a part of (a rank's share of a global batch, numbacnn.distributed), so
    the parts' masks are the whole batch's mask. Raises TypeError / ValueError naming the
    argument.
    """
    op = "dropout"
    x = _float_array(op, "x", x, range(0, 33))
    p = _check_number(op, "p", p, minimum=0.0, maximum=1.0)
    if not _check_bool(op, "training", training):
        return x, None
    if seed is None:
        seed = int(_random.rng().integers(0, 2**62))
    seed = _check_int(op, "seed", seed) % 2**63  # the kernel hashes a signed 64-bit counter
    offset = _check_int(op, "offset", offset, minimum=0)
    if offset >= 2**62:
        raise ValueError(f"{op}: offset must be below 2**62, got {offset}")
    y = _empty(x)
    mask = _empty(x, x.shape, np.uint8)
    _backend(x).activation.dropout_forward(x.reshape(-1), y.reshape(-1), mask.reshape(-1), p, seed, offset)
    return y, mask


def dropout_backward(dy, mask, p):
    """dx = dy * mask / (1 - p), dx of dy's shape; mask None (eval) passes dy through. mask:
    the uint8 mask dropout returned (TypeError for another dtype, ValueError for another
    shape, TypeError on another device); p: a number in [0, 1]."""
    op = "dropout_backward"
    dy = _float_array(op, "dy", dy, range(0, 33))
    p = _check_number(op, "p", p, minimum=0.0, maximum=1.0)
    if mask is None:
        return dy
    if getattr(mask, "dtype", None) != np.uint8:
        got = getattr(mask, "dtype", type(mask).__name__)
        raise TypeError(f"{op}: mask must be the uint8 mask returned by dropout, got {got}")
    _same_shape(op, "mask", mask, dy.shape, " (dy's shape)")
    if _is_device_array(mask) != _is_device_array(dy):
        raise TypeError(f"{op}: mask and dy must be on one device")
    mask = _backend(mask).ascontiguous(mask)
    dx = _empty(dy)
    _backend(dy).activation.dropout_backward(dy.reshape(-1), mask.reshape(-1), p, dx.reshape(-1))
    return dx


# ----------------------------------------------------------------------------------------
# loss


def _ce_args(op, logits, labels):
    logits = _float_array(op, "logits", logits, (2,))
    labels = _class_labels(op, labels, logits)
    return logits, _backend(logits).as_int64(labels)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy (torch.nn.functional.cross_entropy, reduction="mean"):
    logits (N, K) float, labels (N,) integers in [0, K) -> a Python float, through the stable
    log-sum-exp. An empty batch gives NaN (the mean of nothing), as PyTorch."""
    logits, labels = _ce_args("cross_entropy", logits, labels)
    return float(_backend(logits).loss.cross_entropy_forward(logits, labels))


def cross_entropy_backward(logits, labels):
    """d loss / d logits = (softmax(logits) - onehot(labels)) / N: (N, K), empty for N = 0."""
    logits, labels = _ce_args("cross_entropy_backward", logits, labels)
    dlogits = _empty(logits)
    _backend(logits).loss.cross_entropy_backward(logits, labels, dlogits)
    return dlogits


def loss_and_hits(logits, labels, totals):
    """Add a batch's summed cross-entropy and its number of correct predictions to
    ``totals``, in place: totals[0] += sum_n (logsumexp(logits[n]) - logits[n, labels[n]]),
    totals[1] += #{n: argmax_k logits[n, k] == labels[n]} (NumPy's argmax: the first
    maximum). logits (N, K) float, labels (N,) integers in [0, K), totals a float64 (2,)
    array on the logits' device. A training loop's running sums: on a GPU nothing crosses to
    the host until the loop reads totals (numbacnn.train, once per logging interval).
    Raises TypeError / ValueError naming the argument."""
    op = "loss_and_hits"
    logits, labels = _ce_args(op, logits, labels)
    if getattr(totals, "dtype", None) != np.float64 or getattr(totals, "shape", None) != (2,):
        got = f"{getattr(totals, 'dtype', type(totals).__name__)} {getattr(totals, 'shape', '')}"
        raise TypeError(f"{op}: totals must be a float64 array of shape (2,), got {got}")
    if _is_device_array(totals) != _is_device_array(logits):
        raise TypeError(f"{op}: totals and logits must be on one device")
    if not _backend(totals).is_contiguous(totals):
        raise ValueError(f"{op}: totals is updated in place and must be contiguous and writeable")
    _backend(logits).loss.loss_and_hits(logits, labels, totals)
