"""``numbacnn bench``: numbacnn's kernels and training steps side by side with other
implementations, in one table, a JSON file and a PNG chart.

    numbacnn bench                 # the full run (about 3 minutes on 2 cores, warm JIT cache)
    numbacnn bench --quick         # a smoke run: about 6 s warm, 35 s from a cold JIT cache
    numbacnn bench --kernel my_conv.py:conv2d   # YOUR conv2d in the same table, checked first

Rows: conv2d forward, input gradient (dx) and weight gradient (dw) on the lecture's LeNet
shapes and on ResNet/VGG 3x3 shapes (stride 1 and 2, and the 1x1 stride-2 downsample); max
and average pooling; batch norm forward and backward (training mode); a training step (SGD)
of LeNet-5 and ResNet-20 (resnet_cifar) at batch 64 and of a VGG block; ResNet-20 inference
(eval mode: numbacnn folds each batch norm into its conv, torch runs under no_grad); the
README recipe's warm LeNet-5 MNIST epoch.

Columns, each the MEDIAN of repeated warm calls (after a warm-up call that compiles):
numbacnn with all threads and with one; NumPy im2col (the textbook conv as one matrix
product: BLAS does the multiply-adds), SciPy (scipy.signal.correlate, conv forward only) and
PyTorch CPU, each external baseline in a process of its own (importing PyTorch beside Numba
slows Numba here).  numbacnn and PyTorch are timed IN TURN, case by case, for `rounds`
rounds (3 in a full run; `--rounds`): on a shared VM the same case can run 2x slower for a
minute, so two figures taken a minute apart compare the machine's moods, not the code.  Each
of the two figures is then the median over the rounds (an epoch: the fastest), and "range"
gives the rounds' lowest and highest "vs torch".  GFLOP/s = 2 x multiply-adds / time; "vs
torch" = torch's time / ours; "of peak" = the share of this machine's peak: cores x one
core's measured FMA throughput (`machine_peak`), printed at the top as the lecture's "0.15 TF
CPU" slide derives it, cores x FMA units x SIMD lanes x 2 x clock, with the clock that
measurement implies.

Your own kernels (``run(kernels=...)``, ``--kernel FILE.py:FUNCTION`` or ``MODULE:FUNCTION``,
repeatable): a function with the signature of ``numbacnn.functional.conv2d`` gets a column
on the conv2d forward rows, in this process, after numbacnn's. On each row it is first called
once and its output compared with an independent float64 oracle (the im2col product in
NumPy) within the conv tolerance of numbacnn.testing; only a right answer is timed, and a
wrong one (or one that changed its inputs, or an exception) shows as "wrong" (or "error")
with the reason, such as the first wrong element, below the table.
``numbacnn verify FILE.py:FUNCTION --op conv2d`` property-tests it further.
"""

import functools
import json
import numbers
import os
import subprocess
import sys
import time

import numpy as np

from ._io import atomic_write
from .shapes import conv_output_size

__all__ = ["cases", "machine_peak", "run", "check_kernel"]

IMPLS = ("numbacnn", "numbacnn 1 thread", "numpy im2col", "scipy", "torch")
HEADERS = {"numbacnn": "numbacnn", "numbacnn 1 thread": "1 thread", "numpy im2col": "im2col",
           "scipy": "scipy", "torch": "torch"}  # fmt: skip
ROW_KEYS = ("case", "kind", "macs", "vs_torch", "vs_torch_range", "of_peak")  # a JSON row's other keys
RESERVED = frozenset(IMPLS) | frozenset(HEADERS.values()) | frozenset(ROW_KEYS)  # not a kernel's label
EXTERNAL = ("numpy im2col", "scipy", "torch")  # each in its own process
ROUNDS = 3  # a full run's rounds of numbacnn and torch timed in turn (run, _interleave)


# ----------------------------------------------------------------------------------------
# the cases: (name, kind, parameters, multiply-adds)


