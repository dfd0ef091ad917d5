"""numbacnn.testing: the verification kit the project's own tests use, for your kernels too.

    from numbacnn.testing import check_op
    check_op("conv2d", my_conv2d)           # or: numbacnn verify my_conv.py:my_conv2d --op conv2d

* ``check_op(op, candidate)`` property-tests your implementation of any forward op of
  ``numbacnn.functional`` or its ``*_backward`` against ``numbacnn.reference`` (and SciPy for
  conv2d, float64 finite differences for gradients), and shows the smallest failing case.
* Hypothesis strategies drawing valid calls of each op, hard cases on purpose:
  ``conv2d_configs()``, ``pool2d_configs()``, ``batch_norm_configs()``, ``linear_configs()``,
  ``elementwise_configs()``, ``dropout_configs()``, ``cross_entropy_configs()``.
* Oracles: ``scipy_conv2d`` (convolution through scipy.signal.correlate),
  ``numerical_gradient`` and ``directional_derivative`` (central finite differences).
* The tolerance table (``TOLERANCES``, ``tolerance``) and ``assert_close``.

Needs Hypothesis (a dependency of numbacnn).
"""

from .check import DEFAULTS_ONLY_OPS, OPS, CheckReport, check_op
from .oracles import directional_derivative, numerical_gradient, scipy_conv2d
from .strategies import (
    Case,
    batch_norm_configs,
    conv2d_configs,
    cross_entropy_configs,
    dropout_configs,
    elementwise_configs,
    linear_configs,
    pool2d_configs,
)
from .tolerances import ATOL_SCALED, TOLERANCES, assert_close, tolerance, tolerances

__all__ = [
    "check_op",
    "CheckReport",
    "OPS",
    "DEFAULTS_ONLY_OPS",
    "Case",
    "conv2d_configs",
    "pool2d_configs",
    "batch_norm_configs",
    "linear_configs",
    "elementwise_configs",
    "dropout_configs",
    "cross_entropy_configs",
    "scipy_conv2d",
    "numerical_gradient",
    "directional_derivative",
    "TOLERANCES",
    "ATOL_SCALED",
    "tolerance",
    "tolerances",
    "assert_close",
]
