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

    from numbacnn.kernels.cuda import signatures
except Exception as exc:  # pragma: no cover - depends on the installation
    pytest.skip(f"numba-cuda is not importable: {exc}", allow_module_level=True)


def _static_check_runs():
    """True when benchmarks/cuda_static.py can run here (ptxas and nvdisasm found): it types,
    lowers and compiles every kernel further, to PTX and SASS, with this file's float64 check
    (signatures.F32_PURE), and tests/test_device.py runs it."""
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    try:
        from benchmarks.cuda_static import _tool
    except Exception:  # pragma: no cover
        return False
    finally:
        sys.path.remove(root)
    return bool(_tool("ptxas", "nvidia/cu*/bin/ptxas") and _tool("nvdisasm", "nvidia/cu*/bin/nvdisasm"))


if _static_check_runs():
    pytest.skip("tests/test_device.py's static check compiles every kernel to SASS (a superset of this test)",
                allow_module_level=True)  # fmt: skip

CC = (8, 0)


def _signatures(dt):
    """(kernel, argument types) for every @cuda.jit kernel of the package (signatures.py)."""
    return [(k.dispatcher, k.argtypes) for k in signatures.kernels(dt)]


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
    "_add_relu_forward_kernel",
    "_adam_kernel",
    "_rmsprop_kernel",
    "_sgd_kernel",
    "_add_inplace",
    "_sum_splits_kernel",
}
