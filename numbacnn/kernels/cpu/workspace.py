"""Memory that the CPU backend hands out again instead of asking the operating system.

A large np.empty is fresh memory from the operating system each time: the first touch of
every page faults. A ResNet-20 training step at batch 64 took 3,200 minor page faults
(about 9 ms of system time) that way, and for the packed panels of the conv weight gradient
(37.7 MB at ResNet-20's first stage) the faults cost 3 ms a call, as much as the packing.
Two remedies, both kept until released:

* `scratch(name, shape, dtype)`: a kernel's temporaries. One block per name and per
  thread, grown when a call needs more. A scratch array is uninitialised and valid until
  the next `scratch` call with the same name in the same thread, so a kernel uses it only
  for temporaries it fully writes before reading, and never returns it.
* `empty(shape, dtype)`: the backend's allocator of outputs (numbacnn.functional's
  results, parameter storage). An array is handed out again, for the same shape and dtype,
  once nothing refers to it any more: Python's reference count of the array is then the
  pool's own (a view, a memoryview or a layer's cache of it all count), exactly when
  np.empty's memory would have been freed. So a training step after the first allocates
  nothing. The pool holds at most POOL_BYTES; past that, the least recently used free
  arrays go back to the operating system, and if all of them are in use, np.empty serves.
  (A weak reference is not a reference: an output kept only through a weakref may be
  reused, where np.empty's would have died. `trim()` lets go of every free array.)
"""

import os
import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["scratch", "release", "held_bytes", "empty", "trim", "pool_stats", "POOL_BYTES"]

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


# ------------------------------------------------------------------------------ outputs
def _physical_bytes():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        return 8 << 30


POOL_BYTES = _physical_bytes() // 4  # the most the output pool keeps, in use or free

_lock = threading.Lock()
_arrays = OrderedDict()  # (shape, dtype) -> [array], least recently used key first
_held = [0, 0, 0]  # bytes held, hits, misses


def _free_count():
    """An array's reference count while `empty`'s loop looks at it and nothing else refers
    to it: the pool's list, the loop variable and getrefcount's argument."""
    arrays = [np.empty(1)]
    for a in arrays:
        return sys.getrefcount(a)


_FREE = _free_count()


def empty(shape, dtype):
    """An uninitialised array of `shape` and `dtype`: one of the pool's that nothing refers to
    any more, else a new one (kept by the pool if it fits in POOL_BYTES)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    key = (shape, dtype)
    with _lock:
        arrays = _arrays.get(key)
        if arrays is not None:
            for a in arrays:  # (the loop of _free_count: the same references)
                if sys.getrefcount(a) == _FREE:
                    if a.shape != shape or a.dtype != dtype or not a.flags.writeable:  # changed by its user
                        arrays[:] = [b for b in arrays if b is not a]
                        _held[0] -= a.nbytes
                        break
                    _arrays.move_to_end(key)
                    _held[1] += 1
                    return a
        _held[2] += 1
        a = np.empty(shape, dtype)
        if _held[0] + a.nbytes > POOL_BYTES:
            _drop_free(_held[0] + a.nbytes - POOL_BYTES)
            if _held[0] + a.nbytes > POOL_BYTES:
                return a  # the pool is full of arrays in use: not kept
        _arrays.setdefault(key, []).append(a)
        _arrays.move_to_end(key)
        _held[0] += a.nbytes
        return a


def _drop_free(need):
    """Let go of free arrays, least recently used shapes first, until `need` bytes are gone
    (or none is free). Called with the lock held."""
    for key in list(_arrays):
        arrays = _arrays[key]
        kept = []
        for a in arrays:
            if need > 0 and sys.getrefcount(a) == _FREE:
                need -= a.nbytes
                _held[0] -= a.nbytes
            else:
                kept.append(a)
        if kept:
            _arrays[key] = kept
        else:
            del _arrays[key]
        if need <= 0:
            return


def trim():
    """Let go of every pooled array that nothing refers to (back to the operating system)."""
    with _lock:
        _drop_free(_held[0] + 1)


def pool_stats():
    """{"bytes": held by the pool, "arrays": their number, "hits": arrays handed out again,
    "misses": arrays allocated} since the process started."""
    with _lock:
        return {"bytes": _held[0], "arrays": sum(len(v) for v in _arrays.values()), "hits": _held[1],
                "misses": _held[2]}  # fmt: skip
