"""The tolerance table: how closely a kernel must match its oracle, per kind of computation
and dtype, and the one comparison helper built on it (used by ``check_op`` and by the
project's own tests)."""

import numpy as np

__all__ = ["TOLERANCES", "ATOL_SCALED", "tolerance", "tolerances", "assert_close"]

# Each kind is named after the reason results may differ from their oracle; the number is
# the relative tolerance rtol per dtype. atol (the floor for values near 0) equals rtol,
# except for the kinds in ATOL_SCALED, where it is rtol * max(1, max|expected|): their
# outputs are long sums that grow with the problem, so cancellation near 0 leaves an error
# proportional to the size of the terms, not to the (small) result.

TOLERANCES = {
    # A copy, a selection or a maximum: no arithmetic, so no rounding to forgive.
    "exact": {np.float32: 0.0, np.float64: 0.0},
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


def tolerances(dtype, kind, expected):
    """(rtol, atol) for comparing a result of `kind` and `dtype` with `expected`: atol = rtol,
    or rtol * max(1, max |expected| over its finite values) for the kinds in ATOL_SCALED."""
    rtol = tolerance(dtype, kind)
    if kind not in ATOL_SCALED:
        return rtol, rtol
    expected = np.asarray(expected, dtype=np.float64)
    finite = np.abs(expected[np.isfinite(expected)])
    return rtol, rtol * max(1.0, float(finite.max()) if finite.size else 1.0)


def assert_close(actual, expected, *, dtype, kind, what=""):
    """Assert that `actual` (ours) matches `expected` (an oracle) within the tolerance of `kind`.

    Elementwise |actual - expected| <= atol + rtol * |expected| (np.testing.assert_allclose;
    NaNs must sit at the same places, infinities must be equal), with rtol = tolerance(dtype,
    kind) and atol = rtol, or rtol * max(1, max|expected| over its finite values) for the
    kinds in ATOL_SCALED (an infinity in `expected` must not make atol infinite). Also
    asserts that the shapes are equal and that `actual` has the dtype `dtype` (an op's
    output keeps its input's dtype). `what` names the comparison in the failure message.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} != {np.dtype(dtype)}"
    rtol, atol = tolerances(dtype, kind, expected)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
