"""Configuration of the CUDA tests (tests/cuda).

Two ways to run them:

* on a machine with an NVIDIA GPU:        pytest -q tests/cuda
* anywhere, with Numba's CUDA simulator:  NUMBA_ENABLE_CUDASIM=1 pytest -q tests/cuda
  (the variable must be set before numba is imported, i.e. in the environment).

In a plain `pytest` run without either, test_cuda_sim.py skips itself at import.

The simulator runs every CUDA thread as a Python thread, so the tests use tiny shapes.
The simulator evaluates the dropout hash with NumPy uint64 scalars, whose (intended)
wrap-around multiplication emits "overflow encountered" RuntimeWarnings: test_cuda_sim.py
silences them (pytestmark).
"""
import os
import warnings

import numpy as np
import pytest

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def cuda_usable():
    """(usable, reason): the simulator is on, or numba sees a CUDA GPU."""
    try:
        from numba import config, cuda
    except Exception as exc:                                  # pragma: no cover
        return False, f"numba.cuda is not importable ({exc})"
    if SIM:
        if not config.ENABLE_CUDASIM:
            return False, ("NUMBA_ENABLE_CUDASIM=1 was set after numba was imported; "
                           "set it in the environment before starting pytest")
        return True, "CUDA simulator"
    try:
        if cuda.is_available():
            return True, "CUDA GPU"
    except Exception:                                         # pragma: no cover
        pass
    return False, ("no CUDA GPU and the CUDA simulator is off: run "
                   "`NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/cuda` to test the CUDA "
                   "kernels without a GPU")


@pytest.fixture(scope="session", autouse=True)
def _functional_sees_device_arrays():
    """numbacnn.functional dispatches device arrays on `__cuda_array_interface__`, which the
    simulator's FakeCUDAArray lacks.  Until functional also accepts `__cuda_ndarray__` (what
    numba sets on both real and simulated device arrays; see
    numbacnn.kernels.cuda.is_device_array), route its check through that helper, loudly."""
    ok, _ = cuda_usable()
    if not ok:
        yield
        return
    from numba import cuda

    import numbacnn.functional as F
    from numbacnn.kernels.cuda import is_device_array

    probe = cuda.to_device(np.zeros(1))
    if F._is_device_array(probe):
        yield
        return
    warnings.warn("numbacnn.functional._is_device_array does not recognise "
                  f"{type(probe).__name__}; tests/cuda patches it with "
                  "numbacnn.kernels.cuda.is_device_array", UserWarning)
    mp = pytest.MonkeyPatch()
    mp.setattr(F, "_is_device_array", is_device_array)
    yield
    mp.undo()
