"""Every @cuda.jit kernel of numbacnn.kernels.cuda with the argument types it is launched
with and its threads per block: what tests/cuda/test_cuda_compile.py type-checks and
benchmarks/cuda_static.py compiles to PTX and SASS (no GPU needed for either).

    kernels(dtype) -> [Kernel(name, dispatcher, argument types, threads per block), ...]
"""

from typing import NamedTuple

import numpy as np
from numba import types
from numba.cuda.np.numpy_support import from_dtype

from . import (
    _add_inplace,
    _copy1,
    _copy2,
    _copy3,
    _copy4,
    _launch,
    activation,
    batchnorm,
    conv,
    dense,
    loss,
    optim,
    pool,
)
from ._launch import RED_TPB, TPB

__all__ = ["Kernel", "kernels", "CONV_GEMM", "F32_PURE"]

# The implicit-GEMM conv kernels (conv/gemm.py): the ones whose inner loop is held to a few
# SASS instructions per FFMA.
CONV_GEMM = ("conv_gemm_forward", "conv_gemm_input", "conv_gemm_weight")


# Kernels whose float32 instance must do no float64 arithmetic (the others accumulate in
# float64 on purpose: batch norm's statistics, the losses, the bias gradients).
F32_PURE = frozenset({
    "conv_gemm_forward", "conv_gemm_input", "conv_gemm_weight", "conv_sum_splits", "conv_forward_naive",
    "conv_input_naive", "conv_weight_naive", "max_pool_forward", "avg_pool_forward", "max_pool_backward",
    "avg_pool_backward", "linear_forward_naive", "linear_forward_tiled", "linear_combine_rows",
    "relu_forward", "relu_backward", "tanh_forward", "tanh_backward", "sigmoid_forward", "sigmoid_backward",
    "dropout_backward", "add_forward", "add_relu_forward", "sgd", "adam", "rmsprop", "fill", "add_inplace",
})  # fmt: skip


class Kernel(NamedTuple):
    name: str
    dispatcher: object  # a numba.cuda dispatcher (py_func: the Python source)
    argtypes: tuple
    threads: int  # threads per block at launch


def _array(dt, nd, layout="C"):
    return types.Array(from_dtype(np.dtype(dt)), nd, layout)


