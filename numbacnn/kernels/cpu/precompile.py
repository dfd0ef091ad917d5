"""Compile the kernels a step will need on every core at once, before the step runs.

Numba compiles a kernel the first time it is called with new argument types, in the calling
process, one kernel after another, and its compiler holds one global lock, so threads
cannot share the work: a cold LeNet-5 training step compiled 14 kernels in about 25 s on one
core while the other core idled. ``compile_ahead(step)`` spreads that work over processes:

1. trace: a forked child runs ``step`` with every call of a numbacnn CPU kernel replaced by
   a note of the kernel and its argument types (``kernel_calls``: nothing is computed; the
   arrays a kernel would write are zeroed, finite as real data is, so that the conv's
   dispatch takes the path real data takes; only memory NumPy allocated, which the fork
   copies, never a memory map or shared memory), and sends the parent the kernels whose
   signatures are neither compiled nor in Numba's on-disk cache yet;
2. compile: that child, the parent and up to ``workers - 2`` more forked children (none
   beyond one per kernel) take kernels from the list, largest first, one at a time (a
   counter in shared memory), and compile each taken kernel's signatures; with
   ``cache=True`` each lands in Numba's on-disk cache;
3. the parent waits for the children, then runs the real step: it already holds the
   kernels it compiled and loads the others from the cache (a few ms each).

A kernel is compiled by exactly one process, and only that process writes its cache files:
Numba's cache index is not safe against two processes adding different signatures of one
function at once (both pick the same free data file), so while the workers run, every other
numbacnn dispatcher in each of them (the njit helpers their kernels call, which are compiled
into each kernel that calls them and need no cache file of their own) has its cache off.

The kernels compiled here are optimised at LLVM's level 2 (AHEAD_OPT), not Numba's default 3,
unless NUMBA_OPT is set: level 3's extra passes (among them non-trivial loop unswitching, which
copies a loop around a branch in it) cost LeNet-5's 14 kernels 21 s of one core's compile
against 16.8 s, and no row of a full `numbacnn bench` run at level 2 was slower (on the AMD
EPYC Zen 5 VM: VGG 64->64 1.04x PyTorch, the ResNet-20 step 1.17x, the LeNet-5 epoch 0.54x its
time); the README command's first batch 10.9-12.4 -> 7.9-10.0 s there (level 1: 8.4-10.4).
A kernel compiled later, on demand, gets Numba's level; the kernels compiled here go to
Numba's on-disk cache, whose key does not hold the level, so later processes load them as
compiled here whatever their NUMBA_OPT (remove the cache, NUMBA_CACHE_DIR, to compile
again). LLVM's levels keep each kernel's floating-point flags: the weights of a 1,280-image
LeNet-5 epoch came out the same bits as with one process at level 3.

While they compile, Python's collector runs its young collections every GC_THRESHOLD
allocations instead of every 700 (a higher threshold, or 0, the user set is kept), and the
objects from before are frozen (gc.freeze: no collection walks them, and in a forked child
none writes to the parent's pages, which the fork would then copy), unless some were frozen
already; both are undone after (an object another thread froze meanwhile is unfrozen too).
Numba's compiler makes and drops many objects (its IR is copied pass after pass), and each
collection walks them. LeNet-5's 13 kernels in one process, alternating runs (s of one core):
12.2-13.8 by default, 11.2-11.7 at 50,000, for 25 MB more at the peak (10,000: 11.3-12.0;
gc.freeze() alone: 11.8-12.4; the collector off: 11.5-12.1, and 100 MB more). The README
command's first batch, 8 interleaved cold runs each: freezing as well took it from 6.2-8.5 s to 5.9-7.2 s.

It changes nothing that is computed: a kernel the workers did not get to (a child that
failed, a value-dependent dispatch that the zeros steered elsewhere) is compiled at its
first call, as without this. It runs only where a fork is safe: with fork (Linux, macOS),
before this process has started Numba's worker threads (a fork copies only the calling
thread; a step that waits on another thread of this process gets no answer in the child,
and after TRACE_SECONDS this gives up). A Ctrl-C while this process waits (for the trace
or for its children) stops every child at once; one that lands while this process compiles
is Numba's own case, as without this (inside an LLVM callback it is lost). On Linux a child
also ends when this process is killed (kill -9). ``numbacnn.train`` calls it for a run's
first batch on the CPU with one process (not under MPI). ``NUMBACNN_JIT_WORKERS=1`` turns
it off.
"""

