"""Output shapes and their validation: the lecture's arithmetic, written once.

`numbacnn.functional` (before it allocates an output) and the layers' `output_shape` (shape
inference for `Graph.check` and `summary`) both call these functions, so shape inference and
the forward pass can never disagree: they accept the same arguments and raise the same errors.
(One rule is about the batch, not the model, and is checked only by the forward pass, as in
PyTorch: batch norm in training mode needs more than one value per channel.)

The lecture's formula for one spatial axis, with input size n, kernel k, total padding p
and stride s (lecture, "Stride"):

    out = floor((n - k + p + s) / s)

With dilation d the kernel covers an effective extent d*(k-1)+1, which gives the general
form used by PyTorch and here:

    out = floor((n + p - d*(k-1) - 1) / s) + 1

For d = 1 the two agree. "same" padding pads p = d*(k-1) in total, so that
out = floor((n + s - 1) / s): equal to n for s = 1, and n / s when s divides n.
For an even kernel p is odd: the lecture puts ceil(p/2) on top/left and floor(p/2) on
bottom/right. (PyTorch's padding="same" puts the extra row/column bottom/right instead.)
"""

import functools
from typing import NamedTuple

from ._checks import check_int, pair, positive_pair

__all__ = [
    "pair",
    "conv_padding",
    "conv_output_size",
    "ConvGeometry",
    "conv2d_geometry",
    "PoolGeometry",
    "pool2d_geometry",
]


def conv_padding(padding, kernel, dilation, op="conv2d"):
    """Padding as (pad_top, pad_bottom, pad_left, pad_right).

    padding: int, (pad_h, pad_w), "valid" (no padding) or "same" (total d*(k-1) per axis,
    the extra row/column on top/left, as in the lecture). kernel = (kH, kW), dilation =
    (dil_h, dil_w). Raises ValueError for a negative padding or an unknown string.
    """
    (kH, kW), (dil_h, dil_w) = kernel, dilation
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            total_h, total_w = dil_h * (kH - 1), dil_w * (kW - 1)
            return (total_h + 1) // 2, total_h // 2, (total_w + 1) // 2, total_w // 2
        raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    pad_h, pad_w = pair(padding, "padding", op)
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
    return pad_h, pad_h, pad_w, pad_w


def conv_output_size(n, k, stride, pad_total, dilation=1):
    """floor((n + p - d*(k-1) - 1) / s) + 1: the lecture's formula, with dilation."""
    return (n + pad_total - dilation * (k - 1) - 1) // stride + 1


class ConvGeometry(NamedTuple):
    """A validated conv2d call: the kernels' integer arguments and the output size."""

    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dil_h: int
    dil_w: int
    groups: int
    H_out: int
    W_out: int

    @property
    def kernel_args(self):
        """(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups): the trailing
        arguments of every conv kernel (docs/CONTRACT.md, "Kernel interface")."""
        return self[:7]


# Validated geometries by call: a layer calls with the same shapes and arguments every step,
# and the checks cost ~15 us a conv call (a LeNet-5 step makes 6).  Only calls whose every
# argument is a plain int, str, None or a tuple of ints are remembered, keyed with the types
# (so 2, 2.0 and True stay apart), and only once they have passed.
_MEMO = {}
_MEMO_SIZE = 1024


def _memo_key(*args):
    """A hashable key of args with their types, or None when an argument is of another kind."""
    key = []
    for a in args:
        if a is None or type(a) in (int, str):
            key.append((type(a), a))
        elif type(a) is tuple and all(type(v) is int for v in a):
            key.append((tuple, a))
        else:
            return None
    return tuple(key)


def _remembered(fn):
    """fn(op, *args) validated once per distinct key (`_memo_key`), then looked up."""

    @functools.wraps(fn)
    def wrapper(op, *args):
        key = _memo_key(fn.__name__, op, *args)
        if key is None:
            return fn(op, *args)
        found = _MEMO.get(key)
        if found is None:
            found = fn(op, *args)  # raises for a bad call: nothing is remembered
            if len(_MEMO) >= _MEMO_SIZE:
                _MEMO.clear()
            _MEMO[key] = found
        return found

    return wrapper


