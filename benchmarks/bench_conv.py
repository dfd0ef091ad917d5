"""Benchmark the CPU conv kernels (numbacnn.kernels.cpu.conv) against PyTorch.

    python benchmarks/bench_conv.py                 # float32, all shapes, JIT timings
    python benchmarks/bench_conv.py --dtype float64
    python benchmarks/bench_conv.py --no-jit        # skip the cold/cached compile measurement
    python benchmarks/bench_conv.py --naive         # also time the naive kernels (slow)

For each shape it times, warm (after a JIT warm-up call), the forward, the input gradient
and the weight gradient (+ bias gradient), and prints ms and GFLOP/s = 2*MACs/time next to
PyTorch: F.conv2d for the forward, and aten.convolution_backward (the op autograd calls)
with output_mask selecting dx or dw alone for the two backward passes.  Both sides get
the same number of threads (torch.set_num_threads = numba.get_num_threads()).

The JIT section runs two fresh processes on one empty NUMBA_CACHE_DIR: the first
measures the cold compile (first call of each kernel, per dtype), the second the load
from the on-disk cache (cache=True) that every later process pays instead.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _timing import best_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# (name, N, C_in, C_out, H, W, k, stride, pad, groups)
SHAPES = [
    ("LeNet C1  1->6 5x5 32x32", 64, 1, 6, 32, 32, 5, 1, 0, 1),
    ("LeNet C3  6->16 5x5 14x14", 64, 6, 16, 14, 14, 5, 1, 0, 1),
    ("LeNet C5  16->120 5x5 5x5", 64, 16, 120, 5, 5, 5, 1, 0, 1),
    ("ResNet 64->64 3x3 p1 56x56", 8, 64, 64, 56, 56, 3, 1, 1, 1),
    ("ResNet 16->32 3x3 s2 32x32", 64, 16, 32, 32, 32, 3, 2, 1, 1),
    ("ResNet 64->64 3x3 p1 8x8", 64, 64, 64, 8, 8, 3, 1, 1, 1),
    ("depthwise 64 3x3 p1 56x56", 8, 64, 64, 56, 56, 3, 1, 1, 64),
]


# Every cell is the best (minimum) time of >= 5 calls filling 0.3 s, after 2 untimed calls
# (_timing.best_time says why the minimum); the slow naive kernels get >= 2 calls, 0.1 s.
TIMING = dict(min_time=0.3, min_reps=5, max_reps=2000, warmup=2)
TIMING_NAIVE = dict(TIMING, min_time=0.1, min_reps=2)


def _jit_probe(dtype_names):
    """Child-process body: time the first call of each fast kernel per dtype."""
    t0 = time.perf_counter()
    from numbacnn.kernels.cpu import conv as K

    t_import = time.perf_counter() - t0
    out = [f"import {t_import:.2f}s"]
    for name in dtype_names:
        dt = np.dtype(name)
        x = np.ones((2, 4, 9, 9), dt)
        w = np.ones((6, 2, 3, 3), dt)
        b = np.zeros(6, dt)
        y = np.empty((2, 6, 7, 7), dt)
        dx = np.empty_like(x)
        dw = np.empty_like(w)
        db = np.empty_like(b)
        t0 = time.perf_counter()
        K.conv2d_forward(x, w, b, y, 1, 1, 0, 0, 1, 1, 2)
        K.conv2d_backward_input(y, w, dx, 1, 1, 0, 0, 1, 1, 2)
        K.conv2d_backward_weight(y, x, dw, 1, 1, 0, 0, 1, 1, 2)
        K.conv2d_backward_bias(y, db)
        out.append(f"{name} {time.perf_counter() - t0:.2f}s")
    print("JIT:", ", ".join(out))


def jit_times():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=ROOT)
        cmd = [sys.executable, os.path.abspath(__file__), "--_jit-probe"]
        res = {}
        for label in ("cold (empty cache)", "cached (2nd process)"):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [l for l in r.stdout.splitlines() if l.startswith("JIT:")]
            res[label] = line[0][5:] if line else ("FAILED: " + r.stderr[-500:])
        return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--no-jit", action="store_true", help="skip the cold/cached JIT measurement")
    ap.add_argument("--naive", action="store_true", help="also time the naive kernels")
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (default: numba's)")
    ap.add_argument("--_jit-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._jit_probe:
        _jit_probe(["float32", "float64"])
        return

    jit = None if args.no_jit else jit_times()  # before anything compiles in this process

    import numba
    import torch
    import torch.nn.functional as F

    from numbacnn.kernels.cpu import conv as K

    if args.threads:
        numba.set_num_threads(args.threads)
    nthreads = numba.get_num_threads()
    torch.set_num_threads(nthreads)
    dt = np.dtype(args.dtype)

    print(
        f"numba {numba.__version__}: {nthreads} threads, threading layer "
        f"{numba.config.THREADING_LAYER!r}; dtype {dt.name}"
    )
    cfg = torch.__config__.show()
    blas = [
        l.strip() for l in cfg.splitlines() if "BLAS_INFO" in l or "USE_MKLDNN" in l or "LAPACK_INFO" in l
    ]
    print(
        f"torch {torch.__version__}: {torch.get_num_threads()} threads, "
        f"mkldnn available={torch.backends.mkldnn.is_available()}, "
        f"{'; '.join(blas) if blas else 'BLAS info n/a'}"
    )
    print(f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"parallel backend: {torch.__config__.parallel_info().splitlines()[0]}")
    if jit:
        print("\nJIT compile time of the 4 fast conv kernels (first call, per dtype):")
        for k, v in jit.items():
            print(f"  {k:22s} {v}")

    rng = np.random.default_rng(0)
    hdr = (
        f"\n{'shape':28s} {'pass':9s} {'numbacnn ms':>11s} {'GFLOP/s':>8s} "
        f"{'torch ms':>9s} {'GFLOP/s':>8s} {'ratio':>6s}"
    )
    if args.naive:
        hdr += f" {'naive ms':>9s}"
    print(hdr + "\n" + "-" * (len(hdr) - 1))
    totals = {}
    for name, N, C_in, C_out, H, W, k, s, p, G in SHAPES:
        H_out = (H + 2 * p - k) // s + 1
        W_out = (W + 2 * p - k) // s + 1
        macs = N * C_out * H_out * W_out * (C_in // G) * k * k
        x = rng.standard_normal((N, C_in, H, W)).astype(dt)
        w = rng.standard_normal((C_out, C_in // G, k, k)).astype(dt)
        b = rng.standard_normal(C_out).astype(dt)
        dy = rng.standard_normal((N, C_out, H_out, W_out)).astype(dt)
        y = np.empty_like(dy)
        dx = np.empty_like(x)
        dw = np.empty_like(w)
        db = np.empty_like(b)
        conv = (s, s, p, p, 1, 1, G)
        tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
        tconv = dict(stride=(s, s), padding=(p, p), dilation=(1, 1), groups=G)

        def t_bwd(mask):
            return lambda: torch.ops.aten.convolution_backward(
                tdy, tx, tw, [C_out], [s, s], [p, p], [1, 1], False, [0, 0], G, mask
            )

        rows = [
            (
                "forward",
                lambda: K.conv2d_forward(x, w, b, y, *conv),
                lambda: F.conv2d(tx, tw, tb, **tconv),
                lambda: K.conv2d_forward_naive(x, w, b, y, *conv),
            ),
            (
                "bwd_in",
                lambda: K.conv2d_backward_input(dy, w, dx, *conv),
                t_bwd([True, False, False]),
                lambda: K.conv2d_backward_input_naive(dy, w, dx, *conv),
            ),
            (
                "bwd_w+b",
                lambda: (K.conv2d_backward_weight(dy, x, dw, *conv), K.conv2d_backward_bias(dy, db)),
                t_bwd([False, True, True]),
                lambda: (K.conv2d_backward_weight_naive(dy, x, dw, *conv), K.conv2d_backward_bias(dy, db)),
            ),
        ]
        with torch.no_grad():
            tot_o = tot_t = 0.0
            for pname, ours, theirs, naive in rows:
                to = best_time(ours, **TIMING)
                tt = best_time(theirs, **TIMING)
                tot_o += to
                tot_t += tt
                line = (
                    f"{name:28s} {pname:9s} {to * 1e3:11.3f} {2 * macs / to / 1e9:8.2f} "
                    f"{tt * 1e3:9.3f} {2 * macs / tt / 1e9:8.2f} {tt / to:6.2f}"
                )
                if args.naive:
                    line += f" {best_time(naive, **TIMING_NAIVE) * 1e3:9.3f}"
                print(line)
            print(
                f"{name:28s} {'total':9s} {tot_o * 1e3:11.3f} {6 * macs / tot_o / 1e9:8.2f} "
                f"{tot_t * 1e3:9.3f} {6 * macs / tot_t / 1e9:8.2f} {tot_t / tot_o:6.2f}"
            )
            totals[name] = (tot_o, tot_t)
    lo, lt = (sum(v[i] for n, v in totals.items() if n.startswith("LeNet")) for i in (0, 1))
    print(
        f"\nLeNet-5 convs, batch 64, fwd+bwd of C1+C3+C5: numbacnn {lo * 1e3:.3f} ms, "
        f"torch {lt * 1e3:.3f} ms, speed ratio (torch time / ours) {lt / lo:.2f}"
    )
    print("ratio = torch ms / numbacnn ms (1.0 = as fast as torch, 0.33 = 3x slower).")


if __name__ == "__main__":
    main()
