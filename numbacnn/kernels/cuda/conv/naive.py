"""2-D convolution (cross-correlation, PyTorch semantics): CUDA kernels (numba.cuda).

Formula (same as numbacnn.kernels.cpu.conv)
-------------------------------------------
Input x (N, C_in, H, W), weight w (C_out, C_in_g, kH, kW), bias b (C_out,), with
C_in_g = C_in/groups and C_out_g = C_out/groups; output channel co is in group
g = co // C_out_g and sees input channels ci = g*C_in_g + ci_l.  Stride (stride_h, stride_w),
top/left padding (pad_top, pad_left), dilation (dil_h, dil_w):

    y[n,co,oh,ow] = b[co] + sum_{ci_l, kh, kw} w[co,ci_l,kh,kw] * x[n, ci, ih, iw]
                    ih = oh*stride_h - pad_top + kh*dil_h,   iw = ow*stride_w - pad_left + kw*dil_w

x outside [0, H) x [0, W) counts as 0 (implicit padding, never materialised); the output
size (and with it the bottom/right padding) is fixed by the caller's y.

    dx[n,ci,ih,iw]    = sum_{co in group(ci), kh, kw : oh = (ih + pad_top - kh*dil_h)/stride_h and
                                                       ow = (iw + pad_left - kw*dil_w)/stride_w are
                                                       integers inside the output}
                            w[co,ci_l,kh,kw] * dy[n,co,oh,ow]
    dw[co,ci_l,kh,kw] = sum_{n, oh, ow} dy[n,co,oh,ow] * x[n,ci,ih,iw]
    db[co]            = sum_{n, oh, ow} dy[n,co,oh,ow]

Thread mapping (who owns which output element)
----------------------------------------------
    conv2d_forward            one thread per y[n,co,oh,ow] (flat C index of y); it loops over
                              (ci_l, kh, kw), skipping taps in the padding.
    conv2d_backward_input     one thread per dx[n,ci,ih,iw]: a GATHER over the (co, kh, kw)
                              whose window covers (ih, iw) (the CPU scatter turned around), so
                              no two threads write the same element: no atomics.
    conv2d_backward_weight    one thread per dw[co,ci_l,kh,kw], looping over (n, oh, ow).
    conv2d_backward_bias      one block per co: RED_TPB threads stride over (n, oh, ow) and
                              combine their float64 partial sums in shared memory.

Optimisation contract
---------------------
* Every output element is written by exactly one thread, exactly once: outputs may be
  uninitialised (cuda.device_array), there are no atomics and no races, and every sum is
  taken in a fixed order (results do not depend on timing or the launch geometry).
* Arithmetic and accumulation in the array dtype (float32 or float64), as the CPU kernels
  (the bias gradient accumulates in float64 and is cast on store).  Typed constants (the
  zero an accumulator starts from) are passed in by the host function in the array dtype,
  because a Python literal would promote float32 arithmetic to float64 inside the kernel.
* Consecutive threads own consecutive ow (the fastest index of y / dx), so the loads of
  x[n,ci,ih,iw] and dy[...] by a warp are (for stride 1) contiguous, i.e. coalesced; the
  weight loads are the same address for the whole warp (a broadcast).
"""

from numba import cuda, float64

from .._launch import RED_TPB, TPB, block_sum, blocks_for, fill_kernel, owned_element, stride_blocks


