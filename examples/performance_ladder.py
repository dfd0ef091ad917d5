"""The performance ladder: one convolution, from the slide's formula to fast loops.

LeNet-5's C3 layer (6 -> 16 channels, 5x5 kernel, 14x14 input, batch 64, float32), forward
pass, timed at each rung:

  1. numbacnn.reference.conv2d   plain Python loops straight from the lecture (no JIT)
  2. naive @njit, 1 thread       the same formula compiled by Numba, one output at a time
  3. naive @njit, all threads    ... parallel over (n, c_out) with prange
  4. fast @njit, all threads     flattened padded planes, vectorised inner loops, channel blocks
  5. PyTorch                     torch.nn.functional.conv2d (oneDNN), same thread count

Prints ms per batch, GFLOP/s (2 * MACs / time) and the speed-up over the rung before, and
draws out/performance_ladder.png. The reference rung is timed on 2 images and scaled to 64
(it takes seconds per image).

    python examples/performance_ladder.py [--out out/performance_ladder.png]
"""

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numba  # noqa: E402
import numpy as np  # noqa: E402

from numbacnn import reference  # noqa: E402
from numbacnn.kernels.cpu import conv  # noqa: E402

# The one timing helper lives with the benchmarks (benchmarks/_timing.py); this example runs
# from a checkout, so it finds it next door.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from _timing import best_time  # noqa: E402

N, C_IN, C_OUT, H, K = 64, 6, 16, 14, 5
H_OUT = H - K + 1  # = W_out (square)
MACS = N * C_OUT * H_OUT * H_OUT * C_IN * K * K
TIMING = dict(min_reps=20, max_reps=20)  # each rung: the best of 20 calls, after 1 untimed (JIT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join("out", "performance_ladder.png"))
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C_IN, H, H)).astype(np.float32)  # x: (N, C_in, H, W)
    w = rng.standard_normal((C_OUT, C_IN, K, K)).astype(np.float32)  # w: (C_out, C_in, kH, kW)
    b = np.zeros(C_OUT, np.float32)  # b: (C_out,)
    y = np.empty((N, C_OUT, H_OUT, H_OUT), np.float32)  # y: (N, C_out, H_out, W_out)
    threads = numba.get_num_threads()
    geo = (1, 1, 0, 0, 1, 1, 1)  # stride, pad top/left, dilation, groups

    rungs = []
    t = best_time(lambda: reference.conv2d(x[:2], w, b), min_reps=1, max_reps=1) * N / 2
    rungs.append(("reference (Python loops)", t))
    numba.set_num_threads(1)
    rungs.append(
        ("naive @njit, 1 thread", best_time(lambda: conv.conv2d_forward_naive(x, w, b, y, *geo), **TIMING))
    )
    numba.set_num_threads(threads)
    rungs.append(
        (
            f"naive @njit, {threads} threads",
            best_time(lambda: conv.conv2d_forward_naive(x, w, b, y, *geo), **TIMING),
        )
    )
    rungs.append(
        (f"fast @njit, {threads} threads", best_time(lambda: conv.conv2d_forward(x, w, b, y, *geo), **TIMING))
    )
    fast = y.copy()
    try:
        import torch

        torch.set_num_threads(threads)
        xt, wt, bt = map(torch.from_numpy, (x, w, b))
        with torch.no_grad():
            rungs.append(
                (
                    f"PyTorch {torch.__version__}, {threads} threads",
                    best_time(lambda: torch.nn.functional.conv2d(xt, wt, bt), **TIMING),
                )
            )
            np.testing.assert_allclose(
                fast, torch.nn.functional.conv2d(xt, wt, bt).numpy(), rtol=1e-4, atol=1e-4
            )
    except ImportError:
        print("(torch not installed: PyTorch rung skipped)")

    print(f"LeNet C3 forward: x {x.shape}, w {w.shape}, {MACS / 1e6:.1f}M MACs, float32")
    print(f"{'rung':34s} {'ms/batch':>10s} {'GFLOP/s':>9s} {'speed-up':>9s}")
    prev = None
    for name, t in rungs:
        up = f"{prev / t:8.1f}x" if prev else ""
        print(f"{name:34s} {t * 1e3:10.3f} {2 * MACS / t / 1e9:9.2f} {up:>9s}")
        prev = t

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    names = [n for n, _ in rungs][::-1]
    gflops = [2 * MACS / t / 1e9 for _, t in rungs][::-1]
    ax.barh(names, gflops, color=["tab:gray" if n.startswith("PyTorch") else "tab:blue" for n in names])
    ax.set_xscale("log")
    ax.set_xlabel("GFLOP/s (log scale)")
    ax.set_title("LeNet C3 forward (6->16, 5x5, 14x14, batch 64)")
    for i, g in enumerate(gflops):
        ax.text(g, i, f" {g:.3g}", va="center")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()
