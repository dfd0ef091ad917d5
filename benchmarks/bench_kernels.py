"""Time the non-conv CPU kernels (pool, batch norm, dense, activations, loss) against PyTorch.

    PYTHONPATH=. python benchmarks/bench_kernels.py [--threads 2] [--dtype float32] [--budget 0.15]

Every kernel is warmed up (JIT compiled / loaded from the cache) before timing; each row
is the BEST (minimum) of repeated calls within a small time budget, in milliseconds: the
minimum is the least disturbed by other processes on a shared machine (medians on a busy
2-core box mostly measure the scheduler).  PyTorch runs
with torch.set_num_threads(threads) and Numba with numba.set_num_threads(threads).

What each torch column times (the closest eager op to the kernel's contract):
* pooling backward: aten max_pool2d_with_indices_backward (indices precomputed, outside the
  timing; our kernel recomputes the argmax from x) and aten avg_pool2d_backward;
* batch norm: aten native_batch_norm / native_batch_norm_backward (torch reuses the saved
  mean/invstd; our backward recomputes them from x);
* linear backward: dy @ w, dy.T @ x, dy.sum(0) (MKL/OpenBLAS GEMM vs our loops);
* activations backward: aten threshold_backward / tanh_backward / sigmoid_backward;
* dropout: torch.dropout (draws its own Bernoulli mask), backward dy * mask * scale;
* cross entropy backward: autograd.grad of F.cross_entropy (graph built outside timing).
Torch allocates its outputs; our kernels write into preallocated arrays (as functional does
after allocating them, which costs the same for both).
"""

import argparse
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from _timing import best_time

from numbacnn.kernels.cpu import activation, batchnorm, dense, loss, pool


