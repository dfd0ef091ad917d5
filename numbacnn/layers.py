"""Layers: objects that hold parameters and caches, and call `numbacnn.functional` only.
(Parameter, Module and the state-dict plumbing are in numbacnn.module; the initialisers in
numbacnn.init; both are re-exported here.)

Every layer follows one small protocol (the model API of docs/CONTRACT.md, section 3):

    y  = layer(x)            forward; caches what backward needs (in training AND eval mode)
    dx = layer.backward(dy)  returns the input gradient and ACCUMULATES (+=) into each
                             parameter's `.grad`, exactly like PyTorch's autograd. Call
                             `zero_grad()` before each backward pass (the optimizer step
                             consumes the sum of everything since the last zero_grad).
    layer.output_shape(input_shape) -> output shape     (shape inference, no arrays made)
    layer.macs(input_shape)         -> multiply-accumulates of one forward pass

Shapes include the batch axis: (N, C, H, W) for images, (N, F) for features.
A layer with two inputs (Add) has `num_inputs = 2`: it is called as `layer(a, b)`, its
`output_shape` takes two shapes, and its `backward` returns a tuple (da, db).

A layer instance caches the inputs of its LAST forward call, so it can appear only once in
a model (the Graph enforces that); use a fresh ReLU() per position.

Argument names, defaults and initialisation follow torch.nn:
  Conv2d / Linear weight: kaiming_uniform_(a=sqrt(5))  ==  U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  Conv2d / Linear bias:   U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  BatchNorm weight 1, bias 0, running_mean 0, running_var 1, num_batches_tracked 0
All random draws come from `numbacnn.random.rng()`, parameters are float32 (use
`Module.astype(np.float64)` for gradient checks).

MACs count the multiply-accumulates of convolution and linear layers only (the lecture's
"FLOP" column counts exactly these); pooling, normalisation, activations and additions
count as 0, and bias additions are not counted.
"""

import math

import numpy as np

from numbacnn import functional as F
from numbacnn import init
from numbacnn import random as nrandom
from numbacnn._checks import check_bool, check_int, check_number, positive_pair
from numbacnn.init import kaiming_normal_fan_out, kaiming_uniform
from numbacnn.module import Module, Parameter
from numbacnn.shapes import conv2d_geometry, pair, pool2d_geometry

__all__ = [
    "Parameter",
    "Module",
    "kaiming_uniform",
    "kaiming_normal_fan_out",
    "Conv2d",
    "Linear",
    "MaxPool2d",
    "AvgPool2d",
    "GlobalAvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "ReLU",
    "Tanh",
    "Sigmoid",
    "Dropout",
    "Flatten",
    "Identity",
    "Add",
]


def _check_rank(layer, shape, ranks):
    if len(shape) not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        layer._fail(f"expects a {want} input, got shape {tuple(shape)}")


