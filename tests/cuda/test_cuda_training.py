"""Training on the GPU, proven under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1):

* the implicit-GEMM conv kernels (kernels/cuda/conv/gemm.py) against the naive ones, on
  strided, padded, dilated, grouped and depthwise convs, the weight gradient split or not;
* LeNet-5 and a small ResNet (BasicBlock with a downsample) moved with Module.to("cuda")
  give the CPU's logits, input gradient, parameter gradients, running statistics, and the
  parameters and momentum after two SGD steps;
* a training step copies nothing from the device to the host, however deep the model;
* `numbacnn train --device cuda` runs end to end and matches `--device cpu`.

The simulator runs every CUDA thread as Python, so the shapes are tiny; it skips itself
without the simulator or a GPU (tests/cuda/conftest.py).
"""

import copy
import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    try:
        from numba import cuda as _cuda

        _usable = _cuda.is_available()
    except Exception:  # pragma: no cover
        _usable = False
    if not _usable:
        pytest.skip("needs the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) or a GPU", allow_module_level=True)

import warnings  # noqa: E402

from numba import cuda  # noqa: E402

import numbacnn  # noqa: E402
from numbacnn import functional as F  # noqa: E402
from numbacnn.data import DataLoader, DeviceLoader  # noqa: E402
from numbacnn.kernels import is_device_array  # noqa: E402
from numbacnn.kernels.cuda.conv import gemm, naive  # noqa: E402
from numbacnn.layers import Conv2d, Flatten, Linear, ReLU  # noqa: E402
from numbacnn.models import BasicBlock, lenet5, resnet  # noqa: E402
from numbacnn.optim import SGD  # noqa: E402
from numbacnn.shapes import conv2d_geometry  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CASES = [  # x shape, w shape, stride, padding, dilation, groups
    ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    ((2, 4, 9, 9), (6, 2, 3, 3), 2, 1, 1, 2),
    ((1, 6, 8, 8), (6, 1, 3, 3), 1, 1, 2, 6),
    ((3, 5, 5, 5), (20, 5, 1, 1), 2, 0, 1, 1),
    ((2, 3, 6, 7), (5, 3, 2, 4), 3, 2, 1, 1),
    ((0, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}x{c[1]}s{c[2]}p{c[3]}d{c[4]}g{c[5]}" for c in CASES])
def test_gemm_conv_kernels_agree_with_the_naive_ones(case, dtype):
    x_shape, w_shape, stride, padding, dilation, groups = case
    rng = np.random.default_rng(sum(x_shape) + sum(w_shape))
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    geo = conv2d_geometry("test", x_shape, w_shape, stride, padding, dilation, groups)
    args = geo.kernel_args
    y_shape = (x_shape[0], w_shape[0], geo.H_out, geo.W_out)
    dy = cuda.to_device(rng.standard_normal(y_shape).astype(dtype))
    x_d, w_d, b_d = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    tol = 1e-12 if dtype == np.float64 else 2e-5

    def out(shape):
        return cuda.to_device(np.full(shape, np.nan, dtype))  # every element must be written

    pairs = []
    y1, y2 = out(y_shape), out(y_shape)
    gemm.conv2d_forward(x_d, w_d, b_d, y1, *args)
    naive.conv2d_forward_naive(x_d, w_d, b_d, y2, *args)
    pairs.append(("y", y1, y2))
    dx1, dx2 = out(x_shape), out(x_shape)
    gemm.conv2d_backward_input(dy, w_d, dx1, *args)
    naive.conv2d_backward_input_naive(dy, w_d, dx2, *args)
    pairs.append(("dx", dx1, dx2))
    dw2 = out(w_shape)
    naive.conv2d_backward_weight_naive(dy, x_d, dw2, *args)
    for splits in (None, 1, 3):
        dw1 = out(w_shape)
        gemm.conv2d_backward_weight(dy, x_d, dw1, *args, splits=splits)
        pairs.append((f"dw (splits {splits})", dw1, dw2))
    for name, got, want in pairs:
        got, want = got.copy_to_host(), want.copy_to_host()
        assert not np.isnan(got).any(), f"{name}: an element was not written"
        scale = 1.0 + np.abs(want).max(initial=0.0)
        assert np.abs(got - want).max(initial=0.0) <= tol * scale, name


def test_weight_gradient_splits_fill_the_device():
    """The split rule gives a launch of at least TARGET_BLOCKS blocks when the positions allow."""
    assert gemm.weight_splits(1, 10**6) == gemm.TARGET_BLOCKS
    assert gemm.weight_splits(10**4, 10**6) == 1
    assert gemm.weight_splits(1, gemm.MIN_SPLIT * 2) == min(2, gemm.TARGET_BLOCKS)


def _train_two_steps(model, x, y, device):
    """Two SGD steps (momentum, Nesterov, weight decay) on a copy of `model`'s state; returns
    (logits, dx, grads, state after step 1's backward, state and momentum after 2 steps)."""
    if device == "cuda":
        model.to("cuda")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True)
    batches = list(DeviceLoader(DataLoader(x, y, len(y), dtype=x.dtype))) if device == "cuda" else [(x, y)]
    xb, yb = batches[0]
    out = {}
    for step in range(2):
        logits = model(xb)
        model.zero_grad()
        dx = model.backward(F.cross_entropy_backward(logits, yb))
        if step == 0:
            out["logits"] = numbacnn.kernels.backend(logits).to_host(logits)
            out["dx"] = numbacnn.kernels.backend(dx).to_host(dx)
            out["grads"] = {n: numbacnn.kernels.backend(p.grad).to_host(p.grad).copy()
                            for n, p in model.named_parameters()}  # fmt: skip
        opt.step()
    out["state"] = model.state_dict()
    out["optimizer"] = {k: v for k, v in opt.state_dict().items() if k.startswith("momentum_buffer")}
    return out


def _compare(cpu, gpu, tol):
    for key in ("logits", "dx"):
        np.testing.assert_allclose(gpu[key], cpu[key], rtol=tol, atol=tol, err_msg=key)
    for group in ("grads", "state", "optimizer"):
        assert gpu[group].keys() == cpu[group].keys()
        for name in cpu[group]:
            np.testing.assert_allclose(gpu[group][name], cpu[group][name], rtol=tol, atol=tol,
                                       err_msg=f"{group} {name}")  # fmt: skip


def _pair(build, x, y, tol):
    numbacnn.random.seed(0)
    cpu = _train_two_steps(build(), x, y, "cpu")
    numbacnn.random.seed(0)
    model = build()
    gpu = _train_two_steps(model, x, y, "cuda")
    assert model.device == "cuda" and all(is_device_array(p.data) for p in model.parameters())
    _compare(cpu, gpu, tol)
    return model


def test_lenet5_trains_on_cuda_as_on_the_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 1, 32, 32)).astype(np.float64)
    _pair(lambda: lenet5().astype(np.float64), x, np.array([3]), 1e-9)


