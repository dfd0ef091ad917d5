"""Scratch arrays that a kernel's host code reuses from one call to the next.

A large np.empty is fresh memory from the operating system each time: the first touch of
every page faults, and for the packed panels of the conv weight gradient (37.7 MB at
ResNet-20's first stage, batch 64) that cost 3 ms a call, as much as the packing itself.
`scratch` hands out the same block again instead: one per name and per thread, grown when a
call needs more, kept until `release()`.

The contract: a scratch array is uninitialised, and it is valid until the next `scratch`
call with the same name in the same thread, so a kernel uses it only for temporaries it
fully writes before reading, and never returns it.
"""

import threading

import numpy as np

__all__ = ["scratch", "release", "held_bytes"]

_local = threading.local()


def _pool():
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    return pool


def scratch(name, shape, dtype):
    """An uninitialised C-contiguous array of `shape` and `dtype` (the block kept under
    `name` in this thread, grown if it is too small)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    need = count * dtype.itemsize
    pool = _pool()
    block = pool.get(name)
    if block is None or block.nbytes < need:
        pool.pop(name, None)  # free the old block before the larger one is allocated
        block = pool[name] = np.empty(max(need, 1), np.uint8)
    return block[:need].view(dtype).reshape(shape)


def release():
    """Free every scratch block of this thread (the next call allocates again)."""
    _pool().clear()


def held_bytes():
    """Bytes of scratch this thread keeps."""
    return sum(block.nbytes for block in _pool().values())
