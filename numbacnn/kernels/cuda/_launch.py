"""Launch geometry and the block reduction shared by the CUDA kernels.

Thread mapping vocabulary used in every module of this package:

* "one thread per output element": a 1-D grid of ceil(total / TPB) blocks of TPB threads;
  thread t = cuda.grid(1) owns the element with flat (C-order) index t of the output and
  returns at once if t >= total.
* "grid-stride loop": a capped 1-D grid; thread t handles t, t + gridsize, t + 2*gridsize...
* "one block per channel / row": blockIdx.x is the channel (row); the RED_TPB threads of the
  block stride over its elements and combine their partial sums with `block_sum`, a
  shared-memory tree reduction.

Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) every CUDA thread is a Python thread,
so the block sizes are smaller there; the kernels do not depend on the block size.
"""

from numba import config, cuda, float64

_SIM = bool(config.ENABLE_CUDASIM)

TPB = 64 if _SIM else 256  # threads per block, 1-D kernels
RED_TPB = 32 if _SIM else 256  # threads per block of the reduction kernels (a power of 2)
MAX_BLOCKS = 8 if _SIM else 4096  # grid cap of the grid-stride loops


def blocks_for(total, tpb=TPB):
    """Blocks for one thread per element of `total` elements (total >= 1)."""
    return (total + tpb - 1) // tpb


def stride_blocks(total, tpb=TPB):
    """Blocks for a grid-stride loop over `total` elements (total >= 1)."""
    return max(1, min(MAX_BLOCKS, blocks_for(total, tpb)))


@cuda.jit(device=True)
def owned_element(shape):
    """The element of a 4-D array of `shape` that this thread owns, one thread per element:
    (inside, i0, i1, i2, i3) for the flat row-major position cuda.grid(1). `inside` is False
    for the threads of the last block that fall past the end of the array."""
    D0, D1, D2, D3 = shape
    t = cuda.grid(1)
    i3 = t % D3
    r = t // D3
    i2 = r % D2
    r = r // D2
    return t < D0 * D1 * D2 * D3, r // D1, r % D1, i2, i3


@cuda.jit(device=True)
def block_sum(buf, v):
    """Sum of `v` over the RED_TPB threads of the block (every thread gets the total).

    buf: shared float64 (RED_TPB,) scratch, reusable after the call.  Every thread of the
    block must call it (it synchronises).  Tree order: the result does not depend on timing.
    """
    tid = cuda.threadIdx.x
    buf[tid] = v
    cuda.syncthreads()
    s = RED_TPB // 2
    while s > 0:
        if tid < s:
            buf[tid] += buf[tid + s]
        cuda.syncthreads()
        s //= 2
    total = buf[0]
    cuda.syncthreads()  # everyone has read buf[0] before buf is reused
    return total


@cuda.jit
def fill_kernel(a, value):
    """a[i] = value, grid-stride loop.   a: (n,)"""
    start = cuda.grid(1)
    step = cuda.gridsize(1)
    for i in range(start, a.shape[0], step):
        a[i] = value


@cuda.jit
def sum_rows_kernel(v, out):
    """out[0] = sum of v (float64), one block of RED_TPB threads (used for small vectors)."""
    # v: (n,) float64   out: (1,) float64
    buf = cuda.shared.array(RED_TPB, float64)
    s = float64(0.0)
    for i in range(cuda.threadIdx.x, v.shape[0], RED_TPB):
        s += v[i]
    total = block_sum(buf, s)
    if cuda.threadIdx.x == 0:
        out[0] = total


__all__ = [
    "TPB",
    "RED_TPB",
    "MAX_BLOCKS",
    "blocks_for",
    "stride_blocks",
    "owned_element",
    "block_sum",
    "fill_kernel",
    "sum_rows_kernel",
]