# ============================================================================== forward
@cuda.jit
def _conv2d_forward_kernel(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    # x: (N, C_in, H, W)   w: (C_out, C_in_g, kH, kW)   b: (C_out,)   y: (N, C_out, H_out, W_out)
    N, C_in, H, W = x.shape
    C_out, C_in_g, kH, kW = w.shape
    inside, n, co, oh, ow = owned_element(y.shape)  # owns y[n, co, oh, ow]
    if not inside:
        return
    g = co // (C_out // groups)
    ih0 = oh * stride_h - pad_top
    iw0 = ow * stride_w - pad_left
    acc = b[co]
    for ci_l in range(C_in_g):
        ci = g * C_in_g + ci_l
        for kh in range(kH):
            ih = ih0 + kh * dil_h
            if 0 <= ih < H:
                for kw in range(kW):
                    iw = iw0 + kw * dil_w
                    if 0 <= iw < W:
                        acc += w[co, ci_l, kh, kw] * x[n, ci, ih, iw]
    y[n, co, oh, ow] = acc


def conv2d_forward_naive(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b: one thread per output element (the reference of conv2d_forward)."""
    total = y.size
    if total == 0:
        return
    _conv2d_forward_kernel[blocks_for(total), TPB](
        x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups
    )


# ============================================================================= backward
@cuda.jit
def _conv2d_backward_input_kernel(
    dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, zero
):
    # dy: (N, C_out, H_out, W_out)   w: (C_out, C_in_g, kH, kW)   dx: (N, C_in, H, W)
    N, C_out, H_out, W_out = dy.shape
    _, C_in_g, kH, kW = w.shape
    _, C_in, H, W = dx.shape
    inside, n, ci, ih, iw = owned_element(dx.shape)  # owns dx[n, ci, ih, iw]
    if not inside:
        return
    g = ci // C_in_g
    ci_l = ci - g * C_in_g
    C_out_g = C_out // groups
    acc = zero
    for co in range(g * C_out_g, (g + 1) * C_out_g):
        for kh in range(kH):
            th = ih + pad_top - kh * dil_h  # = oh * stride_h if tap kh hits ih
            if th < 0 or th % stride_h != 0:
                continue
            oh = th // stride_h
            if oh >= H_out:
                continue
            for kw in range(kW):
                tw = iw + pad_left - kw * dil_w
                if tw < 0 or tw % stride_w != 0:
                    continue
                ow = tw // stride_w
                if ow < W_out:
                    acc += w[co, ci_l, kh, kw] * dy[n, co, oh, ow]
    dx[n, ci, ih, iw] = acc


def conv2d_backward_input_naive(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx = transposed conv of dy: one thread per dx element, gathering (no atomics)."""
    total = dx.size
    if total == 0:
        return
    _conv2d_backward_input_kernel[blocks_for(total), TPB](
        dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, dx.dtype.type(0)
    )


@cuda.jit
def _conv2d_backward_weight_kernel(
    dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, zero
):
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in_g, kH, kW)
    N, C_out, H_out, W_out = dy.shape
    H, W = x.shape[2], x.shape[3]
    _, C_in_g, kH, kW = dw.shape
    inside, co, ci_l, kh, kw = owned_element(dw.shape)  # owns dw[co, ci_l, kh, kw]
    if not inside:
        return
    g = co // (C_out // groups)
    ci = g * C_in_g + ci_l
    acc = zero
    for n in range(N):
        for oh in range(H_out):
            ih = oh * stride_h - pad_top + kh * dil_h
            if 0 <= ih < H:
                for ow in range(W_out):
                    iw = ow * stride_w - pad_left + kw * dil_w
                    if 0 <= iw < W:
                        acc += dy[n, co, oh, ow] * x[n, ci, ih, iw]
    dw[co, ci_l, kh, kw] = acc


def conv2d_backward_weight_naive(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dw = correlation of x with dy: one thread per dw element, looping over (n, oh, ow)."""
    total = dw.size
    if total == 0:
        return
    _conv2d_backward_weight_kernel[blocks_for(total), TPB](
        dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, dw.dtype.type(0)
    )


@cuda.jit
def _conv2d_backward_bias_kernel(dy, db):
    # dy: (N, C_out, H_out, W_out)   db: (C_out,)
    N, C_out, H_out, W_out = dy.shape
    co = cuda.blockIdx.x  # block owns db[co]
    L = H_out * W_out
    buf = cuda.shared.array(RED_TPB, float64)  # buf: (RED_TPB,) partial sums
    s = float64(0.0)
    for j in range(cuda.threadIdx.x, N * L, RED_TPB):
        n = j // L
        l = j - n * L
        s += dy[n, co, l // W_out, l % W_out]
    total = block_sum(buf, s)
    if cuda.threadIdx.x == 0:
        db[co] = total


def conv2d_backward_bias(dy, db):
    """db[co] = sum of dy[:, co]: one block per channel, shared-memory reduction."""
    C_out = db.shape[0]
    if C_out == 0:
        return
    if dy.size == 0:
        fill_kernel[stride_blocks(C_out), TPB](db, db.dtype.type(0))
        return
    _conv2d_backward_bias_kernel[C_out, RED_TPB](dy, db)