def kernels(dtype):
    """The kernels of one float dtype (float32 or float64), with their launch types."""
    dt = np.dtype(dtype)
    a1, a2, a3, a4 = (_array(dt, n) for n in (1, 2, 3, 4))
    f, f64, i64, b = from_dtype(dt), types.float64, types.int64, types.boolean
    u8, l64, d1 = _array(np.uint8, 1), _array(np.int64, 1), _array(np.float64, 1)
    d2 = _array(np.float64, 2)
    conv_geo, pool_geo = (i64,) * 7, (i64,) * 6
    gemm_args = (a1, a1, a1, a1, types.UniTuple(i64, 17)) + (i64,) * 5
    naive = conv.naive
    rows = [
        ("conv_gemm_forward", conv.gemm.gemm_kernel("forward", dt), gemm_args, conv.gemm.NT),
        ("conv_gemm_input", conv.gemm.gemm_kernel("input", dt), gemm_args, conv.gemm.NT),
        ("conv_gemm_weight", conv.gemm.gemm_kernel("weight", dt), gemm_args, conv.gemm.NT),
        ("conv_sum_splits", conv.gemm._sum_splits_kernel, (a1, a1, i64), TPB),
        ("conv_forward_naive", naive._conv2d_forward_kernel, (a4, a4, a1, a4) + conv_geo, TPB),
        ("conv_input_naive", naive._conv2d_backward_input_kernel, (a4, a4, a4) + conv_geo + (f,), TPB),
        ("conv_weight_naive", naive._conv2d_backward_weight_kernel, (a4, a4, a4) + conv_geo + (f,), TPB),
        ("conv_bias", naive._conv2d_backward_bias_kernel, (a4, a1), RED_TPB),
        ("max_pool_forward", pool._max_pool2d_forward_kernel, (a4, a4) + pool_geo + (f,), TPB),
        ("avg_pool_forward", pool._avg_pool2d_forward_kernel, (a4, a4) + pool_geo + (f, f), TPB),
        ("max_pool_backward", pool._max_pool2d_backward_kernel, (a4, a4, a4) + pool_geo + (f, f), TPB),
        ("avg_pool_backward", pool._avg_pool2d_backward_kernel, (a4, a4) + pool_geo + (f, f), TPB),
        ("bn_sum", batchnorm._sum_kernel, (a3, d2), RED_TPB),
        ("bn_centered", batchnorm._centered_kernel, (a3, d2, d2), RED_TPB),
        ("bn_finish", batchnorm._finish_kernel, (d2, d2, i64, a1, a1, a1, a1, f64, f64, d2), TPB),
        ("bn_affine", batchnorm._affine_kernel, (a3, d2, a3, b), RED_TPB),
        ("bn_dy_sums", batchnorm._dy_sums_kernel, (a3, a3, a3, d2, d2, d2, b), RED_TPB),
        ("bn_stats", batchnorm._stats_kernel, (d2, d2, i64, f64, d2), TPB),
        ("bn_eval_stats", batchnorm._eval_stats_kernel, (a1, a1, f64, d2), TPB),
        ("bn_finish_backward", batchnorm._finish_backward_kernel, (d2, d2, i64, a1, b, d2, a1, a1), TPB),
        ("bn_affine_backward", batchnorm._affine_backward_kernel, (a3, a3, a3, d2, a3, b, b), RED_TPB),
        ("bn_fuse_conv", batchnorm._fuse_conv_bn_kernel, (a2, a1, a1, a1, a1, a1, f64, a2, a1), TPB),
        (
            "bn_fuse_conv_backward",
            batchnorm._fuse_conv_bn_backward_kernel,
            (a2, a1, a2, a1, a1, a1, a1, f64, a2, a1, a1, a1),
            TPB,
        ),
        (
            "bn_forward_train_naive",
            batchnorm._bn_forward_train_kernel,
            (a3, a1, a1, a1, a1, f64, f64, a3),
            RED_TPB,
        ),
        ("bn_forward_eval", batchnorm._bn_forward_eval_kernel, (a3, a1, a1, a1, a1, f64, a3), TPB),
        ("bn_backward_naive", batchnorm._bn_backward_kernel, (a3, a3, a1, f64, a3, a1, a1), RED_TPB),
        (
            "bn_backward_eval_naive",
            batchnorm._bn_backward_eval_kernel,
            (a3, a3, a1, a1, a1, f64, a3, a1, a1),
            RED_TPB,
        ),
        ("linear_forward_naive", dense._linear_forward_naive_kernel, (a2, a2, a1, a2, f), TPB),
        ("linear_forward_tiled", dense._TILED[dt], (a2, a2, a1, a2, f), dense._T * dense._T),
        ("linear_combine_rows", dense._combine_rows_kernel, (a2, a2, a2, f), TPB),
        ("linear_bias", dense._linear_backward_bias_kernel, (a2, a1), TPB),
        ("relu_forward", activation._relu_forward_kernel, (a1, a1, f), TPB),
        ("relu_backward", activation._relu_backward_kernel, (a1, a1, a1, f), TPB),
        ("tanh_forward", activation._tanh_forward_kernel, (a1, a1), TPB),
        ("tanh_backward", activation._tanh_backward_kernel, (a1, a1, a1, f), TPB),
        ("sigmoid_forward", activation._sigmoid_forward_kernel, (a1, a1, f), TPB),
        ("sigmoid_backward", activation._sigmoid_backward_kernel, (a1, a1, a1, f), TPB),
        ("dropout_forward", activation._dropout_forward_kernel, (a1, a1, u8, f64, i64, i64, f, f), TPB),
        ("dropout_backward", activation._dropout_backward_kernel, (a1, u8, a1, f, f), TPB),
        ("add_forward", activation._add_forward_kernel, (a1, a1, a1), TPB),
        ("add_relu_forward", activation._add_relu_forward_kernel, (a1, a1, a1, f), TPB),
        ("ce_rows", loss._ce_rows_kernel, (a2, l64, d1), TPB),
        ("ce_backward", loss._ce_backward_kernel, (a2, l64, a2), TPB),
        ("loss_and_hits", loss._loss_and_hits_kernel, (a2, l64, d1), RED_TPB),
        ("sgd", optim._sgd_kernel, (a1, a1, a1, b, f, f, f, b, b), TPB),
        ("adam", optim._adam_kernel, (a1, a1, a1, a1, b) + (f,) * 8, TPB),
        ("rmsprop", optim._rmsprop_kernel, (a1,) * 5 + (b, b) + (f,) * 6, TPB),
        ("fill", _launch.fill_kernel, (a1, f), TPB),
        ("add_inplace", _add_inplace, (a1, a1), TPB),
        ("sum_rows", _launch.sum_rows_kernel, (d1, d1), RED_TPB),
        ("copy1", _copy1, (_array(dt, 1, "A"), a1), TPB),
        ("copy2", _copy2, (_array(dt, 2, "A"), a2), TPB),
        ("copy3", _copy3, (_array(dt, 3, "A"), a3), TPB),
        ("copy4", _copy4, (_array(dt, 4, "A"), a4), TPB),
    ]
    return [Kernel(*row) for row in rows]
