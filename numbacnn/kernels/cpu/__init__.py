"""CPU kernels: @njit loop nests, forward and backward side by side, one module per op family.

They are called only by numbacnn.functional, which validates arguments and allocates outputs.
"""
from . import activation, batchnorm, conv, dense, loss, pool  # noqa: F401
