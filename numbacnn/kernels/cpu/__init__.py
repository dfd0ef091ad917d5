"""CPU kernels: @njit loop nests, forward and backward side by side, one module per op family
(conv is a package of strategies: naive, direct, polyphase; see its __init__).

They are called only by numbacnn.functional, which validates arguments and allocates outputs
with the helpers below (empty, the output pool of workspace.py, with trim; full, ascontiguous,
is_contiguous, to_host, as_int64, and the
in-place fill_, add_ and copy_ of the parameter plumbing; the CUDA package,
numbacnn.kernels.cuda, mirrors names and helpers). numbacnn.train also calls compile_ahead
(precompile.py) before a run's first batch: the kernels it will call, compiled on every core
at once (numba.cuda has no disk cache to share, so the CUDA package has no twin of it).
"""

import numpy as np

from . import activation, batchnorm, conv, dense, loss, optim, pool, workspace  # noqa: F401

# Outputs come from a pool that hands an array out again once nothing refers to it
# (workspace.empty): a training step after the first asks the operating system for nothing.
empty = workspace.empty
trim = workspace.trim  # give the pool's free arrays back (between phases of different shapes)


def ascontiguous(a):
    """`a` if it is C-contiguous, else a C-contiguous copy (0-d arrays stay 0-d)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def full(shape, value, dtype):
    """An array of `value`."""
    return np.full(shape, value, dtype=dtype)


def is_contiguous(a):
    """C-contiguous and writeable (the kernels update such arrays in place)."""
    return a.flags.c_contiguous and a.flags.writeable


def to_host(a):
    """A NumPy array is already on the host."""
    return a


def fill_(a, value):
    """a[...] = value, in place (a gradient's zero_grad)."""
    a[...] = value


def add_(dst, src):
    """dst += src, in place (a backward pass accumulating into a gradient); same shape."""
    np.add(dst, src, out=dst)


def copy_(dst, src):
    """dst[...] = src (an array of dst's shape, cast to dst's dtype), in place."""
    np.copyto(dst, src, casting="unsafe")


def as_int64(a):
    """Labels as a contiguous int64 array."""
    return np.ascontiguousarray(a, dtype=np.int64)
