"""2-D convolution (cross-correlation, PyTorch semantics): the CPU kernels' contract names
and the dispatch between strategies.

    y[n,co,oh,ow] = b[co] + sum_{ci_l, kh, kw} w[co,ci_l,kh,kw] * x[n, ci, ih, iw]
    ih = oh*stride_h - pad_top + kh*dil_h,   iw = ow*stride_w - pad_left + kw*dil_w,
    ci = g*C_in_g + ci_l for output channel co of group g;  x outside the input counts as 0.

Read the strategies in this order:

    naive.py      the formulas written out literally, a bounds test per tap (the "before")
    planes.py     the flattened, zero-padded plane layout the fast kernels work on
    direct.py     the fast kernels on those planes (a strided forward on phase planes; the
                  forward's register tiles: registers.py)
    polyphase.py  a strided conv's gradients as sums of stride-1 ones (the input gradient's
                  phases on the dispatch's forward; the weight gradient's on direct.py's)
    gemm.py       the weight gradient (groups 1) as one packed matrix product, and the
                  forward of tiny planes with long reductions as dot products
    outer.py      outer products on blocks packed into cache: the weight gradient of ResNet-
                  and VGG-sized layers (vectorised over output channels) and the forward of
                  convs with 6 or more output channels, stride 1 or undilated (a packed
                  row per phase of the stride), vectorised over positions (over channels
                  on small planes with many channels: use_channel_tiles; along output
                  rows of whole vectors: use_row_tiles)
    lastc.py      the weight gradient of small planes with many channels on channels-last
                  copies of x and dy: per tap a product over the positions, both operands
                  contiguous along channels

docs/kernels/conv_cpu.md explains the layout, the register blocking and the measurements.

Dispatch (the contract names below; functional.conv2d* call them, validated and allocated):

    dense      the single output of each plane sees the whole unpadded input (LeNet's C5):
               a fully connected layer on the flattened input -> kernels/cpu/dense.py
    lastc      backward_weight, groups 1, float32, AVX-512, at least 8 images, 8 output and 32
               input channels, at most 255 output positions per image (below outer's 16x16),
               9 taps or more at strides of at most 2, its copies and partial sums bounded
               -> lastc.py
    outer      forward (and the gather input gradient), groups 1, at least 6 output channels,
               float32, stride 1, a 1x1 kernel or no dilation (strided: a packed row per phase), the
               tasks' buffers within 64 MB (after gemm's tiny planes below) -> outer.conv2d_forward;
               backward_weight, groups 1, at least one vector of output channels (16 with
               AVX-512) and 256 output positions per image (16x16), gemm's 64 MB panel bound
               -> outer.py
    gemm       backward_weight, groups 1, its packed panel within 64 MB -> gemm.py;
               forward (and the gather input gradient), groups 1, no dilation, C_in*kH*kW >= 256
               on planes so small that direct.py's register tiles would mostly compute garbage
               positions (gemm.grid_use < 0.55: 4x4) -> gemm.conv2d_forward
    polyphase  backward, stride > 1, dilation 1 (unless the stride is far longer than the input)
               -> polyphase.py (the forward needs no split: outer.py packs a row per phase,
               direct.py splits its planes into phases itself)
    naive      backward_input when w holds a NaN or an inf (exact: the fast forms multiply
               every weight by zeros of dy's padding or grid) -> naive.py; backward_weight
               again when the fast forms' dw holds a NaN or an inf (their padding and grid
               zeros times an inf are NaN); all three when the fast kernels' padded planes
               would dwarf the arrays (`_padding_dominates`: padding 10**5 and stride 10**6
               on 8x8, a 160 GB plane for one output)
    gather     backward_input with stride 1 and padding no wider than the kernel's reach:
               a forward conv of dy with the flipped weights -> direct.conv2d_backward_input_gather
    direct     everything else -> direct.py

Every kernel fully overwrites its output (np.empty is fine), writes each element from one
thread (no atomics, no races) and sums in a fixed order, so results do not depend on the
number of threads.  The forward adds the taps in the naive order (ci_l, kh, kw), one fused
multiply-add each (planes.FMA, in the naive kernels too), so it equals naive.conv2d_forward
bit for bit on finite inputs, strided and dilated convs included, except on the dense path
(the dense kernels' tiled sums) and the gemm forward (its dot products' SIMD order); with
padding, the fast forms also multiply the padding's zeros (as PyTorch does), so an inf or NaN
weight gives NaN there and a sum of -0.0 terms +0.0, where the naive kernel skips those taps.
The gather input gradient is that forward of dy with flipped weights (not the naive scatter's
order: they agree to rounding); the weight gradient sums in its own fixed order.  No BLAS
and no np.dot: every multiply-add is in these loops.
"""

