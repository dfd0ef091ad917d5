"""Every CUDA kernel type-checks and lowers for float32 and float64 (no GPU needed).

Numba's CUDA front end (typing + lowering to NVVM IR) runs without a GPU or driver, so this
catches the errors the simulator cannot (the simulator runs the kernels as plain Python):
unsupported functions, type-unification failures, float32 arrays promoted to float64.
It only needs numba-cuda importable; it is skipped under the simulator (where the kernels
are simulator objects) and when the CUDA front end is unavailable.
"""

import os

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("the CUDA simulator is enabled: kernels are not compiled", allow_module_level=True)

try:
    from numba import types
    from numba.cuda.compiler import compile_cuda
    from numba.cuda.np.numpy_support import from_dtype

    import numbacnn.kernels.cuda as kcuda
    from numbacnn.kernels.cuda import _launch, activation, batchnorm, conv, dense, loss, optim, pool
except Exception as exc:  # pragma: no cover - depends on the installation
    pytest.skip(f"numba-cuda is not importable: {exc}", allow_module_level=True)

CC = (8, 0)
I = types.int64


def A(dt, nd):
    return types.Array(from_dtype(np.dtype(dt)), nd, "C")


def S(dt):
    return from_dtype(np.dtype(dt))


def _signatures(dt):
    """(kernel, argument types) for every @cuda.jit kernel of the package."""
    a1, a2, a3, a4 = (A(dt, n) for n in (1, 2, 3, 4))
    f, f64, u8 = S(dt), types.float64, A(np.uint8, 1)
    conv_geo = (I,) * 7
    pool_geo = (I,) * 6
    return [
        (conv._conv2d_forward_kernel, (a4, a4, a1, a4) + conv_geo),
        (conv._conv2d_backward_input_kernel, (a4, a4, a4) + conv_geo + (f,)),
        (conv._conv2d_backward_weight_kernel, (a4, a4, a4) + conv_geo + (f,)),
        (conv._conv2d_backward_bias_kernel, (a4, a1)),
        (pool._max_pool2d_forward_kernel, (a4, a4) + pool_geo + (f,)),
        (pool._avg_pool2d_forward_kernel, (a4, a4) + pool_geo + (f, f)),
        (pool._max_pool2d_backward_kernel, (a4, a4, a4) + pool_geo + (f, f)),
        (pool._avg_pool2d_backward_kernel, (a4, a4) + pool_geo + (f, f)),
        (batchnorm._bn_forward_train_kernel, (a3, a1, a1, a1, a1, f64, f64, a3)),
        (batchnorm._bn_forward_eval_kernel, (a3, a1, a1, a1, a1, f64, a3)),
        (batchnorm._bn_backward_kernel, (a3, a3, a1, f64, a3, a1, a1)),
        (batchnorm._bn_backward_eval_kernel, (a3, a3, a1, a1, a1, f64, a3, a1, a1)),
        (dense._linear_forward_naive_kernel, (a2, a2, a1, a2, f)),
        (dense._TILED[np.dtype(dt)], (a2, a2, a1, a2, f)),
        (dense._combine_rows_kernel, (a2, a2, a2, f)),
        (dense._linear_backward_bias_kernel, (a2, a1)),
        (activation._relu_forward_kernel, (a1, a1, f)),
        (activation._relu_backward_kernel, (a1, a1, a1, f)),
        (activation._tanh_forward_kernel, (a1, a1)),
        (activation._tanh_backward_kernel, (a1, a1, a1, f)),
        (activation._sigmoid_forward_kernel, (a1, a1, f)),
        (activation._sigmoid_backward_kernel, (a1, a1, a1, f)),
        (activation._dropout_forward_kernel, (a1, a1, u8, f64, types.int64, types.int64, f, f)),
        (activation._dropout_backward_kernel, (a1, u8, a1, f, f)),
        (activation._add_forward_kernel, (a1, a1, a1)),
        (loss._ce_rows_kernel, (a2, A(np.int64, 1), A(np.float64, 1))),
        (loss._ce_backward_kernel, (a2, A(np.int64, 1), a2)),
        (optim._adam_kernel, (a1, a1, a1, a1, types.boolean) + (f,) * 8),
        (optim._rmsprop_kernel, (a1,) * 5 + (types.boolean, types.boolean) + (f,) * 6),
        (_launch.fill_kernel, (a1, f)),
        (_launch.sum_rows_kernel, (A(np.float64, 1), A(np.float64, 1))),
        (kcuda._copy1, (types.Array(S(dt), 1, "A"), a1)),
        (kcuda._copy2, (types.Array(S(dt), 2, "A"), a2)),
        (kcuda._copy3, (types.Array(S(dt), 3, "A"), a3)),
        (kcuda._copy4, (types.Array(S(dt), 4, "A"), a4)),
    ]


def _ids():
    return [k.py_func.__name__ for k, _ in _signatures(np.float32)]


class _FakeDevice:
    compute_capability = CC


@pytest.fixture
def no_driver_ok(monkeypatch):
    """Device functions ask the current device for its compute capability when a kernel that
    calls them is typed; without a GPU, answer CC instead of failing at driver init."""
    import numba.cuda.dispatcher as disp
    from numba import cuda

    if not cuda.is_available():
        monkeypatch.setattr(disp, "get_current_device", lambda: _FakeDevice())


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_every_kernel_compiles(dtype, no_driver_ok):
    failures = []
    for kernel, sig in _signatures(dtype):
        try:
            cres = compile_cuda(kernel.py_func, types.void, sig, cc=CC)
        except Exception as exc:  # collect them all, report at once
            failures.append(f"{kernel.py_func.__name__}: {type(exc).__name__}: {exc}")
            continue
        ir = cres.library.get_llvm_str()
        if np.dtype(dtype) == np.float32 and "fadd double" in ir and kernel.py_func.__name__ in _F32_PURE:
            failures.append(f"{kernel.py_func.__name__}: float32 arithmetic promoted to double")
    assert not failures, "\n".join(failures)


# Kernels whose float32 instance must not contain any double-precision addition.
_F32_PURE = {
    "_conv2d_forward_kernel",
    "_conv2d_backward_input_kernel",
    "_conv2d_backward_weight_kernel",
    "_max_pool2d_forward_kernel",
    "_avg_pool2d_forward_kernel",
    "_max_pool2d_backward_kernel",
    "_avg_pool2d_backward_kernel",
    "_linear_forward_naive_kernel",
    "kernel",
    "_combine_rows_kernel",
    "_relu_forward_kernel",
    "_relu_backward_kernel",
    "_tanh_forward_kernel",
    "_tanh_backward_kernel",
    "_sigmoid_forward_kernel",
    "_sigmoid_backward_kernel",
    "_dropout_backward_kernel",
    "_add_forward_kernel",
    "_adam_kernel",
    "_rmsprop_kernel",
}
