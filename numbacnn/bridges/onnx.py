"""Export a numbacnn model to ONNX: its eval-mode forward pass as an ONNX graph.

    to_onnx(model, input_shape, opset=OPSET, ...) -> onnx.ModelProto (checked)
    export_onnx(model, path, input_shape, ...)    writes it, atomically

One ONNX operator per layer, the graph walked in the scheduler's topological order
(numbacnn.graph), each value named by its node's dotted path ("layer1.0.conv1") and each
weight by its state_dict name ("layer1.0.conv1.weight"), so the ONNX graph reads like
``model.summary()``:

    numbacnn layer          ONNX operator (https://onnx.ai/onnx/operators/)
    Conv2d                  Conv          pads [top, left, bottom, right]; "same" -> explicit pads
    Linear                  Gemm          transB=1 (weight (out, in), as torch)
    BatchNorm1d/2d          BatchNormalization   running_mean/running_var (eval mode), epsilon
    MaxPool2d, AvgPool2d    MaxPool, AveragePool (count_include_pad=1, torch's default)
    GlobalAvgPool2d         GlobalAveragePool
    ReLU, Tanh, Sigmoid     Relu, Tanh, Sigmoid
    Flatten                 Flatten       axis=1
    Dropout, Identity       Identity      (eval mode: dropout is the identity)
    Add                     Add

The input is ``input`` (N, C, H, W) float32 with a symbolic batch dimension N; the output
is ``logits`` (N, num_classes). Weights are stored as float32. H and W are fixed: explicit
pads and Flatten's size are computed for them (``input_shape``).

Needs the optional ``onnx`` package (``pip install numbacnn[onnx]``, which also brings
onnxruntime, the runtime the tests check the export with).
"""

import json
import os

import numpy as np

from .._io import atomic_write
from ..graph import Graph
from ..layers import (
    Add,
    AvgPool2d,
    Conv2d,
    Dropout,
    Flatten,
    GlobalAvgPool2d,
    Identity,  # fmt: skip
    Linear,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
    _BatchNorm,
)
from ..shapes import conv_padding

__all__ = ["to_onnx", "export_onnx", "OPSET"]

OPSET = 21  # ONNX 1.16+ (2024); onnxruntime 1.18+ runs it
_ELEMENTWISE = {ReLU: "Relu", Tanh: "Tanh", Sigmoid: "Sigmoid", Dropout: "Identity", Identity: "Identity"}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError(
            "exporting to ONNX needs the onnx package: pip install 'numbacnn[onnx]' (or pip install onnx)"
        ) from None
    return onnx


