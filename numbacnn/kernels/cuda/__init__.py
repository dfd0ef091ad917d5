"""CUDA kernels: numba.cuda twins of numbacnn.kernels.cpu (same modules, names, argument order).

Each public function is a HOST function that takes numba.cuda device arrays (C-contiguous,
one float dtype, outputs preallocated by numbacnn.functional) and launches @cuda.jit kernels
on them; integer arguments are plain ints.  The kernels compile lazily, once per argument
types (float32 and float64 both work).  Module by module:

    conv.py  pool.py  batchnorm.py  dense.py  activation.py  loss.py  optim.py

This package also provides the allocation helpers numbacnn.functional uses for device
arrays (the same six as numbacnn.kernels.cpu), plus is_device_array(a):

    empty(shape, dtype)        uninitialised device array
    full(shape, value, dtype)  device array filled by a kernel
    ascontiguous(a)            a itself if C-contiguous, else a contiguous device copy
    is_contiguous(a)           C-contiguous (device arrays are always writeable)
    to_host(a)                 a NumPy copy
    as_int64(a)                a contiguous int64 device array (labels)
    trim()                     nothing to give back (the CPU's empty is a pool; this is not)

and the in-place helpers of the parameter plumbing (numbacnn.module, numbacnn.optim):

    fill_(a, value)            a[...] = value, one kernel (zero_grad)
    add_(dst, src)             dst += src, one kernel (gradient accumulation)
    copy_(dst, src)            dst[...] = src, from the host or the device (load_state_dict)

and the transfers of numbacnn.data.DeviceLoader:

    new_stream()               a CUDA stream for uploads
    pinned_empty(shape, dtype) page-locked host memory (an asynchronous upload's source)
    upload(host, stream)       a device copy of a host array, queued on `stream`

They also run under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 set before numba is
imported), where device arrays are FakeCUDAArray objects wrapping NumPy arrays.
"""

import numpy as np
from numba import cuda

from .. import is_device_array  # noqa: F401  (re-exported: one definition, in numbacnn.kernels)
from . import activation, batchnorm, conv, dense, loss, optim, pool  # noqa: F401
from ._launch import TPB, blocks_for, fill_kernel, stride_blocks

__all__ = [
    "empty",
    "full",
    "ascontiguous",
    "is_contiguous",
    "to_host",
    "as_int64",
    "fill_",
    "add_",
    "copy_",
    "new_stream",
    "pinned_empty",
    "upload",
    "is_device_array",
    "activation",
    "batchnorm",
    "conv",
    "dense",
    "loss",
    "optim",
    "pool",
]


def _as_numba(a):
    """A numba.cuda device array view of a device array (foreign objects wrapped, zero-copy)."""
    if getattr(a, "__cuda_ndarray__", False):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    raise TypeError(f"expected a numba.cuda device array, got {type(a).__name__}")


# --------------------------------------------------------------------------- kernels
@cuda.jit
def _copy1(src, dst):
    """dst = src (any strides -> C order), one thread per element.   src, dst: (A,)"""
    t = cuda.grid(1)
    if t < dst.shape[0]:
        dst[t] = src[t]


@cuda.jit
def _copy2(src, dst):
    """dst = src, one thread per element (flat C index of dst).   src, dst: (A, B)"""
    t = cuda.grid(1)
    A, B = dst.shape
    if t < A * B:
        b = t % B
        a = t // B
        dst[a, b] = src[a, b]


@cuda.jit
def _copy3(src, dst):
    """dst = src, one thread per element.   src, dst: (A, B, C)"""
    t = cuda.grid(1)
    A, B, C = dst.shape
    if t < A * B * C:
        c = t % C
        r = t // C
        b = r % B
        a = r // B
        dst[a, b, c] = src[a, b, c]


@cuda.jit
def _copy4(src, dst):
    """dst = src, one thread per element.   src, dst: (A, B, C, D)"""
    t = cuda.grid(1)
    A, B, C, D = dst.shape
    if t < A * B * C * D:
        d = t % D
        r = t // D
        c = r % C
        r = r // C
        b = r % B
        a = r // B
        dst[a, b, c, d] = src[a, b, c, d]


