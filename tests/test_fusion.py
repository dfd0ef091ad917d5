"""Fusion (numbacnn.fusion): the fused ops against their compositions and the reference, and
a Graph run fused against the same graph run layer by layer."""

import copy

import numpy as np
import pytest
from conftest import assert_close

from numbacnn import functional as F
from numbacnn import fusion
from numbacnn import reference as R
from numbacnn.graph import Graph, Sequential
from numbacnn.layers import Add, BatchNorm1d, BatchNorm2d, Conv2d, Identity, Linear, ReLU
from numbacnn.models import resnet_cifar

DTYPES = (np.float32, np.float64)


def _bn_args(rng, C, dt):
    return (rng.standard_normal(C).astype(dt), rng.standard_normal(C).astype(dt),
            rng.standard_normal(C).astype(dt), rng.random(C).astype(dt) + 0.5)  # fmt: skip


# ------------------------------------------------------------------------------ functional
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 5, 6, 7), (9, 3), (2, 16, 1, 1)])
def test_batch_norm_relu_is_the_composition(dtype, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[::7] = 0.0  # values BN maps near its shift
    g, b, rm, rv = _bn_args(rng, shape[1], dtype)
    for training in (True, False):
        rm1, rv1, rm2, rv2 = rm.copy(), rv.copy(), rm.copy(), rv.copy()
        y = F.batch_norm_relu(x, g, b, rm1, rv1, training)
        z = F.batch_norm(x, g, b, rm2, rv2, training)
        np.testing.assert_array_equal(y, F.relu(z))  # same formula, same rounding
        np.testing.assert_array_equal(rm1, rm2)
        np.testing.assert_array_equal(rv1, rv2)
        dy = rng.standard_normal(shape).astype(dtype)
        stats = {} if training else dict(running_mean=rm, running_var=rv)
        got = F.batch_norm_relu_backward(dy, y, x, g, **stats)
        want = F.batch_norm_backward(F.relu_backward(dy, z), x, g, **stats)
        ref = R.batch_norm_relu_backward(dy, y, x, g, **stats)
        for a, w, r in zip(got, want, ref, strict=True):
            assert_close(a, w, dtype=dtype, kind="reduction")
            assert_close(a, r, dtype=dtype, kind="reduction")


def test_batch_norm_relu_keeps_nan_as_relu():
    x = np.ones((2, 3, 2, 2), np.float32)
    x[0, 1, 0, 0] = np.nan
    y = F.batch_norm_relu(x, None, None, None, None, True)
    z = F.relu(F.batch_norm(x, None, None, None, None, True))
    np.testing.assert_array_equal(np.isnan(y), np.isnan(z))
    dy = np.ones_like(x)
    got = F.batch_norm_relu_backward(dy, y, x, None)
    want = F.batch_norm_backward(F.relu_backward(dy, z), x, None)
    for a, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.isnan(a), np.isnan(w))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_relu_is_the_composition(dtype):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((3, 4, 50, 70)).astype(dtype)  # > one parallel chunk
    b = rng.standard_normal(a.shape).astype(dtype)
    b.reshape(-1)[::5] = -a.reshape(-1)[::5]  # exact zeros of a + b
    a.reshape(-1)[3] = np.nan
    y = F.add_relu(a, b)
    np.testing.assert_array_equal(y, F.relu(F.add(a, b)))
    np.testing.assert_array_equal(y[:1, :1, :2], R.add_relu(a[:1, :1, :2], b[:1, :1, :2]))
    dy = rng.standard_normal(a.shape).astype(dtype)  # the mask from the output is ReLU's own
    np.testing.assert_array_equal(F.relu_backward(dy, y), F.relu_backward(dy, F.add(a, b)))