# --------------------------------------------------------------------------------------
# Convolution and dense layers
# --------------------------------------------------------------------------------------
class Conv2d(Module):
    """2-D convolution (torch.nn.Conv2d; lecture, "2-D Convolution Layer"):
    y[n, co, oh, ow] = b[co] + sum_{ci_l, kh, kw} w[co, ci_l, kh, kw] * x[n, ci, ih, iw] with
    ih = oh*stride_h - pad_top + kh*dil_h, iw likewise (numbacnn.functional.conv2d).

    weight (out_channels, in_channels // groups, kH, kW), bias (out_channels,).
    padding: int, pair, "valid" or "same" (odd remainder on top/left, as in the lecture).
    """

    def __init__(
        self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True
    ):
        super().__init__()
        op = "Conv2d"
        in_channels = check_int(op, "in_channels", in_channels, minimum=1)
        out_channels = check_int(op, "out_channels", out_channels, minimum=1)
        groups = check_int(op, "groups", groups, minimum=1)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels={in_channels} and out_channels={out_channels} "
                f"must be divisible by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = positive_pair(kernel_size, "kernel_size", op)
        # stride, padding and dilation values are checked where torch checks them: at shape
        # inference and forward (numbacnn.shapes); here only their types
        self.stride = pair(stride, "stride", op)
        self.padding = padding if isinstance(padding, str) else pair(padding, "padding", op)
        self.dilation = pair(dilation, "dilation", op)
        self.groups = groups
        bias = check_bool(op, "bias", bias)
        kh, kw = self.kernel_size
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(kaiming_uniform((out_channels, in_channels // groups, kh, kw), fan_in))
        if bias:
            self.bias = Parameter(init.uniform((out_channels,), 1.0 / math.sqrt(fan_in)))
        else:
            self.bias = None  # a plain attribute: no parameter registered
        self._x = None

    def _args(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, x):
        self._x = x  # (N, C_in, H, W)
        b = self.bias.data if self.bias is not None else None
        return F.conv2d(x, self.weight.data, b, **self._args())  # (N, C_out, H_out, W_out)

    input_grad_optional = True  # backward(dy, input_grad=False) skips dx (a model's first layer)

    def backward(self, dy, input_grad=True):
        """dx (None when input_grad is False: nothing upstream needs it); dweight and dbias are
        accumulated into the parameters' .grad."""
        mask = (bool(input_grad), True, self.bias is not None)  # no bias, no dbias to compute
        dx, dw, db = F.conv2d_backward(dy, self._x, self.weight.data, **self._args(), output_mask=mask)
        self.weight.accumulate_grad(dw)
        if self.bias is not None:
            self.bias.accumulate_grad(db)
        return dx

    def output_shape(self, input_shape):
        _check_rank(self, input_shape, (4,))
        if input_shape[1] != self.in_channels:
            self._fail(f"expects {self.in_channels} input channels, got shape {tuple(input_shape)}")
        weight_shape = (self.out_channels, self.in_channels // self.groups) + self.kernel_size
        geo = conv2d_geometry(repr(self), input_shape, weight_shape, **self._args())  # as F.conv2d
        return (input_shape[0], self.out_channels, geo.H_out, geo.W_out)

    def macs(self, input_shape):
        N, C_out, H_out, W_out = self.output_shape(input_shape)
        kH, kW = self.kernel_size
        return N * C_out * H_out * W_out * (self.in_channels // self.groups) * kH * kW

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={_fmt(self.kernel_size)}"
        if self.stride != (1, 1):
            s += f", stride={_fmt(self.stride)}"
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={_fmt(self.padding)}"
        if self.dilation != (1, 1):
            s += f", dilation={_fmt(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class Linear(Module):
    """y = x W^T + b; x (N, in_features), weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        in_features = check_int("Linear", "in_features", in_features, minimum=1)
        out_features = check_int("Linear", "out_features", out_features, minimum=1)
        bias = check_bool("Linear", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(kaiming_uniform((out_features, in_features), in_features))
        if bias:
            self.bias = Parameter(init.uniform((out_features,), 1.0 / math.sqrt(in_features)))
        else:
            self.bias = None
        self._x = None

    def forward(self, x):
        self._x = x  # (N, in_features)
        b = self.bias.data if self.bias is not None else None
        return F.linear(x, self.weight.data, b)  # (N, out_features)

    def backward(self, dy):
        dx, dw, db = F.linear_backward(dy, self._x, self.weight.data)
        self.weight.accumulate_grad(dw)
        if self.bias is not None:
            self.bias.accumulate_grad(db)
        return dx

    def output_shape(self, input_shape):
        _check_rank(self, input_shape, (2,))
        if input_shape[1] != self.in_features:
            self._fail(f"expects {self.in_features} input features, got shape {tuple(input_shape)}")
        return (input_shape[0], self.out_features)

    def macs(self, input_shape):
        return self.output_shape(input_shape)[0] * self.in_features * self.out_features

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}" + ("" if self.bias is not None else ", bias=False")


# --------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------
class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = positive_pair(kernel_size, "kernel_size", name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", name)
        self.padding = pair(padding, "padding", name)
        self._x = None

    def output_shape(self, input_shape):
        _check_rank(self, input_shape, (4,))
        geo = pool2d_geometry(repr(self), input_shape, self.kernel_size, self.stride, self.padding)
        return (input_shape[0], input_shape[1], geo.H_out, geo.W_out)

    def extra_repr(self):
        s = f"kernel_size={_fmt(self.kernel_size)}, stride={_fmt(self.stride)}"
        return s + (f", padding={_fmt(self.padding)}" if self.padding != (0, 0) else "")


class MaxPool2d(_Pool2d):
    """Max over each window (padding counts as -inf); gradient goes to the first max."""

    def forward(self, x):
        self._x = x
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy):
        return F.max_pool2d_backward(dy, self._x, self.kernel_size, self.stride, self.padding)


class AvgPool2d(_Pool2d):
    """Mean over each window (divisor kH*kW, padding included, as torch's default)."""

    def forward(self, x):
        self._x = x
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)

    def backward(self, dy):
        return F.avg_pool2d_backward(dy, self._x, self.kernel_size, self.stride, self.padding)


class GlobalAvgPool2d(Module):
    """Mean over all of H x W: (N, C, H, W) -> (N, C, 1, 1), == nn.AdaptiveAvgPool2d(1).

    Implemented as avg_pool2d with kernel_size = (H, W)."""

    def __init__(self):
        super().__init__()
        self._x = None

    def forward(self, x):
        self._x = x
        return F.avg_pool2d(x, tuple(x.shape[2:]))

    def backward(self, dy):
        return F.avg_pool2d_backward(dy, self._x, tuple(self._x.shape[2:]))

    def output_shape(self, input_shape):
        _check_rank(self, input_shape, (4,))
        geo = pool2d_geometry(repr(self), input_shape, tuple(input_shape[2:]))  # as forward
        return (input_shape[0], input_shape[1], geo.H_out, geo.W_out)


# --------------------------------------------------------------------------------------
# Batch normalisation
# --------------------------------------------------------------------------------------
class _BatchNorm(Module):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, per channel.

    Training mode: batch statistics (biased variance), and the running statistics are
    updated in place: r = (1 - momentum) r + momentum * batch_stat (unbiased variance for
    running_var), num_batches_tracked += 1; momentum=None keeps the cumulative average of
    all batches instead (momentum = 1 / num_batches_tracked, as torch). Eval mode: running
    statistics. num_features >= 1, eps > 0, momentum in [0, 1] or None.
    """

    ranks = (4,)

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        op = type(self).__name__
        num_features = check_int(op, "num_features", num_features, minimum=1)
        eps = check_number(op, "eps", eps, above=0.0)
        if momentum is not None:  # None: the cumulative average of all batches (torch)
            momentum = check_number(op, "momentum", momentum, minimum=0.0, maximum=1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32))
        self.bias = Parameter(np.zeros(num_features, np.float32))
        self.register_buffer("running_mean", np.zeros(num_features, np.float32))
        self.register_buffer("running_var", np.ones(num_features, np.float32))
        self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
        self._x = None
        self._trained = None  # mode of the last forward (decides the backward formula)

    def _as_functional(self, x):
        return x  # (N, C, H, W) or (N, C)

    def forward(self, x):
        return self._forward(x, relu=False)

    def _forward(self, x, relu):
        """y = BN(x), or max(BN(x), 0) with relu (a fused BatchNorm -> ReLU: numbacnn.fusion)."""
        self.output_shape(x.shape)  # rank and channels, as torch (BatchNorm2d rejects 2-D input)
        xf = self._as_functional(x)
        self._x, self._trained = xf, self.training
        factor = self.momentum
        if self.training:  # as torch: count the batch first; momentum=None averages them all
            self.num_batches_tracked += 1  # 0-d array, updated in place
            if factor is None:
                factor = 1.0 / float(self.num_batches_tracked)
        normalise = F.batch_norm_relu if relu else F.batch_norm
        y = normalise(xf, self.weight.data, self.bias.data, self.running_mean, self.running_var,
                      self.training, 0.0 if factor is None else factor, self.eps)  # fmt: skip
        return y.reshape(x.shape)

    def backward(self, dy, relu_output=None):
        """dx; dweight and dbias are accumulated into the parameters' .grad. relu_output: the
        output of a ReLU fused after this batch norm (numbacnn.fusion), whose mask (> 0) gates
        dy, the gradient of that ReLU's output."""
        shape = dy.shape
        dy = self._as_functional(dy)
        # eval mode: the fixed affine map of the running statistics
        stats = () if self._trained else (self.running_mean, self.running_var)
        if relu_output is None:
            dx, dgamma, dbeta = F.batch_norm_backward(dy, self._x, self.weight.data, self.eps, *stats)
        else:
            y = self._as_functional(relu_output)
            dx, dgamma, dbeta = F.batch_norm_relu_backward(dy, y, self._x, self.weight.data, self.eps, *stats)
        self.weight.accumulate_grad(dgamma)
        self.bias.accumulate_grad(dbeta)
        return dx.reshape(shape)

    def output_shape(self, input_shape):
        _check_rank(self, input_shape, self.ranks)
        if input_shape[1] != self.num_features:
            self._fail(f"expects {self.num_features} channels, got shape {tuple(input_shape)}")
        return tuple(input_shape)

    def extra_repr(self):
        return f"{self.num_features}"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, H, W) for each channel of an (N, C, H, W) input."""

    ranks = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) features (or (N, C, L), normalised over N and L)."""

    ranks = (2, 3)

    def _as_functional(self, x):
        return x.reshape(x.shape + (1,)) if x.ndim == 3 else x


# --------------------------------------------------------------------------------------
# Activations, dropout, reshaping, joins
# --------------------------------------------------------------------------------------
class ReLU(Module):
    """max(x, 0)."""

    def forward(self, x):
        self._x = x
        return F.relu(x)

    def backward(self, dy):
        return F.relu_backward(dy, self._x)


class Tanh(Module):
    """tanh(x); the backward uses the cached output: dx = dy (1 - y^2)."""

    def forward(self, x):
        self._y = F.tanh(x)
        return self._y

    def backward(self, dy):
        return F.tanh_backward(dy, self._y)


class Sigmoid(Module):
    """1 / (1 + exp(-x)); the backward uses the cached output: dx = dy y (1 - y)."""

    def forward(self, x):
        self._y = F.sigmoid(x)
        return self._y

    def backward(self, dy):
        return F.sigmoid_backward(dy, self._y)


class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the
    rest by 1/(1-p); identity in eval mode. Each call draws its seed from
    numbacnn.random.rng() (kept in `last_seed`), so a seeded run is reproducible; row i of
    the input takes the mask of row numbacnn.random.first_row() + i (a rank's share of a
    global batch drops what one process drops on the whole batch)."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = check_number("Dropout", "p", p, minimum=0.0, maximum=1.0)  # p = 1 drops all, as torch
        self._mask = None
        self.last_seed = None

    def forward(self, x):
        if self.training and self.p > 0:
            self.last_seed = int(nrandom.rng().integers(0, 2**31 - 1))
            per_row = x.size // x.shape[0] if x.ndim and x.shape[0] else 0
            y, self._mask = F.dropout(
                x, self.p, True, seed=self.last_seed, offset=nrandom.first_row() * per_row
            )
            return y
        self._mask = None
        return x

    def backward(self, dy):
        return F.dropout_backward(dy, self._mask, self.p)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1*d2*...) (torch.nn.Flatten with start_dim=1)."""

    def forward(self, x):
        self.output_shape(x.shape)  # at least 2-D, as torch (start_dim=1 must exist)
        self._shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # N = 0 too (np.prod: 8 us a call)

    def backward(self, dy):
        return dy.reshape(self._shape)

    def output_shape(self, input_shape):
        if len(input_shape) < 2:
            self._fail(f"expects an input of at least 2 dimensions (N, ...), got shape {tuple(input_shape)}")
        return (input_shape[0], int(np.prod(input_shape[1:])))


class Identity(Module):
    """y = x."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy


class Add(Module):
    """The residual join: y = a + b (two inputs, same shape); backward -> (dy, dy)."""

    num_inputs = 2

    def forward(self, a, b):
        return F.add(a, b)

    def backward(self, dy):
        return F.add_backward(dy)

    def output_shape(self, a_shape, b_shape):
        if tuple(a_shape) != tuple(b_shape):
            self._fail(f"inputs must have the same shape, got {tuple(a_shape)} and {tuple(b_shape)}")
        return tuple(a_shape)


def _fmt(v):
    """(3, 3) -> 3, (1, 2) -> (1, 2), for compact reprs."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == v[1]:
        return v[0]
    return v