_COPY = {1: _copy1, 2: _copy2, 3: _copy3, 4: _copy4}


@cuda.jit
def _add_inplace(dst, src):
    """dst += src, grid-stride loop.   dst, src: (n,)"""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        dst[i] += src[i]


# --------------------------------------------------------------------------- helpers
def empty(shape, dtype):
    """Uninitialised device array."""
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def full(shape, value, dtype):
    """Device array of `value` (filled on the device)."""
    a = empty(shape, dtype)
    fill_(a, value)
    return a


def trim():
    """Nothing to give back: device outputs are numba.cuda's own allocations (the CPU
    backend's trim empties its output pool)."""


def is_contiguous(a):
    """C-contiguous (device memory is always writeable)."""
    return bool(_as_numba(a).is_c_contiguous())


def ascontiguous(a):
    """`a` if it is C-contiguous, else a C-contiguous copy made on the device."""
    if isinstance(a, np.ndarray):  # host array: upload
        return cuda.to_device(np.ascontiguousarray(a))
    a = _as_numba(a)
    if a.is_c_contiguous():
        return a
    out = empty(a.shape, a.dtype)
    n = a.size
    if n:
        kern = _COPY.get(a.ndim)
        if kern is None:  # rare (> 4-D): round trip via the host
            return cuda.to_device(np.ascontiguousarray(a.copy_to_host()))
        kern[blocks_for(n), TPB](a, out)
    return out


def to_host(a):
    """A NumPy copy of a device array (NumPy arrays are returned as they are)."""
    if isinstance(a, np.ndarray):
        return a
    return _as_numba(a).copy_to_host()


def as_int64(a):
    """Labels as a contiguous int64 device array (converted on the host: labels are small)."""
    if isinstance(a, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a, dtype=np.int64))
    a = _as_numba(a)
    if a.dtype == np.int64 and a.is_c_contiguous():
        return a
    return cuda.to_device(np.ascontiguousarray(a.copy_to_host(), dtype=np.int64))


def _flat(a):
    """A C-contiguous device array as its 1-D view."""
    a = _as_numba(a)
    if not a.is_c_contiguous():
        raise ValueError(f"expected a C-contiguous device array, got strides {a.strides}")
    return a.reshape(a.size)


def fill_(a, value):
    """a[...] = value on the device, in place (one kernel; nothing crosses to the host)."""
    if a.size:
        flat = _flat(a)
        fill_kernel[stride_blocks(a.size), TPB](flat, np.dtype(a.dtype).type(value))


def add_(dst, src):
    """dst += src on the device, in place; src a device array of dst's shape and dtype."""
    if dst.shape != src.shape:
        raise ValueError(f"add_: src.shape={src.shape} differs from dst.shape={dst.shape}")
    if dst.size:
        _add_inplace[stride_blocks(dst.size), TPB](_flat(dst), _flat(ascontiguous(src)))


def copy_(dst, src):
    """dst[...] = src, in place: src a NumPy array of dst's shape (cast to dst's dtype and
    uploaded) or a device array of dst's shape and dtype (copied on the device)."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"copy_: src.shape={src.shape} differs from dst.shape={dst.shape}")
    if not dst.size:
        return
    if isinstance(src, np.ndarray):
        _as_numba(dst).copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))
    elif src.dtype != dst.dtype:
        raise TypeError(f"copy_: src.dtype={src.dtype} differs from dst.dtype={dst.dtype}")
    else:
        _as_numba(dst).copy_to_device(ascontiguous(src))


def new_stream():
    """A new CUDA stream (numba.cuda.stream())."""
    return cuda.stream()


def pinned_empty(shape, dtype):
    """Page-locked host memory: an upload from it can run asynchronously on a stream."""
    return cuda.pinned_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def upload(host, stream=None):
    """A device copy of NumPy array ``host``, queued on ``stream`` (asynchronous when host is
    pinned; synchronise the stream before the copy is used), or synchronous without one."""
    return cuda.to_device(host, stream=stream) if stream is not None else cuda.to_device(host)
