"""Time the CUDA kernels (numbacnn.kernels.cuda) against PyTorch on the same GPU.

    PYTHONPATH=. python benchmarks/bench_cuda.py [--dtype float32] [--preset lenet|resnet|all]
                                                 [--reps 50] [--no-torch] [--no-check]

Needs an NVIDIA GPU (numba.cuda.is_available()); without one, or under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, whose timings would be meaningless), it prints why and exits with
status 0 without timing anything.  `--smoke` (tiny shapes, 1 rep, no torch) runs anywhere,
the simulator included, to check the script itself.

Method
------
* Every kernel is called once first (lazy JIT compile for the argument types), then timed
  with CUDA events around `reps` back-to-back launches on the default stream
  (cuda.event(); record; launches; record; synchronize): the per-call time is the event
  time divided by reps, in milliseconds.  Our kernels write into preallocated device arrays
  (as numbacnn.functional does after allocating them).
* The torch column (if torch with CUDA is installed) runs the closest eager op on the SAME
  device memory (zero-copy through __cuda_array_interface__), timed the same way with
  torch.cuda.Event: F.conv2d, aten.convolution_backward (output_mask selecting dx or dw
  alone), max/avg_pool2d(+ their aten backward ops; max uses indices precomputed outside the
  timing, our kernel recomputes the argmax from x), aten.native_batch_norm(+_backward),
  F.linear, dy @ w, dy.T @ x, dy.sum(0), relu/tanh/sigmoid, F.dropout, F.cross_entropy and
  autograd for its gradient.  torch.backends.cudnn.benchmark = True, TF32 disabled
  (so float32 means float32 on both sides).
* --check (default on) compares each forward output with torch's (max relative error).

Presets (N, channels, size) are a LeNet-5 step on 32x32 MNIST and one ResNet basic-block
layer at 56x56.
"""

import argparse
import os
import sys

import numpy as np
from _timing import event_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PRESETS = {
    # name: list of (label, N, C_in, C_out, H, W, k, stride, pad, groups)
    "lenet": [
        ("LeNet C1 1->6 5x5 32x32", 256, 1, 6, 32, 32, 5, 1, 0, 1),
        ("LeNet C3 6->16 5x5 14x14", 256, 6, 16, 14, 14, 5, 1, 0, 1),
    ],
    "resnet": [
        ("ResNet 64->64 3x3 p1 56x56", 32, 64, 64, 56, 56, 3, 1, 1, 1),
        ("depthwise 64 3x3 p1 56x56", 32, 64, 64, 56, 56, 3, 1, 1, 64),
    ],
}
_TINY = [("tiny 2->4 3x3 p1 6x6", 2, 2, 4, 6, 6, 3, 1, 1, 1)]  # --smoke only


