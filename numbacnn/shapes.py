"""Output-shape arithmetic from the lecture: padding, "same", stride, dilation.

The lecture's formula for one spatial axis, with input size n, kernel k, total padding p
and stride s, is

    out = floor((n - k + p + s) / s)                       (lecture, "Stride")

With dilation d the kernel covers an effective extent d*(k-1)+1, which gives the general
form used by PyTorch and here:

    out = floor((n + p - d*(k-1) - 1) / s) + 1

For d = 1 the two agree. "same" padding pads p = d*(k-1) in total, so that
out = floor((n + s - 1) / s): equal to n for s = 1, and n / s when s divides n.
For an even kernel p is odd: the lecture puts ceil(p/2) on top/left and floor(p/2) on
bottom/right. (PyTorch's padding="same" puts the extra row/column bottom/right instead.)
"""
import numpy as np


def pair(value, name, op):
    """Turn an int or a pair of ints into a (h, w) tuple, with a clear error otherwise."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    for v in (a, b):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def conv_padding(padding, kernel, dilation, op="conv2d"):
    """Padding as (top, bottom, left, right).

    padding: int, (ph, pw), "valid" (no padding) or "same" (total d*(k-1) per axis, the
    extra row/column on top/left, as in the lecture).
    """
    (kh, kw), (dh, dw) = kernel, dilation
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding == "same":
            th, tw = dh * (kh - 1), dw * (kw - 1)
            return (th + 1) // 2, th // 2, (tw + 1) // 2, tw // 2
        raise ValueError(f"{op}: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
    ph, pw = pair(padding, "padding", op)
    if ph < 0 or pw < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding!r}")
    return ph, ph, pw, pw


def conv_output_size(n, k, stride, pad_total, dilation=1):
    """floor((n + p - d*(k-1) - 1) / s) + 1: the lecture's formula, with dilation."""
    return (n + pad_total - dilation * (k - 1) - 1) // stride + 1


def lecture_output_size(n, k, pad_total, stride):
    """The lecture's own form: floor((n - k + p + s) / s) (dilation 1)."""
    return (n - k + pad_total + stride) // stride
