"""The weight gradient (groups 1, float32, AVX-512) of small planes with many channels, on
channels-last copies of x and dy: per tap, a matrix product over the positions whose two
operands are both contiguous along channels.

Formula.  With positions p = (n, oh, ow) and the tap (kh, kw)'s input position
i(p) = (n, oh*stride_h + kh*dil_h, ow*stride_w + kw*dil_w) in the padded input,

    dw[co, ci, kh, kw] = sum_p Dc[p, co] * Xc[i(p), ci],     Dc[p, co] = dy[n, co, oh, ow]
                                                             Xc[i, ci] = x padded, channels last

Why another form.  gemm.py (which these planes took) computes each dw element as a dot
product of two rows of length P: every task streams all of dY's rows past its four rows of X
(from L2: 64->64 3x3 on 8x8 at batch 64, 2.1 ms where PyTorch takes 1.0).  outer.py's tile
broadcasts 16 taps of X from 16 addresses (more than the general registers hold) and packs
rows of a grid that is 27% padding on 8x8.  Channels last, a tile holds 8 output channels x
2 vectors of input channels (8 x 32 sums in 16 zmm registers); at each position it
broadcasts 8 consecutive values of Dc (one address) and loads 2 vectors of Xc (one address):
10 loads for 16 fused multiply-adds, and the positions are real outputs only.

Blocks and slices.  SLICES tasks, each a run of whole images (a fixed number: the sums and
so the results do not depend on the threads), packs its images a block of M at a time into
its own Xc and Dc (transposes: a scalar store per element, about 3% of the work on 8x8 with
64 channels), and passes every (tap, 8 output channels, 32 input channels) tile over the
block's positions, each tile's sums kept in `part` (contiguous: started and stored as whole
vectors).  The slices' sums are then added in slice order.  Each dw element is summed over
the positions in order (image, row, column), a fused multiply-add each: a fixed order, not
gemm's or outer's (they agree to rounding).

Loop nest:
    for slice in prange(SLICES):                          part[slice]: (taps, Co/8, Ci/32, 256)
        for block of M images in the slice:
            pack Xc (M, Hp, Wp, Ci) and Dc (M*H_out*W_out, Co)
            for tap, for 32 input channels, for 8 output channels:
                s[8, 32] (registers) over the block's positions
    dw[co, ci, kh, kw] = sum over slices of part[slice, tap, co // 8, ci // 32, ...]

Optimizations:
    * 8 x 32 float32 sums in 16 zmm registers; the 8 broadcasts each feed 2 FMAs;
    * both operands contiguous along channels, one address each: no general-register spills;
    * only real positions (no grid columns past W_out);
    * a block's Xc and Dc stay in L2 (M images, about BLOCK_BYTES; the rule bounds the copies).
"""

from numba import njit, prange

from ..registers import VECTOR_BITS, prefer_vector_width, stack_array
from ..workspace import scratch
from .gemm import MAX_PANEL
from .outer import _add_slices
from .planes import FMA, uidx

LANES = VECTOR_BITS // 32  # float32 lanes per vector
CO = 8  # output channels per tile (broadcasts)
CI = 2 * LANES  # input channels per tile (two vectors)
SUMS = CO * CI  # a tile's sums (a compile-time constant)
SLICES = 8  # tasks (a fixed number: results must not depend on the threads)
BLOCK_BYTES = 512 * 1024  # a block's Xc and Dc together, about (they stay in L2)
MAX_PLANE = 255  # output positions per image, at most (16x16 and more: outer.py)
MIN_C_IN = CI  # input channels, at least (fewer leave most of a tile's vectors empty)
MIN_TAPS = 9  # taps per kernel, at least (a 1x1 or 2x2 kernel does not amortise the copies)
PART_BYTES = 1 << 24  # the slices' partial sums (SLICES copies of dw, rounded), at most (16 MB)


