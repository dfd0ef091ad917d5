"""The multiply-add throughput of one core, measured: the top of the roofline that `numbacnn
bench` reports its 'of peak' column against.

The lecture's "0.15 TF CPU" slide derives a peak as cores x FMA units x SIMD lanes x 2 flops
x clock.  Under a hypervisor /proc/cpuinfo's clock can be far from the one the cores run at
(an AMD EPYC VM here reports 2.60 GHz and runs its FMAs at 3.8), so the bench times this
loop instead: CHAINS independent running sums of one vector each, every step a fused
multiply-add per sum and nothing else (no loads, no stores: the sums stay in registers,
`registers.stack_array`), so the core issues FMAs as fast as its units take them.  CHAINS
covers the FMA latency (4 cycles) times 2 units with room to spare, and fits AVX2's 16
registers as well as AVX-512's 32.
"""

import time

import numpy as np
from numba import njit

from .conv.planes import FMA
from .registers import VECTOR_BITS, prefer_vector_width, stack_array

CHAINS = 12  # independent sums, one vector each
LANES = VECTOR_BITS // 32  # float32 lanes per vector
SUMS = CHAINS * LANES  # the stack array (a compile-time constant)
STEPS = 1 << 20  # loop steps per call (12 x 16 x 2 x 2**20 = 0.4 GFLOP with AVX-512: ~2 ms)


@njit(cache=True, fastmath=FMA)
def _fma_chains(s, steps, a, b):
    """s[c*V + v] = s[c*V + v]*a + b, `steps` times, for the CHAINS sums c of V = LANES
    float32 lanes each (the loop over v one vector)."""
    # s: (CHAINS*LANES,) float32, the sums' start and end
    prefer_vector_width(VECTOR_BITS)
    V = LANES
    r = stack_array(SUMS, s.dtype)  # r: (CHAINS*LANES,) in registers
    for i in range(CHAINS * V):
        r[i] = s[i]
    for _ in range(steps):
        for v in range(V):
            r[v] = r[v] * a + b
            r[V + v] = r[V + v] * a + b
            r[2 * V + v] = r[2 * V + v] * a + b
            r[3 * V + v] = r[3 * V + v] * a + b
            r[4 * V + v] = r[4 * V + v] * a + b
            r[5 * V + v] = r[5 * V + v] * a + b
            r[6 * V + v] = r[6 * V + v] * a + b
            r[7 * V + v] = r[7 * V + v] * a + b
            r[8 * V + v] = r[8 * V + v] * a + b
            r[9 * V + v] = r[9 * V + v] * a + b
            r[10 * V + v] = r[10 * V + v] * a + b
            r[11 * V + v] = r[11 * V + v] * a + b
    for i in range(CHAINS * V):
        s[i] = r[i]


def fma_gflops(dtype=np.float32, repeats=5):
    """GFLOP/s one core sustains in fused multiply-adds of `dtype` (float32 or float64): the
    best of `repeats` timed float32 calls after one that compiles (or loads) the kernel, a
    multiply and an add per lane per step; float64 at half of it (a vector holds half as many
    lanes, and x86 FMA units take either at one vector a cycle).  About 0.1 s on the calling
    thread."""
    s = np.linspace(0.5, 1.0, CHAINS * LANES).astype(np.float32)
    a, b = np.float32(0.999), np.float32(0.001)  # the sums settle at 1: no overflow, no denormals
    _fma_chains(s, 16, a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        _fma_chains(s, STEPS, a, b)
        best = min(best, time.perf_counter() - start)
    return CHAINS * LANES * 2 * STEPS / best / 1e9 * 4 / np.dtype(dtype).itemsize
