"""Register tiles: what LLVM needs to keep a block of running sums in SIMD registers.

A micro-kernel that holds a tile of sums (say 8 output channels x 16 output positions) across
a whole reduction writes them as a small array `s` and loops

    for t in taps:                            # the reduction, in order
        for v in range(16):                   # the 16 positions of the tile
            s[v] += w0[t] * x[o_t + v]        # row 0 of the tile
            ...
            s[112 + v] += w7[t] * x[o_t + v]  # row 7

LLVM's loop vectorizer turns the loop over v into SIMD operations (one 16-wide load of x,
eight broadcast weights); for the sums to stay in registers across the taps, `s` must be
memory LLVM may promote to registers: a fixed-size array on the stack.  Numba has no stack
arrays on the CPU (np.empty is a heap allocation LLVM cannot see through), so
`stack_array(n, dtype)` below allocates one (an `alloca` of n elements in the kernel's entry
block, wrapped by `numba.carray`).  Measured on an AMD Zen 4 core (float32, the 8 x 16
tile that conv/direct.py had before its 512-bit 8 x 32 one, over 288 taps, data in L1): 94
GFLOP/s with `stack_array`, 37 with `np.empty` (the sums loaded and stored every tap).  The
sums are added in the reduction's order, one fused multiply-add per term (fastmath
{"contract"}, conv/planes.py's FMA, as in the naive loop), so a tile gives the naive loop's
result bit for bit.
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic
from numba.np.numpy_support import carray

__all__ = ["stack_array", "prefer_vector_width", "VECTOR_BITS"]


# The widest SIMD registers of this CPU: 512 bits with AVX-512 (32 registers), else at most
# 256 (AVX2: 16).  LLVM vectorises with 256 bits on Intel CPUs even where 512 are there, unless a
# kernel asks for more (`prefer_vector_width`).  Numba's on-disk cache keys its entries on the
# CPU, so a cache never carries one CPU's choice to another.
def _vector_bits():
    """512 where the CPU Numba compiles for has AVX-512F, else 256 (or less: AVX2, AVX or a
    generic CPU).  Numba's own feature list: NUMBA_CPU_FEATURES, else the host's less what
    NUMBA_ENABLE_AVX=0 turns off."""
    features = numba.core.config.CPU_FEATURES
    if features is None:
        from numba.core.codegen import get_host_cpu_features

        features = get_host_cpu_features()
    return 512 if "+avx512f" in features.split(",") else 256


VECTOR_BITS = _vector_bits()


@intrinsic
def _stack_pointer(typingctx, n, dtype):
    """A pointer to n elements of dtype on the stack (an alloca in the entry block)."""
    if not isinstance(n, types.IntegerLiteral):
        raise RequireLiteralValue(n)  # Numba retries with the size as a compile-time constant
    size, elem = n.literal_value, dtype.dtype

    def codegen(context, builder, signature, args):
        lty = context.get_value_type(elem)
        block = cgutils.alloca_once(builder, ir.ArrayType(lty, size))
        return builder.bitcast(block, lty.as_pointer())

    return types.CPointer(elem)(n, dtype), codegen


@numba.njit(inline="always")
def stack_array(n, dtype):
    """An uninitialised 1-D array of n (a literal integer) elements of dtype (e.g. x.dtype) on
    the stack of the calling kernel: valid until that kernel returns, never returned itself."""
    return carray(_stack_pointer(n, dtype), (n,))


@intrinsic
def prefer_vector_width(typingctx, bits):
    """Ask LLVM to vectorise the calling kernel with `bits`-wide vectors (a literal integer):
    sets the LLVM function attribute "prefer-vector-width" on the function being compiled
    (on Intel CPUs with AVX-512, LLVM otherwise prefers 256-bit vectors).  No code at run time."""
    if not isinstance(bits, types.IntegerLiteral):
        raise RequireLiteralValue(bits)
    width = bits.literal_value

    def codegen(context, builder, signature, args):
        # a key="value" attribute: llvmlite's FunctionAttributes.add knows only the bare ones
        set.add(builder.function.attributes, f'"prefer-vector-width"="{width}"')
        return context.get_dummy_value()

    return types.none(bits), codegen
