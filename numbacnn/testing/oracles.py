"""Oracles built independently of numbacnn's kernels: convolution through
``scipy.signal.correlate``, and central finite differences in float64.

``scipy_conv2d`` pads the input explicitly with ``np.pad`` (asymmetrically for "same" with an
even kernel: the extra row/column on top/left, as in the lecture), dilates the kernel by
inserting zeros, slices out each group's channels, takes SciPy's 'valid' correlation and
subsamples it for the stride. It shares no code with ``numbacnn.reference`` or the kernels.
"""

import numpy as np
import scipy.signal

from .strategies import same_pads

__all__ = ["scipy_conv2d", "numerical_gradient", "directional_derivative"]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def scipy_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """conv2d (numbacnn.functional's signature and semantics) in float64 through
    scipy.signal.correlate(mode="valid"): x (N, C_in, H, W), weight (C_out, C_in/groups, kH,
    kW), bias (C_out,) or None -> (N, C_out, H_out, W_out) float64."""
    stride_h, stride_w = _pair(stride)
    dil_h, dil_w = _pair(dilation)
    N = x.shape[0]
    C_out, C_in_g, kH, kW = weight.shape
    if padding == "valid":
        pads_h = pads_w = (0, 0)
    elif padding == "same":
        pads_h, pads_w = same_pads(kH, dil_h), same_pads(kW, dil_w)
    else:
        pad_h, pad_w = _pair(padding)
        pads_h, pads_w = (pad_h, pad_h), (pad_w, pad_w)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pads_h, pads_w))
    wd = np.zeros((C_out, C_in_g, dil_h * (kH - 1) + 1, dil_w * (kW - 1) + 1))
    wd[:, :, ::dil_h, ::dil_w] = weight  # dilation: zeros between the taps
    C_out_g = C_out // groups
    y = []
    for n in range(N):
        maps = []
        for co in range(C_out):
            g = co // C_out_g
            xg = xp[n, g * C_in_g : (g + 1) * C_in_g]  # this group's input channels
            full = scipy.signal.correlate(xg, wd[co], mode="valid", method="direct")[0]
            maps.append(full[::stride_h, ::stride_w] + (0.0 if bias is None else float(bias[co])))
        y.append(maps)
    if N == 0:  # no images: no correlations, but the output's shape all the same
        H_out = (x.shape[2] + sum(pads_h) - dil_h * (kH - 1) - 1) // stride_h + 1
        W_out = (x.shape[3] + sum(pads_w) - dil_w * (kW - 1) - 1) // stride_w + 1
        return np.zeros((0, C_out, H_out, W_out))
    return np.array(y, dtype=np.float64)


def numerical_gradient(f, a, h=1e-6):
    """dL/da by central differences, every element: a float64 C-contiguous array that
    ``f()`` reads, perturbed in place one element at a time (and restored); f() returns L.
    Cost: two calls of f per element."""
    if a.dtype != np.float64 or not a.flags.c_contiguous:
        raise TypeError(f"numerical_gradient: a must be a C-contiguous float64 array, got {a.dtype}")
    flat = a.reshape(-1)  # a view: writes go into a
    grad = np.zeros(a.size)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        f_plus = float(f())
        flat[k] = old - h
        f_minus = float(f())
        flat[k] = old
        grad[k] = (f_plus - f_minus) / (2.0 * h)
    return grad.reshape(a.shape)


def directional_derivative(f, a, v, h=1e-6):
    """(f(a + h v) - f(a - h v)) / (2 h): the derivative of L = f(a) along v, which equals
    sum(dL/da * v). f takes the array; a and v float64 of one shape. Two calls of f."""
    return (float(f(a + h * v)) - float(f(a - h * v))) / (2.0 * h)