def _no_gpu(msg):
    print(f"bench_cuda: {msg}; nothing timed.", file=sys.stderr)
    sys.exit(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--preset", default="all", choices=["all"] + sorted(PRESETS))
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, 1 rep, no torch; allowed under NUMBA_ENABLE_CUDASIM=1 "
        "(checks that the script runs, the times are meaningless)",
    )
    args = ap.parse_args(argv)
    if args.smoke:
        args.reps, args.no_torch = 1, True

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and not args.smoke:
        _no_gpu("NUMBA_ENABLE_CUDASIM=1 (the simulator runs kernels as Python; timings are meaningless)")
    try:
        from numba import cuda

        ok = cuda.is_available()
    except Exception as exc:  # numba-cuda missing or broken
        _no_gpu(f"numba.cuda is unusable ({exc})")
    if not ok:
        _no_gpu("no CUDA GPU available (numba.cuda.is_available() is False)")

    from numbacnn.kernels import cuda as K
    from numbacnn.kernels.cuda import activation, batchnorm, conv, dense, loss, pool

    torch = None
    if not args.no_torch:
        try:
            import torch as _torch

            if _torch.cuda.is_available():
                torch = _torch
                torch.backends.cudnn.benchmark = True
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = False
        except ImportError:
            pass
    dt = np.dtype(args.dtype)
    rng = np.random.default_rng(0)
    reps = args.reps
    PRESETS["tiny"] = _TINY
    dev = cuda.get_current_device()
    name = getattr(dev, "name", "CUDA simulator")
    print(
        f"device: {name.decode() if isinstance(name, bytes) else name}  "
        f"dtype: {dt}  reps: {reps}  torch: {torch.__version__ if torch else 'no'}"
    )

    def d(shape, scale=1.0):
        return cuda.to_device((rng.standard_normal(shape) * scale).astype(dt))

    def t_numba(fn):
        """ms per call: events around reps launches, after one compiling call."""
        return 1e3 * event_time(fn, reps=reps, event=cuda.event, synchronize=cuda.synchronize)

    def t_torch(fn):
        if torch is None or fn is None:
            return None
        return 1e3 * event_time(
            fn,
            reps=reps,
            event=lambda: torch.cuda.Event(enable_timing=True),
            synchronize=torch.cuda.synchronize,
        )

    def T(a):  # zero-copy torch view of a device array
        return torch.as_tensor(a, device="cuda")

    rows = []

    def bench(label, op, fn, tfn=None, out=None, tref=None):
        ms = t_numba(fn)
        tms = t_torch(tfn)
        err = None
        if out is not None and tref is not None and torch is not None and not args.no_check:
            ref = tref().double()
            got = T(out).double()
            err = float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        rows.append((label, op, ms, tms, err))
        ratio = f"{ms / tms:7.2f}x" if tms else "      -"
        print(
            f"{label:32s} {op:26s} {ms:9.4f} ms  torch {tms if tms else float('nan'):9.4f} ms  "
            f"{ratio}  {'' if err is None else f'relerr {err:.1e}'}",
            flush=True,
        )

    presets = sorted(PRESETS) if args.preset == "all" else [args.preset]
    dense_shapes = [(256, 400, 120), (256, 4096, 4096), (256, 4096, 10)]
    if args.smoke:
        presets = ["tiny"]
        dense_shapes = [(3, 20, 10)]
    for name in presets:
        for label, N, C_in, C_out, H, W, k, s, p, g in PRESETS[name]:
            x, w, b = d((N, C_in, H, W)), d((C_out, C_in // g, k, k), 0.1), d((C_out,))
            H_out = (H + 2 * p - k) // s + 1
            W_out = (W + 2 * p - k) // s + 1
            y = K.empty((N, C_out, H_out, W_out), dt)
            dy = d((N, C_out, H_out, W_out))
            dx, dw, db = K.empty(x.shape, dt), K.empty(w.shape, dt), K.empty((C_out,), dt)
            geo = (s, s, p, p, 1, 1, g)
            if torch is not None:
                import torch.nn.functional as TF

                tx, tw, tb, tdy = T(x), T(w), T(b), T(dy)

                def t_conv():
                    return TF.conv2d(tx, tw, tb, s, p, 1, g)

                def t_bwd(mask):
                    return lambda: torch.ops.aten.convolution_backward(
                        tdy, tx, tw, [C_out], [s, s], [p, p], [1, 1], False, [0, 0], g, mask
                    )
            else:
                t_conv = t_bwd = None
            bench(label, "conv2d_forward", lambda: conv.conv2d_forward(x, w, b, y, *geo), t_conv, y, t_conv)
            bench(
                label,
                "conv2d_backward_input",
                lambda: conv.conv2d_backward_input(dy, w, dx, *geo),
                t_bwd([True, False, False]) if torch else None,
            )
            bench(
                label,
                "conv2d_backward_weight",
                lambda: conv.conv2d_backward_weight(dy, x, dw, *geo),
                t_bwd([False, True, False]) if torch else None,
            )
            bench(
                label,
                "conv2d_backward_bias",
                lambda: conv.conv2d_backward_bias(dy, db),
                (lambda: tdy.sum((0, 2, 3))) if torch else None,
            )

            # pooling (2x2 stride 2) and batch norm on the conv output
            yp = K.empty((N, C_out, H_out // 2, W_out // 2), dt)
            dyp = d(yp.shape)
            dxp = K.empty(y.shape, dt)
            if torch is not None:
                ty, tdyp = T(y), T(dyp)
                _, idx = TF.max_pool2d(ty, 2, 2, return_indices=True)
                t_max = lambda: TF.max_pool2d(ty, 2, 2)  # noqa: E731
                t_maxb = lambda: torch.ops.aten.max_pool2d_with_indices_backward(  # noqa: E731
                    tdyp, ty, [2, 2], [2, 2], [0, 0], [1, 1], False, idx
                )
                t_avg = lambda: TF.avg_pool2d(ty, 2, 2)  # noqa: E731
                t_avgb = lambda: torch.ops.aten.avg_pool2d_backward(  # noqa: E731
                    tdyp, ty, [2, 2], [2, 2], [0, 0], False, True, None
                )
            else:
                t_max = t_maxb = t_avg = t_avgb = None
            bench(
                label,
                "max_pool2d_forward",
                lambda: pool.max_pool2d_forward(y, yp, 2, 2, 2, 2, 0, 0),
                t_max,
                yp,
                t_max,
            )
            bench(
                label,
                "max_pool2d_backward",
                lambda: pool.max_pool2d_backward(dyp, y, dxp, 2, 2, 2, 2, 0, 0),
                t_maxb,
            )
            bench(
                label,
                "avg_pool2d_forward",
                lambda: pool.avg_pool2d_forward(y, yp, 2, 2, 2, 2, 0, 0),
                t_avg,
                yp,
                t_avg,
            )
            bench(
                label,
                "avg_pool2d_backward",
                lambda: pool.avg_pool2d_backward(dyp, dxp, 2, 2, 2, 2, 0, 0),
                t_avgb,
            )

            y3 = y.reshape(N, C_out, H_out * W_out)
            o3 = K.empty(y3.shape, dt)
            gam, bet = d((C_out,)), d((C_out,))
            rm, rv = K.full((C_out,), 0.0, dt), K.full((C_out,), 1.0, dt)
            dg, dbb = K.empty((C_out,), dt), K.empty((C_out,), dt)
            if torch is not None:
                ty3 = T(y)
                trm, trv = (
                    torch.zeros(C_out, device="cuda", dtype=ty3.dtype),
                    torch.ones(C_out, device="cuda", dtype=ty3.dtype),
                )
                t_bn = lambda: torch.ops.aten.native_batch_norm(  # noqa: E731
                    ty3, T(gam), T(bet), trm, trv, True, 0.1, 1e-5
                )
                _, sm, si = t_bn()
                t_bnb = lambda: torch.ops.aten.native_batch_norm_backward(  # noqa: E731
                    T(dy), ty3, T(gam), trm, trv, sm, si, True, 1e-5, [True, True, True]
                )
            else:
                t_bn = t_bnb = None
            bench(
                label,
                "batch_norm_forward_train",
                lambda: batchnorm.batch_norm_forward_train(y3, gam, bet, rm, rv, 0.1, 1e-5, o3),
                t_bn,
            )
            bench(
                label,
                "batch_norm_backward",
                lambda: batchnorm.batch_norm_backward(
                    dy.reshape(N, C_out, H_out * W_out), y3, gam, 1e-5, o3, dg, dbb
                ),
                t_bnb,
            )

            # element-wise ops on the conv output (flat views)
            n = N * C_out * H_out * W_out
            yf, of = y.reshape(n), o3.reshape(n)
            dyf = dy.reshape(n)
            mask = K.empty((n,), np.uint8)
            for op, fn, tf in [
                (
                    "relu_forward",
                    lambda: activation.relu_forward(yf, of),
                    (lambda: torch.relu(T(yf))) if torch else None,
                ),
                (
                    "tanh_forward",
                    lambda: activation.tanh_forward(yf, of),
                    (lambda: torch.tanh(T(yf))) if torch else None,
                ),
                (
                    "sigmoid_forward",
                    lambda: activation.sigmoid_forward(yf, of),
                    (lambda: torch.sigmoid(T(yf))) if torch else None,
                ),
                (
                    "relu_backward",
                    lambda: activation.relu_backward(dyf, yf, of),
                    (lambda: torch.ops.aten.threshold_backward(T(dyf), T(yf), 0)) if torch else None,
                ),
                (
                    "dropout_forward",
                    lambda: activation.dropout_forward(yf, of, mask, 0.5, 1234, 0),
                    (lambda: TF.dropout(T(yf), 0.5, True)) if torch else None,
                ),
                (
                    "add_forward",
                    lambda: activation.add_forward(yf, dyf, of),
                    (lambda: T(yf) + T(dyf)) if torch else None,
                ),
            ]:
                bench(
                    label,
                    op,
                    fn,
                    tf,
                    of if op in ("relu_forward", "tanh_forward", "sigmoid_forward", "add_forward") else None,
                    tf if op in ("relu_forward", "tanh_forward", "sigmoid_forward", "add_forward") else None,
                )

    # dense + loss: a LeNet/AlexNet-like classifier head
    for N, IN, OUT in dense_shapes:
        label = f"linear N={N} {IN}->{OUT}"
        x, w, b = d((N, IN)), d((OUT, IN), 0.05), d((OUT,))
        y, dy = K.empty((N, OUT), dt), d((N, OUT))
        dx, dw, db = K.empty(x.shape, dt), K.empty(w.shape, dt), K.empty((OUT,), dt)
        if torch is not None:
            import torch.nn.functional as TF

            tx, tw, tb, tdy = T(x), T(w), T(b), T(dy)
            t_lin = lambda: TF.linear(tx, tw, tb)  # noqa: E731
        else:
            t_lin = None
        bench(label, "linear_forward (tiled)", lambda: dense.linear_forward(x, w, b, y), t_lin, y, t_lin)
        bench(label, "linear_forward_naive", lambda: dense.linear_forward_naive(x, w, b, y), t_lin, y, t_lin)
        bench(
            label,
            "linear_backward_input",
            lambda: dense.linear_backward_input(dy, w, dx),
            (lambda: tdy @ tw) if torch else None,
        )
        bench(
            label,
            "linear_backward_weight",
            lambda: dense.linear_backward_weight(dy, x, dw),
            (lambda: tdy.T @ tx) if torch else None,
        )
        bench(
            label,
            "linear_backward_bias",
            lambda: dense.linear_backward_bias(dy, db),
            (lambda: tdy.sum(0)) if torch else None,
        )
        if OUT == 10:
            labels = cuda.to_device(rng.integers(0, OUT, N).astype(np.int64))
            dl = K.empty((N, OUT), dt)
            if torch is not None:
                tz = T(dy).clone().requires_grad_(True)
                tl = T(labels)
                t_ce = lambda: TF.cross_entropy(tz, tl)  # noqa: E731
                loss_t = TF.cross_entropy(tz, tl)
                t_ceb = lambda: torch.autograd.grad(loss_t, tz, retain_graph=True)  # noqa: E731
            else:
                t_ce = t_ceb = None
            bench(
                f"cross_entropy N={N} K={OUT}",
                "cross_entropy_forward",
                lambda: loss.cross_entropy_forward(dy, labels),
                t_ce,
            )
            bench(
                f"cross_entropy N={N} K={OUT}",
                "cross_entropy_backward",
                lambda: loss.cross_entropy_backward(dy, labels, dl),
                t_ceb,
            )
    return rows


if __name__ == "__main__":
    main()