def cases(dt, rng):
    """Yield (family, label, ours, torch) closures on LeNet- and ResNet-like shapes.

    The closures read the loop variables late, so each must be timed before the generator
    advances (main() does exactly that)."""

    def arr(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    T = torch.from_numpy

    # --- pooling: LeNet 2x2/2 on (64,6,28,28); ResNet stem 3x3/2 pad 1 on (32,64,56,56)
    for tag, shape, k, s, p in [
        ("LeNet (64,6,28,28) k2 s2", (64, 6, 28, 28), 2, 2, 0),
        ("ResNet (32,64,56,56) k3 s2 p1", (32, 64, 56, 56), 3, 2, 1),
    ]:
        x = arr(*shape)
        H_out = (shape[2] + 2 * p - k) // s + 1
        y = np.empty(shape[:2] + (H_out, H_out), dt)
        dy = arr(*y.shape)
        dx = np.empty_like(x)
        xt, dyt = T(x), T(dy)
        _, idx = torch.ops.aten.max_pool2d_with_indices(xt, [k, k], [s, s], [p, p])
        yield (
            "max_pool2d fwd",
            tag,
            lambda: pool.max_pool2d_forward(x, y, k, k, s, s, p, p),
            lambda: F.max_pool2d(xt, k, s, p),
        )
        yield (
            "max_pool2d bwd",
            tag,
            lambda: pool.max_pool2d_backward(dy, x, dx, k, k, s, s, p, p),
            lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                dyt, xt, [k, k], [s, s], [p, p], [1, 1], False, idx
            ),
        )
        yield (
            "avg_pool2d fwd",
            tag,
            lambda: pool.avg_pool2d_forward(x, y, k, k, s, s, p, p),
            lambda: F.avg_pool2d(xt, k, s, p),
        )
        yield (
            "avg_pool2d bwd",
            tag,
            lambda: pool.avg_pool2d_backward(dy, dx, k, k, s, s, p, p),
            lambda: torch.ops.aten.avg_pool2d_backward(dyt, xt, [k, k], [s, s], [p, p], False, True, None),
        )

    # --- batch norm: ResNet block (32,64,32,32) and a BatchNorm1d-like (256,512)
    for tag, shape in [("(32,64,32,32)", (32, 64, 32, 32)), ("(256,512)", (256, 512))]:
        N, C = shape[:2]
        L = int(np.prod(shape[2:])) if len(shape) > 2 else 1
        x = arr(*shape)
        g, b = arr(C), arr(C)
        rm, rv = np.zeros(C, dt), np.ones(C, dt)
        y, dy, dx = np.empty_like(x), arr(*shape), np.empty_like(x)
        dg, db = np.empty(C, dt), np.empty(C, dt)
        x3, y3, dy3, dx3 = (a.reshape(N, C, L) for a in (x, y, dy, dx))
        xt, gt, bt, rmt, rvt, dyt = T(x), T(g), T(b), T(rm.copy()), T(rv.copy()), T(dy)
        _, sm, si = torch.ops.aten.native_batch_norm(xt, gt, bt, rmt, rvt, True, 0.1, 1e-5)
        yield (
            "batch_norm train fwd",
            tag,
            lambda: batchnorm.batch_norm_forward_train(x3, g, b, rm, rv, 0.1, 1e-5, y3),
            lambda: torch.ops.aten.native_batch_norm(xt, gt, bt, rmt, rvt, True, 0.1, 1e-5),
        )
        yield (
            "batch_norm eval fwd",
            tag,
            lambda: batchnorm.batch_norm_forward_eval(x3, g, b, rm, rv, 1e-5, y3),
            lambda: torch.ops.aten.native_batch_norm(xt, gt, bt, rmt, rvt, False, 0.1, 1e-5),
        )
        yield (
            "batch_norm bwd",
            tag,
            lambda: batchnorm.batch_norm_backward(dy3, x3, g, 1e-5, dx3, dg, db),
            lambda: torch.ops.aten.native_batch_norm_backward(
                dyt, xt, gt, rmt, rvt, sm, si, True, 1e-5, [True, True, True]
            ),
        )

    # --- linear: LeNet 400->120, 120->84, 84->10 (N=64); ResNet head 512->10 (N=32);
    #     an AlexNet-ish hidden layer 4096->1024 (N=64)
    for N, IN, OUT in [(64, 400, 120), (64, 120, 84), (64, 84, 10), (32, 512, 10), (64, 4096, 1024)]:
        tag = f"N={N} {IN}->{OUT}"
        x, w, b = arr(N, IN), arr(OUT, IN), arr(OUT)
        y, dy = np.empty((N, OUT), dt), arr(N, OUT)
        dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
        xt, wt, bt, dyt = T(x), T(w), T(b), T(dy)
        yield ("linear fwd", tag, lambda: dense.linear_forward(x, w, b, y), lambda: F.linear(xt, wt, bt))
        yield ("linear bwd input", tag, lambda: dense.linear_backward_input(dy, w, dx), lambda: dyt @ wt)
        yield (
            "linear bwd weight",
            tag,
            lambda: dense.linear_backward_weight(dy, x, dw),
            lambda: dyt.t() @ xt,
        )
        yield ("linear bwd bias", tag, lambda: dense.linear_backward_bias(dy, db), lambda: dyt.sum(0))

    # --- element-wise: LeNet conv1 output (64,6,28,28) and a ResNet block (32,64,32,32)
    for tag, shape in [("(64,6,28,28)", (64, 6, 28, 28)), ("(32,64,32,32)", (32, 64, 32, 32))]:
        n = int(np.prod(shape))
        x, a, dy = arr(n, scale=3.0), arr(n), arr(n)
        y, dx = np.empty_like(x), np.empty_like(x)
        mask = np.empty(n, np.uint8)
        xt, at, dyt = T(x), T(a), T(dy)
        yt_tanh, yt_sig = torch.tanh(xt), torch.sigmoid(xt)
        y_tanh, y_sig = yt_tanh.numpy(), yt_sig.numpy()
        maskt = T(rng.random(n) >= 0.5).to(xt.dtype)
        yield ("relu fwd", tag, lambda: activation.relu_forward(x, y), lambda: torch.relu(xt))
        yield (
            "relu bwd",
            tag,
            lambda: activation.relu_backward(dy, x, dx),
            lambda: torch.ops.aten.threshold_backward(dyt, xt, 0),
        )
        yield ("tanh fwd", tag, lambda: activation.tanh_forward(x, y), lambda: torch.tanh(xt))
        yield (
            "tanh bwd",
            tag,
            lambda: activation.tanh_backward(dy, y_tanh, dx),
            lambda: torch.ops.aten.tanh_backward(dyt, yt_tanh),
        )
        yield ("sigmoid fwd", tag, lambda: activation.sigmoid_forward(x, y), lambda: torch.sigmoid(xt))
        yield (
            "sigmoid bwd",
            tag,
            lambda: activation.sigmoid_backward(dy, y_sig, dx),
            lambda: torch.ops.aten.sigmoid_backward(dyt, yt_sig),
        )
        yield (
            "dropout fwd p=0.5",
            tag,
            lambda: activation.dropout_forward(x, y, mask, 0.5, 1234),
            lambda: torch.dropout(xt, 0.5, True),
        )
        yield (
            "dropout bwd p=0.5",
            tag,
            lambda: activation.dropout_backward(dy, mask, 0.5, dx),
            lambda: dyt * maskt * 2.0,
        )
        yield ("add fwd", tag, lambda: activation.add_forward(x, a, y), lambda: xt + at)

    # --- cross entropy: LeNet head (64,10) and a 1000-class head (256,1000)
    for N, K in [(64, 10), (256, 1000)]:
        tag = f"({N},{K})"
        z = arr(N, K, scale=3.0)
        t = rng.integers(0, K, N).astype(np.int64)
        dz = np.empty_like(z)
        zt, tt = T(z).requires_grad_(), T(t)
        lt = F.cross_entropy(zt, tt)
        yield (
            "cross_entropy fwd",
            tag,
            lambda: loss.cross_entropy_forward(z, t),
            lambda: F.cross_entropy(zt.detach(), tt),
        )
        yield (
            "cross_entropy bwd",
            tag,
            lambda: loss.cross_entropy_backward(z, t, dz),
            lambda: torch.autograd.grad(lt, zt, retain_graph=True),
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--budget", type=float, default=0.15, help="seconds of timing per cell")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    dt = np.dtype(args.dtype).type
    rng = np.random.default_rng(0)

    print(
        f"numbacnn CPU kernels vs torch {torch.__version__}: {args.dtype}, "
        f"{args.threads} threads (numba {numba.__version__}, "
        f"layer {numba.config.THREADING_LAYER}); best ms per call"
    )
    head = f"{'kernel':<22} {'shape':<30} {'numbacnn':>9} {'torch':>9} {'ratio':>7}"
    print(head)
    print("-" * len(head))
    # each cell: >= 5 calls, then as many as fit in the budget (at most 200), after 2 untimed
    timing = dict(min_time=args.budget, min_reps=5, max_reps=200, warmup=2)
    t_start = time.perf_counter()
    for family, label, ours, theirs in cases(dt, rng):
        t_ours = 1e3 * best_time(ours, **timing)  # ms
        t_torch = 1e3 * best_time(theirs, **timing)
        print(f"{family:<22} {label:<30} {t_ours:9.3f} {t_torch:9.3f} {t_ours / t_torch:7.2f}x")
    print(
        f"(ratio = numbacnn / torch; < 1 means numbacnn is faster; "
        f"total {time.perf_counter() - t_start:.0f} s)"
    )


if __name__ == "__main__":
    main()
