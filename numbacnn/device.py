"""Devices: the names "cpu" and "cuda", and whether CUDA can be used here.

``check_device(op, name)`` checks a device name; ``cuda_problem()`` says, in one sentence,
what is missing for ``"cuda"`` (None when a GPU, its driver and the compiler are there, or
when Numba's CUDA simulator is on: ``NUMBA_ENABLE_CUDASIM=1`` before numba is imported).
``require(op, name)`` raises ``DeviceUnavailable`` with that sentence.

Importing numbacnn never needs CUDA: numba.cuda is imported here only when "cuda" is asked
for, and its errors (``CudaSupportError`` for a machine without a driver, a missing NVVM or
NVRTC) become that one sentence.
"""

__all__ = ["DEVICES", "DeviceUnavailable", "check_device", "cuda_problem", "require", "device_of"]

DEVICES = ("cpu", "cuda")

_HOW = (
    "on a machine with an NVIDIA GPU and its driver (CUDA 12 or 13: driver 525 or newer for "
    "CUDA 12, 580 or newer for CUDA 13), install the extra with `pip install 'numbacnn[cuda]'`; "
    "to try the CUDA path without a GPU, set NUMBA_ENABLE_CUDASIM=1 (Numba's simulator, slow)"
)


class DeviceUnavailable(RuntimeError):
    """The device asked for cannot be used on this machine (the message says why and how)."""


def check_device(op, device):
    """``device`` as "cpu" or "cuda" (also accepts "cuda:0", the only GPU numbacnn uses);
    ValueError naming the argument otherwise."""
    if isinstance(device, str):
        name = device.strip().lower()
        if name in ("cuda:0",):
            name = "cuda"
        if name in DEVICES:
            return name
    raise ValueError(
        f"{op}: device must be one of {', '.join(map(repr, DEVICES))}, got {device!r} (case does not "
        "matter, and 'cuda:0' is 'cuda': numbacnn uses one GPU)"
    )


def cuda_problem():
    """None when numbacnn can run CUDA kernels here, else one sentence: what is missing and
    how to get it."""
    try:
        from numba import config, cuda
    except Exception as e:  # numba-cuda not installed, or broken
        return f"numba.cuda cannot be imported ({_first_line(e)}): {_HOW}"
    if config.ENABLE_CUDASIM:
        return None
    try:
        usable = cuda.is_available()
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"CUDA cannot start ({_first_line(e)}): {_HOW}"
    if not usable:
        return f"no usable NVIDIA GPU: {_driver_reason()}; {_HOW}"
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm.NVVM()
    except Exception as e:  # pragma: no cover - a GPU machine without the compiler
        return f"the GPU is there but NVVM, the CUDA compiler, is missing ({_first_line(e)}): {_HOW}"
    return None


def require(op, device):
    """The checked device name; DeviceUnavailable (one sentence) when it is "cuda" and CUDA
    cannot be used here."""
    device = check_device(op, device)
    if device == "cuda":
        problem = cuda_problem()
        if problem:
            raise DeviceUnavailable(f"{op}: CUDA cannot run here: {problem}")
    return device


def device_of(a):
    """ "cuda" for a device array, "cpu" for anything else."""
    from .kernels import is_device_array

    return "cuda" if is_device_array(a) else "cpu"


def _driver_reason():
    try:
        from numba.cuda.cudadrv import driver

        driver.driver.get_device_count()
    except Exception as e:
        text = " ".join(str(e).split())
        if "cannot be found" in text or "not found" in text:
            return "the CUDA driver library (libcuda.so) is not installed"
        return _first_line(e)
    return "numba.cuda found no CUDA device"


def _first_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]