def _small_resnet():
    """conv 3x3 -> bn -> relu, BasicBlock(4 -> 4), BasicBlock(4 -> 8, stride 2, downsample),
    global average pool, linear."""
    return resnet(BasicBlock, (1, 1), num_classes=3, in_channels=2, widths=(4, 8), stem="cifar")


def test_small_resnet_trains_on_cuda_as_on_the_cpu():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    model = _pair(_small_resnet, x, np.array([0, 2]), 2e-4)
    assert any("downsample" in name for name, _ in model.named_modules())
    bn = [m for m in model.modules() if hasattr(m, "running_var")]
    assert bn and all(is_device_array(m.running_var) for m in bn)
    assert int(bn[0].num_batches_tracked) == 2


def test_small_resnet_eval_folds_on_cuda_as_on_the_cpu():
    """Eval mode: the folded Conv -> BN [-> ReLU] steps (numbacnn.fusion) on the device give
    the CPU's output and gradients."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 6, 6))
    dy = rng.standard_normal((2, 3))
    results, first = [], _small_resnet().astype(np.float64).eval()
    for device in ("cpu", "cuda"):
        model = copy.deepcopy(first)
        if device == "cuda":
            model.to("cuda")
        y = model(cuda.to_device(x) if device == "cuda" else x)
        dx = model.backward(cuda.to_device(dy) if device == "cuda" else dy)
        grads = [p.grad for p in model.parameters()]
        to_host = lambda a: a if isinstance(a, np.ndarray) else a.copy_to_host()  # noqa: E731
        results.append([to_host(a) for a in [y, dx] + grads])
        steps = model.layer1[0]._steps_run
        assert [type(s).__name__ for s in steps if not isinstance(s, str)] == ["ConvBatchNorm"] * 2 + [
            "AddReLU"
        ]
    for a, c in zip(*results, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-12)


def _count_copies_of_a_step(model, monkeypatch):
    """Device-to-host and host-to-device copies during one training step (batch upload
    excluded): forward, loss and hits on the device, zero_grad, backward, SGD."""
    model.to("cuda")
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    ((xb, yb),) = DeviceLoader(DataLoader(rng.standard_normal((2, 1, 4, 4)), np.array([0, 2]), 2))
    totals = cuda.to_device(np.zeros(2))
    counts = {"to_host": 0, "to_device": 0}
    array_type = type(xb)
    real_to_host, real_to_device = array_type.copy_to_host, cuda.to_device

    def to_host(self, *a, **k):
        counts["to_host"] += 1
        return real_to_host(self, *a, **k)

    def to_device(*a, **k):
        counts["to_device"] += 1
        return real_to_device(*a, **k)

    monkeypatch.setattr(array_type, "copy_to_host", to_host)
    monkeypatch.setattr(cuda, "to_device", to_device)
    logits = model(xb)
    F.loss_and_hits(logits, yb, totals)
    model.zero_grad()
    model.backward(F.cross_entropy_backward(logits, yb))
    opt.step()
    monkeypatch.undo()
    return counts


def test_a_training_step_copies_nothing_to_the_host(monkeypatch):
    """The copies of one step do not grow with the depth: there are none (labels range-checked
    on the host before upload, loss and hits kept on the device, SGD one kernel)."""
    from numbacnn.graph import Graph

    def deep(depth):
        layers = [("conv0", Conv2d(1, 2, 3, padding=1)), ("relu0", ReLU())]
        for i in range(1, depth):
            layers += [(f"conv{i}", Conv2d(2, 2, 3, padding=1)), (f"relu{i}", ReLU())]
        g = Graph()
        for name, layer in layers + [("flat", Flatten()), ("fc", Linear(2 * 4 * 4, 3))]:
            g.add(name, layer)
        return g

    shallow, deeper = (
        _count_copies_of_a_step(deep(1), monkeypatch),
        _count_copies_of_a_step(deep(4), monkeypatch),
    )
    assert shallow == deeper == {"to_host": 0, "to_device": 0}


def test_numbacnn_train_device_cuda_runs_end_to_end(tmp_path, capsys):
    """`numbacnn train --device cuda` on real MNIST images (a few: the simulator is slow) gives
    the CPU run's losses and accuracies, and a checkpoint that loads on the CPU."""
    from numbacnn.checkpoint import load
    from numbacnn.cli import main

    common = (
        "train --limit-train 2 --limit-test 1 --batch-size 2 --eval-batch-size 1 --epochs 1 --no-progress"
    )
    for device in ("cpu", "cuda"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([*common.split(), "--device", device, "--out", str(tmp_path / device)]) == 0
    metrics = {d: load(str(tmp_path / d / "checkpoint.npz")).meta["metrics"][-1] for d in ("cpu", "cuda")}
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
        assert metrics["cuda"][key] == pytest.approx(metrics["cpu"][key], rel=1e-4, abs=1e-6), key
    state = load(str(tmp_path / "cuda" / "checkpoint.npz")).model_state
    assert all(isinstance(v, np.ndarray) for v in state.values())


BN_SHAPES = [(4, 3, 5), (3, 2, 70), (5, 6, 1), (1, 2, 9), (2, 1, 33)]  # (N, C, L); RED_TPB is 32 here


@pytest.mark.parametrize("shape", BN_SHAPES, ids=[f"{n}x{c}x{l}" for n, c, l in BN_SHAPES])
def test_split_batch_norm_agrees_with_the_block_per_channel_kernels(shape):
    """The two-level batch-norm kernels (each channel over several blocks) give the one-block
    kernels' y, running statistics, dx, dgamma and dbeta, training and eval mode."""
    from numbacnn.kernels.cuda import batchnorm as bn

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape) * 3 + 1
    dy = rng.standard_normal(shape)
    N, C, L = shape
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    rm, rv = rng.standard_normal(C), rng.random(C) + 0.5
    assert bn.splits(N, C) == max(1, min(N, -(-bn.TARGET_BLOCKS // C)))
    d = cuda.to_device

    def run(suffix):
        out = {}
        y, run_mean, run_var = d(np.full(shape, np.nan)), d(rm.copy()), d(rv.copy())
        getattr(bn, "batch_norm_forward_train" + suffix)(
            d(x), d(gamma), d(beta), run_mean, run_var, 0.1, 1e-5, y
        )
        out.update(y=y, running_mean=run_mean, running_var=run_var)
        for mode in ("", "_eval"):
            dx, dg, db = d(np.full(shape, np.nan)), d(np.full(C, np.nan)), d(np.full(C, np.nan))
            stats = (d(rm), d(rv)) if mode else ()
            getattr(bn, "batch_norm_backward" + mode + suffix)(
                d(dy), d(x), d(gamma), *stats, 1e-5, dx, dg, db
            )
            out.update({f"dx{mode}": dx, f"dgamma{mode}": dg, f"dbeta{mode}": db})
        return {k: v.copy_to_host() for k, v in out.items()}

    split, naive_ = run(""), run("_naive")
    for name in naive_:
        assert not np.isnan(split[name]).any(), name
        np.testing.assert_allclose(split[name], naive_[name], rtol=1e-12, atol=1e-12, err_msg=name)


def test_optimizer_state_follows_the_model_between_devices():
    """SGD's momentum and Adam's moments move with the parameters when the model moves after
    the optimizer stepped (cpu -> cuda -> cpu), giving the all-CPU run's weights; a model whose
    parameters have mixed dtypes is refused by to("cuda") before anything moves."""
    from numbacnn import optim
    from numbacnn.graph import Sequential
    from numbacnn.layers import BatchNorm2d

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 1, 4, 4)).astype(np.float32), np.array([0, 2])
    for make in (lambda p: optim.SGD(p, lr=0.1, momentum=0.9), lambda p: optim.Adam(p, lr=0.01)):
        states = []
        for path in (("cpu", "cpu", "cpu"), ("cuda", "cpu", "cuda"), ("cpu", "cuda", "cpu")):
            numbacnn.random.seed(0)
            model = Sequential(Conv2d(1, 2, 3), Flatten(), Linear(8, 3))
            opt = make(model.parameters())
            for device in path:
                model.to(device)
                xb, yb = (cuda.to_device(x), cuda.to_device(y)) if device == "cuda" else (x, y)
                logits = model(xb)
                model.zero_grad()
                model.backward(F.cross_entropy_backward(logits, yb))
                opt.step()
            states.append(model.to("cpu").state_dict())
        for state in states[1:]:
            for k in state:
                np.testing.assert_allclose(state[k], states[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    mixed = Sequential(Conv2d(1, 2, 3, padding=1), BatchNorm2d(2), Flatten(), Linear(32, 3))
    mixed[3].weight.data = mixed[3].weight.data.astype(np.float64)
    with pytest.raises(TypeError, match=r"to\('cuda'\): the parameters must share one dtype"):
        mixed.to("cuda")
    assert isinstance(mixed[1].running_mean, np.ndarray) and mixed.device == "cpu"