import gc
import os
import pickle
import select
import struct
import sys
from typing import NamedTuple

import numpy as np

from ..._interrupt import caused_by_ctrl_c

__all__ = ["compile_ahead", "kernel_calls", "default_workers", "Ahead"]

MAX_WORKERS = 8  # each compiling process holds about 200 MB of LLVM state
WAIT_SECONDS = 600  # a child still compiling after this is stopped (its kernels compile later)
AHEAD_OPT = 2  # LLVM's optimisation level for the kernels compiled ahead (Numba's default: 3)
TRACE_SECONDS = 60  # a trace not back by then (a step waiting on a thread a fork does not copy)
GC_THRESHOLD = 50_000  # allocations between Python's young collections while compiling (default: 700)


class Ahead(NamedTuple):
    """What compile_ahead did: kernels compiled in this process, kernels compiled by the
    children (now in the cache), and how many processes compiled."""

    here: int
    children: int
    processes: int


def default_workers():
    """How many processes compile at once: NUMBACNN_JIT_WORKERS if set (0 or 1: off; taken
    as it is, at about 200 MB a process), else the cores this process may run on, at most
    NUMBA_NUM_THREADS (so NUMBA_NUM_THREADS=1 turns it off too) and MAX_WORKERS. ValueError
    for a NUMBACNN_JIT_WORKERS that is not a whole number."""
    from numba import config

    env = os.environ.get("NUMBACNN_JIT_WORKERS", "").strip()
    if env:
        if not (env.isascii() and env.isdigit()):
            raise ValueError(
                f"NUMBACNN_JIT_WORKERS must be a whole number of processes (1: off), got {env!r}"
            )
        return int(env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, config.NUMBA_NUM_THREADS, MAX_WORKERS))


def _resolve(module, qualname):
    """The dispatcher named (module, qualname) in this process, or None."""
    from numba.core.registry import CPUDispatcher

    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, CPUDispatcher) else None


