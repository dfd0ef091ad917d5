"""Gradient check for learners: a model's (or a layer's) backward pass against float64
central finite differences of its forward pass.

    numbacnn gradcheck lenet5                         (the command line)
    report = numbacnn.gradcheck(model, (2, 1, 32, 32)); print(report)

The check (CS231n's "gradient checking", MiniTorch's ``grad_check``): with a fixed random
upstream gradient R of the output's shape, the scalar L(theta) = sum(model(x) * R) has

    dL/dtheta_i  ~  (L(theta + h e_i) - L(theta - h e_i)) / (2 h),     h = 1e-6 (float64)

for every parameter element theta_i and every input element x_i, and ``model.backward(R)``
must give the same numbers. A few elements of each tensor are checked (``samples``, chosen
at random, the tensor's largest-gradient element among them), each costing two forward
passes; they are spread over the tensor's rows (its first axis: a conv's output channels, a
Linear's outputs), so a bug confined to one row is found once the samples cover the rows. A
tensor's error is max |analytic - numeric| / max(max |analytic|, max |numeric|,
FLOOR * G) over its checked elements, G the largest analytic gradient of the whole model:
relative to the tensor's gradient scale, so one element near 0 does not make a correct
gradient look wrong, and a tensor whose true gradient is 0 (a conv's bias before a batch
norm, which removes any constant) is measured against the model's scale, not against the
finite differences' rounding noise (~1e-10 of it). An element whose difference disagrees is
tried again with h = 1e-7 and 1e-8, and the closest is kept: a difference that straddles a
kink (a ReLU input or a max-pool window within h of switching; with thousands of them in a
ResNet that happens) is wrong at one h and right at a smaller one, while a wrong backward
pass disagrees at every h.

Training mode by default: batch norm normalises with the batch's statistics (their
dependence on x included), and each forward pass reseeds numbacnn.random so that dropout
draws the same mask every time (a fixed seed). The model is copied and cast to float64;
yours is left as it was.
"""

import copy
import math
from typing import NamedTuple

import numpy as np

from . import random as nrandom
from ._checks import check_int, check_number
from .layers import _BatchNorm
from .module import Module

__all__ = ["gradcheck", "GradcheckRow", "GradcheckReport"]

STEPS = (1e-6, 1e-7, 1e-8)  # central difference steps: float64 truncation ~h^2, rounding ~1e-16/h
FLOOR = 1e-3  # a tensor's error scale is at least FLOOR x the model's largest gradient


class GradcheckRow(NamedTuple):
    """One tensor's check: ``name`` ("input" or a state_dict name), its ``shape``, how many
    elements were ``checked``, the largest relative ``error`` and whether it ``passed``."""

    name: str
    shape: tuple
    checked: int
    error: float
    passed: bool


class GradcheckReport(list):
    """The rows of a gradient check (a list of GradcheckRow); ``passed`` if every row did;
    ``str(report)`` is the table the command line prints."""

    def __init__(self, rows, tolerance):
        super().__init__(rows)
        self.tolerance = tolerance

    @property
    def passed(self):
        return all(row.passed for row in self)

    def __str__(self):
        width = max([len("tensor")] + [len(row.name) for row in self])
        lines = [f"{'tensor':<{width}}  {'shape':<18} {'checked':>7}  {'max rel error':>13}  result"]
        for row in self:
            shape = "x".join(map(str, row.shape)) or "scalar"
            verdict = "pass" if row.passed else "FAIL"
            lines.append(f"{row.name:<{width}}  {shape:<18} {row.checked:>7}  {row.error:>13.2e}  {verdict}")
        failed = sum(not row.passed for row in self)
        lines.append(
            f"{len(self)} tensors, tolerance {self.tolerance:g}: "
            + ("all pass" if not failed else f"{failed} FAIL")
        )
        return "\n".join(lines)


