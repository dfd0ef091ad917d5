"""Register tiles: what LLVM needs to keep a block of running sums in SIMD registers.

A micro-kernel that holds a tile of sums (say 8 output channels x 16 output positions) across
a whole reduction writes them as a small array `s` and loops

    for t in taps:                           # the reduction, in order
        for v in range(16):                  # the 16 positions of the tile
            s[v]      += w0[t] * x[o_t + v]  # row 0 of the tile
            ...
            s[112 + v] += w7[t] * x[o_t + v] # row 7

For those sums to live in registers, two things must happen in LLVM:

1. `s` must be memory LLVM may promote to registers: a fixed-size array on the stack.  Numba
   has no stack arrays on the CPU (np.empty is a heap allocation LLVM cannot see through),
   so `stack_array(n, dtype)` below allocates one (an `alloca` of n elements in the
   function's entry block, wrapped by `numba.carray`).  Once the constant loops over v are
   unrolled, its elements are plain values.
2. The unrolled rows must become SIMD instructions: LLVM's SLP vectorizer (which packs
   isomorphic straight-line operations) does this, but Numba runs it only when
   `numba.config.SLP_VECTORIZE` is set (default off).  `slp_vectorize()` turns it on while a
   kernel that uses a tile compiles; its callers wrap each call in it (the flag is only read
   while compiling, so a call of a compiled kernel costs two attribute stores).

Measured on this machine (one core, data in L1): the 8 x 16 tile of float32 runs its taps at
about 100 GFLOP/s with SLP and 6 GFLOP/s without (scalars spilled to the stack), against about
80 for the dot-product 4 x 4 tile of gemm.py at a reduction of 576.  The sums are added in
the reduction's order, one multiply then one add per term (no FMA contraction: fastmath off),
so a tile gives the naive loop's result bit for bit.
"""

import contextlib

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic
from numba.np.numpy_support import carray

__all__ = ["stack_array", "slp_vectorize"]


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


@contextlib.contextmanager
def slp_vectorize():
    """Compile with LLVM's SLP vectorizer on (see the module's docstring): wrap each call of a
    kernel that holds a register tile.  The previous setting is restored afterwards."""
    before = numba.config.SLP_VECTORIZE
    numba.config.SLP_VECTORIZE = 1
    try:
        yield
    finally:
        numba.config.SLP_VECTORIZE = before