class _Builder:
    """The nodes and initializers of the graph being written."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.initializers = onnx, [], []

    def weight(self, name, array):
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op, inputs, output, **attrs):
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=output, **attrs))
        return output


def _emit(b, module, inputs, shapes, path):
    """Write ``module`` applied to the values ``inputs`` (their shapes, batch 1, in
    ``shapes``); returns (output value name, output shape)."""
    if path in ("input", "logits"):  # the graph's own value names
        path = f"{path}_"
    if isinstance(module, Graph):
        env = {module.input_name: (inputs[0], shapes[0])}
        for name in module.order:
            ins = module._inputs[name]
            layer = module._modules[name]
            env[name] = _emit(b, layer, [env[i][0] for i in ins], [env[i][1] for i in ins],
                              f"{path}.{name}" if path else name)  # fmt: skip
        return env[module.output]
    out_shape = module.output_shape(*shapes)
    x = inputs[0]
    kind = type(module)
    if isinstance(module, Conv2d):
        top, bottom, left, right = (
            conv_padding(module.padding, module.kernel_size, module.dilation)
            if isinstance(module.padding, str)
            else (module.padding[0], module.padding[0], module.padding[1], module.padding[1])
        )
        args = [x, b.weight(f"{path}.weight", module.weight.data)]
        if module.bias is not None:
            args.append(b.weight(f"{path}.bias", module.bias.data))
        out = b.node("Conv", args, path, kernel_shape=list(module.kernel_size), strides=list(module.stride),
                     pads=[top, left, bottom, right], dilations=list(module.dilation),
                     group=module.groups)  # fmt: skip
    elif isinstance(module, Linear):
        args = [x, b.weight(f"{path}.weight", module.weight.data)]
        if module.bias is not None:
            args.append(b.weight(f"{path}.bias", module.bias.data))
        out = b.node("Gemm", args, path, transB=1)
    elif isinstance(module, _BatchNorm):  # BatchNorm1d, BatchNorm2d, SyncBatchNorm
        stats = (("weight", module.weight.data), ("bias", module.bias.data),
                 ("running_mean", module.running_mean), ("running_var", module.running_var))  # fmt: skip
        names = [b.weight(f"{path}.{n}", a) for n, a in stats]
        out = b.node("BatchNormalization", [x, *names], path, epsilon=float(module.eps))
    elif isinstance(module, (MaxPool2d, AvgPool2d)):
        ph, pw = module.padding
        attrs = dict(
            kernel_shape=list(module.kernel_size), strides=list(module.stride), pads=[ph, pw, ph, pw]
        )
        if isinstance(module, AvgPool2d):
            attrs["count_include_pad"] = 1
        out = b.node("MaxPool" if isinstance(module, MaxPool2d) else "AveragePool", [x], path, **attrs)
    elif isinstance(module, GlobalAvgPool2d):
        out = b.node("GlobalAveragePool", [x], path)
    elif isinstance(module, Flatten):
        out = b.node("Flatten", [x], path, axis=1)
    elif isinstance(module, Add):
        out = b.node("Add", list(inputs), path)
    elif kind in _ELEMENTWISE:
        out = b.node(_ELEMENTWISE[kind], [x], path)
    else:
        raise TypeError(f"to_onnx: layer {path!r} ({kind.__name__}) has no ONNX mapping")
    return out, out_shape


def to_onnx(model, input_shape, opset=OPSET, model_name=None, classes=None, metadata=None):
    """The ONNX model of ``model``'s eval-mode forward pass.

    input_shape: (C, H, W) of one image (the batch dimension is symbolic). opset: the ONNX
    opset (13 to onnx's newest). model_name, classes: recorded as metadata
    (``numbacnn.model``, ``numbacnn.classes`` as JSON, and ``numbacnn.input_shape``), with
    ``metadata`` (str -> str; numbacnn export adds ``numbacnn.preprocess``: the channels,
    size, pad and per-channel mean and std that make an image the input). Returns an onnx.ModelProto that
    passed ``onnx.checker.check_model``.

    Raises ImportError (no onnx package), ValueError (an input shape the model cannot take;
    a bad opset), TypeError (a layer with no ONNX mapping, naming it).
    """
    onnx = _onnx()
    helper = onnx.helper
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(
            f"to_onnx: input_shape must be (C, H, W) of positive sides, got {tuple(input_shape)}"
        )
    if not (isinstance(opset, int) and 13 <= opset <= onnx.defs.onnx_opset_version()):
        raise ValueError(
            f"to_onnx: opset must be an int from 13 to {onnx.defs.onnx_opset_version()}, got {opset!r}"
        )
    model.output_shape((1, *shape))  # ValueError naming the layer that cannot take it
    b = _Builder(onnx)
    out, out_shape = _emit(b, model, ["input"], [(1, *shape)], "")
    b.node("Identity", [out], "logits")
    graph = helper.make_graph(
        b.nodes,
        model_name or type(model).__name__,
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", *out_shape[1:]])],
        initializer=b.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="numbacnn",
                              ir_version=helper.find_min_ir_version_for(opsets))  # fmt: skip
    from .. import __version__

    proto.producer_version = __version__
    meta = {"numbacnn.input_shape": json.dumps(list(shape))}
    if model_name is not None:
        meta["numbacnn.model"] = model_name
    if classes is not None:
        meta["numbacnn.classes"] = json.dumps(list(classes))
    helper.set_model_props(proto, {**meta, **(metadata or {})})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_onnx(model, path, input_shape, opset=OPSET, model_name=None, classes=None, metadata=None):
    """Write ``to_onnx(model, input_shape, ...)`` to ``path`` atomically (an existing file is
    replaced whole or not at all). Returns the path."""
    proto = to_onnx(
        model, input_shape, opset=opset, model_name=model_name, classes=classes, metadata=metadata
    )
    data = proto.SerializeToString()
    atomic_write(path, lambda f: f.write(data))
    return os.fspath(path)
