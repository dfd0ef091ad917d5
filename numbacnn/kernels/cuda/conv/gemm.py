"""2-D convolution as an implicit GEMM on the GPU: forward, input gradient and weight
gradient, one tiled kernel with three sets of loaders (the CUTLASS implicit-GEMM structure;
llm.c's dev/cuda matmul ladder, written here in numba.cuda).

The three products (per group g; C_in_g = C_in/groups, C_out_g = C_out/groups)
-------------------------------------------------------------------------------
    C[m, q] = sum_r A[m, r] * B[r, q]

    forward   y[n,co,oh,ow]    m = co_l, q = (n, oh, ow), r = (ci_l, kh, kw)
              A = weight (C_out_g, C_in_g*kH*kW), B = x unfolded (im2col, never stored)
    input     dx[n,ci,ih,iw]   m = ci_l, q = (n, ih, iw), r = (co_l, kh, kw)
    gradient  A = weight transposed, B = dy gathered: oh = (ih + pad_top - kh*dil_h) / stride_h
              when that is an integer inside the output (else 0), the same for ow
    weight    dw[co,ci_l,kh,kw] m = co_l, q = (ci_l, kh, kw), r = (n, oh, ow)
    gradient  A = dy (C_out_g, N*H_out*W_out), B = x unfolded, transposed; the reduction is
              split over `splits` blocks (blockIdx.z = g * splits + s), each writing its
              partial tile; a second kernel adds the partials in split order (deterministic)

The formulas are numbacnn.kernels.cpu.conv's (see kernels/cuda/conv/naive.py for them as
plain loops, one thread per output element: the reference these kernels are tested against).

Tiling (who computes what)
--------------------------
* A block owns a BM x BN tile of C (64 x 64; 16 x 16 under the CUDA simulator, where every
  thread is a Python thread). Its NT threads (256; 16) each own a TM x TN = 4 x 4 register
  block: c00 .. c33, sixteen named running sums that stay in registers for the whole
  reduction.
* The reduction runs in steps of BK = 8: the block stages As (BK x BM) and Bs (BK x BN) in
  shared memory, every thread loading a few elements; a loader returns 0 for an element
  outside the matrices (a partial tile) or in the padding of x, so borders need no branch in
  the inner loop. All index arithmetic (the im2col decomposition of r and q, the stride
  division of the input gradient) happens in the loaders, once per staged element.
* The inner loop reads 4 values of As and 4 of Bs and issues 16 FMAs: no index arithmetic,
  no bounds test, no division (benchmarks/cuda_static.py counts its SASS per FFMA).

Optimisation contract
---------------------
* Every element of C is written by one thread, once; the sums run over r in increasing
  order within a split, and splits are added in a fixed order: results are deterministic
  and independent of the launch geometry (but not bit-identical to the naive kernels, whose
  sums run in another order).
* Arithmetic in the array dtype (one compiled kernel per dtype and product).
"""

import numpy as np
from numba import config, cuda, float32, float64

_SIM = bool(config.ENABLE_CUDASIM)

