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
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
