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
  nothing. The pool holds at most POOL_BYTES (a quarter of the memory the process may use),
  MAX_SHAPES shapes and MAX_PER_SHAPE arrays of one shape; past that, the least recently
  used free arrays go back to the operating system, and np.empty serves what does not fit.
  Memory the pool holds stays with the process until `trim()`, as a cache's would.
  (A weak reference is not a reference: an output kept only through a weakref may be
  reused, where np.empty's would have died. `trim()` lets go of every free array.)
"""

import math
import operator
import os
import sys
import threading
from collections import OrderedDict

import numpy as np

__all__ = [
    "scratch",
    "release",
    "held_bytes",
    "empty",
    "trim",
    "pool_stats",
    "POOL_BYTES",
    "MAX_SHAPES",
    "MAX_PER_SHAPE",
]


class _Scratch(threading.local):
    """This thread's scratch: its blocks and the views of them handed out."""

    def __init__(self):
        self.pool = {}  # name -> (block, start of its aligned part)
        self.views = {}  # (name, shape, dtype) -> (view, its dtype)


_local = _Scratch()


ALIGN = 64  # bytes: a scratch array starts on a cache line (NumPy's own blocks: 16 bytes)
MAX_VIEWS = 256  # scratch views remembered per thread, at most


def scratch(name, shape, dtype):
    """An uninitialised C-contiguous array of `shape` and `dtype` (the block kept under
    `name` in this thread, grown if it is too small), starting on an ALIGN-byte boundary: a
    kernel's vector loads along a row of whole vectors then never straddle two cache lines
    (the weight gradients' dY^T rows: 32->32 on 16x16 1.37 -> 1.27 ms, 16->16 on 32x32 1.66
    -> 1.59, interleaved in one process).  The view of a (name, shape, dtype) asked for
    before is handed out again while its block stands (a call of scratch took 5 us, and a
    ResNet-20 step makes about 100)."""
    views = _local.views
    key = (name, shape, dtype)
    try:
        view, itemtype = views[key]
        if view.shape == shape and view.dtype == itemtype:  # (unless its user reshaped it in place)
            return view
    except (KeyError, TypeError):  # not yet, or an unhashable shape or dtype (a list)
        pass
    itemtype = np.dtype(dtype)
    need = _nbytes((shape, itemtype))
    pool = _local.pool
    held = pool.get(name)
    if held is None or held[0].nbytes - ALIGN < need:
        pool.pop(name, None)  # free the old block before the larger one is allocated
        for old in [k for k in views if k[0] == name]:
            del views[old]  # views of the old block
        block = np.empty(max(need, 1) + ALIGN, np.uint8)
        held = pool[name] = (block, -block.ctypes.data % ALIGN)
    block, start = held
    view = block[start : start + need].view(itemtype).reshape(shape)
    if len(views) >= MAX_VIEWS:  # shapes that change from call to call: forget them all
        views.clear()
    try:
        views[key] = (view, itemtype)
    except TypeError:  # an unhashable shape or dtype: not remembered
        pass
    return view


def release():
    """Free every scratch block of this thread (the next call allocates again)."""
    _local.views.clear()
    _local.pool.clear()


def held_bytes():
    """Bytes of scratch this thread keeps (each block ALIGN bytes more than it can hand out)."""
    return sum(block.nbytes for block, _ in _local.pool.values())


# ------------------------------------------------------------------------------ outputs
def _memory_bytes():
    """The memory this process may use: the machine's, or its cgroup's limit if lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        total = 8 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return total


POOL_BYTES = _memory_bytes() // 4  # the most the output pool keeps, in use or free
MAX_SHAPES = 256  # (shape, dtype) keys kept; past that the least recently used are forgotten
MAX_PER_SHAPE = 128  # arrays of one key kept: a user who keeps more gets plain np.empty ones

_lock = threading.Lock()
# (shape, dtype) -> [sentinel, array, ...], the least recently used key first. The sentinel
# (never handed out) has exactly the references a free array has, the list's and those of
# the loop that looks at it, so a free array is one whose count equals the sentinel's,
# measured by the same code a moment before: no constant that an interpreter version, or a
# tracer holding frame locals, could make wrong.
_arrays = OrderedDict()
_held = [0, 0, 0]  # bytes held, hits, misses


def _nbytes(key):
    shape, dtype = key
    return math.prod(map(int, shape)) * dtype.itemsize  # Python ints (np.prod: 8 us a call)


def empty(shape, dtype):
    """An uninitialised C-contiguous array of `shape` and `dtype`: one of the pool's that
    nothing refers to any more, else a new one (kept by the pool within POOL_BYTES,
    MAX_SHAPES and MAX_PER_SHAPE)."""
    dtype = np.dtype(dtype)
    if isinstance(shape, (int, np.integer)) or getattr(shape, "ndim", None) == 0:
        shape = (operator.index(shape),)  # an integer, or a 0-d integer array, as np.empty takes it
    else:
        shape = tuple(shape)
    key = (shape, dtype)
    with _lock:
        arrays = _arrays.get(key)
        if arrays is not None:
            free, changed = -1, []
            for a in arrays:  # arrays[0] is the sentinel
                if free < 0:
                    free = sys.getrefcount(a)
                elif sys.getrefcount(a) == free:
                    if (
                        a.shape != shape
                        or a.dtype != dtype
                        or not (a.flags.c_contiguous and a.flags.writeable)
                    ):
                        changed.append(a)  # changed by its user: forgotten below
                        continue
                    _arrays.move_to_end(key)
                    _held[1] += 1
                    return a
            if changed:
                arrays[:] = [b for b in arrays if not any(b is c for c in changed)]
                _held[0] -= len(changed) * _nbytes(key)
        _held[2] += 1
        a = np.empty(shape, dtype)
        size = _nbytes(key)
        if (0 if arrays is None else len(arrays) - 1) >= MAX_PER_SHAPE or MAX_SHAPES < 1:
            return a
        if _held[0] + size > POOL_BYTES:
            _drop_free(_held[0] + size - POOL_BYTES)
            if _held[0] + size > POOL_BYTES:
                return a  # the pool is full of arrays in use: not kept
            arrays = _arrays.get(key)  # _drop_free may have let go of this key's arrays
        if arrays is None:
            while len(_arrays) >= MAX_SHAPES:
                _forget(next(iter(_arrays)))
            arrays = _arrays[key] = [np.empty(0, dtype)]
        arrays.append(a)
        _arrays.move_to_end(key)
        _held[0] += size
        return a


def _forget(key):
    """Stop tracking every array of `key` (free ones are freed now, the others when their
    last user lets go). Called with the lock held."""
    arrays = _arrays.pop(key)
    _held[0] -= (len(arrays) - 1) * _nbytes(key)


def _drop_free(need):
    """Let go of free arrays, least recently used keys first, until `need` bytes are gone (or
    none is free); a key left with no array is forgotten. Called with the lock held."""
    for key in list(_arrays):
        arrays, size = _arrays[key], _nbytes(key)
        kept, free = [], -1
        for a in arrays:
            if free < 0:
                free = sys.getrefcount(a)
                kept.append(a)
            elif need > 0 and sys.getrefcount(a) == free:
                need -= size
                _held[0] -= size
            else:
                kept.append(a)
        if len(kept) > 1:
            arrays[:] = kept  # in place: a caller may hold this list
        else:
            del _arrays[key]
        if need <= 0:
            return


def trim():
    """Let go of every pooled array that nothing refers to (back to the operating system);
    the pool keeps what it held otherwise, up to POOL_BYTES."""
    with _lock:
        _drop_free(_held[0] + 1)


def pool_stats():
    """{"bytes": held by the pool, "arrays": their number, "hits": arrays handed out again,
    "misses": arrays allocated} since the process started."""
    with _lock:
        return {"bytes": _held[0], "arrays": sum(len(v) - 1 for v in _arrays.values()), "hits": _held[1],
                "misses": _held[2]}  # fmt: skip
