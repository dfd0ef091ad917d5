"""2-D convolution on the GPU (numba.cuda), the twin of numbacnn.kernels.cpu.conv: the same
function names and arguments, one module per strategy.

    naive.py   one thread per output element, the formulas as plain loops: the reference
    gemm.py    the forward, input gradient and weight gradient as one tiled implicit GEMM
               (shared-memory tiles, a 4 x 4 register block per thread, a split reduction
               for the weight gradient): what numbacnn.functional runs

The bias gradient is naive.py's block-per-channel reduction.
"""

from . import gemm, naive
from .gemm import conv2d_backward_input, conv2d_backward_weight, conv2d_forward
from .naive import conv2d_backward_bias

__all__ = ["conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight", "conv2d_backward_bias",
           "naive", "gemm"]  # fmt: skip