def cases(quick=False):
    """[(name, kind, params, macs)]: kind is "conv2d", "dx", "dw", "max_pool2d", "avg_pool2d",
    "batch_norm", "batch_norm_backward", "step", "inference" or "epoch"; params a dict (shapes as
    lists)."""
    n = 8 if quick else 64
    convs = [  # (label, N, C_in, C_out, H, k, stride, pad)
        ("LeNet C1 1->6 5x5 32x32", n, 1, 6, 32, 5, 1, 0),
        ("LeNet C3 6->16 5x5 14x14", n, 6, 16, 14, 5, 1, 0),
        ("ResNet 16->16 3x3 32x32", n, 16, 16, 32, 3, 1, 1),
        ("ResNet 64->64 3x3 8x8", n, 64, 64, 8, 3, 1, 1),
        ("ResNet 16->32 3x3 s2 32x32", n, 16, 32, 32, 3, 2, 1),
        ("ResNet 16->32 1x1 s2 32x32", n, 16, 32, 32, 1, 2, 0),
        ("VGG 64->64 3x3 32x32 b32", n // 2 or 1, 64, 64, 32, 3, 1, 1),
    ]
    if quick:
        convs = convs[:2]
    out = []
    for label, N, ci, co, H, k, s, p in convs:
        Ho = conv_output_size(H, k, s, 2 * p)
        macs = N * co * Ho * Ho * ci * k * k
        params = dict(N=N, C_in=ci, C_out=co, H=H, k=k, stride=s, padding=p)
        out += [(f"{label} {kind}", kind, params, macs) for kind in ("conv2d", "dx", "dw")]
    for kind, label, N, C, H, k in [
        ("max_pool2d", "max pool 2x2 16x32x32", n, 16, 32, 2),
        ("avg_pool2d", "avg pool 2x2 6x28x28", n, 6, 28, 2),
    ]:
        out.append((label, kind, dict(N=N, C=C, H=H, k=k), N * C * H * H))  # one add per input
    for kind, label in (("batch_norm", "forward"), ("batch_norm_backward", "backward")):
        out.append((f"batch norm {label} 64x8x8", kind, dict(N=n, C=64, H=8), n * 64 * 64))
    steps = [("LeNet-5 step", "lenet5", 1, 32, n), ("ResNet-20 step", "resnet_cifar", 3, 32, n)]
    steps.append(("VGG block step", "vgg_block", 64, 32, n // 4 or 1))
    for label, model, C, H, N in steps[:1] if quick else steps:
        out.append((f"{label} b{N}", "step", dict(model=model, C=C, H=H, N=N), _step_macs(model, C, H, N)))
    if not quick:  # eval mode, no gradient: numbacnn folds each batch norm into its conv
        out.append((f"ResNet-20 inference b{n}", "inference", dict(model="resnet_cifar", C=3, H=32, N=n),
                    _step_macs("resnet_cifar", 3, 32, n) // 3))  # fmt: skip
    if not quick:  # the README recipe's warm epoch: 60,000 MNIST images, 938 steps
        out.append(("LeNet-5 MNIST epoch b64", "epoch", dict(model="lenet5", C=1, H=32, N=64),
                    _step_macs("lenet5", 1, 32, 60000)))  # fmt: skip
    return out


def _vgg_block():
    from .graph import Sequential
    from .layers import BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU

    return Sequential(
        ("conv1", Conv2d(64, 64, 3, padding=1, bias=False)), ("bn1", BatchNorm2d(64)), ("relu1", ReLU()),
        ("conv2", Conv2d(64, 64, 3, padding=1, bias=False)), ("bn2", BatchNorm2d(64)), ("relu2", ReLU()),
        ("pool", MaxPool2d(2)), ("flatten", Flatten()), ("fc", Linear(64 * 16 * 16, 10)),
    )  # fmt: skip


def _model(name, C):
    from .models import build_model

    return _vgg_block() if name == "vgg_block" else build_model(name, in_channels=C)


def _step_macs(model, C, H, N):
    """A training step's multiply-adds: 3x the forward's (forward, dx, dw)."""
    return 3 * N * _model(model, C).macs((1, C, H, H))


def _arrays(kind, p, dtype):
    rng = np.random.default_rng(0)
    if kind in ("conv2d", "dx", "dw"):
        Ho = conv_output_size(p["H"], p["k"], p["stride"], 2 * p["padding"])
        x = rng.standard_normal((p["N"], p["C_in"], p["H"], p["H"])).astype(dtype)
        w = rng.standard_normal((p["C_out"], p["C_in"], p["k"], p["k"])).astype(dtype)
        dy = rng.standard_normal((p["N"], p["C_out"], Ho, Ho)).astype(dtype)
        return x, w, dy
    if kind in ("step", "inference"):
        x = rng.standard_normal((p["N"], p["C"], p["H"], p["H"])).astype(dtype)
        return x, rng.integers(0, 10, p["N"])
    x = rng.standard_normal((p["N"], p["C"], p["H"], p["H"])).astype(dtype)
    return (x,)


# ----------------------------------------------------------------------------------------
# implementations: each returns a function of no arguments that runs the case once


def _numbacnn(kind, p, dtype):
    from . import functional as F
    from .optim import SGD

    a = _arrays(kind, p, dtype)
    conv = dict(stride=p.get("stride"), padding=p.get("padding"))
    if kind == "conv2d":
        return lambda: F.conv2d(a[0], a[1], **conv)
    if kind == "dx":
        return lambda: F.conv2d_backward(a[2], a[0], a[1], **conv, output_mask=(True, False, False))
    if kind == "dw":
        return lambda: F.conv2d_backward(a[2], a[0], a[1], **conv, output_mask=(False, True, False))
    if kind in ("max_pool2d", "avg_pool2d"):
        return lambda: getattr(F, kind)(a[0], p["k"])
    if kind == "batch_norm":
        C = p["C"]
        return lambda: F.batch_norm(a[0], None, None, np.zeros(C, dtype), np.ones(C, dtype), True)
    if kind == "batch_norm_backward":
        return lambda: F.batch_norm_backward(a[0], a[0], None)
    if kind == "epoch":
        return _numbacnn_epoch(dtype)
    model = _model(p["model"], p["C"]).astype(dtype)
    x, y = a
    if kind == "inference":
        model.eval()
        return lambda: model(x)
    opt = SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        model.zero_grad()
        logits = model(x)
        model.backward(F.cross_entropy_backward(logits, y), input_grad=False)  # as fit (and torch) do
        opt.step()

    return step


def _mnist():
    """(x_train, y_train) as `numbacnn train --dataset mnist` sees them (32 x 32, normalised),
    or None when the MNIST package is not installed."""
    from .data.mnist import MNISTIntegrityError, MNISTNotFoundError
    from .recipe import load_dataset

    try:
        return load_dataset("mnist")[:2]
    except (MNISTNotFoundError, MNISTIntegrityError):
        return None


def _numbacnn_epoch(dtype):
    """One epoch of the README recipe's training loop (train._train_epoch: shuffled batches of
    64, loss and hits on the device, SGD with momentum), without the progress bar, the test
    pass and the checkpoint."""
    from .data import DataLoader
    from .distributed import GradientExchange, World
    from .models import build_model
    from .optim import SGD
    from .train import _train_epoch

    data = _mnist()
    if data is None:
        return None
    model = build_model("lenet5").astype(dtype)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(*data, 64, shuffle=True, seed=0, dtype=dtype)
    world = World()  # one process, as fit builds it: its exchange of gradients does nothing
    exchange = GradientExchange(world).attach(model)
    return lambda: _train_epoch(model, opt, loader, 1, 1, False, None, world, exchange)


def _im2col(x, k, stride, pad):
    """x (N, C, H, W) -> cols (N, C*k*k, Ho*Wo): every receptive field as a column."""
    N, C, H, W = x.shape
    Ho, Wo = conv_output_size(H, k, stride, 2 * pad), conv_output_size(W, k, stride, 2 * pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((N, C, k, k, Ho, Wo), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i : i + stride * Ho : stride, j : j + stride * Wo : stride]
    return cols.reshape(N, C * k * k, Ho * Wo)


def _numpy(kind, p, dtype):
    if kind not in ("conv2d", "dx", "dw"):
        return None
    x, w, dy = _arrays(kind, p, dtype)
    k, s, pad = p["k"], p["stride"], p["padding"]
    N, C_out = dy.shape[:2]
    wm, dym = w.reshape(C_out, -1), dy.reshape(N, C_out, -1)
    if kind == "conv2d":
        return lambda: np.matmul(wm, _im2col(x, k, s, pad))
    if kind == "dw":
        return lambda: np.einsum("nop,nkp->ok", dym, _im2col(x, k, s, pad), optimize=True)

    def dx():  # col2im of w^T dy: every column's gradient added back to its receptive field
        cols = np.matmul(wm.T, dym).reshape(N, p["C_in"], k, k, *dy.shape[2:])
        H = x.shape[2]
        g = np.zeros((N, p["C_in"], H + 2 * pad, H + 2 * pad), dtype)
        Ho = dy.shape[2]
        for i in range(k):
            for j in range(k):
                g[:, :, i : i + s * Ho : s, j : j + s * Ho : s] += cols[:, :, i, j]
        return g[:, :, pad : pad + H, pad : pad + H]

    return dx


def _oracle_conv2d(x, w, stride, pad):
    """conv2d(x, w) (no bias, groups 1, dilation 1) in float64 as one im2col product: an
    oracle that shares no code with numbacnn's kernels."""
    # x: (N, C_in, H, W)   w: (C_out, C_in, k, k)  ->  (N, C_out, H_out, W_out)
    N, C_out, k = x.shape[0], w.shape[0], w.shape[2]
    H_out, W_out = (
        conv_output_size(x.shape[2], k, stride, 2 * pad),
        conv_output_size(x.shape[3], k, stride, 2 * pad),
    )
    cols = _im2col(x.astype(np.float64), k, stride, pad)  # cols: (N, C_in*k*k, H_out*W_out)
    return np.matmul(w.reshape(C_out, -1).astype(np.float64), cols).reshape(N, C_out, H_out, W_out)


def check_kernel(fn, x, w, stride, padding):
    """None when fn(x, w, None, stride, padding) (the signature of functional.conv2d) returns
    the conv2d of x and w and leaves x and w as they were, else why not, in one line
    ("returned ...", "wrong: ...", "modified ..." or "raised ..."). The oracle is
    `_oracle_conv2d`; the tolerance numbacnn.testing's "conv" (rtol 1e-4 for float32, 1e-10
    for float64, atol scaled by max|expected|)."""
    from .testing.tolerances import tolerances

    expected = _oracle_conv2d(x, w, stride, padding)
    x0, w0 = x.copy(), w.copy()
    try:
        got = fn(x, w, None, stride, padding)
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # the user's kernel failed (or exited): its own error, one line
        return _raised(e)
    for name, before, after in (("x", x0, x), ("weight", w0, w)):  # (each kernel gets fresh arrays)
        if after.shape != before.shape or not np.array_equal(before, after, equal_nan=True):
            return f"modified its argument {name} (a conv2d must leave its inputs as they were)"
    if not isinstance(got, np.ndarray):
        return f"returned a {type(got).__name__}, expected a NumPy array of shape {expected.shape}"
    got = np.asarray(got)  # a subclass (a masked array) is judged by the values it holds
    if got.shape != expected.shape or got.dtype != x.dtype:
        return f"returned {got.dtype} {got.shape}, expected {x.dtype} {expected.shape}"
    rtol, atol = tolerances(x.dtype, "conv", expected)
    bad = ~np.isclose(got.astype(np.float64), expected, rtol=rtol, atol=atol)  # NaN counts as wrong
    if not bad.any():
        return None
    i = tuple(int(v) for v in np.argwhere(bad)[0])
    return (f"wrong: y{list(i)} = {got[i]:.6g}, expected {expected[i]:.6g} ({int(bad.sum())} of {bad.size} "
            f"elements outside rtol {rtol:g}, atol {atol:.3g})")  # fmt: skip


def _raised(e):
    """'raised TYPE: first line of the message' (at most 200 characters), for any exception a
    user's kernel raises, even one whose str() fails."""
    if isinstance(e, SystemExit):
        code = e.code[:200] if isinstance(e.code, str) else e.code
        return f"raised SystemExit (it called sys.exit({code!r}))"
    try:
        text = str(e).strip()
    except Exception:  # noqa: BLE001 - its __str__ failed: name the type alone
        text = ""
    first = text.splitlines()[0][:200] if text else ""
    return f"raised {type(e).__name__}" + (f": {first}" if first else "")


def _user_column(fn, quick, dtype):
    """({case: seconds or None}, {case: why not timed}) for a user's conv2d on the forward rows."""
    times, why = {}, {}
    for name, kind, p, _ in cases(quick):
        if kind != "conv2d":
            continue
        x, w, _ = _arrays(kind, p, dtype)
        problem = check_kernel(fn, x, w, p["stride"], p["padding"])
        if problem:
            times[name], why[name] = None, problem
            continue
        args = (x, w, None, p["stride"], p["padding"])
        try:
            times[name] = median_time(lambda args=args: fn(*args), quick)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # it failed on a later call: an error, not a crash
            times[name] = None
            head, _, rest = _raised(e).partition(":")
            why[name] = f"{head} while it was timed" + (f":{rest}" if rest else "")
    return times, why


def _scipy(kind, p, dtype):
    if kind != "conv2d":
        return None
    from .testing.oracles import scipy_conv2d

    x, w, _ = _arrays(kind, p, dtype)
    return lambda: scipy_conv2d(x, w, None, p["stride"], p["padding"])


def _torch_model(name, C):
    """The numbacnn model's graph rebuilt from torch modules, node by node (same shapes)."""
    import torch
    from torch import nn

    from . import layers as L

    net = _model(name, C)
    nodes = net.flat_nodes((1, C, 32, 32))

    def mirror(layer):
        if isinstance(layer, L.Conv2d):
            return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                             layer.padding, bias=layer.bias is not None)  # fmt: skip
        if isinstance(layer, L.BatchNorm2d):
            return nn.BatchNorm2d(layer.num_features)
        if isinstance(layer, L.Linear):
            return nn.Linear(layer.in_features, layer.out_features)
        if isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
            cls = nn.MaxPool2d if isinstance(layer, L.MaxPool2d) else nn.AvgPool2d
            return cls(layer.kernel_size, layer.stride, layer.padding)
        simple = {L.ReLU: nn.ReLU(), L.Tanh: nn.Tanh(), L.Sigmoid: nn.Sigmoid(), L.Flatten: nn.Flatten()}
        for cls, module in simple.items():
            if isinstance(layer, cls):
                return module
        if isinstance(layer, L.Dropout):
            return nn.Dropout(layer.p)
        if isinstance(layer, L.GlobalAvgPool2d):
            return nn.AdaptiveAvgPool2d(1)
        if isinstance(layer, L.Add):
            return None
        raise TypeError(f"bench: no torch mirror for {type(layer).__name__}")

    class Mirror(nn.Module):
        def __init__(self):
            super().__init__()
            self.ops = nn.ModuleList([mirror(layer) or nn.Identity() for _, layer, _, _ in nodes])

        def forward(self, x):
            values = {"input": x}
            for (path, layer, inputs, _), op in zip(nodes, self.ops, strict=True):
                args = [values[i] for i in inputs]
                values[path] = torch.add(*args) if isinstance(layer, L.Add) else op(*args)
            return values[nodes[-1][0]]

    return Mirror()


def _torch_epoch(dtype):
    """The same epoch in PyTorch's idiom: a fresh permutation, batches of 64 indexed from
    the tensors, zero_grad / forward / cross_entropy / backward / step, loss and hits read
    every batch."""
    import torch
    import torch.nn.functional as TF

    data = _mnist()
    if data is None:
        return None
    x, y = (torch.from_numpy(v) for v in data)
    x = x.to(getattr(torch, np.dtype(dtype).name))
    model = _torch_model("lenet5", 1).to(x.dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def epoch():
        loss_sum, hits = 0.0, 0
        order = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = order[i : i + 64]
            xb, yb = x[idx], y[idx]
            opt.zero_grad()
            logits = model(xb)
            loss = TF.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            hits += int((logits.argmax(1) == yb).sum())
        return loss_sum, hits

    return epoch


def _torch(kind, p, dtype):
    import torch
    import torch.nn.functional as TF

    a = [torch.from_numpy(v) for v in _arrays(kind, p, dtype)]
    if kind in ("conv2d", "dx", "dw"):
        x, w, dy = a
        s, pad, C_out = p["stride"], p["padding"], p["C_out"]
        if kind == "conv2d":
            return lambda: TF.conv2d(x, w, None, s, pad)
        mask = [kind == "dx", kind == "dw", False]
        geometry = ([C_out], [s, s], [pad, pad], [1, 1], False, [0, 0], 1)
        return lambda: torch.ops.aten.convolution_backward(dy, x, w, *geometry, mask)
    if kind == "max_pool2d":
        return lambda: TF.max_pool2d(a[0], p["k"])
    if kind == "avg_pool2d":
        return lambda: TF.avg_pool2d(a[0], p["k"])
    if kind == "batch_norm":
        stats = torch.zeros(p["C"], dtype=a[0].dtype), torch.ones(p["C"], dtype=a[0].dtype)
        return lambda: TF.batch_norm(a[0], *stats, training=True)
    if kind == "batch_norm_backward":
        x = a[0].clone().requires_grad_(True)
        y = TF.batch_norm(x, None, None, training=True)
        g = torch.randn_like(y)
        return lambda: torch.autograd.grad(y, x, g, retain_graph=True)
    if kind == "epoch":
        return _torch_epoch(dtype)
    model = _torch_model(p["model"], p["C"]).to(getattr(torch, np.dtype(dtype).name))
    x, y = a
    if kind == "inference":
        model.eval()

        def forward():
            with torch.no_grad():
                return model(x)

        return forward
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad()
        TF.cross_entropy(model(x), y).backward()
        opt.step()

    return step


# ----------------------------------------------------------------------------------------
# timing and the machine


def _time_case(fn, kind, quick, tries=2):
    """Seconds of one case: an epoch's fastest of `tries` whole runs (warmed by the step
    rows), any other case's `median_time`."""
    if kind == "epoch":
        return min(_seconds(fn) for _ in range(tries))
    return median_time(fn, quick)


def median_time(fn, quick):
    """Median seconds of one call of fn() over >= 3 (quick) or >= 5 calls filling 0.2 s,
    after one untimed call (the JIT compiles or loads its kernels there)."""
    fn()
    times, start = [], time.perf_counter()
    while len(times) < (3 if quick else 5) or (
        not quick and time.perf_counter() - start < 0.2 and len(times) < 200
    ):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _maker(impl):
    """The function that makes one implementation's case (`_numbacnn`, `_numpy`, `_scipy`,
    `_torch`); for PyTorch, its threads set to this process's cores first."""
    if impl == "torch":
        import torch

        torch.set_num_threads(len(os.sched_getaffinity(0)))
    return {"numbacnn": _numbacnn, "numpy im2col": _numpy, "scipy": _scipy, "torch": _torch}[impl]


def _epoch_tries(rounds):
    """Whole epochs timed per round: the fastest of 2 in a single round, else 1 per round (the
    fastest over the rounds is taken)."""
    return 2 if rounds == 1 else 1


def _time_all(impl, quick, dtype):
    """{case name: median seconds} for one implementation (None where it does not apply)."""
    make = _maker(impl)
    result = {}
    for name, kind, params, _ in cases(quick):
        if impl == "scipy" and kind == "conv2d" and not quick and params["C_in"] * params["C_out"] > 256:
            result[name] = None  # scipy's per-(image, channel) correlations: minutes at VGG's widths
            continue
        fn = make(kind, params, dtype)
        result[name] = None if fn is None else _time_case(fn, kind, quick)
    return result


def machine_peak(dtype=np.float32):
    """(GFLOP/s, how it was derived): cores x the FMA throughput one core sustains, measured
    (kernels/cpu/peak.py: a register-only loop of independent fused multiply-adds, ~0.1 s,
    once per process), shown as the lecture's formula, cores x FMA units x SIMD lanes of
    `dtype` x 2 x clock, with the clock it implies.  The lanes and the vendor come from the
    CPU flags in /proc/cpuinfo; 2 FMA units per core are assumed; AMD's family 25 (Zen 3, Zen
    4) runs AVX-512 on 256-bit halves, so its lanes are counted at 256 bits.  /proc/cpuinfo's
    clock, and the peak it would give, are printed beside it: under a hypervisor it can be far
    below the one the cores run at (an AMD EPYC VM: 2.60 GHz reported, 3.1-4.0 measured, the
    turbo moving with the host's load; ``run`` says so when a kernel beats the peak)."""
    return _machine_peak(np.dtype(dtype).name)


@functools.cache
def _machine_peak(dtype):
    """machine_peak for the dtype's name (one measurement per dtype and process)."""
    cores = len(os.sched_getaffinity(0))
    flags, mhz, model, vendor, family = "", None, "unknown CPU", "", None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "flags" and not flags:
                    flags = value
                elif key == "cpu MHz" and mhz is None:
                    mhz = float(value)
                elif key == "model name" and model == "unknown CPU":
                    model = value
                elif key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "cpu family" and family is None:
                    family = int(value)
    except OSError:
        pass
    bits, isa = (
        (512, "AVX-512")
        if "avx512f" in flags.split()
        else (256, "AVX2")
        if "avx2" in flags.split()
        else (128, "SSE")
    )
    if bits == 512 and vendor == "AuthenticAMD" and family == 25:
        bits, isa = 256, "AVX-512 on 256-bit units (AMD family 25)"
    lanes = bits // (8 * np.dtype(dtype).itemsize)
    ghz = (mhz or 2000.0) / 1000.0
    from .kernels.cpu.peak import fma_gflops  # (Numba: imported when a bench runs, not with the CLI)

    per_core = fma_gflops(dtype)
    peak = cores * per_core
    ran = per_core / (2 * lanes * 2)  # the clock the measured loop implies, in GHz
    name = np.dtype(dtype).name
    how = (f"{cores} cores x {per_core:.0f} GFLOP/s measured on one core (a loop of independent FMAs on "
           f"registers) = {cores} cores x 2 FMA units x {lanes} {name} lanes ({isa}) x 2 flops x {ran:.2f} "
           f"GHz = {peak:.0f} GFLOP/s ({model}; /proc/cpuinfo reports {ghz:.2f} GHz, which would give "
           f"{cores * 2 * lanes * 2 * ghz:.0f})")  # fmt: skip
    return peak, how


def cpu_times():
    """(steal, wanted): the machine's CPU time so far in clock ticks, all CPUs, from the first
    line of /proc/stat: steal, the time a hypervisor gave this VM's vCPUs to someone else while
    they had work, and wanted, the time they had work (all but idle and iowait: a vCPU left
    idle by a one-thread run does not dilute the share); None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks) - ticks[3] - ticks[4]


def steal_share(before, after):
    """The share of the wanted CPU time stolen between two `cpu_times` readings, in [0, 1];
    None if unknown (no readings, or no time wanted in between)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return min(1.0, max(0.0, (after[0] - before[0]) / (after[1] - before[1])))


def _external(impl, quick, dtype):
    """Run one external baseline in a process of its own; {case: seconds} or an error string."""
    cmd = [sys.executable, "-m", "numbacnn.bench", "--worker", impl, "--dtype", np.dtype(dtype).name]
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    if done.returncode != 0:
        return done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])


class _Server:
    """An external baseline (PyTorch) in a process of its own that times one case per request,
    so that its rows can be measured in turn with numbacnn's (`_interleave`): ``time(name)`` is
    the case's seconds (None where it does not apply). If the process fails (PyTorch missing,
    a crash), ``error`` says why in one line and every later request is None."""

    def __init__(self, impl, quick, dtype, rounds):
        import tempfile

        self.error = None
        self._log = tempfile.TemporaryFile()  # its stderr (a pipe nobody reads could fill up)
        cmd = [sys.executable, "-m", "numbacnn.bench", "--worker", impl, "--dtype", np.dtype(dtype).name,
               "--serve", "--rounds", str(rounds)] + (["--quick"] if quick else [])  # fmt: skip
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        try:
            self._answer()  # it is ready (PyTorch imported): nothing else runs while a case is timed
        except BaseException:  # interrupted while it starts: it must not go on alone
            self.close(kill=True)
            raise

    def _answer(self):
        line = self._proc.stdout.readline()
        if not line:  # it has exited
            self.close()
            self._log.seek(0)
            lines = self._log.read().decode("utf-8", "replace").strip().splitlines()
            self.error = lines[-1] if lines else f"exit {self._proc.returncode}"
            return None
        return json.loads(line)

    def time(self, name):
        if self.error is not None:
            return None
        try:
            self._proc.stdin.write(name + "\n")
            self._proc.stdin.flush()
        except OSError:  # it has exited: the pipe is closed
            pass
        got = self._answer()
        return None if got is None else got["seconds"]

    def close(self, kill=False):
        """End the process: it ends when its input closes (killed if it has not in 30 s), or at
        once with `kill` (an interrupted run: not after the case it is timing)."""
        if kill:
            self._proc.kill()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def _interleave(names, ours, theirs, rounds, best=()):
    """Time each case with two implementations in turn, `rounds` times, case by case (ours,
    theirs; in the next round theirs first), so that both see the machine as it was within
    seconds of each other. ours(name) and theirs(name) return seconds or None.

    Returns ({name: ours}, {name: theirs}, {name: (lowest, highest) per-round ratio theirs /
    ours}): the median over the rounds, or the fastest for the names in `best` (whole epochs);
    None where either gave None."""
    mine, other, spread = {}, {}, {}
    for name in names:
        a, b = [], []
        for r in range(rounds):
            if r % 2 == 0:
                a.append(ours(name))
                b.append(theirs(name))
            else:
                b.append(theirs(name))
                a.append(ours(name))
        pick = min if name in best else np.median
        mine[name] = None if None in a else float(pick(a))
        other[name] = None if None in b else float(pick(b))
        ratios = [t / o for o, t in zip(a, b, strict=True) if o and t]
        spread[name] = (min(ratios), max(ratios)) if len(ratios) == rounds else None
    return mine, other, spread


def run(quick=False, out="bench", dtype=np.float32, say=print, kernels=(), rounds=None):
    """Time every case with every implementation, print the table, write OUT/bench.json and
    OUT/bench.png; return the JSON-ready dict.

    rounds: how many times numbacnn and PyTorch time each case in turn (`_interleave`; default
    3, or 1 with `quick`); a whole number >= 1 (ValueError).

    kernels: [(label, function)], your conv2d kernels (the signature of functional.conv2d),
    each a column on the conv2d forward rows, timed only where `check_kernel` finds its
    output right; the label is the JSON's key and heads the printed column (`_headers`), and
    must differ from the others and from RESERVED, the built-in columns and row keys
    (ValueError)."""
    import numba

    rounds = (1 if quick else ROUNDS) if rounds is None else rounds
    if isinstance(rounds, bool) or not isinstance(rounds, numbers.Integral) or rounds < 1:
        raise ValueError(f"bench: rounds must be a whole number >= 1, got {rounds!r}")
    rounds = int(rounds)  # a NumPy integer too (the JSON report takes Python's)
    labels = [label for label, _ in kernels]
    clash = [label for label in labels if label in RESERVED or labels.count(label) > 1]
    if clash:
        raise ValueError(
            f"bench: kernel label {clash[0]!r} is used twice or is a built-in column or row key "
            f"({', '.join(sorted(RESERVED))})"
        )
    peak, how = machine_peak(dtype)
    threads = numba.get_num_threads()
    say(f"machine peak ({np.dtype(dtype).name}): {how}; numbacnn runs {threads} threads")
    table = {name: (kind, params) for name, kind, params, _ in cases(quick)}
    ticks = {}  # {implementation: [stolen, wanted]}: /proc/stat's ticks while it ran

    def metered(impl, fn):
        def timed(*args):
            before = cpu_times()
            try:
                return fn(*args)
            finally:
                after = cpu_times()
                if before is not None and after is not None:
                    got = ticks.setdefault(impl, [0, 0])
                    got[0] += after[0] - before[0]
                    got[1] += after[1] - before[1]

        return timed

    made = {}  # {case: numbacnn's function}, made once for all the rounds

    def ours(name):
        kind, params = table[name]
        if name not in made:
            made[name] = _numbacnn(kind, params, dtype)
        return None if made[name] is None else _time_case(made[name], kind, quick, _epoch_tries(rounds))

    notes, checks, results = {}, {}, {}
    server = _Server("torch", quick, dtype, rounds)
    try:
        epochs = {name for name, (kind, _) in table.items() if kind == "epoch"}
        results["numbacnn"], results["torch"], spread = _interleave(
            list(table), metered("numbacnn", ours), metered("torch", server.time), rounds, epochs
        )
    except BaseException:  # an interrupt: the case PyTorch is timing is not waited for
        server.close(kill=True)
        raise
    server.close()
    if server.error is not None:
        notes["torch"] = server.error
        results["torch"] = {}
    numba.set_num_threads(1)
    try:
        results["numbacnn 1 thread"] = metered("numbacnn 1 thread", _time_all)("numbacnn", quick, dtype)
    finally:
        numba.set_num_threads(threads)
    for label, fn in kernels:
        results[label], checks[label] = _user_column(fn, quick, dtype)
    for impl in EXTERNAL:
        if impl == "torch":
            continue  # timed above, in turn with numbacnn
        got = metered(impl, _external)(impl, quick, dtype)
        if isinstance(got, str):
            notes[impl] = got
            results[impl] = {}
            ticks.pop(impl, None)
        else:
            results[impl] = got
    steal = {impl: None for impl in IMPLS}  # {implementation: its share of CPU time stolen}
    if "torch" in notes:
        ticks.pop("torch", None)
    steal.update({impl: steal_share((0, 0), tuple(t)) for impl, t in ticks.items()})
    impls = IMPLS[:2] + tuple(labels) + IMPLS[2:]
    rows = []
    for name, kind, _, macs in cases(quick):
        row = {"case": name, "kind": kind, "macs": macs}
        for impl in impls:
            t = results[impl].get(name)
            row[impl] = None if t is None else {"ms": 1e3 * t, "gflops": 2 * macs / t / 1e9}
        ours, torch_t = results["numbacnn"].get(name), results["torch"].get(name)
        row["vs_torch"] = None if not (ours and torch_t) else torch_t / ours
        row["of_peak"] = 2 * macs / ours / 1e9 / peak if ours else None
        got = spread.get(name) if rounds > 1 and "torch" not in notes else None
        row["vs_torch_range"] = list(got) if got else None
        rows.append(row)
    if rounds > 1:
        say(f"numbacnn and torch timed in turn, case by case, {rounds} rounds: each time the median "
            "over the rounds (an epoch: the fastest); 'range' = the rounds' lowest and highest "
            "vs torch")  # fmt: skip
    _print_table(rows, say, labels, checks)
    for impl, why in notes.items():
        say(f"{impl}: not run ({why})")
    for label in labels:
        for case, why in checks[label].items():
            say(f"{label} on {case}: not timed, {why}")
    best = max(
        (r[i]["gflops"], i, r["case"])
        for r in rows
        for i in impls
        if r[i] and r["kind"] in ("conv2d", "dx", "dw")
    )
    if best[0] > peak:
        say(f"{best[1]} reached {best[0]:.0f} GFLOP/s on {best[2]}, above the peak measured at the start: "
            "the cores' clock moved during the run (turbo, hypervisor): 'of peak' is too high")  # fmt: skip
    say("pooling and batch norm count one flop per element; they are bound by memory, not flops")
    known = {impl: share for impl, share in steal.items() if share is not None}
    if known:
        shares = ", ".join(f"{impl} {100 * share:.1f}%" for impl, share in known.items())
        say(f"CPU time the hypervisor gave to other tenants while each ran (steal, /proc/stat): "
            f"{shares} (a few % stalls a 2-thread kernel's threads at its barriers: compare rows "
            "within a run)")  # fmt: skip
    report = {"machine": how, "peak_gflops": peak, "threads": threads, "dtype": np.dtype(dtype).name,
              "quick": quick, "rounds": rounds, "notes": notes, "kernels": labels, "kernel_checks": checks,
              "steal": steal, "rows": rows}  # fmt: skip
    os.makedirs(out, exist_ok=True)
    text = json.dumps(report, indent=1).encode("utf-8")
    atomic_write(os.path.join(out, "bench.json"), lambda f: f.write(text))
    _chart(rows, os.path.join(out, "bench.png"), how, impls, checks)
    say(f"wrote {os.path.join(out, 'bench.json')} and {os.path.join(out, 'bench.png')}")
    return report


def _headers(labels):
    """{label: its column header}: the label when it fits 9 characters (a space between
    columns) and is unique among the headers, else "#<i>" (no function is named so; a legend
    line says which kernel it is)."""
    short = [label[:9] for label in labels]
    taken = set(HEADERS.values())
    return {
        label: s if len(label) <= 9 and short.count(s) == 1 and s not in taken else f"#{i + 1}"
        for i, (label, s) in enumerate(zip(labels, short, strict=True))
    }


def _print_table(rows, say, labels=(), checks=None):
    ranges = any(r.get("vs_torch_range") for r in rows)
    headers = _headers(labels)
    cols = [(impl, HEADERS[impl]) for impl in IMPLS[:2]]
    cols += [(label, headers[label]) for label in labels]
    cols += [(impl, HEADERS[impl]) for impl in IMPLS[2:]]
    for label, head in headers.items():
        if head != label:
            say(f"{head} = {label}")
    head = (
        f"{'case':34s}"
        + "".join(f"{label:>10s}" for _, label in cols)
        + f"{'GFLOP/s':>9s}{'vs torch':>9s}"
        + (f"{'range':>11s}" if ranges else "")
        + f"{'of peak':>8s}"
    )
    say(
        "median ms per call; GFLOP/s and 'of peak' are numbacnn's (all threads); "
        "vs torch = torch ms / numbacnn ms"
    )
    say(head)
    say("-" * len(head))

    def cell(r, impl):
        if r[impl]:
            return f"{r[impl]['ms']:10.2f}"
        why = (checks or {}).get(impl, {}).get(r["case"], "")
        return f"{'error' if why.startswith('raised') else 'wrong' if why else '-':>10s}"

    for r in rows:
        cells = "".join(cell(r, impl) for impl, _ in cols)
        g = f"{r['numbacnn']['gflops']:9.1f}" if r["numbacnn"] else f"{'-':>9s}"
        vs = f"{r['vs_torch']:9.2f}" if r["vs_torch"] else f"{'-':>9s}"
        pk = f"{100 * r['of_peak']:7.1f}%" if r["of_peak"] else f"{'-':>8s}"
        got = r.get("vs_torch_range")
        rg = (f"{f'{got[0]:.2f}-{got[1]:.2f}':>11s}" if got else f"{'-':>11s}") if ranges else ""
        say(f"{r['case'][:34]:34s}{cells}{g}{vs}{rg}{pk}")


def _chart(rows, path, how, impls=IMPLS, checks=None):
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    untimed = {impl: len(why) for impl, why in (checks or {}).items() if why}
    impls = [i for i in impls if any(r[i] for r in rows) or i in untimed]
    colours = colormaps["tab20" if len(impls) > 10 else "tab10"].colors
    fig = Figure(figsize=(11, 0.32 * len(rows) + 1.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    height = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        ys = [i + k * height for i in range(len(rows))]
        label = impl + (f" (not timed on {untimed[impl]} rows: wrong or error)" if impl in untimed else "")
        label = "kernel " + label if label.startswith("_") else label  # matplotlib hides "_..." labels
        values = [r[impl]["gflops"] if r[impl] else 0 for r in rows]
        ax.barh(ys, values, height, label=label, color=colours[k % len(colours)])
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(rows))], [r["case"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("GFLOP/s (2 x multiply-adds / median time)")
    ax.set_title("numbacnn bench: " + how.replace(" = ", "\n= ", 1), fontsize=7)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def _serve(impl, quick, dtype, rounds):
    """`_Server`'s other end: read case names, one per line, and answer each with a JSON line
    {"seconds": s or null}; end when the input ends."""
    make = _maker(impl)
    table = {name: (kind, params) for name, kind, params, _ in cases(quick)}
    made = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        name = line.rstrip("\n")
        kind, params = table[name]
        if name not in made:
            made[name] = make(kind, params, dtype)
        fn = made[name]
        seconds = None if fn is None else _time_case(fn, kind, quick, _epoch_tries(rounds))
        print(json.dumps({"seconds": seconds}), flush=True)


def _worker(argv):
    import argparse

    ap = argparse.ArgumentParser(prog="python -m numbacnn.bench")
    ap.add_argument("--worker", choices=EXTERNAL, required=True)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--serve", action="store_true", help="time the cases named on stdin, one per line")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    if args.worker == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("PyTorch is not installed (pip install torch==2.13.0, the CPU build)")
    if args.serve:
        _serve(args.worker, args.quick, np.dtype(args.dtype), args.rounds)
    else:
        print(json.dumps(_time_all(args.worker, args.quick, np.dtype(args.dtype))))


if __name__ == "__main__":
    _worker(sys.argv[1:])