TM = TN = 4  # a thread's register block of C: 4 x 4
BM, BN = (16, 16) if _SIM else (64, 64)  # a block's tile of C
BK = 32 if _SIM else 8  # reduction step staged in shared memory (the simulator: fewer barriers)
NT = (BM // TM) * (BN // TN)  # threads per block: 256 (16 under the simulator)
# The weight gradient splits its reduction until the launch has this many blocks (two per SM
# of a 132-SM H100, twice over), keeping at least MIN_SPLIT reduction values per split.
TARGET_BLOCKS = 4 if _SIM else 528
MIN_SPLIT = 16 if _SIM else 256
# At most NT threads per block, at least 2 blocks per SM: NVVM keeps the kernel within 128
# registers per thread (65536 / (2 * 256)), doubling the occupancy it would otherwise have.
LAUNCH_BOUNDS = (NT, 2)
_BOUNDS = {} if _SIM else {"launch_bounds": LAUNCH_BOUNDS}  # the simulator takes no bounds


# ------------------------------------------------------------------------------- loaders
# geo = (N, C_in, H, W, C_out, H_out, W_out, kH, kW, stride_h, stride_w, pad_top, pad_left,
#        dil_h, dil_w, C_in_g, C_out_g): every array is passed flat (C order).
@cuda.jit(device=True, inline=True)
def _x_unfolded(x, geo, g, tap, pos):
    """x unfolded (im2col, never stored): x[n, g*C_in_g + ci_l, oh*stride_h - pad_top +
    kh*dil_h, ow*stride_w - pad_left + kw*dil_w] for tap = (ci_l, kh, kw) and output position
    pos = (n, oh, ow), flattened; 0 in the padding."""
    C_in, H, W, H_out, W_out, kH, kW = geo[1], geo[2], geo[3], geo[5], geo[6], geo[7], geo[8]
    kw = tap % kW
    kh = (tap // kW) % kH
    ci_l = tap // (kW * kH)
    ow = pos % W_out
    oh = (pos // W_out) % H_out
    n = pos // (W_out * H_out)
    ih = oh * geo[9] - geo[11] + kh * geo[13]
    iw = ow * geo[10] - geo[12] + kw * geo[14]
    if 0 <= ih < H and 0 <= iw < W:
        return x[((n * C_in + g * geo[15] + ci_l) * H + ih) * W + iw]
    return x.dtype.type(0)


@cuda.jit(device=True, inline=True)
def _fwd_a(w, geo, g, m, r, M, r_end):
    # A[m, r] = w[g*C_out_g + m, r] (w: (C_out, C_in_g*kH*kW))
    if m < M and r < r_end:
        return w[(g * geo[16] + m) * (geo[15] * geo[7] * geo[8]) + r]
    return w.dtype.type(0)


@cuda.jit(device=True, inline=True)
def _fwd_b(x, geo, g, r, q, Q, r_end):
    # B[r, q] = x unfolded: tap r = (ci_l, kh, kw), position q = (n, oh, ow)
    if r >= r_end or q >= Q:
        return x.dtype.type(0)
    return _x_unfolded(x, geo, g, r, q)


@cuda.jit(device=True, inline=True)
def _fwd_store(y, b, geo, g, s, m, q, M, Q, v):
    # y[n, g*C_out_g + m, oh, ow] = v + b[...]
    if m < M and q < Q:
        H_out, W_out = geo[5], geo[6]
        co = g * geo[16] + m
        ow = q % W_out
        oh = (q // W_out) % H_out
        n = q // (W_out * H_out)
        y[((n * geo[4] + co) * H_out + oh) * W_out + ow] = v + b[co]


@cuda.jit(device=True, inline=True)
def _dx_a(w, geo, g, m, r, M, r_end):
    # A[m, r] = w[g*C_out_g + co_l, m, kh, kw], r = (co_l, kh, kw)
    if m < M and r < r_end:
        kHW = geo[7] * geo[8]
        co_l = r // kHW
        return w[((g * geo[16] + co_l) * geo[15] + m) * kHW + (r - co_l * kHW)]
    return w.dtype.type(0)


@cuda.jit(device=True, inline=True)
def _dx_b(dy, geo, g, r, q, Q, r_end):
    # B[r, q] = dy[n, g*C_out_g + co_l, oh, ow] where tap (kh, kw) of output (oh, ow) reads (ih, iw)
    zero = dy.dtype.type(0)
    if r >= r_end or q >= Q:
        return zero
    H, W, H_out, W_out, kH, kW = geo[2], geo[3], geo[5], geo[6], geo[7], geo[8]
    kw = r % kW
    kh = (r // kW) % kH
    co_l = r // (kW * kH)
    iw = q % W
    ih = (q // W) % H
    n = q // (W * H)
    th = ih + geo[11] - kh * geo[13]  # = oh * stride_h when the tap hits ih
    tw = iw + geo[12] - kw * geo[14]
    if th < 0 or tw < 0:
        return zero
    oh = th // geo[9]
    ow = tw // geo[10]
    if oh * geo[9] != th or ow * geo[10] != tw or oh >= H_out or ow >= W_out:
        return zero
    return dy[((n * geo[4] + g * geo[16] + co_l) * H_out + oh) * W_out + ow]


@cuda.jit(device=True, inline=True)
def _dx_store(dx, unused, geo, g, s, m, q, M, Q, v):
    # dx[n, g*C_in_g + m, ih, iw] = v
    if m < M and q < Q:
        H, W = geo[2], geo[3]
        iw = q % W
        ih = (q // W) % H
        n = q // (W * H)
        dx[((n * geo[1] + g * geo[15] + m) * H + ih) * W + iw] = v


@cuda.jit(device=True, inline=True)
def _dw_a(dy, geo, g, m, r, M, r_end):
    # A[m, r] = dy[n, g*C_out_g + m, oh, ow], r = (n, oh, ow)
    if m < M and r < r_end:
        HW_out = geo[5] * geo[6]
        n = r // HW_out
        return dy[(n * geo[4] + g * geo[16] + m) * HW_out + (r - n * HW_out)]
    return dy.dtype.type(0)


@cuda.jit(device=True, inline=True)
def _dw_b(x, geo, g, r, q, Q, r_end):
    # B[r, q] = x unfolded, transposed: position r = (n, oh, ow), tap q = (ci_l, kh, kw)
    if r >= r_end or q >= Q:
        return x.dtype.type(0)
    return _x_unfolded(x, geo, g, q, r)


@cuda.jit(device=True, inline=True)
def _dw_store(partial, unused, geo, g, s, m, q, M, Q, v):
    # partial[s, g*C_out_g + m, q] = v   (partial: (splits, C_out, C_in_g*kH*kW))
    if m < M and q < Q:
        partial[(s * geo[4] + g * geo[16] + m) * Q + q] = v


# ---------------------------------------------------------------------------- the kernel
def _make_gemm(dtype, load_a, load_b, store):
    """The tiled implicit-GEMM kernel of one product, for one numba float type."""

    @cuda.jit(**_BOUNDS)
    def kernel(A, B, C, bias, geo, M, Q, r_chunk, r_total, splits):
        # A, B, C, bias: flat arrays (see the loaders); M x Q: C per group; r_total the
        # reduction's length, r_chunk a split's share of it; grid (Q/BN, M/BM, groups*splits)
        As = cuda.shared.array((BK, BM), dtype)  # As[r, m] = A[m0 + m, r0 + r]
        Bs = cuda.shared.array((BK, BN), dtype)  # Bs[r, q] = B[r0 + r, q0 + q]
        tid = cuda.threadIdx.x
        z = cuda.blockIdx.z
        g = z // splits
        s = z - g * splits
        q0 = cuda.blockIdx.x * BN
        m0 = cuda.blockIdx.y * BM
        r_begin = s * r_chunk
        r_end = min(r_begin + r_chunk, r_total)
        tm = (tid // (BN // TN)) * TM  # this thread's rows m0 + tm .. + 3
        tn = (tid % (BN // TN)) * TN  # and columns q0 + tn .. + 3 of C
        zero = dtype(0)
        c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
        for r0 in range(r_begin, r_end, BK):
            for e in range(tid, BM * BK, NT):  # stage A's tile (0 outside)
                m = e // BK
                As[e - m * BK, m] = load_a(A, geo, g, m0 + m, r0 + e - m * BK, M, r_end)
            for e in range(tid, BK * BN, NT):  # stage B's tile (0 outside and in the padding)
                r = e // BN
                Bs[r, e - r * BN] = load_b(B, geo, g, r0 + r, q0 + e - r * BN, Q, r_end)
            cuda.syncthreads()
            for r in range(BK):  # the micro-kernel: 8 shared loads, 16 FMAs
                a0, a1, a2, a3 = As[r, tm], As[r, tm + 1], As[r, tm + 2], As[r, tm + 3]
                b0, b1, b2, b3 = Bs[r, tn], Bs[r, tn + 1], Bs[r, tn + 2], Bs[r, tn + 3]
                c00 += a0 * b0
                c01 += a0 * b1
                c02 += a0 * b2
                c03 += a0 * b3
                c10 += a1 * b0
                c11 += a1 * b1
                c12 += a1 * b2
                c13 += a1 * b3
                c20 += a2 * b0
                c21 += a2 * b1
                c22 += a2 * b2
                c23 += a2 * b3
                c30 += a3 * b0
                c31 += a3 * b1
                c32 += a3 * b2
                c33 += a3 * b3
            cuda.syncthreads()
        store(C, bias, geo, g, s, m0 + tm + 0, q0 + tn + 0, M, Q, c00)
        store(C, bias, geo, g, s, m0 + tm + 0, q0 + tn + 1, M, Q, c01)
        store(C, bias, geo, g, s, m0 + tm + 0, q0 + tn + 2, M, Q, c02)
        store(C, bias, geo, g, s, m0 + tm + 0, q0 + tn + 3, M, Q, c03)
        store(C, bias, geo, g, s, m0 + tm + 1, q0 + tn + 0, M, Q, c10)
        store(C, bias, geo, g, s, m0 + tm + 1, q0 + tn + 1, M, Q, c11)
        store(C, bias, geo, g, s, m0 + tm + 1, q0 + tn + 2, M, Q, c12)
        store(C, bias, geo, g, s, m0 + tm + 1, q0 + tn + 3, M, Q, c13)
        store(C, bias, geo, g, s, m0 + tm + 2, q0 + tn + 0, M, Q, c20)
        store(C, bias, geo, g, s, m0 + tm + 2, q0 + tn + 1, M, Q, c21)
        store(C, bias, geo, g, s, m0 + tm + 2, q0 + tn + 2, M, Q, c22)
        store(C, bias, geo, g, s, m0 + tm + 2, q0 + tn + 3, M, Q, c23)
        store(C, bias, geo, g, s, m0 + tm + 3, q0 + tn + 0, M, Q, c30)
        store(C, bias, geo, g, s, m0 + tm + 3, q0 + tn + 1, M, Q, c31)
        store(C, bias, geo, g, s, m0 + tm + 3, q0 + tn + 2, M, Q, c32)
        store(C, bias, geo, g, s, m0 + tm + 3, q0 + tn + 3, M, Q, c33)

    return kernel


_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}
_KERNELS = {}


def gemm_kernel(product, dtype):
    """The compiled-on-first-launch kernel of `product` ("forward", "input", "weight") for a
    NumPy float dtype."""
    key = (product, np.dtype(dtype))
    if key not in _KERNELS:
        loaders = {"forward": (_fwd_a, _fwd_b, _fwd_store), "input": (_dx_a, _dx_b, _dx_store),
                   "weight": (_dw_a, _dw_b, _dw_store)}[product]  # fmt: skip
        _KERNELS[key] = _make_gemm(_TYPES[np.dtype(dtype)], *loaders)
    return _KERNELS[key]


def _geo(x_shape, w_shape, y_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    N, C_in, H, W = x_shape
    C_out, C_in_g, kH, kW = w_shape
    H_out, W_out = y_shape[2], y_shape[3]
    return (N, C_in, H, W, C_out, H_out, W_out, kH, kW, stride_h, stride_w, pad_top, pad_left,
            dil_h, dil_w, C_in_g, C_out // groups)  # fmt: skip


def _launch(product, A, B, C, bias, geo, M, Q, r_total, groups, splits=1):
    """Launch `product` over a (ceil(Q/BN), ceil(M/BM), groups*splits) grid; returns the grid."""
    r_chunk = -(-r_total // splits) if r_total else 0
    r_chunk = -(-r_chunk // BK) * BK  # whole steps per split
    grid = (-(-Q // BN), -(-M // BM), groups * splits)
    gemm_kernel(product, C.dtype)[grid, NT](A, B, C, bias, geo, M, Q, r_chunk, r_total, splits)
    return grid


def grids(x_shape, w_shape, y_shape, groups=1):
    """{"forward", "input", "weight": (grid, splits)} of a conv's three launches (the weight
    gradient's splits of its reduction included), without launching anything."""
    N, _, H, W = x_shape
    C_out, C_in_g, kH, kW = w_shape
    H_out, W_out = y_shape[2], y_shape[3]
    C_out_g, K = C_out // groups, C_in_g * kH * kW

    def grid(M, Q, splits=1):
        return (-(-Q // BN), -(-M // BM), groups * splits)

    tiles = -(-K // BN) * -(-C_out_g // BM) * groups
    splits = weight_splits(tiles, N * H_out * W_out)
    return {
        "forward": (grid(C_out_g, N * H_out * W_out), 1),
        "input": (grid(C_in_g, N * H * W), 1),
        "weight": (grid(C_out_g, K, splits), splits),
    }


def _flat(a):
    return a.reshape(a.size)


def conv2d_forward(x, w, b, y, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """y = conv2d(x, w) + b as an implicit GEMM (m = co_l, q = (n, oh, ow), r = (ci_l, kh, kw))."""
    if y.size == 0:
        return
    geo = _geo(x.shape, w.shape, y.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    N, _, H_out, W_out = y.shape
    K = w.shape[1] * w.shape[2] * w.shape[3]
    _launch("forward", _flat(w), _flat(x), _flat(y), b, geo, geo[16], N * H_out * W_out, K, groups)


def conv2d_backward_input(dy, w, dx, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups):
    """dx as an implicit GEMM (m = ci_l, q = (n, ih, iw), r = (co_l, kh, kw)): a gather, no atomics."""
    if dx.size == 0:
        return
    geo = _geo(dx.shape, w.shape, dy.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    N, _, H, W = dx.shape
    R = geo[16] * w.shape[2] * w.shape[3]
    _launch("input", _flat(w), _flat(dy), _flat(dx), _flat(dx), geo, geo[15], N * H * W, R, groups)


def weight_splits(tiles, positions):
    """How many blocks share the weight gradient's reduction over `positions` values when its
    output has `tiles` tiles (groups included): enough for TARGET_BLOCKS blocks, each split
    keeping at least MIN_SPLIT positions."""
    want = -(-TARGET_BLOCKS // max(tiles, 1))
    return max(1, min(want, positions // MIN_SPLIT))


@cuda.jit
def _sum_splits_kernel(partial, dw, splits):
    # partial: (splits * T,)   dw: (T,); one thread per dw element, splits added in order
    t = cuda.grid(1)
    T = dw.shape[0]
    if t < T:
        acc = partial[t]
        for s in range(1, splits):
            acc += partial[s * T + t]
        dw[t] = acc


def conv2d_backward_weight(
    dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, splits=None
):
    """dw as an implicit GEMM (m = co_l, q = (ci_l, kh, kw), r = (n, oh, ow)), the reduction
    split over `splits` blocks (default: weight_splits) and the partials added in a fixed
    order by a second kernel."""
    if dw.size == 0:
        return
    geo = _geo(x.shape, dw.shape, dy.shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups)
    N, _, H_out, W_out = dy.shape
    P = N * H_out * W_out
    M, Q = geo[16], dw.shape[1] * dw.shape[2] * dw.shape[3]
    if splits is None:
        splits = weight_splits(-(-Q // BN) * -(-M // BM) * groups, P)
    if splits == 1:
        _launch("weight", _flat(dy), _flat(x), _flat(dw), _flat(dw), geo, M, Q, P, groups)
        return
    partial = cuda.device_array(splits * dw.size, dtype=dw.dtype)  # (splits, C_out, C_in_g*kH*kW)
    _launch("weight", _flat(dy), _flat(x), partial, partial, geo, M, Q, P, groups, splits)
    tpb = 64 if _SIM else 256
    _sum_splits_kernel[-(-dw.size // tpb), tpb](partial, _flat(dw), splits)
