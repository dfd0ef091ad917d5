"""Shape inference and the forward pass agree: for random valid AND invalid configurations,
`layer.output_shape(input_shape)` and `layer.forward(x)` either give the same shape or both
raise a ValueError/TypeError. Both go through numbacnn.shapes, so they cannot drift apart
(they once did: Graph.check and summary accepted a pool padding that forward rejected)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numbacnn import shapes
from numbacnn.layers import (
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    Linear,
    MaxPool2d,
    ReLU,
)

positive = st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4)))
invalid = st.one_of(st.integers(-1, 0), st.tuples(st.integers(-1, 4), st.integers(-1, 0)))


@st.composite
def conv_layers(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    in_channels = groups * draw(st.integers(1, 2))
    out_channels = groups * draw(st.integers(1, 2))
    args = dict(
        stride=draw(positive),
        dilation=draw(positive),
        padding=draw(st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"]))),
    )
    if draw(st.integers(0, 3)) == 0:  # one argument out of range
        args[draw(st.sampled_from(sorted(args)))] = draw(invalid)
    kernel_size = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return Conv2d(in_channels, out_channels, kernel_size, groups=groups, bias=draw(st.booleans()), **args)


@st.composite
def pool_layers(draw):
    cls = draw(st.sampled_from([MaxPool2d, AvgPool2d]))
    kH, kW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    args = dict(
        kernel_size=(kH, kW),
        stride=draw(st.one_of(st.none(), positive)),
        padding=(draw(st.integers(0, kH // 2)), draw(st.integers(0, kW // 2))),
    )
    if draw(st.integers(0, 3)) == 0:  # one argument out of range (padding: also > half the window)
        # (kernel_size is checked by the constructor, as torch: tests/test_plumbing.py)
        name = draw(st.sampled_from(["padding", "stride"]))
        args[name] = draw(st.integers(kH // 2 + 1, 4) if name == "padding" else invalid)
    return cls(**args)


@st.composite
def other_layers(draw):
    c = draw(st.integers(1, 3))
    return draw(
        st.sampled_from(
            [GlobalAvgPool2d(), Linear(c * 4, 2), BatchNorm2d(c), BatchNorm1d(c), Flatten(), ReLU()]
        )
    )


def _channels(layer):
    """The channel / feature count the layer expects (None: any)."""
    for attr in ("in_channels", "num_features", "in_features"):
        if hasattr(layer, attr):
            return getattr(layer, attr)
    return None


@st.composite
def layer_and_shape(draw):
    """A layer and an input shape: mostly one it could take (right rank and channels, sizes
    1..9, so both valid and too-small inputs come up), sometimes an arbitrary one."""
    layer = draw(st.one_of(conv_layers(), pool_layers(), other_layers()))
    if draw(st.integers(0, 3)) == 0:
        rank = draw(st.sampled_from([2, 3, 4]))
        return layer, tuple(draw(st.integers(0, 5)) for _ in range(rank))
    rank = 2 if isinstance(layer, (Linear, BatchNorm1d)) else 4
    c = _channels(layer) or draw(st.integers(1, 3))
    if isinstance(layer, Linear) and draw(st.booleans()):
        c = draw(st.integers(1, 12))
    return layer, (draw(st.integers(1, 3)), c) + tuple(draw(st.integers(1, 9)) for _ in range(rank - 2))


def _outcome(fn):
    """('ok', shape) or ('error', exception type name)."""
    try:
        return "ok", tuple(fn())
    except (ValueError, TypeError) as e:
        return "error", type(e).__name__


@settings(max_examples=400)
@given(case=layer_and_shape())
def test_output_shape_and_forward_agree(case):
    layer, shape = case
    if isinstance(layer, (BatchNorm1d, BatchNorm2d)):
        # Batch statistics need more than one value per channel (a rule of the batch, checked
        # at forward time, as torch does); eval mode has no such rule, so compare there.
        layer.eval()
    inferred = _outcome(lambda: layer.output_shape(shape))
    computed = _outcome(lambda: layer.forward(np.zeros(shape, np.float32)).shape)  # the layers' dtype
    if inferred[0] == "ok" or computed[0] == "ok":
        assert inferred == computed, (
            f"{layer!r} on {shape}: output_shape -> {inferred}, forward -> {computed}"
        )


@pytest.mark.parametrize(
    "layer, shape",
    [
        (MaxPool2d(2, padding=2), (1, 1, 8, 8)),  # padding wider than half the window
        (AvgPool2d(3, stride=0), (1, 1, 8, 8)),  # stride 0
        (Conv2d(1, 1, 3, dilation=0), (1, 1, 8, 8)),  # dilation 0
        (Conv2d(1, 1, 5), (1, 1, 3, 3)),  # kernel larger than the input
    ],
)
def test_invalid_configurations_fail_in_both(layer, shape):
    with pytest.raises(ValueError):
        layer.output_shape(shape)
    with pytest.raises(ValueError):
        layer.forward(np.zeros(shape, np.float32))


def test_geometry_is_the_lecture_formula():
    """floor((n + p - d(k-1) - 1)/s) + 1, and "same" puts the odd pixel on top/left."""
    geo = shapes.conv2d_geometry("conv2d", (1, 3, 224, 224), (96, 3, 11, 11), stride=4, padding=2)
    assert (geo.H_out, geo.W_out) == (55, 55)  # AlexNet conv1
    geo = shapes.conv2d_geometry("conv2d", (1, 1, 7, 7), (1, 1, 4, 4), padding="same")
    assert (geo.pad_top, geo.pad_left, geo.H_out, geo.W_out) == (2, 2, 7, 7)
    assert shapes.conv_padding("same", (4, 4), (1, 1)) == (2, 1, 2, 1)
    pool = shapes.pool2d_geometry("max_pool2d", (1, 1, 5, 5), 3, stride=2, padding=1)
    assert pool.kernel_args == (3, 3, 2, 2, 1, 1) and (pool.H_out, pool.W_out) == (3, 3)


def test_an_empty_batch_through_lenet5_agrees_with_shape_inference():
    """N = 0 through every LeNet-5 layer (C5 takes the dense path) in eval mode."""
    from numbacnn.models import build_model

    model = build_model("lenet5").eval()
    assert model(np.zeros((0, 1, 32, 32), np.float32)).shape == model.output_shape((0, 1, 32, 32)) == (0, 10)


def test_geometry_is_remembered_per_call_but_never_an_error():
    """A conv/pool call repeated with the same shapes and plain arguments is validated once;
    a bad call raises every time, and 1, 1.0 and True stay different arguments."""
    shapes._MEMO.clear()
    good = shapes.conv2d_geometry("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 2, 1)
    assert shapes.conv2d_geometry("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), 2, 1) is good
    assert len(shapes._MEMO) == 1
    for bad in (2.0, True):
        for _ in range(2):
            with pytest.raises(TypeError, match="stride must be an int"):
                shapes.conv2d_geometry("conv2d", (2, 3, 8, 8), (4, 3, 3, 3), bad, 1)
    for _ in range(2):
        with pytest.raises(ValueError, match="larger than the padded input"):
            shapes.conv2d_geometry("conv2d", (2, 3, 2, 2), (4, 3, 5, 5), 1, 0)
    assert len(shapes._MEMO) == 1
    assert shapes.conv2d_geometry("conv2d", [2, 3, 8, 8], (4, 3, 3, 3), [2, 2], 1) == good  # a list: not kept
    assert len(shapes._MEMO) == 1
    pool = shapes.pool2d_geometry("max_pool2d", (2, 3, 8, 8), 2)
    assert shapes.pool2d_geometry("max_pool2d", (2, 3, 8, 8), 2) is pool and len(shapes._MEMO) == 2
