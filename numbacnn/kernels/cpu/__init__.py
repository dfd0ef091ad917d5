"""CPU kernels: @njit loop nests, forward and backward side by side, one module per op family.

They are called only by numbacnn.functional, which validates arguments and allocates outputs
with the helpers below (the CUDA package, numbacnn.kernels.cuda, mirrors them).
"""

import numpy as np

from . import activation, batchnorm, conv, dense, loss, pool  # noqa: F401

empty = np.empty
ascontiguous = np.ascontiguousarray


def full(shape, value, dtype):
    return np.full(shape, value, dtype=dtype)


def is_contiguous(a):
    return a.flags.c_contiguous and a.flags.writeable


def to_host(a):
    return a


def as_int64(a):
    return np.ascontiguousarray(a, dtype=np.int64)
