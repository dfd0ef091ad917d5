"""Every op in one line: numbacnn.functional == numbacnn.reference == PyTorch, forward and
backward (check_op_vs_torch in conftest.py), on small shapes and a few hard configurations.

A tuple is a shape (filled with standard normal values); arrays are given where the values
matter (ties, positive variances, labels). Each test runs once per dtype (pytestmark).
"""

import numpy as np
import pytest
from conftest import check_op_vs_torch

pytestmark = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def ties(shape, seed=0):
    """Integers in [-2, 2]: many ties inside the pooling windows (gradient to the first max)."""
    return np.random.default_rng(seed).integers(-2, 3, shape).astype(np.float64)


def positive(shape, seed=0):
    """Values in [0.5, 2]: variances, and scales away from 0."""
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


def test_conv2d(dtype):
    check_op_vs_torch("conv2d", (2, 3, 6, 7), (4, 3, 3, 3), (4,), dtype=dtype)
    check_op_vs_torch(
        "conv2d",
        (2, 4, 9, 8),
        (6, 2, 3, 2),
        (6,),
        dtype=dtype,  # stride, pair padding,
        stride=(2, 1),
        padding=(1, 2),
        dilation=(1, 2),
        groups=2,
    )  # dilation, groups
    check_op_vs_torch(
        "conv2d",
        (1, 3, 7, 6),
        (6, 1, 3, 3),
        None,
        dtype=dtype,  # depthwise x2, no bias
        stride=2,
        padding=1,
        groups=3,
    )
    check_op_vs_torch("conv2d", (1, 2, 7, 8), (3, 2, 5, 3), (3,), dtype=dtype, padding="same")
    check_op_vs_torch(
        "conv2d",
        (1, 2, 9, 8),
        (3, 2, 3, 3),
        (3,),
        dtype=dtype,  # odd extent 5: torch's
        padding="same",
        dilation=2,
        stride=2,
    )  # symmetric padding
    check_op_vs_torch("conv2d", (2, 2, 4, 5), (3, 2, 4, 5), (3,), dtype=dtype, padding="valid")  # k = input


def test_max_pool2d(dtype):
    check_op_vs_torch("max_pool2d", (2, 3, 6, 6), dtype=dtype, kernel_size=2)
    check_op_vs_torch("max_pool2d", ties((2, 2, 7, 6)), dtype=dtype, kernel_size=3, stride=2, padding=1)
    check_op_vs_torch(
        "max_pool2d", ties((1, 2, 5, 7), seed=1), dtype=dtype, kernel_size=(3, 2), stride=1, padding=(1, 0)
    )  # overlapping windows


def test_avg_pool2d(dtype):
    check_op_vs_torch("avg_pool2d", (2, 3, 6, 6), dtype=dtype, kernel_size=2)
    check_op_vs_torch(
        "avg_pool2d", (1, 2, 7, 5), dtype=dtype, kernel_size=(3, 2), stride=(2, 1), padding=(1, 1)
    )  # padding counts in the mean


def test_batch_norm(dtype):
    check_op_vs_torch(
        "batch_norm",
        (4, 3, 5, 5),
        positive(3),
        (3,),
        (3,),
        positive(3, seed=1),
        dtype=dtype,
        training=True,
        momentum=0.2,
        eps=1e-4,
    )
    check_op_vs_torch(
        "batch_norm", (6, 4), positive(4), (4,), (4,), positive(4, seed=1), dtype=dtype, training=True
    )  # (N, C) input
    check_op_vs_torch("batch_norm", (3, 2, 1, 1), None, None, None, None, dtype=dtype, training=True)
    check_op_vs_torch(
        "batch_norm",
        (2, 3, 4, 4),
        positive(3),
        (3,),
        (3,),
        positive(3, seed=1),
        dtype=dtype,
        training=False,
        eps=1e-3,
    )  # eval: running stats


def test_linear(dtype):
    check_op_vs_torch("linear", (5, 7), (3, 7), (3,), dtype=dtype)
    check_op_vs_torch("linear", (1, 33), (9, 33), None, dtype=dtype)


def test_activations(dtype):
    check_op_vs_torch("relu", (2, 3, 4, 5), dtype=dtype)
    check_op_vs_torch("tanh", (3, 17), dtype=dtype)
    check_op_vs_torch("sigmoid", np.linspace(-30, 30, 41), dtype=dtype)  # saturating tails
    check_op_vs_torch("add", (2, 3, 4), (2, 3, 4), dtype=dtype)


def test_cross_entropy(dtype):
    check_op_vs_torch("cross_entropy", (5, 10), np.array([0, 9, 3, 3, 7]), dtype=dtype)
    check_op_vs_torch(
        "cross_entropy",
        np.array([[1000.0, 0.0, -1000.0], [-50.0, 50.0, 0.0]]),
        np.array([0, 0], np.int32),
        dtype=dtype,
    )  # huge logits, int32 labels


def test_reference_has_the_functional_names(dtype):
    """numbacnn.reference is the oracle of every op of numbacnn.functional, by name."""
    from numbacnn import functional, reference

    assert sorted(reference.__all__) == sorted(functional.__all__)
