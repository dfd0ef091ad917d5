"""numbacnn.gradcheck and `numbacnn gradcheck`: a learner's check of a backward pass against
float64 central finite differences (issue 10, item 2)."""

import re

import numpy as np
import pytest

import numbacnn
from numbacnn.cli import main
from numbacnn.graph import Sequential
from numbacnn.layers import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, MaxPool2d, ReLU, Tanh
from numbacnn.module import Module


@pytest.mark.parametrize("model", ["lenet5", "resnet_cifar"])
def test_the_zoo_passes_on_the_command_line(model, capsys):
    """`numbacnn gradcheck lenet5` and `resnet_cifar` (training mode: batch statistics):
    every parameter tensor and the input within 1e-6, exit 0."""
    assert main(["gradcheck", model]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()[2:-1]]
    assert rows[0][0] == "input" and all(row[-1] == "pass" and float(row[-2]) <= 1e-6 for row in rows)
    assert out.rstrip().endswith("all pass") and len(rows) == {"lenet5": 11, "resnet_cifar": 66}[model]


class Doubled(Module):
    """A planted bug: the identity whose backward doubles the gradient."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return 2 * dy


def test_a_wrong_backward_fails_and_names_its_tensors():
    net = Sequential(Linear(6, 5), Doubled(), ReLU(), Linear(5, 3))
    report = numbacnn.gradcheck(net, (4, 6))
    assert not report.passed
    by_name = {row.name: row for row in report}
    # upstream of the bug the gradients are twice the truth: relative error 1/2
    assert by_name["input"].error == pytest.approx(0.5) and by_name["0.weight"].error == pytest.approx(0.5)
    assert by_name["3.weight"].passed and by_name["3.bias"].passed  # downstream of it, right
    assert "FAIL" in str(report) and str(report).endswith("3 FAIL")


def test_dropout_batch_norm_and_pooling_in_training_mode():
    """Dropout draws one mask for every pass (a fixed seed); batch norm's batch statistics
    depend on x; max pooling's windows; the model passed in is left as it was."""
    net = Sequential(Conv2d(2, 4, 3, padding=1), BatchNorm2d(4), ReLU(), MaxPool2d(2), Flatten(),
                     Dropout(0.5), Linear(4 * 4 * 4, 3))  # fmt: skip
    before = {k: v.copy() for k, v in net.state_dict().items()}
    report = numbacnn.gradcheck(net, (3, 2, 8, 8), samples=4)
    assert report.passed and len(report) == 7, str(report)
    assert all(np.array_equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and net.state_dict()["0.weight"].dtype == np.float32
    assert numbacnn.gradcheck(net, (3, 2, 8, 8), samples=2, training=False).passed


def test_too_few_values_for_batch_norm_and_bad_arguments(capsys):
    net = Sequential(Conv2d(1, 2, 3), BatchNorm2d(2))
    with pytest.raises(ValueError, match=r"batch norm '1' normalises 2 value\(s\) per channel"):
        numbacnn.gradcheck(net, (2, 1, 3, 3))
    assert numbacnn.gradcheck(net, (2, 1, 3, 3), training=False).passed  # eval: a fixed affine map
    for args, kind, words in [
        (("net", (2, 1, 3, 3)), TypeError, "model must be a numbacnn Module"),
        ((net, 5), TypeError, "input_shape must be a tuple"),
        ((net, (2, 0, 3, 3)), ValueError, "input_shape must be >= 1"),
    ]:
        with pytest.raises(kind, match=words):
            numbacnn.gradcheck(*args)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        numbacnn.gradcheck(net, (2, 1, 3, 3), samples=0)
    assert main(["gradcheck", "resnet18", "--samples", "1", "--batch-size", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("numbacnn: error: gradcheck: batch norm 'layer4.0.bn1' normalises 2 value(s)")
    assert "--batch-size 4 or more" in err and len(err.splitlines()) == 1


class WrongDx(Module):
    """The identity whose backward returns a dx of another shape, or None."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    def forward(self, x):
        return x

    def backward(self, dy):
        return None if self.kind == "none" else np.concatenate([dy, dy]) if self.kind == "big" else dy.T


@pytest.mark.parametrize(
    "kind, got", [("big", "shape (6, 8)"), ("transposed", "shape (8, 3)"), ("none", "NoneType")]
)
def test_a_gradient_of_the_wrong_shape_is_named(kind, got):
    """A backward pass that returns dx of another shape (a conv that forgot to un-pad) or
    None is refused, naming what it returned and what was expected."""
    with pytest.raises(
        ValueError, match=rf"gave dx of {re.escape(got)}, expected an array of shape \(3, 8\)"
    ):
        numbacnn.gradcheck(Sequential(WrongDx(kind), Linear(8, 2)), (3, 8))


class ZeroLastRow(Linear):
    """A planted bug confined to one row: the last output's weight gradient is dropped."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.weight.grad[-1] = 0
        return dx


def test_a_bug_in_one_row_is_found():
    """The samples go to different rows: with 8 samples every row of an 8 x 8 weight is
    checked, so a bug in its last row fails whatever the seed."""
    for seed in range(4):
        report = numbacnn.gradcheck(Sequential(ZeroLastRow(8, 8), Tanh(), Linear(8, 4)), (3, 8), seed=seed)
        assert {row.name for row in report if not row.passed} == {"0.weight"}, str(report)