def conv2d_geometry(op, x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """Validate a conv2d call given the SHAPES x_shape (N, C_in, H, W) and w_shape (C_out,
    C_in/groups, kH, kW); return its ConvGeometry (PyTorch's conv2d rules).

    Raises TypeError for non-int stride/dilation/groups/padding entries, ValueError for
    non-positive ones, groups that do not divide both channel counts, a weight whose
    C_in/groups disagrees with x, an empty weight, or a dilated kernel larger than the
    padded input. Every message names the argument and both shapes. A call repeated with
    the same shapes and plain arguments is validated once (remembered).
    """
    return _conv2d_geometry(op, tuple(x_shape), tuple(w_shape), stride, padding, dilation, groups)


@_remembered
def _conv2d_geometry(op, x_shape, w_shape, stride, padding, dilation, groups):
    N, C_in, H, W = x_shape
    C_out, C_in_g, kH, kW = w_shape
    shapes = f"x.shape={x_shape}, weight.shape={w_shape}"
    stride_h, stride_w = positive_pair(stride, "stride", op)
    dil_h, dil_w = positive_pair(dilation, "dilation", op)
    groups = check_int(op, "groups", groups)
    if groups <= 0:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")
    if C_in % groups or C_out % groups:
        raise ValueError(f"{op}: groups={groups} must divide both in_channels and out_channels ({shapes})")
    if C_in_g != C_in // groups:
        raise ValueError(
            f"{op}: weight has C_in/groups={C_in_g} but x has C_in={C_in} with groups={groups} ({shapes})"
        )
    if kH == 0 or kW == 0 or C_out == 0:
        raise ValueError(f"{op}: weight must be non-empty, got weight.shape={w_shape}")
    pad_top, pad_bottom, pad_left, pad_right = conv_padding(padding, (kH, kW), (dil_h, dil_w), op)
    reach_h, reach_w = dil_h * (kH - 1) + 1, dil_w * (kW - 1) + 1
    padded_h, padded_w = H + pad_top + pad_bottom, W + pad_left + pad_right
    if padded_h < reach_h or padded_w < reach_w:
        raise ValueError(
            f"{op}: kernel (extent {reach_h}x{reach_w} with dilation {(dil_h, dil_w)}) is larger than the "
            f"padded input {padded_h}x{padded_w}: the input is too small ({shapes}, padding={padding!r})"
        )
    H_out = conv_output_size(H, kH, stride_h, pad_top + pad_bottom, dil_h)
    W_out = conv_output_size(W, kW, stride_w, pad_left + pad_right, dil_w)
    return ConvGeometry(stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, H_out, W_out)


class PoolGeometry(NamedTuple):
    """A validated pooling call: the kernels' integer arguments and the output size."""

    kH: int
    kW: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    H_out: int
    W_out: int

    @property
    def kernel_args(self):
        """(kH, kW, stride_h, stride_w, pad_top, pad_left): the trailing arguments of every
        pooling kernel. Pooling pads symmetrically: pad_top is also the bottom padding."""
        return self[:6]


def pool2d_geometry(op, x_shape, kernel_size, stride=None, padding=0):
    """Validate a max/avg pooling call given x_shape (N, C, H, W); return its PoolGeometry
    (PyTorch's rules: stride defaults to kernel_size, padding at most half the window).

    Raises TypeError for non-int entries, ValueError for a non-positive kernel_size or
    stride, a negative padding or one wider than half the window, or a window larger than
    the padded input. A call repeated with the same shape and plain arguments is validated
    once (remembered).
    """
    return _pool2d_geometry(op, tuple(x_shape), kernel_size, stride, padding)


@_remembered
def _pool2d_geometry(op, x_shape, kernel_size, stride, padding):
    kH, kW = positive_pair(kernel_size, "kernel_size", op)
    stride_h, stride_w = (kH, kW) if stride is None else positive_pair(stride, "stride", op)
    pad_h, pad_w = pair(padding, "padding", op)
    if pad_h < 0 or pad_w < 0 or 2 * pad_h > kH or 2 * pad_w > kW:
        raise ValueError(
            f"{op}: padding must be >= 0 and at most half the kernel_size, got "
            f"padding={padding!r}, kernel_size={kernel_size!r}"
        )
    H, W = x_shape[2], x_shape[3]
    if H + 2 * pad_h < kH or W + 2 * pad_w < kW:
        raise ValueError(
            f"{op}: kernel_size {(kH, kW)} is larger than the padded input {H + 2 * pad_h}x{W + 2 * pad_w}: "
            f"the input is too small (x.shape={tuple(x_shape)}, padding={padding!r})"
        )
    H_out = conv_output_size(H, kH, stride_h, 2 * pad_h)
    W_out = conv_output_size(W, kW, stride_w, 2 * pad_w)
    return PoolGeometry(kH, kW, stride_h, stride_w, pad_h, pad_w, H_out, W_out)
