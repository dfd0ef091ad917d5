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

Also here, as the same kind of help for LLVM: `copy_run`, a short row copied with one masked
vector load and store (the packs' rows of 10 or 14 floats, which LLVM's copy loop leaves
scalar), and `prefetch`, a software prefetch (the next block's inputs, brought into L2 while
a block's tiles run: conv/outer.py).
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.errors import RequireLiteralValue
from numba.extending import intrinsic, overload
from numba.np.numpy_support import carray

__all__ = ["stack_array", "prefer_vector_width", "copy_run", "prefetch", "RUN", "VECTOR_BITS"]


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


RUN = 16  # elements per `copy_run`: a float32 zmm register (two ymm; float64: two zmm)


def copy_run(dst, dst_at, src, src_at, n):
    """dst[dst_at + i] = src[src_at + i] for i < n, where 0 <= n <= RUN, dst and src 1-D
    arrays of one dtype.  In a kernel, for contiguous float32 or float64 arrays, one masked
    vector load and one masked store (LLVM's llvm.masked.load / llvm.masked.store; AVX-512
    masks them in the instructions, AVX2 with vmaskmov): the lanes past n are neither read
    nor written, so a run may end at an array's last element (there a larger n copies RUN
    and n <= 0 nothing); other arrays, a loop.  No bounds check (the caller's indices are in
    range, as with planes.uidx).  Why: a loop copying a short row (the packs' rows of 10 or
    14) is all scalar, as LLVM's vectorised loop starts at 32 elements (8 lanes x 4
    interleaved)."""
    dst[dst_at : dst_at + n] = src[src_at : src_at + n]


@overload(copy_run, inline="always")
def _copy_run(dst, dst_at, src, src_at, n):
    masked = (
        isinstance(dst, types.Array)
        and isinstance(src, types.Array)
        and dst.ndim == src.ndim == 1
        and dst.layout == src.layout == "C"
        and dst.dtype == src.dtype
        and dst.dtype in (types.float32, types.float64)
    )
    if masked:
        return lambda dst, dst_at, src, src_at, n: _masked_copy(dst, dst_at, src, src_at, n)

    def loop(dst, dst_at, src, src_at, n):
        for i in range(n):
            dst[dst_at + i] = src[src_at + i]

    return loop


@intrinsic
def _masked_copy(typingctx, dst, dst_at, src, src_at, n):
    """copy_run on contiguous 1-D float arrays: a masked load and store of RUN lanes."""

    def codegen(context, builder, signature, args):
        dst_v, d_at, src_v, s_at, count = args
        at_types = signature.args[1], signature.args[3], signature.args[4]
        d_at, s_at, count = (
            context.cast(builder, v, t, types.int64)
            for v, t in zip((d_at, s_at, count), at_types, strict=True)
        )
        elem = context.get_value_type(signature.args[0].dtype)
        vec, i64 = ir.VectorType(elem, RUN), ir.IntType(64)
        mask_ty = ir.VectorType(ir.IntType(1), RUN)
        dst_p = builder.gep(
            cgutils.create_struct_proxy(signature.args[0])(context, builder, value=dst_v).data, [d_at]
        )
        src_p = builder.gep(
            cgutils.create_struct_proxy(signature.args[2])(context, builder, value=src_v).data, [s_at]
        )
        lanes = ir.Constant(ir.VectorType(i64, RUN), [ir.Constant(i64, i) for i in range(RUN)])
        splat = builder.insert_element(
            ir.Constant(ir.VectorType(i64, RUN), ir.Undefined), count, ir.Constant(ir.IntType(32), 0)
        )
        splat = builder.shuffle_vector(
            splat, splat, ir.Constant(ir.VectorType(ir.IntType(32), RUN), [0] * RUN)
        )
        mask = builder.icmp_signed("<", lanes, splat)  # lane i < count (none for count <= 0)
        suffix = f"v{RUN}f{'32' if signature.args[0].dtype == types.float32 else '64'}.p0"
        align = ir.Constant(ir.IntType(32), signature.args[0].dtype.bitwidth // 8)
        load_ty = ir.FunctionType(vec, [src_p.type, ir.IntType(32), mask_ty, vec])
        store_ty = ir.FunctionType(ir.VoidType(), [vec, dst_p.type, ir.IntType(32), mask_ty])
        load = cgutils.get_or_insert_function(builder.module, load_ty, f"llvm.masked.load.{suffix}")
        store = cgutils.get_or_insert_function(builder.module, store_ty, f"llvm.masked.store.{suffix}")
        v = builder.call(load, [src_p, align, mask, ir.Constant(vec, ir.Undefined)])
        builder.call(store, [v, dst_p, align, mask])
        return context.get_dummy_value()

    return types.none(dst, dst_at, src, src_at, n), codegen


def prefetch(arr, i):
    """Ask the CPU to bring the cache line of arr[i] (a 1-D contiguous array) into L2 ahead of
    its use: a software prefetch (LLVM's llvm.prefetch, read, locality 2: x86 prefetcht1).
    A hint, no result: an address past the array is not an error (the line is not touched).
    Outside a kernel it does nothing."""


@overload(prefetch, inline="always")
def _prefetch_overload(arr, i):
    if not isinstance(i, types.Integer):
        return None  # no implementation: a TypingError names prefetch and the index's type
    if isinstance(arr, types.Array) and arr.ndim == 1 and arr.layout == "C":
        return lambda arr, i: _prefetch(arr, i)
    return lambda arr, i: None


@intrinsic
def _prefetch(typingctx, arr, i):
    """prefetch on a contiguous 1-D array: llvm.prefetch of &arr[i] (read, locality 2, data),
    the address as i8* (one declaration of the intrinsic serves every dtype in a module)."""

    def codegen(context, builder, signature, args):
        arr_v, at = args
        at = context.cast(builder, at, signature.args[1], types.intp)
        data = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=arr_v).data
        p = builder.bitcast(builder.gep(data, [at]), cgutils.voidptr_t)
        i32 = ir.IntType(32)
        fn_ty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fn_ty, "llvm.prefetch.p0")
        builder.call(fn, [p, ir.Constant(i32, 0), ir.Constant(i32, 2), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen
