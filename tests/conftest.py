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

Shared assertions (import them: ``from conftest import assert_close``):

* ``TOLERANCES`` / ``tolerance(dtype, kind)`` -- the one tolerance table of the suite;
* ``assert_close(actual, expected, *, dtype, kind)`` -- every numeric comparison of an op's
  result with an oracle goes through it.

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

__all__ = ["TOLERANCES", "ATOL_SCALED", "tolerance", "assert_close"]
sys.modules["_numbacnn_tests_conftest"] = sys.modules[__name__]

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev",
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
        h = GradCheck.h if h is None else h
        assert arr.flags.c_contiguous and arr.dtype == np.float64
        flat = arr.reshape(-1)  # a view: writes go into arr
        grad = np.zeros(arr.size, dtype=np.float64)
        for k in range(flat.size):
            old = flat[k]
            flat[k] = old + h
            f_plus = float(scalar_fn())
            flat[k] = old - h
            f_minus = float(scalar_fn())
            flat[k] = old
            grad[k] = (f_plus - f_minus) / (2.0 * h)
        return grad.reshape(arr.shape)

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
        assert err <= tol, (f"{name}: finite-difference relative error {err:.3e} > {tol:.0e}\n"
                            f"numerical={num.ravel()[:8]}...\nanalytic={np.ravel(analytic)[:8]}...")
        return err


@pytest.fixture(scope="session")
def gradcheck():
    return GradCheck()


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ----------------------------------------------------------------------------------------
# the tolerance table and the one comparison helper
#
# Each kind is named after the reason results may differ from their oracle; the number is
# the relative tolerance rtol per dtype. atol (the floor for values near 0) equals rtol,
# except for the kinds in ATOL_SCALED, where it is rtol * max(1, max|expected|): their
# outputs are long sums that grow with the problem, so cancellation near 0 leaves an error
# proportional to the size of the terms, not to the (small) result.

TOLERANCES = {
    # One formula per element (relu, tanh, sigmoid, dropout's scaling, add), the kernel's
    # own formula against libm: float32 tanh is a rational approximation within 8 ulp
    # (~5e-7). 1e-5 is ~80 float32 ulp, 1e-12 ~4500 float64 ulp; the values are O(1).
    "elementwise": {np.float32: 1e-5, np.float64: 1e-12},
    # Short sums added in another order: a pooling window (and the backward's overlapping
    # windows adding into one dx), a softmax row, a dense layer's dot products of O(1)
    # terms (up to ~500 of them in the tests). The same numbers as "elementwise" today, kept
    # apart so that either can be tightened on its own.
    "short_sum": {np.float32: 1e-5, np.float64: 1e-12},
    # Per-channel statistics over all N*H*W values (batch norm's mean and variance, the
    # backward's two more sums over them, then a division by the standard deviation),
    # accumulated in another order than the oracle and PyTorch: 2e-5 / 1e-10.
    "reduction": {np.float32: 2e-5, np.float64: 1e-10},
    # Convolution: sums of C_in/groups*kH*kW products (forward, dx) or N*H_out*W_out
    # products (dweight), blocked and (strided) polyphase-decomposed, against scipy's and
    # PyTorch's orders: 1e-4 / 1e-10, atol scaled by max|expected|.
    "conv": {np.float32: 1e-4, np.float64: 1e-10},
    # The same op on two backends (the CUDA kernels against the CPU kernels): different
    # blocking and summation order for every op, convolutions and dense layers included,
    # whose outputs grow with the sums: 1e-5 / 1e-12, atol scaled by max|expected|.
    "backend": {np.float32: 1e-5, np.float64: 1e-12},
}
ATOL_SCALED = frozenset({"conv", "backend"})


def tolerance(dtype, kind):
    """The relative tolerance TOLERANCES[kind] for `dtype` (np.float32 or np.float64)."""
    if kind not in TOLERANCES:
        raise KeyError(f"unknown tolerance kind {kind!r}; known: {sorted(TOLERANCES)}")
    return TOLERANCES[kind][np.dtype(dtype).type]


def assert_close(actual, expected, *, dtype, kind, what=""):
    """Assert that `actual` (ours) matches `expected` (an oracle) within the tolerance of `kind`.

    Elementwise |actual - expected| <= atol + rtol * |expected| (np.testing.assert_allclose;
    NaNs must sit at the same places, infinities must be equal), with rtol = tolerance(dtype,
    kind) and atol = rtol, or rtol * max(1, max|expected| over its finite values) for the
    kinds in ATOL_SCALED (an infinity in `expected` must not make atol infinite). Also
    asserts that the shapes are equal and that `actual` has the dtype `dtype` (an op's
    output keeps its input's dtype). `what` names the comparison in the failure message.
    """
    rtol = tolerance(dtype, kind)
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    atol = rtol
    if kind in ATOL_SCALED:
        finite = np.abs(expected[np.isfinite(expected)])
        atol = rtol * max(1.0, float(finite.max()) if finite.size else 1.0)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)