import math

import numpy as np

from .. import dense as _dense
from . import direct, gemm, lastc, naive, outer, polyphase
from .planes import padded_extent

__all__ = [
    "conv2d_forward",
    "conv2d_backward_input",
    "conv2d_backward_weight",
    "conv2d_backward_bias",
    "conv2d_forward_naive",
    "conv2d_backward_input_naive",
    "conv2d_backward_weight_naive",
    "conv2d_backward_bias_naive",
]

# The naive kernels under their historical names (benchmarks and examples use these).
conv2d_forward_naive = naive.conv2d_forward
conv2d_backward_input_naive = naive.conv2d_backward_input
conv2d_backward_weight_naive = naive.conv2d_backward_weight
conv2d_backward_bias_naive = naive.conv2d_backward_bias


def _is_dense(x_shape, w_shape, y_shape, pad_top, pad_left, dil_h, dil_w, groups):
    """A conv whose 1x1 output plane sees the whole unpadded input, e.g. LeNet's C5 (16x5x5 ->
    120x1x1): y[n, co] = b[co] + sum_k w[co, k] * x[n, k] with k = (ci, kh, kw) flattened."""
    return (
        groups == 1
        and y_shape[2] == 1
        and y_shape[3] == 1
        and pad_top == 0
        and pad_left == 0
        and dil_h == 1
        and dil_w == 1
        and w_shape[2] == x_shape[2]
        and w_shape[3] == x_shape[3]
    )


MAX_SCRATCH_SHARE = 64  # the fast kernels' padded planes, at most this times the arrays
MAX_SCRATCH = 1 << 24  # ...where they pass this many elements (64 MB of float32)
QUICK_NO = 64  # paddings, strides and kernel reaches up to this never pass (checked first)