def padded_plane(x_shape, w_shape, dy_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """(Hp, Wp): the padded input plane the taps read, every tap of every output position
    inside it (PyTorch's padding on the right and bottom may be less than pad_top/pad_left:
    the rest is never read)."""
    H, W = x_shape[2], x_shape[3]
    kH, kW = w_shape[2], w_shape[3]
    H_out, W_out = dy_shape[2], dy_shape[3]
    Hp = max(pad_top + H, (H_out - 1) * stride_h + (kH - 1) * dil_h + 1)
    Wp = max(pad_left + W, (W_out - 1) * stride_w + (kW - 1) * dil_w + 1)
    return Hp, Wp


def use_lastc(
    dy_shape, w_shape, x_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, groups, itemsize
):
    """True when the weight gradient of dy: (N, C_out, H_out, W_out) for w: (C_out, C_in, kH,
    kW) and x: (N, C_in, H, W) should take this path: groups 1, float32, AVX-512, at least
    SLICES images, at least CO output and MIN_C_IN input channels, at most MAX_PLANE output
    positions per image (the larger planes are outer.py's), kernels of MIN_TAPS taps or more
    at strides of at most 2, a padded plane at most 4x the input's, the partial sums within
    PART_BYTES and the copies within gemm's MAX_PANEL.

    Measured against gemm.py (which took these), batch 64, 2 threads, interleaved in one
    process, Xeon (Sapphire Rapids class) VM (ms): 64->64 3x3 on 8x8 2.09 -> 1.27 (PyTorch
    1.04), 32->64 3x3 stride 2 to 8x8 1.27 -> 0.76, 64->64 on 4x4 0.70 -> 0.43.  32->32 on
    16x16 ties with outer.py (1.28 / 1.32: the same sums in the same order, bit for bit), and
    VGG's 64->64 on 32x32 loses (8.6 -> 11.8).  Found by a cold review: the copies cost what
    the taps do not amortise, so 1x1 kernels, 2x2 at stride 2 and long strides lost 1.6-20x
    (256->512 1x1 stride 2 on 14x14 at batch 8 0.89 -> 2.19, a 2x2 stride 2 0.32 -> 0.52), and
    a padding far wider than the input made copies of gigabytes."""
    N, C_out, H_out, W_out = dy_shape
    C_in, kH, kW = w_shape[1:]
    if not (VECTOR_BITS >= 512 and groups == 1 and itemsize == 4 and N >= SLICES):
        return False
    if not (C_out >= CO and C_in >= MIN_C_IN and 0 < H_out * W_out <= MAX_PLANE):
        return False
    if kH * kW < MIN_TAPS or max(stride_h, stride_w) > 2:
        return False
    Hp, Wp = padded_plane(x_shape, w_shape, dy_shape, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    Cip, Cop = _padded_channels(C_in, C_out)
    part = SLICES * kH * kW * Cop * Cip * itemsize
    copies = (
        SLICES * _block_images(N, Hp, Wp, Cip, H_out * W_out * Cop) * (Hp * Wp * Cip + H_out * W_out * Cop)
    )
    return Hp * Wp <= 4 * x_shape[2] * x_shape[3] and part <= PART_BYTES and copies * itemsize <= MAX_PANEL


def _padded_channels(C_in, C_out):
    """(Cip, Cop): the copies' channels, whole tiles of CI input and CO output channels."""
    return -(-C_in // CI) * CI, -(-C_out // CO) * CO


def _block_images(N, Hp, Wp, Cip, d_per_image):
    """M: images per block, their copies about BLOCK_BYTES (at least one image)."""
    return max(1, min(-(-N // SLICES), BLOCK_BYTES // ((Hp * Wp * Cip + d_per_image) * 4)))


@njit(cache=True, inline="always")
def _pack(x, dy, Xc, Dc, n0, n1, pad_top, pad_left):
    """Xc[j, pad_top + ih, pad_left + iw, ci] = x[n0 + j, ci, ih, iw] (0 in the padding and in
    the channels past C_in) and Dc[(j*H_out + oh)*W_out + ow, co] = dy[n0 + j, co, oh, ow] (0 in
    the channels past C_out), for the images n0 <= n < n1."""
    # x: (N, C_in, H, W)   dy: (N, C_out, H_out, W_out)   Xc: (M, Hp, Wp, Cip)   Dc: (M*H_out*W_out, Cop)
    C_in, H, W = x.shape[1], x.shape[2], x.shape[3]
    C_out, H_out, W_out = dy.shape[1], dy.shape[2], dy.shape[3]
    M, Hp, Wp, Cip = Xc.shape
    Cop = Dc.shape[1]
    Xf = Xc.reshape(M * Hp * Wp * Cip)  # Xf: (M*Hp*Wp*Cip,)
    for i in range((n1 - n0) * Hp * Wp * Cip):
        Xf[uidx(i)] = 0.0
    for j in range(n1 - n0):
        for ci in range(C_in):
            for ih in range(H):
                src = x[n0 + j, ci, ih]  # src: (W,)
                at = ((j * Hp + pad_top + ih) * Wp + pad_left) * Cip + ci
                for iw in range(W):
                    Xf[uidx(at + iw * Cip)] = src[uidx(iw)]
    Df = Dc.reshape(Dc.shape[0] * Cop)  # Df: (M*H_out*W_out*Cop,)
    plane = H_out * W_out
    for i in range((n1 - n0) * plane * Cop):
        Df[uidx(i)] = 0.0
    for j in range(n1 - n0):
        for co in range(C_out):
            for oh in range(H_out):
                src = dy[n0 + j, co, oh]  # src: (W_out,) (dy may be any layout)
                at = (j * plane + oh * W_out) * Cop + co
                for ow in range(W_out):
                    Df[uidx(at + ow * Cop)] = src[ow]


@njit(cache=True, inline="always")
def _copy_rows(dst, src):
    """dst[i*CI + v] = src[i*CI + v] for the CO rows i of a tile: a loop over the CI lanes with
    a statement per row (whole vectors at constant offsets; a loop over all SUMS elements, or
    a row at a time, LLVM unrolls into scalar copies)."""
    # dst, src: (SUMS,)
    for v in range(CI):
        dst[v] = src[v]
        dst[CI + v] = src[CI + v]
        dst[2 * CI + v] = src[2 * CI + v]
        dst[3 * CI + v] = src[3 * CI + v]
        dst[4 * CI + v] = src[4 * CI + v]
        dst[5 * CI + v] = src[5 * CI + v]
        dst[6 * CI + v] = src[6 * CI + v]
        dst[7 * CI + v] = src[7 * CI + v]


@njit(cache=True, fastmath=FMA)
def _tile(run, Xf, Df, first, n_img, H_out, W_out, Hp, Wp, Cip, Cop, x_at, d_at, step_h, step_w):
    """run[i*CI + v] (+)= sum over the block's positions (image, row, column, in order) of
    Df[p*Cop + d_at + i] * Xf[x(p) + x_at + v] for the CO output channels i and CI input
    channels v, where x(p) is position p's input (rows step_h, columns step_w elements apart
    in Xf); `first`: = rather than +=."""
    # run: (SUMS,) this tile's sums   Xf: (M*Hp*Wp*Cip,) Xc flat   Df: (M*H_out*W_out*Cop,) Dc flat
    prefer_vector_width(VECTOR_BITS)
    s = stack_array(SUMS, run.dtype)  # s: (CO*CI,) output channel i's sums at i*CI (registers)
    if first:
        for i in range(SUMS):
            s[i] = 0.0
    else:
        _copy_rows(s, run)
    d = d_at  # Df's place of the position's CO output channels
    for n in range(n_img):
        for oh in range(H_out):
            xa = (n * Hp * Wp) * Cip + oh * step_h + x_at  # Xf's place of (n, oh, ow = 0)
            for ow in range(W_out):
                a = xa + ow * step_w
                d0, d1, d2, d3 = Df[uidx(d)], Df[uidx(d + 1)], Df[uidx(d + 2)], Df[uidx(d + 3)]
                d4, d5, d6, d7 = Df[uidx(d + 4)], Df[uidx(d + 5)], Df[uidx(d + 6)], Df[uidx(d + 7)]
                for v in range(CI):
                    xv = Xf[uidx(a + v)]
                    s[v] += d0 * xv
                    s[CI + v] += d1 * xv
                    s[2 * CI + v] += d2 * xv
                    s[3 * CI + v] += d3 * xv
                    s[4 * CI + v] += d4 * xv
                    s[5 * CI + v] += d5 * xv
                    s[6 * CI + v] += d6 * xv
                    s[7 * CI + v] += d7 * xv
                d += Cop
    _copy_rows(run, s)


@njit(cache=True, parallel=True)
def _slices(x, dy, dw, Xb, Db, part, M, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """dw[co, ci, kh, kw] = sum over the positions of Dc[p, co] * Xc[i(p), ci]: SLICES tasks of
    whole images, each packing its images M at a time (Xb[t], Db[t]) and passing every (tap,
    CO output channels, CI input channels) tile over them into part[t]; then the slices' sums
    added in slice order."""
    # x: (N, C_in, H, W)   dy: (N, C_out, H_out, W_out)   dw: (C_out, C_in, kH, kW)
    # Xb: (S, M, Hp, Wp, Cip)   Db: (S, M*H_out*W_out, Cop)   part: (S, kH*kW, Cop // CO, Cip // CI, SUMS)
    N = x.shape[0]
    C_out, C_in, kH, kW = dw.shape
    H_out, W_out = dy.shape[2], dy.shape[3]
    S, _, Hp, Wp, Cip = Xb.shape
    Cop = Db.shape[2]
    for t in prange(S):  # parallel over slices of the images: owns part[t]
        Xc, Dc = Xb[t], Db[t]  # Xc: (M, Hp, Wp, Cip)   Dc: (M*H_out*W_out, Cop)
        Xf = Xc.reshape(Xc.size)
        Df = Dc.reshape(Dc.size)
        first = True
        for n0 in range(t * N // S, (t + 1) * N // S, M):
            n1 = min(n0 + M, (t + 1) * N // S)
            _pack(x, dy, Xc, Dc, n0, n1, pad_top, pad_left)
            for kh in range(kH):
                for kw in range(kW):
                    x_tap = (kh * dil_h * Wp + kw * dil_w) * Cip
                    for c1 in range(0, Cip, CI):
                        for c0 in range(0, Cop, CO):
                            _tile(part[t, kh * kW + kw, c0 // CO, c1 // CI], Xf, Df, first, n1 - n0,
                                  H_out, W_out, Hp, Wp, Cip, Cop, x_tap + c1, c0, stride_h * Wp * Cip,
                                  stride_w * Cip)  # fmt: skip
            first = False
        if first:  # a slice without images (fewer images than slices): no terms
            part[t] = 0.0
    _add_slices(part)
    for co in range(C_out):
        for ci in range(C_in):
            for kh in range(kH):
                for kw in range(kW):
                    dw[co, ci, kh, kw] = part[0, kh * kW + kw, co // CO, ci // CI, co % CO * CI + ci % CI]


def conv2d_backward_weight(dy, x, dw, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w):
    """dw = dL/dw for groups 1 (fully overwrites dw), on channels-last blocks (above)."""
    # dy: (N, C_out, H_out, W_out)   x: (N, C_in, H, W)   dw: (C_out, C_in, kH, kW)
    N, C_out, H_out, W_out = dy.shape
    C_in = x.shape[1]
    kH, kW = dw.shape[2:]
    geo = (stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
    Hp, Wp = padded_plane(x.shape, dw.shape, dy.shape, *geo)  # the padded input the taps read
    Cip, Cop = _padded_channels(C_in, C_out)
    M = _block_images(N, Hp, Wp, Cip, H_out * W_out * Cop)
    Xb = scratch("conv_lastc_X", (SLICES, M, Hp, Wp, Cip), x.dtype)  # Xb: (S, M, Hp, Wp, Cip)
    Db = scratch("conv_lastc_D", (SLICES, M * H_out * W_out, Cop), dy.dtype)  # Db: (S, M*H_out*W_out, Cop)
    part = scratch("conv_lastc_part", (SLICES, kH * kW, Cop // CO, Cip // CI, SUMS), dw.dtype)
    _slices(x, dy, dw, Xb, Db, part, M, stride_h, stride_w, pad_top, pad_left, dil_h, dil_w)
