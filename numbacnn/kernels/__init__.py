"""Kernel backends: `cpu` (Numba @njit loop nests) and `cuda` (numba.cuda twins with the same
module and function names).  Each op family is one module in each: conv, pool, batchnorm,
dense, activation, loss.

`backend(x)` picks the package for an array: NumPy arrays run on `numbacnn.kernels.cpu`,
numba.cuda device arrays on `numbacnn.kernels.cuda`. (Other objects exporting
__cuda_array_interface__, such as CuPy arrays or PyTorch CUDA tensors, are recognised as
device arrays here, but numbacnn.functional accepts only NumPy dtypes: wrap them with
numba.cuda.as_cuda_array.)  Both packages also provide the allocation
helpers numbacnn.functional uses: empty, full, ascontiguous, is_contiguous, to_host, as_int64,
and trim (the CPU's `empty` is a pool of outputs, kernels/cpu/workspace.py; trim gives its
free arrays back, as train.evaluate does around a test pass).

This module imports neither numba.cuda nor the kernels themselves: `backend` imports the
package it returns on first use, so CPU-only code never loads numba.cuda.
"""

import numpy as np

__all__ = ["is_device_array", "backend", "get", "jit_counts"]


def is_device_array(a):
    """True for numba.cuda device arrays (real, or the CUDA simulator's FakeCUDAArray, which
    sets only __cuda_ndarray__) and for other objects exporting __cuda_array_interface__."""
    if isinstance(a, np.ndarray):
        return False
    return bool(getattr(a, "__cuda_ndarray__", False)) or hasattr(a, "__cuda_array_interface__")


def jit_counts():
    """(compiled, loaded): how many specialisations of numbacnn's CPU kernels this process has
    compiled so far, and how many it loaded from Numba's on-disk cache instead (cache=True),
    from the dispatchers' statistics (numba's ``Dispatcher.stats``). Only the kernel modules
    already imported are counted; nothing is imported or compiled here."""
    dispatchers = cpu_dispatchers()
    compiled = sum(sum(d.stats.cache_misses.values()) for d in dispatchers)
    loaded = sum(sum(d.stats.cache_hits.values()) for d in dispatchers)
    return compiled, loaded


def cpu_dispatchers(prefix="numbacnn.kernels.cpu"):
    """The Numba CPU dispatchers (kernels and their njit helpers) of the imported modules
    whose names start with `prefix`, each once (a kernel imported into several modules is
    one). Nothing is imported or compiled here."""
    import sys

    from numba.core.registry import CPUDispatcher

    found = {}
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and module is not None:
            for value in list(vars(module).values()):
                if isinstance(value, CPUDispatcher):
                    found[id(value)] = value
    return list(found.values())


_packages = {}  # "cpu" / "cuda" -> the package, once imported (an import statement per op
# call cost 1.5 us, and a LeNet-5 step looks its backend up about 130 times)


def get(device):
    """The kernel package of a device named "cpu" or "cuda" (numbacnn.device checks names)."""
    name = "cuda" if device == "cuda" else "cpu"
    package = _packages.get(name)
    if package is None:
        if name == "cuda":
            from . import cuda as package
        else:
            from . import cpu as package
        _packages[name] = package
    return package


def backend(x):
    """The kernel package for x's device: numbacnn.kernels.cpu or numbacnn.kernels.cuda.

    Raises TypeError if x is neither a numpy.ndarray nor a device array.
    """
    if isinstance(x, np.ndarray):
        return get("cpu")
    if is_device_array(x):
        return get("cuda")
    raise TypeError(f"expected a numpy.ndarray or a numba.cuda device array, got {type(x).__name__}")