def test_relu_inplace():
    x = np.array([[-1.0, 0.0, 2.0, np.nan]], np.float32)
    want = F.relu(x)
    out = F.relu(x, inplace=True)
    assert out is x
    np.testing.assert_array_equal(x, want)
    with pytest.raises(ValueError, match=r"relu: x must be C-contiguous.*x.shape=\(2, 2\)"):
        F.relu(np.zeros((2, 4), np.float32)[:, ::2], inplace=True)
    with pytest.raises(TypeError, match="relu: inplace"):
        F.relu(x, inplace="yes")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_fuse_conv_bn_weights(dtype, bias):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    cb = rng.standard_normal(6).astype(dtype) if bias else None
    g, b, rm, rv = _bn_args(rng, 6, dtype)
    fw, fb = F.fuse_conv_bn_weights(w, cb, rm, rv, 1e-3, g, b)
    rw, rb = R.fuse_conv_bn_weights(w, cb, rm, rv, 1e-3, g, b)
    assert fw.dtype == fb.dtype == dtype and fw.shape == w.shape
    assert_close(fw, rw, dtype=dtype, kind="elementwise")
    assert_close(fb, rb, dtype=dtype, kind="elementwise")
    x = rng.standard_normal((2, 4, 7, 7)).astype(dtype)  # groups=2
    want = F.batch_norm(F.conv2d(x, w, cb, padding=1, groups=2), g, b, rm, rv, False, eps=1e-3)
    assert_close(F.conv2d(x, fw, fb, padding=1, groups=2), want, dtype=dtype, kind="conv")