def _private(a):
    """True when `a`'s memory is NumPy's own allocation (copied on write by a fork, so the
    child may write it): not a memory map, shared memory (multiprocessing's RawArray,
    SharedMemory) or any other buffer that the parent could see written."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a.base is None and a.flags.owndata


def kernel_calls(step):
    """Run ``step()`` with every call of a Numba CPU dispatcher replaced by a record of it:
    the (dispatcher, argument types) pairs it calls, in call order, for the signatures this
    process has not compiled. Nothing is computed: every writeable array argument in memory
    NumPy allocated is zeroed instead (never a memory map or shared memory), and a kernel
    returns None. An exception from ``step``
    (a check tripped by the made-up values) ends the trace with what it found. Call it only
    in a process whose state does not matter (a forked child): it rebinds
    ``CPUDispatcher.__call__`` for good."""
    import warnings

    from numba.core.registry import CPUDispatcher

    calls, seen = [], set()

    def record(self, *args, **kws):
        sig = tuple(self.typeof_pyval(a) for a in args)
        if sig not in self.overloads and (id(self), sig) not in seen:
            seen.add((id(self), sig))
            calls.append((self, sig))
        for a in args:  # what the kernel would have written
            if isinstance(a, np.ndarray) and a.flags.writeable and _private(a):
                a[...] = 0

    CPUDispatcher.__call__ = record
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            step()
    except Exception:  # noqa: BLE001 - keep what was found
        pass
    return calls


def _can_fork():
    from numba import config
    from numba.np.ufunc import parallel

    if not hasattr(os, "fork") or config.DISABLE_JIT or "mpi4py.MPI" in sys.modules:
        return False  # no fork, or nothing to compile, or MPI (a child of a rank must not run)
    return not parallel._is_initialized  # Numba's threads started: a fork would copy one


def compile_ahead(step, workers=None):
    """Compile the numbacnn CPU kernels that ``step()`` (a zero-argument callable: one
    training step) will call, over ``workers`` processes at once (default:
    ``default_workers()``), before it runs. ``step`` runs only in a forked child, as
    ``kernel_calls`` runs it: its kernels are not computed, and its other effects (prints,
    files it writes) happen in that child; nothing in this process changes.

    Returns an ``Ahead`` (kernels this process compiled, kernels the children compiled, the
    number of processes), or None when it did nothing: fewer than 2 workers, no fork, Numba's
    threads already started here, or nothing left to compile. See the module's docstring for
    how, and for what is safe."""
    import multiprocessing

    workers = default_workers() if workers is None else int(workers)
    if workers < 2 or not _can_fork():
        return None
    sys.stdout.flush()  # a child must not print what the parent buffered
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    counts = multiprocessing.RawArray("q", 2)  # the next kernel to take; kernels compiled
    lock = multiprocessing.Lock()
    parent = os.getpid()
    pid = _fork()
    if pid == 0:  # the tracer, then a worker
        code = 1
        try:
            _die_with(parent)
            os.close(read_fd)
            named = []
            for d, sigs in _group(kernel_calls(step)):
                missing = [sig for sig in sigs if _ours(d) and not _on_disk(d, sig)]
                if missing:
                    named.append((_name(d), missing))
            _send(write_fd, named)
            os.close(write_fd)
            _work(_resolved(named), counts, lock)
            code = 0
        finally:
            os._exit(code)
    children = [pid]
    os.close(write_fd)
    try:
        try:
            named = _receive(read_fd, TRACE_SECONDS)
        finally:
            os.close(read_fd)
        if not named:  # nothing to compile, or no answer (the tracer failed or hangs): stop it
            _reap(children, wait=0)
            return None
        kernels = _resolved(named)
        for _ in range(min(workers, len(kernels)) - 2):  # no process without a kernel to take
            pid = _fork()
            if pid == 0:
                code = 1
                try:
                    _die_with(parent)
                    _work(kernels, counts, lock)
                    code = 0
                finally:
                    os._exit(code)
            children.append(pid)
        mine = _work(kernels, counts, lock)
        _reap(children)  # before counts[1] is read: the children's last kernels are in it
        return Ahead(mine, counts[1] - mine, len(children) + 1)
    except BaseException:  # Ctrl-C, or a failure here: the children stop too, at once
        _reap(children, wait=0)
        raise


def _fork():
    """os.fork(), without Python 3.12's warning for a process with threads (tqdm's monitor):
    the children only compile, trace and exit (os._exit), and take no lock those threads use."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def _die_with(parent):
    """In a child: end when the parent ends, even by kill -9 (Linux's parent-death signal;
    elsewhere a child finishes its list first)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent ended before the signal was set
        os._exit(1)


def _name(d):
    return d.py_func.__module__, d.py_func.__qualname__


def _ours(d):
    """A numbacnn kernel with its on-disk cache on (only those are compiled ahead: the cache
    is how the parent gets them, and the helpers' caches are switched off only in numbacnn)."""
    from numba.core.caching import NullCache

    return d.py_func.__module__.startswith("numbacnn") and not isinstance(d._cache, NullCache)


def _on_disk(d, sig):
    """True when Numba's on-disk cache already holds d's `sig` (the parent loads it at the
    first call, in a few ms: nothing to compile). Reads the cache's index as Numba's own
    Cache.load_overload does, through its private names; on any surprise, False."""
    try:
        cache = d._cache
        key = cache._index_key(sig, d.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - another Numba: compile it (a cache hit then, if there)
        return False


def _group(calls):
    """[(dispatcher, [sig, ...])], in first-call order."""
    groups = {}
    for d, sig in calls:
        groups.setdefault(id(d), (d, []))[1].append(sig)
    return list(groups.values())


def _resolved(named):
    """The (dispatcher, signatures) to compile, largest first (the longest processing time
    first: no process is left with a large kernel when the others are done)."""
    kernels = [(_resolve(module, qualname), sigs) for (module, qualname), sigs in named]
    kernels = [(d, sigs) for d, sigs in kernels if d is not None]
    return sorted(kernels, key=lambda k: -_cost(k[0]) * len(k[1]))


def _cost(d, seen=None):
    """A kernel's compile time, roughly, in seconds: 4 ms per bytecode instruction of it and
    of the njit helpers it calls, and 0.8 s more for a parallel one (Numba's parfor lowering;
    measured on LeNet-5's kernels: 0.1 s for the dense bias gradient to 5.3 s for
    outer._forward_blocks). Only the order matters."""
    import dis

    from numba.core.registry import CPUDispatcher

    seen = set() if seen is None else seen
    if id(d) in seen:
        return 0.0
    seen.add(id(d))
    f = d.py_func
    cost = 0.004 * sum(1 for _ in dis.get_instructions(f)) + 0.8 * bool(d.targetoptions.get("parallel"))
    for name in f.__code__.co_names:
        g = f.__globals__.get(name)
        if isinstance(g, CPUDispatcher):
            cost += _cost(g, seen) - 0.8 * bool(g.targetoptions.get("parallel"))
    return cost


def _work(kernels, counts, lock):
    """Take kernels off the shared list (counts[0]: the next to take) until it is empty and
    compile each one taken (counts[1]: kernels compiled, by all); only a kernel taken here
    keeps its on-disk cache on meanwhile (every cache is back on at the end). Returns how
    many this process compiled."""
    from numba.core import config
    from numba.core.caching import NullCache

    from .. import cpu_dispatchers

    caches = {id(d): (d, d._cache) for d in cpu_dispatchers("numbacnn")}  # kernels and helpers
    off = NullCache()
    for d, _ in caches.values():
        d._cache = off
    config.reload_config()  # Numba reloads its config when the environment changed: do it now,
    opt = config.OPT  # so that no compile below resets the level set here
    if "NUMBA_OPT" not in os.environ:  # (a level the user set is kept)
        config.OPT = type(opt)(AHEAD_OPT)
    thresholds = gc.get_threshold()
    if 0 < thresholds[0] < GC_THRESHOLD:  # (a collector the user slowed or set off stays so)
        gc.set_threshold(GC_THRESHOLD, *thresholds[1:])
    freeze = gc.get_freeze_count() == 0  # (objects someone else froze stay frozen)
    if freeze:
        gc.freeze()
    done = 0
    try:
        while True:
            if not lock.acquire(timeout=WAIT_SECONDS):  # its holder was killed (kill -9) in the act
                return done
            i = counts[0]
            counts[0] = i + 1
            lock.release()
            if i >= len(kernels):
                return done
            d, sigs = kernels[i]
            d._cache = caches.setdefault(id(d), (d, d._cache))[1]  # restored at the end either way
            try:
                for sig in sigs:
                    d.compile(sig)
            except Exception as e:  # noqa: BLE001 - the real call compiles it again and raises there
                if caused_by_ctrl_c(e):  # Numba re-raised Ctrl-C as its own error
                    raise KeyboardInterrupt from e
                continue
            finally:
                d._cache = off
            done += 1
            with lock:
                counts[1] += 1
    finally:
        gc.set_threshold(*thresholds)
        if freeze:
            gc.unfreeze()
        config.OPT = opt
        for d, cache in caches.values():
            d._cache = cache


def _send(fd, obj):
    data = pickle.dumps(obj)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd, seconds):
    """What _send wrote, or None if the writer ended first or took more than `seconds`. It
    stops at the message's end, not at the pipe's: a process the step started may hold the
    pipe open after the tracer is done."""
    import time

    deadline = time.monotonic() + seconds
    data, size = bytearray(), None
    while size is None or len(data) < 8 + size:
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
        if size is None and len(data) >= 8:
            (size,) = struct.unpack("<Q", data[:8])
    return pickle.loads(bytes(data[8 : 8 + size]))


def _reap(pids, wait=WAIT_SECONDS):
    """Wait for the children to end, at most `wait` seconds in all; stop any still running
    then, or at once if this wait is interrupted (Ctrl-C)."""
    import signal
    import time

    deadline = time.monotonic() + wait
    try:
        for pid in pids:
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


def _running(pid):
    """False once the child has ended (and been reaped, here or before)."""
    try:
        return not os.waitpid(pid, os.WNOHANG)[0]
    except ChildProcessError:
        return False