def _padding_dominates(in_shape, out_shape, w_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """True when the zero-padded planes the fast kernels lay out (`planes.padded_extent`, one
    per (image, input channel)), with a stride's phase tables, would pass MAX_SCRATCH elements
    and MAX_SCRATCH_SHARE times the input, output and weights together: a padding far wider
    than the input with a stride to match (padding 10**5 and stride 10**6 on an 8x8 input: a
    2e5 x 2e5 plane, 160 GB, for one output; padding 1000 with dilation 1000 on 8x8: 16 GB of
    planes at batch 16), or a stride far longer than the input (2**31 - 1: 16 GB of phase
    tables).  The naive kernels then add the few real terms with no plane (found by cold
    reviews: MemoryErrors, some raised as SystemError from inside Numba, or 100 s of zeroing)."""
    if max(pad_top, pad_left, stride_h, stride_w, dil_h * w_shape[2], dil_w * w_shape[3]) <= QUICK_NO:
        return False  # every conv of ordinary geometry (a check of a few hundred ns a call)
    N, C_in, H, W = in_shape
    H_out, W_out = out_shape[2], out_shape[3]
    Hp, Wp = padded_extent.py_func(  # its Python function: the same formula, nothing to compile
        H, W, H_out, W_out, w_shape[2], w_shape[3], stride_h, stride_w, pad_top, pad_left, dil_h, dil_w
    )
    scratch = max(N * C_in, 1) * Hp * Wp + stride_h + stride_w
    arrays = math.prod(in_shape) + math.prod(out_shape) + math.prod(w_shape)
    return scratch > MAX_SCRATCH and scratch > MAX_SCRATCH_SHARE * arrays


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b (fully overwrites y)."""
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    if y.size == 0:  # nothing to write (the fast forms' plans divide by the plane's size)
        return
    if _is_dense(x.shape, w.shape, y.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out, K = y.shape[0], y.shape[1], w[0].size  # K = C_in*kH*kW (explicit: N may be 0)
        _dense.linear_forward(x.reshape(N, K), w.reshape(C_out, K), b, y.reshape(N, C_out))
    elif _padding_dominates(x.shape, y.shape, w.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
        naive.conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    elif gemm.use_gemm_forward(x.shape, w.shape, y.shape, stride_w, dil_h, dil_w, groups):
        gemm.conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left)
    elif outer.use_outer_forward(
        x.shape, w.shape, y.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, y.itemsize
    ):
        outer.conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    else:  # float64, groups, strided and dilated: phase planes (planes.split_plane) or column copies
        direct.conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = dL/dx (fully overwrites dx)."""
    # dy: (N, C_out, H_out, W_out)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    if dx.size == 0:  # nothing to write (an empty input plane: every tap read padding)
        return
    if _is_dense(dx.shape, w.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out, K = dy.shape[0], dy.shape[1], w[0].size
        _dense.linear_backward_input(dy.reshape(N, C_out), w.reshape(C_out, K), dx.reshape(N, K))
    elif not np.isfinite(w).all() or _padding_dominates(
        dx.shape, dy.shape, w.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w
    ):
        # the fast forms multiply every weight with dy's padding or grid zeros (0 * inf = NaN
        # where the true sum never uses that weight); the naive scatter adds real terms only,
        # with no padded plane
        naive.conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    elif polyphase.use_polyphase(
        dx.shape, w.shape, dy.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w
    ):
        polyphase.conv2d_backward_input(
            dy, w, dx, stride_h, stride_w, pad_top, pad_left, groups, conv2d_forward
        )
    elif direct.can_gather(w.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
        # a forward conv of dy: whichever forward kernel that conv takes
        direct.conv2d_backward_input_gather(
            dy, w, dx, pad_top, pad_left, dil_h, dil_w, groups, conv2d_forward
        )
    else:
        direct.conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = dL/dw (fully overwrites dw)."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    if dw.size == 0:  # C_in = 0: nothing to write
        return
    if x.size == 0 or dy.size == 0:  # no terms (no images, or every tap read padding): dw = 0
        dw[...] = 0
        return
    if _is_dense(x.shape, dw.shape, dy.shape, pad_top, pad_left, dil_h, dil_w, groups):
        N, C_out, K = dy.shape[0], dy.shape[1], dw[0].size
        _dense.linear_backward_weight(dy.reshape(N, C_out), x.reshape(N, K), dw.reshape(C_out, K))
        return
    geo = (stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    if _padding_dominates(x.shape, dy.shape, dw.shape, *geo):  # the few real terms, no padded plane
        naive.conv2d_backward_weight(dy, x, dw, *geo, groups)
        return
    if lastc.use_lastc(dy.shape, dw.shape, x.shape, *geo, groups, dw.itemsize):
        lastc.conv2d_backward_weight(dy, x, dw, *geo)
    elif gemm.use_gemm(dy.shape, dw.shape, x.shape, *geo, groups, dw.itemsize):  # gemm's 64 MB bound
        if outer.use_outer(dy.shape, dw.shape, groups):
            outer.conv2d_backward_weight(dy, x, dw, *geo)
        else:
            gemm.conv2d_backward_weight(dy, x, dw, *geo)
    elif polyphase.use_polyphase(x.shape, dw.shape, dy.shape, *geo):
        polyphase.conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, groups)
    else:
        direct.conv2d_backward_weight(dy, x, dw, *geo, groups)
    if not np.isfinite(dw).all():
        # the fast forms multiply the padding's zeros by dy, and gemm's and outer's shared rows
        # multiply their grid's zeros by x: 0 x inf is NaN, where the true sums (PyTorch's in
        # float32, mostly) hold +-inf or a finite value; a dw holding a NaN or an inf is computed again by the
        # naive kernel, which adds real terms only (dw is small: the check costs ~0.2 ms a
        # ResNet-20 step; checking x before, 4.2 ms)
        naive.conv2d_backward_weight(dy, x, dw, *geo, groups)


def conv2d_backward_bias(dy, db):
    """db = dL/db = dy summed over the batch and every output position (fully overwrites db)."""
    # dy: (N, C_out, H_out, W_out)   db: (C_out,)
    direct.conv2d_backward_bias(dy, db)