def test_fuse_conv_bn_weights_matches_torch():
    torch = pytest.importorskip("torch")
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3, 3, 3))
    cb, (g, b, rm, rv) = rng.standard_normal(5), _bn_args(rng, 5, np.float64)
    tw, tb = fuse_conv_bn_weights(
        *(torch.tensor(a) for a in (w, cb, rm, rv)), 1e-5, torch.tensor(g), torch.tensor(b)
    )
    fw, fb = F.fuse_conv_bn_weights(w, cb, rm, rv, 1e-5, g, b)
    np.testing.assert_allclose(fw, tw.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(fb, tb.detach().numpy(), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("bias", [True, False])
def test_fuse_conv_bn_weights_backward(bias):
    """The chain rule through the folding: against the reference and finite differences of
    L(conv_w, conv_b, bn_w, bn_b) = <dw, w(...)> + <db, b(...)>, in float64."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((4, 3, 2, 2))
    cb = rng.standard_normal(4) if bias else None
    g, b, rm, rv = _bn_args(rng, 4, np.float64)
    dw, db = rng.standard_normal(w.shape), rng.standard_normal(4)
    got = F.fuse_conv_bn_weights_backward(dw, db, w, cb, rm, rv, 1e-3, g)
    for a, r in zip(got, R.fuse_conv_bn_weights_backward(dw, db, w, cb, rm, rv, 1e-3, g), strict=True):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-14)
    params = dict(conv_w=w, conv_b=cb if bias else np.zeros(4), bn_w=g, bn_b=b)

    def loss(p):
        fw, fb = F.fuse_conv_bn_weights(p["conv_w"], p["conv_b"], rm, rv, 1e-3, p["bn_w"], p["bn_b"])
        return float((fw * dw).sum() + (fb * db).sum())

    for name, grad in zip(params, got, strict=True):
        num = np.empty_like(params[name])
        for i in np.ndindex(num.shape):
            up, down = copy.deepcopy(params), copy.deepcopy(params)
            up[name][i] += 1e-6
            down[name][i] -= 1e-6
            num[i] = (loss(up) - loss(down)) / 2e-6
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8, err_msg=name)


def test_fused_functions_name_their_arguments():
    w, v = np.ones((3, 2, 1, 1), np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"fuse_conv_bn_weights: bn_rv must have shape \(3,\)"):
        F.fuse_conv_bn_weights(w, None, v, np.ones(4, np.float32), 1e-5, v, v)
    with pytest.raises(TypeError, match="fuse_conv_bn_weights: arguments must share one dtype"):
        F.fuse_conv_bn_weights(w, None, v, v.astype(np.float64), 1e-5, v, v)
    with pytest.raises(ValueError, match="bn_eps"):
        F.fuse_conv_bn_weights(w, None, v, v, 0.0, v, v)
    with pytest.raises(ValueError, match=r"fuse_conv_bn_weights_backward: dw must have shape \(3, 2, 1, 1\)"):
        F.fuse_conv_bn_weights_backward(np.ones((3, 2, 2, 1), np.float32), v, w, None, v, v, 1e-5, v)
    x = np.ones((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"batch_norm_relu_backward: y must have shape \(2, 3, 4, 4\)"):
        F.batch_norm_relu_backward(x, x[:1], x, None)
    with pytest.raises(ValueError, match="add_relu: b must have the same shape as a"):
        F.add_relu(x, x[:1])


# ------------------------------------------------------------------------------ the graph
def _pair(model, dtype=np.float32):
    """The model and a layer-by-layer copy of it, both in dtype."""
    model = model.astype(dtype)
    plain = copy.deepcopy(model).set_fusion(False)
    return model, plain


def _run(model, x, dy, input_grad=True):
    model.zero_grad()
    y = model(x)
    dx = model.backward(dy, input_grad=input_grad) if input_grad is not None else None
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    return y, dx, grads, {n: np.array(b) for n, b in model.named_buffers()}


def test_resnet_training_step_is_bit_identical_fused():
    """Training mode: BN -> ReLU and Add -> ReLU run fused; every output, gradient and
    running statistic equals the layer-by-layer run bit for bit."""
    rng = np.random.default_rng(6)
    fused, plain = _pair(resnet_cifar(depth=8))
    block = fused.layer1[0]
    assert fusion.chains(block) == [("conv1", "bn1", "relu1"), ("conv2", "bn2"), ("add", "relu2")]
    x = rng.standard_normal((4, 3, 16, 16)).astype(np.float32)
    dy = rng.standard_normal((4, 10)).astype(np.float32)
    for _ in range(2):  # twice: the cached plan
        a, b = _run(fused, x, dy), _run(plain, x, dy)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        for name in a[2]:
            np.testing.assert_array_equal(a[2][name], b[2][name], err_msg=name)
        for name in a[3]:
            np.testing.assert_array_equal(a[3][name], b[3][name], err_msg=name)
    kinds = [type(s).__name__ if not isinstance(s, str) else s for s in block._steps_run]
    assert kinds == ["conv1", "BatchNormReLU", "conv2", "bn2", "AddReLU"]
    assert plain.layer1[0]._steps_run == list(plain.layer1[0].order)


def test_resnet_eval_folds_conv_and_batch_norm():
    """Eval mode: Conv -> BN [-> ReLU] runs as one conv with folded weights; outputs and
    gradients (input, conv weights, BN weight and bias) match the layer-by-layer run to
    float64 rounding, and running statistics are untouched."""
    rng = np.random.default_rng(7)
    fused, plain = _pair(resnet_cifar(depth=8), np.float64)
    for m in (fused, plain):  # trained-looking statistics
        for name, buf in m.named_buffers():
            if name.endswith("running_mean"):
                buf[...] = np.linspace(-0.5, 0.5, buf.size)
            elif name.endswith("running_var"):
                buf[...] = np.linspace(0.5, 2.0, buf.size)
        m.eval()
    x = rng.standard_normal((3, 3, 16, 16))
    dy = rng.standard_normal((3, 10))
    a, b = _run(fused, x, dy), _run(plain, x, dy)
    kinds = [type(s).__name__ if not isinstance(s, str) else s for s in fused.layer1[0]._steps_run]
    assert kinds == ["ConvBatchNorm", "ConvBatchNorm", "AddReLU"]
    np.testing.assert_allclose(a[0], b[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-9, atol=1e-12)
    for name in a[2]:
        np.testing.assert_allclose(a[2][name], b[2][name], rtol=1e-9, atol=1e-11, err_msg=name)
    for name in a[3]:
        np.testing.assert_array_equal(a[3][name], b[3][name], err_msg=name)
    # the first conv reads the input: input_grad=False skips its dx, fused too
    assert _run(fused, x, dy, input_grad=False)[1] is None


def test_fusion_leaves_shared_and_output_values_alone():
    """A chain is fused only where its inner values have one reader and are not the output."""
    g = Graph()
    g.add("bn", BatchNorm2d(3))
    g.add("relu", ReLU())
    g.add("add", Add(), inputs=["bn", "relu"])  # bn's output is read twice
    assert fusion.chains(g) == []
    s = Sequential(Conv2d(3, 3, 1), BatchNorm2d(3))
    s.output = "0"  # the conv's output is the graph's output
    assert fusion.chains(s) == []
    t = Sequential(Linear(4, 4), BatchNorm1d(4), ReLU())
    assert fusion.chains(t) == [("1", "2")]


def test_node_outputs_stay_layer_by_layer():
    """explain's feature maps: every node's own output, the pre-activations included, and a
    backward after them walks the layers one by one."""
    rng = np.random.default_rng(8)
    m = Sequential(Conv2d(2, 4, 3, padding=1), BatchNorm2d(4), ReLU())
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    outs = m.node_outputs(x)
    assert list(outs) == ["input", "0", "1", "2"]
    assert (outs["1"] < 0).any()  # BN's own output, before the ReLU
    np.testing.assert_array_equal(outs["2"], F.relu(outs["1"]))
    assert m.backward(np.ones_like(outs["2"])).shape == x.shape


def test_fused_errors_name_the_node():
    m = Sequential(Conv2d(2, 4, 3), BatchNorm2d(5), ReLU()).eval()
    with pytest.raises(ValueError, match=r"node '1' \(BatchNorm2d\): .*expects 5 channels"):
        m(np.ones((1, 2, 5, 5), np.float32))
    m = Sequential(Conv2d(2, 4, 3), BatchNorm2d(4), ReLU()).eval()
    with pytest.raises(ValueError, match=r"node '0' \(Conv2d\)"):
        m(np.ones((1, 3, 5, 5), np.float32))
    g = Graph()
    g.add("a", Conv2d(1, 1, 1, stride=2))
    g.add("sum", Add(), inputs=["a", "x"])
    g.add("relu", ReLU())
    with pytest.raises(ValueError, match=r"node 'sum' \(Add\): add_relu: b must have the same shape"):
        g(np.ones((1, 1, 2, 2), np.float32))


def test_a_replaced_layer_is_used_at_once():
    """The fused plan follows the graph's layers: a layer replaced after a forward (a user's
    swap, distributed.convert_sync_batchnorm) runs in the next forward."""
    from numbacnn.distributed import SyncBatchNorm, convert_sync_batchnorm

    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    m = Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU())
    assert (m(x) >= 0).all()
    setattr(m, "2", Identity())  # the ReLU is gone: BN's output, negative values included
    y = m(x)
    assert (y < 0).any()
    np.testing.assert_array_equal(y, copy.deepcopy(m).set_fusion(False)(x))
    m = convert_sync_batchnorm(Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU()))
    calls = []
    original = SyncBatchNorm.forward
    SyncBatchNorm.forward = lambda self, v: calls.append(1) or original(self, v)
    try:
        m(x)
    finally:
        SyncBatchNorm.forward = original
    assert calls == [1]


def test_a_fused_backward_names_the_node_dy_enters():
    m = Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU())
    y = m(np.ones((2, 2, 5, 5), np.float32) + np.arange(50, dtype=np.float32).reshape(2, 1, 5, 5))
    with pytest.raises(ValueError, match=r"node '2' \(ReLU\): batch_norm_relu_backward: dy must have shape"):
        m.backward(np.ones(y.shape[:1] + (1,) + y.shape[2:], np.float32))


def test_fuse_conv_bn_weights_needs_the_statistics():
    w, v = np.ones((3, 2, 1, 1), np.float32), np.ones(3, np.float32)
    with pytest.raises(
        TypeError, match=r"fuse_conv_bn_weights: bn_rm must be an array of shape \(3,\), got None"
    ):
        F.fuse_conv_bn_weights(w, None, None, v, 1e-5, v, v)
    with pytest.raises(TypeError, match="fuse_conv_bn_weights_backward: db must be an array"):
        F.fuse_conv_bn_weights_backward(w, None, w, None, v, v, 1e-5, v)
    with pytest.raises(ValueError, match=r"one per output channel of conv_w.shape=\(3, 2, 1, 1\)"):
        F.fuse_conv_bn_weights(w, None, v, v[:2], 1e-5, v, v)


def test_a_fused_batch_norm_runs_hooks_on_its_backward():
    """distributed.GradientExchange hooks each layer's own backward to launch a bucket's
    all-reduce when its gradients are ready: a fused BatchNorm -> ReLU calls it."""
    m = Sequential(Conv2d(2, 3, 3), BatchNorm2d(3), ReLU())
    bn, seen = m["1"], []
    original = bn.backward

    def hooked(dy, **options):
        seen.append(sorted(options))
        return original(dy, **options)

    bn.backward = hooked
    y = m(np.random.default_rng(10).standard_normal((2, 2, 5, 5)).astype(np.float32))
    m.backward(np.ones_like(y))
    assert seen == [["relu_output"]]
    assert "BatchNormReLU" in [type(s).__name__ for s in m._steps_run]