def gradcheck(model, input_shape, *, samples=8, training=True, seed=0, tolerance=1e-6):
    """Check ``model``'s backward pass (every parameter and the input) against float64
    central finite differences of its forward pass (see the module docstring).

    model: a numbacnn Module (a whole model or one layer). input_shape: the shape of x, with
    its batch: (N, C, H, W) for a CNN, (N, features) for a Linear; N >= 2 keeps batch norm
    defined in training mode. samples: elements checked per tensor (>= 1; all of a smaller
    tensor), in different rows. training: check the training-mode pass (batch statistics, dropout with a fixed
    seed) or, False, the eval-mode one. seed: for x, R, the elements and dropout.
    tolerance: the largest relative error that passes.

    Returns a GradcheckReport (``.passed``, one row per tensor, ``print`` shows the table).
    Raises TypeError / ValueError naming a bad argument, ValueError when the backward pass
    returns a gradient of another shape than its tensor's, and ValueError when the model does
    not take ``input_shape`` (its own message)."""
    if not isinstance(model, Module):
        raise TypeError(f"gradcheck: model must be a numbacnn Module, got {type(model).__name__}")
    if not isinstance(input_shape, (tuple, list)) or not input_shape:
        raise TypeError(
            f"gradcheck: input_shape must be a tuple of ints such as (2, 1, 32, 32), got {input_shape!r}"
        )
    input_shape = tuple(check_int("gradcheck", "input_shape", d, minimum=1) for d in input_shape)
    samples = check_int("gradcheck", "samples", samples, minimum=1)
    seed = check_int("gradcheck", "seed", seed)
    tolerance = check_number("gradcheck", "tolerance", tolerance, above=0.0)
    if not isinstance(training, bool):
        raise TypeError(f"gradcheck: training must be True or False, got {training!r}")

    net = copy.deepcopy(model).astype(np.float64)
    net.train(training)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape)
    saved = nrandom.get_state()
    try:

        def forward(inp):
            nrandom.seed(seed)  # the same dropout mask every pass
            return net(inp)

        y = forward(x)
        if training:
            _check_batch_norms(net, input_shape)
        upstream = rng.standard_normal(np.shape(y))  # R: L = sum(y * R)
        net.zero_grad()
        dx = net.backward(upstream)

        def loss(inp):
            return float(np.sum(forward(inp) * upstream))

        tensors = [("input", x, dx)] + [(n, p.data, p.grad.copy()) for n, p in net.named_parameters()]
        for name, values, grad in tensors:  # a backward pass that returns the wrong thing
            if not isinstance(grad, np.ndarray) or grad.shape != values.shape:
                got = f"shape {grad.shape}" if hasattr(grad, "shape") else type(grad).__name__
                what = "dx" if name == "input" else f"{name}.grad"
                raise ValueError(f"gradcheck: the backward pass gave {what} of {got}, expected an array of "
                                 f"shape {values.shape}")  # fmt: skip
        floor = FLOOR * max(float(np.max(np.abs(g), initial=0.0)) for _, _, g in tensors)
        rows = [_check(n, v, g, lambda: loss(x), samples, rng, tolerance, floor) for n, v, g in tensors]
    finally:
        nrandom.set_state(saved)
    return GradcheckReport(rows, tolerance)


def _check_batch_norms(net, input_shape):
    """ValueError when a training-mode batch norm normalises 2 values or fewer per channel:
    with 2, xhat = +-1 whatever x is, its gradient is 0 and the check measures only noise."""
    for name, m in net.named_modules():
        if isinstance(m, _BatchNorm) and m._x is not None:
            per_channel = m._x.size // max(m._x.shape[1], 1)
            if per_channel <= 2:
                raise ValueError(
                    f"gradcheck: batch norm {name!r} normalises {per_channel} value(s) per channel for "
                    f"input {input_shape}: with 2 or fewer, xhat = +-1 whatever x is and the check is "
                    "ill-posed; use a larger batch (or image), or training=False"
                )


def _check(name, values, analytic, loss, samples, rng, tolerance, floor):
    """Central differences of ``loss()`` at ``samples`` elements of ``values`` (perturbed in
    place, then restored) against ``analytic``, the backward pass's gradient of them."""
    flat, grad = values.reshape(-1), np.asarray(analytic, np.float64).reshape(-1)
    if flat.size <= samples:
        picked = np.arange(flat.size)
    else:  # the largest gradient, and samples - 1 others at random, in as many rows as they
        top = int(np.argmax(np.abs(grad)))  # can: a bug in one row (one output channel) shows
        rows, per_row = values.shape[0], flat.size // values.shape[0]
        picked = [top]
        if rows > 1:
            for r in rng.permutation(np.delete(np.arange(rows), top // per_row))[: samples - 1]:
                picked.append(int(r) * per_row + int(rng.integers(per_row)))
        while len(picked) < samples:  # fewer rows than samples: more elements, anywhere
            i = int(rng.integers(flat.size))
            if i not in picked:
                picked.append(i)
        picked = np.array(picked)
    numeric = np.empty(len(picked))
    for k, i in enumerate(picked):
        keep, best = flat[i], None
        for h in STEPS:
            flat[i] = keep + h
            up = loss()
            flat[i] = keep - h
            down = loss()
            flat[i] = keep
            estimate = (up - down) / (2 * h)
            if best is None or abs(estimate - grad[i]) < abs(best - grad[i]):
                best = estimate
            if abs(best - grad[i]) <= tolerance * max(abs(best), abs(grad[i]), floor):
                break  # agrees: no kink in [-h, h]
        numeric[k] = best
    expected = grad[picked]
    scale = max(float(np.max(np.abs(expected))), float(np.max(np.abs(numeric))), floor, 1e-300)
    error = float(np.max(np.abs(expected - numeric))) / scale
    if not math.isfinite(error):
        error = math.inf
    return GradcheckRow(name, tuple(values.shape), len(picked), error, error <= tolerance)
