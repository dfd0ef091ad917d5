"""The one timing helper of the benchmarks (and of examples/performance_ladder.py).

Two functions, both returning SECONDS per call of `fn`:

* best_time(fn, ...)   wall-clock time on the host (time.perf_counter), the MINIMUM over
  repeated calls, each timed alone. Use it for CPU code, which runs synchronously.
* event_time(fn, ...)  device time between two events around `reps` back-to-back calls,
  divided by reps (a MEAN). Use it for GPU kernels: a launch returns before the kernel has
  run, so a single call can only be timed by synchronising after it, which would measure
  the launch latency and the synchronisation instead of the kernel.

Why the minimum on the host: on a shared machine the other processes (and the OS) only ever
ADD time to a call, never remove it, so the fastest repetition is the best estimate of what
the code itself costs; a mean or median on a busy 2-core machine mostly measures the
scheduler. Every call of `fn` before the timed ones is a warm-up: the first call of a Numba
kernel compiles it (or loads it from the cache), and caches and allocators settle.

The benchmarks are run as scripts (`python benchmarks/bench_conv.py`), which puts
benchmarks/ first on sys.path, so they import this module as `_timing`.
"""

import time


def best_time(fn, *, min_time=0.0, min_reps=5, max_reps=2000, warmup=1):
    """Best (minimum) wall time of one call of fn(), in seconds.

    fn is called `warmup` times untimed, then timed call by call: at least `min_reps`
    calls, then more until `min_time` seconds have passed since the first timed call, at
    most `max_reps` calls in all (unless min_reps is larger). So min_time=0 times exactly
    min_reps calls, and min_reps=max_reps=n exactly n calls.
    """
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < min_time and len(times) < max_reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def event_time(fn, *, reps, event, synchronize, warmup=1):
    """Mean device time of one call of fn(), in seconds, timed with events (CUDA).

    fn is called `warmup` times (the first launch compiles the kernel), then `synchronize()`
    waits for the device; `reps` calls run back to back between two events, and the time
    between the events, divided by reps, is returned. The caller passes its library's
    hooks: `event()` makes an event with record(), synchronize() and elapsed_time(other)
    in milliseconds (numba: cuda.event; torch: lambda: torch.cuda.Event(enable_timing=True)),
    `synchronize()` waits for the whole device (cuda.synchronize, torch.cuda.synchronize).
    """
    for _ in range(warmup):
        fn()
    synchronize()
    start, stop = event(), event()
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop) / reps / 1e3
